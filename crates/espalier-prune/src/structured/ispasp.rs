//! i-SpaSP (Wolfe & Kyrillidis, "i-SpaSP: Structured Neural Pruning via
//! Sparse Signal Recovery", 2022, arXiv 2112.04905, Algorithm 1),
//! as Espalier runs it. For a set with calibration activations
//! `H` (`n × U`) and consumer weight `A` (`out × U`), the dense output is
//! `Y = H Aᵀ`. With the support `S` (initially empty), the residual is
//! `V = Y − H_S A_Sᵀ`; the gradient of `½‖V‖²` with respect to unit `c`'s
//! activation through the dense path is `−A_c · v` on each row, and the
//! unit's importance is its energy over the calibration rows,
//! `g_c = Σ_rows (A_c · v)²` (CoSaMP's proxy, the residual's correlation with
//! the unit's output direction). The `2s` units of largest `g` are merged
//! with `S`, and the `s` of those with the largest activation mass
//! `a_c = Σ_rows |h_c|` become the new `S` (stopping early when `S` no
//! longer changes). No weight is refit. The relative residual `‖V‖/‖Y‖` of
//! the final support is reported. For multi-column units (heads) `g` and `a`
//! sum over the block. The consumer is the model's linear map of the
//! set's activations ([`Model::consume`]): the weight matrix for MLP layers,
//! BERT FFNs and heads; for a ResNet basic block, `conv2` with `bn2`'s
//! evaluation-mode scale on the `(B, C, H, W)` maps of `relu(bn1(conv1(x)))`,
//! where `g_c` sums `(Aᵀv)²` over images and positions (computed by autograd
//! through the consumer). (Ranking by the signed sum `Σ_rows A_c · v` or by the
//! gated derivative `Σ_rows h_c (A_c · v)` instead was measured on the MNIST
//! MLP and kept fewer accurate units; see `results/ispasp-mlp`.)
//!
use espalier_core::Result;

use super::consumer::Consumer;
use super::{axis1_sums, top_k, unit_sums, Criterion, SetView};

/// i-SpaSP with `iterations` rounds of candidate selection.
pub struct Ispasp {
    /// T.
    pub iterations: usize,
}

impl Criterion for Ispasp {
    fn needs_calibration(&self) -> bool {
        true
    }
    fn needs_consumer(&self) -> bool {
        true
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        let c = view.consumer.expect("the caller checks needs_consumer");
        ispasp(c, k, self.iterations)
    }
}

/// i-SpaSP's support of `s` units (see the module docs).
fn ispasp(c: &Consumer, s: usize, iterations: usize) -> Result<Vec<usize>> {
    let set = c.set;
    let mass = unit_sums(set, &axis1_sums(&c.h(), false)?);
    let mut support: Vec<usize> = Vec::new();
    for _ in 0..iterations {
        let g = c.correlation(&c.residual(&support)?)?;
        let mut cand = top_k(&g, (2 * s).min(set.size));
        cand.extend(&support);
        cand.sort_unstable();
        cand.dedup();
        let cand_mass: Vec<f64> = cand.iter().map(|&c| mass[c]).collect();
        let next: Vec<usize> = top_k(&cand_mass, s).into_iter().map(|i| cand[i]).collect();
        if next == support {
            break;
        }
        support = next;
    }
    Ok(support)
}
