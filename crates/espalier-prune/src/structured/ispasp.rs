//! i-SpaSP (Wolfe & Kyrillidis, "i-SpaSP: Structured Neural Pruning via
//! Sparse Signal Recovery", 2022, arXiv 2112.04905, Algorithm 1), as the
//! authors' code runs it: `prune_resnet34_ispasp.py::prune_basic_block` of
//! wolfecameron/i-SpaSP (commit `af283a3`), which is the definition where
//! it and the paper's text differ.
//!
//! For a group set with calibration activations `H` (the consumer's input,
//! units on axis 1) and its consumer `f(H) = A(H) + b` (the next layer's
//! weight and bias; for a ResNet basic block `bn2(conv2(·))` in evaluation
//! mode, whose shift is `b`), with `s` units to keep:
//!
//! 1. the activation mass `a_c = Σ_rows,positions |h_c|` (the reference's
//!    `Σ h_c` over post-ReLU activations, which are non-negative; `|·|` for
//!    units that can be negative, where the reference defines nothing);
//! 2. `S = ∅`; then `T` times (`structured.iterations`, the authors' 20):
//!    - the residual `V = f(H) − f_S(H_S)`: at `S = ∅` the whole dense
//!      output, the consumer's bias / BN shift included (the reference's
//!      `residual_objective(og_output)`); otherwise the dense output minus
//!      the pruned consumer's ([`PrunedBn`] below);
//!    - the importance `g_c = Σ_rows,positions ∂(½‖V‖²)/∂h_c = (AᵀV)_c`
//!      through the dense path, summed: *signed* ([`Importance::Signed`],
//!      the reference's `mb_hid.grad` summed over images and positions), or
//!      its energy `Σ (AᵀV)_c²` ([`Importance::Energy`], the CoSaMP-style
//!      proxy Espalier used before, kept as a named variant);
//!    - the candidates: the `2s` units of largest `g` (all units when
//!      `2s ≥ N`: then i-SpaSP keeps exactly what activation magnitude
//!      keeps), merged with `S`;
//!    - the new `S`: the `s` merged units of largest `a_c`.
//!
//!    The reference always runs all `T` iterations; each depends on `S`
//!    alone, so Espalier stops as soon as `S` repeats (a fixed point), which
//!    decides the same support.
//! 3. `s = int(C·ratio)` (`structured.keep_ratio`, floored for every
//!    criterion, as the authors round; at least 1), or `structured.keep`.
//!    The kept rows of the producer and columns of the consumer are sliced
//!    out (a physical shrink); no weight is refit.
//!
//! The pruned consumer's normalisation ([`PrunedBn`],
//! `structured.ispasp.pruned_bn`): the reference builds the pruned block
//! afresh and never puts it in evaluation mode, so the `bn2` of `f_S`
//! normalises with the batch statistics of each chunk of `bs` calibration
//! rows (`structured.ispasp.chunk`) while the dense `bn2` uses its running
//! statistics ([`PrunedBn::Batch`], the reference exactly). Espalier's
//! default, [`PrunedBn::Running`], gives the pruned `bn2` the dense layer's
//! running statistics — what the pruned model computes — so that
//! `V = A(H ⊙ (1 − m_S))`: a deliberate divergence, measured on the
//! differential test's block (`tests/fixtures/ispasp/`), where the two
//! agree on the first support and differ from the second iteration on
//! (final supports: running `[0, 6, 9, 13]`, batch `[0, 6, 7, 13]`). The
//! models whose
//! consumer has no normalisation (the MLP, BERT) compute the same either
//! way.
//!
//! The block the reference returns also differs from Espalier's shrink in
//! its BN statistics: its `bn1` keeps a fresh layer's (mean 0, variance 1)
//! and its `bn2` those accumulated from the pruned output during selection,
//! where Espalier slices the dense statistics (re-estimated with
//! `structured.recalibrate_bn` when asked). The authors always fine-tune
//! after each block, which re-estimates them.
//!
//! The authors prune a ResNet block by block through the already pruned
//! and fine-tuned prefix, skipping the first and last block of each stage:
//! `structured.block_by_block`, `block_finetune_epochs`,
//! `skip_first_block`, `skip_last_block` (see [`super`]).
//!
//! `tests/ispasp_reference.rs` replays the reference's decisions (fixtures
//! produced by `scripts/reference/ispasp_reference.py` running the authors'
//! function unchanged): importance vector, candidates, merged set and
//! support at every iteration, and the residual.

use espalier_core::Result;
use serde::{Deserialize, Serialize};

use super::consumer::{Consumer, PrunedNorm};
use super::{top_k, Criterion, SetView};

/// How a unit's importance is read from `AᵀV`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// `Σ (AᵀV)_c`, signed (the authors' code).
    #[default]
    Signed,
    /// `Σ (AᵀV)_c²` (Espalier's earlier proxy).
    Energy,
}

/// How the pruned consumer's normalisation computes the residual.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrunedBn {
    /// The dense layer's running statistics (what the pruned model
    /// computes).
    #[default]
    Running,
    /// Batch statistics per chunk of `chunk` calibration rows (the
    /// reference's pruned block, left in training mode).
    Batch,
}

/// i-SpaSP's settings (`[structured.ispasp]`); T is `structured.iterations`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IspaspConfig {
    /// `signed` (the authors') or `energy`.
    #[serde(default)]
    pub importance: Importance,
    /// `running` (Espalier's default) or `batch` (the authors' code).
    #[serde(default)]
    pub pruned_bn: PrunedBn,
    /// Rows per chunk for `pruned_bn = "batch"` (the authors' `bs`, their
    /// batch size: 256 on ImageNet).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
}

fn default_chunk() -> usize {
    256
}

impl Default for IspaspConfig {
    fn default() -> Self {
        IspaspConfig { importance: Importance::default(), pruned_bn: PrunedBn::default(), chunk: default_chunk() }
    }
}

impl IspaspConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        if self.chunk == 0 {
            return Err(format!("key `{path}.chunk` must be at least 1"));
        }
        Ok(())
    }

    fn norm(&self) -> PrunedNorm {
        match self.pruned_bn {
            PrunedBn::Running => PrunedNorm::Running,
            PrunedBn::Batch => PrunedNorm::Batch(self.chunk),
        }
    }
}

/// i-SpaSP with `iterations` rounds of candidate selection.
pub struct Ispasp {
    /// T.
    pub iterations: usize,
    /// The variant.
    pub cfg: IspaspConfig,
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
        let t = trace(c, k, self.iterations, &self.cfg)?;
        Ok(t.iterations.last().map(|i| i.support.clone()).unwrap_or_default())
    }
}

/// One iteration of i-SpaSP.
#[derive(Clone, Debug, PartialEq)]
pub struct Iteration {
    /// `½‖V‖²` of the support the iteration starts from.
    pub residual: f64,
    /// `g` per unit.
    pub importance: Vec<f64>,
    /// The `2s` units of largest `g`, ascending.
    pub candidates: Vec<usize>,
    /// Candidates ∪ the previous support, ascending.
    pub merged: Vec<usize>,
    /// The `s` merged units of largest mass, ascending.
    pub support: Vec<usize>,
}

/// Everything i-SpaSP decided on one set.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Activation mass per unit.
    pub mass: Vec<f64>,
    /// In order; it ends where the support repeats or after `T`.
    pub iterations: Vec<Iteration>,
}

/// i-SpaSP's iterations for a support of `s` units (see the module docs).
pub fn trace(c: &Consumer, s: usize, iterations: usize, cfg: &IspaspConfig) -> Result<Trace> {
    let n = c.set.size;
    let s = s.min(n);
    let mass = c.mass()?;
    let mut support: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..iterations {
        let v = c.residual(&support, cfg.norm())?;
        let residual = 0.5 * f64::from(v.sqr()?.sum_all()?.to_scalar::<f32>()?);
        let importance = c.correlation(&v, cfg.importance == Importance::Energy)?;
        let candidates = top_k(&importance, (2 * s).min(n));
        let mut merged = candidates.clone();
        merged.extend(&support);
        merged.sort_unstable();
        merged.dedup();
        let merged_mass: Vec<f64> = merged.iter().map(|&u| mass[u]).collect();
        let next: Vec<usize> = top_k(&merged_mass, s).into_iter().map(|i| merged[i]).collect();
        let fixed = next == support;
        support = next.clone();
        out.push(Iteration { residual, importance, candidates, merged, support: next });
        if fixed {
            break;
        }
    }
    Ok(Trace { mass, iterations: out })
}
