//! The report files of `results/<table>/`: the markdown tables (ours
//! beside the paper's), `README.md`, the plot's data, and writing
//! `results.csv`, `plot.svg`, `plot.png`, `command.txt` and `README.md`.

use std::path::Path;

use anyhow::Context;
use espalier_core::checkpoint::write_atomic;

use super::aggregate::{key, nearest, pct, reference_at, reference_for, sections, Aggregate, Section};
use super::claims::claims_markdown;
use super::collect::{collect, csv, points_from_csv};
use super::plan::Plan;
use super::spec::{SparsityMeasure, Spec, XAxis};

/// The table of one metric; `partial`: the seeds a cell should have, for a
/// partial report (a cell with fewer says how many it has).
fn markdown_table(spec: &Spec, agg: &Aggregate, partial: Option<usize>) -> String {
    let keys = agg.keys();
    let with_setting = !agg.settings.is_empty();
    let mut md = String::from("| sparsity | weights left |");
    let mut rule = String::from("|---:|---:|");
    if with_setting {
        md += " setting |";
        rule += "---|";
    }
    for m in &spec.method {
        md += &format!(" {} |", m.label());
        rule += "---:|";
    }
    md += &format!("\n{rule}\n");
    for k in keys {
        md += &format!("| {} | {} |", pct(k), pct(1000 - k));
        if with_setting {
            md += &format!(" {} |", agg.settings.get(&k).map(|v| v.join(", ")).unwrap_or_default());
        }
        for m in &spec.method {
            let nc = agg.not_converged.get(&m.name).and_then(|c| c.get(&k));
            let ours = match (agg.cells.get(&m.name).and_then(|c| c.get(&k)), nc) {
                (_, Some((bad, n))) => format!("not converged ({bad} of {n} seeds)"),
                (Some(s), None) => match partial.filter(|&want| s.n < want) {
                    Some(want) => format!("{} ({} of {want} seeds)", s.text(), s.n),
                    None => s.text(),
                },
                (None, None) => "–".to_string(),
            };
            match reference_at(spec, agg, &m.name, k) {
                Some(r) => md += &format!(" {ours} (paper {:.2}) |", r.value),
                None => md += &format!(" {ours} |"),
            }
        }
        md.push('\n');
    }
    md
}

fn references_markdown(spec: &Spec, sections: &[Section]) -> String {
    if spec.reference.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## The paper's numbers beside ours\n\n| method | metric | paper sparsity | paper | source | our nearest sparsity | ours | ours − paper |\n|---|---|---:|---:|---|---:|---:|---:|\n",
    );
    for r in &spec.reference {
        let label = spec.method.iter().find(|m| m.name == r.method).map_or("dense", |m| m.label());
        let agg = sections.iter().flat_map(|s| &s.aggs).find(|a| reference_for(spec, r, a));
        let metric = match (agg, &r.task) {
            // The average's metric name already says so.
            (Some(a), Some(t)) if t == "average" => a.metric.clone(),
            (Some(a), Some(t)) => format!("{t} {}", a.metric),
            (Some(a), None) => a.metric.clone(),
            (None, _) => r.metric.clone().unwrap_or_else(|| spec.table.metrics[0].clone()),
        };
        let ours = agg.and_then(|a| nearest(a, &r.method, r.sparsity));
        let (at, v, diff) = match ours {
            Some((k, s)) => (pct(k), s.text(), format!("{:+.2}", s.mean - r.value)),
            None => ("–".into(), "–".into(), "–".into()),
        };
        md += &format!(
            "| {label} | {metric} | {} | {:.2} | {} | {at} | {v} | {diff} |\n",
            pct(key(r.sparsity)),
            r.value,
            r.source
        );
    }
    md
}

/// The report: title, scale, dense reference, one table per metric, the
/// paper's numbers, the claims, the plot and the command.
pub fn report_markdown(spec: &Spec, plan: &Plan, sections: &[Section], missing: &[String]) -> String {
    let scale = &spec.scale[&plan.scale];
    let mut md = format!("# {}\n\n", spec.table.title);
    if !spec.table.description.trim().is_empty() {
        md += &format!("{}\n\n", spec.table.description.trim());
    }
    md += &format!("**Scale `{}`:** {}\n\n", plan.scale, scale.description.trim());
    if spec.table.sparsity == SparsityMeasure::Parameters {
        md += "Sparsity is the fraction of all the model's trainable parameters removed (a structured \
               method shrinks the model) or zeroed by masks (an unstructured one), so that both kinds \
               share rows.\n\n";
    }
    let seeds = plan.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    md += &format!(
        "Seeds: {seeds}{}. Every cell is an ordinary run directory under `{}` (`--report-only` re-renders \
         this report from them).\n",
        if plan.seeds.len() > 1 { " (mean ± sample standard deviation over seeds)" } else { " (one run per cell)" },
        plan.runs.display()
    );
    if !missing.is_empty() {
        md += &format!(
            "\n**Partial.** {} of {} runs are not finished yet, so they are not in the tables below, \
             and no claim is decided: {}. `{}` runs them (it resumes where it stopped).\n",
            missing.len(),
            plan.prereqs.len() + plan.cells.len(),
            missing.join(", "),
            plan.command
        );
    }
    for section in sections {
        for agg in &section.aggs {
            match section.label.as_str() {
                "" => md += &format!("\n## {}\n\n", agg.metric),
                label => md += &format!("\n## {label}: {}\n\n", agg.metric),
            }
            if let Some(d) = agg.dense {
                let paper = reference_at(spec, agg, "dense", 0)
                    .map_or(String::new(), |r| format!(" (paper {:.2}, {})", r.value, r.source));
                md += &format!("Dense reference: {}{paper}.\n\n", d.text());
            }
            md += &markdown_table(spec, agg, (!missing.is_empty()).then_some(plan.seeds.len()));
        }
    }
    md += &references_markdown(spec, sections);
    if missing.is_empty() {
        md += &claims_markdown(spec, sections);
    } else if !spec.claim.is_empty() {
        md += "\n## Claims\n\nNot decided: the table is partial.\n";
    }
    let plotted = plotted(sections);
    md += &format!(
        "\n![{}{} vs sparsity](plot.svg)\n\n`results.csv`: one row per run, sparsity and metric \
         (model,data,method,sparsity,metric,value,seed).\n\nProduced by:\n\n```\n{}\n```\n",
        plotted.map_or("", |(l, _)| l),
        plotted.map_or(" metric".to_string(), |(l, a)| format!("{}{}", if l.is_empty() { "" } else { ": " }, a.metric)),
        plan.command
    );
    md
}

/// What the plot shows: the primary metric of the average over tasks if
/// there is one, else of the first section; with its section's label.
fn plotted(sections: &[Section]) -> Option<(&str, &Aggregate)> {
    let s = sections.iter().rev().find(|s| s.label == "Average over tasks").or(sections.first())?;
    s.aggs.first().map(|a| (s.label.as_str(), a))
}

/// The plot's data: one series per method of the primary metric (mean ± the
/// sample standard deviation over seeds), the dense reference, the paper's
/// values of that task and metric, and a note saying what a point is.
pub fn plot_data(spec: &Spec, agg: &Aggregate) -> crate::plot::PlotData {
    let series = spec
        .method
        .iter()
        .map(|m| crate::plot::Series {
            label: m.label().to_string(),
            points: agg
                .cells
                .get(&m.name)
                .map(|c| c.iter().map(|(k, s)| (*k as f64 / 10.0, s.mean, half_interval(s))).collect())
                .unwrap_or_default(),
        })
        .collect();
    let paper = spec
        .reference
        .iter()
        .filter(|r| reference_for(spec, r, agg))
        .map(|r| crate::plot::PaperValue {
            series: spec.method.iter().position(|m| m.name == r.method),
            sparsity: r.sparsity * 100.0,
            value: r.value,
        })
        .collect();
    crate::plot::PlotData {
        title: match agg.task.as_str() {
            "" => spec.table.title.clone(),
            "average" => format!("{} (average over tasks)", spec.table.title),
            t => format!("{} ({t})", spec.table.title),
        },
        y_label: agg.metric.clone(),
        x: match spec.table.x_axis {
            XAxis::Sparsity => crate::plot::XScale::Sparsity,
            XAxis::WeightsLeftLog => crate::plot::XScale::WeightsLeftLog,
        },
        log_y: false,
        series,
        dense: agg.dense.map(|d| d.mean),
        paper,
        note: spread_note(agg),
    }
}

/// Half the width of the 95% confidence interval of a mean (0 for one seed):
/// the spread the claims are decided with.
fn half_interval(s: &super::aggregate::Stat) -> f64 {
    s.interval().map_or(0.0, |(lo, hi)| (hi - lo) / 2.0)
}

/// What a plotted point and its spread are.
fn spread_note(agg: &Aggregate) -> String {
    if agg.task == "average" {
        return "Each point: the mean over tasks of each task's mean over seeds (no spread drawn).".into();
    }
    let ns: Vec<usize> = agg.cells.values().flat_map(|c| c.values().map(|s| s.n)).collect();
    let (lo, hi) = (ns.iter().copied().min().unwrap_or(1), ns.iter().copied().max().unwrap_or(1));
    if hi <= 1 {
        return "One seed per point: no spread over seeds to draw.".into();
    }
    let seeds = if lo == hi { format!("{hi}") } else { format!("{lo} to {hi}") };
    format!(
        "Each point: the mean of {seeds} seeds. Shaded band and error bars: the 95% confidence interval of \
         the mean (Student's t over the seeds)."
    )
}

/// Writes `plot.svg` and `plot.png` of the report's sections into `out`.
fn write_plot(spec: &Spec, sections: &[Section], out: &Path) -> anyhow::Result<()> {
    let (_, agg) = plotted(sections).context("no metric to plot")?;
    let data = plot_data(spec, agg);
    write_atomic(&out.join("plot.svg"), crate::plot::svg(&data).as_bytes())?;
    write_atomic(&out.join("plot.png"), &crate::plot::png(&data)?)?;
    Ok(())
}

/// Writes the report files of a finished plan into `plan.out`.
/// Writes the report of the finished plan (with `partial`, of its finished
/// runs); returns its sections and the runs left out.
pub fn write_report(spec: &Spec, plan: &Plan, partial: bool) -> anyhow::Result<(Vec<Section>, Vec<String>)> {
    let (points, missing) = collect(spec, plan, partial)?;
    let sections = sections(spec, &points);
    let out = &plan.out;
    write_atomic(&out.join("results.csv"), csv(&points).as_bytes())?;
    write_plot(spec, &sections, out)?;
    let command =
        if missing.is_empty() { plan.command.clone() } else { format!("{} --report-only --partial", plan.command) };
    write_atomic(&out.join("command.txt"), format!("{command}\n").as_bytes())?;
    write_atomic(&out.join("README.md"), report_markdown(spec, plan, &sections, &missing).as_bytes())?;
    Ok((sections, missing))
}

/// Re-draws `plot.svg` and `plot.png` in `dir` from the `results.csv`
/// there, without the run directories (which are not kept with the
/// results). Points are read back at the CSV's precision (4 decimals).
pub fn write_plot_from_csv(spec: &Spec, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("results.csv");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let points = points_from_csv(spec, &text).with_context(|| format!("in {}", path.display()))?;
    write_plot(spec, &sections(spec, &points), dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::PaperValue;
    use crate::table::collect::Point;
    use crate::table::fixtures::{point, TASKS};
    use crate::table::spec::parse_spec;

    #[test]
    fn the_plot_gets_its_tasks_paper_values_and_says_what_the_spread_is() {
        let spec = parse_spec(TASKS).unwrap();
        let pt = |task: &str, method: &str, metric: &str, value: f64, seed: u64| Point {
            task: task.into(),
            metric: metric.into(),
            ..point(method, 0.5, value, seed)
        };
        let points = vec![
            pt("rte", "mi", "accuracy", 58.0, 42),
            pt("rte", "mi", "accuracy", 60.0, 43),
            pt("mrpc", "mi", "f1", 79.0, 42),
            pt("mrpc", "l1", "f1", 78.0, 42),
        ];
        let s = sections(&spec, &points);
        let rte = plot_data(&spec, &s[0].aggs[0]);
        assert!(rte.paper.is_empty());
        // Two seeds, 58 and 60: std √2, half interval 12.706·√2/√2.
        let (x, mean, half) = rte.series[0].points[0];
        assert_eq!((x, mean), (50.0, 59.0));
        assert!((half - 12.706).abs() < 1e-9, "{half}");
        assert!(rte.note.contains("mean of 2 seeds") && rte.note.contains("95% confidence interval"));
        let mrpc = plot_data(&spec, &s[1].aggs[0]);
        assert_eq!(mrpc.paper, [PaperValue { series: Some(0), sparsity: 50.0, value: 80.0 }]);
        assert!(mrpc.note.starts_with("One seed per point"), "{}", mrpc.note);
        assert!(mrpc.title.ends_with("(mrpc)"));
        let avg = plot_data(&spec, &s[2].aggs[0]);
        assert!(avg.note.contains("mean over tasks") && avg.title.ends_with("(average over tasks)"));
    }
}
