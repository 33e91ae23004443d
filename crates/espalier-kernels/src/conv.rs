//! 2-D convolution as im2col + matrix products, image by image, with its own
//! backward (Chellapilla, Puri & Simard 2006, "High Performance
//! Convolutional Neural Networks for Document Processing", IWFHR 2006, HAL
//! inria-00112631; no arXiv version).
//!
//! With `K = C·k²` and `L = OH·OW`, the columns of an image are the `(K, L)`
//! matrix whose row `(c, ky, kx)` holds, for every output pixel, the input
//! pixel under kernel offset `(ky, kx)` of channel `c` (zero outside the
//! image). For each image `b`:
//!
//! - forward: `Y_b = W · cols(X_b)`, `(Cout, K)·(K, L)`, which is already the
//!   `(Cout, OH, OW)` block of the NCHW output;
//! - backward: `dW = Σ_b dY_b · cols(X_b)ᵀ` and `dX_b = col2im(Wᵀ · dY_b)`,
//!   where col2im adds each column entry back onto the pixel it was read from.
//!
//! candle's CPU `conv2d` runs im2col over the whole batch forward, and its
//! backward is a `conv_transpose2d` (a direct loop) for `dX` and a transposed
//! `conv2d` for `dW`, several times slower. Here images are spread over
//! candle's thread pool; each worker keeps one image's columns (a few hundred
//! KiB, in cache) in a scratch buffer and calls `gemm` single-threaded on it,
//! so no batch-sized column matrix is ever allocated (those were fresh pages
//! the kernel zeroed on every step) and the backward pass recomputes the
//! columns instead of keeping them. With fewer images than threads, the
//! images run one after another with a parallel `gemm` instead.
//!
//! Two variants of the forward pass: 3×3 "same" convolutions that narrow
//! the channels on wide planes skip the column matrix (`row_forward`:
//! three products over shifted rows of the zero-padded input), and
//! [`conv2d_infer`], for inference, finishes each image's output with a
//! per-channel affine map (an evaluation-mode BatchNorm), a residual and a
//! ReLU while it is in cache.
//!
//! This path runs for f32 tensors on the CPU while the fused kernels are on
//! ([`crate::fused::set_enabled`]); otherwise [`conv2d`] is candle's.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use espalier_core::Result;
use gemm::Parallelism;

use crate::reduce::Partials;

use crate::dense::{matmul_into, matmul_par, Mat};
use crate::fused::{cpu_slice, fusable, output, with_data, CResult, SharedOut};

/// Geometry of a convolution: input `(B, C, H, W)`, square `k × k` kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub(crate) b: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
}

impl Geom {
    fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Rows of the column matrix.
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Output pixels per image.
    fn l(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Input elements per image.
    fn chw(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Input position of kernel offset `d` at output position `o`, if inside `[0, n)`.
    #[inline(always)]
    fn src(&self, o: usize, d: usize, n: usize) -> Option<usize> {
        (o * self.stride + d).checked_sub(self.pad).filter(|&i| i < n)
    }
    /// Output columns `ox` whose input column `ox·stride + kx − pad` lies inside the row.
    fn valid_ox(&self, kx: usize) -> Range<usize> {
        let lo = self.pad.saturating_sub(kx).div_ceil(self.stride);
        let hi = (self.w + self.pad).saturating_sub(kx).div_ceil(self.stride).min(self.ow());
        lo.min(hi)..hi
    }
}

/// `x ⋆ w` for `x` `(B, C, H, W)` and `w` `(Cout, C, k, k)` with `stride` and
/// zero `padding` (no dilation, no groups), differentiable in both.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (_, wc, k, k2) = w.dims4()?;
    let usable = fusable(x) && w.dtype() == x.dtype() && k == k2 && wc == c && stride > 0;
    if !usable || h + 2 * padding < k || wd + 2 * padding < k {
        return Ok(x.conv2d(w, padding, stride, 1, 1)?);
    }
    let g = Geom { b, c, h, w: wd, k, stride, pad: padding };
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, ConvOp(g, true))?)
}

/// What [`conv2d_infer`] applies to each output channel `o` after the
/// convolution: `y·scale[o] + shift[o]` (a BatchNorm in evaluation mode, and
/// a bias, folded), plus `residual` (shaped like the output) if any, then
/// ReLU if `relu`.
pub struct Epilogue<'a> {
    /// Per output channel.
    pub scale: &'a [f32],
    /// Per output channel.
    pub shift: &'a [f32],
    /// Added after the shift (a residual block's shortcut).
    pub residual: Option<&'a Tensor>,
    /// Whether a ReLU ends the map.
    pub relu: bool,
}

/// Inference only: `conv2d(x, w)` followed by the [`Epilogue`], with the
/// map applied to each image's output block right after its product, while
/// it is in cache, instead of by separate passes over the whole batch (the
/// BatchNorm, add and ReLU passes were a fifth of a ResNet-20 forward pass).
/// The result is outside the autograd graph: nothing flows back through it.
/// Off the fused CPU path it is the same map composed from candle's ops.
pub fn conv2d_infer(x: &Tensor, w: &Tensor, stride: usize, padding: usize, epi: &Epilogue) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (cout, wc, k, k2) = w.dims4()?;
    if epi.scale.len() != cout || epi.shift.len() != cout {
        espalier_core::bail!(
            "conv2d_infer: {cout} output channels, {} scales and {} shifts",
            epi.scale.len(),
            epi.shift.len()
        );
    }
    let g = Geom { b, c, h, w: wd, k, stride, pad: padding };
    let res = epi.residual.map(|r| r.detach());
    if let Some(r) = &res {
        if r.dims() != [b, cout, g.oh(), g.ow()] {
            espalier_core::bail!(
                "conv2d_infer: residual {:?} for an output ({b}, {cout}, {}, {})",
                r.dims(),
                g.oh(),
                g.ow()
            );
        }
    }
    let usable = fusable(x)
        && w.dtype() == x.dtype()
        && res.as_ref().is_none_or(fusable)
        && k == k2
        && wc == c
        && stride > 0
        && h + 2 * padding >= k
        && wd + 2 * padding >= k;
    if !usable {
        let y = conv2d(&x.detach(), &w.detach(), stride, padding)?;
        let per_channel = |v: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v, (1, cout, 1, 1), y.device())?.to_dtype(y.dtype())?)
        };
        let mut y = y.broadcast_mul(&per_channel(epi.scale)?)?.broadcast_add(&per_channel(epi.shift)?)?;
        if let Some(r) = &res {
            y = (y + r)?;
        }
        return Ok(if epi.relu { y.relu()? } else { y });
    }
    let inputs: Vec<&Tensor> = [x, w].into_iter().chain(res.as_ref()).collect();
    let y = with_data(&inputs, "conv2d_infer", |d| {
        let fused = Fused { scale: epi.scale, shift: epi.shift, residual: d.get(2).copied(), relu: epi.relu };
        Ok(forward_data(d[0], d[1], g, cout, true, Some(&fused)))
    })?;
    Ok(Tensor::from_vec(y, (b, cout, g.oh(), g.ow()), x.device())?)
}

/// A stride-1 "same" convolution (`2·pad + 1 = k`: the output is `H × W`).
fn is_same(g: Geom) -> bool {
    g.stride == 1 && 2 * g.pad + 1 == g.k
}

/// The span of kernel offset `(ky, kx)` of a [`is_same`] convolution over
/// the flattened `H·W` plane: output pixel `p` reads input pixel `p + shift`
/// for `p` in `a..b` (clipped to the plane), output rows outside `lo..hi`
/// read outside the image, and in each row the `edge` columns at the left
/// (`dx < 0`) or right (`dx > 0`) end wrap around to the neighbouring row
/// and read nothing. `None` when no output pixel reads inside the image.
struct Span {
    lo: usize,
    hi: usize,
    a: usize,
    b: usize,
    shift: isize,
    dx: isize,
    edge: usize,
}

impl Span {
    fn new(g: Geom, ky: usize, kx: usize) -> Option<Span> {
        let (h, w) = (g.h, g.w);
        let (dy, dx) = (ky as isize - g.pad as isize, kx as isize - g.pad as isize);
        // Output rows whose input row `oy + dy` is inside the image.
        let (y0, y1) = ((-dy).max(0) as usize, (h as isize - dy).clamp(0, h as isize) as usize);
        if y0 >= y1 {
            return None;
        }
        let (lo, hi) = (y0 * w, y1 * w);
        let shift = dy * w as isize + dx;
        // The ends of lo..hi that would read outside the plane (at most |dx|
        // pixels) lie in the wrapping columns.
        let a = lo.max((-shift).max(0) as usize);
        let b = hi.min((h as isize * w as isize - shift).max(0) as usize);
        Some(Span { lo, hi, a, b, shift, dx, edge: dx.unsigned_abs().min(w) })
    }

    /// The wrapping columns of one output row of width `w`.
    fn edge_cols(&self, w: usize) -> Range<usize> {
        if self.dx < 0 {
            0..self.edge
        } else {
            w - self.edge..w
        }
    }
}

/// im2col of one image `(C, H, W)` into columns `off..off + L` of `cols`
/// (`K` rows of stride `ld`); every entry there is written.
fn im2col(img: &[f32], g: Geom, cols: &mut [f32], ld: usize, off: usize) {
    if is_same(g) {
        return im2col_same(img, g, cols, ld, off);
    }
    let (oh, ow, k, l) = (g.oh(), g.ow(), g.k, g.l());
    for c in 0..g.c {
        let plane = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * ld + off..][..l];
                let valid = g.valid_ox(kx);
                for oy in 0..oh {
                    let dst = &mut row[oy * ow..(oy + 1) * ow];
                    let Some(iy) = g.src(oy, ky, g.h) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let line = &plane[iy * g.w..(iy + 1) * g.w];
                    dst[..valid.start].fill(0.0);
                    dst[valid.end..].fill(0.0);
                    let first = valid.start * g.stride + kx - g.pad;
                    let (dst, src) = (&mut dst[valid.clone()], &line[first..]);
                    match g.stride {
                        1 => dst.copy_from_slice(&src[..dst.len()]),
                        // Pairs rather than `step_by`: a scalar gather with a
                        // multiply per element was a third of the im2col time
                        // of a ResNet-20 forward pass.
                        2 => every_other(dst, src),
                        s => dst.iter_mut().zip(src.iter().step_by(s)).for_each(|(d, v)| *d = *v),
                    }
                }
            }
        }
    }
}

/// `dst[j] = src[2·j]`, eight at a time (fixed-size blocks the compiler
/// turns into shuffles) while sixteen source entries remain; `src` holds at
/// least `2·dst.len() − 1` entries.
fn every_other(dst: &mut [f32], src: &[f32]) {
    let blocks = (dst.len() / 8).min(src.len() / 16);
    for (d, p) in dst.chunks_exact_mut(8).zip(src.chunks_exact(16)).take(blocks) {
        let p: &[f32; 16] = p.try_into().expect("16 entries");
        let d: &mut [f32; 8] = d.try_into().expect("8 entries");
        for i in 0..8 {
            d[i] = p[2 * i];
        }
    }
    for (j, d) in dst.iter_mut().enumerate().skip(8 * blocks) {
        *d = src[2 * j];
    }
}

/// [`im2col`] of a stride-1 "same" convolution (`2·pad + 1 = k`, so the
/// output is `H × W`): the row of kernel offset `(dy, dx)` (from the centre)
/// is the image plane shifted by `dy·W + dx`, so it is one long copy; the
/// rows and columns the shift brings in from outside the image are zeroed
/// afterwards. Copying row segments of 8–32 pixels one by one was a third
/// of a ResNet-20 forward pass.
fn im2col_same(img: &[f32], g: Geom, cols: &mut [f32], ld: usize, off: usize) {
    let (hw, k) = (g.h * g.w, g.k);
    for c in 0..g.c {
        let plane = &img[c * hw..(c + 1) * hw];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * ld + off..][..hw];
                let Some(sp) = Span::new(g, ky, kx) else {
                    row.fill(0.0);
                    continue;
                };
                row[..sp.lo].fill(0.0);
                row[sp.hi..].fill(0.0);
                if sp.a < sp.b {
                    let src = (sp.a as isize + sp.shift) as usize;
                    row[sp.a..sp.b].copy_from_slice(&plane[src..src + sp.b - sp.a]);
                }
                zero_edges(&mut row[sp.lo..sp.hi], &sp, g.w);
            }
        }
    }
}

/// Zeroes the wrapping columns of every output row in `rows` (whole rows of
/// width `w`), column by column down the rows: a `fill` per row was a
/// `memset` call per 1–3 pixels, 6% of a ResNet-20 forward pass.
fn zero_edges(rows: &mut [f32], sp: &Span, w: usize) {
    for col in sp.edge_cols(w) {
        for v in rows[col..].iter_mut().step_by(w) {
            *v = 0.0;
        }
    }
}

/// col2im of one image: adds columns `off..off + L` of `cols` (`K` rows of
/// stride `ld`) onto `img` `(C, H, W)` (zeroed by the caller). `cols` is
/// scratch: the "same" path zeroes its padding entries in place.
fn col2im(cols: &mut [f32], g: Geom, img: &mut [f32], ld: usize, off: usize) {
    if is_same(g) {
        return col2im_same(cols, g, img, ld, off);
    }
    let (oh, ow, k, l) = (g.oh(), g.ow(), g.k, g.l());
    for c in 0..g.c {
        let plane = &mut img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((c * k + ky) * k + kx) * ld + off..][..l];
                let valid = g.valid_ox(kx);
                if valid.is_empty() {
                    continue;
                }
                let first = valid.start * g.stride + kx;
                for oy in 0..oh {
                    let Some(iy) = g.src(oy, ky, g.h) else { continue };
                    let line = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let src = &row[oy * ow + valid.start..oy * ow + valid.end];
                    if g.stride == 1 {
                        let dst = &mut line[first - g.pad..first - g.pad + src.len()];
                        dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                    } else {
                        let dst = line[first - g.pad..].iter_mut().step_by(g.stride);
                        dst.zip(src).for_each(|(d, s)| *d += s);
                    }
                }
            }
        }
    }
}

/// [`col2im`] of a stride-1 "same" convolution, the mirror of
/// [`im2col_same`]: the row of kernel offset `(dy, dx)` is added onto the
/// image plane shifted by `dy·W + dx` in one long pass, after its wrapping
/// columns (the entries that belong to the zero padding) are zeroed in
/// `cols`, which is scratch.
fn col2im_same(cols: &mut [f32], g: Geom, img: &mut [f32], ld: usize, off: usize) {
    let (hw, k) = (g.h * g.w, g.k);
    for c in 0..g.c {
        let plane = &mut img[c * hw..(c + 1) * hw];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * ld + off..][..hw];
                let Some(sp) = Span::new(g, ky, kx) else { continue };
                if sp.a >= sp.b {
                    continue;
                }
                zero_edges(&mut row[sp.lo..sp.hi], &sp, g.w);
                let dst = (sp.a as isize + sp.shift) as usize;
                let dst = &mut plane[dst..dst + sp.b - sp.a];
                dst.iter_mut().zip(&row[sp.a..sp.b]).for_each(|(d, s)| *d += s);
            }
        }
    }
}

/// Columns per matrix product at least this wide: with fewer output pixels
/// per image (late ResNet stages: 8×8, 4×4), images are grouped side by side
/// in one column matrix so that `gemm` gets a wide enough product and the
/// weight gradient is not rewritten image after image.
const MIN_COLUMNS: usize = 256;

/// Smallest product (in flops) split over candle's pool
/// ([`crate::dense::matmul_pool`]) when there are fewer images than threads:
/// at 2^21 the ResNet-20 forward pass at batch 1 took 0.96 ms against 0.79
/// at 2^24.
const PAR_GEMM_FLOPS: usize = 1 << 24;

/// Per-worker buffers: the columns of a group `(K, n·L)` and the group's
/// output or output gradient `(Cout, n·L)` when it spans several images.
/// Each thread keeps its own between calls (allocating and zeroing them per
/// call was a tenth of a ResNet-20 forward pass); they only grow.
struct Scratch {
    cols: Vec<f32>,
    out: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { cols: Vec::new(), out: Vec::new() }) };
}

/// Runs `f` on this thread's scratch, grown to `cols` and `out` elements.
fn with_scratch(cols: usize, out: usize, f: impl FnOnce(&mut Scratch)) {
    SCRATCH.with_borrow_mut(|s| {
        for (buf, len) in [(&mut s.cols, cols), (&mut s.out, out)] {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
        f(s)
    })
}

/// Runs `f(images, scratch, parallelism)` over groups of images: groups
/// spread over candle's pool with a single-threaded `gemm` each, or (with
/// fewer images than threads) one group on this thread with a parallel
/// `gemm`.
fn for_groups(
    g: Geom,
    cout: usize,
    (cols_per_image, out_per_image): (usize, usize),
    f: impl Fn(Range<usize>, &mut Scratch, Parallelism) + Sync,
) {
    let threads = crate::fused::num_threads();
    let serial = g.b < threads;
    let nb = if serial { g.b } else { MIN_COLUMNS.div_ceil(g.l()).min(g.b / threads) };
    let (cols, out) = (cols_per_image * nb, out_per_image * nb);
    let groups = |chunk: Range<usize>| {
        (chunk.start * nb..(chunk.end * nb).min(g.b)).step_by(nb).map(|b0| b0..(b0 + nb).min(g.b))
    };
    if serial {
        // Splitting a product only pays for waking the pool on big ones:
        // a 32×32 ResNet-20 image's (16 × 144 × 1024) took 3× longer on two
        // threads than on one with `gemm`'s own threading. The split runs on
        // candle's pool, not `gemm`'s rayon threads, which compete with
        // candle's spinning ones: the ResNet-18 forward pass at batch 1 went
        // from 11.7 ms to 6.6 ms.
        let flops = 2 * cout * g.kk() * g.l() * g.b;
        let par = if threads > 1 && flops >= PAR_GEMM_FLOPS { Parallelism::Rayon(threads) } else { Parallelism::None };
        with_scratch(cols, out, |s| f(0..g.b, s, par));
    } else {
        candle_core::utils::barrier_pool().execute_chunked(g.b.div_ceil(nb), |chunk| {
            with_scratch(cols, out, |s| groups(chunk).for_each(|images| f(images, s, Parallelism::None)));
        });
    }
}

/// Copies between per-image blocks `(rows, L)` and the group's side-by-side
/// matrix `(rows, n·L)`.
fn gather(blocks: &[f32], wide: &mut [f32], rows: usize, l: usize, n: usize) {
    for j in 0..n {
        for r in 0..rows {
            wide[r * n * l + j * l..][..l].copy_from_slice(&blocks[(j * rows + r) * l..][..l]);
        }
    }
}

fn scatter(wide: &[f32], blocks: &mut [f32], rows: usize, l: usize, n: usize) {
    for j in 0..n {
        for r in 0..rows {
            blocks[(j * rows + r) * l..][..l].copy_from_slice(&wide[r * n * l + j * l..][..l]);
        }
    }
}

/// The padded planes of the [`row_forward`]: `wp = W + 2·pad` pixels per
/// row, `lr = (H + 2·pad)·wp` per plane.
#[derive(Clone, Copy)]
struct Padded {
    wp: usize,
    lr: usize,
}

impl Padded {
    fn new(g: Geom) -> Self {
        let wp = g.w + 2 * g.pad;
        Padded { wp, lr: (g.h + 2 * g.pad) * wp }
    }
}

/// Whether the forward pass of `g` goes by [`row_forward`]: stride-1 "same"
/// convolutions with a real kernel that narrow the channels, on planes at
/// least 32 wide (the first convolution of a ResNet-20 stage-1 block with
/// half its inner channels). Measured against im2col (the `conv-rows` bench,
/// batch 128, 2 threads): 16 → 8 channels on 32×32 0.77×, 16 → 16 0.91×,
/// 8 → 16 1.02×, 32 → 16 on 16×16 0.96× but slower inside the network
/// (`espalier bench` of the shrunk ResNet-20 at batch 1/32/128), 8×8 planes
/// 1.3–1.5× (the padding columns are a quarter of the product there).
fn uses_rows(g: Geom, cout: usize) -> bool {
    is_same(g) && g.k >= 3 && g.w >= 32 && cout < g.c
}

/// The weights `(Cout, C, k, k)` as `k` matrices `(Cout, C·k)`, one per
/// kernel row `ky`, holding `w[o, c, ky, kx]` at column `c·k + kx`.
fn weights_by_row(w: &[f32], cout: usize, g: Geom) -> Vec<f32> {
    let (c, k) = (g.c, g.k);
    let mut out = vec![0f32; k * cout * c * k];
    for o in 0..cout {
        for ci in 0..c {
            for ky in 0..k {
                let src = &w[((o * c + ci) * k + ky) * k..][..k];
                out[(ky * cout + o) * c * k + ci * k..][..k].copy_from_slice(src);
            }
        }
    }
    out
}

/// The `C·k` rows of [`row_forward`] for images `x` (`n` of them, NCHW):
/// row `(c, kx)` (of `n·lr` elements, image `j` at `j·lr`) is channel `c`'s
/// zero-padded plane shifted left by `kx`, so that the input under kernel
/// offset `(ky, kx)` of the output pixel at padded position `q = oy·wp + ox`
/// is entry `q + ky·wp` of row `(c, kx)`.
fn shifted_rows(x: &[f32], g: Geom, pd: Padded, n: usize, rows: &mut [f32]) {
    let (ld, k, hw) = (n * pd.lr, g.k, g.h * g.w);
    for c in 0..g.c {
        let (first, rest) = rows[c * k * ld..(c + 1) * k * ld].split_at_mut(ld);
        for j in 0..n {
            let plane = &x[(j * g.c + c) * hw..][..hw];
            let dst = &mut first[j * pd.lr..(j + 1) * pd.lr];
            let mut end = 0;
            for (y, line) in plane.chunks_exact(g.w).enumerate() {
                let start = (y + g.pad) * pd.wp + g.pad;
                dst[end..start].fill(0.0);
                dst[start..start + g.w].copy_from_slice(line);
                end = start + g.w;
            }
            dst[end..].fill(0.0);
        }
        for (kx, row) in (1..k).zip(rest.chunks_exact_mut(ld)) {
            row[..ld - kx].copy_from_slice(&first[kx..]);
            row[ld - kx..].fill(0.0);
        }
    }
}

/// Forward pass of a stride-1 "same" convolution without the column matrix
/// (its `C·k²` rows are the nine shifts of each plane): the input is laid
/// out once as the `C·k` [`shifted_rows`] (zero-padded planes shifted by
/// `kx`, a third of the copying), and the output over the padded positions
/// `(Cout, n·lr)` is `Σ_ky W_ky · R_ky`, where `R_ky` reads those rows from
/// offset `ky·wp` — `k` products of depth `C·k` whose right-hand side is a
/// strided view, not a copy. The `2·pad` wrapping columns of each output
/// row and the padding rows between images are computed and dropped when
/// the result is copied out. `y` holds the `n` images' outputs (NCHW).
#[allow(clippy::too_many_arguments)]
fn row_forward(
    x: &[f32],
    wr: &[f32],
    g: Geom,
    cout: usize,
    n: usize,
    s: &mut Scratch,
    y: &mut [f32],
    par: Parallelism,
) {
    let (pd, k, hw) = (Padded::new(g), g.k, g.h * g.w);
    let (ld, ck) = (n * pd.lr, g.c * g.k);
    shifted_rows(x, g, pd, n, &mut s.cols);
    let m = (n - 1) * pd.lr + g.h * pd.wp;
    for ky in 0..k {
        let (a, b) = (Mat::new(&wr[ky * cout * ck..], ck), Mat::new(&s.cols[ky * pd.wp..], ld));
        matmul_par(&mut s.out[..cout * m], ky > 0, a, b, (cout, ck, m), par);
    }
    for j in 0..n {
        for o in 0..cout {
            let src = &s.out[o * m + j * pd.lr..];
            let dst = &mut y[(j * cout + o) * hw..][..hw];
            for (oy, line) in dst.chunks_exact_mut(g.w).enumerate() {
                line.copy_from_slice(&src[oy * pd.wp..][..g.w]);
            }
        }
    }
}

/// The per-output-channel map [`conv2d_infer`] applies to each image's
/// output while it is still in cache: `y ← y·scale[o] + shift[o]`, plus the
/// residual, then ReLU.
struct Fused<'a> {
    scale: &'a [f32],
    shift: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
}

impl Fused<'_> {
    /// Applies the map to the output blocks `y` of images `first..` (`l`
    /// pixels per plane).
    fn apply(&self, y: &mut [f32], first: usize, cout: usize, l: usize) {
        for (i, plane) in y.chunks_exact_mut(l).enumerate() {
            let o = i % cout;
            let r = self.residual.map_or(&[][..], |r| &r[(first * cout + i) * l..][..l]);
            epilogue_plane(plane, self.scale[o], self.shift[o], r, self.relu);
        }
    }
}

crate::fused::simd_fn! {
    /// `y ← y·a + s (+ r)`, then `max(·, 0)` if `relu`; `r` empty for no
    /// residual. The same operations, in the same order, as BatchNorm's
    /// evaluation pass followed by the residual add and ReLU.
    fn epilogue_plane(y: &mut [f32], a: f32, s: f32, r: &[f32], relu: bool) {
        match (r.is_empty(), relu) {
            (true, true) => y.iter_mut().for_each(|v| *v = (*v * a + s).max(0.0)),
            (true, false) => y.iter_mut().for_each(|v| *v = *v * a + s),
            (false, true) => y.iter_mut().zip(r).for_each(|(v, &ri)| *v = (*v * a + s + ri).max(0.0)),
            (false, false) => y.iter_mut().zip(r).for_each(|(v, &ri)| *v = *v * a + s + ri),
        }
    }
}

/// The forward pass on the CPU: `(B, Cout, OH, OW)` from `x` `(B, C, H, W)`
/// and `w` `(Cout, C, k, k)`, by [`row_forward`] where `rows` and
/// [`uses_rows`] allow it, else by im2col; `epi` applied to each group's
/// output as soon as it is written.
fn forward_data(x: &[f32], w: &[f32], g: Geom, cout: usize, rows: bool, epi: Option<&Fused>) -> Vec<f32> {
    let (kk, l) = (g.kk(), g.l());
    let rows = rows && uses_rows(g, cout);
    let wr = if rows { weights_by_row(w, cout, g) } else { Vec::new() };
    let per_image = if rows {
        let lr = Padded::new(g).lr;
        (g.c * g.k * lr, cout * lr)
    } else {
        (kk * l, cout * l)
    };
    let conv = |y: &mut [f32]| {
        let out = SharedOut::new(y);
        for_groups(g, cout, per_image, |images, s, par| {
            let n = images.len();
            // SAFETY: each group's output blocks are written by one worker.
            let yb = unsafe { out.slice(images.start * cout * l..images.end * cout * l) };
            if rows {
                let xb = &x[images.start * g.chw()..images.end * g.chw()];
                row_forward(xb, &wr, g, cout, n, s, yb, par);
            } else {
                for (j, b) in images.clone().enumerate() {
                    im2col(&x[b * g.chw()..(b + 1) * g.chw()], g, &mut s.cols, n * l, j * l);
                }
                let dst = if n == 1 { &mut *yb } else { &mut s.out[..] };
                matmul_par(dst, false, Mat::new(w, kk), Mat::new(&s.cols, n * l), (cout, kk, n * l), par);
                if n > 1 {
                    scatter(&s.out, yb, cout, l, n);
                }
            }
            if let Some(e) = epi {
                e.apply(yb, images.start, cout, l);
            }
        })
    };
    // SAFETY: the groups cover every image, and each group's product
    // (not accumulated) or copy writes all of its output blocks.
    unsafe { output(g.b * cout * l, conv) }
}

/// The convolution: `(x, w) → y`; the flag picks [`row_forward`] where it
/// applies ([`uses_rows`]) over im2col.
pub(crate) struct ConvOp(pub(crate) Geom, pub(crate) bool);

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "espalier-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let g = self.0;
        let x = cpu_slice(s1, l1, self.name())?;
        let w = cpu_slice(s2, l2, self.name())?;
        let cout = l2.shape().dims()[0];
        let y = forward_data(x, w, g, cout, self.1, None);
        Ok((CpuStorage::F32(y), Shape::from((g.b, cout, g.oh(), g.ow()))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = self.0;
        let cout = w.dims()[0];
        let (kk, l) = (g.kk(), g.l());
        // The images fed to the stem need no gradient: no dcols product and
        // no col2im for them.
        let want_dx = x.track_op();
        let (dx, dw) = with_data(&[x, w, dy], "conv2d backward", |d| {
            let (x, w, dy) = (d[0], d[1], d[2]);
            let mut dx = if want_dx { vec![0f32; g.b * g.chw()] } else { Vec::new() };
            let parts = Partials::default();
            let out = SharedOut::new(&mut dx);
            for_groups(g, cout, (kk * l, cout * l), |images, s, par| {
                let n = images.len();
                let mut dw_part = vec![0f32; cout * kk];
                for (j, b) in images.clone().enumerate() {
                    im2col(&x[b * g.chw()..(b + 1) * g.chw()], g, &mut s.cols, n * l, j * l);
                }
                // dY of the group as (Cout, n·L).
                let dyg = &dy[images.start * cout * l..images.end * cout * l];
                let dyg = if n == 1 {
                    dyg
                } else {
                    gather(dyg, &mut s.out, cout, l, n);
                    &s.out[..]
                };
                // dW += dY (Cout, n·L) · colsᵀ (n·L, K). With dW as the
                // destination, `gemm` transposes the problem and repacks all
                // of cols (K rows of n·L) into column panels: for few output
                // channels that gather costs more than the product (a sixth of
                // a ResNet-20 step). Computed into dWᵀ (K, Cout) instead, it
                // packs dY (Cout rows) and reads cols' rows as its right-hand
                // side's columns. Measured (`scripts/bench-ab.sh`, 2 threads):
                // ResNet-20 step 0.88x; ResNet-18's 128-512-channel layers
                // were faster the first way (all layers transposed: 1.08x,
                // only those up to 64 channels: 0.97x).
                let transposed = cout <= 64;
                let (dyg_m, cols_t) = (Mat::new(dyg, n * l), Mat::new(&s.cols, n * l).t());
                if transposed {
                    // SAFETY: dw_part holds Cout·K elements, here stored
                    // column by column; dyg and the scratch hold Cout and K
                    // rows of n·L.
                    unsafe { matmul_into(dw_part.as_mut_ptr(), (1, cout), true, dyg_m, cols_t, (cout, n * l, kk), par) }
                } else {
                    matmul_par(&mut dw_part, true, dyg_m, cols_t, (cout, n * l, kk), par);
                }
                if want_dx {
                    // dcols (K, n·L) = Wᵀ (K, Cout) · dY (Cout, n·L), into the same scratch.
                    matmul_par(&mut s.cols, false, Mat::new(w, kk).t(), dyg_m, (kk, cout, n * l), par);
                    // SAFETY: each group's gradient blocks are written by one worker.
                    let dxg = unsafe { out.slice(images.start * g.chw()..images.end * g.chw()) };
                    for j in 0..n {
                        col2im(&mut s.cols, g, &mut dxg[j * g.chw()..(j + 1) * g.chw()], n * l, j * l);
                    }
                }
                if transposed {
                    let mut part = vec![0f32; cout * kk];
                    for (k, row) in dw_part.chunks_exact(cout).enumerate() {
                        for (co, v) in row.iter().enumerate() {
                            part[co * kk + k] = *v;
                        }
                    }
                    dw_part = part;
                }
                parts.push(images.start, dw_part);
            });
            // Summed in image order, whichever worker finished first.
            let mut dw = vec![0f32; cout * kk];
            parts.sum_into(&mut dw);
            Ok((dx, dw))
        })?;
        let dx = want_dx.then(|| Tensor::from_vec(dx, x.shape(), x.device())).transpose()?;
        Ok((dx, Some(Tensor::from_vec(dw, w.shape(), w.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn normal(shape: &[usize], seed: u64) -> Result<Tensor> {
        let mut rng = espalier_core::Rng::new(seed);
        let n = shape.iter().product();
        Ok(Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), shape, &Device::Cpu)?)
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-6);
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? / scale)
    }

    /// Values and both gradients against candle's conv2d, for strides,
    /// paddings, kernel sizes and odd image sizes.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() -> Result<()> {
        for (i, &(b, c, h, w, cout, k, s, p)) in [
            (2, 3, 8, 8, 4, 3, 1, 1),
            (2, 3, 9, 7, 5, 3, 2, 1),
            (3, 4, 8, 8, 6, 1, 2, 0),
            (1, 2, 11, 11, 3, 7, 2, 3),
            (2, 5, 6, 5, 2, 5, 1, 0),
            (2, 1, 4, 4, 3, 3, 3, 2),
            (9, 3, 4, 4, 5, 3, 1, 1),
            (7, 2, 6, 6, 4, 3, 2, 1),
            // Stride 2 over rows long enough for the 8-wide gather.
            (2, 3, 19, 19, 4, 3, 2, 1),
            // Stride-1 "same" convolutions (the shifted-copy im2col), down
            // to images smaller than the kernel.
            (2, 3, 5, 9, 4, 5, 1, 2),
            (2, 2, 1, 1, 3, 3, 1, 1),
            (2, 2, 2, 3, 3, 5, 1, 2),
            (1, 3, 7, 1, 2, 3, 1, 1),
            (2, 2, 6, 4, 3, 1, 1, 0),
            (1, 2, 4, 1, 3, 5, 1, 2),
            (3, 16, 8, 8, 8, 3, 1, 1),
            // More than 64 output channels: dW in its own layout.
            (2, 3, 5, 5, 66, 3, 1, 1),
            // Fewer output than input channels on planes 32 wide: the
            // forward pass by shifted rows, alone, and with images side
            // by side (short planes) in one product.
            (2, 6, 6, 33, 4, 3, 1, 1),
            (3, 8, 5, 32, 5, 5, 1, 2),
            (5, 6, 2, 32, 3, 3, 1, 1),
            // One image, products big enough to split over the pool (by
            // columns): im2col, and shifted rows accumulating over ky.
            (1, 32, 32, 32, 64, 3, 1, 1),
            (1, 64, 32, 32, 32, 3, 1, 1),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&normal(&[b, c, h, w], 2 * i as u64)?)?;
            let wt = Var::from_tensor(&normal(&[cout, c, k, k], 2 * i as u64 + 1)?)?;
            let ours = conv2d(x.as_tensor(), wt.as_tensor(), s, p)?;
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), p, s, 1, 1)?;
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert!(max_rel_diff(&ours, &theirs)? < 1e-5, "case {i}: forward");
            let r = normal(ours.dims(), 99)?;
            let g1 = ours.mul(&r)?.sum_all()?.backward()?;
            let g2 = theirs.mul(&r)?.sum_all()?.backward()?;
            for (name, v) in [("dx", &x), ("dw", &wt)] {
                let (a, e) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                assert!(max_rel_diff(a, e)? < 1e-5, "case {i}: {name}");
            }
            // Plain data in (a stem): no ∂L/∂x, the same ∂L/∂W.
            let data = x.as_tensor().detach();
            let g3 = conv2d(&data, wt.as_tensor(), s, p)?.mul(&r)?.sum_all()?.backward()?;
            assert!(g3.get(&data).is_none(), "case {i}: the data got a gradient");
            let (a, e) = (g3.get(wt.as_tensor()).unwrap(), g2.get(wt.as_tensor()).unwrap());
            assert!(max_rel_diff(a, e)? < 1e-5, "case {i}: dw without dx");
        }
        Ok(())
    }

    /// Both forward paths agree, and the inference kernel equals the
    /// convolution followed by the composed evaluation BatchNorm, residual
    /// add and ReLU, on both paths and off the fused path.
    #[test]
    fn row_forward_and_inference_epilogue() -> Result<()> {
        for (i, &(b, c, h, w, cout, k, s, p)) in [
            (2, 6, 6, 33, 4, 3, 1, 1),
            (5, 6, 2, 32, 3, 3, 1, 1),
            (3, 4, 9, 8, 6, 3, 2, 1),
            (2, 3, 8, 8, 5, 1, 1, 0),
            (2, 3, 16, 16, 4, 3, 2, 1),
            (2, 3, 9, 33, 4, 3, 2, 1),
        ]
        .iter()
        .enumerate()
        {
            let x = normal(&[b, c, h, w], 10 + i as u64)?;
            let wt = normal(&[cout, c, k, k], 20 + i as u64)?;
            let g = Geom { b, c, h, w, k, stride: s, pad: p };
            let rows = x.apply_op2(&wt, ConvOp(g, true))?;
            let cols = x.apply_op2(&wt, ConvOp(g, false))?;
            // Forward only: candle's backward cannot take every size here.
            assert!(max_rel_diff(&cols, &x.conv2d(&wt, p, s, 1, 1)?)? < 1e-5, "case {i}: against candle");
            assert!(max_rel_diff(&rows, &cols)? < 1e-5, "case {i}: rows vs im2col");
            let scale: Vec<f32> = (0..cout).map(|o| 0.5 + o as f32 * 0.25).collect();
            let shift: Vec<f32> = (0..cout).map(|o| o as f32 * 0.1 - 0.2).collect();
            let res = normal(rows.dims(), 30 + i as u64)?;
            let per_channel = |v: &[f32]| Tensor::from_slice(v, (1, cout, 1, 1), &Device::Cpu);
            let affine = cols.broadcast_mul(&per_channel(&scale)?)?.broadcast_add(&per_channel(&shift)?)?;
            for (residual, relu) in [(None, true), (None, false), (Some(&res), true), (Some(&res), false)] {
                let mut want = affine.clone();
                if let Some(r) = residual {
                    want = (want + r)?;
                }
                if relu {
                    want = want.relu()?;
                }
                let epi = Epilogue { scale: &scale, shift: &shift, residual, relu };
                let got = conv2d_infer(&x, &wt, s, p, &epi)?;
                assert!(max_rel_diff(&got, &want)? < 1e-5, "case {i}: fused epilogue {residual:?} {relu}");
                // f64 is off the fused path: candle's ops.
                let f64s = |t: &Tensor| t.to_dtype(candle_core::DType::F64);
                let res64 = residual.map(f64s).transpose()?;
                let epi = Epilogue { residual: res64.as_ref(), ..epi };
                let composed = conv2d_infer(&f64s(&x)?, &f64s(&wt)?, s, p, &epi)?;
                let composed = composed.to_dtype(candle_core::DType::F32)?;
                assert!(max_rel_diff(&composed, &want)? < 1e-5, "case {i}: composed epilogue");
            }
        }
        let x = normal(&[1, 2, 4, 4], 1)?;
        let epi = Epilogue { scale: &[1.0; 2], shift: &[0.0; 3], residual: None, relu: false };
        let e = conv2d_infer(&x, &normal(&[3, 2, 3, 3], 2)?, 1, 1, &epi).unwrap_err().to_string();
        assert!(e.contains("3 output channels, 2 scales"), "{e}");
        Ok(())
    }
}
