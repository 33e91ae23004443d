//! Fused CPU kernels, each with its own backward pass: LayerNorm, the
//! scaled and masked attention softmax, and GELU.
//!
//! Composed from candle's basic ops, a LayerNorm is nine tensor ops forward
//! and about twenty backward, each a full pass over memory with its own
//! allocation (and candle's gradient accumulation adds a zero-filled buffer
//! and an addition per node). Here each is one pass forward and one or two
//! backward, vectorised with AVX2/FMA when the CPU has them (detected at run
//! time) and spread over candle's own thread pool.
//!
//! The math, per row of length `n` (or per element):
//!
//! - LayerNorm (Ba, Kiros & Hinton 2016, "Layer Normalization",
//!   arXiv:1607.06450): `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)`,
//!   `y = x̂·γ + β`; backward with `g = dy·γ`:
//!   `dx = r·(g − mean(g) − x̂·mean(g·x̂))`, `dγ = Σ_rows dy·x̂`, `dβ = Σ_rows dy`.
//! - Attention softmax (Vaswani et al. 2017, "Attention Is All You Need",
//!   arXiv:1706.03762, eq. 1): `p = softmax(s·c + b)`
//!   with scale `c = 1/√d` and the additive mask bias `b` of the row's
//!   sequence; backward `ds = c·p·(dp − Σ dp·p)` (the mask gets no gradient).
//! - GELU (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units (GELUs)",
//!   arXiv:1606.08415): `y = x·Φ(x)`, `Φ(x) = ½(1 + erf(x/√2))`,
//!   `dy/dx = Φ(x) + x·φ(x)`; and its tanh approximation
//!   `y = ½x(1 + tanh(u))`, `u = √(2/π)(x + 0.044715x³)`.
//!
//! `exp` and `erf` are polynomial approximations that vectorise (relative
//! error of `exp` about 1e-7; `erf` is Abramowitz & Stegun 7.1.26, absolute
//! error below 1.5e-7 in exact arithmetic, about 5e-7 in f32), so results differ from the compositions in the last
//! bits only; the tests compare values and gradients with the compositions.
//!
//! The fused path runs for contiguous f32 tensors on the CPU while
//! [`set_enabled`] is on (the default); otherwise (other devices, other
//! dtypes, or switched off to time the difference) the functions fall back to
//! the compositions in [`reference`](mod@reference), which run anywhere.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::reduce::Partials;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use espalier_core::Result;

/// candle's result type, which the `CustomOp` methods return.
pub type CResult<T> = candle_core::Result<T>;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches the fused kernels on or off for the whole process (on by
/// default); off, every function here runs its [`reference`](mod@reference) composition.
/// Meant for benchmarks and tests that compare the two.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// candle's CPU thread count, read once. `candle_core::utils::get_num_threads`
/// reads the environment on every call and, without `RAYON_NUM_THREADS`,
/// parses `/proc/cpuinfo` for the physical core count: 15% of a batch-1
/// ResNet-20 forward pass on two threads.
pub fn num_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Whether the fused kernels are switched on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether `t` takes the fused path: the kernels are on, and `t` is an f32
/// tensor on the CPU.
pub fn fusable(t: &Tensor) -> bool {
    enabled() && t.device().is_cpu() && t.dtype() == DType::F32
}

/// Which GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    /// Exact: `x·Φ(x)` with the erf.
    Erf,
    /// The tanh approximation.
    Tanh,
}

/// LayerNorm over the last dimension: `(x − μ)/√(σ² + ε)·γ + β`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if !fusable(x) {
        return reference::layer_norm(x, gamma, beta, eps);
    }
    let x = x.contiguous()?;
    Ok(x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, LayerNormOp { eps: eps as f32 })?)
}

/// `softmax(scores·scale + bias)` over the last dimension of `(B, H, Tq, Tk)`
/// scores, with `bias` the additive attention mask `(B, 1, 1, Tk)` (or
/// `(B, Tk)`); no gradient flows into `bias`.
pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, _, tk) = scores.dims4()?;
    if bias.elem_count() != b * tk {
        espalier_core::bail!("attention bias {:?} does not match scores {:?}", bias.shape(), scores.shape());
    }
    if !fusable(scores) {
        return reference::masked_softmax(scores, bias, scale);
    }
    let bias = bias.reshape((b, tk))?.contiguous()?.detach();
    Ok(scores.contiguous()?.apply_op2(&bias, SoftmaxOp { scale: scale as f32 })?)
}

/// GELU, exact or tanh-approximated.
pub fn gelu(x: &Tensor, kind: Gelu) -> Result<Tensor> {
    if !fusable(x) {
        return reference::gelu(x, kind);
    }
    Ok(x.contiguous()?.apply_op1(GeluOp { kind })?)
}

/// The same functions composed from candle's basic (differentiable) ops:
/// the fallback off the CPU and the baseline the fused kernels are tested
/// and timed against.
pub mod reference {
    use super::Gelu;
    use candle_core::{Tensor, D};
    use espalier_core::Result;

    /// LayerNorm from basic ops.
    pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(gamma)?.broadcast_add(beta)?)
    }

    /// Softmax over the last dimension (the max detached: softmax is
    /// invariant to it).
    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
    }

    /// `softmax(scores·scale + bias)`, bias broadcast as `(B, 1, 1, Tk)`.
    pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, _, _, tk) = scores.dims4()?;
        let bias = bias.reshape((b, 1, 1, tk))?.detach();
        softmax_last_dim(&(scores * scale)?.broadcast_add(&bias)?)
    }

    /// candle's GELU ops.
    pub fn gelu(x: &Tensor, kind: Gelu) -> Result<Tensor> {
        Ok(match kind {
            Gelu::Erf => x.gelu_erf()?,
            Gelu::Tanh => x.gelu()?,
        })
    }
}

// ---------------------------------------------------------------------------
// Plumbing: slices out of CPU storage, parallel loops, SIMD dispatch.

pub(crate) fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: expected a contiguous tensor"),
        _ => candle_core::bail!("{op}: expected f32, got {:?}", candle_core::backend::BackendStorage::dtype(s)),
    }
}

/// Runs `f` on the f32 data of each tensor (made contiguous first).
pub fn with_data<R>(ts: &[&Tensor], op: &str, f: impl FnOnce(&[&[f32]]) -> CResult<R>) -> CResult<R> {
    let owned: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<CResult<_>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for (s, l) in &guards {
        match &**s {
            Storage::Cpu(c) => slices.push(cpu_slice(c, l, op)?),
            _ => candle_core::bail!("{op}: the fused kernel runs on the CPU only"),
        }
    }
    f(&slices)
}

/// A pointer that parallel workers write disjoint ranges through.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    /// The start of the buffer (for strided writes).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }

    /// # Safety
    /// `range` (in elements) lies inside the buffer and no other worker
    /// touches it while the slice lives.
    pub(crate) unsafe fn slice<'a>(self, range: Range<usize>) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(range.start), range.len())
    }
}

/// A vector of `n` elements that `fill` writes, without zeroing it first:
/// every kernel output would otherwise be written twice, and the zeroing
/// pass (a `memset` per activation) was a tenth of a ResNet-20 forward pass.
///
/// # Safety
/// `fill` must write every element of the slice it is given and read none it
/// has not written.
pub(crate) unsafe fn output(n: usize, fill: impl FnOnce(&mut [f32])) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    // SAFETY: the allocation holds `n` elements; f32 has no invalid bit
    // patterns, and the caller's `fill` initialises all of them before the
    // length covers them.
    unsafe {
        fill(std::slice::from_raw_parts_mut(v.as_mut_ptr(), n));
        v.set_len(n);
    }
    v
}

/// `f(rows, out_rows)` over `n_rows` rows of `row_len` output elements, in
/// chunks spread over candle's CPU pool; each call gets its own rows of `out`.
pub(crate) fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(Range<usize>, &mut [f32]) + Sync) {
    let work = out.len();
    par_rows_reading(out, row_len, work, f)
}

/// [`par_rows`] for loops that read `work` elements in all (more than they
/// write: per-channel reductions), which decides whether the pool is worth it.
pub(crate) fn par_rows_reading(
    out: &mut [f32],
    row_len: usize,
    work: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync,
) {
    let n_rows = out.len().checked_div(row_len).unwrap_or(0);
    if work < PAR_MIN {
        return f(0..n_rows, out);
    }
    let ptr = SharedOut::new(out);
    candle_core::utils::barrier_pool().execute_chunked(n_rows, |rows| {
        // SAFETY: the pool hands out disjoint row ranges inside `out`.
        let o = unsafe { ptr.slice(rows.start * row_len..rows.end * row_len) };
        f(rows, o)
    });
}

/// Element-wise loops are cut into blocks of this many elements.
const BLOCK: usize = 1 << 14;

/// Outputs smaller than this run on the calling thread: waking the pool and
/// waiting at its barrier costs more than the loop (candle's own element-wise
/// ops use the same threshold, `PAR_ELEMWISE_MIN`).
const PAR_MIN: usize = 1 << 16;

/// `f(range, out[range])` over blocks of `out`, in parallel.
fn par_elems(out: &mut [f32], f: impl Fn(Range<usize>, &mut [f32]) + Sync) {
    let n = out.len();
    if n < PAR_MIN {
        return f(0..n, out);
    }
    let ptr = SharedOut::new(out);
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(BLOCK), |blocks| {
        let range = blocks.start * BLOCK..(blocks.end * BLOCK).min(n);
        // SAFETY: disjoint block ranges inside `out`.
        let o = unsafe { ptr.slice(range.clone()) };
        f(range, o)
    });
}

pub(crate) use espalier_core::simd_fn;

/// `dst += src`, element-wise, in parallel for long vectors.
pub(crate) fn add_into(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    par_elems(dst, |r, o| add_slices(o, &src[r]));
}

simd_fn! {
    fn add_slices(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

// ---------------------------------------------------------------------------
// Scalar math that vectorises.

/// `eˣ`: Cephes' `expf` (range reduction to `[−ln2/2, ln2/2]`, degree-6
/// polynomial, exponent by bit arithmetic); 0 below −87.3 (and for −∞).
///
/// Written so that loops calling it vectorise: the integer `n` is read from
/// the bits of the rounding sum (a saturating `n as i32` compiles to scalar
/// conversions), and the cut-off is a select, not a branch.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let xc = x.clamp(-87.3, 88.7);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // t = ROUND + n exactly (|n| ≤ 128 is far below the 2²² the trick
    // allows), so its low bits hold n in two's complement.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    let e = y * scale;
    if x < -87.3 {
        0.0
    } else {
        e
    }
}

/// `erf(x)`: Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7 in exact
/// arithmetic, about 5e-7 in f32).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `tanh(x) = 1 − 2/(e²ˣ + 1)`, saturating cleanly at ±1.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let xc = x.clamp(-15.0, 15.0);
    1.0 - 2.0 / (exp(2.0 * xc) + 1.0)
}

/// `Σᵢ f(a[i])` with eight partial sums, so that the loop vectorises.
#[inline(always)]
pub(crate) fn sum8(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum8_3(a, a, a, |x, _, _| f(x))
}

/// `Σᵢ f(a[i], b[i])` over `a`'s length, with eight partial sums.
#[inline(always)]
pub(crate) fn sum8_2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    sum8_3(a, b, a, |x, y, _| f(x, y))
}

/// `Σᵢ f(a[i], b[i], c[i])` over `a`'s length, with eight partial sums
/// over `chunks_exact(8)` and the tail added after them. (Reading the
/// operands by index kept a bounds check per element in the loop, which
/// then did not vectorise.)
#[inline(always)]
pub(crate) fn sum8_3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len();
    let (b, c) = (&b[..n], &c[..n]);
    let full = n / 8 * 8;
    let mut acc = [0f32; 8];
    let lanes = a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)).zip(c[..full].chunks_exact(8));
    for ((a8, b8), c8) in lanes {
        for k in 0..8 {
            acc[k] += f(a8[k], b8[k], c8[k]);
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for ((&x, &y), &z) in a[full..].iter().zip(&b[full..]).zip(&c[full..]) {
        s += f(x, y, z);
    }
    s
}

/// The gradients of a normalisation `(x, γ, β) → y`: `dx` shaped like `x`,
/// `dγ` and `dβ` like `γ`.
pub(crate) fn affine_grads(
    x: &Tensor,
    gamma: &Tensor,
    dx: Vec<f32>,
    dg: Vec<f32>,
    db: Vec<f32>,
) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dev = x.device();
    Ok((
        Some(Tensor::from_vec(dx, x.shape(), dev)?),
        Some(Tensor::from_vec(dg, gamma.shape(), dev)?),
        Some(Tensor::from_vec(db, gamma.shape(), dev)?),
    ))
}

// ---------------------------------------------------------------------------
// LayerNorm.

struct LayerNormOp {
    eps: f32,
}

/// Mean and `1/√(σ² + ε)` of a row.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum8(x, |v| v) / n;
    let var = sum8(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_fn! {
    fn ln_fwd_rows(x: &[f32], g: &[f32], b: &[f32], y: &mut [f32], eps: f32) {
        let n = g.len();
        for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let (mean, r) = row_stats(xr, eps);
            for (((y, &x), &g), &b) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                *y = (x - mean) * r * g + b;
            }
        }
    }
}

simd_fn! {
    /// dx for the rows; `dg`/`db` accumulate dy·x̂ and dy.
    fn ln_bwd_rows(x: &[f32], dy: &[f32], g: &[f32], dx: &mut [f32], dg: &mut [f32], db: &mut [f32], eps: f32) {
        let n = g.len();
        let nf = n as f32;
        for ((xr, dyr), dxr) in x.chunks_exact(n).zip(dy.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
            let (mean, r) = row_stats(xr, eps);
            let mean_g = sum8_2(dyr, g, |d, g| d * g) / nf;
            let mean_gx = sum8_3(dyr, g, xr, |d, g, x| d * g * (x - mean) * r) / nf;
            let (g, dg, db) = (&g[..n], &mut dg[..n], &mut db[..n]);
            for i in 0..n {
                let xh = (xr[i] - mean) * r;
                dxr[i] = r * (dyr[i] * g[i] - mean_g - xh * mean_gx);
                dg[i] += dyr[i] * xh;
                db[i] += dyr[i];
            }
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "espalier-layer-norm"
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
        let (x, g, b) =
            (cpu_slice(s1, l1, "layer_norm")?, cpu_slice(s2, l2, "layer_norm")?, cpu_slice(s3, l3, "layer_norm")?);
        let n = *l1.dims().last().unwrap_or(&0);
        if g.len() != n || b.len() != n {
            candle_core::bail!("layer_norm: γ and β have {} and {} elements, rows have {n}", g.len(), b.len());
        }
        // SAFETY: the rows cover the output; each is written whole.
        let y = unsafe {
            output(x.len(), |y| {
                par_rows(y, n, |rows, out| ln_fwd_rows(&x[rows.start * n..rows.end * n], g, b, out, self.eps))
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = gamma.elem_count();
        let (dx, dg, db) = with_data(&[x, grad, gamma], "layer_norm backward", |d| {
            let (x, dy, g) = (d[0], d[1], d[2]);
            let mut dx = vec![0f32; x.len()];
            let parts = Partials::default();
            par_rows(&mut dx, n, |rows, out| {
                // dγ then dβ of these rows.
                let mut part = vec![0f32; 2 * n];
                let (dg, db) = part.split_at_mut(n);
                let r = rows.start * n..rows.end * n;
                ln_bwd_rows(&x[r.clone()], &dy[r], g, out, dg, db, self.eps);
                parts.push(rows.start, part);
            });
            // Summed in row order, whichever worker finished first.
            let mut sums = vec![0f32; 2 * n];
            parts.sum_into(&mut sums);
            let db = sums.split_off(n);
            let dg = sums;
            Ok((dx, dg, db))
        })?;
        affine_grads(x, gamma, dx, dg, db)
    }
}

// ---------------------------------------------------------------------------
// Masked softmax.

struct SoftmaxOp {
    scale: f32,
}

simd_fn! {
    /// Rows of `s` (each `bias.len()` long): `p = softmax(s·scale + bias)`.
    pub(crate) fn softmax_rows(s: &[f32], bias: &[f32], p: &mut [f32], scale: f32) {
        // Eight lanes at a time over `chunks_exact(8)` (no bounds checks,
        // running maxima by select rather than f32::max and its NaN rule), so
        // that every pass vectorises; the tail of a row is done one by one.
        let n = bias.len();
        let full = n / 8 * 8;
        for (sr, pr) in s.chunks_exact(n).zip(p.chunks_exact_mut(n)) {
            let mut m8 = [f32::NEG_INFINITY; 8];
            let lanes = sr[..full].chunks_exact(8).zip(bias[..full].chunks_exact(8));
            for ((s8, b8), p8) in lanes.zip(pr[..full].chunks_exact_mut(8)) {
                for k in 0..8 {
                    let v = s8[k] * scale + b8[k];
                    p8[k] = v;
                    m8[k] = if v > m8[k] { v } else { m8[k] };
                }
            }
            let mut max = m8.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
            for ((&s, &b), p) in sr[full..].iter().zip(&bias[full..]).zip(&mut pr[full..]) {
                *p = s * scale + b;
                max = if *p > max { *p } else { max };
            }
            let mut acc = [0f32; 8];
            for p8 in pr[..full].chunks_exact_mut(8) {
                for k in 0..8 {
                    p8[k] = exp(p8[k] - max);
                    acc[k] += p8[k];
                }
            }
            let mut sum = acc.iter().sum::<f32>();
            for v in &mut pr[full..] {
                *v = exp(*v - max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            for v in pr.iter_mut() {
                *v *= inv;
            }
        }
    }
}

simd_fn! {
    /// `ds = scale·p·(dp − Σ dp·p)` for rows of length `n`.
    pub(crate) fn softmax_bwd_rows(p: &[f32], dp: &[f32], ds: &mut [f32], n: usize, scale: f32) {
        for ((pr, dpr), dsr) in p.chunks_exact(n).zip(dp.chunks_exact(n)).zip(ds.chunks_exact_mut(n)) {
            let dot = sum8_2(pr, dpr, |p, d| p * d);
            for i in 0..n {
                dsr[i] = scale * pr[i] * (dpr[i] - dot);
            }
        }
    }
}

impl CustomOp2 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "espalier-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (s, bias) = (cpu_slice(s1, l1, "masked_softmax")?, cpu_slice(s2, l2, "masked_softmax")?);
        let (b, h, tq, tk) = l1.shape().dims4()?;
        if bias.len() != b * tk {
            candle_core::bail!("masked_softmax: bias has {} elements, expected {b}×{tk}", bias.len());
        }
        let rows_per_seq = h * tq;
        // SAFETY: the rows cover the output; each is written whole.
        let p = unsafe {
            output(s.len(), |p| {
                par_rows(p, tk, |rows, out| {
                    // Split the chunk where the sequence (and so the bias row) changes.
                    let mut r = rows.start;
                    while r < rows.end {
                        let seq = r / rows_per_seq;
                        let end = rows.end.min((seq + 1) * rows_per_seq);
                        let o = &mut out[(r - rows.start) * tk..(end - rows.start) * tk];
                        softmax_rows(&s[r * tk..end * tk], &bias[seq * tk..(seq + 1) * tk], o, self.scale);
                        r = end;
                    }
                })
            })
        };
        Ok((CpuStorage::F32(p), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let n = *res.dims().last().unwrap_or(&0);
        let ds = with_data(&[res, grad], "masked_softmax backward", |d| {
            let (p, dp) = (d[0], d[1]);
            let mut ds = vec![0f32; p.len()];
            par_rows(&mut ds, n, |rows, out| {
                let r = rows.start * n..rows.end * n;
                softmax_bwd_rows(&p[r.clone()], &dp[r], out, n, self.scale)
            });
            Ok(ds)
        })?;
        Ok((Some(Tensor::from_vec(ds, res.shape(), res.device())?), None))
    }
}

// ---------------------------------------------------------------------------
// GELU.

struct GeluOp {
    kind: Gelu,
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2PI: f32 = 0.398_942_3;

simd_fn! {
    fn gelu_erf_fwd(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

simd_fn! {
    fn gelu_erf_bwd(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &v), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
            *dx = dy * (cdf + v * pdf);
        }
    }
}

simd_fn! {
    fn gelu_tanh_fwd(x: &[f32], y: &mut [f32]) {
        for (y, &v) in y.iter_mut().zip(x) {
            *y = 0.5 * v * (1.0 + tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)));
        }
    }
}

simd_fn! {
    fn gelu_tanh_bwd(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &v), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let t = tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v));
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
            *dx = dy * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
        }
    }
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "espalier-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "gelu")?;
        // SAFETY: the ranges cover the output; each is written whole.
        let y = unsafe {
            output(x.len(), |y| {
                par_elems(y, |r, out| match self.kind {
                    Gelu::Erf => gelu_erf_fwd(&x[r], out),
                    Gelu::Tanh => gelu_tanh_fwd(&x[r], out),
                })
            })
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let dx = with_data(&[x, grad], "gelu backward", |d| {
            let (x, dy) = (d[0], d[1]);
            let mut dx = vec![0f32; x.len()];
            par_elems(&mut dx, |r, out| match self.kind {
                Gelu::Erf => gelu_erf_bwd(&x[r.clone()], &dy[r], out),
                Gelu::Tanh => gelu_tanh_bwd(&x[r.clone()], &dy[r], out),
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

// ---------------------------------------------------------------------------
// ReLU.

/// `max(x, 0)`, whose backward is `dy·[y > 0]` in one pass (PyTorch's
/// convention at 0); candle's backward builds a zero tensor, a comparison, a
/// cast and a product.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !fusable(x) {
        return Ok(x.relu()?);
    }
    Ok(x.contiguous()?.apply_op1(ReluOp)?)
}

struct ReluOp;

simd_fn! {
    fn relu_fwd(x: &[f32], y: &mut [f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi = xi.max(0.0);
        }
    }
}

simd_fn! {
    fn relu_bwd(y: &[f32], dy: &[f32], dx: &mut [f32]) {
        // Zipped (no bounds checks), so the select vectorises instead of
        // branching on the sign of every element.
        for ((d, &yi), &gi) in dx.iter_mut().zip(y).zip(dy) {
            *d = if yi > 0.0 { gi } else { 0.0 };
        }
    }
}

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "espalier-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "relu")?;
        // SAFETY: `par_elems` hands every element to `relu_fwd`, which writes it.
        let y = unsafe { output(x.len(), |y| par_elems(y, |r, out| relu_fwd(&x[r], out))) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let dx = with_data(&[res, grad], "relu backward", |d| Ok(relu_grad(d[0], d[1])))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `dy·[y > 0]`: the gradient through a ReLU whose output is `y`.
pub(crate) fn relu_grad(y: &[f32], dy: &[f32]) -> Vec<f32> {
    // SAFETY: `par_elems` hands every element to `relu_bwd`, which writes it.
    unsafe { output(y.len(), |dx| par_elems(dx, |r, out| relu_bwd(&y[r.clone()], &dy[r], out))) }
}

/// `max(a + b, 0)` for two tensors of one shape (a residual block's output)
/// in one pass; both gradients are `dy·[y > 0]`.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !fusable(a) || a.shape() != b.shape() || a.dtype() != b.dtype() {
        return Ok((a + b)?.relu()?);
    }
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)?)
}

struct AddReluOp;

simd_fn! {
    fn add_relu_fwd(a: &[f32], b: &[f32], y: &mut [f32]) {
        for ((yi, ai), bi) in y.iter_mut().zip(a).zip(b) {
            *yi = (ai + bi).max(0.0);
        }
    }
}

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "espalier-add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (a, b) = (cpu_slice(s1, l1, self.name())?, cpu_slice(s2, l2, self.name())?);
        // SAFETY: `par_elems` hands every element to `add_relu_fwd`, which writes it.
        let y = unsafe { output(a.len(), |y| par_elems(y, |r, out| add_relu_fwd(&a[r.clone()], &b[r], out))) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, _b: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dx = with_data(&[res, grad], "add_relu backward", |d| Ok(relu_grad(d[0], d[1])))?;
        let dx = Tensor::from_vec(dx, a.shape(), a.device())?;
        Ok((Some(dx.clone()), Some(dx)))
    }
}

/// Helpers of the fused kernels' tests (here and in [`crate::dense`]).
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor, Var};
    use espalier_core::{Result, Rng};

    /// `N(0, std²)` entries.
    pub(crate) fn randn(shape: &[usize], std: f32, seed: u64) -> Result<Tensor> {
        let mut rng = Rng::new(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal() as f32 * std).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    /// Largest absolute difference.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    }

    pub(crate) type Fun<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

    /// Runs `fused` and `composed` on the same inputs; returns the largest
    /// difference of the outputs and of each input's gradient (of a random
    /// linear function of the output, so every output element matters).
    pub(crate) fn compare(inputs: &[Tensor], fused: Fun, composed: Fun) -> Result<(f32, Vec<f32>)> {
        let run = |f: Fun| -> Result<(Tensor, Vec<Tensor>)> {
            let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()?;
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&ts)?;
            let w = randn(y.dims(), 1.0, 99)?;
            let grads = (&y * &w)?.sum_all()?.backward()?;
            let gs =
                ts.iter().map(|t| grads.get(t).cloned().ok_or("no gradient")).collect::<std::result::Result<_, _>>();
            Ok((y, gs.map_err(espalier_core::Error::msg)?))
        };
        let (y1, g1) = run(fused)?;
        let (y0, g0) = run(composed)?;
        let gd = g1.iter().zip(&g0).map(|(a, b)| max_diff(a, b)).collect::<Result<_>>()?;
        Ok((max_diff(&y1, &y0)?, gd))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{compare, randn};
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn layer_norm_matches_composition() -> Result<()> {
        // 37 columns: rows that are not a multiple of the vector width.
        for (rows, n) in [(64, 384), (5, 37)] {
            let x = (randn(&[rows, n], 2.0, 1)? + 0.5)?;
            let g = (randn(&[n], 0.2, 2)? + 1.0)?;
            let b = randn(&[n], 0.1, 3)?;
            let (dy, dg) = compare(&[x, g, b], &|t| layer_norm(&t[0], &t[1], &t[2], 1e-12), &|t| {
                reference::layer_norm(&t[0], &t[1], &t[2], 1e-12)
            })?;
            assert!(dy < 2e-5, "output differs by {dy}");
            assert!(dg[0] < 5e-5 && dg[1] < 5e-4 && dg[2] < 5e-5, "gradients differ by {dg:?}");
        }
        Ok(())
    }

    #[test]
    fn masked_softmax_matches_composition() -> Result<()> {
        let (b, h, t) = (3, 2, 19);
        let scores = randn(&[b, h, t, t], 3.0, 4)?;
        // Sequence lengths 19, 7 and 1: padded keys get the min-float bias.
        let mask: Vec<f32> = [19, 7, 1].iter().flat_map(|&len| (0..t).map(move |j| (j < len) as u8 as f32)).collect();
        let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu)?;
        let bias = crate::attention::attention_bias(&mask, DType::F32)?;
        let (dy, dg) = compare(std::slice::from_ref(&scores), &|s| masked_softmax(&s[0], &bias, 0.125), &|s| {
            reference::masked_softmax(&s[0], &bias, 0.125)
        })?;
        assert!(dy < 1e-6, "probabilities differ by {dy}");
        assert!(dg[0] < 1e-6, "gradients differ by {dg:?}");
        // Masked keys get exactly zero probability; rows sum to one.
        let p = masked_softmax(&scores, &bias, 0.125)?;
        let last = p.narrow(0, 2, 1)?.narrow(3, 1, t - 1)?;
        assert_eq!(last.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        let sums = p.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");
        Ok(())
    }

    #[test]
    fn add_relu_matches_candle() -> Result<()> {
        let (a, b) = (randn(&[3, 5, 7], 1.0, 12)?, randn(&[3, 5, 7], 1.0, 13)?);
        let (dy, dg) = compare(&[a, b], &|t| add_relu(&t[0], &t[1]), &|t| Ok((&t[0] + &t[1])?.relu()?))?;
        assert!(dy < 1e-6 && dg.iter().all(|&d| d == 0.0), "add_relu: {dy} {dg:?}");
        Ok(())
    }

    #[test]
    fn relu_matches_candle() -> Result<()> {
        let x = randn(&[3, 5, 7], 1.0, 11)?;
        let (dy, dg) = compare(&[x], &|t| relu(&t[0]), &|t| Ok(t[0].relu()?))?;
        assert!(dy == 0.0 && dg[0] == 0.0, "relu: {dy} {dg:?}");
        Ok(())
    }

    #[test]
    fn gelu_matches_candle() -> Result<()> {
        // The tails (|x| up to ~12) and values around 0; a length that is
        // not a multiple of the block or the vector width.
        let x = randn(&[3 * BLOCK + 5], 3.0, 5)?;
        for kind in [Gelu::Erf, Gelu::Tanh] {
            let (dy, dg) =
                compare(std::slice::from_ref(&x), &|t| gelu(&t[0], kind), &|t| reference::gelu(&t[0], kind))?;
            assert!(dy < 2e-6, "{kind:?}: output differs by {dy}");
            assert!(dg[0] < 1e-5, "{kind:?}: gradient differs by {dg:?}");
        }
        Ok(())
    }

    #[test]
    fn exp_erf_tanh_accuracy() {
        let mut worst_exp = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((exp(x) as f64 - e) / e).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        let mut worst_erf = 0f64;
        for i in -3500..=3500 {
            let x = i as f64 * 0.001;
            worst_erf = worst_erf.max((erf(x as f32) as f64 - erf_series(x)).abs());
        }
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        // erfc(3.5) < 1e-6: beyond, erf is ±1 to within it.
        assert!((erf(3.6) - 1.0).abs() < 1e-6 && (erf(-9.0) + 1.0).abs() < 1e-6);
        for i in -300..=300 {
            let x = i as f32 * 0.05;
            assert!((tanh(x) as f64 - (x as f64).tanh()).abs() < 3e-7, "tanh({x})");
        }
    }

    /// erf by its Maclaurin series, accurate in f64 for |x| ≤ 3.5.
    fn erf_series(x: f64) -> f64 {
        let (mut sum, mut term, mut n) = (0.0, x, 0.0);
        loop {
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-18 {
                break;
            }
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
