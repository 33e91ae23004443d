//! SR-STE retraining (Zhou, Ma, Zhu, Liu, Zhang, Yuan, Sun & Li, "Learning
//! N:M Fine-grained Structured Sparse Neural Networks From Scratch", ICLR
//! 2021, arXiv 2102.04010, eq. 5).
//!
//! The retraining keeps dense weights; the forward pass uses W ⊙ M with M
//! recomputed from |W| after every step, the gradient passes straight
//! through the mask ([`espalier_core::Param::set_straight_through`]), and
//! the pruned weights decay: W ← W − γ(∇_{W⊙M} L + λ_w (1 − M) ⊙ W). Masks
//! can therefore change.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use espalier_core::{ParamStore, Result, Selector};
use espalier_train::regularize::{Regularizer, StepInfo};
use serde::{Deserialize, Serialize};

use crate::admm::Projection;

/// SR-STE settings (`[prune.sr_ste]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SrSteConfig {
    /// λ_w, the decay of the pruned weights.
    #[serde(default = "default_decay")]
    pub decay: f64,
}

fn default_decay() -> f64 {
    2e-4
}

impl SrSteConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        if !(self.decay >= 0.0 && self.decay.is_finite()) {
            return Err(format!("{path}.decay must be a finite number >= 0, found {}", self.decay));
        }
        Ok(())
    }
}

/// SR-STE on the selected parameters that are in straight-through mode.
pub struct SrSte {
    decay: f64,
    selector: Selector,
    projection: Projection,
    flips: u64,
}

impl SrSte {
    /// The regularizer for `projection`'s pattern.
    pub fn new(cfg: &SrSteConfig, selector: Selector, projection: Projection) -> Self {
        SrSte { decay: cfg.decay, selector, projection, flips: 0 }
    }
    /// Mask entries changed since the last epoch's end.
    pub fn flips(&self) -> u64 {
        self.flips
    }
}

impl Regularizer for SrSte {
    fn name(&self) -> &str {
        "sr_ste"
    }
    fn adjust_grads(&mut self, params: &ParamStore, grads: &mut GradStore, _step: &StepInfo) -> Result<()> {
        for p in params.iter().filter(|p| self.selector.matches(p) && p.straight_through()) {
            let (Some(g), Some(m)) = (grads.get(p.tensor()), p.mask()) else { continue };
            let extra = ((1.0 - m)? * p.tensor())?;
            let g = (g + (extra * self.decay)?)?;
            grads.insert(p.tensor(), g);
        }
        Ok(())
    }
    fn on_step(&mut self, params: &ParamStore, _step: &StepInfo) -> Result<()> {
        let ps: Vec<_> = params.iter().filter(|p| self.selector.matches(p) && p.straight_through()).collect();
        if ps.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = ps.iter().map(|p| p.name().to_string()).collect();
        let ws: Vec<Tensor> = ps.iter().map(|p| p.tensor().clone()).collect();
        for (p, m) in ps.iter().zip(self.projection.masks(&names, &ws)?) {
            if let Some(old) = p.mask() {
                let changed = old.ne(&m)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
                self.flips += changed as u64;
            }
            p.set_mask(Some(m))?;
        }
        Ok(())
    }
    fn on_epoch(&mut self, _params: &ParamStore, step: &StepInfo) -> Result<()> {
        if self.flips > 0 {
            tracing::info!(epoch = step.epoch, mask_changes = self.flips, "SR-STE");
        }
        self.flips = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admm::tests::{one_weight, TWO_FOUR};
    use candle_core::Device;

    /// A pruned weight that the loss keeps pushing up grows through the
    /// straight-through gradient until it overtakes a kept one: the mask
    /// changes. With a hard mask it would stay at zero forever.
    #[test]
    fn sr_ste_lets_a_mask_change() -> Result<()> {
        let (store, w) = one_weight(&[1.0, 0.9, 0.2, 0.1])?;
        let mut sr = SrSte::new(&SrSteConfig { decay: 2e-4 }, Selector::default(), TWO_FOUR);
        w.set_straight_through(true)?;
        sr.on_step(&store, &StepInfo::default())?;
        assert_eq!(w.mask().unwrap().to_vec2::<f32>()?, [[1., 1., 0., 0.]]);
        let push = Tensor::new(&[[0f32, 0.0, -1.0, 0.0]], &Device::Cpu)?;
        for step in 0..10 {
            let mut grads = (w.effective()? * &push)?.sum_all()?.backward()?;
            sr.adjust_grads(
                &store,
                &mut grads,
                &StepInfo { epoch: 0, global_step: step, lr: 0.0, ..Default::default() },
            )?;
            let g = grads.get(w.tensor()).unwrap().clone();
            if step == 0 {
                // straight through the mask, plus the decay of the pruned w[3]
                let gv = g.to_vec2::<f32>()?;
                assert!((gv[0][2] - (-1.0 + 2e-4 * 0.2)).abs() < 1e-6 && (gv[0][3] - 2e-4 * 0.1).abs() < 1e-7);
            }
            w.set(&(w.tensor() - (g * 0.1)?)?)?;
            sr.on_step(&store, &StepInfo { epoch: 0, global_step: step + 1, lr: 0.0, ..Default::default() })?;
        }
        assert_eq!(w.mask().unwrap().to_vec2::<f32>()?, [[1., 0., 1., 0.]]);
        assert!(sr.flips() >= 2);
        Ok(())
    }
}
