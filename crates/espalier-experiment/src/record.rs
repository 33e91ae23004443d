//! The records of a run: one line of `metrics.jsonl` per epoch and per
//! round.

use std::collections::BTreeMap;

use espalier_core::SparsityReport;
use espalier_train::{EpochStats, EvalStats};
use serde::{Deserialize, Serialize};

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
    /// The statistics of a sparsity report.
    pub fn of(sp: &SparsityReport) -> Self {
        LineStats {
            empty_rows: 100.0 * sp.empty_rows_fraction(),
            empty_cols: 100.0 * sp.empty_cols_fraction(),
            removable: 100.0 * sp.removable_fraction(),
        }
    }
}

/// The best epoch by `metric` among the epoch records from run-wide epoch
/// `from` on (one phase).
pub fn best_since(history: &[Record], from: usize, metric: &str) -> Option<BestEpoch> {
    let mut best: Option<BestEpoch> = None;
    for r in history {
        if let Record::Epoch { epoch, metrics, .. } = r {
            let v = metrics.get(metric).copied().unwrap_or(f64::NEG_INFINITY);
            let better = best.as_ref().is_none_or(|b| v > b.metrics.get(metric).copied().unwrap_or(f64::NEG_INFINITY));
            if *epoch >= from && better {
                best = Some(BestEpoch { epoch: *epoch, metrics: metrics.clone() });
            }
        }
    }
    best
}

/// Evaluation metrics by name; a group's as `<metric>.<group>`
/// (`accuracy.de`), beside the mean over the groups (`accuracy`).
pub fn metrics_map(e: &EvalStats) -> BTreeMap<String, f64> {
    let groups = e.groups.iter().flat_map(|(g, ms)| ms.iter().map(move |(m, v)| (format!("{}.{g}", m.name()), *v)));
    e.metrics.iter().map(|(m, v)| (m.name().to_string(), *v)).chain(groups).collect()
}

/// The record of a training epoch.
pub fn epoch_record(epoch: usize, round: usize, sparsity: f64, stats: &EpochStats, eval: &EvalStats) -> Record {
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
