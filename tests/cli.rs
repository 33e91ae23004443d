//! End-to-end tests of the `espalier` binary on the embedded MNIST subset
//! (`data/mnist-subset`, real IDX files): determinism, resumption after an
//! interruption, and the handling of bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    assert_same_run, bin, data_dir, espalier, metrics, ok, root, run_dir, run_in_parts, stderr, write_config, SMALL,
};

#[test]
fn same_seed_gives_identical_metrics_and_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "small.toml", SMALL);
    let (a, b) = (run_dir(tmp.path(), "a"), run_dir(tmp.path(), "b"));
    for d in [&a, &b] {
        ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]));
    }
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), 4 + 3, "4 epochs and 3 round lines");
    assert_eq!(ma, mb);
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
    // The run learned something and pruned what the plan says.
    let last = ma.last().unwrap();
    assert_eq!(last["type"], "round");
    assert!((last["sparsity"].as_f64().unwrap() - 0.36).abs() < 1e-3, "{last}");
    assert!(last["metrics"]["accuracy"].as_f64().unwrap() > 80.0, "{last}");
    for f in ["config.toml", "summary.json", "report.md", "results.csv", "checkpoint.safetensors"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(a.join("results.csv")).unwrap();
    assert!(csv.starts_with("model,data,method,sparsity,metric,value,seed\n"));
    // per round: the accuracy and the empty rows/columns/removable weights
    assert_eq!(csv.lines().count(), 1 + 3 * 4);
    assert!(csv.contains(",empty_rows,") && csv.contains(",removable,"), "{csv}");
    // A different seed gives different numbers.
    let c = run_dir(tmp.path(), "c");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", c.to_str().unwrap(), "--set", "seed=4"]));
    assert_ne!(metrics(&c), ma);
}

#[test]
fn interrupted_runs_resume_to_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "small.toml", SMALL);
    let full = run_dir(tmp.path(), "full");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", full.to_str().unwrap()]));

    // Stopped after 1 epoch (inside the dense phase, before the rewind point),
    // then after 2 more (inside round 1), then to the end.
    let parts = run_dir(tmp.path(), "parts");
    run_in_parts(&cfg, &parts, &[Some(1)]);
    assert!(!parts.join("summary.json").exists());
    assert_eq!(metrics(&parts).len(), 1);
    run_in_parts(&cfg, &parts, &[Some(2), None]);
    assert_same_run(&parts, &full);
}

/// SIGTERM while training: the run finishes the step it is in, writes a
/// checkpoint of that point (mid-epoch) and exits 130 with how to resume;
/// the same command resumes there and ends with the numbers and model bytes
/// of an uninterrupted run.
#[test]
fn sigterm_stops_after_a_step_and_resumes_to_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    // 2,000 images in batches of 8: 250 steps per epoch, 4 epochs in all.
    let long = SMALL.replace("batch_size = 64", "batch_size = 8");
    let cfg = write_config(tmp.path(), "long.toml", &long);
    let full = run_dir(tmp.path(), "full");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", full.to_str().unwrap()]));

    let part = run_dir(tmp.path(), "part");
    let mut child = bin()
        .args(["run", cfg.to_str().unwrap(), "--out", part.to_str().unwrap(), "--quiet", "--data-dir"])
        .arg(data_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signal once the first epoch is recorded: three more are to come.
    let start = std::time::Instant::now();
    while !part.join("metrics.jsonl").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first epoch was recorded");
        assert!(start.elapsed().as_secs() < 300, "the run never finished its first epoch");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted at epoch"), "{}", stderr(&out));
    assert!(!part.join("summary.json").exists());
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", part.to_str().unwrap()]));
    assert_same_run(&part, &full);
}

#[test]
fn a_killed_run_resumes_to_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "k.toml", &SMALL.replace("limit_train = 2000", "limit_train = 6000"));
    let full = run_dir(tmp.path(), "full");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", full.to_str().unwrap()]));

    let killed = run_dir(tmp.path(), "killed");
    let mut child = bin()
        .args(["run", cfg.to_str().unwrap(), "--out", killed.to_str().unwrap(), "--quiet", "--data-dir"])
        .arg(data_dir())
        .spawn()
        .unwrap();
    // metrics.jsonl is written right after the first epoch's checkpoint.
    let first = killed.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while !first.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, mid-epoch
    child.wait().unwrap();
    assert!(!killed.join("summary.json").exists(), "the run finished before it could be killed");
    let done_before = metrics(&killed).len();
    assert!(done_before < metrics(&full).len());
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", killed.to_str().unwrap()]));
    assert_eq!(metrics(&killed), metrics(&full));
}

#[test]
fn eval_reloads_the_saved_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "small.toml", SMALL);
    let d = run_dir(tmp.path(), "r");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]));
    let out = espalier(&["eval", d.to_str().unwrap()]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let last = metrics(&d).pop().unwrap();
    let acc = last["metrics"]["accuracy"].as_f64().unwrap();
    assert!(text.contains(&format!("accuracy {acc:.2}")), "eval printed:\n{text}\nexpected accuracy {acc:.2}");
    assert!(text.contains("36.00%"), "{text}");
}

/// Every file of a directory with its bytes, to prove nothing was touched.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

/// A repo id that is not in the Hugging Face cache, offline: exit 2 naming
/// the repo and the cache, before anything is written (both ways of asking
/// for offline mode).
#[test]
fn an_uncached_model_offline_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "hub.toml",
        "[data]\ndataset = \"glue\"\ntask = \"sst2\"\n[pretrained]\npath = \"org/not-cached\"\n[train]\nepochs = 1\n\
         batch_size = 8\noptimizer = { kind = \"adamw\", lr = 1e-4 }\n",
    );
    let d = run_dir(tmp.path(), "hub");
    let hf_home = tmp.path().join("hf");
    for (env, flag) in [(Some("1"), None), (None, Some("--offline"))] {
        let mut c = bin();
        c.env_remove("HF_HUB_CACHE").env_remove("HUGGINGFACE_HUB_CACHE").env("HF_HOME", &hf_home);
        match env {
            Some(v) => c.env("HF_HUB_OFFLINE", v),
            None => c.env_remove("HF_HUB_OFFLINE"),
        };
        c.args(["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap(), "--quiet"]).args(flag);
        let out = c.arg("--data-dir").arg(data_dir()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("org/not-cached") && err.contains(&hf_home.join("hub").display().to_string()), "{err}");
        assert!(err.contains("offline"), "{err}");
        assert!(!d.exists() && !hf_home.exists());
    }
}

#[test]
fn config_errors_name_the_key_exit_2_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (SMALL.replace("seed = 3", "seed = 3\nsede = 4"), "sede"),
        (SMALL.replace("rounds = 2", "rounds = 2\nbogus = 1"), "bogus"),
        (SMALL.replace("batch_size = 64", "batch_size = \"many\""), "train.batch_size"),
        (
            SMALL.replace(
                "kind = \"imp\"\nrounds = 2\nepochs_per_round = 1\nrewind = \"epoch:1\"",
                "kind = \"one_shot\"\nsparsity = 1.5",
            ),
            "prune.schedule.sparsity",
        ),
        (SMALL.replace("rewind = \"epoch:1\"", "rewind = \"epoch:9\""), "prune.schedule.rewind"),
        (SMALL.replace("lr = 1e-3", "lr = 0"), "train.optimizer.lr"),
        (SMALL.replace("kind = \"adamw\"", "kind = \"adam\""), "adamw"),
        (pattern_config("").replace("n = 2", "n = 4"), "prune.granularity: n_of_m needs 0 < n < m"),
        (pattern_config("").replace("sparsity = 0.5", "sparsity = 0.6"), "the n_of_m granularity implies 0.5"),
        (
            SMALL.replace("[prune.schedule]", "[prune]\nadmm = { rho = 1e-3 }\n[prune.schedule]"),
            "prune.admm needs a one_shot",
        ),
        (pattern_config("admm = { rho = -1 }"), "prune.admm.rho"),
        (pattern_config("sr_ste = { decay = 1e-4, every = 3 }"), "every"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let cfg = write_config(tmp.path(), &format!("bad{i}.toml"), text);
        let out_dir = tmp.path().join(format!("out{i}"));
        let out = espalier(&["run", cfg.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "case {i}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle), "case {i}: expected `{needle}` in:\n{err}");
        assert!(err.contains(&format!("bad{i}.toml")), "case {i}: the file is not named:\n{err}");
        assert!(!out_dir.exists(), "case {i}: a run directory was created");
    }
}

/// A diverging run (learning rate 1e30) stops at the first non-finite loss
/// with exit code 3 and an error naming the epoch and step, writes no model,
/// marks itself failed in `summary.json`, and leaves the checkpoint of its
/// last completed epoch as it was; run again with a fixed learning rate, it
/// resumes; `train.skip_nonfinite_steps` skips that many bad steps first.
#[test]
fn a_diverging_run_stops_with_exit_3_and_keeps_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "small.toml", SMALL);
    let d = run_dir(tmp.path(), "nan");
    let nan = ["--set", "train.optimizer={kind=\"sgd\", lr=1e30}"];
    let out = espalier(&[&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()][..], &nan[..]].concat());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("diverged at epoch 0, step 1") && err.contains("last finite loss"), "{err}");
    assert!(!d.join("model.safetensors").exists());
    let failure: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap();
    assert_eq!(failure["status"], "failed", "{failure}");
    assert_eq!(failure["kind"], "diverged", "{failure}");
    assert_eq!(failure["at"], serde_json::json!([0, 1]), "{failure}");
    assert!(failure["last_finite_loss"].as_f64().is_some_and(f64::is_finite), "{failure}");

    // A failed run resumes with fixed training settings, not with another
    // experiment; once fixed it ends as an uninterrupted run does, its
    // failure and old config kept beside it.
    let fixed = ["--set", "train.optimizer={kind=\"sgd\", lr=0.05}"];
    let args = [&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()][..], &fixed[..]].concat();
    for other in ["seed=5", "train.optimizer={kind=\"adamw\", lr=1e-3}"] {
        let out = espalier(&[&args[..], &["--set", other][..]].concat());
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("a failed run resumes with changes to train.optimizer"), "{}", stderr(&out));
    }
    ok(&espalier(&args));
    let fresh = run_dir(tmp.path(), "fresh");
    ok(&espalier(&[&["run", cfg.to_str().unwrap(), "--out", fresh.to_str().unwrap()][..], &fixed[..]].concat()));
    assert_same_run(&d, &fresh);
    let done: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap();
    assert_eq!(done["status"], "done");
    assert!(d.join("failed-1.json").is_file() && d.join("config-1.toml").is_file());
    assert_ne!(std::fs::read(d.join("config-1.toml")).unwrap(), std::fs::read(d.join("config.toml")).unwrap());
    let skip = ["--set", "train.skip_nonfinite_steps=3"];
    let d2 = run_dir(tmp.path(), "nan-skip");
    let out =
        espalier(&[&["run", cfg.to_str().unwrap(), "--out", d2.to_str().unwrap()][..], &nan[..], &skip[..]].concat());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("step 4"), "{}", stderr(&out));

    // Diverging after a completed epoch: the checkpoint of that epoch is
    // left byte for byte. The checkpoint's output layer is set to NaN by
    // hand, so the resumed second epoch starts on a NaN loss.
    let d3 = run_dir(tmp.path(), "late");
    let args = ["run", cfg.to_str().unwrap(), "--out", d3.to_str().unwrap()];
    ok(&espalier(&[&args[..], &["--max-epochs", "1"][..]].concat()));
    let path = d3.join("checkpoint.safetensors");
    let mut ck = espalier_core::checkpoint::load(&path, &candle_core::Device::Cpu).unwrap();
    let w = ck.tensors["head.weight"].ones_like().unwrap().affine(0.0, f64::NAN).unwrap();
    ck.tensors.insert("head.weight".into(), w);
    espalier_core::checkpoint::save(&path, &ck.tensors, &ck.header).unwrap();
    let before = std::fs::read(&path).unwrap();
    let out = espalier(&args);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("diverged at epoch 1, step 0"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(metrics(&d3).len(), 1);
}

#[test]
fn missing_and_truncated_data_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "small.toml", SMALL);
    // Missing: an empty data root.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out_dir = tmp.path().join("r1");
    let out = bin()
        .args(["run", cfg.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--quiet", "--data-dir"])
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("train-images-idx3-ubyte"), "{}", stderr(&out));
    assert!(!out_dir.exists());

    // Truncated: a copy of the subset whose training images lose their tail.
    let cut = tmp.path().join("cut/mnist-subset");
    std::fs::create_dir_all(&cut).unwrap();
    for e in std::fs::read_dir(data_dir().join("mnist-subset")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, cut.join(p.file_name().unwrap())).unwrap();
    }
    let img = cut.join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&img, &bytes[..bytes.len() / 3]).unwrap();
    let out = bin()
        .args(["run", cfg.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--quiet", "--data-dir"])
        .arg(tmp.path().join("cut"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("truncated"), "{err}");
    assert!(!out_dir.exists());

    // Zero-pixel images (an IDX header of 4 × 0 × 0) and images of another
    // size than the model takes (4 × 5 × 5 for a 784-input MLP): exit 2,
    // the file or both shapes named, nothing written.
    let odd = tmp.path().join("odd/mnist-subset");
    std::fs::create_dir_all(&odd).unwrap();
    let write = |name: &str, dims: &[usize], data: &[u8]| {
        espalier_data::mnist::write_idx(&odd.join(name), dims, data).unwrap();
    };
    write("train-labels-idx1-ubyte", &[4], &[0, 1, 2, 3]);
    write("t10k-labels-idx1-ubyte", &[4], &[0, 1, 2, 3]);
    for (dims, needle) in [([4usize, 0, 0], "0×0 pixels"), ([4, 5, 5], "does not fit")] {
        let data = vec![7u8; dims.iter().product()];
        write("train-images-idx3-ubyte", &dims, &data);
        write("t10k-images-idx3-ubyte", &dims, &data);
        let out = bin()
            .args(["run", cfg.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--quiet", "--data-dir"])
            .arg(tmp.path().join("odd"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(!out_dir.exists());
    }
}

/// Two processes never run into the same directory: while one holds it
/// (here the test, through the same lock), another is refused with exit 2
/// and touches nothing.
#[test]
fn a_run_directory_in_use_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "small.toml", SMALL);
    let d = run_dir(tmp.path(), "busy");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap(), "--max-epochs", "1"]));
    let before = snapshot(&d);
    let held = std::fs::File::open(d.join(".lock")).unwrap();
    held.try_lock().unwrap();
    let out = espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("in use by another espalier process").count(), 1, "{}", stderr(&out));
    assert_eq!(snapshot(&d), before);
    drop(held);
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]));
}

#[test]
fn a_mismatched_checkpoint_or_config_damages_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "small.toml", SMALL);
    let a = run_dir(tmp.path(), "a");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", a.to_str().unwrap(), "--max-epochs", "1"]));
    let before = snapshot(&a);

    // Another experiment into the same run directory: refused, exit 2.
    let out = espalier(&["run", cfg.to_str().unwrap(), "--out", a.to_str().unwrap(), "--set", "train.epochs=3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("different experiment"), "{}", stderr(&out));
    assert_eq!(snapshot(&a), before);

    // A checkpoint of another shape (hidden [64] instead of [300, 100]).
    let b = run_dir(tmp.path(), "b");
    ok(&espalier(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
        "--max-epochs",
        "1",
        "--set",
        "model.hidden=[64]",
    ]));
    std::fs::copy(b.join("checkpoint.safetensors"), a.join("checkpoint.safetensors")).unwrap();
    let before = snapshot(&a);
    let out = espalier(&["run", cfg.to_str().unwrap(), "--out", a.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("checkpoint.safetensors") && err.contains("another model"), "{err}");
    assert_eq!(snapshot(&a), before);

    // Same config header but tensors of the wrong shape: the error names the tensor.
    let ck = espalier_core::checkpoint::load(&b.join("checkpoint.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut header = ck.header.clone();
    header["model"]["hidden"] = serde_json::json!([300, 100]);
    espalier_core::checkpoint::save(&a.join("checkpoint.safetensors"), &ck.tensors, &header).unwrap();
    let before = snapshot(&a);
    let out = espalier(&["run", cfg.to_str().unwrap(), "--out", a.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("fc1.weight") && err.contains("[300, 784]") && err.contains("[64, 784]"), "{err}");
    assert_eq!(snapshot(&a), before);
}

/// One epoch on full MNIST from ../shared reaches a sane accuracy.
#[test]
#[cfg_attr(not(feature = "shared-data"), ignore = "needs ../shared; run with --features shared-data")]
fn shared_full_mnist_one_epoch() {
    let shared = root().join("../shared/data");
    assert!(
        shared.join("mnist/train-images-idx3-ubyte.gz").is_file(),
        "full MNIST not found under {}",
        shared.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "full.toml",
        &SMALL
            .replace("path = \"mnist-subset\"\nlimit_train = 2000\nlimit_test = 500", "path = \"mnist\"")
            .replace("epochs = 2", "epochs = 1")
            .replace("batch_size = 64", "batch_size = 128")
            .replace("rounds = 2", "rounds = 1")
            .replace("rewind = \"epoch:1\"", "rewind = \"init\""),
    );
    let d = tmp.path().join("r");
    let out = bin()
        .args(["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap(), "--quiet", "--data-dir"])
        .arg(&shared)
        .output()
        .unwrap();
    ok(&out);
    let m = metrics(&d);
    let dense = m.iter().find(|r| r["type"] == "round" && r["round"] == 0).unwrap();
    assert!(dense["metrics"]["accuracy"].as_f64().unwrap() > 95.0, "{dense}");
}

#[test]
fn gradual_and_one_shot_schedules_reach_their_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let base = SMALL.replace("limit_train = 2000", "limit_train = 1000");
    let schedule = "kind = \"imp\"\nrounds = 2\nepochs_per_round = 1\nrewind = \"epoch:1\"";
    for (name, sched, extra, target) in [
        (
            "gradual",
            "kind = \"gradual\"\nfinal_sparsity = 0.8\nstart_epoch = 0\nend_epoch = 2\nevery_steps = 4",
            "",
            0.8,
        ),
        ("oneshot", "kind = \"one_shot\"\nsparsity = 0.7\nfinetune_epochs = 0", "\n[prune]\nscope = \"layer\"", 0.7),
    ] {
        let text = base.replace(schedule, sched).replace("[prune.schedule]", &format!("{extra}\n[prune.schedule]"));
        let cfg = write_config(tmp.path(), &format!("{name}.toml"), &text);
        let d = run_dir(tmp.path(), name);
        ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]));
        let last = metrics(&d).pop().unwrap();
        assert_eq!(last["type"], "round", "{name}");
        assert!((last["sparsity"].as_f64().unwrap() - target).abs() < 1e-3, "{name}: {last}");
        assert!(last["metrics"]["accuracy"].as_f64().unwrap() > 50.0, "{name}: {last}");
    }
    // The 80% model through the sparse kernels: `bench RUN_DIR` packs the
    // layers sparse enough and times the masked dense and the sparse forward.
    let gradual = run_dir(tmp.path(), "gradual");
    let out = espalier(&["bench", gradual.to_str().unwrap(), "--batch-sizes", "1,8", "--repeats", "2"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Csr") && text.contains("sparse ms") && text.lines().count() >= 6, "bench printed:\n{text}");
}

/// A one-hidden-layer MLP on 1,000 images with a one-shot 2:4 schedule: the
/// base of the pattern-pruning tests.
fn pattern_config(prune_extra: &str) -> String {
    SMALL
        .replace("limit_train = 2000", "limit_train = 1000")
        .replace("limit_test = 500", "limit_test = 300")
        .replace("hidden = [300, 100]", "hidden = [64]")
        .replace(
            "[prune.schedule]\nkind = \"imp\"\nrounds = 2\nepochs_per_round = 1\nrewind = \"epoch:1\"",
            &format!(
                "[prune]\ngranularity = {{ kind = \"n_of_m\", n = 2, m = 4 }}\n{prune_extra}\n\
                 [prune.schedule]\nkind = \"one_shot\"\nsparsity = 0.5\nfinetune_epochs = 2"
            ),
        )
}

/// The masks of a saved model, by parameter name.
fn saved_masks(model: &Path) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let t = candle_core::safetensors::load(model, &candle_core::Device::Cpu).unwrap();
    let mut out = Vec::new();
    for (k, m) in &t {
        if let Some(name) = k.strip_prefix("__mask__.") {
            let w = t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            out.push((name.to_string(), m.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// ADMM towards a 2:4 pattern, hard projection, SR-STE retraining: the
/// saved model obeys the pattern exactly (2 of every 4 inputs, pruned
/// weights zero), the ADMM trace is reported, and a run interrupted in the
/// ADMM phase and in the SR-STE phase resumes to the same bytes (ADMM's
/// Z/U/ρ and the straight-through masks live in the checkpoint).
#[test]
fn admm_pattern_pruning_with_sr_ste_obeys_the_pattern_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let text = pattern_config(
        "admm = { rho = 1.0, rho_growth = 1.3, rho_max = 100.0, every_steps = 4 }\nsr_ste = { decay = 2e-4 }",
    )
    .replace("lr = 1e-3", "lr = 1e-2");
    let cfg = write_config(tmp.path(), "admm.toml", &text);
    let full = run_dir(tmp.path(), "full");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", full.to_str().unwrap()]));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["method"], "admm-magnitude-2:4-sr-ste");
    let trace = summary["method_report"]["admm_trace"].as_array().unwrap();
    assert!(trace.len() >= 4, "{trace:?}");
    let gaps: Vec<f64> = trace.iter().map(|t| t["primal_gap"].as_f64().unwrap()).collect();
    assert!(gaps[1..].iter().all(|g| *g < gaps[0]), "ADMM brings W towards the pattern: {gaps:?}");
    assert!(trace[1..].iter().all(|t| t["dual_residual"].as_f64().is_some() && t["support_change"].as_f64().is_some()));
    let at_projection = summary["method_report"]["admm_projection_gap"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&at_projection), "‖W − Π(W)‖/‖W‖ at the projection: {at_projection}");
    assert!(summary["method_report"]["admm_converged"].is_boolean());
    let plot = std::fs::read_to_string(full.join("admm-gap.svg")).unwrap();
    assert!(plot.contains("class=\"series\"") && plot.contains(">optimizer step</text>"), "{plot}");
    assert!(std::fs::read_to_string(full.join("report.md")).unwrap().contains("](admm-gap.svg)"));
    let last = metrics(&full).pop().unwrap();
    assert!((last["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{last}");
    assert!(last["metrics"]["accuracy"].as_f64().unwrap() > 50.0, "{last}");
    let masks = saved_masks(&full.join("model.safetensors"));
    assert_eq!(masks.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["fc1.weight"]);
    for (name, m, w) in &masks {
        for (b, block) in m.chunks(4).enumerate() {
            assert_eq!(block.iter().filter(|&&x| x == 1.0).count(), 2, "{name} block {b}");
        }
        assert!(m.iter().zip(w).all(|(m, w)| *m == 1.0 || *w == 0.0), "{name}: pruned weights are zero");
    }

    let parts = run_dir(tmp.path(), "parts");
    run_in_parts(&cfg, &parts, &[Some(1), Some(2), None]);
    assert_same_run(&parts, &full);
}

/// SPUR (IMP + row/column group lasso) and movement pruning (cubic
/// schedule) run from configs alone, and report what they should.
#[test]
fn spur_and_movement_run_from_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let base = SMALL.replace("limit_train = 2000", "limit_train = 1000");
    let spur = base.replace(
        "lr_schedule = { kind = \"cosine\" }",
        "lr_schedule = { kind = \"cosine\" }\n[[train.regularizers]]\nkind = \"group_lasso\"\nlambda = 1e-3\nstart_epoch = 2",
    );
    let cfg = write_config(tmp.path(), "spur.toml", &spur);
    let d = run_dir(tmp.path(), "spur");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]));
    let csv = std::fs::read_to_string(d.join("results.csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().contains(",spur-magnitude-global-rewind-epoch1,"), "{csv}");
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    assert!(report.contains("Empty rows and columns"), "{report}");

    let movement = base.replace(
        "[prune.schedule]\nkind = \"imp\"\nrounds = 2\nepochs_per_round = 1\nrewind = \"epoch:1\"",
        "[prune]\nimportance = \"movement\"\n[prune.schedule]\nkind = \"gradual\"\nfinal_sparsity = 0.7\nend_epoch = 2\nevery_steps = 4",
    );
    let cfg = write_config(tmp.path(), "movement.toml", &movement);
    let d = run_dir(tmp.path(), "movement");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]));
    let last = metrics(&d).pop().unwrap();
    assert!((last["sparsity"].as_f64().unwrap() - 0.7).abs() < 1e-3, "{last}");
    assert!(last["metrics"]["accuracy"].as_f64().unwrap() > 50.0, "{last}");
    let summary = std::fs::read_to_string(d.join("summary.json")).unwrap();
    assert!(summary.contains("\"gradual-movement-global\""), "{summary}");
}

/// The saved tensors of a model file, by name, as raw bits.
fn saved_bits(model: &Path) -> Vec<(String, Vec<u32>)> {
    let t = candle_core::safetensors::load(model, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<u32>)> = t
        .iter()
        .map(|(k, v)| {
            let v = v.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap();
            (k.clone(), v.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// SPUR with λ = 0 is IMP, bit for bit (the same metrics, the same saved
/// weights and masks), with the group lasso in the gradient and as its
/// proximal step.
#[test]
fn spur_with_lambda_zero_is_imp_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let base = SMALL.replace("limit_train = 2000", "limit_train = 500").replace("hidden = [300, 100]", "hidden = [32]");
    let run = |name: &str, text: &str| {
        let cfg = write_config(tmp.path(), &format!("{name}.toml"), text);
        let d = run_dir(tmp.path(), name);
        ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]));
        d
    };
    let imp = run("imp", &base);
    for mode in ["gradient", "proximal"] {
        let spur = base.replace(
            "lr_schedule = { kind = \"cosine\" }",
            &format!(
                "lr_schedule = {{ kind = \"cosine\" }}\n[[train.regularizers]]\nkind = \"group_lasso\"\nlambda = 0.0\n\
                 mode = \"{mode}\""
            ),
        );
        assert_ne!(spur, base, "the regularizer went into the config");
        let d = run(&format!("spur-{mode}"), &spur);
        assert_eq!(metrics(&d), metrics(&imp), "{mode}: metrics");
        let (a, b) = (saved_bits(&d.join("model.safetensors")), saved_bits(&imp.join("model.safetensors")));
        assert_eq!(a.len(), b.len());
        for ((na, va), (nb, vb)) in a.iter().zip(&b) {
            assert!(na == nb && va == vb, "{mode}: {na} differs from IMP's");
        }
    }
}

/// Per-layer targets (`prune.layer_sparsity`) prune each named matrix to its
/// own sparsity, the ADMM projection included; a name that is not a pruned
/// parameter is a config error before anything is written.
#[test]
fn layer_sparsity_targets_each_matrix_and_a_typo_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let base = SMALL.replace("limit_train = 2000", "limit_train = 500").replace("epochs = 2", "epochs = 1").replace(
        "[prune.schedule]\nkind = \"imp\"\nrounds = 2\nepochs_per_round = 1\nrewind = \"epoch:1\"",
        "[prune]\nscope = \"layer\"\nschedule = { kind = \"one_shot\", sparsity = 0.5, finetune_epochs = 1, \
             reset_optimizer = true }\nlayer_sparsity = { \"fc1.weight\" = 0.9 }\n\
             admm = { rho = 1e-3, every_steps = 4, lr = \"constant\" }",
    );
    assert!(base.contains("layer_sparsity"), "{base}");
    let cfg = write_config(tmp.path(), "targets.toml", &base);
    let d = run_dir(tmp.path(), "targets");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap()]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    let layers = summary["sparsity"]["layers"].as_array().unwrap();
    let sparsity = |name: &str| {
        let l = layers.iter().find(|l| l["name"] == name).unwrap();
        1.0 - l["kept"].as_f64().unwrap() / l["numel"].as_f64().unwrap()
    };
    assert!((sparsity("fc1.weight") - 0.9).abs() < 1e-3, "{layers:?}");
    assert!((sparsity("fc2.weight") - 0.5).abs() < 1e-3, "{layers:?}");

    let typo = write_config(tmp.path(), "typo.toml", &base.replace("\"fc1.weight\" = 0.9", "\"fc9.weight\" = 0.9"));
    let bad = run_dir(tmp.path(), "typo");
    let out = espalier(&["run", typo.to_str().unwrap(), "--out", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("prune.layer_sparsity") && stderr(&out).contains("fc9.weight"), "{}", stderr(&out));
    assert!(!bad.exists(), "a run directory was created");
}

#[test]
fn check_accepts_every_committed_config() {
    let mut n = 0;
    let dirs = [
        "",
        "glue",
        "mnist",
        "vision",
        "structured",
        "spur",
        "admm",
        "admm/zhang",
        "movement",
        "wanda",
        "sparse-bench",
    ];
    for dir in dirs.map(|d| root().join("configs").join(d)) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let out = bin().args(["check", path.to_str().unwrap()]).output().unwrap();
            ok(&out);
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(text.contains("name = "), "{stem}: {text}");
            n += 1;
        }
    }
    assert!(n >= 40, "only {n} configs found");
}

/// `--device cuda` on a build without the `cuda` feature: a clear error that
/// names the feature, a non-zero exit, no run directory.
#[test]
#[cfg(not(feature = "cuda"))]
fn cuda_without_the_feature_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "small.toml", SMALL);
    let d = run_dir(tmp.path(), "r");
    let out = espalier(&["run", cfg.to_str().unwrap(), "--device", "cuda:0", "--out", d.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`cuda` feature"), "{}", stderr(&out));
    assert!(!d.exists(), "a run directory was created");
}

/// `export --format sparse --fold`: an MLP whose fc2 lost whole rows (IMP at
/// a 1 × 300 block granularity on fc2 only) exports with those neurons
/// folded into fc3's bias and removed: a narrower model that evaluates like
/// the run; `--fold` with another format is refused.
#[test]
fn a_folded_export_removes_the_empty_neurons_and_evaluates_like_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let text = SMALL.replace(
        "[prune.schedule]",
        "[prune]\ngranularity = { kind = \"block\", rows = 1, cols = 300 }\nparams = { include = [\"fc2.weight\"], defaults = false }\n\
         [prune.schedule]",
    );
    let cfg = write_config(tmp.path(), "small.toml", &text);
    let run = run_dir(tmp.path(), "run");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()]));
    let out = tmp.path().join("folded");
    let export =
        espalier(&["export", run.to_str().unwrap(), "--format", "sparse", "--fold", "--out", out.to_str().unwrap()]);
    ok(&export);
    // 2 rounds at 20%: 36 of fc2's 100 rows empty.
    let printed = String::from_utf8_lossy(&export.stdout);
    assert!(printed.contains("folded 36 of 100 units of fc2"), "{printed}");
    let ck = espalier_core::checkpoint::load(&out.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(ck.header["model"]["hidden"], serde_json::json!([300, 64]), "{}", ck.header["model"]);
    let eval = |d: &Path| {
        let o = espalier(&["eval", d.to_str().unwrap()]);
        ok(&o);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let acc = text.lines().find(|l| l.starts_with("accuracy ")).map(str::to_owned);
        (acc.unwrap_or_else(|| panic!("no accuracy in {text}")), text)
    };
    let ((a, _), (b, folded)) = (eval(&run), eval(&out));
    assert_eq!(a, b, "{folded}");
    let hf = espalier(&["export", run.to_str().unwrap(), "--format", "hf", "--fold"]);
    assert_eq!(hf.status.code(), Some(2), "{}", stderr(&hf));
    assert!(stderr(&hf).contains("--fold applies to --format sparse"), "{}", stderr(&hf));
}

/// `export --format sparse` writes the pruned weights as their kept
/// entries: a smaller file that `eval` and `predict` read back to the same
/// numbers; an existing export is refused without `--force` and left as it
/// was; a Hugging Face export of a non-BERT run is refused.
#[test]
fn a_sparse_export_is_smaller_and_evaluates_like_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    // 3 IMP rounds at 50%: 87.5% of the weights pruned.
    let text = SMALL.replace("rounds = 2", "rounds = 3\nrate = 0.5");
    let cfg = write_config(tmp.path(), "small.toml", &text);
    let run = run_dir(tmp.path(), "run");
    ok(&espalier(&["run", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()]));
    let out = tmp.path().join("exported");
    let export = espalier(&["export", run.to_str().unwrap(), "--format", "sparse", "--out", out.to_str().unwrap()]);
    ok(&export);
    let printed = String::from_utf8_lossy(&export.stdout);
    assert!(printed.contains("fc1.weight") && printed.contains("csr"), "{printed}");
    let size = |p: &Path| std::fs::metadata(p.join("model.safetensors")).unwrap().len();
    assert!(size(&out) * 3 < size(&run), "export {} bytes, run {} bytes", size(&out), size(&run));
    let eval = |d: &Path| {
        let o = espalier(&["eval", d.to_str().unwrap()]);
        ok(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(eval(&out), eval(&run));
    let predict = |d: &Path, f: &str| {
        let p = tmp.path().join(f);
        ok(&espalier(&["predict", d.to_str().unwrap(), "--out", p.to_str().unwrap(), "--limit", "20"]));
        std::fs::read_to_string(p).unwrap()
    };
    let (a, b) = (predict(&run, "a.jsonl"), predict(&out, "b.jsonl"));
    assert_eq!(a, b);
    assert_eq!(a.lines().count(), 20);
    // Again without --force: refused, the export untouched.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let again = espalier(&["export", run.to_str().unwrap(), "--format", "sparse", "--out", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before);
    let forced = ["export", run.to_str().unwrap(), "--format", "sparse", "--out", out.to_str().unwrap(), "--force"];
    ok(&espalier(&forced));
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before);
    let hf = espalier(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        "hf",
        "--out",
        tmp.path().join("hf").to_str().unwrap(),
    ]);
    assert!(!hf.status.success());
    assert!(stderr(&hf).contains("needs a BERT run"), "{}", stderr(&hf));
    assert!(!tmp.path().join("hf").exists());
}
