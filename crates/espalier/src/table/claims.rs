//! The spec's claims checked against our numbers: a [`Verdict`] (PASS,
//! FAILS, NO DATA) and its evidence per claim and section, and the
//! report's claims list.

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
    /// No point to check.
    NoData,
}

impl Verdict {
    pub(super) fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fails => "FAILS",
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

/// Checks a claim on its metric (default: the primary one) over the
/// aggregates of every metric: the verdict and the evidence.
pub fn check_claim(spec: &Spec, aggs: &[Aggregate], c: &Claim) -> (Verdict, String) {
    let metric = c.metric.as_deref().unwrap_or(&spec.table.metrics[0]);
    let Some(agg) = aggs.iter().find(|a| a.column == metric) else {
        return (Verdict::NoData, format!("no `{metric}` values"));
    };
    let empty = BTreeMap::new();
    let a = agg.cells.get(&c.a).unwrap_or(&empty);
    let mut held = Vec::new();
    let mut failed = Vec::new();
    match c.kind {
        ClaimKind::Beats => {
            let b_name = c.b.clone().unwrap_or_default();
            let b = agg.cells.get(&b_name).unwrap_or(&empty);
            for (k, sa) in a.iter().filter(|(k, _)| in_range(c, **k)) {
                let Some(sb) = b.get(k) else { continue };
                let line = format!("{}: {:.2} vs {:.2}", pct(*k), sa.mean, sb.mean);
                if shown(sa) > shown(sb) + c.tolerance {
                    held.push(line);
                } else {
                    failed.push(line);
                }
            }
        }
        ClaimKind::WithinDense => {
            if let Some(d) = agg.dense {
                for (k, sa) in a.iter().filter(|(k, _)| in_range(c, **k)) {
                    let line = format!("{}: {:.2} vs dense {:.2}", pct(*k), sa.mean, d.mean);
                    if shown(sa) >= shown(&d) - c.tolerance {
                        held.push(line);
                    } else {
                        failed.push(line);
                    }
                }
            }
        }
        ClaimKind::NearPaper => {
            for r in spec.reference.iter().filter(|r| r.method == c.a && reference_for(spec, r, agg)) {
                let Some((k, s)) = nearest(agg, &c.a, r.sparsity) else { continue };
                let line =
                    format!("paper {:.2} at {}, ours {:.2} at {}", r.value, pct(key(r.sparsity)), s.mean, pct(k));
                if (shown(&s) - r.value).abs() <= c.tolerance + 1e-9 {
                    held.push(line);
                } else {
                    failed.push(line);
                }
            }
        }
    }
    let verdict = if held.is_empty() && failed.is_empty() {
        Verdict::NoData
    } else if failed.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fails
    };
    let evidence = match verdict {
        Verdict::NoData => "no sparsity to compare at".to_string(),
        Verdict::Pass => format!("holds at all {} points ({})", held.len(), held.join("; ")),
        Verdict::Fails => format!(
            "fails at {} of {} points: {}{}",
            failed.len(),
            held.len() + failed.len(),
            failed.join("; "),
            if held.is_empty() { String::new() } else { format!("; holds at {}", held.join("; ")) }
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
    let mut md = String::from("\n## Claims checked against our numbers (means over seeds)\n\n");
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
        assert_eq!(check_claim(&spec, std::slice::from_ref(&agg), &within).0, Verdict::Pass);
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
}
