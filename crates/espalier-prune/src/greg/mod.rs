//! Growing regularization (Wang, Qin, Zhang & Fu, "Neural Pruning via
//! Growing Regularization", ICLR 2021, arXiv 2012.09243, eq. 2 and
//! Algorithms 1–2), for the units of [`GroupSet`]s (neurons, channels,
//! heads, feed-forward units).
//!
//! Two modes (`structured.greg.mode`):
//!
//! - `reference` (the default): the authors' code
//!   (MingSun-Tse/Regularization-Pruning, `pruner/reg_pruner.py`), point by
//!   point: penalty and score on the producing filter/row only, mean `|W|`
//!   scores, per-layer smoothed magnitude ratios that must all pass, λ in
//!   f32 from iteration 0, GReg-2 carrying on from its uniform ceiling,
//!   a stabilisation period (10,000 iterations, the authors' CIFAR command)
//!   and `n_pruned = min(ceil(pr·n), n − 1)`. See [`reference`]; a
//!   differential test replays the reference's own decisions.
//! - `pooled`: Espalier's earlier reading of the paper, described below
//!   (kept for comparison with the committed tables).
//!
//! In `pooled` mode:
//!
//! GReg-1: the units to remove are chosen once, by the L1 norm of their
//! weights, before the regularization phase. Every `interval` optimizer steps
//! (K_u) their L2 penalty λ grows by `delta`; it acts through the gradient,
//! `grad += λ·w` on every weight the unit owns (eq. 2 of the paper, the
//! gradient of λ/2‖w_g‖²); kept units get none. λ stops growing at `ceiling`,
//! or once the magnitude ratio `mean|w_kept| / mean|w_pruned|` reaches
//! `ratio_stop`; λ is then held for `stabilize_steps` steps, and the units
//! are removed physically (the caller shrinks the model and fine-tunes).
//!
//! GReg-2: first a uniform penalty on every unit, raised by `uniform_delta`
//! every K_u steps up to `uniform_ceiling` (weights along flat directions of
//! the loss shrink faster, a cheap proxy for the Hessian); only then are the
//! units chosen by L1 norm, and pushed as in GReg-1, with a small negative
//! penalty (`kept_penalty`, −1e-4) on the kept ones.
//!
//! The λ trajectory and the magnitude ratio are logged at every increase and
//! kept in [`GRegState::trace`] (the method's report).
//!
//! As a [`Method`]: dense training, then the penalty phase (round 1, until
//! the penalty is done or `max_epochs`), then the shrink and fine-tuning.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use espalier_core::{GroupSet, Keep, ParamStore, Result, Selector};
use espalier_train::regularize::{Regularizer, StepInfo};
use serde::{Deserialize, Serialize};

pub mod reference;

use crate::method::{
    Action, Context, Curve, Length, Method, MethodReport, Phase as PlanPhase, PhaseLr, Plan, Selection,
};
use crate::structured::norm::norms;
use crate::structured::{selected_sets, structured_plan, top_k, StructuredConfig};
use reference::{RefState, RefTracePoint, Schedule};

/// Which GReg (`structured.greg.mode`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum GRegMode {
    /// The authors' code, point by point ([`reference`]).
    #[default]
    Reference,
    /// Espalier's earlier variant: penalty on every trainable member of a
    /// unit, L1-sum scores, one magnitude ratio pooled over all sets,
    /// GReg-2's λ restarting at 0 after the choice.
    Pooled,
}

/// GReg settings (`[structured.greg]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GRegConfig {
    /// `reference` (the authors' code) or `pooled`.
    #[serde(default)]
    pub mode: GRegMode,
    /// K_u: optimizer steps between two increases of λ.
    #[serde(default = "default_interval")]
    pub interval: usize,
    /// δ: increase of the pruned units' λ.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// λ stops growing here.
    #[serde(default = "default_ceiling")]
    pub ceiling: f64,
    /// ... or when mean|kept| / mean|pruned| reaches this (reference mode:
    /// every layer's smoothed ratio).
    #[serde(default = "default_ratio")]
    pub ratio_stop: f64,
    /// Steps with λ held before the units are removed (default: 10,000 in
    /// reference mode, the authors' CIFAR setting; 0 in pooled mode).
    #[serde(default)]
    pub stabilize_steps: Option<usize>,
    /// GReg-2: increase of the uniform λ.
    #[serde(default = "default_uniform_delta")]
    pub uniform_delta: f64,
    /// GReg-2: the uniform λ's ceiling, after which the units are chosen.
    #[serde(default = "default_uniform_ceiling")]
    pub uniform_ceiling: f64,
    /// GReg-2: λ of the kept units while the pruned ones are pushed.
    #[serde(default = "default_kept_penalty")]
    pub kept_penalty: f64,
    /// Upper bound on the regularization phase, in epochs.
    #[serde(default = "default_max_epochs")]
    pub max_epochs: usize,
    /// Constant learning rate of the penalty phase (the authors'
    /// `lr_prune`). Default: the optimizer's configured rate, constant, in
    /// reference mode; the experiment's schedule in pooled mode.
    #[serde(default)]
    pub lr: Option<f64>,
}

fn default_interval() -> usize {
    10
}
fn default_delta() -> f64 {
    1e-4
}
fn default_ceiling() -> f64 {
    1.0
}
fn default_ratio() -> f64 {
    1000.0
}
fn default_uniform_delta() -> f64 {
    1e-5
}
fn default_uniform_ceiling() -> f64 {
    1e-2
}
fn default_kept_penalty() -> f64 {
    -1e-4
}
fn default_max_epochs() -> usize {
    30
}

impl Default for GRegConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl GRegConfig {
    /// The stabilisation period in effect.
    pub fn stabilize(&self) -> usize {
        self.stabilize_steps.unwrap_or(match self.mode {
            GRegMode::Reference => 10_000,
            GRegMode::Pooled => 0,
        })
    }

    /// The reference schedule's parameters (f32, as the reference holds λ).
    fn schedule(&self, two: bool) -> Schedule {
        Schedule {
            interval: self.interval as u64,
            delta: self.delta as f32,
            ceiling: self.ceiling as f32,
            ratio_stop: self.ratio_stop as f32,
            uniform_delta: self.uniform_delta as f32,
            uniform_ceiling: self.uniform_ceiling as f32,
            kept_penalty: self.kept_penalty as f32,
            stabilize_steps: self.stabilize() as u64,
            two,
        }
    }

    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        if self.interval == 0 {
            return Err(format!("key `{path}.interval` must be at least 1"));
        }
        for (k, v) in [
            ("delta", self.delta),
            ("ceiling", self.ceiling),
            ("uniform_delta", self.uniform_delta),
            ("uniform_ceiling", self.uniform_ceiling),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("key `{path}.{k}` must be > 0, found {v}"));
            }
        }
        if self.ratio_stop.is_nan() || self.ratio_stop <= 1.0 {
            return Err(format!("key `{path}.ratio_stop` must be > 1, found {}", self.ratio_stop));
        }
        if let Some(lr) = self.lr.filter(|lr| !(*lr > 0.0 && lr.is_finite())) {
            return Err(format!("key `{path}.lr` must be > 0, found {lr}"));
        }
        if self.max_epochs == 0 {
            return Err(format!("key `{path}.max_epochs` must be at least 1"));
        }
        Ok(())
    }
}

/// Where the regularization is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// GReg-2's uniform growth on every unit.
    Uniform,
    /// Growing λ on the units to remove.
    Push,
    /// λ held.
    Stabilize,
    /// Ready to remove the units.
    Done,
}

/// One point of the λ trajectory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TracePoint {
    /// Optimizer step.
    pub step: u64,
    /// Phase at that step.
    pub phase: Phase,
    /// λ of the pruned units (the uniform λ in GReg-2's first phase).
    pub lambda: f64,
    /// mean|w_kept| / mean|w_pruned| over all sets (0 before the choice).
    pub ratio: f64,
}

/// Where a GReg run is (checkpointed with the run).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GRegState {
    /// Current phase.
    pub phase: Phase,
    /// λ of the pruned units (or the uniform λ).
    pub lambda: f64,
    /// Units kept per set (chosen at the start for GReg-1, after the uniform
    /// phase for GReg-2).
    pub keep: Option<Keep>,
    /// Steps spent stabilising.
    pub stable_steps: usize,
    /// λ and magnitude ratio at every increase (pooled mode).
    pub trace: Vec<TracePoint>,
    /// The per-layer schedule (reference mode).
    #[serde(default)]
    pub reference: Option<RefState>,
}

/// GReg-1 or GReg-2 over the selected group sets of a structured config.
pub struct GReg {
    cfg: GRegConfig,
    structured: StructuredConfig,
    sets: Vec<GroupSet>,
    kept: BTreeMap<String, usize>,
    state: GRegState,
    steps: u64,
    /// GReg-2 (uniform phase first, negative penalty on kept units).
    two: bool,
    /// The penalty phase is running.
    active: bool,
    started: Option<Instant>,
    selector: Selector,
}

impl GReg {
    /// The method of `structured` (`method = "greg1"` or `"greg2"`).
    pub fn new(structured: StructuredConfig) -> Self {
        let two = structured.method == crate::GroupCriterion::Greg2;
        GReg {
            cfg: structured.greg.clone(),
            structured,
            sets: Vec::new(),
            kept: BTreeMap::new(),
            state: GRegState {
                phase: if two { Phase::Uniform } else { Phase::Push },
                lambda: 0.0,
                keep: None,
                stable_steps: 0,
                trace: Vec::new(),
                reference: None,
            },
            steps: 0,
            two,
            active: false,
            started: None,
            selector: Selector::default(),
        }
    }

    /// The penalty on `sets`, keeping `kept` units per set, starting now
    /// (GReg-1 chooses its units at once, by L1 norm).
    pub fn begin(&mut self, sets: Vec<GroupSet>, kept: BTreeMap<String, usize>, params: &ParamStore) -> Result<()> {
        if self.cfg.mode == GRegMode::Reference {
            let counts: Vec<usize> = sets
                .iter()
                .map(|s| {
                    kept.get(&s.name).copied().ok_or_else(|| {
                        espalier_core::Error::msg(format!("GReg: no kept count for group set `{}`", s.name))
                    })
                })
                .collect::<Result<_>>()?;
            self.state.reference = Some(RefState::new(params, &sets, &counts, self.two)?);
            self.state.keep = None;
        } else {
            self.state.keep = if self.two { None } else { Some(choose(params, &sets, &kept)?) };
        }
        self.sets = sets;
        self.kept = kept;
        self.active = true;
        self.started = Some(Instant::now());
        Ok(())
    }

    /// Where the run is.
    pub fn state(&self) -> &GRegState {
        &self.state
    }

    /// Units kept in a set of `size` units: the reference's
    /// `n − min(ceil(pr·n), n − 1)` with `pr = 1 − keep_ratio` in reference
    /// mode, `StructuredConfig::kept` in pooled mode; `keep` (a count) as is.
    pub fn kept(&self, size: usize) -> usize {
        match (self.cfg.mode, self.structured.keep, self.structured.keep_ratio) {
            (GRegMode::Reference, None, Some(r)) => size - reference::pruned_count(1.0 - r, size),
            _ => self.structured.kept(size),
        }
    }
}

/// What GReg checkpoints beyond tensors.
#[derive(Serialize, Deserialize)]
struct Saved {
    state: GRegState,
    steps: u64,
    active: bool,
}

impl Method for GReg {
    fn describe(&self) -> String {
        format!("structured-{}", self.structured.method.key())
    }
    fn plan(&self, dense_epochs: usize) -> Plan {
        let mut penalty =
            PlanPhase::new(1, Length::UntilDone { max_epochs: self.cfg.max_epochs }, vec![Action::NewOptimizer]);
        // The authors train the penalty phase at a constant rate; the pooled
        // variant keeps the experiment's schedule (as the committed tables ran).
        penalty.lr = match (self.cfg.mode, self.cfg.lr) {
            (_, Some(lr)) => PhaseLr::Constant(Some(lr)),
            (GRegMode::Reference, None) => PhaseLr::Constant(None),
            (GRegMode::Pooled, None) => PhaseLr::Schedule,
        };
        structured_plan(&self.structured, dense_epochs, Some(penalty))
    }
    fn selector(&self) -> &Selector {
        &self.selector
    }
    fn start_phase(&mut self, index: usize, cx: &mut Context) -> Result<()> {
        if index == 1 {
            let sets = selected_sets(cx.model, &self.structured)?;
            let kept = sets.iter().map(|s| (s.name.clone(), self.kept(s.size))).collect();
            self.begin(sets, kept, cx.model.params())?;
        } else {
            self.active = false;
        }
        Ok(())
    }
    fn done(&self) -> bool {
        match &self.state.reference {
            Some(r) => r.done,
            None => self.state.phase == Phase::Done,
        }
    }
    fn select(&mut self, cx: &mut Context) -> Result<Selection> {
        // A run resumed after the penalty phase never started it in this
        // process: the group sets come from the model as the phase found them.
        if self.sets.is_empty() {
            self.sets = selected_sets(cx.model, &self.structured)?;
            self.kept = self.sets.iter().map(|s| (s.name.clone(), self.kept(s.size))).collect();
        }
        let keep = match (&self.state.reference, &self.state.keep) {
            (Some(r), _) => r.keep(cx.model.params(), &self.sets)?,
            (None, Some(k)) => k.clone(),
            (None, None) => choose(cx.model.params(), &self.sets, &self.kept)?,
        };
        let seconds = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok(Selection { keep, seconds, ..Selection::default() })
    }
    fn save(&self) -> serde_json::Value {
        serde_json::to_value(Saved { state: self.state.clone(), steps: self.steps, active: self.active })
            .unwrap_or_default()
    }
    fn load(&mut self, v: &serde_json::Value) -> Result<()> {
        let saved: Saved = serde_json::from_value(v.clone())
            .map_err(|e| espalier_core::Error::msg(format!("GReg state in the checkpoint: {e}")))?;
        (self.state, self.steps, self.active) = (saved.state, saved.steps, saved.active);
        Ok(())
    }
    fn report(&self) -> Option<MethodReport> {
        if let Some(r) = &self.state.reference {
            return Some(reference_report(r));
        }
        let st = &self.state;
        let last = st.trace.last();
        let mut md = format!(
            "\nGReg penalty: {} λ increases, final λ {:.4}, kept/pruned magnitude ratio {:.1}, phase `{:?}`{}.\n",
            st.trace.len(),
            st.lambda,
            last.map_or(0.0, |t| t.ratio),
            st.phase,
            if st.phase == Phase::Done { "" } else { " (did not converge within structured.greg.max_epochs)" }
        );
        if !st.trace.is_empty() {
            md += "\n| step | phase | λ | ratio |\n|---:|---|---:|---:|\n";
            let every = st.trace.len().div_ceil(20);
            for (i, t) in st.trace.iter().enumerate() {
                if i % every == 0 || i + 1 == st.trace.len() {
                    md += &format!("| {} | {:?} | {:.4} | {:.2} |\n", t.step, t.phase, t.lambda, t.ratio);
                }
            }
        }
        let series = |f: fn(&TracePoint) -> f64| st.trace.iter().map(|t| (t.step as f64, f(t))).collect();
        let curves = vec![
            lambda_curve("optimizer step").line("pruned units", series(|t| t.lambda)),
            ratio_curve("optimizer step").line("all sets", series(|t| t.ratio)),
        ];
        Some(MethodReport { json: serde_json::json!({ "greg_trace": st.trace }), markdown: md, curves })
    }
}

/// The reference mode's report: per layer its final λ, ratio and finish
/// iteration, and its (step, λ, ratio) trace.
fn reference_report(r: &RefState) -> MethodReport {
    let converged = r.done;
    let mut md = format!(
        "\nGReg penalty (reference mode): {}.\n\n| layer | pruned | λ | kept λ | ratio (EMA) | finished at | picked at |\n|---|---:|---:|---:|---:|---:|---:|\n",
        match (r.stop_step, converged) {
            (Some(s), true) => format!("every layer finished at iteration {s}, then stabilised"),
            (Some(s), false) => format!("every layer finished at iteration {s}; **not converged**: the stabilisation did not end within structured.greg.max_epochs"),
            (None, _) => "**not converged**: λ was still growing when the phase reached structured.greg.max_epochs".into(),
        }
    );
    let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
    for l in &r.layers {
        md += &format!(
            "| {} | {}/{} | {:.4} | {:.4} | {} | {} | {} |\n",
            l.name,
            l.n_pruned,
            l.size,
            l.lambda,
            l.kept_lambda,
            l.ratio.map_or("–".into(), |h| format!("{h:.2}")),
            opt(l.finish_step),
            opt(l.pick_step)
        );
    }
    if !r.trace.is_empty() {
        md += "\n| iteration | layer | phase | λ | ratio (EMA) |\n|---:|---|---|---:|---:|\n";
        let every = r.trace.len().div_ceil(40);
        for (i, t) in r.trace.iter().enumerate() {
            if i % every == 0 || i + 1 == r.trace.len() || t.finished {
                md += &format!("| {} | {} | {:?} | {:.4} | {:.2} |\n", t.step, t.layer, t.phase, t.lambda, t.ratio);
            }
        }
    }
    // A line per layer.
    let per_layer = |curve: Curve, f: fn(&RefTracePoint) -> f64| {
        r.layers.iter().fold(curve, |c, l| {
            c.line(&l.name, r.trace.iter().filter(|t| t.layer == l.name).map(|t| (t.step as f64, f(t))).collect())
        })
    };
    MethodReport {
        curves: vec![
            per_layer(lambda_curve("iteration"), |t| t.lambda),
            per_layer(ratio_curve("iteration"), |t| t.ratio),
        ],
        json: serde_json::json!({
            "greg_mode": "reference",
            "converged": converged,
            "stop_step": r.stop_step,
            "layers": r.layers,
            "greg_trace": r.trace,
        }),
        markdown: md,
    }
}

/// The plot of λ (of the pruned units) against `x`, no line yet.
fn lambda_curve(x: &str) -> Curve {
    Curve {
        name: "greg-lambda".into(),
        title: "GReg: penalty λ of the pruned units".into(),
        x_label: x.into(),
        y_label: "λ".into(),
        ..Curve::default()
    }
}

/// The plot of the kept/pruned magnitude ratio against `x` (log scale).
fn ratio_curve(x: &str) -> Curve {
    Curve {
        name: "greg-ratio".into(),
        title: "GReg: magnitude ratio, kept / pruned units".into(),
        x_label: x.into(),
        y_label: "ratio (log scale)".into(),
        log_y: true,
        ..Curve::default()
    }
}

/// The `kept[set]` units of largest L1 norm per set (trainable members):
/// the same units as the one-pass `l1` criterion keeps.
pub fn choose(params: &ParamStore, sets: &[GroupSet], kept: &BTreeMap<String, usize>) -> Result<Keep> {
    let mut keep = Keep::new();
    for set in sets {
        let Some(&k) = kept.get(&set.name) else { continue };
        keep.insert(set.name.clone(), top_k(&norms(params, set, true)?, k));
    }
    Ok(keep)
}

/// `mean|w|` over the kept and over the pruned units' weights, all sets.
fn magnitude_ratio(params: &ParamStore, sets: &[GroupSet], keep: &Keep) -> Result<f64> {
    let (mut kept, mut nk, mut pruned, mut np) = (0f64, 0usize, 0f64, 0usize);
    for set in sets {
        let Some(units) = keep.get(&set.name) else { continue };
        let on: Vec<bool> = (0..set.size).map(|u| units.binary_search(&u).is_ok()).collect();
        for m in &set.members {
            let p = params.get(&m.param)?;
            if !p.trainable() {
                continue;
            }
            let rows = set.unit_rows(&p.effective()?.to_dtype(DType::F32)?, m.axis)?;
            let per = rows.dims()[1];
            for (u, v) in rows.abs()?.sum(1)?.to_vec1::<f32>()?.into_iter().enumerate() {
                if on[u] {
                    kept += v as f64;
                    nk += per;
                } else {
                    pruned += v as f64;
                    np += per;
                }
            }
        }
    }
    let (mk, mp) = (kept / nk.max(1) as f64, pruned / np.max(1) as f64);
    Ok(if mp > 0.0 { mk / mp } else { f64::INFINITY })
}

impl Regularizer for GReg {
    fn name(&self) -> &str {
        "greg"
    }

    /// `grad += λ_u · w` for every weight of unit `u`: λ for pruned units,
    /// the kept penalty (GReg-2) or 0 for kept ones, the uniform λ for all
    /// in GReg-2's first phase.
    fn adjust_grads(&mut self, params: &ParamStore, grads: &mut GradStore, step: &StepInfo) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        if let Some(r) = &mut self.state.reference {
            // The held λ keeps acting after the stabilisation, until the
            // phase ends (the reference removes the units at once).
            r.update(params, &self.sets, &self.cfg.schedule(self.two), step.global_step)?;
            for (i, set) in self.sets.iter().enumerate() {
                reference::apply(params, set, &r.coefficients(i), grads)?;
            }
            return Ok(());
        }
        let st = &self.state;
        if st.phase == Phase::Done {
            return Ok(());
        }
        let kept_lambda = if self.two { self.cfg.kept_penalty } else { 0.0 };
        for set in &self.sets {
            let coef: Vec<f32> = match (&st.keep, st.phase) {
                (_, Phase::Uniform) => vec![st.lambda as f32; set.size],
                (Some(keep), _) => {
                    let Some(units) = keep.get(&set.name) else { continue };
                    (0..set.size)
                        .map(|u| if units.binary_search(&u).is_ok() { kept_lambda as f32 } else { st.lambda as f32 })
                        .collect()
                }
                (None, _) => continue,
            };
            let coef: Vec<f32> = coef.iter().flat_map(|&c| std::iter::repeat_n(c, set.block)).collect();
            for m in &set.members {
                let p = params.get(&m.param)?;
                if !p.trainable() {
                    continue;
                }
                let Some(g) = grads.get(p.tensor()) else { continue };
                let dims = p.dims();
                let mut shape = vec![1; dims.len()];
                shape[m.axis] = dims[m.axis];
                let c = Tensor::from_vec(coef.clone(), shape, g.device())?.to_dtype(g.dtype())?;
                let g = (g + p.effective()?.broadcast_mul(&c)?)?;
                grads.insert(p.tensor(), g);
            }
        }
        Ok(())
    }

    fn on_step(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.steps += 1;
        if let Some(r) = &mut self.state.reference {
            r.after_step(&self.cfg.schedule(self.two));
            return Ok(());
        }
        let steps = self.steps;
        let st = &mut self.state;
        match st.phase {
            Phase::Done => return Ok(()),
            Phase::Stabilize => {
                st.stable_steps += 1;
                if st.stable_steps >= self.cfg.stabilize() {
                    st.phase = Phase::Done;
                    tracing::info!(step = step.global_step, "GReg: stabilised; the units can be removed");
                }
            }
            Phase::Uniform | Phase::Push if steps.is_multiple_of(self.cfg.interval as u64) => {
                let mut just_chose = false;
                if st.phase == Phase::Uniform {
                    st.lambda += self.cfg.uniform_delta;
                    if st.lambda >= self.cfg.uniform_ceiling {
                        just_chose = true;
                        st.keep = Some(choose(params, &self.sets, &self.kept)?);
                        st.phase = Phase::Push;
                        st.lambda = 0.0;
                        tracing::info!(step = step.global_step, "GReg-2: uniform phase over; units chosen by L1 norm");
                    }
                } else {
                    st.lambda += self.cfg.delta;
                }
                let ratio = match &st.keep {
                    Some(k) if st.phase == Phase::Push => magnitude_ratio(params, &self.sets, k)?,
                    _ => 0.0,
                };
                let point = TracePoint { step: step.global_step, phase: st.phase, lambda: st.lambda, ratio };
                st.trace.push(point);
                let stop = st.lambda >= self.cfg.ceiling || ratio >= self.cfg.ratio_stop;
                if st.phase == Phase::Push && !just_chose && stop {
                    st.phase = if self.cfg.stabilize() > 0 { Phase::Stabilize } else { Phase::Done };
                    tracing::info!(
                        step = step.global_step,
                        lambda = st.lambda,
                        ratio = format!("{ratio:.1}"),
                        "GReg: penalty stops growing"
                    );
                } else if st.trace.len().is_multiple_of(50) {
                    tracing::info!(step = step.global_step, lambda = st.lambda, ratio = format!("{ratio:.2}"), "GReg");
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_epoch(&mut self, _params: &ParamStore, step: &StepInfo) -> Result<()> {
        if let (true, Some(r)) = (self.active, &self.state.reference) {
            for l in &r.layers {
                tracing::info!(
                    epoch = step.epoch,
                    layer = %l.name,
                    lambda = l.lambda,
                    ratio = ?l.ratio,
                    finished = l.finish_step.is_some(),
                    "GReg"
                );
            }
            return Ok(());
        }
        if self.active {
            let ratio = self.state.trace.last().map_or(0.0, |t| t.ratio);
            tracing::info!(
                epoch = step.epoch,
                phase = ?self.state.phase,
                lambda = self.state.lambda,
                ratio = format!("{ratio:.1}"),
                "GReg"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use espalier_core::init::Init;
    use espalier_core::{Member, ParamBuilder, ParamKind};

    fn store() -> Result<(ParamStore, Vec<GroupSet>)> {
        let pb = ParamBuilder::from_seed(0, DType::F32, &Device::Cpu);
        let w = pb.pp("fc1").param("weight", &[4, 3], ParamKind::Weight, Init::Const(0.0))?;
        // Unit norms (L1 of rows): 3, 0.3, 6, 1.5.
        w.set(&Tensor::new(&[[1f32, 1., 1.], [0.1, 0.1, 0.1], [2., 2., 2.], [0.5, 0.5, 0.5]], &Device::Cpu)?)?;
        let set = GroupSet {
            name: "fc1".into(),
            size: 4,
            block: 1,
            members: vec![Member::new("fc1.weight", 0)],
            consumer: None,
        };
        Ok((pb.finish().0, vec![set]))
    }

    fn greg(cfg: GRegConfig, two: bool, sets: Vec<GroupSet>, store: &ParamStore) -> Result<GReg> {
        let method = if two { "greg2" } else { "greg1" };
        let mut sc: StructuredConfig = serde_json::from_value(serde_json::json!({ "method": method, "keep": 2 }))
            .map_err(|e| espalier_core::Error::msg(e.to_string()))?;
        sc.greg = cfg;
        let mut g = GReg::new(sc);
        g.begin(sets, BTreeMap::from([("fc1".into(), 2)]), store)?;
        Ok(g)
    }

    fn step(g: &mut GReg, store: &ParamStore, n: u64) -> Result<()> {
        g.on_step(store, &StepInfo { epoch: 0, global_step: n, lr: 0.0, ..Default::default() })
    }

    #[test]
    fn greg1_penalty_grows_by_the_schedule_on_the_pruned_units_only() -> Result<()> {
        let (store, sets) = store()?;
        let cfg = GRegConfig {
            mode: GRegMode::Pooled,
            interval: 3,
            delta: 0.5,
            ceiling: 1.2,
            ratio_stop: 1e9,
            ..GRegConfig::default()
        };
        let mut g = greg(cfg, false, sets, &store)?;
        assert_eq!(g.state.keep.as_ref().unwrap()["fc1"], vec![0, 2]);
        let mut lambdas = Vec::new();
        for n in 1..=10 {
            step(&mut g, &store, n)?;
            lambdas.push(g.state.lambda);
        }
        // +0.5 every 3 steps, frozen once it reaches 1.2 (at step 9: 1.5).
        assert_eq!(lambdas, [0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.5, 1.5]);
        assert_eq!(g.state.phase, Phase::Done);
        // grad += λ·w on rows 1 and 3 only (λ = 1.5 while it was pushing).
        g.state.phase = Phase::Push;
        let w = store.get("fc1.weight")?;
        let mut grads = w.tensor().zeros_like()?.sum_all()?.backward()?;
        grads.insert(w.tensor(), w.tensor().zeros_like()?);
        g.adjust_grads(&store, &mut grads, &StepInfo::default())?;
        let got = grads.get(w.tensor()).unwrap().to_vec2::<f32>()?;
        assert_eq!(got, [[0.0f32; 3], [0.15; 3], [0.0; 3], [0.75; 3]]);
        Ok(())
    }

    #[test]
    fn greg2_grows_uniformly_then_chooses_and_the_ratio_stop_ends_the_push() -> Result<()> {
        let (store, sets) = store()?;
        let cfg = GRegConfig {
            mode: GRegMode::Pooled,
            interval: 1,
            uniform_delta: 0.1,
            uniform_ceiling: 0.3,
            delta: 0.01,
            ratio_stop: 2.0,
            stabilize_steps: Some(2),
            ..GRegConfig::default()
        };
        let mut g = greg(cfg, true, sets, &store)?;
        assert!(g.state.keep.is_none());
        for n in 1..=3 {
            step(&mut g, &store, n)?;
        }
        let st = g.state.clone();
        assert_eq!(st.phase, Phase::Push);
        assert_eq!(st.keep.as_ref().unwrap()["fc1"], vec![0, 2]);
        // The weights already give mean|kept| / mean|pruned| = 4.5 / 0.9 = 5 ≥ 2:
        // the next increase stops the push, then 2 steps of stabilisation.
        step(&mut g, &store, 4)?;
        assert_eq!(g.state.phase, Phase::Stabilize);
        let ratio = g.state.trace.last().unwrap().ratio;
        assert!((ratio - 5.0).abs() < 1e-6, "{ratio}");
        step(&mut g, &store, 5)?;
        step(&mut g, &store, 6)?;
        assert_eq!(g.state.phase, Phase::Done);
        Ok(())
    }

    #[test]
    fn mode_defaults_to_reference_with_its_stabilisation() {
        let c = GRegConfig::default();
        assert_eq!(c.mode, GRegMode::Reference);
        assert_eq!(c.stabilize(), 10_000);
        let p: GRegConfig = serde_json::from_str(r#"{"mode": "pooled"}"#).unwrap();
        assert_eq!((p.mode, p.stabilize()), (GRegMode::Pooled, 0));
        let s: GRegConfig = serde_json::from_str(r#"{"stabilize_steps": 7}"#).unwrap();
        assert_eq!(s.stabilize(), 7);
        assert!(serde_json::from_str::<GRegConfig>(r#"{"mode": "paper"}"#).is_err());
    }

    /// A BatchNorm running variance among a set's members (a buffer, as in a
    /// ResNet channel group) counts for neither GReg's choice nor the L1
    /// criterion: both keep the units of largest weight norm, the same ones.
    #[test]
    fn greg_and_l1_choose_the_same_units_whatever_the_buffers_hold() -> Result<()> {
        let (_, mut sets) = store()?;
        let pb = ParamBuilder::from_seed(0, DType::F32, &Device::Cpu);
        let w = pb.pp("fc1").param("weight", &[4, 3], ParamKind::Weight, Init::Const(0.0))?;
        w.set(&Tensor::new(&[[1f32, 1., 1.], [0.1, 0.1, 0.1], [2., 2., 2.], [0.5, 0.5, 0.5]], &Device::Cpu)?)?;
        let var = pb.pp("bn").param("running_var", &[4], ParamKind::Buffer, Init::Const(0.0))?;
        // Huge variances on the two weakest units.
        var.set(&Tensor::new(&[1f32, 100.0, 1.0, 100.0], &Device::Cpu)?)?;
        let params = pb.finish().0;
        sets[0].members.push(Member::new("bn.running_var", 0));
        let kept = BTreeMap::from([("fc1".to_string(), 2)]);
        let greg = choose(&params, &sets, &kept)?;
        assert_eq!(greg["fc1"], vec![0, 2]);
        assert_eq!(top_k(&norms(&params, &sets[0], true)?, 2), greg["fc1"]);
        Ok(())
    }
}
