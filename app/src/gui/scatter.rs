//! GPU scatterplot widget for cell embeddings (UMAP etc.).
//!
//! Points are drawn by the WGSL shader [`SCATTER_WGSL`] through an
//! [`egui_wgpu::CallbackTrait`] paint callback, never by egui's painter (egui's
//! painter only draws the lasso/box outline and the hover ring on top).
//!
//! * [`ScatterRenderer::install`] creates the pipeline and bind group layout once
//!   and stores them in the renderer's `callback_resources`. Each plot
//!   ([`ScatterView`]) gets its own uniform and instance buffers there, created
//!   on its first frame and reused afterwards.
//! * [`ScatterPoints`] holds positions and colours with a generation number; the
//!   GPU buffers are re-uploaded (in `prepare`) only when it changes, positions
//!   and colours separately, and grown by doubling.
//! * [`ScatterView`] holds the interaction state: the [`View`] transform, the
//!   [`PointIndex`] (built on a worker thread), the [`Selection`], the hovered
//!   point, the current [`Tool`] and the in-progress lasso/box.
//! * [`scatter_ui`] is the widget: drag pans (Pan tool, or secondary/middle
//!   button with any tool) or lassos/boxes (Shift = add, Alt = subtract,
//!   Shift+Alt = intersect, plain = replace), scroll/pinch zooms at the cursor,
//!   double-click fits, Escape cancels a drag or clears the selection, hover picks
//!   the nearest point within [`ScatterView::hover_radius`].
//!
//! While a selection exists, all points are drawn dimmed and the selected ones
//! are drawn again on top in full colour from a second, compact instance buffer
//! (rebuilt only when the selection or the colours change).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use egui::{Color32, Pos2, Sense, Stroke, Vec2, pos2};

use super::selection::{self, PointIndex, SelectMode, Selection, View, simplify_lasso};

/// The point shader (`shaders/wgsl/scatter.wgsl`).
pub use cellforge_shaders::SCATTER_WGSL;

/// Accessible label of the widget unless [`ScatterView::label`] is changed.
pub const DEFAULT_LABEL: &str = "Cell scatterplot";

/// Margin kept around the data when fitting the view, in points.
const FIT_MARGIN: f32 = 12.0;
/// Lasso vertices closer than this (points) to the previous one are dropped.
const LASSO_STEP: f32 = 2.0;
/// One triangle per point (see the WGSL).
const VERTICES_PER_POINT: u32 = 3;
/// Smallest buffer allocated, in bytes.
const MIN_BUFFER_BYTES: u64 = 4096;

/// Unique, never-reused numbers for generations and plot keys: a new
/// [`ScatterPoints`] never collides with an old one's generation.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Points
// ---------------------------------------------------------------------------

/// Point positions (data units) and colours (RGBA, sRGB, straight alpha).
///
/// Every change gives the points a new [`generation`](Self::generation)
/// (unique across all instances); the GPU copy is refreshed when it differs.
/// Positions have their own generation so that recolouring neither re-uploads
/// positions nor rebuilds the spatial index.
#[derive(Clone, Debug)]
pub struct ScatterPoints {
    positions: Vec<[f32; 2]>,
    colors: Vec<[u8; 4]>,
    generation: u64,
    positions_generation: u64,
}

impl Default for ScatterPoints {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

impl ScatterPoints {
    /// Colour of points without one.
    pub const DEFAULT_COLOR: [u8; 4] = [128, 128, 128, 255];

    /// `colors` is truncated or padded with [`Self::DEFAULT_COLOR`] to the
    /// number of positions. Non-finite positions are not drawn or picked.
    pub fn new(positions: Vec<[f32; 2]>, colors: Vec<[u8; 4]>) -> Self {
        let generation = next_id();
        let mut points = Self {
            positions,
            colors,
            generation,
            positions_generation: generation,
        };
        points.fix_colors();
        points
    }

    fn fix_colors(&mut self) {
        self.colors
            .resize(self.positions.len(), Self::DEFAULT_COLOR);
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    pub fn positions(&self) -> &[[f32; 2]] {
        &self.positions
    }

    pub fn colors(&self) -> &[[u8; 4]] {
        &self.colors
    }

    /// Changes on every modification.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Changes when the positions (or their number) change.
    pub fn positions_generation(&self) -> u64 {
        self.positions_generation
    }

    /// Replaces the positions (a new embedding); colours are kept, padded or
    /// truncated to the new length.
    pub fn set_positions(&mut self, positions: Vec<[f32; 2]>) {
        self.positions = positions;
        self.fix_colors();
        self.generation = next_id();
        self.positions_generation = self.generation;
    }

    /// Replaces the colours (truncated or padded to the number of points).
    pub fn set_colors(&mut self, colors: Vec<[u8; 4]>) {
        self.colors = colors;
        self.fix_colors();
        self.generation = next_id();
    }

    /// Mutable colours; the generation is bumped up front.
    pub fn colors_mut(&mut self) -> &mut [[u8; 4]] {
        self.generation = next_id();
        &mut self.colors
    }
}

/// The selected points, copied into a compact list drawn on top.
#[derive(Debug)]
struct SelectedPoints {
    generation: u64,
    positions: Vec<[f32; 2]>,
    colors: Vec<[u8; 4]>,
}

// ---------------------------------------------------------------------------
// View state
// ---------------------------------------------------------------------------

/// What a primary-button drag does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tool {
    #[default]
    Pan,
    Lasso,
    Box,
}

/// A selection gesture in progress, in screen points.
#[derive(Clone, Debug, PartialEq)]
pub enum SelectionPath {
    Lasso(Vec<Pos2>),
    Box { start: Pos2, end: Pos2 },
}

enum IndexState {
    None,
    Building(JoinHandle<PointIndex>),
    Ready(PointIndex),
}

/// Interaction state of one scatterplot. Not `Clone`: each view owns its own
/// GPU buffers, keyed by a unique id.
pub struct ScatterView {
    /// What a primary drag does.
    pub tool: Tool,
    /// Point radius in points (logical pixels).
    pub point_radius: f32,
    /// Hover pick distance in points.
    pub hover_radius: f32,
    /// Accessible label of the widget.
    pub label: String,
    key: u64,
    view: Option<View>,
    fit_pending: bool,
    bounds: Option<selection::Rect>,
    positions_generation: u64,
    index: IndexState,
    selection: Selection,
    selection_generation: u64,
    selected: Option<Arc<SelectedPoints>>,
    /// `(selection_generation, points.generation)` the cache was built from.
    selected_key: (u64, u64),
    hovered: Option<u32>,
    path: Option<SelectionPath>,
    /// Pointer position at the previous frame of a pan drag.
    pan_anchor: Option<Pos2>,
}

impl std::fmt::Debug for ScatterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScatterView")
            .field("tool", &self.tool)
            .field("view", &self.view)
            .field("selected", &self.selection.len())
            .field("hovered", &self.hovered)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Default for ScatterView {
    fn default() -> Self {
        Self::new()
    }
}

impl ScatterView {
    pub fn new() -> Self {
        Self {
            tool: Tool::Pan,
            point_radius: 3.0,
            hover_radius: 6.0,
            label: DEFAULT_LABEL.to_owned(),
            key: next_id(),
            view: None,
            fit_pending: true,
            bounds: None,
            positions_generation: 0,
            index: IndexState::None,
            selection: Selection::new(0),
            selection_generation: 0,
            selected: None,
            selected_key: (u64::MAX, u64::MAX),
            hovered: None,
            path: None,
            pan_anchor: None,
        }
    }

    /// The data <-> screen transform (`None` before the first frame).
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// Mutable transform, e.g. to restore a saved view.
    pub fn view_mut(&mut self) -> Option<&mut View> {
        self.view.as_mut()
    }

    /// Re-frames all points on the next frame.
    pub fn fit(&mut self) {
        self.fit_pending = true;
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// Replaces the selection (e.g. after relabelling). A selection whose size
    /// differs from the number of points is replaced by an empty one when the
    /// points are next shown.
    pub fn set_selection(&mut self, selection: Selection) {
        self.selection = selection;
        self.selection_generation = next_id();
    }

    pub fn clear_selection(&mut self) {
        self.selection.clear();
        self.selection_generation = next_id();
    }

    /// The point under the cursor in the last frame.
    pub fn hovered(&self) -> Option<u32> {
        self.hovered
    }

    /// The lasso or box being dragged, in screen points.
    pub fn selection_path(&self) -> Option<&SelectionPath> {
        self.path.as_ref()
    }

    /// The spatial index if it has finished building.
    pub fn index(&mut self) -> Option<&PointIndex> {
        self.poll_index(false);
        match &self.index {
            IndexState::Ready(index) => Some(index),
            _ => None,
        }
    }

    fn poll_index(&mut self, block: bool) {
        if let IndexState::Building(handle) = &self.index
            && (block || handle.is_finished())
        {
            let IndexState::Building(handle) = std::mem::replace(&mut self.index, IndexState::None)
            else {
                unreachable!()
            };
            self.index = match handle.join() {
                Ok(index) => IndexState::Ready(index),
                Err(panic) => std::panic::resume_unwind(panic),
            };
        }
    }

    /// Brings the state in line with `points` (new embedding -> new index,
    /// bounds, refit; new length -> empty selection).
    fn sync(&mut self, points: &Arc<ScatterPoints>) {
        if points.positions_generation() != self.positions_generation {
            self.positions_generation = points.positions_generation();
            self.bounds = selection::Rect::bounding(points.positions());
            let pts = Arc::clone(points);
            self.index = IndexState::Building(std::thread::spawn(move || {
                PointIndex::build(pts.positions())
            }));
            self.fit_pending = true;
            self.hovered = None;
            self.path = None;
        }
        if self.selection.n_cells() != points.len() {
            self.selection = Selection::new(points.len());
            self.selection_generation = next_id();
        }
        let key = (self.selection_generation, points.generation());
        if key != self.selected_key {
            self.selected_key = key;
            self.selected = (!self.selection.is_empty()).then(|| {
                let n = self.selection.len();
                let (mut positions, mut colors) = (Vec::with_capacity(n), Vec::with_capacity(n));
                for i in self.selection.iter() {
                    positions.push(points.positions()[i as usize]);
                    colors.push(points.colors()[i as usize]);
                }
                Arc::new(SelectedPoints {
                    generation: next_id(),
                    positions,
                    colors,
                })
            });
        }
    }

    /// Applies a finished lasso/box gesture; returns whether the selection changed.
    fn finish_path(&mut self, path: SelectionPath, mode: SelectMode) -> bool {
        let Some(view) = self.view else {
            return false;
        };
        self.poll_index(true);
        let IndexState::Ready(index) = &self.index else {
            return false;
        };
        let picked = match path {
            SelectionPath::Lasso(trail) => {
                let trail: Vec<[f32; 2]> = trail.iter().map(|p| [p.x, p.y]).collect();
                let polygon = view.lasso_to_data(&simplify_lasso(&trail, LASSO_STEP));
                index.in_polygon(&polygon, None)
            }
            SelectionPath::Box { start, end } => {
                let r = view.screen_rect_to_data([start.x, start.y], [end.x, end.y]);
                index.in_rect(r.min, r.max, None)
            }
        };
        let before = self.selection.clone();
        self.selection.combine(mode, &picked);
        let changed = self.selection != before;
        if changed {
            self.selection_generation = next_id();
        }
        changed
    }
}

// ---------------------------------------------------------------------------
// Widget
// ---------------------------------------------------------------------------

/// What [`scatter_ui`] reports for one frame.
#[derive(Debug)]
pub struct ScatterResponse {
    /// The selection changed this frame (lasso/box finished, Escape).
    pub changed_selection: bool,
    /// Point under the cursor, for a tooltip the caller fills
    /// (e.g. `response.response.on_hover_ui(..)`).
    pub hovered: Option<u32>,
    pub response: egui::Response,
}

/// The scatterplot widget: fills the available space. Needs
/// [`ScatterRenderer::install`] to have been called on the wgpu render state;
/// without it the points are simply not drawn.
pub fn scatter_ui(
    ui: &mut egui::Ui,
    view: &mut ScatterView,
    points: &Arc<ScatterPoints>,
) -> ScatterResponse {
    view.sync(points);
    view.poll_index(false);

    let mut size = ui.available_size();
    for (v, fallback) in [(&mut size.x, 400.0), (&mut size.y, 300.0)] {
        if !v.is_finite() {
            *v = fallback;
        }
        *v = v.max(16.0);
    }
    let (rect, response) = ui.allocate_exact_size(size, Sense::click_and_drag());
    let screen = selection::Rect::new([rect.min.x, rect.min.y], [rect.max.x, rect.max.y]);
    let unit = selection::Rect::new([-1.0, -1.0], [1.0, 1.0]);

    let mut v = match view.view {
        Some(mut v) => {
            v.set_screen_rect(screen);
            v
        }
        None => View::fit(view.bounds.unwrap_or(unit), screen, FIT_MARGIN),
    };
    if view.fit_pending || response.double_clicked() {
        v.refit(view.bounds.unwrap_or(unit), FIT_MARGIN);
        view.fit_pending = false;
    }

    let (modifiers, press_origin, latest_pos) = ui.input(|i| {
        (
            i.modifiers,
            i.pointer.press_origin(),
            i.pointer.latest_pos(),
        )
    });
    let mut changed_selection = false;

    // Panning: the content follows the pointer from where the button went down
    // (egui's `drag_delta` leaves out the movement before the drag threshold).
    let pan_buttons = [
        (view.tool == Tool::Pan, egui::PointerButton::Primary),
        (true, egui::PointerButton::Secondary),
        (true, egui::PointerButton::Middle),
    ];
    for (enabled, button) in pan_buttons {
        if !enabled {
            continue;
        }
        if response.drag_started_by(button) {
            view.pan_anchor = press_origin;
        }
        if response.dragged_by(button) || response.drag_stopped_by(button) {
            let pos = response.interact_pointer_pos().or(latest_pos);
            if let (Some(last), Some(pos)) = (view.pan_anchor, pos) {
                v.pan([pos.x - last.x, pos.y - last.y]);
                view.pan_anchor = Some(pos);
            }
        }
        if response.drag_stopped_by(button) {
            view.pan_anchor = None;
        }
    }

    // Lasso / box.
    let primary = egui::PointerButton::Primary;
    if view.tool != Tool::Pan {
        if response.drag_started_by(primary) {
            let start = press_origin
                .or(response.interact_pointer_pos())
                .unwrap_or(rect.center());
            view.path = Some(match view.tool {
                Tool::Box => SelectionPath::Box { start, end: start },
                _ => SelectionPath::Lasso(vec![start]),
            });
        }
        let pos = response.interact_pointer_pos().or(latest_pos);
        if (response.dragged_by(primary) || response.drag_stopped_by(primary))
            && let (Some(path), Some(pos)) = (view.path.as_mut(), pos)
        {
            match path {
                SelectionPath::Lasso(trail) => {
                    if trail.last() != Some(&pos) {
                        trail.push(pos);
                    }
                }
                SelectionPath::Box { end, .. } => *end = pos,
            }
        }
        if response.drag_stopped_by(primary)
            && let Some(path) = view.path.take()
        {
            view.view = Some(v);
            let mode = SelectMode::from_modifiers(modifiers.shift, modifiers.alt);
            changed_selection |= view.finish_path(path, mode);
        }
    } else {
        view.path = None;
    }

    if response.hovered() && ui.input(|i| i.key_pressed(egui::Key::Escape)) {
        let cancelled_drag = view.path.take().is_some();
        if !cancelled_drag && !view.selection.is_empty() {
            view.clear_selection();
            changed_selection = true;
        }
    }

    // Zoom at the cursor: wheel (smoothed by egui) and pinch / ctrl-wheel.
    if let Some(hover) = response.hover_pos() {
        let (scroll, zoom) = ui.input(|i| (i.smooth_scroll_delta(), i.zoom_delta()));
        let factor = zoom * (scroll.y * 0.0025).exp();
        if factor.is_finite() && factor > 0.0 && factor != 1.0 {
            v.zoom_at([hover.x, hover.y], factor);
        }
        if scroll != Vec2::ZERO {
            // Keep an enclosing ScrollArea from scrolling as well.
            ui.input_mut(|i| i.smooth_scroll_delta = Vec2::ZERO);
        }
    }
    view.view = Some(v);

    if changed_selection {
        view.sync(points);
    }

    // Hover pick (not while dragging a selection).
    view.hovered = None;
    if let Some(hover) = response.hover_pos()
        && view.path.is_none()
    {
        // The first pick after new points waits for the worker (~40 ms at 1M).
        view.poll_index(true);
        if let IndexState::Ready(index) = &view.index {
            let max = v.px_to_data(view.hover_radius);
            view.hovered = index.nearest(v.to_data([hover.x, hover.y]), max, None);
        }
    }

    // Paint: the GPU callback, then egui overlays.
    let painter = ui.painter_at(rect);
    let center = rect.center();
    painter.add(egui_wgpu::Callback::new_paint_callback(
        rect,
        ScatterCallback {
            rect,
            key: view.key,
            points: Arc::clone(points),
            selected: view.selected.clone(),
            origin: v.to_data([center.x, center.y]),
            origin_screen: center,
            px_per_unit: v.scale(),
            radius: view.point_radius,
        },
    ));
    let accent = ui.visuals().selection.stroke.color;
    let stroke = Stroke::new(1.5, accent);
    match &view.path {
        Some(SelectionPath::Lasso(trail)) if trail.len() > 1 => {
            painter.add(egui::Shape::line(trail.clone(), stroke));
            // The implicit closing edge, fainter.
            let closing = Stroke::new(1.0, accent.gamma_multiply(0.5));
            painter.line_segment([trail[trail.len() - 1], trail[0]], closing);
        }
        Some(SelectionPath::Box { start, end }) => {
            let r = egui::Rect::from_two_pos(*start, *end);
            painter.rect_filled(r, 0.0, accent.gamma_multiply(0.08));
            painter.rect_stroke(r, 0.0, stroke, egui::StrokeKind::Middle);
        }
        _ => {}
    }
    if let Some(i) = view.hovered {
        let p = v.to_screen(points.positions()[i as usize]);
        let ring = Stroke::new(1.5, ui.visuals().strong_text_color());
        painter.circle_stroke(pos2(p[0], p[1]), view.point_radius + 3.0, ring);
    }

    let enabled = ui.is_enabled();
    let label = view.label.clone();
    response.widget_info(|| egui::WidgetInfo::labeled(egui::WidgetType::Other, enabled, &label));

    ScatterResponse {
        changed_selection,
        hovered: view.hovered,
        response,
    }
}

// ---------------------------------------------------------------------------
// GPU side
// ---------------------------------------------------------------------------

/// Layout shared with `Uniforms` in the WGSL (checked by the shaders crate's tests).
use cellforge_shaders::ScatterUniforms as Uniforms;

/// Installs the scatterplot's GPU resources into an egui-wgpu renderer.
#[derive(Debug)]
pub struct ScatterRenderer;

impl ScatterRenderer {
    /// Creates the pipeline and bind group layout once (a second call is a
    /// no-op) for egui's default render pass: no MSAA, no depth buffer.
    pub fn install(render_state: &egui_wgpu::RenderState) {
        Self::install_with(render_state, 1, None);
    }

    /// Like [`Self::install`] for an app whose egui render pass uses
    /// multisampling or a depth buffer (eframe's `multisampling` and
    /// `depth_buffer` options; egui-wgpu does not expose them after creation).
    pub fn install_with(
        render_state: &egui_wgpu::RenderState,
        msaa_samples: u32,
        depth_format: Option<wgpu::TextureFormat>,
    ) {
        if Self::is_installed(render_state) {
            return;
        }
        let resources = ScatterResources::new(
            &render_state.device,
            render_state.target_format,
            msaa_samples,
            depth_format,
        );
        render_state
            .renderer
            .write()
            .callback_resources
            .insert(resources);
    }

    pub fn is_installed(render_state: &egui_wgpu::RenderState) -> bool {
        render_state
            .renderer
            .read()
            .callback_resources
            .contains::<ScatterResources>()
    }

    /// Frees the GPU buffers of `view` (call when closing a plot for good).
    pub fn release(render_state: &egui_wgpu::RenderState, view: &ScatterView) {
        if let Some(res) = render_state
            .renderer
            .write()
            .callback_resources
            .get_mut::<ScatterResources>()
        {
            res.plots.remove(&view.key);
        }
    }
}

struct ScatterResources {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    max_buffer_size: u64,
    plots: HashMap<u64, PlotGpu>,
}

impl ScatterResources {
    fn new(
        device: &wgpu::Device,
        format: wgpu::TextureFormat,
        msaa_samples: u32,
        depth_format: Option<wgpu::TextureFormat>,
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("scatter.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SCATTER_WGSL.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("scatter uniforms"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(size_of::<Uniforms>() as u64),
                },
                count: None,
            }],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("scatter"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("scatter points"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs_main"),
                compilation_options: wgpu::PipelineCompilationOptions::default(),
                buffers: &cellforge_shaders::scatter_vertex_layouts(),
            },
            primitive: wgpu::PrimitiveState {
                topology: wgpu::PrimitiveTopology::TriangleList,
                cull_mode: None,
                ..Default::default()
            },
            depth_stencil: depth_format.map(|format| wgpu::DepthStencilState {
                format,
                depth_write_enabled: Some(false),
                depth_compare: Some(wgpu::CompareFunction::Always),
                stencil: wgpu::StencilState::default(),
                bias: wgpu::DepthBiasState::default(),
            }),
            multisample: wgpu::MultisampleState {
                count: msaa_samples.max(1),
                ..Default::default()
            },
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some(if format.is_srgb() {
                    "fs_main_linear"
                } else {
                    "fs_main"
                }),
                compilation_options: wgpu::PipelineCompilationOptions::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format,
                    // Same as egui's own pipeline: premultiplied colour.
                    blend: Some(wgpu::BlendState {
                        color: wgpu::BlendComponent {
                            src_factor: wgpu::BlendFactor::One,
                            dst_factor: wgpu::BlendFactor::OneMinusSrcAlpha,
                            operation: wgpu::BlendOperation::Add,
                        },
                        alpha: wgpu::BlendComponent {
                            src_factor: wgpu::BlendFactor::OneMinusDstAlpha,
                            dst_factor: wgpu::BlendFactor::One,
                            operation: wgpu::BlendOperation::Add,
                        },
                    }),
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            multiview_mask: None,
            cache: None,
        });
        Self {
            pipeline,
            layout,
            max_buffer_size: device.limits().max_buffer_size,
            plots: HashMap::new(),
        }
    }
}

/// A growable vertex buffer.
struct GpuVec {
    buffer: wgpu::Buffer,
    label: &'static str,
}

impl GpuVec {
    fn new(device: &wgpu::Device, label: &'static str) -> Self {
        Self {
            buffer: Self::alloc(device, label, MIN_BUFFER_BYTES),
            label,
        }
    }

    fn alloc(device: &wgpu::Device, label: &'static str, size: u64) -> wgpu::Buffer {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::VERTEX | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Uploads `bytes` (a multiple of 4 long), growing the buffer by doubling.
    fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, bytes: &[u8], max: u64) {
        let needed = bytes.len() as u64;
        if needed > self.buffer.size() {
            let size = needed
                .next_power_of_two()
                .min(max)
                .max(needed)
                .max(MIN_BUFFER_BYTES);
            self.buffer = Self::alloc(device, self.label, size);
        }
        if !bytes.is_empty() {
            queue.write_buffer(&self.buffer, 0, bytes);
        }
    }
}

/// Buffers of one plot, created on its first frame.
struct PlotGpu {
    uniforms: [wgpu::Buffer; 2],
    bind_groups: [wgpu::BindGroup; 2],
    positions: GpuVec,
    colors: GpuVec,
    sel_positions: GpuVec,
    sel_colors: GpuVec,
    uploaded: (u64, u64),
    uploaded_selected: u64,
    /// Instances in `positions`/`colors` and in `sel_*`.
    n_points: u32,
    n_selected: u32,
    last_uniforms: [Uniforms; 2],
}

impl PlotGpu {
    fn new(device: &wgpu::Device, layout: &wgpu::BindGroupLayout) -> Self {
        let uniforms = ["scatter uniforms", "scatter uniforms (dimmed)"].map(|label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size_of::<Uniforms>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let bind_groups = [0, 1].map(|i| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("scatter uniforms"),
                layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniforms[i].as_entire_binding(),
                }],
            })
        });
        Self {
            uniforms,
            bind_groups,
            positions: GpuVec::new(device, "scatter positions"),
            colors: GpuVec::new(device, "scatter colours"),
            sel_positions: GpuVec::new(device, "scatter selected positions"),
            sel_colors: GpuVec::new(device, "scatter selected colours"),
            uploaded: (0, 0),
            uploaded_selected: 0,
            n_points: 0,
            n_selected: 0,
            last_uniforms: [Uniforms {
                dim: -1.0,
                ..Default::default()
            }; 2],
        }
    }
}

/// Largest instance count whose positions fit in one buffer.
fn max_instances(max_buffer_size: u64) -> usize {
    usize::try_from((max_buffer_size / 8).min(u64::from(u32::MAX))).unwrap_or(usize::MAX)
}

struct ScatterCallback {
    /// The paint rect (egui passes it to `paint` only; `prepare` needs it too).
    rect: egui::Rect,
    key: u64,
    points: Arc<ScatterPoints>,
    selected: Option<Arc<SelectedPoints>>,
    /// Data point drawn at `origin_screen`.
    origin: [f32; 2],
    origin_screen: Pos2,
    /// Zoom: points per data unit.
    px_per_unit: f32,
    /// Point radius in points.
    radius: f32,
}

impl ScatterCallback {
    fn uniforms(&self, rect: egui::Rect, screen: &egui_wgpu::ScreenDescriptor) -> Uniforms {
        let ppp = screen.pixels_per_point;
        // The viewport egui sets before `paint`, in physical pixels.
        let vp = egui::epaint::ViewportInPixels::from_points(&rect, ppp, screen.size_in_pixels);
        let (w, h) = (vp.width_px.max(1) as f32, vp.height_px.max(1) as f32);
        let o = self.origin_screen * ppp;
        Uniforms {
            origin: self.origin,
            scale: [
                2.0 * self.px_per_unit * ppp / w,
                2.0 * self.px_per_unit * ppp / h,
            ],
            offset: [
                2.0 * (o.x - vp.left_px as f32) / w - 1.0,
                1.0 - 2.0 * (o.y - vp.top_px as f32) / h,
            ],
            viewport_px: [w, h],
            radius_px: self.radius * ppp,
            dim: 0.0,
            _pad: [0.0; 2],
        }
    }
}

impl egui_wgpu::CallbackTrait for ScatterCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(res) = resources.get_mut::<ScatterResources>() else {
            return Vec::new();
        };
        let cb = self;
        let max_n = max_instances(res.max_buffer_size);
        let max = res.max_buffer_size;
        let plot = res
            .plots
            .entry(cb.key)
            .or_insert_with(|| PlotGpu::new(device, &res.layout));

        let pts = &cb.points;
        let n = pts.len().min(max_n);
        if plot.uploaded.0 != pts.positions_generation() {
            let bytes = bytemuck::cast_slice(&pts.positions()[..n]);
            plot.positions.upload(device, queue, bytes, max);
        }
        if plot.uploaded.1 != pts.generation() {
            let bytes = bytemuck::cast_slice(&pts.colors()[..n]);
            plot.colors.upload(device, queue, bytes, max);
        }
        plot.uploaded = (pts.positions_generation(), pts.generation());
        plot.n_points = n as u32;

        plot.n_selected = 0;
        if let Some(sel) = &cb.selected {
            let m = sel.positions.len().min(max_n);
            if plot.uploaded_selected != sel.generation {
                let p = bytemuck::cast_slice(&sel.positions[..m]);
                plot.sel_positions.upload(device, queue, p, max);
                let c = bytemuck::cast_slice(&sel.colors[..m]);
                plot.sel_colors.upload(device, queue, c, max);
                plot.uploaded_selected = sel.generation;
            }
            plot.n_selected = m as u32;
        }

        let normal = cb.uniforms(self.rect, screen);
        let dimmed = Uniforms { dim: 1.0, ..normal };
        for (i, u) in [normal, dimmed].into_iter().enumerate() {
            if plot.last_uniforms[i] != u {
                queue.write_buffer(&plot.uniforms[i], 0, bytemuck::bytes_of(&u));
                plot.last_uniforms[i] = u;
            }
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(res) = resources.get::<ScatterResources>() else {
            return;
        };
        let Some(plot) = res.plots.get(&self.key) else {
            return;
        };
        pass.set_pipeline(&res.pipeline);
        let draw = |pass: &mut wgpu::RenderPass<'static>, pos: &GpuVec, col: &GpuVec, n: u32| {
            if n > 0 {
                pass.set_vertex_buffer(0, pos.buffer.slice(..u64::from(n) * 8));
                pass.set_vertex_buffer(1, col.buffer.slice(..u64::from(n) * 4));
                pass.draw(0..VERTICES_PER_POINT, 0..n);
            }
        };
        if plot.n_selected > 0 {
            pass.set_bind_group(0, &plot.bind_groups[1], &[]);
            draw(pass, &plot.positions, &plot.colors, plot.n_points);
            pass.set_bind_group(0, &plot.bind_groups[0], &[]);
            draw(pass, &plot.sel_positions, &plot.sel_colors, plot.n_selected);
        } else {
            pass.set_bind_group(0, &plot.bind_groups[0], &[]);
            draw(pass, &plot.positions, &plot.colors, plot.n_points);
        }
    }
}

/// Packs an egui colour as straight-alpha RGBA for [`ScatterPoints`].
pub fn rgba(color: Color32) -> [u8; 4] {
    color.to_srgba_unmultiplied()
}
