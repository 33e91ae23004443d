//! Pooling with a backward pass for any window, stride and padding.
//!
//! candle's `max_pool2d` differentiates only when the window equals the
//! stride and there is no padding, so ResNet's stem (3×3 window, stride 2,
//! padding 1; He et al. 2016, "Deep Residual Learning for Image
//! Recognition", arXiv:1512.03385, Table 1) would stop the gradient. Here
//!
//! `y[b, c, i, j] = max_{0 ≤ p, q < k} x[b, c, s·i + p − pad, s·j + q − pad]`
//!
//! over the window positions inside the image (padding never wins, as with
//! PyTorch's −∞ padding), with `oh = ⌊(h + 2·pad − k)/s⌋ + 1`. The backward
//! pass routes each output gradient to the first maximum of its window in
//! row-major order (PyTorch's choice on ties); windows that overlap add up.
//!
//! On the CPU with f32 this is one fused kernel each way, over candle's
//! thread pool; elsewhere it is [`reference::max_pool2d`], composed from
//! differentiable `index_select` and `maximum`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use espalier_core::Result;

use crate::fused::{cpu_slice, fusable, output, par_rows, CResult};

/// Window geometry of a square max-pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    k: usize,
    stride: usize,
    pad: usize,
}

impl Window {
    /// Output size along a dimension of `n`.
    fn out(self, n: usize) -> usize {
        (n + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Input positions `[lo, hi)` covered by output position `i` (clipped to the image).
    fn span(self, i: usize, n: usize) -> (usize, usize) {
        let start = (i * self.stride) as isize - self.pad as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + self.k as isize).max(0) as usize).min(n);
        (lo, hi)
    }

    /// The flat index (within an `h × w` plane) of the first maximum of the
    /// window of output `(i, j)`.
    fn argmax(self, plane: &[f32], w: usize, (i, j): (usize, usize)) -> usize {
        let h = plane.len() / w;
        let (r0, r1) = self.span(i, h);
        let (c0, c1) = self.span(j, w);
        let mut best = r0 * w + c0;
        for r in r0..r1 {
            for c in c0..c1 {
                let v = plane[r * w + c];
                // A NaN wins, as in PyTorch's kernel.
                if v > plane[best] || v.is_nan() {
                    best = r * w + c;
                }
            }
        }
        best
    }
}

/// Max-pooling of `(B, C, H, W)` with a `k × k` window, `stride` and zero
/// `padding` on each side (the padding never wins), with a gradient.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if k == 0 || stride == 0 || 2 * padding > k || h + 2 * padding < k || w + 2 * padding < k {
        espalier_core::bail!(
            "max_pool2d: window {k}, stride {stride}, padding {padding} do not fit an input of {h}×{w} \
             (need k ≥ 1, stride ≥ 1, padding ≤ k/2, input + padding ≥ k)"
        );
    }
    if !fusable(x) {
        return reference::max_pool2d(x, k, stride, padding);
    }
    Ok(x.contiguous()?.apply_op1(MaxPoolOp(Window { k, stride, pad: padding }))?)
}

/// Global average pooling: `(B, C, H, W)` → `(B, C)`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean((D::Minus2, D::Minus1))?)
}

/// A ResNet option-A shortcut (He et al. 2016, §3.3): every `stride`-th
/// pixel of `(B, C, H, W)` in both directions, with `lo` zero channels
/// before and `hi` after: `(B, lo + C + hi, ⌈H/s⌉, ⌈W/s⌉)`, with a gradient.
/// One pass each way on the CPU (candle's two `index_select`s and
/// `pad_with_zeros` were three full passes, on one thread).
pub fn subsample_pad(x: &Tensor, stride: usize, lo: usize, hi: usize) -> Result<Tensor> {
    if stride == 0 {
        espalier_core::bail!("subsample_pad: stride must be at least 1");
    }
    x.dims4()?;
    if !fusable(x) {
        return reference::subsample_pad(x, stride, lo, hi);
    }
    Ok(x.contiguous()?.apply_op1(SubsamplePadOp { stride, lo, hi })?)
}

/// Max-pooling and the option-A shortcut composed from differentiable basic
/// ops (any device): the fallbacks off the CPU and the baselines the kernels
/// are tested against.
pub mod reference {
    use candle_core::{Tensor, D};
    use espalier_core::Result;

    /// [`super::subsample_pad`] by `index_select` and `pad_with_zeros`.
    pub fn subsample_pad(x: &Tensor, stride: usize, lo: usize, hi: usize) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let every = |n: usize| Tensor::from_iter((0..n).step_by(stride).map(|i| i as u32), x.device());
        let sub = if stride > 1 { x.index_select(&every(h)?, 2)?.index_select(&every(w)?, 3)? } else { x.clone() };
        Ok(sub.pad_with_zeros(1, lo, hi)?)
    }

    /// `max_pool2d` as a maximum over the `k²` strided views of the padded input.
    pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
        let win = super::Window { k, stride, pad: padding };
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = (win.out(h), win.out(w));
        // Zero padding plus a bias of the lowest finite value outside the
        // image: the padding never wins, and inside the image x + 0 is exact.
        let (ph, pw) = (h + 2 * padding, w + 2 * padding);
        let outside = |r: usize, c: usize| r < padding || r >= h + padding || c < padding || c >= w + padding;
        let bias: Vec<f32> = (0..ph * pw).map(|i| if outside(i / pw, i % pw) { f32::MIN } else { 0.0 }).collect();
        let bias = Tensor::from_vec(bias, (1, 1, ph, pw), x.device())?.to_dtype(x.dtype())?;
        let xp = x.pad_with_zeros(D::Minus2, padding, padding)?.pad_with_zeros(D::Minus1, padding, padding)?;
        let xp = xp.broadcast_add(&bias)?;
        let index = |offset: usize, n: usize| -> Result<Tensor> {
            let ids: Vec<u32> = (0..n).map(|i| (offset + i * stride) as u32).collect();
            Ok(Tensor::new(ids, x.device())?)
        };
        let mut out: Option<Tensor> = None;
        for p in 0..k {
            let rows = xp.index_select(&index(p, oh)?, 2)?;
            for q in 0..k {
                let view = rows.index_select(&index(q, ow)?, 3)?;
                out = Some(match out {
                    Some(o) => o.maximum(&view)?,
                    None => view,
                });
            }
        }
        Ok(out.expect("k ≥ 1"))
    }
}

/// [`subsample_pad`] on the CPU.
struct SubsamplePadOp {
    stride: usize,
    lo: usize,
    hi: usize,
}

impl SubsamplePadOp {
    /// `(B, C, H, W, C_out, OH, OW)` for an input of shape `dims`.
    fn dims(&self, dims: &[usize]) -> CResult<(usize, usize, usize, usize, usize, usize, usize)> {
        let &[b, c, h, w] = dims else { candle_core::bail!("subsample_pad: expected (B, C, H, W), got {dims:?}") };
        Ok((b, c, h, w, self.lo + c + self.hi, h.div_ceil(self.stride), w.div_ceil(self.stride)))
    }
}

impl CustomOp1 for SubsamplePadOp {
    fn name(&self) -> &'static str {
        "espalier-subsample-pad"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = cpu_slice(st, l, self.name())?;
        let (b, c, h, w, co, oh, ow) = self.dims(l.shape().dims())?;
        let s = self.stride;
        // SAFETY: every output plane is written, copied or zeroed.
        let y = unsafe {
            output(b * co * oh * ow, |y| {
                par_rows(y, oh * ow, |planes, out| {
                    for (plane, ys) in planes.zip(out.chunks_exact_mut(oh * ow)) {
                        let ch = plane % co;
                        if ch < self.lo || ch >= self.lo + c {
                            ys.fill(0.0);
                            continue;
                        }
                        let xs = &x[(plane / co * c + ch - self.lo) * h * w..][..h * w];
                        for (i, row) in ys.chunks_exact_mut(ow).enumerate() {
                            let src = &xs[i * s * w..][..w];
                            row.iter_mut().zip(src.iter().step_by(s)).for_each(|(d, v)| *d = *v);
                        }
                    }
                })
            })
        };
        Ok((CpuStorage::F32(y), Shape::from((b, co, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (b, c, h, w, co, oh, ow) = self.dims(arg.dims())?;
        let s = self.stride;
        let dx = crate::fused::with_data(&[grad], "subsample_pad backward", |d| {
            let dy = d[0];
            let mut dx = vec![0f32; b * c * h * w];
            par_rows(&mut dx, h * w, |planes, out| {
                for (plane, xs) in planes.zip(out.chunks_exact_mut(h * w)) {
                    let gs = &dy[((plane / c) * co + self.lo + plane % c) * oh * ow..][..oh * ow];
                    for (i, row) in gs.chunks_exact(ow).enumerate() {
                        let dst = &mut xs[i * s * w..][..w];
                        dst.iter_mut().step_by(s).zip(row).for_each(|(d, g)| *d = *g);
                    }
                }
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

struct MaxPoolOp(Window);

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "espalier-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, self.name())?;
        let (b, c, h, w) = l.shape().dims4()?;
        let win = self.0;
        let (oh, ow) = (win.out(h), win.out(w));
        let mut y = vec![0f32; b * c * oh * ow];
        par_rows(&mut y, oh * ow, |planes, out| {
            for (pi, plane) in planes.enumerate() {
                let xs = &x[plane * h * w..(plane + 1) * h * w];
                let ys = &mut out[pi * oh * ow..(pi + 1) * oh * ow];
                for i in 0..oh {
                    for j in 0..ow {
                        ys[i * ow + j] = xs[win.argmax(xs, w, (i, j))];
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGradOp(self.0))?))
    }
}

/// `(x, dy) → dx`: each output gradient added at its window's first maximum.
struct MaxPoolGradOp(Window);

impl CustomOp2 for MaxPoolGradOp {
    fn name(&self) -> &'static str {
        "espalier-max-pool2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, self.name())?;
        let dy = cpu_slice(s2, l2, self.name())?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let win = self.0;
        let (oh, ow) = (win.out(h), win.out(w));
        if l2.shape().dims() != [b, c, oh, ow] {
            candle_core::bail!("{}: gradient {:?} for input {:?}", self.name(), l2.shape(), l1.shape());
        }
        let mut dx = vec![0f32; b * c * h * w];
        par_rows(&mut dx, h * w, |planes, out| {
            for (pi, plane) in planes.enumerate() {
                let xs = &x[plane * h * w..(plane + 1) * h * w];
                let gs = &dy[plane * oh * ow..(plane + 1) * oh * ow];
                let ds = &mut out[pi * h * w..(pi + 1) * h * w];
                for i in 0..oh {
                    for j in 0..ow {
                        ds[win.argmax(xs, w, (i, j))] += gs[i * ow + j];
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The option-A shortcut kernel against its composition, values and
    /// gradient, odd sizes and strides 1–3.
    #[test]
    fn subsample_pad_matches_its_composition() -> Result<()> {
        for (i, &(shape, s, lo, hi)) in
            [((2, 3, 8, 8), 2, 2, 3), ((3, 2, 7, 5), 2, 1, 1), ((1, 4, 9, 10), 3, 0, 2), ((2, 2, 3, 3), 1, 1, 0)]
                .iter()
                .enumerate()
        {
            let x = Var::from_tensor(&input(shape, 40 + i as u64)?)?;
            let ours = subsample_pad(x.as_tensor(), s, lo, hi)?;
            let theirs = reference::subsample_pad(x.as_tensor(), s, lo, hi)?;
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert_eq!(ours.flatten_all()?.to_vec1::<f32>()?, theirs.flatten_all()?.to_vec1::<f32>()?, "case {i}");
            let r = input(ours.dims4()?, 50 + i as u64)?;
            let g1 = ours.mul(&r)?.sum_all()?.backward()?;
            let g2 = theirs.mul(&r)?.sum_all()?.backward()?;
            let (a, e) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
            assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, e.flatten_all()?.to_vec1::<f32>()?, "case {i}: gradient");
        }
        Ok(())
    }

    fn input(shape: (usize, usize, usize, usize), seed: u64) -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let mut rng = espalier_core::Rng::new(seed);
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    #[test]
    fn matches_candle_and_the_reference() -> Result<()> {
        let x = input((2, 3, 9, 8), 1)?;
        // Window = stride, no padding: candle's own op is the reference.
        let ours = max_pool2d(&x, 2, 2, 0)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(ours, x.max_pool2d(2)?.flatten_all()?.to_vec1::<f32>()?);
        for (k, s, p) in [(3, 2, 1), (3, 1, 1), (2, 2, 1), (3, 3, 0), (1, 2, 0)] {
            let a = max_pool2d(&x, k, s, p)?;
            let b = reference::max_pool2d(&x, k, s, p)?;
            assert_eq!(a.dims(), b.dims(), "k={k} s={s} p={p}");
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "k={k} s={s} p={p}: {diff}");
        }
        // The padding never wins, even when every value is negative.
        let neg = (x.abs()? + 1.0)?.neg()?;
        let y = max_pool2d(&neg, 3, 2, 1)?;
        assert!(y.max_all()?.to_scalar::<f32>()? <= -1.0);
        assert_eq!(y.dims(), [2, 3, 5, 4]);
        Ok(())
    }

    #[test]
    fn rejects_windows_that_do_not_fit() -> Result<()> {
        let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu)?;
        let e = max_pool2d(&x, 3, 2, 2).unwrap_err().to_string();
        assert!(e.contains("padding 2"), "{e}");
        assert!(max_pool2d(&x, 5, 1, 0).is_err());
        Ok(())
    }

    /// Ties go to the first maximum of the window, and only there.
    #[test]
    fn ties_route_the_gradient_to_the_first_maximum() -> Result<()> {
        let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu)?)?;
        let g = max_pool2d(x.as_tensor(), 2, 2, 0)?.sum_all()?.backward()?;
        assert_eq!(g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?, [1., 0., 0., 0.]);
        Ok(())
    }
}
