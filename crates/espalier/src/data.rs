//! Datasets named by an experiment config.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use espalier_core::Metric;
use espalier_data::mnist::{self, Flavor, Split};
use espalier_data::{DataRoot, Dataset};

use crate::config::{DataConfig, IdxData};

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

/// Loads the datasets of `cfg` under `root`.
pub fn load(cfg: &DataConfig, root: &DataRoot) -> anyhow::Result<Data> {
    match cfg {
        DataConfig::Mnist(idx) => load_idx(idx, root, Flavor::Mnist, "mnist"),
        DataConfig::FashionMnist(idx) => load_idx(idx, root, Flavor::FashionMnist, "fashion-mnist"),
    }
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
    let mut train = mnist::load(&dir, Split::Train, flavor).with_context(hint)?;
    let mut test = mnist::load(&dir, Split::Test, flavor).with_context(hint)?;
    if let Some(n) = idx.limit_train {
        train = train.take(n)?;
    }
    if let Some(n) = idx.limit_test {
        test = test.take(n)?;
    }
    Ok(Data { train: Arc::new(train), test: Arc::new(test), metrics: vec![Metric::Accuracy], source: dir })
}
