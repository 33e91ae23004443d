//! Fuzzing of the experiment config (issue #24): every committed config
//! (`configs/**/*.toml`, tables aside) mutated as TOML text (lines deleted,
//! duplicated or swapped, so keys are duplicated or missing; values replaced
//! by extreme numbers, NaN, infinities, strings, arrays and tables, so types
//! are wrong; keys garbled; bytes), with and without `--set` overrides. A
//! case must be accepted or refused with an error naming the file; an
//! accepted config must give its pruning method, and serialize to a TOML
//! text (the run directory's `config.toml`) that parses back to itself.
//!
//! `ESPALIER_FUZZ_CASES=1000000 cargo test -p espalier-experiment --test fuzz --release`
//! runs longer (`results/fuzz/README.md`).

use std::path::{Path, PathBuf};

use espalier_core::fuzz::{self, CappedAlloc, Mutator};
use espalier_experiment::config;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

fn configs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() && p.file_name().is_some_and(|n| n != "tables") {
            configs(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}

const SET_KEYS: [&str; 14] = [
    "seed",
    "name",
    "device",
    "data.limit_train",
    "data.max_seq_len",
    "model.hidden",
    "model.depth",
    "train.epochs",
    "train.batch_size",
    "train.optimizer",
    "train.optimizer.lr",
    "prune.schedule.rounds",
    "prune.target",
    "train..x",
];

/// TOML-aware mutation.
fn mutate_toml(m: &mut Mutator, b: &mut Vec<u8>) {
    for _ in 0..1 + m.below(3) {
        match m.below(8) {
            0..=3 => m.lines(b),
            4 | 5 => m.number(b),
            6 => {
                // A key garbled: a letter of a `key =` changed.
                let eqs: Vec<usize> = (1..b.len()).filter(|&i| b[i] == b'=' && b[i - 1] == b' ').collect();
                if !eqs.is_empty() {
                    let at = eqs[m.below(eqs.len())].saturating_sub(2);
                    b[at] = *m.pick(b"x_.\" ");
                }
            }
            _ => m.byte_op(b),
        }
    }
}

#[test]
fn fuzz_experiment_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut paths = Vec::new();
    configs(&root, &mut paths);
    assert!(paths.len() > 20, "the committed configs are missing from {}", root.display());
    let seeds: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let sets = std::cell::RefCell::new(Vec::<String>::new());
    fuzz::run(
        "experiment_config",
        10_000,
        |m| {
            let mut b = m.pick(&seeds).clone();
            let mut s = Vec::new();
            if m.chance(0.25) {
                let v = m.text().to_string();
                s.push(format!("{}={v}", m.pick(&SET_KEYS)));
            } else {
                mutate_toml(m, &mut b);
            }
            *sets.borrow_mut() = s;
            vec![("exp.toml".to_string(), b)]
        },
        |dir| {
            let r = config::load(&dir.join("exp.toml"), &sets.borrow());
            if let Ok(exp) = &r {
                exp.method().map_err(|e| format!("an accepted config has no method: {e}"))?;
                let text = toml::to_string(exp).map_err(|e| format!("an accepted config cannot be written: {e}"))?;
                let back = config::parse(&text, &[]).map_err(|e| format!("the written config is refused: {e}"))?;
                if &back != exp {
                    return Err(format!("the written config reads back differently:\n{text}"));
                }
            }
            fuzz::expect_named(r, "exp.toml")
        },
    );
}

/// A saved model as `init_from` and `espalier eval` read it: a safetensors
/// file whose `espalier` header holds the model config the model is rebuilt
/// from. Mutations reach the header's model config (numbers in it: widths,
/// depths) as well as the safetensors layout; the file must load or give an
/// error naming it, and nothing may be allocated from a size the file does
/// not back.
#[test]
fn fuzz_saved_model() {
    let cfgs = [
        r#"{"kind": "mlp", "hidden": [5, 3], "input_dim": 4, "num_classes": 3}"#,
        r#"{"kind": "lenet5", "in_channels": 1, "num_classes": 3, "conv": [2, 3], "fc": [4, 3]}"#,
    ];
    let tmp = tempfile::tempdir().unwrap();
    let seeds: Vec<Vec<u8>> = cfgs
        .iter()
        .map(|c| {
            let cfg: espalier_models::ModelConfig = serde_json::from_str(c).unwrap();
            let model = cfg.init(1, &candle_core::Device::Cpu).unwrap();
            let path = tmp.path().join("m.safetensors");
            espalier_experiment::rundir::save_model(&path, model.as_ref(), serde_json::json!({"sparsity": 0.0}))
                .unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect();
    fuzz::run(
        "saved_model",
        10_000,
        |m| {
            let mut b = m.pick(&seeds).clone();
            m.safetensors(&mut b);
            vec![("model.safetensors".to_string(), b)]
        },
        |dir| {
            let r = espalier_models::load_model(&dir.join("model.safetensors"), &candle_core::Device::Cpu);
            fuzz::expect_named(r, "model.safetensors")
        },
    );
}

/// Found by `saved_model` (case seed 3761): a LeNet-5 header whose widths
/// overflowed the fan-in computation (a panic); now an error naming the file.
#[test]
fn fuzz_regression_saved_model_with_a_huge_width() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saved-model-lenet5-huge-width.safetensors");
    let err = espalier_models::load_model(&path, &candle_core::Device::Cpu).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("saved-model-lenet5-huge-width.safetensors"), "{err}");
}

/// Found by `experiment_config` (case seed 3259): `weight_decay = nan` was
/// accepted, and a config holding NaN never equals itself, so its run
/// directory could not be resumed. NaN and infinities are refused by key.
#[test]
fn fuzz_regression_non_finite_numbers_are_refused() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml")).unwrap();
    for (set, key) in [
        ("train.optimizer.weight_decay=nan", "train.optimizer.weight_decay"),
        ("train.optimizer.lr=inf", "train.optimizer.lr"),
    ] {
        let err = config::parse(&text, &[set.to_string()]).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains("finite"), "{set}: {err}");
    }
}
