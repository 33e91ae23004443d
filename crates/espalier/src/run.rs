//! Carrying out an experiment: the run directory, the epoch loop that
//! executes the pruning plan's actions, checkpoints, resume, and reports.
//!
//! A run directory holds `config.toml` (the resolved experiment),
//! `checkpoint.safetensors` (weights, masks, optimizer state and rewind
//! snapshot after the last completed epoch; the header records the model
//! config and the run's history), `metrics.jsonl` (a line per epoch and per
//! round), and at the end `model.safetensors`, `summary.json`, `report.md`
//! and `results.csv`. Every file is written atomically. Running the same
//! config into an existing run directory resumes after the last completed
//! epoch and ends with the same numbers as an uninterrupted run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use espalier_core::checkpoint::{self, MASK_PREFIX, OPTIM_PREFIX, REGULARIZER_PREFIX, REWIND_PREFIX};
use espalier_core::{Selector, SparsityReport};
use espalier_data::{Batch, DataRoot};
use espalier_models::{Bert, BertTask, Mode, Model, ModelConfig};
use espalier_prune::admm::AdmmPoint;
use espalier_prune::Granularity;
use espalier_prune::{
    masks_for, Action, Admm, MovementScores, MovementTracker, Plan, Projection, ScheduleConfig, SrSte, StructuredConfig,
};
use espalier_train::trainer::EpochStats;
use espalier_train::trainer::PhasePos;
use espalier_train::{evaluate, EvalStats, RegularizerConfig, Trainer, TrainerOptions};
use serde::{Deserialize, Serialize};

use crate::config::{self, ConfigError, DataConfig, Experiment, PruneConfig};
use crate::data::{self, Data};

/// How to run (what is not part of the experiment itself).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Where datasets are found.
    pub data_root: DataRoot,
    /// Draw progress bars.
    pub progress: bool,
    /// Stop after this many epochs in this invocation (the run stays
    /// resumable); for time-boxed sessions and tests of resumption.
    pub max_epochs: Option<usize>,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// After a training epoch.
    Epoch {
        /// Run-wide epoch index.
        epoch: usize,
        /// Pruning round (0 = dense).
        round: usize,
        /// Sparsity of the prunable weights.
        sparsity: f64,
        /// Mean training loss.
        train_loss: f64,
        /// Training accuracy (classification).
        train_accuracy: Option<f64>,
        /// Learning rate at the epoch's last step.
        lr: f64,
        /// Evaluation loss.
        test_loss: f64,
        /// Evaluation metrics (percent).
        metrics: BTreeMap<String, f64>,
        /// Training seconds.
        seconds: f64,
    },
    /// At the end of a round (dense training is round 0).
    Round {
        /// Round.
        round: usize,
        /// Sparsity of the prunable weights.
        sparsity: f64,
        /// Prunable weights kept.
        kept: usize,
        /// Prunable weights in all.
        prunable: usize,
        /// Evaluation loss.
        test_loss: f64,
        /// Evaluation metrics (percent).
        metrics: BTreeMap<String, f64>,
        /// With `train.keep_best`: the round's best epoch by the primary
        /// metric, and its metrics (weights in `best.safetensors`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        best: Option<BestEpoch>,
        /// Unstructured pruning: the empty rows and columns of the pruned
        /// matrices (SPUR's measure).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines: Option<LineStats>,
    },
}

/// The best evaluation epoch of a round.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BestEpoch {
    /// Run-wide epoch index.
    pub epoch: usize,
    /// Its evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// Empty rows and columns over the pruned matrices, in percent.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LineStats {
    /// Rows (dim 0: output units, filters) with every weight pruned.
    pub empty_rows: f64,
    /// Columns (dim 1: inputs, input channels) with every weight pruned.
    pub empty_cols: f64,
    /// Weights a row/column shrink would remove.
    pub removable: f64,
}

impl LineStats {
    fn of(sp: &SparsityReport) -> Self {
        LineStats {
            empty_rows: 100.0 * sp.empty_rows_fraction(),
            empty_cols: 100.0 * sp.empty_cols_fraction(),
            removable: 100.0 * sp.removable_fraction(),
        }
    }
}

/// The best epoch of `round` so far by `metric`, from the history.
fn best_in_round(history: &[Record], round: usize, metric: &str) -> Option<BestEpoch> {
    let mut best: Option<BestEpoch> = None;
    for r in history {
        if let Record::Epoch { epoch, round: r_round, metrics, .. } = r {
            let v = metrics.get(metric).copied().unwrap_or(f64::NEG_INFINITY);
            let better = best.as_ref().is_none_or(|b| v > b.metrics.get(metric).copied().unwrap_or(f64::NEG_INFINITY));
            if *r_round == round && better {
                best = Some(BestEpoch { epoch: *epoch, metrics: metrics.clone() });
            }
        }
    }
    best
}

/// The result of a finished run (`summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Run name.
    pub name: String,
    /// Model kind.
    pub model: String,
    /// Dataset.
    pub data: String,
    /// Pruning method, e.g. `imp-magnitude-global-rewind-init`.
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// Primary metric name.
    pub metric: String,
    /// One row per round.
    pub rounds: Vec<Record>,
    /// Per-layer sparsity at the end.
    pub sparsity: SparsityReport,
    /// Trainable parameters of the model.
    pub parameters: usize,
    /// The structured pruning step, when the experiment has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<StructuredReport>,
    /// ADMM: ρ and the primal gap at every Z/U update (since the last start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admm_trace: Option<Vec<AdmmPoint>>,
}

/// What a structured pruning step did (`summary.json`, `report.md`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StructuredReport {
    /// Criterion.
    pub method: String,
    /// Units kept / units before, per group set.
    pub widths: BTreeMap<String, (usize, usize)>,
    /// Relative output residual per set (calibration data).
    pub residual: BTreeMap<String, f64>,
    /// Seconds spent choosing the units.
    pub select_seconds: f64,
    /// Parameters before and after the shrink.
    pub parameters_before: usize,
    /// Parameters of the shrunk model.
    pub parameters_after: usize,
    /// Metrics of the shrunk model before fine-tuning.
    pub metrics_before_finetune: BTreeMap<String, f64>,
    /// Calibration examples.
    pub calibration: usize,
    /// GReg: λ and the kept/pruned magnitude ratio at every increase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greg_trace: Option<Vec<espalier_prune::greg::TracePoint>>,
}

/// What the run loop carries between epochs (and across a resume).
struct State {
    next_epoch: usize,
    history: Vec<Record>,
    rewind: Option<BTreeMap<String, Tensor>>,
}

/// Short names for reports.
pub fn model_name(m: &ModelConfig) -> String {
    match m {
        ModelConfig::Mlp(c) if c.hidden == [300, 100] && c.input_dim == 784 => "lenet-300-100".into(),
        ModelConfig::Mlp(c) => format!("mlp-{}", c.hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-")),
        ModelConfig::Lenet5(_) => "lenet-5".into(),
        ModelConfig::Bert(c) => format!("bert-L{}-H{}-A{}", c.num_hidden_layers, c.hidden_size, c.num_attention_heads),
        ModelConfig::Resnet(c) => format!("resnet-{}", c.depth),
        ModelConfig::Vgg(c) => format!("vgg-{}{}", c.depth, if c.batch_norm { "-bn" } else { "" }),
    }
}

/// The name reports use for the experiment's model: the pretrained
/// checkpoint's directory or repo name, else [`model_name`].
pub fn experiment_model_name(exp: &Experiment, model: &ModelConfig) -> String {
    match &exp.pretrained {
        Some(p) => p.path.trim_end_matches('/').rsplit(['/', '\\']).next().unwrap_or(&p.path).to_string(),
        None => model_name(model),
    }
}

fn data_name(d: &DataConfig) -> String {
    match d {
        DataConfig::Mnist(_) => "mnist".into(),
        DataConfig::FashionMnist(_) => "fashion-mnist".into(),
        DataConfig::Glue(g) => format!("glue-{}", g.task.key()),
        DataConfig::Cifar10(_) => "cifar10".into(),
        DataConfig::Cifar100(c) if c.labels == espalier_data::cifar::Labels::Coarse => "cifar100-coarse".into(),
        DataConfig::Cifar100(_) => "cifar100".into(),
    }
}

/// A name for the pruning method of `exp`.
pub fn method_name(exp: &Experiment) -> String {
    if let Some(s) = &exp.structured {
        let m = serde_json::to_value(s.method).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        return format!("structured-{m}");
    }
    let Some(p) = &exp.prune else { return "dense".into() };
    let imp = serde_json::to_value(p.importance).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let scope = match p.granularity {
        Granularity::Unstructured => {
            serde_json::to_value(p.scope).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        }
        Granularity::NOfM { n, m } => format!("{n}:{m}"),
        Granularity::Block { rows, cols } => format!("block{rows}x{cols}"),
    };
    let spur = exp.train.regularizers.iter().any(|r| matches!(r, RegularizerConfig::GroupLasso { .. }));
    let name = match &p.schedule {
        ScheduleConfig::OneShot { .. } if p.admm.is_some() => format!("admm-{imp}-{scope}"),
        ScheduleConfig::OneShot { .. } => format!("one-shot-{imp}-{scope}"),
        ScheduleConfig::Imp { rewind, .. } => {
            let base = if spur { "spur" } else { "imp" };
            let rw = serde_json::to_value(rewind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            if rw == "none" {
                format!("{base}-{imp}-{scope}")
            } else {
                format!("{base}-{imp}-{scope}-rewind-{}", rw.replace(':', ""))
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

fn metrics_map(e: &EvalStats) -> BTreeMap<String, f64> {
    e.metrics.iter().map(|(m, v)| (m.name().to_string(), *v)).collect()
}

/// The directory of the pretrained model, resolved (local or Hub cache).
pub fn pretrained_dir(exp: &Experiment) -> anyhow::Result<Option<PathBuf>> {
    exp.pretrained
        .as_ref()
        .map(|p| {
            espalier_models::bert::hub::resolve_model_dir(&p.path)
                .with_context(|| format!("key `pretrained.path`: cannot find the model `{}`", p.path))
        })
        .transpose()
}

/// The task head a dataset needs.
fn bert_task(data: &DataConfig) -> anyhow::Result<BertTask> {
    match data {
        DataConfig::Glue(g) if g.task.is_regression() => Ok(BertTask::Regression),
        DataConfig::Glue(g) => Ok(BertTask::Classification { num_labels: g.task.num_labels() }),
        other => bail!("a pretrained BERT needs text data, not {}", data_name(other)),
    }
}

/// Builds the experiment's model: from scratch (`[model]`) or from a
/// pretrained checkpoint with a fresh task head for the data (`[pretrained]`).
pub fn build_model(exp: &Experiment, model_dir: Option<&Path>, device: &Device) -> anyhow::Result<Box<dyn Model>> {
    if let Some(m) = &exp.model {
        return Ok(m.init(exp.seed, device)?);
    }
    if let Some(from) = &exp.init_from {
        let path = if from.is_dir() { from.join("model.safetensors") } else { from.clone() };
        let (model, _) = load_model(&path, device).with_context(|| format!("key `init_from`: {}", from.display()))?;
        return Ok(model);
    }
    let (p, dir) = exp.pretrained.as_ref().zip(model_dir).context("no model: give [model] or [pretrained]")?;
    let task = bert_task(&exp.data)?;
    let mut cfg = Bert::read_config(dir, Some(task))?;
    if let Some(v) = p.hidden_dropout_prob {
        cfg.hidden_dropout_prob = v;
    }
    if let Some(v) = p.attention_probs_dropout_prob {
        cfg.attention_probs_dropout_prob = v;
    }
    let (tensors, context) = espalier_models::bert::read_weights(dir)?;
    Ok(Box::new(Bert::from_tensors(cfg, tensors, &context, exp.seed, device)?))
}

/// Prepares the run directory: a new one gets `config.toml`; an existing
/// one must hold the same experiment (else nothing is touched).
fn prepare_dir(exp: &Experiment, out: &Path) -> anyhow::Result<()> {
    let cfg_path = out.join("config.toml");
    if cfg_path.exists() {
        let old = config::load(&cfg_path, &[])
            .map_err(|e| ConfigError(format!("{e} (the run directory {} cannot be resumed)", out.display())))?;
        if &old != exp {
            return Err(ConfigError(format!(
                "run directory {} holds a different experiment (see its config.toml); choose another --out or remove it",
                out.display()
            ))
            .into());
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating run directory {}", out.display()))?;
    let text = toml::to_string_pretty(exp).context("serializing the resolved config")?;
    let header = format!(
        "# Resolved experiment config written by espalier {} (defaults filled in).\n",
        env!("CARGO_PKG_VERSION")
    );
    checkpoint::write_atomic(&cfg_path, format!("{header}{text}").as_bytes())?;
    Ok(())
}

/// The model's weights under their names and its masks under `__mask__.`.
fn weights_and_masks(model: &dyn Model) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let params = model.params();
    let mut tensors = params.snapshot()?;
    for (k, v) in params.masks() {
        tensors.insert(format!("{MASK_PREFIX}{k}"), v);
    }
    Ok(tensors)
}

fn save_checkpoint(path: &Path, model: &dyn Model, trainer: &Trainer, state: &State) -> anyhow::Result<()> {
    let mut tensors = weights_and_masks(model)?;
    for (k, v) in trainer.optimizer.state() {
        tensors.insert(format!("{OPTIM_PREFIX}{k}"), v);
    }
    if let Some(rw) = &state.rewind {
        for (k, v) in rw {
            tensors.insert(format!("{REWIND_PREFIX}{k}"), v.clone());
        }
    }
    for (k, v) in trainer.regularizer_state()? {
        tensors.insert(format!("{REGULARIZER_PREFIX}{k}"), v);
    }
    let straight: Vec<&str> = model.params().iter().filter(|p| p.straight_through()).map(|p| p.name()).collect();
    let header = serde_json::json!({
        "model": model.config(),
        "straight_through": straight,
        "next_epoch": state.next_epoch,
        "global_step": trainer.global_step,
        "history": state.history,
        "espalier_version": env!("CARGO_PKG_VERSION"),
    });
    checkpoint::save(path, &tensors, &header)?;
    Ok(())
}

fn restore(path: &Path, model: &dyn Model, trainer: &mut Trainer, device: &Device) -> anyhow::Result<State> {
    let ck = checkpoint::load(path, device)?;
    let header_model: ModelConfig = serde_json::from_value(ck.header["model"].clone())
        .with_context(|| format!("{}: header has no valid model config", path.display()))?;
    if header_model != model.config() {
        bail!("{}: checkpoint is of another model ({header_model:?})", path.display());
    }
    let ctx = path.display().to_string();
    model.params().load(&ck.params(), &ctx)?;
    // Straight-through masks (SR-STE) keep the pruned weights: set the mode
    // before the masks so that restoring them does not zero anything.
    if let Some(names) = ck.header.get("straight_through").and_then(|v| v.as_array()) {
        for n in names.iter().filter_map(|n| n.as_str()) {
            model.params().get(n)?.set_straight_through(true)?;
        }
    }
    model.params().set_masks(&ck.masks())?;
    trainer.optimizer.load_state(&ck.optim())?;
    trainer.load_regularizer_state(&ck.with_prefix(REGULARIZER_PREFIX))?;
    let rewind = ck.rewind();
    let history: Vec<Record> = serde_json::from_value(ck.header["history"].clone())
        .with_context(|| format!("{}: invalid history in header", path.display()))?;
    let next_epoch = ck.header["next_epoch"].as_u64().context("checkpoint header lacks next_epoch")? as usize;
    let global_step = ck.header["global_step"].as_u64().context("checkpoint header lacks global_step")?;
    trainer.global_step = global_step;
    Ok(State { next_epoch, history, rewind: (!rewind.is_empty()).then_some(rewind) })
}

fn write_metrics(out: &Path, history: &[Record]) -> anyhow::Result<()> {
    let mut s = String::new();
    for r in history {
        s += &serde_json::to_string(r)?;
        s.push('\n');
    }
    checkpoint::write_atomic(&out.join("metrics.jsonl"), s.as_bytes())?;
    Ok(())
}

/// A fresh trainer (optimizer state, regularizers, schedule) over `params`
/// with the experiment's `[train]` settings.
fn trainer_for(exp: &Experiment, params: &espalier_core::ParamStore, progress: bool) -> anyhow::Result<Trainer> {
    Ok(Trainer {
        optimizer: exp.train.optimizer.build(params)?,
        regularizers: exp.train.regularizers.iter().map(|r| r.build()).collect::<Result<_, _>>()?,
        opts: TrainerOptions {
            batch_size: exp.train.batch_size,
            clip_grad_norm: exp.train.clip_grad_norm,
            lr_schedule: exp.train.lr_schedule.clone(),
            seed: exp.seed,
            progress,
        },
        global_step: 0,
    })
}

/// Runs (or resumes) `exp` into `opts.out`. Returns `None` when stopped
/// early by `max_epochs`.
pub fn run(exp: &Experiment, opts: &RunOptions) -> anyhow::Result<Option<Summary>> {
    let device = config::device(&exp.device)?;
    // Input problems (a missing or truncated data file) are reported before
    // the run directory is created or touched.
    let model_dir = pretrained_dir(exp).map_err(|e| ConfigError(format!("{e:#}")))?;
    let data =
        data::load(&exp.data, &opts.data_root, model_dir.as_deref()).map_err(|e| ConfigError(format!("{e:#}")))?;
    let model = build_model(exp, model_dir.as_deref(), &device).map_err(|e| ConfigError(format!("{e:#}")))?;
    prepare_dir(exp, &opts.out)?;
    let selector = match &exp.prune {
        Some(p) => Selector::new(&p.params)?,
        None => Selector::default(),
    };
    let mut trainer = trainer_for(exp, model.params(), opts.progress)?;
    let plan = match &exp.prune {
        Some(p) => p.schedule.plan(exp.train.epochs),
        None => Plan::dense(exp.train.epochs),
    };
    let hooks = match &exp.prune {
        Some(p) => add_prune_regularizers(p, &plan, &selector, &mut trainer),
        None => PruneHooks::default(),
    };
    let ck_path = opts.out.join("checkpoint.safetensors");
    let mut state = if ck_path.exists() {
        let st = restore(&ck_path, model.as_ref(), &mut trainer, &device)?;
        tracing::info!(epoch = st.next_epoch, "resuming {}", opts.out.display());
        st
    } else {
        State { next_epoch: 0, history: Vec::new(), rewind: None }
    };
    let summary_path = opts.out.join("summary.json");
    let total = plan.total_epochs();
    if state.next_epoch >= total && summary_path.exists() {
        let s: Summary = serde_json::from_slice(&std::fs::read(&summary_path)?)
            .with_context(|| format!("reading {}", summary_path.display()))?;
        tracing::info!("{} is complete; nothing to do", opts.out.display());
        return Ok(Some(s));
    }
    tracing::info!(
        model = %experiment_model_name(exp, &model.config()),
        params = model.params().numel(),
        data = %data.source.display(),
        train = data.train.len(),
        test = data.test.len(),
        epochs = total,
        "run {}",
        opts.out.display()
    );
    let prune = exp.prune.as_ref();
    let act =
        |actions: Vec<Action>, model: &dyn Model, trainer: &mut Trainer, state: &mut State| -> anyhow::Result<()> {
            for a in actions {
                match a {
                    Action::SaveRewindPoint => state.rewind = Some(model.params().snapshot()?),
                    Action::Prune { sparsity } => {
                        let p = prune.expect("prune actions come from a prune config");
                        let masks = hooks.masks(model.params(), &selector, p, exp.seed, sparsity)?;
                        if p.sr_ste.is_some() {
                            // SR-STE retrains dense weights through the mask.
                            for q in model.params().iter().filter(|q| selector.matches(q)) {
                                q.set_straight_through(true)?;
                            }
                        }
                        model.params().set_masks(&masks)?;
                        tracing::info!(sparsity, "pruned");
                    }
                    Action::Rewind => {
                        let snap = state.rewind.as_ref().context("rewind requested before a rewind point was saved")?;
                        model.params().load(snap, "rewind snapshot")?;
                        model.params().enforce_masks()?;
                    }
                    Action::ResetOptimizer => trainer.optimizer.reset(),
                }
            }
            Ok(())
        };
    let started = Instant::now();
    let mut done_here = 0;
    while state.next_epoch < total {
        if opts.max_epochs.is_some_and(|m| done_here >= m) {
            tracing::info!(epoch = state.next_epoch, "stopping early (--max-epochs); run again to resume");
            return Ok(None);
        }
        let epoch = state.next_epoch;
        act(plan.actions_before(epoch), model.as_ref(), &mut trainer, &mut state)?;
        let (pi, e_in) = plan.locate(epoch).expect("epoch inside the plan");
        let phase = &plan.phases[pi];
        let pos = PhasePos { epoch_in_phase: e_in, epochs_in_phase: phase.epochs };
        let stats = match plan.gradual {
            Some(cubic) => {
                let p = prune.expect("gradual plans come from a prune config");
                let mut hook = |m: &dyn Model, _: &espalier_train::StepInfo, step: usize, spe: usize| {
                    if let Some(s) = cubic.target(epoch, step, spe) {
                        let masks = hooks.masks(m.params(), &selector, p, exp.seed, s)?;
                        m.params().set_masks(&masks)?;
                    }
                    Ok(())
                };
                trainer.train_epoch(model.as_ref(), data.train.as_ref(), epoch, pos, &device, Some(&mut hook))?
            }
            None => trainer.train_epoch(model.as_ref(), data.train.as_ref(), epoch, pos, &device, None)?,
        };
        let eval = evaluate(model.as_ref(), data.test.as_ref(), exp.train.eval_batch_size, &device, &data.metrics)?;
        let sp = SparsityReport::of(model.params(), &selector)?;
        let primary = data.metrics[0];
        tracing::info!(
            epoch,
            round = phase.round,
            sparsity = format!("{:.4}", sp.sparsity()),
            train_loss = format!("{:.4}", stats.loss),
            test_loss = format!("{:.4}", eval.loss),
            "{} {:.2} ({:.1}s)",
            primary.name(),
            eval.get(primary).unwrap_or(f64::NAN),
            stats.seconds
        );
        state.history.push(epoch_record(epoch, phase.round, sp.sparsity(), &stats, &eval));
        let primary_name = primary.name();
        if exp.train.keep_best {
            let before = best_in_round(&state.history[..state.history.len() - 1], phase.round, primary_name);
            let now = eval.get(primary).unwrap_or(f64::NEG_INFINITY);
            if before.is_none_or(|b| now > b.metrics.get(primary_name).copied().unwrap_or(f64::NEG_INFINITY)) {
                save_model(
                    &opts.out.join("best.safetensors"),
                    model.as_ref(),
                    serde_json::json!({ "epoch": epoch, "round": phase.round, "metrics": metrics_map(&eval) }),
                )?;
            }
        }
        if e_in + 1 == phase.epochs {
            let mut rec = round_record(phase.round, &sp, &eval, prune.is_some());
            if exp.train.keep_best {
                if let Record::Round { best, .. } = &mut rec {
                    *best = best_in_round(&state.history, phase.round, primary_name);
                }
            }
            state.history.push(rec);
        }
        state.next_epoch += 1;
        done_here += 1;
        save_checkpoint(&ck_path, model.as_ref(), &trainer, &state)?;
        write_metrics(&opts.out, &state.history)?;
    }
    // SR-STE ends with hard masks: the saved model's pruned weights are zero.
    for p in model.params().iter().filter(|p| p.straight_through()) {
        p.set_straight_through(false)?;
    }
    // Phases without epochs at the end (one-shot pruning with no fine-tuning).
    let tail = plan.actions_before(total);
    let final_round = plan.phases.last().map(|p| p.round).unwrap_or(0);
    let has_final_round =
        state.history.iter().any(|r| matches!(r, Record::Round { round, .. } if *round == final_round));
    if !has_final_round {
        act(tail, model.as_ref(), &mut trainer, &mut state)?;
        let eval = evaluate(model.as_ref(), data.test.as_ref(), exp.train.eval_batch_size, &device, &data.metrics)?;
        let sp = SparsityReport::of(model.params(), &selector)?;
        state.history.push(round_record(final_round, &sp, &eval, prune.is_some()));
        save_checkpoint(&ck_path, model.as_ref(), &trainer, &state)?;
        write_metrics(&opts.out, &state.history)?;
    }
    let (model, structured) = match &exp.structured {
        Some(sc) => {
            let (small, report) = structured_step(exp, sc, opts, model, &data, &device, &mut state)?;
            (small, Some(report))
        }
        None => (model, None),
    };
    let admm = hooks.admm_trace.map(|t| t.lock().expect("admm trace lock").clone());
    let summary = finish(exp, opts, model.as_ref(), &data, &selector, &state, MethodReports { structured, admm })?;
    tracing::info!("finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(Some(summary))
}

/// What the `[prune]` section's own regularizers share with the run loop.
#[derive(Default)]
struct PruneHooks {
    /// Movement scores, when the importance is movement.
    movement: Option<Arc<Mutex<MovementScores>>>,
    /// ADMM's Z/U updates.
    admm_trace: Option<Arc<Mutex<Vec<AdmmPoint>>>>,
}

impl PruneHooks {
    /// Masks at `sparsity` by the prune config's rule (with the movement
    /// scores, when they are tracked).
    fn masks(
        &self,
        params: &espalier_core::ParamStore,
        selector: &Selector,
        p: &PruneConfig,
        seed: u64,
        sparsity: f64,
    ) -> espalier_core::Result<BTreeMap<String, Tensor>> {
        let scores = self.movement.as_ref().map(|m| m.lock().expect("movement scores lock").clone());
        masks_for(params, selector, &p.rule(seed), sparsity, scores.as_ref())
    }
}

/// Adds the regularizers a `[prune]` section implies: the movement tracker
/// (first, so that it sees the task gradient), ADMM during the dense phase,
/// SR-STE during retraining.
fn add_prune_regularizers(p: &PruneConfig, plan: &Plan, selector: &Selector, trainer: &mut Trainer) -> PruneHooks {
    let mut hooks = PruneHooks::default();
    if p.importance == espalier_prune::Importance::Movement {
        let (tracker, scores) = MovementTracker::new(selector.clone());
        trainer.regularizers.insert(0, Box::new(tracker));
        hooks.movement = Some(scores);
    }
    let sparsity = match p.schedule {
        ScheduleConfig::OneShot { sparsity, .. } => sparsity,
        _ => 0.0,
    };
    let projection = Projection { granularity: p.granularity, scope: p.scope, sparsity };
    if let Some(a) = &p.admm {
        let dense_epochs = plan.phases.first().filter(|ph| ph.round == 0).map_or(0, |ph| ph.epochs);
        let (admm, trace) = Admm::new(a.clone(), selector.clone(), projection, dense_epochs);
        trainer.regularizers.push(Box::new(admm));
        hooks.admm_trace = Some(trace);
    }
    if let Some(sr) = &p.sr_ste {
        trainer.regularizers.push(Box::new(SrSte::new(sr, selector.clone(), projection)));
    }
    hooks
}

/// A seeded sample of `n` training examples in batches of `batch_size`.
fn calibration_batches(
    data: &Data,
    n: usize,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> anyhow::Result<Vec<Batch>> {
    let len = data.train.len();
    let mut idx: Vec<usize> = (0..len).collect();
    let mut rng = espalier_core::Rng::derive(seed, "calibration", &[]);
    for i in (1..len).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    idx.truncate(n.min(len));
    idx.sort_unstable();
    Ok(idx.chunks(batch_size.max(1)).map(|c| data.train.batch(c, device)).collect::<Result<_, _>>()?)
}

/// Re-estimates the BatchNorm running statistics of `model` from `n`
/// training examples (the calibration sample, in training-size batches):
/// forward passes in training mode, no gradient step.
fn recalibrate_bn(model: &dyn Model, data: &Data, n: usize, exp: &Experiment, device: &Device) -> anyhow::Result<()> {
    let start = Instant::now();
    let batches = calibration_batches(data, n, exp.train.batch_size, exp.seed, device)?;
    for (i, b) in batches.iter().enumerate() {
        let mut rng = espalier_core::Rng::derive(exp.seed, "recalibrate-bn", &[i as u64]);
        model.forward_t(b, &mut Mode::Train(&mut rng))?;
    }
    tracing::info!(
        batches = batches.len(),
        seconds = format!("{:.1}", start.elapsed().as_secs_f64()),
        "BatchNorm statistics re-estimated"
    );
    Ok(())
}

/// GReg's regularization phase (round 1): the dense model trains with the
/// growing penalty until the penalty has done its work (or
/// `structured.greg.max_epochs`); returns the chosen units, the λ trace and
/// the epochs spent.
fn greg_phase(
    exp: &Experiment,
    sc: &StructuredConfig,
    opts: &RunOptions,
    model: &dyn Model,
    data: &Data,
    device: &Device,
    state: &mut State,
) -> anyhow::Result<(espalier_prune::Selection, Option<Vec<espalier_prune::greg::TracePoint>>, usize)> {
    use espalier_prune::greg::{choose, GReg, Phase};
    let start = Instant::now();
    let sets = espalier_prune::structured::selected_sets(model, sc)?;
    let kept: BTreeMap<String, usize> = sets.iter().map(|s| (s.name.clone(), sc.kept(s.size))).collect();
    let two = sc.method == espalier_prune::GroupCriterion::Greg2;
    let (greg, shared) = GReg::new(sc.greg.clone(), sets.clone(), kept.clone(), model.params(), two)?;
    let mut trainer = trainer_for(exp, model.params(), opts.progress)?;
    trainer.regularizers.push(Box::new(greg));
    let max = sc.greg.max_epochs;
    let mut epochs = 0;
    for e in 0..max {
        let epoch = exp.train.epochs + e;
        let pos = PhasePos { epoch_in_phase: e, epochs_in_phase: max };
        let stats = trainer.train_epoch(model, data.train.as_ref(), epoch, pos, device, None)?;
        let eval = evaluate(model, data.test.as_ref(), exp.train.eval_batch_size, device, &data.metrics)?;
        epochs += 1;
        let st = shared.lock().map_err(|_| anyhow::anyhow!("GReg state poisoned"))?.clone();
        let ratio = st.trace.last().map_or(0.0, |t| t.ratio);
        tracing::info!(
            epoch,
            phase = ?st.phase,
            lambda = st.lambda,
            ratio = format!("{ratio:.1}"),
            "GReg: {} {:.2}",
            data.metrics[0].name(),
            eval.get(data.metrics[0]).unwrap_or(f64::NAN)
        );
        state.history.push(epoch_record(epoch, 1, 0.0, &stats, &eval));
        write_metrics(&opts.out, &state.history)?;
        if st.phase == Phase::Done {
            break;
        }
    }
    let st = shared.lock().map_err(|_| anyhow::anyhow!("GReg state poisoned"))?.clone();
    if st.phase != Phase::Done {
        tracing::warn!(phase = ?st.phase, lambda = st.lambda, "GReg: structured.greg.max_epochs reached before the penalty finished");
    }
    let keep = match st.keep {
        Some(k) => k,
        None => choose(model.params(), &sets, &kept)?,
    };
    let sel = espalier_prune::Selection { keep, residual: BTreeMap::new(), seconds: start.elapsed().as_secs_f64() };
    Ok((sel, Some(st.trace), epochs))
}

/// Structured pruning after the dense epochs: choose the units, shrink the
/// model, evaluate, fine-tune (round 1). Not checkpointed: a run killed in
/// this step redoes it from the dense checkpoint.
fn structured_step(
    exp: &Experiment,
    sc: &StructuredConfig,
    opts: &RunOptions,
    dense: Box<dyn Model>,
    data: &Data,
    device: &Device,
    state: &mut State,
) -> anyhow::Result<(Box<dyn Model>, StructuredReport)> {
    // Every method gets calibration data: the output residual is reported
    // for all of them, so criteria can be compared on it.
    let calib = calibration_batches(data, sc.calibration.max(1), exp.train.eval_batch_size, exp.seed, device)?;
    let (sel, greg_trace, reg_epochs) = if sc.method.is_greg() {
        greg_phase(exp, sc, opts, dense.as_ref(), data, device, state)?
    } else {
        (espalier_prune::structured::select(dense.as_ref(), sc, &calib, exp.seed)?, None, 0)
    };
    let small = espalier_models::shrink(dense.as_ref(), &sel.keep)?;
    let widths = dense
        .group_sets()
        .iter()
        .filter_map(|s| sel.keep.get(&s.name).map(|k| (s.name.clone(), (k.len(), s.size))))
        .collect();
    if sc.recalibrate_bn > 0 && small.params().iter().any(|p| p.kind() == espalier_core::ParamKind::Buffer) {
        recalibrate_bn(small.as_ref(), data, sc.recalibrate_bn, exp, device)?;
    }
    let before = evaluate(small.as_ref(), data.test.as_ref(), exp.train.eval_batch_size, device, &data.metrics)?;
    let primary = data.metrics[0];
    tracing::info!(
        seconds = format!("{:.2}", sel.seconds),
        params = small.params().numel(),
        "shrunk; {} {:.2} before fine-tuning",
        primary.name(),
        before.get(primary).unwrap_or(f64::NAN)
    );
    let (p0, p1) = (dense.params().numel(), small.params().numel());
    let sparsity = 1.0 - p1 as f64 / p0 as f64;
    let mut eval = before.clone();
    if sc.finetune_epochs > 0 {
        let mut trainer = trainer_for(exp, small.params(), opts.progress)?;
        for e in 0..sc.finetune_epochs {
            let epoch = exp.train.epochs + reg_epochs + e;
            let pos = PhasePos { epoch_in_phase: e, epochs_in_phase: sc.finetune_epochs };
            let stats = trainer.train_epoch(small.as_ref(), data.train.as_ref(), epoch, pos, device, None)?;
            eval = evaluate(small.as_ref(), data.test.as_ref(), exp.train.eval_batch_size, device, &data.metrics)?;
            tracing::info!(epoch, "fine-tune: {} {:.2}", primary.name(), eval.get(primary).unwrap_or(f64::NAN));
            state.history.push(epoch_record(epoch, 1, sparsity, &stats, &eval));
            write_metrics(&opts.out, &state.history)?;
        }
    }
    state.history.push(Record::Round {
        round: 1,
        sparsity,
        kept: p1,
        prunable: p0,
        test_loss: eval.loss,
        metrics: metrics_map(&eval),
        best: None,
        lines: None,
    });
    write_metrics(&opts.out, &state.history)?;
    let method = method_name(exp);
    let report = StructuredReport {
        method,
        widths,
        residual: sel.residual,
        select_seconds: sel.seconds,
        parameters_before: p0,
        parameters_after: p1,
        metrics_before_finetune: metrics_map(&before),
        calibration: calib.iter().map(|b| b.labels.dims()[0]).sum(),
        greg_trace,
    };
    Ok((small, report))
}

fn epoch_record(epoch: usize, round: usize, sparsity: f64, stats: &EpochStats, eval: &EvalStats) -> Record {
    Record::Epoch {
        epoch,
        round,
        sparsity,
        train_loss: stats.loss,
        train_accuracy: stats.accuracy,
        lr: stats.lr,
        test_loss: eval.loss,
        metrics: metrics_map(eval),
        seconds: stats.seconds,
    }
}

fn round_record(round: usize, sp: &SparsityReport, eval: &EvalStats, lines: bool) -> Record {
    Record::Round {
        round,
        sparsity: sp.sparsity(),
        kept: sp.kept(),
        prunable: sp.numel(),
        test_loss: eval.loss,
        metrics: metrics_map(eval),
        best: None,
        lines: lines.then(|| LineStats::of(sp)),
    }
}

/// Saves weights and masks with the model config (and `extra`) in the header.
fn save_model(path: &Path, model: &dyn Model, extra: serde_json::Value) -> anyhow::Result<()> {
    let tensors = weights_and_masks(model)?;
    let mut header = serde_json::json!({ "model": model.config() });
    if let (Some(h), serde_json::Value::Object(e)) = (header.as_object_mut(), extra) {
        h.extend(e);
    }
    checkpoint::save(path, &tensors, &header)?;
    Ok(())
}

/// What a method reports beyond the rounds.
struct MethodReports {
    structured: Option<StructuredReport>,
    admm: Option<Vec<AdmmPoint>>,
}

fn finish(
    exp: &Experiment,
    opts: &RunOptions,
    model: &dyn Model,
    data: &Data,
    selector: &Selector,
    state: &State,
    reports: MethodReports,
) -> anyhow::Result<Summary> {
    let name = opts.out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let summary = Summary {
        name,
        model: experiment_model_name(exp, &model.config()),
        data: data_name(&exp.data),
        method: method_name(exp),
        seed: exp.seed,
        metric: data.metrics[0].name().to_string(),
        rounds: state.history.iter().filter(|r| matches!(r, Record::Round { .. })).cloned().collect(),
        sparsity: SparsityReport::of(model.params(), selector)?,
        parameters: model.params().numel(),
        structured: reports.structured,
        admm_trace: reports.admm,
    };
    // The final model: weights and masks, rebuildable from the header alone.
    let mut extra = serde_json::json!({ "sparsity": summary.sparsity.sparsity() });
    if let Some(st) = &summary.structured {
        extra["structured"] = serde_json::to_value(st)?;
    }
    save_model(&opts.out.join("model.safetensors"), model, extra)?;
    checkpoint::write_atomic(&opts.out.join("report.md"), report_markdown(&summary).as_bytes())?;
    checkpoint::write_atomic(&opts.out.join("results.csv"), results_csv(&summary).as_bytes())?;
    checkpoint::write_atomic(&opts.out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

/// The table printed at the end of a run: round, sparsity, metric (and the
/// best epoch's metric with `train.keep_best`).
pub fn rounds_table(s: &Summary) -> String {
    let has_best = s.rounds.iter().any(|r| matches!(r, Record::Round { best: Some(_), .. }));
    let mut out = format!("{:>5}  {:>9}  {:>9}  {:>10}", "round", "sparsity", "weights", s.metric);
    if has_best {
        out += &format!("  {:>10}", format!("best {}", s.metric));
    }
    out.push('\n');
    for (round, sparsity, last, best) in round_rows(s) {
        out += &format!("{round:>5}  {:>8.2}%  {:>8.2}%  {last:>10.2}", 100.0 * sparsity, 100.0 * (1.0 - sparsity));
        if has_best {
            out += &format!("  {:>10.2}", best.unwrap_or(f64::NAN));
        }
        out.push('\n');
    }
    out
}

/// (round, sparsity, final metric, best-epoch metric) per round.
fn round_rows(s: &Summary) -> Vec<(usize, f64, f64, Option<f64>)> {
    s.rounds
        .iter()
        .filter_map(|r| match r {
            Record::Round { round, sparsity, metrics, best, .. } => Some((
                *round,
                *sparsity,
                metrics.get(&s.metric).copied().unwrap_or(f64::NAN),
                best.as_ref().and_then(|b| b.metrics.get(&s.metric).copied()),
            )),
            _ => None,
        })
        .collect()
}

/// The markdown report of a run.
pub fn report_markdown(s: &Summary) -> String {
    let has_best = s.rounds.iter().any(|r| matches!(r, Record::Round { best: Some(_), .. }));
    let mut md = format!(
        "# {}\n\n{} on {}, method `{}`, seed {}, {} parameters.\n\n| round | sparsity | weights left | {} (last epoch) |{}\n|---:|---:|---:|---:|{}\n",
        s.name,
        s.model,
        s.data,
        s.method,
        s.seed,
        s.parameters,
        s.metric,
        if has_best { format!(" {} (best epoch) |", s.metric) } else { String::new() },
        if has_best { "---:|" } else { "" },
    );
    for (round, sparsity, last, best) in round_rows(s) {
        md += &format!("| {round} | {:.2}% | {:.2}% | {last:.2} |", 100.0 * sparsity, 100.0 * (1.0 - sparsity));
        if has_best {
            md += &format!(" {:.2} |", best.unwrap_or(f64::NAN));
        }
        md.push('\n');
    }
    md += &lines_markdown(s);
    if let Some(t) = s.admm_trace.as_ref().filter(|t| !t.is_empty()) {
        md += "\nADMM Z/U updates (relative primal gap ‖W − Z‖/‖W‖):\n\n| step | ρ | primal gap |\n|---:|---:|---:|\n";
        for pt in t {
            md += &format!("| {} | {:.3e} | {:.4} |\n", pt.step, pt.rho, pt.primal_gap);
        }
    }
    if let Some(st) = &s.structured {
        md += &structured_markdown(st, &s.metric);
    }
    md += "\nPer-layer sparsity at the end:\n\n```\n";
    md += &s.sparsity.table();
    md += "```\n";
    md
}

/// Empty rows and columns per round (pruned runs).
fn lines_markdown(s: &Summary) -> String {
    let rows: Vec<_> = s
        .rounds
        .iter()
        .filter_map(|r| match r {
            Record::Round { round, sparsity, lines: Some(l), .. } => Some((round, sparsity, l)),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\nEmpty rows and columns of the pruned matrices (what a row/column shrink would remove):\n\n\
         | round | sparsity | empty rows | empty columns | removable weights |\n|---:|---:|---:|---:|---:|\n",
    );
    for (round, sparsity, l) in rows {
        md += &format!(
            "| {round} | {:.2}% | {:.2}% | {:.2}% | {:.2}% |\n",
            100.0 * sparsity,
            l.empty_rows,
            l.empty_cols,
            l.removable
        );
    }
    md
}

fn structured_markdown(st: &StructuredReport, metric: &str) -> String {
    let mut md = format!(
        "\nStructured pruning (`{}`, {} calibration examples, units chosen in {:.2} s): {} → {} parameters ({:.2}× fewer); {metric} before fine-tuning {:.2}.\n\n| group set | units kept | of | output residual ‖V‖/‖Y‖ |\n|---|---:|---:|---:|\n",
        st.method,
        st.calibration,
        st.select_seconds,
        st.parameters_before,
        st.parameters_after,
        st.parameters_before as f64 / st.parameters_after.max(1) as f64,
        st.metrics_before_finetune.get(metric).copied().unwrap_or(f64::NAN),
    );
    for (name, (kept, of)) in &st.widths {
        let r = st.residual.get(name).map_or("–".to_string(), |r| format!("{r:.4}"));
        md += &format!("| {name} | {kept} | {of} | {r} |\n");
    }
    md
}

/// One CSV row per round and metric: model, data, method, sparsity,
/// metric, value, seed (the metric of the last epoch; with
/// `train.keep_best` also `<metric>@best-epoch`; for pruned runs the
/// percentages `empty_rows`, `empty_cols` and `removable`).
pub fn results_csv(s: &Summary) -> String {
    let mut csv = String::from("model,data,method,sparsity,metric,value,seed\n");
    for r in &s.rounds {
        if let Record::Round { sparsity, metrics, best, lines, .. } = r {
            let mut row = |m: &str, v: f64| {
                csv += &format!("{},{},{},{:.6},{},{:.4},{}\n", s.model, s.data, s.method, sparsity, m, v, s.seed);
            };
            for (m, v) in metrics {
                row(m, *v);
            }
            if let Some(b) = best {
                for (m, v) in &b.metrics {
                    row(&format!("{m}@best-epoch"), *v);
                }
            }
            if let Some(l) = lines {
                row("empty_rows", l.empty_rows);
                row("empty_cols", l.empty_cols);
                row("removable", l.removable);
            }
        }
    }
    csv
}

/// Evaluates the model saved in a run directory on its test set.
pub fn eval_run(dir: &Path, data_root: &DataRoot) -> anyhow::Result<(EvalStats, SparsityReport)> {
    let exp = config::load(&dir.join("config.toml"), &[])?;
    let device = config::device(&exp.device)?;
    let path = ["model.safetensors", "checkpoint.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .with_context(|| format!("{}: no model.safetensors or checkpoint.safetensors", dir.display()))?;
    let (model, _) = load_model(&path, &device)?;
    let model_dir = pretrained_dir(&exp)?;
    let data = data::load(&exp.data, data_root, model_dir.as_deref())?;
    let selector = match &exp.prune {
        Some(p) => Selector::new(&p.params)?,
        None => Selector::default(),
    };
    let eval = evaluate(model.as_ref(), data.test.as_ref(), exp.train.eval_batch_size, &device, &data.metrics)?;
    Ok((eval, SparsityReport::of(model.params(), &selector)?))
}

/// Rebuilds a model from a checkpoint file alone (config from its header).
pub fn load_model(path: &Path, device: &Device) -> anyhow::Result<(Box<dyn Model>, serde_json::Value)> {
    let ck = checkpoint::load(path, device)?;
    let cfg: ModelConfig = serde_json::from_value(ck.header["model"].clone())
        .with_context(|| format!("{}: header has no valid model config", path.display()))?;
    let pb = espalier_core::ParamBuilder::from_tensors(
        ck.params(),
        path.display().to_string(),
        candle_core::DType::F32,
        device,
    );
    let model = cfg.build(&pb)?;
    let (_, unused) = pb.finish();
    if !unused.is_empty() {
        bail!("{}: tensors not used by the {:?} model: {}", path.display(), model_name(&cfg), unused.join(", "));
    }
    model.params().set_masks(&ck.masks())?;
    Ok((model, ck.header))
}
