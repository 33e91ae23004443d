//! Datasets as an experiment config names them (`[data]`, tagged by
//! `dataset`), and loading them under a data root.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use espalier_core::{bail, Error, Metric, Result};
use serde::{Deserialize, Serialize};

use crate::cifar::{self, CifarDataset, Labels, Variant};
use crate::glue::{self, GlueDataset, GlueTask};
use crate::mnist::{self, Flavor};
use crate::tokenize::Tokenizer;
use crate::xnli::{self, LanguageList, TrainSource, XnliDataset, XnliPlan, XnliSplit};
use crate::{DataRoot, Dataset, EvalGroup, Prefix, Subset};

/// Datasets, tagged by `dataset`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "dataset", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// MNIST (IDX files, raw or .gz).
    Mnist(IdxData),
    /// Fashion-MNIST (same format).
    FashionMnist(IdxData),
    /// A GLUE task in the standard GLUE directory layout.
    Glue(GlueData),
    /// CIFAR-10, binary version (`cifar-10-batches-bin`).
    Cifar10(CifarData),
    /// CIFAR-100, binary version (`cifar-100-binary`).
    Cifar100(CifarData),
    /// XNLI (`XNLI-1.0`), trained on MultiNLI or one language, evaluated
    /// per language.
    Xnli(XnliData),
}

/// Where the CIFAR binary files are, how much of them to use, and how to
/// augment the training images.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CifarData {
    /// Directory of the binary batch files, relative to the data root
    /// (default: `cifar-10-batches-bin` or `cifar-100-binary`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Use only the first N training examples.
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Use only the first N test examples.
    #[serde(default)]
    pub limit_test: Option<usize>,
    /// Random 32×32 crops of the 4-pixel padded image and horizontal flips
    /// in training (He et al. 2016, §4.2).
    #[serde(default = "yes")]
    pub augment: bool,
    /// CIFAR-100's `fine` (100) or `coarse` (20) classes.
    #[serde(default)]
    pub labels: Labels,
}

fn yes() -> bool {
    true
}

/// A GLUE task and how to tokenize it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GlueData {
    /// `cola`, `sst2`, `mrpc`, `stsb`, `qqp`, `mnli`, `mnli-mm`, `qnli`, `rte`, `wnli`.
    pub task: GlueTask,
    /// The GLUE root under the data root (default `glue`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Tokenizer directory (`tokenizer.json` or `vocab.txt`); default: the
    /// pretrained model's directory.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Longest sequence after tokenization (longer pairs are truncated
    /// longest-first).
    #[serde(default = "default_max_len")]
    pub max_seq_len: usize,
    /// The split evaluated every epoch: `dev` (default), `test` where it
    /// is labelled (MRPC's Microsoft test file), or `holdout`: `holdout`
    /// training examples set aside (where the dev labels are not at hand,
    /// for choosing a recipe without looking at the test file).
    #[serde(default = "default_eval_split")]
    pub eval_split: String,
    /// With `eval_split = "holdout"`: how many training examples are set
    /// aside as the evaluation set, drawn by a fixed seeded permutation (the
    /// same for every run and seed) and taken out of training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<usize>,
    /// Use only the first N training examples.
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Use only the first N evaluation examples.
    #[serde(default)]
    pub limit_eval: Option<usize>,
}

fn default_max_len() -> usize {
    128
}
fn default_eval_split() -> String {
    "dev".into()
}

/// XNLI: what to train on, which languages of which split to evaluate,
/// and how to tokenize (see [`crate::xnli`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct XnliData {
    /// The XNLI directory under the data root, holding `xnli.dev.tsv` and
    /// `xnli.test.tsv` (or the folder above `XNLI-1.0/`); default `XNLI-1.0`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The training set: `mnli` (MultiNLI, `<glue_path>/MNLI/train.tsv`;
    /// the default) or a language code (that language's XNLI dev split).
    #[serde(default = "default_xnli_train")]
    pub train: String,
    /// The GLUE root under the data root whose `MNLI/train.tsv` is the
    /// MultiNLI training set (default `glue`, as GLUE configs).
    #[serde(default)]
    pub glue_path: Option<PathBuf>,
    /// The split evaluated every epoch: `test` (default; 5,010 pairs per
    /// language) or `dev` (2,490).
    #[serde(default = "default_xnli_eval_split")]
    pub eval_split: String,
    /// `"all"` (default: the 15 languages) or a list of codes, in the
    /// order they are reported.
    #[serde(default)]
    pub eval_languages: LanguageList,
    /// Tokenizer directory (`tokenizer.json` or `vocab.txt`); default: the
    /// pretrained model's directory.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Longest sequence after tokenization (longer pairs are truncated
    /// longest-first).
    #[serde(default = "default_max_len")]
    pub max_seq_len: usize,
    /// Use only the first N training examples.
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Evaluate only the first N examples of each language.
    #[serde(default)]
    pub limit_eval: Option<usize>,
}

fn default_xnli_train() -> String {
    "mnli".into()
}
fn default_xnli_eval_split() -> String {
    "test".into()
}

impl XnliData {
    /// The checked choice of training set, split and languages; errors name
    /// the key.
    pub fn plan(&self) -> std::result::Result<XnliPlan, String> {
        XnliPlan::new(&self.train, &self.eval_split, &self.eval_languages)
    }
}

/// Where IDX files are and how much of them to use.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdxData {
    /// Directory of the four IDX files, relative to the data root
    /// (default: `mnist` or `fashion-mnist`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Use only the first N training examples.
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Use only the first N test examples.
    #[serde(default)]
    pub limit_test: Option<usize>,
}

impl DataConfig {
    /// A short name for reports (`mnist`, `glue-sst2`, `cifar100-coarse`).
    pub fn name(&self) -> String {
        match self {
            DataConfig::Mnist(_) => "mnist".into(),
            DataConfig::FashionMnist(_) => "fashion-mnist".into(),
            DataConfig::Glue(g) => format!("glue-{}", g.task.key()),
            DataConfig::Cifar10(_) => "cifar10".into(),
            DataConfig::Cifar100(c) if c.labels == Labels::Coarse => "cifar100-coarse".into(),
            DataConfig::Cifar100(_) => "cifar100".into(),
            DataConfig::Xnli(x) => match x.plan().map(|p| p.train) {
                Ok(TrainSource::Dev(l)) => format!("xnli-train-{l}"),
                _ => "xnli".into(),
            },
        }
    }

    /// The `(channels, height·width, classes)` of an image dataset.
    pub fn image_shape(&self) -> Option<(usize, usize, usize)> {
        match self {
            DataConfig::Mnist(_) | DataConfig::FashionMnist(_) => Some((1, 28 * 28, 10)),
            DataConfig::Cifar10(c) => Some((3, 32 * 32, c.labels.num_classes(Variant::Cifar10))),
            DataConfig::Cifar100(c) => Some((3, 32 * 32, c.labels.num_classes(Variant::Cifar100))),
            DataConfig::Glue(_) | DataConfig::Xnli(_) => None,
        }
    }

    /// Loads the datasets under `root`; `model_dir` is the pretrained
    /// model's directory (its tokenizer is the default for text data).
    pub fn load(&self, root: &DataRoot, model_dir: Option<&Path>) -> Result<Data> {
        load(self, root, model_dir)
    }
}

/// An error with what was being done.
fn context(e: Error, what: String) -> Error {
    Error::msg(format!("{what}: {e}"))
}

/// The train and test sets of an experiment, with the metrics to report.
pub struct Data {
    /// Training set.
    pub train: Arc<dyn Dataset>,
    /// Evaluation set.
    pub test: Arc<dyn Dataset>,
    /// Metrics, the first one primary.
    pub metrics: Vec<Metric>,
    /// Parts of the evaluation set reported on their own (XNLI's
    /// languages); empty for the other datasets.
    pub groups: Vec<EvalGroup>,
    /// Where the files were read from.
    pub source: PathBuf,
}

/// Loads the datasets of `cfg` under `root`; `model_dir` is the pretrained
/// model's directory (its tokenizer is the default for text data).
fn load(cfg: &DataConfig, root: &DataRoot, model_dir: Option<&Path>) -> Result<Data> {
    match cfg {
        DataConfig::Mnist(idx) => load_idx(idx, root, Flavor::Mnist, "mnist"),
        DataConfig::FashionMnist(idx) => load_idx(idx, root, Flavor::FashionMnist, "fashion-mnist"),
        DataConfig::Glue(g) => load_glue(g, root, model_dir),
        DataConfig::Cifar10(c) => load_cifar(c, root, Variant::Cifar10),
        DataConfig::Cifar100(c) => load_cifar(c, root, Variant::Cifar100),
        DataConfig::Xnli(x) => load_xnli(x, root, model_dir),
    }
}

fn load_cifar(c: &CifarData, root: &DataRoot, variant: Variant) -> Result<Data> {
    let default = variant.default_dir();
    let dir = root.join(c.path.clone().unwrap_or_else(|| default.into()));
    let hint = || {
        format!(
            "loading {default} from {} (data root {}: set --data-dir or ESPALIER_DATA)",
            dir.display(),
            root.0.display()
        )
    };
    let mut train = CifarDataset::load(&dir, variant, cifar::Split::Train, c.labels)
        .map_err(|e| context(e, hint()))?
        .with_augmentation(c.augment);
    let mut test = CifarDataset::load(&dir, variant, cifar::Split::Test, c.labels).map_err(|e| context(e, hint()))?;
    if let Some(n) = c.limit_train {
        train = train.take(n);
    }
    if let Some(n) = c.limit_test {
        test = test.take(n);
    }
    Ok(Data {
        train: Arc::new(train),
        test: Arc::new(test),
        metrics: vec![Metric::Accuracy],
        source: dir,
        groups: vec![],
    })
}

/// The tokenizer of text data: `data.tokenizer`, else the pretrained
/// model's.
fn tokenizer(dir: Option<&Path>, model_dir: Option<&Path>, what: &str) -> Result<Tokenizer> {
    let Some(tok_dir) = dir.or(model_dir) else {
        bail!("{what} data needs a tokenizer: set data.tokenizer or [pretrained]")
    };
    Tokenizer::from_dir(tok_dir).map_err(|e| context(e, format!("loading the tokenizer from {}", tok_dir.display())))
}

/// The first `n` examples of `d` (all when `None`).
fn limit(d: Arc<dyn Dataset>, n: Option<usize>) -> Arc<dyn Dataset> {
    match n {
        Some(n) => Arc::new(Prefix::new(d, n)),
        None => d,
    }
}

/// XNLI: the training set (MultiNLI or one language's dev split), and the
/// evaluated languages of the split one after another, a group each.
fn load_xnli(x: &XnliData, root: &DataRoot, model_dir: Option<&Path>) -> Result<Data> {
    let plan = x.plan().map_err(Error::msg)?;
    let xnli_root = root.join(x.path.clone().unwrap_or_else(|| xnli::DEFAULT_DIR.into()));
    let tok = tokenizer(x.tokenizer.as_deref(), model_dir, "XNLI")?;
    let located =
        |dir: &Path| format!("{} (data root {}: set --data-dir or ESPALIER_DATA)", dir.display(), root.0.display());
    let train: Arc<dyn Dataset> = match plan.train {
        TrainSource::Mnli => {
            let glue_root = root.join(x.glue_path.clone().unwrap_or_else(|| "glue".into()));
            let hint = || format!("loading the MultiNLI training set (key `data.train`) from {}", located(&glue_root));
            Arc::new(xnli::train_set(&glue_root, &tok, x.max_seq_len).map_err(|e| context(e, hint()))?)
        }
        TrainSource::Dev(lang) => {
            let hint =
                || format!("loading the XNLI `{lang}` dev split (key `data.train`) from {}", located(&xnli_root));
            Arc::new(
                XnliDataset::load(&xnli_root, XnliSplit::Dev, Some(lang), &tok, x.max_seq_len)
                    .map_err(|e| context(e, hint()))?,
            )
        }
    };
    let hint = || format!("loading the XNLI {} split from {}", plan.split, located(&xnli_root));
    let path = plan.split.path(&xnli_root).map_err(|e| context(e, hint()))?;
    let examples = xnli::read_file(&path, Some(&plan.languages)).map_err(|e| context(e, hint()))?;
    let (mut ordered, mut groups) = (Vec::with_capacity(examples.len()), Vec::with_capacity(plan.languages.len()));
    for &lang in &plan.languages {
        let start = ordered.len();
        let of_lang = examples.iter().filter(|e| e.language == lang);
        ordered.extend(of_lang.take(x.limit_eval.unwrap_or(usize::MAX)).cloned());
        if ordered.len() == start {
            bail!("key `data.eval_languages`: {} holds no `{lang}` ({}) example", path.display(), lang.name());
        }
        groups.push(EvalGroup { name: lang.code().to_string(), range: start..ordered.len() });
    }
    let test =
        XnliDataset::from_examples(plan.split, None, &ordered, &tok, x.max_seq_len).map_err(|e| context(e, hint()))?;
    let source = path.parent().map(Path::to_path_buf).unwrap_or(xnli_root);
    Ok(Data { train: limit(train, x.limit_train), test: Arc::new(test), metrics: vec![xnli::METRIC], source, groups })
}

fn load_glue(g: &GlueData, root: &DataRoot, model_dir: Option<&Path>) -> Result<Data> {
    let glue_root = root.join(g.path.clone().unwrap_or_else(|| "glue".into()));
    let tok = tokenizer(g.tokenizer.as_deref(), model_dir, "GLUE")?;
    let hint = || format!("loading GLUE {} from {}", g.task, glue_root.display());
    let train = GlueDataset::load(&glue_root, g.task, glue::Split::Train, &tok, g.max_seq_len)
        .map_err(|e| context(e, hint()))?;
    let (train, test): (Arc<dyn Dataset>, Arc<dyn Dataset>) = match (g.eval_split.as_str(), g.holdout) {
        ("holdout", Some(held)) => {
            if held >= train.len() {
                bail!(
                    "key `data.holdout`: {held} examples held out of a training set of {} (GLUE {})",
                    train.len(),
                    g.task
                );
            }
            let (kept, out) = crate::holdout_split(train.len(), held);
            let train: Arc<dyn Dataset> = Arc::new(train);
            (Arc::new(Subset::new(train.clone(), kept)?), Arc::new(Subset::new(train, out)?))
        }
        _ => {
            let eval_split: glue::Split =
                g.eval_split.parse().map_err(|e| Error::msg(format!("key `data.eval_split`: {e}")))?;
            let test = GlueDataset::load(&glue_root, g.task, eval_split, &tok, g.max_seq_len)
                .map_err(|e| context(e, hint()))?;
            if !test.is_labelled() {
                bail!("GLUE {} {eval_split} split has no labels: choose another data.eval_split", g.task);
            }
            (Arc::new(train), Arc::new(test))
        }
    };
    let (train, test) = (limit(train, g.limit_train), limit(test, g.limit_eval));
    let source = glue_root.join(g.task.dir_name());
    Ok(Data { train, test, metrics: g.task.metrics().to_vec(), source, groups: vec![] })
}

fn load_idx(idx: &IdxData, root: &DataRoot, flavor: Flavor, default: &str) -> Result<Data> {
    let dir = root.join(idx.path.clone().unwrap_or_else(|| default.into()));
    let hint = || {
        format!(
            "loading {default} from {} (data root {}: set --data-dir or ESPALIER_DATA)",
            dir.display(),
            root.0.display()
        )
    };
    let mut train = mnist::load(&dir, mnist::Split::Train, flavor).map_err(|e| context(e, hint()))?;
    let mut test = mnist::load(&dir, mnist::Split::Test, flavor).map_err(|e| context(e, hint()))?;
    if let Some(n) = idx.limit_train {
        train = train.take(n)?;
    }
    if let Some(n) = idx.limit_test {
        test = test.take(n)?;
    }
    Ok(Data {
        train: Arc::new(train),
        test: Arc::new(test),
        metrics: vec![Metric::Accuracy],
        source: dir,
        groups: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::shared_dir;
    use candle_core::Device;

    /// MRPC (Microsoft's training file: 4,076 pairs, GLUE's train and dev
    /// together) with 408 pairs held out, the size of GLUE's dev set:
    /// the rest trains, the held pairs evaluate, and they are the training
    /// file's own pairs with their labels.
    #[test]
    #[cfg_attr(not(feature = "shared-data"), ignore = "needs ../shared; run with --features shared-data")]
    fn a_holdout_sets_training_pairs_aside_for_evaluation() {
        let shared = shared_dir();
        let json = |holdout: usize| {
            serde_json::json!({
                "dataset": "glue", "task": "mrpc", "eval_split": "holdout", "holdout": holdout,
                "tokenizer": shared.join("models/all-MiniLM-L6-v2"),
            })
        };
        let cfg: DataConfig = serde_json::from_value(json(408)).unwrap();
        let root = DataRoot(shared.join("data"));
        let data = cfg.load(&root, None).unwrap();
        assert_eq!((data.train.len(), data.test.len()), (4_076 - 408, 408));
        let DataConfig::Glue(g) = &cfg else { unreachable!() };
        let tok = crate::tokenize::Tokenizer::from_file(shared.join("models/all-MiniLM-L6-v2/tokenizer.json")).unwrap();
        let file = GlueDataset::load(&root.join("glue"), g.task, glue::Split::Train, &tok, g.max_seq_len).unwrap();
        let (_, held) = crate::holdout_split(4_076, 408);
        let labels = |d: &dyn Dataset, i: &[usize]| d.batch(i, &Device::Cpu).unwrap().labels.to_vec1::<u32>().unwrap();
        assert_eq!(labels(data.test.as_ref(), &[0, 1, 407]), labels(&file, &[held[0], held[1], held[407]]));

        let too_many: DataConfig = serde_json::from_value(json(4_076)).unwrap();
        let Err(e) = too_many.load(&root, None) else { panic!("4,076 of 4,076 held out") };
        let e = e.to_string();
        assert!(e.contains("data.holdout") && e.contains("4076"), "{e}");
    }
}
