//! MNIST and Fashion-MNIST in the IDX format (LeCun et al.), raw or gzipped.
//!
//! The four canonical files are `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
//! `t10k-labels-idx1-ubyte`, each optionally with `.gz`. IDX: a big-endian
//! magic `0x0000_08_NN` (`08` = unsigned bytes, `NN` = number of
//! dimensions), one big-endian u32 per dimension, then the data. Every
//! deviation (bad magic, truncated data, trailing bytes, label/image count
//! mismatch, label ≥ 10) is an error naming the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use espalier_core::{Error, Result};

use crate::TensorDataset;

/// Which split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// 60,000 training examples.
    Train,
    /// 10,000 test examples (`t10k`).
    Test,
}

/// Which of the two IDX datasets (they differ only in normalisation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Handwritten digits.
    Mnist,
    /// Zalando's clothing images.
    FashionMnist,
}

impl Flavor {
    /// Per-pixel mean and std of the training set, on [0, 1] pixels.
    pub fn mean_std(self) -> (f32, f32) {
        match self {
            Flavor::Mnist => (0.1307, 0.3081),
            Flavor::FashionMnist => (0.2860, 0.3530),
        }
    }
}

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug)]
pub struct Idx {
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Row-major data.
    pub data: Vec<u8>,
}

/// Reads an IDX file, gunzipping it when it starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt or truncated gzip data: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|msg| Error::format(path, msg))
}

fn parse_idx(b: &[u8]) -> std::result::Result<Idx, String> {
    if b.len() < 4 {
        return Err(format!("truncated: {} bytes, an IDX header needs at least 4", b.len()));
    }
    if b[0] != 0 || b[1] != 0 {
        return Err(format!("not an IDX file (magic {:02x}{:02x}{:02x}{:02x})", b[0], b[1], b[2], b[3]));
    }
    if b[2] != 0x08 {
        return Err(format!("IDX element type 0x{:02x} is not supported (expected 0x08, unsigned bytes)", b[2]));
    }
    let nd = b[3] as usize;
    let header = 4 + 4 * nd;
    if b.len() < header {
        return Err(format!("truncated header: {} bytes, expected {header}", b.len()));
    }
    let dims: Vec<usize> =
        (0..nd).map(|i| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    // Checked against the file length before anything is allocated: the
    // product of four u32 dimensions can overflow even a u64.
    let have = b.len() - header;
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} claim more data bytes than can exist; the file has {have}"))?;
    if have < n {
        return Err(format!("truncated: dimensions {dims:?} need {n} data bytes, found {have}"));
    }
    if have > n {
        return Err(format!("{} unexpected trailing bytes after {n} data bytes", have - n));
    }
    Ok(Idx { dims, data: b[header..].to_vec() })
}

/// The path of `stem` in `dir`, raw or `.gz`, whichever exists.
pub fn find_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::io(
        dir.join(format!("{stem}[.gz]")),
        std::io::Error::new(std::io::ErrorKind::NotFound, "IDX file not found (looked for the raw and the .gz name)"),
    ))
}

fn stems(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// Loads a split as `(N, 1, 28, 28)` normalised f32 images and `(N,)` u32
/// labels, on the CPU.
pub fn load(dir: &Path, split: Split, flavor: Flavor) -> Result<TensorDataset> {
    let (img_stem, lbl_stem) = stems(split);
    let img_path = find_file(dir, img_stem)?;
    let lbl_path = find_file(dir, lbl_stem)?;
    let images = read_idx(&img_path)?;
    let labels = read_idx(&lbl_path)?;
    if images.dims.len() != 3 {
        return Err(Error::format(
            &img_path,
            format!("expected 3 dimensions (N, rows, cols), found {:?}", images.dims),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(Error::format(&lbl_path, format!("expected 1 dimension (N), found {:?}", labels.dims)));
    }
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::format(
            &img_path,
            format!("{n} images of {h}×{w} pixels: a split needs at least one image of at least 1×1 pixel"),
        ));
    }
    if labels.dims[0] != n {
        return Err(Error::format(
            &lbl_path,
            format!("{} labels for {n} images in {}", labels.dims[0], img_path.display()),
        ));
    }
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(Error::format(&lbl_path, format!("label {l} at index {i} is not a digit class 0-9")));
    }
    let (mean, std) = flavor.mean_std();
    let pixels: Vec<f32> = images.data.iter().map(|&p| (p as f32 / 255.0 - mean) / std).collect();
    let inputs = Tensor::from_vec(pixels, (n, 1, h, w), &Device::Cpu)?;
    let labels = Tensor::from_vec(labels.data, n, &Device::Cpu)?.to_dtype(DType::U32)?;
    Ok(TensorDataset { inputs, labels })
}

/// Writes an IDX file of unsigned bytes (gzipped when `path` ends in `.gz`).
/// Used to build the embedded subset and test fixtures.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut bytes = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let out = if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        enc.finish().map_err(|e| Error::io(path, e))?
    } else {
        bytes
    };
    espalier_core::checkpoint::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path, n: usize, gz: bool) {
        let ext = if gz { ".gz" } else { "" };
        let px: Vec<u8> = (0..n * 28 * 28).map(|i| (i % 251) as u8).collect();
        let lb: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        write_idx(&dir.join(format!("t10k-images-idx3-ubyte{ext}")), &[n, 28, 28], &px).unwrap();
        write_idx(&dir.join(format!("t10k-labels-idx1-ubyte{ext}")), &[n], &lb).unwrap();
    }

    #[test]
    fn reads_raw_and_gz() -> Result<()> {
        for gz in [false, true] {
            let d = tempfile::tempdir().unwrap();
            fixture(d.path(), 12, gz);
            let ds = load(d.path(), Split::Test, Flavor::Mnist)?;
            assert_eq!(ds.inputs.dims(), &[12, 1, 28, 28]);
            assert_eq!(ds.labels.to_vec1::<u32>()?[..3], [0, 1, 2]);
            let v = ds.inputs.flatten_all()?.to_vec1::<f32>()?;
            assert!((v[1] - (1.0 / 255.0 - 0.1307) / 0.3081).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn truncated_and_missing_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 4, false);
        let p = d.path().join("t10k-images-idx3-ubyte");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 100]).unwrap();
        let e = load(d.path(), Split::Test, Flavor::Mnist).unwrap_err().to_string();
        assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"), "{e}");
        let e = load(d.path(), Split::Train, Flavor::Mnist).unwrap_err().to_string();
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    }

    /// Fuzzing regression (issue #24): dimensions whose product overflows
    /// panicked ("attempt to multiply with overflow").
    #[test]
    fn overflowing_dimensions_are_an_error() {
        let mut b = vec![0u8, 0, 0x08, 4];
        for _ in 0..4 {
            b.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let e = parse_idx(&b).unwrap_err();
        assert!(e.contains("4294967295"), "{e}");
        // 2^31 × 28 × 28 images in a 20-byte file: refused from the header.
        let mut b = vec![0u8, 0, 0x08, 3];
        for d in [1u32 << 31, 28, 28] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        assert!(parse_idx(&b).unwrap_err().contains("truncated"));
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 4, true);
        let p = d.path().join("t10k-images-idx3-ubyte.gz");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        let e = load(d.path(), Split::Test, Flavor::Mnist).unwrap_err().to_string();
        assert!(e.contains("t10k-images-idx3-ubyte.gz"), "{e}");
    }

    /// Full MNIST from ../shared: canonical sizes and training label counts.
    #[test]
    #[cfg_attr(not(feature = "shared-data"), ignore = "needs ../shared; run with --features shared-data")]
    fn shared_full_mnist_has_canonical_counts() -> Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
        assert!(dir.is_dir(), "full MNIST not found at {}", dir.display());
        let train = load(&dir, Split::Train, Flavor::Mnist)?;
        let test = load(&dir, Split::Test, Flavor::Mnist)?;
        assert_eq!(train.inputs.dims(), &[60_000, 1, 28, 28]);
        assert_eq!(test.inputs.dims(), &[10_000, 1, 28, 28]);
        let mut counts = [0usize; 10];
        for l in train.labels.to_vec1::<u32>()? {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
        Ok(())
    }
}
