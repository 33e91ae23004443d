//! Statistics of the inputs of every linear map during forward passes:
//! what criteria that weigh a weight by the activations it multiplies need
//! (Wanda's ‖X_j‖₂, Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning
//! Approach for Large Language Models", 2023, arXiv 2306.11695, eq. 1).
//!
//! [`linear_input_energy`] runs a closure (forward passes of any model) and
//! returns, for every [`crate::layers::Linear`] that ran, the sum over all
//! input rows (examples, tokens) of the squared input of each column j,
//! Σ_rows x_j², keyed by the layer's weight name. The layers report to the
//! calling thread only while the closure runs; outside it they do nothing
//! but check a thread-local flag.

use std::cell::RefCell;
use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use espalier_core::Result;

thread_local! {
    static ENERGY: RefCell<Option<BTreeMap<String, Vec<f64>>>> = const { RefCell::new(None) };
}

/// Whether a statistic is being gathered on this thread.
pub(crate) fn active() -> bool {
    ENERGY.with(|e| e.borrow().is_some())
}

/// Adds the column energies of `x` (`(..., in)`) to the layer `weight`.
pub(crate) fn record(weight: &str, x: &Tensor) -> Result<()> {
    let cols = x.dims().last().copied().unwrap_or(0);
    let sums = x.to_dtype(DType::F32)?.reshape(((), cols))?.sqr()?.sum(0)?.to_vec1::<f32>()?;
    ENERGY.with(|e| {
        if let Some(map) = e.borrow_mut().as_mut() {
            let acc = map.entry(weight.to_string()).or_insert_with(|| vec![0.0; cols]);
            for (a, s) in acc.iter_mut().zip(sums) {
                *a += s as f64;
            }
        }
    });
    Ok(())
}

/// Runs `f` and returns Σ_rows x_j² of the inputs of every linear map it ran,
/// by weight name.
pub fn linear_input_energy(f: impl FnOnce() -> Result<()>) -> Result<BTreeMap<String, Vec<f64>>> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ENERGY.with(|e| *e.borrow_mut() = None);
        }
    }
    ENERGY.with(|e| *e.borrow_mut() = Some(BTreeMap::new()));
    let _reset = Reset;
    f()?;
    Ok(ENERGY.with(|e| e.borrow_mut().take().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mode, ModelConfig};
    use candle_core::Device;
    use espalier_core::{Batch, Inputs};

    /// An MLP's first layer sees the images; the energy of its input
    /// column j is Σ_images x_j², by hand.
    #[test]
    fn the_first_layer_sees_the_inputs() -> Result<()> {
        let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
            "kind": "mlp", "hidden": [5], "input_dim": 3, "num_classes": 2
        }))
        .map_err(|e| espalier_core::Error::msg(e.to_string()))?;
        let model = cfg.init(0, &Device::Cpu)?;
        let x = Tensor::new(&[[1f32, 2.0, 0.0], [3.0, -1.0, 0.5]], &Device::Cpu)?;
        let batch = Batch { inputs: Inputs::Dense(x), labels: Tensor::new(&[0u32, 1], &Device::Cpu)? };
        let e = linear_input_energy(|| model.forward_t(&batch, &mut Mode::Eval).map(|_| ()))?;
        assert_eq!(e["fc1.weight"], vec![10.0, 5.0, 0.25]);
        assert_eq!(e["head.weight"].len(), 5);
        assert!(!active());
        // Outside the closure nothing is gathered.
        model.forward_t(&batch, &mut Mode::Eval)?;
        assert!(!active());
        Ok(())
    }
}
