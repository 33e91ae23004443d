//! Metric-vs-sparsity line plots as SVG (text) and PNG (a small
//! rasterizer, a built-in 5×7 bitmap font, zlib via flate2), both from the
//! same layout and both deterministic: the same data gives the same bytes.

use std::io::Write;

/// One method's line: (sparsity %, mean, std) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (sparsity in percent, mean, standard deviation), by sparsity.
    pub points: Vec<(f64, f64, f64)>,
}

/// A plot.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotData {
    /// Title.
    pub title: String,
    /// The metric.
    pub y_label: String,
    /// x = weights left on a log scale instead of sparsity, linear.
    pub log_weights_left: bool,
    /// The methods.
    pub series: Vec<Series>,
    /// The dense reference (a dashed line).
    pub dense: Option<f64>,
}

const W: usize = 960;
const H: usize = 600;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 660.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 530.0;
const COLORS: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
];
const GRAY: (u8, u8, u8) = (120, 120, 120);
const LIGHT: (u8, u8, u8) = (225, 225, 225);
const BLACK: (u8, u8, u8) = (0, 0, 0);

/// Where things go: axis ranges, ticks, pixel mapping.
struct Layout {
    x_ticks: Vec<(f64, String)>,
    y_ticks: Vec<(f64, String)>,
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
    log: bool,
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

impl Layout {
    fn new(d: &PlotData) -> Layout {
        let mut ys: Vec<f64> =
            d.series.iter().flat_map(|s| s.points.iter().flat_map(|p| [p.1 - p.2, p.1 + p.2])).collect();
        ys.extend(d.dense);
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
        let xs: Vec<f64> = d.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
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
        Layout { x_ticks, y_ticks, x_min, x_max, y_min, y_max, log }
    }

    /// Pixel x of a sparsity (percent).
    fn px(&self, sparsity: f64) -> f64 {
        if self.log {
            let u = (100.0 - sparsity).max(1e-3).log10();
            LEFT + (self.x_max - u) / (self.x_max - self.x_min) * (RIGHT - LEFT)
        } else {
            LEFT + (sparsity - self.x_min) / (self.x_max - self.x_min) * (RIGHT - LEFT)
        }
    }

    /// Pixel x of a tick position (in axis units).
    fn tick_px(&self, t: f64) -> f64 {
        if self.log {
            LEFT + (self.x_max - t) / (self.x_max - self.x_min) * (RIGHT - LEFT)
        } else {
            self.px(t)
        }
    }

    fn py(&self, v: f64) -> f64 {
        BOTTOM - (v - self.y_min) / (self.y_max - self.y_min) * (BOTTOM - TOP)
    }

    fn x_label(&self) -> &'static str {
        if self.log {
            "weights left (%, log scale)"
        } else {
            "sparsity (%)"
        }
    }
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The plot as SVG text.
pub fn svg(d: &PlotData) -> String {
    let l = Layout::new(d);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"monospace\" font-size=\"14\">\n<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n"
    );
    s += &format!("<text x=\"{LEFT}\" y=\"28\" font-size=\"16\">{}</text>\n", escape(&d.title));
    for (v, t) in &l.y_ticks {
        let y = l.py(*v);
        s += &format!("<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{RIGHT}\" y2=\"{y:.1}\" stroke=\"{}\"/>\n", hex(LIGHT));
        s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>\n", LEFT - 8.0, y + 5.0);
    }
    for (v, t) in &l.x_ticks {
        let x = l.tick_px(*v);
        s += &format!("<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{BOTTOM}\" stroke=\"{}\"/>\n", hex(LIGHT));
        s += &format!("<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>\n", BOTTOM + 20.0);
    }
    s += &format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n",
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 48.0,
        l.x_label()
    );
    s += &format!("<text x=\"{LEFT}\" y=\"{:.1}\">{}</text>\n", TOP - 10.0, escape(&d.y_label));
    if let Some(v) = d.dense {
        let y = l.py(v);
        s += &format!(
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{RIGHT}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"2\" stroke-dasharray=\"8 6\"/>\n",
            hex(GRAY)
        );
    }
    for (i, series) in d.series.iter().enumerate() {
        let c = hex(COLORS[i % COLORS.len()]);
        let pts: Vec<String> = series.points.iter().map(|p| format!("{:.1},{:.1}", l.px(p.0), l.py(p.1))).collect();
        if pts.len() > 1 {
            s += &format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>\n", pts.join(" "));
        }
        for p in &series.points {
            let (x, y) = (l.px(p.0), l.py(p.1));
            if p.2 > 0.0 {
                s += &format!(
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{c}\"/>\n",
                    l.py(p.1 - p.2),
                    l.py(p.1 + p.2)
                );
            }
            s += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{c}\"/>\n");
        }
    }
    for (i, (label, color, dashed)) in legend(d).iter().enumerate() {
        let y = TOP + 10.0 + 24.0 * i as f64;
        let x = RIGHT + 20.0;
        let dash = if *dashed { " stroke-dasharray=\"8 6\"" } else { "" };
        s += &format!(
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\n",
            x + 30.0,
            hex(*color)
        );
        s += &format!("<text x=\"{}\" y=\"{}\">{}</text>\n", x + 38.0, y + 5.0, escape(label));
    }
    s += "</svg>\n";
    s
}

/// Legend entries: (label, colour, dashed).
fn legend(d: &PlotData) -> Vec<(String, (u8, u8, u8), bool)> {
    let mut v: Vec<_> =
        d.series.iter().enumerate().map(|(i, s)| (s.label.clone(), COLORS[i % COLORS.len()], false)).collect();
    if d.dense.is_some() {
        v.push(("dense".into(), GRAY, true));
    }
    v
}

/// An RGB image.
struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas { px: vec![255; W * H * 3] }
    }

    fn set(&mut self, x: i64, y: i64, c: (u8, u8, u8)) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&[c.0, c.1, c.2]);
        }
    }

    /// A line `width` pixels thick; `dash` = (on, off) lengths in pixels.
    fn line(
        &mut self,
        (x0, y0): (f64, f64),
        (x1, y1): (f64, f64),
        c: (u8, u8, u8),
        width: i64,
        dash: Option<(f64, f64)>,
    ) {
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let steps = (len.ceil() as usize).max(1) * 2;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            if let Some((on, off)) = dash {
                if (t * len) % (on + off) >= on {
                    continue;
                }
            }
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            let (xi, yi) = (x.round() as i64, y.round() as i64);
            for dx in 0..width {
                for dy in 0..width {
                    self.set(xi + dx - width / 2, yi + dy - width / 2, c);
                }
            }
        }
    }

    fn disc(&mut self, (cx, cy): (f64, f64), r: f64, c: (u8, u8, u8)) {
        let (x0, y0) = (cx.round() as i64, cy.round() as i64);
        let ri = r.ceil() as i64;
        for dy in -ri..=ri {
            for dx in -ri..=ri {
                if ((dx * dx + dy * dy) as f64) <= r * r + 0.5 {
                    self.set(x0 + dx, y0 + dy, c);
                }
            }
        }
    }

    /// Text with the 5×7 font at `scale`; `anchor` 0 = left, 1 = centre, 2 = right;
    /// `y` is the baseline.
    fn text(&mut self, s: &str, x: f64, y: f64, scale: i64, anchor: u8, c: (u8, u8, u8)) {
        let n = s.chars().count() as i64;
        let width = n * 6 * scale;
        let x0 = x.round() as i64
            - match anchor {
                1 => width / 2,
                2 => width,
                _ => 0,
            };
        let top = y.round() as i64 - 7 * scale;
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        for sy in 0..scale {
                            for sx in 0..scale {
                                self.set(
                                    x0 + i as i64 * 6 * scale + col * scale + sx,
                                    top + row as i64 * scale + sy,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 5×7 glyph of a character (lower case drawn as upper case; unknown
/// characters as a box).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' | '–' | '—' | '−' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        ';' => [0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '@' => [0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E],
        '±' => [0x04, 0x04, 0x1F, 0x04, 0x04, 0, 0x1F],
        '\'' => [0x0C, 0x04, 0x08, 0, 0, 0, 0],
        '"' => [0x0A, 0x0A, 0x0A, 0, 0, 0, 0],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '&' => [0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D],
        '*' => [0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0, 0x04],
        '?' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
        '×' => [0, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// The plot rasterized, as PNG bytes.
pub fn png(d: &PlotData) -> std::io::Result<Vec<u8>> {
    let l = Layout::new(d);
    let mut c = Canvas::new();
    c.text(&d.title, LEFT, 32.0, 2, 0, BLACK);
    for (v, t) in &l.y_ticks {
        let y = l.py(*v);
        c.line((LEFT, y), (RIGHT, y), LIGHT, 1, None);
        c.text(t, LEFT - 8.0, y + 7.0, 2, 2, BLACK);
    }
    for (v, t) in &l.x_ticks {
        let x = l.tick_px(*v);
        c.line((x, TOP), (x, BOTTOM), LIGHT, 1, None);
        c.text(t, x, BOTTOM + 24.0, 2, 1, BLACK);
    }
    for (a, b) in [
        ((LEFT, TOP), (RIGHT, TOP)),
        ((RIGHT, TOP), (RIGHT, BOTTOM)),
        ((RIGHT, BOTTOM), (LEFT, BOTTOM)),
        ((LEFT, BOTTOM), (LEFT, TOP)),
    ] {
        c.line(a, b, BLACK, 1, None);
    }
    c.text(l.x_label(), (LEFT + RIGHT) / 2.0, BOTTOM + 54.0, 2, 1, BLACK);
    c.text(&d.y_label, LEFT, TOP - 10.0, 2, 0, BLACK);
    if let Some(v) = d.dense {
        let y = l.py(v);
        c.line((LEFT, y), (RIGHT, y), GRAY, 2, Some((8.0, 6.0)));
    }
    for (i, s) in d.series.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        for w in s.points.windows(2) {
            c.line((l.px(w[0].0), l.py(w[0].1)), (l.px(w[1].0), l.py(w[1].1)), col, 2, None);
        }
        for p in &s.points {
            let x = l.px(p.0);
            if p.2 > 0.0 {
                c.line((x, l.py(p.1 - p.2)), (x, l.py(p.1 + p.2)), col, 1, None);
            }
            c.disc((x, l.py(p.1)), 4.0, col);
        }
    }
    for (i, (label, col, dashed)) in legend(d).iter().enumerate() {
        let y = TOP + 10.0 + 24.0 * i as f64;
        let x = RIGHT + 20.0;
        c.line((x, y), (x + 30.0, y), *col, 2, dashed.then_some((8.0, 6.0)));
        let short: String = label.chars().take(20).collect();
        c.text(&short, x + 38.0, y + 7.0, 2, 0, BLACK);
    }
    encode_png(&c.px, W, H)
}

/// CRC-32 (IEEE), as PNG chunks need it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Encodes 8-bit RGB pixels as a PNG (filter "Up" on every row, zlib).
fn encode_png(rgb: &[u8], w: usize, h: usize) -> std::io::Result<Vec<u8>> {
    let stride = w * 3;
    let mut raw = Vec::with_capacity((stride + 1) * h);
    for y in 0..h {
        raw.push(2); // Up: the difference to the row above.
        let row = &rgb[y * stride..(y + 1) * stride];
        if y == 0 {
            raw.extend_from_slice(row);
        } else {
            let prev = &rgb[(y - 1) * stride..y * stride];
            raw.extend(row.iter().zip(prev).map(|(a, b)| a.wrapping_sub(*b)));
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&raw)?;
    let idat = z.finish()?;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filters, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> PlotData {
        PlotData {
            title: "Test plot".into(),
            y_label: "accuracy".into(),
            log_weights_left: false,
            series: vec![
                Series { label: "a".into(), points: vec![(20.0, 97.0, 0.1), (50.0, 96.0, 0.0)] },
                Series { label: "b & c".into(), points: vec![(20.0, 95.0, 0.0), (50.0, 90.0, 0.3)] },
            ],
            dense: Some(98.0),
        }
    }

    #[test]
    fn crc_matches_the_png_reference() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn png_and_svg_are_deterministic_and_well_formed() {
        let d = data();
        let p = png(&d).unwrap();
        assert_eq!(p, png(&d).unwrap());
        assert!(p.starts_with(b"\x89PNG\r\n\x1a\n") && p.ends_with(&[0xAE, 0x42, 0x60, 0x82]));
        let s = svg(&d);
        assert_eq!(s, svg(&d));
        assert!(s.contains("b &amp; c") && s.matches("<polyline").count() == 2, "{s}");
        let mut log = d.clone();
        log.log_weights_left = true;
        assert!(svg(&log).contains("weights left"));
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.7, 6.0), 0.2);
        assert_eq!(fmt_tick(0.4, 0.2), "0.4");
    }
}
