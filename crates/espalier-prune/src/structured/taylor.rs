//! First-order Taylor importance of a unit (Molchanov, Mallya, Tyree,
//! Frosio & Kautz, "Importance Estimation for Neural Network Pruning", CVPR
//! 2019, arXiv 1906.10771, eq. 8 for groups): `(Σ_{w ∈ unit} w·∂L/∂w)²`,
//! gradients summed over the calibration batches at the trained weights.

use std::collections::BTreeMap;

use candle_core::Tensor;
use espalier_core::Batch;
use espalier_core::{GroupSet, Result};
use espalier_models::{Mode, Model};

use super::{top_k, Criterion, SetView};

/// A criterion on the per-unit first-order sums `Σ_{w ∈ unit} w·∂L/∂w`
/// (gradients summed over the calibration batches), ranked by `score(sum)`.
pub struct FirstOrder {
    score: fn(f64) -> f64,
    products: Option<BTreeMap<String, Tensor>>,
}

impl FirstOrder {
    /// Ranks units by `score` of their first-order sum.
    pub fn new(score: fn(f64) -> f64) -> Self {
        FirstOrder { score, products: None }
    }
}

/// Taylor's squared first-order term.
pub fn taylor() -> FirstOrder {
    FirstOrder::new(|s| s * s)
}

impl Criterion for FirstOrder {
    fn needs_calibration(&self) -> bool {
        true
    }
    fn prepare(&mut self, model: &dyn Model, calib: &[Batch]) -> Result<()> {
        self.products = Some(taylor_products(model, calib)?);
        Ok(())
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        let sums = unit_products(view.set, self.products.as_ref().expect("prepared"))?;
        Ok(top_k(&sums.iter().map(|&s| (self.score)(s)).collect::<Vec<_>>(), k))
    }
}

/// `w ⊙ ∂L/∂w` for every trainable parameter, gradients summed over the
/// calibration batches (evaluation mode).
pub(crate) fn taylor_products(model: &dyn Model, calib: &[Batch]) -> Result<BTreeMap<String, Tensor>> {
    let mut sums: BTreeMap<String, Tensor> = BTreeMap::new();
    for b in calib {
        let out = model.forward_t(b, &mut Mode::Eval)?;
        let grads = out.loss.backward()?;
        for p in model.params().trainable() {
            if let Some(g) = grads.get(p.tensor()) {
                let e = sums.entry(p.name().to_string()).or_insert_with(|| g.zeros_like().expect("zeros"));
                *e = (&*e + g)?;
            }
        }
    }
    for p in model.params().trainable() {
        if let Some(g) = sums.get_mut(p.name()) {
            *g = (p.effective()? * &*g)?;
        }
    }
    Ok(sums)
}

/// Per-unit `Σ w·∂L/∂w` over every member, from [`taylor_products`].
pub(crate) fn unit_products(set: &GroupSet, products: &BTreeMap<String, Tensor>) -> Result<Vec<f64>> {
    let mut acc = vec![0f64; set.size];
    for m in &set.members {
        let Some(wg) = products.get(&m.param) else { continue };
        let per = set.unit_rows(wg, m.axis)?.sum(1)?.to_vec1::<f32>()?;
        for (a, v) in acc.iter_mut().zip(per) {
            *a += v as f64;
        }
    }
    Ok(acc)
}
