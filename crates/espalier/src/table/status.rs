//! `espalier table SPEC --status`: where every run of a table is.
//!
//! Per prerequisite and cell: `done` (its `summary.json` says so),
//! `running` (its run directory is locked by an `espalier run`, or Slurm's
//! `squeue` lists its task as running), `queued` (`squeue` lists its task
//! as pending), `failed` (started, not running, not finished: with the
//! error its `summary.json` records, else the last error line of its Slurm
//! log), `missing` (never started). The job
//! id comes from `slurm-task.txt`, which a Slurm task writes into its run
//! directory, or, for tasks that have not started, from the manifests and
//! `jobs.txt` of `--slurm DIR`. Without `squeue` on PATH the lock alone
//! tells a running run from a stopped one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::plan::{is_finished, job_experiment, plan, Job, TableOptions};
use super::spec::load_spec;

/// Where one run is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Finished.
    Done,
    /// Running now (with its Slurm job id when known).
    Running(Option<String>),
    /// Waiting in Slurm's queue.
    Queued(String),
    /// Started, stopped before the end: the job id and the log's last error line, when known.
    Failed {
        /// Slurm job id.
        job: Option<String>,
        /// The last error line of its log.
        error: Option<String>,
    },
    /// Never started.
    Missing,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunState::Done => f.write_str("done"),
            RunState::Running(None) => f.write_str("running"),
            RunState::Running(Some(j)) => write!(f, "running (job {j})"),
            RunState::Queued(j) => write!(f, "queued (job {j})"),
            RunState::Failed { job, error } => {
                f.write_str("failed")?;
                if let Some(j) = job {
                    write!(f, " (job {j})")?;
                }
                match error {
                    Some(e) => write!(f, ": {e}"),
                    None => f.write_str(": stopped before the end (resumable: run the table again)"),
                }
            }
            RunState::Missing => f.write_str("missing"),
        }
    }
}

impl RunState {
    /// The state's word (`done`, `running`, `queued`, `failed`, `missing`).
    pub fn word(&self) -> &'static str {
        match self {
            RunState::Done => "done",
            RunState::Running(_) => "running",
            RunState::Queued(_) => "queued",
            RunState::Failed { .. } => "failed",
            RunState::Missing => "missing",
        }
    }
}

/// `slurm-task.txt` of a run directory: `key=value` lines.
fn marker(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("slurm-task.txt"))
        .map(|t| t.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
        .unwrap_or_default()
}

/// Slurm's queue: task id (`123_4`, or `123` for a plain job) → state
/// (`RUNNING`, `PENDING`, ...). None without a working `squeue`.
fn squeue() -> Option<BTreeMap<String, String>> {
    let out = Command::new("squeue").args(["-h", "-r", "-o", "%i %T"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(id, st)| (id.trim().to_string(), st.trim().to_string()))
            .collect(),
    )
}

/// Whether another process holds the run directory's lock (probed with a
/// shared lock that is released at once: an `espalier run` starting into
/// the directory in that instant would be refused, so Slurm is asked first).
fn locked(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(espalier_experiment::rundir::LOCK_FILE)) else { return false };
    matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// The last line of a log that reports an error (else its last line).
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines.iter().rev().find(|l| l.to_lowercase().contains("error")).or(lines.last())?;
    Some(line.to_string())
}

/// Job ids of not-yet-started tasks from a `--slurm DIR`: run directory →
/// `<array job>_<task>` (from `jobs.txt` and the manifests).
fn manifest_jobs(slurm_dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut map = BTreeMap::new();
    let Ok(jobs) = std::fs::read_to_string(slurm_dir.join("jobs.txt")) else { return map };
    for (stage, id) in jobs.lines().filter_map(|l| l.split_once('\t')) {
        let Ok(m) = std::fs::read_to_string(slurm_dir.join(format!("{stage}.tsv"))) else { continue };
        for line in m.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() > 2 {
                map.insert(PathBuf::from(f[2]), format!("{id}_{}", f[0]));
            }
        }
    }
    map
}

/// The state of one run (`finished`: whether its run directory holds the
/// finished run, or why it cannot be used).
fn state(
    job: &Job,
    finished: Result<bool, String>,
    cwd: &Path,
    queue: Option<&BTreeMap<String, String>>,
    pending: &BTreeMap<PathBuf, String>,
) -> RunState {
    match finished {
        Ok(true) => return RunState::Done,
        Ok(false) => {}
        Err(e) => return RunState::Failed { job: None, error: Some(e) },
    }
    let abs = if job.dir.is_absolute() { job.dir.clone() } else { cwd.join(&job.dir) };
    let m = marker(&job.dir);
    let job_id = m.get("job").cloned();
    // Slurm first (its own task, else the task of the submission that will
    // run it): the lock is probed only for runs that Slurm does not know.
    for id in job_id.iter().chain(pending.get(&abs)) {
        match queue.and_then(|q| q.get(id)).map(String::as_str) {
            Some("RUNNING" | "COMPLETING" | "CONFIGURING") => return RunState::Running(Some(id.clone())),
            Some(_) => return RunState::Queued(id.clone()),
            None => {}
        }
    }
    if locked(&job.dir) {
        return RunState::Running(job_id);
    }
    if job_id.is_none() && !job.dir.join("config.toml").exists() {
        return RunState::Missing;
    }
    // The run's own failure record first (`summary.json` of a run that
    // stopped on an error), else the Slurm log's last error line.
    let recorded = match espalier_experiment::RunState::of(&job.dir) {
        Ok(espalier_experiment::RunState::Failed(f)) => Some(f.error),
        _ => None,
    };
    RunState::Failed { job: job_id, error: recorded.or_else(|| m.get("log").and_then(|l| last_error(Path::new(l)))) }
}

/// Every run of the table (prerequisites first) with its state. `slurm_dir`:
/// the `--slurm` directory, for the job ids of tasks that have not started.
pub fn status(opts: &TableOptions, slurm_dir: Option<&Path>) -> anyhow::Result<Vec<(Job, RunState)>> {
    let spec = load_spec(&opts.spec_path)?;
    let plan = plan(&spec, opts)?;
    let cwd = std::env::current_dir()?;
    let queue = squeue();
    let pending = slurm_dir.map(|d| manifest_jobs(&if d.is_absolute() { d.to_path_buf() } else { cwd.join(d) }));
    let pending = pending.unwrap_or_default();
    let mut runs = Vec::new();
    for job in plan.prereqs.iter().chain(&plan.cells) {
        let exp = job_experiment(job)?;
        let finished = is_finished(job, &exp).map_err(|e| e.0);
        runs.push((job.clone(), state(job, finished, &cwd, queue.as_ref(), &pending)));
    }
    Ok(runs)
}

/// The status as printed: a line per run and a count per state.
pub fn status_text(runs: &[(Job, RunState)]) -> String {
    let width = runs.iter().map(|(j, _)| j.id.len()).max().unwrap_or(0);
    let mut s = String::new();
    for (j, st) in runs {
        s += &format!("{:<width$}  {st}\n", j.id);
    }
    let words = ["done", "running", "queued", "failed", "missing"];
    let counts: Vec<String> =
        words.iter().map(|w| format!("{} {w}", runs.iter().filter(|(_, st)| st.word() == *w).count())).collect();
    s += &format!("{} runs: {}\n", runs.len(), counts.join(", "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::fixtures::{opts, SPEC};
    use crate::table::spec::parse_spec;

    #[test]
    fn states_read_the_run_directory_marker_and_log() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = parse_spec(SPEC).unwrap();
        let p = plan(&spec, &opts()).unwrap();
        let mut job = p.cells[0].clone();
        job.dir = tmp.path().join("cell");
        let none = BTreeMap::new();
        assert_eq!(state(&job, Ok(false), tmp.path(), None, &none), RunState::Missing);
        std::fs::create_dir_all(&job.dir).unwrap();
        let log = tmp.path().join("task.out");
        std::fs::write(&log, "espalier: start\nerror: data file missing\nslurmstepd: done\n").unwrap();
        std::fs::write(job.dir.join("slurm-task.txt"), format!("job=7_0\nlog={}\n", log.display())).unwrap();
        let failed = state(&job, Ok(false), tmp.path(), None, &none);
        assert_eq!(failed.to_string(), "failed (job 7_0): error: data file missing");
        let queue = BTreeMap::from([("7_0".to_string(), "RUNNING".to_string())]);
        assert_eq!(state(&job, Ok(false), tmp.path(), Some(&queue), &none), RunState::Running(Some("7_0".into())));
        let text = status_text(&[(job, failed)]);
        assert!(text.ends_with("1 runs: 0 done, 0 running, 0 queued, 1 failed, 0 missing\n"), "{text}");
    }
}
