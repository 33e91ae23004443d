//! A group set's consumer: the model's linear map of the set's activations
//! ([`Model::consume`]), used for i-SpaSP's residual and for the output
//! residual `‖A(H) − A(H_S)‖/‖A(H)‖` reported for every criterion.

use candle_core::{DType, Tensor};
use espalier_core::Batch;
use espalier_core::{bail, GroupSet, Result};
use espalier_models::Model;

use super::{axis1_sums, unit_sums};

/// 0/1 mask of the kept units' columns, shaped to broadcast over axis 1 of
/// an activation tensor of rank `rank`.
pub(crate) fn keep_mask(set: &GroupSet, keep: &[usize], rank: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let mut m = vec![0f32; set.size * set.block];
    for i in set.expand(keep) {
        m[i as usize] = 1.0;
    }
    let mut shape = vec![1; rank.max(2)];
    shape[1] = m.len();
    Ok(Tensor::from_vec(m, shape, dev)?)
}

/// A set's calibration activations as its consumer takes them (units on
/// axis 1) and the consumer as a linear map of them ([`Model::consume`]).
pub struct Consumer<'a> {
    pub(crate) model: &'a dyn Model,
    pub(crate) set: &'a GroupSet,
    /// The activations, a variable so that gradients can reach them.
    h: candle_core::Var,
}

impl<'a> Consumer<'a> {
    pub fn new(model: &'a dyn Model, set: &'a GroupSet, calib: &[Batch]) -> Result<Self> {
        let hs: Vec<Tensor> = calib.iter().map(|b| model.consumer_input(b, &set.name)).collect::<Result<_>>()?;
        let h = Tensor::cat(&hs, 0)?.to_dtype(DType::F32)?.detach();
        if h.rank() < 2 || h.dims()[1] != set.size * set.block {
            bail!(
                "i-SpaSP on `{}`: consumer input {:?} has no {} unit columns on axis 1",
                set.name,
                h.dims(),
                set.size * set.block
            );
        }
        Ok(Consumer { model, set, h: candle_core::Var::from_tensor(&h)? })
    }

    /// The activations, untracked.
    pub fn h(&self) -> Tensor {
        self.h.as_tensor().detach()
    }

    /// `V = A(H ⊙ (1 − m_S))`, the part of the dense output `A(H)` the support misses.
    pub fn residual(&self, keep: &[usize]) -> Result<Tensor> {
        let h = self.h();
        let off = keep_mask(self.set, keep, h.rank(), h.device())?.affine(-1.0, 1.0)?;
        Ok(self.model.consume(&self.set.name, &h.broadcast_mul(&off)?)?.detach())
    }

    /// `‖A(H) − A(H_S)‖/‖A(H)‖` of a support.
    pub fn relative_residual(&self, keep: &[usize]) -> Result<f64> {
        let norm = |t: &Tensor| -> Result<f64> { Ok((t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64).sqrt()) };
        let ny = norm(&self.residual(&[])?)?;
        Ok(if ny > 0.0 { norm(&self.residual(keep)?)? / ny } else { 0.0 })
    }

    /// `g_c = Σ (∂(½‖V‖²)/∂h_c)²` through the dense path: the energy of
    /// `Aᵀ V` in unit `c`'s columns (by autograd through the consumer).
    pub fn correlation(&self, v: &Tensor) -> Result<Vec<f64>> {
        let y = self.model.consume(&self.set.name, self.h.as_tensor())?;
        let grads = y.mul(v)?.sum_all()?.backward()?;
        let g = grads
            .get(self.h.as_tensor())
            .ok_or_else(|| espalier_core::Error::msg("i-SpaSP: no gradient reached the activations"))?;
        Ok(unit_sums(self.set, &axis1_sums(g, true)?))
    }
}
