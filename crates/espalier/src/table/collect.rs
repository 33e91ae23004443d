//! Reading finished runs: the [`Point`]s (one per run, sparsity and
//! metric) of a plan from the runs' `summary.json` files, and the
//! `results.csv` they make.

use std::path::Path;

use anyhow::{bail, Context};

use super::plan::{Job, Plan};
use super::spec::{SparsityMeasure, Spec};
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
    /// Whether the method met its own stopping criterion ([`converged`]); a
    /// point that did not is shown as "not converged", never as a result.
    pub converged: bool,
}

/// Whether a run's method reached its own stopping criterion: `false` when
/// its method report says `"converged": false` (GReg's penalty phase ran out
/// of budget) or `"admm_converged": false` (ADMM's primal gap at the hard
/// projection above its threshold); `true` for every other run.
pub fn converged(s: &Summary) -> bool {
    let says_no = |k: &str| s.method_report.get(k).and_then(|v| v.as_bool()) == Some(false);
    !(says_no("converged") || says_no("admm_converged"))
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
/// `removable` (percent, unstructured pruning's row/column statistics), and
/// `select_seconds` (a structured run's time to choose its units).
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
    if metric == "select_seconds" {
        return s.structured.as_ref().filter(|_| last).map(|st| st.select_seconds);
    }
    if let Some(m) = metric.strip_suffix("@before-finetune") {
        return s.structured.as_ref().filter(|_| last).and_then(|st| st.metrics_before_finetune.get(m).copied());
    }
    metrics.get(metric).copied()
}

/// The sparsity of a pruned round of `s` by the table's `measure`. Under
/// [`SparsityMeasure::Parameters`] a masked run's zeroed weights count over
/// all its trainable parameters; a shrunk run's round already counts the
/// parameters it removed.
fn sparsity_of(measure: SparsityMeasure, s: &Summary, round: &Record) -> f64 {
    let Record::Round { sparsity, kept, prunable, .. } = round else { return 0.0 };
    match measure {
        SparsityMeasure::Parameters if s.structured.is_none() && s.parameters > 0 => {
            prunable.saturating_sub(*kept) as f64 / s.parameters as f64
        }
        _ => *sparsity,
    }
}

/// The points of a finished run: its pruned rounds (all of them, or the
/// last for a swept method), and its round 0 as the dense reference when
/// `dense` is set. A gradual schedule prunes within round 0: a round is
/// pruned when it is past round 0 or has a sparsity. A run that never
/// pruned (a method that is a dense training recipe) is its method's point
/// at sparsity 0 instead.
fn points_of(spec: &Spec, job: &Job, s: &Summary, method: &str, dense: bool) -> Vec<Point> {
    let rounds: Vec<&Record> = s.rounds.iter().collect();
    let mut out = Vec::new();
    let swept = job.method.is_some_and(|m| spec.method[m].sweep.is_some());
    let pruned = |r: &Record| matches!(r, Record::Round { round, sparsity, .. } if *round > 0 || *sparsity > 0.0);
    let never_pruned = !rounds.iter().any(|r| pruned(r));
    for (i, r) in rounds.iter().enumerate() {
        if !matches!(r, Record::Round { .. }) {
            continue;
        }
        let last = i + 1 == rounds.len();
        let is_pruned = pruned(r);
        // Round 0 of a run that prunes later is the dense reference.
        let reference = !is_pruned && !never_pruned;
        let (name, keep) = match (is_pruned, never_pruned) {
            (false, true) => (method, job.method.is_some() && last),
            (false, false) => ("dense", dense),
            (true, _) => (method, !swept || last),
        };
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
                    sparsity: if is_pruned { sparsity_of(spec.table.sparsity, s, r) } else { 0.0 },
                    setting: if reference { None } else { job.setting.clone() },
                    metric: metric.clone(),
                    value,
                    seed: s.seed,
                    converged: reference || converged(s),
                });
            }
        }
    }
    out
}

/// Every point of a finished plan, in plan order; the dense reference comes
/// from the first prerequisite (its final round) or else the first
/// method's round 0, once per seed. With `partial`, the runs that are not
/// finished are left out and named (the second value) instead of refused.
pub fn collect(spec: &Spec, plan: &Plan, partial: bool) -> anyhow::Result<(Vec<Point>, Vec<String>)> {
    let done = |j: &Job| RunState::of(&j.dir).is_ok_and(|s| s.is_done());
    let missing: Vec<&str> =
        plan.prereqs.iter().chain(&plan.cells).filter(|j| !done(j)).map(|j| j.id.as_str()).collect();
    if !missing.is_empty() && !partial {
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
    for job in plan.prereqs.iter().filter(is_first).filter(|j| done(j)) {
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
                    converged: true,
                });
            }
        }
    }
    let mut dense_seen: Vec<(Option<usize>, u64)> = Vec::new();
    for job in plan.cells.iter().filter(|j| done(j)) {
        let s = read_summary(&job.dir)?;
        let m = &spec.method[job.method.unwrap_or(0)];
        let dense = spec.prereq.is_empty() && job.method == Some(0) && !dense_seen.contains(&(job.task, job.seed));
        if dense {
            dense_seen.push((job.task, job.seed));
        }
        points.extend(points_of(spec, job, &s, &m.name, dense));
    }
    Ok((points, missing.into_iter().map(String::from).collect()))
}

/// The CSV: one row per run, sparsity and metric (the columns of a run's
/// `results.csv`, with the table's method names). A run that did not
/// converge keeps its rows and gets one more, metric `converged`, value 0.
pub fn csv(points: &[Point]) -> String {
    let mut out = String::from("model,data,method,sparsity,metric,value,seed\n");
    let row = |p: &Point, metric: &str, value: f64| {
        format!("{},{},{},{:.6},{},{:.4},{}\n", p.model, p.data, p.method, p.sparsity, metric, value, p.seed)
    };
    let mut flagged = Vec::new();
    for p in points {
        out += &row(p, &p.metric, p.value);
        if !p.converged {
            let flag = row(p, "converged", 0.0);
            if !flagged.contains(&flag) {
                flagged.push(flag);
            }
        }
    }
    out + &flagged.concat()
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
    let mut points: Vec<Point> = Vec::new();
    let mut failed_runs = Vec::new();
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let row = || format!("line {}", i + 1);
        let f: Vec<&str> = line.split(',').collect();
        let [model, data, method, sparsity, metric, value, seed] = f[..] else {
            bail!("{}: expected 7 fields, found {}", row(), f.len());
        };
        if metric == "converged" {
            if value.parse::<f64>().with_context(|| format!("{}: value `{value}`", row()))? < 0.5 {
                failed_runs.push((model, data, method, sparsity, seed));
            }
            continue;
        }
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
            converged: true,
        });
    }
    for (model, data, method, sparsity, seed) in failed_runs {
        let (sparsity, seed) = (sparsity.parse::<f64>().ok(), seed.parse::<u64>().ok());
        for p in points.iter_mut().filter(|p| {
            p.model == model
                && p.data == data
                && p.method == method
                && Some(p.sparsity) == sparsity
                && Some(p.seed) == seed
        }) {
            p.converged = false;
        }
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

    /// A run whose method did not converge is kept in the CSV (its values
    /// and a `converged = 0` row), shown as "not converged" in the table,
    /// left out of the cell's mean, and leaves the claim undecided there.
    #[test]
    fn a_run_that_did_not_converge_is_not_a_result() {
        use crate::table::claims::{check_claims, Verdict};
        use crate::table::fixtures::{opts, SPEC};
        use crate::table::report::report_markdown;
        let spec = parse_spec(SPEC).unwrap();
        let mut points = Vec::new();
        for seed in [0, 1, 2] {
            points.push(point("a", 0.5, 90.0 + seed as f64, seed));
            points.push(point("b", 0.5, 80.0 + seed as f64, seed));
            // At 70%, a's seed 1 ran out of budget before its criterion.
            points.push(Point { converged: seed != 1, ..point("a", 0.7, 85.0 + seed as f64, seed) });
            points.push(point("b", 0.7, 70.0 + seed as f64, seed));
        }
        let text = csv(&points);
        assert_eq!(
            text.lines().filter(|l| l.contains(",converged,")).collect::<Vec<_>>(),
            ["m,d,a,0.700000,converged,0.0000,1"]
        );
        let back = points_from_csv(&spec, &text).unwrap();
        assert_eq!(back, points);

        let sec = sections(&spec, &back);
        let agg = &sec[0].aggs[0];
        assert!(!agg.cells["a"].contains_key(&700) && agg.cells["a"].contains_key(&500));
        assert_eq!(agg.not_converged["a"][&700], (1, 3));
        assert_eq!(agg.keys(), [500, 700]);
        let md = report_markdown(&spec, &crate::table::plan::plan(&spec, &opts()).unwrap(), &sec, &[]);
        assert!(md.contains("| 70.0% | 30.0% | not converged (1 of 3 seeds) | 71.00 ± 1.00 |"), "{md}");
        let (_, _, verdict, evidence) = check_claims(&spec, &sec).remove(0);
        assert_eq!(verdict, Verdict::Inconclusive, "{evidence}");
        assert!(evidence.contains("70.0%: a not converged (1 of 3 seeds)"), "{evidence}");

        // Every seed converged: the same data decides the claim.
        let all: Vec<Point> = points.iter().map(|p| Point { converged: true, ..p.clone() }).collect();
        assert_eq!(check_claims(&spec, &sections(&spec, &all)).remove(0).2, Verdict::Pass);
    }

    fn round(round: usize, sparsity: f64, kept: usize, prunable: usize, accuracy: f64) -> Record {
        Record::Round {
            round,
            sparsity,
            kept,
            prunable,
            test_loss: 0.0,
            metrics: [("accuracy".to_string(), accuracy)].into(),
            best: None,
            lines: None,
        }
    }

    /// A finished run's summary (a shrunk one when `structured`).
    fn summary(structured: bool, parameters: usize, rounds: Vec<Record>) -> Summary {
        let report = serde_json::json!({
            "method": "mi", "widths": {}, "residual": {}, "select_seconds": 1.0,
            "parameters_before": 0, "parameters_after": parameters,
            "metrics_before_finetune": {}, "calibration": 8,
        });
        serde_json::from_value(serde_json::json!({
            "name": "r", "model": "m", "data": "d", "method": "x", "seed": 0, "metric": "accuracy",
            "rounds": rounds, "sparsity": { "layers": [] }, "parameters": parameters,
            "structured": if structured { report } else { serde_json::Value::Null },
        }))
        .unwrap()
    }

    /// A run that never pruned (a dense recipe as a method) is its method's
    /// point at sparsity 0, not a dense reference; a pruning run's round 0
    /// is the dense reference only where asked; a gradual run's round 0 is
    /// its result.
    #[test]
    fn a_run_that_never_pruned_is_its_methods_point_at_zero() {
        use crate::table::fixtures::{opts, SPEC};
        let spec = parse_spec(SPEC).unwrap();
        let p = crate::table::plan::plan(&spec, &opts()).unwrap();
        let b = &p.cells[2];
        let dense_only = summary(false, 100, vec![round(0, 0.0, 100, 100, 91.0)]);
        let pts = points_of(&spec, b, &dense_only, "b", true);
        assert_eq!(pts.len(), 1);
        assert_eq!((pts[0].method.as_str(), pts[0].sparsity, pts[0].value), ("b", 0.0, 91.0));
        let pruned = summary(false, 100, vec![round(0, 0.0, 100, 100, 91.0), round(1, 0.5, 50, 100, 89.0)]);
        let names = |dense| points_of(&spec, b, &pruned, "b", dense).into_iter().map(|p| (p.method, p.sparsity));
        assert_eq!(names(true).collect::<Vec<_>>(), [("dense".to_string(), 0.0), ("b".to_string(), 0.5)]);
        assert_eq!(names(false).collect::<Vec<_>>(), [("b".to_string(), 0.5)]);
        // A gradual schedule prunes within round 0: its one round is the result.
        let gradual = summary(false, 100, vec![round(0, 0.5, 50, 100, 88.0)]);
        let pts = points_of(&spec, b, &gradual, "b", true);
        assert_eq!(pts.len(), 1);
        assert_eq!((pts[0].method.as_str(), pts[0].sparsity, pts[0].value), ("b", 0.5, 88.0));
    }

    /// Under `sparsity = "parameters"` a masked run's zeroed weights count
    /// over all its parameters and a shrunk run's removed parameters as it
    /// recorded them, so that the two meet in one row; the default measure
    /// keeps each run's own.
    #[test]
    fn parameter_sparsity_puts_masked_and_shrunk_runs_in_one_row() {
        use crate::table::aggregate::key;
        let run = |structured: bool, sparsity: f64, kept: usize, prunable: usize, parameters: usize| {
            let r = round(1, sparsity, kept, prunable, 90.0);
            (summary(structured, parameters, vec![r.clone()]), r)
        };
        // Half of 4,000 encoder weights masked in an 8,000-parameter model;
        // the shrink removed 2,003 of 8,000 parameters (biases with the units).
        let (masked, r1) = run(false, 0.5, 2000, 4000, 8000);
        let (shrunk, r2) = run(true, 0.250375, 5997, 8000, 5997);
        let by = |m, s: &Summary, r: &Record| sparsity_of(m, s, r);
        assert_eq!(by(SparsityMeasure::Parameters, &masked, &r1), 0.25);
        assert_eq!(by(SparsityMeasure::Parameters, &shrunk, &r2), 0.250375);
        assert_eq!(
            key(by(SparsityMeasure::Parameters, &masked, &r1)),
            key(by(SparsityMeasure::Parameters, &shrunk, &r2))
        );
        assert_eq!(by(SparsityMeasure::Run, &masked, &r1), 0.5);
        assert_eq!(by(SparsityMeasure::Run, &shrunk, &r2), 0.250375);

        let spec = |measure: &str| {
            parse_spec(
                &crate::table::fixtures::SPEC
                    .replace("scale = \"small\"\n", &format!("scale = \"small\"\n    sparsity = \"{measure}\"\n")),
            )
            .unwrap()
        };
        assert_eq!(spec("parameters").table.sparsity, SparsityMeasure::Parameters);
        assert_eq!(spec("run").table.sparsity, SparsityMeasure::Run);
        let e = parse_spec(
            &crate::table::fixtures::SPEC
                .replace("scale = \"small\"\n", "scale = \"small\"\n    sparsity = \"weights\"\n"),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("weights"), "{e:#}");
    }
}
