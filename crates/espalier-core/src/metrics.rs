//! Evaluation metrics, including the official GLUE ones: accuracy, binary F1
//! (positive class 1), Matthews correlation (CoLA), Pearson and Spearman
//! correlation (STS-B).

use serde::{Deserialize, Serialize};

/// A metric an evaluation can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Fraction of exact class matches, in percent.
    Accuracy,
    /// Binary F1 of class 1, in percent.
    F1,
    /// Matthews correlation coefficient ×100.
    Mcc,
    /// Pearson correlation ×100.
    Pearson,
    /// Spearman rank correlation ×100.
    Spearman,
}

impl Metric {
    /// The metric's name as written in reports.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Mcc => "mcc",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
        }
    }
    /// Computes the metric on class predictions (classification metrics) or
    /// real-valued predictions (correlations), in percent.
    pub fn compute(self, pred: &[f64], gold: &[f64]) -> f64 {
        let cls = |v: &[f64]| v.iter().map(|&x| x.round() as i64).collect::<Vec<_>>();
        match self {
            Metric::Accuracy => 100.0 * accuracy(&cls(pred), &cls(gold)),
            Metric::F1 => 100.0 * f1_binary(&cls(pred), &cls(gold)),
            Metric::Mcc => 100.0 * matthews(&cls(pred), &cls(gold)),
            Metric::Pearson => 100.0 * pearson(pred, gold),
            Metric::Spearman => 100.0 * spearman(pred, gold),
        }
    }
}

/// Fraction of equal entries.
pub fn accuracy(pred: &[i64], gold: &[i64]) -> f64 {
    let ok = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    ok as f64 / gold.len().max(1) as f64
}

fn confusion(pred: &[i64], gold: &[i64]) -> (f64, f64, f64, f64) {
    let (mut tp, mut tn, mut fp, mut fneg) = (0f64, 0f64, 0f64, 0f64);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1.0,
            (false, false) => tn += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fneg += 1.0,
        }
    }
    (tp, tn, fp, fneg)
}

/// F1 of the positive class (1); 0 when there are no true positives.
pub fn f1_binary(pred: &[i64], gold: &[i64]) -> f64 {
    let (tp, _, fp, fneg) = confusion(pred, gold);
    if tp == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fneg)
}

/// Matthews correlation for binary labels; 0 when undefined (as sklearn).
pub fn matthews(pred: &[i64], gold: &[i64]) -> f64 {
    let (tp, tn, fp, fneg) = confusion(pred, gold);
    let den = ((tp + fp) * (tp + fneg) * (tn + fp) * (tn + fneg)).sqrt();
    if den == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fneg) / den
    }
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n == 0.0 {
        return 0.0;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks with ties given their average rank (1-based).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of average ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values worked by hand from the definitions that scikit-learn's
    // f1_score / matthews_corrcoef and scipy's spearmanr implement:
    //   f1_score([1,1,0,0,1],[1,0,0,1,1]) = 0.6666…
    //   matthews_corrcoef([1,1,0,0,1],[1,0,0,1,1]) = 0.1666…
    //   spearmanr([1,2,2,4],[1,3,2,4]).correlation = 0.9486832980505138
    #[test]
    fn against_reference_values() {
        let p = [1, 1, 0, 0, 1];
        let g = [1, 0, 0, 1, 1];
        assert!((f1_binary(&p, &g) - 2.0 / 3.0).abs() < 1e-12);
        assert!((matthews(&p, &g) - 1.0 / 6.0).abs() < 1e-12);
        assert!((accuracy(&p, &g) - 0.6).abs() < 1e-12);
        assert!((spearman(&[1., 2., 2., 4.], &[1., 3., 2., 4.]) - 0.9486832980505138).abs() < 1e-12);
        assert!((pearson(&[1., 2., 3.], &[2., 4., 6.]) - 1.0).abs() < 1e-12);
        assert_eq!(matthews(&[1, 1], &[1, 1]), 0.0);
    }
}
