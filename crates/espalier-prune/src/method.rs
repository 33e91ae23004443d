//! The method trait: everything a pruning method does to an experiment.
//!
//! An experiment is a sequence of [`Phase`]s (dense training, pruning
//! rounds, penalty phases that run until the method says it is done,
//! fine-tuning after a shrink). A [`Method`] states that plan, opens each
//! phase with [`Action`]s that the session carries out (the generic ones
//! itself; pruning and unit selection by asking the method), hooks into every
//! training step as a [`Regularizer`] (observe → penalty → gradient
//! adjustment → step and epoch updates), and reports about itself at the end.
//! The session never names a method: strategies return actions, the loop
//! executes them (burn's checkpointing and early-stopping strategies).

use std::collections::BTreeMap;

use espalier_core::Batch;
use espalier_core::{Keep, ParamStore, Result, Selector};
use espalier_models::Model;
use espalier_train::{LrRestart, Regularizer};
use serde::{Deserialize, Serialize};

/// How long a phase trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// A fixed number of epochs (possibly 0).
    Epochs(usize),
    /// Until [`Method::done`] holds after an epoch, at most `max_epochs`.
    UntilDone {
        /// Upper bound (also the length the learning-rate schedule assumes).
        max_epochs: usize,
    },
}

impl Length {
    /// The most epochs the phase can take.
    pub fn max_epochs(self) -> usize {
        match self {
            Length::Epochs(n) | Length::UntilDone { max_epochs: n } => n,
        }
    }
}

/// A stretch of training with one learning-rate schedule (it restarts in
/// every phase).
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// 0 = dense training; r ≥ 1 = after the r-th pruning step. A round may
    /// span several phases; its record is written when its last phase ends.
    pub round: usize,
    /// How long it trains.
    pub length: Length,
    /// What happens before its first epoch.
    pub start: Vec<Action>,
    /// The learning rate over the phase.
    pub lr: PhaseLr,
}

impl Phase {
    /// A phase under the experiment's learning-rate schedule.
    pub fn new(round: usize, length: Length, start: Vec<Action>) -> Self {
        Phase { round, length, start, lr: PhaseLr::Schedule }
    }
}

/// The learning rate over a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum PhaseLr {
    /// The experiment's `train.lr_schedule` over the optimizer's rate,
    /// restarted in the phase.
    #[default]
    Schedule,
    /// Constant: this rate, or the optimizer's configured rate for `None`
    /// (e.g. GReg's penalty phase, which the authors run at a constant
    /// rate).
    Constant(Option<f64>),
    /// The experiment's schedule over the optimizer's rate, restarted every
    /// so many steps or epochs of the phase (ADMM's iterations).
    Restart(LrRestart),
}

/// One thing the session does before a phase's first epoch.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Masks at this sparsity of the selected weights ([`Method::prune`]).
    Prune {
        /// Target sparsity.
        sparsity: f64,
    },
    /// Reset surviving weights to the rewind snapshot ([`Plan::rewind_point`]).
    Rewind,
    /// Fresh optimizer state.
    ResetOptimizer,
    /// A fresh optimizer over the current parameters (after a shrink, or for
    /// a phase that trains with a new objective).
    NewOptimizer,
    /// Choose units ([`Method::select`]), shrink the model physically,
    /// re-estimate BatchNorm statistics from this many training examples
    /// (0: off), and evaluate the shrunk model. A plan may shrink several
    /// times (one residual block after another, each chosen on the model
    /// the earlier shrinks left).
    Shrink {
        /// Examples for the BatchNorm re-estimation.
        recalibrate_bn: usize,
        /// The group sets this shrink chooses ([`Context::only`]); `None`:
        /// every set the method selects.
        sets: Option<Vec<String>>,
        /// The fraction of each set's current units this shrink keeps
        /// ([`Context::pass_ratio`]; one pass of several); `None`: the
        /// method's configured count.
        keep_ratio: Option<f64>,
    },
}

/// A method's phases.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// In order; the first is dense training.
    pub phases: Vec<Phase>,
    /// Run-wide epoch at whose start the weights are saved for rewinding.
    pub rewind_point: Option<usize>,
}

impl Plan {
    /// Dense training only.
    pub fn dense(epochs: usize) -> Self {
        Plan { phases: vec![Phase::new(0, Length::Epochs(epochs), vec![])], rewind_point: None }
    }
}

/// What a method may use when it acts: the model, the run's seed and a
/// seeded sample of training examples.
pub struct Context<'a> {
    /// The model.
    pub model: &'a dyn Model,
    /// The run's seed.
    pub seed: u64,
    calibration: &'a mut dyn FnMut(usize) -> Result<Vec<Batch>>,
    only: Option<Vec<String>>,
    pass_ratio: Option<f64>,
}

impl<'a> Context<'a> {
    /// A context whose calibration sample comes from `calibration(n)`.
    pub fn new(model: &'a dyn Model, seed: u64, calibration: &'a mut dyn FnMut(usize) -> Result<Vec<Batch>>) -> Self {
        Context { model, seed, calibration, only: None, pass_ratio: None }
    }

    /// Restricts the next selection to these group sets (an
    /// [`Action::Shrink`]'s `sets`).
    pub fn restrict(&mut self, sets: Option<Vec<String>>) {
        self.only = sets;
    }

    /// Sets the fraction of each set's current units the next selection
    /// keeps (an [`Action::Shrink`]'s `keep_ratio`).
    pub fn set_pass_ratio(&mut self, ratio: Option<f64>) {
        self.pass_ratio = ratio;
    }

    /// The fraction of each set's current units to keep in this pass, if
    /// the shrink is one of several.
    pub fn pass_ratio(&self) -> Option<f64> {
        self.pass_ratio
    }

    /// The group sets a selection is restricted to, if any.
    pub fn only(&self) -> Option<&[String]> {
        self.only.as_deref()
    }

    /// A seeded sample of `n` training examples (no augmentation), in
    /// evaluation-size batches; the same sample for the same `n`.
    pub fn calibration(&mut self, n: usize) -> Result<Vec<Batch>> {
        (self.calibration)(n)
    }
}

/// The units a structured method keeps, and what it measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    /// Kept units per group set.
    pub keep: Keep,
    /// Relative output residual `‖Y − H_S A_Sᵀ‖/‖Y‖` per set on the
    /// calibration data, where the set has a consumer.
    pub residual: BTreeMap<String, f64>,
    /// Wall-clock seconds of the selection.
    pub seconds: f64,
    /// Calibration examples used.
    pub calibration: usize,
    /// The group sets in the order they were chosen (top-down criteria
    /// visit them from the output down).
    #[serde(default)]
    pub order: Vec<String>,
}

/// A method's own section of the run's report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodReport {
    /// For `summary.json` (`method_report`).
    pub json: serde_json::Value,
    /// For `report.md`.
    pub markdown: String,
    /// Plots of the method's own traces, drawn into the run directory as
    /// `<name>.svg` and `<name>.png` and shown in `report.md`.
    pub curves: Vec<Curve>,
}

/// A plot of one of a method's traces (GReg's λ against the training step,
/// say): one line per series, a linear x axis.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curve {
    /// File stem in the run directory, e.g. `greg-lambda`.
    pub name: String,
    /// Title.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// y on a log scale.
    pub log_y: bool,
    /// (label, (x, y) points) per line.
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

impl Curve {
    /// The most points a line keeps: a plot shows no more, and a trace of
    /// every step of a long phase would make a large file.
    pub const MAX_POINTS: usize = 400;

    /// Adds a line, thinned to [`Curve::MAX_POINTS`] evenly spaced points
    /// (the first and the last always kept).
    pub fn line(mut self, label: impl Into<String>, points: Vec<(f64, f64)>) -> Curve {
        let every = points.len().div_ceil(Self::MAX_POINTS).max(1);
        let last = points.len().saturating_sub(1);
        let thinned = points.into_iter().enumerate().filter(|(i, _)| i % every == 0 || *i == last).map(|(_, p)| p);
        self.lines.push((label.into(), thinned.collect()));
        self
    }
}

/// A pruning method (one module each; built from the experiment's config).
pub trait Method: Regularizer {
    /// The name reports use, e.g. `imp-magnitude-global-rewind-init`.
    fn describe(&self) -> String;
    /// The phases of the experiment after `dense_epochs` of dense training.
    fn plan(&self, dense_epochs: usize) -> Plan;
    /// The phases for `model`, the dense model the run starts from (a
    /// resumed run recomputes them from the same model): [`Method::plan`]
    /// by default; a method whose phases follow the architecture (one
    /// shrink per residual block) overrides it.
    fn plan_for(&self, dense_epochs: usize, _model: &dyn Model) -> Result<Plan> {
        Ok(self.plan(dense_epochs))
    }
    /// The weights whose sparsity is reported (and pruned, for masks).
    fn selector(&self) -> &Selector;
    /// Whether rounds report the empty rows and columns of the masks.
    fn reports_lines(&self) -> bool {
        false
    }
    /// Phase `index` of the plan starts (after its actions).
    fn start_phase(&mut self, _index: usize, _cx: &mut Context) -> Result<()> {
        Ok(())
    }
    /// Whether an [`Length::UntilDone`] phase has done its work.
    fn done(&self) -> bool {
        true
    }
    /// Masks at `sparsity` ([`Action::Prune`]).
    fn prune(&mut self, _cx: &mut Context, sparsity: f64) -> Result<()> {
        espalier_core::bail!("{} does not prune with masks (asked for sparsity {sparsity})", self.describe())
    }
    /// The units to keep ([`Action::Shrink`]).
    fn select(&mut self, _cx: &mut Context) -> Result<Selection> {
        espalier_core::bail!("{} does not choose units", self.describe())
    }
    /// The run's training is over (e.g. straight-through masks become hard).
    fn finish(&mut self, _params: &ParamStore) -> Result<()> {
        Ok(())
    }
    /// State beyond tensors ([`Regularizer::state`]) for checkpoints.
    fn save(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores what [`Method::save`] wrote.
    fn load(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    /// The method's section of the report, if it has one.
    fn report(&self) -> Option<MethodReport> {
        None
    }
}

/// No pruning: dense training only.
#[derive(Debug, Default)]
pub struct Dense {
    selector: Selector,
}

impl Regularizer for Dense {
    fn name(&self) -> &str {
        "dense"
    }
}

impl Method for Dense {
    fn describe(&self) -> String {
        "dense".into()
    }
    fn plan(&self, dense_epochs: usize) -> Plan {
        Plan::dense(dense_epochs)
    }
    fn selector(&self) -> &Selector {
        &self.selector
    }
}
