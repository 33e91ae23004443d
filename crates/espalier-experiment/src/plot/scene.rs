//! The layout of a plot as a list of shapes in pixels: the wrapped title,
//! grid and ticks, the seeds' spread (a shaded band and error bars), the
//! dense line, the methods' lines and points, the paper's values, the
//! legend and its note. The SVG and PNG backends draw the same list.

use super::axes::Axes;
use super::text::{width, wrap};
use super::{PlotData, XScale};

/// An RGB colour.
pub(super) type Rgb = (u8, u8, u8);

/// Where a text's `x` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Anchor {
    Start,
    Middle,
    End,
}

/// One thing drawn. `tag` names what it shows (the SVG's `class`).
#[derive(Clone, Debug)]
pub(super) enum Shape {
    /// A straight line; `dash` = (on, off) lengths in pixels.
    Line { a: (f64, f64), b: (f64, f64), color: Rgb, width: f64, dash: Option<(f64, f64)>, tag: &'static str },
    /// Connected segments with round joins.
    Polyline { pts: Vec<(f64, f64)>, color: Rgb, width: f64, tag: &'static str },
    /// A filled polygon, `opacity` in 0..=1.
    Polygon { pts: Vec<(f64, f64)>, color: Rgb, opacity: f64, tag: &'static str },
    /// A filled disc.
    Circle { c: (f64, f64), r: f64, color: Rgb, tag: &'static str },
    /// A hollow diamond, white inside: its outline `width` wide, centred on
    /// the corners `r` from the centre.
    Diamond { c: (f64, f64), r: f64, width: f64, color: Rgb, tag: &'static str },
    /// One line of text, `y` its baseline, `size` the em size in pixels.
    Text { x: f64, y: f64, text: String, size: f64, bold: bool, anchor: Anchor, color: Rgb },
}

/// A plot laid out: its size in pixels and its shapes, back to front.
pub(super) struct Scene {
    pub w: usize,
    pub h: usize,
    pub shapes: Vec<Shape>,
}

/// Image width.
pub(super) const W: f64 = 960.0;
const MARGIN: f64 = 20.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 660.0;
const PLOT_H: f64 = 440.0;
const LEGEND_X: f64 = RIGHT + 24.0;
const LEGEND_W: f64 = W - MARGIN - LEGEND_X;
/// Title: bold, its em size and line spacing.
pub(super) const TITLE_SIZE: f64 = 19.0;
const TITLE_LEAD: f64 = 25.0;
const LABEL_SIZE: f64 = 15.0;
const TICK_SIZE: f64 = 13.0;
const LEGEND_SIZE: f64 = 14.0;
const LEGEND_LEAD: f64 = 18.0;
const NOTE_SIZE: f64 = 12.5;
const NOTE_LEAD: f64 = 16.0;
/// The widest a title line may be.
pub(super) const TITLE_MAX: f64 = W - 2.0 * MARGIN;

const COLORS: [Rgb; 8] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
];
const GRAY: Rgb = (110, 110, 110);
const GRID: Rgb = (228, 228, 228);
const INK: Rgb = (25, 25, 25);
const NOTE: Rgb = (85, 85, 85);
const DENSE_DASH: (f64, f64) = (8.0, 5.0);
const BAND_OPACITY: f64 = 0.16;

/// The colour of the `i`th series.
/// Horizontal distance between the points of two methods at one sparsity (px).
const DODGE: f64 = 7.0;

pub(super) fn color(i: usize) -> Rgb {
    COLORS[i % COLORS.len()]
}

/// A horizontal or vertical 1-pixel line's coordinate, on a pixel's centre.
fn crisp(v: f64) -> f64 {
    v.floor() + 0.5
}

fn text(x: f64, y: f64, s: &str, size: f64, anchor: Anchor, color: Rgb) -> Shape {
    Shape::Text { x, y, text: s.to_string(), size, bold: false, anchor, color }
}

/// The dense reference's dashed grey line from `a` to `b`.
fn dense_line(a: (f64, f64), b: (f64, f64), tag: &'static str) -> Shape {
    Shape::Line { a, b, color: GRAY, width: 1.8, dash: Some(DENSE_DASH), tag }
}

/// What a legend entry's symbol is.
enum Key {
    Series(Rgb),
    Dense,
    Paper,
}

/// Lays the plot out.
pub(super) fn build(d: &PlotData) -> Scene {
    let mut s: Vec<Shape> = Vec::new();
    let title = wrap(&d.title, TITLE_SIZE, true, TITLE_MAX);
    let title_base = MARGIN + 14.0;
    for (i, line) in title.iter().enumerate() {
        s.push(Shape::Text {
            x: MARGIN,
            y: title_base + TITLE_LEAD * i as f64,
            text: line.clone(),
            size: TITLE_SIZE,
            bold: true,
            anchor: Anchor::Start,
            color: INK,
        });
    }
    let y_label_base = (title_base + TITLE_LEAD * (title.len() - 1) as f64 + 32.0).round();
    let top = y_label_base + 12.0;
    let bottom = top + PLOT_H;
    let ax = Axes::new(d, (LEFT, RIGHT, top, bottom));

    // Grid and tick labels.
    for (v, t) in &ax.y_ticks {
        let y = crisp(ax.tick_py(*v));
        s.push(Shape::Line { a: (LEFT, y), b: (RIGHT, y), color: GRID, width: 1.0, dash: None, tag: "grid" });
        s.push(text(LEFT - 8.0, ax.tick_py(*v) + 4.5, t, TICK_SIZE, Anchor::End, INK));
    }
    for (v, t) in &ax.x_ticks {
        let x = crisp(ax.tick_px(*v));
        s.push(Shape::Line { a: (x, top), b: (x, bottom), color: GRID, width: 1.0, dash: None, tag: "grid" });
        s.push(text(ax.tick_px(*v), bottom + 19.0, t, TICK_SIZE, Anchor::Middle, INK));
    }
    s.push(text((LEFT + RIGHT) / 2.0, bottom + 44.0, ax.x_label(), LABEL_SIZE, Anchor::Middle, INK));
    s.push(text(LEFT, y_label_base, &d.y_label, LABEL_SIZE, Anchor::Start, INK));

    // Methods measured at the same sparsities are drawn a few pixels apart
    // (centred on the true position), so that their error bars never hide
    // one another. A trace on a linear axis is drawn where it is, as a line.
    let trace = matches!(d.x, XScale::Linear { .. });
    let n = if trace { 1 } else { d.series.len() };
    let dodge = |i: usize| if trace { 0.0 } else { (i as f64 - (n.max(1) - 1) as f64 / 2.0) * DODGE };
    let px = |i: usize, x: f64| ax.px(x) + dodge(i);

    // The seeds' spread under everything else.
    for (i, series) in d.series.iter().enumerate() {
        if series.points.len() > 1 && series.points.iter().any(|p| p.2 > 0.0) {
            let upper = series.points.iter().map(|p| (px(i, p.0), ax.py(p.1 + p.2)));
            let lower = series.points.iter().rev().map(|p| (px(i, p.0), ax.py(p.1 - p.2)));
            s.push(Shape::Polygon {
                pts: upper.chain(lower).collect(),
                color: color(i),
                opacity: BAND_OPACITY,
                tag: "band",
            });
        }
    }
    if let Some(v) = d.dense {
        let y = ax.py(v);
        s.push(dense_line((LEFT, y), (RIGHT, y), "dense"));
    }
    let (l, r, t, b) = (crisp(LEFT), crisp(RIGHT), crisp(top), crisp(bottom));
    for (a, z) in [((l, t), (r, t)), ((r, t), (r, b)), ((r, b), (l, b)), ((l, b), (l, t))] {
        s.push(Shape::Line { a, b: z, color: INK, width: 1.0, dash: None, tag: "frame" });
    }
    for (i, series) in d.series.iter().enumerate() {
        let c = color(i);
        if series.points.len() > 1 {
            let pts = series.points.iter().map(|p| (px(i, p.0), ax.py(p.1))).filter(|p| p.1.is_finite()).collect();
            s.push(Shape::Polyline { pts, color: c, width: 2.2, tag: "series" });
        }
        for p in series.points.iter().filter(|p| p.2 > 0.0) {
            let (x, lo, hi) = (px(i, p.0), ax.py(p.1 - p.2), ax.py(p.1 + p.2));
            s.push(Shape::Line { a: (x, lo), b: (x, hi), color: c, width: 1.4, dash: None, tag: "err" });
            for y in [lo, hi] {
                s.push(Shape::Line { a: (x - 4.0, y), b: (x + 4.0, y), color: c, width: 1.4, dash: None, tag: "err" });
            }
        }
        for p in series.points.iter().filter(|p| !trace && ax.py(p.1).is_finite()) {
            s.push(Shape::Circle { c: (px(i, p.0), ax.py(p.1)), r: 4.0, color: c, tag: "point" });
        }
    }
    for p in &d.paper {
        let c = p.series.map_or(GRAY, color);
        s.push(Shape::Diamond { c: (ax.px(p.sparsity), ax.py(p.value)), r: 7.0, width: 2.0, color: c, tag: "paper" });
    }

    // Legend, then the note on what the spread is, right of the plot.
    let mut keys: Vec<(String, Key)> =
        d.series.iter().enumerate().map(|(i, x)| (x.label.clone(), Key::Series(color(i)))).collect();
    if d.dense.is_some() {
        keys.push(("dense".into(), Key::Dense));
    }
    if !d.paper.is_empty() {
        keys.push(("the paper's values (in their method's colour)".into(), Key::Paper));
    }
    let mut y = top + 14.0;
    let text_x = LEGEND_X + 38.0;
    for (label, key) in keys {
        let (mid, ax0, ax1) = (y - 5.0, LEGEND_X, LEGEND_X + 30.0);
        match key {
            Key::Series(c) => {
                s.push(Shape::Line { a: (ax0, mid), b: (ax1, mid), color: c, width: 2.2, dash: None, tag: "legend" });
                if !trace {
                    s.push(Shape::Circle { c: ((ax0 + ax1) / 2.0, mid), r: 4.0, color: c, tag: "legend" });
                }
            }
            Key::Dense => s.push(dense_line((ax0, mid), (ax1, mid), "legend")),
            Key::Paper => {
                s.push(Shape::Diamond { c: ((ax0 + ax1) / 2.0, mid), r: 7.0, width: 2.0, color: GRAY, tag: "legend" })
            }
        }
        for line in wrap(&label, LEGEND_SIZE, false, W - MARGIN - text_x) {
            s.push(text(text_x, y, &line, LEGEND_SIZE, Anchor::Start, INK));
            y += LEGEND_LEAD;
        }
        y += 6.0;
    }
    if !d.note.is_empty() {
        y += 8.0;
        for line in wrap(&d.note, NOTE_SIZE, false, LEGEND_W) {
            s.push(text(LEGEND_X, y, &line, NOTE_SIZE, Anchor::Start, NOTE));
            y += NOTE_LEAD;
        }
    }
    let h = (bottom + 62.0).max(y + 8.0).ceil() as usize;
    Scene { w: W as usize, h, shapes: s }
}

/// The left end of a text line drawn at `x` with `anchor`.
pub(super) fn start_x(x: f64, s: &str, size: f64, bold: bool, anchor: Anchor) -> f64 {
    match anchor {
        Anchor::Start => x,
        Anchor::Middle => x - width(s, size, bold) / 2.0,
        Anchor::End => x - width(s, size, bold),
    }
}
