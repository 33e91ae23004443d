//! Line plots as SVG (text) and PNG, both drawn from one layout (`scene`) and
//! both deterministic: the same data gives the same bytes. A table's plot is
//! a metric against sparsity: its full title (wrapped, never cut), one line
//! per method with the seeds' spread as a shaded band and error bars, the
//! dense reference as a dashed line, the paper's values as hollow diamonds,
//! and a legend with a note saying what the spread is. A method's trace (λ
//! against the training step, say) is the same plot on a linear x axis,
//! optionally a log y axis, with lines and no markers. Text is DejaVu Sans,
//! shipped inside the `dejavu` crate and rasterized with `ab_glyph`.

mod axes;
mod png;
mod scene;
mod svg;
mod text;

/// One method's line: (sparsity %, mean, spread) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (sparsity in percent, mean, half-width of the spread drawn around
    /// the mean: half a confidence interval), by sparsity.
    pub points: Vec<(f64, f64, f64)>,
}

/// One of the paper's values, drawn as a hollow diamond.
#[derive(Clone, Debug, PartialEq)]
pub struct PaperValue {
    /// The series (method) it belongs to, by index; `None` for dense.
    pub series: Option<usize>,
    /// Sparsity in percent.
    pub sparsity: f64,
    /// The paper's value.
    pub value: f64,
}

/// What the x axis shows.
#[derive(Clone, Debug, PartialEq)]
pub enum XScale {
    /// Sparsity in percent, linear from 0; the points of several methods
    /// at one sparsity are drawn a few pixels apart.
    Sparsity,
    /// Weights left in percent on a log scale, drawn so that sparsity grows
    /// to the right.
    WeightsLeftLog,
    /// Any quantity (a training step, say), linear over the data's range;
    /// lines without markers.
    Linear {
        /// The axis label.
        label: String,
    },
}

/// A plot.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotData {
    /// Title (wrapped onto as many lines as it needs).
    pub title: String,
    /// The metric.
    pub y_label: String,
    /// The x axis.
    pub x: XScale,
    /// y on a log scale (decades); values ≤ 0 are left out.
    pub log_y: bool,
    /// The methods.
    pub series: Vec<Series>,
    /// The dense reference (a dashed line).
    pub dense: Option<f64>,
    /// The paper's values.
    pub paper: Vec<PaperValue>,
    /// Under the legend: what a point and its spread are (e.g. "mean of 3
    /// seeds ± 1 standard deviation").
    pub note: String,
}

/// A method's trace as a plot: a linear x axis, one line per series, no
/// spread.
pub fn trace_plot(c: &espalier_prune::Curve) -> PlotData {
    PlotData {
        title: c.title.clone(),
        y_label: c.y_label.clone(),
        x: XScale::Linear { label: c.x_label.clone() },
        log_y: c.log_y,
        series: c
            .lines
            .iter()
            .map(|(label, pts)| Series {
                label: label.clone(),
                points: pts.iter().map(|&(x, y)| (x, y, 0.0)).collect(),
            })
            .collect(),
        dense: None,
        paper: vec![],
        note: String::new(),
    }
}

/// The plot as SVG text.
pub fn svg(d: &PlotData) -> String {
    svg::render(&scene::build(d))
}

/// The plot rasterized, as PNG bytes.
pub fn png(d: &PlotData) -> std::io::Result<Vec<u8>> {
    png::render(&scene::build(d))
}

#[cfg(test)]
mod tests {
    use super::axes::{fmt_tick, nice_step};
    use super::scene::{build, Shape, TITLE_MAX, TITLE_SIZE};
    use super::*;

    fn data() -> PlotData {
        PlotData {
            title: "Test plot".into(),
            y_label: "accuracy".into(),
            x: XScale::Sparsity,
            log_y: false,
            series: vec![
                Series { label: "a".into(), points: vec![(20.0, 97.0, 0.1), (50.0, 96.0, 0.0)] },
                Series { label: "b & c".into(), points: vec![(20.0, 95.0, 0.0), (50.0, 90.0, 0.3)] },
            ],
            dense: Some(98.0),
            paper: vec![],
            note: "Mean of 2 seeds ± 1 standard deviation.".into(),
        }
    }

    /// The PNG's pixels, decoded (filter "Up" on every row, as written).
    fn pixels(png: &[u8]) -> (usize, usize, Vec<u8>) {
        use std::io::Read;
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap()) as usize;
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap()) as usize;
        let len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&png[41..41 + len]).read_to_end(&mut raw).unwrap();
        let stride = w * 3;
        let mut px = vec![0u8; stride * h];
        for y in 0..h {
            let row = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
            for x in 0..stride {
                px[y * stride + x] = if y == 0 { row[x] } else { row[x].wrapping_add(px[(y - 1) * stride + x]) };
            }
        }
        (w, h, px)
    }

    #[test]
    fn crc_matches_the_png_reference() {
        assert_eq!(png::crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(png::crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn png_and_svg_are_deterministic_and_well_formed() {
        let d = data();
        let p = png(&d).unwrap();
        assert_eq!(p, png(&d).unwrap());
        assert!(p.starts_with(b"\x89PNG\r\n\x1a\n") && p.ends_with(&[0xAE, 0x42, 0x60, 0x82]));
        let s = svg(&d);
        assert_eq!(s, svg(&d));
        assert!(s.contains("b &amp; c") && s.matches("class=\"series\"").count() == 2, "{s}");
        let mut log = d.clone();
        log.x = XScale::WeightsLeftLog;
        assert!(svg(&log).contains("weights left"));
        let mut other = d.clone();
        other.series[0].points[0].1 = 96.5;
        assert_ne!(png(&other).unwrap(), p);
    }

    #[test]
    fn text_is_anti_aliased_and_proportional() {
        // Lower case, and narrow letters narrower than wide ones.
        assert!(text::width("iiii", 14.0, false) < 0.6 * text::width("MMMM", 14.0, false));
        assert!(text::width("sparsity", 14.0, false) < text::width("SPARSITY", 14.0, false));
        // Glyph edges blend into the background: many grey levels, not two.
        let (w, h, px) = pixels(&png(&data()).unwrap());
        assert_eq!(px.len(), w * h * 3);
        let greys: std::collections::BTreeSet<u8> =
            px.chunks(3).filter(|p| p[0] == p[1] && p[1] == p[2]).map(|p| p[0]).collect();
        assert!(greys.len() > 50, "{} grey levels", greys.len());
    }

    #[test]
    fn long_titles_wrap_and_are_never_cut() {
        let mut d = data();
        d.title = "MI layer-wise pruning vs magnitude vs random: MiniLM on SST-2, half of every layer's heads and FFN \
                   units, full fine-tuning epoch, averaged over five GLUE tasks with three seeds each (the paper's \
                   protocol, Table 2)"
            .into();
        let titles: Vec<String> = build(&d)
            .shapes
            .iter()
            .filter_map(|s| match s {
                Shape::Text { text, bold: true, .. } => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert!(titles.len() >= 2, "{titles:?}");
        for t in &titles {
            assert!(text::width(t, TITLE_SIZE, true) <= TITLE_MAX, "too wide: {t}");
        }
        assert_eq!(titles.join(" "), d.title);
        let s = svg(&d);
        assert!(titles.iter().all(|t| s.contains(&format!(">{t}</text>"))));
        // A short title stays on one line; the plot grows to fit a long one.
        let short = build(&data());
        assert!(short.h < build(&d).h);
        // A word wider than a line is broken, not dropped.
        let long_word = "x".repeat(400);
        let lines = text::wrap(&long_word, TITLE_SIZE, true, TITLE_MAX);
        assert!(lines.len() >= 2 && lines.concat() == long_word);
    }

    #[test]
    fn spread_is_a_band_and_error_bars() {
        let s = svg(&data());
        // A band per series with some spread; a bar (and two caps) per point with spread.
        assert_eq!(s.matches("class=\"band\"").count(), 2, "{s}");
        assert_eq!(s.matches("class=\"err\"").count(), 6, "{s}");
        assert!(s.contains("Mean of 2 seeds"));
        let mut one_seed = data();
        for series in &mut one_seed.series {
            for p in &mut series.points {
                p.2 = 0.0;
            }
        }
        let s = svg(&one_seed);
        assert!(!s.contains("class=\"band\"") && !s.contains("class=\"err\""), "{s}");
    }

    #[test]
    fn paper_values_are_diamonds_in_their_methods_colour() {
        let mut d = data();
        d.paper = vec![
            PaperValue { series: Some(1), sparsity: 50.0, value: 91.5 },
            PaperValue { series: None, sparsity: 0.0, value: 98.4 },
            // Outside our runs' range: the axes grow to show it.
            PaperValue { series: Some(0), sparsity: 95.0, value: 80.0 },
        ];
        let s = svg(&d);
        assert_eq!(s.matches("class=\"paper\"").count(), 3, "{s}");
        assert!(s.contains("stroke=\"#d62728\" stroke-width=\"2\"/>"), "{s}");
        assert!(s.contains("the paper's values"), "{s}");
        assert!(s.contains(">100</text>") && s.contains(">80</text>"), "{s}");
        assert!(!svg(&data()).contains("paper"));
    }

    #[test]
    fn a_trace_is_lines_on_its_own_axes() {
        let c = espalier_prune::Curve {
            name: "greg-ratio".into(),
            title: "ratio".into(),
            x_label: "iteration".into(),
            y_label: "ratio (log scale)".into(),
            log_y: true,
            ..Default::default()
        }
        // 0 is off a log axis: left out, the line drawn through the rest.
        .line("layer1.0", (0..1000).map(|i| (i as f64, if i == 0 { 0.0 } else { 1.0 + i as f64 })).collect())
        .line("layer1.1", (0..1000).map(|i| (i as f64, 2.0 + 0.5 * i as f64)).collect());
        let n = c.lines[0].1.len();
        assert!(n <= espalier_prune::Curve::MAX_POINTS && n > espalier_prune::Curve::MAX_POINTS / 2, "{n} points");
        assert_eq!(c.lines[0].1.last(), Some(&(999.0, 1000.0)), "the last point is kept");
        let s = svg(&trace_plot(&c));
        assert_eq!(s.matches("class=\"series\"").count(), 2, "{s}");
        assert!(!s.contains("class=\"point\"") && !s.contains("class=\"band\""), "{s}");
        assert!(s.contains(">iteration</text>") && !s.contains("sparsity"), "{s}");
        // Decades from 1 to 1000 (the data: 2 … 1000).
        for t in [">1</text>", ">10</text>", ">100</text>", ">1000</text>"] {
            assert!(s.contains(t), "{t} missing: {s}");
        }
        assert!(!s.contains("NaN"), "{s}");
        // The x axis covers the data, not 0–100%.
        assert!(s.contains(">1000</text>") && s.contains(">0</text>"));
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.7, 6.0), 0.2);
        assert_eq!(fmt_tick(0.4, 0.2), "0.4");
    }
}
