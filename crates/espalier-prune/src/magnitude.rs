//! Masks from importance scores, and the two score-free criteria:
//! magnitude |w| (Han, Pool, Tran & Dally, "Learning both Weights and
//! Connections for Efficient Neural Networks", NeurIPS 2015, arXiv
//! 1506.02626) and uniform random scores (the floor every criterion must
//! clear).
//!
//! An [`Importance`] names a criterion in the config; [`Importance::build`]
//! is the registry that turns it into a [`Scorer`]. [`masks_for`] turns a
//! scorer's scores into masks at a target sparsity, at any [`Granularity`]
//! (single weights, N:M patterns, blocks) and [`Scope`] (one threshold over
//! all selected matrices, one per matrix, or one per output row).
//! Already-pruned weights stay pruned: a new mask only removes further
//! weights. Ties are broken by position, so the result is deterministic.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use espalier_core::Batch;
use espalier_core::{Param, ParamStore, Result, Rng, Selector};
use espalier_models::Model;
use serde::{Deserialize, Serialize};

use crate::pattern::{Granularity, LayerTargets, Scored};

/// Declares the [`Importance`] config enum and its registry from one line
/// per criterion: `Variant => scorer` (the variant's snake-case name is the
/// config value).
macro_rules! importances {
    ($($(#[$attr:meta])* $variant:ident => $scorer:expr,)*) => {
        /// The unstructured criteria (`prune.importance`).
        #[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
        #[serde(rename_all = "snake_case")]
        pub enum Importance {
            $($(#[$attr])* $variant,)*
        }

        impl Importance {
            /// The scorer of this criterion.
            pub fn build(self) -> Box<dyn Scorer> {
                match self {
                    $(Importance::$variant => Box::new($scorer),)*
                }
            }
        }
    };
}

// The registry: adding a criterion is its module and one line here.
importances! {
    /// |w|.
    #[default]
    Magnitude => Magnitude,
    /// Uniform random scores.
    Random => RandomScores,
    /// Movement ([`crate::movement`]).
    Movement => crate::movement::Movement::default(),
    /// |W_ij|·‖X_j‖₂ from calibration activations ([`crate::wanda`]).
    Wanda => crate::wanda::Wanda::default(),
}

/// Scores weights for pruning (higher = keep).
pub trait Scorer: Send {
    /// The config name, for messages.
    fn name(&self) -> &'static str;
    /// Scores of `p`'s weights in row-major order. Only the entries where
    /// `alive` holds matter (the others are pruned already); a scorer that
    /// draws random numbers draws one per alive entry, in order.
    fn scores(&mut self, p: &Param, alive: &[bool], rng: &mut Rng) -> Result<Vec<f32>>;
    /// Sees the task loss's gradients of every training step (statistics
    /// gathered while training).
    fn observe(&mut self, _params: &ParamStore, _selector: &Selector, _grads: &GradStore) -> Result<()> {
        Ok(())
    }
    /// Whether it runs the model on calibration data before scoring.
    fn needs_calibration(&self) -> bool {
        false
    }
    /// Gathers statistics of `model` on the calibration batches.
    fn calibrate(&mut self, _model: &dyn Model, _selector: &Selector, _batches: &[Batch]) -> Result<()> {
        Ok(())
    }
    /// Whether it can score during training (the gradual schedule), when no
    /// calibration pass can run.
    fn scores_while_training(&self) -> bool {
        !self.needs_calibration()
    }
    /// Checkpoint state, keyed by parameter name.
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(BTreeMap::new())
    }
    /// Restores [`Scorer::state`].
    fn load_state(&mut self, _state: &BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

/// |w|.
pub struct Magnitude;

impl Scorer for Magnitude {
    fn name(&self) -> &'static str {
        "magnitude"
    }
    fn scores(&mut self, p: &Param, _alive: &[bool], _rng: &mut Rng) -> Result<Vec<f32>> {
        Ok(flat(p.tensor())?.into_iter().map(f32::abs).collect())
    }
}

/// Uniform random scores.
pub struct RandomScores;

impl Scorer for RandomScores {
    fn name(&self) -> &'static str {
        "random"
    }
    fn scores(&mut self, _p: &Param, alive: &[bool], rng: &mut Rng) -> Result<Vec<f32>> {
        Ok(alive.iter().map(|&a| if a { rng.uniform() as f32 } else { 0.0 }).collect())
    }
}

/// A tensor's values, row-major, as `f32`.
pub fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Over which set of weights the target sparsity holds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One threshold over all selected weights.
    #[default]
    Global,
    /// Each selected matrix pruned to the target.
    Layer,
    /// Each output row (dim 0) of each matrix pruned to the target (Wanda's
    /// comparison group; unstructured granularity only).
    Row,
}

/// At what granularity and over which scope weights are pruned.
#[derive(Clone, Debug, Default)]
pub struct MaskRule {
    /// One threshold, one per matrix or one per row.
    pub scope: Scope,
    /// Single weights, N:M patterns or blocks.
    pub granularity: Granularity,
    /// Seeds random scores.
    pub seed: u64,
    /// Per-parameter targets replacing the uniform sparsity (layer scope).
    pub targets: LayerTargets,
}

/// Masks that prune the selected parameters of `store` to `sparsity` by the
/// scores of `scorer` under `rule`. Unselected parameters keep their current
/// masks (if any).
pub fn masks_for(
    store: &ParamStore,
    selector: &Selector,
    scorer: &mut dyn Scorer,
    rule: &MaskRule,
    sparsity: f64,
) -> Result<BTreeMap<String, Tensor>> {
    let selected: Vec<&Param> = store.iter().filter(|p| selector.matches(p)).collect();
    if selected.is_empty() {
        espalier_core::bail!("no parameter is selected for pruning (check prune.params include/exclude)");
    }
    let mut rng = Rng::derive(rule.seed, "prune", &[(sparsity * 1e6) as u64]);
    let dims: Vec<Vec<usize>> = selected.iter().map(|p| p.dims()).collect();
    let mut scored = Vec::with_capacity(selected.len());
    for (p, d) in selected.iter().zip(&dims) {
        let alive: Vec<bool> = match p.mask() {
            Some(m) => flat(&m)?.into_iter().map(|v| v != 0.0).collect(),
            None => vec![true; p.numel()],
        };
        let raw = scorer.scores(p, &alive, &mut rng)?;
        let scores = raw.into_iter().zip(&alive).map(|(s, &a)| if a { s } else { f32::NEG_INFINITY }).collect();
        scored.push(Scored { name: p.name(), dims: d, scores });
    }
    let keep = rule.targets.keep_masks(&scored, rule.granularity, rule.scope, sparsity)?;
    let mut masks = store.masks();
    for (p, k) in selected.iter().zip(keep) {
        let m = Tensor::from_vec(k, p.dims(), p.tensor().device())?.to_dtype(p.tensor().dtype())?;
        masks.insert(p.name().to_string(), m);
    }
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use espalier_core::init::Init;
    use espalier_core::{ParamBuilder, ParamKind, SparsityReport};

    fn masks(
        s: &ParamStore,
        importance: Importance,
        scope: Scope,
        seed: u64,
        sparsity: f64,
    ) -> Result<BTreeMap<String, Tensor>> {
        let rule = MaskRule { scope, granularity: Granularity::Unstructured, seed, ..Default::default() };
        masks_for(s, &Selector::default(), importance.build().as_mut(), &rule, sparsity)
    }

    fn store() -> Result<ParamStore> {
        let pb = ParamBuilder::from_seed(3, DType::F32, &Device::Cpu);
        pb.pp("a").param("weight", &[10, 10], ParamKind::Weight, Init::Normal { std: 1.0 })?;
        pb.pp("b").param("weight", &[5, 4], ParamKind::Weight, Init::Normal { std: 0.1 })?;
        pb.pp("b").param("bias", &[5], ParamKind::Bias, Init::Const(0.0))?;
        Ok(pb.finish().0)
    }

    #[test]
    fn global_and_layer_sparsity_and_monotone_masks() -> Result<()> {
        let s = store()?;
        let orig = s.get("a.weight")?.tensor().flatten_all()?.to_vec1::<f32>()?;
        let sel = Selector::default();
        let m = masks(&s, Importance::Magnitude, Scope::Global, 0, 0.5)?;
        s.set_masks(&m)?;
        let r = SparsityReport::of(&s, &sel)?;
        assert_eq!(r.kept(), 60);
        // the small-std layer b is pruned much harder under a global threshold
        assert!(r.layers[1].sparsity() > 0.9, "{}", r.table());
        let before = s.masks()["a.weight"].flatten_all()?.to_vec1::<f32>()?;
        let m = masks(&s, Importance::Magnitude, Scope::Layer, 0, 0.75)?;
        s.set_masks(&m)?;
        let after = m["a.weight"].flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(after.iter().filter(|&&x| x == 1.0).count(), 25);
        // previously pruned weights stay pruned
        assert!(before.iter().zip(&after).all(|(o, n)| *o == 1.0 || *n == 0.0));
        // the 25 survivors are the 25 largest |w| of the original layer
        let mut sorted: Vec<f32> = orig.iter().map(|x| x.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kept_min =
            orig.iter().zip(&after).filter(|(_, m)| **m == 1.0).map(|(x, _)| x.abs()).fold(f32::MAX, f32::min);
        assert_eq!(kept_min, sorted[24]);
        Ok(())
    }

    #[test]
    fn random_importance_hits_the_target_and_is_seeded() -> Result<()> {
        let s = store()?;
        let m1 = masks(&s, Importance::Random, Scope::Layer, 7, 0.3)?;
        let m2 = masks(&s, Importance::Random, Scope::Layer, 7, 0.3)?;
        let a1 = m1["a.weight"].flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a1, m2["a.weight"].flatten_all()?.to_vec1::<f32>()?);
        assert_eq!(a1.iter().filter(|&&x| x == 0.0).count(), 30);
        Ok(())
    }

    /// Row scope: every output row keeps the same number of weights, its own
    /// largest, whatever the other rows hold.
    #[test]
    fn row_scope_prunes_every_row_to_the_target() -> Result<()> {
        let s = store()?;
        let m = masks(&s, Importance::Magnitude, Scope::Row, 0, 0.6)?;
        let w = s.get("a.weight")?.tensor().to_vec2::<f32>()?;
        let k = m["a.weight"].to_vec2::<f32>()?;
        for (row, keep) in w.iter().zip(&k) {
            assert_eq!(keep.iter().filter(|&&x| x == 1.0).count(), 4);
            let min_kept =
                row.iter().zip(keep).filter(|(_, k)| **k == 1.0).map(|(x, _)| x.abs()).fold(f32::MAX, f32::min);
            let max_pruned = row.iter().zip(keep).filter(|(_, k)| **k == 0.0).map(|(x, _)| x.abs()).fold(0.0, f32::max);
            assert!(min_kept >= max_pruned, "{row:?} {keep:?}");
        }
        // b.weight is [5, 4]: 60% of 4 rounds to 2 pruned per row.
        let kb = m["b.weight"].to_vec2::<f32>()?;
        assert!(kb.iter().all(|r| r.iter().filter(|&&x| x == 1.0).count() == 2), "{kb:?}");
        Ok(())
    }
}
