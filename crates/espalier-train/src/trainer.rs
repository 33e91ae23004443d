//! The training loop and evaluation.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use espalier_core::{Metric, Result, Rng};
use espalier_data::{Batcher, Dataset, EvalGroup};
use espalier_models::{Mode, Model};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::{LrRestart, LrSchedule, Optimizer, Regularizer, StepInfo};

/// Settings of the loop that are not the optimizer's.
#[derive(Clone, Debug)]
pub struct TrainerOptions {
    /// Training batch size.
    pub batch_size: usize,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
    /// Learning-rate schedule within a phase.
    pub lr_schedule: LrSchedule,
    /// Restart the schedule every so many steps or epochs of the phase
    /// (`None`: one schedule over the whole phase).
    pub lr_restart: Option<LrRestart>,
    /// The run's seed (shuffling and dropout streams derive from it).
    pub seed: u64,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// Steps with a non-finite loss skipped (no update) before the run is
    /// stopped as diverged; 0 stops at the first.
    pub skip_nonfinite_steps: usize,
}

/// What one training epoch measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy (percent; classification only).
    pub accuracy: Option<f64>,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Learning rate at the last step.
    pub lr: f64,
}

/// What an evaluation measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalStats {
    /// Mean loss.
    pub loss: f64,
    /// Metric values (percent); with groups, the mean over the groups.
    pub metrics: Vec<(Metric, f64)>,
    /// The metrics of each group of the evaluation set (XNLI's languages),
    /// by group name; empty when the set has no groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<(String, Vec<(Metric, f64)>)>,
}

impl EvalStats {
    /// The value of `m`, if computed.
    pub fn get(&self, m: Metric) -> Option<f64> {
        self.metrics.iter().find(|(k, _)| *k == m).map(|(_, v)| *v)
    }
}

/// Where in a phase (dense training or one retraining round) an epoch is;
/// learning-rate schedules restart with each phase.
#[derive(Clone, Copy, Debug)]
pub struct PhasePos {
    /// Epoch index within the phase (0-based).
    pub epoch_in_phase: usize,
    /// Epochs in the phase.
    pub epochs_in_phase: usize,
}

/// The one training loop.
pub struct Trainer {
    /// The optimizer.
    pub optimizer: Box<dyn Optimizer>,
    /// Regularizers, in order.
    pub regularizers: Vec<Box<dyn Regularizer>>,
    /// Loop settings.
    pub opts: TrainerOptions,
    /// Optimizer steps taken over the whole run.
    pub global_step: u64,
    /// Non-finite steps skipped so far.
    pub skipped_nonfinite: usize,
    /// An epoch stopped part-way by [`espalier_core::interrupt`]: the next
    /// call for that epoch goes on from where it stopped.
    pub partial: Option<PartialEpoch>,
}

/// Where an interrupted epoch stopped, and what it had summed so far (kept
/// in the checkpoint, so that the resumed epoch reports the same numbers).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartialEpoch {
    /// Run-wide epoch.
    pub epoch: usize,
    /// Steps done.
    pub step: usize,
    /// Σ loss · batch size so far.
    pub loss_sum: f64,
    /// Examples seen.
    pub n_seen: usize,
    /// Correct predictions.
    pub correct: usize,
    /// Whether every batch so far was classification.
    pub classif: bool,
    /// The last finite loss.
    pub last_finite: Option<f64>,
}

fn progress_bar(n: usize, label: String, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(label);
    pb
}

fn predictions(logits: &Tensor) -> Result<Vec<f64>> {
    Ok(if logits.rank() == 2 {
        logits.argmax(D::Minus1)?.to_dtype(DType::F64)?.to_vec1::<f64>()?
    } else {
        logits.to_dtype(DType::F64)?.to_vec1::<f64>()?
    })
}

impl TrainerOptions {
    /// Batches of `batch_size` at a constant rate: seed 0, no clipping, no
    /// restart, no progress bar, no non-finite step skipped (benchmarks and
    /// tests).
    pub fn constant(batch_size: usize) -> Self {
        TrainerOptions {
            batch_size,
            clip_grad_norm: None,
            lr_schedule: LrSchedule::Constant,
            lr_restart: None,
            seed: 0,
            progress: false,
            skip_nonfinite_steps: 0,
        }
    }
}

impl Trainer {
    /// A trainer at step 0 with no epoch in progress.
    pub fn new(optimizer: Box<dyn Optimizer>, regularizers: Vec<Box<dyn Regularizer>>, opts: TrainerOptions) -> Self {
        Trainer { optimizer, regularizers, opts, global_step: 0, skipped_nonfinite: 0, partial: None }
    }

    /// The regularizers' checkpoint state, keyed `<name>.<key>`.
    pub fn regularizer_state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut all = BTreeMap::new();
        for r in &self.regularizers {
            for (k, v) in r.state()? {
                all.insert(format!("{}.{k}", r.name()), v);
            }
        }
        Ok(all)
    }

    /// Restores [`Trainer::regularizer_state`] into the same regularizers.
    pub fn load_regularizer_state(&mut self, all: &BTreeMap<String, Tensor>) -> Result<()> {
        for r in &mut self.regularizers {
            let prefix = format!("{}.", r.name());
            let mine = all.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())));
            r.load_state(&mine.collect())?;
        }
        Ok(())
    }

    /// Trains `model` for one epoch over `data`. `epoch` is the run-wide
    /// epoch index (it seeds the shuffle, the augmentation and the dropout
    /// streams). `method` is the pruning method's hook into the step: it
    /// observes first, and adds its penalty, gradient adjustment and step and
    /// epoch updates after the trainer's own regularizers.
    pub fn train_epoch(
        &mut self,
        model: &dyn Model,
        data: &dyn Dataset,
        epoch: usize,
        phase: PhasePos,
        device: &Device,
        mut method: Option<&mut dyn Regularizer>,
    ) -> Result<EpochStats> {
        let start = Instant::now();
        let batcher =
            Batcher { batch_size: self.opts.batch_size, shuffle: true, drop_last: false, seed: self.opts.seed };
        let plan = batcher.plan(data.len(), epoch as u64);
        let spe = plan.len();
        let total = spe * phase.epochs_in_phase;
        let params = model.params();
        let bar = progress_bar(spe, format!("epoch {epoch}"), self.opts.progress);
        let (mut loss_sum, mut n_seen, mut correct, mut classif) = (0.0, 0usize, 0usize, true);
        let mut lr = self.optimizer.base_lr();
        let mut last_log = Instant::now();
        let mut last_finite = None;
        let mut first = 0;
        if let Some(p) = self.partial.take().filter(|p| p.epoch == epoch) {
            (first, loss_sum, n_seen, correct, classif, last_finite) =
                (p.step, p.loss_sum, p.n_seen, p.correct, p.classif, p.last_finite);
            bar.inc(first as u64);
        }
        for (i, idx) in plan.iter().enumerate().skip(first) {
            let batch = data.train_batch(idx, self.opts.seed, epoch as u64, device)?;
            let mut rng = Rng::derive(self.opts.seed, "dropout", &[epoch as u64, i as u64]);
            let out = model.forward_t(&batch, &mut Mode::Train(&mut rng))?;
            let step_loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !step_loss.is_finite() {
                if self.skipped_nonfinite < self.opts.skip_nonfinite_steps {
                    self.skipped_nonfinite += 1;
                    tracing::warn!(epoch, step = i, loss = step_loss, "non-finite loss: step skipped, no update");
                    bar.inc(1);
                    continue;
                }
                return Err(espalier_core::Error::Diverged { epoch, step: i, loss: step_loss, last_finite });
            }
            last_finite = Some(step_loss);
            let info =
                StepInfo { epoch, global_step: self.global_step, lr: 0.0, step_in_epoch: i, steps_per_epoch: spe };
            let mut loss = out.loss.clone();
            let penalties = self.regularizers.iter().map(|r| r.penalty(params, &info));
            for p in penalties.chain(method.as_deref().map(|m| m.penalty(params, &info))) {
                if let Some(p) = p? {
                    loss = (loss + p)?;
                }
            }
            let mut grads = loss.backward()?;
            for r in &mut self.regularizers {
                r.observe(params, &grads, &info)?;
            }
            if let Some(m) = method.as_deref_mut() {
                m.observe(params, &grads, &info)?;
            }
            for r in &mut self.regularizers {
                r.adjust_grads(params, &mut grads, &info)?;
            }
            if let Some(m) = method.as_deref_mut() {
                m.adjust_grads(params, &mut grads, &info)?;
            }
            if let Some(max) = self.opts.clip_grad_norm {
                clip_grad_norm(params, &mut grads, max)?;
            }
            let step_in_phase = phase.epoch_in_phase * spe + i;
            let (at, of) = match self.opts.lr_restart {
                Some(r) => r.position(step_in_phase, spe),
                None => (step_in_phase, total),
            };
            lr = self.optimizer.base_lr() * self.opts.lr_schedule.factor(at, of, spe);
            self.optimizer.step(&grads, lr)?;
            params.enforce_masks()?;
            self.global_step += 1;
            let info = StepInfo { lr, global_step: self.global_step, ..info };
            for r in &mut self.regularizers {
                r.on_step(params, &info)?;
            }
            if let Some(m) = method.as_deref_mut() {
                m.on_step(params, &info)?;
            }
            let b = batch.len();
            loss_sum += step_loss * b as f64;
            n_seen += b;
            if out.logits.rank() == 2 {
                let pred = predictions(&out.logits)?;
                let gold = out.labels.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                correct += pred.iter().zip(&gold).filter(|(p, g)| p == g).count();
            } else {
                classif = false;
            }
            bar.inc(1);
            if espalier_core::interrupt::requested() && i + 1 < spe {
                bar.finish_and_clear();
                self.partial =
                    Some(PartialEpoch { epoch, step: i + 1, loss_sum, n_seen, correct, classif, last_finite });
                return Err(espalier_core::Error::Interrupted { epoch, step: i + 1 });
            }
            if i % 20 == 0 {
                bar.set_message(format!("loss {:.4}", loss_sum / n_seen as f64));
            }
            // Without a terminal (logs to a file, CI) the bar is invisible:
            // report progress in the log once a minute instead.
            if self.opts.progress && bar.is_hidden() && last_log.elapsed().as_secs() >= 60 {
                let rate = (i + 1) as f64 / start.elapsed().as_secs_f64();
                tracing::info!(
                    epoch,
                    step = i + 1,
                    steps = spe,
                    loss = format!("{:.4}", loss_sum / n_seen as f64),
                    "{:.2} steps/s, ETA {:.0}s",
                    rate,
                    (spe - i - 1) as f64 / rate
                );
                last_log = Instant::now();
            }
        }
        bar.finish_and_clear();
        let info = StepInfo { epoch, global_step: self.global_step, steps_per_epoch: spe, ..Default::default() };
        for r in &mut self.regularizers {
            r.on_epoch(params, &info)?;
        }
        if let Some(m) = method {
            m.on_epoch(params, &info)?;
        }
        Ok(EpochStats {
            loss: loss_sum / n_seen.max(1) as f64,
            accuracy: classif.then(|| 100.0 * correct as f64 / n_seen.max(1) as f64),
            steps: spe,
            seconds: start.elapsed().as_secs_f64(),
            lr,
        })
    }
}

/// Scales all gradients so that their global L2 norm is at most `max`
/// (PyTorch's `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(
    params: &espalier_core::ParamStore,
    grads: &mut candle_core::backprop::GradStore,
    max: f64,
) -> Result<f64> {
    let mut sq = 0.0;
    for p in params.trainable() {
        if let Some(g) = grads.get(p.tensor()) {
            sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm > max {
        let scale = max / (norm + 1e-6);
        for p in params.trainable() {
            if let Some(g) = grads.get(p.tensor()) {
                let g = (g * scale)?;
                grads.insert(p.tensor(), g);
            }
        }
    }
    Ok(norm)
}

/// Evaluates `model` on `data` in file order; `metrics` are computed on the
/// argmax of the logits (classification) or the raw outputs (regression).
pub fn evaluate(
    model: &dyn Model,
    data: &dyn Dataset,
    batch_size: usize,
    device: &Device,
    metrics: &[Metric],
) -> Result<EvalStats> {
    evaluate_groups(model, data, batch_size, device, metrics, &[])
}

/// [`evaluate`], with `metrics` also computed on each of `groups` (parts of
/// `data`); the reported `metrics` are then the mean over the groups (each
/// group weighs the same), the loss stays the mean over all examples.
pub fn evaluate_groups(
    model: &dyn Model,
    data: &dyn Dataset,
    batch_size: usize,
    device: &Device,
    metrics: &[Metric],
    groups: &[EvalGroup],
) -> Result<EvalStats> {
    let batcher = Batcher { batch_size, shuffle: false, drop_last: false, seed: 0 };
    let (mut loss_sum, mut n) = (0.0, 0usize);
    let (mut pred, mut gold) = (Vec::new(), Vec::new());
    for idx in batcher.plan(data.len(), 0) {
        let batch = data.batch(&idx, device)?;
        let out = model.forward_t(&batch, &mut Mode::Infer)?;
        loss_sum += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * batch.len() as f64;
        n += batch.len();
        pred.extend(predictions(&out.logits)?);
        gold.extend(out.labels.to_dtype(DType::F64)?.to_vec1::<f64>()?);
    }
    let (metrics, groups) = group_metrics(&pred, &gold, metrics, groups)?;
    Ok(EvalStats { loss: loss_sum / n.max(1) as f64, metrics, groups })
}

/// (the set's metrics, each group's metrics by name).
type Grouped = (Vec<(Metric, f64)>, Vec<(String, Vec<(Metric, f64)>)>);

/// The metrics over all of `pred`/`gold` when there are no `groups`; else
/// each group's metrics and their mean over the groups.
fn group_metrics(pred: &[f64], gold: &[f64], metrics: &[Metric], groups: &[EvalGroup]) -> Result<Grouped> {
    let of = |p: &[f64], g: &[f64]| metrics.iter().map(|&m| (m, m.compute(p, g))).collect::<Vec<_>>();
    if groups.is_empty() {
        return Ok((of(pred, gold), vec![]));
    }
    let mut per_group = Vec::with_capacity(groups.len());
    for g in groups {
        if g.range.is_empty() || g.range.end > pred.len() {
            espalier_core::bail!(
                "evaluation group `{}` covers examples {}..{} of a set of {}",
                g.name,
                g.range.start,
                g.range.end,
                pred.len()
            );
        }
        per_group.push((g.name.clone(), of(&pred[g.range.clone()], &gold[g.range.clone()])));
    }
    let mean = |i: usize| per_group.iter().map(|(_, ms)| ms[i].1).sum::<f64>() / per_group.len() as f64;
    Ok((metrics.iter().enumerate().map(|(i, &m)| (m, mean(i))).collect(), per_group))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each group's accuracy on its own, and their unweighted mean (not the
    /// pooled accuracy) as the set's; a group outside the set is an error.
    #[test]
    fn grouped_metrics_are_per_group_and_their_mean() {
        let pred = [0., 1., 2., 0., 1., 1.];
        let gold = [0., 1., 2., 2., 2., 1.];
        let g = |name: &str, range| EvalGroup { name: name.into(), range };
        let (all, none) = group_metrics(&pred, &gold, &[Metric::Accuracy], &[]).unwrap();
        assert_eq!((all, none.len()), (vec![(Metric::Accuracy, 100.0 * (4.0 / 6.0))], 0));
        let groups = [g("en", 0..3), g("de", 3..5), g("fr", 5..6)];
        let (mean, per) = group_metrics(&pred, &gold, &[Metric::Accuracy], &groups).unwrap();
        let names: Vec<_> = per.iter().map(|(n, m)| (n.as_str(), m[0].1)).collect();
        assert_eq!(names, vec![("en", 100.0), ("de", 0.0), ("fr", 100.0)]);
        assert_eq!(mean, vec![(Metric::Accuracy, 200.0 / 3.0)]);
        let e = group_metrics(&pred, &gold, &[Metric::Accuracy], &[g("sw", 4..9)]).unwrap_err().to_string();
        assert!(e.contains("sw") && e.contains("4..9"), "{e}");
    }
}
