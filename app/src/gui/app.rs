//! The main window: menu bar, welcome screen, dataset summary and obs table.

use std::path::PathBuf;
use std::sync::mpsc;

use super::loader::{LoadResult, spawn_load};

enum State {
    Welcome,
    Loading {
        path: PathBuf,
        rx: mpsc::Receiver<LoadResult>,
    },
    Loaded(Box<LoadResult>),
}

/// The cellforge desktop application.
pub struct CellforgeApp {
    ctx: egui::Context,
    state: State,
    /// The last error, shown once until dismissed.
    error: Option<(String, String)>,
}

impl CellforgeApp {
    pub fn new(ctx: egui::Context) -> Self {
        Self {
            ctx,
            state: State::Welcome,
            error: None,
        }
    }

    /// Starts loading `path` in the background.
    pub fn open(&mut self, path: PathBuf) {
        let rx = spawn_load(path.clone(), self.ctx.clone());
        self.state = State::Loading { path, rx };
    }

    fn open_dialog(&mut self) {
        if let Some(path) = rfd::FileDialog::new()
            .add_filter("AnnData", &["h5ad"])
            .pick_file()
        {
            self.open(path);
        }
    }

    fn open_demo(&mut self) {
        match super::demo_dataset_path() {
            Some(p) => self.open(p),
            None => {
                self.error = Some((
                    "The demo dataset is missing from this installation.".into(),
                    "looked next to the executable (assets/demo) and in the source tree".into(),
                ))
            }
        }
    }

    /// True while a file is being read.
    pub fn is_loading(&self) -> bool {
        matches!(self.state, State::Loading { .. })
    }

    fn poll(&mut self) {
        let State::Loading { rx, .. } = &self.state else {
            return;
        };
        let Ok(result) = rx.try_recv() else {
            return;
        };
        match result {
            LoadResult::Failed { path, error } => {
                self.error = Some((format!("Could not open {}", file_name(&path)), error));
                self.state = State::Welcome;
            }
            loaded => self.state = State::Loaded(Box::new(loaded)),
        }
    }

    fn menu_ui(&mut self, ui: &mut egui::Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open…").clicked() {
                    ui.close();
                    self.open_dialog();
                }
                if ui.button("Open the demo").clicked() {
                    ui.close();
                    self.open_demo();
                }
            });
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if let State::Loaded(r) = &self.state
                    && let LoadResult::Loaded { path, summary, .. } = r.as_ref()
                {
                    {
                        ui.label(format!(
                            "{}  {} cells",
                            file_name(path),
                            cellforge_core::fmt::thousands(summary.n_obs as u64)
                        ));
                    }
                }
            });
        });
    }

    fn welcome_ui(&mut self, ui: &mut egui::Ui) {
        ui.vertical_centered(|ui| {
            ui.add_space(ui.available_height() * 0.25);
            ui.heading("cellforge");
            ui.label("Single-cell annotation with the scGPT foundation model.");
            ui.add_space(16.0);
            if ui.button("Open the demo").clicked() {
                self.open_demo();
            }
            if ui.button("Open a dataset…").clicked() {
                self.open_dialog();
            }
            ui.add_space(8.0);
            ui.weak("or drop an .h5ad file onto this window");
        });
    }

    fn loaded_ui(ui: &mut egui::Ui, result: &LoadResult) {
        let LoadResult::Loaded {
            path,
            summary,
            obs_preview,
            obs_columns,
            warnings,
        } = result
        else {
            return;
        };
        ui.heading(file_name(path));
        ui.label(format!(
            "{} cells × {} genes",
            cellforge_core::fmt::thousands(summary.n_obs as u64),
            cellforge_core::fmt::thousands(summary.n_vars as u64)
        ));
        ui.label(summary.x_verdict());
        for w in warnings {
            ui.colored_label(ui.visuals().warn_fg_color, format!("⚠ {w}"));
        }
        ui.separator();
        egui::CollapsingHeader::new("Summary")
            .default_open(true)
            .show(ui, |ui| {
                ui.monospace(summary.render());
            });
        egui::CollapsingHeader::new(format!("obs (first {} rows)", obs_preview.len()))
            .default_open(true)
            .show(ui, |ui| {
                egui::ScrollArea::both().show(ui, |ui| {
                    egui::Grid::new("obs_table").striped(true).show(ui, |ui| {
                        ui.strong("cell");
                        for c in obs_columns {
                            ui.strong(c);
                        }
                        ui.end_row();
                        for row in obs_preview {
                            for v in row {
                                ui.label(v);
                            }
                            ui.end_row();
                        }
                    });
                });
            });
    }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

impl eframe::App for CellforgeApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll();
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .filter_map(|f| f.path.clone())
                .collect()
        });
        if let Some(path) = dropped.into_iter().next() {
            self.open(path);
        }
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::O)) {
            self.open_dialog();
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::Panel::top("menu").show(ui, |ui| self.menu_ui(ui));
        if let Some((title, detail)) = self.error.clone() {
            egui::Panel::bottom("error").show(ui, |ui| {
                ui.colored_label(ui.visuals().error_fg_color, &title);
                egui::CollapsingHeader::new("Details").show(ui, |ui| {
                    ui.monospace(&detail);
                });
                if ui.button("Dismiss").clicked() {
                    self.error = None;
                }
            });
        }
        egui::CentralPanel::default().show(ui, |ui| match &self.state {
            State::Welcome => self.welcome_ui(ui),
            State::Loading { path, .. } => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("Reading {}…", file_name(path)));
                });
            }
            State::Loaded(r) => Self::loaded_ui(ui, r),
        });
    }
}
