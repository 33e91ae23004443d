//! Pluggable regularizers.
//!
//! A [`Regularizer`] can add a penalty to the loss (differentiated with it),
//! adjust gradients between backward and the optimizer step, and keep state
//! across steps and epochs (`on_step`/`on_epoch`), which is how growing
//! regularization raises λ and ADMM updates its dual variables. L1 and L2
//! here act on the gradient directly (grad += λ·sign(w), grad += λ·w), the
//! exact gradients of λ‖w‖₁ and λ/2‖w‖², without a second graph.
//!
//! The group lasso over rows and columns is SPUR's retraining term (Park et
//! al., "Structured Pattern Pruning Using Regularization", 2021, arXiv
//! 2109.08814; the penalty as Espalier defines it, since the paper has no
//! public code): R(W) = λ_r Σ_i ‖W_i,:‖₂ + λ_c Σ_j ‖W_:,j‖₂ on the masked
//! weights, here with λ_r = λ_c = λ. Two modes, with λ in different units:
//!
//! - `mode = "gradient"` (the default, SPUR as specified): the gradient
//!   λ·W_i,:/‖W_i,:‖₂ (and likewise per column) is added to ∂L/∂W, pulling
//!   whole rows (output units, filters) and columns (inputs, input channels)
//!   towards zero together, so that magnitude pruning later empties them.
//!   λ is in the loss's gradient units; the specified range is 1e-5 … 1e-3.
//!   Under plain or momentum SGD each step moves a line by about η·λ. Under
//!   an adaptive optimizer (Adam/AdamW) the gradient is normalised with the
//!   task's, so the pull depends on the ratio of λ to the task gradient and
//!   every weight moves at most about one learning rate per step: a line
//!   empties only after many steps (a LeNet-300 run with ~940 steps per
//!   round emptied 54% of the pruned weights' lines, issue #20; 16 steps per
//!   round empty none).
//! - `mode = "proximal"` (a variant, named `spur-prox` in reports): after
//!   each optimizer step the penalty's proximal step is taken exactly, as
//!   proximal gradient descent does for a non-smooth term (Parikh & Boyd,
//!   "Proximal Algorithms", 2014, §6.5.4, the group-lasso prox):
//!   `line ← line · max(0, 1 − η·λ/‖line‖₂)` with the step's learning rate
//!   η, rows first and then columns, decoupled from the adaptive scaling the
//!   way AdamW's weight decay is. λ is then an absolute shrink of every
//!   line's norm per unit learning rate and step, whatever the optimizer:
//!   η·λ per step (AdamW at η = 5e-5 needs λ of order 10 to take ~1e-3 off a
//!   line per step). Under plain SGD the two modes take the same step for
//!   the same λ (to first order); under Adam they do not, so their λ values
//!   cannot be compared. A line whose norm falls below η·λ becomes exactly
//!   zero. Only the masked (kept) weights are shrunk: the prox of a penalty
//!   on W ⊙ M leaves the pruned entries as they are, so a straight-through
//!   (SR-STE) parameter keeps the dense values of its pruned weights.

use std::collections::BTreeMap;

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
    /// Learning rate of the optimizer step just taken (`on_step`), or of the
    /// coming one; 0 where there is none (e.g. `on_epoch`).
    pub lr: f64,
    /// Index of the step within its epoch (0-based).
    pub step_in_epoch: usize,
    /// Optimizer steps in the epoch.
    pub steps_per_epoch: usize,
}

/// A term of the training objective beyond the task loss.
pub trait Regularizer: Send {
    /// Short name for logs.
    fn name(&self) -> &str;
    /// Sees the task loss's gradients before any regularizer adjusts them
    /// (statistics gathered during training, e.g. movement scores).
    fn observe(&mut self, _params: &ParamStore, _grads: &GradStore, _step: &StepInfo) -> Result<()> {
        Ok(())
    }
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
    /// State to save in checkpoints (keys unique within this regularizer),
    /// so that a resumed run continues exactly.
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(BTreeMap::new())
    }
    /// Restores what [`Regularizer::state`] saved.
    fn load_state(&mut self, _state: &BTreeMap<String, Tensor>) -> Result<()> {
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
    /// Row and/or column group lasso on the masked weights (SPUR).
    GroupLasso {
        /// Strength λ (λ_r = λ_c = λ).
        lambda: f64,
        /// Rows (dim 0), columns (dim 1) or both.
        #[serde(default)]
        lines: Lines,
        /// First epoch (run-wide) with the penalty; SPUR starts it at the
        /// first retraining round, i.e. after the dense epochs.
        #[serde(default)]
        start_epoch: usize,
        /// `gradient` (SPUR as specified: λ ~ 1e-5 … 1e-3 added to the
        /// gradient) or `proximal` (`line ← line·max(0, 1 − lr·λ/‖line‖)`
        /// after every optimizer step; λ in its own units, see the module
        /// docs).
        #[serde(default)]
        mode: GroupLassoMode,
        /// Which parameters (default: prunable weights).
        #[serde(default)]
        params: SelectorSpec,
    },
}

/// How the group lasso acts (see the module docs for λ's units in each).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupLassoMode {
    /// λ·W/‖line‖ added to the gradient (SPUR as specified).
    #[default]
    Gradient,
    /// The exact proximal step after each optimizer step.
    Proximal,
}

/// Which lines of a matrix the group lasso groups.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Lines {
    /// Rows and columns.
    #[default]
    Both,
    /// Rows only (slices along dim 0).
    Rows,
    /// Columns only (slices along dim 1).
    Cols,
}

impl RegularizerConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        let (RegularizerConfig::L1 { lambda, params }
        | RegularizerConfig::L2 { lambda, params }
        | RegularizerConfig::GroupLasso { lambda, params, .. }) = self;
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
            RegularizerConfig::GroupLasso { lambda, lines, start_epoch, mode, params } => Box::new(GroupLasso {
                lambda: *lambda,
                lines: *lines,
                start_epoch: *start_epoch,
                proximal: *mode == GroupLassoMode::Proximal,
                selector: Selector::new(params)?,
            }),
        })
    }
}

/// Row/column group lasso applied through the gradient (see the module docs).
pub struct GroupLasso {
    lambda: f64,
    lines: Lines,
    start_epoch: usize,
    proximal: bool,
    selector: Selector,
}

impl GroupLasso {
    /// The selected matrices (and convolution kernels), with their weights
    /// viewed as `(rows, cols, rest)`: a kernel window belongs to its row and
    /// its column.
    fn lines_of<'a>(&'a self, params: &'a ParamStore) -> impl Iterator<Item = &'a espalier_core::Param> + 'a {
        params.iter().filter(|p| self.selector.matches(p) && p.dims().len() >= 2)
    }

    /// The line groupings in use: the dims summed over for rows, for columns.
    fn groupings(&self) -> Vec<[usize; 2]> {
        let mut out = Vec::new();
        if self.lines != Lines::Cols {
            out.push([1, 2]);
        }
        if self.lines != Lines::Rows {
            out.push([0, 2]);
        }
        out
    }

    /// The scale of the proximal step of `t·Σ‖line‖₂` for the lines along
    /// `dims`: `max(0, 1 − t/‖line‖)`, the step being `w ← w·scale` (an
    /// all-zero line stays zero).
    fn scale(w: &Tensor, dims: &[usize], t: f64) -> Result<Tensor> {
        Ok((1.0 - (inv_norms(w, dims)? * t)?)?.relu()?)
    }

    /// ∂/∂W of λ Σ ‖line‖₂ for the lines along `dims` (those summed over):
    /// λ·W/‖line‖, zero for an all-zero line (its subgradient set holds 0).
    fn grad(&self, w: &Tensor, dims: &[usize]) -> Result<Tensor> {
        Ok((w.broadcast_mul(&inv_norms(w, dims)?)? * self.lambda)?)
    }
}

impl Regularizer for GroupLasso {
    fn name(&self) -> &str {
        "group_lasso"
    }
    fn adjust_grads(&mut self, params: &ParamStore, grads: &mut GradStore, step: &StepInfo) -> Result<()> {
        if self.proximal || step.epoch < self.start_epoch {
            return Ok(());
        }
        for p in self.lines_of(params) {
            let Some(g) = grads.get(p.tensor()) else { continue };
            let d = p.dims();
            let w = p.effective()?.reshape((d[0], d[1], d[2..].iter().product::<usize>()))?;
            let mut extra = w.zeros_like()?;
            for dims in self.groupings() {
                extra = (extra + self.grad(&w, &dims)?)?;
            }
            let g = (g + extra.reshape(d)?)?;
            grads.insert(p.tensor(), g);
        }
        Ok(())
    }
    fn on_step(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        if !self.proximal || step.epoch < self.start_epoch {
            return Ok(());
        }
        let t = step.lr * self.lambda;
        for p in self.lines_of(params) {
            let d = p.dims();
            let shape = (d[0], d[1], d[2..].iter().product::<usize>());
            // The prox of a penalty on W ⊙ M moves the kept weights only:
            // stored ← stored − (w⊙m − prox(w⊙m)). A straight-through
            // parameter (SR-STE) keeps the dense values of its pruned
            // entries; writing w ⊙ m back would zero them.
            let masked = p.effective()?.detach().reshape(shape)?;
            let mut w = masked.clone();
            for dims in self.groupings() {
                w = w.broadcast_mul(&Self::scale(&w, &dims, t)?)?;
            }
            let stored = (p.tensor().detach() - (masked - w)?.reshape(d.as_slice())?)?;
            p.set(&stored)?;
        }
        Ok(())
    }
}

/// `1/‖line‖₂` of the lines along `dims` (those summed over), 0 for an
/// all-zero line.
fn inv_norms(w: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let norms = w.sqr()?.sum_keepdim(dims)?.sqrt()?;
    let pos = norms.gt(0.0)?.to_dtype(w.dtype())?;
    Ok((pos.clone() / (norms + (1.0 - &pos)?)?)?)
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

    /// λ(Σ_i ‖W_i,:‖ + Σ_j ‖W_:,j‖) by finite differences against the
    /// regularizer's gradient, on a masked matrix with an all-zero row.
    #[test]
    fn group_lasso_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let pb = ParamBuilder::from_seed(1, DType::F64, &dev);
        let w = pb.pp("fc").param("weight", &[3, 4], ParamKind::Weight, Init::Normal { std: 1.0 })?;
        #[rustfmt::skip]
        let m = Tensor::new(&[[1f64, 1., 0., 1.], [0., 0., 0., 0.], [1., 0., 1., 1.]], &dev)?;
        w.set_mask(Some(m.clone()))?;
        let store = pb.finish().0;
        let lambda = 0.3;
        let value = |x: &Tensor| -> Result<f64> {
            let x = (x * &m)?;
            let rows = x.sqr()?.sum(1)?.sqrt()?.sum_all()?.to_scalar::<f64>()?;
            let cols = x.sqr()?.sum(0)?.sqrt()?.sum_all()?.to_scalar::<f64>()?;
            Ok(lambda * (rows + cols))
        };
        let cfg = RegularizerConfig::GroupLasso {
            lambda,
            lines: Lines::Both,
            start_epoch: 1,
            mode: GroupLassoMode::Gradient,
            params: SelectorSpec::default(),
        };
        let mut reg = cfg.build()?;
        // loss = sum(w ⊙ m): its own gradient is m, subtracted below
        let mut grads = w.effective()?.sum_all()?.backward()?;
        // before start_epoch: nothing
        reg.adjust_grads(&store, &mut grads, &StepInfo { epoch: 0, global_step: 0, lr: 0.0, ..Default::default() })?;
        assert_eq!(grads.get(w.tensor()).unwrap().to_vec2::<f64>()?, m.to_vec2::<f64>()?);
        reg.adjust_grads(&store, &mut grads, &StepInfo { epoch: 1, global_step: 0, lr: 0.0, ..Default::default() })?;
        let g = (grads.get(w.tensor()).unwrap() - &m)?.to_vec2::<f64>()?;
        let w0 = w.tensor().to_vec2::<f64>()?;
        let mv = m.to_vec2::<f64>()?;
        for i in 0..3 {
            for j in 0..4 {
                if mv[i][j] == 0.0 {
                    assert_eq!(g[i][j], 0.0, "pruned entry ({i},{j}) gets no push");
                    continue;
                }
                let h = 1e-6;
                let mut plus = w0.clone();
                plus[i][j] += h;
                let mut minus = w0.clone();
                minus[i][j] -= h;
                let fd = (value(&Tensor::new(plus, &dev)?)? - value(&Tensor::new(minus, &dev)?)?) / (2.0 * h);
                assert!((fd - g[i][j]).abs() < 1e-6, "({i},{j}): {fd} vs {}", g[i][j]);
            }
        }
        Ok(())
    }

    /// The proximal step by hand: rows scaled by max(0, 1 − lr·λ/‖row‖),
    /// then columns; a row whose norm is below lr·λ becomes exactly zero;
    /// the gradient is left alone and nothing happens before `start_epoch`.
    #[test]
    fn proximal_group_lasso_shrinks_lines_and_empties_short_ones() -> Result<()> {
        let dev = Device::Cpu;
        let pb = ParamBuilder::from_seed(2, DType::F64, &dev);
        let w = pb.pp("fc").param("weight", &[3, 2], ParamKind::Weight, Init::Const(0.0))?;
        w.set(&Tensor::new(&[[3f64, 4.], [0.3, 0.4], [0., 2.]], &dev)?)?;
        let store = pb.finish().0;
        let cfg = |lines| RegularizerConfig::GroupLasso {
            lambda: 10.0,
            lines,
            start_epoch: 1,
            mode: GroupLassoMode::Proximal,
            params: SelectorSpec::default(),
        };
        // lr·λ = 0.1·10 = 1: row norms 5, 0.5, 2 -> scales 0.8, 0, 0.5.
        let step = |epoch| StepInfo { epoch, global_step: 1, lr: 0.1, ..Default::default() };
        let mut reg = cfg(Lines::Rows).build()?;
        let mut grads = w.effective()?.sum_all()?.backward()?;
        reg.adjust_grads(&store, &mut grads, &step(1))?;
        assert_eq!(grads.get(w.tensor()).unwrap().to_vec2::<f64>()?, [[1.0; 2]; 3], "gradient untouched");
        reg.on_step(&store, &step(0))?;
        assert_eq!(w.tensor().to_vec2::<f64>()?[0], [3.0, 4.0], "before start_epoch");
        reg.on_step(&store, &step(1))?;
        let got = w.tensor().to_vec2::<f64>()?;
        let want = [[2.4, 3.2], [0.0, 0.0], [0.0, 1.0]];
        for (g, e) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - e).abs() < 1e-12, "rows: {got:?} vs {want:?}");
        }
        // Both: rows as above, then columns of that (norms 2.4 and √(3.2² + 1)).
        w.set(&Tensor::new(&[[3f64, 4.], [0.3, 0.4], [0., 2.]], &dev)?)?;
        cfg(Lines::Both).build()?.on_step(&store, &step(1))?;
        let got = w.tensor().to_vec2::<f64>()?;
        let c1 = 1.0 - 1.0 / (3.2f64 * 3.2 + 1.0).sqrt();
        let want = [[2.4 * (1.0 - 1.0 / 2.4), 3.2 * c1], [0.0, 0.0], [0.0, c1]];
        for (g, e) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - e).abs() < 1e-12, "both: {got:?} vs {want:?}");
        }
        Ok(())
    }

    /// SR-STE keeps dense weights under a straight-through mask: the
    /// proximal step of the penalty on W ⊙ M shrinks the kept entries by
    /// their masked line's factor and leaves the pruned entries' dense values
    /// as they are (regression: the step once wrote W ⊙ M back, zeroing
    /// them), also when the line's kept part is emptied.
    #[test]
    fn proximal_step_keeps_the_dense_values_of_a_straight_through_parameter() -> Result<()> {
        let dev = Device::Cpu;
        let pb = ParamBuilder::from_seed(2, DType::F64, &dev);
        let w = pb.pp("fc").param("weight", &[2, 3], ParamKind::Weight, Init::Const(0.0))?;
        w.set(&Tensor::new(&[[3f64, 4., 0.5], [0.3, -0.7, 0.4]], &dev)?)?;
        let store = pb.finish().0;
        w.set_straight_through(true)?;
        w.set_mask(Some(Tensor::new(&[[1f64, 1., 0.], [1., 0., 1.]], &dev)?))?;
        let mut reg = RegularizerConfig::GroupLasso {
            lambda: 10.0,
            lines: Lines::Rows,
            start_epoch: 0,
            mode: GroupLassoMode::Proximal,
            params: SelectorSpec::default(),
        }
        .build()?;
        // lr·λ = 1. Row 0: masked norm 5, scale 0.8 on the kept entries; row 1:
        // masked norm 0.5 < 1, its kept entries become exactly 0. The pruned
        // entries (0.5 and -0.7) keep their dense values.
        reg.on_step(&store, &StepInfo { epoch: 0, global_step: 1, lr: 0.1, ..Default::default() })?;
        let got = w.tensor().to_vec2::<f64>()?;
        let want = [[2.4, 3.2, 0.5], [0.0, -0.7, 0.0]];
        for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(w.effective()?.to_vec2::<f64>()?[1], [0.0, 0.0, 0.0]);
        Ok(())
    }
}
