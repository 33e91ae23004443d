//! End-to-end tests of structured pruning through the `espalier` binary:
//! the physical shrink, its saved and reloaded model, and the ResNet paths
//! (BatchNorm re-estimation, i-SpaSP block by block, pruning in passes) on
//! a CIFAR-10 fixture in the real binary format.

mod common;

use std::path::Path;

use common::{assert_same_run, bin, espalier, metrics, ok, run_dir, run_in_parts, stderr, write_config, SMALL};

/// Dense MLP, then a structured step from it (`init_from`): the saved model
/// is the shrunk one, `eval` reloads it from its own header, and the report
/// carries the widths.
#[test]
fn structured_pruning_shrinks_saves_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let dense = SMALL
        .replace("hidden = [300, 100]", "hidden = [64]")
        .replace("epochs = 2\n", "epochs = 1\n")
        .split("[prune.schedule]")
        .next()
        .unwrap()
        .to_string();
    let d = run_dir(tmp.path(), "dense");
    ok(&espalier(&[
        "run",
        write_config(tmp.path(), "dense.toml", &dense).to_str().unwrap(),
        "--out",
        d.to_str().unwrap(),
    ]));
    let pruned = format!(
        "seed = 3\ninit_from = {:?}\n[data]\ndataset = \"mnist\"\npath = \"mnist-subset\"\nlimit_train = 2000\nlimit_test = 500\n\
         [train]\nepochs = 0\nbatch_size = 64\noptimizer = {{ kind = \"adamw\", lr = 1e-3 }}\n\
         [structured]\nmethod = \"ispasp\"\nkeep = 16\ncalibration = 200\nfinetune_epochs = 1\n",
        d.to_str().unwrap()
    );
    let p = run_dir(tmp.path(), "pruned");
    ok(&espalier(&[
        "run",
        write_config(tmp.path(), "p.toml", &pruned).to_str().unwrap(),
        "--out",
        p.to_str().unwrap(),
    ]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["structured"]["widths"]["fc1"], serde_json::json!([16, 64]), "{summary}");
    assert_eq!(summary["method"], "structured-ispasp");
    // 784·16 + 16 + 16·10 + 10 parameters after the shrink.
    assert_eq!(summary["parameters"], 784 * 16 + 16 + 16 * 10 + 10);
    let out = espalier(&["eval", p.to_str().unwrap()]);
    ok(&out);
    let acc = metrics(&p).pop().unwrap()["metrics"]["accuracy"].as_f64().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("accuracy {acc:.2}")), "eval printed:\n{text}\nexpected accuracy {acc:.2}");
    let report = std::fs::read_to_string(p.join("report.md")).unwrap();
    assert!(report.contains("| fc1 | 16 | 64 |"), "{report}");
    // Latency of the dense (dense.safetensors) and shrunk (model) networks side by
    // side; the FLOP ratio of 784-64-10 to 784-16-10 is 4.
    let out = espalier(&["bench", p.to_str().unwrap(), "--batch-sizes", "8", "--repeats", "2"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4.00x") && text.contains("50890 -> 12730"), "bench printed:\n{text}");
    // GReg-2 from the same dense run: the regularization phase (round 1
    // epochs), then the shrink to the same width.
    let greg = pruned.replace("method = \"ispasp\"", "method = \"greg2\"")
        + "[structured.greg]\ninterval = 2\nuniform_delta = 5e-3\nuniform_ceiling = 1e-2\ndelta = 0.05\nmax_epochs = 2\n\
        stabilize_steps = 0\n";
    let g = run_dir(tmp.path(), "greg");
    ok(&espalier(&["run", write_config(tmp.path(), "g.toml", &greg).to_str().unwrap(), "--out", g.to_str().unwrap()]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["structured"]["widths"]["fc1"], serde_json::json!([16, 64]), "{summary}");
    let trace = summary["method_report"]["greg_trace"].as_array().unwrap();
    assert_eq!(trace[0]["phase"], "uniform", "{summary}");
    assert!(trace.iter().any(|t| t["phase"] == "push"), "{summary}");
    // 2 regularization epochs and 1 fine-tuning epoch after round 0.
    assert_eq!(metrics(&g).iter().filter(|r| r["type"] == "epoch" && r["round"] == 1).count(), 3);
    let report = std::fs::read_to_string(g.join("report.md")).unwrap();
    assert!(report.contains("GReg penalty") && !report.contains("not converged"), "{report}");
    // λ and the magnitude ratio plotted into the run directory, shown in the report.
    for plot in ["greg-lambda", "greg-ratio"] {
        let svg = std::fs::read_to_string(g.join(format!("{plot}.svg"))).unwrap();
        assert!(svg.contains("class=\"series\"") && svg.contains(">fc1</text>"), "{plot}.svg:\n{svg}");
        assert!(std::fs::read(g.join(format!("{plot}.png"))).unwrap().starts_with(b"\x89PNG"));
        assert!(report.contains(&format!("]({plot}.svg)")), "{report}");
    }
    // Stopped inside the penalty phase and again after it: the method's state
    // (λ, the chosen units) and the phase resume to the same numbers.
    let g2 = run_dir(tmp.path(), "greg-parts");
    run_in_parts(&write_config(tmp.path(), "g.toml", &greg), &g2, &[Some(1), Some(1), None]);
    assert_same_run(&g2, &g);
    // Stopped after the shrink (inside fine-tuning): the shrunk model resumes.
    let p2 = run_dir(tmp.path(), "pruned-parts");
    let two_epochs = pruned.replace("finetune_epochs = 1", "finetune_epochs = 2");
    let cfg2 = write_config(tmp.path(), "p2.toml", &two_epochs);
    let full2 = run_dir(tmp.path(), "pruned-full");
    run_in_parts(&cfg2, &full2, &[None]);
    run_in_parts(&cfg2, &p2, &[Some(1), None]);
    assert_same_run(&p2, &full2);
    // A dense run is not a structured one.
    let out = espalier(&["bench", d.to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("neither a structured run nor a pruned one"),
        "{}",
        stderr(&out)
    );
}

/// CIFAR-10 binary files with random pixels and labels: 5 training batches
/// of 16 records and a test batch of 32, under `<root>/cifar-10-batches-bin`.
fn cifar10_fixture(root: &Path) {
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = espalier_core::Rng::new(77);
    let mut file = |name: &str, n: usize| {
        let mut bytes = Vec::new();
        for _ in 0..n {
            let label = rng.below(10) as u8;
            bytes.push(label);
            // A faint class signal on noise, so the images are learnable.
            bytes.extend((0..3072).map(|i| (rng.below(128) + if i % 10 == label as usize { 120 } else { 0 }) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for b in 1..=5 {
        file(&format!("data_batch_{b}.bin"), 16);
    }
    file("test_batch.bin", 32);
}

/// A ResNet-8 on CIFAR-10 fixtures: training with augmentation and BatchNorm,
/// resumed after an interruption to the same numbers (running statistics
/// and augmentation included), evaluated again from the saved model.
const CIFAR_SMALL: &str = r#"
seed = 5
[data]
dataset = "cifar10"
[model]
kind = "resnet"
depth = 8
[train]
epochs = 2
batch_size = 16
eval_batch_size = 16
optimizer = { kind = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }
lr_schedule = { kind = "step", step_epochs = 1, gamma = 0.1 }
[prune]
scope = "layer"
schedule = { kind = "one_shot", sparsity = 0.5, finetune_epochs = 1 }
"#;

#[test]
fn cifar_resnet_runs_resumes_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cifar10_fixture(&data);
    let cfg = write_config(tmp.path(), "cifar.toml", CIFAR_SMALL);
    let run = |out: &Path, extra: &[&str]| {
        let o = bin()
            .args(["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "--data-dir"])
            .arg(&data)
            .args(extra)
            .output()
            .unwrap();
        ok(&o);
    };
    let full = run_dir(tmp.path(), "full");
    run(&full, &[]);
    let m = metrics(&full);
    assert_eq!(m.len(), 3 + 2, "3 epochs and 2 round lines");
    let last = m.last().unwrap();
    assert!((last["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-3, "{last}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["model"].as_str(), summary["data"].as_str()), (Some("resnet-8"), Some("cifar10")));

    let parts = run_dir(tmp.path(), "parts");
    run(&parts, &["--max-epochs", "1"]);
    run(&parts, &[]);
    assert_same_run(&parts, &full);

    let out = bin().args(["eval", full.to_str().unwrap(), "--quiet", "--data-dir"]).arg(&data).output().unwrap();
    ok(&out);
    let acc = last["metrics"]["accuracy"].as_f64().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("accuracy {acc:.2}")), "eval printed:\n{text}\nexpected accuracy {acc:.2}");

    // Half of every block's inner channels (L1) removed from the trained
    // ResNet: the block-output BN (bn2) keeps all its channels, so after a
    // plain shrink its running statistics are the dense model's; with
    // `recalibrate_bn` they are re-estimated on the shrunk model.
    let bn2 = |run: &Path| -> Vec<f32> {
        let ck = espalier_core::checkpoint::load(&run.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
        ck.tensors["layer1.0.bn2.running_mean"].to_vec1().unwrap()
    };
    for (n, name) in [(0, "shrunk"), (64, "recalibrated")] {
        let st = format!(
            "seed = 5\ninit_from = {full:?}\n[data]\ndataset = \"cifar10\"\n[train]\nepochs = 0\nbatch_size = 16\n\
             eval_batch_size = 16\noptimizer = {{ kind = \"sgd\", lr = 0.01 }}\n[structured]\nmethod = \"l1\"\n\
             keep_ratio = 0.5\ncalibration = 32\nrecalibrate_bn = {n}\n"
        );
        let cfg = write_config(tmp.path(), &format!("{name}.toml"), &st);
        let d = run_dir(tmp.path(), name);
        let o = bin()
            .args(["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap(), "--quiet", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        ok(&o);
        let (dense, shrunk) = (bn2(&full), bn2(&d));
        assert_eq!(dense.len(), shrunk.len(), "{name}: bn2 keeps its channels");
        assert_eq!(dense == shrunk, n == 0, "{name}: dense {dense:?} vs shrunk {shrunk:?}");
    }

    // i-SpaSP block by block from the trained ResNet-8 (three stages of one
    // block): each block chosen through the already shrunk and fine-tuned
    // model, one epoch after each block, then one of final fine-tuning; the
    // same numbers when stopped after every epoch and resumed.
    let blocks = format!(
        "seed = 5\ninit_from = {full:?}\n[data]\ndataset = \"cifar10\"\n[train]\nepochs = 0\nbatch_size = 16\n\
         eval_batch_size = 16\noptimizer = {{ kind = \"sgd\", lr = 0.01 }}\n[structured]\nmethod = \"ispasp\"\n\
         keep_ratio = 0.5\ncalibration = 32\nblock_by_block = true\nblock_finetune_epochs = 1\n\
         block_finetune_lr = 0.005\nfinetune_epochs = 1\n[structured.ispasp]\nchunk = 16\npruned_bn = \"batch\"\n"
    );
    let bcfg = write_config(tmp.path(), "blocks.toml", &blocks);
    // Runs `cfg` into `d` (stopping after `max` epochs, if given).
    let run = |cfg: &Path, d: &Path, max: Option<&str>| {
        let mut args = vec!["run", cfg.to_str().unwrap(), "--out", d.to_str().unwrap(), "--quiet"];
        args.extend(max.map(|m| ["--max-epochs", m]).into_iter().flatten());
        let o = bin().args(&args).arg("--data-dir").arg(&data).output().unwrap();
        ok(&o);
    };
    let summary_of = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap()
    };
    // The round numbers of a run's round records, and its epoch count.
    let rounds_and_epochs = |d: &Path| -> (Vec<u64>, usize) {
        let m = metrics(d);
        let rounds = m.iter().filter(|r| r["type"] == "round").map(|r| r["round"].as_u64().unwrap()).collect();
        (rounds, m.iter().filter(|r| r["type"] == "epoch").count())
    };
    let b = run_dir(tmp.path(), "blocks");
    run(&bcfg, &b, None);
    let summary = summary_of(&b);
    assert_eq!(summary["method"], "structured-ispasp-block-by-block");
    let widths = &summary["structured"]["widths"];
    for (set, n) in [("layer1.0.conv1", 16), ("layer2.0.conv1", 32), ("layer3.0.conv1", 64)] {
        assert_eq!(widths[set], serde_json::json!([n / 2, n]), "{summary}");
    }
    let (rounds, epochs) = rounds_and_epochs(&b);
    assert_eq!(rounds, [0, 1, 2, 3], "one round per block");
    assert_eq!(epochs, 4, "one epoch per block and one more");
    assert!(b.join("dense.safetensors").exists());
    let parts = run_dir(tmp.path(), "blocks-parts");
    for max in [Some("1"), Some("1"), Some("1"), None] {
        run(&bcfg, &parts, max);
    }
    assert_same_run(&parts, &b);
    // Two passes at rising sparsity (structured.passes): each keeps
    // 0.25^(1/2) = 1/2 of what it finds, so 16 → 8 → 4 channels, with a
    // fine-tuning epoch between; the same when stopped and resumed.
    let passes = blocks
        .replace("method = \"ispasp\"", "method = \"activation\"")
        .replace("keep_ratio = 0.5", "keep_ratio = 0.25")
        .replace(
            "block_by_block = true\nblock_finetune_epochs = 1\nblock_finetune_lr = 0.005\n",
            "passes = 2\npass_finetune_epochs = 1\n",
        );
    let pcfg = write_config(tmp.path(), "passes.toml", &passes);
    let pd = run_dir(tmp.path(), "passes");
    run(&pcfg, &pd, None);
    let summary = summary_of(&pd);
    for (set, n) in [("layer1.0.conv1", 16), ("layer2.0.conv1", 32), ("layer3.0.conv1", 64)] {
        assert_eq!(summary["structured"]["widths"][set], serde_json::json!([n / 4, n]), "{summary}");
    }
    let (rounds, epochs) = rounds_and_epochs(&pd);
    assert_eq!(rounds, [0, 1, 2], "one round per pass");
    assert_eq!(epochs, 2, "one epoch after each pass");
    let pparts = run_dir(tmp.path(), "passes-parts");
    for max in [Some("1"), None] {
        run(&pcfg, &pparts, max);
    }
    assert_same_run(&pparts, &pd);
    // Skipping the first block of every stage leaves nothing in a ResNet-8:
    // a config error before anything is written.
    let skip = write_config(
        tmp.path(),
        "skip.toml",
        &blocks.replace("[structured]\n", "[structured]\nskip_first_block = true\n"),
    );
    let none = run_dir(tmp.path(), "skip");
    let o = bin()
        .args(["run", skip.to_str().unwrap(), "--out", none.to_str().unwrap(), "--quiet", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("skip_first_block"), "{}", stderr(&o));
    assert!(!none.exists());

    // A truncated batch file is named, with its byte offset, before anything is written.
    let p = data.join("cifar-10-batches-bin/data_batch_4.bin");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let fresh = run_dir(tmp.path(), "fresh");
    let out = bin()
        .args(["run", cfg.to_str().unwrap(), "--out", fresh.to_str().unwrap(), "--quiet", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("data_batch_4.bin") && err.contains("byte offset 46095"), "{err}");
    assert!(!fresh.exists());
}
