//! Movement scores (Sanh, Wolf & Rush, "Movement Pruning: Adaptive Sparsity
//! by Fine-Tuning", NeurIPS 2020; PAPERS.md §1).
//!
//! Hard movement pruning keeps the weights with the largest
//! S = −Σ_t W⁽ᵗ⁾ ⊙ ∂L/∂W⁽ᵗ⁾, accumulated over every training step: a weight
//! that the gradient pushes away from zero scores high, whatever its current
//! magnitude. [`MovementTracker`] is an observer in the training loop's
//! regularizer slot: it adds nothing to the gradient and only accumulates S;
//! [`crate::masks_for`] reads the shared scores with
//! [`crate::Importance::Movement`] (usually under the cubic schedule).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use espalier_core::{ParamStore, Result, Selector};
use espalier_train::regularize::{Regularizer, StepInfo};

use crate::magnitude::MovementScores;

/// Accumulates movement scores of the selected parameters.
pub struct MovementTracker {
    selector: Selector,
    scores: Arc<Mutex<MovementScores>>,
}

impl MovementTracker {
    /// A tracker and the handle its scores are read through.
    pub fn new(selector: Selector) -> (Self, Arc<Mutex<MovementScores>>) {
        let scores = Arc::new(Mutex::new(MovementScores::new()));
        (MovementTracker { selector, scores: scores.clone() }, scores)
    }
}

impl Regularizer for MovementTracker {
    fn name(&self) -> &str {
        "movement"
    }
    /// Sees the gradient of the task loss (it runs before the other
    /// regularizers adjust it) and leaves it unchanged.
    fn adjust_grads(&mut self, params: &ParamStore, grads: &mut GradStore, _step: &StepInfo) -> Result<()> {
        let mut scores = self.scores.lock().expect("movement scores lock");
        for p in params.iter().filter(|p| self.selector.matches(p)) {
            let Some(g) = grads.get(p.tensor()) else { continue };
            // Detached: a score built from the variable would record the
            // product in the autograd graph, and every step's sum would keep
            // all earlier steps' tensors alive.
            let w = p.tensor().detach().to_dtype(DType::F32)?;
            let step = (w * g.detach().to_dtype(DType::F32)?)?.neg()?;
            let s = match scores.remove(p.name()) {
                Some(s) => (s + step)?.detach(),
                None => step,
            };
            scores.insert(p.name().to_string(), s);
        }
        Ok(())
    }
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(self.scores.lock().expect("movement scores lock").clone())
    }
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        *self.scores.lock().expect("movement scores lock") = state.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{masks_for, Granularity, Importance, MaskRule, Scope};
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
        let (mut tracker, scores) = MovementTracker::new(Selector::default());
        // dL/dw = c: S = -w * c
        let c = Tensor::new(&[[-1f32, 1.0, -1.0, 1.0]], &dev)?;
        for step in 0..2 {
            let mut grads = (w.effective()? * &c)?.sum_all()?.backward()?;
            tracker.adjust_grads(&store, &mut grads, &StepInfo { epoch: 0, global_step: step, lr: 0.0 })?;
            // the gradient itself is untouched
            assert_eq!(grads.get(w.tensor()).unwrap().to_vec2::<f32>()?, c.to_vec2::<f32>()?);
        }
        // No autograd history is kept across steps (it would hold every
        // step's tensors alive).
        assert!(!scores.lock().unwrap()["fc.weight"].track_op());
        let s = scores.lock().unwrap()["fc.weight"].to_vec2::<f32>()?;
        assert_eq!(s, [[0.2, -2.0, -2.0, 0.2]]);
        let rule = MaskRule {
            importance: Importance::Movement,
            scope: Scope::Layer,
            granularity: Granularity::Unstructured,
            seed: 0,
        };
        let m = masks_for(&store, &Selector::default(), &rule, 0.5, Some(&scores.lock().unwrap()))?;
        assert_eq!(m["fc.weight"].to_vec2::<f32>()?, [[1., 0., 0., 1.]]);
        // state round-trips through a checkpoint map
        let (mut again, handle) = MovementTracker::new(Selector::default());
        again.load_state(&tracker.state()?)?;
        assert_eq!(handle.lock().unwrap()["fc.weight"].to_vec2::<f32>()?, s);
        Ok(())
    }
}
