//! Structured pruning: which units of each [`GroupSet`] to keep, then a
//! physically smaller model (the session shrinks it) and fine-tuning.
//!
//! A [`Criterion`] chooses the units of one set at a time; each lives in a
//! module of its own (higher score = keep):
//!
//! - [`random`]: uniform scores (the floor);
//! - [`norm`]: `l1` / `l2`, `Σ|w|` / `√Σw²` over every element the unit owns,
//!   and `filter_l1`, the mean `|w|` of the producing filter/row only (Li,
//!   Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient
//!   ConvNets", ICLR 2017, arXiv 1608.08710, §3.1; GReg's authors' score);
//! - [`activation`]: mean `|h|` of the unit on calibration data;
//! - [`taylor`]: first-order Taylor (Molchanov, Mallya, Tyree, Frosio & Kautz,
//!   "Importance Estimation for Neural Network Pruning", CVPR 2019, arXiv
//!   1906.10771, eq. 8 for groups);
//! - [`movement`]: movement pruning's score summed over a unit;
//! - [`ispasp`]: i-SpaSP (Wolfe & Kyrillidis, "i-SpaSP: Structured Neural
//!   Pruning via Sparse Signal Recovery", 2022, arXiv 2112.04905), as the
//!   authors' code runs it (`[structured.ispasp]`);
//! - [`mi`]: layer-wise mutual information, top-down (Fan et al., "Layer-wise
//!   Model Pruning based on Mutual Information", EMNLP 2021, arXiv
//!   2108.12594);
//! - [`greedy`]: greedy forward selection (Ye, Gong, Nie, Zhu, Liu & Liu,
//!   "Good Subnetworks Provably Exist: Pruning via Greedy Forward
//!   Selection", ICML 2020, arXiv 2003.01794), i-SpaSP's provable baseline.
//!
//! GReg ([`crate::greg`]) chooses its units by training instead and is a
//! method of its own. [`GroupCriterion`] names them all in the config;
//! [`StructuredConfig::method`] is the registry.
//!
//! By default every selected set is chosen at once on the dense model and
//! shrunk in one step; with `block_by_block` one residual block at a time
//! through the already pruned prefix ([`blocks`]).
//!
//! The output residual `‖Y − H_S A_Sᵀ‖/‖Y‖` of every set with a consumer
//! ([`Model::consume`]) is reported for every criterion, so that criteria can
//! be compared on it ([`consumer`]).

pub mod activation;
pub mod blocks;
pub mod consumer;
pub mod greedy;
pub mod ispasp;
pub mod mi;
pub mod movement;
pub mod norm;
pub mod random;
pub mod taylor;

use std::time::Instant;

use candle_core::{DType, Tensor};
use espalier_core::select::Pattern;
use espalier_core::Batch;
use espalier_core::{bail, GroupSet, Result, Rng, Selector};
use espalier_models::Model;
use espalier_train::Regularizer;
use serde::{Deserialize, Serialize};

pub use crate::method::Selection;
use crate::method::{Action, Context, Length, Method, Phase, PhaseLr, Plan};
use consumer::Consumer;

/// How units are scored.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupCriterion {
    /// Uniform random scores.
    Random,
    /// Sum of |w| over the unit.
    #[default]
    L1,
    /// Euclidean norm of the unit's weights.
    L2,
    /// Mean |w| of the unit's producing filter or row only (Li et al.'s
    /// filter norm; the score GReg's reference code chooses by).
    FilterL1,
    /// Mean |activation| on calibration data.
    Activation,
    /// First-order Taylor `(Σ w·∂L/∂w)²`.
    Taylor,
    /// Movement score `−Σ w·∂L/∂w` (signed).
    Movement,
    /// i-SpaSP (sparse signal recovery).
    Ispasp,
    /// Greedy forward selection (Ye et al. 2020): add the unit that lowers
    /// the loss most, one at a time ([`greedy`]).
    GreedyFs,
    /// Layer-wise mutual information, top-down.
    Mi,
    /// GReg-1: units chosen by L1 norm, pushed to zero by a growing L2
    /// penalty during training, then removed ([`crate::greg`]).
    Greg1,
    /// GReg-2: a uniform growing penalty first, then as GReg-1.
    Greg2,
}

impl GroupCriterion {
    /// The criterion that scores units once (the registry); `None` for GReg,
    /// which chooses its units by training ([`crate::greg`]).
    pub fn criterion(self, cfg: &StructuredConfig) -> Option<Box<dyn Criterion>> {
        Some(match self {
            GroupCriterion::Random => Box::new(random::Random),
            GroupCriterion::L1 => Box::new(norm::Norm::L1),
            GroupCriterion::L2 => Box::new(norm::Norm::L2),
            GroupCriterion::FilterL1 => Box::new(norm::Norm::FilterL1),
            GroupCriterion::Activation => Box::new(activation::Activation),
            GroupCriterion::Taylor => Box::new(taylor::taylor()),
            GroupCriterion::Movement => Box::new(movement::unit_movement()),
            GroupCriterion::Ispasp => Box::new(ispasp::Ispasp { iterations: cfg.iterations, cfg: cfg.ispasp.clone() }),
            GroupCriterion::Mi => Box::new(mi::Mi::new(cfg.estimator, cfg.bins)),
            GroupCriterion::GreedyFs => Box::new(greedy::Greedy { cfg: cfg.greedy.clone() }),
            GroupCriterion::Greg1 | GroupCriterion::Greg2 => return None,
        })
    }

    /// The config name (`l1`, `ispasp`, …).
    pub fn key(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
}

/// Mutual-information estimator for hidden–hidden pairs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MiEstimator {
    /// `−½ log(1 − ρ²)` (jointly Gaussian).
    #[default]
    Gaussian,
    /// Quantile bins and the discrete (plug-in) MI.
    Binned,
    /// Quantile bins and the discrete MI with the Miller–Madow correction
    /// of each entropy (Miller 1955: `Ĥ + (m − 1)/2N`, `m` the occupied
    /// bins), which removes the plug-in's upward bias of about
    /// `(K − 1)²/2N` nats between independent variables; also for the top
    /// set's label MI.
    MillerMadow,
}

/// Settings of a structured pruning step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StructuredConfig {
    /// The criterion.
    #[serde(default)]
    pub method: GroupCriterion,
    /// Which group sets are pruned, by name (globs or `re:`; default all).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Fraction of each selected set's units that is kept.
    #[serde(default)]
    pub keep_ratio: Option<f64>,
    /// Number of units kept in each selected set.
    #[serde(default)]
    pub keep: Option<usize>,
    /// Calibration examples (from the training set, a seeded sample).
    #[serde(default = "default_calibration")]
    pub calibration: usize,
    /// i-SpaSP iterations T.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// MI estimator for hidden–hidden pairs.
    #[serde(default)]
    pub estimator: MiEstimator,
    /// Quantile bins for binned MI (and for the label MI of the top set).
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// Fine-tuning epochs after the shrink (learning-rate schedule restarted).
    #[serde(default)]
    pub finetune_epochs: usize,
    /// Training examples (a seeded sample, no augmentation) passed through
    /// the shrunk model in training mode, without any update, to re-estimate
    /// its BatchNorm running statistics before it is evaluated: removing
    /// channels shifts the inputs of every later BN layer. The statistics are
    /// exponential averages (momentum 0.1), so use at least 30 batches' worth
    /// (the old statistics keep 0.9^batches of their weight). 0 = off; models
    /// without BatchNorm ignore it.
    #[serde(default)]
    pub recalibrate_bn: usize,
    /// GReg settings (methods `greg1`, `greg2`).
    #[serde(default)]
    pub greg: crate::greg::GRegConfig,
    /// i-SpaSP settings (method `ispasp`).
    #[serde(default)]
    pub ispasp: ispasp::IspaspConfig,
    /// Greedy forward selection settings (method `greedy_fs`).
    #[serde(default)]
    pub greedy: greedy::GreedyConfig,
    /// Choose and shrink one residual block at a time, in model order, each
    /// on calibration activations through the already shrunk (and
    /// fine-tuned) model ([`blocks`]); one-pass criteria only.
    #[serde(default)]
    pub block_by_block: bool,
    /// Fine-tuning epochs after each block's shrink, at a constant
    /// learning rate with a fresh optimizer (`block_by_block` only).
    #[serde(default)]
    pub block_finetune_epochs: usize,
    /// Their learning rate (default: the optimizer's configured rate).
    #[serde(default)]
    pub block_finetune_lr: Option<f64>,
    /// Leave the first block of every stage unpruned (residual networks).
    #[serde(default)]
    pub skip_first_block: bool,
    /// Leave the last block of every stage unpruned (residual networks).
    #[serde(default)]
    pub skip_last_block: bool,
    /// Prune in this many passes at rising sparsity, each choosing on the
    /// model the earlier passes (and their fine-tuning) left: pass `p` keeps
    /// `round(units × keep_ratio^(1/passes))` of the units it finds, so that
    /// after the last a set keeps about `keep_ratio` of its units (within
    /// `passes` units of `int(N·keep_ratio)`). The iterative top-down passes
    /// of layer-wise MI pruning (Fan et al. 2021); any one-pass criterion.
    #[serde(default = "one")]
    pub passes: usize,
    /// Fine-tuning epochs after each pass but the last, at a constant
    /// learning rate with a fresh optimizer (`passes > 1`).
    #[serde(default)]
    pub pass_finetune_epochs: usize,
    /// Their learning rate (default: the optimizer's configured rate).
    #[serde(default)]
    pub pass_finetune_lr: Option<f64>,
}

fn one() -> usize {
    1
}

fn default_calibration() -> usize {
    1000
}
fn default_iterations() -> usize {
    20
}
fn default_bins() -> usize {
    16
}

impl StructuredConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        match (self.keep_ratio, self.keep) {
            (Some(r), None) if !(r > 0.0 && r <= 1.0) => {
                Err(format!("key `{path}.keep_ratio` must be in (0, 1], found {r}"))
            }
            (None, Some(0)) => Err(format!("key `{path}.keep` must be at least 1")),
            (Some(_), Some(_)) => Err(format!("give `{path}.keep_ratio` or `{path}.keep`, not both")),
            (None, None) => Err(format!("missing `{path}.keep_ratio` (a fraction) or `{path}.keep` (a unit count)")),
            _ => Ok(()),
        }?;
        let needs_data = self.method.criterion(self).is_some_and(|c| c.needs_calibration());
        if needs_data && self.calibration == 0 {
            return Err(format!("key `{path}.calibration` must be at least 1 for method {:?}", self.method));
        }
        if self.iterations == 0 {
            return Err(format!("key `{path}.iterations` must be at least 1"));
        }
        if self.bins < 2 {
            return Err(format!("key `{path}.bins` must be at least 2"));
        }
        for g in &self.groups {
            Pattern::parse(g).map_err(|e| format!("key `{path}.groups`: {e}"))?;
        }
        self.greg.validate(&format!("{path}.greg"))?;
        self.ispasp.validate(&format!("{path}.ispasp"))?;
        if !self.block_by_block {
            if self.block_finetune_epochs > 0 {
                return Err(format!("key `{path}.block_finetune_epochs` needs `{path}.block_by_block = true`"));
            }
            if self.block_finetune_lr.is_some() {
                return Err(format!("key `{path}.block_finetune_lr` needs `{path}.block_by_block = true`"));
            }
        } else if self.method.criterion(self).is_none() {
            return Err(format!(
                "key `{path}.block_by_block` is for one-pass criteria; `{}` chooses its units by training",
                self.method.key()
            ));
        }
        if let Some(lr) = self.block_finetune_lr {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(format!("key `{path}.block_finetune_lr` must be a positive number, found {lr}"));
            }
        }
        self.validate_passes(path)
    }

    fn validate_passes(&self, path: &str) -> std::result::Result<(), String> {
        if self.passes == 0 {
            return Err(format!("key `{path}.passes` must be at least 1"));
        }
        if self.passes == 1 {
            if self.pass_finetune_epochs > 0 || self.pass_finetune_lr.is_some() {
                return Err(format!("keys `{path}.pass_finetune_*` need `{path}.passes` > 1"));
            }
            return Ok(());
        }
        if self.block_by_block {
            return Err(format!("give `{path}.passes` or `{path}.block_by_block`, not both"));
        }
        if self.method.criterion(self).is_none() {
            return Err(format!(
                "key `{path}.passes` is for one-pass criteria; `{}` chooses its units by training",
                self.method.key()
            ));
        }
        if self.keep.is_some() {
            return Err(format!("key `{path}.passes` needs `{path}.keep_ratio` (a fraction), not `{path}.keep`"));
        }
        if let Some(lr) = self.pass_finetune_lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
            return Err(format!("key `{path}.pass_finetune_lr` must be a positive number, found {lr}"));
        }
        Ok(())
    }

    /// The method this section configures (the registry: a one-pass
    /// criterion, or GReg).
    pub fn method(&self) -> Result<Box<dyn Method>> {
        Ok(match self.method {
            GroupCriterion::Greg1 | GroupCriterion::Greg2 => Box::new(crate::greg::GReg::new(self.clone())),
            _ => Box::new(Structured::new(self.clone())),
        })
    }

    /// How many units of a set of `size` are kept: `keep`, or
    /// `int(size·keep_ratio)` (floored, as i-SpaSP's authors round; the same
    /// count for every one-pass criterion), at least 1.
    pub fn kept(&self, size: usize) -> usize {
        match (self.keep, self.keep_ratio) {
            (Some(k), _) => k.min(size),
            (None, Some(r)) => ((r * size as f64).floor() as usize).clamp(1, size),
            (None, None) => size,
        }
    }
}

/// The group sets of `model` that `cfg.groups` selects (all by default),
/// less those in the first or last block of a stage when
/// `skip_first_block` / `skip_last_block` say so.
pub fn selected_sets(model: &dyn Model, cfg: &StructuredConfig) -> Result<Vec<GroupSet>> {
    let patterns: Vec<Pattern> = cfg.groups.iter().map(|g| Pattern::parse(g)).collect::<Result<_>>()?;
    let all = model.group_sets();
    let mut sets: Vec<GroupSet> =
        all.iter().filter(|s| patterns.is_empty() || patterns.iter().any(|p| p.matches(&s.name))).cloned().collect();
    if sets.is_empty() {
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        bail!("structured.groups {:?} matches no group set (the model has: {})", cfg.groups, names.join(", "));
    }
    if cfg.skip_first_block || cfg.skip_last_block {
        let key = if cfg.skip_first_block { "skip_first_block" } else { "skip_last_block" };
        if !all.iter().any(|s| model.block_of(&s.name).is_some()) {
            bail!("structured.{key}: this model places no group set in residual blocks (only ResNets do)");
        }
        sets.retain(|s| {
            model
                .block_of(&s.name)
                .is_none_or(|b| !((cfg.skip_first_block && b.first()) || (cfg.skip_last_block && b.last())))
        });
        if sets.is_empty() {
            bail!("structured.{key}: every selected group set is in the first or last block of its stage");
        }
    }
    Ok(sets)
}

/// What a criterion sees of one group set.
pub struct SetView<'a> {
    /// The model.
    pub model: &'a dyn Model,
    /// The set.
    pub set: &'a GroupSet,
    /// Calibration batches (empty when the criterion needs none and the
    /// caller has none).
    pub calib: &'a [Batch],
    /// The set's consumer on the calibration data, where it has one.
    pub consumer: Option<&'a Consumer<'a>>,
    /// The run's seeded stream for structured selection.
    pub rng: &'a mut Rng,
}

/// Chooses the units of one group set at a time (one module each).
pub trait Criterion: Send {
    /// Whether it runs the model on calibration data.
    fn needs_calibration(&self) -> bool;
    /// Whether it needs the set's consumer (an error where there is none).
    fn needs_consumer(&self) -> bool {
        false
    }
    /// Visit the sets from the output down (each set scored against the
    /// units kept above it) rather than in model order.
    fn top_down(&self) -> bool {
        false
    }
    /// Work shared by all sets, before the first.
    fn prepare(&mut self, _model: &dyn Model, _calib: &[Batch]) -> Result<()> {
        Ok(())
    }
    /// The `k` units of `view.set` to keep, ascending.
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>>;
}

/// Chooses the units to keep in the selected group sets of `model` with the
/// one-pass criterion of `cfg.method`.
pub fn select(model: &dyn Model, cfg: &StructuredConfig, calib: &[Batch], seed: u64) -> Result<Selection> {
    select_only(model, cfg, calib, seed, None, None)
}

/// [`select`] restricted to the selected sets named in `only` (one step of
/// [`blocks`]); the random stream is then salted by the first set's place
/// in the model, so that the steps draw differently. With `pass_ratio`
/// (one of several passes) each set keeps `round(size·pass_ratio)` of its
/// current units instead of the configured count.
pub fn select_only(
    model: &dyn Model,
    cfg: &StructuredConfig,
    calib: &[Batch],
    seed: u64,
    only: Option<&[String]>,
    pass_ratio: Option<f64>,
) -> Result<Selection> {
    let start = Instant::now();
    let Some(mut criterion) = cfg.method.criterion(cfg) else {
        bail!("{:?} chooses its units during training (a phase of its own), not in one pass", cfg.method);
    };
    let mut owned = selected_sets(model, cfg)?;
    let mut salt = vec![];
    if let Some(only) = only {
        if let Some(n) = only.iter().find(|n| !owned.iter().any(|s| &s.name == *n)) {
            let names: Vec<&str> = owned.iter().map(|s| s.name.as_str()).collect();
            bail!("structured: group set `{n}` is not among the selected ones ({})", names.join(", "));
        }
        owned.retain(|s| only.contains(&s.name));
        let all = model.group_sets();
        salt.push(all.iter().position(|s| Some(&s.name) == only.first()).unwrap_or(0) as u64 + 1);
    }
    if criterion.needs_calibration() && calib.is_empty() {
        bail!("method {:?} needs calibration data", cfg.method);
    }
    let mut rng = Rng::derive(seed, "structured-select", &salt);
    let mut sel = Selection::default();
    criterion.prepare(model, calib)?;
    let order: Vec<&GroupSet> =
        if criterion.top_down() { owned.iter().rev().collect() } else { owned.iter().collect() };
    for set in order {
        let k = match pass_ratio {
            Some(q) => ((set.size as f64 * q).round() as usize).clamp(1, set.size),
            None => cfg.kept(set.size),
        };
        // The consumer's view of the activations: i-SpaSP's residual, and the
        // output residual reported for every method.
        let consumer = if set.consumer.is_some() && !calib.is_empty() {
            Some(Consumer::new(model, set, calib)?)
        } else if criterion.needs_consumer() {
            bail!("{:?} on `{}`: the group set declares no consumer", cfg.method, set.name);
        } else {
            None
        };
        let mut view = SetView { model, set, calib, consumer: consumer.as_ref(), rng: &mut rng };
        let keep = criterion.choose(&mut view, k)?;
        if let Some(c) = &consumer {
            sel.residual.insert(set.name.clone(), c.relative_residual(&keep)?);
        }
        tracing::info!(set = %set.name, kept = keep.len(), of = set.size, "selected units");
        sel.keep.insert(set.name.clone(), keep);
        sel.order.push(set.name.clone());
    }
    sel.seconds = start.elapsed().as_secs_f64();
    sel.calibration = calib.iter().map(|b| b.len()).sum();
    Ok(sel)
}

/// Structured pruning with a one-pass criterion: dense training, the units
/// chosen and the model shrunk, then fine-tuning (round 1).
pub struct Structured {
    cfg: StructuredConfig,
    selector: Selector,
}

impl Structured {
    /// The method of `cfg` (a one-pass criterion).
    pub fn new(cfg: StructuredConfig) -> Self {
        Structured { cfg, selector: Selector::default() }
    }
}

/// The phases of a structured method: dense training, then `extra` (GReg's
/// penalty phase), then the shrink and fine-tuning, all after the dense
/// phase in round 1.
pub(crate) fn structured_plan(cfg: &StructuredConfig, dense_epochs: usize, extra: Option<Phase>) -> Plan {
    let mut phases = vec![Phase::new(0, Length::Epochs(dense_epochs), vec![])];
    phases.extend(extra);
    let passes = cfg.passes.max(1);
    // Pass p of P keeps keep_ratio^(1/P) of what it finds (P = 1: the
    // configured count).
    let ratio = (passes > 1).then(|| cfg.keep_ratio.unwrap_or(1.0).powf(1.0 / passes as f64));
    for pass in 1..=passes {
        let shrink = Action::Shrink { recalibrate_bn: cfg.recalibrate_bn, sets: None, keep_ratio: ratio };
        let mut phase = Phase::new(pass, Length::Epochs(cfg.finetune_epochs), vec![shrink, Action::NewOptimizer]);
        if pass < passes {
            phase.length = Length::Epochs(cfg.pass_finetune_epochs);
            phase.lr = PhaseLr::Constant(cfg.pass_finetune_lr);
        }
        phases.push(phase);
    }
    Plan { phases, rewind_point: None }
}

impl Regularizer for Structured {
    fn name(&self) -> &str {
        "structured"
    }
}

impl Method for Structured {
    fn describe(&self) -> String {
        let blocks = if self.cfg.block_by_block { "-block-by-block" } else { "" };
        format!("structured-{}{blocks}", self.cfg.method.key())
    }
    fn plan(&self, dense_epochs: usize) -> Plan {
        structured_plan(&self.cfg, dense_epochs, None)
    }
    fn plan_for(&self, dense_epochs: usize, model: &dyn Model) -> Result<Plan> {
        if !self.cfg.block_by_block {
            return Ok(self.plan(dense_epochs));
        }
        Ok(blocks::plan(&self.cfg, dense_epochs, blocks::steps(model, &self.cfg)?))
    }
    fn selector(&self) -> &Selector {
        &self.selector
    }
    /// Every criterion gets calibration data: the output residual is reported
    /// for all of them.
    fn select(&mut self, cx: &mut Context) -> Result<Selection> {
        let calib = cx.calibration(self.cfg.calibration.max(1))?;
        select_only(cx.model, &self.cfg, &calib, cx.seed, cx.only(), cx.pass_ratio())
    }
}

/// Indices of the `k` largest scores, sorted ascending (ties: lower index).
pub(crate) fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = idx.into_iter().take(k).collect();
    keep.sort_unstable();
    keep
}

/// Per-unit sums of per-column values (units own `block` columns).
pub(crate) fn unit_sums(set: &GroupSet, cols: &[f64]) -> Vec<f64> {
    (0..set.size).map(|u| cols[u * set.block..(u + 1) * set.block].iter().sum()).collect()
}

/// Calibration activations of a set, `(rows, size·block)`.
pub(crate) fn activations(model: &dyn Model, calib: &[Batch], set: &str) -> Result<Tensor> {
    let hs: Vec<Tensor> = calib.iter().map(|b| model.probe(b, set)).collect::<Result<_>>()?;
    Ok(Tensor::cat(&hs, 0)?.to_dtype(DType::F32)?)
}

/// Per-column sums of `|t|` (or of `t²` when `squares`) over every axis but 1.
pub(crate) fn axis1_sums(t: &Tensor, squares: bool) -> Result<Vec<f64>> {
    let t = if squares { t.sqr()? } else { t.abs()? };
    let t = t.transpose(0, 1)?.flatten_from(1)?.sum(1)?;
    Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 0.5, 2.0], 3), vec![1, 2, 4]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }

    #[test]
    fn passes_shrink_at_rising_sparsity_with_fine_tuning_between() {
        let c: StructuredConfig = serde_json::from_str(
            r#"{"method": "mi", "keep_ratio": 0.125, "passes": 3, "pass_finetune_epochs": 2,
                "pass_finetune_lr": 1e-4, "finetune_epochs": 5}"#,
        )
        .unwrap();
        assert!(c.validate("structured").is_ok());
        let p = structured_plan(&c, 4, None);
        assert_eq!(p.phases.len(), 4);
        for (i, phase) in p.phases[1..].iter().enumerate() {
            let Action::Shrink { keep_ratio: Some(q), sets: None, .. } = phase.start[0] else { panic!("{phase:?}") };
            assert!((q - 0.5).abs() < 1e-12, "{q}");
            assert_eq!(phase.round, i + 1);
        }
        assert_eq!((p.phases[1].length, p.phases[1].lr), (Length::Epochs(2), PhaseLr::Constant(Some(1e-4))));
        assert_eq!((p.phases[3].length, p.phases[3].lr), (Length::Epochs(5), PhaseLr::Schedule));
        // One pass: the configured count, as before.
        let one: StructuredConfig = serde_json::from_str(r#"{"method": "mi", "keep_ratio": 0.125}"#).unwrap();
        assert!(matches!(structured_plan(&one, 4, None).phases[1].start[0], Action::Shrink { keep_ratio: None, .. }));

        for (bad, key) in [
            (r#"{"method": "mi", "keep_ratio": 0.5, "passes": 0}"#, "passes"),
            (r#"{"method": "mi", "keep": 10, "passes": 2}"#, "keep_ratio"),
            (r#"{"method": "greg1", "keep_ratio": 0.5, "passes": 2}"#, "one-pass"),
            (r#"{"method": "mi", "keep_ratio": 0.5, "passes": 2, "block_by_block": true}"#, "block_by_block"),
            (r#"{"method": "mi", "keep_ratio": 0.5, "pass_finetune_epochs": 1}"#, "passes"),
        ] {
            let c: StructuredConfig = serde_json::from_str(bad).unwrap();
            let e = c.validate("structured").unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn config_validation_names_keys() {
        let mut c: StructuredConfig = serde_json::from_str(r#"{"method": "ispasp", "keep_ratio": 0.5}"#).unwrap();
        assert!(c.validate("structured").is_ok());
        assert_eq!(c.kept(1000), 500);
        c.keep_ratio = Some(1.5);
        assert!(c.validate("structured").unwrap_err().contains("structured.keep_ratio"));
        c.keep_ratio = None;
        assert!(c.validate("structured").unwrap_err().contains("keep"));
    }
}
