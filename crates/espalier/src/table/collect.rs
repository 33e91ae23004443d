//! Reading finished runs: the [`Point`]s (one per run, sparsity and
//! metric) of a plan from the runs' `summary.json` files, and the
//! `results.csv` they make.

use std::path::Path;

use anyhow::{bail, Context};

use super::plan::{Job, Plan};
use super::spec::Spec;
use crate::run::{Record, Summary};
use espalier_experiment::RunState;

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
    match RunState::of(dir).map_err(anyhow::Error::new)? {
        RunState::Done(s) => Ok(*s),
        RunState::Failed(f) => bail!("the run in {} failed: {}", dir.display(), f.error),
        _ => bail!("the run in {} is not finished", dir.display()),
    }
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
        .filter(|j| !RunState::of(&j.dir).is_ok_and(|s| s.is_done()))
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

/// The task of a CSV row (which has no task column): the spec's task whose
/// name is the row's data name or ends it after a `-` or `_` (`glue-rte` is
/// task `rte`); the empty task when the spec has none.
fn task_of<'a>(spec: &'a Spec, data: &str) -> Option<&'a str> {
    if spec.task.is_empty() {
        return Some("");
    }
    let names = |t: &&'a super::spec::Task| {
        data == t.name || [format!("-{}", t.name), format!("_{}", t.name)].iter().any(|s| data.ends_with(s.as_str()))
    };
    let mut hits = spec.task.iter().filter(names);
    match (hits.next(), hits.next()) {
        (Some(t), None) => Some(&t.name),
        _ => None,
    }
}

/// The points of a `results.csv` written by [`csv`] (without the sweep
/// settings, which the CSV does not keep).
pub fn points_from_csv(spec: &Spec, text: &str) -> anyhow::Result<Vec<Point>> {
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, l)| l).unwrap_or_default();
    if header != "model,data,method,sparsity,metric,value,seed" {
        bail!("not a table's results.csv: header `{header}`");
    }
    let mut points = Vec::new();
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let row = || format!("line {}", i + 1);
        let f: Vec<&str> = line.split(',').collect();
        let [model, data, method, sparsity, metric, value, seed] = f[..] else {
            bail!("{}: expected 7 fields, found {}", row(), f.len());
        };
        let task = task_of(spec, data).with_context(|| {
            format!("{}: data `{data}` names no single task of the spec (the task of a row is the one its data name ends with)", row())
        })?;
        points.push(Point {
            task: task.to_string(),
            method: method.to_string(),
            model: model.to_string(),
            data: data.to_string(),
            sparsity: sparsity.parse().with_context(|| format!("{}: sparsity `{sparsity}`", row()))?,
            setting: None,
            metric: metric.to_string(),
            value: value.parse().with_context(|| format!("{}: value `{value}`", row()))?,
            seed: seed.parse().with_context(|| format!("{}: seed `{seed}`", row()))?,
        });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::aggregate::sections;
    use crate::table::fixtures::{point, TASKS};
    use crate::table::spec::parse_spec;

    #[test]
    fn csv_reads_back_with_tasks_from_the_data_names() {
        let spec = parse_spec(TASKS).unwrap();
        let pt = |task: &str, method: &str, metric: &str, sparsity: f64, value: f64, seed: u64| Point {
            task: task.into(),
            data: format!("glue-{task}"),
            metric: metric.into(),
            ..point(method, sparsity, value, seed)
        };
        let points = vec![
            pt("rte", "dense", "accuracy", 0.0, 60.0, 42),
            pt("rte", "mi", "accuracy", 0.5, 58.123456, 42),
            pt("rte", "mi", "accuracy", 0.5, 57.0, 43),
            pt("mrpc", "dense", "f1", 0.0, 82.0, 42),
            pt("mrpc", "mi", "f1", 0.5, 80.0, 42),
        ];
        let back = points_from_csv(&spec, &csv(&points)).unwrap();
        assert_eq!(back.len(), points.len());
        assert_eq!((back[1].task.as_str(), back[1].value), ("rte", 58.1235));
        assert_eq!(back[4].task, "mrpc");
        let (a, b) = (sections(&spec, &points), sections(&spec, &back));
        assert_eq!(a[1].aggs[0].cells["mi"][&500], b[1].aggs[0].cells["mi"][&500]);
        assert_eq!(b[0].aggs[0].cells["mi"][&500].n, 2);

        let bad = csv(&[Point { data: "glue-sst2".into(), ..points[0].clone() }]);
        let e = points_from_csv(&spec, &bad).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("glue-sst2"), "{e}");
        assert!(points_from_csv(&spec, "a,b\n").is_err());
    }
}
