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
