//! The desktop app (eframe + egui on wgpu). The UI thread only draws and routes commands;
//! files are read on named worker threads whose results come back through a channel that
//! wakes the UI.

mod app;
pub mod bench;
pub mod jobs;
pub mod network;
pub mod scatter;
pub mod selection;
pub mod work;

pub use app::{CellforgeApp, Startup, StartupStep, Tab, default_export_path};

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Marks the process start, for the cold-start measurement (`CELLFORGE_STARTUP_TRACE=1`
/// prints the time to the first frame; `=exit` also quits after it).
pub fn mark_process_start() {
    let _ = PROCESS_START.set(Instant::now());
}

/// Milliseconds since [`mark_process_start`].
pub fn ms_since_start() -> Option<f64> {
    PROCESS_START
        .get()
        .map(|t| t.elapsed().as_secs_f64() * 1000.0)
}

/// Opens the main window and runs until it is closed.
pub fn run(startup: Startup) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Wgpu,
        viewport: egui::ViewportBuilder::default()
            .with_title("cellforge")
            .with_inner_size([1280.0, 800.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "cellforge",
        options,
        Box::new(move |cc| {
            let mut app = CellforgeApp::from_creation_context(cc);
            app.set_startup(startup);
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Where the bundled demo model lives (see `demo_dataset_path`).
pub fn demo_model_path() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("assets/demo/model"));
        candidates.push(dir.join("../share/cellforge/demo/model"));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/demo/model"));
    candidates
        .into_iter()
        .find(|p| p.join("config.json").is_file())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
}

/// Where the bundled demo dataset lives: next to the executable (installed layouts) or in the
/// source tree's assets (development).
pub fn demo_dataset_path() -> Option<PathBuf> {
    let name = "pbmcs_small.h5ad";
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("assets/demo").join(name));
        candidates.push(dir.join("../share/cellforge/demo").join(name));
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/demo")
            .join(name),
    );
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
}
