//! Movement pruning's score for units (Sanh, Wolf & Rush, "Movement
//! Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020, arXiv
//! 2005.07683, §3: `S = −Σ_t ∂L/∂W⁽ᵗ⁾ ⊙ W⁽ᵗ⁾`) summed over a unit,
//! `−Σ_{w ∈ unit} w·∂L/∂w`, with the sum over training steps replaced by the
//! calibration batches at the fine-tuned weights: signed, so a unit whose
//! removal would lower the loss (to first order) ranks last, where Taylor's
//! square ranks it by size.

use std::collections::BTreeMap;

use candle_core::Tensor;
use espalier_core::Batch;
use espalier_core::Result;
use espalier_models::Model;

use super::taylor::{taylor_products, unit_products};
use super::{top_k, Criterion, SetView};

/// The signed movement score of units.
#[derive(Default)]
pub struct UnitMovement {
    products: Option<BTreeMap<String, Tensor>>,
}

impl Criterion for UnitMovement {
    fn needs_calibration(&self) -> bool {
        true
    }
    fn prepare(&mut self, model: &dyn Model, calib: &[Batch]) -> Result<()> {
        self.products = Some(taylor_products(model, calib)?);
        Ok(())
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        let sums = unit_products(view.set, self.products.as_ref().expect("prepared"))?;
        Ok(top_k(&sums.iter().map(|s| -s).collect::<Vec<_>>(), k))
    }
}
