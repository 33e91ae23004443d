//! Layer-wise mutual information (Fan et al., "Layer-wise Model Pruning based
//! on Mutual Information", EMNLP 2021, arXiv 2108.12594, §3),
//! as Espalier runs it. The last set
//! (next to the output) keeps the units with the largest `I(h_c; y)`
//! against the discrete label (activations binned by quantiles); each lower
//! set then keeps the units with the largest `Σ_{k kept above} I(h_c; h_k)`,
//! by the Gaussian estimate `−½ log(1 − ρ²)` or by binned discrete MI, the
//! plug-in estimate or its Miller–Madow correction (Miller, "Note on the
//! bias of information estimates", 1955): with `m` occupied cells,
//! `Î_MM = Î + ((m_a − 1) + (m_b − 1) − (m_ab − 1)) / 2N`. The plug-in's bias
//! between independent variables, about `(K − 1)²/2N` nats for `K` bins
//! (0.03 at 16 bins and 4,000 examples), is as large as one unit's label MI,
//! which is what the correction is for. The activations are the dense
//! model's on the calibration data.
use candle_core::{DType, Tensor};
use espalier_core::Batch;
use espalier_core::{bail, GroupSet, Result};

use super::{activations, top_k, unit_sums, Criterion, MiEstimator, SetView};

/// Top-down MI: the activations kept in the set above, once it is chosen.
pub struct Mi {
    /// Hidden–hidden estimator.
    pub estimator: MiEstimator,
    /// Quantile bins.
    pub bins: usize,
    above: Option<Vec<Vec<f32>>>,
}

impl Mi {
    /// MI with this estimator and bin count.
    pub fn new(estimator: MiEstimator, bins: usize) -> Self {
        Mi { estimator, bins, above: None }
    }
}

impl Criterion for Mi {
    fn needs_calibration(&self) -> bool {
        true
    }
    fn top_down(&self) -> bool {
        true
    }
    fn choose(&mut self, view: &mut SetView, k: usize) -> Result<Vec<usize>> {
        let set: &GroupSet = view.set;
        // One row per example: token models' rows are mean-pooled over each
        // sequence's real tokens.
        let h = pooled(&activations(view.model, view.calib, &set.name)?, view.calib)?;
        let cols = columns(&h)?;
        let corrected = self.estimator == MiEstimator::MillerMadow;
        let scores = match &self.above {
            None => {
                let labels = labels(view.calib, self.bins)?;
                let mi: Vec<f64> = cols.iter().map(|c| mi_label(c, &labels, self.bins, corrected)).collect();
                unit_sums(set, &mi)
            }
            Some(up) => unit_sums(set, &mi_against(&cols, up, self.estimator, self.bins)),
        };
        let keep = top_k(&scores, k);
        self.above = Some(set.expand(&keep).iter().map(|&i| cols[i as usize].clone()).collect());
        Ok(keep)
    }
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
        let espalier_core::Inputs::Tokens { attention_mask, .. } = &b.inputs else {
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

/// Discrete MI (nats) of two label sequences: the plug-in estimate, or with
/// `corrected` its Miller–Madow correction.
fn discrete_mi_est(a: &[usize], b: &[usize], corrected: bool) -> f64 {
    let mi = discrete_mi(a, b);
    if !corrected || a.is_empty() {
        return mi;
    }
    let occupied = |v: &mut Vec<usize>| {
        v.sort_unstable();
        v.dedup();
        v.len() as f64
    };
    let nb = b.iter().max().map_or(0, |m| m + 1);
    let (ma, mb) = (occupied(&mut a.to_vec()), occupied(&mut b.to_vec()));
    let mab = occupied(&mut a.iter().zip(b).map(|(&x, &y)| x * nb + y).collect());
    mi + ((ma - 1.0) + (mb - 1.0) - (mab - 1.0)) / (2.0 * a.len() as f64)
}

/// Discrete plug-in MI (nats) of two label sequences.
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

fn mi_label(col: &[f32], labels: &[usize], bins: usize, corrected: bool) -> f64 {
    discrete_mi_est(&bin(col, bins), labels, corrected)
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
        MiEstimator::Binned | MiEstimator::MillerMadow => {
            let corrected = est == MiEstimator::MillerMadow;
            let up: Vec<Vec<usize>> = up.iter().map(|c| bin(c, bins)).collect();
            cols.iter()
                .map(|c| {
                    let bc = bin(c, bins);
                    up.iter().map(|u| discrete_mi_est(&bc, u, corrected)).sum()
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrete_mi_of_identical_and_independent_labels() {
        let a: Vec<usize> = (0..1000).map(|i| i % 4).collect();
        assert!((discrete_mi(&a, &a) - 4f64.ln()).abs() < 1e-9);
        let b: Vec<usize> = (0..1000).map(|i| (i / 4) % 2).collect();
        assert!(discrete_mi(&a, &b).abs() < 1e-3);
    }

    /// Standard normal pairs with correlation `rho` (Box–Muller on the
    /// crate's seeded stream).
    fn correlated(n: usize, rho: f64, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = espalier_core::Rng::new(seed);
        (0..n)
            .map(|_| {
                let (x, e) = (rng.normal(), rng.normal());
                (x as f32, (rho * x + (1.0 - rho * rho).sqrt() * e) as f32)
            })
            .unzip()
    }

    /// Golden: the Gaussian estimate on ρ = 0.6 pairs is −½ log(1 − 0.36)
    /// = 0.2231 nats (100,000 samples, within 0.01).
    #[test]
    fn gaussian_estimate_of_correlated_pairs() {
        let (x, y) = correlated(100_000, 0.6, 11);
        let mi = mi_against(&[x], &[y], MiEstimator::Gaussian, 16)[0];
        assert!((mi - 0.2231).abs() < 0.01, "{mi}");
        assert!((-0.5 * (1.0f64 - 0.36).ln() - 0.2231).abs() < 1e-4);
    }

    /// Golden: binned MI is the discrete MI of the quantile bins, computed
    /// here directly as H(a) + H(b) − H(a, b) from the counts.
    #[test]
    fn binned_mi_equals_the_direct_computation_on_the_same_bins() {
        let (x, y) = correlated(5_000, 0.6, 12);
        let bins = 8;
        let (a, b) = (bin(&x, bins), bin(&y, bins));
        let entropy = |keys: Vec<usize>| {
            let mut counts = std::collections::BTreeMap::new();
            keys.iter().for_each(|k| *counts.entry(*k).or_insert(0usize) += 1);
            let n = keys.len() as f64;
            -counts.values().map(|&c| c as f64 / n * (c as f64 / n).ln()).sum::<f64>()
        };
        let direct =
            entropy(a.clone()) + entropy(b.clone()) - entropy(a.iter().zip(&b).map(|(p, q)| p * 64 + q).collect());
        let binned = mi_against(std::slice::from_ref(&x), std::slice::from_ref(&y), MiEstimator::Binned, bins)[0];
        assert!((binned - direct).abs() < 1e-12, "{binned} vs {direct}");
        // Miller–Madow adds ((m_a − 1) + (m_b − 1) − (m_ab − 1)) / 2N.
        let mab = {
            let mut v: Vec<usize> = a.iter().zip(&b).map(|(p, q)| p * 64 + q).collect();
            v.sort_unstable();
            v.dedup();
            v.len() as f64
        };
        let mm = mi_against(&[x], &[y], MiEstimator::MillerMadow, bins)[0];
        assert!((mm - (direct + (7.0 + 7.0 - (mab - 1.0)) / 10_000.0)).abs() < 1e-12);
    }

    /// The plug-in's bias between independent variables is about
    /// (K − 1)²/2N; Miller–Madow removes it.
    #[test]
    fn miller_madow_removes_the_plug_in_bias_of_independent_variables() {
        let (x, y) = correlated(4_000, 0.0, 13);
        let plug_in = mi_against(std::slice::from_ref(&x), std::slice::from_ref(&y), MiEstimator::Binned, 16)[0];
        let corrected = mi_against(&[x], &[y], MiEstimator::MillerMadow, 16)[0];
        assert!((plug_in - 225.0 / 8_000.0).abs() < 0.01, "plug-in {plug_in}");
        assert!(corrected.abs() < 0.006, "Miller–Madow {corrected}");
    }

    /// Golden: a unit that carries the label is kept over pure noise (label
    /// MI), and a hidden unit that feeds a kept unit above over one that
    /// does not (hidden–hidden MI), with every estimator.
    #[test]
    fn planted_label_and_noise_units_are_kept_and_dropped() {
        let mut rng = espalier_core::Rng::new(14);
        let n = 2_000;
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let signal: Vec<f32> = labels.iter().map(|&l| l as f32 + 0.3 * rng.normal() as f32).collect();
        let noise: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        for corrected in [false, true] {
            let s = mi_label(&signal, &labels, 16, corrected);
            let z = mi_label(&noise, &labels, 16, corrected);
            assert!(s > 0.5 && z < 0.02, "label MI: signal {s}, noise {z}");
        }
        let below_signal: Vec<f32> = signal.iter().map(|v| 2.0 * v + 0.1 * rng.normal() as f32).collect();
        let below_noise: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        for est in [MiEstimator::Gaussian, MiEstimator::Binned, MiEstimator::MillerMadow] {
            let scores =
                mi_against(&[below_noise.clone(), below_signal.clone()], std::slice::from_ref(&signal), est, 16);
            assert_eq!(super::super::top_k(&scores, 1), [1], "{est:?}: {scores:?}");
        }
    }

    #[test]
    fn quantile_bins_are_balanced() {
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let b = bin(&x, 4);
        for k in 0..4 {
            assert_eq!(b.iter().filter(|&&v| v == k).count(), 25);
        }
    }
}
