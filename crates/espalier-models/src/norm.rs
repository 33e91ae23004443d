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

use candle_core::Tensor;
use espalier_core::init::Init;
use espalier_core::{Param, ParamBuilder, ParamKind, Result};

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
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels() {
            espalier_core::bail!(
                "{}: input has {c} channels, the layer {}",
                self.weight.name().trim_end_matches(".weight"),
                self.channels()
            );
        }
        let gamma = self.weight.effective()?.reshape((1, c, 1, 1))?;
        let beta = self.bias.effective()?.reshape((1, c, 1, 1))?;
        if !train {
            let mean = self.running_mean.tensor().detach().reshape((1, c, 1, 1))?;
            let var = self.running_var.tensor().detach().reshape((1, c, 1, 1))?;
            let scale = (var + self.eps)?.sqrt()?.recip()?.mul(&gamma)?;
            let shift = beta.sub(&mean.mul(&scale)?)?;
            return Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?);
        }
        let n = b * h * w;
        if n < 2 {
            espalier_core::bail!(
                "{}: batch statistics need more than one value per channel in training, got input {:?}",
                self.weight.name().trim_end_matches(".weight"),
                x.dims()
            );
        }
        let mean = x.mean_keepdim((0, 2, 3))?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
        self.update_running(&mean, &var, n)?;
        let scale = (var + self.eps)?.sqrt()?.recip()?.mul(&gamma)?;
        Ok(xc.broadcast_mul(&scale)?.broadcast_add(&beta)?)
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
