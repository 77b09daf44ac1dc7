//! Small vector figures (line charts, node-link diagrams, heatmaps) drawn once and written as
//! SVG or as PNG at a chosen DPI with the same software rasteriser as the scatter figures.
//! Coordinates are in points (1/72 in) from the top-left corner.

use std::fmt::Write as _;

use super::{
    Anchor, BLACK, Canvas, Disc, FigureError, Rect, TextItem, encode_png, hex, pixel_size,
    xml_escape,
};

#[derive(Debug, Clone)]
enum Item {
    Line {
        a: [f32; 2],
        b: [f32; 2],
        width: f32,
        color: [u8; 4],
    },
    Disc {
        c: [f32; 2],
        r: f32,
        color: [u8; 4],
    },
    Rect {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        color: [u8; 4],
    },
    Text {
        x: f32,
        y: f32,
        size: f32,
        middle: bool,
        text: String,
    },
}

/// Where a text is anchored horizontally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Start,
    Middle,
    End,
}

/// A figure built from lines, discs, rectangles and text, in paint order.
#[derive(Debug, Clone)]
pub struct Sketch {
    /// Size in points.
    pub width: f32,
    pub height: f32,
    items: Vec<Item>,
}

impl Sketch {
    pub fn new(width: f32, height: f32) -> Self {
        Self {
            width,
            height,
            items: Vec::new(),
        }
    }

    pub fn line(&mut self, a: [f32; 2], b: [f32; 2], width: f32, color: [u8; 4]) {
        if a.iter().chain(&b).all(|v| v.is_finite()) {
            self.items.push(Item::Line { a, b, width, color });
        }
    }

    pub fn polyline(&mut self, points: &[[f32; 2]], width: f32, color: [u8; 4]) {
        for w in points.windows(2) {
            self.line(w[0], w[1], width, color);
        }
    }

    pub fn disc(&mut self, c: [f32; 2], r: f32, color: [u8; 4]) {
        if c[0].is_finite() && c[1].is_finite() {
            self.items.push(Item::Disc { c, r, color });
        }
    }

    pub fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, color: [u8; 4]) {
        self.items.push(Item::Rect { x, y, w, h, color });
    }

    /// Text with its baseline at `y`; `End` is laid out with the rasteriser's 0.6 em per
    /// character (the SVG uses the font's own widths).
    pub fn text(&mut self, x: f32, y: f32, size: f32, align: Align, text: impl Into<String>) {
        let text = text.into();
        let (x, middle) = match align {
            Align::Start => (x, false),
            Align::Middle => (x, true),
            Align::End => (x - 0.6 * size * text.chars().count() as f32, false),
        };
        self.items.push(Item::Text {
            x,
            y,
            size,
            middle,
            text,
        });
    }

    pub fn to_svg(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}pt\" height=\"{h}pt\" \
             viewBox=\"0 0 {w} {h}\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n\
             <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>",
            w = self.width,
            h = self.height
        );
        for it in &self.items {
            let _ = match it {
                Item::Line { a, b, width, color } => writeln!(
                    s,
                    "<line x1=\"{:.2}\" y1=\"{:.2}\" x2=\"{:.2}\" y2=\"{:.2}\" stroke=\"{}\" \
                     stroke-width=\"{width}\" stroke-linecap=\"round\"/>",
                    a[0],
                    a[1],
                    b[0],
                    b[1],
                    hex(*color)
                ),
                Item::Disc { c, r, color } => writeln!(
                    s,
                    "<circle cx=\"{:.2}\" cy=\"{:.2}\" r=\"{r:.2}\" fill=\"{}\"/>",
                    c[0],
                    c[1],
                    hex(*color)
                ),
                Item::Rect { x, y, w, h, color } => writeln!(
                    s,
                    "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{w:.2}\" height=\"{h:.2}\" fill=\"{}\"/>",
                    hex(*color)
                ),
                Item::Text {
                    x,
                    y,
                    size,
                    middle,
                    text,
                } => writeln!(
                    s,
                    "<text x=\"{x:.2}\" y=\"{y:.2}\" font-size=\"{size}\"{}>{}</text>",
                    if *middle {
                        " text-anchor=\"middle\""
                    } else {
                        ""
                    },
                    xml_escape(text)
                ),
            };
        }
        s.push_str("</svg>\n");
        s
    }

    /// An RGB PNG of `width / 72 * dpi` x `height / 72 * dpi` pixels.
    pub fn to_png(&self, dpi: f32) -> Result<Vec<u8>, FigureError> {
        let (w, h) = pixel_size(self.width / 72.0, self.height / 72.0, dpi)?;
        let s = dpi / 72.0;
        let mut canvas = Canvas::new(w as usize, h as usize);
        let everywhere = Rect {
            x: 0.0,
            y: 0.0,
            w: w as f32,
            h: h as f32,
        };
        for it in &self.items {
            match it {
                Item::Line { a, b, width, color } => canvas.stroke_line(
                    [a[0] * s, a[1] * s],
                    [b[0] * s, b[1] * s],
                    (width * s).max(0.5),
                    *color,
                ),
                Item::Disc { c, r, color } => canvas.paint_discs(
                    &[Disc {
                        x: c[0] * s,
                        y: c[1] * s,
                        r: r * s,
                        color: *color,
                    }],
                    &everywhere,
                ),
                Item::Rect { x, y, w, h, color } => canvas.fill_rects(
                    &[Rect {
                        x: x * s,
                        y: y * s,
                        w: w * s,
                        h: h * s,
                    }],
                    *color,
                ),
                Item::Text {
                    x,
                    y,
                    size,
                    middle,
                    text,
                } => canvas.paint_text(
                    &TextItem {
                        x: *x,
                        y: *y,
                        size: *size,
                        anchor: if *middle {
                            Anchor::Middle
                        } else {
                            Anchor::Start
                        },
                        vertical: false,
                        text: text.clone(),
                    },
                    s,
                ),
            }
        }
        encode_png(&canvas, dpi)
    }
}

impl Canvas {
    /// An anti-aliased line segment of `width` pixels (coverage from the distance of each
    /// pixel centre to the segment), round caps.
    pub(super) fn stroke_line(&mut self, a: [f32; 2], b: [f32; 2], width: f32, color: [u8; 4]) {
        let hw = width / 2.0;
        let (x0, x1) = (a[0].min(b[0]) - hw - 1.0, a[0].max(b[0]) + hw + 1.0);
        let (y0, y1) = (a[1].min(b[1]) - hw - 1.0, a[1].max(b[1]) + hw + 1.0);
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len2 = dx * dx + dy * dy;
        let xs = super::span(x0, x1, self.w);
        for j in super::span(y0, y1, self.h) {
            let py = j as f32 + 0.5;
            for i in xs.clone() {
                let px = i as f32 + 0.5;
                let t = if len2 > 0.0 {
                    (((px - a[0]) * dx + (py - a[1]) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (cx, cy) = (a[0] + t * dx - px, a[1] + t * dy - py);
                let d = (cx * cx + cy * cy).sqrt();
                let cover = (hw + 0.5 - d).clamp(0.0, 1.0);
                if cover > 0.0 {
                    let o = (j * self.w + i) * 3;
                    super::blend(&mut self.px[o..o + 3], color, cover);
                }
            }
        }
    }
}

/// A named series of `(x, y)` points and its colour.
pub type Series<'a> = (&'a str, &'a [[f64; 2]], [u8; 4]);

/// A line chart: one or more named series over a shared x axis, with a frame, axis labels,
/// min/max tick labels and a legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> Sketch {
    let (w, h) = (432.0, 288.0);
    let mut sk = Sketch::new(w, h);
    let plot = Rect {
        x: 56.0,
        y: 28.0,
        w: 270.0,
        h: 212.0,
    };
    let pts = series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|p| p[0].is_finite() && p[1].is_finite());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts {
        xmin = xmin.min(p[0]);
        xmax = xmax.max(p[0]);
        ymin = ymin.min(p[1]);
        ymax = ymax.max(p[1]);
    }
    if xmin > xmax {
        (xmin, xmax, ymin, ymax) = (0.0, 1.0, 0.0, 1.0);
    }
    if xmax == xmin {
        xmax = xmin + 1.0;
    }
    if ymax == ymin {
        ymax = ymin + 1.0;
    }
    let to = |p: [f64; 2]| -> [f32; 2] {
        [
            plot.x + ((p[0] - xmin) / (xmax - xmin)) as f32 * plot.w,
            plot.y + plot.h - ((p[1] - ymin) / (ymax - ymin)) as f32 * plot.h,
        ]
    };
    for (_, pts, color) in series {
        let line: Vec<[f32; 2]> = pts
            .iter()
            .filter(|p| p[0].is_finite() && p[1].is_finite())
            .map(|&p| to(p))
            .collect();
        if line.len() == 1 {
            sk.disc(line[0], 2.0, *color);
        }
        sk.polyline(&line, 1.2, *color);
    }
    // Frame and labels.
    let (l, r, t, b) = (plot.x, plot.x + plot.w, plot.y, plot.y + plot.h);
    for (a, c) in [
        ([l, t], [r, t]),
        ([r, t], [r, b]),
        ([r, b], [l, b]),
        ([l, b], [l, t]),
    ] {
        sk.line(a, c, 0.8, BLACK);
    }
    let num = cellforge_core::fmt::number;
    sk.text(l, b + 12.0, 8.0, Align::Start, num(xmin));
    sk.text(r, b + 12.0, 8.0, Align::End, num(xmax));
    sk.text(l - 4.0, b, 8.0, Align::End, num(ymin));
    sk.text(l - 4.0, t + 7.0, 8.0, Align::End, num(ymax));
    sk.text((l + r) / 2.0, b + 24.0, 9.0, Align::Middle, x_label);
    sk.text(4.0, t - 8.0, 9.0, Align::Start, y_label);
    sk.text((l + r) / 2.0, 14.0, 10.0, Align::Middle, title);
    for (k, (name, _, color)) in series.iter().enumerate() {
        let y = t + 10.0 + 14.0 * k as f32;
        sk.line([r + 8.0, y - 3.0], [r + 22.0, y - 3.0], 2.0, *color);
        sk.text(r + 26.0, y, 8.0, Align::Start, *name);
    }
    sk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let mut r = dec.read_info().expect("png header");
        let mut buf = vec![0; r.output_buffer_size().expect("size")];
        let info = r.next_frame(&mut buf).expect("png frame");
        (info.width, info.height, buf)
    }

    #[test]
    fn lines_discs_and_rects_land_where_drawn_at_any_dpi() {
        let mut sk = Sketch::new(72.0, 36.0);
        sk.line([0.0, 18.0], [72.0, 18.0], 2.0, [255, 0, 0, 255]);
        sk.disc([54.0, 9.0], 4.0, [0, 0, 255, 255]);
        sk.rect(2.0, 26.0, 8.0, 8.0, [0, 160, 0, 255]);
        sk.text(2.0, 10.0, 8.0, Align::Start, "B cells");
        for dpi in [72.0, 300.0] {
            let (w, h, px) = decode(&sk.to_png(dpi).expect("png"));
            let s = dpi / 72.0;
            assert_eq!(
                (w, h),
                ((72.0 * s).round() as u32, (36.0 * s).round() as u32)
            );
            let at = |x: f32, y: f32| {
                let o = (((y * s) as u32 * w + (x * s) as u32) * 3) as usize;
                [px[o], px[o + 1], px[o + 2]]
            };
            assert_eq!(at(36.0, 18.0), [255, 0, 0], "line centre at {dpi} dpi");
            assert_eq!(at(36.0, 12.0), [255, 255, 255], "away from the line");
            assert_eq!(at(54.0, 9.0), [0, 0, 255], "disc centre");
            assert_eq!(at(6.0, 30.0), [0, 160, 0], "rectangle");
        }
        let svg = sk.to_svg();
        for needle in ["<line", "<circle", "<rect x=", ">B cells</text>", "#ff0000"] {
            assert!(svg.contains(needle), "{needle} in {svg}");
        }
    }

    #[test]
    fn line_chart_scales_series_into_the_frame() {
        let pts = [[0.0, 10.0], [5.0, 2.0], [10.0, 1.0]];
        let sk = line_chart("t", "step", "loss", &[("loss", &pts, [0, 0, 0, 255])]);
        let svg = sk.to_svg();
        assert!(svg.contains(">step</text>") && svg.contains(">loss</text>"));
        // The series ends at the frame's right edge (x = 56 + 270) and bottom (y = 28 + 212).
        assert!(svg.contains("x2=\"326.00\" y2=\"240.00\""), "{svg}");
    }
}
