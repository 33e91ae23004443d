//! CIFAR-10 and CIFAR-100 in their binary formats (Krizhevsky 2009,
//! "Learning Multiple Layers of Features from Tiny Images"), with the
//! standard training augmentation.
//!
//! - CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` …
//!   `data_batch_5.bin` (training) and `test_batch.bin`; each record is one
//!   label byte (0–9) and 3072 pixel bytes.
//! - CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`; each record
//!   is a coarse label byte (0–19), a fine label byte (0–99) and 3072 pixel
//!   bytes.
//!
//! The pixels of a record are the red, then green, then blue 32×32 planes,
//! row-major: exactly a `(3, 32, 32)` tensor. A file that is not a whole
//! number of records, or holds a label out of range, is an error naming the
//! file and the byte offset.
//!
//! Images are scaled to [0, 1] and normalised per channel with the training
//! set's mean and standard deviation. In training (and only there, through
//! [`Dataset::train_batch`]) each image is augmented as in He et al. (2016,
//! §4.2): padded by 4 pixels on each side with black (raw value 0, before
//! normalisation, as torchvision's `RandomCrop(32, padding=4)` does), a
//! random 32×32 crop taken, and flipped horizontally with probability ½. The
//! draws for example `i` in epoch `e` come from
//! `Rng::derive(seed, "augment", [e, i])`: they do not depend on the batch
//! the example lands in, and a resumed run draws exactly what an
//! uninterrupted one would.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use espalier_core::{Error, Result, Rng};
use serde::{Deserialize, Serialize};

use crate::{Batch, Dataset, Inputs};

/// Pixel bytes per image (3 × 32 × 32).
pub const PIXELS: usize = 3 * 32 * 32;
/// Image side.
const SIDE: usize = 32;
/// Padding of the random crop.
const PAD: usize = 4;

/// Which dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// 10 classes, 50k/10k images.
    Cifar10,
    /// 100 fine (20 coarse) classes, 50k/10k images.
    Cifar100,
}

/// Which split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// 50,000 training images.
    Train,
    /// 10,000 test images.
    Test,
}

/// Which CIFAR-100 label to train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labels {
    /// The 100 fine classes (CIFAR-10's only label).
    #[default]
    Fine,
    /// The 20 superclasses (CIFAR-100 only).
    Coarse,
}

impl Labels {
    /// Number of classes of `variant` under this labelling.
    pub fn num_classes(self, variant: Variant) -> usize {
        match (variant, self) {
            (Variant::Cifar10, _) => 10,
            (Variant::Cifar100, Labels::Fine) => 100,
            (Variant::Cifar100, Labels::Coarse) => 20,
        }
    }
}

impl Variant {
    /// Per-channel (R, G, B) mean and standard deviation of the training
    /// images on [0, 1] pixels.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Variant::Cifar10 => ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
            Variant::Cifar100 => ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
        }
    }

    /// Label bytes before the pixels of each record.
    pub fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }

    /// Bytes per record.
    pub fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }

    /// The default directory under the data root.
    pub fn default_dir(self) -> &'static str {
        match self {
            Variant::Cifar10 => "cifar-10-batches-bin",
            Variant::Cifar100 => "cifar-100-binary",
        }
    }

    /// The files of a split, in order.
    pub fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (Variant::Cifar10, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Variant::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (Variant::Cifar100, Split::Train) => vec!["train.bin".into()],
            (Variant::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Cifar10 => "CIFAR-10",
            Variant::Cifar100 => "CIFAR-100",
        }
    }
}

/// Labels (one per label byte of each record, in file order) and pixels.
#[derive(Clone, Debug, Default)]
pub struct Records {
    /// `label_bytes` values per record.
    pub labels: Vec<u8>,
    /// [`PIXELS`] bytes per record.
    pub pixels: Vec<u8>,
}

/// Parses the records of one file; `path` names it in errors.
pub fn parse_records(bytes: &[u8], variant: Variant, path: &Path) -> Result<Records> {
    let rec = variant.record_len();
    if bytes.is_empty() {
        return Err(Error::format(path, format!("empty file: a {} file holds {rec}-byte records", variant.name())));
    }
    let whole = bytes.len() / rec;
    let offset = whole * rec;
    if offset != bytes.len() {
        return Err(Error::format(
            path,
            format!(
                "truncated or wrong size: {} bytes is not a whole number of {rec}-byte {} records; \
                 the record at byte offset {offset} has {} of its {rec} bytes",
                bytes.len(),
                variant.name(),
                bytes.len() - offset
            ),
        ));
    }
    let lb = variant.label_bytes();
    let limits: &[(u8, &str)] = match variant {
        Variant::Cifar10 => &[(10, "class")],
        Variant::Cifar100 => &[(20, "coarse label"), (100, "fine label")],
    };
    let mut out = Records { labels: Vec::with_capacity(whole * lb), pixels: Vec::with_capacity(whole * PIXELS) };
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        for (j, &(limit, what)) in limits.iter().enumerate() {
            if r[j] >= limit {
                return Err(Error::format(
                    path,
                    format!(
                        "record {i}: {what} {} at byte offset {} is out of range (0-{})",
                        r[j],
                        i * rec + j,
                        limit - 1
                    ),
                ));
            }
        }
        out.labels.extend_from_slice(&r[..lb]);
        out.pixels.extend_from_slice(&r[lb..]);
    }
    Ok(out)
}

/// Reads the files of a split from `dir`.
pub fn read_split(dir: &Path, variant: Variant, split: Split) -> Result<Records> {
    let mut all = Records::default();
    for name in variant.files(split) {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let r = parse_records(&bytes, variant, &path)?;
        all.labels.extend(r.labels);
        all.pixels.extend(r.pixels);
    }
    Ok(all)
}

/// CIFAR images held as bytes, normalised (and augmented in training) per batch.
#[derive(Clone, Debug)]
pub struct CifarDataset {
    pixels: std::sync::Arc<Vec<u8>>,
    labels: Vec<u32>,
    n: usize,
    mean: [f32; 3],
    std: [f32; 3],
    augment: bool,
    source: PathBuf,
}

impl CifarDataset {
    /// Loads a split from `dir`; `labels` picks CIFAR-100's fine or coarse
    /// classes (CIFAR-10 has only its one label). Training-time augmentation
    /// is off; see [`CifarDataset::with_augmentation`].
    pub fn load(dir: &Path, variant: Variant, split: Split, labels: Labels) -> Result<Self> {
        if variant == Variant::Cifar10 && labels == Labels::Coarse {
            return Err(Error::msg("CIFAR-10 has no coarse labels"));
        }
        let r = read_split(dir, variant, split)?;
        let pick = match (variant, labels) {
            (Variant::Cifar100, Labels::Fine) => 1,
            _ => 0,
        };
        let lb = variant.label_bytes();
        let labels: Vec<u32> = r.labels.chunks_exact(lb).map(|l| l[pick] as u32).collect();
        let (mean, std) = variant.mean_std();
        Ok(CifarDataset {
            n: labels.len(),
            pixels: std::sync::Arc::new(r.pixels),
            labels,
            mean,
            std,
            augment: false,
            source: dir.to_path_buf(),
        })
    }

    /// Random crops and flips in [`Dataset::train_batch`] (on) or none (off).
    pub fn with_augmentation(mut self, on: bool) -> Self {
        self.augment = on;
        self
    }

    /// The first `n` examples (or all, if fewer).
    pub fn take(mut self, n: usize) -> Self {
        self.n = self.n.min(n);
        self
    }

    /// The class of every example.
    pub fn labels(&self) -> &[u32] {
        &self.labels[..self.n]
    }

    /// Where the files were read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Writes example `i`, shifted by `(dy, dx)` in the 4-pixel padded frame
    /// and optionally flipped, normalised into `out` (`PIXELS` values).
    fn write_image(&self, i: usize, shift: (isize, isize), flip: bool, out: &mut [f32]) {
        let src = &self.pixels[i * PIXELS..(i + 1) * PIXELS];
        for c in 0..3 {
            let (scale, bias) = (1.0 / (255.0 * self.std[c]), -self.mean[c] / self.std[c]);
            for y in 0..SIDE {
                let sy = y as isize + shift.0;
                for x in 0..SIDE {
                    let xf = if flip { SIDE - 1 - x } else { x };
                    let sx = xf as isize + shift.1;
                    let inside = (0..SIDE as isize).contains(&sy) && (0..SIDE as isize).contains(&sx);
                    let raw = if inside { src[c * SIDE * SIDE + sy as usize * SIDE + sx as usize] } else { 0 };
                    out[c * SIDE * SIDE + y * SIDE + x] = raw as f32 * scale + bias;
                }
            }
        }
    }

    fn collate(
        &self,
        indices: &[usize],
        device: &Device,
        mut draw: impl FnMut(usize) -> ((isize, isize), bool),
    ) -> Result<Batch> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.n) {
            espalier_core::bail!("example {i} is outside the {} examples of {}", self.n, self.source.display());
        }
        let mut x = vec![0f32; indices.len() * PIXELS];
        for (out, &i) in x.chunks_exact_mut(PIXELS).zip(indices) {
            let (shift, flip) = draw(i);
            self.write_image(i, shift, flip, out);
        }
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Batch {
            inputs: Inputs::Dense(Tensor::from_vec(x, (indices.len(), 3, SIDE, SIDE), device)?),
            labels: Tensor::from_vec(labels, indices.len(), device)?,
        })
    }
}

/// The crop offset in `[-4, 4]²` and the flip of example `i` in `epoch`.
pub fn augmentation(seed: u64, epoch: u64, i: usize) -> ((isize, isize), bool) {
    let mut rng = Rng::derive(seed, "augment", &[epoch, i as u64]);
    let span = 2 * PAD + 1;
    let dy = rng.below(span) as isize - PAD as isize;
    let dx = rng.below(span) as isize - PAD as isize;
    ((dy, dx), rng.below(2) == 1)
}

impl Dataset for CifarDataset {
    fn len(&self) -> usize {
        self.n
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        self.collate(indices, device, |_| ((0, 0), false))
    }
    fn train_batch(&self, indices: &[usize], seed: u64, epoch: u64, device: &Device) -> Result<Batch> {
        if !self.augment {
            return self.batch(indices, device);
        }
        self.collate(indices, device, |i| augmentation(seed, epoch, i))
    }
}
