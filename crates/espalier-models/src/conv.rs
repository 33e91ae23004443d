//! 2-D convolution as im2col + one matrix product, with its own backward
//! (Chellapilla et al. 2006, "High Performance Convolutional Neural Networks
//! for Document Processing").
//!
//! With `K = C·k²` and `L = OH·OW`, the columns of an image are the `(L, K)`
//! matrix whose row `(oy, ox)` holds the `k × k × C` window under output
//! pixel `(oy, ox)` (zeros outside the image), and
//!
//! - forward: `Y = cols(X) · Wᵀ`, `(B·L, K)·(K, Cout)`, stored as `(B, Cout, OH, OW)`;
//! - backward: `dW = dYᵀ · cols(X)` and `dX = col2im(dY · W)`, where col2im
//!   adds each column entry back onto the pixel it was read from.
//!
//! candle's CPU `conv2d` already runs im2col forward, but its backward is a
//! `conv_transpose2d` (a direct loop) for `dX` and a transposed `conv2d` for
//! `dW`, several times slower than the two matrix products here. The columns
//! are recomputed in the backward pass rather than kept, so training holds no
//! more memory than with candle's op. The matrix products are candle's
//! (gemm); im2col and col2im run over candle's thread pool.
//!
//! This path runs for f32 tensors on the CPU while the fused kernels are on
//! ([`crate::fused::set_enabled`]); otherwise [`conv2d`] is candle's.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use espalier_core::Result;

use crate::fused::{cpu_slice, fusable, par_rows, CResult};

/// Geometry of a convolution: input `(B, C, H, W)`, square `k × k` kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Geom {
    fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Columns per output pixel.
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Output pixels per image.
    fn l(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Input position of kernel offset `d` at output position `o`, if inside `[0, n)`.
    #[inline(always)]
    fn src(&self, o: usize, d: usize, n: usize) -> Option<usize> {
        (o * self.stride + d).checked_sub(self.pad).filter(|&i| i < n)
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
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, ConvOp(g))?)
}

/// im2col: `(B, C, H, W)` → `(B·L, K)`.
fn im2col(x: &[f32], g: Geom) -> Vec<f32> {
    let (oh, ow, kk, k) = (g.oh(), g.ow(), g.kk(), g.k);
    let mut cols = vec![0f32; g.b * oh * ow * kk];
    // One output row (oy) of one image per unit of work: `ow` rows of `kk`.
    par_rows(&mut cols, ow * kk, |rows, out| {
        for (ri, row) in rows.enumerate() {
            let (b, oy) = (row / oh, row % oh);
            let img = &x[b * g.c * g.h * g.w..(b + 1) * g.c * g.h * g.w];
            for ox in 0..ow {
                let dst = &mut out[(ri * ow + ox) * kk..(ri * ow + ox + 1) * kk];
                for c in 0..g.c {
                    let plane = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
                    for ky in 0..k {
                        let Some(iy) = g.src(oy, ky, g.h) else { continue };
                        let line = &plane[iy * g.w..(iy + 1) * g.w];
                        let d = &mut dst[(c * k + ky) * k..(c * k + ky + 1) * k];
                        for (kx, v) in d.iter_mut().enumerate() {
                            if let Some(ix) = g.src(ox, kx, g.w) {
                                *v = line[ix];
                            }
                        }
                    }
                }
            }
        }
    });
    cols
}

/// col2im: `(B·L, K)` → `(B, C, H, W)`, adding overlapping entries.
fn col2im(cols: &[f32], g: Geom) -> Vec<f32> {
    let (oh, ow, kk, k) = (g.oh(), g.ow(), g.kk(), g.k);
    let chw = g.c * g.h * g.w;
    let mut x = vec![0f32; g.b * chw];
    // One image per unit of work: images never share pixels.
    par_rows(&mut x, chw, |images, out| {
        for (bi, b) in images.enumerate() {
            let img = &mut out[bi * chw..(bi + 1) * chw];
            for oy in 0..oh {
                for ox in 0..ow {
                    let src = &cols[((b * oh + oy) * ow + ox) * kk..((b * oh + oy) * ow + ox + 1) * kk];
                    for c in 0..g.c {
                        for ky in 0..k {
                            let Some(iy) = g.src(oy, ky, g.h) else { continue };
                            let line = &mut img[c * g.h * g.w + iy * g.w..c * g.h * g.w + (iy + 1) * g.w];
                            let s = &src[(c * k + ky) * k..(c * k + ky + 1) * k];
                            for (kx, v) in s.iter().enumerate() {
                                if let Some(ix) = g.src(ox, kx, g.w) {
                                    line[ix] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
    });
    x
}

/// The convolution: `(x, w) → y`.
struct ConvOp(Geom);

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "espalier-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let g = self.0;
        let x = cpu_slice(s1, l1, self.name())?;
        let w = cpu_slice(s2, l2, self.name())?;
        let cout = l2.shape().dims()[0];
        let (kk, l) = (g.kk(), g.l());
        let cols = Tensor::from_vec(im2col(x, g), (g.b * l, kk), &candle_core::Device::Cpu)?;
        let wt = Tensor::from_slice(w, (cout, kk), &candle_core::Device::Cpu)?;
        // (B·L, Cout), row-major; transposed per image into (Cout, L) below.
        let prod = cols.matmul(&wt.t()?)?;
        let (storage, layout) = prod.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else { candle_core::bail!("{}: not on the CPU", self.name()) };
        let p = cpu_slice(cpu, layout, self.name())?;
        let mut y = vec![0f32; g.b * cout * l];
        par_rows(&mut y, cout * l, |images, out| {
            for (bi, b) in images.enumerate() {
                let src = &p[b * l * cout..(b + 1) * l * cout];
                let dst = &mut out[bi * cout * l..(bi + 1) * cout * l];
                for (pix, row) in src.chunks_exact(cout).enumerate() {
                    for (co, v) in row.iter().enumerate() {
                        dst[co * l + pix] = *v;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((g.b, cout, g.oh(), g.ow()))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = self.0;
        let cout = w.dims()[0];
        // dY as (B·L, Cout).
        let dy = dy.permute((0, 2, 3, 1))?.contiguous()?.reshape((g.b * g.l(), cout))?;
        let cols = x.apply_op1_no_bwd(&Im2ColOp(g))?;
        let w2 = w.reshape((cout, g.kk()))?;
        let dw = dy.t()?.matmul(&cols)?.reshape(w.shape())?;
        let dcols = dy.matmul(&w2)?;
        let dx = dcols.apply_op1_no_bwd(&Col2ImOp(g))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x → cols(x)` as a tensor op (the backward pass recomputes the columns).
struct Im2ColOp(Geom);

impl CustomOp1 for Im2ColOp {
    fn name(&self) -> &'static str {
        "espalier-im2col"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let g = self.0;
        let cols = im2col(cpu_slice(s, l, self.name())?, g);
        Ok((CpuStorage::F32(cols), Shape::from((g.b * g.l(), g.kk()))))
    }
}

/// `dcols → dx`.
struct Col2ImOp(Geom);

impl CustomOp1 for Col2ImOp {
    fn name(&self) -> &'static str {
        "espalier-col2im"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let g = self.0;
        let dcols = if l.is_contiguous() {
            col2im(cpu_slice(s, l, self.name())?, g)
        } else {
            candle_core::bail!("{}: expected contiguous columns", self.name())
        };
        Ok((CpuStorage::F32(dcols), Shape::from((g.b, g.c, g.h, g.w))))
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
        }
        Ok(())
    }

    /// One ResNet-20 stage-1 convolution at batch 128, forward + backward:
    /// `cargo test --release -p espalier-models --lib -- --ignored conv_timing --nocapture`
    #[test]
    #[ignore = "timing, run by hand in release"]
    fn conv_timing() -> Result<()> {
        for &(b, c, hw, cout, k, s, p) in &[
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
}
