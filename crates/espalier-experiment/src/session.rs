//! The session: runs an experiment's every phase through one epoch loop.
//!
//! The method states the plan ([`espalier_prune::Plan`]): phases of training
//! (fixed length, or until the method says it is done), each opened by
//! actions. The session carries the actions out (rewind, optimizer resets
//! and rebuilds itself; masks and unit selection by asking the method; the
//! physical shrink, BatchNorm re-estimation and evaluation of the shrunk
//! model itself), trains every epoch with the method hooked into the step,
//! evaluates, records, keeps the best epoch of each phase with
//! `train.keep_best`, and checkpoints after every epoch and every phase, so
//! that a run killed anywhere resumes and ends with the numbers of an
//! uninterrupted one. It never names a method.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use espalier_core::{ParamKind, ParamStore, Rng, SparsityReport};
use espalier_data::{Batch, Data, DataRoot};
use espalier_models::{load_model, Mode, Model};
use espalier_prune::{Action, Context as MethodContext, Length, Method, Phase, PhaseLr, Plan};
use espalier_train::trainer::PhasePos;
use espalier_train::{evaluate_groups, EvalStats, LrSchedule, Optimizer, Regularizer, Trainer, TrainerOptions};

use crate::config::{self, ConfigError, Experiment};
use crate::error::{Context, Error, Result};
use crate::model::{build_model, experiment_model_name, pretrained_dir};
use crate::record::{best_since, epoch_record, metrics_map, LineStats, Record};
use crate::report::{report_markdown, results_csv, StructuredReport, Summary};
use crate::rundir::{save_model, Progress, RunDir, Shrunk};

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

/// One experiment being run.
pub struct Session<'a> {
    exp: &'a Experiment,
    opts: &'a RunOptions,
    dir: RunDir,
    /// Held while the session runs ([`RunDir::lock`]).
    _lock: std::fs::File,
    device: Device,
    data: Data,
    model: Box<dyn Model>,
    method: Box<dyn Method>,
    plan: Plan,
    trainer: Trainer,
    progress: Progress,
}

/// Input problems are config errors: reported before anything is written.
fn input<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| if e.is_config() { e } else { ConfigError(e.to_string()).into() })
}

/// A fresh trainer (optimizer state, regularizers) over `params` with the
/// experiment's `[train]` settings.
fn new_trainer(exp: &Experiment, params: &ParamStore, progress: bool, global_step: u64) -> Result<Trainer> {
    let regularizers = exp.train.regularizers.iter().map(|r| r.build()).collect::<std::result::Result<_, _>>()?;
    let opts = TrainerOptions {
        batch_size: exp.train.batch_size,
        clip_grad_norm: exp.train.clip_grad_norm,
        lr_schedule: exp.train.lr_schedule.clone(),
        lr_restart: None,
        seed: exp.seed,
        progress,
        skip_nonfinite_steps: exp.train.skip_nonfinite_steps,
    };
    Ok(Trainer { global_step, ..Trainer::new(new_optimizer(exp, params)?, regularizers, opts) })
}

fn new_optimizer(exp: &Experiment, params: &ParamStore) -> Result<Box<dyn Optimizer>> {
    Ok(exp.train.optimizer.build(params)?)
}

/// A seeded sample of `n` training examples in batches of `batch_size` (the
/// same sample for the same seed and `n`).
fn calibration_batches(
    data: &Data,
    n: usize,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> espalier_core::Result<Vec<Batch>> {
    let len = data.train.len();
    let mut idx: Vec<usize> = (0..len).collect();
    let mut rng = Rng::derive(seed, "calibration", &[]);
    for i in (1..len).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    idx.truncate(n.min(len));
    idx.sort_unstable();
    idx.chunks(batch_size.max(1)).map(|c| data.train.batch(c, device)).collect()
}

/// The model must take the data: both splits hold examples, and one
/// example of each goes through the model (a shape mismatch is a config
/// error, found before anything is written, naming the data and the error).
fn check_fit(model: &dyn Model, data: &Data, device: &Device) -> Result<()> {
    for (name, split) in [("training", &data.train), ("evaluation", &data.test)] {
        if split.is_empty() {
            return Err(ConfigError(format!("the {name} split of {} holds no example", data.source.display())).into());
        }
        let batch = split.batch(&[0], device)?;
        model.forward_t(&batch, &mut Mode::Eval).map_err(|e| {
            ConfigError(format!("the model does not fit the {name} data of {}: {e}", data.source.display()))
        })?;
    }
    Ok(())
}

/// Calls `f` with the method and a context over `model` whose calibration
/// sample is drawn from `data` (evaluation-size batches, the run's seed).
fn with_context<R>(
    exp: &Experiment,
    data: &Data,
    device: &Device,
    model: &dyn Model,
    method: &mut dyn Method,
    f: impl FnOnce(&mut dyn Method, &mut MethodContext) -> espalier_core::Result<R>,
) -> Result<R> {
    let mut calib = |n| calibration_batches(data, n, exp.train.eval_batch_size, exp.seed, device);
    let mut cx = MethodContext::new(model, exp.seed, &mut calib);
    Ok(f(method, &mut cx)?)
}

/// (sparsity, kept, prunable, line statistics) of a model at one point.
type Measured = (f64, usize, usize, Option<LineStats>);

impl<'a> Session<'a> {
    /// Validates the inputs (data, model), prepares the run directory, and
    /// restores the checkpoint when there is one.
    pub fn new(exp: &'a Experiment, opts: &'a RunOptions) -> Result<Self> {
        let device = config::device(&exp.device)?;
        // Input problems (a missing or truncated data file) are reported
        // before the run directory is created or touched.
        let model_dir = input(pretrained_dir(exp))?;
        let data = input(exp.data.load(&opts.data_root, model_dir.as_deref()).map_err(Error::from))?;
        let model = input(build_model(exp, model_dir.as_deref(), &device))?;
        input(check_fit(model.as_ref(), &data, &device))?;
        let mut method = exp.method()?;
        // The plan may follow the architecture (one shrink per block): a
        // problem there is a config error, reported before anything is written.
        let plan = input(method.plan_for(exp.train.epochs, model.as_ref()).map_err(Error::from))?;
        for w in exp.warnings() {
            tracing::warn!("{w}");
        }
        let dir = RunDir::new(&opts.out);
        dir.prepare(exp)?;
        let lock = dir.lock()?;
        dir.retry(exp)?;
        let mut trainer = new_trainer(exp, model.params(), opts.progress, 0)?;
        let (model, progress) = if dir.checkpoint().exists() {
            let new_opt = |p: &ParamStore| new_optimizer(exp, p);
            let (model, progress, state) = dir.restore(model, &mut trainer, &new_opt, method.as_mut(), &device)?;
            if progress.phase_started && progress.phase < plan.phases.len() {
                with_context(exp, &data, &device, model.as_ref(), method.as_mut(), |m, cx| {
                    m.start_phase(progress.phase, cx)
                })?;
            }
            method.load(&state)?;
            tracing::info!(epoch = progress.next_epoch, "resuming {}", opts.out.display());
            (model, progress)
        } else {
            (model, Progress::default())
        };
        Ok(Session { exp, opts, dir, _lock: lock, device, data, model, method, plan, trainer, progress })
    }

    /// Runs (or resumes) the experiment. Returns `None` when stopped early
    /// by `max_epochs`. A run that stops on an error (other than an
    /// interruption, which is resumable as it is) is marked failed in
    /// `summary.json` ([`crate::Failure`]); its checkpoint is kept.
    pub fn run(self) -> Result<Option<Summary>> {
        let dir = self.dir.clone();
        // The failure is marked under the directory's lock (a duplicate of
        // the session's handle keeps it past the session).
        let _held = self._lock.try_clone();
        let result = self.run_phases();
        if let Err(e) = &result {
            if !matches!(e.core(), Some(espalier_core::Error::Interrupted { .. })) {
                dir.mark_failed(e);
            }
        }
        result
    }

    fn run_phases(mut self) -> Result<Option<Summary>> {
        let summary_path = self.dir.file("summary.json");
        if self.progress.phase >= self.plan.phases.len() && summary_path.exists() {
            let bytes = std::fs::read(&summary_path).map_err(|e| espalier_core::Error::io(&summary_path, e))?;
            tracing::info!("{} is complete; nothing to do", self.opts.out.display());
            return Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", summary_path.display()))?,
            ));
        }
        tracing::info!(
            model = %experiment_model_name(self.exp, &self.model.config()),
            params = self.model.params().numel(),
            method = %self.method.describe(),
            data = %self.data.source.display(),
            train = self.data.train.len(),
            test = self.data.test.len(),
            "run {}",
            self.opts.out.display()
        );
        let started = Instant::now();
        let mut done_here = 0;
        while self.progress.phase < self.plan.phases.len() {
            let phase = self.plan.phases[self.progress.phase].clone();
            if !self.progress.phase_started {
                self.start_phase(&phase)?;
            }
            if self.phase_over(&phase) {
                self.end_phase(&phase, None)?;
                continue;
            }
            if espalier_core::interrupt::requested() {
                let (epoch, step) = (self.progress.next_epoch, 0);
                return Err(espalier_core::Error::Interrupted { epoch, step }.into());
            }
            if self.opts.max_epochs.is_some_and(|m| done_here >= m) {
                tracing::info!(epoch = self.progress.next_epoch, "stopping early (--max-epochs); run again to resume");
                return Ok(None);
            }
            let eval = match self.train_epoch(&phase) {
                Err(Error::Lib(e @ espalier_core::Error::Interrupted { .. })) => {
                    // The checkpoint holds the weights after the last step
                    // and where the epoch stopped; the records stay as they were.
                    self.checkpoint()?;
                    return Err(e.into());
                }
                other => other?,
            };
            done_here += 1;
            if self.phase_over(&phase) {
                self.end_phase(&phase, Some(eval))?;
            } else {
                self.checkpoint()?;
            }
        }
        let summary = self.finish()?;
        tracing::info!("finished in {:.1}s", started.elapsed().as_secs_f64());
        Ok(Some(summary))
    }

    fn checkpoint(&self) -> Result<()> {
        self.dir.save_checkpoint(self.model.as_ref(), &self.trainer, self.method.as_ref(), &self.progress)
    }

    /// Saves the rewind point when the next epoch is the plan's.
    fn save_rewind_point(&mut self) -> Result<()> {
        if self.plan.rewind_point == Some(self.progress.next_epoch) && self.progress.rewind.is_none() {
            self.progress.rewind = Some(self.model.params().snapshot()?);
        }
        Ok(())
    }

    /// The phase's opening actions, then the method's set-up.
    fn start_phase(&mut self, phase: &Phase) -> Result<()> {
        self.save_rewind_point()?;
        for a in &phase.start {
            self.act(a)?;
        }
        let Session { exp, data, device, model, method, progress, .. } = self;
        with_context(exp, data, device, model.as_ref(), method.as_mut(), |m, cx| m.start_phase(progress.phase, cx))?;
        progress.phase_started = true;
        progress.phase_first_epoch = progress.next_epoch;
        Ok(())
    }

    fn phase_over(&self, phase: &Phase) -> bool {
        let e = self.progress.epoch_in_phase;
        match phase.length {
            Length::Epochs(n) => e >= n,
            Length::UntilDone { max_epochs } => e >= max_epochs || (e > 0 && self.method.done()),
        }
    }

    /// Carries out one action.
    fn act(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::Rewind => {
                let snap = self.progress.rewind.as_ref().context("rewind requested before a rewind point was saved")?;
                self.model.params().load(snap, "rewind snapshot")?;
                self.model.params().enforce_masks()?;
            }
            Action::ResetOptimizer => self.trainer.optimizer.reset(),
            Action::NewOptimizer => {
                let step = self.trainer.global_step;
                self.trainer = new_trainer(self.exp, self.model.params(), self.opts.progress, step)?;
            }
            Action::Prune { sparsity } => {
                let Session { exp, data, device, model, method, .. } = self;
                with_context(exp, data, device, model.as_ref(), method.as_mut(), |m, cx| m.prune(cx, *sparsity))?;
            }
            Action::Shrink { recalibrate_bn, sets, keep_ratio } => {
                self.shrink(*recalibrate_bn, sets.clone(), *keep_ratio)?
            }
        }
        Ok(())
    }

    /// Chooses the units (of `sets` only, when given), shrinks the model
    /// physically, re-estimates its BatchNorm statistics if asked, and
    /// evaluates it. A later shrink of the same run (the next block) adds
    /// to the first one's report: widths and residuals of its sets, its
    /// selection time, the parameters now, the metrics before fine-tuning
    /// now; the parameters before stay the dense model's.
    fn shrink(&mut self, recalibrate: usize, sets: Option<Vec<String>>, keep_ratio: Option<f64>) -> Result<()> {
        let Session { exp, data, device, model, method, .. } = self;
        let sel = with_context(exp, data, device, model.as_ref(), method.as_mut(), |m, cx| {
            cx.restrict(sets);
            cx.set_pass_ratio(keep_ratio);
            m.select(cx)
        })?;
        let dense = self.model.as_ref();
        if self.progress.shrink.is_none() {
            // The model before the shrink, for comparisons (`espalier bench RUN_DIR`).
            save_model(&self.dir.file("dense.safetensors"), dense, serde_json::json!({}))?;
        }
        let small = espalier_models::shrink(dense, &sel.keep)?;
        let widths = dense
            .group_sets()
            .iter()
            .filter_map(|s| sel.keep.get(&s.name).map(|k| (s.name.clone(), (k.len(), s.size))))
            .collect();
        if recalibrate > 0 && small.params().iter().any(|p| p.kind() == ParamKind::Buffer) {
            self.recalibrate_bn(small.as_ref(), recalibrate)?;
        }
        let before = self.evaluate(small.as_ref())?;
        let primary = self.data.metrics[0];
        tracing::info!(
            seconds = format!("{:.2}", sel.seconds),
            params = small.params().numel(),
            "shrunk; {} {:.2} before fine-tuning",
            primary.name(),
            before.get(primary).unwrap_or(f64::NAN)
        );
        let (p0, p1) = (dense.params().numel(), small.params().numel());
        let mut report = StructuredReport {
            method: self.method.describe(),
            widths,
            residual: sel.residual,
            select_seconds: sel.seconds,
            parameters_before: p0,
            parameters_after: p1,
            metrics_before_finetune: metrics_map(&before),
            calibration: sel.calibration,
        };
        let mut dense_parameters = p0;
        if let Some(prev) = self.progress.shrink.take() {
            dense_parameters = prev.dense_parameters;
            let mut r = prev.report;
            // A set shrunk again (a later pass) keeps its original width.
            for (name, (kept, size)) in std::mem::take(&mut report.widths) {
                let before = r.widths.get(&name).map_or(size, |w| w.1);
                r.widths.insert(name, (kept, before));
            }
            r.residual.append(&mut report.residual);
            report = StructuredReport {
                widths: r.widths,
                residual: r.residual,
                select_seconds: r.select_seconds + report.select_seconds,
                parameters_before: r.parameters_before,
                ..report
            };
        }
        self.model = small;
        self.progress.shrink = Some(Shrunk { dense_parameters, report });
        Ok(())
    }

    /// Re-estimates the BatchNorm running statistics of `model` from `n`
    /// training examples (the calibration sample, in training-size batches):
    /// forward passes in training mode, no gradient step.
    fn recalibrate_bn(&self, model: &dyn Model, n: usize) -> Result<()> {
        let start = Instant::now();
        let exp = self.exp;
        let batches = calibration_batches(&self.data, n, exp.train.batch_size, exp.seed, &self.device)?;
        for (i, b) in batches.iter().enumerate() {
            let mut rng = Rng::derive(exp.seed, "recalibrate-bn", &[i as u64]);
            model.forward_t(b, &mut Mode::Train(&mut rng))?;
        }
        tracing::info!(
            batches = batches.len(),
            seconds = format!("{:.1}", start.elapsed().as_secs_f64()),
            "BatchNorm statistics re-estimated"
        );
        Ok(())
    }

    fn evaluate(&self, model: &dyn Model) -> Result<EvalStats> {
        let exp = self.exp;
        let (data, bs) = (&self.data, exp.train.eval_batch_size);
        Ok(evaluate_groups(model, data.test.as_ref(), bs, &self.device, &data.metrics, &data.groups)?)
    }

    /// (sparsity, kept, prunable, line statistics) of the model now: the
    /// masks' sparsity of the method's weights, or after a shrink the
    /// fraction of parameters removed.
    fn measure(&self) -> Result<Measured> {
        if let Some(s) = &self.progress.shrink {
            let (p0, p1) = (s.dense_parameters, self.model.params().numel());
            return Ok((1.0 - p1 as f64 / p0 as f64, p1, p0, None));
        }
        let sp = SparsityReport::of(self.model.params(), self.method.selector())?;
        let lines = self.method.reports_lines().then(|| LineStats::of(&sp));
        Ok((sp.sparsity(), sp.kept(), sp.numel(), lines))
    }

    /// Whether `phase` is the last of its round.
    fn ends_round(&self, phase: &Phase) -> bool {
        self.plan.phases.get(self.progress.phase + 1).is_none_or(|n| n.round != phase.round)
    }

    /// One training epoch of `phase`, evaluated, measured and recorded.
    fn train_epoch(&mut self, phase: &Phase) -> Result<(EvalStats, Measured)> {
        self.save_rewind_point()?;
        let epoch = self.progress.next_epoch;
        let pos = PhasePos { epoch_in_phase: self.progress.epoch_in_phase, epochs_in_phase: phase.length.max_epochs() };
        let configured = self.exp.train.optimizer.lr();
        let (schedule, base, restart) = match phase.lr {
            PhaseLr::Schedule => (self.exp.train.lr_schedule.clone(), configured, None),
            PhaseLr::Constant(lr) => (LrSchedule::Constant, lr.unwrap_or(configured), None),
            PhaseLr::Restart(r) => (self.exp.train.lr_schedule.clone(), configured, Some(r)),
        };
        self.trainer.opts.lr_schedule = schedule;
        self.trainer.opts.lr_restart = restart;
        self.trainer.optimizer.set_base_lr(base);
        let hooks: &mut dyn Regularizer = self.method.as_mut();
        let stats = self.trainer.train_epoch(
            self.model.as_ref(),
            self.data.train.as_ref(),
            epoch,
            pos,
            &self.device,
            Some(hooks),
        )?;
        let eval = self.evaluate(self.model.as_ref())?;
        let measured = self.measure()?;
        let sparsity = measured.0;
        let primary = self.data.metrics[0];
        tracing::info!(
            epoch,
            round = phase.round,
            sparsity = format!("{sparsity:.4}"),
            train_loss = format!("{:.4}", stats.loss),
            test_loss = format!("{:.4}", eval.loss),
            "{} {:.2} ({:.1}s)",
            primary.name(),
            eval.get(primary).unwrap_or(f64::NAN),
            stats.seconds
        );
        let ends_round = self.ends_round(phase);
        let history = &mut self.progress.history;
        history.push(epoch_record(epoch, phase.round, sparsity, &stats, &eval));
        if self.exp.train.keep_best && ends_round {
            let name = primary.name();
            let before = best_since(&history[..history.len() - 1], self.progress.phase_first_epoch, name);
            let now = eval.get(primary).unwrap_or(f64::NEG_INFINITY);
            if before.is_none_or(|b| now > b.metrics.get(name).copied().unwrap_or(f64::NEG_INFINITY)) {
                save_model(
                    &self.dir.file("best.safetensors"),
                    self.model.as_ref(),
                    serde_json::json!({ "epoch": epoch, "round": phase.round, "metrics": metrics_map(&eval) }),
                )?;
            }
        }
        self.progress.next_epoch += 1;
        self.progress.epoch_in_phase += 1;
        Ok((eval, measured))
    }

    /// Closes a phase: the round's record when the round ends here, then on
    /// to the next phase (checkpointed).
    /// `last`: the evaluation and measurement of the phase's last epoch, if
    /// it trained one (else the model is evaluated and measured now).
    fn end_phase(&mut self, phase: &Phase, last: Option<(EvalStats, Measured)>) -> Result<()> {
        if self.ends_round(phase) {
            let (eval, (sparsity, kept, prunable, lines)) = match last {
                Some(l) => l,
                None => (self.evaluate(self.model.as_ref())?, self.measure()?),
            };
            let best = if self.exp.train.keep_best {
                best_since(&self.progress.history, self.progress.phase_first_epoch, self.data.metrics[0].name())
            } else {
                None
            };
            self.progress.history.push(Record::Round {
                round: phase.round,
                sparsity,
                kept,
                prunable,
                test_loss: eval.loss,
                metrics: metrics_map(&eval),
                best,
                lines,
            });
        }
        if matches!(phase.length, Length::UntilDone { .. }) && !self.method.done() {
            tracing::warn!("{}: the phase reached its epoch limit before the method was done", self.method.describe());
        }
        self.progress.phase += 1;
        self.progress.epoch_in_phase = 0;
        self.progress.phase_started = false;
        self.checkpoint()
    }

    /// The final model and the reports.
    fn finish(mut self) -> Result<Summary> {
        self.method.finish(self.model.params())?;
        let (exp, opts, model) = (self.exp, self.opts, self.model.as_ref());
        let name = opts.out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let write = |f: &str, bytes: &[u8]| espalier_core::checkpoint::write_atomic(&self.dir.file(f), bytes);
        let mut report = self.method.report().unwrap_or_default();
        for curve in &report.curves {
            let data = crate::plot::trace_plot(curve);
            let png = crate::plot::png(&data)
                .map_err(|e| espalier_core::Error::msg(format!("drawing {}.png: {e}", curve.name)))?;
            write(&format!("{}.svg", curve.name), crate::plot::svg(&data).as_bytes())?;
            write(&format!("{}.png", curve.name), &png)?;
            report.markdown += &format!("\n![{}]({}.svg)\n", curve.title, curve.name);
        }
        let summary = Summary {
            status: "done".into(),
            name,
            model: experiment_model_name(exp, &model.config()),
            data: exp.data.name(),
            method: self.method.describe(),
            seed: exp.seed,
            metric: self.data.metrics[0].name().to_string(),
            groups: self.data.groups.iter().map(|g| g.name.clone()).collect(),
            rounds: self.progress.history.iter().filter(|r| matches!(r, Record::Round { .. })).cloned().collect(),
            sparsity: SparsityReport::of(model.params(), self.method.selector())?,
            parameters: model.params().numel(),
            structured: self.progress.shrink.as_ref().map(|s| s.report.clone()),
            method_report: report.json,
            method_markdown: report.markdown,
        };
        // The final model: weights and masks, rebuildable from the header alone.
        let mut extra = serde_json::json!({ "sparsity": summary.sparsity.sparsity() });
        if let Some(st) = &summary.structured {
            // Without its timing: the saved model's bytes do not depend on
            // how fast (or in how many parts) the run went.
            extra["structured"] = serde_json::to_value(StructuredReport { select_seconds: 0.0, ..st.clone() })?;
        }
        save_model(&self.dir.file("model.safetensors"), model, extra)?;
        write("report.md", report_markdown(&summary).as_bytes())?;
        write("results.csv", results_csv(&summary).as_bytes())?;
        write("summary.json", serde_json::to_string_pretty(&summary)?.as_bytes())?;
        Ok(summary)
    }
}

/// Runs (or resumes) `exp` into `opts.out`. Returns `None` when stopped
/// early by `max_epochs`.
pub fn run(exp: &Experiment, opts: &RunOptions) -> Result<Option<Summary>> {
    Session::new(exp, opts)?.run()
}

/// Evaluates the model saved in a run directory on its test set.
pub fn eval_run(dir: &Path, data_root: &DataRoot) -> Result<(EvalStats, SparsityReport)> {
    let exp = config::load(&dir.join("config.toml"), &[])?;
    let device = config::device(&exp.device)?;
    let path = ["model.safetensors", "checkpoint.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .with_context(|| format!("{}: no model.safetensors or checkpoint.safetensors", dir.display()))?;
    let (model, _) = load_model(&path, &device)?;
    let model_dir = pretrained_dir(&exp)?;
    let data = exp.data.load(data_root, model_dir.as_deref())?;
    let method = exp.method()?;
    let bs = exp.train.eval_batch_size;
    let eval = evaluate_groups(model.as_ref(), data.test.as_ref(), bs, &device, &data.metrics, &data.groups)?;
    Ok((eval, SparsityReport::of(model.params(), method.selector())?))
}
