//! CIFAR-10/100 readers on fixture files written here in the exact binary
//! formats: record layout, normalisation, errors naming the file and byte
//! offset, and seeded training-time augmentation.

use std::path::Path;

use candle_core::Device;
use espalier_core::{Result, Rng};
use espalier_data::cifar::{augmentation, CifarDataset, Labels, Split, Variant, PIXELS};
use espalier_data::{Dataset, Inputs, Prefix};

const CPU: Device = Device::Cpu;

/// Pixels of example `k` of a fixture: distinct per position, channel and example.
fn pixels(k: usize) -> Vec<u8> {
    let mut rng = Rng::new(1000 + k as u64);
    (0..PIXELS).map(|_| rng.below(256) as u8).collect()
}

/// Writes `labels.len()` records (label bytes, then pixels of example `first + i`).
fn write_records(path: &Path, labels: &[Vec<u8>], first: usize) {
    let mut bytes = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        bytes.extend_from_slice(l);
        bytes.extend(pixels(first + i));
    }
    std::fs::write(path, bytes).unwrap();
}

/// CIFAR-10 layout: five training batches of 3, 2, 2, 2, 1 records (labels
/// 0, 1, …, 9 in order) and a test batch of 4.
fn cifar10(dir: &Path) {
    let mut k = 0;
    for (b, n) in [3, 2, 2, 2, 1].into_iter().enumerate() {
        let labels: Vec<Vec<u8>> = (k..k + n).map(|i| vec![(i % 10) as u8]).collect();
        write_records(&dir.join(format!("data_batch_{}.bin", b + 1)), &labels, k);
        k += n;
    }
    write_records(&dir.join("test_batch.bin"), &[vec![3], vec![1], vec![4], vec![1]], 100);
}

fn images(ds: &dyn Dataset, idx: &[usize], train: Option<(u64, u64)>) -> Result<Vec<f32>> {
    let b = match train {
        Some((seed, epoch)) => ds.train_batch(idx, seed, epoch, &CPU)?,
        None => ds.batch(idx, &CPU)?,
    };
    let Inputs::Dense(x) = b.inputs else { panic!("dense images expected") };
    assert_eq!(x.dims(), [idx.len(), 3, 32, 32]);
    Ok(x.flatten_all()?.to_vec1::<f32>()?)
}

fn normalised(v: u8, c: usize, variant: Variant) -> f32 {
    let (mean, std) = variant.mean_std();
    (v as f32 / 255.0 - mean[c]) / std[c]
}

#[test]
fn reads_cifar10_batches_in_order_and_normalises_per_channel() -> Result<()> {
    let d = tempfile::tempdir().unwrap();
    cifar10(d.path());
    let train = CifarDataset::load(d.path(), Variant::Cifar10, Split::Train, Labels::Fine)?;
    assert_eq!(train.len(), 10);
    assert_eq!(train.labels(), (0..10).collect::<Vec<u32>>());
    let test = CifarDataset::load(d.path(), Variant::Cifar10, Split::Test, Labels::Fine)?;
    assert_eq!(test.labels(), [3, 1, 4, 1]);
    // Example 4 is the second record of data_batch_2.bin: planes R, G, B, row-major.
    let x = images(&train, &[4, 0], None)?;
    let raw = pixels(4);
    for (c, y, col) in [(0, 0, 0), (0, 5, 17), (1, 31, 31), (2, 12, 3)] {
        let i = c * 1024 + y * 32 + col;
        assert!((x[i] - normalised(raw[i], c, Variant::Cifar10)).abs() < 1e-6, "c{c} y{y} x{col}");
    }
    let b = train.batch(&[4, 0], &CPU)?;
    assert_eq!(b.labels.to_vec1::<u32>()?, [4, 0]);
    assert!(train.batch(&[10], &CPU).is_err());
    // A prefix (data.limit_train) stops at its end.
    let first = CifarDataset::load(d.path(), Variant::Cifar10, Split::Train, Labels::Fine)?.take(6);
    assert_eq!(first.len(), 6);
    assert!(first.batch(&[6], &CPU).is_err());
    Ok(())
}

#[test]
fn reads_cifar100_fine_and_coarse_labels() -> Result<()> {
    let d = tempfile::tempdir().unwrap();
    write_records(&d.path().join("train.bin"), &[vec![19, 99], vec![0, 7], vec![4, 55]], 0);
    write_records(&d.path().join("test.bin"), &[vec![2, 3]], 50);
    let fine = CifarDataset::load(d.path(), Variant::Cifar100, Split::Train, Labels::Fine)?;
    assert_eq!(fine.labels(), [99, 7, 55]);
    let coarse = CifarDataset::load(d.path(), Variant::Cifar100, Split::Train, Labels::Coarse)?;
    assert_eq!(coarse.labels(), [19, 0, 4]);
    let test = CifarDataset::load(d.path(), Variant::Cifar100, Split::Test, Labels::Fine)?;
    assert_eq!(test.labels(), [3]);
    let x = images(&test, &[0], None)?;
    let raw = pixels(50);
    assert!((x[2000] - normalised(raw[2000], 1, Variant::Cifar100)).abs() < 1e-6);
    assert!(CifarDataset::load(d.path(), Variant::Cifar10, Split::Test, Labels::Coarse).is_err());
    Ok(())
}

#[test]
fn truncated_wrong_size_and_missing_files_name_the_file_and_offset() {
    let d = tempfile::tempdir().unwrap();
    cifar10(d.path());
    let load = || CifarDataset::load(d.path(), Variant::Cifar10, Split::Train, Labels::Fine).unwrap_err().to_string();
    // data_batch_3.bin holds 2 records; cut 100 bytes off the second.
    let p = d.path().join("data_batch_3.bin");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = load();
    assert!(e.contains("data_batch_3.bin") && e.contains("truncated"), "{e}");
    assert!(e.contains("byte offset 3073") && e.contains("2973 of its 3073 bytes"), "{e}");
    // Two stray bytes after the last record.
    let mut long = bytes.clone();
    long.extend_from_slice(&[0, 0]);
    std::fs::write(&p, &long).unwrap();
    let e = load();
    assert!(e.contains("data_batch_3.bin") && e.contains("6148 bytes") && e.contains("byte offset 6146"), "{e}");
    std::fs::write(&p, b"").unwrap();
    let e = load();
    assert!(e.contains("data_batch_3.bin") && e.contains("empty"), "{e}");
    std::fs::remove_file(&p).unwrap();
    let e = load();
    assert!(e.contains("data_batch_3.bin"), "{e}");
    // The test split is still readable.
    assert!(CifarDataset::load(d.path(), Variant::Cifar10, Split::Test, Labels::Fine).is_ok());
}

#[test]
fn labels_out_of_range_name_the_byte_offset() {
    let d = tempfile::tempdir().unwrap();
    write_records(&d.path().join("test_batch.bin"), &[vec![1], vec![10]], 0);
    let e = CifarDataset::load(d.path(), Variant::Cifar10, Split::Test, Labels::Fine).unwrap_err().to_string();
    assert!(e.contains("test_batch.bin") && e.contains("record 1") && e.contains("byte offset 3073"), "{e}");
    write_records(&d.path().join("test.bin"), &[vec![3, 99], vec![4, 100]], 0);
    let e = CifarDataset::load(d.path(), Variant::Cifar100, Split::Test, Labels::Fine).unwrap_err().to_string();
    assert!(e.contains("test.bin") && e.contains("fine label 100") && e.contains("byte offset 3075"), "{e}");
    write_records(&d.path().join("test.bin"), &[vec![20, 1]], 0);
    let e = CifarDataset::load(d.path(), Variant::Cifar100, Split::Test, Labels::Fine).unwrap_err().to_string();
    assert!(e.contains("coarse label 20") && e.contains("byte offset 0"), "{e}");
}

#[test]
fn augmentation_is_a_seeded_crop_and_flip_in_training_only() -> Result<()> {
    let d = tempfile::tempdir().unwrap();
    cifar10(d.path());
    let plain = CifarDataset::load(d.path(), Variant::Cifar10, Split::Train, Labels::Fine)?;
    let aug = plain.clone().with_augmentation(true);
    let idx: Vec<usize> = (0..10).collect();
    // Evaluation batches are never augmented; without augmentation, training batches equal them.
    assert_eq!(images(&aug, &idx, None)?, images(&plain, &idx, None)?);
    assert_eq!(images(&plain, &idx, Some((1, 0)))?, images(&plain, &idx, None)?);
    // Same seed and epoch: same images, whatever the batch around an example.
    let a = images(&aug, &idx, Some((1, 0)))?;
    assert_eq!(a, images(&aug, &idx, Some((1, 0)))?);
    assert_eq!(&a[7 * PIXELS..8 * PIXELS], images(&aug, &[7], Some((1, 0)))?.as_slice());
    assert_ne!(a, images(&aug, &idx, Some((1, 1)))?, "another epoch, other crops");
    assert_ne!(a, images(&aug, &idx, Some((2, 0)))?, "another seed, other crops");
    assert_ne!(a, images(&plain, &idx, None)?);
    // Each image is its original shifted in the black-padded frame, then flipped.
    for (k, img) in a.chunks_exact(PIXELS).enumerate() {
        let ((dy, dx), flip) = augmentation(1, 0, k);
        let raw = pixels(k);
        for (c, y, x) in [(0, 0, 0), (1, 3, 30), (2, 31, 31), (0, 16, 2), (2, 29, 8)] {
            let xf = if flip { 31 - x } else { x } as isize;
            let (sy, sx) = (y as isize + dy, xf + dx);
            let v = if (0..32).contains(&sy) && (0..32).contains(&sx) {
                raw[c * 1024 + (sy * 32 + sx) as usize]
            } else {
                0
            };
            let got = img[c * 1024 + y * 32 + x];
            assert!((got - normalised(v, c, Variant::Cifar10)).abs() < 1e-6, "example {k} c{c} y{y} x{x}");
        }
    }
    // The draws cover every offset in [-4, 4] and flip about half the time.
    let draws: Vec<_> = (0..4000).map(|i| augmentation(9, 3, i)).collect();
    for o in -4..=4 {
        assert!(draws.iter().any(|((dy, _), _)| *dy == o) && draws.iter().any(|((_, dx), _)| *dx == o), "{o}");
    }
    let flips = draws.iter().filter(|(_, f)| *f).count();
    assert!((1800..2200).contains(&flips), "{flips} flips of 4000");
    // A prefix passes augmentation through.
    let prefix = Prefix::new(std::sync::Arc::new(aug), 5);
    assert_eq!(images(&prefix, &[3], Some((1, 0)))?, &a[3 * PIXELS..4 * PIXELS]);
    assert!(prefix.train_batch(&[5], 1, 0, &CPU).is_err());
    Ok(())
}
