//! Greedy forward selection (Ye, Gong, Nie, Zhu, Liu & Liu, "Good
//! Subnetworks Provably Exist: Pruning via Greedy Forward Selection", ICML
//! 2020, arXiv 2003.01794, Algorithm 1; their code:
//! lushleaf/Network-Pruning-Greedy-Forward-Selection, `Mask` in
//! `models/mobilenet_v2.py` and `prune_a_layer` in `mobile2_prune.py`).
//!
//! Where backward elimination removes units from the dense layer, forward
//! selection starts from the empty layer and adds, one at a time, the unit
//! whose addition gives the lowest loss. The layer's `N` units are written as
//! an average, `f(x) = Σ_j N·α_j·A_j h_j(x) + b` with `α_j = 1/N` for the dense
//! layer (`A_j` the consumer's column of unit `j`); the subnetwork of `m`
//! selected units has `α_j = 1/m` on them (the authors' update
//! `α ← (1 − 1/(m+1))·α + e_j/(m+1)`), so each kept unit's contribution is
//! scaled by `N/m`. Step `m + 1` evaluates every unselected unit `j`:
//!
//! `L_j = ℓ( N/(m+1) · (P_m + A_j h_j) + b )`,  `P_m = Σ_{i ∈ S} A_i h_i`,
//!
//! and adds the `j` of lowest `L_j` (ties: the lower index), until `k` units
//! are selected. With `structured.greedy.rescale = true` (the default, the
//! authors' pruned network) the consumer's weight is then multiplied by
//! `N/k`, so the shrunk model computes exactly the selected subnetwork; with
//! `false` the kept units keep their weights (the scale is used for the
//! choice only).
//!
//! The loss `ℓ` (`structured.greedy.objective`):
//! - `loss` (default): the cross-entropy of the network on the calibration
//!   examples' labels — the paper's objective. It needs the set's consumer
//!   to produce the network's logits (a two-layer network, or the last hidden
//!   layer), which is checked against a forward pass.
//! - `reconstruction`: `‖f_S(H) − f(H)‖²` against the dense consumer output,
//!   a layer-wise objective for hidden layers deeper in the network.
//!
//! Differences from the authors' code, stated: they draw a fresh training
//! mini-batch at every step, evaluate 50 random unselected candidates
//! (`--num_evaluate`), and stop when the subnetwork's training accuracy is
//! within `top1_tol` of the dense one's; Espalier evaluates every unselected
//! unit on the fixed calibration set (`structured.calibration` examples) and
//! stops at the requested width `k`, so that it is compared with the other
//! criteria at equal widths.

use candle_core::{DType, Tensor, D};
use espalier_core::{bail, Batch, Result};
use espalier_models::{Mode, Model};
use serde::{Deserialize, Serialize};

use super::{Criterion, SetView};

/// What a forward-selection step minimises (`structured.greedy.objective`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Cross-entropy of the network's logits on the calibration labels.
    #[default]
    Loss,
    /// Squared error against the dense consumer's output.
    Reconstruction,
}

/// Settings of greedy forward selection (`[structured.greedy]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GreedyConfig {
    /// What each step minimises.
    #[serde(default)]
    pub objective: Objective,
    /// Scale the consumer by `N/k` after the choice (the authors' pruned
    /// network, `α_j = 1/k`), rather than keeping the units' weights.
    #[serde(default = "yes")]
    pub rescale: bool,
}

fn yes() -> bool {
    true
}

impl Default for GreedyConfig {
    fn default() -> Self {
        GreedyConfig { objective: Objective::Loss, rescale: true }
    }
}

/// Most elements of the per-unit contribution tensor `(N, rows, out)`.
const MAX_ELEMENTS: usize = 400_000_000;

/// Greedy forward selection.
pub struct Greedy {
    /// Settings.
    pub cfg: GreedyConfig,
}

impl Criterion for Greedy {
    fn needs_calibration(&self) -> bool {
        true
    }
    fn needs_consumer(&self) -> bool {
        true
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        let set = view.set;
        let Some(consumer) = view.consumer else { bail!("greedy forward selection on `{}`: no consumer", set.name) };
        let name = set.consumer.as_deref().unwrap_or_default();
        let param = view.model.params().get(name)?;
        let a = param.effective()?.to_dtype(DType::F32)?;
        let h = consumer.h();
        let n = set.size;
        if set.block != 1 || a.rank() != 2 || h.rank() != 2 || a.dims()[1] != n || h.dims()[1] != n {
            bail!(
                "greedy forward selection on `{}` needs single-column units feeding a matrix consumer \
                 (activations (rows, {n}) and a consumer weight (out, {n})); found activations {:?}, `{name}` {:?}",
                set.name,
                h.dims(),
                a.dims()
            );
        }
        let (rows, out) = (h.dims()[0], a.dims()[0]);
        if n * rows * out > MAX_ELEMENTS {
            bail!(
                "greedy forward selection on `{}`: {n} units × {rows} calibration rows × {out} outputs is too large; \
                 lower `structured.calibration`",
                set.name
            );
        }
        let offset = match view.model.consume_offset(&set.name)? {
            Some(b) => b.to_dtype(DType::F32)?.reshape((1, 1, out))?,
            None => Tensor::zeros((1, 1, out), DType::F32, h.device())?,
        };
        let dense = (h.matmul(&a.t()?)?.unsqueeze(0)?.broadcast_add(&offset))?;
        let target = match self.cfg.objective {
            Objective::Loss => Target::Labels(logit_labels(view.model, view.calib, &dense.squeeze(0)?, &set.name)?),
            Objective::Reconstruction => Target::Dense(dense),
        };
        // C[j] = h_j ⊗ A_j: each unit's contribution to the consumer output.
        let contrib = h.t()?.unsqueeze(2)?.broadcast_mul(&a.t()?.unsqueeze(1)?)?.contiguous()?;
        let mut partial = Tensor::zeros((1, rows, out), DType::F32, h.device())?;
        let mut chosen = vec![false; n];
        let mut keep = Vec::with_capacity(k);
        for m in 0..k.min(n) {
            let scale = n as f64 / (m + 1) as f64;
            let z = contrib.broadcast_add(&partial)?.affine(scale, 0.0)?.broadcast_add(&offset)?;
            let losses = target.losses(&z)?;
            let j = (0..n)
                .filter(|&j| !chosen[j] && losses[j].is_finite())
                .min_by(|&x, &y| losses[x].total_cmp(&losses[y]).then(x.cmp(&y)))
                .or_else(|| (0..n).find(|&j| !chosen[j]))
                .expect("fewer units chosen than there are");
            chosen[j] = true;
            keep.push(j);
            partial = partial.broadcast_add(&contrib.narrow(0, j, 1)?)?;
        }
        if self.cfg.rescale {
            param.set(&param.tensor().affine(n as f64 / keep.len().max(1) as f64, 0.0)?)?;
        }
        keep.sort_unstable();
        tracing::debug!(set = %set.name, kept = keep.len(), "greedy forward selection");
        Ok(keep)
    }
}

/// What a candidate subnetwork's output is scored against.
enum Target {
    /// Class labels, one per row: mean cross-entropy.
    Labels(Tensor),
    /// The dense output `(1, rows, out)`: sum of squared errors.
    Dense(Tensor),
}

impl Target {
    /// One loss per candidate of `z`, `(candidates, rows, out)`.
    fn losses(&self, z: &Tensor) -> Result<Vec<f64>> {
        let per = match self {
            Target::Labels(y) => {
                let max = z.max_keepdim(D::Minus1)?;
                let lse = z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?.broadcast_add(&max)?;
                let idx = y.reshape((1, y.dims()[0], 1))?.broadcast_as((z.dims()[0], y.dims()[0], 1))?.contiguous()?;
                let picked = z.gather(&idx, D::Minus1)?;
                (lse - picked)?.squeeze(D::Minus1)?.mean(1)?
            }
            Target::Dense(d) => z.broadcast_sub(d)?.sqr()?.sum((1, 2))?,
        };
        Ok(per.to_dtype(DType::F64)?.to_vec1::<f64>()?)
    }
}

/// The calibration labels, after checking that the consumer's output
/// (`dense`, `(rows, out)`) is the network's logits on the same examples.
fn logit_labels(model: &dyn Model, calib: &[Batch], dense: &Tensor, set: &str) -> Result<Tensor> {
    let mut logits = Vec::with_capacity(calib.len());
    let mut labels = Vec::with_capacity(calib.len());
    for b in calib {
        logits.push(model.forward_t(b, &mut Mode::Eval)?.logits.to_dtype(DType::F32)?);
        labels.push(b.labels.clone());
    }
    let logits = Tensor::cat(&logits, 0)?;
    if logits.dims() != dense.dims() {
        bail!(
            "greedy forward selection on `{set}` with objective = \"loss\" needs the set's consumer to produce the \
             network's logits {:?}; it produces {:?} (use structured.greedy.objective = \"reconstruction\")",
            logits.dims(),
            dense.dims()
        );
    }
    let diff = (logits.clone() - dense)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let size = logits.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    if diff > 1e-3 * size {
        bail!(
            "greedy forward selection on `{set}` with objective = \"loss\": the consumer's output is not the \
             network's logits (max difference {diff:.3e}); use structured.greedy.objective = \"reconstruction\""
        );
    }
    Ok(Tensor::cat(&labels, 0)?.to_dtype(DType::U32)?)
}
