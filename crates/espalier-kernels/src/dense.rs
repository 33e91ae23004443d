//! The fully connected layer `y = x Wᵀ + b` as one fused CPU op with its
//! own backward pass, and the strided GEMM helper it shares with the
//! convolutions ([`crate::conv`]).
//!
//! Composed from candle's ops, a linear layer on `(B, T, K)` inputs is a
//! reshape, a matrix product with the transposed weight, a reshape back and
//! a broadcast addition of the bias: five nodes of the autograd graph. Their
//! backward passes reduce the bias gradient over the batch and sequence axes
//! with candle's strided reduction (12% of a MiniLM training step), add each
//! node's gradient into a zero-filled buffer (candle's gradient store), and
//! accumulate the weight gradient through a transposed view. Here the layer
//! is one node:
//!
//! - forward: `Y (M × N) = X (M × K) · Wᵀ` with the rows of `Y` first set to
//!   `b`, so the GEMM accumulates onto the bias (`M` = all leading axes);
//! - backward, with `G = ∂L/∂Y`: `∂L/∂X = G · W` (`M × N · N × K`),
//!   `∂L/∂W = Gᵀ · X` (`N × M · M × K`, `G` read transposed in place) and
//!   `∂L/∂b = Σ_rows G`.
//!
//! The products call `gemm` directly on the row-major buffers with the
//! strides of each operand (no transposed copies), each thread of candle's
//! pool on its share of the batch rows with a single-threaded `gemm` (for
//! `∂L/∂W` the shares are partial sums, added up after): `gemm`'s own
//! threading ran the MNIST MLP's products at half that rate. Operands
//! outside the autograd graph (the data fed to a first layer, a frozen
//! weight) get no gradient. The fused path runs for
//! f32 tensors on the CPU while [`crate::fused::set_enabled`] is on;
//! otherwise [`reference::linear`] composes candle's ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use espalier_core::Result;
use gemm::Parallelism;
use std::ops::Range;

use crate::fused::{cpu_slice, fusable, output, with_data, CResult};

/// A row-major `rows × cols` view for [`matmul`] (optionally read transposed).
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    ptr: *const f32,
    /// Element strides of a row step and a column step.
    rs: isize,
    cs: isize,
}

// SAFETY: a `Mat` is a read-only view; the products that share one between
// threads only read through it while its slice is borrowed by the caller.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    pub(crate) fn new(data: &[f32], cols: usize) -> Self {
        Mat { ptr: data.as_ptr(), rs: cols as isize, cs: 1 }
    }
    /// A block whose rows are `row_stride` elements apart in `data` (a
    /// head's columns of a `(T, H·d)` matrix).
    pub(crate) fn strided(data: &[f32], row_stride: usize) -> Self {
        Self::new(data, row_stride)
    }
    pub(crate) fn t(self) -> Self {
        Mat { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
    /// The view that starts at row `r`, column `c` of this one.
    fn at(self, r: usize, c: usize) -> Self {
        // SAFETY: the callers stay inside the block the view covers.
        Mat { ptr: unsafe { self.ptr.offset(r as isize * self.rs + c as isize * self.cs) }, ..self }
    }
}

/// `dst (m × n, row-major) = [dst +] a (m × k) · b (k × n)`.
pub(crate) fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    par: Parallelism,
) {
    assert!(dst.len() >= m * n);
    // SAFETY: `dst` holds m·n elements, rows n apart.
    unsafe { matmul_to(dst.as_mut_ptr(), n, accumulate, a, b, (m, k, n), par) }
}

/// [`matmul`] into `m` rows of `n` elements that are `dst_rs` elements apart.
///
/// # Safety
/// As for [`matmul_into`] with strides `(dst_rs, 1)`.
pub(crate) unsafe fn matmul_to(
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    par: Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe { matmul_into(dst, (dst_rs, 1), accumulate, a, b, dims, par) }
}

/// `dst (m × n) = [dst +] a (m × k) · b (k × n)` with the destination's
/// element `(i, j)` at `dst + i·rs + j·cs` (`(1, m)`: stored transposed).
///
/// # Safety
/// `dst` must point to such an `m × n` block, valid for writes and not read
/// or written by anyone else during the call; `a` and `b` must point into
/// live slices of at least `m × k` and `k × n` elements with their strides.
pub(crate) unsafe fn matmul_into(
    dst: *mut f32,
    (rs, cs): (usize, usize),
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, k, n): (usize, usize, usize),
    par: Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            cs as isize,
            rs as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// candle's thread count as `gemm` parallelism, for products big enough to
/// be worth waking the pool.
pub(crate) fn parallelism(flops: usize) -> Parallelism {
    let threads = crate::fused::num_threads();
    if threads > 1 && flops >= 1 << 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// Products smaller than this (in FLOPs) run on one thread: about 20 µs of
/// work, where waking candle's pool costs a few.
const MIN_SPLIT_FLOPS: usize = 1 << 21;

/// `dst (m × n, row-major) = [dst +] a (m × k) · b (k × n)` split over
/// candle's pool by hand, a single-threaded `gemm` per part: by rows of `a`
/// when `a` is the larger operand, else by columns of `b` (a few batch rows
/// times a large weight), parts a multiple of 16 long. `gemm`'s own
/// threading runs on rayon's pool, whose threads compete with candle's
/// spinning ones: the LeNet-300-100 forward pass at batch 32 (its 32 × 784 ×
/// 300 product) took 0.38 ms on two threads that way and 0.17 ms on one.
pub(crate) fn matmul_pool(dst: &mut [f32], init: Init, a: Mat, b: Mat, (m, k, n): (usize, usize, usize)) {
    let threads = crate::fused::num_threads();
    let rows = m >= n;
    let len = if rows { m } else { n };
    let chunk = len.div_ceil(threads.max(1)).next_multiple_of(16);
    assert!(dst.len() >= m * n);
    if threads < 2 || 2 * m * k * n < MIN_SPLIT_FLOPS || chunk >= len {
        // SAFETY: `dst` holds the m × n block.
        unsafe { init.fill(dst.as_mut_ptr(), n, 0..m, 0..n) };
        return matmul(dst, init.accumulates(), a, b, (m, k, n), Parallelism::None);
    }
    let out = crate::fused::SharedOut::new(dst);
    candle_core::utils::barrier_pool().execute_chunked(len.div_ceil(chunk), |ids| {
        for i in ids {
            let part = i * chunk..((i + 1) * chunk).min(len);
            // SAFETY: each part writes its own rows (or columns) of `dst`,
            // an m × n block with rows n apart.
            unsafe {
                if rows {
                    init.fill(out.ptr(), n, part.clone(), 0..n);
                    let d = out.ptr().add(part.start * n);
                    matmul_to(d, n, init.accumulates(), a.at(part.start, 0), b, (part.len(), k, n), Parallelism::None);
                } else {
                    init.fill(out.ptr(), n, 0..m, part.clone());
                    let d = out.ptr().add(part.start);
                    matmul_to(d, n, init.accumulates(), a, b.at(0, part.start), (m, k, part.len()), Parallelism::None);
                }
            }
        }
    });
}

/// What the destination of a product split over the pool starts from.
#[derive(Clone, Copy)]
pub(crate) enum Init<'a> {
    /// Nothing: `dst = a · b`.
    Zero,
    /// Its contents: `dst += a · b`.
    Dst,
    /// This row (a bias) in every row: `dst = 1·bᵀ + a · b`. Each part of a
    /// split product writes its own block of it just before its product,
    /// on its own thread, while that block is about to be in cache (a
    /// single-threaded fill of the whole output first was 4% of a MiniLM
    /// forward pass at 32 × 128).
    Row(&'a [f32]),
}

impl Init<'_> {
    fn accumulates(self) -> bool {
        !matches!(self, Init::Zero)
    }

    /// Writes the bias into `rows × cols` of the block at `dst` (rows `n`
    /// apart).
    ///
    /// # Safety
    /// `dst` must be valid for writes over those elements, which no one
    /// else reads or writes meanwhile; a bias must hold `n` values.
    unsafe fn fill(self, dst: *mut f32, n: usize, rows: Range<usize>, cols: Range<usize>) {
        if let Init::Row(b) = self {
            assert!(b.len() >= cols.end);
            for r in rows {
                // SAFETY: the caller's contract; the source holds `cols`.
                unsafe {
                    std::ptr::copy_nonoverlapping(b.as_ptr().add(cols.start), dst.add(r * n + cols.start), cols.len())
                };
            }
        }
    }
}

/// [`matmul`] where a parallel `par` means candle's pool ([`matmul_pool`])
/// rather than rayon's.
pub(crate) fn matmul_par(
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    dims: (usize, usize, usize),
    par: Parallelism,
) {
    match par {
        Parallelism::None => matmul(dst, accumulate, a, b, dims, par),
        _ => matmul_pool(dst, if accumulate { Init::Dst } else { Init::Zero }, a, b, dims),
    }
}

/// Rows of the batch each thread gets at least, when a product is split by
/// hand over candle's pool.
const MIN_ROWS: usize = 32;

/// Into how many parts a product over `m` batch rows is split by hand: one
/// per thread of candle's pool, each running a single-threaded `gemm` on its
/// share. `gemm`'s own threading reached 92–207 GFLOP/s on the MNIST MLP's
/// first layer (128 × 784 × 300: Y, dX, dW) where this reaches 185–263, and
/// 220–264 against 249–290 on BERT's weight gradients (the `gemm` bench, 2
/// threads). Returns `(parts, rows per part)`.
fn parts(m: usize, flops: usize) -> (usize, usize) {
    let threads = crate::fused::num_threads();
    split(m, if threads < 2 || flops < 1 << 16 { 1 } else { threads.min(m / MIN_ROWS).max(1) })
}

/// `m` rows in at most `p` parts of equal length but the last: `(parts,
/// rows per part)`, every part non-empty.
fn split(m: usize, p: usize) -> (usize, usize) {
    let chunk = m.div_ceil(p.max(1)).max(1);
    (m.div_ceil(chunk).max(1), chunk)
}

/// `dst (m × n) = [dst +] a (m × k) · b (k × n)` with `a` row-major (`a_rs` apart),
/// its rows split over the pool ([`matmul_pool`] when there are too few
/// rows: it splits the columns).
pub(crate) fn matmul_rows(
    dst: &mut [f32],
    init: Init,
    a: &[f32],
    a_rs: usize,
    b: Mat,
    (m, k, n): (usize, usize, usize),
) {
    let (p, chunk) = parts(m, m * k * n);
    if p == 1 || m < n {
        return matmul_pool(dst, init, Mat::new(a, a_rs), b, (m, k, n));
    }
    let out = crate::fused::SharedOut::new(dst);
    candle_core::utils::barrier_pool().execute_chunked(p, |ids| {
        for i in ids {
            let rows = i * chunk..((i + 1) * chunk).min(m);
            // SAFETY: each part writes its own rows of `dst`.
            let o = unsafe { out.slice(rows.start * n..rows.end * n) };
            // SAFETY: `o` is this part's rows.
            unsafe { init.fill(o.as_mut_ptr(), n, 0..rows.len(), 0..n) };
            let a = Mat::new(&a[rows.start * a_rs..], a_rs);
            matmul(o, init.accumulates(), a, b, (rows.len(), k, n), Parallelism::None);
        }
    });
}

/// `dW (n × k) = Gᵀ · X` over `m` batch rows (`G`: m × n, `X`: m × k, both
/// row-major), the batch split over the pool: each part sums its rows' outer
/// products into its own buffer (the first into `dw`), then the buffers are
/// added up.
pub(crate) fn weight_grad(dw: &mut [f32], g: &[f32], x: &[f32], (m, n, k): (usize, usize, usize)) {
    let (p, chunk) = parts(m, m * k * n);
    let product = |o: &mut [f32], rows: Range<usize>| {
        let (gm, xm) = (Mat::new(&g[rows.start * n..], n).t(), Mat::new(&x[rows.start * k..], k));
        matmul(o, false, gm, xm, (n, rows.len(), k), Parallelism::None);
    };
    if p == 1 {
        return matmul_pool(dw, Init::Zero, Mat::new(g, n).t(), Mat::new(x, k), (n, m, k));
    }
    // SAFETY: every part's product writes all n·k elements of its buffer.
    let partial = unsafe {
        crate::fused::output((p - 1) * n * k, |rest| {
            let (first, rest) = (crate::fused::SharedOut::new(dw), crate::fused::SharedOut::new(rest));
            candle_core::utils::barrier_pool().execute_chunked(p, |ids| {
                for i in ids {
                    // SAFETY: part i alone writes buffer i (the first: dW).
                    let o = if i == 0 { first.slice(0..n * k) } else { rest.slice((i - 1) * n * k..i * n * k) };
                    product(o, i * chunk..((i + 1) * chunk).min(m));
                }
            });
        })
    };
    for part in partial.chunks_exact(n * k) {
        crate::fused::add_into(dw, part);
    }
}

/// `x Wᵀ + b` over the last axis of `x` (`(..., K)`), with `W` of shape
/// `(N, K)` (PyTorch's layout) and `b` of shape `(N,)`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !fusable(x) || !fusable(w) || b.is_some_and(|b| !fusable(b)) {
        return reference::linear(x, w, b);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = LinearOp { transposed: false };
    Ok(match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
        None => x.apply_op2(&w, op)?,
    })
}

/// [`linear`] for inference with the weight given transposed, `wt` of shape
/// `(K, N)` (row-major): on few rows `gemm` spends much of a product packing
/// the weight, and it packs this layout far faster than PyTorch's (on one
/// thread, 128 × 3072 × 768 ran at 147 GFLOP/s against 95, 128 × 768 × 768
/// at 148 against 129; at 512 rows and more the two are within 5%). No
/// backward pass; off the fused path, candle's ops.
pub fn linear_pretransposed(x: &Tensor, wt: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !fusable(x) || !fusable(wt) || b.is_some_and(|b| !fusable(b)) {
        return reference::linear(x, &wt.t()?, b);
    }
    let (x, wt) = (x.contiguous()?, wt.contiguous()?);
    let op = LinearOp { transposed: true };
    Ok(match b {
        Some(b) => x.apply_op3(&wt, &b.contiguous()?, op)?,
        None => x.apply_op2(&wt, op)?,
    })
}

/// The same layer composed from candle's (differentiable) ops: the fallback
/// off the CPU and the baseline the fused op is tested and timed against.
pub mod reference {
    use candle_core::Tensor;
    use espalier_core::Result;

    /// `x Wᵀ + b` from candle's ops (a 3-D `x` is flattened to one matrix).
    pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = match x.dims() {
            &[b1, b2, _] => x.reshape((b1 * b2, ()))?.matmul(&w.t()?)?.reshape((b1, b2, ()))?,
            _ => x.matmul(&w.t()?)?,
        };
        Ok(match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// The fused linear layer; `transposed`: the weight comes as `(K, N)`
/// (inference only, [`linear_pretransposed`]).
struct LinearOp {
    transposed: bool,
}

/// `(M, K, N)` of `x` `(..., K)` and `w` `(N, K)` (`(K, N)` if `transposed`).
fn dims(x: &Layout, w: &Layout, transposed: bool) -> CResult<(usize, usize, usize)> {
    let k = *x.dims().last().unwrap_or(&0);
    let (n, kw) = w.shape().dims2()?;
    let (n, kw) = if transposed { (kw, n) } else { (n, kw) };
    if k != kw || k == 0 {
        candle_core::bail!("linear: input {:?} does not match weight {:?}", x.dims(), w.dims());
    }
    Ok((x.shape().elem_count() / k, k, n))
}

fn forward(
    x: &[f32],
    xl: &Layout,
    w: &[f32],
    wl: &Layout,
    b: Option<&[f32]>,
    transposed: bool,
) -> CResult<(CpuStorage, Shape)> {
    let (m, k, n) = dims(xl, wl, transposed)?;
    let wt = if transposed { Mat::new(w, n) } else { Mat::new(w, k).t() };
    let y = match b {
        Some(b) if b.len() != n => candle_core::bail!("linear: bias has {} elements, weight {n} rows", b.len()),
        // SAFETY: the bias fills every element, then the product (k > 0)
        // accumulates onto it; without one the product writes every element.
        Some(b) => unsafe { output(m * n, |y| matmul_rows(y, Init::Row(b), x, k, wt, (m, k, n))) },
        None => unsafe { output(m * n, |y| matmul_rows(y, Init::Zero, x, k, wt, (m, k, n))) },
    };
    let mut shape = xl.dims().to_vec();
    *shape.last_mut().expect("k > 0") = n;
    Ok((CpuStorage::F32(y), Shape::from(shape)))
}

/// `(∂L/∂x, ∂L/∂W, ∂L/∂b if with_bias)`, each only where its operand is
/// part of the autograd graph: the data fed to a network's first layer (and
/// a frozen weight) gets no gradient, which saves that layer's `G · W`
/// (a fifth of an MNIST MLP's GEMM work).
fn backward(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    with_bias: bool,
) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (n, k) = w.dims2()?;
    let m = x.elem_count() / k;
    let (want_dx, want_dw) = (x.track_op(), w.track_op());
    let (dx, dw, db) = with_data(&[x, w, grad], "linear backward", |d| {
        let (x, w, g) = (d[0], d[1], d[2]);
        // SAFETY (both products): without accumulation the products write
        // every element of their destination when the inner dimension is
        // not empty; an empty one (no rows in the batch) gives zeros.
        let dx =
            want_dx.then(|| unsafe { output(m * k, |o| matmul_rows(o, Init::Zero, g, n, Mat::new(w, k), (m, n, k))) });
        let dw = want_dw.then(|| {
            if m == 0 {
                return vec![0f32; n * k];
            }
            unsafe { output(n * k, |o| weight_grad(o, g, x, (m, n, k))) }
        });
        let db = with_bias.then(|| {
            let mut db = vec![0f32; n];
            for row in g.chunks_exact(n) {
                db.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            db
        });
        Ok((dx, dw, db))
    })?;
    let dev = x.device();
    Ok((
        dx.map(|dx| Tensor::from_vec(dx, x.shape(), dev)).transpose()?,
        dw.map(|dw| Tensor::from_vec(dw, w.shape(), dev)).transpose()?,
        db.map(|db| Tensor::from_vec(db, n, dev)).transpose()?,
    ))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "espalier-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        forward(cpu_slice(s1, l1, "linear")?, l1, cpu_slice(s2, l2, "linear")?, l2, None, self.transposed)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        if self.transposed {
            candle_core::bail!("linear_pretransposed is for inference: it has no backward pass");
        }
        let (dx, dw, _) = backward(x, w, grad, false)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "espalier-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let b = cpu_slice(s3, l3, "linear")?;
        forward(cpu_slice(s1, l1, "linear")?, l1, cpu_slice(s2, l2, "linear")?, l2, Some(b), self.transposed)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.transposed {
            candle_core::bail!("linear_pretransposed is for inference: it has no backward pass");
        }
        backward(x, w, grad, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::testing::{compare, randn};

    #[test]
    fn linear_matches_composition() -> Result<()> {
        // Odd sizes (not multiples of the GEMM tiles), a 3-D input, and
        // products big enough to be split over the pool by rows (the
        // fourth one into uneven parts) and, with few rows, by columns
        // (the last two; their weight gradients by rows of dW, then by
        // columns).
        for (x_shape, n) in [
            (vec![7, 13], 5),
            (vec![3, 11, 24], 17),
            (vec![4, 64, 96], 80),
            (vec![5, 13, 40], 33),
            (vec![24, 200], 301),
            (vec![2, 20, 400], 150),
        ] {
            let k = *x_shape.last().unwrap();
            let x = randn(&x_shape, 1.0, 1)?;
            let w = randn(&[n, k], 0.3, 2)?;
            let b = randn(&[n], 0.5, 3)?;
            let (dy, dg) = compare(&[x.clone(), w.clone(), b], &|t| linear(&t[0], &t[1], Some(&t[2])), &|t| {
                reference::linear(&t[0], &t[1], Some(&t[2]))
            })?;
            assert!(dy < 1e-4 && dg.iter().all(|d| *d < 1e-4), "{x_shape:?}: {dy} {dg:?}");
            let (dy, dg) =
                compare(&[x, w], &|t| linear(&t[0], &t[1], None), &|t| reference::linear(&t[0], &t[1], None))?;
            assert!(dy < 1e-4 && dg.iter().all(|d| *d < 1e-4), "{x_shape:?} without bias: {dy} {dg:?}");
        }
        Ok(())
    }

    #[test]
    fn pretransposed_linear_matches_linear() -> Result<()> {
        for (x_shape, n) in [(vec![7, 13], 5), (vec![2, 64, 96], 80), (vec![24, 200], 301), (vec![1, 128, 384], 1536)] {
            let k = *x_shape.last().unwrap();
            let x = randn(&x_shape, 1.0, 4)?;
            let w = randn(&[n, k], 0.3, 5)?;
            let b = randn(&[n], 0.5, 6)?;
            let wt = w.t()?.contiguous()?;
            for bias in [Some(&b), None] {
                let d = (linear(&x, &w, bias)? - linear_pretransposed(&x, &wt, bias)?)?.abs()?.flatten_all()?.max(0)?;
                assert!(d.to_scalar::<f32>()? < 1e-4, "{x_shape:?} {n}");
            }
        }
        let err = linear_pretransposed(&randn(&[4, 6], 1.0, 1)?, &randn(&[5, 3], 1.0, 2)?, None).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        Ok(())
    }

    #[test]
    fn linear_gives_gradients_only_to_tracked_operands() -> Result<()> {
        use candle_core::Var;
        // The input is plain data (no gradient wanted); the weight and bias
        // are variables: their gradients must match the composition's.
        let x = randn(&[9, 13], 1.0, 1)?;
        let (w, b) = (Var::from_tensor(&randn(&[5, 13], 0.3, 2)?)?, Var::from_tensor(&randn(&[5], 0.5, 3)?)?);
        let fused = linear(&x, &w, Some(&b))?.sqr()?.sum_all()?.backward()?;
        let composed = reference::linear(&x, &w, Some(&b))?.sqr()?.sum_all()?.backward()?;
        assert!(fused.get(&x).is_none(), "the data got a gradient");
        for v in [&w, &b] {
            let d = (fused.get(v).expect("fused gradient") - composed.get(v).expect("composed gradient"))?;
            let d = d.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "{d}");
        }
        // A frozen (plain) weight behind a tracked input: only ∂L/∂x.
        let xv = Var::from_tensor(&x)?;
        let frozen = w.as_tensor().detach();
        let g = linear(&xv, &frozen, None)?.sqr()?.sum_all()?.backward()?;
        assert!(g.get(&frozen).is_none() && g.get(&xv).is_some());
        Ok(())
    }

    #[test]
    fn split_leaves_no_part_empty() {
        for m in [1, 31, 64, 65, 100, 1000, 4096] {
            for p in 1..=48 {
                let (parts, chunk) = split(m, p);
                assert!(parts <= p.max(1) && parts * chunk >= m, "m {m} p {p}");
                assert!((parts - 1) * chunk < m, "m {m} p {p}: the last part is empty");
            }
        }
    }

    #[test]
    fn linear_refuses_mismatched_shapes() -> Result<()> {
        let x = randn(&[4, 6], 1.0, 1)?;
        let err = linear(&x, &randn(&[3, 5], 1.0, 2)?, None).expect_err("refused").to_string();
        assert!(err.contains("does not match"), "{err}");
        let err = linear(&x, &randn(&[3, 6], 1.0, 2)?, Some(&randn(&[4], 1.0, 3)?)).expect_err("refused").to_string();
        assert!(err.contains("bias has 4"), "{err}");
        Ok(())
    }
}
