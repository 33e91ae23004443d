//! Pluggable regularizers.
//!
//! A [`Regularizer`] can add a penalty to the loss (differentiated with it),
//! adjust gradients between backward and the optimizer step, and keep state
//! across steps and epochs (`on_step`/`on_epoch`), which is how growing
//! regularization raises λ and ADMM updates its dual variables. L1 and L2
//! here act on the gradient directly (grad += λ·sign(w), grad += λ·w), the
//! exact gradients of λ‖w‖₁ and λ/2‖w‖², without a second graph.

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use espalier_core::select::SelectorSpec;
use espalier_core::{ParamStore, Result, Selector};
use serde::{Deserialize, Serialize};

/// Where the loop is when it calls a regularizer.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepInfo {
    /// Epoch over the whole run (0-based).
    pub epoch: usize,
    /// Optimizer steps taken over the whole run.
    pub global_step: u64,
}

/// A term of the training objective beyond the task loss.
pub trait Regularizer: Send {
    /// Short name for logs.
    fn name(&self) -> &str;
    /// A differentiable penalty added to the loss.
    fn penalty(&self, _params: &ParamStore, _step: &StepInfo) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Adjusts gradients between backward and the optimizer step.
    fn adjust_grads(&mut self, _params: &ParamStore, _grads: &mut GradStore, _step: &StepInfo) -> Result<()> {
        Ok(())
    }
    /// Called after every optimizer step.
    fn on_step(&mut self, _params: &ParamStore, _step: &StepInfo) -> Result<()> {
        Ok(())
    }
    /// Called after every epoch.
    fn on_epoch(&mut self, _params: &ParamStore, _step: &StepInfo) -> Result<()> {
        Ok(())
    }
}

/// Regularizers as written in experiment configs (`[[train.regularizers]]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegularizerConfig {
    /// λ‖w‖₁ over the selected parameters.
    L1 {
        /// Strength λ.
        lambda: f64,
        /// Which parameters (default: prunable weights).
        #[serde(default)]
        params: SelectorSpec,
    },
    /// λ/2‖w‖² over the selected parameters.
    L2 {
        /// Strength λ.
        lambda: f64,
        /// Which parameters (default: prunable weights).
        #[serde(default)]
        params: SelectorSpec,
    },
}

impl RegularizerConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        let (RegularizerConfig::L1 { lambda, params } | RegularizerConfig::L2 { lambda, params }) = self;
        if !(*lambda >= 0.0 && lambda.is_finite()) {
            return Err(format!("{path}.lambda must be a finite number >= 0, found {lambda}"));
        }
        Selector::new(params).map_err(|e| format!("{path}.params: {e}"))?;
        Ok(())
    }

    /// Builds the regularizer.
    pub fn build(&self) -> Result<Box<dyn Regularizer>> {
        Ok(match self {
            RegularizerConfig::L1 { lambda, params } => {
                Box::new(Norm { l1: true, lambda: *lambda, selector: Selector::new(params)? })
            }
            RegularizerConfig::L2 { lambda, params } => {
                Box::new(Norm { l1: false, lambda: *lambda, selector: Selector::new(params)? })
            }
        })
    }
}

/// L1 or L2 weight penalty applied through the gradient.
pub struct Norm {
    l1: bool,
    lambda: f64,
    selector: Selector,
}

impl Regularizer for Norm {
    fn name(&self) -> &str {
        if self.l1 {
            "l1"
        } else {
            "l2"
        }
    }
    fn adjust_grads(&mut self, params: &ParamStore, grads: &mut GradStore, _step: &StepInfo) -> Result<()> {
        for p in params.iter().filter(|p| self.selector.matches(p)) {
            let Some(g) = grads.get(p.tensor()) else { continue };
            // The effective weights: pruned entries stay at zero gradient.
            let w = p.effective()?;
            let extra = if self.l1 { w.sign()? } else { w };
            let g = (g + (extra * self.lambda)?)?;
            grads.insert(p.tensor(), g);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use espalier_core::init::Init;
    use espalier_core::{ParamBuilder, ParamKind};

    #[test]
    fn l1_and_l2_add_their_exact_gradients_to_selected_weights_only() -> Result<()> {
        let pb = ParamBuilder::from_seed(0, DType::F32, &Device::Cpu);
        let w = pb.pp("fc").param("weight", &[4], ParamKind::Weight, Init::Const(0.0))?;
        let b = pb.pp("fc").param("bias", &[4], ParamKind::Bias, Init::Const(0.5))?;
        w.set(&Tensor::new(&[2f32, -3., 0.5, -0.25], &Device::Cpu)?)?;
        w.set_mask(Some(Tensor::new(&[1f32, 1., 1., 0.], &Device::Cpu)?))?;
        let store = pb.finish().0;
        for (cfg, expect) in [
            (RegularizerConfig::L2 { lambda: 0.1, params: SelectorSpec::default() }, [1.2f32, 0.7, 1.05, 1.0]),
            (RegularizerConfig::L1 { lambda: 0.1, params: SelectorSpec::default() }, [1.1f32, 0.9, 1.1, 1.0]),
        ] {
            // loss = sum(w_eff) + sum(b): gradient 1 everywhere (0 for the masked entry of w)
            let loss = (w.effective()?.sum_all()? + b.tensor().sum_all()?)?;
            let mut grads = loss.backward()?;
            cfg.build()?.adjust_grads(&store, &mut grads, &StepInfo::default())?;
            let gw = grads.get(w.tensor()).unwrap().to_vec1::<f32>()?;
            let expect: Vec<f32> =
                expect.iter().zip([1f32, 1., 1., 0.]).map(|(e, m)| if m == 0.0 { 0.0 } else { *e }).collect();
            for (g, e) in gw.iter().zip(&expect) {
                assert!((g - e).abs() < 1e-6, "{cfg:?}: {gw:?} vs {expect:?}");
            }
            // The bias is not selected by default: its gradient is untouched.
            assert_eq!(grads.get(b.tensor()).unwrap().to_vec1::<f32>()?, [1.0; 4]);
        }
        Ok(())
    }
}
