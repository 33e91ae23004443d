//! The spec's claims checked against our numbers: a [`Verdict`] (PASS,
//! FAILS, INCONCLUSIVE, NO DATA) and its evidence per claim and section, and
//! the report's claims list.
//!
//! The rule (the project's, for every table): with two seeds or more, a
//! claim is decided at each sparsity from the per-seed paired differences
//! (method − baseline, method − dense, or method − the paper's value) and
//! their two-sided 95% confidence interval (Student's t): PASS where the
//! interval lies on the claimed side of the tolerance, FAILS where it lies on
//! the other side, inconclusive where it straddles it. The claim as a whole
//! FAILS if it fails anywhere, is inconclusive if it holds nowhere it fails
//! but is undecided somewhere, and PASSes only where it holds everywhere.
//! With one seed there is no interval: the means are compared (as the
//! report prints them) and the evidence says so.

use std::collections::BTreeMap;

use super::aggregate::{key, nearest, pct, reference_for, Aggregate, Section, Stat};
use super::spec::{Claim, ClaimKind, Spec};

/// The verdict on a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Holds at every point checked.
    Pass,
    /// Fails somewhere.
    Fails,
    /// Fails nowhere, undecided somewhere (an interval contains the bound).
    Inconclusive,
    /// No point to check.
    NoData,
}

impl Verdict {
    pub(super) fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fails => "FAILS",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::NoData => "NO DATA",
        }
    }
}

fn in_range(c: &Claim, k: i64) -> bool {
    c.min_sparsity.is_none_or(|m| k >= key(m)) && c.max_sparsity.is_none_or(|m| k <= key(m))
}

/// The value a claim compares: the mean as the report prints it (two
/// decimals), so a verdict never hinges on a difference the table hides.
fn shown(s: &Stat) -> f64 {
    format!("{:.2}", s.mean).parse().unwrap_or(s.mean)
}

/// Where a point stands: the claim holds there, fails, or is undecided.
#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Held,
    Failed,
    Open,
}

/// Where a claim puts the difference (ours − theirs): between `lo` and `hi`,
/// `lo` itself excluded when `strict`. Comparisons allow 1e-9 of rounding.
struct Band {
    lo: f64,
    hi: f64,
    strict: bool,
}

impl Band {
    fn contains(&self, x: f64) -> bool {
        let above = if self.strict { x > self.lo + 1e-9 } else { x >= self.lo - 1e-9 };
        above && x <= self.hi + 1e-9
    }

    /// Whether an interval lies wholly outside the band.
    fn misses(&self, lo: f64, hi: f64) -> bool {
        let below = if self.strict { hi <= self.lo + 1e-9 } else { hi < self.lo - 1e-9 };
        below || lo > self.hi + 1e-9
    }
}

/// Decides whether the difference lies in `band`: from the 95% interval of
/// the per-seed differences when there are two or more (inside: held;
/// outside: failed; across an edge: open), else from the difference of the
/// shown means, `point`. Returns the outcome and the evidence suffix.
fn decide(diffs: &[f64], point: f64, band: &Band) -> (Outcome, String) {
    if diffs.len() >= 2 {
        let s = Stat::of(diffs);
        let (lo, hi) = s.interval().expect("two or more values");
        let text = format!(", difference {:+.2} [{:+.2}, {:+.2}] over {} seeds", s.mean, lo, hi, s.n);
        let outcome = if band.contains(lo) && band.contains(hi) {
            Outcome::Held
        } else if band.misses(lo, hi) {
            Outcome::Failed
        } else {
            Outcome::Open
        };
        return (outcome, text);
    }
    let held = band.contains(point);
    (if held { Outcome::Held } else { Outcome::Failed }, " (one seed: no interval)".into())
}

/// Per-seed differences `a_s − b_s` over the seeds both have.
fn paired(a: Option<&BTreeMap<u64, f64>>, b: Option<&BTreeMap<u64, f64>>) -> Vec<f64> {
    let (Some(a), Some(b)) = (a, b) else { return Vec::new() };
    a.iter().filter_map(|(s, va)| b.get(s).map(|vb| va - vb)).collect()
}

/// Checks a claim on its metric (default: the primary one) over the
/// aggregates of every metric: the verdict and the evidence.
pub fn check_claim(spec: &Spec, aggs: &[Aggregate], c: &Claim) -> (Verdict, String) {
    let metric = c.metric.as_deref().unwrap_or(&spec.table.metrics[0]);
    let Some(agg) = aggs.iter().find(|a| a.column == metric) else {
        return (Verdict::NoData, format!("no `{metric}` values"));
    };
    let empty = BTreeMap::new();
    let a = agg.cells.get(&c.a).unwrap_or(&empty);
    let seeds_of = |m: &str, k: i64| agg.seeds.get(m).and_then(|by_k| by_k.get(&k));
    let mut points: Vec<(Outcome, String)> = Vec::new();
    match c.kind {
        ClaimKind::Beats => {
            let b_name = c.b.clone().unwrap_or_default();
            let b = agg.cells.get(&b_name).unwrap_or(&empty);
            for (k, sa) in a.iter().filter(|(k, _)| in_range(c, **k)) {
                let Some(sb) = b.get(k) else { continue };
                let diffs = paired(seeds_of(&c.a, *k), seeds_of(&b_name, *k));
                let band = Band { lo: c.tolerance, hi: f64::INFINITY, strict: true };
                let (o, why) = decide(&diffs, shown(sa) - shown(sb), &band);
                points.push((o, format!("{}: {:.2} vs {:.2}{why}", pct(*k), sa.mean, sb.mean)));
            }
        }
        ClaimKind::WithinDense => {
            if let Some(d) = agg.dense {
                for (k, sa) in a.iter().filter(|(k, _)| in_range(c, **k)) {
                    let diffs = if agg.dense_seeds.len() == 1 {
                        // One dense model (a prerequisite shared by every seed): each seed's
                        // difference from it.
                        seeds_of(&c.a, *k).map(|v| v.values().map(|x| x - d.mean).collect()).unwrap_or_default()
                    } else {
                        paired(seeds_of(&c.a, *k), Some(&agg.dense_seeds))
                    };
                    let band = Band { lo: -c.tolerance, hi: f64::INFINITY, strict: false };
                    let (o, why) = decide(&diffs, shown(sa) - shown(&d), &band);
                    points.push((o, format!("{}: {:.2} vs dense {:.2}{why}", pct(*k), sa.mean, d.mean)));
                }
            }
        }
        ClaimKind::NearPaper => {
            for r in spec.reference.iter().filter(|r| r.method == c.a && reference_for(spec, r, agg)) {
                let Some((k, s)) = nearest(agg, &c.a, r.sparsity) else { continue };
                let line =
                    format!("paper {:.2} at {}, ours {:.2} at {}", r.value, pct(key(r.sparsity)), s.mean, pct(k));
                // |ours − paper| ≤ tolerance.
                let diffs: Vec<f64> =
                    seeds_of(&c.a, k).map(|v| v.values().map(|x| x - r.value).collect()).unwrap_or_default();
                let band = Band { lo: -c.tolerance, hi: c.tolerance, strict: false };
                let (o, why) = decide(&diffs, shown(&s) - r.value, &band);
                points.push((o, line + &why));
            }
        }
    }
    // A cell whose method did not reach its own stopping criterion is not a
    // result: the claim is undecided there.
    for m in std::iter::once(&c.a).chain(c.b.as_ref()) {
        for (k, (bad, n)) in agg.not_converged.get(m).into_iter().flatten().filter(|(k, _)| in_range(c, **k)) {
            points.push((Outcome::Open, format!("{}: {m} not converged ({bad} of {n} seeds)", pct(*k))));
        }
    }
    let lines = |o: Outcome| points.iter().filter(|p| p.0 == o).map(|p| p.1.as_str()).collect::<Vec<_>>();
    let (held, failed, open) = (lines(Outcome::Held), lines(Outcome::Failed), lines(Outcome::Open));
    let verdict = if points.is_empty() {
        Verdict::NoData
    } else if !failed.is_empty() {
        Verdict::Fails
    } else if !open.is_empty() {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    let also = |name: &str, v: &[&str]| if v.is_empty() { String::new() } else { format!("; {name} {}", v.join("; ")) };
    let evidence = match verdict {
        Verdict::NoData => "no sparsity to compare at".to_string(),
        Verdict::Pass => format!("holds at all {} points ({})", held.len(), held.join("; ")),
        Verdict::Fails => format!(
            "fails at {} of {} points: {}{}{}",
            failed.len(),
            points.len(),
            failed.join("; "),
            also("undecided at", &open),
            also("holds at", &held)
        ),
        Verdict::Inconclusive => format!(
            "undecided at {} of {} points (the interval contains the bound): {}{}",
            open.len(),
            points.len(),
            open.join("; "),
            also("holds at", &held)
        ),
    };
    (verdict, evidence)
}

/// Every claim checked on every section it applies to: (claim, section
/// label, verdict, evidence).
pub fn check_claims<'a>(spec: &'a Spec, sections: &'a [Section]) -> Vec<(&'a Claim, &'a str, Verdict, String)> {
    let mut out = Vec::new();
    for c in &spec.claim {
        for s in sections {
            let task = s.aggs.first().map_or("", |a| a.task.as_str());
            if c.task.as_deref().is_some_and(|t| t != task) {
                continue;
            }
            let (v, evidence) = check_claim(spec, &s.aggs, c);
            out.push((c, s.label.as_str(), v, evidence));
        }
    }
    out
}

pub(super) fn claims_markdown(spec: &Spec, sections: &[Section]) -> String {
    if spec.claim.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Claims checked against our numbers\n\nDecided per sparsity from the per-seed paired differences and \
         their 95% confidence interval (PASS: the interval is on the claimed side; FAILS: on the other side; \
         INCONCLUSIVE: it contains the bound); with one seed, from the means.\n\n",
    );
    for (c, label, v, evidence) in check_claims(spec, sections) {
        let column = c.metric.as_deref().unwrap_or(&spec.table.metrics[0]);
        // The section's own name for the column (`f1` where it is `accuracy`).
        let metric = sections
            .iter()
            .find(|s| s.label == label)
            .and_then(|s| s.aggs.iter().find(|a| a.column == column))
            .map_or(column, |a| a.metric.as_str());
        let tol = if c.tolerance != 0.0 { format!(", tolerance {} points", c.tolerance) } else { String::new() };
        let on = if label.is_empty() { String::new() } else { format!("{label}, ") };
        md += &format!("- **{}** — {} ({on}{metric}{tol}): {evidence}.\n", v.word(), c.text);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::aggregate::aggregate;
    use crate::table::fixtures::{point, SPEC};
    use crate::table::spec::{parse_spec, Reference};

    #[test]
    fn claims_are_checked_on_seed_means() {
        let mut spec = parse_spec(SPEC).unwrap();
        let points = vec![
            point("dense", 0.0, 98.0, 0),
            point("dense", 0.0, 98.2, 1),
            point("a", 0.5, 97.0, 0),
            point("a", 0.5, 97.4, 1),
            point("b", 0.5, 96.0, 0),
            point("a", 0.9, 90.0, 0),
            point("b", 0.9, 91.0, 0),
        ];
        let agg = aggregate(&points, "", "accuracy", "accuracy");
        let s = agg.cells["a"][&500];
        assert!((s.mean - 97.2).abs() < 1e-9 && (s.std - 0.2828427).abs() < 1e-6 && s.n == 2);
        assert_eq!(s.text(), "97.20 ± 0.28");
        assert!((agg.dense.unwrap().mean - 98.1).abs() < 1e-9);
        let (v, why) = check_claim(&spec, std::slice::from_ref(&agg), &spec.claim[0]);
        assert_eq!(v, Verdict::Fails, "{why}");
        assert!(why.contains("90.0%: 90.00 vs 91.00"), "{why}");
        spec.claim[0].max_sparsity = Some(0.6);
        assert_eq!(check_claim(&spec, std::slice::from_ref(&agg), &spec.claim[0]).0, Verdict::Pass);
        spec.claim[0].min_sparsity = Some(0.95);
        assert_eq!(check_claim(&spec, std::slice::from_ref(&agg), &spec.claim[0]).0, Verdict::NoData);
        let within = Claim {
            text: "a within 1 of dense".into(),
            kind: ClaimKind::WithinDense,
            a: "a".into(),
            b: None,
            tolerance: 1.0,
            min_sparsity: None,
            max_sparsity: Some(0.6),
            metric: None,
            task: None,
        };
        // Two seeds: a − dense + 1 = 0.0 and 0.2, whose interval (t = 12.7)
        // reaches below 0: undecided.
        let (v, why) = check_claim(&spec, std::slice::from_ref(&agg), &within);
        assert_eq!(v, Verdict::Inconclusive, "{why}");
        assert!(why.contains("over 2 seeds"), "{why}");
        // One dense model shared by every seed: each seed's difference from
        // it (97.0 − 97.3, 97.4 − 97.3, 97.2 − 97.3 over three seeds).
        let shared = [
            point("dense", 0.0, 97.3, 0),
            point("a", 0.5, 97.0, 0),
            point("a", 0.5, 97.4, 1),
            point("a", 0.5, 97.2, 2),
        ];
        let one = aggregate(&shared, "", "accuracy", "accuracy");
        let (v, why) = check_claim(&spec, std::slice::from_ref(&one), &within);
        assert_eq!(v, Verdict::Pass, "{why}");
        assert!(why.contains("difference -0.10") && why.contains("over 3 seeds"), "{why}");
        spec.reference.push(Reference {
            method: "a".into(),
            sparsity: 0.88,
            metric: None,
            value: 92.0,
            source: "x".into(),
            task: None,
        });
        let near = Claim { kind: ClaimKind::NearPaper, tolerance: 1.0, max_sparsity: None, ..within };
        let (v, why) = check_claim(&spec, std::slice::from_ref(&agg), &near);
        assert_eq!(v, Verdict::Fails);
        assert!(why.contains("paper 92.00 at 88.0%, ours 90.00 at 90.0%"), "{why}");
    }

    /// Paired differences over three seeds: a consistent advantage passes, a
    /// consistent disadvantage fails, a mixed one is undecided, although the
    /// means differ in all three cases.
    #[test]
    fn claims_with_seeds_are_decided_by_the_paired_interval() {
        let spec = parse_spec(SPEC).unwrap();
        let run = |a: [f64; 3], b: [f64; 3]| {
            let mut points = Vec::new();
            for s in 0..3 {
                points.push(point("a", 0.5, a[s], s as u64));
                points.push(point("b", 0.5, b[s], s as u64));
            }
            let agg = aggregate(&points, "", "accuracy", "accuracy");
            let mut claim = spec.claim[0].clone();
            claim.max_sparsity = Some(0.6);
            check_claim(&spec, std::slice::from_ref(&agg), &claim)
        };
        // Seeds differ a lot from each other, but a is 1 point above b on each.
        let (v, why) = run([90.0, 95.0, 85.0], [89.0, 94.1, 83.9]);
        assert_eq!(v, Verdict::Pass, "{why}");
        assert!(why.contains("over 3 seeds"), "{why}");
        assert_eq!(run([89.0, 94.1, 83.9], [90.0, 95.0, 85.0]).0, Verdict::Fails);
        // Mean difference +1, but one seed has a below b.
        let (v, why) = run([92.0, 93.0, 88.0], [89.0, 90.0, 91.0]);
        assert_eq!(v, Verdict::Inconclusive, "{why}");
    }

    #[test]
    fn t_quantiles() {
        use crate::table::aggregate::t975;
        assert_eq!(t975(2), 4.303);
        assert!((t975(60) - 2.000).abs() < 0.003);
        let s = Stat::of(&[1.0, 2.0, 3.0]);
        let (lo, hi) = s.interval().unwrap();
        assert!((lo - (2.0 - 4.303 / 3f64.sqrt())).abs() < 1e-9 && (hi - (2.0 + 4.303 / 3f64.sqrt())).abs() < 1e-9);
    }
}
