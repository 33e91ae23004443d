//! The PNG backend: the scene rasterized with anti-aliasing (shapes as
//! polygons through `ab_glyph_rasterizer`, text as DejaVu Sans glyph
//! outlines), then encoded as an 8-bit RGB PNG (zlib via flate2). Only
//! fixed-order float arithmetic: the same scene gives the same bytes.

use std::io::Write;

use ab_glyph_rasterizer::{point, Rasterizer};

use super::scene::{start_x, Rgb, Scene, Shape};
use super::text::outlines;

/// An RGB image.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

type Pt = (f64, f64);

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }

    /// Paints `c` over pixel (x, y) with coverage `alpha`.
    fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h || alpha <= 0.0 {
            return;
        }
        let a = alpha.min(1.0);
        let i = (y as usize * self.w + x as usize) * 3;
        for (k, v) in [c.0, c.1, c.2].into_iter().enumerate() {
            let old = f32::from(self.px[i + k]);
            self.px[i + k] = (old + (f32::from(v) - old) * a).round() as u8;
        }
    }

    /// Fills a polygon (any winding) with `c` at `opacity`.
    fn fill(&mut self, pts: &[Pt], c: Rgb, opacity: f32) {
        if pts.len() < 3 {
            return;
        }
        let x0 = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).floor() - 1.0;
        let y0 = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).floor() - 1.0;
        let x1 = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max).ceil() + 2.0;
        let y1 = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max).ceil() + 2.0;
        let mut r = Rasterizer::new((x1 - x0) as usize, (y1 - y0) as usize);
        let rel = |p: &Pt| point((p.0 - x0) as f32, (p.1 - y0) as f32);
        for (i, p) in pts.iter().enumerate() {
            r.draw_line(rel(p), rel(&pts[(i + 1) % pts.len()]));
        }
        r.for_each_pixel_2d(|x, y, a| self.blend(x0 as i64 + i64::from(x), y0 as i64 + i64::from(y), c, a * opacity));
    }

    /// A straight stroke `width` wide with flat ends.
    fn segment(&mut self, a: Pt, b: Pt, c: Rgb, width: f64) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1e-9 {
            return;
        }
        let (nx, ny) = (-dy / len * width / 2.0, dx / len * width / 2.0);
        self.fill(&[(a.0 + nx, a.1 + ny), (b.0 + nx, b.1 + ny), (b.0 - nx, b.1 - ny), (a.0 - nx, a.1 - ny)], c, 1.0);
    }

    /// A line, dashed when `dash` = (on, off) is given.
    fn line(&mut self, a: Pt, b: Pt, c: Rgb, width: f64, dash: Option<(f64, f64)>) {
        let Some((on, off)) = dash else { return self.segment(a, b, c, width) };
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let at = |t: f64| (a.0 + (b.0 - a.0) * t / len, a.1 + (b.1 - a.1) * t / len);
        let mut t = 0.0;
        while t < len {
            self.segment(at(t), at((t + on).min(len)), c, width);
            t += on + off;
        }
    }

    fn disc(&mut self, (cx, cy): Pt, r: f64, c: Rgb) {
        let pts: Vec<Pt> = (0..48)
            .map(|i| {
                let t = i as f64 / 48.0 * std::f64::consts::TAU;
                (cx + r * t.cos(), cy + r * t.sin())
            })
            .collect();
        self.fill(&pts, c, 1.0);
    }

    fn diamond(&mut self, (x, y): Pt, r: f64, c: Rgb) {
        self.fill(&[(x, y - r), (x + r, y), (x, y + r), (x - r, y)], c, 1.0);
    }

    fn text(&mut self, s: &str, x: f64, y: f64, size: f64, bold: bool, c: Rgb) {
        for g in outlines(s, x, y, size, bold) {
            let b = g.px_bounds();
            let (gx, gy) = (b.min.x as i64, b.min.y as i64);
            g.draw(|px, py, a| self.blend(gx + i64::from(px), gy + i64::from(py), c, a));
        }
    }
}

/// The scene rasterized, as PNG bytes.
pub(super) fn render(scene: &Scene) -> std::io::Result<Vec<u8>> {
    let mut c = Canvas::new(scene.w, scene.h);
    for shape in &scene.shapes {
        match shape {
            Shape::Line { a, b, color, width, dash, .. } => c.line(*a, *b, *color, *width, *dash),
            Shape::Polyline { pts, color, width, .. } => {
                for w in pts.windows(2) {
                    c.segment(w[0], w[1], *color, *width);
                }
                for p in pts.iter().skip(1).take(pts.len().saturating_sub(2)) {
                    c.disc(*p, width / 2.0, *color);
                }
            }
            Shape::Polygon { pts, color, opacity, .. } => c.fill(pts, *color, *opacity as f32),
            Shape::Circle { c: at, r, color, .. } => c.disc(*at, *r, *color),
            Shape::Diamond { c: at, r, width, color, .. } => {
                let d = width / 2.0 * std::f64::consts::SQRT_2;
                c.diamond(*at, r + d, *color);
                c.diamond(*at, r - d, (255, 255, 255));
            }
            Shape::Text { x, y, text, size, bold, anchor, color } => {
                c.text(text, start_x(*x, text, *size, *bold, *anchor), *y, *size, *bold, *color)
            }
        }
    }
    encode_png(&c.px, c.w, c.h)
}

/// CRC-32 (IEEE), as PNG chunks need it.
pub(super) fn crc32(bytes: &[u8]) -> u32 {
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
