//! Movement scores (Sanh, Wolf & Rush, "Movement Pruning: Adaptive Sparsity
//! by Fine-Tuning", NeurIPS 2020, arXiv 2005.07683, §3).
//!
//! Hard movement pruning keeps the weights with the largest
//! S = −Σ_t W⁽ᵗ⁾ ⊙ ∂L/∂W⁽ᵗ⁾ (eq. 3's score, accumulated over every training
//! step): a weight that the gradient pushes away from zero scores high,
//! whatever its current magnitude. [`Movement`] observes the task loss's
//! gradient of every step and accumulates S; it is usually pruned on the
//! cubic (gradual) schedule.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use espalier_core::{Param, ParamStore, Result, Rng, Selector};

use crate::magnitude::{flat, Scorer};

/// Accumulated movement scores of the selected parameters.
#[derive(Default)]
pub struct Movement {
    scores: BTreeMap<String, Tensor>,
}

impl Scorer for Movement {
    fn name(&self) -> &'static str {
        "movement"
    }
    fn scores(&mut self, p: &Param, _alive: &[bool], _rng: &mut Rng) -> Result<Vec<f32>> {
        match self.scores.get(p.name()) {
            Some(s) => flat(s),
            None => espalier_core::bail!(
                "movement importance has no accumulated scores for {} (no training step has run since \
                 the run started or resumed)",
                p.name()
            ),
        }
    }
    /// Sees the gradient of the task loss (before any regularizer adjusts
    /// it) and leaves it unchanged.
    fn observe(&mut self, params: &ParamStore, selector: &Selector, grads: &GradStore) -> Result<()> {
        for p in params.iter().filter(|p| selector.matches(p)) {
            let Some(g) = grads.get(p.tensor()) else { continue };
            // Detached: a score built from the variable would record the
            // product in the autograd graph, and every step's sum would keep
            // all earlier steps' tensors alive.
            let w = p.tensor().detach().to_dtype(DType::F32)?;
            let step = (w * g.detach().to_dtype(DType::F32)?)?.neg()?;
            let s = match self.scores.remove(p.name()) {
                Some(s) => (s + step)?.detach(),
                None => step,
            };
            self.scores.insert(p.name().to_string(), s);
        }
        Ok(())
    }
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(self.scores.clone())
    }
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        self.scores = state.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{masks_for, Granularity, MaskRule, Scope};
    use candle_core::Device;
    use espalier_core::init::Init;
    use espalier_core::{ParamBuilder, ParamKind};

    /// Two steps of a loss whose gradient pushes w[0] and w[3] away from zero
    /// and w[1], w[2] towards it: movement keeps 0 and 3 although 1 and 2
    /// are larger, where magnitude would keep 1 and 2.
    #[test]
    fn movement_keeps_weights_moving_away_from_zero() -> Result<()> {
        let dev = Device::Cpu;
        let pb = ParamBuilder::from_seed(0, DType::F32, &dev);
        let w = pb.pp("fc").param("weight", &[1, 4], ParamKind::Weight, Init::Const(0.0))?;
        w.set(&Tensor::new(&[[0.1f32, 1.0, -1.0, -0.1]], &dev)?)?;
        let store = pb.finish().0;
        let mut tracker = Movement::default();
        // dL/dw = c: S = -w * c
        let c = Tensor::new(&[[-1f32, 1.0, -1.0, 1.0]], &dev)?;
        for _ in 0..2 {
            let grads = (w.effective()? * &c)?.sum_all()?.backward()?;
            tracker.observe(&store, &Selector::default(), &grads)?;
        }
        // No autograd history is kept across steps (it would hold every
        // step's tensors alive).
        assert!(!tracker.scores["fc.weight"].track_op());
        let s = tracker.scores["fc.weight"].to_vec2::<f32>()?;
        assert_eq!(s, [[0.2, -2.0, -2.0, 0.2]]);
        let rule = MaskRule { scope: Scope::Layer, granularity: Granularity::Unstructured, ..Default::default() };
        let m = masks_for(&store, &Selector::default(), &mut tracker, &rule, 0.5)?;
        assert_eq!(m["fc.weight"].to_vec2::<f32>()?, [[1., 0., 0., 1.]]);
        // state round-trips through a checkpoint map
        let mut again = Movement::default();
        again.load_state(&tracker.state()?)?;
        assert_eq!(again.scores["fc.weight"].to_vec2::<f32>()?, s);
        Ok(())
    }
}
