//! Unstructured and pattern pruning with masks (`[prune]`): an importance
//! criterion ([`Importance`]), a granularity (single weights, N:M, blocks), a
//! scope and a schedule (one-shot, IMP with rewinding, gradual), with the
//! training terms that shape the weights for the pruning step: ADMM during
//! the dense phase ([`crate::admm`]), SR-STE during retraining
//! ([`crate::sr_ste`]). SPUR (Park et al., "Structured Pattern Pruning Using
//! Regularization", 2021, arXiv 2109.08814) is IMP with the row/column group
//! lasso R(W) = λ(Σ_i ‖W_i,:‖₂ + Σ_j ‖W_:,j‖₂) of `espalier_train`'s
//! `group_lasso` regularizer, and is named so in reports: `spur-…` with the
//! penalty in the gradient (SPUR as specified, λ ~ 1e-5 … 1e-3), `spur-prox-…`
//! with its proximal step (a variant whose λ has other units; see
//! `espalier_train::regularize`). With λ = 0 SPUR is IMP, bit for bit.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use espalier_core::select::SelectorSpec;
use espalier_core::{ParamStore, Result, Selector};
use espalier_models::Model;
use espalier_train::regularize::GroupLassoMode;
use espalier_train::{Regularizer, RegularizerConfig, StepInfo};
use serde::{Deserialize, Serialize};

use crate::admm::{Admm, AdmmConfig, AdmmPoint, Projection};
use crate::magnitude::{masks_for, Importance, MaskRule, Scope, Scorer};
use crate::method::{Context, Curve, Method, MethodReport, Plan};
use crate::pattern::{Granularity, LayerTargets};
use crate::schedule::{Cubic, Rewind, ScheduleConfig};
use crate::sr_ste::{SrSte, SrSteConfig};

/// What to prune, by which criterion, on which schedule (`[prune]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// Importance criterion.
    #[serde(default)]
    pub importance: Importance,
    /// Global, per-layer or per-row threshold.
    #[serde(default)]
    pub scope: Scope,
    /// Which parameters are pruned (default: weights outside the head).
    #[serde(default)]
    pub params: SelectorSpec,
    /// When to prune.
    pub schedule: ScheduleConfig,
    /// What is pruned together: single weights (default), `n_of_m`
    /// patterns or blocks.
    #[serde(default)]
    pub granularity: Granularity,
    /// Training examples (a seeded sample) for criteria that run the model
    /// before scoring.
    #[serde(default = "default_calibration")]
    pub calibration: usize,
    /// ADMM during the dense phase, towards the pruning step's constraint
    /// (one-shot schedules).
    #[serde(default)]
    pub admm: Option<AdmmConfig>,
    /// SR-STE retraining after the pruning step (one-shot schedules).
    #[serde(default)]
    pub sr_ste: Option<SrSteConfig>,
    /// Per-parameter sparsity by exact name, replacing the schedule's for
    /// the parameters named (`scope = "layer"`, one-shot schedules): Zhang et
    /// al.'s per-layer ratios. The others get the schedule's sparsity.
    #[serde(default)]
    pub layer_sparsity: BTreeMap<String, f64>,
}

fn default_calibration() -> usize {
    128
}

impl PruneConfig {
    /// Checks the section against `dense_epochs` of dense training; errors
    /// name the key.
    pub fn validate(&self, dense_epochs: usize) -> std::result::Result<(), String> {
        Selector::new(&self.params).map_err(|e| format!("key `prune.params`: {e}"))?;
        self.schedule.validate("prune.schedule", dense_epochs)?;
        self.granularity.validate("prune.granularity")?;
        let scorer = self.importance.build();
        let one_shot = matches!(self.schedule, ScheduleConfig::OneShot { .. });
        if let Some(implied) = self.granularity.implied_sparsity() {
            match self.schedule {
                ScheduleConfig::OneShot { sparsity, .. } if (sparsity - implied).abs() > 1e-9 => {
                    return Err(format!(
                        "prune.schedule.sparsity is {sparsity}, but the n_of_m granularity implies {implied}"
                    ))
                }
                ScheduleConfig::OneShot { .. } => {}
                _ => return Err("an n_of_m granularity needs a one_shot schedule (its sparsity is fixed)".into()),
            }
        }
        if self.scope == Scope::Row && self.granularity != Granularity::Unstructured {
            return Err("key `prune.scope`: `row` is for the unstructured granularity".into());
        }
        if !self.layer_sparsity.is_empty() {
            if self.scope != Scope::Layer || !one_shot || self.granularity.implied_sparsity().is_some() {
                return Err("key `prune.layer_sparsity` needs scope = \"layer\", a one_shot schedule and an \
                            unstructured or block granularity"
                    .into());
            }
            if let Some((name, s)) = self.layer_sparsity.iter().find(|(_, s)| !(0.0..1.0).contains(*s)) {
                return Err(format!("key `prune.layer_sparsity.\"{name}\"` must be in [0, 1), found {s}"));
            }
        }
        if scorer.needs_calibration() && self.calibration == 0 {
            return Err(format!("key `prune.calibration` must be at least 1 for importance `{}`", scorer.name()));
        }
        if matches!(self.schedule, ScheduleConfig::Gradual { .. }) && !scorer.scores_while_training() {
            return Err(format!(
                "importance `{}` scores from a calibration pass and cannot prune during training: use a \
                 one_shot or imp schedule",
                scorer.name()
            ));
        }
        if let Some(a) = &self.admm {
            a.validate("prune.admm")?;
            if !one_shot {
                return Err("prune.admm needs a one_shot schedule (ADMM runs during the dense phase)".into());
            }
            if self.importance != Importance::Magnitude {
                return Err("prune.admm projects by magnitude: use importance = \"magnitude\"".into());
            }
        }
        if let Some(s) = &self.sr_ste {
            s.validate("prune.sr_ste")?;
            if !one_shot {
                return Err("prune.sr_ste needs a one_shot schedule (SR-STE is the retraining phase)".into());
            }
            if self.importance != Importance::Magnitude {
                return Err("prune.sr_ste recomputes masks by magnitude: use importance = \"magnitude\"".into());
            }
        }
        Ok(())
    }

    /// The method of this section, for a run with `dense_epochs` of dense
    /// training, the trainer's `regularizers` and `seed`.
    pub fn method(
        &self,
        dense_epochs: usize,
        regularizers: &[RegularizerConfig],
        seed: u64,
    ) -> Result<Box<dyn Method>> {
        let selector = Selector::new(&self.params)?;
        let targets = LayerTargets::new(self.layer_sparsity.clone());
        let projection = Projection {
            granularity: self.granularity,
            scope: self.scope,
            sparsity: self.schedule.one_shot_sparsity(),
            targets: targets.clone(),
        };
        let admm = self.admm.clone().map(|a| Admm::new(a, selector.clone(), projection.clone(), dense_epochs));
        let sr_ste = self.sr_ste.as_ref().map(|s| SrSte::new(s, selector.clone(), projection));
        let spur = regularizers.iter().find_map(|r| match r {
            RegularizerConfig::GroupLasso { mode: GroupLassoMode::Proximal, .. } => Some("spur-prox"),
            RegularizerConfig::GroupLasso { .. } => Some("spur"),
            _ => None,
        });
        Ok(Box::new(Masking {
            scorer: self.importance.build(),
            rule: MaskRule { scope: self.scope, granularity: self.granularity, seed, targets },
            gradual: self.schedule.gradual(),
            cfg: self.clone(),
            selector,
            admm,
            sr_ste,
            spur,
        }))
    }

    /// Warnings about this section under an optimizer that normalises its
    /// update (`adaptive`: Adam/AdamW).
    pub fn warnings(&self, adaptive: bool) -> Vec<String> {
        self.sr_ste.iter().filter_map(|s| s.warning(adaptive)).collect()
    }

    fn key<T: Serialize>(v: T) -> String {
        serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
}

/// Pruning with masks on a schedule.
pub struct Masking {
    cfg: PruneConfig,
    selector: Selector,
    scorer: Box<dyn Scorer>,
    rule: MaskRule,
    gradual: Option<Cubic>,
    admm: Option<Admm>,
    sr_ste: Option<SrSte>,
    /// SPUR's name (`spur`, `spur-prox`) when a group lasso is configured.
    spur: Option<&'static str>,
}

impl Masking {
    /// The training terms this method adds (ADMM, SR-STE), in step order.
    fn terms(&mut self) -> impl Iterator<Item = &mut dyn Regularizer> {
        let admm = self.admm.iter_mut().map(|a| a as &mut dyn Regularizer);
        admm.chain(self.sr_ste.iter_mut().map(|s| s as &mut dyn Regularizer))
    }

    fn masks(&mut self, params: &ParamStore, sparsity: f64) -> Result<BTreeMap<String, Tensor>> {
        masks_for(params, &self.selector, self.scorer.as_mut(), &self.rule, sparsity)
    }
}

/// Checkpoint keys of the parts: `<part>.<key>`.
fn prefixed(out: &mut BTreeMap<String, Tensor>, part: &str, state: BTreeMap<String, Tensor>) {
    out.extend(state.into_iter().map(|(k, v)| (format!("{part}.{k}"), v)));
}

fn part(state: &BTreeMap<String, Tensor>, part: &str) -> BTreeMap<String, Tensor> {
    let prefix = format!("{part}.");
    state.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone()))).collect()
}

impl Regularizer for Masking {
    fn name(&self) -> &str {
        "prune"
    }
    fn observe(&mut self, params: &ParamStore, grads: &GradStore, _step: &StepInfo) -> Result<()> {
        self.scorer.observe(params, &self.selector, grads)
    }
    fn adjust_grads(&mut self, params: &ParamStore, grads: &mut GradStore, step: &StepInfo) -> Result<()> {
        self.terms().try_for_each(|t| t.adjust_grads(params, grads, step))
    }
    fn on_step(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        self.terms().try_for_each(|t| t.on_step(params, step))?;
        if let Some(target) = self.gradual.and_then(|c| c.target(step.epoch, step.step_in_epoch, step.steps_per_epoch))
        {
            let masks = self.masks(params, target)?;
            params.set_masks(&masks)?;
        }
        Ok(())
    }
    fn on_epoch(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        self.terms().try_for_each(|t| t.on_epoch(params, step))
    }
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        prefixed(&mut out, self.scorer.name(), self.scorer.state()?);
        if let Some(a) = &self.admm {
            prefixed(&mut out, "admm", a.state()?);
        }
        Ok(out)
    }
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let name = self.scorer.name();
        self.scorer.load_state(&part(state, name))?;
        if let Some(a) = &mut self.admm {
            a.load_state(&part(state, "admm"))?;
        }
        Ok(())
    }
}

impl Method for Masking {
    fn describe(&self) -> String {
        let p = &self.cfg;
        let imp = self.scorer.name();
        let scope = match p.granularity {
            Granularity::Unstructured => PruneConfig::key(p.scope),
            Granularity::NOfM { n, m } => format!("{n}:{m}"),
            Granularity::Block { rows, cols } => format!("block{rows}x{cols}"),
        };
        let name = match &p.schedule {
            ScheduleConfig::OneShot { .. } if p.admm.is_some() => format!("admm-{imp}-{scope}"),
            ScheduleConfig::OneShot { .. } => format!("one-shot-{imp}-{scope}"),
            ScheduleConfig::Imp { rewind, .. } => {
                let base = self.spur.unwrap_or("imp");
                match rewind {
                    Rewind::None => format!("{base}-{imp}-{scope}"),
                    _ => format!("{base}-{imp}-{scope}-rewind-{}", PruneConfig::key(rewind).replace(':', "")),
                }
            }
            ScheduleConfig::Gradual { .. } => format!("gradual-{imp}-{scope}"),
        };
        if p.sr_ste.is_some() {
            name + "-sr-ste"
        } else {
            name
        }
    }
    /// [`Method::plan`], after checking that every `prune.layer_sparsity`
    /// name is a pruned parameter of `model` (a config error before the
    /// run starts, not at the pruning step hours later).
    fn plan_for(&self, dense_epochs: usize, model: &dyn Model) -> Result<Plan> {
        let pruned: Vec<&str> = model.params().iter().filter(|p| self.selector.matches(p)).map(|p| p.name()).collect();
        if let Some(name) = self.cfg.layer_sparsity.keys().find(|n| !pruned.contains(&n.as_str())) {
            espalier_core::bail!(
                "key `prune.layer_sparsity` names `{name}`, which is not a pruned parameter of this model (pruned: {})",
                pruned.join(", ")
            );
        }
        Ok(self.plan(dense_epochs))
    }
    fn plan(&self, dense_epochs: usize) -> Plan {
        let mut plan = self.cfg.schedule.plan(dense_epochs);
        if let (Some(a), Some(dense)) = (&self.cfg.admm, plan.phases.first_mut()) {
            dense.lr = a.phase_lr();
        }
        plan
    }
    fn selector(&self) -> &Selector {
        &self.selector
    }
    fn reports_lines(&self) -> bool {
        true
    }
    fn prune(&mut self, cx: &mut Context, sparsity: f64) -> Result<()> {
        if self.scorer.needs_calibration() {
            let batches = cx.calibration(self.cfg.calibration)?;
            self.scorer.calibrate(cx.model, &self.selector, &batches)?;
        }
        let params = cx.model.params();
        let masks = self.masks(params, sparsity)?;
        if let Some(a) = &mut self.admm {
            a.record_projection(params, &masks)?;
        }
        if self.sr_ste.is_some() {
            // SR-STE retrains dense weights through the mask.
            for q in params.iter().filter(|q| self.selector.matches(q)) {
                q.set_straight_through(true)?;
            }
        }
        params.set_masks(&masks)?;
        tracing::info!(sparsity, "pruned");
        Ok(())
    }
    /// SR-STE ends with hard masks: the saved model's pruned weights are zero.
    fn finish(&mut self, params: &ParamStore) -> Result<()> {
        for p in params.iter().filter(|p| p.straight_through()) {
            p.set_straight_through(false)?;
        }
        Ok(())
    }
    fn save(&self) -> serde_json::Value {
        match &self.admm {
            Some(a) => serde_json::json!({ "admm_trace": a.trace(), "admm_projection_gap": a.projection_gap() }),
            None => serde_json::Value::Null,
        }
    }
    fn load(&mut self, state: &serde_json::Value) -> Result<()> {
        if let (Some(a), Some(t)) = (&mut self.admm, state.get("admm_trace")) {
            let trace: Vec<AdmmPoint> = serde_json::from_value(t.clone())
                .map_err(|e| espalier_core::Error::msg(format!("ADMM trace in the checkpoint: {e}")))?;
            a.set_trace(trace);
            a.set_projection_gap(state.get("admm_projection_gap").and_then(|g| g.as_f64()));
        }
        Ok(())
    }
    fn report(&self) -> Option<MethodReport> {
        let admm = self.admm.as_ref()?;
        Some(admm_report(admm))
    }
}

/// ADMM's section of the report: the trace of Z/U updates and the gap at
/// the hard projection against the convergence threshold.
fn admm_report(admm: &Admm) -> MethodReport {
    let trace = admm.trace();
    let threshold = admm.config().converged_gap;
    let mut md = String::new();
    if let Some(g) = admm.projection_gap() {
        let verdict = if g < threshold { "converged" } else { "NOT converged: not a result" };
        md += &format!(
            "\nADMM primal gap at the hard projection ‖W − Π(W)‖/‖W‖: {g:.4} ({verdict}; threshold {threshold}).\n"
        );
    }
    if !trace.is_empty() {
        md += "\nADMM Z/U updates (relative primal gap ‖W − Z‖/‖W‖, dual residual ρ‖Z_k − Z_{k−1}‖, \
               fraction of Z's support that changed):\n\n\
               | step | ρ | primal gap | dual residual | support changed | |\n|---:|---:|---:|---:|---:|---|\n";
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("–".to_string(), f);
        for pt in trace {
            md += &format!(
                "| {} | {:.3e} | {:.4} | {} | {} | {} |\n",
                pt.step,
                pt.rho,
                pt.primal_gap,
                opt(pt.dual_residual, &|v| format!("{v:.3e}")),
                opt(pt.support_change, &|v| format!("{v:.4}")),
                if pt.stalled { "gap not falling" } else { "" }
            );
        }
    }
    let json = serde_json::json!({
        "admm_trace": trace,
        "admm_projection_gap": admm.projection_gap(),
        "admm_converged": admm.converged(),
        "admm_converged_gap": threshold,
    });
    let gap = trace.iter().map(|p| (p.step as f64, p.primal_gap)).collect();
    let curve = Curve {
        name: "admm-gap".into(),
        title: format!("ADMM: relative primal gap ‖W − Z‖/‖W‖ at each Z/U update (converged below {threshold})"),
        x_label: "optimizer step".into(),
        y_label: "primal gap (log scale)".into(),
        log_y: true,
        ..Curve::default()
    }
    .line("primal gap", gap);
    MethodReport { json, markdown: md, curves: if trace.is_empty() { vec![] } else { vec![curve] } }
}
