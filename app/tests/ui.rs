//! The desktop app driven like a person would: find widgets by their accessible labels, click,
//! and check what the window then says. Rendering (wgpu on a software Vulkan driver) is
//! exercised when `CELLFORGE_SCREENSHOT` names a PNG to write.

use cellforge::gui::CellforgeApp;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

fn app_harness() -> Harness<'static, CellforgeApp> {
    Harness::builder()
        .with_size(egui::vec2(1100.0, 760.0))
        .build_eframe(|cc| CellforgeApp::new(cc.egui_ctx.clone()))
}

/// Steps the UI until the background load finishes (bounded).
fn wait_until_loaded(h: &mut Harness<'static, CellforgeApp>) {
    let start = std::time::Instant::now();
    while h.state().is_loading() {
        assert!(start.elapsed().as_secs() < 60, "loading did not finish");
        std::thread::sleep(std::time::Duration::from_millis(20));
        h.step();
    }
    h.run_steps(3);
}

#[test]
fn welcome_screen_opens_the_demo_and_shows_its_summary() {
    let mut h = app_harness();
    h.run_steps(2);
    h.get_by_label("Open a dataset…");
    h.get_by_label("Open the demo").click();
    h.run_steps(1);
    wait_until_loaded(&mut h);
    h.get_by_label("pbmcs_small.h5ad");
    h.get_by_label("1,200 cells × 1,767 genes");
    h.get_by_label("X looks log-normalised (non-integer, small values)");
    // The cells table lists the label columns.
    h.get_by_label("Cells").click();
    h.run_steps(2);
    h.get_by_label("cell_type");
    h.get_by_label("cell_type_broad");
    if let Some(path) = std::env::var_os("CELLFORGE_SCREENSHOT") {
        let mut r = Harness::builder()
            .with_size(egui::vec2(1100.0, 760.0))
            .wgpu()
            .build_eframe(|cc| CellforgeApp::new(cc.egui_ctx.clone()));
        r.run_steps(2);
        r.get_by_label("Open the demo").click();
        r.run_steps(1);
        wait_until_loaded(&mut r);
        let image = r.render().expect("render with wgpu");
        image.save(&path).expect("save screenshot");
    }
}

#[test]
fn a_broken_file_shows_an_error_and_keeps_the_app_usable() {
    let mut h = app_harness();
    let broken = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/broken/csr_indptr_decreasing.h5ad");
    h.state_mut().open(broken);
    wait_until_loaded(&mut h);
    h.get_by_label("Could not open csr_indptr_decreasing.h5ad");
    h.get_by_label("Dismiss").click();
    h.run_steps(2);
    assert!(
        h.query_by_label("Could not open csr_indptr_decreasing.h5ad")
            .is_none()
    );
    // Back on the welcome screen, still able to open the demo.
    h.get_by_label("Open the demo");
}
