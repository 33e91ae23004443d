//! Unstructured pruning by magnitude (Han et al. 2015) or at random.
//!
//! Already-pruned weights stay pruned: a new mask only removes further
//! weights. With `Scope::Global` the threshold is shared by all selected
//! matrices; with `Scope::Layer` every matrix is pruned to the same sparsity.
//! Ties are broken by position, so the result is deterministic.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use espalier_core::{Param, ParamStore, Result, Rng, Selector};
use serde::{Deserialize, Serialize};

/// How a weight's importance is scored.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// |w| (Han et al. 2015).
    #[default]
    Magnitude,
    /// Uniform random scores (the floor every criterion must clear).
    Random,
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

fn scores(p: &Param, importance: Importance, rng: &mut Rng) -> Result<Vec<f32>> {
    let w = p.tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
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
                    Importance::Random => rng.uniform() as f32,
                }
            }
        })
        .collect())
}

/// Indices of the `k` lowest scores (ties: lower index first).
fn lowest_k(s: &[(f32, usize)], k: usize) -> Vec<usize> {
    let mut v: Vec<(f32, usize)> = s.to_vec();
    if k == 0 {
        return Vec::new();
    }
    let k = k.min(v.len());
    v.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    v[..k].iter().map(|x| x.1).collect()
}

/// Masks that prune the selected parameters of `store` to `sparsity`.
/// Unselected parameters keep their current masks (if any).
pub fn masks_for(
    store: &ParamStore,
    selector: &Selector,
    importance: Importance,
    scope: Scope,
    sparsity: f64,
    seed: u64,
) -> Result<BTreeMap<String, Tensor>> {
    let selected: Vec<&Param> = store.iter().filter(|p| selector.matches(p)).collect();
    if selected.is_empty() {
        espalier_core::bail!("no parameter is selected for pruning (check prune.params include/exclude)");
    }
    let mut rng = Rng::derive(seed, "prune", &[(sparsity * 1e6) as u64]);
    let all: Vec<Vec<f32>> = selected.iter().map(|p| scores(p, importance, &mut rng)).collect::<Result<_>>()?;
    let mut keep: Vec<Vec<f32>> = all.iter().map(|s| vec![1f32; s.len()]).collect();
    match scope {
        Scope::Global => {
            let mut flat = Vec::with_capacity(all.iter().map(Vec::len).sum());
            let mut offsets = Vec::new();
            for s in &all {
                offsets.push(flat.len());
                for &x in s {
                    flat.push((x, flat.len()));
                }
            }
            let k = (sparsity * flat.len() as f64).round() as usize;
            for gi in lowest_k(&flat, k) {
                let li = offsets.partition_point(|&o| o <= gi) - 1;
                keep[li][gi - offsets[li]] = 0.0;
            }
        }
        Scope::Layer => {
            for (li, s) in all.iter().enumerate() {
                let pairs: Vec<(f32, usize)> = s.iter().copied().zip(0..).collect();
                let k = (sparsity * s.len() as f64).round() as usize;
                for i in lowest_k(&pairs, k) {
                    keep[li][i] = 0.0;
                }
            }
        }
    }
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
        let m = masks_for(&s, &sel, Importance::Magnitude, Scope::Global, 0.5, 0)?;
        s.set_masks(&m)?;
        let r = SparsityReport::of(&s, &sel)?;
        assert_eq!(r.kept(), 60);
        // the small-std layer b is pruned much harder under a global threshold
        assert!(r.layers[1].sparsity() > 0.9, "{}", r.table());
        let before = s.masks()["a.weight"].flatten_all()?.to_vec1::<f32>()?;
        let m = masks_for(&s, &sel, Importance::Magnitude, Scope::Layer, 0.75, 0)?;
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
        let m1 = masks_for(&s, &sel, Importance::Random, Scope::Layer, 0.3, 7)?;
        let m2 = masks_for(&s, &sel, Importance::Random, Scope::Layer, 0.3, 7)?;
        let a1 = m1["a.weight"].flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a1, m2["a.weight"].flatten_all()?.to_vec1::<f32>()?);
        assert_eq!(a1.iter().filter(|&&x| x == 0.0).count(), 30);
        Ok(())
    }
}
