//! Pruning by magnitude (Han et al. 2015), movement (Sanh et al. 2020) or at
//! random, at any [`Granularity`] (single weights, N:M patterns, blocks).
//!
//! Already-pruned weights stay pruned: a new mask only removes further
//! weights. With `Scope::Global` the threshold is shared by all selected
//! matrices; with `Scope::Layer` every matrix is pruned to the same sparsity.
//! Ties are broken by position, so the result is deterministic.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use espalier_core::{Param, ParamStore, Result, Rng, Selector};
use serde::{Deserialize, Serialize};

use crate::pattern::{keep_masks, Granularity, Scored};

/// How a weight's importance is scored.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// |w| (Han et al. 2015).
    #[default]
    Magnitude,
    /// Uniform random scores (the floor every criterion must clear).
    Random,
    /// Movement (Sanh et al. 2020): S = −Σ_t W ⊙ ∂L/∂W accumulated over the
    /// training steps; weights moving away from zero score high.
    Movement,
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
}

/// How, at what granularity and over which scope weights are pruned.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaskRule {
    /// Scores.
    pub importance: Importance,
    /// One threshold or one per matrix.
    pub scope: Scope,
    /// Single weights, N:M patterns or blocks.
    pub granularity: Granularity,
    /// Seeds random scores.
    pub seed: u64,
}

/// Accumulated movement scores by parameter name (see [`crate::movement`]).
pub type MovementScores = BTreeMap<String, Tensor>;

fn scores(p: &Param, importance: Importance, rng: &mut Rng, movement: Option<&MovementScores>) -> Result<Vec<f32>> {
    let w = match importance {
        Importance::Movement => match movement.and_then(|m| m.get(p.name())) {
            Some(s) => s.clone(),
            None => espalier_core::bail!(
                "movement importance has no accumulated scores for {} (no training step has run since \
                 the run started or resumed)",
                p.name()
            ),
        },
        _ => p.tensor().clone(),
    };
    let w = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mask = match p.mask() {
        Some(m) => Some(m.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        None => None,
    };
    Ok(w.iter()
        .enumerate()
        .map(|(i, &x)| {
            if mask.as_ref().is_some_and(|m| m[i] == 0.0) {
                f32::NEG_INFINITY
            } else {
                match importance {
                    Importance::Magnitude => x.abs(),
                    Importance::Movement => x,
                    Importance::Random => rng.uniform() as f32,
                }
            }
        })
        .collect())
}

/// Masks that prune the selected parameters of `store` to `sparsity` by
/// `rule` (`movement` holds the scores of [`Importance::Movement`]).
/// Unselected parameters keep their current masks (if any).
pub fn masks_for(
    store: &ParamStore,
    selector: &Selector,
    rule: &MaskRule,
    sparsity: f64,
    movement: Option<&MovementScores>,
) -> Result<BTreeMap<String, Tensor>> {
    let selected: Vec<&Param> = store.iter().filter(|p| selector.matches(p)).collect();
    if selected.is_empty() {
        espalier_core::bail!("no parameter is selected for pruning (check prune.params include/exclude)");
    }
    let mut rng = Rng::derive(rule.seed, "prune", &[(sparsity * 1e6) as u64]);
    let dims: Vec<Vec<usize>> = selected.iter().map(|p| p.dims()).collect();
    let scored: Vec<Scored> = selected
        .iter()
        .zip(&dims)
        .map(|(p, d)| Ok(Scored { name: p.name(), dims: d, scores: scores(p, rule.importance, &mut rng, movement)? }))
        .collect::<Result<_>>()?;
    let keep = keep_masks(&scored, rule.granularity, rule.scope, sparsity)?;
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

    fn rule(importance: Importance, scope: Scope, seed: u64) -> MaskRule {
        MaskRule { importance, scope, granularity: Granularity::Unstructured, seed }
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
        let m = masks_for(&s, &sel, &rule(Importance::Magnitude, Scope::Global, 0), 0.5, None)?;
        s.set_masks(&m)?;
        let r = SparsityReport::of(&s, &sel)?;
        assert_eq!(r.kept(), 60);
        // the small-std layer b is pruned much harder under a global threshold
        assert!(r.layers[1].sparsity() > 0.9, "{}", r.table());
        let before = s.masks()["a.weight"].flatten_all()?.to_vec1::<f32>()?;
        let m = masks_for(&s, &sel, &rule(Importance::Magnitude, Scope::Layer, 0), 0.75, None)?;
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
        let sel = Selector::default();
        let m1 = masks_for(&s, &sel, &rule(Importance::Random, Scope::Layer, 7), 0.3, None)?;
        let m2 = masks_for(&s, &sel, &rule(Importance::Random, Scope::Layer, 7), 0.3, None)?;
        let a1 = m1["a.weight"].flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a1, m2["a.weight"].flatten_all()?.to_vec1::<f32>()?);
        assert_eq!(a1.iter().filter(|&&x| x == 0.0).count(), 30);
        Ok(())
    }
}
