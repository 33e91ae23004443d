//! Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter, "A
//! Simple and Effective Pruning Approach for Large Language Models", ICLR
//! 2024, arXiv 2306.11695, eq. 1).
//!
//! The score of weight W_ij (output i, input j) is its magnitude times the
//! norm of the input feature it multiplies over the calibration tokens,
//!
//! S_ij = |W_ij| · ‖X_j‖₂,
//!
//! compared within each output row (`prune.scope = "row"`, the paper's
//! comparison group) or within each M-block for N:M patterns; one shot, no
//! retraining and no weight update. ‖X_j‖₂ comes from forward passes of the
//! calibration sample in evaluation mode (`espalier_models::observe`), one
//! example at a time so that padding tokens never count; the reference
//! implementation (locuslab/wanda, `lib/layerwrapper.py`) accumulates the
//! same ‖X_j‖₂² over its calibration sequences. Wanda scores linear maps
//! only: a selected parameter that no linear layer multiplied (a
//! convolution) is an error that names it.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use espalier_core::{bail, Batch, Inputs, Param, Result, Rng, Selector};
use espalier_models::observe::linear_input_energy;
use espalier_models::{Mode, Model};

use crate::magnitude::{flat, Scorer};

/// ‖X_j‖₂ of the input of every linear layer, by weight name.
#[derive(Default)]
pub struct Wanda {
    norms: BTreeMap<String, Vec<f32>>,
}

/// The examples of a batch, one per batch, each without padding.
fn unpadded(batch: &Batch) -> Result<Vec<Batch>> {
    let Inputs::Tokens { input_ids, token_type_ids, attention_mask } = &batch.inputs else {
        return Ok(vec![batch.clone()]);
    };
    let lengths = attention_mask.to_dtype(DType::F32)?.sum(1)?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(lengths.len());
    for (i, len) in lengths.into_iter().enumerate() {
        let len = (len.round() as usize).max(1);
        let row = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(0, i, 1)?.narrow(1, 0, len)?) };
        out.push(Batch {
            inputs: Inputs::Tokens {
                input_ids: row(input_ids)?,
                token_type_ids: row(token_type_ids)?,
                attention_mask: row(attention_mask)?,
            },
            labels: batch.labels.narrow(0, i, 1)?,
        });
    }
    Ok(out)
}

impl Scorer for Wanda {
    fn name(&self) -> &'static str {
        "wanda"
    }
    fn needs_calibration(&self) -> bool {
        true
    }
    fn calibrate(&mut self, model: &dyn Model, _selector: &Selector, batches: &[Batch]) -> Result<()> {
        let energy = linear_input_energy(|| {
            for b in batches {
                for one in unpadded(b)? {
                    model.forward_t(&one, &mut Mode::Eval)?;
                }
            }
            Ok(())
        })?;
        self.norms = energy.into_iter().map(|(k, v)| (k, v.into_iter().map(|e| e.sqrt() as f32).collect())).collect();
        tracing::info!(layers = self.norms.len(), "Wanda: input norms from the calibration sample");
        Ok(())
    }
    fn scores(&mut self, p: &Param, _alive: &[bool], _rng: &mut Rng) -> Result<Vec<f32>> {
        let Some(norms) = self.norms.get(p.name()) else {
            bail!(
                "Wanda scores the weights of linear layers from their inputs, and no linear layer with the \
                 weight `{}` ran on the calibration data (exclude it with prune.params)",
                p.name()
            )
        };
        let w = flat(p.tensor())?;
        let cols = norms.len();
        if cols == 0 || w.len() % cols != 0 {
            bail!("Wanda: `{}` has {} weights, not a multiple of its {cols} inputs", p.name(), w.len());
        }
        Ok(w.iter().enumerate().map(|(i, x)| x.abs() * norms[i % cols]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{masks_for, Granularity, Importance, MaskRule, Scope};
    use candle_core::Device;
    use espalier_models::ModelConfig;

    /// A 2-3-2 MLP on two examples, by hand: ‖X_j‖ of fc1's inputs is
    /// (√(1 + 9), √(4 + 16), 0)… with a third input always 0, S keeps the
    /// weights on the inputs that carry signal even when they are smaller.
    #[test]
    fn scores_and_masks_match_a_hand_computation() -> Result<()> {
        let cfg: ModelConfig = serde_json::from_value(
            serde_json::json!({ "kind": "mlp", "hidden": [2], "input_dim": 3, "num_classes": 2 }),
        )
        .map_err(|e| espalier_core::Error::msg(e.to_string()))?;
        let model = cfg.init(0, &Device::Cpu)?;
        let fc1 = model.params().get("fc1.weight")?;
        fc1.set(&Tensor::new(&[[0.5f32, -0.2, 3.0], [0.1, 1.0, -2.0]], &Device::Cpu)?)?;
        let x = Tensor::new(&[[1f32, 2.0, 0.0], [3.0, 4.0, 0.0]], &Device::Cpu)?;
        let batch = Batch { inputs: Inputs::Dense(x), labels: Tensor::new(&[0u32, 1], &Device::Cpu)? };
        let mut wanda = Importance::Wanda.build();
        wanda.calibrate(model.as_ref(), &Selector::default(), &[batch])?;
        let (n0, n1) = (10f32.sqrt(), 20f32.sqrt());
        let s = wanda.scores(fc1, &[true; 6], &mut Rng::derive(0, "t", &[]))?;
        let want = [0.5 * n0, 0.2 * n1, 0.0, 0.1 * n0, 1.0 * n1, 0.0];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{s:?} vs {want:?}");
        }
        // Row scope at 2/3 sparsity keeps one weight per row: row 0 keeps
        // 0.5·√10 = 1.58 over 0.2·√20 = 0.89 and the large 3.0 on a dead
        // input; row 1 keeps 1.0·√20.
        let rule = MaskRule { scope: Scope::Row, granularity: Granularity::Unstructured, ..Default::default() };
        let sel = Selector::new(&serde_json::from_str(r#"{"include": ["fc1.weight"], "defaults": false}"#).unwrap())?;
        let m = masks_for(model.params(), &sel, wanda.as_mut(), &rule, 2.0 / 3.0)?;
        assert_eq!(m["fc1.weight"].to_vec2::<f32>()?, [[1., 0., 0.], [0., 1., 0.]]);
        // Magnitude would have kept the 3.0 and the 2.0.
        let m = masks_for(model.params(), &sel, Importance::Magnitude.build().as_mut(), &rule, 2.0 / 3.0)?;
        assert_eq!(m["fc1.weight"].to_vec2::<f32>()?, [[0., 0., 1.], [0., 0., 1.]]);
        Ok(())
    }

    /// Token batches are split into single unpadded examples.
    #[test]
    fn padding_is_dropped() -> Result<()> {
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[5u32, 6, 7], [8, 9, 0]], &dev)?;
        let mask = Tensor::new(&[[1f32, 1.0, 1.0], [1.0, 1.0, 0.0]], &dev)?;
        let b = Batch {
            inputs: Inputs::Tokens { input_ids: ids.clone(), token_type_ids: ids.zeros_like()?, attention_mask: mask },
            labels: Tensor::new(&[0u32, 1], &dev)?,
        };
        let parts = unpadded(&b)?;
        let Inputs::Tokens { input_ids, .. } = &parts[1].inputs else { panic!("tokens") };
        assert_eq!(input_ids.to_vec2::<u32>()?, [[8, 9]]);
        assert_eq!(parts[0].labels.to_vec1::<u32>()?, [0]);
        Ok(())
    }
}
