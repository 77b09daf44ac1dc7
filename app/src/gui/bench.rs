//! The benchmark view: how well one label column (predictions) agrees with another (the
//! truth): accuracy, macro precision/recall/F1, the per-class table and the confusion matrix
//! (scikit-learn's definitions, from `analysis::metrics`), plus scib-style integration metrics
//! of an embedding. Tables copy as CSV; the confusion matrix saves as SVG.

use cellforge_core::analysis::integration::IntegrationMetrics;
use cellforge_core::analysis::metrics::{ClassificationReport, classification_report};
use egui::{Color32, RichText};

/// Truth vs prediction, with class names.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub truth: String,
    pub predicted: String,
    /// Class names, indexed by the report's labels.
    pub names: Vec<String>,
    pub report: ClassificationReport,
    /// Cells left out because either column had no label.
    pub skipped: usize,
}

/// Compares two label columns cell by cell (`truth` and `predicted` name them, `t` and `p`
/// hold one label per cell); cells missing either label are left out.
pub fn compare(
    truth: &str,
    t: &[Option<String>],
    predicted: &str,
    p: &[Option<String>],
) -> Result<Comparison, String> {
    let mut names: Vec<String> = Vec::new();
    let mut index = std::collections::HashMap::<String, u32>::new();
    let mut code = |s: &str| -> u32 {
        if let Some(&c) = index.get(s) {
            return c;
        }
        let c = names.len() as u32;
        names.push(s.to_string());
        index.insert(s.to_string(), c);
        c
    };
    let (mut yt, mut yp, mut skipped) = (Vec::new(), Vec::new(), 0);
    for (x, y) in t.iter().zip(p) {
        match (x, y) {
            (Some(x), Some(y)) => {
                yt.push(code(x));
                yp.push(code(y));
            }
            _ => skipped += 1,
        }
    }
    if yt.is_empty() {
        return Err(format!(
            "no cell has labels in both {truth} and {predicted}"
        ));
    }
    let report = classification_report(&yt, &yp).map_err(|e| e.to_string())?;
    Ok(Comparison {
        truth: truth.to_string(),
        predicted: predicted.to_string(),
        names,
        report,
        skipped,
    })
}

impl Comparison {
    fn name(&self, label: u32) -> &str {
        self.names
            .get(label as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// The summary and per-class table as CSV.
    pub fn table_csv(&self) -> String {
        let r = &self.report;
        let mut s = String::from("class,precision,recall,f1,support\n");
        for c in &r.per_class {
            s.push_str(&format!(
                "{},{:.6},{:.6},{:.6},{}\n",
                csv_field(self.name(c.label)),
                c.precision,
                c.recall,
                c.f1,
                c.support
            ));
        }
        s.push_str(&format!(
            "macro average,{:.6},{:.6},{:.6},{}\naccuracy,,,{:.6},{}\n",
            r.macro_precision,
            r.macro_recall,
            r.macro_f1,
            r.per_class.iter().map(|c| c.support).sum::<u64>(),
            r.accuracy,
            r.per_class.iter().map(|c| c.support).sum::<u64>()
        ));
        s
    }

    /// The confusion matrix as CSV (rows: truth, columns: predicted).
    pub fn confusion_csv(&self) -> String {
        let m = &self.report.confusion;
        let mut s = String::from("truth \\ predicted");
        for &l in &m.labels {
            s.push(',');
            s.push_str(&csv_field(self.name(l)));
        }
        s.push('\n');
        for (t, &lt) in m.labels.iter().enumerate() {
            s.push_str(&csv_field(self.name(lt)));
            for p in 0..m.n_labels() {
                s.push_str(&format!(",{}", m.get(t, p)));
            }
            s.push('\n');
        }
        s
    }

    /// The confusion matrix as a figure: a heatmap normalised per true class (row), with the
    /// counts written in, truth down the side and predictions along the top.
    pub fn confusion_figure(&self) -> crate::figure::sketch::Sketch {
        use crate::figure::sketch::{Align, Sketch};
        let m = &self.report.confusion;
        let k = m.n_labels();
        let cell = (360.0 / k.max(1) as f32).clamp(10.0, 28.0);
        let longest = m
            .labels
            .iter()
            .map(|&l| self.name(l).chars().count())
            .max()
            .unwrap_or(4) as f32;
        let margin = 12.0 + 0.6 * 8.0 * longest;
        let size = margin + cell * k as f32 + 12.0;
        let mut sk = Sketch::new(size, size + 18.0);
        let top = margin + 18.0;
        sk.text(
            margin,
            12.0,
            9.0,
            Align::Start,
            format!("rows: {}, columns: {}", self.truth, self.predicted),
        );
        for t in 0..k {
            let row: u64 = (0..k).map(|p| m.get(t, p)).sum();
            let y = top + cell * t as f32;
            sk.text(
                margin - 4.0,
                y + cell * 0.65,
                8.0,
                Align::End,
                self.name(m.labels[t]),
            );
            for p in 0..k {
                let v = m.get(t, p);
                let f = if row > 0 { v as f32 / row as f32 } else { 0.0 };
                let c = heat(f);
                let x = margin + cell * p as f32;
                sk.rect(x, y, cell - 0.5, cell - 0.5, [c.r(), c.g(), c.b(), 255]);
                if v > 0 && cell >= 16.0 {
                    sk.text(
                        x + cell / 2.0,
                        y + cell * 0.65,
                        7.0,
                        Align::Middle,
                        v.to_string(),
                    );
                }
            }
        }
        for p in 0..k {
            // Column names, shortened to fit above their column.
            let x = margin + cell * p as f32 + cell / 2.0;
            sk.text(
                x,
                top - 4.0,
                7.0,
                Align::Middle,
                truncate(self.name(m.labels[p]), 6),
            );
        }
        sk
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// White to dark blue.
fn heat(f: f32) -> Color32 {
    let f = f.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32| (a + (b - a) * f).round() as u8;
    Color32::from_rgb(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// Draws the comparison: summary line, per-class table, confusion heatmap.
pub fn comparison_ui(ui: &mut egui::Ui, c: &Comparison) {
    let r = &c.report;
    ui.label(format!(
        "Accuracy {:.3} · macro precision {:.3} · macro recall {:.3} · macro F1 {:.3}",
        r.accuracy, r.macro_precision, r.macro_recall, r.macro_f1
    ));
    if c.skipped > 0 {
        ui.weak(format!("{} cells without both labels left out", c.skipped));
    }
    ui.horizontal(|ui| {
        if ui.button("Copy table as CSV").clicked() {
            ui.ctx().copy_text(c.table_csv());
        }
        if ui.button("Copy confusion matrix as CSV").clicked() {
            ui.ctx().copy_text(c.confusion_csv());
        }
    });
    ui.columns(2, |cols| {
        egui::ScrollArea::vertical()
            .id_salt("per_class")
            .show(&mut cols[0], |ui| {
                egui::Grid::new("per_class_table")
                    .striped(true)
                    .show(ui, |ui| {
                        for h in ["class", "precision", "recall", "F1", "cells"] {
                            ui.strong(h);
                        }
                        ui.end_row();
                        for s in &r.per_class {
                            ui.label(c.name(s.label));
                            ui.label(format!("{:.3}", s.precision));
                            ui.label(format!("{:.3}", s.recall));
                            ui.label(format!("{:.3}", s.f1));
                            ui.label(s.support.to_string());
                            ui.end_row();
                        }
                    });
            });
        confusion_ui(&mut cols[1], c);
    });
}

fn confusion_ui(ui: &mut egui::Ui, c: &Comparison) {
    let m = &c.report.confusion;
    let k = m.n_labels();
    if k == 0 {
        return;
    }
    ui.label(RichText::new(format!("rows: {}, columns: {}", c.truth, c.predicted)).weak());
    let label_w = 110.0;
    let avail = ui.available_width() - label_w;
    let cell = (avail / k as f32).clamp(8.0, 40.0);
    let (rect, resp) = ui.allocate_exact_size(
        egui::vec2(label_w + cell * k as f32, label_w + cell * k as f32),
        egui::Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    let origin = rect.min + egui::vec2(label_w, label_w);
    let font = egui::FontId::proportional(10.0);
    let text_color = ui.visuals().text_color();
    for t in 0..k {
        let row: u64 = (0..k).map(|p| m.get(t, p)).sum();
        painter.text(
            origin + egui::vec2(-4.0, cell * (t as f32 + 0.5)),
            egui::Align2::RIGHT_CENTER,
            c.name(m.labels[t]),
            font.clone(),
            text_color,
        );
        for p in 0..k {
            let v = m.get(t, p);
            let f = if row > 0 { v as f32 / row as f32 } else { 0.0 };
            let r = egui::Rect::from_min_size(
                origin + egui::vec2(cell * p as f32, cell * t as f32),
                egui::vec2(cell, cell),
            );
            painter.rect_filled(r.shrink(0.5), 0.0, heat(f));
            if v > 0 && cell >= 18.0 {
                painter.text(
                    r.center(),
                    egui::Align2::CENTER_CENTER,
                    v.to_string(),
                    font.clone(),
                    if f > 0.5 {
                        Color32::WHITE
                    } else {
                        Color32::BLACK
                    },
                );
            }
        }
    }
    for p in 0..k {
        painter.text(
            origin + egui::vec2(cell * (p as f32 + 0.5), -4.0),
            egui::Align2::LEFT_BOTTOM,
            truncate(c.name(m.labels[p]), 14),
            font.clone(),
            text_color,
        );
    }
    if let Some(pos) = resp.hover_pos() {
        let d = pos - origin;
        if d.x >= 0.0 && d.y >= 0.0 {
            let (p, t) = ((d.x / cell) as usize, (d.y / cell) as usize);
            if p < k && t < k {
                resp.on_hover_text(format!(
                    "{} cells of {} predicted as {}",
                    m.get(t, p),
                    c.name(m.labels[t]),
                    c.name(m.labels[p])
                ));
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The integration metrics as rows of (name, value).
pub fn integration_rows(m: &IntegrationMetrics) -> Vec<(&'static str, Option<f64>)> {
    vec![
        ("NMI (cluster/label)", Some(m.nmi)),
        ("ARI (cluster/label)", Some(m.ari)),
        ("ASW (label)", Some(m.asw_label)),
        ("ASW (label/batch)", m.asw_batch),
        ("Graph connectivity", Some(m.graph_connectivity)),
        ("Bio conservation (mean)", Some(m.avg_bio)),
        ("Batch correction (mean)", m.avg_batch),
    ]
}

pub fn integration_csv(m: &IntegrationMetrics) -> String {
    let mut s = String::from("metric,value\n");
    for (k, v) in integration_rows(m) {
        s.push_str(&format!(
            "{k},{}\n",
            v.map_or(String::new(), |v| format!("{v:.6}"))
        ));
    }
    s
}
