//! Paper tables: a table spec (TOML under `configs/tables/`) names a set of
//! ordinary experiment runs (methods × sparsities × seeds at a stated
//! scale), `espalier table SPEC` runs the ones that are missing, and the
//! results are rendered to `results/<table>/`: `README.md` (mean ± std over
//! seeds, the paper's values beside ours, the dense reference, the spec's
//! claims checked as PASS/FAILS), `results.csv`, `plot.png`, `plot.svg` and
//! `command.txt`.
//!
//! Every cell is a plain run directory under `runs/tables/<table>/<scale>/`:
//! a finished cell (its `summary.json` present, its `config.toml` the same
//! experiment) is never run again, an unfinished one resumes from its
//! checkpoint, so a killed table continues where it stopped. Cells are run
//! as child processes (`espalier run CONFIG --set ... --out DIR`), up to
//! `--jobs` at a time. The report is a pure function of the spec and the
//! runs' `summary.json` files: `--report-only` renders the same bytes again.
//!
//! A spec:
//!
//! ```toml
//! [table]
//! name = "imp-lenet300"            # results/<name>/
//! title = "IMP on LeNet-300-100, MNIST"
//! metrics = ["accuracy"]           # the first is plotted and checked
//! scale = "small"                  # the [scale.*] section used by default
//! seeds = [0]
//! x_axis = "sparsity"              # or "weights_left_log" (lottery-ticket plots)
//! sparsity = "run"                 # or "parameters": removed or zeroed over all parameters
//!
//! [scale.small]                    # --set overrides of every run, stated in the report
//! description = "10k-image MNIST subset, 2 dense epochs"
//! sets = ['data.path="mnist-subset"', "train.epochs=2"]
//! prereq_sets = []                 # only for the [[prereq]] runs (cell_sets: only the cells)
//! vars = { epochs = 3 }            # `${epochs}` in any `sets` entry of the spec
//!
//! [[prereq]]                       # runs the cells start from (per seed)
//! name = "dense"
//! config = "configs/structured/mlp1000-dense.toml"
//! # dir = "runs/mlp1000-dense"     # a run shared with `espalier run` (else under runs/tables/)
//! # seed = 42                      # one run shared by every seed's cells (else one per seed)
//!
//! [[method]]
//! name = "l1"                      # CSV method column and run directory
//! label = "L1 norm"                # column header (default: name)
//! config = "configs/structured/mlp1000-l1.toml"
//! sets = []
//! from = "dense"                   # init_from = that prereq's run directory
//! sweep = { key = "structured.keep", values = [500, 250, 100] }
//!
//! [[reference]]                    # the paper's numbers (method "dense" for the dense one)
//! method = "l1"
//! sparsity = 0.9
//! value = 97.0
//! source = "Paper et al. 2021, Table 1"
//!
//! [[claim]]                        # checked against our numbers: PASS / FAILS
//! text = "L1 beats random at every sparsity"
//! kind = "beats"                   # beats | within_dense | near_paper
//! a = "l1"
//! b = "random"
//! # tolerance = 0.0, min_sparsity / max_sparsity, metric = "accuracy@before-finetune"
//! ```
//!
//! Several tasks (GLUE): `[[task]]` sections (`name`, `sets` such as
//! `data.task="rte"`, optionally `metrics`: the task's own names for
//! `table.metrics`, e.g. `["f1"]` for MRPC) run every prerequisite and cell
//! once per task under `<runs>/<task>/`; `${task}` expands in configs, sets
//! and prerequisite `dir`s; the report has a section per task and, with
//! `table.average = true`, the mean over tasks (GLUE-style). References
//! then name their `task` (or `average`); a claim is checked on every
//! section unless it names one.
//!
//! A swept method reports the last round of each run; an unswept one (IMP)
//! reports every pruning round of its run. Rows are sparsities rounded to
//! 0.1 % (`table.sparsity = "parameters"` counts every run's removed or
//! zeroed parameters over all of them, so structured and unstructured
//! methods meet at equal parameter sparsity). The dense reference is the
//! first prerequisite's result, or else round 0 of the first method's
//! runs. Claims compare the seed means as the report prints them.
//!
//! By job: `spec` (the spec's types, parsing, validation), `plan` (runs,
//! directories, overrides; running the missing ones), `collect` (points
//! from the runs' summaries; the CSV), `aggregate` (seeds and tasks
//! aggregated into the report's sections), `claims` (verdicts), `report`
//! (markdown, the plot's data, writing `results/<table>/`), `slurm` (the
//! table as Slurm job arrays: `--slurm DIR [--submit]`), `status` (where
//! every run is: `--status`). This file has
//! the `espalier table` entry point and re-exports the public API.

mod aggregate;
mod claims;
mod collect;
#[cfg(test)]
mod fixtures;
mod plan;
mod report;
mod slurm;
mod spec;
mod status;

pub use aggregate::{aggregate, average, sections, Aggregate, Section, Stat};
pub use claims::{check_claim, check_claims, Verdict};
pub use collect::{collect, csv, points_from_csv, Point};
pub use plan::{plan, run_plan, Job, Plan, Progress, TableOptions};
pub use report::{plot_data, report_markdown, write_plot_from_csv, write_report};
pub use slurm::{write_slurm, CountOrText, SlurmArgs, SlurmJobs, SlurmResources};
pub use spec::{
    load_spec, parse_spec, Claim, ClaimKind, Method, Prereq, Reference, Scale, SparsityMeasure, Spec, Sweep, TableMeta,
    Task, XAxis,
};
pub use status::{status, status_text, RunState};

use plan::job_experiment;

/// `espalier table`: runs what is missing (unless `report_only`), then
/// writes the report. Returns whether the table is complete.
pub fn table(opts: &TableOptions) -> anyhow::Result<bool> {
    let spec = load_spec(&opts.spec_path)?;
    let plan = plan(&spec, opts)?;
    for job in plan.prereqs.iter().chain(&plan.cells) {
        job_experiment(job)?;
    }
    if !opts.report_only {
        let p = run_plan(&plan, opts)?;
        println!("table {}: ran {} runs, skipped {} finished runs", spec.table.name, p.ran, p.skipped);
        if !p.complete {
            println!("stopped early (--max-cells); run the same command again to continue");
            return Ok(false);
        }
    }
    let (sections, missing) = write_report(&spec, &plan, opts.partial)?;
    if !missing.is_empty() {
        println!("partial report: {} runs not finished, no claim decided", missing.len());
        println!("wrote {}", plan.out.display());
        return Ok(false);
    }
    for (c, label, v, evidence) in check_claims(&spec, &sections) {
        let on = if label.is_empty() { String::new() } else { format!(" ({label})") };
        println!("{:<7} {}{on}: {evidence}", v.word(), c.text);
    }
    println!("wrote {}", plan.out.display());
    Ok(true)
}

/// `espalier plot`: re-draws a table's `plot.svg` and `plot.png` from the
/// `results.csv` in its report directory (no run directories needed).
/// Returns that directory.
pub fn replot(opts: &TableOptions) -> anyhow::Result<std::path::PathBuf> {
    let spec = load_spec(&opts.spec_path)?;
    let plan = plan(&spec, opts)?;
    write_plot_from_csv(&spec, &plan.out)?;
    Ok(plan.out)
}
