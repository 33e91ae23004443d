//! Losses composed from differentiable basic ops.

use candle_core::{DType, Tensor, D};
use espalier_core::Result;

/// Mean cross-entropy of `(B, C)` logits against `(B,)` u32 class ids.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Mean squared error of `(B,)` predictions against `(B,)` f32 targets.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(pred.sub(&target.to_dtype(pred.dtype())?)?.sqr()?.mean_all()?)
}
