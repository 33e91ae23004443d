//! What the end-to-end tests of the binary share: the repository root, the
//! embedded MNIST subset, a small real experiment, and how to read a run.

use std::path::{Path, PathBuf};
use std::process::Output;

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
