//! Activation criterion: the mean `|h|` of a unit over the calibration
//! examples (units that are rarely active carry little of the next layer's
//! input).

use espalier_core::Result;

use super::{activations, axis1_sums, top_k, unit_sums, Criterion, SetView};

/// Mean absolute activation.
pub struct Activation;

impl Criterion for Activation {
    fn needs_calibration(&self) -> bool {
        true
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        let h = activations(view.model, view.calib, &view.set.name)?;
        let sums = unit_sums(view.set, &axis1_sums(&h, false)?);
        Ok(top_k(&sums.iter().map(|s| s / h.dims()[0] as f64).collect::<Vec<_>>(), k))
    }
}
