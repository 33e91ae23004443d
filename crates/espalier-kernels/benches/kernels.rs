//! Micro-benchmarks of the kernels, printing medians (no assertions):
//!
//! - `dropout`: BERT-base attention-probability dropout masks at batch 32,
//!   sequence 128, against one f64 draw per element and the bare product;
//! - `conv`: single convolutions (ResNet-18/20 and stem shapes), forward and
//!   forward + backward, against candle's `conv2d`;
//! - `conv-rows`: the forward pass of ResNet-20's 3×3 convolutions (dense
//!   and with halved channels) by shifted rows against im2col;
//! - `gemm`: GFLOP/s of the three products of a linear layer (BERT's and the
//!   MNIST MLP's shapes), `gemm`'s own threading against the split by hand;
//! - `sparse`: the sparse (CSR) and N:M linear layers against the dense one
//!   on the same masked weight, MiniLM's shapes at 32 × 128 and 1 × 128
//!   tokens, unstructured densities 50–5% and 2:4 (the numbers behind
//!   `sparse::PackOptions`' defaults).
//!
//! `cargo bench -p espalier-kernels --bench kernels` runs them all;
//! `cargo bench -p espalier-kernels --bench kernels -- conv gemm` the named
//! ones. Whole-model steps (fused against composed) are `espalier bench`'s.

use candle_core::{DType, Device, Tensor, Var};
use espalier_core::{Result, Rng};
use espalier_kernels::bench::{conv2d_forward, linear_dw, linear_dx, linear_y};
use espalier_kernels::conv::conv2d;
use espalier_kernels::dropout::dropout;
use espalier_kernels::sparse::SparseLinear;

const BENCHES: [&str; 5] = ["dropout", "conv", "conv-rows", "gemm", "sparse"];

fn main() -> Result<()> {
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if let Some(unknown) = named.iter().find(|n| !BENCHES.contains(&n.as_str())) {
        espalier_core::bail!("no bench `{unknown}` (there are: {})", BENCHES.join(", "));
    }
    let run = |name: &str| named.is_empty() || named.iter().any(|n| n == name);
    if run("dropout") {
        dropout_bench()?;
    }
    if run("conv") {
        conv_bench()?;
    }
    if run("conv-rows") {
        conv_rows_bench()?;
    }
    if run("gemm") {
        gemm_bench();
    }
    if run("sparse") {
        sparse_bench()?;
    }
    Ok(())
}

fn normal(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    Ok(Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), shape, &Device::Cpu)?)
}

/// One f64 draw per element: the implementation the four-stream masks
/// replaced, kept to time against.
fn dropout_per_element(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    let scale = (1.0 / (1.0 - p)) as f32;
    let keep: Vec<f32> = (0..x.elem_count()).map(|_| if rng.uniform() >= p { scale } else { 0.0 }).collect();
    let m = Tensor::from_vec(keep, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&m)?)
}

fn dropout_bench() -> Result<()> {
    let x = Tensor::ones((32, 12, 128, 128), DType::F32, &Device::Cpu)?;
    let mut rng = Rng::new(0);
    let median_min = |f: &mut dyn FnMut() -> Result<()>| -> Result<(f64, f64)> {
        let mut times = Vec::new();
        for _ in 0..11 {
            let t = std::time::Instant::now();
            f()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok((times[5], times[0]))
    };
    let (old_med, old_min) = median_min(&mut || {
        std::hint::black_box(dropout_per_element(&x, 0.1, &mut rng)?);
        Ok(())
    })?;
    let (med, min) = median_min(&mut || {
        std::hint::black_box(dropout(&x, 0.1, Some(&mut rng))?);
        Ok(())
    })?;
    // The multiplication alone, for reference: what any mask-based dropout pays.
    let (mul_med, mul_min) = median_min(&mut || {
        std::hint::black_box(x.mul(&x)?);
        Ok(())
    })?;
    println!("dropout (32,12,128,128) p=0.1, median / min of 11:");
    println!("  f64 per element:         {old_med:6.1} / {old_min:6.1} ms");
    println!("  4 streams, 32 bit:       {med:6.1} / {min:6.1} ms");
    println!("  x.mul alone (the floor): {mul_med:6.1} / {mul_min:6.1} ms");
    Ok(())
}

fn conv_bench() -> Result<()> {
    for &(b, c, hw, cout, k, s, p) in &[
        (32, 3, 32, 64, 3, 1, 1),
        (32, 64, 32, 64, 3, 1, 1),
        (32, 128, 16, 128, 3, 1, 1),
        (32, 256, 8, 256, 3, 1, 1),
        (32, 512, 4, 512, 3, 1, 1),
        (128, 16, 32, 16, 3, 1, 1),
        (128, 32, 16, 64, 3, 2, 1),
        (128, 64, 8, 64, 3, 1, 1),
        (32, 3, 64, 64, 7, 2, 3),
    ] {
        let x = Var::from_tensor(&normal(&[b, c, hw, hw], 1)?)?;
        let w = Var::from_tensor(&normal(&[cout, c, k, k], 2)?)?;
        let r = normal(&[b, cout, (hw + 2 * p - k) / s + 1, (hw + 2 * p - k) / s + 1], 3)?;
        let time = |f: &dyn Fn() -> Result<Tensor>| -> Result<(f64, f64)> {
            let mut fwd = Vec::new();
            let mut all = Vec::new();
            for _ in 0..7 {
                let t = std::time::Instant::now();
                let y = f()?;
                fwd.push(t.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(y.mul(&r)?.sum_all()?.backward()?);
                all.push(t.elapsed().as_secs_f64() * 1e3);
            }
            fwd.sort_by(f64::total_cmp);
            all.sort_by(f64::total_cmp);
            Ok((fwd[3], all[3]))
        };
        let (cf, ca) = time(&|| Ok(x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1)?))?;
        let (of, oa) = time(&|| conv2d(x.as_tensor(), w.as_tensor(), s, p))?;
        println!(
            "x ({b},{c},{hw},{hw}) w ({cout},{c},{k},{k}) s{s} p{p}, median of 7 (ms): \
             candle fwd {cf:7.1} fwd+bwd {ca:7.1} | im2col fwd {of:7.1} fwd+bwd {oa:7.1} ({:.1}x)",
            ca / oa
        );
    }
    Ok(())
}

fn conv_rows_bench() -> Result<()> {
    for &b in &[1usize, 32, 128] {
        for &(c, hw, cout) in &[
            (16, 32, 16),
            (16, 32, 8),
            (8, 32, 16),
            (32, 16, 32),
            (32, 16, 16),
            (16, 16, 32),
            (64, 8, 64),
            (64, 8, 32),
            (32, 8, 64),
        ] {
            let x = normal(&[b, c, hw, hw], 1)?;
            let w = normal(&[cout, c, 3, 3], 2)?;
            let (mut t_rows, mut t_cols) = (Vec::new(), Vec::new());
            let reps = if b == 1 { 200 } else { 15 };
            for _ in 0..reps {
                for (rows, t) in [(true, &mut t_rows), (false, &mut t_cols)] {
                    let start = std::time::Instant::now();
                    std::hint::black_box(conv2d_forward(&x, &w, 1, 1, rows)?);
                    t.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            t_rows.sort_by(f64::total_cmp);
            t_cols.sort_by(f64::total_cmp);
            let (r, c2) = (t_rows[reps / 2], t_cols[reps / 2]);
            println!(
                "b {b:3} x ({c:2},{hw:2},{hw:2}) -> {cout:2}: im2col {c2:8.3} ms, rows {r:8.3} ms, rows/im2col {:.2}",
                r / c2
            );
        }
    }
    Ok(())
}

fn gemm_bench() {
    for (m, k, n) in [(4096, 384, 384), (4096, 384, 1536), (4096, 1536, 384), (128, 784, 300), (128, 300, 100)] {
        let (x, w, g) = (vec![0.5f32; m * k], vec![0.25f32; n * k], vec![0.125f32; m * n]);
        let time = |f: &mut dyn FnMut()| {
            f();
            let mut ts: Vec<f64> = (0..15)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            ts.sort_by(f64::total_cmp);
            2.0 * (m * k * n) as f64 / ts[7] / 1e9
        };
        let (mut y, mut dx, mut dw) = (vec![0f32; m * n], vec![0f32; m * k], vec![0f32; n * k]);
        let fwd = time(&mut || linear_y(&mut y, &x, &w, (m, k, n), false));
        let fwd_split = time(&mut || linear_y(&mut y, &x, &w, (m, k, n), true));
        let bx = time(&mut || linear_dx(&mut dx, &g, &w, (m, k, n), false));
        let bx_split = time(&mut || linear_dx(&mut dx, &g, &w, (m, k, n), true));
        let bw = time(&mut || linear_dw(&mut dw, &g, &x, (m, k, n), false));
        let bw_split = time(&mut || linear_dw(&mut dw, &g, &x, (m, k, n), true));
        println!(
            "m{m} k{k} n{n}, GFLOP/s gemm-threads / split: y {fwd:.0} / {fwd_split:.0}, \
             dx {bx:.0} / {bx_split:.0}, dW {bw:.0} / {bw_split:.0}"
        );
    }
}

/// A weight with a random `keep` fraction of its entries kept (`nm`: `n` of
/// every `m` inputs instead), the rest zero.
fn masked_weight(out: usize, inp: usize, keep: f64, nm: Option<(usize, usize)>, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let mut w: Vec<f32> = (0..out * inp).map(|_| rng.normal() as f32).collect();
    match nm {
        Some((n, m)) => {
            for block in w.chunks_exact_mut(m) {
                let mut order: Vec<usize> = (0..m).collect();
                rng.shuffle(&mut order);
                order[n..].iter().for_each(|&i| block[i] = 0.0);
            }
        }
        None => w.iter_mut().for_each(|v| {
            if rng.uniform() >= keep {
                *v = 0.0
            }
        }),
    }
    Ok(Tensor::from_vec(w, (out, inp), &Device::Cpu)?)
}

/// A bench case: its name, its N:M pattern if any, the fraction kept.
type Case = (String, Option<(usize, usize)>, f64);

fn sparse_bench() -> Result<()> {
    println!("sparse linear vs dense on the same masked weight, median ms (dense / sparse = speed-up):");
    for &(tokens, reps) in &[(32 * 128, 15), (128, 51)] {
        for &(out, inp) in &[(384, 384), (1536, 384), (384, 1536)] {
            let x = normal(&[tokens, inp], 1)?;
            let b = normal(&[out], 2)?;
            let mut cases: Vec<Case> =
                [0.5, 0.3, 0.2, 0.1, 0.05].iter().map(|&d| (format!("{:.0}%", 100.0 * (1.0 - d)), None, d)).collect();
            cases.push(("2:4".into(), Some((2, 4)), 0.5));
            cases.push(("1:4".into(), Some((1, 4)), 0.25));
            for (name, nm, keep) in cases {
                let w = masked_weight(out, inp, keep, nm, 3)?;
                let packed = match nm {
                    Some(p) => SparseLinear::pack_nm(&w, Some(&b), p)?,
                    None => SparseLinear::pack_csr(&w, Some(&b))?,
                };
                let (mut td, mut ts) = (Vec::new(), Vec::new());
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    std::hint::black_box(espalier_kernels::dense::linear(&x, &w, Some(&b))?);
                    td.push(t.elapsed().as_secs_f64() * 1e3);
                    let t = std::time::Instant::now();
                    std::hint::black_box(packed.forward(&x)?);
                    ts.push(t.elapsed().as_secs_f64() * 1e3);
                }
                td.sort_by(f64::total_cmp);
                ts.sort_by(f64::total_cmp);
                let (d, s) = (td[reps / 2], ts[reps / 2]);
                let (dmin, smin) = (td[0], ts[0]);
                let gflops = 2.0 * (packed.stored() * tokens) as f64 / (s * 1e-3) / 1e9;
                println!(
                    "  tokens {tokens:4} W ({out:4},{inp:4}) {name:>4} {:>5}: dense {d:7.3} sparse {s:7.3} \
                     x{:5.2} (min {dmin:7.3} / {smin:7.3} x{:5.2}; {gflops:5.1} GFLOP/s on the stored values)",
                    packed.format().to_string(),
                    d / s,
                    dmin / smin
                );
            }
        }
    }
    Ok(())
}
