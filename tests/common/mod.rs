//! What the end-to-end tests of the binary share: the repository root, the
//! embedded MNIST subset, a small real experiment, how to run the binary and
//! how to read a run. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The data root holding the embedded MNIST subset (checked).
pub fn data_dir() -> PathBuf {
    let d = root().join("data");
    assert!(
        d.join("mnist-subset/train-images-idx3-ubyte.gz").is_file(),
        "the embedded MNIST subset is missing from {}",
        d.display()
    );
    d
}

/// A small but real experiment: 2,000 training images, 500 test images,
/// LeNet-300-100, 2 dense epochs, then 2 IMP rounds of 1 epoch.
pub const SMALL: &str = r#"
seed = 3
[data]
dataset = "mnist"
path = "mnist-subset"
limit_train = 2000
limit_test = 500
[model]
kind = "mlp"
hidden = [300, 100]
[train]
epochs = 2
batch_size = 64
optimizer = { kind = "adamw", lr = 1e-3, weight_decay = 1e-4 }
lr_schedule = { kind = "cosine" }
[prune.schedule]
kind = "imp"
rounds = 2
epochs_per_round = 1
rewind = "epoch:1"
"#;

/// Asserts that the command succeeded, showing its output otherwise.
pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "espalier failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// metrics.jsonl without the wall-clock fields.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The binary, single-threaded: the test harness runs several at once on
/// few cores, and candle's spinning thread pool degrades badly when
/// processes compete for cores.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_espalier"));
    c.env("CANDLE_NUM_THREADS", "1").env("RAYON_NUM_THREADS", "1");
    c
}

pub fn espalier(args: &[&str]) -> Output {
    bin().args(args).arg("--data-dir").arg(data_dir()).arg("--quiet").output().expect("run espalier")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn run_dir(tmp: &Path, name: &str) -> PathBuf {
    tmp.join(name)
}

/// Two run directories hold the same metrics and the same saved model bytes.
pub fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(metrics(a), metrics(b));
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
}

/// Runs `cfg` into `dir` once per entry: stopping after that many epochs
/// (`--max-epochs`), or to the end for `None`.
pub fn run_in_parts(cfg: &Path, dir: &Path, parts: &[Option<usize>]) {
    for part in parts {
        let mut args = vec!["run".to_string(), cfg.display().to_string(), "--out".into(), dir.display().to_string()];
        if let Some(n) = part {
            args.extend(["--max-epochs".to_string(), n.to_string()]);
        }
        ok(&espalier(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    }
}
