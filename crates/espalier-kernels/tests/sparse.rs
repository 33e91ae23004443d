//! The sparse (CSR) and N:M linear layers against the dense product
//! ([`espalier_kernels::dense::linear`]) on the same masked weight: random
//! masks at densities 0–100%, odd shapes, empty rows and columns, N:M 1:4,
//! 2:4, 4:8, one token and many; and the format choice.

use candle_core::{Device, Tensor};
use espalier_core::{Result, Rng};
use espalier_kernels::dense::linear;
use espalier_kernels::sparse::{self, choose, nm_pattern, Format, PackOptions, SparseLinear};

fn normal(shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
    let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal() as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// `(out, in)` weight keeping each entry with probability `keep`.
fn masked(out: usize, inp: usize, keep: f64, rng: &mut Rng) -> Result<Tensor> {
    let v: Vec<f32> = (0..out * inp).map(|_| if rng.uniform() < keep { rng.normal() as f32 } else { 0.0 }).collect();
    Ok(Tensor::from_vec(v, (out, inp), &Device::Cpu)?)
}

/// `(out, in)` weight with `n` random non-zeros in every block of `m`
/// inputs (`fewer`: some blocks with fewer).
fn nm_weight(out: usize, inp: usize, (n, m): (usize, usize), fewer: bool, rng: &mut Rng) -> Result<Tensor> {
    let mut w = vec![0f32; out * inp];
    for block in w.chunks_exact_mut(m) {
        let mut order: Vec<usize> = (0..m).collect();
        rng.shuffle(&mut order);
        let kept = if fewer { rng.below(n + 1) } else { n };
        order[..kept].iter().for_each(|&i| block[i] = rng.normal() as f32);
    }
    Ok(Tensor::from_vec(w, (out, inp), &Device::Cpu)?)
}

/// Largest `|a − b| / (1 + |b|)`.
fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f32::max))
}

/// The packed layer against the dense one, with and without bias, on
/// inputs of every row count that exercises a different tile path.
fn check(packed_of: &dyn Fn(&Tensor, Option<&Tensor>) -> Result<SparseLinear>, w: &Tensor, what: &str) -> Result<()> {
    let (out, inp) = w.dims2()?;
    let mut rng = Rng::new(7);
    let b = normal(&[out], &mut rng)?;
    for rows in [1usize, 2, 3, 5, 16, 17, 40, 64, 100, 129, 300] {
        let x = normal(&[rows, inp], &mut rng)?;
        for bias in [Some(&b), None] {
            let p = packed_of(w, bias)?;
            let d = rel_diff(&p.forward(&x)?, &linear(&x, w, bias)?)?;
            assert!(d < 1e-4, "{what}: W ({out}, {inp}), {rows} rows, bias {}: differs by {d}", bias.is_some());
        }
    }
    // A 3-D input keeps its leading axes.
    let x = normal(&[3, 7, inp], &mut rng)?;
    let p = packed_of(w, Some(&b))?;
    let y = p.forward(&x)?;
    assert_eq!(y.dims(), &[3, 7, out]);
    assert!(rel_diff(&y, &linear(&x, w, Some(&b))?)? < 1e-4, "{what}: 3-D input");
    // The packed weight unpacks to the dense one.
    assert!(rel_diff(&p.to_dense()?, w)? == 0.0, "{what}: to_dense");
    Ok(())
}

fn csr(w: &Tensor, b: Option<&Tensor>) -> Result<SparseLinear> {
    SparseLinear::pack_csr(w, b)
}

#[test]
fn csr_matches_dense_at_every_density() -> Result<()> {
    let mut rng = Rng::new(1);
    for (out, inp) in [(1, 1), (5, 3), (13, 29), (64, 96), (97, 211), (384, 384)] {
        for keep in [0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0] {
            let w = masked(out, inp, keep, &mut rng)?;
            check(&csr, &w, &format!("csr keep {keep}"))?;
        }
    }
    Ok(())
}

#[test]
fn csr_handles_empty_rows_and_columns() -> Result<()> {
    let mut rng = Rng::new(2);
    let (out, inp) = (37, 53);
    let mut w = masked(out, inp, 0.3, &mut rng)?.to_vec2::<f32>()?;
    // Empty output rows (every third) and empty input columns (every fifth).
    for (o, row) in w.iter_mut().enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            if o % 3 == 0 || i % 5 == 0 {
                *v = 0.0;
            }
        }
    }
    let w = Tensor::new(w, &Device::Cpu)?;
    check(&csr, &w, "empty rows and columns")?;
    // All zero: the output is the bias.
    let zero = Tensor::zeros((out, inp), candle_core::DType::F32, &Device::Cpu)?;
    check(&csr, &zero, "all zero")?;
    let p = SparseLinear::pack_csr(&zero, None)?;
    assert_eq!(p.stored(), 0);
    let y = p.forward(&normal(&[4, inp], &mut rng)?)?;
    assert_eq!(y.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    // Fully dense.
    check(&csr, &normal(&[out, inp], &mut rng)?, "fully dense")?;
    Ok(())
}

#[test]
fn nm_matches_dense() -> Result<()> {
    let mut rng = Rng::new(3);
    for (n, m) in [(1, 4), (2, 4), (4, 8), (1, 2), (2, 8)] {
        for (out, inp) in [(1, 8), (7, 16), (33, 64), (96, 384), (384, 1536)] {
            for fewer in [false, true] {
                let w = nm_weight(out, inp, (n, m), fewer, &mut rng)?;
                let pack = |w: &Tensor, b: Option<&Tensor>| SparseLinear::pack_nm(w, b, (n, m));
                check(&pack, &w, &format!("{n}:{m} fewer {fewer}"))?;
                let p = SparseLinear::pack_nm(&w, None, (n, m))?;
                assert_eq!(p.format(), Format::Nm { n, m });
                assert_eq!(p.stored(), out * inp / m * n);
            }
        }
    }
    Ok(())
}

#[test]
fn nm_refuses_weights_without_the_pattern() -> Result<()> {
    let mut rng = Rng::new(4);
    let w = nm_weight(4, 16, (4, 8), false, &mut rng)?;
    let err = SparseLinear::pack_nm(&w, None, (2, 4)).expect_err("4:8 is not 2:4").to_string();
    assert!(err.contains("more than 2 non-zeros"), "{err}");
    let err = SparseLinear::pack_nm(&normal(&[3, 10], &mut rng)?, None, (2, 4)).expect_err("10 % 4").to_string();
    assert!(err.contains("multiple of 4"), "{err}");
    let err = SparseLinear::pack_csr(&w, Some(&normal(&[5], &mut rng)?)).expect_err("bias").to_string();
    assert!(err.contains("bias"), "{err}");
    let p = SparseLinear::pack_csr(&w, None)?;
    let err = p.forward(&normal(&[2, 15], &mut rng)?).expect_err("width").to_string();
    assert!(err.contains("does not match"), "{err}");
    Ok(())
}

#[test]
fn nm_pattern_finds_the_sparsest_pattern() -> Result<()> {
    let mut rng = Rng::new(5);
    let v = |w: &Tensor| w.flatten_all()?.to_vec1::<f32>();
    for (n, m) in [(1, 4), (2, 4), (4, 8)] {
        let w = nm_weight(16, 64, (n, m), false, &mut rng)?;
        let found = nm_pattern(&v(&w)?, (16, 64)).expect("a pattern");
        // A 1:4 weight is also 2:8 and 2:4: the sparsest is reported.
        assert!(found.0 as f64 / found.1 as f64 <= n as f64 / m as f64, "{n}:{m} found as {found:?}");
    }
    assert_eq!(nm_pattern(&v(&normal(&[4, 16], &mut rng)?)?, (4, 16)), None);
    assert_eq!(nm_pattern(&[1.0; 30], (3, 10)), None);
    Ok(())
}

#[test]
fn choose_follows_the_thresholds() -> Result<()> {
    let opts = PackOptions::default();
    assert_eq!(choose(1.0, None, (384, 384), &opts), Format::Dense);
    assert_eq!(choose(0.05, None, (384, 384), &opts), Format::Csr);
    assert_eq!(choose(0.25, Some((1, 4)), (384, 384), &opts), Format::Nm { n: 1, m: 4 });
    let nm = PackOptions { max_nm_density: 0.5, ..opts };
    assert_eq!(choose(0.5, Some((2, 4)), (384, 384), &nm), Format::Nm { n: 2, m: 4 });
    // A sparse weight that happens to be 2:4 is stored as CSR.
    assert_eq!(choose(0.05, Some((2, 4)), (384, 384), &nm), Format::Csr);
    assert_eq!(choose(0.0, None, (0, 384), &opts), Format::Dense);
    // 70% sparsity by rounding: 44,237 of 147,456 kept (0.3000013) is 30%.
    assert_eq!(choose(44_237.0 / 147_456.0, None, (384, 384), &PackOptions { small_rows: 0, ..opts }), Format::Csr);
    assert_eq!(choose(44_238.0 / 147_456.0, None, (384, 384), &PackOptions { small_rows: 0, ..opts }), Format::Dense);
    let strict = PackOptions { max_density: 0.01, max_nm_density: 0.0, small_rows: 0, ..opts };
    assert_eq!(choose(0.05, None, (384, 384), &strict), Format::Dense);
    assert_eq!(choose(0.5, Some((2, 4)), (384, 384), &strict), Format::Dense);
    assert_eq!(choose(0.25, Some((1, 4)), (384, 384), &strict), Format::Dense);
    let off = PackOptions { detect_nm: false, ..opts };
    assert_eq!(choose(0.25, Some((1, 4)), (384, 384), &off), choose(0.25, None, (384, 384), &opts));
    assert!(PackOptions { max_density: 1.5, ..opts }.validate().is_err());
    // `pack` follows `choose`: dense weights stay dense.
    let mut rng = Rng::new(6);
    assert!(SparseLinear::pack(&normal(&[8, 8], &mut rng)?, None, &opts)?.is_none());
    let sparse_w = masked(64, 64, 0.05, &mut rng)?;
    assert_eq!(SparseLinear::pack(&sparse_w, None, &opts)?.map(|p| p.format()), Some(Format::Csr));
    assert_eq!(sparse::density(&[0.0, 1.0, 0.0, 2.0]), 0.5);
    Ok(())
}

/// Weights up to 50% dense (CSR) and 2:4 are packed for small inputs only:
/// an input of at most `small_rows` rows runs the sparse kernel, a larger
/// one the dense product; the sparser weights serve every input.
#[test]
fn half_dense_weights_serve_small_inputs_only() -> Result<()> {
    let opts = PackOptions::default();
    let mut rng = Rng::new(8);
    // Exactly half dense, no N:M pattern: the first half of every row.
    let half: Vec<f32> = (0..64 * 64).map(|i| if i % 64 < 32 { rng.normal() as f32 } else { 0.0 }).collect();
    let half = Tensor::from_vec(half, (64, 64), &Device::Cpu)?;
    let p = SparseLinear::pack(&half, None, &opts)?.expect("packed for small inputs");
    assert_eq!((p.format(), p.max_rows()), (Format::Csr, Some(opts.small_rows)));
    assert!(p.serves(1) && p.serves(opts.small_rows) && !p.serves(opts.small_rows + 1));
    let nm = SparseLinear::pack(&nm_weight(16, 64, (2, 4), false, &mut rng)?, None, &opts)?.unwrap();
    assert_eq!((nm.format(), nm.max_rows()), (Format::Nm { n: 2, m: 4 }, Some(opts.small_rows)));
    let sparse = SparseLinear::pack(&masked(64, 64, 0.1, &mut rng)?, None, &opts)?.unwrap();
    assert_eq!(sparse.max_rows(), None);
    assert!(sparse.serves(1 << 20));
    // Off: the half-dense weight stays dense.
    assert!(SparseLinear::pack(&half, None, &PackOptions { small_rows: 0, ..opts })?.is_none());
    // 70% dense stays dense even for small inputs.
    assert!(SparseLinear::pack(&masked(64, 64, 0.8, &mut rng)?, None, &opts)?.is_none());
    Ok(())
}
