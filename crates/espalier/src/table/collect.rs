//! Reading finished runs: the [`Point`]s (one per run, sparsity and
//! metric) of a plan from the runs' `summary.json` files, and the
//! `results.csv` they make.

use std::path::Path;

use anyhow::{bail, Context};

use super::plan::{Job, Plan};
use super::spec::Spec;
use crate::run::{Record, Summary};

/// One reported number: a run's metric at a sparsity.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Task name (empty when the spec has no tasks).
    pub task: String,
    /// Method name (`dense` for the dense reference).
    pub method: String,
    /// Model name from the run.
    pub model: String,
    /// Data name from the run.
    pub data: String,
    /// Sparsity of the run's round.
    pub sparsity: f64,
    /// The sweep setting that produced it.
    pub setting: Option<String>,
    /// Metric name.
    pub metric: String,
    /// Value.
    pub value: f64,
    /// Seed.
    pub seed: u64,
}

fn read_summary(dir: &Path) -> anyhow::Result<Summary> {
    let p = dir.join("summary.json");
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
}

/// The value of `metric` in a round of `s`; `None` where the run lacks it.
/// Besides the evaluation metrics: `empty_rows`, `empty_cols` and
/// `removable` (percent, unstructured pruning's row/column statistics).
fn metric_of(s: &Summary, round: &Record, metric: &str, last: bool) -> Option<f64> {
    let Record::Round { metrics, best, lines, .. } = round else { return None };
    if let Some(l) = lines {
        match metric {
            "empty_rows" => return Some(l.empty_rows),
            "empty_cols" => return Some(l.empty_cols),
            "removable" => return Some(l.removable),
            _ => {}
        }
    }
    if let Some(m) = metric.strip_suffix("@best-epoch") {
        return best.as_ref().and_then(|b| b.metrics.get(m).copied());
    }
    if let Some(m) = metric.strip_suffix("@before-finetune") {
        return s.structured.as_ref().filter(|_| last).and_then(|st| st.metrics_before_finetune.get(m).copied());
    }
    metrics.get(metric).copied()
}

/// The points of a finished run: its pruned rounds (all of them, or the
/// last for a swept method), and its round 0 as the dense reference when
/// `dense` is set.
fn points_of(spec: &Spec, job: &Job, s: &Summary, method: &str, dense: bool) -> Vec<Point> {
    let rounds: Vec<&Record> = s.rounds.iter().collect();
    let mut out = Vec::new();
    let swept = job.method.is_some_and(|m| spec.method[m].sweep.is_some());
    for (i, r) in rounds.iter().enumerate() {
        let Record::Round { round, sparsity, .. } = r else { continue };
        let last = i + 1 == rounds.len();
        let (name, keep) = if *round == 0 { ("dense", dense) } else { (method, !swept || last) };
        if !keep {
            continue;
        }
        for metric in spec.metrics_of(job.task) {
            if let Some(value) = metric_of(s, r, metric, last) {
                out.push(Point {
                    task: spec.task_name(job.task).to_string(),
                    method: name.to_string(),
                    model: s.model.clone(),
                    data: s.data.clone(),
                    sparsity: if *round == 0 { 0.0 } else { *sparsity },
                    setting: if *round == 0 { None } else { job.setting.clone() },
                    metric: metric.clone(),
                    value,
                    seed: s.seed,
                });
            }
        }
    }
    out
}

/// Every point of a finished plan, in plan order; the dense reference comes
/// from the first prerequisite (its final round) or else the first
/// method's round 0, once per seed.
pub fn collect(spec: &Spec, plan: &Plan) -> anyhow::Result<Vec<Point>> {
    let missing: Vec<&str> = plan
        .prereqs
        .iter()
        .chain(&plan.cells)
        .filter(|j| !j.dir.join("summary.json").exists())
        .map(|j| j.id.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} runs are not finished ({}); run `{}` first",
            missing.len(),
            plan.prereqs.len() + plan.cells.len(),
            missing.iter().take(5).copied().collect::<Vec<_>>().join(", "),
            plan.command
        );
    }
    let mut points = Vec::new();
    let first_prereq = spec.prereq.first().map(|p| p.name.as_str());
    let is_first = |j: &&Job| first_prereq.is_some_and(|n| j.id.ends_with(&format!("prereq/{n}/seed{}", j.seed)));
    for job in plan.prereqs.iter().filter(is_first) {
        let s = read_summary(&job.dir)?;
        let Some(last) = s.rounds.last() else { continue };
        for metric in spec.metrics_of(job.task) {
            if let Some(value) = metric_of(&s, last, metric, false) {
                points.push(Point {
                    task: spec.task_name(job.task).to_string(),
                    method: "dense".into(),
                    model: s.model.clone(),
                    data: s.data.clone(),
                    sparsity: 0.0,
                    setting: None,
                    metric: metric.clone(),
                    value,
                    seed: s.seed,
                });
            }
        }
    }
    let mut dense_seen: Vec<(Option<usize>, u64)> = Vec::new();
    for job in &plan.cells {
        let s = read_summary(&job.dir)?;
        let m = &spec.method[job.method.unwrap_or(0)];
        let dense = spec.prereq.is_empty() && job.method == Some(0) && !dense_seen.contains(&(job.task, job.seed));
        if dense {
            dense_seen.push((job.task, job.seed));
        }
        points.extend(points_of(spec, job, &s, &m.name, dense));
    }
    Ok(points)
}

/// The CSV: one row per run, sparsity and metric (the columns of a run's
/// `results.csv`, with the table's method names).
pub fn csv(points: &[Point]) -> String {
    let mut out = String::from("model,data,method,sparsity,metric,value,seed\n");
    for p in points {
        out +=
            &format!("{},{},{},{:.6},{},{:.4},{}\n", p.model, p.data, p.method, p.sparsity, p.metric, p.value, p.seed);
    }
    out
}
