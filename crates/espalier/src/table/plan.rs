//! Resolving a spec into runs and running them: [`TableOptions`], the
//! [`Plan`] of prerequisite and cell [`Job`]s (directories, `--set`
//! overrides, the command), whether a run is finished, and running the
//! missing ones as child processes, `--jobs` at a time.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use super::spec::{value_text, Spec};
use crate::config::{self, ConfigError, Experiment};

/// How to run a table.
#[derive(Clone, Debug)]
pub struct TableOptions {
    /// The spec file (as given: it is written into the command).
    pub spec_path: PathBuf,
    /// The scale (default: the spec's).
    pub scale: Option<String>,
    /// `--data-dir` passed to every run.
    pub data_dir: Option<PathBuf>,
    /// Root of the cells' run directories (default `runs/tables/<name>/<scale>`).
    pub runs: Option<PathBuf>,
    /// Where the report goes (default `results/<name>`, or
    /// `results/<name>-<scale>` for another scale than the spec's).
    pub out: Option<PathBuf>,
    /// Cells run at once.
    pub jobs: usize,
    /// Stop after this many newly started runs (the table stays resumable).
    pub max_cells: Option<usize>,
    /// Only re-render the report from existing runs.
    pub report_only: bool,
    /// With `report_only`: render the runs that are finished and say which
    /// are not, with no claim decided (a table that spans sessions).
    pub partial: bool,
    /// Quiet children.
    pub quiet: bool,
}

/// One run of the table: a prerequisite or a cell.
#[derive(Clone, Debug)]
pub struct Job {
    /// `prereq/<name>/seed<s>` or `<method>/<setting>/seed<s>`: for logs.
    pub id: String,
    /// Experiment config.
    pub config: PathBuf,
    /// All overrides, in order.
    pub sets: Vec<String>,
    /// Run directory.
    pub dir: PathBuf,
    /// The task (index into `spec.task`; None when the spec has none).
    pub task: Option<usize>,
    /// The method (None for prerequisites).
    pub method: Option<usize>,
    /// The sweep value's text (`keep=250`), if any.
    pub setting: Option<String>,
    /// Seed.
    pub seed: u64,
    /// The run directories of the prerequisites it starts from (the
    /// method's `from`; every prerequisite planned before it for a method
    /// without one): it starts when they have finished.
    pub needs: Vec<PathBuf>,
}

/// The resolved plan of a table at one scale.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Scale name.
    pub scale: String,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Prerequisite runs (run first).
    pub prereqs: Vec<Job>,
    /// The cells.
    pub cells: Vec<Job>,
    /// Root of the run directories.
    pub runs: PathBuf,
    /// Report directory.
    pub out: PathBuf,
    /// The command that produces the table.
    pub command: String,
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '=' => '-',
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => c,
            _ => '_',
        })
        .collect()
}

fn toml_string(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

/// Resolves the spec into runs: directories, overrides, the command.
pub fn plan(spec: &Spec, opts: &TableOptions) -> Result<Plan, ConfigError> {
    let scale_name = opts.scale.clone().unwrap_or_else(|| spec.table.scale.clone());
    let scale = spec.scale.get(&scale_name).ok_or_else(|| {
        ConfigError(format!(
            "{}: no [scale.{scale_name}] (scales: {})",
            opts.spec_path.display(),
            spec.scale.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let seeds = scale.seeds.clone().unwrap_or_else(|| spec.table.seeds.clone());
    let runs =
        opts.runs.clone().unwrap_or_else(|| PathBuf::from("runs/tables").join(&spec.table.name).join(&scale_name));
    let out = opts.out.clone().unwrap_or_else(|| {
        let name = if scale_name == spec.table.scale {
            spec.table.name.clone()
        } else {
            format!("{}-{scale_name}", spec.table.name)
        };
        PathBuf::from("results").join(name)
    });
    let expand_all = |sets: &[String], builtins: &[(&str, String)]| {
        sets.iter().map(|x| scale.expand(x, &scale_name, builtins)).collect::<Result<Vec<_>, _>>()
    };
    let expand_path = |p: &Path, builtins: &[(&str, String)]| {
        scale.expand(&p.to_string_lossy(), &scale_name, builtins).map(PathBuf::from)
    };
    let tasks = spec.task_indices();
    let mut prereqs: Vec<Job> = Vec::new();
    let mut prereq_dirs = BTreeMap::new();
    let mut cells = Vec::new();
    for &ti in &tasks {
        let task = ti.map(|i| &spec.task[i]);
        let task_sets = task.map_or(&[][..], |t| &t.sets[..]);
        let root = task.map_or_else(|| runs.clone(), |t| runs.join(&t.name));
        let prefix = task.map_or(String::new(), |t| format!("{}/", t.name));
        for p in &spec.prereq {
            for seed in p.seed.map_or_else(|| seeds.clone(), |s| vec![s]) {
                let builtins = spec.builtins(ti, seed);
                let dir = match &p.dir {
                    Some(d) => expand_path(Path::new(d), &builtins)?,
                    None => root.join("prereq").join(&p.name).join(format!("seed{seed}")),
                };
                let id = format!("{prefix}prereq/{}/seed{seed}", p.name);
                if let Some(other) = prereqs.iter().find(|j| j.dir == dir) {
                    return Err(ConfigError(format!(
                        "{}: prerequisites {} and {id} share the run directory {}; put `${{seed}}` or `${{task}}` \
                         in its `dir`",
                        opts.spec_path.display(),
                        other.id,
                        dir.display()
                    )));
                }
                let mut sets = task_sets.to_vec();
                sets.extend(p.sets.iter().cloned());
                sets.extend(scale.sets.iter().cloned());
                sets.extend(scale.prereq_sets.iter().cloned());
                sets.push(format!("seed={seed}"));
                // A prerequisite with a fixed seed is every seed's.
                let cell_seeds = if p.seed.is_some() { seeds.clone() } else { vec![seed] };
                for s in cell_seeds {
                    prereq_dirs.insert((ti, p.name.clone(), s), dir.clone());
                }
                prereqs.push(Job {
                    id,
                    config: expand_path(&p.config, &builtins)?,
                    sets: expand_all(&sets, &builtins)?,
                    dir,
                    task: ti,
                    method: None,
                    setting: None,
                    seed,
                    needs: vec![],
                });
            }
        }
        for (mi, m) in spec.method.iter().enumerate() {
            let points: Vec<Option<(String, String)>> = match &m.sweep {
                Some(s) => s
                    .values
                    .iter()
                    .map(|v| {
                        let short = s.key.rsplit('.').next().unwrap_or(&s.key);
                        Some((format!("{}={}", s.key, v), format!("{short}={}", value_text(v))))
                    })
                    .collect(),
                None => vec![None],
            };
            for point in &points {
                for &seed in &seeds {
                    let builtins = spec.builtins(ti, seed);
                    let mut sets = task_sets.to_vec();
                    sets.extend(m.sets.iter().cloned());
                    sets.extend(scale.sets.iter().cloned());
                    sets.extend(scale.cell_sets.iter().cloned());
                    // A method without `from` may use any prerequisite: it waits for all so far.
                    let needs = match &m.from {
                        Some(f) => {
                            let dir = &prereq_dirs[&(ti, f.clone(), seed)];
                            sets.push(format!("init_from={}", toml_string(dir)));
                            vec![dir.clone()]
                        }
                        None => prereqs.iter().map(|p| p.dir.clone()).collect(),
                    };
                    let mut dir = root.join(&m.name);
                    if let Some((set, setting)) = point {
                        sets.push(set.clone());
                        dir = dir.join(slug(setting));
                    }
                    sets.push(format!("seed={seed}"));
                    let dir = dir.join(format!("seed{seed}"));
                    let setting = point.as_ref().map(|(_, s)| s.clone());
                    let id = format!(
                        "{prefix}{}/{}seed{seed}",
                        m.name,
                        setting.as_ref().map(|s| format!("{s}/")).unwrap_or_default()
                    );
                    cells.push(Job {
                        id,
                        config: expand_path(&m.config, &builtins)?,
                        sets: expand_all(&sets, &builtins)?,
                        dir,
                        task: ti,
                        method: Some(mi),
                        setting,
                        seed,
                        needs,
                    });
                }
            }
        }
    }
    let mut command = format!("espalier table {}", opts.spec_path.display());
    if opts.scale.as_ref().is_some_and(|s| s != &spec.table.scale) {
        command += &format!(" --scale {scale_name}");
    }
    if let Some(d) = &opts.data_dir {
        command += &format!(" --data-dir {}", d.display());
    }
    if let Some(r) = &opts.runs {
        command += &format!(" --runs {}", r.display());
    }
    if let Some(o) = &opts.out {
        command += &format!(" --out {}", o.display());
    }
    Ok(Plan { scale: scale_name, seeds, prereqs, cells, runs, out, command })
}

/// The experiment a job runs (checked before anything runs).
pub(super) fn job_experiment(job: &Job) -> Result<Experiment, ConfigError> {
    config::load(&job.config, &job.sets).map_err(|e| ConfigError(format!("table cell {}: {}", job.id, e.0)))
}

/// Whether a job's run directory holds its finished run. A directory that
/// holds another experiment is an error (the spec changed under it).
pub(super) fn is_finished(job: &Job, exp: &Experiment) -> Result<bool, ConfigError> {
    let cfg = job.dir.join("config.toml");
    if !cfg.exists() {
        return Ok(false);
    }
    let old = config::load(&cfg, &[])?;
    if &old != exp {
        return Err(ConfigError(format!(
            "table cell {}: {} holds a different experiment than the spec now asks for; remove it or use --runs",
            job.id,
            job.dir.display()
        )));
    }
    Ok(espalier_experiment::RunState::of(&job.dir).is_ok_and(|s| s.is_done()))
}

/// What `run_table` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Runs started (and finished) by this invocation.
    pub ran: usize,
    /// Runs found finished and skipped.
    pub skipped: usize,
    /// Whether every run is finished.
    pub complete: bool,
}

/// The command line of a job.
fn job_command(exe: &Path, job: &Job, opts: &TableOptions) -> Command {
    let mut c = Command::new(exe);
    c.arg("run").arg(&job.config);
    for s in &job.sets {
        c.arg("--set").arg(s);
    }
    c.arg("--out").arg(&job.dir);
    if let Some(d) = &opts.data_dir {
        c.arg("--data-dir").arg(d);
    }
    if opts.quiet || opts.jobs > 1 {
        c.arg("--quiet");
    }
    c.stdout(Stdio::null());
    c
}

/// Runs the missing runs of a plan, `opts.jobs` at a time: always the
/// first queued run whose prerequisites have finished, so a cell starts as
/// soon as its own dense run is done rather than after every prerequisite.
/// Stops early, resumable, when `opts.max_cells` runs have started.
pub fn run_plan(plan: &Plan, opts: &TableOptions) -> anyhow::Result<Progress> {
    let exe = std::env::current_exe().context("locating the espalier binary")?;
    let mut budget = opts.max_cells;
    let mut queue = Vec::new();
    let mut finished = HashSet::new();
    let mut skipped = 0;
    for job in plan.prereqs.iter().chain(&plan.cells) {
        let exp = job_experiment(job)?;
        if is_finished(job, &exp)? {
            tracing::info!("{}: finished, skipped", job.id);
            finished.insert(job.dir.clone());
            skipped += 1;
        } else {
            queue.push(job);
        }
    }
    let mut running: Vec<(&Job, Child)> = Vec::new();
    let mut ran = 0;
    let mut failed: Option<anyhow::Error> = None;
    loop {
        while failed.is_none() && running.len() < opts.jobs.max(1) && budget.is_none_or(|b| b > 0) {
            let Some(i) = next_ready(&queue, &finished) else { break };
            let job = queue.remove(i);
            if let Some(b) = budget.as_mut() {
                *b -= 1;
            }
            tracing::info!("{}: running into {}", job.id, job.dir.display());
            let child = job_command(&exe, job, opts)
                .spawn()
                .with_context(|| format!("{}: starting {}", job.id, exe.display()))?;
            running.push((job, child));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait().context("waiting for a table cell")? {
                None => i += 1,
                Some(status) => {
                    let (job, _) = running.swap_remove(i);
                    if status.success() {
                        ran += 1;
                        finished.insert(job.dir.clone());
                        tracing::info!("{}: done", job.id);
                    } else if failed.is_none() {
                        failed = Some(anyhow::anyhow!(
                            "table cell {} failed ({status}); rerun it alone with: espalier run {} {}--out {}",
                            job.id,
                            job.config.display(),
                            job.sets.iter().map(|s| format!("--set '{s}' ")).collect::<String>(),
                            job.dir.display()
                        ));
                    }
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Progress { ran, skipped, complete: queue.is_empty() })
}

/// The first queued job whose prerequisites have all finished.
fn next_ready(queue: &[&Job], finished: &HashSet<PathBuf>) -> Option<usize> {
    queue.iter().position(|j| j.needs.iter().all(|d| finished.contains(d)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::table::fixtures::{opts, SPEC};
    use crate::table::spec::parse_spec;

    #[test]
    fn plans_cells_with_overrides_in_order() {
        let spec = parse_spec(SPEC).unwrap();
        let p = plan(&spec, &opts()).unwrap();
        assert_eq!(p.prereqs.len(), 1);
        assert_eq!(p.cells.len(), 3);
        let c = &p.cells[1];
        assert_eq!(c.dir, Path::new("runs/tables/t/small/a/keep-20/seed0"));
        assert_eq!(
            c.sets,
            ["train.epochs=2", "init_from=\"runs/tables/t/small/prereq/dense/seed0\"", "structured.keep=20", "seed=0"]
        );
        assert_eq!(c.needs, [Path::new("runs/tables/t/small/prereq/dense/seed0")]);
        assert!(p.prereqs.iter().all(|j| j.needs.is_empty()));
        // With the prerequisite queued, its cells wait; once it is done, they go in order.
        let queue: Vec<&Job> = p.prereqs.iter().chain(&p.cells).collect();
        let mut finished = HashSet::new();
        assert_eq!(next_ready(&queue[1..], &finished), None);
        assert_eq!(next_ready(&queue, &finished), Some(0));
        finished.insert(p.prereqs[0].dir.clone());
        assert_eq!(next_ready(&queue[1..], &finished), Some(0));
        assert_eq!(p.out, Path::new("results/t"));
        assert_eq!(p.command, "espalier table t.toml");
    }

    /// A prerequisite with a fixed seed is run once and every seed's cells
    /// start from it (and wait for it).
    #[test]
    fn a_prerequisite_with_a_seed_is_shared_by_every_seed() {
        let text = SPEC
            .replace(
                "name = \"dense\"\n    config = \"a.toml\"",
                "name = \"dense\"\n    config = \"a.toml\"\n    seed = 7",
            )
            .replace("scale = \"small\"\n", "scale = \"small\"\n    seeds = [0, 1, 2]\n");
        let spec = parse_spec(&text).unwrap();
        let p = plan(&spec, &opts()).unwrap();
        assert_eq!(p.prereqs.len(), 1);
        let dense = Path::new("runs/tables/t/small/prereq/dense/seed7");
        assert_eq!((p.prereqs[0].dir.as_path(), p.prereqs[0].seed), (dense, 7));
        assert!(p.prereqs[0].sets.contains(&"seed=7".to_string()));
        let from_dense: Vec<&Job> = p.cells.iter().filter(|c| c.method == Some(0)).collect();
        assert_eq!(from_dense.len(), 6);
        for c in from_dense {
            assert_eq!(c.needs, [dense]);
            assert!(c.sets.contains(&format!("init_from={}", toml_string(dense))), "{:?}", c.sets);
        }
        assert_eq!(p.cells.iter().map(|c| c.seed).collect::<HashSet<_>>(), HashSet::from([0, 1, 2]));
    }
}
