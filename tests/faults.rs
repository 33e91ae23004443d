//! Faults while writing (issue #24): a checkpoint or final model write that
//! fails part-way (a full disk) leaves the previous files byte for byte, no
//! temporary file behind, and a run that resumes to the numbers of an
//! uninterrupted one.
//!
//! The fault is real, not a code hook: the `espalier` binary runs under
//! `ulimit -f` (RLIMIT_FSIZE) with SIGXFSZ ignored, so the kernel refuses the
//! write that would grow a file past the limit with EFBIG ("File too large"),
//! exactly where a full disk gives ENOSPC: in the middle of the file.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{data_dir, metrics, ok, SMALL};

/// `espalier ARGS --data-dir data --quiet`, single-threaded (tests run in
/// parallel on few cores), with files limited to `limit_kib` KiB when given.
fn espalier(args: &[&str], limit_kib: Option<u64>) -> Output {
    let bin = env!("CARGO_BIN_EXE_espalier");
    let mut c = match limit_kib {
        // `trap '' XFSZ` is inherited across exec as "ignored": the write
        // fails with EFBIG instead of the signal killing the process.
        Some(kib) => {
            let mut c = Command::new("bash");
            c.arg("-c").arg(format!("trap '' XFSZ; ulimit -f {kib} && exec \"$0\" \"$@\"")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.args(args).arg("--data-dir").arg(data_dir()).arg("--quiet");
    c.env("CANDLE_NUM_THREADS", "1").env("RAYON_NUM_THREADS", "1");
    c.output().expect("run espalier")
}

/// A run that failed on a write of `file`: non-zero exit and an error naming
/// the file and the cause.
fn failed_writing(out: &Output, file: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run succeeded under the write limit: {err}");
    assert!(out.status.code().is_some(), "killed by a signal instead of failing: {}", out.status);
    assert!(err.contains(file) && err.contains("File too large"), "the error does not name {file}: {err}");
}

fn run(cfg: &Path, dir: &Path, extra: &[&str], limit_kib: Option<u64>) -> Output {
    let mut args = vec!["run", cfg.to_str().unwrap(), "--out", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    espalier(&args, limit_kib)
}

/// Every file of a run directory, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

/// The files of `dir` after a failed write: the run marks itself failed in
/// `summary.json` (a small write that fits under the limit), naming the
/// file whose write failed; every other file is returned.
fn files_after_failure(dir: &Path, failed_file: &str) -> Vec<(String, Vec<u8>)> {
    let mut v = files(dir);
    let i = v.iter().position(|(n, _)| n == "summary.json").expect("the run is marked failed in summary.json");
    let (_, bytes) = v.remove(i);
    let failure: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(failure["status"], "failed", "{failure}");
    assert!(failure["error"].as_str().unwrap().contains(failed_file), "{failure}");
    v
}

/// No temporary file of an atomic write is left in `dir`.
fn no_temporary_files(dir: &Path) {
    let stray: Vec<String> = files(dir).into_iter().map(|(n, _)| n).filter(|n| n.contains(".tmp-")).collect();
    assert!(stray.is_empty(), "temporary files left in {}: {stray:?}", dir.display());
}

fn summary_numbers(run: &Path) -> serde_json::Value {
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    serde_json::json!([s["rounds"], s["sparsity"], s["parameters"]])
}

fn size_kib(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len() / 1024
}

/// The disk fills while the checkpoint of epoch 2 is written: the run fails
/// naming the file, the checkpoint of epoch 1 and the metrics stay byte for
/// byte, no temporary file is left, and the same command without the limit
/// resumes to the numbers and model bytes of an uninterrupted run.
#[test]
fn a_failed_checkpoint_write_keeps_the_previous_checkpoint_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("small.toml");
    std::fs::write(&cfg, SMALL).unwrap();
    let full = tmp.path().join("full");
    ok(&run(&cfg, &full, &[], None));

    let part = tmp.path().join("part");
    ok(&run(&cfg, &part, &["--max-epochs", "1"], None));
    let ck = part.join("checkpoint.safetensors");
    let before = files(&part);
    // Half the checkpoint's size: the small files (config, metrics, lock)
    // fit, the next checkpoint fails in the middle.
    let limit = size_kib(&ck) / 2;
    assert!(limit > 64, "the checkpoint is too small for the test: {limit} KiB");
    let out = run(&cfg, &part, &[], Some(limit));
    failed_writing(&out, "checkpoint.safetensors");
    assert_eq!(files_after_failure(&part, "checkpoint.safetensors"), before, "a file of the run directory changed");
    no_temporary_files(&part);
    // The kept checkpoint is readable: the run resumes from it.
    ok(&run(&cfg, &part, &[], None));
    assert_eq!(metrics(&part), metrics(&full));
    assert_eq!(summary_numbers(&part), summary_numbers(&full));
    assert_eq!(
        std::fs::read(part.join("model.safetensors")).unwrap(),
        std::fs::read(full.join("model.safetensors")).unwrap()
    );
}

/// The disk fills while the final model is written (the run has trained
/// every epoch): the run fails naming `model.safetensors`, writes no partial
/// model, no summary but its failure record, and no temporary file, keeps
/// its checkpoint byte for byte, and the same command without the limit
/// writes the model of an uninterrupted run.
#[test]
fn a_failed_final_model_write_leaves_the_run_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("small.toml");
    std::fs::write(&cfg, SMALL).unwrap();
    let dir = tmp.path().join("run");
    ok(&run(&cfg, &dir, &[], None));
    let model = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (numbers, history) = (summary_numbers(&dir), metrics(&dir));
    // Back to the state after the last epoch's checkpoint, before the final
    // writes (as if the disk had been full then).
    for f in ["model.safetensors", "summary.json", "report.md", "results.csv"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let before = files(&dir);
    let limit = model.len() as u64 / 1024 / 2;
    assert!(limit > 64, "the model is too small for the test: {limit} KiB");
    let out = run(&cfg, &dir, &[], Some(limit));
    failed_writing(&out, "model.safetensors");
    assert_eq!(
        files_after_failure(&dir, "model.safetensors"),
        before,
        "a file of the run directory changed or appeared"
    );
    no_temporary_files(&dir);
    ok(&run(&cfg, &dir, &[], None));
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), model);
    assert_eq!(summary_numbers(&dir), numbers);
    assert_eq!(metrics(&dir), history);
}
