//! Pruning granularities: which sets of weights are kept or removed together.
//!
//! - Unstructured: any weight, by score, to a target sparsity (globally, per
//!   matrix or per output row).
//! - N:M patterns (the semi-structured sparsity of Ampere-class tensor cores;
//!   Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021, arXiv
//!   2104.08378): within every run of M consecutive weights along the input
//!   dimension, at most N are non-zero. The input dimension is the flattened
//!   trailing dimensions (a linear weight `[out, in]` is blocked along `in`;
//!   a convolution `[out, in, kh, kw]` along `in·kh·kw`). The sparsity is
//!   1 − N/M by construction.
//! - Blocks: `rows × cols` tiles of the `[out, in]` view, scored by the sum of
//!   their weights' scores and pruned whole to a target sparsity.
//!
//! [`keep_masks`] works on plain score vectors, so magnitude pruning, the
//! ADMM Z-projection (scores |W + U|) and SR-STE's per-step masks (scores
//! |W|) share it. Already-pruned weights carry a score of −∞ and stay pruned.

use std::collections::BTreeMap;
use std::sync::Arc;

use espalier_core::Result;
use serde::{Deserialize, Serialize};

use crate::magnitude::Scope;

/// How weights are grouped for pruning (`prune.granularity`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Granularity {
    /// Single weights.
    #[default]
    Unstructured,
    /// At most `n` non-zero weights in every `m` consecutive input weights.
    NOfM {
        /// Weights kept per block.
        n: usize,
        /// Block length.
        m: usize,
    },
    /// `rows × cols` tiles of the `[out, in]` view.
    Block {
        /// Tile height (output units).
        rows: usize,
        /// Tile width (inputs).
        cols: usize,
    },
}

impl Granularity {
    /// Checks the values; `path` names the key in errors.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        match *self {
            Granularity::Unstructured => Ok(()),
            Granularity::NOfM { n, m } if n == 0 || n >= m => {
                Err(format!("{path}: n_of_m needs 0 < n < m, found n = {n}, m = {m}"))
            }
            Granularity::Block { rows, cols } if rows == 0 || cols == 0 => {
                Err(format!("{path}: block rows and cols must be >= 1, found {rows} x {cols}"))
            }
            _ => Ok(()),
        }
    }

    /// The sparsity a pattern implies (N:M), if it fixes one.
    pub fn implied_sparsity(&self) -> Option<f64> {
        match *self {
            Granularity::NOfM { n, m } => Some(1.0 - n as f64 / m as f64),
            _ => None,
        }
    }
}

/// One matrix's scores (higher = more important; −∞ = already pruned).
pub struct Scored<'a> {
    /// Parameter name, for errors.
    pub name: &'a str,
    /// Shape.
    pub dims: &'a [usize],
    /// Scores in row-major order.
    pub scores: Vec<f32>,
}

/// Per-parameter sparsity targets that replace the uniform one under
/// [`Scope::Layer`] (`prune.layer_sparsity`: per-layer ratios such as Zhang
/// et al.'s 80 / 92 / 99.1 / 93% for LeNet-5). Empty: every matrix gets the
/// uniform target. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerTargets(Option<Arc<BTreeMap<String, f64>>>);

impl LayerTargets {
    /// No per-parameter target.
    pub const NONE: LayerTargets = LayerTargets(None);

    /// Targets by parameter name.
    pub fn new(by_name: BTreeMap<String, f64>) -> Self {
        LayerTargets((!by_name.is_empty()).then(|| Arc::new(by_name)))
    }

    /// Keep masks as [`keep_masks`] makes them, each named matrix pruned to
    /// its own target and the others to `sparsity`. A target that names no
    /// scored matrix is an error (a typo would otherwise prune nothing).
    pub fn keep_masks(
        &self,
        scored: &[Scored],
        granularity: Granularity,
        scope: Scope,
        sparsity: f64,
    ) -> Result<Vec<Vec<f32>>> {
        let Some(by_name) = &self.0 else { return keep_masks(scored, granularity, scope, sparsity) };
        if scope != Scope::Layer {
            espalier_core::bail!("per-parameter sparsity targets need scope = \"layer\"");
        }
        if let Some(missing) = by_name.keys().find(|n| !scored.iter().any(|s| s.name == n.as_str())) {
            let names: Vec<&str> = scored.iter().map(|s| s.name).collect();
            espalier_core::bail!(
                "key `prune.layer_sparsity` names `{missing}`, which is not a pruned parameter (pruned: {})",
                names.join(", ")
            );
        }
        let mut out = Vec::with_capacity(scored.len());
        for s in scored {
            let target = by_name.get(s.name).copied().unwrap_or(sparsity);
            out.extend(keep_masks(std::slice::from_ref(s), granularity, scope, target)?);
        }
        Ok(out)
    }
}

/// 0/1 keep masks (row-major, one per input) at `sparsity` (ignored by
/// N:M, which implies its own). Ties are broken by position.
pub fn keep_masks(scored: &[Scored], granularity: Granularity, scope: Scope, sparsity: f64) -> Result<Vec<Vec<f32>>> {
    match granularity {
        Granularity::Unstructured if scope == Scope::Row => Ok(scored
            .iter()
            .map(|s| {
                let (_, cols) = out_in(s);
                let rows: Vec<&[f32]> = s.scores.chunks(cols.max(1)).collect();
                lowest_pruned(&rows, Scope::Layer, sparsity).concat()
            })
            .collect()),
        Granularity::Unstructured => {
            let all: Vec<&[f32]> = scored.iter().map(|s| s.scores.as_slice()).collect();
            Ok(lowest_pruned(&all, scope, sparsity))
        }
        Granularity::NOfM { n, m } => scored.iter().map(|s| n_of_m(s, n, m)).collect(),
        Granularity::Block { rows, cols } => {
            let tiles: Vec<(usize, Vec<f32>)> =
                scored.iter().map(|s| tile_scores(s, rows, cols)).collect::<Result<_>>()?;
            let all: Vec<&[f32]> = tiles.iter().map(|t| t.1.as_slice()).collect();
            let keep = lowest_pruned(&all, scope, sparsity);
            Ok(scored
                .iter()
                .zip(&tiles)
                .zip(keep)
                .map(|((s, (tc, _)), k)| expand_tiles(&k, *tc, s.dims, rows, cols))
                .collect())
        }
    }
}

/// The `[out, in]` view of a parameter's shape.
fn out_in(s: &Scored) -> (usize, usize) {
    let out = s.dims.first().copied().unwrap_or(1).max(1);
    (out, s.scores.len() / out)
}

fn n_of_m(s: &Scored, n: usize, m: usize) -> Result<Vec<f32>> {
    let (_, cols) = out_in(s);
    if s.dims.len() < 2 || cols % m != 0 {
        espalier_core::bail!(
            "{}: an {n}:{m} pattern needs an input dimension divisible by {m}, but the shape is {:?} \
             (exclude it with prune.params)",
            s.name,
            s.dims
        );
    }
    let mut keep = vec![0f32; s.scores.len()];
    let mut idx: Vec<usize> = (0..m).collect();
    for (b, block) in s.scores.chunks(m).enumerate() {
        idx.sort_by(|&a, &c| block[c].total_cmp(&block[a]).then(a.cmp(&c)));
        for &i in idx.iter().take(n).filter(|&&i| block[i] > f32::NEG_INFINITY) {
            keep[b * m + i] = 1.0;
        }
        idx.sort_unstable();
    }
    Ok(keep)
}

/// Sums of the scores over `rows × cols` tiles (−∞ when the whole tile is
/// pruned); returns the tile grid's width and the scores.
fn tile_scores(s: &Scored, rows: usize, cols: usize) -> Result<(usize, Vec<f32>)> {
    let (out, inp) = out_in(s);
    if s.dims.len() < 2 || out % rows != 0 || inp % cols != 0 {
        espalier_core::bail!(
            "{}: {rows}x{cols} blocks need an [out, in] view divisible by them, but the shape is {:?}",
            s.name,
            s.dims
        );
    }
    let (tr, tc) = (out / rows, inp / cols);
    let mut t = vec![0f32; tr * tc];
    let mut alive = vec![false; tr * tc];
    for (i, &x) in s.scores.iter().enumerate() {
        let (r, c) = (i / inp, i % inp);
        let ti = (r / rows) * tc + c / cols;
        if x > f32::NEG_INFINITY {
            t[ti] += x;
            alive[ti] = true;
        }
    }
    for (x, a) in t.iter_mut().zip(alive) {
        if !a {
            *x = f32::NEG_INFINITY;
        }
    }
    Ok((tc, t))
}

/// Per-weight keep flags from per-tile ones (`tc` tiles per tile row).
fn expand_tiles(keep: &[f32], tc: usize, dims: &[usize], rows: usize, cols: usize) -> Vec<f32> {
    let numel: usize = dims.iter().product();
    let inp = numel / dims[0];
    (0..numel).map(|i| keep[(i / inp / rows) * tc + (i % inp) / cols]).collect()
}

/// Keep masks that remove the lowest scores to `sparsity`, over all inputs
/// together (global) or each on its own (layer).
pub(crate) fn lowest_pruned(all: &[&[f32]], scope: Scope, sparsity: f64) -> Vec<Vec<f32>> {
    let mut keep: Vec<Vec<f32>> = all.iter().map(|s| vec![1f32; s.len()]).collect();
    match scope {
        Scope::Global => {
            let mut flat = Vec::with_capacity(all.iter().map(|s| s.len()).sum());
            let mut offsets = Vec::new();
            for s in all {
                offsets.push(flat.len());
                for &x in *s {
                    flat.push((x, flat.len()));
                }
            }
            let k = (sparsity * flat.len() as f64).round() as usize;
            for gi in lowest_k(&flat, k) {
                let li = offsets.partition_point(|&o| o <= gi) - 1;
                keep[li][gi - offsets[li]] = 0.0;
            }
        }
        Scope::Layer | Scope::Row => {
            for (li, s) in all.iter().enumerate() {
                let pairs: Vec<(f32, usize)> = s.iter().copied().zip(0..).collect();
                let k = (sparsity * s.len() as f64).round() as usize;
                for i in lowest_k(&pairs, k) {
                    keep[li][i] = 0.0;
                }
            }
        }
    }
    keep
}

/// Indices of the `k` lowest scores (ties: lower index first).
fn lowest_k(s: &[(f32, usize)], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let mut v: Vec<(f32, usize)> = s.to_vec();
    let k = k.min(v.len());
    v.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    v[..k].iter().map(|x| x.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored<'a>(dims: &'a [usize], scores: Vec<f32>) -> Scored<'a> {
        Scored { name: "fc.weight", dims, scores }
    }

    #[test]
    fn layer_targets_prune_each_named_matrix_to_its_own_sparsity() -> Result<()> {
        let (da, db) = ([4usize, 5], [2usize, 10]);
        let sa: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let sb: Vec<f32> = (0..20).rev().map(|i| i as f32).collect();
        let scored = || {
            vec![
                Scored { name: "a.weight", dims: &da, scores: sa.clone() },
                Scored { name: "b.weight", dims: &db, scores: sb.clone() },
            ]
        };
        let targets = LayerTargets::new([("a.weight".to_string(), 0.8)].into());
        let keep = targets.keep_masks(&scored(), Granularity::Unstructured, Scope::Layer, 0.5)?;
        // a: its own 80% (the 16 lowest scores); b: the uniform 50%.
        assert_eq!(keep[0], [vec![0f32; 16], vec![1f32; 4]].concat());
        assert_eq!(keep[1], [vec![1f32; 10], vec![0f32; 10]].concat());
        // Without targets both get the uniform one, as keep_masks does.
        let uniform = LayerTargets::NONE.keep_masks(&scored(), Granularity::Unstructured, Scope::Layer, 0.5)?;
        assert_eq!(uniform, keep_masks(&scored(), Granularity::Unstructured, Scope::Layer, 0.5)?);
        // A name that matches no pruned matrix, or a global scope, is refused.
        let typo = LayerTargets::new([("a.wieght".to_string(), 0.8)].into());
        let err = typo.keep_masks(&scored(), Granularity::Unstructured, Scope::Layer, 0.5).unwrap_err().to_string();
        assert!(err.contains("a.wieght") && err.contains("a.weight, b.weight"), "{err}");
        assert!(targets.keep_masks(&scored(), Granularity::Unstructured, Scope::Global, 0.5).is_err());
        Ok(())
    }

    #[test]
    fn n_of_m_keeps_exactly_n_largest_in_every_block() -> Result<()> {
        let dims = [3usize, 8];
        let mut rng = espalier_core::Rng::derive(5, "t", &[]);
        let s: Vec<f32> = (0..24).map(|_| rng.normal() as f32).map(f32::abs).collect();
        for (n, m) in [(2, 4), (4, 8), (1, 4)] {
            let k = &keep_masks(&[scored(&dims, s.clone())], Granularity::NOfM { n, m }, Scope::Layer, 0.0)?[0];
            for (b, block) in k.chunks(m).enumerate() {
                assert_eq!(block.iter().filter(|&&x| x == 1.0).count(), n, "{n}:{m} block {b}");
                let sc = &s[b * m..(b + 1) * m];
                let min_kept =
                    sc.iter().zip(block).filter(|(_, &k)| k == 1.0).map(|(x, _)| *x).fold(f32::MAX, f32::min);
                let max_pruned =
                    sc.iter().zip(block).filter(|(_, &k)| k == 0.0).map(|(x, _)| *x).fold(f32::MIN, f32::max);
                assert!(min_kept >= max_pruned, "{n}:{m} block {b} keeps the largest");
            }
        }
        // an already-pruned weight is never revived, even if the block then keeps fewer than n
        let k = &keep_masks(
            &[scored(&[1, 4], vec![f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY, 1.0])],
            Granularity::NOfM { n: 2, m: 4 },
            Scope::Layer,
            0.0,
        )?[0];
        assert_eq!(k, &[0., 0., 0., 1.]);
        // an input dimension that is not a multiple of m is refused with the name
        let e = keep_masks(&[scored(&[2, 6], vec![1.0; 12])], Granularity::NOfM { n: 2, m: 4 }, Scope::Layer, 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fc.weight") && e.contains("[2, 6]"), "{e}");
        Ok(())
    }

    #[test]
    fn blocks_are_pruned_whole_by_their_summed_scores() -> Result<()> {
        // 4x4 matrix, 2x2 tiles with sums 4, 40, 8, 0.4 (tile order row-major)
        #[rustfmt::skip]
        let s = vec![1., 1., 10., 10.,
                     1., 1., 10., 10.,
                     2., 2., 0.1, 0.1,
                     2., 2., 0.1, 0.1];
        let dims = [4usize, 4];
        let k = &keep_masks(&[scored(&dims, s)], Granularity::Block { rows: 2, cols: 2 }, Scope::Layer, 0.5)?[0];
        #[rustfmt::skip]
        let want = vec![0., 0., 1., 1.,
                        0., 0., 1., 1.,
                        1., 1., 0., 0.,
                        1., 1., 0., 0.];
        assert_eq!(k, &want);
        Ok(())
    }
}
