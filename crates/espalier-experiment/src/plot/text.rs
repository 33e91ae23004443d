//! Text: the embedded DejaVu Sans font (the `dejavu` crate; no system font
//! is looked up), measuring a line's width, wrapping text to a width, and
//! the positioned glyph outlines the PNG backend rasterizes.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, GlyphId, OutlinedGlyph, PxScale, ScaleFont};

/// The SVG `font-family` naming the same face (viewers without it fall back).
pub(super) const FAMILY: &str = "'DejaVu Sans', Verdana, sans-serif";

fn font(bold: bool) -> &'static FontRef<'static> {
    static REGULAR: OnceLock<FontRef<'static>> = OnceLock::new();
    static BOLD: OnceLock<FontRef<'static>> = OnceLock::new();
    let (cell, bytes) = if bold { (&BOLD, dejavu::sans::bold()) } else { (&REGULAR, dejavu::sans::regular()) };
    cell.get_or_init(|| FontRef::try_from_slice(bytes).expect("the embedded DejaVu Sans parses"))
}

/// `size` is the em size in pixels, as SVG's `font-size`.
fn scale(f: &FontRef<'static>, size: f64) -> PxScale {
    let em = f.units_per_em().unwrap_or(2048.0);
    PxScale::from(size as f32 * f.height_unscaled() / em)
}

/// Glyph ids and pen x offsets of a line, from 0; and the line's width.
fn layout(s: &str, size: f64, bold: bool) -> (Vec<(GlyphId, f32)>, f64) {
    let f = font(bold);
    let sf = f.as_scaled(scale(f, size));
    let mut x = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            x += sf.kern(p, id);
        }
        out.push((id, x));
        x += sf.h_advance(id);
        prev = Some(id);
    }
    (out, f64::from(x))
}

/// The width of a line in pixels.
pub(super) fn width(s: &str, size: f64, bold: bool) -> f64 {
    layout(s, size, bold).1
}

/// The outlines of a line whose left end is at `x` on baseline `y`.
pub(super) fn outlines(s: &str, x: f64, y: f64, size: f64, bold: bool) -> Vec<OutlinedGlyph> {
    let f = font(bold);
    let sc = scale(f, size);
    layout(s, size, bold)
        .0
        .into_iter()
        .filter_map(|(id, gx)| f.outline_glyph(id.with_scale_and_position(sc, point(x as f32 + gx, y as f32))))
        .collect()
}

/// `s` broken into lines no wider than `max` pixels: at spaces, and inside
/// a word only when the word alone is wider. Nothing is dropped: the
/// lines' words are the text's words, in order.
pub(super) fn wrap(s: &str, size: f64, bold: bool, max: f64) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        let candidate = if line.is_empty() { word.to_string() } else { format!("{line} {word}") };
        if width(&candidate, size, bold) <= max {
            line = candidate;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        line = word.to_string();
        // A word wider than the line on its own: break it between characters.
        while width(&line, size, bold) > max && line.chars().count() > 1 {
            let chars: Vec<char> = line.chars().collect();
            let mut n = chars.len() - 1;
            while n > 1 && width(&chars[..n].iter().collect::<String>(), size, bold) > max {
                n -= 1;
            }
            lines.push(chars[..n].iter().collect());
            line = chars[n..].iter().collect();
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}
