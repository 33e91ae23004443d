//! The axes: value ranges (every mean ± spread, the dense line and the
//! paper's values stay inside), "nice" ticks, and the mapping from data to
//! pixels of the plot area.

use super::{PlotData, XScale};

/// Axis ranges, ticks and the plot area in pixels.
pub(super) struct Axes {
    pub x_ticks: Vec<(f64, String)>,
    pub y_ticks: Vec<(f64, String)>,
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
    pub log: bool,
    log_y: bool,
    x_label: String,
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `n` ticks over `span`.
pub(super) fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

pub(super) fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

impl Axes {
    /// The axes of `d` drawn in the rectangle `left..right` × `top..bottom`.
    pub fn new(d: &PlotData, (left, right, top, bottom): (f64, f64, f64, f64)) -> Axes {
        let mut ys: Vec<f64> =
            d.series.iter().flat_map(|s| s.points.iter().flat_map(|p| [p.1 - p.2, p.1 + p.2])).collect();
        ys.extend(d.dense);
        ys.extend(d.paper.iter().map(|p| p.value));
        if d.log_y {
            ys = ys.iter().filter(|v| **v > 0.0).map(|v| v.log10()).collect();
        }
        ys.retain(|v| v.is_finite());
        let (y_min, y_max, y_ticks) = if d.log_y { log_range(&ys) } else { linear_range(&ys, 6.0, false) };
        let xs: Vec<f64> = d
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .chain(d.paper.iter().map(|p| p.sparsity))
            .filter(|x| x.is_finite())
            .collect();
        let (x_min, x_max, x_ticks, log) = match &d.x {
            XScale::WeightsLeftLog => {
                // x = log10(weights left %), drawn so sparsity grows to the right.
                // A margin below the fewest weights left, so no point sits on the frame.
                let min_left = xs.iter().map(|s| 100.0 - s).fold(100.0f64, f64::min).max(0.01);
                let lo = min_left / 1.3;
                let ticks = [100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
                    .iter()
                    .filter(|t| **t >= lo)
                    .map(|t| (t.log10(), if *t >= 1.0 { format!("{t}") } else { format!("{t:.2}") }))
                    .collect();
                (lo.log10(), 2.0, ticks, true)
            }
            XScale::Sparsity => {
                let hi = xs.iter().fold(0.0f64, |a, b| a.max(*b));
                let x_max = if hi <= 0.0 { 100.0 } else { (((hi + 2.0) / 10.0).ceil() * 10.0).min(100.0) };
                let step = nice_step(x_max, 8.0);
                let ticks = (0..)
                    .map(|i| i as f64 * step)
                    .take_while(|v| *v <= x_max + 1e-9)
                    .map(|v| (v, fmt_tick(v, step)))
                    .collect();
                (0.0, x_max, ticks, false)
            }
            XScale::Linear { .. } => {
                let (lo, hi, ticks) = linear_range(&xs, 8.0, true);
                (lo, hi, ticks, false)
            }
        };
        let x_label = match &d.x {
            XScale::Sparsity => "sparsity (%)".to_string(),
            XScale::WeightsLeftLog => "weights left (%, log scale)".to_string(),
            XScale::Linear { label } => label.clone(),
        };
        Axes { x_ticks, y_ticks, x_min, x_max, y_min, y_max, log, log_y: d.log_y, x_label, left, right, top, bottom }
    }

    /// Pixel x of a data x (sparsity % on the sparsity axes).
    pub fn px(&self, sparsity: f64) -> f64 {
        if self.log {
            self.tick_px((100.0 - sparsity).max(1e-3).log10())
        } else {
            self.tick_px(sparsity)
        }
    }

    /// Pixel x of a tick position (in axis units: sparsity %, log10 of
    /// weights left %, or the data's own).
    pub fn tick_px(&self, t: f64) -> f64 {
        let (l, r) = (self.left, self.right);
        if self.log {
            l + (self.x_max - t) / (self.x_max - self.x_min) * (r - l)
        } else {
            l + (t - self.x_min) / (self.x_max - self.x_min) * (r - l)
        }
    }

    /// Pixel y of a value (NaN for a value ≤ 0 on a log axis).
    pub fn py(&self, v: f64) -> f64 {
        self.tick_py(match self.log_y {
            false => v,
            true if v > 0.0 => v.log10(),
            true => f64::NAN,
        })
    }

    /// Pixel y of a tick position (axis units: log10 of the value on a log axis).
    pub fn tick_py(&self, t: f64) -> f64 {
        self.bottom - (t - self.y_min) / (self.y_max - self.y_min) * (self.bottom - self.top)
    }

    pub fn x_label(&self) -> &str {
        &self.x_label
    }
}

/// The smallest and largest of `vs`; (0, 1) when it is empty.
fn extent(vs: &[f64]) -> (f64, f64) {
    let (lo, hi) = vs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// A linear range over `vs` rounded out to "nice" ticks (about `n`), and
/// the ticks; `tight` rounds to the nearest tick instead of padding a
/// degenerate range by ±0.5.
fn linear_range(vs: &[f64], n: f64, tight: bool) -> (f64, f64, Vec<(f64, String)>) {
    let (mut lo, mut hi) = extent(vs);
    if hi - lo < 1e-6 {
        let pad = if tight { lo.abs().max(1.0) * 0.05 } else { 0.5 };
        lo -= pad;
        hi += pad;
    }
    let step = nice_step(hi - lo, n);
    let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    let ticks = (0..)
        .map(|i| lo + i as f64 * step)
        .take_while(|v| *v <= hi + step * 1e-6)
        .map(|v| (v, fmt_tick(v, step)))
        .collect();
    (lo, hi, ticks)
}

/// A log range (in log10 units) over `vs` (already log10), whole decades,
/// and a tick at each decade (with 2 and 5 between when it spans at most two).
fn log_range(vs: &[f64]) -> (f64, f64, Vec<(f64, String)>) {
    let (lo, hi) = extent(vs);
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let label = |v: f64| {
        let x = 10f64.powf(v);
        if (1e-3..1e5).contains(&x) {
            let s = format!("{x:.3}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            format!("1e{}", v.round() as i64)
        }
    };
    let mut ticks = Vec::new();
    for d in lo as i64..=hi as i64 {
        ticks.push((d as f64, label(d as f64)));
        if hi - lo <= 2.0 && (d as f64) < hi {
            for m in [2.0f64, 5.0] {
                let t = d as f64 + m.log10();
                ticks.push((t, label(t)));
            }
        }
    }
    (lo, hi, ticks)
}
