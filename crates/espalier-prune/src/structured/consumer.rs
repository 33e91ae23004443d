//! A group set's consumer: the model's map of the set's activations
//! ([`Model::consume`] plus [`Model::consume_offset`]), used for i-SpaSP's
//! residual and for the output residual `‖A(H) − A(H_S)‖/‖A(H)‖` reported
//! for every criterion.

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

/// How the pruned consumer normalises its output when a residual against
/// the dense output is formed (for consumers followed by a normalisation,
/// such as a ResNet block's `bn2`; the others compute the same either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrunedNorm {
    /// The dense layer's evaluation-mode map, running statistics included:
    /// what the pruned model computes. The constant term cancels, and the
    /// residual is `A(H ⊙ (1 − m_S))`.
    Running,
    /// Batch statistics of the pruned output over chunks of this many rows
    /// (a fresh layer left in training mode).
    Batch(usize),
}

/// Per-unit sums over every axis but 1, signed (`squares = false`) or of
/// squares.
fn unit_totals(set: &GroupSet, t: &Tensor, squares: bool) -> Result<Vec<f64>> {
    let cols = if squares {
        axis1_sums(t, true)?
    } else {
        let s = t.transpose(0, 1)?.flatten_from(1)?.sum(1)?;
        s.to_dtype(DType::F32)?.to_vec1::<f32>()?.into_iter().map(f64::from).collect()
    };
    Ok(unit_sums(set, &cols))
}

/// A set's calibration activations as its consumer takes them (units on
/// axis 1) and the consumer as a map of them ([`Model::consume`]).
pub struct Consumer<'a> {
    pub(crate) model: &'a dyn Model,
    pub(crate) set: &'a GroupSet,
    /// The activations, a variable so that gradients can reach them.
    h: candle_core::Var,
    /// The consumer's constant term ([`Model::consume_offset`]).
    offset: Option<Tensor>,
}

impl<'a> Consumer<'a> {
    /// The activations of `set` on `calib`, through `model` as it is now.
    pub fn new(model: &'a dyn Model, set: &'a GroupSet, calib: &[Batch]) -> Result<Self> {
        let hs: Vec<Tensor> = calib.iter().map(|b| model.consumer_input(b, &set.name)).collect::<Result<_>>()?;
        let h = Tensor::cat(&hs, 0)?.to_dtype(DType::F32)?.detach();
        if h.rank() < 2 || h.dims()[1] != set.size * set.block {
            bail!(
                "consumer of `{}`: its input {:?} has no {} unit columns on axis 1",
                set.name,
                h.dims(),
                set.size * set.block
            );
        }
        let offset = model.consume_offset(&set.name)?.map(|t| t.to_dtype(DType::F32)).transpose()?;
        Ok(Consumer { model, set, h: candle_core::Var::from_tensor(&h)?, offset })
    }

    /// The activations, untracked.
    pub fn h(&self) -> Tensor {
        self.h.as_tensor().detach()
    }

    /// Per-unit sums of `|h|` over every axis but 1 (the activation mass).
    pub fn mass(&self) -> Result<Vec<f64>> {
        Ok(unit_sums(self.set, &axis1_sums(&self.h(), false)?))
    }

    /// `A(h)` plus the consumer's constant term.
    fn output(&self, h: &Tensor) -> Result<Tensor> {
        let y = self.model.consume(&self.set.name, h)?;
        Ok(match &self.offset {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `V = A(H ⊙ (1 − m_S))`, the part of the dense output `A(H)` the
    /// support misses (no constant term).
    pub fn missed(&self, keep: &[usize]) -> Result<Tensor> {
        let h = self.h();
        let off = keep_mask(self.set, keep, h.rank(), h.device())?.affine(-1.0, 1.0)?;
        Ok(self.model.consume(&self.set.name, &h.broadcast_mul(&off)?)?.detach())
    }

    /// The residual between the dense consumer's output on `H` and the
    /// pruned consumer's on `H_S` (its `S` columns): at `S = ∅` the whole
    /// output, constant term included; otherwise `A(H ⊙ (1 − m_S))` with
    /// [`PrunedNorm::Running`], or the dense output minus the pruned one
    /// normalised with its own batch statistics with [`PrunedNorm::Batch`].
    pub fn residual(&self, support: &[usize], norm: PrunedNorm) -> Result<Tensor> {
        let h = self.h();
        if support.is_empty() {
            return Ok(self.output(&h)?.detach());
        }
        let PrunedNorm::Batch(chunk) = norm else {
            return self.missed(support);
        };
        let on = keep_mask(self.set, support, h.rank(), h.device())?;
        let rows = h.dims()[0];
        let mut parts = Vec::with_capacity(rows.div_ceil(chunk.max(1)));
        for start in (0..rows).step_by(chunk.max(1)) {
            let hc = h.narrow(0, start, chunk.min(rows - start))?;
            let pruned = match self.model.consume_batch_stats(&self.set.name, &hc.broadcast_mul(&on)?)? {
                Some(p) => p,
                None => self.output(&hc.broadcast_mul(&on)?)?,
            };
            parts.push((self.output(&hc)? - pruned)?);
        }
        Ok(Tensor::cat(&parts, 0)?.detach())
    }

    /// `‖A(H) − A(H_S)‖/‖A(H)‖` of a support.
    pub fn relative_residual(&self, keep: &[usize]) -> Result<f64> {
        let norm = |t: &Tensor| -> Result<f64> { Ok((t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64).sqrt()) };
        let ny = norm(&self.missed(&[])?)?;
        Ok(if ny > 0.0 { norm(&self.missed(keep)?)? / ny } else { 0.0 })
    }

    /// Per unit, the gradient of `½‖V‖²` with respect to its activations
    /// through the dense path, `Aᵀ V`, summed over the unit's columns and
    /// every row and position (`squares = false`), or the sum of its
    /// squares (by autograd through the consumer).
    pub fn correlation(&self, v: &Tensor, squares: bool) -> Result<Vec<f64>> {
        let y = self.model.consume(&self.set.name, self.h.as_tensor())?;
        let grads = y.mul(v)?.sum_all()?.backward()?;
        let g = grads.get(self.h.as_tensor()).ok_or_else(|| {
            espalier_core::Error::msg(format!("consumer of `{}`: no gradient reached the activations", self.set.name))
        })?;
        unit_totals(self.set, g, squares)
    }
}
