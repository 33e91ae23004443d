//! Seeds and tasks aggregated: [`Stat`] (mean ± std over seeds), the
//! [`Aggregate`] of one metric per method and sparsity row, the average
//! over tasks, the report's [`Section`]s, and looking up our value or the
//! paper's at a row.

use std::collections::BTreeMap;

use super::collect::Point;
use super::spec::{Reference, Spec};

/// Mean, sample standard deviation (0 for one value) and count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub std: f64,
    /// Number of seeds.
    pub n: usize,
}

impl Stat {
    pub(super) fn of(v: &[f64]) -> Stat {
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n.max(1) as f64;
        let std = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        Stat { mean, std, n }
    }

    /// The two-sided 95% confidence interval of the mean (Student's t with
    /// n − 1 degrees of freedom); `None` for fewer than two values.
    pub fn interval(&self) -> Option<(f64, f64)> {
        (self.n >= 2).then(|| {
            let half = t975(self.n - 1) * self.std / (self.n as f64).sqrt();
            (self.mean - half, self.mean + half)
        })
    }

    pub(super) fn text(&self) -> String {
        if self.n > 1 {
            format!("{:.2} ± {:.2}", self.mean, self.std)
        } else {
            format!("{:.2}", self.mean)
        }
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
pub(super) fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        // Beyond the table: 1.96 + 2.4/df is within 0.002 of the quantile.
        _ => 1.96 + 2.4 / df as f64,
    }
}

/// Sparsity rounded to 0.1 % (the rows of the table): runs that reach
/// the same sparsity by different routes share a row.
pub(super) fn key(sparsity: f64) -> i64 {
    (sparsity * 1000.0).round() as i64
}

/// The aggregated table of one metric: (method, sparsity key) → stat.
#[derive(Clone, Debug)]
pub struct Aggregate {
    /// Task name (empty without tasks, `average` for the mean over tasks).
    pub task: String,
    /// The entry of `table.metrics` it stands for (claims and references name these).
    pub column: String,
    /// Metric name (the task's own: `f1` where the column is `accuracy`).
    pub metric: String,
    /// Per method, per sparsity key.
    pub cells: BTreeMap<String, BTreeMap<i64, Stat>>,
    /// Sweep settings seen per sparsity key.
    pub settings: BTreeMap<i64, Vec<String>>,
    /// The dense reference.
    pub dense: Option<Stat>,
    /// The values behind `cells`, per seed (for paired comparisons).
    pub seeds: BTreeMap<String, BTreeMap<i64, BTreeMap<u64, f64>>>,
    /// The dense reference's values per seed.
    pub dense_seeds: BTreeMap<u64, f64>,
    /// Cells whose method did not reach its own stopping criterion in some
    /// seed: (seeds not converged, seeds run). Such a cell has no entry in
    /// `cells` or `seeds`: it is not a result.
    pub not_converged: BTreeMap<String, BTreeMap<i64, (usize, usize)>>,
}

impl Aggregate {
    /// The sparsity keys of the table's rows: every cell's, converged or not.
    pub fn keys(&self) -> Vec<i64> {
        let mut k: Vec<i64> = self.cells.values().flat_map(|m| m.keys().copied()).collect();
        k.extend(self.not_converged.values().flat_map(|m| m.keys().copied()));
        k.sort_unstable();
        k.dedup();
        k
    }
}

/// Aggregates the points of one task's metric over seeds; `column` is the
/// entry of `table.metrics` the metric stands for.
pub fn aggregate(points: &[Point], task: &str, metric: &str, column: &str) -> Aggregate {
    let mut values: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    let mut settings: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut dense = Vec::new();
    let mut seeds: BTreeMap<String, BTreeMap<i64, BTreeMap<u64, f64>>> = BTreeMap::new();
    let mut dense_seeds = BTreeMap::new();
    let mut not_converged: BTreeMap<String, BTreeMap<i64, (usize, usize)>> = BTreeMap::new();
    for p in points.iter().filter(|p| p.metric == metric && p.task == task) {
        if p.method == "dense" {
            dense.push(p.value);
            dense_seeds.insert(p.seed, p.value);
            continue;
        }
        if !p.converged {
            not_converged.entry(p.method.clone()).or_default().entry(key(p.sparsity)).or_default().0 += 1;
        }
        values.entry((p.method.clone(), key(p.sparsity))).or_default().push(p.value);
        seeds.entry(p.method.clone()).or_default().entry(key(p.sparsity)).or_default().insert(p.seed, p.value);
        if let Some(s) = &p.setting {
            let v = settings.entry(key(p.sparsity)).or_default();
            if !v.contains(s) {
                v.push(s.clone());
            }
        }
    }
    let mut cells: BTreeMap<String, BTreeMap<i64, Stat>> = BTreeMap::new();
    for ((m, k), v) in values {
        match not_converged.get_mut(&m).and_then(|c| c.get_mut(&k)) {
            Some(nc) => {
                nc.1 = v.len();
                if let Some(by_k) = seeds.get_mut(&m) {
                    by_k.remove(&k);
                }
            }
            None => {
                cells.entry(m).or_default().insert(k, Stat::of(&v));
            }
        }
    }
    Aggregate {
        task: task.into(),
        column: column.into(),
        metric: metric.into(),
        cells,
        settings,
        dense: (!dense.is_empty()).then(|| Stat::of(&dense)),
        seeds,
        dense_seeds,
        not_converged,
    }
}

/// The mean over tasks of each method's (seed-mean) value, where every task
/// has one at that sparsity: the GLUE-style average. Its cells carry no
/// standard deviation (n = 1).
pub fn average(per_task: &[&Aggregate], column: &str) -> Aggregate {
    let mean_of = |v: Vec<f64>| Stat { mean: v.iter().sum::<f64>() / v.len() as f64, std: 0.0, n: 1 };
    let mut cells: BTreeMap<String, BTreeMap<i64, Stat>> = BTreeMap::new();
    if let Some(first) = per_task.first() {
        for (m, by_key) in &first.cells {
            for k in by_key.keys() {
                let v: Option<Vec<f64>> =
                    per_task.iter().map(|a| a.cells.get(m).and_then(|c| c.get(k)).map(|s| s.mean)).collect();
                if let Some(v) = v {
                    cells.entry(m.clone()).or_default().insert(*k, mean_of(v));
                }
            }
        }
    }
    let mut not_converged: BTreeMap<String, BTreeMap<i64, (usize, usize)>> = BTreeMap::new();
    for a in per_task {
        for (m, by_key) in &a.not_converged {
            for (k, (nc, n)) in by_key {
                let e = not_converged.entry(m.clone()).or_default().entry(*k).or_default();
                *e = (e.0 + nc, e.1 + n);
            }
        }
    }
    let dense: Option<Vec<f64>> = per_task.iter().map(|a| a.dense.map(|d| d.mean)).collect();
    let mut names: Vec<&str> = Vec::new();
    for a in per_task {
        if !names.contains(&a.metric.as_str()) {
            names.push(&a.metric);
        }
    }
    Aggregate {
        task: "average".into(),
        column: column.into(),
        metric: format!("average of {}", names.join(" / ")),
        cells,
        settings: BTreeMap::new(),
        dense: dense.filter(|v| !v.is_empty()).map(mean_of),
        seeds: BTreeMap::new(),
        dense_seeds: BTreeMap::new(),
        not_converged,
    }
}

/// One section of the report: a task's aggregates (one per entry of
/// `table.metrics`), or the average over tasks.
#[derive(Clone, Debug)]
pub struct Section {
    /// The task's label (empty without tasks).
    pub label: String,
    /// One aggregate per reported metric.
    pub aggs: Vec<Aggregate>,
}

/// The report's sections: one per task (one in all without tasks), then
/// the average over tasks when the spec asks for it.
pub fn sections(spec: &Spec, points: &[Point]) -> Vec<Section> {
    let tasks = spec.task_indices();
    let mut out: Vec<Section> = tasks
        .iter()
        .map(|&ti| Section {
            label: ti.map_or(String::new(), |i| spec.task[i].label().to_string()),
            aggs: spec
                .metrics_of(ti)
                .iter()
                .zip(&spec.table.metrics)
                .map(|(m, col)| aggregate(points, spec.task_name(ti), m, col))
                .collect(),
        })
        .collect();
    if spec.table.average {
        let aggs = (0..spec.table.metrics.len())
            .map(|i| average(&out.iter().map(|s| &s.aggs[i]).collect::<Vec<_>>(), &spec.table.metrics[i]))
            .collect();
        out.push(Section { label: "Average over tasks".into(), aggs });
    }
    out
}

pub(super) fn pct(k: i64) -> String {
    format!("{:.1}%", k as f64 / 10.0)
}

/// Whether a paper value belongs to an aggregate's task and metric.
pub(super) fn reference_for(spec: &Spec, r: &Reference, agg: &Aggregate) -> bool {
    r.task.as_deref().unwrap_or("") == agg.task && r.metric.as_deref().unwrap_or(&spec.table.metrics[0]) == agg.column
}

/// The paper's value for (method, sparsity key) of an aggregate, if the spec has one there.
pub(super) fn reference_at<'a>(spec: &'a Spec, agg: &Aggregate, method: &str, k: i64) -> Option<&'a Reference> {
    spec.reference.iter().find(|r| r.method == method && key(r.sparsity) == k && reference_for(spec, r, agg))
}

/// Our value nearest to a reference: (sparsity key, stat).
pub(super) fn nearest(agg: &Aggregate, method: &str, sparsity: f64) -> Option<(i64, Stat)> {
    if method == "dense" {
        return agg.dense.map(|d| (0, d));
    }
    let cells = agg.cells.get(method)?;
    let k = key(sparsity);
    cells.iter().min_by_key(|(kk, _)| (**kk - k).abs()).map(|(kk, s)| (*kk, *s))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::table::claims::{check_claims, Verdict};
    use crate::table::fixtures::{opts, point, TASKS};
    use crate::table::plan::plan;
    use crate::table::report::report_markdown;
    use crate::table::spec::parse_spec;

    #[test]
    fn tasks_multiply_the_runs_and_are_averaged() {
        let spec = parse_spec(TASKS).unwrap();
        let p = plan(&spec, &opts()).unwrap();
        let ids: Vec<&str> = p.prereqs.iter().chain(&p.cells).map(|j| j.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "rte/prereq/dense/seed42",
                "mrpc/prereq/dense/seed42",
                "rte/mi/seed42",
                "rte/l1/seed42",
                "mrpc/mi/seed42",
                "mrpc/l1/seed42"
            ]
        );
        let pre = &p.prereqs[1];
        assert_eq!(pre.config, Path::new("configs/glue/mrpc.toml"));
        assert_eq!(pre.dir, Path::new("runs/glue-mrpc-minilm"));
        assert_eq!(pre.sets, ["data.task=\"mrpc\"", "data.eval_split=\"test\"", "seed=42"]);
        let cell = &p.cells[2];
        assert_eq!(cell.dir, Path::new("runs/tables/g/small/mrpc/mi/seed42"));
        assert_eq!(
            cell.sets,
            [
                "data.task=\"mrpc\"",
                "data.eval_split=\"test\"",
                "data.limit_train=100",
                "init_from=\"runs/glue-mrpc-minilm\"",
                "seed=42"
            ]
        );

        let pt = |task: &str, method: &str, metric: &str, sparsity: f64, value: f64| Point {
            task: task.into(),
            metric: metric.into(),
            ..point(method, sparsity, value, 42)
        };
        let points = vec![
            pt("rte", "dense", "accuracy", 0.0, 60.0),
            pt("rte", "mi", "accuracy", 0.5, 58.0),
            pt("rte", "l1", "accuracy", 0.5, 57.0),
            pt("mrpc", "dense", "f1", 0.0, 82.0),
            pt("mrpc", "mi", "f1", 0.5, 80.0),
            pt("mrpc", "l1", "f1", 0.5, 81.0),
            // Another task's metric name in a task is not reported.
            pt("mrpc", "mi", "accuracy", 0.5, 1.0),
        ];
        let sections = sections(&spec, &points);
        assert_eq!(
            sections.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(),
            ["rte", "MRPC", "Average over tasks"]
        );
        assert_eq!(sections[1].aggs[0].metric, "f1");
        assert_eq!(sections[1].aggs[0].cells["mi"][&500].mean, 80.0);
        let avg = &sections[2].aggs[0];
        assert_eq!(
            (avg.cells["mi"][&500].mean, avg.cells["l1"][&500].mean, avg.dense.unwrap().mean),
            (69.0, 69.0, 71.0)
        );
        let verdicts: Vec<(&str, Verdict)> =
            check_claims(&spec, &sections).into_iter().map(|(_, l, v, _)| (l, v)).collect();
        assert_eq!(
            verdicts,
            [("rte", Verdict::Pass), ("MRPC", Verdict::Fails), ("Average over tasks", Verdict::Fails)]
        );
        let md = report_markdown(&spec, &plan(&spec, &opts()).unwrap(), &sections, &[]);
        assert!(md.contains("## MRPC: f1") && md.contains("80.00 (paper 80.00)"), "{md}");
        assert!(md.contains("## Average over tasks: average of accuracy / f1"), "{md}");
        assert!(md.contains("| mi | mrpc f1 | 50.0% | 80.00 |"), "{md}");
    }
}
