//! End-to-end tests of `espalier table` on a tiny spec over the embedded
//! MNIST subset: a table stopped or killed mid-way completes on restart
//! without rerunning finished cells, and `--report-only` renders
//! byte-identical files from the same runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Two methods (IMP with 2 rounds: two points per run; one-shot swept over
/// two sparsities) × two seeds = 6 cells of a few hundred images, 1 epoch.
fn tiny_spec(dir: &Path) -> PathBuf {
    let quickstart = root().join("configs/quickstart.toml");
    let q = toml::Value::String(quickstart.display().to_string());
    let text = format!(
        r#"
[table]
name = "tiny"
title = "Tiny table"
description = "A test."
metrics = ["accuracy"]
scale = "tiny"
seeds = [0, 1]

[scale.tiny]
description = "300 training / 200 test images, 1 epoch per phase."
sets = ["data.limit_train=300", "data.limit_test=200", "train.epochs=1", "train.batch_size=100"]

[[method]]
name = "imp"
label = "IMP"
config = {q}
sets = ["prune.schedule.rounds=2", "prune.schedule.epochs_per_round=1"]

[[method]]
name = "one-shot"
config = {q}
sets = ['prune.schedule={{kind="one_shot", sparsity=0.2, finetune_epochs=1}}']
sweep = {{ key = "prune.schedule.sparsity", values = [0.2, 0.36] }}

[[reference]]
method = "dense"
value = 98.36
source = "Han et al. 2015"

[[reference]]
method = "imp"
sparsity = 0.36
value = 98.0
source = "made up"

[[claim]]
text = "IMP beats one-shot at every sparsity"
kind = "beats"
a = "imp"
b = "one-shot"

[[claim]]
text = "IMP stays within 100 points of dense"
kind = "within_dense"
a = "imp"
tolerance = 100.0
"#
    );
    let p = dir.join("tiny.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn table_cmd(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_espalier"));
    c.env("CANDLE_NUM_THREADS", "1").env("RAYON_NUM_THREADS", "1").current_dir(dir);
    c.args(["table", "tiny.toml", "--runs", "runs", "--out", "results", "--quiet", "--data-dir"])
        .arg(root().join("data"))
        .args(extra);
    c
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "espalier table failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The run directories of the cells (`runs/<method>/[<setting>/]seed<s>`).
fn cell_dirs(dir: &Path) -> Vec<PathBuf> {
    let r = dir.join("runs");
    vec![
        r.join("imp/seed0"),
        r.join("imp/seed1"),
        r.join("one-shot/sparsity-0.2/seed0"),
        r.join("one-shot/sparsity-0.2/seed1"),
        r.join("one-shot/sparsity-0.36/seed0"),
        r.join("one-shot/sparsity-0.36/seed1"),
    ]
}

/// Modification times of every file of the finished cells.
fn finished_mtimes(dir: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut v = Vec::new();
    for d in cell_dirs(dir).into_iter().filter(|d| d.join("summary.json").exists()) {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            v.push((e.path(), e.metadata().unwrap().modified().unwrap()));
        }
    }
    v.sort();
    v
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_stopped_table_resumes_without_rerunning_and_report_only_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_spec(dir);
    // Report-only before any run: refused, naming what is missing.
    let out = table_cmd(dir, &["--report-only"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not finished"), "{}", String::from_utf8_lossy(&out.stderr));

    let stdout = ok(&table_cmd(dir, &["--max-cells", "3"]).output().unwrap());
    assert!(stdout.contains("ran 3 runs, skipped 0") && stdout.contains("stopped early"), "{stdout}");
    assert!(!dir.join("results/README.md").exists());
    let before = finished_mtimes(dir);
    assert_eq!(before.iter().filter(|(p, _)| p.ends_with("summary.json")).count(), 3);
    // A partial report of the 3 finished runs: the others named, no claim
    // decided, the command that finishes the table given.
    let partial = ok(&table_cmd(dir, &["--report-only", "--partial"]).output().unwrap());
    assert!(partial.contains("partial report") && partial.contains("no claim decided"), "{partial}");
    let readme = std::fs::read_to_string(dir.join("results/README.md")).unwrap();
    assert!(readme.contains("**Partial.**") && readme.contains("Not decided: the table is partial"), "{readme}");
    assert!(!readme.contains("PASS") && !readme.contains("FAILS"), "{readme}");
    assert!(readme.contains("(1 of 2 seeds)"), "{readme}");
    let csv = std::fs::read_to_string(dir.join("results/results.csv")).unwrap();
    assert!(csv.lines().count() > 1, "{csv}");
    let command = std::fs::read_to_string(dir.join("results/command.txt")).unwrap();
    assert!(command.trim_end().ends_with("--report-only --partial"), "{command}");
    std::fs::remove_dir_all(dir.join("results")).unwrap();
    // --partial needs --report-only.
    assert!(!table_cmd(dir, &["--partial"]).output().unwrap().status.success());

    std::thread::sleep(Duration::from_millis(20));
    let stdout = ok(&table_cmd(dir, &["--jobs", "2"]).output().unwrap());
    assert!(stdout.contains("ran 3 runs, skipped 3 finished runs"), "{stdout}");
    // The three finished cells were not touched.
    let after = finished_mtimes(dir);
    for (p, t) in &before {
        assert_eq!(after.iter().find(|(q, _)| q == p).map(|x| x.1), Some(*t), "{} was rewritten", p.display());
    }
    // Claims are printed with their verdicts.
    assert!(stdout.contains("IMP stays within 100 points of dense"), "{stdout}");

    let files = ["README.md", "results.csv", "plot.svg", "plot.png", "command.txt"];
    let first: Vec<Vec<u8>> = files.iter().map(|f| read(&dir.join("results").join(f))).collect();
    let readme = String::from_utf8(first[0].clone()).unwrap();
    for want in [
        "# Tiny table",
        "300 training / 200 test",
        "± ",
        "(paper 98.00)",
        "Dense reference",
        "Han et al. 2015",
        "— IMP stays within",
        "over 2 seeds",
    ] {
        assert!(readme.contains(want), "README lacks {want:?}:\n{readme}");
    }
    // Two seeds: each claim is decided from the paired differences' 95%
    // interval (t = 12.7 with one degree of freedom), so it may well be
    // undecided; never "NO DATA".
    for claim in ["IMP stays within", "IMP beats"] {
        let decided = ["PASS", "FAILS", "INCONCLUSIVE"].iter().any(|v| readme.contains(&format!("**{v}** — {claim}")));
        assert!(decided, "{claim}: {readme}");
    }
    let csv = String::from_utf8(first[1].clone()).unwrap();
    assert!(csv.starts_with("model,data,method,sparsity,metric,value,seed\n"), "{csv}");
    // 2 dense + 2 seeds × 2 IMP rounds + 2 seeds × 2 one-shot sparsities.
    assert_eq!(csv.lines().count(), 1 + 2 + 4 + 4, "{csv}");
    assert!(csv.contains("lenet-300-100,mnist,one-shot,0.360000,accuracy,"), "{csv}");

    // Re-rendering from the same runs gives the same bytes, and runs nothing.
    for f in files {
        std::fs::remove_file(dir.join("results").join(f)).unwrap();
    }
    let stdout = ok(&table_cmd(dir, &["--report-only"]).output().unwrap());
    assert!(!stdout.contains("ran "), "{stdout}");
    for (f, bytes) in files.iter().zip(&first) {
        assert!(read(&dir.join("results").join(f)) == *bytes, "{f} differs after --report-only");
    }
    assert_eq!(finished_mtimes(dir).len(), after.len());
}

/// Kills the whole process group of a table (the table and its cell).
fn kill_group(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
}

#[test]
fn a_killed_table_completes_on_restart_without_rerunning_finished_cells() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_spec(dir);
    let mut child = table_cmd(dir, &[]).process_group(0).spawn().unwrap();
    let start = Instant::now();
    // Kill as soon as the first cell has finished (the second is running).
    let first = &cell_dirs(dir)[0];
    while !first.join("summary.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "the first cell never finished");
        if child.try_wait().unwrap().is_some() {
            panic!("the table finished before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_group(child.id());
    let _ = child.wait();
    let before = finished_mtimes(dir);
    let n_done = before.iter().filter(|(p, _)| p.ends_with("summary.json")).count();
    assert!((1..6).contains(&n_done), "{n_done} cells finished before the kill");
    std::thread::sleep(Duration::from_millis(20));
    let stdout = ok(&table_cmd(dir, &[]).output().unwrap());
    assert!(stdout.contains(&format!("skipped {n_done} finished runs")), "{stdout}");
    let after = finished_mtimes(dir);
    for (p, t) in &before {
        assert_eq!(after.iter().find(|(q, _)| q == p).map(|x| x.1), Some(*t), "{} was rewritten", p.display());
    }
    assert!(dir.join("results/README.md").exists() && dir.join("results/plot.png").exists());
}

/// A table over two tasks (two MNIST subset sizes) whose dense
/// prerequisite lives in a shared run directory (`dir`): every run is made
/// once, the report has a section per task and their average, the CSV one
/// row per run, and a second invocation reruns nothing.
#[test]
fn a_table_over_tasks_shares_its_prerequisites_and_averages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = |p: &str| toml::Value::String(root().join(p).display().to_string());
    let (dense, l1) = (q("configs/structured/mlp1000-dense.toml"), q("configs/structured/mlp1000-l1.toml"));
    let text = format!(
        r#"
[table]
name = "tasks"
title = "Two tasks"
metrics = ["accuracy"]
scale = "tiny"
average = true

[scale.tiny]
description = "MNIST subsets, 1 dense epoch."
sets = ['data.path="mnist-subset"', "data.limit_test=200", "train.batch_size=100", "train.eval_batch_size=200"]
prereq_sets = ["train.epochs=1", "model.hidden=[32]"]
cell_sets = ["structured.calibration=100"]
vars = {{ dense = "shared/dense-${{task}}" }}

[[task]]
name = "small"
sets = ["data.limit_train=200"]

[[task]]
name = "large"
label = "Large"
sets = ["data.limit_train=400"]

[[prereq]]
name = "dense"
config = {dense}
dir = "${{dense}}"

[[method]]
name = "l1"
config = {l1}
from = "dense"
sweep = {{ key = "structured.keep", values = [16, 8] }}

[[reference]]
method = "dense"
task = "average"
value = 90.0
source = "made up"

[[claim]]
text = "L1 stays within 100 points of dense"
kind = "within_dense"
a = "l1"
tolerance = 100.0
"#
    );
    std::fs::write(dir.join("tiny.toml"), text).unwrap();
    let stdout = ok(&table_cmd(dir, &[]).output().unwrap());
    assert!(stdout.contains("ran 6 runs, skipped 0"), "{stdout}");
    for task in ["small", "large"] {
        assert!(dir.join(format!("shared/dense-{task}/summary.json")).exists(), "{task}: no shared dense run");
        assert!(dir.join(format!("runs/{task}/l1/keep-8/seed0/summary.json")).exists(), "{task}: no cell");
    }
    let readme = std::fs::read_to_string(dir.join("results/README.md")).unwrap();
    for want in [
        "## small: accuracy",
        "## Large: accuracy",
        "## Average over tasks: average of accuracy",
        "(paper 90.00, made up)",
    ] {
        assert!(readme.contains(want), "README lacks {want:?}:\n{readme}");
    }
    assert_eq!(readme.matches("**PASS** — L1 stays within").count(), 3, "{readme}");
    let csv = std::fs::read_to_string(dir.join("results/results.csv")).unwrap();
    // Per task: the dense run and two swept cells.
    assert_eq!(csv.lines().count(), 1 + 2 * 3, "{csv}");
    let stdout = ok(&table_cmd(dir, &[]).output().unwrap());
    assert!(stdout.contains("ran 0 runs, skipped 6 finished runs"), "{stdout}");
}

/// `--slurm DIR` without Slurm: the scripts and manifests are written for
/// the unfinished runs only, an array task run by hand (as Slurm would,
/// with its environment) runs exactly its cell, `--status` follows, and
/// Slurm flags without `--slurm` are refused.
#[test]
fn slurm_scripts_cover_the_unfinished_runs_and_a_task_runs_its_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_spec(dir);
    for bad in [&["--mem", "2G"][..], &["--submit"], &["--slurm", "s", "--report-only"]] {
        let out = table_cmd(dir, bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--"), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = ok(&table_cmd(dir, &["--slurm", "s", "--mem", "2G", "--sbatch=--qos=low"]).output().unwrap());
    assert!(stdout.contains("0 prerequisite tasks, 6 cell tasks, a report job (0 finished runs left out)"), "{stdout}");
    let s = dir.join("s");
    assert!(!s.join("prereqs.sbatch").exists());
    let cells = std::fs::read_to_string(s.join("cells.sbatch")).unwrap();
    for want in ["#SBATCH --array=0-5\n", "#SBATCH --mem=2G\n", "#SBATCH --qos=low\n", "#SBATCH --requeue\n"] {
        assert!(cells.contains(want), "{want:?}: {cells}");
    }
    let submit = std::fs::read_to_string(s.join("submit.sh")).unwrap();
    assert!(submit.contains("c=$(jobid cells.sbatch)") && submit.contains("--dependency=afterany:$c"), "{submit}");
    let manifest = std::fs::read_to_string(s.join("cells.tsv")).unwrap();
    assert_eq!(manifest.lines().count(), 6);
    assert!(manifest.starts_with(&format!("0\timp/seed0\t{}\t", cell_dirs(dir)[0].display())), "{manifest}");
    let status = ok(&table_cmd(dir, &["--status"]).output().unwrap());
    assert!(status.ends_with("6 runs: 0 done, 0 running, 0 queued, 0 failed, 6 missing\n"), "{status}");

    // Task 1 as Slurm would run it.
    let out = Command::new("bash")
        .arg(s.join("cells.sbatch"))
        .current_dir(dir)
        .env("SLURM_ARRAY_JOB_ID", "41")
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = &cell_dirs(dir)[1];
    assert!(run.join("summary.json").exists());
    assert!(std::fs::read_to_string(run.join("slurm-task.txt")).unwrap().starts_with("job=41_1\n"));
    let status = ok(&table_cmd(dir, &["--status"]).output().unwrap());
    assert!(status.contains("imp/seed1") && status.ends_with("1 done, 0 running, 0 queued, 0 failed, 5 missing\n"));
    let stdout = ok(&table_cmd(dir, &["--slurm", "s"]).output().unwrap());
    assert!(stdout.contains("5 cell tasks, a report job (1 finished runs left out)"), "{stdout}");
}
