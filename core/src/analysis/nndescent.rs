//! Approximate k nearest neighbours by NN-descent, and scanpy's exact/approximate switch.
//!
//! [`approx_knn`] follows NN-descent (Dong, Moses & Li 2011) as pynndescent 0.5-0.7 runs it
//! for `sc.pp.neighbors` on large data sets:
//!
//! 1. **Random-projection forest**: each tree splits its points recursively by the hyperplane
//!    halfway between two random points of the node (euclidean) or through the origin
//!    between two random unit vectors (cosine) until nodes hold at most `leaf_size` points;
//!    all pairs inside every leaf seed the neighbour lists. Points whose list is still short
//!    get random neighbours. The first tree's leaf order also becomes the working order of
//!    the points: the rows are copied in that order, so that points and their neighbours are
//!    mostly close in memory (this roughly halves the cache misses of the local joins).
//! 2. **NN-descent**: every iteration samples, per point, up to `max_candidates` "new"
//!    neighbours (found in the previous iteration, forward or reverse) and up to
//!    `max_candidates` "old" ones, by a random priority (pynndescent's `max_candidates`
//!    sampling; `max_candidates = k` as pynndescent uses, so with the reverse neighbours the
//!    sampling rate is about 0.5), and runs the local join: every new-new and new-old pair
//!    of a point's candidates that do not know each other yet is a possible neighbour of
//!    both ends. It stops after `n_iters` iterations or when an iteration makes at most
//!    `delta * n * (k - 1)` list changes (pynndescent's early termination, `delta = 0.001`).
//!    The lists keep `k - 1 + list_extra` entries during the search (see
//!    [`NnDescentOptions::list_extra`]); the best `k - 1` are returned.
//!
//! Distances are computed in `f32` with AVX-512 / AVX2+FMA kernels chosen at run time
//! (portable code otherwise), one point against four candidates at a time (squared
//! euclidean; for cosine the rows are normalised once and the distance is `1 - x·y`). Finally (by default) the
//! distances of the selected neighbours are recomputed in `f64` like [`knn`] does, and
//! every row is sorted by them, so the result has exactly the layout of the exact [`knn`]:
//! row-major `n x k`, the point itself first at distance 0, then by increasing distance (ties
//! by index); a zero vector has cosine distance 1 to every other point.
//!
//! **Parallelism and determinism**: candidate proposals and local joins are generated in
//! parallel (rayon) in fixed-size vertex blocks against the neighbour lists as they were at
//! the start of the block, and then applied per target point in generation order; random
//! choices are pure hashes of `(seed, tree/iteration, point)`. The result therefore depends
//! on the seed only, not on the number of threads.
//!
//! [`neighbors_auto`] picks exact or approximate neighbours like scanpy 1.11's
//! `sc.pp.neighbors`: exact below [`EXACT_THRESHOLD_EUCLIDEAN`] points for the euclidean
//! metric and below [`EXACT_THRESHOLD_OTHER`] for other metrics, NN-descent above.

use rayon::prelude::*;

use super::knn::{Isa, Knn, Metric, detect_isa, exact_distance, knn};
use super::{AnalysisError, DenseMatrix, Result};
use crate::tokenize::{hash_below as below, mix};

/// scanpy uses exact (brute-force) neighbours below this many points with the euclidean
/// metric.
pub const EXACT_THRESHOLD_EUCLIDEAN: usize = 8192;
/// scanpy uses exact (brute-force) neighbours below this many points with other metrics.
pub const EXACT_THRESHOLD_OTHER: usize = 4096;

/// Vertices per local-join block (updates are applied after each block; fixed so the result
/// does not depend on the thread count).
const JOIN_BLOCK: usize = 8192;
/// Vertices per parallel task inside a block.
const JOIN_CHUNK: usize = 64;
/// Nodes at least this large split their two halves in parallel.
const PAR_SPLIT: usize = 4096;
/// Recursion guard of the trees: deeper nodes become leaves (cut into `leaf_size` pieces).
const MAX_DEPTH: usize = 200;

/// Options of [`approx_knn`]; `None` fields follow scanpy/pynndescent's rules for `n` points.
#[derive(Debug, Clone, PartialEq)]
pub struct NnDescentOptions {
    /// Seed of all random choices (trees, candidate sampling, random fill).
    pub seed: u64,
    /// Number of random-projection trees (at least 1 is built: its leaf order is the working
    /// order of the points); `None`: `round(log2(n) / 4)` clamped to `2..=8` (4 at 50,000
    /// points; pynndescent builds more trees with larger leaves and relies less on the
    /// descent).
    pub n_trees: Option<usize>,
    /// Maximum leaf size of the trees; `None`: `max(30, 2k)`.
    pub leaf_size: Option<usize>,
    /// Maximum number of NN-descent iterations; `None`: `max(5, round(log2 n))` (scanpy).
    pub n_iters: Option<usize>,
    /// Candidates sampled per point and iteration (each of new and old); `None`:
    /// `min(60, k)` (pynndescent).
    pub max_candidates: Option<usize>,
    /// Early termination: stop when an iteration changes at most `delta * n * (k - 1)`
    /// neighbour-list entries (pynndescent default 0.001).
    pub delta: f64,
    /// Recompute the selected neighbours' distances in `f64` and sort by them (default true);
    /// otherwise the `f32` kernel distances are returned.
    pub refine_exact: bool,
    /// Extra slots of every neighbour list during the search (default 2): the search keeps
    /// `k - 1 + list_extra` neighbours per point and returns the best `k - 1`, which raises the
    /// recall for a moderate cost (like asking pynndescent for `k + 1` neighbours, which
    /// scanpy does).
    pub list_extra: usize,
}

impl Default for NnDescentOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            n_trees: None,
            leaf_size: None,
            n_iters: None,
            max_candidates: None,
            delta: 0.001,
            refine_exact: true,
            list_extra: 2,
        }
    }
}

/// Neighbours as scanpy's `sc.pp.neighbors` finds them: exact [`knn`] below
/// [`EXACT_THRESHOLD_EUCLIDEAN`] (euclidean) / [`EXACT_THRESHOLD_OTHER`] (cosine) points,
/// [`approx_knn`] with default options and this `seed` above.
pub fn neighbors_auto(x: &DenseMatrix<'_>, k: usize, metric: Metric, seed: u64) -> Result<Knn> {
    let n = x.n_rows();
    let threshold = match metric {
        Metric::Euclidean => EXACT_THRESHOLD_EUCLIDEAN,
        Metric::Cosine => EXACT_THRESHOLD_OTHER,
    };
    if n < threshold {
        knn(x, k, metric)
    } else {
        let opts = NnDescentOptions {
            seed,
            ..NnDescentOptions::default()
        };
        approx_knn(x, k, metric, &opts)
    }
}

/// Approximate `k` nearest neighbours of every row of `x` (self first, `1 <= k < n`) by
/// NN-descent with random-projection-tree initialisation; see the module documentation.
pub fn approx_knn(
    x: &DenseMatrix<'_>,
    k: usize,
    metric: Metric,
    opts: &NnDescentOptions,
) -> Result<Knn> {
    let n = x.n_rows();
    if k == 0 || k >= n {
        return Err(AnalysisError::InvalidK { k, n });
    }
    if n > u32::MAX as usize {
        return Err(AnalysisError::InvalidParameter(format!(
            "{n} points exceed the u32 index range"
        )));
    }
    if !(opts.delta.is_finite() && opts.delta >= 0.0) {
        return Err(AnalysisError::InvalidParameter(format!(
            "delta must be finite and >= 0, got {}",
            opts.delta
        )));
    }
    if opts.max_candidates == Some(0) {
        return Err(AnalysisError::InvalidParameter(
            "max_candidates must be >= 1".into(),
        ));
    }
    if matches!(opts.leaf_size, Some(l) if l < 2) {
        return Err(AnalysisError::InvalidParameter(
            "leaf_size must be >= 2".into(),
        ));
    }
    let kk = k - 1;
    if kk == 0 {
        return Knn::new(n, 1, (0..n as u32).collect(), vec![0.0; n]);
    }
    let d = x.n_cols();
    let n_trees = opts
        .n_trees
        .unwrap_or_else(|| (((n as f64).log2() / 4.0).round() as usize).clamp(2, 8));
    let leaf_size = opts.leaf_size.unwrap_or((2 * k).max(30));
    let n_iters = opts
        .n_iters
        .unwrap_or_else(|| ((n as f64).log2().round() as usize).max(5));
    let max_cand = opts.max_candidates.unwrap_or(k.min(60));
    let kernel = Kernel::new(metric);
    let tree_seed = |t: usize| mix(opts.seed ^ mix(0x7472_6565 + t as u64));

    // cosine: unit rows (zero rows stay zero, so 1 - x·y = 1 against them)
    let normalised: Option<Vec<f32>> = match metric {
        Metric::Euclidean => None,
        Metric::Cosine => {
            let mut v = x.data().to_vec();
            v.par_chunks_mut(d).for_each(normalise);
            Some(v)
        }
    };
    let src = Data {
        x: normalised.as_deref().unwrap_or(x.data()),
        d,
        kernel,
    };
    // The first tree's leaf order becomes the working order of the points: rows are copied
    // in that order so that neighbours (which share leaves) are close in memory.
    let first = build_tree(&src, leaf_size, tree_seed(0));
    let perm: Vec<u32> = first.concat();
    let mut xp = vec![0.0f32; n * d];
    xp.par_chunks_mut(d)
        .zip(perm.par_iter())
        .for_each(|(dst, &o)| dst.copy_from_slice(src.row(o as usize)));
    drop(normalised);
    let data = Data { x: &xp, d, kernel };

    let ks = (kk + opts.list_extra).min(n - 1);
    let mut graph = Graph::new(n, ks);
    // 1. random-projection forest (tree 0's leaves are consecutive ranges now)
    let mut pos = 0u32;
    let first_local: Vec<Vec<u32>> = first
        .iter()
        .map(|l| {
            let r = (pos..pos + l.len() as u32).collect();
            pos += l.len() as u32;
            r
        })
        .collect();
    drop(first);
    for t in 0..n_trees.max(1) {
        let leaves = if t == 0 {
            first_local.clone()
        } else {
            build_tree(&data, leaf_size, tree_seed(t))
        };
        let updates: Vec<Vec<Update>> = leaves
            .par_chunks(16)
            .map(|ls| {
                let mut out = Vec::new();
                for leaf in ls {
                    leaf_pairs(&data, &graph, leaf, &mut out);
                }
                out
            })
            .collect();
        graph.apply(&updates);
    }
    // fill short lists with random points
    graph.random_fill(&data, opts.seed);

    // 2. NN-descent
    let threshold = opts.delta * n as f64 * kk as f64;
    for it in 0..n_iters {
        let salt = mix(opts.seed ^ mix(0x6974_6572 + it as u64));
        let cands = graph.candidates(max_cand, salt);
        let mut changes = 0usize;
        for b0 in (0..n).step_by(JOIN_BLOCK) {
            let b1 = (b0 + JOIN_BLOCK).min(n);
            let updates: Vec<Vec<Update>> = (b0..b1)
                .collect::<Vec<usize>>()
                .par_chunks(JOIN_CHUNK)
                .map(|vs| {
                    let mut out = Vec::new();
                    for &v in vs {
                        local_join(&data, &graph, &cands, v, &mut out);
                    }
                    out
                })
                .collect();
            changes += graph.apply(&updates);
        }
        if changes as f64 <= threshold {
            break;
        }
    }

    // 3. output: self first, then by distance (f64 refinement optional); computed in working
    // order (neighbouring rows are close in memory), then scattered to the input order
    let rows: Vec<(f64, u32)> = (0..n)
        .into_par_iter()
        .flat_map_iter(|v| {
            let i = perm[v] as usize;
            let mut cand: Vec<(f64, u32)> = graph
                .row(v)
                .iter()
                .filter(|e| e.i != EMPTY)
                .map(|e| {
                    let j = perm[e.i as usize];
                    let dist = match (opts.refine_exact, metric) {
                        (true, Metric::Euclidean) => {
                            // the working copy holds the input rows bit for bit
                            data.kernel
                                .sq_l2_f64(data.row(v), data.row(e.i as usize))
                                .sqrt()
                        }
                        (true, Metric::Cosine) => {
                            exact_distance(x.row(i), x.row(j as usize), metric)
                        }
                        (false, Metric::Euclidean) => (e.d.max(0.0) as f64).sqrt(),
                        (false, Metric::Cosine) => e.d.clamp(0.0, 2.0) as f64,
                    };
                    (dist, j)
                })
                .collect();
            cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            cand.truncate(kk);
            cand.resize(kk, (f64::NAN, u32::MAX));
            std::iter::once((0.0, i as u32)).chain(cand)
        })
        .collect();
    if rows.iter().any(|r| r.1 == u32::MAX) {
        return Err(AnalysisError::InvalidParameter(
            "NN-descent could not fill every neighbour list".into(),
        ));
    }
    let mut indices = vec![0u32; n * k];
    let mut distances = vec![0.0f32; n * k];
    for (v, row) in rows.chunks_exact(k).enumerate() {
        let i = perm[v] as usize;
        for (t, &(dd, j)) in row.iter().enumerate() {
            indices[i * k + t] = j;
            distances[i * k + t] = dd.max(0.0) as f32;
        }
    }
    Knn::new(n, k, indices, distances)
}

// ---- data and distance kernels -------------------------------------------------------------

/// Scales a row to unit length (zero rows stay zero).
fn normalise(row: &mut [f32]) {
    let ss: f64 = row.iter().map(|&t| t as f64 * t as f64).sum();
    if ss > 0.0 {
        let s = (1.0 / ss.sqrt()) as f32;
        row.iter_mut().for_each(|t| *t *= s);
    }
}

struct Data<'a> {
    x: &'a [f32],
    d: usize,
    kernel: Kernel,
}

impl Data<'_> {
    #[inline(always)]
    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// Kernel distances between row `i` and rows `js`.
    #[inline(always)]
    fn dist4(&self, i: u32, js: &[u32; 4]) -> [f32; 4] {
        let rows = [
            self.row(js[0] as usize),
            self.row(js[1] as usize),
            self.row(js[2] as usize),
            self.row(js[3] as usize),
        ];
        self.kernel.dist4(self.row(i as usize), rows)
    }

    /// Kernel distance between rows `i` and `j` (squared euclidean or `1 - x·y`).
    #[inline(always)]
    fn dist(&self, i: u32, j: u32) -> f32 {
        self.kernel.dist(self.row(i as usize), self.row(j as usize))
    }
}

/// `f32` distance kernel: squared euclidean, or `1 - dot` on unit rows (cosine).
#[derive(Clone, Copy, Debug)]
struct Kernel {
    cosine: bool,
    isa: Isa,
}

impl Kernel {
    fn new(metric: Metric) -> Self {
        Self {
            cosine: metric == Metric::Cosine,
            isa: detect_isa(),
        }
    }

    #[inline(always)]
    fn dist(&self, a: &[f32], b: &[f32]) -> f32 {
        if self.cosine {
            1.0 - self.dot(a, b)
        } else {
            match self.isa {
                // SAFETY (both): `detect_isa` checked the CPU features.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { sq_l2_avx512(a, b) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { sq_l2_avx2(a, b) },
                Isa::Generic => sq_l2(a, b),
            }
        }
    }

    /// `sum (a - b)^2` with `f64` differences and accumulation (exact refinement).
    fn sq_l2_f64(&self, a: &[f32], b: &[f32]) -> f64 {
        match self.isa {
            // SAFETY: `detect_isa` checked the CPU features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512_sq_l2_f64(a, b) },
            _ => a
                .iter()
                .zip(b)
                .map(|(&x, &y)| {
                    let t = x as f64 - y as f64;
                    t * t
                })
                .sum(),
        }
    }

    /// [`Kernel::dist`] of `a` against four rows at once (sharing the loads of `a`).
    #[inline(always)]
    fn dist4(&self, a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
        let r = match self.isa {
            // SAFETY (both): `detect_isa` checked the CPU features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe {
                if self.cosine {
                    avx512_four::<true>(a, b)
                } else {
                    avx512_four::<false>(a, b)
                }
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe {
                if self.cosine {
                    avx2_four::<true>(a, b)
                } else {
                    avx2_four::<false>(a, b)
                }
            },
            Isa::Generic => {
                return [
                    self.dist(a, b[0]),
                    self.dist(a, b[1]),
                    self.dist(a, b[2]),
                    self.dist(a, b[3]),
                ];
            }
        };
        if self.cosine { r.map(|v| 1.0 - v) } else { r }
    }

    #[inline(always)]
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.isa {
            // SAFETY (both): `detect_isa` checked the CPU features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { dot_avx512(a, b) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { dot_avx2(a, b) },
            Isa::Generic => dot(a, b),
        }
    }
}

/// Portable squared euclidean distance (8 independent accumulators).
fn sq_l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += (x - y) * (x - y);
    }
    s
}

/// Portable dot product (8 independent accumulators).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sq_l2_avx2(a: &[f32], b: &[f32]) -> f32 {
    avx2_reduce::<false>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    avx2_reduce::<true>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sq_l2_avx512(a: &[f32], b: &[f32]) -> f32 {
    avx512_reduce::<false>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    avx512_reduce::<true>(a, b)
}

/// `sum (a - b)^2` in `f64` (inputs widened exactly) with AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512_sq_l2_f64(a: &[f32], b: &[f32]) -> f64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = [_mm512_setzero_pd(); 2];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at offsets `< n` of both slices.
    unsafe {
        while i + 16 <= n {
            for (u, ac) in acc.iter_mut().enumerate() {
                let x = _mm512_cvtps_pd(_mm256_loadu_ps(a.as_ptr().add(i + 8 * u)));
                let y = _mm512_cvtps_pd(_mm256_loadu_ps(b.as_ptr().add(i + 8 * u)));
                let t = _mm512_sub_pd(x, y);
                *ac = _mm512_fmadd_pd(t, t, *ac);
            }
            i += 16;
        }
    }
    let mut s = _mm512_reduce_add_pd(_mm512_add_pd(acc[0], acc[1]));
    for t in i..n {
        let d = a[t] as f64 - b[t] as f64;
        s += d * d;
    }
    s
}

/// [`avx2_reduce`] of `a` against four rows (one accumulator each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2_four<const DOT: bool>(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = b.iter().fold(a.len(), |m, r| m.min(r.len()));
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at offsets `< n` of its slice.
    unsafe {
        while i + 8 <= n {
            let x = _mm256_loadu_ps(a.as_ptr().add(i));
            for (ac, r) in acc.iter_mut().zip(&b) {
                let y = _mm256_loadu_ps(r.as_ptr().add(i));
                *ac = if DOT {
                    _mm256_fmadd_ps(x, y, *ac)
                } else {
                    let t = _mm256_sub_ps(x, y);
                    _mm256_fmadd_ps(t, t, *ac)
                };
            }
            i += 8;
        }
    }
    let mut out = [0.0f32; 4];
    for (o, (ac, r)) in out.iter_mut().zip(acc.iter().zip(&b)) {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *ac) };
        let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        for t in i..n {
            s += if DOT {
                a[t] * r[t]
            } else {
                (a[t] - r[t]) * (a[t] - r[t])
            };
        }
        *o = s;
    }
    out
}

/// [`avx512_reduce`] of `a` against four rows (one accumulator each, masked tail).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512_four<const DOT: bool>(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = b.iter().fold(a.len(), |m, r| m.min(r.len()));
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: full loads read 16 floats at offsets `< n`; the masked tail load reads only
    // the valid lanes.
    unsafe {
        while i + 16 <= n {
            let x = _mm512_loadu_ps(a.as_ptr().add(i));
            for (ac, r) in acc.iter_mut().zip(&b) {
                let y = _mm512_loadu_ps(r.as_ptr().add(i));
                *ac = if DOT {
                    _mm512_fmadd_ps(x, y, *ac)
                } else {
                    let t = _mm512_sub_ps(x, y);
                    _mm512_fmadd_ps(t, t, *ac)
                };
            }
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
            let x = _mm512_maskz_loadu_ps(m, a.as_ptr().add(i));
            for (ac, r) in acc.iter_mut().zip(&b) {
                let y = _mm512_maskz_loadu_ps(m, r.as_ptr().add(i));
                *ac = if DOT {
                    _mm512_fmadd_ps(x, y, *ac)
                } else {
                    let t = _mm512_sub_ps(x, y);
                    _mm512_fmadd_ps(t, t, *ac)
                };
            }
        }
    }
    acc.map(|v| _mm512_reduce_add_ps(v))
}

/// `sum (a - b)^2` (`DOT = false`) or `sum a b` (`DOT = true`) with four AVX2 accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn avx2_reduce<const DOT: bool>(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at offsets `< n` of both slices.
    unsafe {
        while i + 32 <= n {
            for (u, ac) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * u));
                let y = _mm256_loadu_ps(pb.add(i + 8 * u));
                *ac = if DOT {
                    _mm256_fmadd_ps(x, y, *ac)
                } else {
                    let t = _mm256_sub_ps(x, y);
                    _mm256_fmadd_ps(t, t, *ac)
                };
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = _mm256_loadu_ps(pa.add(i));
            let y = _mm256_loadu_ps(pb.add(i));
            acc[0] = if DOT {
                _mm256_fmadd_ps(x, y, acc[0])
            } else {
                let t = _mm256_sub_ps(x, y);
                _mm256_fmadd_ps(t, t, acc[0])
            };
            i += 8;
        }
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let lo = _mm256_castps256_ps128(s);
    let hi = _mm256_extractf128_ps::<1>(s);
    let q = _mm_add_ps(lo, hi);
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
    let mut r = _mm_cvtss_f32(q);
    for t in i..n {
        r += if DOT {
            a[t] * b[t]
        } else {
            (a[t] - b[t]) * (a[t] - b[t])
        };
    }
    r
}

/// AVX-512 version of [`avx2_reduce`] (masked tail).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn avx512_reduce<const DOT: bool>(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: full loads read 16 floats at offsets `< n`; the masked tail load reads only
    // the `n - i < 16` valid lanes.
    unsafe {
        while i + 64 <= n {
            for (u, ac) in acc.iter_mut().enumerate() {
                let x = _mm512_loadu_ps(pa.add(i + 16 * u));
                let y = _mm512_loadu_ps(pb.add(i + 16 * u));
                *ac = if DOT {
                    _mm512_fmadd_ps(x, y, *ac)
                } else {
                    let t = _mm512_sub_ps(x, y);
                    _mm512_fmadd_ps(t, t, *ac)
                };
            }
            i += 64;
        }
        while i + 16 <= n {
            let x = _mm512_loadu_ps(pa.add(i));
            let y = _mm512_loadu_ps(pb.add(i));
            acc[0] = if DOT {
                _mm512_fmadd_ps(x, y, acc[0])
            } else {
                let t = _mm512_sub_ps(x, y);
                _mm512_fmadd_ps(t, t, acc[0])
            };
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
            let x = _mm512_maskz_loadu_ps(m, pa.add(i));
            let y = _mm512_maskz_loadu_ps(m, pb.add(i));
            acc[1] = if DOT {
                _mm512_fmadd_ps(x, y, acc[1])
            } else {
                let t = _mm512_sub_ps(x, y);
                _mm512_fmadd_ps(t, t, acc[1])
            };
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

// ---- hashing ------------------------------------------------------------------------------

#[inline(always)]
fn hash2(salt: u64, a: u64, b: u64) -> u64 {
    mix(salt ^ mix(a.wrapping_mul(0x1_0000_0001) ^ b.rotate_left(29)))
}

// ---- random-projection trees ----------------------------------------------------------------

/// Leaves (point index lists) of one random-projection tree.
fn build_tree(data: &Data<'_>, leaf_size: usize, seed: u64) -> Vec<Vec<u32>> {
    let n = data.x.len() / data.d;
    let mut idx: Vec<u32> = (0..n as u32).collect();
    let mut leaves = Vec::new();
    split_node(data, &mut idx, leaf_size, seed, 0, &mut leaves);
    leaves
}

fn split_node(
    data: &Data<'_>,
    idx: &mut [u32],
    leaf_size: usize,
    node: u64,
    depth: usize,
    leaves: &mut Vec<Vec<u32>>,
) {
    let m = idx.len();
    if m <= leaf_size {
        if !idx.is_empty() {
            leaves.push(idx.to_vec());
        }
        return;
    }
    if depth >= MAX_DEPTH {
        for piece in idx.chunks(leaf_size) {
            leaves.push(piece.to_vec());
        }
        return;
    }
    let h = mix(node);
    let a = below(h, m);
    let mut b = below(mix(h), m - 1);
    if b >= a {
        b += 1;
    }
    let (ra, rb) = (data.row(idx[a] as usize), data.row(idx[b] as usize));
    let normal: Vec<f32> = ra.iter().zip(rb).map(|(&p, &q)| p - q).collect();
    let offset = if data.kernel.cosine {
        0.0
    } else {
        // hyperplane through the midpoint
        let mid: Vec<f32> = ra.iter().zip(rb).map(|(&p, &q)| 0.5 * (p + q)).collect();
        -data.kernel.dot(&normal, &mid)
    };
    let side: Vec<bool> = if m >= PAR_SPLIT {
        idx.par_iter()
            .map(|&i| side_of(data, &normal, offset, i, h))
            .collect()
    } else {
        idx.iter()
            .map(|&i| side_of(data, &normal, offset, i, h))
            .collect()
    };
    // stable partition: left side first
    let mut left: Vec<u32> = Vec::with_capacity(m);
    let mut right: Vec<u32> = Vec::with_capacity(m);
    for (&i, &s) in idx.iter().zip(&side) {
        if s { left.push(i) } else { right.push(i) }
    }
    let mut n_left = left.len();
    idx[..n_left].copy_from_slice(&left);
    idx[n_left..].copy_from_slice(&right);
    if n_left == 0 || n_left == m {
        // degenerate hyperplane (duplicates): split in the middle
        n_left = m / 2;
    }
    let (l, r) = idx.split_at_mut(n_left);
    let (hl, hr) = (mix(node ^ 0x6c65_6674), mix(node ^ 0x7269_6768));
    if m >= PAR_SPLIT {
        let mut right_leaves = Vec::new();
        rayon::join(
            || split_node(data, l, leaf_size, hl, depth + 1, leaves),
            || split_node(data, r, leaf_size, hr, depth + 1, &mut right_leaves),
        );
        leaves.extend(right_leaves);
    } else {
        split_node(data, l, leaf_size, hl, depth + 1, leaves);
        split_node(data, r, leaf_size, hr, depth + 1, leaves);
    }
}

#[inline(always)]
fn side_of(data: &Data<'_>, normal: &[f32], offset: f32, i: u32, h: u64) -> bool {
    let margin = data.kernel.dot(normal, data.row(i as usize)) + offset;
    if margin > 0.0 {
        true
    } else if margin < 0.0 {
        false
    } else {
        hash2(h, i as u64, 1) & 1 == 1
    }
}

// ---- neighbour lists ----------------------------------------------------------------------

const EMPTY: u32 = u32::MAX;

/// One neighbour-list entry: kernel distance, index, and whether it is new (not yet joined).
#[derive(Clone, Copy, Debug)]
struct Entry {
    d: f32,
    i: u32,
    new: bool,
}

/// A proposed edge `(p, q)` at kernel distance `d`, for the lists of both ends.
#[derive(Clone, Copy, Debug)]
struct Update {
    p: u32,
    q: u32,
    d: f32,
}

/// Sampled candidates of every point: `new` and `old` lists, `max_cand` slots each.
struct Candidates {
    max_cand: usize,
    new: Vec<u32>,
    old: Vec<u32>,
}

impl Candidates {
    fn new_of(&self, v: usize) -> &[u32] {
        let s = &self.new[v * self.max_cand..(v + 1) * self.max_cand];
        &s[..s.iter().position(|&c| c == EMPTY).unwrap_or(s.len())]
    }

    fn old_of(&self, v: usize) -> &[u32] {
        let s = &self.old[v * self.max_cand..(v + 1) * self.max_cand];
        &s[..s.iter().position(|&c| c == EMPTY).unwrap_or(s.len())]
    }
}

/// Bounded neighbour lists, each sorted by increasing distance, `kk` slots per point.
struct Graph {
    n: usize,
    kk: usize,
    entries: Vec<Entry>,
}

impl Graph {
    fn new(n: usize, kk: usize) -> Self {
        Self {
            n,
            kk,
            entries: vec![
                Entry {
                    d: f32::INFINITY,
                    i: EMPTY,
                    new: false
                };
                n * kk
            ],
        }
    }

    #[inline(always)]
    fn row(&self, i: usize) -> &[Entry] {
        &self.entries[i * self.kk..(i + 1) * self.kk]
    }

    /// Largest distance in list `i` (+inf while not full).
    #[inline(always)]
    fn worst(&self, i: u32) -> f32 {
        self.entries[(i as usize + 1) * self.kk - 1].d
    }

    #[inline(always)]
    fn contains(&self, i: u32, j: u32) -> bool {
        self.row(i as usize).iter().any(|e| e.i == j)
    }

    /// Applies proposals in order (per target), in parallel over targets. Returns the number
    /// of list changes.
    fn apply(&mut self, updates: &[Vec<Update>]) -> usize {
        let n = self.n;
        let mut start = vec![0usize; n + 1];
        for u in updates.iter().flatten() {
            start[u.p as usize + 1] += 1;
            start[u.q as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let total = start[n];
        if total == 0 {
            return 0;
        }
        let mut fill = start.clone();
        let mut items: Vec<(u32, f32)> = vec![(0, 0.0); total];
        for u in updates.iter().flatten() {
            items[fill[u.p as usize]] = (u.q, u.d);
            fill[u.p as usize] += 1;
            items[fill[u.q as usize]] = (u.p, u.d);
            fill[u.q as usize] += 1;
        }
        let kk = self.kk;
        self.entries
            .par_chunks_mut(kk)
            .enumerate()
            .map(|(i, row)| {
                let mut c = 0;
                for &(j, d) in &items[start[i]..start[i + 1]] {
                    if push(row, j, d) {
                        c += 1;
                    }
                }
                c
            })
            .sum()
    }

    /// Tops up lists that are not full with random distinct points.
    fn random_fill(&mut self, data: &Data<'_>, seed: u64) {
        let n = self.n;
        let kk = self.kk;
        self.entries
            .par_chunks_mut(kk)
            .enumerate()
            .for_each(|(i, row)| {
                let mut t = 0u64;
                while row[kk - 1].i == EMPTY && t < 64 * kk as u64 + 64 {
                    let j = below(hash2(seed ^ 0x6669_6c6c, i as u64, t), n) as u32;
                    t += 1;
                    if j as usize == i {
                        continue;
                    }
                    let d = data.dist(i as u32, j);
                    push_always(row, j, d);
                }
                if row[kk - 1].i == EMPTY {
                    // unlucky draws (tiny n): scan all points in order
                    for j in 0..n as u32 {
                        if row[kk - 1].i != EMPTY {
                            break;
                        }
                        if j as usize != i {
                            let d = data.dist(i as u32, j);
                            push_always(row, j, d);
                        }
                    }
                }
            });
    }

    /// Samples every point's new and old candidates (forward and reverse neighbours) by a
    /// random priority, and marks the sampled new forward neighbours as old.
    fn candidates(&mut self, max_cand: usize, salt: u64) -> Candidates {
        let (n, kk) = (self.n, self.kk);
        // reverse lists: (source, new flag) grouped by target
        let mut start = vec![0usize; n + 1];
        for e in &self.entries {
            if e.i != EMPTY {
                start[e.i as usize + 1] += 1;
            }
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut rev: Vec<(u32, bool)> = vec![(0, false); start[n]];
        for (v, row) in self.entries.chunks_exact(kk).enumerate() {
            for e in row {
                if e.i != EMPTY {
                    rev[fill[e.i as usize]] = (v as u32, e.new);
                    fill[e.i as usize] += 1;
                }
            }
        }
        let prio = |a: u32, b: u32| {
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            hash2(salt, lo as u64, hi as u64)
        };
        let mut new = vec![EMPTY; n * max_cand];
        let mut old = vec![EMPTY; n * max_cand];
        new.par_chunks_mut(max_cand)
            .zip(old.par_chunks_mut(max_cand))
            .enumerate()
            .for_each(|(v, (nw, od))| {
                let mut all: Vec<(u64, u32, bool)> = Vec::with_capacity(2 * kk);
                for e in self.row(v) {
                    if e.i != EMPTY {
                        all.push((prio(v as u32, e.i), e.i, e.new));
                    }
                }
                for &(u, f) in &rev[start[v]..start[v + 1]] {
                    all.push((prio(v as u32, u), u, f));
                }
                all.sort_unstable_by_key(|t| (t.0, t.1, !t.2));
                // duplicates are adjacent (same priority and index); new sorts first
                let (mut a, mut b) = (0, 0);
                let mut last = EMPTY;
                for &(_, u, f) in &all {
                    if u == last {
                        continue;
                    }
                    last = u;
                    if f {
                        if a < max_cand {
                            nw[a] = u;
                            a += 1;
                        }
                    } else if b < max_cand {
                        od[b] = u;
                        b += 1;
                    }
                }
            });
        let cands = Candidates { max_cand, new, old };
        // sampled forward new neighbours become old
        self.entries
            .par_chunks_mut(kk)
            .enumerate()
            .for_each(|(v, row)| {
                let nw = cands.new_of(v);
                for e in row.iter_mut() {
                    if e.new && nw.contains(&e.i) {
                        e.new = false;
                    }
                }
            });
        cands
    }
}

/// Inserts `(j, d)` into the sorted list `row` unless `j` is already there or `d` is not
/// smaller than the current worst. Returns whether the list changed.
#[inline(always)]
fn push(row: &mut [Entry], j: u32, d: f32) -> bool {
    let kk = row.len();
    if d.is_nan() || d >= row[kk - 1].d || row.iter().any(|e| e.i == j) {
        return false;
    }
    let pos = row.partition_point(|e| e.d <= d);
    row.copy_within(pos..kk - 1, pos + 1);
    row[pos] = Entry { d, i: j, new: true };
    true
}

/// Like [`push`] but also fills empty slots when `d` is +inf or NaN-free large values.
#[inline(always)]
fn push_always(row: &mut [Entry], j: u32, d: f32) {
    if push(row, j, d) {
        return;
    }
    let kk = row.len();
    if row[kk - 1].i == EMPTY && !row.iter().any(|e| e.i == j) {
        let pos = row.partition_point(|e| e.i != EMPTY && e.d <= d);
        row.copy_within(pos..kk - 1, pos + 1);
        row[pos] = Entry { d, i: j, new: true };
    }
}

/// All pairs of a leaf as proposals (filtered by the current lists).
fn leaf_pairs(data: &Data<'_>, graph: &Graph, leaf: &[u32], out: &mut Vec<Update>) {
    for (a, &p) in leaf.iter().enumerate() {
        propose_from(data, graph, p, leaf[a + 1..].iter().copied(), out);
    }
}

/// Proposes the pairs `(p, q)`, `q` in `qs`, whose ends do not know each other yet: distances
/// are computed four at a time and kept when below either end's current worst.
#[inline(always)]
fn propose_from(
    data: &Data<'_>,
    graph: &Graph,
    p: u32,
    qs: impl Iterator<Item = u32>,
    out: &mut Vec<Update>,
) {
    let mut buf = [0u32; 4];
    let mut need = [(false, false); 4];
    let mut m = 0;
    let worst_p = graph.worst(p);
    let mut flush = |buf: &[u32; 4], need: &[(bool, bool); 4], m: usize| {
        let ds = if m == 4 {
            data.dist4(p, buf)
        } else {
            let mut ds = [0.0f32; 4];
            for t in 0..m {
                ds[t] = data.dist(p, buf[t]);
            }
            ds
        };
        for t in 0..m {
            let (q, d) = (buf[t], ds[t]);
            if (need[t].0 && d < worst_p) || (need[t].1 && d < graph.worst(q)) {
                out.push(Update { p, q, d });
            }
        }
    };
    for q in qs {
        let need_p = !graph.contains(p, q);
        let need_q = !graph.contains(q, p);
        if !need_p && !need_q {
            continue;
        }
        buf[m] = q;
        need[m] = (need_p, need_q);
        m += 1;
        if m == 4 {
            flush(&buf, &need, 4);
            m = 0;
        }
    }
    if m > 0 {
        flush(&buf, &need, m);
    }
}

/// Local join around `v`: new-new and new-old candidate pairs.
fn local_join(data: &Data<'_>, graph: &Graph, cands: &Candidates, v: usize, out: &mut Vec<Update>) {
    let nw = cands.new_of(v);
    let od = cands.old_of(v);
    for (a, &p) in nw.iter().enumerate() {
        let qs = nw[a + 1..]
            .iter()
            .copied()
            .chain(od.iter().copied().filter(move |&q| q != p));
        propose_from(data, graph, p, qs, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 7 clusters with random centres (uniform in `[-4, 4]^d`), uniform noise of width 1.
    fn blobs(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let unit = |h: u64| (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        let mut out = Vec::with_capacity(n * d);
        for i in 0..n {
            let c = (i % 7) as u64;
            for t in 0..d {
                let centre = 8.0 * unit(hash2(seed ^ 0xc, c, t as u64));
                out.push(centre + unit(hash2(seed, i as u64, t as u64)));
            }
        }
        out
    }

    fn recall(a: &Knn, b: &Knn) -> f64 {
        let mut hit = 0;
        for i in 0..a.n() {
            let e = b.indices_of(i);
            hit += a.indices_of(i).iter().filter(|j| e.contains(j)).count();
        }
        hit as f64 / (a.n() * a.k()) as f64
    }

    #[test]
    fn kernels_match_scalar() {
        let a: Vec<f32> = (0..77).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..77).map(|i| (i as f32 * 0.11).cos()).collect();
        let s: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| ((x - y) as f64).powi(2))
            .sum();
        let p: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let k = Kernel::new(Metric::Euclidean);
        assert!((k.dist(&a, &b) as f64 - s).abs() < 1e-4);
        assert!((k.dot(&a, &b) as f64 - p).abs() < 1e-4);
        assert!((sq_l2(&a, &b) as f64 - s).abs() < 1e-4);
        assert!((dot(&a, &b) as f64 - p).abs() < 1e-4);
    }

    #[test]
    fn recall_and_layout() {
        let (n, d) = (3000, 24);
        let x = blobs(n, d, 3);
        let m = DenseMatrix::new(&x, n, d).unwrap();
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let exact = knn(&m, 10, metric).unwrap();
            let approx = approx_knn(&m, 10, metric, &NnDescentOptions::default()).unwrap();
            let r = recall(&approx, &exact);
            assert!(r > 0.97, "{metric:?} recall {r}");
            for i in 0..n {
                assert_eq!(approx.indices_of(i)[0] as usize, i);
            }
        }
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let (n, d) = (2500, 16);
        let x = blobs(n, d, 9);
        let m = DenseMatrix::new(&x, n, d).unwrap();
        let opts = NnDescentOptions {
            seed: 5,
            ..Default::default()
        };
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| approx_knn(&m, 12, Metric::Euclidean, &opts).unwrap())
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn bad_input_and_tiny() {
        let x = blobs(20, 3, 1);
        let m = DenseMatrix::new(&x, 20, 3).unwrap();
        let o = NnDescentOptions::default();
        assert!(approx_knn(&m, 20, Metric::Euclidean, &o).is_err());
        assert!(approx_knn(&m, 0, Metric::Euclidean, &o).is_err());
        let r = approx_knn(&m, 19, Metric::Euclidean, &o).unwrap();
        let e = knn(&m, 19, Metric::Euclidean).unwrap();
        assert_eq!(recall(&r, &e), 1.0);
        // duplicates and zero rows
        let z = vec![0.0f32; 40 * 4];
        let m = DenseMatrix::new(&z, 40, 4).unwrap();
        let r = approx_knn(&m, 5, Metric::Cosine, &o).unwrap();
        assert!(r.distances().iter().skip(1).step_by(5).all(|&d| d == 1.0));
    }
}
