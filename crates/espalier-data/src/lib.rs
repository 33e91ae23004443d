//! Datasets and batching for Espalier.
//!
//! A [`Dataset`] knows its length and turns a list of example indices into a
//! [`Batch`] on a device; a [`Batcher`] walks an epoch in a seeded order.
//! Shuffling uses `Rng::derive(seed, "shuffle", [epoch])`, so epoch `e` sees
//! the same order whether or not the run was interrupted before it. The
//! training loop asks for [`Dataset::train_batch`], where datasets with
//! training-time augmentation (CIFAR's crops and flips) draw it from the seed
//! and the epoch the same way; evaluation asks for [`Dataset::batch`].
//! An evaluation set may be split into named [`EvalGroup`]s (XNLI's
//! languages), each reported on its own.

pub mod cifar;
pub mod config;
pub mod glue;
pub mod mnist;
pub mod root;
pub mod tokenize;
pub mod xnli;

use candle_core::{Device, Tensor};
use espalier_core::{Result, Rng};

pub use config::{Data, DataConfig};
pub use espalier_core::{Batch, Inputs};
pub use root::DataRoot;

/// A named, contiguous part of an evaluation set that is also reported on
/// its own: XNLI's languages. Its metrics are named `<metric>.<name>`
/// (`accuracy.de`), and the set's metric is then the mean over the groups
/// (each group weighs the same, whatever its size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalGroup {
    /// Name (`de`).
    pub name: String,
    /// Its examples: indices into the evaluation set.
    pub range: std::ops::Range<usize>,
}

/// A finite, indexable dataset.
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether it holds no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The examples at `indices`, collated into a batch on `device`.
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch>;
    /// The examples at `indices` as a training batch of `epoch`: datasets
    /// with training-time augmentation draw it from `seed` and `epoch` (per
    /// example, so a resumed run draws the same); the others return
    /// [`Dataset::batch`].
    fn train_batch(&self, indices: &[usize], seed: u64, epoch: u64, device: &Device) -> Result<Batch> {
        let _ = (seed, epoch);
        self.batch(indices, device)
    }
}

/// Iterates over a dataset in mini-batches.
#[derive(Clone, Debug)]
pub struct Batcher {
    /// Examples per batch.
    pub batch_size: usize,
    /// Shuffle each epoch (training) or keep the file order (evaluation).
    pub shuffle: bool,
    /// Drop a last, smaller batch.
    pub drop_last: bool,
    /// The run's seed.
    pub seed: u64,
}

impl Batcher {
    /// The index lists of every batch of `epoch`.
    pub fn plan(&self, n: usize, epoch: u64) -> Vec<Vec<usize>> {
        let order: Vec<usize> =
            if self.shuffle { Rng::derive(self.seed, "shuffle", &[epoch]).permutation(n) } else { (0..n).collect() };
        let bs = self.batch_size.max(1);
        order.chunks(bs).filter(|c| !self.drop_last || c.len() == bs).map(|c| c.to_vec()).collect()
    }

    /// Number of batches per epoch.
    pub fn num_batches(&self, n: usize) -> usize {
        let bs = self.batch_size.max(1);
        if self.drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }
}

/// The first `n` examples of another dataset.
pub struct Prefix {
    inner: std::sync::Arc<dyn Dataset>,
    n: usize,
}

impl Prefix {
    /// The first `n` examples of `inner` (all of them if it has fewer).
    pub fn new(inner: std::sync::Arc<dyn Dataset>, n: usize) -> Self {
        let n = n.min(inner.len());
        Prefix { inner, n }
    }
}

impl Dataset for Prefix {
    fn len(&self) -> usize {
        self.n
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.n) {
            espalier_core::bail!("example {i} is outside the first {} examples", self.n);
        }
        self.inner.batch(indices, device)
    }
    fn train_batch(&self, indices: &[usize], seed: u64, epoch: u64, device: &Device) -> Result<Batch> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.n) {
            espalier_core::bail!("example {i} is outside the first {} examples", self.n);
        }
        self.inner.train_batch(indices, seed, epoch, device)
    }
}

/// The examples of another dataset at given indices, in that order.
pub struct Subset {
    inner: std::sync::Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// The examples of `inner` at `indices`; an index outside `inner` is an
    /// error.
    pub fn new(inner: std::sync::Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&i) = indices.iter().find(|&&i| i >= inner.len()) {
            espalier_core::bail!("example {i} is outside the {} examples of the dataset", inner.len());
        }
        Ok(Subset { inner, indices })
    }

    fn map(&self, indices: &[usize]) -> Result<Vec<usize>> {
        indices
            .iter()
            .map(|&i| {
                self.indices.get(i).copied().ok_or_else(|| {
                    espalier_core::Error::msg(format!(
                        "example {i} is outside the {} of the subset",
                        self.indices.len()
                    ))
                })
            })
            .collect()
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        self.inner.batch(&self.map(indices)?, device)
    }
    fn train_batch(&self, indices: &[usize], seed: u64, epoch: u64, device: &Device) -> Result<Batch> {
        self.inner.train_batch(&self.map(indices)?, seed, epoch, device)
    }
}

/// Splits `n` examples into (kept, held out): `held` of them drawn by a
/// fixed seeded permutation (the same for every run and seed), both parts
/// in their original order.
pub fn holdout_split(n: usize, held: usize) -> (Vec<usize>, Vec<usize>) {
    let perm = Rng::derive(0, "holdout", &[n as u64]).permutation(n);
    let mut out = perm[..held.min(n)].to_vec();
    let mut kept = perm[held.min(n)..].to_vec();
    out.sort_unstable();
    kept.sort_unstable();
    (kept, out)
}

/// A dataset held as two tensors: inputs `(N, ...)` and labels `(N,)`.
#[derive(Clone, Debug)]
pub struct TensorDataset {
    /// Inputs, first dimension = examples.
    pub inputs: Tensor,
    /// Labels, `(N,)`.
    pub labels: Tensor,
}

impl TensorDataset {
    /// The first `n` examples (or all, if fewer).
    pub fn take(&self, n: usize) -> Result<Self> {
        let n = n.min(self.len());
        Ok(TensorDataset { inputs: self.inputs.narrow(0, 0, n)?, labels: self.labels.narrow(0, 0, n)? })
    }
}

impl Dataset for TensorDataset {
    fn len(&self) -> usize {
        self.labels.dims()[0]
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        let idx = Tensor::from_iter(indices.iter().map(|&i| i as u32), self.labels.device())?;
        Ok(Batch {
            inputs: Inputs::Dense(self.inputs.index_select(&idx, 0)?.to_device(device)?),
            labels: self.labels.index_select(&idx, 0)?.to_device(device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_each_index_once_and_is_seeded() {
        let b = Batcher { batch_size: 7, shuffle: true, drop_last: false, seed: 5 };
        let p = b.plan(50, 0);
        assert_eq!(p.len(), b.num_batches(50));
        let mut all: Vec<usize> = p.concat();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        assert_eq!(p, b.plan(50, 0));
        assert_ne!(p, b.plan(50, 1));
        let d = Batcher { drop_last: true, ..b };
        assert_eq!(d.plan(50, 0).len(), 7);
    }

    /// The held-out examples are a fixed draw, disjoint from the kept ones,
    /// both in file order; a subset serves its inner examples by position.
    #[test]
    fn holdout_is_a_fixed_disjoint_draw_and_subsets_map_their_indices() -> Result<()> {
        let (kept, out) = holdout_split(100, 20);
        assert_eq!((kept.len(), out.len()), (80, 20));
        let mut all = [kept.clone(), out.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(kept.windows(2).all(|w| w[0] < w[1]) && out.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(holdout_split(100, 20), (kept, out.clone()));
        assert_ne!(out, (0..20).collect::<Vec<_>>(), "a draw, not the first examples");

        let cpu = Device::Cpu;
        let d: std::sync::Arc<dyn Dataset> = std::sync::Arc::new(TensorDataset {
            inputs: Tensor::arange(0f32, 10.0, &cpu)?.reshape((10, 1))?,
            labels: Tensor::arange(0u32, 10, &cpu)?,
        });
        let s = Subset::new(d.clone(), vec![7, 2, 5])?;
        assert_eq!(s.len(), 3);
        assert_eq!(s.batch(&[0, 2], &cpu)?.labels.to_vec1::<u32>()?, [7, 5]);
        assert!(s.batch(&[3], &cpu).is_err());
        assert!(Subset::new(d, vec![10]).is_err());
        Ok(())
    }
}
