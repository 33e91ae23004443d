//! The SVG backend: each shape of the scene as an SVG element (text as
//! `<text>` in DejaVu Sans, the face the PNG is drawn with).

use super::scene::{Anchor, Rgb, Scene, Shape};
use super::text::FAMILY;

fn hex((r, g, b): Rgb) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn points(pts: &[(f64, f64)]) -> String {
    pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" ")
}

/// The scene as SVG text.
pub(super) fn render(scene: &Scene) -> String {
    let (w, h) = (scene.w, scene.h);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"{FAMILY}\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    for shape in &scene.shapes {
        s += &match shape {
            Shape::Line { a, b, color, width, dash, tag } => format!(
                "<line class=\"{tag}\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" \
                 stroke-width=\"{width}\"{}/>\n",
                a.0,
                a.1,
                b.0,
                b.1,
                hex(*color),
                dash.map_or(String::new(), |(on, off)| format!(" stroke-dasharray=\"{on} {off}\""))
            ),
            Shape::Polyline { pts, color, width, tag } => format!(
                "<polyline class=\"{tag}\" points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{width}\" \
                 stroke-linejoin=\"round\"/>\n",
                points(pts),
                hex(*color)
            ),
            Shape::Polygon { pts, color, opacity, tag } => format!(
                "<polygon class=\"{tag}\" points=\"{}\" fill=\"{}\" fill-opacity=\"{opacity}\"/>\n",
                points(pts),
                hex(*color)
            ),
            Shape::Circle { c, r, color, tag } => {
                format!(
                    "<circle class=\"{tag}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{}\"/>\n",
                    c.0,
                    c.1,
                    hex(*color)
                )
            }
            Shape::Diamond { c, r, width, color, tag } => {
                let (x, y) = *c;
                format!(
                    "<polygon class=\"{tag}\" points=\"{}\" fill=\"white\" stroke=\"{}\" stroke-width=\"{width}\"/>\n",
                    points(&[(x, y - r), (x + r, y), (x, y + r), (x - r, y)]),
                    hex(*color)
                )
            }
            Shape::Text { x, y, text, size, bold, anchor, color } => format!(
                "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\"{}{} fill=\"{}\">{}</text>\n",
                if *bold { " font-weight=\"bold\"" } else { "" },
                match anchor {
                    Anchor::Start => "",
                    Anchor::Middle => " text-anchor=\"middle\"",
                    Anchor::End => " text-anchor=\"end\"",
                },
                hex(*color),
                escape(text)
            ),
        };
    }
    s += "</svg>\n";
    s
}
