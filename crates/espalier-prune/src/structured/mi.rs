//! Layer-wise mutual information (Fan et al., "Layer-wise Model Pruning based
//! on Mutual Information", EMNLP 2021, arXiv 2108.12594, §3),
//! as Espalier runs it. The last set
//! (next to the output) keeps the units with the largest `I(h_c; y)`
//! against the discrete label (activations binned by quantiles); each lower
//! set then keeps the units with the largest `Σ_{k kept above} I(h_c; h_k)`,
//! by the Gaussian estimate `−½ log(1 − ρ²)` or by binned discrete MI. The
//! activations are the dense model's on the calibration data.
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
        let scores = match &self.above {
            None => {
                let labels = labels(view.calib, self.bins)?;
                unit_sums(set, &cols.iter().map(|c| mi_label(c, &labels, self.bins)).collect::<Vec<_>>())
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
}
