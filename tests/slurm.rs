//! `espalier table --slurm DIR --submit` against a real single-node Slurm
//! (start it with `.ci/slurm-up.sh`, stop it with `.ci/slurm-down.sh`; this
//! test is built only with `--features slurm` and fails when Slurm is not
//! reachable). A small table (a dense prerequisite, four structured cells
//! with a few fine-tuning epochs, on the embedded MNIST subset) is
//! submitted as job arrays; one cell's task is cancelled mid-run
//! (`scancel`: SIGTERM, the run checkpoints and stops; `--status` says
//! failed) and requeued (`scontrol requeue`, as after a preemption), and it
//! resumes from its checkpoint; a second writer on a running cell is
//! refused; and the report is byte-identical to the same table run here
//! with `--jobs 1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The dense 784-1000-10 MLP (1 epoch) and L1 / random unit pruning of it
/// to two widths, each fine-tuned for 4 epochs: 1 prerequisite, 4 cells of
/// a few seconds each.
fn write_spec(dir: &Path) {
    let q = |p: &str| toml::Value::String(root().join(p).display().to_string());
    let (dense, l1, random) = (
        q("configs/structured/mlp1000-dense.toml"),
        q("configs/structured/mlp1000-l1.toml"),
        q("configs/structured/mlp1000-random.toml"),
    );
    let text = format!(
        r#"
[table]
name = "slurm"
title = "Slurm table"
metrics = ["accuracy"]
scale = "tiny"

[scale.tiny]
description = "MNIST subset (10k / 1k images), 1 dense epoch, 4 fine-tuning epochs."
sets = ['data.path="mnist-subset"', "data.limit_test=1000", "train.batch_size=100", "train.eval_batch_size=500"]
prereq_sets = ["train.epochs=1"]
cell_sets = ["structured.calibration=500", "structured.finetune_epochs=4"]

[scale.tiny.slurm]
cpus_per_task = 1
time = "00:10:00"
extra = ["--comment=espalier-test"]

[[prereq]]
name = "dense"
config = {dense}

[[method]]
name = "l1"
config = {l1}
from = "dense"
sweep = {{ key = "structured.keep", values = [500, 250] }}

[[method]]
name = "random"
config = {random}
from = "dense"
sweep = {{ key = "structured.keep", values = [500, 250] }}

[[claim]]
text = "L1 stays within 100 points of dense"
kind = "within_dense"
a = "l1"
tolerance = 100.0
"#
    );
    std::fs::write(dir.join("table.toml"), text).unwrap();
}

fn espalier(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_espalier"));
    c.env("RAYON_NUM_THREADS", "1").current_dir(dir).args(args);
    c
}

fn table(dir: &Path, extra: &[&str]) -> Command {
    let data = root().join("data");
    let mut c = espalier(dir, &["table", "table.toml", "--runs", "runs", "--out", "results", "--data-dir"]);
    c.arg(data).args(extra);
    c
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn slurm(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The state of a job (`scontrol show job`), e.g. `COMPLETED`.
fn job_state(id: &str) -> String {
    let text = slurm("scontrol", &["show", "job", id]);
    let s = text.split_whitespace().find_map(|w| w.strip_prefix("JobState=")).unwrap_or("?");
    s.to_string()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn report_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["README.md", "results.csv", "plot.svg", "plot.png", "command.txt"]
        .iter()
        .map(|f| {
            let p = dir.join("results").join(f);
            (f.to_string(), std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        })
        .collect()
}

#[test]
fn a_table_as_slurm_job_arrays_requeues_resumes_and_reports_like_jobs_1() {
    let sinfo = Command::new("sinfo").args(["-h", "-o", "%t"]).output();
    match &sinfo {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => {}
        _ => panic!(
            "Slurm is not reachable (sinfo: {sinfo:?}); the `slurm` feature's tests need a running Slurm: run \
             .ci/slurm-up.sh first"
        ),
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (local, cluster) = (tmp.path().join("local"), tmp.path().join("cluster"));
    for d in [&local, &cluster] {
        std::fs::create_dir_all(d).unwrap();
        write_spec(d);
    }

    // Bad flags are refused before anything is written.
    let out = table(&cluster, &["--submit"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--slurm"));

    let stdout = ok(&table(&cluster, &["--slurm", "slurm", "--submit"]).output().unwrap());
    assert!(stdout.contains("1 prerequisite tasks, 4 cell tasks"), "{stdout}");
    let id = |stage: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("submitted {stage}: job ")))
            .unwrap_or_else(|| panic!("no {stage} job id in: {stdout}"))
            .to_string()
    };
    let (cells, report) = (id("cells"), id("report"));
    let sdir = cluster.join("slurm");
    let script = std::fs::read_to_string(sdir.join("cells.sbatch")).unwrap();
    for want in ["#SBATCH --array=0-3\n", "#SBATCH --cpus-per-task=1\n", "#SBATCH --comment=espalier-test\n"] {
        assert!(script.contains(want), "cells.sbatch lacks {want:?}:\n{script}");
    }

    // The same table here, one run at a time, meanwhile.
    let local_run = {
        let local = local.clone();
        std::thread::spawn(move || ok(&table(&local, &["--jobs", "1", "--quiet"]).output().unwrap()))
    };

    // Task 0 of the cells (first line of the manifest) once it has a
    // checkpoint and is still running: a second writer is refused, then
    // the task is requeued mid-run.
    let manifest = std::fs::read_to_string(sdir.join("cells.tsv")).unwrap();
    let f: Vec<&str> = manifest.lines().next().unwrap().split('\t').collect();
    let (cell_id, run_dir) = (f[1].to_string(), PathBuf::from(f[2]));
    assert_eq!(run_dir, cluster.join("runs/l1/keep-500/seed0"));
    let task = format!("{cells}_0");
    wait_until("a checkpoint of cell task 0", Duration::from_secs(180), || {
        run_dir.join("checkpoint.safetensors").exists()
    });
    assert!(!run_dir.join("summary.json").exists(), "the cell finished before it could be requeued");

    let status = ok(&table(&cluster, &["--status", "--slurm", "slurm"]).output().unwrap());
    let line = status.lines().find(|l| l.starts_with(&cell_id)).unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains(&format!("running (job {task})")), "{status}");

    let mut second = espalier(&cluster, &["--data-dir", root().join("data").to_str().unwrap(), "run", f[3]]);
    for s in &f[4..] {
        second.args(["--set", s]);
    }
    let out = second.arg("--out").arg(&run_dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a second writer was not refused: {err}");
    assert!(err.contains("is in use by another espalier process"), "{err}");

    // Cancelled mid-run (SIGTERM: the run checkpoints the step it is at and
    // stops): the status says failed, with the log's last error line.
    slurm("scancel", &[&task]);
    wait_until("the cancelled task to end", Duration::from_secs(60), || {
        job_state(&task) == "CANCELLED" && slurm("squeue", &["-h", "-j", &task]).trim().is_empty()
    });
    assert!(!run_dir.join("summary.json").exists(), "the cell finished before it was cancelled");
    let status = ok(&table(&cluster, &["--status", "--slurm", "slurm"]).output().unwrap());
    let line = status.lines().find(|l| l.starts_with(&cell_id)).unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains(&format!("failed (job {task}): ")) && line.contains("error"), "{status}");

    // Requeued: the same task runs the same command again and resumes.
    slurm("scontrol", &["requeue", &task]);
    wait_until("the requeued task to be pending", Duration::from_secs(60), || job_state(&task) == "PENDING");
    // A requeued job may be held back ~2 minutes (BeginTime); not here.
    slurm("scontrol", &["update", &format!("JobId={task}"), "StartTime=now"]);

    wait_until("the report job", Duration::from_secs(300), || {
        matches!(job_state(&report).as_str(), "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT")
    });
    let log = std::fs::read_to_string(sdir.join(format!("logs/cells-{cells}_0.out"))).unwrap();
    assert_eq!(job_state(&report), "COMPLETED", "the report job failed; cell 0's log:\n{log}");
    assert!(log.contains(&format!("{task}, restart 1")) && log.contains("CANCELLED AT"), "{log}");
    assert!(log.contains("resuming"), "the requeued task did not resume its checkpoint:\n{log}");

    let local_out = local_run.join().unwrap();
    assert!(local_out.contains("ran 5 runs"), "{local_out}");
    // Identical report: the same numbers from every run, the requeued one included.
    let (a, b) = (report_files(&cluster), report_files(&local));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs between the Slurm table and --jobs 1:\n{}\n---\n{}",
            String::from_utf8_lossy(x),
            String::from_utf8_lossy(y)
        );
    }

    // Everything done: the status says so, and no task is left to write.
    let status = ok(&table(&cluster, &["--status"]).output().unwrap());
    assert!(status.ends_with("5 runs: 5 done, 0 running, 0 queued, 0 failed, 0 missing\n"), "{status}");
    let stdout = ok(&table(&cluster, &["--slurm", "again"]).output().unwrap());
    assert!(stdout.contains("0 prerequisite tasks, 0 cell tasks, a report job (5 finished runs left out)"), "{stdout}");
    assert!(!cluster.join("again/cells.sbatch").exists());
    eprintln!("cell task 0's log:\n{log}\nslurm test: {:.0?}", started.elapsed());
}
