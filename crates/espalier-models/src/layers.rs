//! Building blocks whose weights are masked [`Param`]s.
//!
//! Normalisation is composed from basic tensor ops: candle's fused
//! `LayerNorm` has no backward pass on the CPU, so gradients would silently
//! stop there.

use candle_core::{Module, Tensor, D};
use espalier_core::init::Init;
use espalier_core::{Param, ParamBuilder, ParamKind, Result, Rng};

/// y = x Wᵀ + b, with W of shape `(out, in)` (PyTorch's layout).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out, in)`.
    pub weight: Param,
    /// `(out,)`.
    pub bias: Option<Param>,
}

impl Linear {
    /// Declares `weight` and `bias` under `pb`, PyTorch's default init.
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let init = Init::KaimingUniform { fan_in: in_dim };
        let weight = pb.param("weight", &[out_dim, in_dim], ParamKind::Weight, init)?;
        let bias = if bias { Some(pb.param("bias", &[out_dim], ParamKind::Bias, init)?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// Applies the layer to `(..., in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.effective()?;
        let y = match x.dims() {
            [b1, b2, _] => {
                let (b1, b2) = (*b1, *b2);
                x.reshape((b1 * b2, ()))?.matmul(&w.t()?)?.reshape((b1, b2, ()))?
            }
            _ => x.matmul(&w.t()?)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.effective()?)?,
            None => y,
        })
    }
}

/// 2-D convolution, weight `(out, in, k, k)`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// `(out, in, k, k)`.
    pub weight: Param,
    /// `(out,)`.
    pub bias: Option<Param>,
    /// Zero padding on each side.
    pub padding: usize,
    /// Stride.
    pub stride: usize,
}

impl Conv2d {
    /// Declares a `k × k` convolution with PyTorch's default init.
    pub fn new(
        pb: &ParamBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let init = Init::KaimingUniform { fan_in: cin * k * k };
        let weight = pb.param("weight", &[cout, cin, k, k], ParamKind::Weight, init)?;
        let bias = if bias { Some(pb.param("bias", &[cout], ParamKind::Bias, init)?) } else { None };
        Ok(Conv2d { weight, bias, padding, stride })
    }

    /// Applies the convolution to `(B, C, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight.effective()?, self.padding, self.stride, 1, 1)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.effective()?.reshape((1, (), 1, 1))?)?,
            None => y,
        })
    }
}

/// Layer normalisation over the last dimension, from basic ops.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Scale γ.
    pub weight: Param,
    /// Shift β.
    pub bias: Param,
    /// ε added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Declares `weight` (ones) and `bias` (zeros) of size `dim`.
    pub fn new(pb: &ParamBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: pb.param("weight", &[dim], ParamKind::Norm, Init::Const(1.0))?,
            bias: pb.param("bias", &[dim], ParamKind::Norm, Init::Const(0.0))?,
            eps,
        })
    }

    /// (x − μ)/√(σ² + ε) · γ + β over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(self.weight.tensor())?.broadcast_add(self.bias.tensor())?)
    }
}

/// Inverted dropout with masks drawn from the project's seeded RNG.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let scale = (1.0 / (1.0 - p)) as f32;
    let keep: Vec<f32> = (0..x.elem_count()).map(|_| if rng.uniform() >= p { scale } else { 0.0 }).collect();
    let m = Tensor::from_vec(keep, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&m)?)
}

/// A lookup table `(vocab, dim)`.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// `(vocab, dim)`.
    pub weight: Param,
}

impl Embedding {
    /// Declares `weight` with N(0, std²) init.
    pub fn new(pb: &ParamBuilder, vocab: usize, dim: usize, std: f64) -> Result<Self> {
        Ok(Embedding { weight: pb.param("weight", &[vocab, dim], ParamKind::Embedding, Init::Normal { std })? })
    }

    /// Looks up u32 ids of any shape.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let w = self.weight.effective()?;
        Ok(candle_nn::Embedding::new(w, self.weight.dims()[1]).forward(ids)?)
    }
}
