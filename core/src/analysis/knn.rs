//! Exact k nearest neighbours and scanpy's UMAP connectivities.
//!
//! [`knn`] is a blocked, multi-threaded brute-force search (all `n^2` pairs, `O(n^2 d)`), like
//! the one scanpy 1.11 uses for `sc.pp.neighbors` below 8,192 cells (euclidean) or 4,096 cells
//! (other metrics): every point's own index comes first (distance 0), then its `k - 1` nearest
//! other points by increasing distance (ties broken by the smaller index). Dot products are
//! accumulated in `f64` from the `f32` input with cache-sized tiles (AVX2/FMA when the CPU has
//! it); the distances of the selected neighbours are then recomputed directly in `f64` and
//! returned rounded to `f32`.
//!
//! [`umap_connectivities`] is umap-learn 0.5's `fuzzy_simplicial_set` exactly as scanpy calls
//! it (`local_connectivity = 1`, `bandwidth = 1`, 64 bisection steps, `set_op_mix_ratio = 1`:
//! `A + Aᵀ - A∘Aᵀ`), reproducing its `f32` arithmetic. [`neighbors`] combines the two and also
//! returns scanpy's `distances` matrix.

use rayon::prelude::*;

use super::{AnalysisError, CsrMatrix, DenseMatrix, Result};

/// Distance between two points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// `sqrt(sum (x - y)^2)`.
    #[default]
    Euclidean,
    /// `1 - x·y / (|x| |y|)`, in `[0, 2]`; a zero vector has distance 1 to every other point
    /// (scikit-learn's convention).
    Cosine,
}

/// The `k` nearest neighbours of each of `n` points, row-major `n x k`, self first.
#[derive(Debug, Clone, PartialEq)]
pub struct Knn {
    n: usize,
    k: usize,
    indices: Vec<u32>,
    distances: Vec<f32>,
}

impl Knn {
    /// Wraps precomputed neighbours (e.g. from another tool). `indices` and `distances` are
    /// row-major `n x k`; every index must be `< n`, no row may repeat an index, and distances
    /// must be finite, non-negative and non-decreasing along each row (the first entry is
    /// normally the point itself at distance 0).
    pub fn new(n: usize, k: usize, indices: Vec<u32>, distances: Vec<f32>) -> Result<Self> {
        if n == 0 {
            return Err(AnalysisError::Empty("kNN has no points"));
        }
        if k == 0 {
            return Err(AnalysisError::InvalidK { k, n });
        }
        let expected = n
            .checked_mul(k)
            .ok_or_else(|| AnalysisError::InvalidParameter("n * k overflows".into()))?;
        if indices.len() != expected {
            return Err(AnalysisError::LengthMismatch {
                what: "kNN indices",
                expected,
                got: indices.len(),
            });
        }
        if distances.len() != expected {
            return Err(AnalysisError::LengthMismatch {
                what: "kNN distances",
                expected,
                got: distances.len(),
            });
        }
        let mut seen: Vec<u32> = Vec::with_capacity(k);
        for i in 0..n {
            let idx = &indices[i * k..(i + 1) * k];
            let dist = &distances[i * k..(i + 1) * k];
            if let Some(&j) = idx.iter().find(|&&j| j as usize >= n) {
                return Err(AnalysisError::InvalidParameter(format!(
                    "kNN row {i}: index {j} out of range for {n} points"
                )));
            }
            seen.clear();
            seen.extend_from_slice(idx);
            seen.sort_unstable();
            if seen.windows(2).any(|w| w[0] == w[1]) {
                return Err(AnalysisError::InvalidParameter(format!(
                    "kNN row {i} repeats an index"
                )));
            }
            for (t, &d) in dist.iter().enumerate() {
                if !d.is_finite() || d < 0.0 {
                    return Err(AnalysisError::InvalidParameter(format!(
                        "kNN row {i}: distance {d} is not finite and >= 0"
                    )));
                }
                if t > 0 && dist[t - 1] > d {
                    return Err(AnalysisError::InvalidParameter(format!(
                        "kNN row {i}: distances are not sorted"
                    )));
                }
            }
        }
        Ok(Self {
            n,
            k,
            indices,
            distances,
        })
    }

    /// Number of points.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Neighbours per point (self included).
    pub fn k(&self) -> usize {
        self.k
    }

    /// All indices, row-major `n x k`.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// All distances, row-major `n x k`.
    pub fn distances(&self) -> &[f32] {
        &self.distances
    }

    /// Neighbour indices of point `i` (panics if `i >= n`).
    pub fn indices_of(&self, i: usize) -> &[u32] {
        &self.indices[i * self.k..(i + 1) * self.k]
    }

    /// Neighbour distances of point `i` (panics if `i >= n`).
    pub fn distances_of(&self, i: usize) -> &[f32] {
        &self.distances[i * self.k..(i + 1) * self.k]
    }
}

/// What scanpy's `sc.pp.neighbors` stores: the kNN itself, `obsp["distances"]` and
/// `obsp["connectivities"]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighborsGraph {
    /// The `k` nearest neighbours (self first).
    pub knn: Knn,
    /// kNN distances without the self column (`n x n`, `k - 1` entries per row, column-sorted).
    /// scanpy stores these as `f64`; here they are the `f32` values UMAP uses.
    pub distances: CsrMatrix<f32>,
    /// UMAP fuzzy-union connectivities (symmetric, no diagonal, column-sorted).
    pub connectivities: CsrMatrix<f32>,
}

/// Exact `k` nearest neighbours of every row of `x` (self first, `1 <= k < n`), multi-threaded.
pub fn knn(x: &DenseMatrix<'_>, k: usize, metric: Metric) -> Result<Knn> {
    let n = x.n_rows();
    if k == 0 || k >= n {
        return Err(AnalysisError::InvalidK { k, n });
    }
    let mut tops: Vec<TopK> = (0..n).map(|_| TopK::new(k)).collect();
    scan_pairs(x, metric, 0, &mut tops, |top, i, j0, vals, len| {
        let worst = top.worst();
        let has_self = (j0..j0 + len).contains(&i);
        if !has_self && vals.iter().all(|&v| v >= worst) {
            return;
        }
        for (c, &v) in vals.iter().enumerate().take(len) {
            let j = j0 + c;
            // the point itself always ranks first
            top.push(if i == j { -1.0 } else { v }, j as u32);
        }
    });
    let rows: Vec<(Vec<u32>, Vec<f32>)> = tops
        .into_par_iter()
        .enumerate()
        .map(|(i, top)| {
            let xi = x.row(i);
            let mut cand: Vec<(f64, u32)> = top
                .idx
                .iter()
                .map(|&j| {
                    let dist = if j as usize == i {
                        -1.0
                    } else {
                        exact_distance(xi, x.row(j as usize), metric)
                    };
                    (dist, j)
                })
                .collect();
            cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let idx = cand.iter().map(|c| c.1).collect();
            let dist = cand.iter().map(|c| c.0.max(0.0) as f32).collect();
            (idx, dist)
        })
        .collect();
    let mut indices = Vec::with_capacity(n * k);
    let mut distances = Vec::with_capacity(n * k);
    for (idx, dist) in rows {
        indices.extend(idx);
        distances.extend(dist);
    }
    Ok(Knn {
        n,
        k,
        indices,
        distances,
    })
}

/// scanpy's `sc.pp.neighbors(adata, n_neighbors=k, use_rep=..., metric=...)` with exact
/// neighbours: the kNN, the distances matrix and the UMAP connectivities.
pub fn neighbors(x: &DenseMatrix<'_>, k: usize, metric: Metric) -> Result<NeighborsGraph> {
    let knn = knn(x, k, metric)?;
    let connectivities = umap_connectivities(&knn)?;
    let distances = knn_distance_matrix(&knn)?;
    Ok(NeighborsGraph {
        knn,
        distances,
        connectivities,
    })
}

/// The kNN as a sparse `n x n` distance matrix without self entries (scanpy's
/// `obsp["distances"]`, with sorted column indices).
pub fn knn_distance_matrix(knn: &Knn) -> Result<CsrMatrix<f32>> {
    let (n, k) = (knn.n, knn.k);
    let mut indptr = Vec::with_capacity(n + 1);
    indptr.push(0);
    let mut indices = Vec::with_capacity(n * k);
    let mut data = Vec::with_capacity(n * k);
    let mut row: Vec<(u32, f32)> = Vec::with_capacity(k);
    for i in 0..n {
        row.clear();
        row.extend(
            knn.indices_of(i)
                .iter()
                .zip(knn.distances_of(i))
                .filter(|(j, _)| **j as usize != i)
                .map(|(&j, &d)| (j, d)),
        );
        row.sort_unstable_by_key(|e| e.0);
        indices.extend(row.iter().map(|e| e.0));
        data.extend(row.iter().map(|e| e.1));
        indptr.push(indices.len());
    }
    CsrMatrix::new(n, n, indptr, indices, data)
}

const SMOOTH_K_TOLERANCE: f64 = 1e-5;
const MIN_K_DIST_SCALE: f64 = 1e-3;
const N_ITER: usize = 64;

/// umap-learn's `smooth_knn_dist` (local_connectivity 1, bandwidth 1): per point the distance
/// to its nearest non-zero neighbour `rho` and the bandwidth `sigma` with
/// `sum_j exp(-(d_j - rho) / sigma) = log2(k)` over the non-self columns, with the same
/// arithmetic as umap's numba kernel (bit-identical on the goldens). Returns `(sigmas, rhos)`.
pub fn smooth_knn_dist(knn: &Knn) -> (Vec<f32>, Vec<f32>) {
    let (n, k) = (knn.n, knn.k);
    let target = (k as f64).log2();
    // numba's np.mean: float32 accumulator, sequential
    let mut total = 0.0f32;
    for &d in &knn.distances {
        total += d;
    }
    let mean_distances = total as f64 / (n * k) as f64;
    (0..n)
        .into_par_iter()
        .map(|i| {
            let row = knn.distances_of(i);
            let rho = row.iter().copied().find(|&d| d > 0.0).unwrap_or(0.0);
            // umap's numba kernel runs this loop in f64 (the float32 `locals` annotations do
            // not survive its prange lowering): d = f32 difference, everything else f64.
            let (mut lo, mut hi, mut mid) = (0.0f64, f32::MAX as f64, 1.0f64);
            for _ in 0..N_ITER {
                let mut psum = 0.0f64;
                for &dj in &row[1..] {
                    let d = (dj - rho) as f64;
                    if d > 0.0 {
                        psum += (-(d / mid)).exp();
                    } else {
                        psum += 1.0;
                    }
                }
                if (psum - target).abs() < SMOOTH_K_TOLERANCE {
                    break;
                }
                if psum > target {
                    hi = mid;
                    mid = (lo + hi) / 2.0;
                } else {
                    lo = mid;
                    if hi >= f32::MAX as f64 {
                        mid *= 2.0;
                    } else {
                        mid = (lo + hi) / 2.0;
                    }
                }
            }
            let mut sigma = mid as f32;
            if rho > 0.0 {
                let mut s = 0.0f32;
                for &d in row {
                    s += d;
                }
                let mean_ith = s as f64 / k as f64;
                if (sigma as f64) < MIN_K_DIST_SCALE * mean_ith {
                    sigma = (MIN_K_DIST_SCALE * mean_ith) as f32;
                }
            } else if (sigma as f64) < MIN_K_DIST_SCALE * mean_distances {
                sigma = (MIN_K_DIST_SCALE * mean_distances) as f32;
            }
            (sigma, rho)
        })
        .unzip()
}

/// UMAP connectivities of a kNN (umap-learn's `fuzzy_simplicial_set` with
/// `set_op_mix_ratio = 1`, `local_connectivity = 1`), as scanpy 1.11 computes
/// `obsp["connectivities"]`: membership `a_ij = exp(-(d_ij - rho_i) / sigma_i)` (1 for the
/// nearest non-zero neighbour and closer, 0 for self), then the fuzzy union
/// `a_ij + a_ji - a_ij a_ji`, in `f32`. Symmetric, no diagonal, zeros dropped.
pub fn umap_connectivities(knn: &Knn) -> Result<CsrMatrix<f32>> {
    let (n, k) = (knn.n, knn.k);
    let (sigmas, rhos) = smooth_knn_dist(knn);
    // membership strengths, row-wise (rows of A), sorted by column
    let mut a_ptr = Vec::with_capacity(n + 1);
    a_ptr.push(0usize);
    let mut a_idx: Vec<u32> = Vec::with_capacity(n * k);
    let mut a_val: Vec<f32> = Vec::with_capacity(n * k);
    let mut row: Vec<(u32, f32)> = Vec::with_capacity(k);
    for i in 0..n {
        row.clear();
        let (sigma, rho) = (sigmas[i], rhos[i]);
        for (&j, &d) in knn.indices_of(i).iter().zip(knn.distances_of(i)) {
            if j as usize == i {
                continue;
            }
            let val = if d - rho <= 0.0 || sigma == 0.0 {
                1.0f32
            } else {
                (-((d - rho) / sigma)).exp()
            };
            if val != 0.0 {
                row.push((j, val));
            }
        }
        row.sort_unstable_by_key(|e| e.0);
        a_idx.extend(row.iter().map(|e| e.0));
        a_val.extend(row.iter().map(|e| e.1));
        a_ptr.push(a_idx.len());
    }
    // transpose (counting sort keeps columns sorted)
    let mut t_cnt = vec![0usize; n + 1];
    for &j in &a_idx {
        t_cnt[j as usize + 1] += 1;
    }
    for i in 0..n {
        t_cnt[i + 1] += t_cnt[i];
    }
    let t_ptr = t_cnt.clone();
    let mut fill = t_cnt;
    let mut t_idx = vec![0u32; a_idx.len()];
    let mut t_val = vec![0f32; a_idx.len()];
    for i in 0..n {
        for p in a_ptr[i]..a_ptr[i + 1] {
            let j = a_idx[p] as usize;
            t_idx[fill[j]] = i as u32;
            t_val[fill[j]] = a_val[p];
            fill[j] += 1;
        }
    }
    // fuzzy union row by row: merge row i of A and of Aᵀ
    let mut indptr = Vec::with_capacity(n + 1);
    indptr.push(0usize);
    let mut indices: Vec<u32> = Vec::with_capacity(2 * a_idx.len());
    let mut data: Vec<f32> = Vec::with_capacity(2 * a_idx.len());
    for i in 0..n {
        let (ai, av) = (
            &a_idx[a_ptr[i]..a_ptr[i + 1]],
            &a_val[a_ptr[i]..a_ptr[i + 1]],
        );
        let (ti, tv) = (
            &t_idx[t_ptr[i]..t_ptr[i + 1]],
            &t_val[t_ptr[i]..t_ptr[i + 1]],
        );
        let (mut p, mut q) = (0, 0);
        while p < ai.len() || q < ti.len() {
            let (j, a, b) = if q >= ti.len() || (p < ai.len() && ai[p] < ti[q]) {
                p += 1;
                (ai[p - 1], av[p - 1], 0.0f32)
            } else if p >= ai.len() || ti[q] < ai[p] {
                q += 1;
                (ti[q - 1], 0.0f32, tv[q - 1])
            } else {
                p += 1;
                q += 1;
                (ai[p - 1], av[p - 1], tv[q - 1])
            };
            // scipy, float32: (A + Aᵀ) - A∘Aᵀ
            let v = (a + b) - a * b;
            if v != 0.0 {
                indices.push(j);
                data.push(v);
            }
        }
        indptr.push(indices.len());
    }
    CsrMatrix::new(n, n, indptr, indices, data)
}

/// Direct `f64` distance between two rows (no cancellation).
pub(crate) fn exact_distance(a: &[f32], b: &[f32], metric: Metric) -> f64 {
    match metric {
        Metric::Euclidean => a
            .iter()
            .zip(b)
            .map(|(&x, &y)| {
                let t = x as f64 - y as f64;
                t * t
            })
            .sum::<f64>()
            .sqrt(),
        Metric::Cosine => {
            let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (x as f64, y as f64);
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
            if aa == 0.0 || bb == 0.0 {
                1.0
            } else {
                (1.0 - ab / (aa.sqrt() * bb.sqrt())).clamp(0.0, 2.0)
            }
        }
    }
}

/// Bounded sorted list of the `k` smallest `(value, index)` pairs seen (ties keep the earlier,
/// i.e. smaller, index because candidates arrive in increasing index order).
struct TopK {
    val: Vec<f64>,
    idx: Vec<u32>,
    k: usize,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            val: Vec::with_capacity(k),
            idx: Vec::with_capacity(k),
            k,
        }
    }

    /// Current k-th smallest value (+inf while fewer than `k` were seen).
    #[inline(always)]
    fn worst(&self) -> f64 {
        if self.val.len() == self.k {
            self.val[self.k - 1]
        } else {
            f64::INFINITY
        }
    }

    #[inline(always)]
    fn push(&mut self, v: f64, j: u32) {
        let len = self.val.len();
        if len == self.k {
            if v >= self.val[len - 1] {
                return;
            }
            self.val.pop();
            self.idx.pop();
        }
        let pos = self.val.partition_point(|&x| x <= v);
        self.val.insert(pos, v);
        self.idx.insert(pos, j);
    }
}

// ---- blocked pairwise kernel -------------------------------------------------------------

/// Panel width: points per packed panel (8 f64 = two AVX2 registers).
const W: usize = 8;
/// Length of the value runs passed to the `scan_pairs` visitor.
pub(crate) const PANEL: usize = W;
/// Query rows per micro tile: 4 (portable), 6 (AVX2: 12 ymm accumulators), 8 (AVX-512: 8
/// zmm accumulators).
const R_GENERIC: usize = 4;
const R_AVX2: usize = 6;
const R_AVX512: usize = 8;
/// Query rows per parallel task (a multiple of every micro-tile height).
const QB: usize = 96;
/// Points per column super-block (multiple of `W`).
const CB: usize = 2048;

/// Calls `visit(&mut states[i - row0], i, j0, values, len)` for every query row
/// `i in row0 .. row0 + states.len()` of `x` and every run of `len <= PANEL` consecutive rows
/// `j0 .. j0 + len` of all of `x`, where `values[c]` is the value for the pair `(i, j0 + c)`:
/// the squared euclidean distance (clamped at 0) or the cosine distance (in `[0, 2]`), exactly
/// 0 for `i == j`, and +inf in the unused lanes `c >= len`. For a fixed `i`, runs arrive in
/// increasing `j0`. Query rows are split over rayon tasks. `row0 + states.len()` must not
/// exceed `x.n_rows()`.
pub(crate) fn scan_pairs<S, F>(
    x: &DenseMatrix<'_>,
    metric: Metric,
    row0: usize,
    states: &mut [S],
    visit: F,
) where
    S: Send,
    F: Fn(&mut S, usize, usize, &[f64; PANEL], usize) + Sync,
{
    scan_pairs_isa(x, metric, row0, states, visit, detect_isa());
}

fn scan_pairs_isa<S, F>(
    x: &DenseMatrix<'_>,
    metric: Metric,
    row0: usize,
    states: &mut [S],
    visit: F,
    isa: Isa,
) where
    S: Send,
    F: Fn(&mut S, usize, usize, &[f64; PANEL], usize) + Sync,
{
    let n = x.n_rows();
    let d = x.n_cols();
    if row0 + states.len() > n {
        return;
    }
    // per-row scale (1 or 1/|x|) and squared norm of the scaled row
    let (scale, norms): (Vec<f64>, Vec<f64>) = (0..n)
        .into_par_iter()
        .map(|i| {
            let ss: f64 = x.row(i).iter().map(|&v| (v as f64) * (v as f64)).sum();
            match metric {
                Metric::Euclidean => (1.0, ss),
                Metric::Cosine => {
                    if ss > 0.0 {
                        (1.0 / ss.sqrt(), 1.0)
                    } else {
                        (0.0, 0.0)
                    }
                }
            }
        })
        .unzip();
    let ctx = Ctx {
        x: *x,
        d,
        scale: &scale,
        norms: &norms,
        cosine: metric == Metric::Cosine,
    };
    let mut packed: Vec<f64> = Vec::new();
    for cb_start in (0..n).step_by(CB) {
        let cb_end = (cb_start + CB).min(n);
        let n_panels = (cb_end - cb_start).div_ceil(W);
        packed.clear();
        packed.resize(n_panels * d * W, 0.0);
        packed
            .par_chunks_mut(d * W)
            .enumerate()
            .for_each(|(p, panel)| {
                for c in 0..W {
                    let j = cb_start + p * W + c;
                    if j >= cb_end {
                        break;
                    }
                    let s = scale[j];
                    for (t, &v) in x.row(j).iter().enumerate() {
                        panel[t * W + c] = v as f64 * s;
                    }
                }
            });
        let packed = &packed;
        let visit = &visit;
        let ctx = &ctx;
        states.par_chunks_mut(QB).enumerate().for_each(|(t, st)| {
            let block = Block {
                q0: row0 + t * QB,
                cb_start,
                cb_end,
                packed,
            };
            run_block(ctx, &block, st, visit, isa);
        });
    }
}

struct Ctx<'a> {
    x: DenseMatrix<'a>,
    d: usize,
    scale: &'a [f64],
    norms: &'a [f64],
    cosine: bool,
}

struct Block<'a> {
    q0: usize,
    cb_start: usize,
    cb_end: usize,
    packed: &'a [f64],
}

/// The SIMD instruction set the distance kernels use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

pub(crate) fn detect_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Generic
}

fn run_block<S, F>(ctx: &Ctx<'_>, block: &Block<'_>, st: &mut [S], visit: &F, isa: Isa)
where
    F: Fn(&mut S, usize, usize, &[f64; W], usize),
{
    match isa {
        // SAFETY (both): the CPU supports the features the function is compiled for (checked
        // by `detect_isa`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { block_avx512(ctx, block, st, visit) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { block_avx2(ctx, block, st, visit) },
        Isa::Generic => block_generic::<false, false, R_GENERIC, S, F>(ctx, block, st, visit),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_avx2<S, F>(ctx: &Ctx<'_>, block: &Block<'_>, st: &mut [S], visit: &F)
where
    F: Fn(&mut S, usize, usize, &[f64; W], usize),
{
    block_generic::<true, false, R_AVX2, S, F>(ctx, block, st, visit);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn block_avx512<S, F>(ctx: &Ctx<'_>, block: &Block<'_>, st: &mut [S], visit: &F)
where
    F: Fn(&mut S, usize, usize, &[f64; W], usize),
{
    block_generic::<true, true, R_AVX512, S, F>(ctx, block, st, visit);
}

/// One task: query rows `q0 .. q0 + st.len()` against the packed super-block.
#[inline(always)]
fn block_generic<const FMA: bool, const AVX512: bool, const R: usize, S, F>(
    ctx: &Ctx<'_>,
    block: &Block<'_>,
    st: &mut [S],
    visit: &F,
) where
    F: Fn(&mut S, usize, usize, &[f64; W], usize),
{
    let d = ctx.d;
    let nq = st.len();
    let groups = nq.div_ceil(R);
    // queries, scaled, f64, grouped by R rows: [group][feature][R]
    let mut qt = vec![0.0f64; groups * d * R];
    for r in 0..nq {
        let i = block.q0 + r;
        let s = ctx.scale[i];
        let (g, rr) = (r / R, r % R);
        let base = g * d * R;
        for (t, &v) in ctx.x.row(i).iter().enumerate() {
            qt[base + t * R + rr] = v as f64 * s;
        }
    }
    for (p, panel) in block.packed.chunks_exact(d * W).enumerate() {
        let j0 = block.cb_start + p * W;
        let wc = W.min(block.cb_end - j0);
        let mut pn = [0.0f64; W];
        for (c, v) in pn.iter_mut().enumerate().take(wc) {
            *v = ctx.norms[j0 + c];
        }
        for (g, qg) in qt.chunks_exact(d * R).enumerate() {
            let acc = micro_dispatch::<FMA, AVX512, R>(qg, panel);
            let r0 = g * R;
            for (r, acc_r) in acc.iter().enumerate().take(R.min(nq - r0)) {
                let i = block.q0 + r0 + r;
                let mut vals = [0.0f64; W];
                if ctx.cosine {
                    for c in 0..W {
                        vals[c] = (1.0 - acc_r[c]).clamp(0.0, 2.0);
                    }
                } else {
                    let ni = ctx.norms[i];
                    for c in 0..W {
                        vals[c] = (ni + pn[c] - 2.0 * acc_r[c]).max(0.0);
                    }
                }
                for v in vals.iter_mut().skip(wc) {
                    *v = f64::INFINITY;
                }
                if (j0..j0 + wc).contains(&i) {
                    vals[i - j0] = 0.0;
                }
                visit(&mut st[r0 + r], i, j0, &vals, wc);
            }
        }
    }
}

#[inline(always)]
fn micro_dispatch<const FMA: bool, const AVX512: bool, const R: usize>(
    qg: &[f64],
    panel: &[f64],
) -> [[f64; W]; R] {
    #[cfg(target_arch = "x86_64")]
    {
        if AVX512 {
            // SAFETY: `AVX512 = true` is only instantiated by `block_avx512`, which runs only
            // when the CPU has AVX-512F.
            return unsafe { micro_avx512::<R>(qg, panel) };
        }
    }
    micro::<FMA, R>(qg, panel)
}

/// [`micro`] with explicit AVX-512 intrinsics (one zmm register per query row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn micro_avx512<const R: usize>(qg: &[f64], panel: &[f64]) -> [[f64; W]; R] {
    use std::arch::x86_64::{
        __m512d, _mm512_fmadd_pd, _mm512_loadu_pd, _mm512_set1_pd, _mm512_setzero_pd,
        _mm512_storeu_pd,
    };
    const { assert!(W == 8) };
    let (qs, _) = qg.as_chunks::<R>();
    let (ps, _) = panel.as_chunks::<W>();
    let mut acc: [__m512d; R] = [_mm512_setzero_pd(); R];
    for (q, p) in qs.iter().zip(ps) {
        // SAFETY: `p` is 8 contiguous f64.
        let pv = unsafe { _mm512_loadu_pd(p.as_ptr()) };
        for r in 0..R {
            acc[r] = _mm512_fmadd_pd(_mm512_set1_pd(q[r]), pv, acc[r]);
        }
    }
    let mut out = [[0.0f64; W]; R];
    for r in 0..R {
        // SAFETY: `out[r]` is 8 contiguous f64.
        unsafe { _mm512_storeu_pd(out[r].as_mut_ptr(), acc[r]) };
    }
    out
}

/// `R x W` dot products of a query group (`[feature][R]`) with a panel (`[feature][W]`).
#[inline(always)]
fn micro<const FMA: bool, const R: usize>(qg: &[f64], panel: &[f64]) -> [[f64; W]; R] {
    let mut acc = [[0.0f64; W]; R];
    let (qs, _) = qg.as_chunks::<R>();
    let (ps, _) = panel.as_chunks::<W>();
    for (q, p) in qs.iter().zip(ps) {
        for r in 0..R {
            let a = q[r];
            for c in 0..W {
                acc[r][c] = if FMA {
                    a.mul_add(p[c], acc[r][c])
                } else {
                    a * p[c] + acc[r][c]
                };
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU can run gives the same pair values (up to rounding) as the
    /// portable one.
    #[test]
    fn kernels_agree() {
        let (n, d) = (2100, 37);
        let x: Vec<f32> = (0..n * d)
            .map(|i| (((i * 2_654_435_761usize) >> 7) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let m = DenseMatrix::new(&x, n, d).unwrap();
        #[allow(unused_mut)]
        let mut isas = vec![Isa::Generic];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let run = |isa: Isa| {
                let mut sums = vec![(0.0f64, 0usize); 150];
                scan_pairs_isa(
                    &m,
                    metric,
                    1000,
                    &mut sums,
                    |s, i, j0, vals, len| {
                        for (c, &v) in vals.iter().enumerate() {
                            if c < len {
                                s.0 += v * (j0 + c + 1) as f64;
                                s.1 += 1;
                                if j0 + c == i {
                                    assert_eq!(v, 0.0);
                                }
                            } else {
                                assert_eq!(v, f64::INFINITY);
                            }
                        }
                    },
                    isa,
                );
                sums
            };
            let reference = run(Isa::Generic);
            assert!(reference.iter().all(|s| s.1 == n));
            for &isa in &isas[1..] {
                let other = run(isa);
                for (a, b) in reference.iter().zip(&other) {
                    assert_eq!(a.1, b.1);
                    assert!((a.0 - b.0).abs() <= 1e-9 * a.0.abs(), "{isa:?} {metric:?}");
                }
            }
        }
    }
}
