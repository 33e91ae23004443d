//! Weight-norm criteria (Li, Kadav, Durdanovic, Samet & Graf, "Pruning
//! Filters for Efficient ConvNets", ICLR 2017, arXiv 1608.08710, §3.1):
//! `l1` = `Σ|w|`, `l2` = `√Σw²` over every trainable element a unit owns;
//! `filter_l1` = the mean `|w|` of the unit's *producing* filter or row only
//! (Li et al.'s filter norm as written, and the score GReg's authors prune by,
//! `_get_score` in MingSun-Tse/Regularization-Pruning's `meta_pruner.py`).

use candle_core::DType;
use espalier_core::{bail, GroupSet, Member, ParamStore, Result};

use super::{top_k, Criterion, SetView};

/// Which weight norm scores a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// `Σ|w|` over every trainable member.
    L1,
    /// `√Σw²` over every trainable member.
    L2,
    /// Mean `|w|` of the producing filter/row ([`filter_means`]).
    FilterL1,
}

impl Criterion for Norm {
    fn needs_calibration(&self) -> bool {
        false
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        let params = view.model.params();
        let scores = match self {
            Norm::L1 => norms(params, view.set, true)?,
            Norm::L2 => norms(params, view.set, false)?,
            Norm::FilterL1 => filter_means(params, view.set)?.into_iter().map(f64::from).collect(),
        };
        Ok(top_k(&scores, k))
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

/// Per-unit mean `|W|` over every element the unit owns in the producing
/// weights ([`producers`]: the conv filter or linear row; Q, K and V rows for
/// an attention head), in f32 as GReg's reference computes it.
pub(crate) fn filter_means(params: &ParamStore, set: &GroupSet) -> Result<Vec<f32>> {
    let mut sum = vec![0f64; set.size];
    let mut count = 0usize;
    for m in producers(params, set)? {
        let p = params.get(&m.param)?;
        let rows = set.unit_rows(&p.effective()?.to_dtype(DType::F32)?, 0)?;
        count += rows.dims()[1];
        for (s, row) in sum.iter_mut().zip(rows.abs()?.to_dtype(DType::F64)?.to_vec2::<f64>()?) {
            *s += row.iter().sum::<f64>();
        }
    }
    if count == 0 {
        bail!("group set `{}` has no producing weight (a trainable member on axis 0 with ≥ 2 dimensions) to score by its filter norm", set.name);
    }
    Ok(sum.into_iter().map(|s| (s / count as f64) as f32).collect())
}

/// The members of `set` that produce its units: trainable, indexed on axis
/// 0, with two or more dimensions (what GReg's reference regularizes).
pub(crate) fn producers<'a>(params: &ParamStore, set: &'a GroupSet) -> Result<Vec<&'a Member>> {
    let mut out = Vec::new();
    for m in &set.members {
        let p = params.get(&m.param)?;
        if m.axis == 0 && p.trainable() && p.dims().len() >= 2 {
            out.push(m);
        }
    }
    Ok(out)
}
