//! GReg exactly as the authors' code runs it (`structured.greg.mode =
//! "reference"`, the default): Wang, Qin, Zhang & Fu, "Neural Pruning via
//! Growing Regularization", ICLR 2021, arXiv 2012.09243, as implemented in
//! MingSun-Tse/Regularization-Pruning (`pruner/reg_pruner.py`,
//! `pruner/meta_pruner.py`). Where the paper and the code differ, this
//! module follows the code:
//!
//! - **Which weights.** The penalty and the score act on the *producing*
//!   weight of each unit only: the conv filter (`W[j, :, :, :]`) or the
//!   linear row (`W[j, :]`), i.e. the set's trainable members indexed along
//!   axis 0 with two or more dimensions. BatchNorm's γ/β, biases and the
//!   consumer's columns get no penalty and count for no score
//!   (`_apply_reg`: `m.weight.grad += reg * m.weight` on conv/linear weights).
//! - **Score**: the mean `|W|` of the filter/row (`_get_score`, `wg =
//!   filter`), computed in f32 ([`filter_means`], which the one-shot
//!   `filter_l1` baseline shares, so both remove the same units).
//! - **Count**: `n_pruned = min(ceil(pr·n), n − 1)`; the pruned units are
//!   the `n_pruned` of smallest score (`_pick_pruned`; the reference sorts
//!   unstably, Espalier breaks ties by index).
//! - **Schedule.** The phase counts its iterations from t = 0; at every t
//!   with `t % K_u == 0` each layer not yet finished is updated *before* the
//!   optimizer step of that iteration, from the weights as they are then
//!   (`prune()`: forward, `_update_reg`, backward, `_apply_reg`, step). So
//!   the first increment acts on step 0.
//! - **λ in f32**: `reg += δ` on an f32 tensor, compared in f32 with the
//!   ceiling (20 × 0.05 = 1.00000012 > 1.0 decides a stop step).
//! - **Magnitude ratio, per layer**: `mean(score[kept]) / mean(score[pruned])`,
//!   smoothed as `h ← 0.9·h + 0.1·r` (the first value taken as is), in f32
//!   (`_update_mag_ratio`).
//! - **GReg-1 stop** (`_greg_1`): after its increment, a layer is finished
//!   when every layer's smoothed ratio seen so far (this call included, in
//!   model order) is ≥ `ratio_stop`, or when its own λ > `ceiling`.
//! - **GReg-2** (`_greg_2`): every unit's λ grows by `uniform_delta` until
//!   λ ≥ `uniform_ceiling`; the layer then picks its units by the current
//!   scores (the smoothed ratio is tracked during the uniform phase too,
//!   against the pick of the moment). From its next update on, the pruned
//!   units' λ grows by `delta` *from the uniform ceiling* and the kept units'
//!   λ is set to `kept_penalty` (−1e-4). A layer is finished, once it has
//!   picked, when its own smoothed ratio ≥ `ratio_stop` or its λ > `ceiling`.
//! - **Stabilisation**: a finished layer's λ is held. When the last layer
//!   finishes at iteration s, the penalty is held for `stabilize_steps` more
//!   iterations; the units are removed after the step of iteration
//!   `s + stabilize_steps`.
//!
//! Checked by the differential test `tests/greg_reference.rs` against
//! fixtures produced by the reference code itself
//! (`scripts/reference/greg_reference.py`).

use candle_core::Tensor;
use espalier_core::{GroupSet, Keep, ParamStore, Result};
use serde::{Deserialize, Serialize};

use crate::structured::norm::{filter_means, producers};

/// The reference's λ schedule parameters, in the precision it uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub interval: u64,
    pub delta: f32,
    pub ceiling: f32,
    pub ratio_stop: f32,
    pub uniform_delta: f32,
    pub uniform_ceiling: f32,
    pub kept_penalty: f32,
    pub stabilize_steps: u64,
    pub two: bool,
}

/// One layer (group set) of the reference schedule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Layer {
    /// Group-set name.
    pub name: String,
    /// Units in the set.
    pub size: usize,
    /// Units to remove, `min(ceil(pr·n), n − 1)`.
    pub n_pruned: usize,
    /// The chosen units (ascending); empty before GReg-2 picks.
    pub pruned: Vec<usize>,
    /// Whether the units are chosen (GReg-1: from the start).
    pub picked: bool,
    /// λ of the pruned units (every unit's during GReg-2's uniform phase).
    pub lambda: f32,
    /// λ of the kept units (0 for GReg-1, the uniform λ, then `kept_penalty`).
    pub kept_lambda: f32,
    /// Smoothed magnitude ratio (None before the first update).
    pub ratio: Option<f32>,
    /// Phase iteration at which GReg-2 picked the units.
    pub pick_step: Option<u64>,
    /// Phase iteration at which the layer's λ stopped growing.
    pub finish_step: Option<u64>,
}

/// One update of one layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RefTracePoint {
    /// Iteration of the penalty phase (0-based, the reference's `total_iter`).
    pub step: u64,
    /// Optimizer step over the whole run.
    pub global_step: u64,
    /// Group-set name.
    pub layer: String,
    /// `uniform` (GReg-2 before its pick) or `push`.
    pub phase: super::Phase,
    /// λ of the pruned units after the update (the largest λ of the layer).
    pub lambda: f64,
    /// λ of the kept units after the update.
    pub kept_lambda: f64,
    /// Smoothed kept/pruned magnitude ratio after the update.
    pub ratio: f64,
    /// The layer finished at this update.
    pub finished: bool,
}

/// Where a reference-mode run is (checkpointed with the run).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct RefState {
    /// Per group set, in model order.
    pub layers: Vec<Layer>,
    /// Iterations of the penalty phase done so far (the next one's index).
    pub t: u64,
    /// Iteration at which the last layer finished (the stabilisation starts).
    pub stop_step: Option<u64>,
    /// The stabilisation is over: the units can be removed.
    pub done: bool,
    /// Every update of every layer.
    pub trace: Vec<RefTracePoint>,
}

/// The reference's pruned count for a layer of `n` units at ratio `pr`.
pub fn pruned_count(pr: f64, n: usize) -> usize {
    if pr <= 0.0 || n == 0 {
        return 0;
    }
    // `pr` usually arrives as 1 − keep_ratio (0.7 → 0.30000000000000004):
    // a relative slack of 1e-9 keeps ceil(0.3·10) at 3, as the reference's
    // `--stage_pr 0.3` gives.
    let x = pr * n as f64;
    ((x - 1e-9 * x.max(1.0)).ceil() as usize).min(n - 1)
}

/// The `n_pruned` units of smallest score, ascending by index.
fn pick(scores: &[f32], n_pruned: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut out: Vec<usize> = idx.into_iter().take(n_pruned).collect();
    out.sort_unstable();
    out
}

/// `mean(score[kept]) / mean(score[pruned])` in f32, as the reference;
/// where the reference would get ∞ (no pruned unit, or all pruned weights
/// exactly 0) this gives `f32::MAX`, which passes every stop the same way
/// and, unlike ∞, survives the JSON of a checkpoint.
fn raw_ratio(scores: &[f32], pruned: &[usize]) -> f32 {
    if pruned.is_empty() {
        return f32::MAX;
    }
    let (mut k, mut nk, mut p) = (0f64, 0usize, 0f64);
    for (u, &s) in scores.iter().enumerate() {
        if pruned.binary_search(&u).is_ok() {
            p += s as f64;
        } else {
            k += s as f64;
            nk += 1;
        }
    }
    let mk = (k / nk.max(1) as f64) as f32;
    let mp = (p / pruned.len() as f64) as f32;
    let r = mk / mp;
    if r.is_finite() {
        r
    } else {
        f32::MAX
    }
}

impl Layer {
    fn smooth(&mut self, r: f32) {
        self.ratio = Some(match self.ratio {
            Some(h) => (h * 0.9f32 + r * 0.1f32).min(f32::MAX),
            None => r,
        });
    }
    fn lambda_max(&self) -> f32 {
        self.lambda.max(self.kept_lambda)
    }
}

impl RefState {
    /// The schedule over `sets`, keeping `kept[set]` units of each (GReg-1
    /// picks its units now, by the current scores).
    pub(crate) fn new(params: &ParamStore, sets: &[GroupSet], kept: &[usize], two: bool) -> Result<Self> {
        let mut layers = Vec::new();
        for (set, &k) in sets.iter().zip(kept) {
            let n_pruned = set.size - k.min(set.size);
            let mut layer = Layer {
                name: set.name.clone(),
                size: set.size,
                n_pruned,
                pruned: Vec::new(),
                picked: false,
                lambda: 0.0,
                kept_lambda: 0.0,
                ratio: None,
                pick_step: None,
                finish_step: None,
            };
            if !two {
                layer.pruned = pick(&filter_means(params, set)?, n_pruned);
                layer.picked = true;
            }
            layers.push(layer);
        }
        Ok(RefState { layers, ..RefState::default() })
    }

    /// The update of iteration `self.t` (a no-op unless `t % K_u == 0` and
    /// some layer is still growing), from the weights before its step.
    pub(crate) fn update(
        &mut self,
        params: &ParamStore,
        sets: &[GroupSet],
        s: &Schedule,
        global_step: u64,
    ) -> Result<()> {
        let t = self.t;
        if self.stop_step.is_some() || !t.is_multiple_of(s.interval) {
            return Ok(());
        }
        for (i, set) in sets.iter().enumerate() {
            if self.layers[i].finish_step.is_some() {
                continue;
            }
            if self.layers[i].n_pruned == 0 {
                // pr = 0: finished at once, nothing penalised.
                let l = &mut self.layers[i];
                l.picked = true;
                l.finish_step = Some(t);
                continue;
            }
            let scores = filter_means(params, set)?;
            let finished = if s.two { self.greg2(i, &scores, s, t) } else { self.greg1(i, &scores, s) };
            let l = &mut self.layers[i];
            if finished {
                l.finish_step = Some(t);
            }
            // GReg-2's update that picks already counts as the push's start.
            let uniform = s.two && l.pick_step.is_none();
            self.trace.push(RefTracePoint {
                step: t,
                global_step,
                layer: l.name.clone(),
                phase: if uniform { super::Phase::Uniform } else { super::Phase::Push },
                lambda: l.lambda as f64,
                kept_lambda: l.kept_lambda as f64,
                ratio: l.ratio.map_or(0.0, f64::from),
                finished,
            });
            if finished {
                tracing::info!(step = global_step, layer = %l.name, lambda = l.lambda, ratio = ?l.ratio, "GReg: λ stops growing");
            }
        }
        if self.layers.iter().all(|l| l.finish_step.is_some()) {
            self.stop_step = Some(t);
            tracing::info!(step = global_step, iteration = t, "GReg: every layer finished; stabilising");
        }
        Ok(())
    }

    /// `_greg_1`: ratio first (before the increment), then λ += δ; finished
    /// when every ratio seen so far passes, or the layer's λ > ceiling.
    fn greg1(&mut self, i: usize, scores: &[f32], s: &Schedule) -> bool {
        let l = &mut self.layers[i];
        let r = raw_ratio(scores, &l.pruned);
        l.smooth(r);
        l.lambda += s.delta;
        let lambda_max = l.lambda_max();
        let all = self.layers.iter().filter_map(|l| l.ratio).all(|h| h >= s.ratio_stop);
        all || lambda_max > s.ceiling
    }

    /// `_greg_2`: uniform growth, the pick, then the push from the ceiling.
    fn greg2(&mut self, i: usize, scores: &[f32], s: &Schedule, t: u64) -> bool {
        let l = &mut self.layers[i];
        if l.pick_step.is_some() {
            l.lambda += s.delta;
            l.kept_lambda = s.kept_penalty;
            let r = raw_ratio(scores, &l.pruned);
            l.smooth(r);
        } else {
            l.lambda += s.uniform_delta;
            l.kept_lambda = l.lambda;
            let r = raw_ratio(scores, &pick(scores, l.n_pruned));
            l.smooth(r);
        }
        if l.pick_step.is_none() && l.lambda_max() >= s.uniform_ceiling {
            l.pick_step = Some(t);
            l.pruned = pick(scores, l.n_pruned);
            l.picked = true;
        }
        l.pick_step.is_some() && (l.ratio.unwrap_or(0.0) >= s.ratio_stop || l.lambda_max() > s.ceiling)
    }

    /// After the optimizer step of iteration `self.t`.
    pub(crate) fn after_step(&mut self, s: &Schedule) {
        if let Some(stop) = self.stop_step {
            if !self.done && self.t - stop == s.stabilize_steps {
                self.done = true;
                tracing::info!(iteration = self.t, "GReg: stabilised; the units can be removed");
            }
        }
        self.t += 1;
    }

    /// Per-unit λ of `set` (pruned units `lambda`, the others `kept_lambda`).
    pub(crate) fn coefficients(&self, i: usize) -> Vec<f32> {
        let l = &self.layers[i];
        (0..l.size).map(|u| if l.pruned.binary_search(&u).is_ok() { l.lambda } else { l.kept_lambda }).collect()
    }

    /// The kept units: the pick, or (GReg-2 stopped before picking) the
    /// current scores' pick.
    pub(crate) fn keep(&self, params: &ParamStore, sets: &[GroupSet]) -> Result<Keep> {
        let mut keep = Keep::new();
        for (l, set) in self.layers.iter().zip(sets) {
            let pruned = if l.picked { l.pruned.clone() } else { pick(&filter_means(params, set)?, l.n_pruned) };
            keep.insert(l.name.clone(), (0..l.size).filter(|u| pruned.binary_search(u).is_err()).collect());
        }
        Ok(keep)
    }
}

/// `grad += λ_u · W` on the producing weights of `set` (`_apply_reg`).
pub(crate) fn apply(
    params: &ParamStore,
    set: &GroupSet,
    coef: &[f32],
    grads: &mut candle_core::backprop::GradStore,
) -> Result<()> {
    let coef: Vec<f32> = coef.iter().flat_map(|&c| std::iter::repeat_n(c, set.block)).collect();
    for m in producers(params, set)? {
        let p = params.get(&m.param)?;
        let Some(g) = grads.get(p.tensor()) else { continue };
        let mut shape = vec![1; p.dims().len()];
        shape[0] = coef.len();
        let c = Tensor::from_vec(coef.clone(), shape, g.device())?.to_dtype(g.dtype())?;
        let g = (g + p.effective()?.to_dtype(g.dtype())?.broadcast_mul(&c)?)?;
        grads.insert(p.tensor(), g);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruned_count_is_the_references() {
        assert_eq!(pruned_count(0.5, 4), 2);
        assert_eq!(pruned_count(1.0 - 0.7, 10), 3);
        assert_eq!(pruned_count(0.3, 6), 2);
        assert_eq!(pruned_count(0.99, 4), 3);
        assert_eq!(pruned_count(0.0, 4), 0);
        assert_eq!(pruned_count(0.1, 16), 2);
    }

    #[test]
    fn lambda_accumulates_in_f32() {
        let mut l = 0f32;
        for _ in 0..20 {
            l += 0.05f32;
        }
        assert!(l > 1.0f32, "{l}");
        assert_eq!(pick(&[0.3, 0.1, 0.2, 0.4], 2), vec![1, 2]);
        assert!((raw_ratio(&[0.3, 0.1, 0.2, 0.4], &[1, 2]) - 0.35 / 0.15).abs() < 1e-6);
    }
}
