//! The GPU scatterplot widget (`gui::scatter`) in an egui_kittest harness rendered through
//! egui-wgpu (lavapipe on machines without a GPU): pixels, lasso/box selection with
//! modifiers, zoom at the cursor, pan, hover; and `ScatterPoints` bookkeeping.

use std::sync::Arc;

use cellforge::gui::scatter::{
    DEFAULT_LABEL, ScatterPoints, ScatterRenderer, ScatterView, Tool, scatter_ui,
};
use cellforge::gui::selection::point_in_polygon;
use egui::{Event, Modifiers, MouseWheelUnit, PointerButton, Pos2, TouchPhase, pos2, vec2};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;

const RED: [u8; 4] = [230, 20, 20, 255];
const GREEN: [u8; 4] = [20, 200, 20, 255];
const BLUE: [u8; 4] = [30, 60, 230, 255];
const YELLOW: [u8; 4] = [230, 220, 20, 255];
/// Cluster centres (data units); 250 points each, in this order.
const CENTERS: [[f32; 2]; 4] = [[-5.0, 5.0], [5.0, 5.0], [-5.0, -5.0], [5.0, -5.0]];
const CLUSTER_RADIUS: f32 = 1.5;
const PER_CLUSTER: usize = 250;

/// 4 sunflower-shaped clusters: red top-left, green top-right, blue
/// bottom-left, yellow bottom-right.
fn points() -> Arc<ScatterPoints> {
    let mut pos = Vec::new();
    let mut col = Vec::new();
    for (c, color) in CENTERS.iter().zip([RED, GREEN, BLUE, YELLOW]) {
        for k in 0..PER_CLUSTER {
            let r = CLUSTER_RADIUS * ((k as f32 + 0.5) / PER_CLUSTER as f32).sqrt();
            let t = k as f32 * 2.399_963;
            pos.push([c[0] + r * t.cos(), c[1] + r * t.sin()]);
            col.push(color);
        }
    }
    Arc::new(ScatterPoints::new(pos, col))
}

fn cluster(c: usize) -> Vec<u32> {
    (c * PER_CLUSTER..(c + 1) * PER_CLUSTER)
        .map(|i| i as u32)
        .collect()
}

struct State {
    view: ScatterView,
    points: Arc<ScatterPoints>,
    hovered: Option<u32>,
    selection_changes: usize,
}

fn harness(tool: Tool) -> Harness<'static, State> {
    harness_with(tool, 1.0, true)
}

fn harness_with(tool: Tool, pixels_per_point: f32, install: bool) -> Harness<'static, State> {
    let render_state = match std::panic::catch_unwind(|| {
        egui_kittest::wgpu::create_render_state(
            egui_kittest::wgpu::default_wgpu_setup(),
            egui_wgpu::RendererOptions::PREDICTABLE,
        )
    }) {
        Ok(rs) => rs,
        Err(e) => panic!(
            "egui-wgpu render state could not be created: {:?}",
            e.downcast_ref::<String>()
        ),
    };
    if install {
        ScatterRenderer::install(&render_state);
        ScatterRenderer::install(&render_state); // second call is a no-op
    }
    assert_eq!(ScatterRenderer::is_installed(&render_state), install);
    let renderer = egui_kittest::wgpu::WgpuTestRenderer::from_render_state(render_state);
    let mut view = ScatterView::new();
    view.tool = tool;
    let state = State {
        view,
        points: points(),
        hovered: None,
        selection_changes: 0,
    };
    let mut h = Harness::builder()
        .with_size(vec2(400.0, 300.0))
        .with_pixels_per_point(pixels_per_point)
        .with_max_steps(300)
        .with_step_dt(1.0 / 60.0)
        .renderer(renderer)
        .build_ui_state(
            |ui, s: &mut State| {
                let r = scatter_ui(ui, &mut s.view, &s.points);
                s.hovered = r.hovered;
                s.selection_changes += usize::from(r.changed_selection);
            },
            state,
        );
    h.run();
    h
}

fn screen(h: &Harness<'_, State>, data: [f32; 2]) -> Pos2 {
    let p = h.state().view.view().expect("view").to_screen(data);
    pos2(p[0], p[1])
}

/// The pixel at screen point `p` (points, scaled by `ppp`).
fn pixel_at(img: &image::RgbaImage, p: Pos2, ppp: f32) -> [u8; 4] {
    img.get_pixel((p.x * ppp).round() as u32, (p.y * ppp).round() as u32)
        .0
}

fn pixel(img: &image::RgbaImage, p: Pos2) -> [u8; 4] {
    pixel_at(img, p, 1.0)
}

fn assert_panel(img: &image::RgbaImage, h: &Harness<'_, State>, p: Pos2, ppp: f32) {
    let panel = h.ctx.global_style().visuals.panel_fill.to_array();
    let bg = pixel_at(img, p, ppp);
    for (a, b) in bg.iter().zip(panel) {
        assert!(
            a.abs_diff(b) <= 2,
            "background {bg:?} vs panel {panel:?} at {p:?}"
        );
    }
}

/// Presses at `path[0]`, moves through the rest, releases at the last vertex
/// with `modifiers` held.
fn drag(h: &mut Harness<'_, State>, path: &[Pos2], modifiers: Modifiers) {
    let button = |pos, pressed| Event::PointerButton {
        pos,
        button: PointerButton::Primary,
        pressed,
        modifiers,
    };
    h.event(Event::PointerMoved(path[0]));
    h.event(button(path[0], true));
    for &p in &path[1..] {
        h.event(Event::PointerMoved(p));
    }
    let last = *path.last().expect("path");
    if modifiers.is_none() {
        h.event(button(last, false));
    } else {
        h.event_modifiers(button(last, false), modifiers);
    }
    h.event(Event::PointerGone);
    h.run();
}

/// A closed circle of `n` vertices around data point `c` with screen radius `r`.
fn circle(h: &Harness<'_, State>, c: [f32; 2], r: f32, n: usize) -> Vec<Pos2> {
    let s = screen(h, c);
    (0..=n)
        .map(|k| {
            let t = k as f32 / n as f32 * std::f32::consts::TAU;
            s + r * vec2(t.cos(), t.sin())
        })
        .collect()
}

fn box_around(h: &Harness<'_, State>, c: [f32; 2], half: f32) -> Vec<Pos2> {
    let s = screen(h, c);
    vec![s - vec2(half, half), s, s + vec2(half, half)]
}

#[test]
fn renders_points_and_background() {
    let mut h = harness(Tool::Pan);
    let img = h.render().expect("render");
    let red = pixel(&img, screen(&h, CENTERS[0]));
    assert!(
        red[0] > 200 && red[1] < 60 && red[2] < 60,
        "red point pixel {red:?}"
    );
    let blue = pixel(&img, screen(&h, CENTERS[2]));
    assert!(blue[2] > 200 && blue[0] < 60, "blue point pixel {blue:?}");
    // Between the clusters, and near the plot corner: empty.
    for data in [[0.0, 0.0], [0.0, 5.0]] {
        assert_panel(&img, &h, screen(&h, data), 1.0);
    }
    // The widget is findable by its accessible label.
    let node = h.get_by_label(DEFAULT_LABEL);
    assert!(node.rect().contains(screen(&h, CENTERS[0])));
}

#[test]
fn lasso_selects_exactly_the_enclosed_cluster_and_dims_the_rest() {
    let mut h = harness(Tool::Lasso);
    let before_view = *h.state().view.view().expect("view");
    let scale = before_view.scale();
    let green_px = screen(&h, CENTERS[1]);
    let img = h.render().expect("render");
    let green_before = pixel(&img, green_px);

    let path = circle(&h, CENTERS[0], CLUSTER_RADIUS * scale + 10.0, 24);
    drag(&mut h, &path, Modifiers::NONE);

    assert_eq!(h.state().view.selection().to_vec(), cluster(0));
    assert_eq!(h.state().selection_changes, 1);
    assert_eq!(
        *h.state().view.view().expect("view"),
        before_view,
        "lasso must not pan"
    );
    assert!(h.state().view.selection_path().is_none());

    let img = h.render().expect("render");
    let red = pixel(&img, screen(&h, CENTERS[0]));
    assert!(
        red[0] > 200 && red[1] < 60,
        "selected stays bright: {red:?}"
    );
    let green_after = pixel(&img, green_px);
    assert!(
        green_before[1] > 150 && green_after[1] < 110,
        "unselected green dimmed: {green_before:?} -> {green_after:?}"
    );
}

#[test]
fn lasso_cutting_a_cluster_matches_point_in_polygon() {
    let mut h = harness(Tool::Lasso);
    let v = *h.state().view.view().expect("view");
    // A triangle through the middle of the yellow cluster.
    let c = screen(&h, CENTERS[3]);
    let path = [
        c + vec2(-40.0, -40.0),
        c + vec2(30.0, -5.0),
        c + vec2(-10.0, 35.0),
    ];
    // Dense trail along the edges so the drag registers as a lasso.
    let mut trail = Vec::new();
    for k in 0..path.len() {
        let (a, b) = (path[k], path[(k + 1) % path.len()]);
        for s in 0..10 {
            trail.push(a + (b - a) * (s as f32 / 10.0));
        }
    }
    drag(&mut h, &trail, Modifiers::NONE);
    let got = h.state().view.selection().to_vec();
    // Brute force over the same (2-px simplified) polygon in data space.
    let trail: Vec<[f32; 2]> = trail.iter().map(|p| [p.x, p.y]).collect();
    let poly = v.lasso_to_data(&cellforge::gui::selection::simplify_lasso(&trail, 2.0));
    let want: Vec<u32> = (0..h.state().points.len() as u32)
        .filter(|&i| point_in_polygon(&poly, h.state().points.positions()[i as usize]))
        .collect();
    assert!(
        !want.is_empty() && want.len() < PER_CLUSTER,
        "{}",
        want.len()
    );
    assert_eq!(got, want);
}

#[test]
fn box_replace_then_shift_adds_then_alt_subtracts() {
    let mut h = harness(Tool::Box);
    let half = CLUSTER_RADIUS * h.state().view.view().expect("view").scale() + 8.0;

    let b = box_around(&h, CENTERS[0], half);
    drag(&mut h, &b, Modifiers::NONE);
    assert_eq!(h.state().view.selection().to_vec(), cluster(0));

    let b = box_around(&h, CENTERS[2], half);
    drag(&mut h, &b, Modifiers::SHIFT);
    let mut want = cluster(0);
    want.extend(cluster(2));
    assert_eq!(h.state().view.selection().to_vec(), want);

    let b = box_around(&h, CENTERS[0], half);
    drag(&mut h, &b, Modifiers::ALT);
    assert_eq!(h.state().view.selection().to_vec(), cluster(2));

    // Plain box elsewhere replaces.
    let b = box_around(&h, CENTERS[3], half);
    drag(&mut h, &b, Modifiers::NONE);
    assert_eq!(h.state().view.selection().to_vec(), cluster(3));
    assert_eq!(h.state().selection_changes, 4);
}

#[test]
fn scroll_zoom_keeps_the_point_under_the_cursor() {
    let mut h = harness(Tool::Pan);
    let v0 = *h.state().view.view().expect("view");
    let cursor = screen(&h, [2.0, 3.0]) + vec2(3.3, -1.7);
    let anchor = v0.to_data([cursor.x, cursor.y]);
    h.hover_at(cursor);
    h.event(Event::MouseWheel {
        unit: MouseWheelUnit::Point,
        delta: vec2(0.0, 120.0),
        phase: TouchPhase::Move,
        modifiers: Modifiers::NONE,
    });
    h.run();
    let v1 = *h.state().view.view().expect("view");
    assert!(
        v1.scale() > v0.scale() * 1.2,
        "zoomed in: {} -> {}",
        v0.scale(),
        v1.scale()
    );
    let p = v1.to_screen(anchor);
    assert!(
        (p[0] - cursor.x).abs() < 0.05 && (p[1] - cursor.y).abs() < 0.05,
        "anchor moved to {p:?}, cursor {cursor:?}"
    );
}

#[test]
fn pan_drag_moves_content_and_double_click_fits() {
    let mut h = harness(Tool::Pan);
    let v0 = *h.state().view.view().expect("view");
    let start = screen(&h, [0.0, 0.0]);
    let path: Vec<Pos2> = (0..=10)
        .map(|k| start + vec2(4.0, 3.0) * k as f32)
        .collect();
    drag(&mut h, &path, Modifiers::NONE);
    let v1 = *h.state().view.view().expect("view");
    let p = v1.to_screen([0.0, 0.0]);
    assert!(
        (p[0] - (start.x + 40.0)).abs() < 0.01 && (p[1] - (start.y + 30.0)).abs() < 0.01,
        "{p:?}"
    );
    assert!(h.state().view.selection().is_empty());

    let c = pos2(200.0, 150.0);
    for _ in 0..2 {
        h.event(Event::PointerMoved(c));
        for pressed in [true, false] {
            h.event(Event::PointerButton {
                pos: c,
                button: PointerButton::Primary,
                pressed,
                modifiers: Modifiers::NONE,
            });
        }
    }
    h.run();
    assert_eq!(*h.state().view.view().expect("view"), v0);
}

#[test]
fn hover_returns_the_point_under_the_cursor() {
    let mut h = harness(Tool::Lasso);
    let target = 600; // in the blue cluster
    let p = screen(&h, h.state().points.positions()[target]);
    h.hover_at(p + vec2(0.3, -0.2));
    h.run();
    assert_eq!(h.state().hovered, Some(target as u32));
    assert_eq!(h.state().view.hovered(), Some(target as u32));

    h.hover_at(screen(&h, [0.0, 0.0]));
    h.run();
    assert_eq!(h.state().hovered, None);
}

#[test]
fn renders_at_two_pixels_per_point() {
    let mut h = harness_with(Tool::Pan, 2.0, true);
    let img = h.render().expect("render");
    assert_eq!(img.width(), 800);
    // Exact point centre (a lone point would sit at a fractional pixel).
    let p = screen(&h, h.state().points.positions()[0]);
    let red = pixel_at(&img, p, 2.0);
    assert!(red[0] > 200 && red[1] < 60, "red point pixel {red:?}");
    // The yellow cluster's right edge is 1.5 units (~30 pt) from its centre.
    let c = screen(&h, CENTERS[3]);
    let scale = h.state().view.view().expect("view").scale();
    let inside = pixel_at(&img, c + vec2(CLUSTER_RADIUS * scale - 6.0, 0.0), 2.0);
    assert!(
        inside[0] > 150 && inside[1] > 150,
        "yellow inside {inside:?}"
    );
    assert_panel(&img, &h, c + vec2(CLUSTER_RADIUS * scale + 12.0, 0.0), 2.0);
}

#[test]
fn without_install_nothing_is_drawn_but_input_works() {
    let mut h = harness_with(Tool::Box, 1.0, false);
    let img = h.render().expect("render");
    assert_panel(&img, &h, screen(&h, CENTERS[0]), 1.0);
    let half = CLUSTER_RADIUS * h.state().view.view().expect("view").scale() + 8.0;
    let b = box_around(&h, CENTERS[1], half);
    drag(&mut h, &b, Modifiers::NONE);
    assert_eq!(h.state().view.selection().to_vec(), cluster(1));
}

#[test]
fn escape_clears_the_selection() {
    let mut h = harness(Tool::Box);
    let half = CLUSTER_RADIUS * h.state().view.view().expect("view").scale() + 8.0;
    let b = box_around(&h, CENTERS[1], half);
    drag(&mut h, &b, Modifiers::NONE);
    assert_eq!(h.state().view.selection().len(), PER_CLUSTER);
    h.hover_at(pos2(200.0, 150.0));
    h.key_press(egui::Key::Escape);
    h.run();
    assert!(h.state().view.selection().is_empty());
    assert_eq!(h.state().selection_changes, 2);
}

#[test]
fn recolouring_is_drawn_without_new_positions() {
    let mut h = harness(Tool::Pan);
    let pos_gen = h.state().points.positions_generation();
    let gen0 = h.state().points.generation();
    {
        let pts = Arc::make_mut(&mut h.state_mut().points);
        for c in &mut pts.colors_mut()[..PER_CLUSTER] {
            *c = GREEN;
        }
    }
    assert_eq!(h.state().points.positions_generation(), pos_gen);
    assert_ne!(h.state().points.generation(), gen0);
    h.run();
    let img = h.render().expect("render");
    let p = pixel(&img, screen(&h, CENTERS[0]));
    assert!(
        p[1] > 150 && p[0] < 60,
        "recoloured red cluster is green: {p:?}"
    );
}

// ---- ScatterPoints bookkeeping (no GPU) ----

#[test]
fn colours_are_padded_and_generations_are_unique() {
    let a = ScatterPoints::new(
        vec![[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]],
        vec![[255, 0, 0, 255]],
    );
    assert_eq!(a.len(), 3);
    assert_eq!(a.colors()[1..], [ScatterPoints::DEFAULT_COLOR; 2]);
    let b = ScatterPoints::new(vec![[0.0, 0.0]], vec![[1, 2, 3, 4]; 5]);
    assert_eq!(b.colors(), [[1, 2, 3, 4]]);
    assert_ne!(
        a.generation(),
        b.generation(),
        "fresh points never share a generation"
    );
}

#[test]
fn recolouring_bumps_only_the_generation() {
    let mut p = ScatterPoints::new(vec![[0.0, 0.0]; 4], Vec::new());
    let (g, pg) = (p.generation(), p.positions_generation());
    p.set_colors(vec![[9, 9, 9, 255]; 4]);
    assert_ne!(p.generation(), g);
    assert_eq!(p.positions_generation(), pg);
    let g2 = p.generation();
    p.colors_mut()[0] = [1, 1, 1, 1];
    assert_ne!(p.generation(), g2);

    p.set_positions(vec![[1.0, 1.0]; 6]);
    assert_ne!(p.positions_generation(), pg);
    assert_eq!(p.positions_generation(), p.generation());
    assert_eq!(p.colors().len(), 6);
    assert_eq!(p.colors()[0], [1, 1, 1, 1]);
}
