//! Weight-norm criteria (Li, Kadav, Durdanovic, Samet & Graf, "Pruning
//! Filters for Efficient ConvNets", ICLR 2017, arXiv 1608.08710, §3.1):
//! `l1` = `Σ|w|`, `l2` = `√Σw²` over every trainable element a unit owns.

use candle_core::DType;
use espalier_core::{GroupSet, ParamStore, Result};

use super::{top_k, Criterion, SetView};

/// The L1 (`l1 = true`) or L2 norm of a unit's weights.
pub struct Norm {
    /// L1 rather than L2.
    pub l1: bool,
}

impl Criterion for Norm {
    fn needs_calibration(&self) -> bool {
        false
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        Ok(top_k(&norms(view.model.params(), view.set, self.l1)?, k))
    }
}

/// Per-unit `Σ|w|` or `√Σw²` over every trainable member: BatchNorm's
/// running statistics are state, not weights, and count for no unit (GReg
/// chooses its units by the same sum, so "L1 vs GReg" removes the same
/// units and differs only in the schedule).
pub(crate) fn norms(params: &ParamStore, set: &GroupSet, l1: bool) -> Result<Vec<f64>> {
    let mut acc = vec![0f64; set.size];
    for m in &set.members {
        let p = params.get(&m.param)?;
        if !p.trainable() {
            continue;
        }
        let w = p.effective()?.to_dtype(DType::F32)?;
        let rows = set.unit_rows(&w, m.axis)?;
        let per = if l1 { rows.abs()?.sum(1)? } else { rows.sqr()?.sum(1)? };
        for (a, v) in acc.iter_mut().zip(per.to_vec1::<f32>()?) {
            *a += v as f64;
        }
    }
    Ok(if l1 { acc } else { acc.into_iter().map(f64::sqrt).collect() })
}
