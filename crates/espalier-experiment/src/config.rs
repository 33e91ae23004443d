//! Experiment configs: TOML → validated [`Experiment`], before any tensor
//! is allocated.
//!
//! Every table denies unknown keys; values are checked by each piece's
//! `validate`; every error names the file and the key path (`train.optimizer.lr`)
//! and says what is allowed. `--set key.path=value` overrides are applied to
//! the TOML tree before validation, so they are checked the same way.

use std::path::{Path, PathBuf};

use espalier_data::cifar::Labels;
use espalier_data::config::DataConfig;
use espalier_data::glue::Split;
use espalier_models::ModelConfig;
use espalier_prune::{Dense, Method, PruneConfig, StructuredConfig};
use espalier_train::{LrSchedule, OptimizerConfig, RegularizerConfig};
use serde::{Deserialize, Serialize};

/// A config error: bad syntax, an unknown key, a wrong type, an impossible
/// value. The binary exits with code 2 on these.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

/// The whole experiment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Run name (default: the config file's stem); the run directory is
    /// `runs/<name>` unless `--out` says otherwise.
    #[serde(default)]
    pub name: Option<String>,
    /// Seed of every random draw (init, shuffling, dropout, random pruning).
    #[serde(default)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// The dataset.
    pub data: DataConfig,
    /// The model, built from scratch (give this or `pretrained`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelConfig>,
    /// A pretrained checkpoint to start from (give this or `model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PretrainedConfig>,
    /// An Espalier model to start from: a run directory (its
    /// `model.safetensors`) or a `.safetensors` file written by Espalier; the
    /// model config comes from the file's header (instead of `model` or
    /// `pretrained`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Training.
    pub train: TrainConfig,
    /// Pruning (absent: dense training only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneConfig>,
    /// Structured pruning after the dense epochs: units chosen by a
    /// criterion, the model physically shrunk, then fine-tuned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<StructuredConfig>,
}

fn default_device() -> String {
    "cpu".into()
}

/// A pretrained model to fine-tune.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PretrainedConfig {
    /// A local Hugging Face model directory (`config.json` +
    /// `model.safetensors`), or a repo id `org/name[@revision]` resolved in
    /// the local Hub cache (never downloaded).
    pub path: String,
    /// Override of the checkpoint's `hidden_dropout_prob`.
    #[serde(default)]
    pub hidden_dropout_prob: Option<f64>,
    /// Override of the checkpoint's `attention_probs_dropout_prob`.
    #[serde(default)]
    pub attention_probs_dropout_prob: Option<f64>,
}

/// The training loop's settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs of dense training (round 0).
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule, restarted in every phase/round.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Clip the global gradient norm.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Extra terms of the objective.
    #[serde(default)]
    pub regularizers: Vec<RegularizerConfig>,
    /// Keep the weights of the best evaluation epoch of each round in
    /// `best.safetensors` (the metrics of the best epoch are reported too).
    #[serde(default)]
    pub keep_best: bool,
    /// Steps with a non-finite loss to skip (no update) before the run stops
    /// as diverged (exit code 3); 0 stops at the first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip_nonfinite_steps: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_eval_batch() -> usize {
    1000
}

/// Reads `path`, applies `--set` overrides, and validates.
pub fn load(path: &Path, sets: &[String]) -> Result<Experiment, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read config: {e}", path.display())))?;
    parse(&text, sets).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
}

/// Parses and validates config text (errors without the file name).
pub fn parse(text: &str, sets: &[String]) -> Result<Experiment, ConfigError> {
    let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError(format!("invalid TOML: {e}")))?;
    for s in sets {
        apply_set(&mut root, s)?;
    }
    non_finite(&root, "")?;
    let exp: Experiment = serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            ConfigError(e.into_inner().to_string())
        } else {
            ConfigError(format!("key `{path}`: {}", e.into_inner()))
        }
    })?;
    exp.validate().map_err(ConfigError)?;
    Ok(exp)
}

/// Refuses NaN and infinite numbers anywhere (`lr = nan` trained on NaN, and
/// a config holding NaN never equals itself, so its run could not resume).
fn non_finite(table: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    fn check(v: &toml::Value, key: &str) -> Result<(), ConfigError> {
        match v {
            toml::Value::Float(f) if !f.is_finite() => {
                Err(ConfigError(format!("key `{key}`: {f} is not a finite number")))
            }
            toml::Value::Table(t) => non_finite(t, key),
            toml::Value::Array(xs) => xs.iter().enumerate().try_for_each(|(i, x)| check(x, &format!("{key}[{i}]"))),
            _ => Ok(()),
        }
    }
    table.iter().try_for_each(|(k, v)| check(v, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }))
}

/// Applies one `key.path=value` override; the value is read as TOML (a
/// number, bool, array, inline table or quoted string) or else as a bare
/// string.
pub fn apply_set(root: &mut toml::Table, set: &str) -> Result<(), ConfigError> {
    let (key, raw) =
        set.split_once('=').ok_or_else(|| ConfigError(format!("--set `{set}`: expected key.path=value")))?;
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut table = root;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError(format!("--set `{set}`: `{}` is not a table", parts[..=i].join("."))))?;
    }
    Ok(())
}

impl Experiment {
    /// The pruning method the experiment configures: `[prune]` (masks),
    /// `[structured]` (a shrink), or none (dense training).
    pub fn method(&self) -> espalier_core::Result<Box<dyn Method>> {
        match (&self.prune, &self.structured) {
            (Some(p), _) => p.method(self.train.epochs, &self.train.regularizers, self.seed),
            (None, Some(s)) => s.method(),
            (None, None) => Ok(Box::new(Dense::default())),
        }
    }

    /// Settings that are valid but probably not what was meant (logged when
    /// a run starts).
    pub fn warnings(&self) -> Vec<String> {
        self.prune.as_ref().map(|p| p.warnings(self.train.optimizer.adaptive())).unwrap_or_default()
    }

    /// Checks every value a type cannot; messages name the key path.
    pub fn validate(&self) -> Result<(), String> {
        parse_device_name(&self.device).map_err(|e| format!("key `device`: {e}"))?;
        match (&self.model, &self.pretrained, &self.init_from) {
            (Some(m), None, None) => m.validate("model")?,
            (None, None, Some(from)) => {
                if from.as_os_str().is_empty() {
                    return Err("key `init_from` is empty: give an Espalier run directory or model file".into());
                }
            }
            (None, Some(p), None) => {
                for (k, v) in [
                    ("hidden_dropout_prob", p.hidden_dropout_prob),
                    ("attention_probs_dropout_prob", p.attention_probs_dropout_prob),
                ] {
                    if let Some(v) = v {
                        if !(0.0..1.0).contains(&v) {
                            return Err(format!("key `pretrained.{k}` must be in [0, 1), found {v}"));
                        }
                    }
                }
            }
            (None, None, None) => {
                return Err(
                    "missing [model] (a model from scratch), [pretrained] (a Hugging Face checkpoint) or `init_from` \
                     (an Espalier model)"
                        .into(),
                )
            }
            _ => return Err("give only one of [model], [pretrained] and `init_from`".into()),
        }
        if let DataConfig::Glue(g) = &self.data {
            if g.max_seq_len < 3 {
                return Err(format!("key `data.max_seq_len` must be at least 3, found {}", g.max_seq_len));
            }
            match (g.eval_split.as_str(), g.holdout) {
                ("holdout", Some(0) | None) => {
                    return Err("key `data.eval_split` = \"holdout\" needs `data.holdout`: the number of \
                                training examples to set aside (at least 1)"
                        .into())
                }
                ("holdout", Some(_)) => {}
                (_, Some(_)) => {
                    return Err("key `data.holdout` is for `data.eval_split = \"holdout\"`".into());
                }
                (split, None) => {
                    let split: Split = split.parse().map_err(|e| format!("key `data.eval_split`: {e}"))?;
                    if split == Split::Train {
                        return Err("key `data.eval_split` must be `dev`, `test` or `holdout`, not `train`".into());
                    }
                }
            }
            if g.tokenizer.is_none() && self.pretrained.is_none() {
                return Err("key `data.tokenizer` is required when there is no [pretrained] model".into());
            }
        }
        if let DataConfig::Xnli(x) = &self.data {
            if x.max_seq_len < 3 {
                return Err(format!("key `data.max_seq_len` must be at least 3, found {}", x.max_seq_len));
            }
            x.plan()?;
            if x.tokenizer.is_none() && self.pretrained.is_none() {
                return Err("key `data.tokenizer` is required when there is no [pretrained] model".into());
            }
        }
        if matches!(&self.data, DataConfig::Cifar10(c) if c.labels == Labels::Coarse) {
            return Err("key `data.labels`: CIFAR-10 has one label; `coarse` is for cifar100".into());
        }
        if let Some(m) = &self.model {
            check_model_fits_data(m, &self.data)?;
        }
        let t = &self.train;
        if t.batch_size == 0 {
            return Err("key `train.batch_size` must be at least 1".into());
        }
        if t.eval_batch_size == 0 {
            return Err("key `train.eval_batch_size` must be at least 1".into());
        }
        t.optimizer.validate("train.optimizer")?;
        t.lr_schedule.validate("train.lr_schedule")?;
        if let Some(c) = t.clip_grad_norm {
            if !(c > 0.0 && c.is_finite()) {
                return Err(format!("key `train.clip_grad_norm` must be > 0, found {c}"));
            }
        }
        for (i, r) in t.regularizers.iter().enumerate() {
            r.validate(&format!("train.regularizers[{i}]"))?;
        }
        if let Some(p) = &self.prune {
            p.validate(t.epochs)?;
        }
        if let Some(s) = &self.structured {
            if self.prune.is_some() {
                return Err("give [prune] (masks) or [structured] (shrinking), not both".into());
            }
            s.validate("structured")?;
        }
        if let Some(name) =
            self.name.as_deref().filter(|n| n.is_empty() || n.contains(['/', '\\']) || *n == "." || *n == "..")
        {
            return Err(format!("key `name` must be a plain directory name, found `{name}`"));
        }
        Ok(())
    }
}

/// A model built from scratch must take the dataset's images and predict its
/// classes (else the first batch would fail with a shape error).
fn check_model_fits_data(m: &ModelConfig, d: &DataConfig) -> Result<(), String> {
    let Some((channels, pixels, classes)) = d.image_shape() else { return Ok(()) };
    let data = serde_json::to_value(d).ok().and_then(|v| v["dataset"].as_str().map(String::from)).unwrap_or_default();
    let (input_key, input, want, classes_found) = match m {
        ModelConfig::Mlp(c) => ("input_dim", c.input_dim, channels * pixels, c.num_classes),
        ModelConfig::Lenet5(_) if pixels != 28 * 28 => {
            return Err(format!("key `model.kind`: lenet5 takes 28×28 images, not the {data} ones"))
        }
        ModelConfig::Lenet5(c) => ("in_channels", c.in_channels, channels, c.num_classes),
        ModelConfig::Resnet(c) => ("in_channels", c.in_channels, channels, c.num_classes),
        ModelConfig::Vgg(c) => ("in_channels", c.in_channels, channels, c.num_classes),
        ModelConfig::Bert(_) => return Err(format!("key `model.kind`: bert takes text, not {data} images")),
    };
    if input != want {
        return Err(format!("key `model.{input_key}` is {input}, but {data} images need {want}"));
    }
    if classes_found != classes {
        return Err(format!("key `model.num_classes` is {classes_found}, but {data} has {classes} classes"));
    }
    Ok(())
}

/// Checks a device name (`cpu`, `cuda`, `cuda:N`).
pub fn parse_device_name(s: &str) -> Result<Option<usize>, String> {
    match s {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("unknown device `{s}`: expected `cpu`, `cuda` or `cuda:N`")),
    }
}

/// The candle device for a validated device name.
pub fn device(s: &str) -> Result<candle_core::Device, ConfigError> {
    match parse_device_name(s).map_err(ConfigError)? {
        None => Ok(candle_core::Device::Cpu),
        Some(i) => {
            if !cfg!(feature = "cuda") {
                return Err(ConfigError(format!(
                    "device `{s}` needs a build with the `cuda` feature (cargo build --release --features cuda)"
                )));
            }
            candle_core::Device::new_cuda(i).map_err(|e| ConfigError(format!("cannot open CUDA device {i}: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use espalier_prune::ScheduleConfig;

    const BASE: &str = r#"
        seed = 1
        [data]
        dataset = "mnist"
        path = "mnist-subset"
        [model]
        kind = "mlp"
        hidden = [300, 100]
        [train]
        epochs = 2
        batch_size = 64
        optimizer = { kind = "adamw", lr = 1e-3 }
        [prune]
        schedule = { kind = "imp", rounds = 3, epochs_per_round = 1 }
    "#;

    #[test]
    fn parses_and_overrides() {
        let e = parse(BASE, &["train.epochs=5".into(), "prune.schedule.rewind=init".into()]).unwrap();
        assert_eq!(e.train.epochs, 5);
        assert_eq!(
            e.prune.unwrap().schedule,
            ScheduleConfig::Imp {
                rate: 0.2,
                rounds: Some(3),
                target_sparsity: None,
                epochs_per_round: 1,
                rewind: espalier_prune::Rewind::Init,
                reset_optimizer: true
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&BASE.replace("seed = 1", "seed = 1\nsede = 2"), &[]).unwrap_err().0;
        assert!(e.contains("sede"), "{e}");
        let e = parse(BASE, &["train.batch_size=\"x\"".into()]).unwrap_err().0;
        assert!(e.contains("train.batch_size"), "{e}");
        let e = parse(BASE, &["prune.schedule={kind=\"one_shot\", sparsity=1.5}".into()]).unwrap_err().0;
        assert!(e.contains("prune.schedule.sparsity") && e.contains("[0, 1)"), "{e}");
        let e = parse(BASE, &["train.optimizer.lr=-1".into()]).unwrap_err().0;
        assert!(e.contains("train.optimizer.lr"), "{e}");
        let e = parse(BASE, &["model.hiden=[3]".into()]).unwrap_err().0;
        assert!(e.contains("hiden"), "{e}");
        let e = parse(BASE, &["device=\"tpu\"".into()]).unwrap_err().0;
        assert!(e.contains("device") && e.contains("cuda:N"), "{e}");
    }

    const CIFAR: &str = r#"
        [data]
        dataset = "cifar100"
        [model]
        kind = "resnet"
        depth = 20
        num_classes = 100
        [train]
        epochs = 2
        batch_size = 128
        optimizer = { kind = "sgd", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 }
    "#;

    #[test]
    fn cifar_data_and_vision_models() {
        let e = parse(CIFAR, &[]).unwrap();
        let DataConfig::Cifar100(c) = &e.data else { panic!("not cifar100: {:?}", e.data) };
        assert!(c.augment && c.labels == Labels::Fine && c.path.is_none());
        let e = parse(CIFAR, &["data.dataset=\"cifar10\"".into(), "model.num_classes=10".into()]).unwrap();
        assert!(matches!(e.data, DataConfig::Cifar10(_)));
        let err = parse(CIFAR, &["data.dataset=\"cifar1000\"".into()]).unwrap_err().0;
        assert!(err.contains("cifar1000") && err.contains("cifar10") && err.contains("cifar100"), "{err}");
        let err = parse(CIFAR, &["data.augmnet=false".into()]).unwrap_err().0;
        assert!(err.contains("augmnet"), "{err}");
        let err = parse(CIFAR, &["data.labels=\"medium\"".into()]).unwrap_err().0;
        assert!(err.contains("`data`") && err.contains("medium") && err.contains("coarse"), "{err}");
        let err = parse(CIFAR, &["data.augment=1".into()]).unwrap_err().0;
        assert!(err.contains("`data`") && err.contains("boolean"), "{err}");
        let err = parse(CIFAR, &["data.dataset=\"cifar10\"".into(), "data.labels=\"coarse\"".into()]).unwrap_err().0;
        assert!(err.contains("data.labels") && err.contains("cifar100"), "{err}");
        // The model must fit the data.
        let err = parse(CIFAR, &["model.num_classes=10".into()]).unwrap_err().0;
        assert!(err.contains("model.num_classes") && err.contains("100 classes"), "{err}");
        assert!(parse(CIFAR, &["model.num_classes=20".into(), "data.labels=\"coarse\"".into()]).is_ok());
        let err = parse(CIFAR, &["model.in_channels=1".into()]).unwrap_err().0;
        assert!(err.contains("model.in_channels") && err.contains("need 3"), "{err}");
        let err = parse(CIFAR, &["model.depth=21".into()]).unwrap_err().0;
        assert!(err.contains("model.depth") && err.contains("6n + 2"), "{err}");
        let err = parse(CIFAR, &["model={kind=\"vgg\", depth=19}".into()]).unwrap_err().0;
        assert!(err.contains("model.num_classes") && err.contains("100 classes"), "{err}");
        let err = parse(CIFAR, &["model={kind=\"lenet5\", num_classes=100, in_channels=3}".into()]).unwrap_err().0;
        assert!(err.contains("28×28"), "{err}");
        let err = parse(BASE, &["model={kind=\"resnet\", depth=20}".into()]).unwrap_err().0;
        assert!(err.contains("model.in_channels") && err.contains("need 1"), "{err}");
        assert!(parse(BASE, &["model={kind=\"resnet\", depth=20, in_channels=1}".into()]).is_ok());
    }

    /// Every config shipped under configs/ is accepted (`espalier check`).
    #[test]
    fn shipped_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut stack = vec![root];
        let mut n = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() && p.file_name().is_some_and(|n| n != "tables") {
                    // configs/tables holds table specs (checked in table.rs).
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "toml") {
                    load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 4, "found only {n} configs");
        let vision = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/vision");
        let e = load(&vision.join("vgg19-cifar100-magnitude.toml"), &[]).unwrap();
        assert!(matches!(e.model, Some(ModelConfig::Vgg(_))) && matches!(e.data, DataConfig::Cifar100(_)));
    }

    #[test]
    fn glue_configs_need_a_tokenizer_and_a_labelled_eval_split() {
        let glue = r#"
            [pretrained]
            path = "models/x"
            [data]
            dataset = "glue"
            task = "rte"
            [train]
            epochs = 1
            batch_size = 8
            optimizer = { kind = "adamw", lr = 2e-5 }
        "#;
        let e = parse(glue, &[]).unwrap();
        let DataConfig::Glue(g) = &e.data else { panic!("not glue") };
        assert_eq!((g.max_seq_len, g.eval_split.as_str()), (128, "dev"));
        let err = parse(glue, &["data.eval_split=\"train\"".into()]).unwrap_err().0;
        assert!(err.contains("data.eval_split"), "{err}");
        let holdout = ["data.eval_split=\"holdout\"".into(), "data.holdout=408".into()];
        let e = parse(glue, &holdout).unwrap();
        assert_eq!(parse(&toml::to_string(&e).unwrap(), &[]).unwrap(), e);
        let err = parse(glue, &holdout[..1]).unwrap_err().0;
        assert!(err.contains("data.holdout"), "{err}");
        let err = parse(glue, &holdout[1..]).unwrap_err().0;
        assert!(err.contains("data.holdout") && err.contains("holdout\""), "{err}");
        let err = parse(glue, &["data.task=\"rtee\"".into()]).unwrap_err().0;
        assert!(err.contains("rtee"), "{err}");
        let err = parse(&glue.replace("[pretrained]\n            path = \"models/x\"", ""), &[]).unwrap_err().0;
        assert!(err.contains("[model]") && err.contains("[pretrained]"), "{err}");
        let err = parse(glue, &["model={kind=\"lenet5\"}".into()]).unwrap_err().0;
        assert!(err.contains("only one of"), "{err}");
    }

    #[test]
    fn xnli_configs_default_round_trip_and_name_the_key() {
        let xnli = r#"
            [pretrained]
            path = "google-bert/bert-base-multilingual-cased"
            [data]
            dataset = "xnli"
            [train]
            epochs = 2
            batch_size = 32
            optimizer = { kind = "adamw", lr = 2e-5 }
        "#;
        let e = parse(xnli, &[]).unwrap();
        let DataConfig::Xnli(x) = &e.data else { panic!("not xnli: {:?}", e.data) };
        assert_eq!((x.train.as_str(), x.eval_split.as_str(), x.max_seq_len), ("mnli", "test", 128));
        assert_eq!(x.eval_languages, espalier_data::xnli::LanguageList::All);
        assert_eq!(x.plan().unwrap().languages.len(), 15);
        // The resolved config (the run directory's config.toml) reads back the same.
        let sets = ["data.eval_languages=[\"de\", \"sw\"]".into(), "data.train=\"en\"".into()];
        for e in [e.clone(), parse(xnli, &sets).unwrap()] {
            assert_eq!(parse(&toml::to_string(&e).unwrap(), &[]).unwrap(), e);
        }
        for (set, needles) in [
            ("data.eval_languages=[\"en\", \"xx\"]", &["data.eval_languages", "`xx`", "\"all\""][..]),
            ("data.eval_languages=3", &["data.eval_languages", "\"all\""][..]),
            ("data.train=\"gloss\"", &["data.train", "`gloss`", "mnli"][..]),
            ("data.eval_split=\"train\"", &["data.eval_split", "dev, test"][..]),
            ("data.max_seq_len=2", &["data.max_seq_len"][..]),
            ("data.languages=\"all\"", &["`data`", "languages", "eval_languages"][..]),
        ] {
            let err = parse(xnli, &[set.into()]).unwrap_err().0;
            assert!(needles.iter().all(|n| err.contains(n)), "{set}: {err}");
        }
        let err = parse(&xnli.replace("path = \"google-bert/bert-base-multilingual-cased\"", ""), &[]).unwrap_err().0;
        assert!(err.contains("pretrained"), "{err}");
        let scratch = xnli.replace("[pretrained]\n            path = \"google-bert/bert-base-multilingual-cased\"", "");
        let bert = "model={kind=\"bert\", task={kind=\"classification\", num_labels=3}}";
        let err = parse(&scratch, &[bert.into()]).unwrap_err().0;
        assert!(err.contains("data.tokenizer"), "{err}");
    }
}
