//! Where a run directory stands, read from its files alone: never started,
//! started (a config, no checkpoint), partial (a checkpoint to resume
//! from), done (`summary.json` of a finished run) or failed (`summary.json`
//! with `"status": "failed"`, written when training stopped on an error).
//!
//! A failed run keeps its last good checkpoint. Running it again resumes
//! from there, with the same experiment or with one whose `train` section
//! differs only in what a failure is typically fixed by (see
//! [`retry_fields_only`]): the failure record and the old config are kept
//! beside it as `failed-N.json` and `config-N.toml`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Experiment;
use crate::error::{Context, Error, Result};
use crate::report::Summary;

/// What `summary.json` holds for a run that stopped on an error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    /// Always `"failed"` (a finished run's summary has `"done"`).
    pub status: String,
    /// What went wrong, with its context chain.
    pub error: String,
    /// `diverged` (a non-finite loss) or `error`.
    pub kind: String,
    /// Run-wide epoch and step within it where training diverged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<(usize, usize)>,
    /// The last finite training loss seen before diverging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finite_loss: Option<f64>,
    /// How to go on.
    pub resume: String,
}

impl Failure {
    /// The record of `err`, which stopped the run in `dir`.
    pub fn of(err: &Error, dir: &Path) -> Self {
        let (kind, at, last_finite_loss) = match err.core() {
            Some(espalier_core::Error::Diverged { epoch, step, last_finite, .. }) => {
                ("diverged", Some((*epoch, *step)), *last_finite)
            }
            _ => ("error", None, None),
        };
        Failure {
            status: "failed".into(),
            error: err.to_string(),
            kind: kind.into(),
            at,
            last_finite_loss,
            resume: format!(
                "fix the cause (for a divergence: train.optimizer, train.lr_schedule, train.clip_grad_norm or \
                 train.skip_nonfinite_steps) and run `espalier run CONFIG --out {}` again: it resumes from the last \
                 checkpoint",
                dir.display()
            ),
        }
    }
}

/// The state of a run directory.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// No `config.toml`.
    Missing,
    /// A config but no checkpoint yet.
    Started,
    /// A checkpoint to resume from, not finished.
    Partial,
    /// Finished.
    Done(Box<Summary>),
    /// Stopped on an error; resumable from its last checkpoint.
    Failed(Box<Failure>),
}

impl RunState {
    /// Reads the state of the run directory `dir`.
    pub fn of(dir: &Path) -> Result<RunState> {
        let summary = dir.join("summary.json");
        if summary.exists() {
            let bytes = std::fs::read(&summary).map_err(|e| espalier_core::Error::io(&summary, e))?;
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", summary.display()))?;
            return Ok(if value.get("status").and_then(|s| s.as_str()) == Some("failed") {
                RunState::Failed(Box::new(
                    serde_json::from_value(value).with_context(|| format!("reading {}", summary.display()))?,
                ))
            } else {
                RunState::Done(Box::new(
                    serde_json::from_value(value).with_context(|| format!("reading {}", summary.display()))?,
                ))
            });
        }
        Ok(if dir.join("checkpoint.safetensors").exists() {
            RunState::Partial
        } else if dir.join("config.toml").exists() {
            RunState::Started
        } else {
            RunState::Missing
        })
    }

    /// Whether the run finished.
    pub fn is_done(&self) -> bool {
        matches!(self, RunState::Done(_))
    }
}

/// Whether `new` differs from `old` only in the training settings a failed
/// run may be resumed with: the optimizer's hyperparameters (not its kind,
/// whose state the checkpoint holds), the learning-rate schedule, gradient
/// clipping, the non-finite steps to skip, and the evaluation batch size.
pub fn retry_fields_only(old: &Experiment, new: &Experiment) -> bool {
    if std::mem::discriminant(&old.train.optimizer) != std::mem::discriminant(&new.train.optimizer) {
        return false;
    }
    let mut patched = old.clone();
    patched.train.optimizer = new.train.optimizer.clone();
    patched.train.lr_schedule = new.train.lr_schedule.clone();
    patched.train.clip_grad_norm = new.train.clip_grad_norm;
    patched.train.skip_nonfinite_steps = new.train.skip_nonfinite_steps;
    patched.train.eval_batch_size = new.train.eval_batch_size;
    &patched == new
}
