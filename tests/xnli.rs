//! End-to-end test of XNLI through the `espalier` binary: a tiny BERT
//! written by the test (its `vocab.txt` beside it, so the tokenizer comes
//! from the model), XNLI-1.0-layout TSV fixtures for the 15 languages and a
//! GLUE-layout `MNLI/train.tsv`, all in a temporary data root. The real
//! XNLI is not needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use common::ok;
use espalier_models::bert::{Bert, BertConfig, BertTask};

/// The 15 codes in the XNLI paper's order (the order of `"all"`).
const ALL: [&str; 15] = ["en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur"];

const XNLI_HEAD: &str = "language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t\
                         sentence2_parse\tsentence1\tsentence2\tpromptID\tpairID\tgenre\tlabel1\tlabel2\tlabel3\t\
                         label4\tlabel5\tsentence1_tokenized\tsentence2_tokenized\tmatch";
const MNLI_HEAD: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t\
                         sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label";
const LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];
const WORDS: [&str; 12] = ["the", "cat", "dog", "sat", "ran", "on", "mat", "park", "not", "a", "red", "slept"];

/// The binary, single-threaded (as in `tests/cli.rs`).
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_espalier"));
    c.env("CANDLE_NUM_THREADS", "1").env("RAYON_NUM_THREADS", "1").env("HF_HUB_OFFLINE", "1");
    c
}

fn espalier(data: &Path, args: &[&str]) -> Output {
    bin().args(args).arg("--data-dir").arg(data).arg("--quiet").output().expect("run espalier")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A premise/hypothesis pair made of the vocabulary's words, varied by `i`.
fn pair(i: usize) -> (String, String) {
    let w = |k: usize| WORDS[(i * 7 + k * 5) % WORDS.len()];
    (format!("{} {} {} {} {}.", w(0), w(1), w(2), w(3), w(4)), format!("{} {} {}.", w(5), w(6), w(7)))
}

/// `XNLI-1.0/xnli.{dev,test}.tsv` (the test split: every language, 2 to 4
/// pairs each; the dev split: only `dev_langs`) and `glue/MNLI/train.tsv`
/// (24 pairs) under `root`.
fn write_data(root: &Path, dev_langs: &[&str]) {
    let xnli = root.join("XNLI-1.0");
    std::fs::create_dir_all(&xnli).unwrap();
    let mut i = 0;
    let mut rows = |langs: &[&str]| {
        let mut out = vec![XNLI_HEAD.to_string()];
        for (k, lang) in langs.iter().enumerate() {
            for _ in 0..2 + k % 3 {
                let (s1, s2) = pair(i);
                let gold = LABELS[i % 3];
                out.push(format!(
                    "{lang}\t{gold}\t\t\t\t\t{s1}\t{s2}\t{i}\t{i}\tfiction\t{gold}\t{gold}\t{gold}\t{gold}\t{gold}\t{s1}\t{s2}\tTrue"
                ));
                i += 1;
            }
        }
        out.join("\n") + "\n"
    };
    std::fs::write(xnli.join("xnli.test.tsv"), rows(&ALL)).unwrap();
    std::fs::write(xnli.join("xnli.dev.tsv"), rows(dev_langs)).unwrap();
    let mnli = root.join("glue/MNLI");
    std::fs::create_dir_all(&mnli).unwrap();
    let mut train = vec![MNLI_HEAD.to_string()];
    for i in 0..24 {
        let (s1, s2) = pair(100 + i);
        let gold = LABELS[i % 3];
        train.push(format!("{i}\t{i}\t{i}n\tfiction\t()\t()\t()\t()\t{s1}\t{s2}\t{gold}\t{gold}"));
    }
    std::fs::write(mnli.join("train.tsv"), train.join("\n") + "\n").unwrap();
}

/// A tiny BERT checkpoint in Hugging Face layout with its `vocab.txt`.
fn write_model(dir: &Path) {
    let vocab: Vec<&str> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."].into_iter().chain(WORDS).collect();
    let cfg = BertConfig {
        vocab_size: vocab.len(),
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 64,
        ..BertConfig::base(BertTask::Classification { num_labels: 3 })
    };
    Bert::init(cfg, 11, &Device::Cpu).unwrap().save_pretrained(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
}

fn config(model: &Path) -> String {
    format!(
        r#"seed = 7
[pretrained]
path = {model:?}
[data]
dataset = "xnli"
train = "mnli"
eval_split = "test"
eval_languages = "all"
max_seq_len = 32
[train]
epochs = 2
batch_size = 8
eval_batch_size = 16
optimizer = {{ kind = "adamw", lr = 1e-3 }}
keep_best = true
"#,
        model = model.display().to_string()
    )
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// `accuracy.<lang>` for every language in `langs`, each a multiple of
/// 100/n for that language's n pairs, and `accuracy` their mean.
fn check_per_language(metrics: &serde_json::Value, langs: &[&str], sizes: &[usize]) {
    let m = metrics.as_object().unwrap_or_else(|| panic!("no metrics: {metrics}"));
    assert_eq!(m.len(), langs.len() + 1, "{metrics}");
    let mut sum = 0.0;
    for (lang, n) in langs.iter().zip(sizes) {
        let v = m[&format!("accuracy.{lang}")].as_f64().unwrap_or_else(|| panic!("no accuracy.{lang}: {metrics}"));
        let correct = v * *n as f64 / 100.0;
        assert!((correct - correct.round()).abs() < 1e-9 && (0.0..=100.0).contains(&v), "{lang}: {v} of {n}");
        sum += v;
    }
    let mean = m["accuracy"].as_f64().unwrap();
    assert!((mean - sum / langs.len() as f64).abs() < 1e-9, "accuracy {mean} is not the mean of {metrics}");
}

/// Pairs per language in the test fixture (2 to 4, by position in `ALL`).
fn test_size(lang: &str) -> usize {
    2 + ALL.iter().position(|l| *l == lang).unwrap() % 3
}

/// Trained on MultiNLI and evaluated on all 15 test languages: every
/// epoch and round reports `accuracy.<lang>` per language and `accuracy` as
/// their mean, in `metrics.jsonl`, `summary.json`, `results.csv`,
/// `report.md`, the printed table and `espalier eval`.
#[test]
fn xnli_zero_shot_reports_every_language_and_their_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = (tmp.path().join("data"), tmp.path().join("tiny-bert"));
    write_data(&data, &["en", "de", "fr"]);
    write_model(&model);
    let cfg = tmp.path().join("xnli.toml");
    std::fs::write(&cfg, config(&model)).unwrap();
    let run = tmp.path().join("run");
    let out = espalier(&data, &["run", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    ok(&out);
    let sizes: Vec<usize> = ALL.iter().map(|l| test_size(l)).collect();

    let lines = common::metrics(&run);
    assert_eq!(lines.len(), 3, "2 epochs and a round: {lines:?}");
    for l in &lines {
        check_per_language(&l["metrics"], &ALL, &sizes);
    }
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["data"], "xnli");
    assert_eq!(summary["metric"], "accuracy");
    assert_eq!(summary["groups"], serde_json::json!(ALL));
    let round = &summary["rounds"][0];
    assert_eq!(round["metrics"], lines[2]["metrics"]);
    check_per_language(&round["best"]["metrics"], &ALL, &sizes);

    let csv = std::fs::read_to_string(run.join("results.csv")).unwrap();
    for lang in ALL {
        let v = round["metrics"][format!("accuracy.{lang}")].as_f64().unwrap();
        let row = format!(",xnli,dense,0.000000,accuracy.{lang},{v:.4},7\n");
        assert!(csv.contains(&row), "no `{row}` in\n{csv}");
        assert!(csv.contains(&format!(",accuracy.{lang}@best-epoch,")), "{csv}");
    }
    let mean = round["metrics"]["accuracy"].as_f64().unwrap();
    assert!(csv.contains(&format!(",xnli,dense,0.000000,accuracy,{mean:.4},7\n")), "{csv}");

    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    let header = format!("| round | epoch | accuracy (mean) | {} |", ALL.join(" | "));
    assert!(report.contains(&header), "{report}");
    let row = format!("| 0 | last | {mean:.2} | ");
    assert!(report.contains(&row) && report.contains("| 0 | best ("), "{report}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("accuracy per evaluation group") && printed.contains("    ur"), "{printed}");

    // `espalier eval` reloads the final model and gives the last epoch's numbers.
    let out = espalier(&data, &["eval", run.to_str().unwrap()]);
    ok(&out);
    let printed = String::from_utf8_lossy(&out.stdout);
    for (key, v) in round["metrics"].as_object().unwrap() {
        let line = format!("{key} {:.2}\n", v.as_f64().unwrap());
        assert!(printed.contains(&line), "no `{line}` in\n{printed}");
    }
}

/// Trained on one language's dev split and evaluated on a chosen list, in
/// the list's order, on the first N pairs of each language.
#[test]
fn xnli_trains_on_a_language_and_evaluates_a_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = (tmp.path().join("data"), tmp.path().join("tiny-bert"));
    write_data(&data, &["en", "de", "fr"]);
    write_model(&model);
    let cfg = tmp.path().join("xnli.toml");
    std::fs::write(&cfg, config(&model)).unwrap();
    let run = tmp.path().join("run");
    let sets = [
        "--set",
        "data.train=\"de\"",
        "--set",
        "data.eval_languages=[\"sw\", \"de\", \"el\"]",
        "--set",
        "data.limit_eval=3",
        "--set",
        "train.epochs=1",
    ];
    ok(&espalier(&data, &[&["run", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()][..], &sets[..]].concat()));
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["data"], "xnli-train-de");
    assert_eq!(summary["groups"], serde_json::json!(["sw", "de", "el"]));
    let sizes = [test_size("sw").min(3), test_size("de").min(3), test_size("el").min(3)];
    check_per_language(&summary["rounds"][0]["metrics"], &["sw", "de", "el"], &sizes);
}

/// A bad language, an unknown key, a bad training set, training and
/// evaluating on the dev split, and a language the split lacks: exit 2,
/// naming the key and what it takes (and the config file, or the data file
/// that lacks the language), nothing written.
#[test]
fn xnli_config_errors_exit_2_and_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = (tmp.path().join("data"), tmp.path().join("tiny-bert"));
    write_data(&data, &["en", "de", "fr"]);
    write_model(&model);
    let cfg = tmp.path().join("xnli.toml");
    std::fs::write(&cfg, config(&model)).unwrap();
    let cases: [(&str, &[&str]); 6] = [
        ("data.eval_languages=[\"en\", \"klingon\"]", &["data.eval_languages", "`klingon`", "\"all\"", "ur"]),
        ("data.eval_languages=\"xx\"", &["data.eval_languages", "`xx`"]),
        ("data.eval_langs=[\"en\"]", &["eval_langs", "eval_languages"]),
        ("data.train=\"mnly\"", &["data.train", "`mnly`", "mnli"]),
        ("data.train=\"de\"\u{0}data.eval_split=\"dev\"", &["data.eval_split", "`test`"]),
        ("data.eval_split=\"dev\"", &["data.eval_languages", "xnli.dev.tsv", "no `es` (Spanish)"]),
    ];
    for (i, (sets, needles)) in cases.iter().enumerate() {
        let run: PathBuf = tmp.path().join(format!("run{i}"));
        let mut args = vec!["run", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()];
        for s in sets.split('\u{0}') {
            args.extend(["--set", s]);
        }
        let out = espalier(&data, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        // The config's own errors name the config file; a language missing
        // from the data (the last case) names the data file instead.
        assert!(i == 5 || err.contains("xnli.toml"), "case {i}: the file is not named:\n{err}");
        assert!(needles.iter().all(|n| err.contains(n)), "case {i}: expected {needles:?} in:\n{err}");
        assert_eq!(err.matches(needles[0]).count(), 1, "case {i}: the message is repeated:\n{err}");
        assert!(!run.exists(), "case {i}: a run directory was created");
    }
}
