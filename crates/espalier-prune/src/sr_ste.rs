//! SR-STE retraining (Zhou, Ma, Zhu, Liu, Zhang, Yuan, Sun & Li, "Learning
//! N:M Fine-grained Structured Sparse Neural Networks From Scratch", ICLR
//! 2021, arXiv 2102.04010, eq. 5).
//!
//! The retraining keeps dense weights; the forward pass uses W ⊙ M with M
//! recomputed from |W| after every step, the gradient passes straight
//! through the mask ([`espalier_core::Param::set_straight_through`]), and
//! the pruned weights decay: W ← W − γ(∇_{W⊙M} L + λ_w (1 − M) ⊙ W). Masks
//! can therefore change. The reference is the authors' `Sparse` autograd
//! function (aojunzz/NM-sparsity, `devkit/sparse_ops/sparse_ops.py`): the
//! mask keeps the N largest |W| of every M consecutive weights of the
//! flattened linear weight, and the backward pass returns
//! `grad_output + decay·(1 − mask)·weight`; a golden test checks steps of
//! it under momentum SGD (`tests/sr_ste_reference.rs`).
//!
//! Two forms of the decay (`decay_form`):
//! - `gradient` (the default, eq. 5): λ_w (1 − M) ⊙ W is added to the
//!   gradient. This is the paper's regime, momentum SGD (lr 0.1, λ_w 2e-4
//!   in the authors' configs). Under Adam/AdamW the term is normalised with
//!   the task gradient and its effect is lost (a run warns about the pair).
//! - `decoupled`: after every optimizer step, W ← W − η λ_w (1 − M) ⊙ W
//!   with the step's learning rate η, applied outside the optimizer the way
//!   AdamW decouples weight decay (Loshchilov & Hutter, "Decoupled Weight
//!   Decay Regularization", ICLR 2019, arXiv 1711.05101). Under plain SGD it
//!   is the gradient form's step; under AdamW λ_w is per unit learning rate,
//!   so a rate of 1e-4 needs λ_w in the hundreds to shrink the pruned
//!   weights as the paper's SGD does (η λ_w = 2e-5 per step): re-tune it.

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
    /// `gradient` (the paper's, for momentum SGD) or `decoupled` (after the
    /// optimizer step, for AdamW).
    #[serde(default)]
    pub decay_form: DecayForm,
}

/// Where SR-STE's decay of the pruned weights acts (`prune.sr_ste.decay_form`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecayForm {
    /// λ_w (1 − M) ⊙ W added to the gradient (eq. 5).
    #[default]
    Gradient,
    /// W ← W − η λ_w (1 − M) ⊙ W after the optimizer step.
    Decoupled,
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

    /// A warning when the decay is in the gradient under an adaptive
    /// optimizer, where it has no effect (`adaptive`: the optimizer
    /// normalises its update, as Adam/AdamW do).
    pub fn warning(&self, adaptive: bool) -> Option<String> {
        (adaptive && self.decay > 0.0 && self.decay_form == DecayForm::Gradient).then(|| {
            format!(
                "prune.sr_ste: the decay of the pruned weights ({}) is added to the gradient, which an adaptive \
                 optimizer normalises away; SR-STE's regime is momentum SGD (train.optimizer.kind = \"sgd\"), or \
                 use decay_form = \"decoupled\" with a re-tuned decay",
                self.decay
            )
        })
    }
}

/// SR-STE on the selected parameters that are in straight-through mode.
pub struct SrSte {
    decay: f64,
    form: DecayForm,
    selector: Selector,
    projection: Projection,
    flips: u64,
}

impl SrSte {
    /// The regularizer for `projection`'s pattern.
    pub fn new(cfg: &SrSteConfig, selector: Selector, projection: Projection) -> Self {
        SrSte { decay: cfg.decay, form: cfg.decay_form, selector, projection, flips: 0 }
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
        if self.form != DecayForm::Gradient {
            return Ok(());
        }
        for p in params.iter().filter(|p| self.selector.matches(p) && p.straight_through()) {
            let (Some(g), Some(m)) = (grads.get(p.tensor()), p.mask()) else { continue };
            let extra = ((1.0 - m)? * p.tensor())?;
            let g = (g + (extra * self.decay)?)?;
            grads.insert(p.tensor(), g);
        }
        Ok(())
    }
    fn on_step(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        let ps: Vec<_> = params.iter().filter(|p| self.selector.matches(p) && p.straight_through()).collect();
        if ps.is_empty() {
            return Ok(());
        }
        if self.form == DecayForm::Decoupled {
            let t = step.lr * self.decay;
            for p in ps.iter() {
                let Some(m) = p.mask() else { continue };
                // w ⊙ (1 − t(1 − m)): the pruned weights shrink by η λ_w.
                let scale = ((m * t)? + (1.0 - t))?;
                p.set(&(p.tensor().detach() * scale)?)?;
            }
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
        let mut sr =
            SrSte::new(&SrSteConfig { decay: 2e-4, decay_form: DecayForm::Gradient }, Selector::default(), TWO_FOUR);
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

    /// The decoupled form: the gradient is left alone and, after the step,
    /// only the pruned weights shrink, by η λ_w of their value.
    #[test]
    fn decoupled_decay_shrinks_the_pruned_weights_after_the_step() -> Result<()> {
        let (store, w) = one_weight(&[1.0, 0.9, 0.2, 0.1])?;
        let cfg = SrSteConfig { decay: 0.5, decay_form: DecayForm::Decoupled };
        let mut sr = SrSte::new(&cfg, Selector::default(), TWO_FOUR);
        w.set_straight_through(true)?;
        w.set_mask(Some(Tensor::new(&[[1f32, 1., 0., 0.]], &Device::Cpu)?))?;
        let mut grads = w.effective()?.sum_all()?.backward()?;
        sr.adjust_grads(&store, &mut grads, &StepInfo::default())?;
        assert_eq!(grads.get(w.tensor()).unwrap().to_vec2::<f32>()?, [[1.0; 4]]);
        sr.on_step(&store, &StepInfo { lr: 0.2, ..Default::default() })?;
        // η λ_w = 0.1: 0.2 → 0.18, 0.1 → 0.09; the kept weights unchanged.
        let got = w.tensor().to_vec2::<f32>()?;
        for (a, b) in got[0].iter().zip([1.0f32, 0.9, 0.18, 0.09]) {
            assert!((a - b).abs() < 1e-7, "{got:?}");
        }
        assert!(cfg.warning(true).is_none());
        assert!(SrSteConfig { decay: 2e-4, decay_form: DecayForm::Gradient }.warning(true).is_some());
        assert!(SrSteConfig { decay: 2e-4, decay_form: DecayForm::Gradient }.warning(false).is_none());
        Ok(())
    }
}
