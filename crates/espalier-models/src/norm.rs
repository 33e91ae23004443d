//! Batch normalisation (Ioffe & Szegedy 2015, "Batch Normalization:
//! Accelerating Deep Network Training by Reducing Internal Covariate
//! Shift", arXiv:1502.03167, Algorithm 1 in training, Algorithm 2's
//! inference transform in evaluation) over the channels of `(B, C, H, W)`,
//! with PyTorch's `BatchNorm2d` conventions. The kernels are
//! [`espalier_kernels::norm`]'s; this layer owns the parameters and the
//! running statistics.
//!
//! In training, each channel is normalised with the statistics of the batch
//! (over `B·H·W` values, biased variance):
//! `y = (x − μ_B)/√(σ²_B + ε)·γ + β`, and gradients flow through `μ_B` and
//! `σ²_B`. The running statistics then move towards the batch's, in place:
//! `r ← (1 − m)·r + m·s` with momentum `m = 0.1`, using the *unbiased*
//! variance `σ²_B·n/(n − 1)` for `running_var` (as PyTorch does). In
//! evaluation the running statistics replace the batch's, so an example's
//! output does not depend on the rest of its batch.
//!
//! `weight` (γ, ones) and `bias` (β, zeros) are [`ParamKind::Norm`]:
//! trainable, never weight-decayed or pruned by default. `running_mean`
//! (zeros) and `running_var` (ones) are [`ParamKind::Buffer`]: saved and
//! restored with the model, never given to an optimizer or a pruner.
//!
//! On the CPU (f32) the normalisation is one fused kernel with its own
//! backward ([`espalier_kernels::norm::BatchNormOp`]); elsewhere it is
//! composed from candle's ops ([`train_composed`], [`eval_composed`]).

use candle_core::{DType, Tensor};
use espalier_core::init::Init;
use espalier_core::{Param, ParamBuilder, ParamKind, Result};
use espalier_kernels::fused::{fusable, with_data};
use espalier_kernels::norm::{affine_map, channel_stats, rstd, BatchNormOp};

pub use espalier_kernels::norm::{eval_composed, train_composed};

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
