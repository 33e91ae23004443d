//! The run directory: `config.toml` (the resolved experiment),
//! `checkpoint.safetensors` (after every epoch and every phase),
//! `metrics.jsonl`, and at the end `model.safetensors`, `summary.json`,
//! `report.md` and `results.csv`. Every file is written atomically, so an
//! interrupted run never leaves a half-written file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use espalier_core::checkpoint::{self, MASK_PREFIX, OPTIM_PREFIX, REGULARIZER_PREFIX, REWIND_PREFIX};
use espalier_core::{ParamBuilder, ParamStore};
use espalier_models::{Model, ModelConfig};
use espalier_prune::Method;
use espalier_train::trainer::PartialEpoch;
use espalier_train::{Optimizer, Trainer};
use serde::{Deserialize, Serialize};

use crate::config::{self, ConfigError, Experiment};
use crate::error::{Context, Error, Result};
use crate::record::Record;
use crate::report::StructuredReport;
use crate::status::{retry_fields_only, Failure, RunState};

/// Checkpoint keys of the method's tensor state (after the trainer's own
/// regularizers' `<name>.` keys, which never start with `@`).
const METHOD_PREFIX: &str = "@method.";

/// The file a running process locks in its run directory.
pub const LOCK_FILE: &str = ".lock";

/// A run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
}

/// Where a run is: what the session carries between epochs and across a
/// resume (in the checkpoint's header, with the rewind snapshot as tensors).
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Run-wide index of the next epoch.
    pub next_epoch: usize,
    /// The current phase of the method's plan.
    pub phase: usize,
    /// Epochs done in it.
    pub epoch_in_phase: usize,
    /// Whether its opening actions are done.
    pub phase_started: bool,
    /// Run-wide index of its first epoch.
    pub phase_first_epoch: usize,
    /// Every record so far.
    pub history: Vec<Record>,
    /// The weights to rewind to.
    pub rewind: Option<BTreeMap<String, Tensor>>,
    /// After a shrink: the dense model's size and what the shrink did.
    pub shrink: Option<Shrunk>,
}

/// What a shrink left for the rest of the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Shrunk {
    /// Parameters of the model before the shrink.
    pub dense_parameters: usize,
    /// The structured step's report.
    pub report: StructuredReport,
}

/// The checkpoint header's run state.
#[derive(Serialize, Deserialize)]
struct Header {
    model: ModelConfig,
    #[serde(default)]
    straight_through: Vec<String>,
    next_epoch: usize,
    global_step: u64,
    history: Vec<Record>,
    phase: usize,
    epoch_in_phase: usize,
    phase_started: bool,
    phase_first_epoch: usize,
    #[serde(default)]
    method: serde_json::Value,
    #[serde(default)]
    shrink: Option<Shrunk>,
    /// An epoch interrupted part-way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<PartialEpoch>,
    espalier_version: String,
}

/// The model's weights under their names and its masks under `__mask__.`.
pub fn weights_and_masks(model: &dyn Model) -> Result<BTreeMap<String, Tensor>> {
    let params = model.params();
    let mut tensors = params.snapshot()?;
    for (k, v) in params.masks() {
        tensors.insert(format!("{MASK_PREFIX}{k}"), v);
    }
    Ok(tensors)
}

/// Saves weights and masks with the model config (and `extra`) in the header.
pub fn save_model(path: &Path, model: &dyn Model, extra: serde_json::Value) -> Result<()> {
    let tensors = weights_and_masks(model)?;
    let mut header = serde_json::json!({ "model": model.config() });
    if let (Some(h), serde_json::Value::Object(e)) = (header.as_object_mut(), extra) {
        h.extend(e);
    }
    checkpoint::save(path, &tensors, &header)?;
    Ok(())
}

impl RunDir {
    /// The run directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    /// A file in it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Prepares the directory: a new one gets `config.toml`; an existing one
    /// must hold the same experiment (else nothing is touched), or be a
    /// failed run that `exp` resumes with fixed training settings
    /// ([`crate::status::retry_fields_only`]; adopted by [`RunDir::retry`]
    /// once the directory is locked).
    pub fn prepare(&self, exp: &Experiment) -> Result<()> {
        let cfg_path = self.file("config.toml");
        if cfg_path.exists() {
            let old = config::load(&cfg_path, &[]).map_err(|e| {
                ConfigError(format!("{e} (the run directory {} cannot be resumed)", self.path.display()))
            })?;
            if &old == exp {
                return Ok(());
            }
            let failed = matches!(RunState::of(&self.path), Ok(RunState::Failed(_)));
            if failed && retry_fields_only(&old, exp) {
                return Ok(());
            }
            let allowed = if failed {
                " (a failed run resumes with changes to train.optimizer's settings (not its kind, whose state \
                 the checkpoint holds), train.lr_schedule, train.clip_grad_norm, train.skip_nonfinite_steps and \
                 train.eval_batch_size only)"
            } else {
                ""
            };
            return Err(ConfigError(format!(
                "run directory {} holds a different experiment (see its config.toml){allowed}; choose another --out \
                 or remove it",
                self.path.display()
            ))
            .into());
        }
        std::fs::create_dir_all(&self.path)
            .map_err(|e| espalier_core::Error::io(&self.path, e))
            .context("creating the run directory")?;
        self.write_config(exp)
    }

    fn write_config(&self, exp: &Experiment) -> Result<()> {
        let text = toml::to_string_pretty(exp).map_err(|e| Error::msg(format!("serializing the config: {e}")))?;
        let header = format!(
            "# Resolved experiment config written by espalier {} (defaults filled in).\n",
            env!("CARGO_PKG_VERSION")
        );
        checkpoint::write_atomic(&self.file("config.toml"), format!("{header}{text}").as_bytes())?;
        Ok(())
    }

    /// Takes the directory for this process: an exclusive advisory lock on
    /// its `.lock` file, held as long as the returned file is open. A
    /// second process running into the same directory is refused (a config
    /// error: nothing of the first one's is touched).
    pub fn lock(&self) -> Result<std::fs::File> {
        let path = self.file(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| espalier_core::Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(ConfigError(format!(
                "run directory {} is in use by another espalier process; wait for it to finish or choose another \
                 --out",
                self.path.display()
            ))
            .into()),
            Err(std::fs::TryLockError::Error(e)) => Err(espalier_core::Error::io(&path, e).into()),
        }
    }

    /// Resumes a failed run (call with the directory locked): its failure
    /// record becomes `failed-N.json`, and where `exp` changed the training
    /// settings, the old config becomes `config-N.toml` and `exp` is
    /// written as `config.toml`. Does nothing for any other run.
    pub fn retry(&self, exp: &Experiment) -> Result<()> {
        if !matches!(RunState::of(&self.path)?, RunState::Failed(_)) {
            return Ok(());
        }
        let n = (1..).find(|n| !self.file(&format!("failed-{n}.json")).exists()).unwrap_or(1);
        let cfg = self.file("config.toml");
        let changed = config::load(&cfg, &[]).map(|old| &old != exp).unwrap_or(true);
        if changed {
            let kept = self.file(&format!("config-{n}.toml"));
            std::fs::copy(&cfg, &kept).map_err(|e| espalier_core::Error::io(&kept, e))?;
            self.write_config(exp)?;
        }
        let (from, to) = (self.file("summary.json"), self.file(&format!("failed-{n}.json")));
        std::fs::rename(&from, &to).map_err(|e| espalier_core::Error::io(&to, e))?;
        tracing::info!(
            record = %to.display(),
            config_changed = changed,
            "resuming the failed run {} from its last checkpoint",
            self.path.display()
        );
        Ok(())
    }

    /// Marks the run failed: `summary.json` holds the [`Failure`] of `err`.
    /// Best effort (the disk may be what failed): a write error is logged.
    pub fn mark_failed(&self, err: &Error) {
        let failure = Failure::of(err, &self.path);
        let text = serde_json::to_string_pretty(&failure).unwrap_or_default();
        if let Err(e) = checkpoint::write_atomic(&self.file("summary.json"), text.as_bytes()) {
            tracing::warn!("could not mark {} failed: {e}", self.path.display());
        }
    }

    /// Rewrites `metrics.jsonl` from the history.
    pub fn write_metrics(&self, history: &[Record]) -> Result<()> {
        let mut s = String::new();
        for r in history {
            s += &serde_json::to_string(r)?;
            s.push('\n');
        }
        checkpoint::write_atomic(&self.file("metrics.jsonl"), s.as_bytes())?;
        Ok(())
    }

    /// The checkpoint's path.
    pub fn checkpoint(&self) -> PathBuf {
        self.file("checkpoint.safetensors")
    }

    /// Saves everything a resume needs, then `metrics.jsonl`.
    pub fn save_checkpoint(
        &self,
        model: &dyn Model,
        trainer: &Trainer,
        method: &dyn Method,
        progress: &Progress,
    ) -> Result<()> {
        let mut tensors = weights_and_masks(model)?;
        for (k, v) in trainer.optimizer.state() {
            tensors.insert(format!("{OPTIM_PREFIX}{k}"), v);
        }
        if let Some(rw) = &progress.rewind {
            for (k, v) in rw {
                tensors.insert(format!("{REWIND_PREFIX}{k}"), v.clone());
            }
        }
        for (k, v) in trainer.regularizer_state()? {
            tensors.insert(format!("{REGULARIZER_PREFIX}{k}"), v);
        }
        for (k, v) in method.state()? {
            tensors.insert(format!("{REGULARIZER_PREFIX}{METHOD_PREFIX}{k}"), v);
        }
        let header = Header {
            model: model.config(),
            straight_through: model
                .params()
                .iter()
                .filter(|p| p.straight_through())
                .map(|p| p.name().to_string())
                .collect(),
            next_epoch: progress.next_epoch,
            global_step: trainer.global_step,
            history: progress.history.clone(),
            phase: progress.phase,
            epoch_in_phase: progress.epoch_in_phase,
            phase_started: progress.phase_started,
            phase_first_epoch: progress.phase_first_epoch,
            method: method.save(),
            shrink: progress.shrink.clone(),
            partial: trainer.partial.clone(),
            espalier_version: env!("CARGO_PKG_VERSION").into(),
        };
        checkpoint::save(&self.checkpoint(), &tensors, &serde_json::to_value(header)?)?;
        self.write_metrics(&progress.history)
    }

    /// Restores a checkpoint into `model` (rebuilt when the checkpoint holds a
    /// shrunk model), the trainer and the method's tensor state; returns the
    /// model, the progress and the method's JSON state (for
    /// [`Method::load`], after the phase's set-up).
    pub fn restore(
        &self,
        model: Box<dyn Model>,
        trainer: &mut Trainer,
        new_optimizer: &dyn Fn(&ParamStore) -> Result<Box<dyn Optimizer>>,
        method: &mut dyn Method,
        device: &Device,
    ) -> Result<(Box<dyn Model>, Progress, serde_json::Value)> {
        let path = self.checkpoint();
        let ctx = path.display().to_string();
        let ck = checkpoint::load(&path, device)?;
        let header: Header = serde_json::from_value(ck.header.clone())
            .map_err(|e| Error::msg(format!("{ctx}: invalid run state in the header ({e})")))?;
        let model = if header.model == model.config() {
            model.params().load(&ck.params(), &ctx)?;
            model
        } else if header.shrink.is_some() {
            let pb = ParamBuilder::from_tensors(ck.params(), ctx.clone(), candle_core::DType::F32, device);
            header.model.build(&pb)?
        } else {
            return Err(Error::msg(format!("{ctx}: checkpoint is of another model ({:?})", header.model)));
        };
        // Straight-through masks (SR-STE) keep the pruned weights: set the
        // mode before the masks so that restoring them does not zero anything.
        for n in &header.straight_through {
            model.params().get(n)?.set_straight_through(true)?;
        }
        model.params().set_masks(&ck.masks())?;
        if header.shrink.is_some() {
            trainer.optimizer = new_optimizer(model.params())?;
        }
        trainer.optimizer.load_state(&ck.optim())?;
        let regs = ck.with_prefix(REGULARIZER_PREFIX);
        trainer.load_regularizer_state(&regs)?;
        let mine = regs.iter().filter_map(|(k, v)| k.strip_prefix(METHOD_PREFIX).map(|k| (k.to_string(), v.clone())));
        method.load_state(&mine.collect())?;
        trainer.global_step = header.global_step;
        trainer.partial = header.partial;
        let rewind = ck.rewind();
        let progress = Progress {
            next_epoch: header.next_epoch,
            phase: header.phase,
            epoch_in_phase: header.epoch_in_phase,
            phase_started: header.phase_started,
            phase_first_epoch: header.phase_first_epoch,
            history: header.history,
            rewind: (!rewind.is_empty()).then_some(rewind),
            shrink: header.shrink,
        };
        Ok((model, progress, header.method))
    }
}
