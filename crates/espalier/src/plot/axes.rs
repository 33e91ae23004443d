//! The axes: value ranges (every mean ± spread, the dense line and the
//! paper's values stay inside), "nice" ticks, and the mapping from data to
//! pixels of the plot area.

use super::PlotData;

/// Axis ranges, ticks and the plot area in pixels.
pub(super) struct Axes {
    pub x_ticks: Vec<(f64, String)>,
    pub y_ticks: Vec<(f64, String)>,
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
    pub log: bool,
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
        ys.retain(|v| v.is_finite());
        let (mut y_min, mut y_max) =
            ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
        if !y_min.is_finite() {
            (y_min, y_max) = (0.0, 1.0);
        }
        if y_max - y_min < 1e-6 {
            y_min -= 0.5;
            y_max += 0.5;
        }
        let step = nice_step(y_max - y_min, 6.0);
        let y_min = (y_min / step).floor() * step;
        let y_max = (y_max / step).ceil() * step;
        let y_ticks = (0..)
            .map(|i| y_min + i as f64 * step)
            .take_while(|v| *v <= y_max + step * 1e-6)
            .map(|v| (v, fmt_tick(v, step)))
            .collect();
        let xs: Vec<f64> = d
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .chain(d.paper.iter().map(|p| p.sparsity))
            .collect();
        let (x_min, x_max, x_ticks, log) = if d.log_weights_left {
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
        } else {
            let hi = xs.iter().fold(0.0f64, |a, b| a.max(*b));
            let x_max = if hi <= 0.0 { 100.0 } else { (((hi + 2.0) / 10.0).ceil() * 10.0).min(100.0) };
            let step = nice_step(x_max, 8.0);
            let ticks = (0..)
                .map(|i| i as f64 * step)
                .take_while(|v| *v <= x_max + 1e-9)
                .map(|v| (v, fmt_tick(v, step)))
                .collect();
            (0.0, x_max, ticks, false)
        };
        Axes { x_ticks, y_ticks, x_min, x_max, y_min, y_max, log, left, right, top, bottom }
    }

    /// Pixel x of a sparsity (percent).
    pub fn px(&self, sparsity: f64) -> f64 {
        if self.log {
            self.tick_px((100.0 - sparsity).max(1e-3).log10())
        } else {
            self.tick_px(sparsity)
        }
    }

    /// Pixel x of a tick position (in axis units: sparsity %, or log10 of weights left %).
    pub fn tick_px(&self, t: f64) -> f64 {
        let (l, r) = (self.left, self.right);
        if self.log {
            l + (self.x_max - t) / (self.x_max - self.x_min) * (r - l)
        } else {
            l + (t - self.x_min) / (self.x_max - self.x_min) * (r - l)
        }
    }

    /// Pixel y of a metric value.
    pub fn py(&self, v: f64) -> f64 {
        self.bottom - (v - self.y_min) / (self.y_max - self.y_min) * (self.bottom - self.top)
    }

    pub fn x_label(&self) -> &'static str {
        if self.log {
            "weights left (%, log scale)"
        } else {
            "sparsity (%)"
        }
    }
}
