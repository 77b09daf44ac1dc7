//! Selection geometry for the cell scatterplot.
//!
//! This module holds everything the scatterplot needs to turn mouse input into
//! sets of cell indices, with no GUI types involved:
//!
//! * [`View`]: the data -> screen transform (pan, zoom about the cursor, fit with
//!   a 1:1 aspect ratio). Screen y grows downwards, data y grows upwards.
//! * [`PointIndex`]: a uniform grid over the finite data points, answering hover
//!   picks ([`PointIndex::nearest`]), box selections ([`PointIndex::in_rect`])
//!   and lasso selections ([`PointIndex::in_polygon`]), optionally limited to the
//!   visible cells.
//! * [`Selection`]: a bitset of selected cells, combined with new picks through
//!   [`SelectMode`] (replace / add / subtract / intersect).
//! * [`simplify_lasso`]: thins the high-rate mouse trail of a lasso drag.
//!
//! # Why a uniform grid
//!
//! The points are static while the user interacts, so the index is built once
//! per embedding. A grid stored in compressed-row form (points sorted by cell,
//! one offset per cell) is built by a single counting sort, keeps the points of
//! one grid row contiguous in memory, and lets the range queries accept or
//! reject whole cells with one comparison of cell indices. A k-d tree would adapt
//! better to very uneven densities, but UMAP layouts are bounded and moderately
//! clustered, and with ~2 points per cell on average the grid already keeps
//! hover picks to a handful of distance tests. Lasso queries walk the grid row by
//! row with only the polygon edges that touch that row, test points one by one
//! only in cells that an edge passes through, and classify every other cell from
//! a single representative point.
//!
//! # Exactness
//!
//! The mapping from a coordinate to its grid column (or row) is a monotone
//! function, and every query relies only on that monotonicity, so the results
//! are exactly those of the brute-force predicates ([`point_in_polygon`],
//! inclusive rectangle test, smallest squared distance with ties broken by the
//! smaller index), including for points lying exactly on grid-cell borders.
//! All query results are sorted ascending and deterministic.

use rayon::prelude::*;
use std::ops::Range;

// ---------------------------------------------------------------------------
// Rect
// ---------------------------------------------------------------------------

/// An axis-aligned rectangle, in data units or in screen pixels depending on use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub min: [f32; 2],
    pub max: [f32; 2],
}

impl Rect {
    /// The rectangle spanned by two opposite corners, in any order.
    pub fn new(a: [f32; 2], b: [f32; 2]) -> Self {
        Self {
            min: [a[0].min(b[0]), a[1].min(b[1])],
            max: [a[0].max(b[0]), a[1].max(b[1])],
        }
    }

    /// Bounding box of the finite points, or `None` when there is none.
    pub fn bounding(points: &[[f32; 2]]) -> Option<Self> {
        points
            .par_iter()
            .with_min_len(1 << 14)
            .fold(|| None, |acc, &p| grow(acc, p))
            .reduce(|| None, union)
    }

    pub fn width(&self) -> f32 {
        self.max[0] - self.min[0]
    }

    pub fn height(&self) -> f32 {
        self.max[1] - self.min[1]
    }

    pub fn center(&self) -> [f32; 2] {
        [
            0.5 * (self.min[0] + self.max[0]),
            0.5 * (self.min[1] + self.max[1]),
        ]
    }

    /// Inclusive containment test.
    pub fn contains(&self, p: [f32; 2]) -> bool {
        p[0] >= self.min[0] && p[0] <= self.max[0] && p[1] >= self.min[1] && p[1] <= self.max[1]
    }

    pub fn is_finite(&self) -> bool {
        is_finite(self.min) && is_finite(self.max)
    }
}

fn is_finite(p: [f32; 2]) -> bool {
    p[0].is_finite() && p[1].is_finite()
}

fn grow(acc: Option<Rect>, p: [f32; 2]) -> Option<Rect> {
    if !is_finite(p) {
        return acc;
    }
    Some(match acc {
        None => Rect { min: p, max: p },
        Some(r) => Rect {
            min: [r.min[0].min(p[0]), r.min[1].min(p[1])],
            max: [r.max[0].max(p[0]), r.max[1].max(p[1])],
        },
    })
}

fn union(a: Option<Rect>, b: Option<Rect>) -> Option<Rect> {
    match (a, b) {
        (Some(a), Some(b)) => grow(grow(Some(a), b.min), b.max),
        (a, None) => a,
        (None, b) => b,
    }
}

// ---------------------------------------------------------------------------
// View
// ---------------------------------------------------------------------------

const MIN_SCALE: f64 = 1e-12;
const MAX_SCALE: f64 = 1e12;

/// Data -> screen transform of the scatterplot, with one scale for both axes.
///
/// The state is kept in `f64` so that long pan/zoom sessions do not drift;
/// inputs and outputs are `f32`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    screen: Rect,
    /// Data point shown at the centre of the screen rectangle.
    center: [f64; 2],
    /// Pixels per data unit.
    scale: f64,
}

impl View {
    /// A view showing all of `data` inside `screen`, `margin_px` pixels away
    /// from every screen edge where possible, with a 1:1 aspect ratio.
    pub fn fit(data: Rect, screen: Rect, margin_px: f32) -> Self {
        let mut view = Self {
            screen: Rect::new(screen.min, screen.max),
            center: [0.0; 2],
            scale: 1.0,
        };
        view.refit(data, margin_px);
        view
    }

    /// Re-frames `data` in the current screen rectangle (the "reset view" action).
    pub fn refit(&mut self, data: Rect, margin_px: f32) {
        if !data.is_finite() {
            self.center = [0.0; 2];
            self.scale = 1.0;
            return;
        }
        let margin = if margin_px.is_finite() {
            f64::from(margin_px.max(0.0))
        } else {
            0.0
        };
        let avail_w = (f64::from(self.screen.width()) - 2.0 * margin).max(1.0);
        let avail_h = (f64::from(self.screen.height()) - 2.0 * margin).max(1.0);
        let data_w = f64::from(data.max[0]) - f64::from(data.min[0]);
        let data_h = f64::from(data.max[1]) - f64::from(data.min[1]);
        let sx = if data_w > 0.0 {
            avail_w / data_w
        } else {
            f64::INFINITY
        };
        let sy = if data_h > 0.0 {
            avail_h / data_h
        } else {
            f64::INFINITY
        };
        let scale = sx.min(sy);
        self.scale = if scale.is_finite() { scale } else { 1.0 }.clamp(MIN_SCALE, MAX_SCALE);
        self.center = [
            0.5 * (f64::from(data.min[0]) + f64::from(data.max[0])),
            0.5 * (f64::from(data.min[1]) + f64::from(data.max[1])),
        ];
    }

    pub fn screen_rect(&self) -> Rect {
        self.screen
    }

    /// Changes the screen rectangle (window resize), keeping the data point at
    /// the centre and the zoom level.
    pub fn set_screen_rect(&mut self, screen: Rect) {
        self.screen = Rect::new(screen.min, screen.max);
    }

    /// Pixels per data unit (same on both axes).
    pub fn scale(&self) -> f32 {
        self.scale as f32
    }

    /// Converts a length in pixels to data units (e.g. the hover pick radius).
    pub fn px_to_data(&self, px: f32) -> f32 {
        (f64::from(px) / self.scale) as f32
    }

    /// Moves the content by `delta_px` (the mouse drag delta).
    pub fn pan(&mut self, delta_px: [f32; 2]) {
        if !is_finite(delta_px) {
            return;
        }
        self.center[0] -= f64::from(delta_px[0]) / self.scale;
        self.center[1] += f64::from(delta_px[1]) / self.scale;
    }

    /// Multiplies the scale by `factor` (> 1 zooms in) keeping the data point
    /// under `screen_point` fixed on screen.
    pub fn zoom_at(&mut self, screen_point: [f32; 2], factor: f32) {
        if !is_finite(screen_point) || !factor.is_finite() || factor <= 0.0 {
            return;
        }
        let anchor = self.data_at(screen_point);
        let sc = self.screen_center();
        self.scale = (self.scale * f64::from(factor)).clamp(MIN_SCALE, MAX_SCALE);
        self.center[0] = anchor[0] - (f64::from(screen_point[0]) - sc[0]) / self.scale;
        self.center[1] = anchor[1] + (f64::from(screen_point[1]) - sc[1]) / self.scale;
    }

    pub fn to_screen(&self, data: [f32; 2]) -> [f32; 2] {
        let sc = self.screen_center();
        [
            (sc[0] + (f64::from(data[0]) - self.center[0]) * self.scale) as f32,
            (sc[1] - (f64::from(data[1]) - self.center[1]) * self.scale) as f32,
        ]
    }

    pub fn to_data(&self, screen: [f32; 2]) -> [f32; 2] {
        let d = self.data_at(screen);
        [d[0] as f32, d[1] as f32]
    }

    /// `(mul, add)` with `screen = data * mul + add` per axis, for transforming
    /// many points in `f32` (e.g. while drawing).
    pub fn affine(&self) -> ([f32; 2], [f32; 2]) {
        let sc = self.screen_center();
        (
            [self.scale as f32, -self.scale as f32],
            [
                (sc[0] - self.center[0] * self.scale) as f32,
                (sc[1] + self.center[1] * self.scale) as f32,
            ],
        )
    }

    /// The data rectangle currently visible in the screen rectangle.
    pub fn visible_data_rect(&self) -> Rect {
        self.screen_rect_to_data(self.screen.min, self.screen.max)
    }

    /// Converts a box drawn between two screen points to a data rectangle.
    pub fn screen_rect_to_data(&self, a: [f32; 2], b: [f32; 2]) -> Rect {
        Rect::new(self.to_data(a), self.to_data(b))
    }

    /// Converts lasso vertices from screen pixels to data units.
    pub fn lasso_to_data(&self, points_px: &[[f32; 2]]) -> Vec<[f32; 2]> {
        points_px.iter().map(|&p| self.to_data(p)).collect()
    }

    fn screen_center(&self) -> [f64; 2] {
        [
            0.5 * (f64::from(self.screen.min[0]) + f64::from(self.screen.max[0])),
            0.5 * (f64::from(self.screen.min[1]) + f64::from(self.screen.max[1])),
        ]
    }

    fn data_at(&self, screen: [f32; 2]) -> [f64; 2] {
        let sc = self.screen_center();
        [
            self.center[0] + (f64::from(screen[0]) - sc[0]) / self.scale,
            self.center[1] - (f64::from(screen[1]) - sc[1]) / self.scale,
        ]
    }
}

// ---------------------------------------------------------------------------
// Lasso helpers
// ---------------------------------------------------------------------------

/// Thins a lasso trail: keeps the first finite vertex and then every vertex at
/// least `min_step_px` away from the previously kept one. Non-finite vertices
/// are dropped.
pub fn simplify_lasso(points_px: &[[f32; 2]], min_step_px: f32) -> Vec<[f32; 2]> {
    let step2 = if min_step_px.is_finite() && min_step_px > 0.0 {
        min_step_px * min_step_px
    } else {
        0.0
    };
    let mut out: Vec<[f32; 2]> = Vec::new();
    for &p in points_px.iter().filter(|p| is_finite(**p)) {
        let keep = out.last().is_none_or(|q| {
            let (dx, dy) = (p[0] - q[0], p[1] - q[1]);
            dx * dx + dy * dy >= step2
        });
        if keep {
            out.push(p);
        }
    }
    out
}

/// Whether the horizontal ray from `p` towards +x crosses edge `a`-`b`
/// (half-open in y, so shared vertices are counted once). The crossing abscissa
/// is clamped to the edge's x-range, which makes every point outside the
/// polygon's bounding box test as outside, exactly.
#[inline]
fn crosses(a: [f32; 2], b: [f32; 2], p: [f32; 2]) -> bool {
    if (a[1] > p[1]) == (b[1] > p[1]) {
        return false;
    }
    let (ax, ay, bx, by) = (
        f64::from(a[0]),
        f64::from(a[1]),
        f64::from(b[0]),
        f64::from(b[1]),
    );
    let t = (f64::from(p[1]) - ay) / (by - ay);
    let x = (ax + t * (bx - ax)).clamp(ax.min(bx), ax.max(bx));
    f64::from(p[0]) < x
}

/// Even-odd point-in-polygon test; the polygon is closed implicitly and its
/// non-finite vertices are ignored. Fewer than 3 vertices contain nothing.
/// [`PointIndex::in_polygon`] selects exactly the points for which this is true.
pub fn point_in_polygon(polygon: &[[f32; 2]], p: [f32; 2]) -> bool {
    if !is_finite(p) {
        return false;
    }
    let mut verts = polygon.iter().copied().filter(|v| is_finite(*v));
    let Some(first) = verts.next() else {
        return false;
    };
    let (mut prev, mut count, mut inside) = (first, 1usize, false);
    for v in verts {
        inside ^= crosses(prev, v, p);
        prev = v;
        count += 1;
    }
    inside ^= crosses(prev, first, p);
    count >= 3 && inside
}

// ---------------------------------------------------------------------------
// PointIndex
// ---------------------------------------------------------------------------

/// Largest number of grid columns (or rows).
const MAX_GRID_SIDE: usize = 4096;
/// Average number of points per grid cell the automatic sizing aims for.
const POINTS_PER_CELL: usize = 2;

/// Spatial index over a fixed set of 2-D points (a uniform grid, points stored
/// cell by cell). Indices refer to positions in the slice given to
/// [`PointIndex::build`]; non-finite points are not indexed and never returned.
///
/// Every query takes an optional visibility mask: with `Some(mask)`, index `i`
/// is eligible only if `mask[i]` is `true` (indices past the end of the mask are
/// hidden).
#[derive(Clone, Debug)]
pub struct PointIndex {
    /// Length of the input slice (the universe of indices).
    len: usize,
    bounds: Option<Rect>,
    origin: [f32; 2],
    /// Grid cells per data unit; 0 on an axis with a single cell.
    inv_cell: [f32; 2],
    dims: [usize; 2],
    /// `cell_start[c]..cell_start[c + 1]` are the slots of cell `c = row * nx + col`.
    cell_start: Vec<u32>,
    /// Original index of each slot.
    ids: Vec<u32>,
    /// Coordinates of each slot.
    pts: Vec<[f32; 2]>,
}

impl PointIndex {
    /// Builds the index with a grid sized automatically (about two points per
    /// cell, cells roughly square). Inputs longer than `u32::MAX` are truncated.
    pub fn build(points: &[[f32; 2]]) -> Self {
        let points = &points[..points.len().min(u32::MAX as usize)];
        let bounds = Rect::bounding(points);
        let dims = auto_dims(points.len(), bounds);
        Self::build_with(points, bounds, dims)
    }

    /// Builds the index with an explicit grid of `dims[0]` columns by `dims[1]`
    /// rows spanning the bounding box of the finite points (each clamped to
    /// `1..=4096`).
    pub fn with_grid_size(points: &[[f32; 2]], dims: [usize; 2]) -> Self {
        let points = &points[..points.len().min(u32::MAX as usize)];
        let bounds = Rect::bounding(points);
        let dims = dims.map(|d| d.clamp(1, MAX_GRID_SIDE));
        Self::build_with(points, bounds, dims)
    }

    fn build_with(points: &[[f32; 2]], bounds: Option<Rect>, dims: [usize; 2]) -> Self {
        let mut index = Self {
            len: points.len(),
            bounds,
            origin: [0.0; 2],
            inv_cell: [0.0; 2],
            dims: [1, 1],
            cell_start: vec![0, 0],
            ids: Vec::new(),
            pts: Vec::new(),
        };
        let Some(b) = bounds else {
            return index;
        };
        index.origin = b.min;
        for (axis, &d) in dims.iter().enumerate() {
            let extent = b.max[axis] - b.min[axis];
            let inv = d as f32 / extent;
            if d > 1 && extent > 0.0 && inv.is_finite() {
                index.dims[axis] = d;
                index.inv_cell[axis] = inv;
            }
        }
        let n_cells = index.dims[0] * index.dims[1];

        // Cell of every point (u32::MAX for non-finite ones), in parallel.
        let cell_of: Vec<u32> = points
            .par_iter()
            .with_min_len(1 << 12)
            .map(|&p| {
                if is_finite(p) {
                    index.cell_of(p) as u32
                } else {
                    u32::MAX
                }
            })
            .collect();

        // Counting sort, stable so that ids are ascending within a cell.
        let mut start = vec![0u32; n_cells + 1];
        for &c in &cell_of {
            if c != u32::MAX {
                start[c as usize + 1] += 1;
            }
        }
        for c in 0..n_cells {
            start[c + 1] += start[c];
        }
        let total = start[n_cells] as usize;
        let mut cursor = start[..n_cells].to_vec();
        let mut ids = vec![0u32; total];
        let mut pts = vec![[0.0f32; 2]; total];
        for (i, (&c, &p)) in cell_of.iter().zip(points).enumerate() {
            if c != u32::MAX {
                let slot = &mut cursor[c as usize];
                ids[*slot as usize] = i as u32;
                pts[*slot as usize] = p;
                *slot += 1;
            }
        }
        index.cell_start = start;
        index.ids = ids;
        index.pts = pts;
        index
    }

    /// Length of the slice the index was built from.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the index was built from an empty slice.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of indexed (finite) points.
    pub fn indexed_len(&self) -> usize {
        self.ids.len()
    }

    /// Bounding box of the finite points.
    pub fn bounds(&self) -> Option<Rect> {
        self.bounds
    }

    /// Grid columns and rows.
    pub fn grid_size(&self) -> [usize; 2] {
        self.dims
    }

    /// The visible point nearest to `query` within `max_dist` (inclusive), ties
    /// going to the smaller index. `max_dist` may be infinite.
    pub fn nearest(&self, query: [f32; 2], max_dist: f32, visible: Option<&[bool]>) -> Option<u32> {
        if self.ids.is_empty() || !is_finite(query) || max_dist.is_nan() || max_dist < 0.0 {
            return None;
        }
        let r2 = max_dist * max_dist;
        let (cx, cy) = (self.col(query[0]) as isize, self.row(query[1]) as isize);
        let (xlo, xhi) = (
            self.col(query[0] - max_dist) as isize,
            self.col(query[0] + max_dist) as isize,
        );
        let (ylo, yhi) = (
            self.row(query[1] - max_dist) as isize,
            self.row(query[1] + max_dist) as isize,
        );
        let nx = self.dims[0];
        let mut best: Option<(f32, u32)> = None;
        let scan = |row: isize, c0: isize, c1: isize, best: &mut Option<(f32, u32)>| {
            let base = row as usize * nx;
            let slots = self.slots(base + c0 as usize, base + c1 as usize + 1);
            for k in slots {
                let p = self.pts[k];
                let (dx, dy) = (p[0] - query[0], p[1] - query[1]);
                let d2 = dx * dx + dy * dy;
                if d2 <= r2 {
                    let id = self.ids[k];
                    let better = best.is_none_or(|(bd, bi)| d2 < bd || (d2 == bd && id < bi));
                    if better && is_visible(visible, id) {
                        *best = Some((d2, id));
                    }
                }
            }
        };
        // Visit the window ring by ring (Chebyshev distance k in cells).
        let mut k: isize = 0;
        loop {
            let (rx0, rx1) = ((cx - k).max(xlo), (cx + k).min(xhi));
            for row in (cy - k).max(ylo)..=(cy + k).min(yhi) {
                if row == cy - k || row == cy + k {
                    scan(row, rx0, rx1, &mut best);
                } else {
                    if cx - k >= xlo {
                        scan(row, cx - k, cx - k, &mut best);
                    }
                    if k > 0 && cx + k <= xhi {
                        scan(row, cx + k, cx + k, &mut best);
                    }
                }
            }
            let x_done = cx - k <= xlo && cx + k >= xhi;
            let y_done = cy - k <= ylo && cy + k >= yhi;
            if x_done && y_done {
                break;
            }
            if let Some((bd, _)) = best {
                // Unvisited cells are at least k + 1 cells away along an axis
                // that is not done, so their points are more than k cells
                // away (0.01 cell of slack for rounding in the cell mapping).
                let kb = k as f32 - 0.01;
                let bound_x = if x_done {
                    f32::INFINITY
                } else {
                    kb / self.inv_cell[0]
                };
                let bound_y = if y_done {
                    f32::INFINITY
                } else {
                    kb / self.inv_cell[1]
                };
                let bound = bound_x.min(bound_y);
                if bound > 0.0 && bound * bound > bd {
                    break;
                }
            }
            k += 1;
        }
        best.map(|(_, id)| id)
    }

    /// Visible points inside the rectangle spanned by `a` and `b` (any corner
    /// order, borders inclusive, infinite coordinates allowed), ascending.
    pub fn in_rect(&self, a: [f32; 2], b: [f32; 2], visible: Option<&[bool]>) -> Vec<u32> {
        if a.iter().chain(&b).any(|v| v.is_nan()) {
            return Vec::new();
        }
        let rect = Rect::new(a, b);
        let Some(bounds) = self.bounds else {
            return Vec::new();
        };
        if !overlaps(&rect, &bounds) {
            return Vec::new();
        }
        let (x0, x1) = (self.col(rect.min[0]), self.col(rect.max[0]));
        let (y0, y1) = (self.row(rect.min[1]), self.row(rect.max[1]));
        let nx = self.dims[0];
        let parts: Vec<Vec<u32>> = (y0..=y1)
            .into_par_iter()
            .map(|row| {
                let mut out = Vec::new();
                let base = row * nx;
                let test = |slots: Range<usize>, out: &mut Vec<u32>| {
                    for k in slots {
                        let id = self.ids[k];
                        if rect.contains(self.pts[k]) && is_visible(visible, id) {
                            out.push(id);
                        }
                    }
                };
                if row == y0 || row == y1 || x1 - x0 < 2 {
                    test(self.slots(base + x0, base + x1 + 1), &mut out);
                } else {
                    // Columns strictly between the border columns lie inside
                    // in x, and this row lies strictly inside in y.
                    test(self.slots(base + x0, base + x0 + 1), &mut out);
                    let inner = self.slots(base + x0 + 1, base + x1);
                    push_visible(&mut out, &self.ids[inner], visible);
                    test(self.slots(base + x1, base + x1 + 1), &mut out);
                }
                out
            })
            .collect();
        sorted_union(self.len, parts)
    }

    /// Visible points inside `polygon` under the even-odd rule (exactly the
    /// points for which [`point_in_polygon`] holds), ascending. The polygon is
    /// closed implicitly, may self-intersect, non-finite vertices are ignored,
    /// and fewer than 3 vertices select nothing.
    pub fn in_polygon(&self, polygon: &[[f32; 2]], visible: Option<&[bool]>) -> Vec<u32> {
        let verts: Vec<[f32; 2]> = polygon.iter().copied().filter(|v| is_finite(*v)).collect();
        if verts.len() < 3 {
            return Vec::new();
        }
        let (Some(pb), Some(bounds)) = (Rect::bounding(&verts), self.bounds) else {
            return Vec::new();
        };
        if !overlaps(&pb, &bounds) {
            return Vec::new();
        }
        let edges: Vec<Edge> = (0..verts.len())
            .map(|i| {
                let (a, b) = (verts[i], verts[(i + 1) % verts.len()]);
                Edge {
                    a,
                    b,
                    rows: [self.row(a[1].min(b[1])), self.row(a[1].max(b[1]))],
                }
            })
            .collect();
        // Points outside the polygon's bounding box are outside the polygon.
        let cols = [self.col(pb.min[0]), self.col(pb.max[0])];
        let (y0, y1) = (self.row(pb.min[1]), self.row(pb.max[1]));
        let slack = self.slack();
        let parts: Vec<Vec<u32>> = (y0..=y1)
            .into_par_iter()
            .map(|row| self.polygon_row(row, cols, &edges, slack, visible))
            .collect();
        sorted_union(self.len, parts)
    }

    /// Lasso selection within one grid row.
    fn polygon_row(
        &self,
        row: usize,
        [x0, x1]: [usize; 2],
        edges: &[Edge],
        slack: [f64; 2],
        visible: Option<&[bool]>,
    ) -> Vec<u32> {
        // Every edge that can span the y of a point in this row (a superset
        // suffices: the others never count as crossings).
        let row_edges: Vec<&Edge> = edges
            .iter()
            .filter(|e| e.rows[0] <= row && row <= e.rows[1])
            .collect();
        let mut out = Vec::new();
        if row_edges.is_empty() {
            return out;
        }
        let inside = |p: [f32; 2]| {
            row_edges
                .iter()
                .fold(false, |acc, e| acc ^ crosses(e.a, e.b, p))
        };

        // Mark the columns the edges pass through within this row (with slack
        // for rounding). Unmarked columns contain no edge, so a maximal run of
        // them is entirely inside or entirely outside.
        let (band_lo, band_hi) = if self.dims[1] > 1 {
            let inv = f64::from(self.inv_cell[1]);
            let o = f64::from(self.origin[1]);
            (
                o + row as f64 / inv - slack[1],
                o + (row + 1) as f64 / inv + slack[1],
            )
        } else {
            (f64::NEG_INFINITY, f64::INFINITY)
        };
        let mut boundary = vec![false; x1 - x0 + 1];
        for e in &row_edges {
            let [lo, hi] = e.x_range_in_band(band_lo, band_hi);
            let c0 = self.col((lo - slack[0]) as f32).max(x0);
            let c1 = self.col((hi + slack[0]) as f32).min(x1);
            if c0 <= c1 {
                boundary[c0 - x0..=c1 - x0].fill(true);
            }
        }

        let base = row * self.dims[0];
        let mut run_inside: Option<bool> = None;
        for (col, &is_boundary) in (x0..=x1).zip(&boundary) {
            let slots = self.slots(base + col, base + col + 1);
            if is_boundary {
                run_inside = None;
                for k in slots {
                    let id = self.ids[k];
                    if inside(self.pts[k]) && is_visible(visible, id) {
                        out.push(id);
                    }
                }
            } else if !slots.is_empty() {
                let status = *run_inside.get_or_insert_with(|| inside(self.pts[slots.start]));
                if status {
                    push_visible(&mut out, &self.ids[slots], visible);
                }
            }
        }
        out
    }

    /// Data-unit margins covering rounding in the coordinate -> cell mapping.
    fn slack(&self) -> [f64; 2] {
        let mut s = [0.0; 2];
        if let Some(b) = self.bounds {
            for (axis, s) in s.iter_mut().enumerate() {
                let magnitude = f64::from(b.min[axis].abs().max(b.max[axis].abs()));
                let cell = if self.inv_cell[axis] > 0.0 {
                    0.02 / f64::from(self.inv_cell[axis])
                } else {
                    0.0
                };
                *s = cell + 8.0 * f64::from(f32::EPSILON) * magnitude;
            }
        }
        s
    }

    /// Grid column of an x coordinate (monotone, clamped to the grid).
    #[inline]
    fn col(&self, x: f32) -> usize {
        (((x - self.origin[0]) * self.inv_cell[0]) as usize).min(self.dims[0] - 1)
    }

    /// Grid row of a y coordinate (monotone, clamped to the grid).
    #[inline]
    fn row(&self, y: f32) -> usize {
        (((y - self.origin[1]) * self.inv_cell[1]) as usize).min(self.dims[1] - 1)
    }

    #[inline]
    fn cell_of(&self, p: [f32; 2]) -> usize {
        self.row(p[1]) * self.dims[0] + self.col(p[0])
    }

    /// Slots of the cells `first..end` (consecutive cells of one row).
    #[inline]
    fn slots(&self, first: usize, end: usize) -> Range<usize> {
        self.cell_start[first] as usize..self.cell_start[end] as usize
    }
}

#[derive(Clone, Copy, Debug)]
struct Edge {
    a: [f32; 2],
    b: [f32; 2],
    /// First and last grid row touched.
    rows: [usize; 2],
}

impl Edge {
    /// x-range of the part of the edge with y in `[lo, hi]`.
    fn x_range_in_band(&self, lo: f64, hi: f64) -> [f64; 2] {
        let (ax, ay, bx, by) = (
            f64::from(self.a[0]),
            f64::from(self.a[1]),
            f64::from(self.b[0]),
            f64::from(self.b[1]),
        );
        let (xmin, xmax) = (ax.min(bx), ax.max(bx));
        let (ya, yb) = (ay.min(by).max(lo), ay.max(by).min(hi));
        if ay == by || ya > yb {
            return [xmin, xmax];
        }
        let at = |y: f64| (ax + (y - ay) / (by - ay) * (bx - ax)).clamp(xmin, xmax);
        let (p, q) = (at(ya), at(yb));
        [p.min(q), p.max(q)]
    }
}

fn auto_dims(n: usize, bounds: Option<Rect>) -> [usize; 2] {
    let Some(b) = bounds else {
        return [1, 1];
    };
    let side = MAX_GRID_SIDE as f64;
    let target = ((n / POINTS_PER_CELL) as f64).clamp(1.0, side * side);
    let (w, h) = (f64::from(b.width()), f64::from(b.height()));
    let usable = |e: f64| e.is_finite() && e > 0.0;
    let (nx, ny) = match (usable(w), usable(h)) {
        (true, true) => {
            let nx = (target * w / h).sqrt().round().clamp(1.0, side);
            (nx, (target / nx).round().clamp(1.0, side))
        }
        (true, false) => (target.min(side), 1.0),
        (false, true) => (1.0, target.min(side)),
        (false, false) => (1.0, 1.0),
    };
    [nx as usize, ny as usize]
}

fn overlaps(a: &Rect, b: &Rect) -> bool {
    a.min[0] <= b.max[0] && a.max[0] >= b.min[0] && a.min[1] <= b.max[1] && a.max[1] >= b.min[1]
}

#[inline]
fn is_visible(visible: Option<&[bool]>, id: u32) -> bool {
    visible.is_none_or(|m| m.get(id as usize).copied().unwrap_or(false))
}

fn push_visible(out: &mut Vec<u32>, ids: &[u32], visible: Option<&[bool]>) {
    match visible {
        None => out.extend_from_slice(ids),
        Some(_) => out.extend(ids.iter().copied().filter(|&id| is_visible(visible, id))),
    }
}

/// Merges disjoint lists of indices `< n` into one ascending list.
fn sorted_union(n: usize, parts: Vec<Vec<u32>>) -> Vec<u32> {
    let total: usize = parts.iter().map(Vec::len).sum();
    if total.saturating_mul(64) < n {
        let mut all = parts.concat();
        all.sort_unstable();
        return all;
    }
    let mut words = vec![0u64; n.div_ceil(64)];
    for &id in parts.iter().flatten() {
        words[id as usize / 64] |= 1 << (id % 64);
    }
    let mut out = Vec::with_capacity(total);
    out.extend(Ones::new(&words));
    out
}

/// Iterator over the set bits of a bitset, ascending.
struct Ones<'a> {
    words: &'a [u64],
    index: usize,
    current: u64,
}

impl<'a> Ones<'a> {
    fn new(words: &'a [u64]) -> Self {
        Self {
            words,
            index: 0,
            current: words.first().copied().unwrap_or(0),
        }
    }
}

impl Iterator for Ones<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        while self.current == 0 {
            self.index += 1;
            self.current = *self.words.get(self.index)?;
        }
        let bit = self.current.trailing_zeros();
        self.current &= self.current - 1;
        Some((self.index * 64) as u32 + bit)
    }
}

// ---------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------

/// How a new pick combines with the current selection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SelectMode {
    /// Plain drag: the new pick replaces the selection.
    #[default]
    Replace,
    /// Shift: union.
    Add,
    /// Alt: difference.
    Subtract,
    /// Shift + Alt: intersection.
    Intersect,
}

impl SelectMode {
    /// Mode for the held modifier keys.
    pub fn from_modifiers(shift: bool, alt: bool) -> Self {
        match (shift, alt) {
            (false, false) => Self::Replace,
            (true, false) => Self::Add,
            (false, true) => Self::Subtract,
            (true, true) => Self::Intersect,
        }
    }
}

/// A set of cell indices in `0..n_cells`, stored as a bitset (O(1) `contains`
/// for drawing, 125 KB for 1M cells).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    words: Vec<u64>,
    n_cells: usize,
    count: usize,
}

impl Selection {
    /// An empty selection over `n_cells` cells.
    pub fn new(n_cells: usize) -> Self {
        Self {
            words: vec![0; n_cells.div_ceil(64)],
            n_cells,
            count: 0,
        }
    }

    /// Size of the universe (number of cells).
    pub fn n_cells(&self) -> usize {
        self.n_cells
    }

    /// Number of selected cells.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn contains(&self, cell: u32) -> bool {
        self.words
            .get(cell as usize / 64)
            .is_some_and(|w| w >> (cell % 64) & 1 == 1)
    }

    /// Selected cells, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        Ones::new(&self.words)
    }

    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.count);
        v.extend(self.iter());
        v
    }

    pub fn clear(&mut self) {
        self.words.fill(0);
        self.count = 0;
    }

    /// Combines the selection with `picked` (any order, duplicates allowed,
    /// indices `>= n_cells` ignored).
    pub fn combine(&mut self, mode: SelectMode, picked: &[u32]) {
        let in_range = |&&i: &&u32| (i as usize) < self.n_cells;
        match mode {
            SelectMode::Replace => {
                self.clear();
                self.combine(SelectMode::Add, picked);
            }
            SelectMode::Add => {
                for &i in picked.iter().filter(in_range) {
                    let (w, bit) = (i as usize / 64, 1u64 << (i % 64));
                    self.count += usize::from(self.words[w] & bit == 0);
                    self.words[w] |= bit;
                }
            }
            SelectMode::Subtract => {
                for &i in picked.iter().filter(in_range) {
                    let (w, bit) = (i as usize / 64, 1u64 << (i % 64));
                    self.count -= usize::from(self.words[w] & bit != 0);
                    self.words[w] &= !bit;
                }
            }
            SelectMode::Intersect => {
                let mut mask = vec![0u64; self.words.len()];
                for &i in picked.iter().filter(in_range) {
                    mask[i as usize / 64] |= 1 << (i % 64);
                }
                let mut count = 0;
                for (w, m) in self.words.iter_mut().zip(&mask) {
                    *w &= m;
                    count += w.count_ones() as usize;
                }
                self.count = count;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Instant;

    /// xorshift64* generator, deterministic.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in [0, 1).
        fn unit(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
        }
        fn range(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * self.unit()
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
        fn normal(&mut self) -> f32 {
            let u = self.unit().max(1e-7);
            let v = self.unit();
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        }
    }

    /// Points with data bounds exactly [0, 16]^2: uniform, quantized to 0.5
    /// (exactly on grid borders for 16 or 32 cells per side), duplicates,
    /// non-finite, and a tight cluster.
    fn test_points(rng: &mut Rng, n: usize) -> Vec<[f32; 2]> {
        let mut pts = vec![[0.0, 0.0], [16.0, 16.0]];
        while pts.len() < n {
            let p = match rng.below(20) {
                0..=7 => [rng.range(0.0, 16.0), rng.range(0.0, 16.0)],
                8..=13 => [rng.below(33) as f32 * 0.5, rng.below(33) as f32 * 0.5],
                14..=15 => pts[rng.below(pts.len())],
                16 => [f32::NAN, rng.range(0.0, 16.0)],
                17 => [rng.range(0.0, 16.0), f32::INFINITY],
                _ => [
                    (5.0 + 0.3 * rng.normal()).clamp(0.0, 16.0),
                    (11.0 + 0.3 * rng.normal()).clamp(0.0, 16.0),
                ],
            };
            pts.push(p);
        }
        pts
    }

    fn indexes(pts: &[[f32; 2]]) -> Vec<PointIndex> {
        let mut v = vec![PointIndex::build(pts)];
        for dims in [[16, 16], [32, 32], [7, 3], [1, 1], [1, 40], [64, 64]] {
            v.push(PointIndex::with_grid_size(pts, dims));
        }
        v
    }

    fn random_mask(rng: &mut Rng, n: usize) -> Vec<bool> {
        (0..n).map(|_| rng.below(3) != 0).collect()
    }

    fn brute_polygon(pts: &[[f32; 2]], poly: &[[f32; 2]], mask: Option<&[bool]>) -> Vec<u32> {
        (0..pts.len() as u32)
            .filter(|&i| point_in_polygon(poly, pts[i as usize]) && is_visible(mask, i))
            .collect()
    }

    fn brute_rect(pts: &[[f32; 2]], a: [f32; 2], b: [f32; 2], mask: Option<&[bool]>) -> Vec<u32> {
        let r = Rect::new(a, b);
        (0..pts.len() as u32)
            .filter(|&i| is_finite(pts[i as usize]) && r.contains(pts[i as usize]))
            .filter(|&i| is_visible(mask, i))
            .collect()
    }

    fn brute_nearest(pts: &[[f32; 2]], q: [f32; 2], r: f32, mask: Option<&[bool]>) -> Option<u32> {
        let mut best: Option<(f32, u32)> = None;
        for (i, p) in pts.iter().enumerate() {
            let i = i as u32;
            if !is_finite(*p) || !is_visible(mask, i) {
                continue;
            }
            let (dx, dy) = (p[0] - q[0], p[1] - q[1]);
            let d2 = dx * dx + dy * dy;
            if d2 <= r * r && best.is_none_or(|(bd, bi)| d2 < bd || (d2 == bd && i < bi)) {
                best = Some((d2, i));
            }
        }
        best.map(|(_, i)| i)
    }

    fn star(cx: f32, cy: f32, r_out: f32, r_in: f32, spikes: usize) -> Vec<[f32; 2]> {
        (0..2 * spikes)
            .map(|k| {
                let a = std::f32::consts::PI * k as f32 / spikes as f32;
                let r = if k % 2 == 0 { r_out } else { r_in };
                [cx + r * a.cos(), cy + r * a.sin()]
            })
            .collect()
    }

    /// Self-intersecting five-pointed star: the central pentagon is a hole
    /// under the even-odd rule.
    fn pentagram(cx: f32, cy: f32, r: f32) -> Vec<[f32; 2]> {
        (0..5)
            .map(|k| {
                let a = std::f32::consts::FRAC_PI_2 + std::f32::consts::TAU * (2 * k) as f32 / 5.0;
                [cx + r * a.cos(), cy + r * a.sin()]
            })
            .collect()
    }

    /// U-shaped (concave) polygon with axis-aligned edges on integer coordinates.
    fn u_shape() -> Vec<[f32; 2]> {
        vec![
            [2.0, 2.0],
            [14.0, 2.0],
            [14.0, 14.0],
            [10.0, 14.0],
            [10.0, 6.0],
            [6.0, 6.0],
            [6.0, 14.0],
            [2.0, 14.0],
        ]
    }

    fn test_polygons(rng: &mut Rng) -> Vec<Vec<[f32; 2]>> {
        let mut polys = vec![
            u_shape(),
            u_shape().iter().map(|p| [p[0] + 0.5, p[1] - 0.5]).collect(),
            pentagram(8.0, 8.0, 7.0),
            pentagram(5.0, 11.0, 1.0),
            star(8.0, 8.0, 7.5, 2.0, 7),
            star(4.0, 12.0, 3.0, 0.7, 5),
            vec![
                [-100.0, -100.0],
                [100.0, -100.0],
                [100.0, 100.0],
                [-100.0, 100.0],
            ],
            // bow tie, figure-eight style
            vec![[1.0, 1.0], [15.0, 15.0], [15.0, 1.0], [1.0, 15.0]],
            // polygon exactly on the data bounds
            vec![[0.0, 0.0], [16.0, 0.0], [16.0, 16.0], [0.0, 16.0]],
            // repeated vertices and a NaN vertex
            vec![
                [3.0, 3.0],
                [3.0, 3.0],
                [f32::NAN, 1.0],
                [12.0, 4.0],
                [12.0, 4.0],
                [7.0, 13.0],
            ],
            // thin sliver along a grid line
            vec![[0.0, 8.0], [16.0, 8.0], [16.0, 8.5], [0.0, 8.0]],
            // entirely outside the data
            vec![[20.0, 20.0], [30.0, 20.0], [25.0, 30.0]],
        ];
        for _ in 0..25 {
            let m = 3 + rng.below(12);
            polys.push(
                (0..m)
                    .map(|_| [rng.range(-2.0, 18.0), rng.range(-2.0, 18.0)])
                    .collect(),
            );
        }
        for _ in 0..15 {
            let m = 3 + rng.below(8);
            polys.push(
                (0..m)
                    .map(|_| [rng.below(33) as f32 * 0.5, rng.below(33) as f32 * 0.5])
                    .collect(),
            );
        }
        for _ in 0..10 {
            let (cx, cy) = (rng.range(0.0, 16.0), rng.range(0.0, 16.0));
            let r = rng.range(0.2, 3.0);
            polys.push(star(cx, cy, r, r * 0.4, 3 + rng.below(6)));
        }
        polys
    }

    #[test]
    fn view_round_trip_and_pan() {
        let data = Rect::new([-12.0, -7.0], [15.0, 9.0]);
        let mut view = View::fit(data, Rect::new([10.0, 20.0], [1210.0, 820.0]), 8.0);
        let mut rng = Rng(7);
        for step in 0..200 {
            match step % 3 {
                0 => view.pan([rng.range(-50.0, 50.0), rng.range(-50.0, 50.0)]),
                1 => view.zoom_at(
                    [rng.range(10.0, 1210.0), rng.range(20.0, 820.0)],
                    rng.range(0.8, 1.3),
                ),
                _ => {}
            }
            let p = [rng.range(10.0, 1210.0), rng.range(20.0, 820.0)];
            let back = view.to_screen(view.to_data(p));
            assert!(
                (back[0] - p[0]).abs() < 1e-3 && (back[1] - p[1]).abs() < 1e-3,
                "{p:?} -> {back:?}"
            );
        }
        // Panning moves content by exactly the delta; y is flipped.
        let d = [1.0, 2.0];
        let before = view.to_screen(d);
        view.pan([30.0, -12.0]);
        let after = view.to_screen(d);
        assert!((after[0] - before[0] - 30.0).abs() < 1e-3);
        assert!((after[1] - before[1] + 12.0).abs() < 1e-3);
        let up = view.to_screen([1.0, 3.0]);
        assert!(up[1] < after[1], "larger data y must be higher on screen");
        // The affine form agrees with to_screen.
        let (mul, add) = view.affine();
        let s = view.to_screen([3.5, -2.0]);
        assert!((3.5 * mul[0] + add[0] - s[0]).abs() < 1e-2);
        assert!((-2.0 * mul[1] + add[1] - s[1]).abs() < 1e-2);
    }

    #[test]
    fn zoom_keeps_cursor_point_fixed() {
        let mut view = View::fit(
            Rect::new([0.0, 0.0], [10.0, 10.0]),
            Rect::new([0.0, 0.0], [800.0, 600.0]),
            0.0,
        );
        let cursor = [612.5, 143.25];
        let under = view.to_data(cursor);
        let scale0 = view.scale();
        for factor in [1.1, 2.0, 0.5, 7.3, 0.013, 1.0] {
            view.zoom_at(cursor, factor);
            let s = view.to_screen(under);
            assert!(
                (s[0] - cursor[0]).abs() < 1e-3 && (s[1] - cursor[1]).abs() < 1e-3,
                "{s:?}"
            );
        }
        assert!((view.scale() / scale0 - 1.1 * 2.0 * 0.5 * 7.3 * 0.013).abs() < 1e-4);
        // Invalid factors are ignored.
        let before = view;
        view.zoom_at(cursor, 0.0);
        view.zoom_at(cursor, f32::NAN);
        assert_eq!(view, before);
    }

    #[test]
    fn fit_keeps_aspect_and_contains_bounds() {
        let screen = Rect::new([100.0, 50.0], [900.0, 650.0]);
        for data in [
            Rect::new([-3.0, -20.0], [4.0, 25.0]),
            Rect::new([-30.0, 1.0], [40.0, 2.0]),
            Rect::new([5.0, 5.0], [5.0, 9.0]),
            Rect::new([2.0, 2.0], [2.0, 2.0]),
        ] {
            let margin = 10.0;
            let view = View::fit(data, screen, margin);
            let o = view.to_screen([0.0, 0.0]);
            let ex = view.to_screen([1.0, 0.0]);
            let ey = view.to_screen([0.0, 1.0]);
            let (sx, sy) = (ex[0] - o[0], o[1] - ey[1]);
            assert!(
                sx > 0.0 && (sx - sy).abs() <= 1e-4 * sx,
                "aspect {sx} vs {sy}"
            );
            for corner in [
                data.min,
                data.max,
                [data.min[0], data.max[1]],
                [data.max[0], data.min[1]],
            ] {
                let s = view.to_screen(corner);
                assert!(
                    s[0] >= screen.min[0] + margin - 1e-3 && s[0] <= screen.max[0] - margin + 1e-3
                );
                assert!(
                    s[1] >= screen.min[1] + margin - 1e-3 && s[1] <= screen.max[1] - margin + 1e-3
                );
            }
            // Bounds centred, and one axis filled when the bounds have area.
            let c = view.to_screen(data.center());
            assert!((c[0] - 500.0).abs() < 1e-3 && (c[1] - 350.0).abs() < 1e-3);
            if data.width() > 0.0 && data.height() > 0.0 {
                let used_w = data.width() * view.scale();
                let used_h = data.height() * view.scale();
                assert!((used_w - 780.0).abs() < 1e-2 || (used_h - 580.0).abs() < 1e-2);
            }
            let vis = view.visible_data_rect();
            assert!(vis.contains(data.min) && vis.contains(data.max));
        }
    }

    #[test]
    fn polygon_matches_brute_force() {
        let mut rng = Rng(0x5eed_1234);
        let pts = test_points(&mut rng, 3000);
        let mask = random_mask(&mut rng, pts.len() - 100); // short: tail hidden
        let polys = test_polygons(&mut rng);
        let mut nonempty = 0;
        for index in indexes(&pts) {
            for poly in &polys {
                for m in [None, Some(mask.as_slice())] {
                    let got = index.in_polygon(poly, m);
                    let want = brute_polygon(&pts, poly, m);
                    assert_eq!(got, want, "grid {:?} polygon {poly:?}", index.grid_size());
                    nonempty += usize::from(!want.is_empty());
                }
            }
        }
        assert!(
            nonempty > polys.len() * 7,
            "too few non-trivial cases: {nonempty}"
        );
    }

    #[test]
    fn polygon_known_answers() {
        let pts = vec![
            [4.0, 10.0],  // 0: left arm of the U
            [8.0, 10.0],  // 1: in the notch of the U
            [8.0, 4.0],   // 2: bottom of the U
            [12.0, 13.0], // 3: right arm
            [1.0, 1.0],   // 4: outside
            [f32::NAN, 5.0],
            [4.0, 10.0], // 6: duplicate of 0
        ];
        let index = PointIndex::with_grid_size(&pts, [4, 4]);
        assert_eq!(index.in_polygon(&u_shape(), None), vec![0, 2, 3, 6]);
        assert_eq!(index.in_polygon(&u_shape()[..2], None), Vec::<u32>::new());
        let big = [[-1e6, -1e6], [1e6, -1e6], [1e6, 1e6], [-1e6, 1e6]];
        assert_eq!(index.in_polygon(&big, None), vec![0, 1, 2, 3, 4, 6]);
        let mask = [true, false, true, true, true, true, false];
        assert_eq!(index.in_polygon(&big, Some(&mask)), vec![0, 2, 3, 4]);

        // Pentagram: the centre is an even-odd hole, a spike tip is inside.
        let star_pts = vec![[8.0, 8.0], [8.0, 14.0], [8.0, 20.0]];
        let index = PointIndex::build(&star_pts);
        assert_eq!(index.in_polygon(&pentagram(8.0, 8.0, 7.0), None), vec![1]);
    }

    #[test]
    fn rect_matches_brute_force() {
        let mut rng = Rng(99);
        let pts = test_points(&mut rng, 3000);
        let mask = random_mask(&mut rng, pts.len());
        let mut rects = vec![
            ([0.0, 0.0], [16.0, 16.0]),
            ([-5.0, -5.0], [30.0, 30.0]),
            ([4.0, 4.0], [4.0, 4.0]),
            ([12.5, 3.0], [2.0, 9.5]), // inverted corners
            ([f32::NEG_INFINITY, 2.0], [f32::INFINITY, 3.0]),
            ([20.0, 20.0], [25.0, 25.0]),
        ];
        for _ in 0..60 {
            if rng.below(2) == 0 {
                let q = |r: &mut Rng| r.below(35) as f32 * 0.5 - 0.5;
                rects.push(([q(&mut rng), q(&mut rng)], [q(&mut rng), q(&mut rng)]));
            } else {
                let c = |r: &mut Rng| r.range(-1.0, 17.0);
                rects.push(([c(&mut rng), c(&mut rng)], [c(&mut rng), c(&mut rng)]));
            }
        }
        for index in indexes(&pts) {
            for &(a, b) in &rects {
                for m in [None, Some(mask.as_slice())] {
                    assert_eq!(
                        index.in_rect(a, b, m),
                        brute_rect(&pts, a, b, m),
                        "{a:?} {b:?}"
                    );
                }
            }
            assert!(index.in_rect([f32::NAN, 0.0], [1.0, 1.0], None).is_empty());
        }
        let all = PointIndex::build(&pts).in_rect([0.0, 0.0], [16.0, 16.0], None);
        assert_eq!(all.len(), pts.iter().filter(|p| is_finite(**p)).count());
    }

    #[test]
    fn nearest_matches_brute_force() {
        let mut rng = Rng(4242);
        let pts = test_points(&mut rng, 2500);
        let mask = random_mask(&mut rng, pts.len());
        let mut queries: Vec<[f32; 2]> = (0..150)
            .map(|_| [rng.range(-3.0, 19.0), rng.range(-3.0, 19.0)])
            .collect();
        queries.extend((0..100).map(|_| [rng.below(33) as f32 * 0.5, rng.below(33) as f32 * 0.5]));
        queries.extend([[-50.0, 8.0], [8.0, 400.0], [1e30, -1e30]]);
        let mut hits = 0;
        for index in indexes(&pts) {
            for &q in &queries {
                for r in [0.0, 0.05, 0.3, 1.0, 4.0, f32::INFINITY] {
                    for m in [None, Some(mask.as_slice())] {
                        let want = brute_nearest(&pts, q, r, m);
                        assert_eq!(
                            index.nearest(q, r, m),
                            want,
                            "grid {:?} q {q:?} r {r}",
                            index.grid_size()
                        );
                        hits += usize::from(want.is_some());
                    }
                }
            }
            assert_eq!(index.nearest([f32::NAN, 1.0], 1.0, None), None);
            assert_eq!(index.nearest([1.0, 1.0], -1.0, None), None);
        }
        assert!(hits > 1000);
        // Ties go to the smaller index; hidden points are skipped.
        let dup = [[1.0, 1.0], [3.0, 3.0], [3.0, 3.0], [f32::NAN, f32::NAN]];
        let index = PointIndex::build(&dup);
        assert_eq!(index.nearest([3.0, 3.0], 0.0, None), Some(1));
        assert_eq!(
            index.nearest([3.0, 3.0], 0.0, Some(&[true, false, true])),
            Some(2)
        );
        assert_eq!(index.nearest([2.0, 2.0], 10.0, None), Some(0));
        assert_eq!(index.nearest([2.0, 2.0], 1.0, None), None);
    }

    #[test]
    fn degenerate_indexes() {
        let empty = PointIndex::build(&[]);
        assert!(empty.is_empty() && empty.nearest([0.0, 0.0], f32::INFINITY, None).is_none());
        let nans = PointIndex::build(&[[f32::NAN, 0.0], [0.0, f32::NEG_INFINITY]]);
        assert_eq!(nans.indexed_len(), 0);
        assert!(nans.in_rect([-1.0, -1.0], [1.0, 1.0], None).is_empty());
        // All points on one vertical line (zero width).
        let line: Vec<[f32; 2]> = (0..100).map(|i| [2.0, i as f32 * 0.1]).collect();
        let index = PointIndex::build(&line);
        assert_eq!(index.grid_size()[0], 1);
        assert_eq!(
            index.in_rect([2.0, 1.0], [2.0, 2.0], None),
            (10..=20).collect::<Vec<u32>>()
        );
        let tri = [[0.0, 0.95], [5.0, 0.95], [0.0, 3.05]];
        assert_eq!(
            index.in_polygon(&tri, None),
            brute_polygon(&line, &tri, None)
        );
        assert_eq!(index.nearest([3.0, 5.04], 1.5, None), Some(50));
    }

    #[test]
    fn selection_combine_modes() {
        let mut sel = Selection::new(200);
        let mut reference = BTreeSet::new();
        let mut rng = Rng(31337);
        for step in 0..300 {
            let picked: Vec<u32> = (0..rng.below(60)).map(|_| rng.below(230) as u32).collect();
            let valid = picked.iter().copied().filter(|&i| i < 200);
            let mode = [
                SelectMode::Replace,
                SelectMode::Add,
                SelectMode::Subtract,
                SelectMode::Intersect,
            ][step % 4];
            let new: BTreeSet<u32> = valid.collect();
            reference = match mode {
                SelectMode::Replace => new,
                SelectMode::Add => &reference | &new,
                SelectMode::Subtract => &reference - &new,
                SelectMode::Intersect => &reference & &new,
            };
            sel.combine(mode, &picked);
            assert_eq!(sel.len(), reference.len());
            assert_eq!(sel.to_vec(), reference.iter().copied().collect::<Vec<_>>());
            for i in 0..210 {
                assert_eq!(sel.contains(i), reference.contains(&i));
            }
        }
        sel.combine(SelectMode::Replace, &[5, 63, 64, 199, 5]);
        assert_eq!(sel.iter().collect::<Vec<_>>(), vec![5, 63, 64, 199]);
        sel.combine(SelectMode::Add, &[0, 64]);
        assert_eq!(sel.len(), 5);
        sel.combine(SelectMode::Subtract, &[63, 1000]);
        assert_eq!(sel.to_vec(), vec![0, 5, 64, 199]);
        sel.combine(SelectMode::Intersect, &[64, 5, 7]);
        assert_eq!(sel.to_vec(), vec![5, 64]);
        sel.clear();
        assert!(sel.is_empty() && !sel.contains(5));
        assert_eq!(SelectMode::from_modifiers(true, false), SelectMode::Add);
        assert_eq!(
            SelectMode::from_modifiers(false, true),
            SelectMode::Subtract
        );
        assert_eq!(
            SelectMode::from_modifiers(true, true),
            SelectMode::Intersect
        );
    }

    #[test]
    fn simplify_lasso_drops_close_vertices() {
        let trail = [
            [0.0, 0.0],
            [0.5, 0.0],
            [1.0, 1.0],
            [2.0, 0.0],
            [f32::NAN, 3.0],
            [2.0, 2.9],
            [2.0, 3.0],
            [2.1, 3.0],
        ];
        assert_eq!(
            simplify_lasso(&trail, 2.0),
            vec![[0.0, 0.0], [2.0, 0.0], [2.0, 2.9]]
        );
        assert_eq!(simplify_lasso(&trail, 0.0).len(), 7);
        assert!(simplify_lasso(&[], 3.0).is_empty());
    }

    /// Speed report: `cargo test --release -- --ignored --nocapture speed`.
    #[test]
    #[ignore]
    fn speed_report() {
        const N: usize = 1_000_000;
        let mut rng = Rng(2024);
        // UMAP-like layout: 25 clusters of different sizes and spreads.
        let centers: Vec<([f32; 2], f32)> = (0..25)
            .map(|_| {
                (
                    [rng.range(-10.0, 10.0), rng.range(-10.0, 10.0)],
                    rng.range(0.3, 1.5),
                )
            })
            .collect();
        let pts: Vec<[f32; 2]> = (0..N)
            .map(|_| {
                let (c, s) = centers[rng.below(centers.len()).min(rng.below(centers.len()))];
                [c[0] + s * rng.normal(), c[1] + s * rng.normal()]
            })
            .collect();
        let best_of = |runs: usize, f: &mut dyn FnMut() -> usize| {
            let mut best = f64::INFINITY;
            let mut out = 0;
            for _ in 0..runs {
                let t = Instant::now();
                out = f();
                best = best.min(t.elapsed().as_secs_f64());
            }
            (best * 1e3, out)
        };

        let (build_ms, _) = best_of(3, &mut || PointIndex::build(&pts).indexed_len());
        let index = PointIndex::build(&pts);
        println!(
            "threads {}, grid {:?}",
            rayon::current_num_threads(),
            index.grid_size()
        );
        println!("build 1M points: {build_ms:.1} ms");

        let b = index.bounds().expect("finite points");
        let c = b.center();
        let lasso: Vec<[f32; 2]> = (0..200)
            .map(|k| {
                let a = std::f32::consts::TAU * k as f32 / 200.0;
                let r = 9.0 * (1.0 + 0.15 * (5.0 * a).sin());
                [c[0] + r * a.cos(), c[1] + 0.8 * r * a.sin()]
            })
            .collect();
        let (lasso_ms, count) = best_of(5, &mut || index.in_polygon(&lasso, None).len());
        println!(
            "in_polygon 200 vertices: {lasso_ms:.2} ms, {count} selected ({:.1}%)",
            100.0 * count as f64 / N as f64
        );
        let brute = pts.iter().filter(|p| point_in_polygon(&lasso, **p)).count();
        assert_eq!(count, brute);
        let mask: Vec<bool> = (0..N).map(|i| i % 5 != 0).collect();
        let (masked_ms, masked) = best_of(5, &mut || index.in_polygon(&lasso, Some(&mask)).len());
        println!("in_polygon with mask: {masked_ms:.2} ms, {masked} selected");

        let (rect_ms, count) = best_of(5, &mut || {
            index
                .in_rect([c[0] - 8.0, c[1] - 7.0], [c[0] + 6.0, c[1] + 8.0], None)
                .len()
        });
        println!(
            "in_rect: {rect_ms:.2} ms, {count} selected ({:.1}%)",
            100.0 * count as f64 / N as f64
        );

        let queries: Vec<[f32; 2]> = (0..1000)
            .map(|_| [rng.range(b.min[0], b.max[0]), rng.range(b.min[1], b.max[1])])
            .collect();
        for radius in [0.05, 0.5] {
            let (q_ms, found) = best_of(5, &mut || {
                queries
                    .iter()
                    .filter_map(|&q| index.nearest(q, radius, None))
                    .count()
            });
            println!(
                "1000 nearest (r={radius}): {:.2} us/query, {found} hits",
                q_ms
            );
        }
        let (q_ms, found) = best_of(5, &mut || {
            queries
                .iter()
                .filter_map(|&q| index.nearest(q, f32::INFINITY, None))
                .count()
        });
        println!("1000 nearest (r=inf): {:.2} us/query, {found} hits", q_ms);
    }
}
