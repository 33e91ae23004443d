//! Batch normalisation (Ioffe & Szegedy 2015, Algorithm 1) over the channels
//! of `(B, C, H, W)`, with PyTorch's `BatchNorm2d` conventions.
//!
//! In training, each channel is normalised with the statistics of the batch
//! (over `B·H·W` values, biased variance):
//! `y = (x − μ_B)/√(σ²_B + ε)·γ + β`, and gradients flow through `μ_B` and
//! `σ²_B`. The running statistics then move towards the batch's, in place:
//! `r ← (1 − m)·r + m·s` with momentum `m = 0.1`, using the *unbiased*
//! variance `σ²_B·n/(n − 1)` for `running_var` (as PyTorch does). In
//! evaluation the running statistics replace the batch's (Algorithm 2), so an
//! example's output does not depend on the rest of its batch.
//!
//! `weight` (γ, ones) and `bias` (β, zeros) are [`ParamKind::Norm`]:
//! trainable, never weight-decayed or pruned by default. `running_mean`
//! (zeros) and `running_var` (ones) are [`ParamKind::Buffer`]: saved and
//! restored with the model, never given to an optimizer or a pruner.
//!
//! On the CPU (f32) the training-mode normalisation is one fused kernel with
//! its own backward (per channel over its `N = B·H·W` values, `x̂ = (x − μ)·r`,
//! `r = 1/√(σ² + ε)`): `dx = γ·r·(dy − mean(dy) − x̂·mean(dy·x̂))`,
//! `dγ = Σ dy·x̂`, `dβ = Σ dy`. The composition of candle's ops
//! ([`train_composed`]) is the fallback elsewhere and the reference the
//! kernel is tested against; its reductions over the non-contiguous
//! `(B, H, W)` axes were a quarter of a ResNet-20 training step.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use espalier_core::init::Init;
use espalier_core::{Param, ParamBuilder, ParamKind, Result};

use crate::fused::{
    affine_grads, cpu_slice, fusable, output, par_rows, par_rows_reading, relu_grad, sum8, sum8_2, with_data, CResult,
};

/// PyTorch's default ε.
pub const EPS: f64 = 1e-5;
/// PyTorch's default momentum of the running statistics.
pub const MOMENTUM: f64 = 0.1;

/// `BatchNorm2d`: per-channel normalisation with running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    /// Scale γ, `(C,)`.
    pub weight: Param,
    /// Shift β, `(C,)`.
    pub bias: Param,
    /// Running mean, `(C,)` (a buffer).
    pub running_mean: Param,
    /// Running (unbiased) variance, `(C,)` (a buffer).
    pub running_var: Param,
    /// ε added to the variance.
    pub eps: f64,
    /// Weight of the newest batch in the running statistics.
    pub momentum: f64,
}

impl BatchNorm2d {
    /// Declares `weight`, `bias`, `running_mean` and `running_var` of size
    /// `channels` with PyTorch's defaults (ε = 1e-5, momentum 0.1).
    pub fn new(pb: &ParamBuilder, channels: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: pb.param("weight", &[channels], ParamKind::Norm, Init::Const(1.0))?,
            bias: pb.param("bias", &[channels], ParamKind::Norm, Init::Const(0.0))?,
            running_mean: pb.param("running_mean", &[channels], ParamKind::Buffer, Init::Const(0.0))?,
            running_var: pb.param("running_var", &[channels], ParamKind::Buffer, Init::Const(1.0))?,
            eps: EPS,
            momentum: MOMENTUM,
        })
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.weight.numel()
    }

    /// Normalises `(B, C, H, W)`: batch statistics (and a running-statistics
    /// update) when `train`, running statistics otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, false)
    }

    /// `relu(self.forward(x, train))`, in the same pass over the data on the
    /// CPU (the conv → BN → ReLU of every ResNet block).
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, true)
    }

    fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels() {
            espalier_core::bail!(
                "{}: input has {c} channels, the layer {}",
                self.weight.name().trim_end_matches(".weight"),
                self.channels()
            );
        }
        let n = b * h * w;
        if train && n < 2 {
            espalier_core::bail!(
                "{}: batch statistics need more than one value per channel in training, got input {:?}",
                self.weight.name().trim_end_matches(".weight"),
                x.dims()
            );
        }
        let (gamma, beta) = (self.weight.effective()?, self.bias.effective()?);
        if fusable(x) {
            let x = x.contiguous()?;
            let op = if train {
                let (mean, var) = channel_stats(&x)?;
                let dev = x.device();
                self.update_running(&Tensor::from_slice(&mean, c, dev)?, &Tensor::from_slice(&var, c, dev)?, n)?;
                BatchNormOp::new(mean, &var, self.eps, true, relu)
            } else {
                let stat = |p: &Param| -> Result<Vec<f32>> { Ok(p.tensor().detach().to_dtype(DType::F32)?.to_vec1()?) };
                BatchNormOp::new(stat(&self.running_mean)?, &stat(&self.running_var)?, self.eps, false, relu)
            };
            return Ok(x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?);
        }
        let y = if train {
            let (y, mean, var) = train_composed(x, &gamma, &beta, self.eps)?;
            self.update_running(&mean, &var, n)?;
            y
        } else {
            let (mean, var) = (self.running_mean.tensor().detach(), self.running_var.tensor().detach());
            eval_composed(x, &gamma, &beta, &mean, &var, self.eps)?
        };
        Ok(if relu { y.relu()? } else { y })
    }

    /// The evaluation-mode map as `x·scale + shift` per channel, with
    /// `scale = γ/√(running_var + ε)` and `shift = β − running_mean·scale`
    /// (the fused evaluation kernel's own map).
    pub fn eval_affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let eps = self.eps as f32;
        let map = |[gamma, beta, mean, var]: [&[f32]; 4]| affine_map(gamma, beta, mean, &rstd(var, eps));
        let params = [&self.weight, &self.bias, &self.running_mean, &self.running_var].map(|p| p.tensor());
        if params.iter().all(|t| fusable(t)) {
            // Read in place: four copies per layer were a measurable part
            // of a batch-1 inference pass.
            return Ok(with_data(&params, "batch_norm eval_affine", |d| Ok(map([d[0], d[1], d[2], d[3]])))?);
        }
        let v = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.detach().to_dtype(DType::F32)?.to_vec1()?) };
        let [g, b, m, var] = [v(params[0])?, v(params[1])?, v(params[2])?, v(params[3])?];
        Ok(map([&g, &b, &m, &var]))
    }

    /// `r ← (1 − m)·r + m·s` for the mean and the unbiased variance of a batch
    /// of `n` values per channel; no gradient flows here.
    fn update_running(&self, mean: &Tensor, biased_var: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let unbiased = (biased_var.detach().flatten_all()? * (n as f64 / (n as f64 - 1.0)))?;
        for (buf, stat) in [(&self.running_mean, mean.detach().flatten_all()?), (&self.running_var, unbiased)] {
            let old = buf.tensor().detach();
            let new = ((old * (1.0 - m))? + (stat.to_dtype(buf.tensor().dtype())? * m)?)?;
            buf.set(&new)?;
        }
        Ok(())
    }
}

/// Evaluation-mode normalisation composed from candle's basic ops: the
/// per-channel affine map of the running statistics `mean` and `var` (`(C,)`).
pub fn eval_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dims4()?.1;
    let col = |t: &Tensor| t.reshape((1, c, 1, 1));
    let scale = (col(var)? + eps)?.sqrt()?.recip()?.mul(&col(gamma)?)?;
    let shift = col(beta)?.sub(&col(mean)?.mul(&scale)?)?;
    Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
}

/// Training-mode normalisation composed from candle's basic ops: the output,
/// the batch mean and the biased batch variance (both `(1, C, 1, 1)`).
pub fn train_composed(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dims4()?.1;
    let (gamma, beta) = (gamma.reshape((1, c, 1, 1))?, beta.reshape((1, c, 1, 1))?);
    let mean = x.mean_keepdim((0, 2, 3))?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
    let scale = (&var + eps)?.sqrt()?.recip()?.mul(&gamma)?;
    Ok((xc.broadcast_mul(&scale)?.broadcast_add(&beta)?, mean, var))
}

/// Per-channel mean and biased variance of a contiguous `(B, C, H, W)` f32
/// tensor (two passes per channel, the sums in f64 across planes).
fn channel_stats(x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let (b, c, h, w) = x.dims4()?;
    let hw = h * w;
    let n = (b * hw) as f64;
    let mut stats = vec![0f32; 2 * c];
    with_data(&[x], "batch_norm statistics", |d| {
        let x = d[0];
        par_rows_reading(&mut stats, 2, x.len(), |channels, out| {
            for (i, ch) in channels.enumerate() {
                let planes = || (0..b).map(|bi| &x[(bi * c + ch) * hw..(bi * c + ch + 1) * hw]);
                let mean = planes().map(|p| plane_sum(p, 0.0, false) as f64).sum::<f64>() / n;
                let var = planes().map(|p| plane_sum(p, mean as f32, true) as f64).sum::<f64>() / n;
                out[2 * i] = mean as f32;
                out[2 * i + 1] = var as f32;
            }
        });
        Ok(())
    })?;
    Ok(stats.chunks_exact(2).map(|s| (s[0], s[1])).unzip())
}

/// `Σ x` (or `Σ (x − m)²` when `squares`) over one plane.
fn plane_sum(p: &[f32], m: f32, squares: bool) -> f32 {
    if squares {
        sum8(p, |v| (v - m) * (v - m))
    } else {
        sum8(p, |v| v)
    }
}

/// `(x, γ, β) → y` with the batch statistics computed beforehand.
struct BatchNormOp {
    mean: Vec<f32>,
    rstd: Vec<f32>,
    /// Training: the statistics are the batch's, so gradients flow through
    /// them. Evaluation (running statistics): the op is a per-channel affine
    /// map and `dx = γ·r·dy`.
    batch_stats: bool,
    /// A ReLU on the output, in the same pass (its backward masks `dy` by
    /// `y > 0` first).
    relu: bool,
}

impl BatchNormOp {
    /// The op for per-channel `mean` and (biased) `var`, with `r = 1/√(var + ε)`.
    fn new(mean: Vec<f32>, var: &[f32], eps: f64, batch_stats: bool, relu: bool) -> Self {
        BatchNormOp { rstd: rstd(var, eps as f32), mean, batch_stats, relu }
    }

    /// `(B, C, H·W)` of the input layout.
    fn dims(&self, l: &Layout) -> CResult<(usize, usize, usize)> {
        let (b, c, h, w) = l.shape().dims4()?;
        if c != self.mean.len() {
            candle_core::bail!("batch_norm: input has {c} channels, statistics {}", self.mean.len());
        }
        Ok((b, c, h * w))
    }
}

/// `1/√(var + ε)` per channel.
fn rstd(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
}

/// The normalisation `(x − μ)·r·γ + β` as `x·a + s` per channel: `a = γ·r`,
/// `s = β − μ·a` (the evaluation kernel and [`BatchNorm2d::eval_affine`]).
fn affine_map(gamma: &[f32], beta: &[f32], mean: &[f32], rstd: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = gamma.iter().zip(rstd).map(|(g, r)| g * r).collect();
    let s = beta.iter().zip(mean).zip(&a).map(|((b, m), a)| b - m * a).collect();
    (a, s)
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "espalier-batch-norm"
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
        let (x, g, beta) =
            (cpu_slice(s1, l1, self.name())?, cpu_slice(s2, l2, self.name())?, cpu_slice(s3, l3, self.name())?);
        let (_, c, hw) = self.dims(l1)?;
        // y = x·a + s per channel, with a = γ·r and s = β − μ·a.
        let (a, shift) = affine_map(g, beta, &self.mean, &self.rstd);
        let plane_fn = if self.relu { affine_relu } else { affine };
        // SAFETY: `par_rows` hands every plane to `plane_fn`, which writes all of it.
        let y = unsafe {
            output(x.len(), |y| {
                par_rows(y, hw, |planes, out| {
                    for (i, plane) in planes.enumerate() {
                        let ch = plane % c;
                        plane_fn(&x[plane * hw..(plane + 1) * hw], a[ch], shift[ch], &mut out[i * hw..(i + 1) * hw]);
                    }
                })
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, hw) = self.dims(x.layout())?;
        let nf = (b * hw) as f32;
        let (dx, dg, db) = with_data(&[x, grad, gamma, y], "batch_norm backward", |d| {
            let (x, dy, g) = (d[0], d[1], d[2]);
            let masked;
            let dy = if self.relu {
                masked = relu_grad(d[3], dy);
                &masked[..]
            } else {
                dy
            };
            // Per channel: Σ dy (= dβ) and Σ dy·x̂ (= dγ).
            let mut sums = vec![0f32; 2 * c];
            par_rows_reading(&mut sums, 2, x.len(), |channels, out| {
                for (i, ch) in channels.enumerate() {
                    let (m, r) = (self.mean[ch], self.rstd[ch]);
                    let (mut s_dy, mut s_dyx) = (0f64, 0f64);
                    for bi in 0..b {
                        let o = (bi * c + ch) * hw;
                        let (xp, dp) = (&x[o..o + hw], &dy[o..o + hw]);
                        s_dy += sum8(dp, |d| d) as f64;
                        s_dyx += (sum8_2(dp, xp, |d, x| d * (x - m)) * r) as f64;
                    }
                    out[2 * i] = s_dy as f32;
                    out[2 * i + 1] = s_dyx as f32;
                }
            });
            let mut dx = vec![0f32; x.len()];
            par_rows(&mut dx, hw, |planes, out| {
                for (i, plane) in planes.enumerate() {
                    let ch = plane % c;
                    let (m, r) = (self.mean[ch], self.rstd[ch]);
                    let (mean_dy, mean_dyx) =
                        if self.batch_stats { (sums[2 * ch] / nf, sums[2 * ch + 1] / nf) } else { (0.0, 0.0) };
                    let o = plane * hw;
                    bn_dx(
                        &x[o..o + hw],
                        &dy[o..o + hw],
                        m,
                        r,
                        g[ch] * r,
                        mean_dy,
                        mean_dyx,
                        &mut out[i * hw..(i + 1) * hw],
                    );
                }
            });
            let db = sums.iter().step_by(2).copied().collect::<Vec<_>>();
            let dg = sums.iter().skip(1).step_by(2).copied().collect::<Vec<_>>();
            Ok((dx, dg, db))
        })?;
        affine_grads(x, gamma, dx, dg, db)
    }
}

crate::fused::simd_fn! {
    fn affine(x: &[f32], a: f32, s: f32, y: &mut [f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi = xi * a + s;
        }
    }
}

crate::fused::simd_fn! {
    fn affine_relu(x: &[f32], a: f32, s: f32, y: &mut [f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi = (xi * a + s).max(0.0);
        }
    }
}

crate::fused::simd_fn! {
    /// `dx = γr·(dy − mean(dy) − x̂·mean(dy·x̂))` over one plane.
    #[allow(clippy::too_many_arguments)]
    fn bn_dx(x: &[f32], dy: &[f32], m: f32, r: f32, gr: f32, mean_dy: f32, mean_dyx: f32, dx: &mut [f32]) {
        for i in 0..dx.len() {
            dx[i] = gr * (dy[i] - mean_dy - (x[i] - m) * r * mean_dyx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64, shift: f32) -> Result<Tensor> {
        let mut rng = espalier_core::Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 2.0 + shift).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    }

    /// The fused kernel against the composition: output, batch statistics,
    /// and the gradients of x, γ and β, including odd plane sizes and an
    /// offset mean (where a one-pass variance would lose digits).
    #[test]
    fn fused_batch_norm_matches_composition() -> Result<()> {
        let cases = [(4, 3, 5, 7), (2, 16, 8, 8), (3, 5, 1, 3), (8, 2, 11, 9)];
        for (i, &(b, c, h, w), relu) in cases.iter().enumerate().flat_map(|(i, s)| [(i, s, false), (i, s, true)]) {
            let x = Var::from_tensor(&randn(&[b, c, h, w], i as u64, 3.0)?)?;
            let g = Var::from_tensor(&randn(&[c], 100 + i as u64, 1.0)?)?;
            let be = Var::from_tensor(&randn(&[c], 200 + i as u64, 0.0)?)?;
            let r = randn(&[b, c, h, w], 300 + i as u64, 0.0)?;
            let (want, mean, var) = train_composed(x.as_tensor(), g.as_tensor(), be.as_tensor(), EPS)?;
            let want = if relu { want.relu()? } else { want };
            let (m, v) = channel_stats(x.as_tensor())?;
            assert!(
                max_diff(&Tensor::new(m.as_slice(), &Device::Cpu)?, &mean.flatten_all()?)? < 1e-5,
                "case {i}: mean"
            );
            assert!(max_diff(&Tensor::new(v.as_slice(), &Device::Cpu)?, &var.flatten_all()?)? < 1e-4, "case {i}: var");
            let got =
                x.as_tensor().apply_op3(g.as_tensor(), be.as_tensor(), BatchNormOp::new(m, &v, EPS, true, relu))?;
            assert!(max_diff(&got, &want)? < 1e-5, "case {i} (relu {relu}): forward");
            let gw = want.mul(&r)?.sum_all()?.backward()?;
            let gg = got.mul(&r)?.sum_all()?.backward()?;
            for (name, v) in [("dx", &x), ("dgamma", &g), ("dbeta", &be)] {
                let (a, e) = (gg.get(v.as_tensor()).unwrap(), gw.get(v.as_tensor()).unwrap());
                let scale = e.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
                assert!(
                    max_diff(a, e)? / scale < 1e-4,
                    "case {i} (relu {relu}): {name} differs by {}",
                    max_diff(a, e)?
                );
            }
        }
        Ok(())
    }

    /// Evaluation mode (running statistics): the fused kernel against the
    /// composed affine map, values and gradients (Taylor scores and
    /// i-SpaSP's consumer backpropagate through BN in evaluation mode).
    #[test]
    fn fused_eval_batch_norm_matches_composition() -> Result<()> {
        for relu in [false, true] {
            let x = Var::from_tensor(&randn(&[3, 5, 4, 6], 5, 1.0)?)?;
            let g = Var::from_tensor(&randn(&[5], 1, 1.0)?)?;
            let be = Var::from_tensor(&randn(&[5], 2, 0.0)?)?;
            let (mean, var) = (randn(&[5], 3, 0.5)?, randn(&[5], 4, 0.0)?.abs()?);
            let r = randn(&[3, 5, 4, 6], 6, 0.0)?;
            let want = eval_composed(x.as_tensor(), g.as_tensor(), be.as_tensor(), &mean, &var, EPS)?;
            let want = if relu { want.relu()? } else { want };
            let op = BatchNormOp::new(mean.to_vec1()?, &var.to_vec1::<f32>()?, EPS, false, relu);
            let got = x.as_tensor().apply_op3(g.as_tensor(), be.as_tensor(), op)?;
            assert!(max_diff(&got, &want)? < 1e-4, "forward (relu {relu})");
            let gw = want.mul(&r)?.sum_all()?.backward()?;
            let gg = got.mul(&r)?.sum_all()?.backward()?;
            for (name, v) in [("dx", &x), ("dgamma", &g), ("dbeta", &be)] {
                let d = max_diff(gg.get(v.as_tensor()).unwrap(), gw.get(v.as_tensor()).unwrap())?;
                assert!(d < 1e-3, "{name} differs by {d} (relu {relu})");
            }
        }
        Ok(())
    }
}
