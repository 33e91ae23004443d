//! ADMM pruning towards a sparsity pattern (Zhang, Ye, Zhang, Tang, Wen,
//! Fardad & Wang, "A Systematic DNN Weight Pruning Framework using
//! Alternating Direction Method of Multipliers", ECCV 2018, arXiv 1804.03294,
//! eqs. 4–9, reference code KaiqiZhang/admm-pruning; applied to N:M patterns
//! of transformers by Wang, "ADMM Based Semi-Structured Pattern Pruning
//! Framework for Transformer", 2024, arXiv 2407.08334). It solves
//! min f(W) s.t. W ∈ S, where S is the set of weights that obey the
//! pattern, by splitting W = Z (scaled form: Boyd, Parikh, Chu, Peleato &
//! Eckstein, "Distributed Optimization and Statistical Learning via ADMM",
//! 2011, §3.1.1 and §3.3 for the residuals):
//! - W-step: train on f(W) + ρ/2 Σ_l ‖W_l − Z_l + U_l‖² (eq. 6 of Zhang
//!   et al.) for `every_steps` optimizer steps (or `every_epochs`), either
//!   - `penalty = "gradient"` (the default, as the references do): the
//!     gradient gets ρ(W − Z + U) ([`Admm::adjust_grads`]); or
//!   - `penalty = "proximal"`: the penalty's exact proximal step after every
//!     optimizer step, W ← (W + ηρ(Z − U))/(1 + ηρ) with the step's learning
//!     rate η, decoupled from the optimizer's normalisation the way AdamW's
//!     weight decay is. Under Adam/AdamW the gradient form moves W by about
//!     η·sign(·) whatever ρ is (a MiniLM run moved W ~3e-3 against weights
//!     of 0.03–0.07, issue #20); the proximal form pulls W a fraction
//!     ηρ/(1 + ηρ) of the way to Z − U per step. Under plain SGD both are the
//!     same step to first order in ηρ.
//! - Z-step (eq. 8): Z = Π_S(W + U), the N largest |·| of every block (or
//!   the largest to the target sparsity, unstructured).
//! - U-step (eq. 9): U ← U + W − Z.
//!
//! The references run thousands of W-steps per Z/U update (Zhang et al.:
//! 30 ADMM iterations × 5,000 steps at batch 50 on LeNet-5; 5k–60k steps
//! per iteration elsewhere): W must be able to move towards Z between two
//! updates, or Π(W + U) only swaps support while W stands still and the
//! primal gap rises (a warning says so, see below). ρ may grow by a factor
//! per Z/U update, ρ ← min(ρ·`rho_growth`, `rho_max`), `rho_max` = 1 by
//! default as in the reference implementations (uncapped, ×1.3 per update
//! overflows f32 within a few hundred updates). The learning rate follows
//! `lr`: restarted in every ADMM iteration (the default; the references
//! restart it every iteration), held at the optimizer's rate, or one
//! schedule over the whole ADMM phase (`phase`, Espalier's earlier
//! behaviour, kept for the committed tables).
//!
//! At every Z/U update the trace records ρ, the relative primal gap
//! ‖W − Z‖/‖W‖ (after the update), the dual residual ρ‖Z_k − Z_{k−1}‖ and
//! the fraction of Z's support that changed (entries of supp Z_k not in
//! supp Z_{k−1}, over |supp Z_k|). When the primal gap has not fallen for
//! `gap_patience` consecutive updates while above `converged_gap`, a warning
//! is logged and the point is marked `stalled`. After the ADMM phase the
//! schedule's pruning step projects W hard (W ← Π_S(W)) and masked
//! retraining follows; the relative distance ‖W − Π_S(W)‖/‖W‖ at that
//! moment is reported as the gap at projection, and ADMM counts as
//! converged when it is below `converged_gap` (0.05 by default: the relative primal gap ‖W − Z‖/‖W‖ at the hard projection).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use espalier_core::{ParamStore, Result, Selector};
use espalier_train::regularize::{Regularizer, StepInfo};
use espalier_train::LrRestart;
use serde::{Deserialize, Serialize};

use crate::magnitude::Scope;
use crate::method::PhaseLr;
use crate::pattern::{Granularity, LayerTargets, Scored};

/// ADMM settings (`[prune.admm]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdmmConfig {
    /// Penalty ρ at the start.
    #[serde(default = "default_rho")]
    pub rho: f64,
    /// ρ is multiplied by this at every Z/U update (1 = constant) ...
    #[serde(default = "default_growth")]
    pub rho_growth: f64,
    /// ... up to this value (the reference implementations cap ρ at 1; an
    /// uncapped ρ ×1.3 per update overflows f32 within a few hundred updates).
    #[serde(default = "default_rho_max")]
    pub rho_max: f64,
    /// Z/U update every this many optimizer steps (one ADMM iteration). It
    /// should be thousands of steps (the references: 5,000–60,000), so that
    /// W can move towards Z between updates ...
    #[serde(default)]
    pub every_steps: Option<usize>,
    /// ... or every this many epochs (the default: 1 epoch).
    #[serde(default)]
    pub every_epochs: Option<usize>,
    /// The learning rate in the ADMM phase: `restart` (the experiment's
    /// schedule restarted in every ADMM iteration), `constant` (the
    /// optimizer's rate) or `phase` (one schedule over the whole phase).
    #[serde(default)]
    pub lr: AdmmLr,
    /// How the penalty ρ/2‖W − Z + U‖² acts: `gradient` or `proximal`.
    #[serde(default)]
    pub penalty: AdmmPenalty,
    /// Warn when the primal gap has not fallen for this many consecutive
    /// Z/U updates (0: never).
    #[serde(default = "default_patience")]
    pub gap_patience: usize,
    /// The primal gap below which ADMM counts as converged (no warning
    /// below it; the report compares the gap at projection with it).
    #[serde(default = "default_converged_gap")]
    pub converged_gap: f64,
}

impl Default for AdmmConfig {
    /// The defaults of the config keys (Z/U every epoch).
    fn default() -> Self {
        AdmmConfig {
            rho: default_rho(),
            rho_growth: default_growth(),
            rho_max: default_rho_max(),
            every_steps: None,
            every_epochs: None,
            lr: AdmmLr::default(),
            penalty: AdmmPenalty::default(),
            gap_patience: default_patience(),
            converged_gap: default_converged_gap(),
        }
    }
}

fn default_rho() -> f64 {
    1e-3
}
fn default_growth() -> f64 {
    1.0
}
fn default_rho_max() -> f64 {
    1.0
}
fn default_patience() -> usize {
    3
}
fn default_converged_gap() -> f64 {
    0.05
}

/// The learning rate in the ADMM phase (`prune.admm.lr`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdmmLr {
    /// `train.lr_schedule` restarted at every Z/U update.
    #[default]
    Restart,
    /// The optimizer's rate throughout.
    Constant,
    /// `train.lr_schedule` once over the whole ADMM phase.
    Phase,
}

/// How the ADMM penalty acts (`prune.admm.penalty`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdmmPenalty {
    /// ρ(W − Z + U) added to the gradient.
    #[default]
    Gradient,
    /// W ← (W + ηρ(Z − U))/(1 + ηρ) after every optimizer step.
    Proximal,
}

impl AdmmConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        if !(self.rho > 0.0 && self.rho.is_finite()) {
            return Err(format!("{path}.rho must be a finite number > 0, found {}", self.rho));
        }
        if !(self.rho_growth >= 1.0 && self.rho_growth.is_finite()) {
            return Err(format!("{path}.rho_growth must be >= 1, found {}", self.rho_growth));
        }
        if !(self.rho_max >= self.rho && self.rho_max.is_finite()) {
            return Err(format!("{path}.rho_max must be finite and >= rho ({}), found {}", self.rho, self.rho_max));
        }
        if !(self.converged_gap > 0.0 && self.converged_gap.is_finite()) {
            return Err(format!("{path}.converged_gap must be a finite number > 0, found {}", self.converged_gap));
        }
        match (self.every_steps, self.every_epochs) {
            (Some(_), Some(_)) => Err(format!("{path}: give every_steps or every_epochs, not both")),
            (Some(0), _) | (_, Some(0)) => Err(format!("{path}: the update interval must be >= 1")),
            _ => Ok(()),
        }
    }

    /// The ADMM iteration: the Z/U update interval.
    pub fn iteration(&self) -> LrRestart {
        match self.every_steps {
            Some(n) => LrRestart::Steps(n),
            None => LrRestart::Epochs(self.every_epochs.unwrap_or(1)),
        }
    }

    /// The learning rate of the ADMM phase.
    pub fn phase_lr(&self) -> PhaseLr {
        match self.lr {
            AdmmLr::Restart => PhaseLr::Restart(self.iteration()),
            AdmmLr::Constant => PhaseLr::Constant(None),
            AdmmLr::Phase => PhaseLr::Schedule,
        }
    }
}

/// What a projection keeps: the pattern, the scope and the sparsity.
#[derive(Clone, Debug)]
pub struct Projection {
    /// Granularity of the constraint set.
    pub granularity: Granularity,
    /// Scope of an unstructured or block target.
    pub scope: Scope,
    /// Target sparsity (N:M implies its own).
    pub sparsity: f64,
    /// Per-parameter targets replacing `sparsity` (layer scope).
    pub targets: LayerTargets,
}

impl Projection {
    /// Keep masks (same shapes as `values`) of the largest |·| under the
    /// constraint. The scores are compared in f32 (ties by position).
    pub fn masks(&self, names: &[String], values: &[Tensor]) -> Result<Vec<Tensor>> {
        let dims: Vec<Vec<usize>> = values.iter().map(|v| v.dims().to_vec()).collect();
        let scored: Vec<Scored> = names
            .iter()
            .zip(values)
            .zip(&dims)
            .map(|((n, v), d)| {
                let s = v.abs()?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Ok(Scored { name: n, dims: d, scores: s })
            })
            .collect::<Result<_>>()?;
        let keep = self.targets.keep_masks(&scored, self.granularity, self.scope, self.sparsity)?;
        keep.into_iter()
            .zip(values)
            .map(|(k, v)| Ok(Tensor::from_vec(k, v.dims(), v.device())?.to_dtype(v.dtype())?))
            .collect()
    }
}

/// One Z/U update in the ADMM trace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdmmPoint {
    /// Optimizer steps so far.
    pub step: u64,
    /// ρ used up to this update.
    pub rho: f64,
    /// ‖W − Z‖ / ‖W‖ after the update.
    pub primal_gap: f64,
    /// ρ‖Z_k − Z_{k−1}‖ (none at the initialisation).
    #[serde(default)]
    pub dual_residual: Option<f64>,
    /// Fraction of supp Z_k not in supp Z_{k−1} (none at the
    /// initialisation).
    #[serde(default)]
    pub support_change: Option<f64>,
    /// The primal gap had not fallen for `gap_patience` updates (warned).
    #[serde(default)]
    pub stalled: bool,
}

/// The number of consecutive updates, ending with the last, at which the
/// primal gap did not fall (`gap_k ≥ gap_{k−1}`).
pub fn non_falling_streak(trace: &[AdmmPoint]) -> usize {
    trace.windows(2).rev().take_while(|w| w[1].primal_gap >= w[0].primal_gap).count()
}

/// The ADMM W-step penalty and its Z/U updates, active while the epoch is
/// below `until_epoch` (the dense phase of the schedule).
pub struct Admm {
    cfg: AdmmConfig,
    selector: Selector,
    projection: Projection,
    until_epoch: usize,
    rho: f64,
    z: BTreeMap<String, Tensor>,
    u: BTreeMap<String, Tensor>,
    trace: Vec<AdmmPoint>,
    projection_gap: Option<f64>,
}

/// Σ over the selected matrices of one Z/U update.
#[derive(Default)]
struct Sums {
    gap: f64,
    norm: f64,
    dz: f64,
    entered: f64,
    support: f64,
}

fn sum_f64(t: &Tensor) -> Result<f64> {
    Ok(t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

impl Admm {
    /// ADMM on the selected parameters towards `projection`'s pattern,
    /// while the epoch is below `until_epoch`.
    pub fn new(cfg: AdmmConfig, selector: Selector, projection: Projection, until_epoch: usize) -> Self {
        let rho = cfg.rho;
        Admm {
            cfg,
            selector,
            projection,
            until_epoch,
            rho,
            z: BTreeMap::new(),
            u: BTreeMap::new(),
            trace: Vec::new(),
            projection_gap: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AdmmConfig {
        &self.cfg
    }

    /// The trace of every Z/U update (since the run started; the trace is
    /// checkpointed with the run).
    pub fn trace(&self) -> &[AdmmPoint] {
        &self.trace
    }

    /// Restores a trace saved with [`Admm::trace`].
    pub fn set_trace(&mut self, trace: Vec<AdmmPoint>) {
        self.trace = trace;
    }

    /// Current ρ.
    pub fn rho(&self) -> f64 {
        self.rho
    }

    /// Z by parameter name (empty before the first update).
    pub fn z(&self) -> &BTreeMap<String, Tensor> {
        &self.z
    }

    /// U by parameter name (empty before the first update).
    pub fn u(&self) -> &BTreeMap<String, Tensor> {
        &self.u
    }

    /// ‖W − Π_S(W)‖/‖W‖ at the hard projection, once it has happened.
    pub fn projection_gap(&self) -> Option<f64> {
        self.projection_gap
    }

    /// Restores [`Admm::projection_gap`] from a checkpoint.
    pub fn set_projection_gap(&mut self, gap: Option<f64>) {
        self.projection_gap = gap;
    }

    /// Whether the gap at projection is below `converged_gap` (none before
    /// the projection).
    pub fn converged(&self) -> Option<bool> {
        self.projection_gap.map(|g| g < self.cfg.converged_gap)
    }

    fn selected(&self, params: &ParamStore) -> (Vec<String>, Vec<Tensor>) {
        // Detached from the variables: Z and U must not carry autograd
        // history from one update to the next.
        params.iter().filter(|p| self.selector.matches(p)).map(|p| (p.name().to_string(), p.tensor().detach())).unzip()
    }

    /// Records ‖W − W ⊙ M‖/‖W‖ of the hard projection by `masks` (the
    /// pruning step's keep masks, W the weights just before it).
    pub fn record_projection(&mut self, params: &ParamStore, masks: &BTreeMap<String, Tensor>) -> Result<f64> {
        let (mut off, mut norm) = (0.0, 0.0);
        let (names, ws) = self.selected(params);
        for (n, w) in names.iter().zip(&ws) {
            let Some(m) = masks.get(n) else { continue };
            let kept = (w * m.to_dtype(w.dtype())?)?;
            off += sum_f64(&(w - kept)?.sqr()?)?;
            norm += sum_f64(&w.sqr()?)?;
        }
        let gap = (off / norm.max(f64::MIN_POSITIVE)).sqrt();
        self.projection_gap = Some(gap);
        let converged = gap < self.cfg.converged_gap;
        tracing::info!(primal_gap = format!("{gap:.4}"), converged, "ADMM hard projection");
        Ok(gap)
    }

    /// Z = Π(W + U), U ← U + W − Z; returns the relative primal gap. The
    /// first call initialises instead: Z = Π(W), U = 0 (ρ unchanged).
    pub fn update(&mut self, params: &ParamStore, step: u64) -> Result<f64> {
        let (names, ws) = self.selected(params);
        let first = self.z.is_empty();
        if first {
            for (n, w) in names.iter().zip(&ws) {
                self.u.insert(n.clone(), w.zeros_like()?);
            }
        }
        let v: Vec<Tensor> = names.iter().zip(&ws).map(|(n, w)| w + &self.u[n]).collect::<candle_core::Result<_>>()?;
        let masks = self.projection.masks(&names, &v)?;
        let mut sums = Sums::default();
        for (((n, w), v), m) in names.iter().zip(&ws).zip(&v).zip(masks) {
            let z = (v * m)?;
            let r = (w - &z)?;
            sums.gap += sum_f64(&r.sqr()?)?;
            sums.norm += sum_f64(&w.sqr()?)?;
            if let Some(old) = self.z.get(n) {
                sums.dz += sum_f64(&(&z - old)?.sqr()?)?;
                let now = z.ne(0.0)?.to_dtype(DType::F64)?;
                let before = old.ne(0.0)?.to_dtype(DType::F64)?;
                sums.entered += sum_f64(&(&now * (1.0 - before)?)?)?;
                sums.support += sum_f64(&now)?;
            }
            if !first {
                let u = (&self.u[n] + r)?;
                self.u.insert(n.clone(), u);
            }
            self.z.insert(n.clone(), z);
        }
        let gap = (sums.gap / sums.norm.max(f64::MIN_POSITIVE)).sqrt();
        let (dual_residual, support_change) = if first {
            (None, None)
        } else {
            (Some(self.rho * sums.dz.sqrt()), Some(sums.entered / sums.support.max(1.0)))
        };
        self.trace.push(AdmmPoint {
            step,
            rho: self.rho,
            primal_gap: gap,
            dual_residual,
            support_change,
            stalled: false,
        });
        let streak = non_falling_streak(&self.trace);
        let stalled = self.cfg.gap_patience > 0 && streak >= self.cfg.gap_patience && gap > self.cfg.converged_gap;
        if let Some(last) = self.trace.last_mut() {
            last.stalled = stalled;
        }
        tracing::info!(
            step,
            rho = self.rho,
            primal_gap = format!("{gap:.4}"),
            dual_residual = format!("{:.4e}", dual_residual.unwrap_or(0.0)),
            support_change = format!("{:.4}", support_change.unwrap_or(0.0)),
            "ADMM Z/U update"
        );
        if stalled {
            let hint = match self.cfg.penalty {
                AdmmPenalty::Gradient => "or, under Adam/AdamW, penalty = \"proximal\"",
                AdmmPenalty::Proximal => "the proximal step pulls W a fraction ηρ/(1 + ηρ) of the way per step",
            };
            tracing::warn!(
                step,
                primal_gap = format!("{gap:.4}"),
                "ADMM: the primal gap has not fallen for {streak} consecutive Z/U updates: W is not following Z \
                 (Π(W + U) swaps support while W stands still); give W more steps per update (every_steps in \
                 the thousands), a larger ρ or learning rate ({hint})"
            );
        }
        if !first {
            self.rho = (self.rho * self.cfg.rho_growth).min(self.cfg.rho_max);
        }
        Ok(gap)
    }

    /// The proximal W-step W ← (W + ηρ(Z − U))/(1 + ηρ) with learning rate
    /// `lr` (`penalty = "proximal"`).
    fn prox(&self, params: &ParamStore, lr: f64) -> Result<()> {
        let t = lr * self.rho;
        for p in params.iter().filter(|p| self.selector.matches(p)) {
            let (Some(z), Some(u)) = (self.z.get(p.name()), self.u.get(p.name())) else { continue };
            let pulled = (p.tensor().detach() + ((z - u)? * t)?)?;
            p.set(&pulled.affine(1.0 / (1.0 + t), 0.0)?)?;
        }
        Ok(())
    }

    fn active(&self, step: &StepInfo) -> bool {
        step.epoch < self.until_epoch
    }
}

impl Regularizer for Admm {
    fn name(&self) -> &str {
        "admm"
    }
    fn adjust_grads(&mut self, params: &ParamStore, grads: &mut GradStore, step: &StepInfo) -> Result<()> {
        if !self.active(step) {
            return Ok(());
        }
        if self.z.is_empty() {
            self.update(params, step.global_step)?;
        }
        if self.cfg.penalty == AdmmPenalty::Proximal {
            return Ok(());
        }
        for p in params.iter().filter(|p| self.selector.matches(p)) {
            let (Some(g), Some(z), Some(u)) = (grads.get(p.tensor()), self.z.get(p.name()), self.u.get(p.name()))
            else {
                continue;
            };
            let extra = ((((p.tensor() - z)? + u)?) * self.rho)?;
            let g = (g + extra)?;
            grads.insert(p.tensor(), g);
        }
        Ok(())
    }
    fn on_step(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        if !self.active(step) {
            return Ok(());
        }
        if self.cfg.penalty == AdmmPenalty::Proximal {
            self.prox(params, step.lr)?;
        }
        if let Some(e) = self.cfg.every_steps {
            if step.global_step.is_multiple_of(e as u64) {
                self.update(params, step.global_step)?;
            }
        }
        Ok(())
    }
    fn on_epoch(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        if self.cfg.every_steps.is_none() && self.active(step) {
            let e = self.cfg.every_epochs.unwrap_or(1);
            if (step.epoch + 1).is_multiple_of(e) {
                self.update(params, step.global_step)?;
            }
        }
        Ok(())
    }
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut s = BTreeMap::new();
        for (n, z) in &self.z {
            s.insert(format!("z.{n}"), z.clone());
            s.insert(format!("u.{n}"), self.u[n].clone());
        }
        s.insert("rho".into(), Tensor::new(self.rho, &candle_core::Device::Cpu)?);
        Ok(s)
    }
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        for (k, v) in state {
            if let Some(n) = k.strip_prefix("z.") {
                self.z.insert(n.to_string(), v.clone());
            } else if let Some(n) = k.strip_prefix("u.") {
                self.u.insert(n.to_string(), v.clone());
            } else if k == "rho" {
                self.rho = v.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;
    use espalier_core::init::Init;
    use espalier_core::{ParamBuilder, ParamKind};

    pub(crate) fn one_weight(values: &[f32]) -> Result<(ParamStore, espalier_core::Param)> {
        let pb = ParamBuilder::from_seed(0, DType::F32, &Device::Cpu);
        let w = pb.pp("fc").param("weight", &[1, values.len()], ParamKind::Weight, Init::Const(0.0))?;
        w.set(&Tensor::new(values, &Device::Cpu)?.reshape((1, values.len()))?)?;
        Ok((pb.finish().0, w))
    }

    pub(crate) const TWO_FOUR: Projection = Projection {
        granularity: Granularity::NOfM { n: 2, m: 4 },
        scope: Scope::Layer,
        sparsity: 0.5,
        targets: LayerTargets::NONE,
    };

    #[test]
    fn admm_updates_match_a_hand_computed_example() -> Result<()> {
        let (store, w) = one_weight(&[4.0, -1.0, 3.0, 0.5])?;
        let cfg = AdmmConfig { rho: 0.1, rho_growth: 2.0, rho_max: 0.3, every_steps: Some(1), ..Default::default() };
        let mut admm = Admm::new(cfg, Selector::default(), TWO_FOUR, 1);
        // initialisation: Z = Π(W) = [4, 0, 3, 0], U = 0, ρ unchanged
        let gap = admm.update(&store, 0)?;
        assert_eq!(admm.z["fc.weight"].to_vec2::<f32>()?, [[4., 0., 3., 0.]]);
        assert_eq!(admm.u["fc.weight"].to_vec2::<f32>()?, [[0.; 4]]);
        assert!((gap - (1.25f64 / 26.25).sqrt()).abs() < 1e-6, "{gap}");
        assert_eq!(admm.rho(), 0.1);
        // first Z/U update with W unchanged: Z = Π(W + 0) = [4, 0, 3, 0], U = W - Z = [0, -1, 0, 0.5],
        // then ρ grows to 0.2
        admm.update(&store, 1)?;
        assert_eq!(admm.u["fc.weight"].to_vec2::<f32>()?, [[0., -1., 0., 0.5]]);
        assert_eq!(admm.rho(), 0.2);
        // the W-step gradient: g + ρ(W - Z + U) = 0 + 0.2·[0, -2, 0, 1]
        let mut grads = (w.effective()? * 0.0)?.sum_all()?.backward()?;
        grads.insert(w.tensor(), w.tensor().zeros_like()?);
        admm.adjust_grads(&store, &mut grads, &StepInfo { epoch: 0, global_step: 1, lr: 0.0, ..Default::default() })?;
        let g = grads.get(w.tensor()).unwrap().to_vec2::<f32>()?;
        for (a, b) in g[0].iter().zip([0f32, -0.4, 0., 0.2]) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
        // second update from W = [1, -3, 2, 0.5]: W + U = [1, -4, 2, 1] -> Z = [0, -4, 2, 0],
        // U = U + W - Z = [0, -1, 0, 0.5] + [1, 1, 0, 0.5] = [1, 0, 0, 1]
        w.set(&Tensor::new(&[[1f32, -3.0, 2.0, 0.5]], &Device::Cpu)?)?;
        admm.update(&store, 2)?;
        assert_eq!(admm.z["fc.weight"].to_vec2::<f32>()?, [[0., -4., 2., 0.]]);
        assert_eq!(admm.u["fc.weight"].to_vec2::<f32>()?, [[1., 0., 0., 1.]]);
        assert_eq!(admm.trace().len(), 3);
        // dual residual ρ‖Z_k − Z_{k−1}‖ = 0.2·‖[−4, −4, −1, 0]‖ = 0.2·√33 (ρ before
        // it grows); support {0, 2} → {1, 2}: one of the two kept entries is new.
        let pt = &admm.trace()[2];
        assert!((pt.dual_residual.unwrap() - 0.2 * 33f64.sqrt()).abs() < 1e-6, "{pt:?}");
        assert_eq!(pt.support_change, Some(0.5));
        assert_eq!((admm.trace()[0].dual_residual, admm.trace()[1].dual_residual), (None, Some(0.0)));
        // ρ doubles again, but rho_max caps it: 0.2 → 0.3, not 0.4; and stays.
        assert_eq!(admm.rho(), 0.3);
        admm.update(&store, 3)?;
        assert_eq!(admm.rho(), 0.3);
        // Z and U carry no autograd history from one update to the next.
        assert!(!admm.z["fc.weight"].track_op() && !admm.u["fc.weight"].track_op());
        // after the ADMM phase (epoch >= until_epoch) the gradient is untouched
        let mut grads = (w.effective()? * 0.0)?.sum_all()?.backward()?;
        grads.insert(w.tensor(), w.tensor().zeros_like()?);
        admm.adjust_grads(&store, &mut grads, &StepInfo { epoch: 1, global_step: 3, lr: 0.0, ..Default::default() })?;
        assert_eq!(grads.get(w.tensor()).unwrap().to_vec2::<f32>()?, [[0.; 4]]);
        // state round-trip
        let mut again = Admm::new(admm.cfg.clone(), Selector::default(), TWO_FOUR, 1);
        again.load_state(&admm.state()?)?;
        assert_eq!(again.rho(), admm.rho());
        assert_eq!(again.u["fc.weight"].to_vec2::<f32>()?, admm.u["fc.weight"].to_vec2::<f32>()?);
        Ok(())
    }

    /// The proximal W-step by hand: W ← (W + ηρ(Z − U))/(1 + ηρ) after the
    /// optimizer step, the gradient left alone; nothing after the phase.
    #[test]
    fn proximal_penalty_pulls_w_towards_z_minus_u_after_the_step() -> Result<()> {
        let (store, w) = one_weight(&[4.0, -1.0, 3.0, 0.5])?;
        let cfg = AdmmConfig { rho: 0.5, every_steps: Some(100), penalty: AdmmPenalty::Proximal, ..Default::default() };
        let mut admm = Admm::new(cfg, Selector::default(), TWO_FOUR, 1);
        let mut grads = (w.effective()? * 0.0)?.sum_all()?.backward()?;
        grads.insert(w.tensor(), w.tensor().zeros_like()?);
        let info = StepInfo { epoch: 0, global_step: 0, lr: 0.4, ..Default::default() };
        admm.adjust_grads(&store, &mut grads, &info)?;
        assert_eq!(grads.get(w.tensor()).unwrap().to_vec2::<f32>()?, [[0.; 4]], "no gradient term");
        // Z = [4, 0, 3, 0], U = 0, ηρ = 0.2: W ← (W + 0.2·Z)/1.2
        admm.on_step(&store, &StepInfo { global_step: 1, ..info })?;
        let got = w.tensor().to_vec2::<f32>()?;
        for (a, b) in got[0].iter().zip([4.0f32, -1.0 / 1.2, 3.0, 0.5 / 1.2]) {
            assert!((a - b).abs() < 1e-6, "{got:?}");
        }
        admm.on_step(&store, &StepInfo { epoch: 1, global_step: 2, ..info })?;
        assert_eq!(w.tensor().to_vec2::<f32>()?, got, "after the ADMM phase");
        Ok(())
    }

    /// The learning rate of the ADMM phase: restarted every Z/U interval by
    /// default, constant or one schedule on request.
    #[test]
    fn admm_lr_modes_map_to_phase_rates() {
        let steps = AdmmConfig { every_steps: Some(5000), ..Default::default() };
        assert_eq!(steps.phase_lr(), PhaseLr::Restart(LrRestart::Steps(5000)));
        assert_eq!(AdmmConfig::default().phase_lr(), PhaseLr::Restart(LrRestart::Epochs(1)));
        assert_eq!(AdmmConfig { lr: AdmmLr::Constant, ..steps.clone() }.phase_lr(), PhaseLr::Constant(None));
        assert_eq!(AdmmConfig { lr: AdmmLr::Phase, ..steps }.phase_lr(), PhaseLr::Schedule);
        let e = AdmmConfig { converged_gap: 0.0, ..Default::default() }.validate("prune.admm").unwrap_err();
        assert!(e.contains("prune.admm.converged_gap"), "{e}");
    }

    /// The streak counts trailing updates whose gap did not fall.
    #[test]
    fn non_falling_streak_counts_from_the_end() {
        let pts = |gaps: &[f64]| -> Vec<AdmmPoint> {
            gaps.iter()
                .map(|&g| AdmmPoint {
                    step: 0,
                    rho: 1.0,
                    primal_gap: g,
                    dual_residual: None,
                    support_change: None,
                    stalled: false,
                })
                .collect()
        };
        assert_eq!(non_falling_streak(&pts(&[])), 0);
        assert_eq!(non_falling_streak(&pts(&[0.3])), 0);
        assert_eq!(non_falling_streak(&pts(&[0.3, 0.2, 0.2, 0.25])), 2);
        assert_eq!(non_falling_streak(&pts(&[0.3, 0.3, 0.3, 0.7])), 3);
        assert_eq!(non_falling_streak(&pts(&[0.3, 0.4, 0.1])), 0);
    }
}
