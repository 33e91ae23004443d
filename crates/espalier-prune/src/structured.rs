//! Structured pruning: which units of each [`GroupSet`] to keep.
//!
//! Criteria (higher score = keep), each reduced over a unit's members:
//!
//! - `random`: uniform scores (the floor);
//! - `l1` / `l2`: `Σ|w|` / `√Σw²` over every element the unit owns;
//! - `activation`: mean `|h|` of the unit on calibration data;
//! - `taylor`: first-order Taylor (Molchanov et al. 2019, eq. 8 for groups):
//!   `(Σ_{w ∈ unit} w·∂L/∂w)²`, gradients summed over the calibration batches;
//! - `movement`: movement pruning's score (Sanh, Wolf & Rush 2020, §3:
//!   `S = −Σ_t ∂L/∂W⁽ᵗ⁾ ⊙ W⁽ᵗ⁾`) summed over a unit, `−Σ_{w ∈ unit} w·∂L/∂w`,
//!   with the sum over training steps replaced by the calibration batches at
//!   the fine-tuned weights: signed, so a unit whose removal would lower the
//!   loss (to first order) ranks last, where Taylor's square ranks it by size;
//! - `ispasp`: i-SpaSP (Wolfe, Wang & Kyrillidis 2022; PAPERS.md §4),
//!   residual-driven candidate selection merged with the current support and
//!   thresholded by activation mass, `T` iterations, set by set;
//! - `mi`: layer-wise mutual information (PAPERS.md §3), top-down.
//!
//! i-SpaSP, as defined by Espalier. For a set with calibration activations
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
//! Mutual information, as defined by Espalier (PAPERS.md §3). The last set
//! (next to the output) keeps the units with the largest `I(h_c; y)`
//! against the discrete label (activations binned by quantiles); each lower
//! set then keeps the units with the largest `Σ_{k kept above} I(h_c; h_k)`,
//! by the Gaussian estimate `−½ log(1 − ρ²)` or by binned discrete MI. The
//! activations are the dense model's on the calibration data.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Tensor};
use espalier_core::select::Pattern;
use espalier_core::{bail, GroupSet, Keep, Result, Rng};
use espalier_data::Batch;
use espalier_models::{Mode, Model};
use serde::{Deserialize, Serialize};

/// How units are scored.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupCriterion {
    /// Uniform random scores.
    Random,
    /// Sum of |w| over the unit.
    #[default]
    L1,
    /// Euclidean norm of the unit's weights.
    L2,
    /// Mean |activation| on calibration data.
    Activation,
    /// First-order Taylor `(Σ w·∂L/∂w)²`.
    Taylor,
    /// Movement score `−Σ w·∂L/∂w` (signed).
    Movement,
    /// i-SpaSP (sparse signal recovery).
    Ispasp,
    /// Layer-wise mutual information, top-down.
    Mi,
    /// GReg-1: units chosen by L1 norm, pushed to zero by a growing L2
    /// penalty during training, then removed ([`crate::greg`]).
    Greg1,
    /// GReg-2: a uniform growing penalty first, then as GReg-1.
    Greg2,
}

impl GroupCriterion {
    /// Whether the criterion runs the model on calibration data.
    pub fn needs_data(self) -> bool {
        !matches!(
            self,
            GroupCriterion::Random
                | GroupCriterion::L1
                | GroupCriterion::L2
                | GroupCriterion::Greg1
                | GroupCriterion::Greg2
        )
    }

    /// Whether units are chosen by regularized training (GReg) rather than
    /// scored once.
    pub fn is_greg(self) -> bool {
        matches!(self, GroupCriterion::Greg1 | GroupCriterion::Greg2)
    }
}

/// Mutual-information estimator for hidden–hidden pairs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MiEstimator {
    /// `−½ log(1 − ρ²)` (jointly Gaussian).
    #[default]
    Gaussian,
    /// Quantile bins and the discrete MI.
    Binned,
}

/// Settings of a structured pruning step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StructuredConfig {
    /// The criterion.
    #[serde(default)]
    pub method: GroupCriterion,
    /// Which group sets are pruned, by name (globs or `re:`; default all).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Fraction of each selected set's units that is kept.
    #[serde(default)]
    pub keep_ratio: Option<f64>,
    /// Number of units kept in each selected set.
    #[serde(default)]
    pub keep: Option<usize>,
    /// Calibration examples (from the training set, a seeded sample).
    #[serde(default = "default_calibration")]
    pub calibration: usize,
    /// i-SpaSP iterations T.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// MI estimator for hidden–hidden pairs.
    #[serde(default)]
    pub estimator: MiEstimator,
    /// Quantile bins for binned MI (and for the label MI of the top set).
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// Fine-tuning epochs after the shrink (learning-rate schedule restarted).
    #[serde(default)]
    pub finetune_epochs: usize,
    /// Training examples (a seeded sample, no augmentation) passed through
    /// the shrunk model in training mode, without any update, to re-estimate
    /// its BatchNorm running statistics before it is evaluated: removing
    /// channels shifts the inputs of every later BN layer. The statistics are
    /// exponential averages (momentum 0.1), so use at least 30 batches' worth
    /// (the old statistics keep 0.9^batches of their weight). 0 = off; models
    /// without BatchNorm ignore it.
    #[serde(default)]
    pub recalibrate_bn: usize,
    /// GReg settings (methods `greg1`, `greg2`).
    #[serde(default)]
    pub greg: crate::greg::GRegConfig,
}

fn default_calibration() -> usize {
    1000
}
fn default_iterations() -> usize {
    20
}
fn default_bins() -> usize {
    16
}

impl StructuredConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        match (self.keep_ratio, self.keep) {
            (Some(r), None) if !(r > 0.0 && r <= 1.0) => {
                Err(format!("key `{path}.keep_ratio` must be in (0, 1], found {r}"))
            }
            (None, Some(0)) => Err(format!("key `{path}.keep` must be at least 1")),
            (Some(_), Some(_)) => Err(format!("give `{path}.keep_ratio` or `{path}.keep`, not both")),
            (None, None) => Err(format!("missing `{path}.keep_ratio` (a fraction) or `{path}.keep` (a unit count)")),
            _ => Ok(()),
        }?;
        if self.method.needs_data() && self.calibration == 0 {
            return Err(format!("key `{path}.calibration` must be at least 1 for method {:?}", self.method));
        }
        if self.iterations == 0 {
            return Err(format!("key `{path}.iterations` must be at least 1"));
        }
        if self.bins < 2 {
            return Err(format!("key `{path}.bins` must be at least 2"));
        }
        for g in &self.groups {
            Pattern::parse(g).map_err(|e| format!("key `{path}.groups`: {e}"))?;
        }
        self.greg.validate(&format!("{path}.greg"))?;
        Ok(())
    }

    /// How many units of a set of `size` are kept.
    pub fn kept(&self, size: usize) -> usize {
        match (self.keep, self.keep_ratio) {
            (Some(k), _) => k.min(size),
            (None, Some(r)) => ((r * size as f64).round() as usize).clamp(1, size),
            (None, None) => size,
        }
    }
}

/// What a selection decided and measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    /// Kept units per set.
    pub keep: Keep,
    /// Relative output residual `‖Y − H_S A_Sᵀ‖/‖Y‖` per set (on the
    /// calibration data; computed for every method whose set has a consumer
    /// and activations).
    pub residual: BTreeMap<String, f64>,
    /// Wall-clock seconds of the selection (probes included).
    pub seconds: f64,
}

/// The group sets of `model` that `cfg.groups` selects (all by default).
pub fn selected_sets(model: &dyn Model, cfg: &StructuredConfig) -> Result<Vec<GroupSet>> {
    let patterns: Vec<Pattern> = cfg.groups.iter().map(|g| Pattern::parse(g)).collect::<Result<_>>()?;
    let all = model.group_sets();
    let sets: Vec<GroupSet> =
        all.iter().filter(|s| patterns.is_empty() || patterns.iter().any(|p| p.matches(&s.name))).cloned().collect();
    if sets.is_empty() {
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        bail!("structured.groups {:?} matches no group set (the model has: {})", cfg.groups, names.join(", "));
    }
    Ok(sets)
}

/// Chooses the units to keep in the selected group sets of `model`.
pub fn select(model: &dyn Model, cfg: &StructuredConfig, calib: &[Batch], seed: u64) -> Result<Selection> {
    let start = Instant::now();
    if cfg.method.is_greg() {
        bail!("GReg chooses its units during training (the run's structured step), not in one pass");
    }
    let owned = selected_sets(model, cfg)?;
    let sets: Vec<&GroupSet> = owned.iter().collect();
    if cfg.method.needs_data() && calib.is_empty() {
        bail!("method {:?} needs calibration data", cfg.method);
    }
    let mut rng = Rng::derive(seed, "structured-select", &[]);
    let mut sel = Selection::default();
    let first_order = matches!(cfg.method, GroupCriterion::Taylor | GroupCriterion::Movement);
    let taylor = if first_order { Some(taylor_products(model, calib)?) } else { None };
    // MI goes top-down: the last set first, each lower set scored against
    // the units kept above it.
    let mut above: Option<Vec<Vec<f32>>> = None;
    let order: Vec<&GroupSet> =
        if cfg.method == GroupCriterion::Mi { sets.iter().rev().copied().collect() } else { sets.clone() };
    for set in order {
        let k = cfg.kept(set.size);
        let needs_h = cfg.method.needs_data() && !first_order && cfg.method != GroupCriterion::Ispasp;
        let h = if needs_h { Some(activations(model, calib, &set.name)?) } else { None };
        // The consumer's view of the activations: i-SpaSP's residual, and the
        // output residual reported for every method.
        let consumer = if set.consumer.is_some() && !calib.is_empty() {
            Some(Consumer::new(model, set, calib)?)
        } else if cfg.method == GroupCriterion::Ispasp {
            bail!("i-SpaSP on `{}`: the group set declares no consumer", set.name);
        } else {
            None
        };
        let keep = match cfg.method {
            GroupCriterion::Random => top_k(&(0..set.size).map(|_| rng.uniform()).collect::<Vec<_>>(), k),
            GroupCriterion::L1 | GroupCriterion::L2 => top_k(&norms(model, set, cfg.method == GroupCriterion::L1)?, k),
            GroupCriterion::Activation => {
                let h = h.as_ref().expect("probed");
                top_k(
                    &unit_sums(set, &axis1_sums(h, false)?).iter().map(|s| s / h.dims()[0] as f64).collect::<Vec<_>>(),
                    k,
                )
            }
            GroupCriterion::Taylor => {
                let sums = unit_products(set, taylor.as_ref().expect("computed"))?;
                top_k(&sums.iter().map(|s| s * s).collect::<Vec<_>>(), k)
            }
            GroupCriterion::Movement => {
                let sums = unit_products(set, taylor.as_ref().expect("computed"))?;
                top_k(&sums.iter().map(|s| -s).collect::<Vec<_>>(), k)
            }
            GroupCriterion::Ispasp => ispasp(consumer.as_ref().expect("built"), k, cfg.iterations)?,
            GroupCriterion::Greg1 | GroupCriterion::Greg2 => unreachable!("rejected above"),
            GroupCriterion::Mi => {
                // One row per example: token models' rows are mean-pooled
                // over each sequence's real tokens.
                let h = pooled(h.as_ref().expect("probed"), calib)?;
                let cols = columns(&h)?;
                let scores = match &above {
                    None => {
                        let labels = labels(calib, cfg.bins)?;
                        unit_sums(set, &cols.iter().map(|c| mi_label(c, &labels, cfg.bins)).collect::<Vec<_>>())
                    }
                    Some(up) => unit_sums(set, &mi_against(&cols, up, cfg.estimator, cfg.bins)),
                };
                let keep = top_k(&scores, k);
                above = Some(set.expand(&keep).iter().map(|&i| cols[i as usize].clone()).collect());
                keep
            }
        };
        if let Some(c) = &consumer {
            sel.residual.insert(set.name.clone(), c.relative_residual(&keep)?);
        }
        tracing::info!(set = %set.name, kept = keep.len(), of = set.size, "selected units");
        sel.keep.insert(set.name.clone(), keep);
    }
    sel.seconds = start.elapsed().as_secs_f64();
    Ok(sel)
}

/// Indices of the `k` largest scores, sorted ascending (ties: lower index).
fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = idx.into_iter().take(k).collect();
    keep.sort_unstable();
    keep
}

/// Per-unit sums of per-column values (units own `block` columns).
fn unit_sums(set: &GroupSet, cols: &[f64]) -> Vec<f64> {
    (0..set.size).map(|u| cols[u * set.block..(u + 1) * set.block].iter().sum()).collect()
}

/// Calibration activations of a set, `(rows, size·block)`.
fn activations(model: &dyn Model, calib: &[Batch], set: &str) -> Result<Tensor> {
    let hs: Vec<Tensor> = calib.iter().map(|b| model.probe(b, set)).collect::<Result<_>>()?;
    Ok(Tensor::cat(&hs, 0)?.to_dtype(DType::F32)?)
}

/// Per-unit `Σ|w|` or `√Σw²` over every member.
fn norms(model: &dyn Model, set: &GroupSet, l1: bool) -> Result<Vec<f64>> {
    let mut acc = vec![0f64; set.size];
    for m in &set.members {
        let w = model.params().get(&m.param)?.effective()?.to_dtype(DType::F32)?;
        let rows = set.unit_rows(&w, m.axis)?;
        let per = if l1 { rows.abs()?.sum(1)? } else { rows.sqr()?.sum(1)? };
        for (a, v) in acc.iter_mut().zip(per.to_vec1::<f32>()?) {
            *a += v as f64;
        }
    }
    Ok(if l1 { acc } else { acc.into_iter().map(f64::sqrt).collect() })
}

/// `w ⊙ ∂L/∂w` for every trainable parameter, gradients summed over the
/// calibration batches (evaluation mode).
fn taylor_products(model: &dyn Model, calib: &[Batch]) -> Result<BTreeMap<String, Tensor>> {
    let mut sums: BTreeMap<String, Tensor> = BTreeMap::new();
    for b in calib {
        let out = model.forward_t(b, &mut Mode::Eval)?;
        let grads = out.loss.backward()?;
        for p in model.params().trainable() {
            if let Some(g) = grads.get(p.tensor()) {
                let e = sums.entry(p.name().to_string()).or_insert_with(|| g.zeros_like().expect("zeros"));
                *e = (&*e + g)?;
            }
        }
    }
    for p in model.params().trainable() {
        if let Some(g) = sums.get_mut(p.name()) {
            *g = (p.effective()? * &*g)?;
        }
    }
    Ok(sums)
}

/// Per-unit `Σ w·∂L/∂w` over every member, from [`taylor_products`].
fn unit_products(set: &GroupSet, products: &BTreeMap<String, Tensor>) -> Result<Vec<f64>> {
    let mut acc = vec![0f64; set.size];
    for m in &set.members {
        let Some(wg) = products.get(&m.param) else { continue };
        let per = set.unit_rows(wg, m.axis)?.sum(1)?.to_vec1::<f32>()?;
        for (a, v) in acc.iter_mut().zip(per) {
            *a += v as f64;
        }
    }
    Ok(acc)
}

/// 0/1 mask of the kept units' columns, shaped to broadcast over axis 1 of
/// an activation tensor of rank `rank`.
fn keep_mask(set: &GroupSet, keep: &[usize], rank: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let mut m = vec![0f32; set.size * set.block];
    for i in set.expand(keep) {
        m[i as usize] = 1.0;
    }
    let mut shape = vec![1; rank.max(2)];
    shape[1] = m.len();
    Ok(Tensor::from_vec(m, shape, dev)?)
}

/// Per-column sums of `|t|` (or of `t²` when `squares`) over every axis but 1.
fn axis1_sums(t: &Tensor, squares: bool) -> Result<Vec<f64>> {
    let t = if squares { t.sqr()? } else { t.abs()? };
    let t = t.transpose(0, 1)?.flatten_from(1)?.sum(1)?;
    Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
}

/// A set's calibration activations as its consumer takes them (units on
/// axis 1) and the consumer as a linear map of them ([`Model::consume`]).
struct Consumer<'a> {
    model: &'a dyn Model,
    set: &'a GroupSet,
    /// The activations, a variable so that gradients can reach them.
    h: candle_core::Var,
}

impl<'a> Consumer<'a> {
    fn new(model: &'a dyn Model, set: &'a GroupSet, calib: &[Batch]) -> Result<Self> {
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
    fn h(&self) -> Tensor {
        self.h.as_tensor().detach()
    }

    /// `V = A(H ⊙ (1 − m_S))`, the part of the dense output `A(H)` the support misses.
    fn residual(&self, keep: &[usize]) -> Result<Tensor> {
        let h = self.h();
        let off = keep_mask(self.set, keep, h.rank(), h.device())?.affine(-1.0, 1.0)?;
        Ok(self.model.consume(&self.set.name, &h.broadcast_mul(&off)?)?.detach())
    }

    /// `‖A(H) − A(H_S)‖/‖A(H)‖` of a support.
    fn relative_residual(&self, keep: &[usize]) -> Result<f64> {
        let norm = |t: &Tensor| -> Result<f64> { Ok((t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64).sqrt()) };
        let ny = norm(&self.residual(&[])?)?;
        Ok(if ny > 0.0 { norm(&self.residual(keep)?)? / ny } else { 0.0 })
    }

    /// `g_c = Σ (∂(½‖V‖²)/∂h_c)²` through the dense path: the energy of
    /// `Aᵀ V` in unit `c`'s columns (by autograd through the consumer).
    fn correlation(&self, v: &Tensor) -> Result<Vec<f64>> {
        let y = self.model.consume(&self.set.name, self.h.as_tensor())?;
        let grads = y.mul(v)?.sum_all()?.backward()?;
        let g = grads
            .get(self.h.as_tensor())
            .ok_or_else(|| espalier_core::Error::msg("i-SpaSP: no gradient reached the activations"))?;
        Ok(unit_sums(self.set, &axis1_sums(g, true)?))
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

/// Columns of a `(rows, cols)` tensor as vectors.
fn columns(h: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(h.t()?.contiguous()?.to_vec2::<f32>()?)
}

/// Class ids, or quantile bins of regression targets.
fn labels(calib: &[Batch], bins: usize) -> Result<Vec<usize>> {
    let mut values = Vec::new();
    let mut classes = true;
    for b in calib {
        classes &= b.labels.dtype() == DType::U32;
        values.extend(b.labels.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(if classes { values.into_iter().map(|v| v as usize).collect() } else { bin(&values, bins) })
}

/// Per-example rows: `h` as it is when it has one row per example, else
/// (token models, one row per real token) the mean over each sequence's
/// tokens, in batch order.
fn pooled(h: &Tensor, calib: &[Batch]) -> Result<Tensor> {
    let examples: usize = calib.iter().map(|b| b.len()).sum();
    let rows = h.dims()[0];
    if rows == examples {
        return Ok(h.clone());
    }
    let mut lengths = Vec::with_capacity(examples);
    for b in calib {
        let espalier_data::Inputs::Tokens { attention_mask, .. } = &b.inputs else {
            bail!("{rows} activation rows for {examples} examples, and the inputs are not token sequences");
        };
        let m = attention_mask.to_dtype(DType::F32)?.sum(1)?.to_vec1::<f32>()?;
        lengths.extend(m.into_iter().map(|v| v.round() as usize));
    }
    if lengths.iter().sum::<usize>() != rows {
        bail!("{rows} activation rows, but the calibration batches hold {} real tokens", lengths.iter().sum::<usize>());
    }
    let mut out = Vec::with_capacity(examples);
    let mut start = 0;
    for len in lengths {
        out.push(h.narrow(0, start, len.max(1).min(rows - start))?.mean_keepdim(0)?);
        start += len;
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Quantile bin of every value (equal values share a bin).
fn bin(x: &[f32], bins: usize) -> Vec<usize> {
    let mut sorted = x.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let edges: Vec<f32> = (1..bins).map(|b| sorted[(b * n / bins).min(n - 1)]).collect();
    x.iter().map(|v| edges.partition_point(|e| e <= v)).collect()
}

/// Discrete MI (nats) of two label sequences.
fn discrete_mi(a: &[usize], b: &[usize]) -> f64 {
    let na = a.iter().max().map_or(0, |m| m + 1);
    let nb = b.iter().max().map_or(0, |m| m + 1);
    let mut joint = vec![0f64; na * nb];
    for (&x, &y) in a.iter().zip(b) {
        joint[x * nb + y] += 1.0;
    }
    let n = a.len() as f64;
    let pa: Vec<f64> = (0..na).map(|x| joint[x * nb..(x + 1) * nb].iter().sum::<f64>() / n).collect();
    let pb: Vec<f64> = (0..nb).map(|y| (0..na).map(|x| joint[x * nb + y]).sum::<f64>() / n).collect();
    let mut mi = 0.0;
    for x in 0..na {
        for y in 0..nb {
            let p = joint[x * nb + y] / n;
            if p > 0.0 {
                mi += p * (p / (pa[x] * pb[y])).ln();
            }
        }
    }
    mi
}

fn mi_label(col: &[f32], labels: &[usize], bins: usize) -> f64 {
    discrete_mi(&bin(col, bins), labels)
}

/// `Σ_k I(col_c; up_k)` for every column.
fn mi_against(cols: &[Vec<f32>], up: &[Vec<f32>], est: MiEstimator, bins: usize) -> Vec<f64> {
    match est {
        MiEstimator::Gaussian => {
            let z = |c: &[f32]| -> Vec<f64> {
                let n = c.len() as f64;
                let mean = c.iter().map(|&v| v as f64).sum::<f64>() / n;
                let sd = (c.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
                c.iter().map(|&v| if sd > 0.0 { (v as f64 - mean) / sd } else { 0.0 }).collect()
            };
            let up: Vec<Vec<f64>> = up.iter().map(|c| z(c)).collect();
            cols.iter()
                .map(|c| {
                    let zc = z(c);
                    let n = zc.len() as f64;
                    up.iter()
                        .map(|u| {
                            let rho = zc.iter().zip(u).map(|(a, b)| a * b).sum::<f64>() / n;
                            -0.5 * (1.0 - (rho * rho).min(1.0 - 1e-9)).ln()
                        })
                        .sum()
                })
                .collect()
        }
        MiEstimator::Binned => {
            let up: Vec<Vec<usize>> = up.iter().map(|c| bin(c, bins)).collect();
            cols.iter()
                .map(|c| {
                    let bc = bin(c, bins);
                    up.iter().map(|u| discrete_mi(&bc, u)).sum()
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 0.5, 2.0], 3), vec![1, 2, 4]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }

    #[test]
    fn discrete_mi_of_identical_and_independent_labels() {
        let a: Vec<usize> = (0..1000).map(|i| i % 4).collect();
        assert!((discrete_mi(&a, &a) - 4f64.ln()).abs() < 1e-9);
        let b: Vec<usize> = (0..1000).map(|i| (i / 4) % 2).collect();
        assert!(discrete_mi(&a, &b).abs() < 1e-3);
    }

    #[test]
    fn quantile_bins_are_balanced() {
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let b = bin(&x, 4);
        for k in 0..4 {
            assert_eq!(b.iter().filter(|&&v| v == k).count(), 25);
        }
    }

    #[test]
    fn config_validation_names_keys() {
        let mut c: StructuredConfig = serde_json::from_str(r#"{"method": "ispasp", "keep_ratio": 0.5}"#).unwrap();
        assert!(c.validate("structured").is_ok());
        assert_eq!(c.kept(1000), 500);
        c.keep_ratio = Some(1.5);
        assert!(c.validate("structured").unwrap_err().contains("structured.keep_ratio"));
        c.keep_ratio = None;
        assert!(c.validate("structured").unwrap_err().contains("keep"));
    }
}
