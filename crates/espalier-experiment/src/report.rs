//! What a finished run reports: `summary.json`, `report.md`, `results.csv`
//! and the table printed at the end. Where the evaluation set has groups
//! (XNLI's languages), each round's metrics hold every group's value
//! (`accuracy.de`) beside their mean (`accuracy`, the primary metric), and
//! the report and the printed table show them per group.

use std::collections::BTreeMap;

use espalier_core::SparsityReport;
use serde::{Deserialize, Serialize};

use crate::record::Record;

/// The result of a finished run (`summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Always `"done"` (a run that stopped on an error has a
    /// [`crate::Failure`] in `summary.json` instead).
    #[serde(default = "done")]
    pub status: String,
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
    /// The evaluation groups (XNLI's language codes), in report order:
    /// the rounds' metrics also hold `<metric>.<group>`, and `metric` is
    /// their mean. Empty for data without groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// One row per round.
    pub rounds: Vec<Record>,
    /// Per-layer sparsity at the end.
    pub sparsity: SparsityReport,
    /// Trainable parameters of the model.
    pub parameters: usize,
    /// The structured pruning step, when the experiment has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<StructuredReport>,
    /// What the method reports about itself (e.g. `admm_trace`,
    /// `greg_trace`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub method_report: serde_json::Value,
    /// The method's section of `report.md`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method_markdown: String,
}

fn done() -> String {
    "done".into()
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
    if !s.groups.is_empty() {
        out += &format!("\n{} per evaluation group ({} above is their mean):\n{:>5}", s.metric, s.metric, "round");
        for g in &s.groups {
            out += &format!("  {g:>6}");
        }
        out.push('\n');
        for (round, values) in group_rows(s) {
            out += &format!("{round:>5}");
            for v in values {
                out += &format!("  {v:>6.2}");
            }
            out.push('\n');
        }
    }
    out
}

/// (round, the primary metric of every group in `s.groups` order) per round.
fn group_rows(s: &Summary) -> Vec<(usize, Vec<f64>)> {
    let of = |metrics: &BTreeMap<String, f64>| -> Vec<f64> {
        s.groups.iter().map(|g| metrics.get(&format!("{}.{g}", s.metric)).copied().unwrap_or(f64::NAN)).collect()
    };
    s.rounds
        .iter()
        .filter_map(|r| match r {
            Record::Round { round, metrics, .. } => Some((*round, of(metrics))),
            _ => None,
        })
        .collect()
}

/// The per-group table of `report.md` (nothing without groups): every
/// round's last-epoch value per group and their mean, and with
/// `train.keep_best` the best epoch's too.
fn groups_markdown(s: &Summary) -> String {
    if s.groups.is_empty() {
        return String::new();
    }
    let m = &s.metric;
    let mut md =
        format!("\n{m} per evaluation group (`{m}.<group>`; `{m}` is their mean):\n\n| round | epoch | {m} (mean) |");
    for g in &s.groups {
        md += &format!(" {g} |");
    }
    md += &format!("\n|---:|---|---:|{}\n", "---:|".repeat(s.groups.len()));
    let mut row = |round: usize, epoch: &str, metrics: &BTreeMap<String, f64>| {
        md += &format!("| {round} | {epoch} | {:.2} |", metrics.get(m).copied().unwrap_or(f64::NAN));
        for g in &s.groups {
            md += &format!(" {:.2} |", metrics.get(&format!("{m}.{g}")).copied().unwrap_or(f64::NAN));
        }
        md.push('\n');
    };
    for r in &s.rounds {
        if let Record::Round { round, metrics, best, .. } = r {
            row(*round, "last", metrics);
            if let Some(b) = best {
                row(*round, &format!("best ({})", b.epoch), &b.metrics);
            }
        }
    }
    md
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
    md += &groups_markdown(s);
    md += &lines_markdown(s);
    md += &s.method_markdown;
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
