//! The whole annotation flow in the real app, driven by accessible labels on the bundled demo
//! data and model, rendered through wgpu (lavapipe without a GPU): open -> embed -> UMAP ->
//! fine-tune (1 epoch) -> annotate -> lasso relabel -> undo -> export; then the exported file
//! is read back with Python anndata and its labels, provenance and record are checked.
//! Also: a cancelled job leaves the data as it was.

use std::path::Path;

use cellforge::gui::CellforgeApp;
use cellforge_core::tl::labels::Source;
use egui::{Event, Modifiers, PointerButton, Pos2, pos2, vec2};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

fn harness(work_root: &Path) -> Harness<'static, CellforgeApp> {
    let root = work_root.to_path_buf();
    Harness::builder()
        .with_size(vec2(1400.0, 900.0))
        .wgpu()
        .build_eframe(move |cc| {
            let mut app = CellforgeApp::from_creation_context(cc);
            app.set_work_root(root.clone());
            app
        })
}

/// Steps the UI until no job runs (bounded), then a few more frames.
fn wait_idle(h: &mut Harness<'static, CellforgeApp>, what: &str, limit_s: u64) {
    let start = std::time::Instant::now();
    h.run_steps(1);
    while h.state().is_busy() {
        assert!(
            start.elapsed().as_secs() < limit_s,
            "{what} did not finish in {limit_s} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        h.step();
    }
    h.run_steps(3);
    if let Some(e) = h.state().last_error() {
        panic!("{what} failed: {} ({})", e.title, e.detail);
    }
}

/// Scrolls the widget into view (the steps panel scrolls), then clicks it.
fn click(h: &mut Harness<'static, CellforgeApp>, label: &str) {
    h.get_by_label(label).scroll_to_me();
    // Scrolling is animated: let it settle before reading the widget's position.
    h.run_steps(30);
    h.get_by_label(label).click();
    h.run_steps(1);
}

/// Presses the job bar's Cancel at once (the bar does not scroll; the button sits before the
/// changing stage text, so it is where the last frame drew it).
fn cancel(h: &mut Harness<'static, CellforgeApp>) {
    h.get_by_label("Cancel").click();
    h.run_steps(1);
    assert!(
        h.state().is_cancelling(),
        "the Cancel click did not reach the running job"
    );
}

fn open_demo_with_model(h: &mut Harness<'static, CellforgeApp>) {
    h.run_steps(2);
    click(h, "Open the demo");
    wait_idle(h, "opening the demo", 60);
    h.get_by_label("pbmcs_small.h5ad");
    click(h, "Use the demo model");
    wait_idle(h, "opening the demo model", 60);
    h.get_by_label("2 layers × 64 dims, 4 heads, FFN 64");
    h.get_by_label_contains("1,767 of 1,767 dataset genes matched");
}

fn drag(h: &mut Harness<'static, CellforgeApp>, path: &[Pos2]) {
    let button = |pos, pressed| Event::PointerButton {
        pos,
        button: PointerButton::Primary,
        pressed,
        modifiers: Modifiers::NONE,
    };
    h.event(Event::PointerMoved(path[0]));
    h.event(button(path[0], true));
    for &p in &path[1..] {
        h.event(Event::PointerMoved(p));
        h.step();
    }
    h.event(button(*path.last().expect("path"), false));
    h.event(Event::PointerGone);
    h.run_steps(3);
}

#[test]
fn open_embed_umap_finetune_annotate_relabel_undo_export() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = harness(tmp.path());
    open_demo_with_model(&mut h);

    // Embed.
    click(&mut h, "Embed cells");
    wait_idle(&mut h, "embedding", 300);
    let a = h.state().dataset().expect("dataset");
    let emb = a.obsm.get("X_scGPT").expect("X_scGPT after embedding");
    assert_eq!(emb.shape(), Some(vec![1200, 64]));

    // Neighbours + UMAP on the embedding; the view switches to it.
    click(&mut h, "Compute UMAP");
    wait_idle(&mut h, "UMAP", 300);
    assert!(
        h.state()
            .dataset()
            .expect("dataset")
            .obsm
            .contains_key("X_umap")
    );
    assert_eq!(h.state().basis(), "X_umap");
    // Colour by a gene typed in the toolbar.
    h.get_by_label("Gene").click();
    h.get_by_label("Gene").type_text("CD3E");
    h.run_steps(1);
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
    assert_eq!(h.state().color_key(), "CD3E");

    // Fine-tune (tiny: one epoch, short cells) on the demo's cell types.
    click(&mut h, "3. Fine-tune");
    h.state_mut().finetune.epochs = 1;
    h.state_mut().finetune.max_len = 64;
    h.state_mut().finetune.batch_size = 64;
    h.state_mut().finetune.lr = 1e-3;
    // depth augmentation thins the demo's counts layer (X is log-normalised)
    h.state_mut().finetune.augment_depth = true;
    h.run_steps(2);
    h.get_by_label("Cell type column");
    click(&mut h, "Fine-tune");
    assert!(h.state().is_busy(), "fine-tuning started");
    wait_idle(&mut h, "fine-tuning", 600);
    assert_eq!(h.state().tuned_classes().map(<[String]>::len), Some(9));
    click(&mut h, "Training");
    h.get_by_label_contains("Fine-tuned model: 9 cell types");
    click(&mut h, "Embedding");

    // Annotate: predictions land in obs and the view colours by them.
    click(&mut h, "Annotate cells");
    wait_idle(&mut h, "annotation", 300);
    let a = h.state().dataset().expect("dataset");
    let predicted = a
        .obs
        .categorical("predicted_cell_type")
        .expect("predicted_cell_type");
    let predicted = predicted.labels();
    assert_eq!(predicted.len(), 1200);
    assert!(a.obs.column("predicted_cell_type_confidence").is_some());

    // Curate the predictions: the column coloured by is the default.
    click(&mut h, "Start editing");
    assert!(h.state().labels().is_some(), "label session started");
    click(&mut h, "Lasso");
    let start = std::time::Instant::now();
    while !h.state_mut().scatter_ready() {
        assert!(start.elapsed().as_secs() < 30, "scatter index not ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
        h.step();
    }
    // A lasso (circle of 40 px) around the first cell's position on screen.
    let centre = {
        let a = h.state().dataset().expect("dataset");
        let Some(cellforge_core::anndata::Element::Dense(u)) = a.obsm.get("X_umap") else {
            panic!("X_umap is dense");
        };
        let x = u.data.get_f64(0).expect("x") as f32;
        let y = u.data.get_f64(1).expect("y") as f32;
        let s = h.state().scatter().view().expect("view").to_screen([x, y]);
        pos2(s[0], s[1])
    };
    let path: Vec<Pos2> = (0..=24)
        .map(|k| {
            let t = k as f32 / 24.0 * std::f32::consts::TAU;
            centre + 40.0 * vec2(t.cos(), t.sin())
        })
        .collect();
    drag(&mut h, &path);
    let selected = h.state().scatter().selection().to_vec();
    assert!(
        selected.contains(&0) && selected.len() < 1200,
        "lasso around cell 0 selected {} cells",
        selected.len()
    );
    h.get_by_label(&format!("{} cells selected", selected.len()));

    // Marker genes of the selection against the other cells.
    click(&mut h, "Marker genes");
    wait_idle(&mut h, "marker genes", 120);
    let (n, genes) = h.state().markers().expect("markers").clone();
    assert_eq!(n, selected.len());
    assert!(genes.len() >= 10, "{genes:?}");
    let var = h.state().dataset().expect("dataset").var_names().to_vec();
    assert!(genes.iter().all(|g| var.contains(g)), "{genes:?}");
    // The legend gives each predicted type's mean confidence.
    h.get_by_label("(mean prediction confidence)");

    // Assign a new label, then a second one, then undo the second.
    h.get_by_label("Label name").click();
    h.get_by_label("Label name").type_text("Curated T");
    h.run_steps(1);
    click(&mut h, "Assign to selection");
    h.state_mut().new_label.clear();
    h.run_steps(1);
    h.get_by_label("Label name").click();
    h.get_by_label("Label name").type_text("Mistake");
    h.run_steps(1);
    {
        let s = h.state().labels().expect("session");
        assert_eq!(s.column().label_of(0), Some("Curated T"));
    }
    click(&mut h, "Assign to selection");
    assert_eq!(
        h.state().labels().expect("session").column().label_of(0),
        Some("Mistake")
    );
    click(&mut h, "Undo");
    let s = h.state().labels().expect("session");
    for &c in &selected {
        assert_eq!(s.column().label_of(c as usize), Some("Curated T"));
        assert_eq!(s.sources()[c as usize], Source::Manual);
    }
    let untouched = (0..1200u32)
        .find(|c| !selected.contains(c))
        .expect("a cell");
    assert_eq!(
        s.column().label_of(untouched as usize),
        predicted[untouched as usize].as_deref()
    );
    assert_eq!(s.sources()[untouched as usize], Source::Model);

    // The journal on disk holds the header, two edits and the undo.
    let session = h.state().session_dir().expect("session dir").to_path_buf();
    let journal = std::fs::read_dir(&session)
        .expect("session dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "journal"))
        .expect("a label journal in the session folder");
    let lines: Vec<String> = std::fs::read_to_string(&journal)
        .expect("journal")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[3].contains("\"undo\""), "{}", lines[3]);

    if let Some(path) = std::env::var_os("CELLFORGE_SCREENSHOT") {
        h.run_steps(2);
        let image = h.render().expect("render with wgpu");
        image.save(&path).expect("save screenshot");
    }

    // Benchmark: the curated labels against the demo's cell types, as scikit-learn scores them.
    click(&mut h, "Benchmark");
    click(&mut h, "Compare");
    let expected = {
        let truth = h
            .state()
            .dataset()
            .expect("dataset")
            .obs
            .categorical("cell_type")
            .expect("cell_type")
            .labels();
        let s = h.state().labels().expect("session");
        let hits = (0..1200)
            .filter(|&i| truth[i].as_deref() == s.column().label_of(i))
            .count();
        hits as f64 / 1200.0
    };
    let c = h
        .state()
        .comparison()
        .expect("compared")
        .as_ref()
        .expect("comparison ok");
    assert_eq!(c.truth, "cell_type");
    assert_eq!(c.predicted, "predicted_cell_type");
    assert!((c.report.accuracy - expected).abs() < 1e-12);
    assert!(c.names.iter().any(|n| n == "Curated T"));
    h.get_by_label_contains(&format!("Accuracy {expected:.3}"));
    // Figures and tables land next to the export path.
    h.state_mut().export_path = tmp.path().join("demo_annotated.h5ad").display().to_string();
    h.run_steps(1);
    click(&mut h, "Save confusion matrix (PNG + SVG)");
    click(&mut h, "Save tables (CSV) and confusion matrix (SVG)");
    let png = std::fs::read(tmp.path().join("demo_annotated_confusion.png")).expect("png");
    assert!(png.starts_with(b"\x89PNG"));
    let csv = std::fs::read_to_string(tmp.path().join("demo_annotated_scores.csv")).expect("csv");
    assert!(
        csv.starts_with("class,precision,recall,f1,support\n"),
        "{csv}"
    );
    assert!(csv.contains("Curated T,"), "{csv}");
    click(&mut h, "Training");
    click(&mut h, "Save curves (PNG + SVG)");
    for f in ["training_loss.png", "training_loss.svg", "validation.png"] {
        assert!(
            tmp.path().join(format!("demo_annotated_{f}")).is_file(),
            "{f}"
        );
    }
    click(&mut h, "Embedding");

    // Export under a new name (the opened demo is never written).
    let out = tmp.path().join("demo_annotated.h5ad");
    h.state_mut().export_path = out.display().to_string();
    h.run_steps(1);
    click(&mut h, "Export annotated h5ad");
    wait_idle(&mut h, "export", 120);
    assert!(out.is_file());

    // Read back with Python anndata.
    let o = cellforge_e2e::run_script(
        "check_export.py",
        &[out.as_os_str(), "predicted_cell_type".as_ref()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["n_obs"], 1200);
    let labels = v["labels"].as_array().expect("labels");
    let sources = v["sources"].as_array().expect("sources");
    for i in 0..1200usize {
        if selected.contains(&(i as u32)) {
            assert_eq!(labels[i], "Curated T", "cell {i}");
            assert_eq!(sources[i], "manual", "cell {i}");
        } else {
            assert_eq!(labels[i].as_str(), predicted[i].as_deref(), "cell {i}");
            assert_eq!(sources[i], "model", "cell {i}");
        }
    }
    assert!(
        !v["categories"]
            .as_array()
            .expect("cats")
            .iter()
            .any(|c| c == "Mistake")
    );
    let obsm: Vec<&str> = v["obsm"]
        .as_array()
        .expect("obsm")
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    for k in ["X_scGPT", "X_umap"] {
        assert!(obsm.contains(&k), "{k} in {obsm:?}");
    }
    let rec = &v["record"];
    assert_eq!(rec["label_column"], "predicted_cell_type");
    assert_eq!(rec["manual_cells"], selected.len());
    assert!(
        rec["label_metadata"]
            .as_str()
            .is_some_and(|m| m.contains("min_confidence")),
        "{rec}"
    );
    let steps = rec["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4, "{steps:?}");
}

#[test]
fn a_cancelled_job_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = harness(tmp.path());
    open_demo_with_model(&mut h);
    click(&mut h, "Embed cells");
    h.run_steps(1);
    assert!(h.state().is_busy());
    cancel(&mut h);
    wait_idle(&mut h, "cancelling", 120);
    h.get_by_label_contains("Embedding cells was cancelled; nothing was changed.");
    assert!(
        !h.state()
            .dataset()
            .expect("dataset")
            .obsm
            .contains_key("X_scGPT")
    );
    // The app is still usable: the same step runs to the end afterwards.
    click(&mut h, "Embed cells");
    wait_idle(&mut h, "embedding", 300);
    assert!(
        h.state()
            .dataset()
            .expect("dataset")
            .obsm
            .contains_key("X_scGPT")
    );
}

#[test]
fn gene_programs_and_the_gene_network() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = harness(tmp.path());
    open_demo_with_model(&mut h);
    click(&mut h, "Gene programs");
    click(&mut h, "Find gene programs");
    // Programs, then the network layout starts by itself and the Genes tab opens.
    wait_idle(&mut h, "gene programs", 300);
    wait_idle(&mut h, "network layout", 300);
    let a = h.state().dataset().expect("dataset");
    assert!(a.var.column("gene_program").is_some());
    assert!(a.varp.contains_key("gene_similarity"));
    let net = h.state().network().expect("network").clone();
    assert!(net.genes.len() > 100, "{} genes", net.genes.len());
    assert!(!net.edges.is_empty());
    assert!(net.edges.windows(2).all(|w| w[0].2 >= w[1].2));
    assert!(
        net.positions
            .iter()
            .all(|p| p[0].is_finite() && p[1].is_finite())
    );
    h.get_by_label("Gene network");
    // Raising the threshold shows fewer edges.
    let all = net.edges_above(net.min_similarity).len();
    h.state_mut().net_threshold = 0.9;
    h.run_steps(2);
    assert!(net.edges_above(0.9).len() < all);
    h.get_by_label_contains(&format!("{} edges shown", net.edges_above(0.9).len()));
    // Search selects the gene and lists its neighbours.
    let gene = net.genes[net.edges[0].0 as usize].clone();
    h.state_mut().net_threshold = net.default_threshold();
    h.get_by_label("Find gene").click();
    h.get_by_label("Find gene").type_text(&gene);
    h.run_steps(1);
    click(&mut h, "Find");
    h.run_steps(2);
    h.get_by_label_contains(&format!("{gene} (program"));
    h.state_mut().export_path = tmp.path().join("demo.h5ad").display().to_string();
    click(&mut h, "Save network (PNG + SVG)");
    let svg = std::fs::read_to_string(tmp.path().join("demo_gene_network.svg")).expect("svg");
    assert!(
        svg.contains(&format!(">{gene}</text>")),
        "the searched gene is named"
    );
    assert!(svg.matches("<circle").count() == net.genes.len());
    assert!(tmp.path().join("demo_gene_network.png").is_file());
    if let Some(path) = std::env::var_os("CELLFORGE_NETWORK_SCREENSHOT") {
        let image = h.render().expect("render with wgpu");
        image.save(&path).expect("save screenshot");
    }
}
