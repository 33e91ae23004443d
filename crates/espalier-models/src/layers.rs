//! Building blocks whose weights are masked [`Param`]s.
//!
//! Normalisation is [`crate::fused::layer_norm`]: candle's own fused
//! `LayerNorm` has no backward pass, so gradients would silently stop there.
//! Convolutions run as im2col + matrix product with their own backward
//! ([`crate::conv`]), several times faster to train than candle's `conv2d`.

use candle_core::{Module, Tensor};
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
    /// One fused op on the CPU ([`crate::dense::linear`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.bias.as_ref().map(|b| b.effective()).transpose()?;
        crate::dense::linear(x, &self.weight.effective()?, b.as_ref())
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
        Self::declare(pb, [cin, cout, k, stride, padding], init, bias.then_some(init))
    }

    /// A `k × k` convolution with He et al.'s (2015) normal init in fan-out
    /// mode, N(0, 2/(cout·k²)), and a zero bias if any: torchvision's ResNet
    /// and VGG (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`).
    pub fn he(
        pb: &ParamBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let init = Init::KaimingNormal { fan_out: cout * k * k };
        Self::declare(pb, [cin, cout, k, stride, padding], init, bias.then_some(Init::Const(0.0)))
    }

    /// `weight` `(cout, cin, k, k)` and an optional `bias`, with their inits.
    fn declare(
        pb: &ParamBuilder,
        [cin, cout, k, stride, padding]: [usize; 5],
        w: Init,
        b: Option<Init>,
    ) -> Result<Self> {
        let weight = pb.param("weight", &[cout, cin, k, k], ParamKind::Weight, w)?;
        let bias = b.map(|init| pb.param("bias", &[cout], ParamKind::Bias, init)).transpose()?;
        Ok(Conv2d { weight, bias, padding, stride })
    }

    /// Inference only: `bn(conv(x))` with `bn` (if any) in evaluation mode,
    /// plus `residual`, then ReLU if `relu`, in one pass
    /// ([`crate::conv::conv2d_infer`]); no gradient flows back through it.
    pub fn forward_infer(
        &self,
        bn: Option<&crate::norm::BatchNorm2d>,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let cout = self.weight.dims()[0];
        let (scale, mut shift) = match bn {
            Some(bn) => bn.eval_affine()?,
            None => (vec![1.0; cout], vec![0.0; cout]),
        };
        if let Some(b) = &self.bias {
            let b: Vec<f32> = b.effective()?.detach().to_dtype(candle_core::DType::F32)?.to_vec1()?;
            shift.iter_mut().zip(&b).zip(&scale).for_each(|((s, b), a)| *s += b * a);
        }
        let epi = crate::conv::Epilogue { scale: &scale, shift: &shift, residual, relu };
        crate::conv::conv2d_infer(x, &self.weight.effective()?, self.stride, self.padding, &epi)
    }

    /// Applies the convolution to `(B, C, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = crate::conv::conv2d(x, &self.weight.effective()?, self.stride, self.padding)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.effective()?.reshape((1, (), 1, 1))?)?,
            None => y,
        })
    }
}

/// Layer normalisation over the last dimension (a fused kernel with its own
/// backward on the CPU, basic ops elsewhere).
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
        crate::fused::layer_norm(x, self.weight.tensor(), self.bias.tensor(), self.eps)
    }
}

/// Inverted dropout with masks drawn from the project's seeded RNG: each
/// element is kept with probability 1 − p and scaled by 1/(1 − p).
///
/// The mask comes from four generators seeded by four draws of `rng`: four
/// independent streams, which the CPU runs side by side, are several times
/// faster than one. Each 64-bit draw decides two elements (its low, then its
/// high 32 bits): an element is kept when its 32-bit draw is at least p·2³²,
/// so the keep probability is 1 − p to within 2⁻³³. The mask depends only on
/// the state of `rng` and the element count; `rng` advances by four draws.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut Rng>) -> Result<Tensor> {
    match dropout_mask(x.elem_count(), p, rng) {
        None => Ok(x.clone()),
        Some(mask) => Ok(x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)?),
    }
}

/// The scaled keep mask of [`dropout`] for `n` elements (`1/(1 − p)` where
/// kept, 0 where dropped), or `None` when nothing is dropped (no `rng`, or
/// `p ≤ 0`).
pub fn dropout_mask(n: usize, p: f64, rng: Option<&mut Rng>) -> Option<Vec<f32>> {
    let rng = rng?;
    if p <= 0.0 {
        return None;
    }
    let scale = ((1.0 / (1.0 - p)) as f32).to_bits();
    // At p ≥ 1 the threshold exceeds every 32-bit draw: everything is dropped.
    let threshold = (p * 4_294_967_296.0).round() as u64;
    // Branch-free: the bits of 1/(1 − p) where kept, of 0.0 where dropped.
    let keep = |r: u64| f32::from_bits(scale & ((r >= threshold) as u32).wrapping_neg());
    let mut lanes: [Rng; 4] = std::array::from_fn(|_| Rng::new(rng.next_u64()));
    let mut mask = vec![0f32; n];
    let mut blocks = mask.chunks_exact_mut(8);
    for block in &mut blocks {
        for (pair, lane) in block.chunks_exact_mut(2).zip(&mut lanes) {
            let r = lane.next_u64();
            pair[0] = keep(r & 0xFFFF_FFFF);
            pair[1] = keep(r >> 32);
        }
    }
    for (pair, lane) in blocks.into_remainder().chunks_mut(2).zip(&mut lanes) {
        let r = lane.next_u64();
        pair[0] = keep(r & 0xFFFF_FFFF);
        if let Some(second) = pair.get_mut(1) {
            *second = keep(r >> 32);
        }
    }
    Some(mask)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dropout_keep_rate_scale_and_determinism() -> Result<()> {
        let n = 1 << 20;
        let x = Tensor::ones(n, DType::F32, &Device::Cpu)?;
        for p in [0.1, 0.5, 0.9] {
            let y = dropout(&x, p, Some(&mut Rng::new(7)))?.to_vec1::<f32>()?;
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(y.iter().all(|&v| v == 0.0 || v == scale), "p={p}: values other than 0 and 1/(1-p)");
            let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            // Binomial standard deviation on 2^20 draws is at most 5e-4.
            assert!((kept - (1.0 - p)).abs() < 3e-3, "p={p}: keep rate {kept}");
            let again = dropout(&x, p, Some(&mut Rng::new(7)))?.to_vec1::<f32>()?;
            assert_eq!(y, again, "p={p}: same Rng state, same mask");
            let other = dropout(&x, p, Some(&mut Rng::new(8)))?.to_vec1::<f32>()?;
            assert_ne!(y, other, "p={p}: another seed, another mask");
        }
        // Sizes that leave a partial block of eight (and an odd last element).
        for n in [1, 7, 13, 8 * 1000 + 5] {
            let x = Tensor::ones(n, DType::F32, &Device::Cpu)?;
            let y = dropout(&x, 0.5, Some(&mut Rng::new(3)))?.to_vec1::<f32>()?;
            assert!(y.iter().all(|&v| v == 0.0 || v == 2.0), "n={n}");
            assert_eq!(y, dropout(&x, 0.5, Some(&mut Rng::new(3)))?.to_vec1::<f32>()?, "n={n}");
        }
        assert!(dropout(&x, 1.0, Some(&mut Rng::new(1)))?.to_vec1::<f32>()?.iter().all(|&v| v == 0.0));
        // Off without an Rng or at p = 0.
        assert_eq!(dropout(&x, 0.5, None)?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
        assert_eq!(dropout(&x, 0.0, Some(&mut Rng::new(1)))?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
        Ok(())
    }

    /// The previous implementation (one f64 draw per element), kept to time against.
    fn dropout_per_element(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
        let scale = (1.0 / (1.0 - p)) as f32;
        let keep: Vec<f32> = (0..x.elem_count()).map(|_| if rng.uniform() >= p { scale } else { 0.0 }).collect();
        let m = Tensor::from_vec(keep, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&m)?)
    }

    /// BERT-base attention-probability dropout at batch 32, sequence 128;
    /// `cargo test --release -p espalier-models --lib -- --ignored dropout_timing --nocapture`
    #[test]
    #[ignore = "timing, run by hand in release"]
    fn dropout_timing() -> Result<()> {
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
        println!("  before (f64 per element): {old_med:6.1} / {old_min:6.1} ms");
        println!("  after (4 streams, 32 bit): {med:6.1} / {min:6.1} ms");
        println!("  x.mul alone (the floor):   {mul_med:6.1} / {mul_min:6.1} ms");
        Ok(())
    }
}
