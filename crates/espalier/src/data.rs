//! Datasets named by an experiment config.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use espalier_core::Metric;
use espalier_data::cifar::{self, CifarDataset, Variant};
use espalier_data::mnist::{self, Flavor};
use espalier_data::{DataRoot, Dataset, Prefix};

use espalier_data::glue::{self, GlueDataset};
use espalier_data::tokenize::Tokenizer;

use crate::config::{CifarData, DataConfig, GlueData, IdxData};

/// The train and test sets of an experiment, with the metrics to report.
pub struct Data {
    /// Training set.
    pub train: Arc<dyn Dataset>,
    /// Evaluation set.
    pub test: Arc<dyn Dataset>,
    /// Metrics, the first one primary.
    pub metrics: Vec<Metric>,
    /// Where the files were read from.
    pub source: PathBuf,
}

/// Loads the datasets of `cfg` under `root`; `model_dir` is the pretrained
/// model's directory (its tokenizer is the default for text data).
pub fn load(cfg: &DataConfig, root: &DataRoot, model_dir: Option<&std::path::Path>) -> anyhow::Result<Data> {
    match cfg {
        DataConfig::Mnist(idx) => load_idx(idx, root, Flavor::Mnist, "mnist"),
        DataConfig::FashionMnist(idx) => load_idx(idx, root, Flavor::FashionMnist, "fashion-mnist"),
        DataConfig::Glue(g) => load_glue(g, root, model_dir),
        DataConfig::Cifar10(c) => load_cifar(c, root, Variant::Cifar10),
        DataConfig::Cifar100(c) => load_cifar(c, root, Variant::Cifar100),
    }
}

fn load_cifar(c: &CifarData, root: &DataRoot, variant: Variant) -> anyhow::Result<Data> {
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
        .with_context(hint)?
        .with_augmentation(c.augment);
    let mut test = CifarDataset::load(&dir, variant, cifar::Split::Test, c.labels).with_context(hint)?;
    if let Some(n) = c.limit_train {
        train = train.take(n);
    }
    if let Some(n) = c.limit_test {
        test = test.take(n);
    }
    Ok(Data { train: Arc::new(train), test: Arc::new(test), metrics: vec![Metric::Accuracy], source: dir })
}

fn load_glue(g: &GlueData, root: &DataRoot, model_dir: Option<&std::path::Path>) -> anyhow::Result<Data> {
    let glue_root = root.join(g.path.clone().unwrap_or_else(|| "glue".into()));
    let tok_dir = g
        .tokenizer
        .as_deref()
        .or(model_dir)
        .context("GLUE data needs a tokenizer: set data.tokenizer or [pretrained]")?;
    let tok =
        Tokenizer::from_dir(tok_dir).with_context(|| format!("loading the tokenizer from {}", tok_dir.display()))?;
    let eval_split: glue::Split = g.eval_split.parse()?;
    let hint = || format!("loading GLUE {} from {}", g.task, glue_root.display());
    let train = GlueDataset::load(&glue_root, g.task, glue::Split::Train, &tok, g.max_seq_len).with_context(hint)?;
    let test = GlueDataset::load(&glue_root, g.task, eval_split, &tok, g.max_seq_len).with_context(hint)?;
    if !test.is_labelled() {
        anyhow::bail!("GLUE {} {eval_split} split has no labels: choose another data.eval_split", g.task);
    }
    let limit = |d: Arc<dyn Dataset>, n: Option<usize>| -> Arc<dyn Dataset> {
        match n {
            Some(n) => Arc::new(Prefix::new(d, n)),
            None => d,
        }
    };
    let (train, test) = (limit(Arc::new(train), g.limit_train), limit(Arc::new(test), g.limit_eval));
    Ok(Data { train, test, metrics: g.task.metrics().to_vec(), source: glue_root.join(g.task.dir_name()) })
}

fn load_idx(idx: &IdxData, root: &DataRoot, flavor: Flavor, default: &str) -> anyhow::Result<Data> {
    let dir = root.join(idx.path.clone().unwrap_or_else(|| default.into()));
    let hint = || {
        format!(
            "loading {default} from {} (data root {}: set --data-dir or ESPALIER_DATA)",
            dir.display(),
            root.0.display()
        )
    };
    let mut train = mnist::load(&dir, mnist::Split::Train, flavor).with_context(hint)?;
    let mut test = mnist::load(&dir, mnist::Split::Test, flavor).with_context(hint)?;
    if let Some(n) = idx.limit_train {
        train = train.take(n)?;
    }
    if let Some(n) = idx.limit_test {
        test = test.take(n)?;
    }
    Ok(Data { train: Arc::new(train), test: Arc::new(test), metrics: vec![Metric::Accuracy], source: dir })
}
