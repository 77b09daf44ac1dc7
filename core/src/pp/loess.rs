//! One-dimensional LOESS that reproduces the netlib `dloess` code path used by
//! scikit-misc (`skmisc.loess.loess(x, y, span, degree).fit()`) with its default
//! options: gaussian family, `surface = "interpolate"`,
//! `statistics = "approximate"`, `cell = 0.2`, unit weights. This is the
//! smoother behind scanpy's `highly_variable_genes(flavor = "seurat_v3")`.
//!
//! # How the fit is computed
//!
//! `dloess` does not run a local regression at every observation. It fits at a
//! small set of *vertices* and interpolates between them:
//!
//! 1. **Neighbourhood size.** `q = min(n, floor(n * span + 1e-5))`. Each local
//!    fit uses the `q` observations closest to the fitting point. A local model
//!    with `p = degree + 1` coefficients needs `q >= p + 1`; otherwise the span
//!    is rejected.
//! 2. **Bounding interval.** The range `[min x, max x]` is widened on both sides
//!    by `0.5%` of its length (or of a tiny multiple of its magnitude when all
//!    `x` are equal). The two ends become the first two vertices.
//! 3. **Cell splitting (a 1-d k-d tree).** Cells are processed breadth-first. A
//!    cell holding at most `floor(n * span * cell)` observations is a leaf.
//!    Otherwise the observations of the cell are considered in sorted order and
//!    split at the lower median position `m`. If the value at `m` equals its
//!    successor, the split position is moved outward, alternating right and
//!    left (`m`, `m + 1`, `m - 1`, `m + 2`, ...), until two neighbouring sorted
//!    values differ; if the search runs into either end of the cell the median
//!    position is kept as is. The split value is the sorted value at the chosen
//!    position; the lower child gets everything up to and including that
//!    position. If the split value coincides with one of the cell's bounds the
//!    cell stays a leaf. Each split adds one vertex. The tree may hold at most
//!    `max(200, n)` cells and vertices; reaching that limit is an error in
//!    `dloess`, and therefore here too.
//! 4. **Vertex fits.** At every vertex `v` (in creation order) the `q` nearest
//!    observations are selected with the same in-place quickselect that
//!    `dloess` uses, so the neighbour order (and hence the floating-point
//!    summation order) is the same. With `r` the distance of the `q`-th nearest
//!    observation, the weights are tricube, `(1 - (d / r)^3)^3`; the square roots
//!    of these weights scale the rows of the design matrix
//!    `[1, x - v, (x - v)^2]` and the responses. Points exactly at distance `r`
//!    therefore get zero weight. Unlike the classic `lowess` routine, `dloess`
//!    applies no special cut-offs for distances near 0 or near `r`. The columns are scaled to unit Euclidean
//!    length, the matrix is reduced by Householder QR (LINPACK conventions),
//!    and the triangular factor is decomposed by an SVD. The least-squares
//!    solution is formed through the pseudo-inverse, discarding singular values
//!    not larger than `100 * machine epsilon * largest`. `dloess` reports any
//!    such discarded direction as an error, and so does this module. The
//!    intercept is the vertex value and the linear coefficient the vertex
//!    slope.
//! 5. **Interpolation.** Each requested `x` is routed down the tree (`x <=
//!    split` goes to the lower child) to its leaf cell, and the cubic Hermite
//!    polynomial matching the values and slopes of the cell's two end vertices
//!    is evaluated there.
//! 6. **Consistency check (small n).** For fewer than 500 observations
//!    scikit-misc computes the exact trace of the smoothing operator and
//!    `dloess` refuses the result when that trace is below the size of the
//!    local model (2 for degrees 0 and 1, 3 for degree 2) or above `n`. The
//!    trace is computed here as well, only to reproduce that refusal.
//!
//! Degrees 0, 1 and 2 are supported, as in `dloess`.
//!
//! # Agreement with scikit-misc
//!
//! Everything above follows `dloess` operation by operation except the SVD
//! of the (at most 3 x 3) triangular factor, which is computed here by
//! one-sided Jacobi rotations instead of LINPACK's `dsvdc`. Fitted values
//! therefore agree to a few units in the last place rather than bit for bit.
//! The only visible consequence is the trace check in degenerate fits where
//! the trace equals `n` exactly in exact arithmetic (every observation
//! interpolated); there the decision depends on the last bit and may differ.

use std::error::Error;
use std::fmt;

/// Default `cell` parameter of scikit-misc: leaves hold at most
/// `floor(n * span * CELL)` observations.
const CELL: f64 = 0.2;

/// Below this size scikit-misc evaluates the exact trace of the operator.
const EXACT_TRACE_LIMIT: usize = 500;

/// Minimum capacity of the k-d tree (cells and vertices).
const MIN_TREE_CAPACITY: usize = 200;

/// Largest supported local polynomial degree.
const MAX_DEGREE: usize = 2;

/// Why a LOESS fit could not be produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoessError {
    /// No observations were given.
    EmptyInput,
    /// `x` and `y` have different lengths.
    LengthMismatch {
        /// Length of `x`.
        x_len: usize,
        /// Length of `y`.
        y_len: usize,
    },
    /// An input value is NaN or infinite.
    NonFiniteInput {
        /// Which input holds the value (`"x"` or `"y"`).
        input: &'static str,
        /// Position of the first offending value.
        index: usize,
    },
    /// The span is not in `(0, 1]`.
    InvalidSpan(f64),
    /// The degree is larger than 2.
    UnsupportedDegree(usize),
    /// The neighbourhood holds too few observations for the local model.
    SpanTooSmall {
        /// Number of observations in each neighbourhood.
        neighbours: usize,
        /// Smallest neighbourhood size that would be accepted.
        required: usize,
    },
    /// All observations of a neighbourhood lie at the fitting point.
    ZeroWidthNeighbourhood {
        /// The fitting point.
        at: f64,
    },
    /// Every observation of a neighbourhood received zero weight.
    AllWeightsZero {
        /// The fitting point.
        at: f64,
    },
    /// The weighted local design matrix is (numerically) rank deficient.
    SingularLocalFit {
        /// The fitting point.
        at: f64,
    },
    /// The k-d tree reached its capacity of `max(200, n)` cells or vertices.
    TreeCapacityExceeded,
    /// The trace of the smoothing operator is outside the range `dloess`
    /// accepts (local model size to `n`); only checked for `n < 500`.
    TraceOutOfRange {
        /// Computed trace.
        trace: f64,
    },
    /// Intermediate values overflowed or became undefined.
    NumericalFailure,
}

impl fmt::Display for LoessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyInput => write!(f, "loess: no observations"),
            Self::LengthMismatch { x_len, y_len } => {
                write!(f, "loess: x has {x_len} values but y has {y_len}")
            }
            Self::NonFiniteInput { input, index } => {
                write!(f, "loess: {input}[{index}] is not a finite number")
            }
            Self::InvalidSpan(span) => {
                write!(f, "loess: span must lie in (0, 1], got {span}")
            }
            Self::UnsupportedDegree(degree) => {
                write!(f, "loess: degree must be 0, 1 or 2, got {degree}")
            }
            Self::SpanTooSmall {
                neighbours,
                required,
            } => write!(
                f,
                "loess: span too small, neighbourhoods hold {neighbours} \
                 observations but at least {required} are needed"
            ),
            Self::ZeroWidthNeighbourhood { at } => write!(
                f,
                "loess: zero-width neighbourhood at {at}, make the span bigger"
            ),
            Self::AllWeightsZero { at } => write!(
                f,
                "loess: all neighbours of {at} lie on the neighbourhood \
                 boundary, make the span bigger"
            ),
            Self::SingularLocalFit { at } => write!(
                f,
                "loess: local regression at {at} is singular (too few \
                 distinct x values in the neighbourhood)"
            ),
            Self::TreeCapacityExceeded => {
                write!(f, "loess: k-d tree exceeded its capacity")
            }
            Self::TraceOutOfRange { trace } => {
                write!(f, "loess: trace of the smoother ({trace}) is out of range")
            }
            Self::NumericalFailure => {
                write!(f, "loess: numerical failure (overflow or NaN)")
            }
        }
    }
}

impl Error for LoessError {}

/// Fits a one-dimensional LOESS curve and returns the fitted value at every
/// `x[i]`, in input order.
///
/// The result matches scikit-misc's
/// `loess(x, y, span=span, degree=degree).fit()` followed by
/// `outputs.fitted_values` with default options (see the module docs).
///
/// # Errors
///
/// Returns a [`LoessError`] for empty or mismatched inputs, non-finite values,
/// a span outside `(0, 1]`, a degree above 2, and for every situation in which
/// `dloess` itself refuses to produce a fit (span too small, degenerate
/// neighbourhoods, singular local fits, tree capacity, trace check).
pub fn loess_fit(x: &[f64], y: &[f64], span: f64, degree: usize) -> Result<Vec<f64>, LoessError> {
    validate(x, y, span, degree)?;
    let n = x.len();
    let n_coef = degree + 1;
    let neighbours = neighbourhood_size(n, span);
    if neighbours < n_coef + 1 {
        return Err(LoessError::SpanTooSmall {
            neighbours,
            required: n_coef + 1,
        });
    }

    let leaf_size = floor_to_usize(n as f64 * (span * CELL));
    let tree = KdTree::build(x, leaf_size)?;

    let check_trace = n < EXACT_TRACE_LIMIT;
    let point_cells: Vec<usize> = if check_trace {
        x.iter().map(|&z| tree.locate(z)).collect()
    } else {
        Vec::new()
    };
    let mut diagonal = vec![0.0; if check_trace { n } else { 0 }];

    let mut solver = LocalSolver::new(n, neighbours, degree);
    let mut fits = Vec::with_capacity(tree.vertices.len());
    for (vertex, &at) in tree.vertices.iter().enumerate() {
        fits.push(solver.fit(x, y, at)?);
        if check_trace {
            tree.add_diagonal(vertex, &mut solver, &point_cells, x, &mut diagonal);
        }
    }

    if check_trace {
        let trace: f64 = diagonal.iter().rev().sum();
        // dloess checks against the size of the degree-1 model also for
        // degree 0.
        let model_size = n_coef.max(2);
        if trace_out_of_range(trace, n, model_size) {
            return Err(LoessError::TraceOutOfRange { trace });
        }
    }

    let fitted: Vec<f64> = x.iter().map(|&z| tree.evaluate(z, &fits)).collect();
    if fitted.iter().all(|v| v.is_finite()) {
        Ok(fitted)
    } else {
        Err(LoessError::NumericalFailure)
    }
}

fn validate(x: &[f64], y: &[f64], span: f64, degree: usize) -> Result<(), LoessError> {
    if x.len() != y.len() {
        return Err(LoessError::LengthMismatch {
            x_len: x.len(),
            y_len: y.len(),
        });
    }
    if x.is_empty() {
        return Err(LoessError::EmptyInput);
    }
    for (input, values) in [("x", x), ("y", y)] {
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(LoessError::NonFiniteInput { input, index });
        }
    }
    if !(span > 0.0 && span <= 1.0) {
        return Err(LoessError::InvalidSpan(span));
    }
    if degree > MAX_DEGREE {
        return Err(LoessError::UnsupportedDegree(degree));
    }
    Ok(())
}

/// Number of observations in every local neighbourhood (`dloess`'s `nf`).
fn neighbourhood_size(n: usize, span: f64) -> usize {
    floor_to_usize(n as f64 * span + 1e-5).min(n)
}

/// `floor` for non-negative finite values; anything else maps to 0.
fn floor_to_usize(value: f64) -> usize {
    if value.is_finite() && value > 0.0 {
        // Truncation is the intent; values are far below usize::MAX here and
        // the conversion saturates anyway.
        value.floor() as usize
    } else {
        0
    }
}

/// The "Chernobyl" sanity test `dloess` applies to the operator trace. A NaN
/// statistic (only possible when `n` equals the number of coefficients)
/// passes, as it does there.
fn trace_out_of_range(trace: f64, n: usize, n_coef: usize) -> bool {
    let k = n_coef as f64;
    let base = (k / n as f64).sqrt();
    let z = ((k / trace).sqrt() - base) / (1.0 - base);
    !z.is_nan() && !(0.0..=1.0).contains(&z)
}

/// Value and first derivative of the local polynomial at a vertex.
#[derive(Debug, Clone, Copy, Default)]
struct VertexFit {
    value: f64,
    slope: f64,
}

/// Cubic Hermite basis at relative position `h` in `[0, 1]`:
/// (value weight low, value weight high, slope weight low, slope weight high).
fn hermite_basis(h: f64) -> (f64, f64, f64, f64) {
    let g = 1.0 - h;
    (
        (g * g) * (1.0 + 2.0 * h),
        (h * h) * (3.0 - 2.0 * h),
        h * (g * g),
        (h * h) * (h - 1.0),
    )
}

/// One node of the 1-d k-d tree.
#[derive(Debug, Clone)]
struct Cell {
    /// Vertex index of the lower bound.
    lower: usize,
    /// Vertex index of the upper bound.
    upper: usize,
    /// Split value and the two child cells, `None` for a leaf.
    split: Option<(f64, usize, usize)>,
}

#[derive(Debug, Clone)]
struct KdTree {
    vertices: Vec<f64>,
    cells: Vec<Cell>,
}

impl KdTree {
    /// Builds the cell structure. `x` must be non-empty and finite.
    fn build(x: &[f64], leaf_size: usize) -> Result<Self, LoessError> {
        let mut sorted = x.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (lo, hi) = match (sorted.first(), sorted.last()) {
            (Some(&lo), Some(&hi)) => (lo, hi),
            _ => return Err(LoessError::EmptyInput),
        };
        let margin = 0.005 * (hi - lo).max(1e-10 * lo.abs().max(hi.abs()) + 1e-30);
        let capacity = MIN_TREE_CAPACITY.max(x.len());

        let mut vertices = vec![lo - margin, hi + margin];
        let mut cells = vec![Cell {
            lower: 0,
            upper: 1,
            split: None,
        }];
        // Range of `sorted` covered by each cell, parallel to `cells`.
        let mut ranges = vec![(0usize, sorted.len())];

        let mut current = 0;
        while current < cells.len() {
            let (start, end) = ranges[current];
            let (lower, upper) = (cells[current].lower, cells[current].upper);
            let (low_bound, high_bound) = (vertices[lower], vertices[upper]);
            let width = ((high_bound - low_bound) * (high_bound - low_bound)).sqrt();

            let splittable = end - start > leaf_size
                && width > 0.0
                && cells.len() + 2 <= capacity
                && (vertices.len() as f64 + 1.0) <= capacity as f64;
            if splittable {
                let at = split_position(&sorted, start, end);
                let value = sorted[at];
                if value != low_bound && value != high_bound {
                    let new_vertex = vertices.len();
                    vertices.push(value);
                    let left = cells.len();
                    cells.push(Cell {
                        lower,
                        upper: new_vertex,
                        split: None,
                    });
                    ranges.push((start, at + 1));
                    cells.push(Cell {
                        lower: new_vertex,
                        upper,
                        split: None,
                    });
                    ranges.push((at + 1, end));
                    cells[current].split = Some((value, left, left + 1));
                }
            }
            current += 1;
        }

        if capacity < cells.len() + 2 || (capacity as f64) < vertices.len() as f64 + 1.0 {
            return Err(LoessError::TreeCapacityExceeded);
        }
        Ok(Self { vertices, cells })
    }

    /// Index of the leaf cell that `z` is routed to.
    fn locate(&self, z: f64) -> usize {
        let mut current = 0;
        while let Some((value, left, right)) = self.cells[current].split {
            current = if z <= value { left } else { right };
        }
        current
    }

    /// Cell bounds and the Hermite basis of `z` inside leaf `cell`.
    fn basis_in(&self, cell: usize, z: f64) -> (&Cell, f64, (f64, f64, f64, f64)) {
        let c = &self.cells[cell];
        let low = self.vertices[c.lower];
        let width = self.vertices[c.upper] - low;
        let h = (z - low) / width;
        (c, width, hermite_basis(h))
    }

    /// Interpolated surface at `z` given the fits at every vertex.
    fn evaluate(&self, z: f64, fits: &[VertexFit]) -> f64 {
        let (cell, width, (phi0, phi1, psi0, psi1)) = self.basis_in(self.locate(z), z);
        match (fits.get(cell.lower), fits.get(cell.upper)) {
            (Some(a), Some(b)) => {
                phi0 * a.value + phi1 * b.value + (psi0 * a.slope + psi1 * b.slope) * width
            }
            _ => f64::NAN,
        }
    }

    /// Adds the contribution of `vertex` to the diagonal of the smoother
    /// matrix, using the factorisation `solver` holds for that vertex. Only
    /// neighbours whose leaf cell has `vertex` as an end point contribute.
    fn add_diagonal(
        &self,
        vertex: usize,
        solver: &mut LocalSolver,
        point_cells: &[usize],
        x: &[f64],
        diagonal: &mut [f64],
    ) {
        for row in 0..solver.n_neighbours {
            let point = solver.order[row];
            let (Some(&cell), Some(&z)) = (point_cells.get(point), x.get(point)) else {
                continue;
            };
            let c = &self.cells[cell];
            if c.lower != vertex && c.upper != vertex {
                continue;
            }
            let (d_value, d_slope) = solver.influence(row);
            let (c, width, (phi0, phi1, psi0, psi1)) = self.basis_in(cell, z);
            let term = if c.lower == vertex {
                phi0 * d_value + psi0 * d_slope * width
            } else {
                phi1 * d_value + psi1 * d_slope * width
            };
            if let Some(entry) = diagonal.get_mut(point) {
                *entry += term;
            }
        }
    }
}

/// Position in `sorted[start..end]` (non-empty) where the cell is split.
fn split_position(sorted: &[f64], start: usize, end: usize) -> usize {
    let last = end - 1;
    let middle = start + (last - start) / 2;
    let mut offset: isize = 0;
    loop {
        let Some(pos) = middle.checked_add_signed(offset) else {
            return middle;
        };
        if pos >= last || pos < start {
            return middle;
        }
        if sorted[pos] == sorted[pos + 1] {
            // Next candidate on the other side, one step further out on the right.
            offset = -offset;
            if offset >= 0 {
                offset += 1;
            }
        } else {
            return pos;
        }
    }
}

/// Rearranges `order[lo..=hi]` so that `keys[order[k]]` is the value that
/// would be there after sorting, with no larger key before it and no smaller
/// key after it. This is the partition-based selection of Floyd and Rivest
/// (without sampling), which `dloess` uses; the resulting order is reproduced.
fn select(keys: &[f64], order: &mut [usize], lo: usize, hi: usize, k: usize) {
    let key = |order: &[usize], i: isize| keys[order[i as usize]];
    let (mut left, mut right, k) = (lo as isize, hi as isize, k as isize);
    while left < right {
        let pivot = key(order, k);
        order.swap(left as usize, k as usize);
        if pivot < key(order, right) {
            order.swap(left as usize, right as usize);
        }
        let (mut i, mut j) = (left, right);
        while i < j {
            order.swap(i as usize, j as usize);
            i += 1;
            j -= 1;
            while i < right && key(order, i) < pivot {
                i += 1;
            }
            while j > left && pivot < key(order, j) {
                j -= 1;
            }
        }
        if key(order, left) == pivot {
            order.swap(left as usize, j as usize);
        } else {
            j += 1;
            order.swap(right as usize, j as usize);
        }
        if j <= k {
            left = j + 1;
        }
        if k <= j {
            right = j - 1;
        }
    }
}

/// Euclidean norm with running rescaling (reference BLAS `dnrm2`, 2017).
fn scaled_norm(values: &[f64]) -> f64 {
    match values {
        [] => 0.0,
        [only] => only.abs(),
        _ => {
            let mut scale = 0.0_f64;
            let mut ssq = 1.0_f64;
            for &v in values.iter().filter(|v| **v != 0.0) {
                let a = v.abs();
                if scale < a {
                    let r = scale / a;
                    ssq = 1.0 + ssq * (r * r);
                    scale = a;
                } else {
                    let r = a / scale;
                    ssq += r * r;
                }
            }
            scale * ssq.sqrt()
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0.0, |acc, (p, q)| acc + p * q)
}

/// `target += factor * source`, skipped for a zero factor as BLAS does.
fn add_scaled(target: &mut [f64], factor: f64, source: &[f64]) {
    if factor != 0.0 {
        for (t, s) in target.iter_mut().zip(source) {
            *t += factor * s;
        }
    }
}

/// At most three local coefficients (degree 2 in one dimension).
const MAX_COEF: usize = MAX_DEGREE + 1;
type Square = [[f64; MAX_COEF]; MAX_COEF];

/// Singular value decomposition `a = u * diag(sigma) * v^T` of the leading
/// `k x k` block, singular values in decreasing order (one-sided Jacobi).
fn small_svd(a: &Square, k: usize) -> (Square, [f64; MAX_COEF], Square) {
    // Work on columns: cols[j][i] = a[i][j].
    let mut cols = [[0.0; MAX_COEF]; MAX_COEF];
    let mut rot = [[0.0; MAX_COEF]; MAX_COEF];
    for j in 0..k {
        for i in 0..k {
            cols[j][i] = a[i][j];
        }
        rot[j][j] = 1.0;
    }
    for _sweep in 0..64 {
        let mut changed = false;
        for p in 0..k {
            for q in (p + 1)..k {
                let alpha = dot(&cols[p][..k], &cols[p][..k]);
                let beta = dot(&cols[q][..k], &cols[q][..k]);
                let gamma = dot(&cols[p][..k], &cols[q][..k]);
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                changed = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + zeta.hypot(1.0));
                let c = 1.0 / t.hypot(1.0);
                let s = c * t;
                for m in [&mut cols, &mut rot] {
                    let (head, tail) = m.split_at_mut(q);
                    let pairs = head[p].iter_mut().zip(tail[0].iter_mut()).take(k);
                    for (ep, eq) in pairs {
                        let (vp, vq) = (*ep, *eq);
                        *ep = c * vp - s * vq;
                        *eq = s * vp + c * vq;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }

    let mut sigma_raw = [0.0; MAX_COEF];
    for j in 0..k {
        sigma_raw[j] = scaled_norm(&cols[j][..k]);
    }
    let mut idx = [0usize, 1, 2];
    idx[..k].sort_by(|&a, &b| sigma_raw[b].total_cmp(&sigma_raw[a]));

    let mut u = [[0.0; MAX_COEF]; MAX_COEF];
    let mut v = [[0.0; MAX_COEF]; MAX_COEF];
    let mut sigma = [0.0; MAX_COEF];
    for (out, &j) in idx[..k].iter().enumerate() {
        sigma[out] = sigma_raw[j];
        for i in 0..k {
            u[i][out] = if sigma_raw[j] > 0.0 {
                cols[j][i] / sigma_raw[j]
            } else {
                0.0
            };
            v[i][out] = rot[j][i];
        }
    }
    (u, sigma, v)
}

/// Weighted local polynomial regression at arbitrary points, keeping the
/// neighbour permutation between calls exactly like `dloess` does.
struct LocalSolver {
    n_neighbours: usize,
    degree: usize,
    order: Vec<usize>,
    dist: Vec<f64>,
    weights: Vec<f64>,
    /// Column-major design matrix, `n_neighbours` rows.
    design: Vec<f64>,
    rhs: Vec<f64>,
    /// Pieces of the last successful fit needed to evaluate influences.
    qraux: [f64; MAX_COEF],
    u: Square,
    sigma: [f64; MAX_COEF],
    /// Right singular vectors with the column scaling undone.
    back: Square,
}

impl LocalSolver {
    fn new(n: usize, n_neighbours: usize, degree: usize) -> Self {
        Self {
            n_neighbours,
            degree,
            order: (0..n).collect(),
            dist: vec![0.0; n],
            weights: vec![0.0; n_neighbours],
            design: vec![0.0; n_neighbours * (degree + 1)],
            rhs: vec![0.0; n_neighbours],
            qraux: [0.0; MAX_COEF],
            u: [[0.0; MAX_COEF]; MAX_COEF],
            sigma: [0.0; MAX_COEF],
            back: [[0.0; MAX_COEF]; MAX_COEF],
        }
    }

    /// Local fit at `at`. Requires `2 <= n_coef + 1 <= n_neighbours <= x.len()`.
    fn fit(&mut self, x: &[f64], y: &[f64], at: f64) -> Result<VertexFit, LoessError> {
        let nf = self.n_neighbours;
        let k = self.degree + 1;
        let n = x.len();

        for (d, &xi) in self.dist.iter_mut().zip(x) {
            let diff = xi - at;
            *d = diff * diff;
        }
        select(&self.dist, &mut self.order, 0, n - 1, nf - 1);
        let radius2 = self.dist[self.order[nf - 1]];
        if radius2.is_nan() {
            return Err(LoessError::NumericalFailure);
        }
        if radius2 <= 0.0 {
            return Err(LoessError::ZeroWidthNeighbourhood { at });
        }

        // Square roots of tricube weights.
        for (w, &i) in self.weights.iter_mut().zip(&self.order[..nf]) {
            let r = (self.dist[i] / radius2).sqrt();
            let t = 1.0 - r * r * r;
            *w = (t * t * t).sqrt();
        }
        if self.weights.iter().any(|w| !w.is_finite()) {
            return Err(LoessError::NumericalFailure);
        }
        if self.weights.iter().all(|&w| w == 0.0) {
            return Err(LoessError::AllWeightsZero { at });
        }

        // Weighted design matrix and response.
        for (row, (&w, &i)) in self.weights.iter().zip(&self.order[..nf]).enumerate() {
            let diff = x[i] - at;
            self.design[row] = w;
            if k > 1 {
                self.design[nf + row] = w * diff;
            }
            if k > 2 {
                self.design[2 * nf + row] = w * (diff * diff);
            }
            self.rhs[row] = w * y[i];
        }

        // Equilibrate columns.
        let mut col_norm = [1.0; MAX_COEF];
        for (j, column) in self.design.chunks_exact_mut(nf).enumerate() {
            let norm = column.iter().fold(0.0, |acc, v| acc + v * v).sqrt();
            if norm > 0.0 {
                column.iter_mut().for_each(|v| *v /= norm);
                col_norm[j] = norm;
            }
        }

        let qraux = householder_qr(&mut self.design, nf, k);
        apply_qt(&self.design, nf, k, &qraux, &mut self.rhs);

        let mut r = [[0.0; MAX_COEF]; MAX_COEF];
        for j in 0..k {
            for (i, row) in r.iter_mut().enumerate().take(j + 1) {
                row[j] = self.design[j * nf + i];
            }
        }
        let (u, sigma, v) = small_svd(&r, k);
        let tol = sigma[0] * (100.0 * f64::EPSILON);
        if sigma[k - 1] <= tol || !sigma[0].is_finite() {
            return Err(LoessError::SingularLocalFit { at });
        }

        let mut back = [[0.0; MAX_COEF]; MAX_COEF];
        for i in 0..k {
            for j in 0..k {
                back[i][j] = v[i][j] / col_norm[i];
            }
        }
        self.qraux = qraux;
        self.u = u;
        self.sigma = sigma;
        self.back = back;
        let rotated = std::mem::take(&mut self.rhs);
        let fit = self.solve_rotated(&rotated);
        self.rhs = rotated;
        Ok(fit)
    }

    /// Coefficients (value, slope) from a right-hand side already multiplied
    /// by `Q^T`, through the pseudo-inverse of the triangular factor, with the
    /// column scaling undone.
    fn solve_rotated(&self, rotated: &[f64]) -> VertexFit {
        let k = self.degree + 1;
        let mut gamma = [0.0; MAX_COEF];
        for (j, g) in gamma.iter_mut().enumerate().take(k) {
            let proj = (0..k).fold(0.0, |acc, i| acc + self.u[i][j] * rotated[i]);
            *g = proj / self.sigma[j];
        }
        let coef = |i: usize| (0..k).fold(0.0, |acc, j| acc + self.back[i][j] * gamma[j]);
        VertexFit {
            value: coef(0),
            slope: if k > 1 { coef(1) } else { 0.0 },
        }
    }

    /// Derivatives of the last fitted vertex value and slope with respect to
    /// the response of neighbour number `row`.
    fn influence(&mut self, row: usize) -> (f64, f64) {
        let nf = self.n_neighbours;
        let mut unit = std::mem::take(&mut self.rhs);
        unit.iter_mut().for_each(|v| *v = 0.0);
        unit[row] = self.weights[row];
        apply_qt(&self.design, nf, self.degree + 1, &self.qraux, &mut unit);
        let fit = self.solve_rotated(&unit);
        self.rhs = unit;
        (fit.value, fit.slope)
    }
}

/// Householder QR of the column-major `rows x cols` matrix `a` in LINPACK
/// layout: `R` in the upper triangle, reflector vectors below it and their
/// leading components in the returned array.
fn householder_qr(a: &mut [f64], rows: usize, cols: usize) -> [f64; MAX_COEF] {
    let mut qraux = [0.0; MAX_COEF];
    for l in 0..rows.min(cols) {
        if l + 1 == rows {
            continue;
        }
        let (head, tail) = a.split_at_mut((l + 1) * rows);
        let pivot_col = &mut head[l * rows + l..];
        let mut norm = scaled_norm(pivot_col);
        if norm == 0.0 {
            continue;
        }
        if pivot_col[0] != 0.0 {
            norm = norm.copysign(pivot_col[0]);
        }
        let inv = 1.0 / norm;
        pivot_col.iter_mut().for_each(|v| *v *= inv);
        pivot_col[0] += 1.0;
        for other in tail.chunks_exact_mut(rows).take(cols - l - 1) {
            let part = &mut other[l..];
            let t = -dot(pivot_col, part) / pivot_col[0];
            add_scaled(part, t, pivot_col);
        }
        qraux[l] = pivot_col[0];
        pivot_col[0] = -norm;
    }
    qraux
}

/// Applies the reflector of column `j` to `target` (in place).
fn reflect(a: &[f64], rows: usize, j: usize, qraux: &[f64; MAX_COEF], target: &mut [f64]) {
    let lead = qraux[j];
    if lead == 0.0 {
        return;
    }
    // The reflector is column `j` from the diagonal down, with its leading
    // entry stored in `qraux`.
    let tail = &a[j * rows + j + 1..(j + 1) * rows];
    let Some((first, rest)) = target[j..].split_first_mut() else {
        return;
    };
    // Same left-to-right summation as a plain dot product over the reflector.
    let sum = tail
        .iter()
        .zip(rest.iter())
        .fold(lead * *first, |acc, (p, q)| acc + p * q);
    let t = -sum / lead;
    if t != 0.0 {
        *first += t * lead;
        add_scaled(rest, t, tail);
    }
}

/// `target <- Q^T target`.
fn apply_qt(a: &[f64], rows: usize, cols: usize, qraux: &[f64; MAX_COEF], target: &mut [f64]) {
    for j in 0..cols.min(rows.saturating_sub(1)) {
        reflect(a, rows, j, qraux, target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: &[f64], expected: &[f64], rel: f64) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            let scale = e.abs().max(1.0);
            assert!(
                (a - e).abs() <= rel * scale,
                "index {i}: got {a}, expected {e}"
            );
        }
    }

    /// Deterministic pseudo-random numbers in [0, 1) (64-bit LCG).
    fn uniform(seed: u64, n: usize) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }

    #[test]
    fn quadratic_is_reproduced_by_degree_two() {
        let x: Vec<f64> = uniform(7, 300).iter().map(|u| 10.0 * u - 3.0).collect();
        let y: Vec<f64> = x.iter().map(|v| 2.0 - 1.5 * v + 0.25 * v * v).collect();
        let fitted = loess_fit(&x, &y, 0.3, 2).expect("fit");
        assert_close(&fitted, &y, 1e-10);
    }

    #[test]
    fn line_is_reproduced_by_degree_one() {
        let x: Vec<f64> = uniform(11, 120).iter().map(|u| 4.0 * u).collect();
        let y: Vec<f64> = x.iter().map(|v| -1.0 + 3.0 * v).collect();
        let fitted = loess_fit(&x, &y, 0.4, 1).expect("fit");
        assert_close(&fitted, &y, 1e-10);
    }

    #[test]
    fn matches_scikit_misc_reference_values() {
        let x: Vec<f64> = (0..30)
            .map(|i| 0.1 * i as f64 + 0.05 * (i % 3) as f64)
            .collect();
        let y: Vec<f64> = x.iter().map(|v| v.sin() + 0.1 * (7.0 * v).cos()).collect();
        // skmisc.loess.loess(x, y, span=0.5, degree=d).fit(), scikit-misc 0.5.3
        let degree2 = [
            0.06319617122736568,
            0.17004419247355232,
            0.28982452420701044,
            0.28982452420701044,
            0.42111354326008305,
            0.5545082904032008,
            0.5545082904032009,
            0.7111913483491055,
            0.8191029956455643,
            0.8191029956455643,
            0.8952215243043786,
            0.9061652502905306,
            0.9061652502905306,
            0.9426208717454222,
            0.973739913703173,
            0.973739913703173,
            1.027153417331536,
            1.0224687811521223,
            1.0224687811521223,
            0.9433852944534137,
            0.8366633943612793,
            0.8366633943612793,
            0.7197484378200831,
            0.6443320673861208,
            0.6443320673861208,
            0.5599501002105178,
            0.4470287480976775,
            0.4470287480976775,
            0.3150620327983458,
            0.16527806358561986,
        ];
        let degree1_head = [
            0.04298387131568786,
            0.1666208449195398,
            0.2907318024255831,
            0.2907318024255831,
            0.41223380721047276,
        ];
        let degree0_head = [
            0.43138945951935415,
            0.4507636504083568,
            0.47237073198417445,
            0.47237073198417445,
            0.5140704091939748,
        ];
        assert_close(&loess_fit(&x, &y, 0.5, 2).expect("fit"), &degree2, 1e-12);
        assert_close(
            &loess_fit(&x, &y, 0.5, 1).expect("fit")[..5],
            &degree1_head,
            1e-12,
        );
        assert_close(
            &loess_fit(&x, &y, 0.5, 0).expect("fit")[..5],
            &degree0_head,
            1e-12,
        );
    }

    #[test]
    fn five_points() {
        let x = [0.0, 1.0, 2.0, 3.0, 4.0];
        let y = [1.0, 2.0, 3.0, 5.0, 4.0];
        let expected = [
            1.0344292114869973,
            1.8699522739718555,
            3.0000000000000004,
            4.4798090958874175,
            4.136860256965231,
        ];
        assert_close(&loess_fit(&x, &y, 1.0, 2).expect("fit"), &expected, 1e-12);
        // scikit-misc refuses these as well.
        assert!(matches!(
            loess_fit(&x, &y, 0.3, 2),
            Err(LoessError::SpanTooSmall {
                neighbours: 1,
                required: 4
            })
        ));
        assert!(matches!(
            loess_fit(&x, &y, 0.8, 2),
            Err(LoessError::TraceOutOfRange { .. })
        ));
        assert!(loess_fit(&x[..1], &y[..1], 1.0, 2).is_err());
    }

    #[test]
    fn duplicated_x_values() {
        let base = uniform(3, 40);
        let x: Vec<f64> = base.iter().chain(base.iter()).copied().collect();
        let y: Vec<f64> = x
            .iter()
            .zip(uniform(5, 80))
            .map(|(v, e)| v * v + 0.1 * e)
            .collect();
        let fitted = loess_fit(&x, &y, 0.3, 2).expect("fit");
        assert!(fitted.iter().all(|v| v.is_finite()));
        // Equal x must give equal fitted values.
        for i in 0..40 {
            assert_eq!(fitted[i].to_bits(), fitted[i + 40].to_bits());
        }
        // Heavily tied integer grid.
        let x: Vec<f64> = (0..500).map(|i| (i % 25) as f64).collect();
        let y: Vec<f64> = x.iter().map(|v| (v / 5.0).sin()).collect();
        let fitted = loess_fit(&x, &y, 0.3, 2).expect("fit");
        assert!(fitted.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn degenerate_inputs_give_errors() {
        let x = [2.0; 10];
        let y: Vec<f64> = (0..10).map(f64::from).collect();
        // The fitting points sit just off the data, so every neighbour lies
        // exactly on the neighbourhood boundary.
        assert!(matches!(
            loess_fit(&x, &y, 0.5, 2),
            Err(LoessError::AllWeightsZero { .. })
        ));
        let x: Vec<f64> = (0..24).map(|i| (i % 2) as f64).collect();
        let y: Vec<f64> = (0..24).map(f64::from).collect();
        assert!(loess_fit(&x, &y, 0.5, 2).is_err());
        assert!(loess_fit(&x, &y, 1.0, 2).is_err());
    }

    #[test]
    fn awkward_inputs_do_not_panic() {
        let cases: Vec<Vec<f64>> = vec![
            vec![1e308, -1e308, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            vec![1e-300, 2e-300, 3e-300, 4e-300, 5e-300, 6e-300],
            vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0],
            vec![5.0, 4.0, 3.0],
            vec![1.0, 2.0],
            vec![7.0],
        ];
        for x in cases {
            let y: Vec<f64> = x.iter().enumerate().map(|(i, _)| i as f64).collect();
            for degree in 0..=2 {
                for span in [0.05, 0.3, 0.7, 1.0] {
                    if let Ok(fitted) = loess_fit(&x, &y, span, degree) {
                        assert!(fitted.iter().all(|v| v.is_finite()));
                    }
                }
            }
        }
    }

    #[test]
    fn input_validation() {
        assert_eq!(loess_fit(&[], &[], 0.3, 2), Err(LoessError::EmptyInput));
        assert_eq!(
            loess_fit(&[1.0, 2.0], &[1.0], 0.3, 2),
            Err(LoessError::LengthMismatch { x_len: 2, y_len: 1 })
        );
        assert_eq!(
            loess_fit(&[1.0, f64::NAN], &[1.0, 2.0], 0.3, 2),
            Err(LoessError::NonFiniteInput {
                input: "x",
                index: 1
            })
        );
        assert_eq!(
            loess_fit(&[1.0, 2.0], &[f64::INFINITY, 2.0], 0.3, 2),
            Err(LoessError::NonFiniteInput {
                input: "y",
                index: 0
            })
        );
        let x: Vec<f64> = (0..50).map(f64::from).collect();
        assert!(matches!(
            loess_fit(&x, &x, 0.0, 2),
            Err(LoessError::InvalidSpan(_))
        ));
        assert!(matches!(
            loess_fit(&x, &x, 1.5, 2),
            Err(LoessError::InvalidSpan(_))
        ));
        assert!(matches!(
            loess_fit(&x, &x, f64::NAN, 2),
            Err(LoessError::InvalidSpan(_))
        ));
        assert_eq!(
            loess_fit(&x, &x, 0.3, 3),
            Err(LoessError::UnsupportedDegree(3))
        );
        let message = LoessError::EmptyInput.to_string();
        assert!(message.contains("no observations"));
    }

    #[test]
    fn result_follows_input_order() {
        let x: Vec<f64> = uniform(21, 200).iter().map(|u| 5.0 * u).collect();
        let y: Vec<f64> = x.iter().map(|v| v.cos() * v).collect();
        let fitted = loess_fit(&x, &y, 0.3, 2).expect("fit");
        let rev_x: Vec<f64> = x.iter().rev().copied().collect();
        let rev_y: Vec<f64> = y.iter().rev().copied().collect();
        let rev_fit = loess_fit(&rev_x, &rev_y, 0.3, 2).expect("fit");
        let back: Vec<f64> = rev_fit.iter().rev().copied().collect();
        assert_close(&back, &fitted, 1e-12);
    }

    #[test]
    fn split_prefers_nearest_untied_position() {
        // Median position 2 is tied with 3; the right neighbour 3/4 is tied
        // too, the left pair 1/2 is not.
        let sorted = [0.0, 1.0, 2.0, 2.0, 2.0, 5.0];
        assert_eq!(split_position(&sorted, 0, 6), 1);
        // No untied pair before hitting the end: keep the median.
        let sorted = [1.0, 1.0, 1.0, 1.0];
        assert_eq!(split_position(&sorted, 0, 4), 1);
    }

    #[test]
    fn select_puts_kth_smallest_in_place() {
        let keys = uniform(9, 101);
        let mut sorted = keys.clone();
        sorted.sort_by(f64::total_cmp);
        for k in [0, 1, 50, 99, 100] {
            let mut order: Vec<usize> = (0..keys.len()).collect();
            select(&keys, &mut order, 0, 100, k);
            assert_eq!(keys[order[k]], sorted[k]);
            assert!(order[..k].iter().all(|&i| keys[i] <= sorted[k]));
            assert!(order[k + 1..].iter().all(|&i| keys[i] >= sorted[k]));
        }
    }
}
