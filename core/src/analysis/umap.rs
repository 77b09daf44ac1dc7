//! UMAP layout of a fuzzy neighbour graph, and scikit-learn's trustworthiness.
//!
//! [`umap`] reproduces umap-learn 0.5's `simplicial_set_embedding` +
//! `optimize_layout_euclidean` as scanpy 1.11's `sc.tl.umap` calls them (on the symmetric
//! connectivities of [`umap_connectivities`](super::knn::umap_connectivities)):
//!
//! - `n_epochs` defaults to 500 up to 10,000 points, else 200; edges with a weight below
//!   `max_weight / n_epochs` are dropped (below `max / default_epochs` when `n_epochs <= 10`);
//! - every edge `i -> j` (both directions of the symmetric graph) is sampled every
//!   `epochs_per_sample = max_weight / weight` epochs; each sample pulls `i` and `j` together
//!   with the gradient `-2ab d^(2(b-1)) / (1 + a d^(2b)) (y_i - y_j)` and pushes `i` away from
//!   `negative_sample_rate` random points per sample with
//!   `2 γ b / ((0.001 + d²)(1 + a d^(2b))) (y_i - y_k)`; every gradient coordinate is clipped
//!   to `[-4, 4]` (the attraction and the negative samples of one positive sample are all
//!   measured from the point's position before it and their steps summed, where umap-learn
//!   moves the point after each one);
//!   the learning rate decays linearly, `α (1 - (e - 1) / n_epochs)` in epoch
//!   `e >= 1` (umap's update after each epoch);
//! - initialisation ([`UmapInit`]): **spectral** (default) = the eigenvectors of the normalised
//!   Laplacian `I - D^-1/2 W D^-1/2` of the pruned graph for its `n_components` smallest
//!   eigenvalues after the trivial one (own thick-restart Lanczos solver with full
//!   re-orthogonalisation on `D^-1/2 W D^-1/2` with the trivial vector deflated; dense Jacobi
//!   below 300 points). A graph with several connected components is laid out as umap-learn's
//!   `multi_component_layout` does: component centroids (from `init_data`, euclidean) are
//!   placed by a spectral embedding of `exp(-dist²)` when there are more than
//!   `2 n_components` components, otherwise on `±` unit vectors; each component gets its own
//!   spectral layout scaled to half the distance to the nearest other centroid (tiny
//!   components: uniform noise; above 1,000 components the centroids are random, as umap-learn
//!   does without data). If the eigensolver does not converge, the layout falls back,
//!   like umap-learn, to uniform random coordinates in `[-10, 10]` and
//!   [`UmapResult::init_used`] says [`UmapInit::Random`]. **PCA** = the `init_data` projected on
//!   its top principal components. Spectral and PCA coordinates are scaled to a maximum
//!   absolute value of 10 and get `N(0, 1e-4²)` noise; **random** = uniform in `[-10, 10]`.
//!   Finally every column is min-max scaled to `[0, 10]`.
//!
//! [`find_ab_params`] fits umap-learn's `a`, `b` by Levenberg-Marquardt least squares.
//!
//! **Randomness and parallelism**: random numbers come from seeded SplitMix64 streams (one per
//! point for the negative samples, as umap-learn 0.5 keeps one state per point), so a seed
//! gives reproducible results, but not umap-learn's (numpy's Mersenne Twister) numbers. The
//! optimisation is parallel and deterministic: points are cut into fixed blocks (independent
//! of the thread count); within an epoch each block updates its own points in place, in
//! umap's edge order (two-dimensional layouts: the edges of the block's first and second
//! half interleaved), reading other blocks' points as they were at the start of the epoch,
//! and the moves of other blocks' points (umap's `move_other`) are added after the epoch in
//! block order. The result is identical for any number of threads; it differs from a strictly
//! sequential SGD only by this one-epoch staleness across blocks.
//!
//! [`trustworthiness`] is `sklearn.manifold.trustworthiness` (scikit-learn 1.9).

use rayon::prelude::*;

use super::knn::{Isa, Metric, detect_isa, knn, scan_pairs};
use super::{AnalysisError, CsrMatrix, DenseMatrix, Result};
use crate::tokenize::{hash_below as below, mix, splitmix as next_u64};

/// How the layout is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UmapInit {
    /// Normalised-Laplacian eigenvectors (umap-learn's `init="spectral"`, scanpy's default).
    #[default]
    Spectral,
    /// Principal components of `init_data` (umap-learn's `init="pca"`).
    Pca,
    /// Uniform random coordinates in `[-10, 10]`.
    Random,
}

/// Options of [`umap`] (defaults: scanpy's `sc.tl.umap`).
#[derive(Debug, Clone, PartialEq)]
pub struct UmapOptions {
    /// Output dimensions (2).
    pub n_components: usize,
    /// Minimum distance of points in the layout (scanpy: 0.5).
    pub min_dist: f64,
    /// Scale of the layout (1.0).
    pub spread: f64,
    /// Epochs; `None`: 500 up to 10,000 points, else 200 (umap-learn/scanpy).
    pub n_epochs: Option<usize>,
    /// Initial learning rate `α` (1.0).
    pub learning_rate: f64,
    /// Weight `γ` of the repulsive samples (1.0).
    pub repulsion_strength: f64,
    /// Negative samples per positive sample (5).
    pub negative_sample_rate: usize,
    /// Initialisation (spectral).
    pub init: UmapInit,
    /// Seed of the random numbers (scanpy's `random_state`, 0).
    pub seed: u64,
    /// Curve parameter `a`; `None`: fitted from `spread`, `min_dist` ([`find_ab_params`]).
    pub a: Option<f64>,
    /// Curve parameter `b`; `None`: fitted from `spread`, `min_dist` ([`find_ab_params`]).
    pub b: Option<f64>,
}

impl Default for UmapOptions {
    fn default() -> Self {
        Self {
            n_components: 2,
            min_dist: 0.5,
            spread: 1.0,
            n_epochs: None,
            learning_rate: 1.0,
            repulsion_strength: 1.0,
            negative_sample_rate: 5,
            init: UmapInit::Spectral,
            seed: 0,
            a: None,
            b: None,
        }
    }
}

/// Result of [`umap`].
#[derive(Debug, Clone, PartialEq)]
pub struct UmapResult {
    /// Layout, row-major `n x n_components`.
    pub embedding: Vec<f32>,
    /// Curve parameter `a` used.
    pub a: f64,
    /// Curve parameter `b` used.
    pub b: f64,
    /// The initialisation actually used ([`UmapInit::Random`] when the spectral solver failed).
    pub init_used: UmapInit,
    /// Epochs run.
    pub n_epochs: usize,
}

/// Points per SGD block (a block's points are updated in place during an epoch).
const MIN_BLOCK: usize = 256;
/// At most this many SGD blocks.
const MAX_BLOCKS: usize = 64;
/// Above this many connected components their centroids are placed at random instead of by
/// a dense spectral embedding (`O(components³)`).
const MAX_META_COMPONENTS: usize = 1000;
/// Below this many points the eigenproblems are solved densely (Jacobi, `O(n³)` per sweep).
const DENSE_EIG: usize = 64;
/// Vectors shorter than this are handled by one thread in the eigensolver (a parallel loop
/// costs more than it saves there; small components are solved in parallel instead).
const PAR_MIN: usize = 16_384;

// ---- a, b ---------------------------------------------------------------------------------

/// umap-learn's `find_ab_params(spread, min_dist)`: least-squares fit of
/// `1 / (1 + a x^(2b))` to `1` for `x < min_dist` and `exp(-(x - min_dist) / spread)` above,
/// on 300 points evenly spaced over `[0, 3 spread]`, starting from `a = b = 1` like scipy's
/// `curve_fit` (Levenberg-Marquardt with analytic derivatives here). Returns `(a, b)`.
pub fn find_ab_params(spread: f64, min_dist: f64) -> (f64, f64) {
    let xs: Vec<f64> = (0..300).map(|i| 3.0 * spread * i as f64 / 299.0).collect();
    let ys: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if x < min_dist {
                1.0
            } else {
                (-(x - min_dist) / spread).exp()
            }
        })
        .collect();
    let sse = |a: f64, b: f64| -> f64 {
        xs.iter()
            .zip(&ys)
            .map(|(&x, &y)| {
                let r = 1.0 / (1.0 + a * x.powf(2.0 * b)) - y;
                r * r
            })
            .sum()
    };
    let (mut a, mut b) = (1.0f64, 1.0f64);
    let mut cost = sse(a, b);
    let mut lambda = 1e-3;
    for _ in 0..2000 {
        // normal equations J^T J p = -J^T r
        let (mut h00, mut h01, mut h11, mut g0, mut g1) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&x, &y) in xs.iter().zip(&ys) {
            if x <= 0.0 {
                continue; // f = 1, derivatives 0
            }
            let u = x.powf(2.0 * b);
            let g = 1.0 + a * u;
            let f = 1.0 / g;
            let r = f - y;
            let da = -u / (g * g);
            let db = -a * u * 2.0 * x.ln() / (g * g);
            h00 += da * da;
            h01 += da * db;
            h11 += db * db;
            g0 += da * r;
            g1 += db * r;
        }
        let mut improved = false;
        for _ in 0..50 {
            let (m00, m11) = (h00 * (1.0 + lambda), h11 * (1.0 + lambda));
            let det = m00 * m11 - h01 * h01;
            if det.abs() < 1e-300 {
                lambda *= 10.0;
                continue;
            }
            let pa = -(m11 * g0 - h01 * g1) / det;
            let pb = -(m00 * g1 - h01 * g0) / det;
            let (na, nb) = (a + pa, b + pb);
            if na > 0.0 && nb > 0.0 {
                let c = sse(na, nb);
                if c < cost {
                    let rel = (pa.abs() / a.abs()).max(pb.abs() / b.abs());
                    a = na;
                    b = nb;
                    let dc = cost - c;
                    cost = c;
                    lambda = (lambda / 10.0).max(1e-12);
                    improved = true;
                    if rel < 1e-12 || dc < 1e-16 * cost.max(1e-300) {
                        return (a, b);
                    }
                    break;
                }
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }
    (a, b)
}

// ---- UMAP ---------------------------------------------------------------------------------

/// UMAP layout of the symmetric fuzzy graph `graph` (e.g.
/// [`umap_connectivities`](super::knn::umap_connectivities)): umap-learn's
/// `simplicial_set_embedding` with euclidean output, see the module documentation.
/// `init_data` (`n` rows) is needed for [`UmapInit::Pca`] and places the components of a
/// disconnected graph with the spectral init (random centroids without it).
pub fn umap(
    graph: &CsrMatrix<f32>,
    init_data: Option<&DenseMatrix<'_>>,
    opts: &UmapOptions,
) -> Result<UmapResult> {
    // Run on a pool thread: the eigensolvers and the SGD start thousands of small parallel
    // loops, and each one started from outside the pool waits for a sleeping worker to wake.
    rayon::join(|| umap_in_pool(graph, init_data, opts), || ()).0
}

fn umap_in_pool(
    graph: &CsrMatrix<f32>,
    init_data: Option<&DenseMatrix<'_>>,
    opts: &UmapOptions,
) -> Result<UmapResult> {
    let n = graph.n_rows;
    validate(graph, init_data, opts)?;
    let dim = opts.n_components;
    let (a, b) = match (opts.a, opts.b) {
        (Some(a), Some(b)) => (a, b),
        (fa, fb) => {
            let (fa2, fb2) = find_ab_params(opts.spread, opts.min_dist);
            (fa.unwrap_or(fa2), fb.unwrap_or(fb2))
        }
    };
    if !(a.is_finite() && a > 0.0 && b.is_finite() && b > 0.0) {
        return Err(AnalysisError::InvalidParameter(format!(
            "a and b must be finite and > 0, got a = {a}, b = {b}"
        )));
    }
    let default_epochs = if n <= 10_000 { 500 } else { 200 };
    let n_epochs = opts.n_epochs.unwrap_or(default_epochs);

    // drop weak edges (umap: weight < max / n_epochs, in f32)
    let wmax = graph.data.iter().copied().fold(0.0f32, f32::max);
    let denom = if n_epochs > 10 {
        n_epochs
    } else {
        default_epochs
    };
    let cut = wmax / denom as f32;
    let pruned = prune(graph, cut)?;

    let mut rng = Rng::new(mix(opts.seed ^ 0x756d_6170));
    let (init, init_used) = match opts.init {
        UmapInit::Random => (random_init(n, dim, &mut rng), UmapInit::Random),
        UmapInit::Pca => {
            let x = init_data.ok_or_else(|| {
                AnalysisError::InvalidParameter("PCA init needs init_data".into())
            })?;
            let pcs = pca_scores(x, dim, &mut rng)?;
            (noisy_scale(pcs, &mut rng), UmapInit::Pca)
        }
        UmapInit::Spectral => match spectral_layout(&pruned, init_data, dim, &mut rng) {
            Some(e) => (noisy_scale(e, &mut rng), UmapInit::Spectral),
            None => (random_init(n, dim, &mut rng), UmapInit::Random),
        },
    };
    let mut emb = minmax_scale(&init, n, dim);

    if n_epochs > 0 && pruned.nnz() > 0 {
        optimize(
            &mut emb,
            &pruned,
            dim,
            n_epochs,
            a,
            b,
            opts,
            mix(opts.seed ^ 0x0073_6764),
            detect_isa(),
        );
    }
    Ok(UmapResult {
        embedding: emb,
        a,
        b,
        init_used,
        n_epochs,
    })
}

fn validate(
    graph: &CsrMatrix<f32>,
    init_data: Option<&DenseMatrix<'_>>,
    opts: &UmapOptions,
) -> Result<()> {
    let n = graph.n_rows;
    if n == 0 {
        return Err(AnalysisError::Empty("graph has no rows"));
    }
    if graph.n_cols != n {
        return Err(AnalysisError::InvalidSparse(format!(
            "graph must be square, got {} x {}",
            n, graph.n_cols
        )));
    }
    graph.validate()?;
    if graph.nnz() == 0 || graph.data.iter().all(|&w| w == 0.0) {
        return Err(AnalysisError::Empty("graph has no edges"));
    }
    if let Some(w) = graph.data.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(AnalysisError::InvalidSparse(format!(
            "edge weights must be finite and >= 0, found {w}"
        )));
    }
    for i in 0..n {
        let (idx, val) = graph.row(i);
        for (&j, &w) in idx.iter().zip(val) {
            let back = graph.get(j as usize, i).unwrap_or(0.0);
            if (back - w).abs() > 1e-6 * w.abs().max(back.abs()) {
                return Err(AnalysisError::InvalidParameter(format!(
                    "graph is not symmetric: ({i}, {j}) = {w} but ({j}, {i}) = {back}"
                )));
            }
        }
    }
    if opts.n_components == 0 {
        return Err(AnalysisError::InvalidParameter(
            "n_components must be >= 1".into(),
        ));
    }
    let pos = |v: f64| v.is_finite() && v > 0.0;
    if !pos(opts.spread) {
        return Err(AnalysisError::InvalidParameter(format!(
            "spread must be finite and > 0, got {}",
            opts.spread
        )));
    }
    if !(opts.min_dist.is_finite() && opts.min_dist >= 0.0 && opts.min_dist <= opts.spread) {
        return Err(AnalysisError::InvalidParameter(format!(
            "min_dist must be in [0, spread], got {}",
            opts.min_dist
        )));
    }
    if !pos(opts.learning_rate) {
        return Err(AnalysisError::InvalidParameter(format!(
            "learning_rate must be finite and > 0, got {}",
            opts.learning_rate
        )));
    }
    if !(opts.repulsion_strength.is_finite() && opts.repulsion_strength >= 0.0) {
        return Err(AnalysisError::InvalidParameter(format!(
            "repulsion_strength must be finite and >= 0, got {}",
            opts.repulsion_strength
        )));
    }
    if let Some(x) = init_data
        && x.n_rows() != n
    {
        return Err(AnalysisError::LengthMismatch {
            what: "init_data rows",
            expected: n,
            got: x.n_rows(),
        });
    }
    Ok(())
}

/// The graph without entries below `cut` (and without explicit zeros).
fn prune(graph: &CsrMatrix<f32>, cut: f32) -> Result<CsrMatrix<f32>> {
    let n = graph.n_rows;
    let mut indptr = Vec::with_capacity(n + 1);
    indptr.push(0);
    let mut indices = Vec::with_capacity(graph.nnz());
    let mut data = Vec::with_capacity(graph.nnz());
    for i in 0..n {
        let (idx, val) = graph.row(i);
        for (&j, &w) in idx.iter().zip(val) {
            if w >= cut && w > 0.0 {
                indices.push(j);
                data.push(w);
            }
        }
        indptr.push(indices.len());
    }
    CsrMatrix::new(n, n, indptr, indices, data)
}

fn random_init(n: usize, dim: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n * dim)
        .map(|_| (rng.uniform() * 20.0 - 10.0) as f32)
        .collect()
}

/// umap-learn's `noisy_scale_coords`: scale to max |coord| = 10 (in f32), add N(0, 1e-4²).
fn noisy_scale(coords: Vec<f64>, rng: &mut Rng) -> Vec<f32> {
    let m = coords.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let expansion = if m > 0.0 { 10.0 / m } else { 1.0 };
    coords
        .iter()
        .map(|&v| (v * expansion) as f32 + (rng.normal() * 1e-4) as f32)
        .collect()
}

/// Every column min-max scaled to `[0, 10]` (a constant column becomes 0).
fn minmax_scale(e: &[f32], n: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * dim];
    for c in 0..dim {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for i in 0..n {
            lo = lo.min(e[i * dim + c]);
            hi = hi.max(e[i * dim + c]);
        }
        let range = hi - lo;
        for i in 0..n {
            out[i * dim + c] = if range > 0.0 {
                10.0 * (e[i * dim + c] - lo) / range
            } else {
                0.0
            };
        }
    }
    out
}

// ---- SGD ----------------------------------------------------------------------------------

/// Per-block SGD state: the block's points and out-edges (CSR rows `v0..v1`).
struct Block {
    v0: usize,
    v1: usize,
    next_sample: Vec<f64>,
    next_negative: Vec<f64>,
    rng: Vec<u64>,
}

#[allow(clippy::too_many_arguments)]
fn optimize(
    emb: &mut [f32],
    graph: &CsrMatrix<f32>,
    dim: usize,
    n_epochs: usize,
    a: f64,
    b: f64,
    opts: &UmapOptions,
    seed: u64,
    isa: Isa,
) {
    let n = graph.n_rows;
    let wmax = graph.data.iter().copied().fold(0.0f32, f32::max) as f64;
    // umap's make_epochs_per_sample
    let eps: Vec<f64> = graph
        .data
        .iter()
        .map(|&w| {
            let s = n_epochs as f64 * (w as f64 / wmax);
            if s > 0.0 { n_epochs as f64 / s } else { -1.0 }
        })
        .collect();
    let nsr = opts.negative_sample_rate;
    let eps_neg: Vec<f64> = eps.iter().map(|&e| e / nsr.max(1) as f64).collect();
    let block_len = n.div_ceil(MAX_BLOCKS).max(MIN_BLOCK);
    let mut blocks: Vec<Block> = (0..n)
        .step_by(block_len)
        .map(|v0| {
            let v1 = (v0 + block_len).min(n);
            let (e0, e1) = (graph.indptr[v0], graph.indptr[v1]);
            Block {
                v0,
                v1,
                next_sample: eps[e0..e1].to_vec(),
                next_negative: eps_neg[e0..e1].to_vec(),
                rng: (v0..v1).map(|v| mix(seed ^ mix(v as u64 + 1))).collect(),
            }
        })
        .collect();
    let gamma = opts.repulsion_strength;
    let ctx = Sgd {
        graph,
        dim,
        n,
        a,
        b,
        gamma,
        nsr,
        eps: &eps,
        eps_neg: &eps_neg,
    };
    let mut alpha = opts.learning_rate;
    let mut snapshot = emb.to_vec();
    for epoch in 0..n_epochs {
        snapshot.copy_from_slice(emb);
        let snap = &snapshot;
        let deferred: Vec<(Vec<u32>, Vec<f32>)> = emb
            .par_chunks_mut(block_len * dim)
            .zip(blocks.par_iter_mut())
            .map(|(local, blk)| {
                if dim == 2 {
                    ctx.epoch2(blk, local, snap, epoch as f64, alpha, isa)
                } else {
                    ctx.epoch(blk, local, snap, epoch as f64, alpha)
                }
            })
            .collect();
        for (idx, delta) in &deferred {
            for (t, &k) in idx.iter().enumerate() {
                let k = k as usize;
                for c in 0..dim {
                    emb[k * dim + c] += delta[t * dim + c];
                }
            }
        }
        alpha = opts.learning_rate * (1.0 - epoch as f64 / n_epochs as f64);
    }
}

struct Sgd<'a> {
    graph: &'a CsrMatrix<f32>,
    dim: usize,
    n: usize,
    a: f64,
    b: f64,
    gamma: f64,
    nsr: usize,
    eps: &'a [f64],
    eps_neg: &'a [f64],
}

#[inline(always)]
fn clip(v: f64) -> f64 {
    v.clamp(-4.0, 4.0)
}

impl Sgd<'_> {
    /// One epoch of one block; returns the deferred moves of other blocks' points.
    fn epoch(
        &self,
        blk: &mut Block,
        local: &mut [f32],
        snap: &[f32],
        epoch: f64,
        alpha: f64,
    ) -> (Vec<u32>, Vec<f32>) {
        let dim = self.dim;
        let (a, b) = (self.a, self.b);
        let mut def_idx: Vec<u32> = Vec::new();
        let mut def_val: Vec<f32> = Vec::new();
        let e_base = self.graph.indptr[blk.v0];
        let mut cur = vec![0.0f32; dim];
        let mut oth = vec![0.0f32; dim];
        let mut gacc = vec![0.0f64; dim];
        for j in blk.v0..blk.v1 {
            let lj = j - blk.v0;
            let (e0, e1) = (self.graph.indptr[j], self.graph.indptr[j + 1]);
            for e in e0..e1 {
                let le = e - e_base;
                if blk.next_sample[le] > epoch {
                    continue;
                }
                let k = self.graph.indices[e] as usize;
                let k_local = k >= blk.v0 && k < blk.v1;
                for c in 0..dim {
                    cur[c] = local[lj * dim + c];
                    oth[c] = if k_local {
                        local[(k - blk.v0) * dim + c]
                    } else {
                        snap[k * dim + c]
                    };
                }
                let d2 = rdist(&cur, &oth);
                let coeff = if d2 > 0.0 {
                    let pb = fast_pow(d2, b);
                    -2.0 * a * b * (pb / d2) / (a * pb + 1.0)
                } else {
                    0.0
                };
                if !k_local {
                    def_idx.push(k as u32);
                }
                for c in 0..dim {
                    let g = clip(coeff * (cur[c] - oth[c]) as f64);
                    cur[c] += (g * alpha) as f32;
                    let mv = (-g * alpha) as f32;
                    if k_local {
                        oth[c] += mv;
                    } else {
                        def_val.push(mv);
                    }
                }
                if k_local {
                    let lk = k - blk.v0;
                    for c in 0..dim {
                        local[lk * dim + c] = oth[c];
                    }
                }
                blk.next_sample[le] += self.eps[e];

                if self.nsr > 0 {
                    let n_neg = ((epoch - blk.next_negative[le]) / self.eps_neg[e]) as i64;
                    // The negative samples of one positive sample are independent of each
                    // other here (all measured from the position after the attraction, their
                    // steps summed), which lets the CPU overlap them; umap-learn applies them
                    // one after the other. Each step is clipped like umap's.
                    gacc.iter_mut().for_each(|g| *g = 0.0);
                    for _ in 0..n_neg.max(0) {
                        let r = next_u64(&mut blk.rng[lj]);
                        let k = below(r, self.n);
                        if k == j {
                            continue; // umap: distance 0 to itself, skipped
                        }
                        let other = if k >= blk.v0 && k < blk.v1 {
                            &local[(k - blk.v0) * dim..(k - blk.v0 + 1) * dim]
                        } else {
                            &snap[k * dim..(k + 1) * dim]
                        };
                        let d2 = rdist(&cur, other);
                        if d2 > 0.0 {
                            let coeff =
                                2.0 * self.gamma * b / ((0.001 + d2) * (a * fast_pow(d2, b) + 1.0));
                            if coeff > 0.0 {
                                for ((g, &cc), &oc) in gacc.iter_mut().zip(&cur).zip(other) {
                                    *g += clip(coeff * (cc - oc) as f64) * alpha;
                                }
                            }
                        }
                    }
                    for (cc, &g) in cur.iter_mut().zip(&gacc) {
                        *cc += g as f32;
                    }
                    blk.next_negative[le] += n_neg.max(0) as f64 * self.eps_neg[e];
                }
                for c in 0..dim {
                    local[lj * dim + c] = cur[c];
                }
            }
        }
        (def_idx, def_val)
    }
}

/// Negative samples evaluated side by side in the two-dimensional kernel.
const LANES: usize = 8;

impl Sgd<'_> {
    /// [`Sgd::epoch`] for two-dimensional layouts (the common case), in `f32` with the negative
    /// samples of a positive sample evaluated [`LANES`] at a time, branch-free so that the
    /// compiler turns them into SIMD. Same sampling schedule, same random numbers and the same
    /// update rule; every target (SIMD or not) gives bit-identical results, as no sum is
    /// reordered.
    fn epoch2(
        &self,
        blk: &mut Block,
        local: &mut [f32],
        snap: &[f32],
        epoch: f64,
        alpha: f64,
        isa: Isa,
    ) -> (Vec<u32>, Vec<f32>) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect_isa` found AVX2 and FMA (AVX-512 machines have both).
            Isa::Avx2 | Isa::Avx512 => unsafe { self.epoch2_avx2(blk, local, snap, epoch, alpha) },
            Isa::Generic => self.epoch2_impl(blk, local, snap, epoch, alpha),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn epoch2_avx2(
        &self,
        blk: &mut Block,
        local: &mut [f32],
        snap: &[f32],
        epoch: f64,
        alpha: f64,
    ) -> (Vec<u32>, Vec<f32>) {
        self.epoch2_impl(blk, local, snap, epoch, alpha)
    }

    #[inline(always)]
    fn epoch2_impl(
        &self,
        blk: &mut Block,
        local: &mut [f32],
        snap: &[f32],
        epoch: f64,
        alpha: f64,
    ) -> (Vec<u32>, Vec<f32>) {
        let k = Kern2 {
            a: self.a as f32,
            b: self.b as f32,
            two_ab: (2.0 * self.a * self.b) as f32,
            two_gb: (2.0 * self.gamma * self.b) as f32,
            alpha: alpha as f32,
            epoch,
            v0: blk.v0,
            v1: blk.v1,
            e_base: self.graph.indptr[blk.v0],
        };
        let mut out = (Vec::new(), Vec::new());
        // Two vertices' edges interleaved (the first and the second half of the block): one
        // edge's update is a long chain of dependent arithmetic, and the CPU overlaps two
        // independent chains.
        let half = blk.v0 + (blk.v1 - blk.v0).div_ceil(2);
        let mut ca = Cursor::new(blk.v0, half, self.graph);
        let mut cb = Cursor::new(half, blk.v1, self.graph);
        loop {
            let ea = ca.next(self.graph, blk, &k);
            let eb = cb.next(self.graph, blk, &k);
            if ea.is_none() && eb.is_none() {
                break;
            }
            if let Some((j, e)) = ea {
                self.edge2(&k, blk, local, snap, j, e, &mut out);
            }
            if let Some((j, e)) = eb {
                self.edge2(&k, blk, local, snap, j, e, &mut out);
            }
        }
        out
    }

    /// One sampled edge `j -> graph.indices[e]`: the attraction and the negative samples,
    /// all measured from `j`'s position before this edge, applied together.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn edge2(
        &self,
        k: &Kern2,
        blk: &mut Block,
        local: &mut [f32],
        snap: &[f32],
        j: usize,
        e: usize,
        (def_idx, def_val): &mut (Vec<u32>, Vec<f32>),
    ) {
        let (v0, v1) = (k.v0, k.v1);
        let point = |local: &[f32], p: usize| -> (f32, f32) {
            if p >= v0 && p < v1 {
                let l = 2 * (p - v0);
                (local[l], local[l + 1])
            } else {
                (snap[2 * p], snap[2 * p + 1])
            }
        };
        let lj = j - v0;
        let le = e - k.e_base;
        let other = self.graph.indices[e] as usize;
        let other_local = other >= v0 && other < v1;
        let (cx, cy) = (local[2 * lj], local[2 * lj + 1]);
        let (ox, oy) = point(local, other);
        let (dx, dy) = (cx - ox, cy - oy);
        let d2 = dx * dx + dy * dy;
        let coeff = if d2 > 0.0 {
            let pb = fast_pow32(d2, k.b);
            -k.two_ab * (pb / d2) / (k.a * pb + 1.0)
        } else {
            0.0
        };
        let gx = (coeff * dx).clamp(-4.0, 4.0) * k.alpha;
        let gy = (coeff * dy).clamp(-4.0, 4.0) * k.alpha;
        if other_local {
            let lk = 2 * (other - v0);
            local[lk] = ox - gx;
            local[lk + 1] = oy - gy;
        } else {
            def_idx.push(other as u32);
            def_val.push(-gx);
            def_val.push(-gy);
        }
        blk.next_sample[le] += self.eps[e];

        let (mut sx, mut sy) = (0.0f32, 0.0f32);
        if self.nsr > 0 {
            let n_neg = ((k.epoch - blk.next_negative[le]) / self.eps_neg[e]).max(0.0) as usize;
            let mut done = 0;
            while done < n_neg {
                let m = (n_neg - done).min(LANES);
                // unused lanes sit at distance 1 (a zero distance would make `pb` subnormal,
                // and subnormal arithmetic costs hundreds of cycles)
                let mut px = [cx + 1.0; LANES];
                let mut py = [cy; LANES];
                let mut keep = [0.0f32; LANES];
                for l in 0..m {
                    let r = next_u64(&mut blk.rng[lj]);
                    let kk = below(r, self.n);
                    // umap: a point is not pushed away from itself (distance 0)
                    if kk != j {
                        (px[l], py[l]) = point(local, kk);
                        keep[l] = 1.0;
                    }
                }
                let mut lx = [0.0f32; LANES];
                let mut ly = [0.0f32; LANES];
                for l in 0..LANES {
                    let (dx, dy) = (cx - px[l], cy - py[l]);
                    let d2 = dx * dx + dy * dy;
                    let pb = fast_pow32(d2.max(f32::MIN_POSITIVE), k.b);
                    let coeff = k.two_gb / ((0.001 + d2) * (k.a * pb + 1.0));
                    let w = if d2 > 0.0 { keep[l] } else { 0.0 };
                    lx[l] = w * (coeff * dx).clamp(-4.0, 4.0);
                    ly[l] = w * (coeff * dy).clamp(-4.0, 4.0);
                }
                sx += sum8(&lx);
                sy += sum8(&ly);
                done += m;
            }
            blk.next_negative[le] += n_neg as f64 * self.eps_neg[e];
        }
        // `j`'s position may have moved since it was read (an earlier edge of the same
        // call pointing at `j`): apply the steps to where it is now
        local[2 * lj] += gx + sx * k.alpha;
        local[2 * lj + 1] += gy + sy * k.alpha;
    }
}

/// Per-call constants of the two-dimensional kernel.
struct Kern2 {
    a: f32,
    b: f32,
    two_ab: f32,
    two_gb: f32,
    alpha: f32,
    epoch: f64,
    v0: usize,
    v1: usize,
    e_base: usize,
}

/// Walks the edges of the points `j..end` that are due in this epoch.
struct Cursor {
    j: usize,
    end: usize,
    e: usize,
}

impl Cursor {
    fn new(j: usize, end: usize, g: &CsrMatrix<f32>) -> Self {
        Self {
            j,
            end,
            e: g.indptr[j],
        }
    }

    /// The next due edge `(j, e)`, or `None` at the end.
    #[inline(always)]
    fn next(&mut self, g: &CsrMatrix<f32>, blk: &Block, k: &Kern2) -> Option<(usize, usize)> {
        while self.j < self.end {
            let stop = g.indptr[self.j + 1];
            while self.e < stop {
                let e = self.e;
                self.e += 1;
                if blk.next_sample[e - k.e_base] <= k.epoch {
                    return Some((self.j, e));
                }
            }
            self.j += 1;
        }
        None
    }
}

/// Pairwise sum of eight lanes (fixed order, so every target gives the same result).
#[inline(always)]
fn sum8(v: &[f32; LANES]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

/// `x^y` for normal `x > 0` in `f32` (relative error ~1e-7 over the range the SGD sees).
#[inline(always)]
fn fast_pow32(x: f32, y: f32) -> f32 {
    fast_exp2_32(y * fast_log2_32(x))
}

#[inline(always)]
fn fast_log2_32(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // mantissa shifted to [sqrt(1/2), sqrt(2)), branch-free
    let big = m > std::f32::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = e as f32 + if big { 1.0 } else { 0.0 };
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    // 2 atanh(t) / ln 2 with |t| < 0.172: the t^9 term is below 4e-8
    let p = t * (2.0 + t2 * (2.0 / 3.0 + t2 * (2.0 / 5.0 + t2 * (2.0 / 7.0))));
    e + p * std::f32::consts::LOG2_E
}

#[inline(always)]
fn fast_exp2_32(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    // (-125: the result stays a normal float for any p >= 1/2)
    let y = y.clamp(-125.0, 126.0);
    // nearest integer i by float arithmetic (a float-to-int cast would not vectorise): in
    // [2^23, 2^24) floats are spaced by 1, so `y + MAGIC` is `MAGIC + i` exactly, and its bit
    // pattern is MAGIC's plus i
    let t = y + MAGIC;
    let i_bits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let f = (y - (t - MAGIC)) * std::f32::consts::LN_2; // |f| <= ln2 / 2
    // e^f to f^6 (error < 2e-7 on |f| <= 0.35)
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    // 2^i from its exponent field (i in [-126, 126])
    p * f32::from_bits(i_bits.wrapping_add(127) << 23)
}

/// `x^y` for `x > 0` as `2^(y log2 x)` with polynomial `log2`/`exp2` (relative error below
/// `1e-7`, far below what the clipped SGD steps can resolve; `powf` dominated the run time).
#[inline(always)]
fn fast_pow(x: f64, y: f64) -> f64 {
    fast_exp2(y * fast_log2(x))
}

#[inline(always)]
fn fast_log2(x: f64) -> f64 {
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // mantissa in [1, 2), shifted to [sqrt(1/2), sqrt(2)) for a symmetric range of t
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let mut e = e as f64;
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1.0;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    // 2 atanh(t) / ln 2, |t| < 0.172: the t^13 term is below 1e-11
    let p = t
        * (2.0
            + t2 * (2.0 / 3.0
                + t2 * (2.0 / 5.0 + t2 * (2.0 / 7.0 + t2 * (2.0 / 9.0 + t2 * (2.0 / 11.0))))));
    e + p * std::f64::consts::LOG2_E
}

#[inline(always)]
fn fast_exp2(y: f64) -> f64 {
    let y = y.clamp(-1020.0, 1020.0);
    // nearest integer by truncating a positive number (no libm call)
    let i = ((y + 1024.5) as i64 - 1024) as f64;
    let f = (y - i) * std::f64::consts::LN_2; // |f| <= ln2 / 2
    // e^f by its Taylor series to f^9 (error < 1e-10 on |f| <= 0.35)
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0
                    + f * (1.0 / 24.0
                        + f * (1.0 / 120.0
                            + f * (1.0 / 720.0 + f * (1.0 / 5040.0 + f * (1.0 / 40320.0))))))));
    p * f64::from_bits(((i as i64 + 1023) as u64) << 52)
}

/// Squared distance, `f32` differences summed in `f64` (umap's `rdist` under numba).
#[inline(always)]
fn rdist(x: &[f32], y: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(&p, &q)| {
            let t = p - q;
            (t * t) as f64
        })
        .sum()
}

// ---- random numbers -------------------------------------------------------------------------

/// Seeded SplitMix64 generator with uniform and normal variates.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        next_u64(&mut self.0)
    }

    /// Uniform in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

// ---- spectral initialisation ----------------------------------------------------------------

/// Connected components (labels `0..count` in order of first appearance).
fn components(g: &CsrMatrix<f32>) -> (usize, Vec<usize>) {
    let n = g.n_rows;
    let mut label = vec![usize::MAX; n];
    let mut count = 0;
    let mut stack = Vec::new();
    for s in 0..n {
        if label[s] != usize::MAX {
            continue;
        }
        label[s] = count;
        stack.push(s);
        while let Some(v) = stack.pop() {
            for &u in g.row(v).0 {
                let u = u as usize;
                if label[u] == usize::MAX {
                    label[u] = count;
                    stack.push(u);
                }
            }
        }
        count += 1;
    }
    (count, label)
}

/// Spectral layout (`n x dim`, f64) or `None` when the eigensolver failed on a connected
/// graph (umap then falls back to random).
fn spectral_layout(
    g: &CsrMatrix<f32>,
    data: Option<&DenseMatrix<'_>>,
    dim: usize,
    rng: &mut Rng,
) -> Option<Vec<f64>> {
    let (nc, labels) = components(g);
    if nc == 1 {
        return laplacian_eigenmap(g, dim, rng);
    }
    Some(multi_component_layout(g, data, nc, &labels, dim, rng))
}

/// Eigenvectors (`n x dim`) of `I - D^-1/2 W D^-1/2` for the smallest eigenvalues after the
/// first, of a connected graph with `n > dim + 1` points. `None` when the solver fails.
fn laplacian_eigenmap(g: &CsrMatrix<f32>, dim: usize, rng: &mut Rng) -> Option<Vec<f64>> {
    let (_, vecs) = laplacian_spectrum(g, dim, rng)?;
    let n = g.n_rows;
    let mut out = vec![0.0f64; n * dim];
    for (c, v) in vecs.iter().enumerate() {
        for i in 0..n {
            out[i * dim + c] = v[i];
        }
    }
    Some(out)
}

/// The `nev` smallest non-trivial eigenvalues of the normalised Laplacian of the connected
/// graph `g` and their unit eigenvectors (increasing eigenvalue). `None` when the solver does
/// not converge or the graph is too small.
fn laplacian_spectrum(
    g: &CsrMatrix<f32>,
    nev: usize,
    rng: &mut Rng,
) -> Option<(Vec<f64>, Vec<Vec<f64>>)> {
    let n = g.n_rows;
    if n < nev + 2 {
        return None;
    }
    let deg: Vec<f64> = (0..n)
        .map(|i| g.row(i).1.iter().map(|&w| w as f64).sum::<f64>())
        .collect();
    if deg.iter().any(|&d| d.is_nan() || d <= 0.0) {
        return None;
    }
    let dinv: Vec<f64> = deg.iter().map(|&d| 1.0 / d.sqrt()).collect();
    if n <= DENSE_EIG {
        // dense L_sym, all eigenpairs; skip the smallest (trivial) one
        let mut l = vec![0.0f64; n * n];
        for i in 0..n {
            l[i * n + i] = 1.0;
            let (idx, val) = g.row(i);
            for (&j, &w) in idx.iter().zip(val) {
                let j = j as usize;
                l[i * n + j] -= dinv[i] * w as f64 * dinv[j];
            }
        }
        let (vals, vecs) = jacobi_eigen(&mut l, n);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&p, &q| vals[p].total_cmp(&vals[q]));
        let pick = &order[1..=nev];
        let ev = pick.iter().map(|&c| vals[c]).collect();
        let vs = pick
            .iter()
            .map(|&c| (0..n).map(|i| vecs[i * n + c]).collect())
            .collect();
        return Some((ev, vs));
    }
    let sqrt_deg: Vec<f64> = deg.iter().map(|d| d.sqrt()).collect();
    let norm = sqrt_deg.iter().map(|v| v * v).sum::<f64>().sqrt();
    let trivial: Vec<f64> = sqrt_deg.iter().map(|v| v / norm).collect();
    let row = |i: usize, x: &[f64]| {
        let (idx, val) = g.row(i);
        let mut s = 0.0;
        for (&j, &w) in idx.iter().zip(val) {
            s += w as f64 * dinv[j as usize] * x[j as usize];
        }
        dinv[i] * s
    };
    let op = |x: &[f64], y: &mut [f64]| {
        if n >= PAR_MIN {
            y.par_iter_mut()
                .enumerate()
                .for_each(|(i, yi)| *yi = row(i, x));
        } else {
            y.iter_mut().enumerate().for_each(|(i, yi)| *yi = row(i, x));
        }
    };
    let m = ((n as f64).sqrt() as usize)
        .clamp(2 * nev + 30, 100)
        .min(n - 1);
    let (mu, vecs) = lanczos_largest(n, nev, &op, Some(&trivial), m, 1e-7, 1e-4, rng)?;
    Some((mu.iter().map(|m| 1.0 - m).collect(), vecs))
}

/// The `nev` smallest eigenvalues after the trivial one (0) of the normalised Laplacian
/// `I - D^-1/2 W D^-1/2` of the symmetric graph `graph`, increasing, and their unit
/// eigenvectors (row-major `n x nev`, arbitrary signs): what the spectral initialisation of
/// [`umap`] uses (before pruning weak edges there). Fails on a graph with several connected
/// components, or with fewer than `nev + 2` points, or when the solver does not converge.
pub fn spectral_eigenpairs(
    graph: &CsrMatrix<f32>,
    nev: usize,
    seed: u64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let opts = UmapOptions::default();
    validate(graph, None, &opts)?;
    let n = graph.n_rows;
    if nev == 0 || n < nev + 2 {
        return Err(AnalysisError::InvalidParameter(format!(
            "need 1 <= nev <= n - 2, got nev = {nev} for n = {n}"
        )));
    }
    let g = prune(graph, 0.0)?;
    let (nc, _) = components(&g);
    if nc > 1 {
        return Err(AnalysisError::InvalidParameter(format!(
            "graph has {nc} connected components"
        )));
    }
    let mut rng = Rng::new(mix(seed ^ 0x756d_6170));
    let (vals, vecs) = laplacian_spectrum(&g, nev, &mut rng).ok_or_else(|| {
        AnalysisError::InvalidParameter("the eigensolver did not converge".into())
    })?;
    let mut out = vec![0.0f64; n * nev];
    for (c, v) in vecs.iter().enumerate() {
        for i in 0..n {
            out[i * nev + c] = v[i];
        }
    }
    Ok((vals, out))
}

/// umap-learn's `multi_component_layout`.
fn multi_component_layout(
    g: &CsrMatrix<f32>,
    data: Option<&DenseMatrix<'_>>,
    nc: usize,
    labels: &[usize],
    dim: usize,
    rng: &mut Rng,
) -> Vec<f64> {
    let n = g.n_rows;
    let meta = if nc > MAX_META_COMPONENTS {
        // too many components for the dense meta-embedding: random centroids
        (0..nc * dim).map(|_| rng.uniform() * 10.0).collect()
    } else if nc > 2 * dim {
        component_layout(data, nc, labels, dim, rng)
    } else {
        let k = nc.div_ceil(2);
        let mut m = vec![0.0f64; nc * dim];
        for c in 0..nc {
            let (row, sign) = if c < k { (c, 1.0) } else { (c - k, -1.0) };
            if row < dim {
                m[c * dim + row] = sign;
            }
        }
        m
    };
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); nc];
    for (i, &l) in labels.iter().enumerate() {
        members[l].push(i);
    }
    // each component's spectral layout, in parallel, with its own random stream
    let seeds: Vec<u64> = (0..nc).map(|_| rng.next()).collect();
    let layouts: Vec<Option<Vec<f64>>> = members
        .par_iter()
        .zip(&seeds)
        .map(|(mem, &seed)| {
            let sz = mem.len();
            if sz < 2 * dim || sz <= dim + 1 {
                return None;
            }
            let mut crng = Rng::new(seed);
            let sub = subgraph(g, mem);
            Some(laplacian_eigenmap(&sub, dim, &mut crng).unwrap_or_else(|| {
                (0..sz * dim)
                    .map(|_| crng.uniform() * 20.0 - 10.0)
                    .collect()
            }))
        })
        .collect();
    let mut out = vec![0.0f64; n * dim];
    for (c, (mem, e)) in members.iter().zip(layouts).enumerate() {
        let mc = &meta[c * dim..(c + 1) * dim];
        let mut nearest = f64::INFINITY;
        for o in 0..nc {
            let d: f64 = (0..dim)
                .map(|t| (meta[o * dim + t] - mc[t]).powi(2))
                .sum::<f64>()
                .sqrt();
            if d > 0.0 {
                nearest = nearest.min(d);
            }
        }
        let range = if nearest.is_finite() {
            nearest / 2.0
        } else {
            1.0
        };
        let layout = e.map(|e| {
            let m = e.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let s = if m > 0.0 { range / m } else { 1.0 };
            e.into_iter().map(|v| v * s).collect::<Vec<f64>>()
        });
        for (t, &i) in mem.iter().enumerate() {
            for c2 in 0..dim {
                let v = match &layout {
                    Some(e) => e[t * dim + c2],
                    None => rng.uniform() * 2.0 * range - range,
                };
                out[i * dim + c2] = v + mc[c2];
            }
        }
    }
    out
}

/// The subgraph of `g` on the points `mem` (increasing; a connected component, so every
/// neighbour is in `mem`), renumbered `0..mem.len()`.
fn subgraph(g: &CsrMatrix<f32>, mem: &[usize]) -> CsrMatrix<f32> {
    let mut indptr = Vec::with_capacity(mem.len() + 1);
    indptr.push(0usize);
    let mut indices = Vec::new();
    let mut data = Vec::new();
    for &i in mem {
        let (idx, val) = g.row(i);
        for (&j, &w) in idx.iter().zip(val) {
            // `mem` is sorted, so the local number is the position
            if let Ok(t) = mem.binary_search(&(j as usize)) {
                indices.push(t as u32);
                data.push(w);
            }
        }
        indptr.push(indices.len());
    }
    CsrMatrix {
        n_rows: mem.len(),
        n_cols: mem.len(),
        indptr,
        indices,
        data,
    }
}

/// umap-learn's `component_layout`: spectral embedding of the centroids' `exp(-dist²)`
/// affinities (scikit-learn's `SpectralEmbedding`), scaled by its maximum.
fn component_layout(
    data: Option<&DenseMatrix<'_>>,
    nc: usize,
    labels: &[usize],
    dim: usize,
    rng: &mut Rng,
) -> Vec<f64> {
    let Some(x) = data else {
        return (0..nc * dim).map(|_| rng.uniform() * 10.0).collect();
    };
    let d = x.n_cols();
    let mut cent = vec![0.0f64; nc * d];
    let mut cnt = vec![0usize; nc];
    for (i, &l) in labels.iter().enumerate() {
        cnt[l] += 1;
        for (t, &v) in x.row(i).iter().enumerate() {
            cent[l * d + t] += v as f64;
        }
    }
    for l in 0..nc {
        for t in 0..d {
            cent[l * d + t] /= cnt[l].max(1) as f64;
        }
    }
    // normalised Laplacian of the affinity (diagonal ignored, like scipy's laplacian)
    let mut aff = vec![0.0f64; nc * nc];
    for p in 0..nc {
        for q in 0..nc {
            if p != q {
                let d2: f64 = (0..d)
                    .map(|t| (cent[p * d + t] - cent[q * d + t]).powi(2))
                    .sum();
                aff[p * nc + q] = (-d2).exp();
            }
        }
    }
    let deg: Vec<f64> = (0..nc)
        .map(|p| aff[p * nc..(p + 1) * nc].iter().sum::<f64>())
        .collect();
    let dd: Vec<f64> = deg
        .iter()
        .map(|&v| if v > 0.0 { v.sqrt() } else { 1.0 })
        .collect();
    let mut l = vec![0.0f64; nc * nc];
    for p in 0..nc {
        for q in 0..nc {
            l[p * nc + q] = if p == q {
                if deg[p] > 0.0 { 1.0 } else { 0.0 }
            } else {
                -aff[p * nc + q] / (dd[p] * dd[q])
            };
        }
    }
    let (vals, vecs) = jacobi_eigen(&mut l, nc);
    let mut order: Vec<usize> = (0..nc).collect();
    order.sort_by(|&p, &q| vals[p].total_cmp(&vals[q]));
    let mut out = vec![0.0f64; nc * dim];
    for c in 0..dim {
        let col = order.get(c + 1).copied().unwrap_or(order[0]);
        let mut v: Vec<f64> = (0..nc).map(|p| vecs[p * nc + col] / dd[p]).collect();
        // deterministic sign: largest |entry| positive
        let big = v
            .iter()
            .copied()
            .fold(0.0f64, |m, t| if t.abs() > m.abs() { t } else { m });
        if big < 0.0 {
            v.iter_mut().for_each(|t| *t = -*t);
        }
        for p in 0..nc {
            out[p * dim + c] = v[p];
        }
    }
    let m = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m > 0.0 {
        out.iter_mut().for_each(|v| *v /= m);
    }
    out
}

/// `n x dim` scores of the centred `x` on its top `dim` principal axes (f64).
fn pca_scores(x: &DenseMatrix<'_>, dim: usize, rng: &mut Rng) -> Result<Vec<f64>> {
    let (n, d) = (x.n_rows(), x.n_cols());
    if dim > d {
        return Err(AnalysisError::InvalidParameter(format!(
            "PCA init needs n_components <= {d} data columns, got {dim}"
        )));
    }
    let mean: Vec<f64> = (0..d)
        .map(|t| (0..n).map(|i| x.row(i)[t] as f64).sum::<f64>() / n as f64)
        .collect();
    let axes: Vec<Vec<f64>> = if d <= DENSE_EIG.min(128) {
        let cov: Vec<f64> = (0..d * d)
            .into_par_iter()
            .map(|pq| {
                let (p, q) = (pq / d, pq % d);
                (0..n)
                    .map(|i| {
                        let r = x.row(i);
                        (r[p] as f64 - mean[p]) * (r[q] as f64 - mean[q])
                    })
                    .sum::<f64>()
            })
            .collect();
        let mut cov = cov;
        let (vals, vecs) = jacobi_eigen(&mut cov, d);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&p, &q| vals[q].total_cmp(&vals[p]));
        order[..dim]
            .iter()
            .map(|&c| (0..d).map(|t| vecs[t * d + c]).collect())
            .collect()
    } else {
        let op = |v: &[f64], y: &mut [f64]| {
            let proj: Vec<f64> = (0..n)
                .into_par_iter()
                .map(|i| {
                    x.row(i)
                        .iter()
                        .zip(&mean)
                        .zip(v)
                        .map(|((&a, &m), &b)| (a as f64 - m) * b)
                        .sum::<f64>()
                })
                .collect();
            let acc = (0..n)
                .into_par_iter()
                .fold(
                    || vec![0.0f64; d],
                    |mut acc, i| {
                        for ((s, &a), &m) in acc.iter_mut().zip(x.row(i)).zip(&mean) {
                            *s += (a as f64 - m) * proj[i];
                        }
                        acc
                    },
                )
                .reduce(
                    || vec![0.0f64; d],
                    |mut p, q| {
                        p.iter_mut().zip(&q).for_each(|(s, t)| *s += t);
                        p
                    },
                );
            y.copy_from_slice(&acc);
        };
        let m = (2 * dim + 30).min(d);
        lanczos_largest(d, dim, &op, None, m, 1e-9, 1e-5, rng)
            .ok_or_else(|| AnalysisError::InvalidParameter("PCA did not converge".into()))?
            .1
    };
    let mut out = vec![0.0f64; n * dim];
    out.par_chunks_mut(dim).enumerate().for_each(|(i, o)| {
        for (c, ax) in axes.iter().enumerate() {
            o[c] = x
                .row(i)
                .iter()
                .zip(&mean)
                .zip(ax)
                .map(|((&a, &m), &w)| (a as f64 - m) * w)
                .sum();
        }
    });
    Ok(out)
}

// ---- eigensolvers ---------------------------------------------------------------------------

/// All eigenpairs of the symmetric `n x n` row-major matrix `a` (destroyed) by cyclic Jacobi
/// rotations. Returns `(values, vectors)` with eigenvector `c` in column `c` of `vectors`.
fn jacobi_eigen(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q] * a[p * n + q])
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-30 * total.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

fn dotv(a: &[f64], b: &[f64]) -> f64 {
    if a.len() >= PAR_MIN {
        a.par_chunks(4096)
            .zip(b.par_chunks(4096))
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>())
            .collect::<Vec<f64>>()
            .iter()
            .sum()
    } else {
        a.iter().zip(b).map(|(p, q)| p * q).sum()
    }
}

fn axpy(y: &mut [f64], alpha: f64, x: &[f64]) {
    y.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(s, &t)| *s += alpha * t);
}

/// Orthogonalises `w` against `basis` (twice) and returns the coefficients of the first pass
/// plus the correction of the second.
fn orthogonalise(w: &mut [f64], basis: &[Vec<f64>]) -> Vec<f64> {
    let mut h = vec![0.0f64; basis.len()];
    for _ in 0..2 {
        for (hi, v) in h.iter_mut().zip(basis) {
            let c = dotv(v, w);
            axpy(w, -c, v);
            *hi += c;
        }
    }
    h
}

/// Thick-restart Lanczos with full re-orthogonalisation: the `nev` largest eigenvalues
/// (decreasing) and unit eigenvectors of the symmetric operator `op` on `R^n`, restricted to
/// the orthogonal complement of `deflate` (a unit vector) if given. Basis size `m`. Converged
/// when every wanted residual `|A y - θ y| <= tol`; after the iteration budget, accepts
/// residuals `<= loose_tol`, else `None`.
#[allow(clippy::too_many_arguments)]
fn lanczos_largest(
    n: usize,
    nev: usize,
    op: &(dyn Fn(&[f64], &mut [f64]) + Sync),
    deflate: Option<&Vec<f64>>,
    m: usize,
    tol: f64,
    loose_tol: f64,
    rng: &mut Rng,
) -> Option<(Vec<f64>, Vec<Vec<f64>>)> {
    let fixed: Vec<Vec<f64>> = deflate.into_iter().cloned().collect();
    let avail = n - fixed.len();
    let m = m.min(avail);
    if nev == 0 || nev > m || (nev == m && m < avail) {
        return None;
    }
    let new_start = |rng: &mut Rng, basis: &[Vec<f64>]| -> Option<Vec<f64>> {
        for _ in 0..5 {
            let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            orthogonalise(&mut v, &fixed);
            orthogonalise(&mut v, basis);
            let nv = dotv(&v, &v).sqrt();
            if nv > 1e-8 {
                v.iter_mut().for_each(|t| *t /= nv);
                return Some(v);
            }
        }
        None
    };
    let mut basis: Vec<Vec<f64>> = vec![new_start(rng, &[])?];
    let mut t = vec![0.0f64; m * m];
    let mut p = 0usize;
    let max_restarts = 400usize;
    let mut w = vec![0.0f64; n];
    for restart in 0..=max_restarts {
        let mut fnorm = 0.0;
        let mut f = Vec::new();
        for j in p..m {
            op(&basis[j], &mut w);
            orthogonalise(&mut w, &fixed);
            let h = orthogonalise(&mut w, &basis);
            for (i, &hi) in h.iter().enumerate() {
                t[i * m + j] = hi;
                t[j * m + i] = hi;
            }
            let beta = dotv(&w, &w).sqrt();
            if j + 1 < m {
                if beta > 1e-10 {
                    basis.push(w.iter().map(|v| v / beta).collect());
                    t[(j + 1) * m + j] = beta;
                    t[j * m + j + 1] = beta;
                } else {
                    // invariant subspace: continue with a fresh orthogonal direction
                    basis.push(new_start(rng, &basis)?);
                    t[(j + 1) * m + j] = 0.0;
                    t[j * m + j + 1] = 0.0;
                }
            } else {
                fnorm = beta;
                f = w.clone();
            }
        }
        // Ritz pairs of the projected matrix
        let mut tt = t.clone();
        let (theta, s) = jacobi_eigen(&mut tt, m);
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| theta[b].total_cmp(&theta[a]));
        let resid = |c: usize| fnorm * s[(m - 1) * m + c].abs();
        let converged = order[..nev].iter().all(|&c| resid(c) <= tol);
        let done = converged || restart == max_restarts || nev >= m;
        let keep = if done {
            nev
        } else {
            (nev + (m - nev) / 2).min(m - 1)
        };
        // Ritz vectors
        let ritz: Vec<Vec<f64>> = order[..keep]
            .iter()
            .map(|&c| {
                let mut y = vec![0.0f64; n];
                let fill = |(b, yb): (usize, &mut [f64])| {
                    let o = b * 1024;
                    for (r, v) in basis.iter().enumerate() {
                        let coef = s[r * m + c];
                        for (q, yv) in yb.iter_mut().enumerate() {
                            *yv += coef * v[o + q];
                        }
                    }
                };
                if n >= PAR_MIN {
                    y.par_chunks_mut(1024).enumerate().for_each(fill);
                } else {
                    y.chunks_mut(1024).enumerate().for_each(fill);
                }
                y
            })
            .collect();
        if done {
            if !converged && order[..nev].iter().any(|&c| resid(c) > loose_tol) {
                return None;
            }
            let vals = order[..nev].iter().map(|&c| theta[c]).collect();
            return Some((vals, ritz));
        }
        // restart: kept Ritz vectors + normalised residual
        t.iter_mut().for_each(|v| *v = 0.0);
        for (i, &c) in order[..keep].iter().enumerate() {
            t[i * m + i] = theta[c];
        }
        basis = ritz;
        p = keep;
        if fnorm > 1e-10 {
            basis.push(f.iter().map(|v| v / fnorm).collect());
        } else {
            basis.push(new_start(rng, &basis)?);
        }
    }
    None
}

// ---- trustworthiness ------------------------------------------------------------------------

/// scikit-learn's `sklearn.manifold.trustworthiness(high, low, n_neighbors=k, metric)`:
/// `1 - 2 / (n k (2n - 3k - 1)) Σ_i Σ_{j ∈ N_k^low(i)} max(0, r(i, j) - k)`, where
/// `N_k^low(i)` are the `k` nearest neighbours of `i` in `low` (euclidean, self excluded) and
/// `r(i, j)` is the rank of `j` among all other points by distance to `i` in `high` (1 =
/// nearest; ties by index). Exact, `O(n² d)`, parallel. Needs `1 <= k < n / 2`.
pub fn trustworthiness(
    high: &DenseMatrix<'_>,
    low: &DenseMatrix<'_>,
    k: usize,
    metric: Metric,
) -> Result<f64> {
    let n = high.n_rows();
    if low.n_rows() != n {
        return Err(AnalysisError::LengthMismatch {
            what: "low-dimensional rows",
            expected: n,
            got: low.n_rows(),
        });
    }
    if k == 0 || 2 * k >= n {
        return Err(AnalysisError::InvalidParameter(format!(
            "trustworthiness needs 1 <= k < n / 2, got k = {k} for n = {n}"
        )));
    }
    let emb = knn(low, k + 1, Metric::Euclidean)?;
    // value of each embedded neighbour in the high space (same kernel as the counting pass)
    struct St {
        nb: Vec<u32>,
        val: Vec<f64>,
        rank: Vec<usize>,
    }
    let mut st: Vec<St> = (0..n)
        .map(|i| St {
            nb: emb.indices_of(i)[1..].to_vec(),
            val: vec![f64::NAN; k],
            rank: vec![1; k],
        })
        .collect();
    scan_pairs(high, metric, 0, &mut st, |s, _i, j0, vals, len| {
        for (t, &j) in s.nb.iter().enumerate() {
            let j = j as usize;
            if j >= j0 && j < j0 + len {
                s.val[t] = vals[j - j0];
            }
        }
    });
    scan_pairs(high, metric, 0, &mut st, |s, i, j0, vals, len| {
        for (c, &v) in vals.iter().enumerate().take(len) {
            let l = j0 + c;
            if l == i {
                continue;
            }
            for t in 0..s.nb.len() {
                let (tv, tj) = (s.val[t], s.nb[t] as usize);
                if v < tv || (v == tv && l < tj) {
                    s.rank[t] += 1;
                }
            }
        }
    });
    let total: f64 = st
        .iter()
        .flat_map(|s| s.rank.iter())
        .map(|&r| r.saturating_sub(k) as f64)
        .sum();
    let (nf, kf) = (n as f64, k as f64);
    Ok(1.0 - total * (2.0 / (nf * kf * (2.0 * nf - 3.0 * kf - 1.0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ab_params_known_values() {
        // umap-learn 0.5.12 find_ab_params(1.0, 0.1)
        let (a, b) = find_ab_params(1.0, 0.1);
        assert!((a - 1.576_943_460_405_378).abs() < 1e-3 * a, "{a}");
        assert!((b - 0.895_060_878_123_428_3).abs() < 1e-3 * b, "{b}");
    }

    #[test]
    fn fast_pow32_accuracy() {
        let mut worst = 0.0f64;
        for i in 0..20_000 {
            let x = 10f32.powf(-8.0 + 16.0 * i as f32 / 20_000.0);
            for y in [0.3f32, 0.79, 1.0, 1.33, 1.9, 2.7] {
                let want = (x as f64).powf(y as f64);
                let got = fast_pow32(x, y) as f64;
                worst = worst.max(((got - want) / want).abs());
            }
        }
        // f32 rounding of y log2(x) (up to ~70 here) alone gives a few 1e-6
        assert!(worst < 1e-5, "worst relative error {worst}");
    }

    #[test]
    fn epoch2_same_on_every_isa() {
        // a ring graph with chords, laid out with the generic kernel and the SIMD one
        let n = 700;
        let mut indptr = vec![0usize];
        let mut indices = Vec::new();
        let mut data = Vec::new();
        for i in 0..n {
            let mut nb = vec![(i + 1) % n, (i + n - 1) % n, (i * 7 + 3) % n];
            nb.sort_unstable();
            nb.dedup();
            for j in nb {
                if j != i {
                    indices.push(j as u32);
                    data.push(0.3 + 0.7 * ((i * 31 + j * 17) % 11) as f32 / 11.0);
                }
            }
            indptr.push(indices.len());
        }
        // symmetrise by max
        let mut dense = vec![0.0f32; n * n];
        for i in 0..n {
            for p in indptr[i]..indptr[i + 1] {
                let j = indices[p] as usize;
                let w = data[p].max(dense[j * n + i]);
                dense[i * n + j] = w;
                dense[j * n + i] = w;
            }
        }
        let (mut ip, mut ix, mut dv) = (vec![0usize], Vec::new(), Vec::new());
        for i in 0..n {
            for j in 0..n {
                if dense[i * n + j] > 0.0 {
                    ix.push(j as u32);
                    dv.push(dense[i * n + j]);
                }
            }
            ip.push(ix.len());
        }
        let g = CsrMatrix::new(n, n, ip, ix, dv).expect("csr");
        let opts = UmapOptions {
            n_epochs: Some(60),
            init: UmapInit::Random,
            ..Default::default()
        };
        let run = |isa: Isa| {
            let mut rng = Rng::new(5);
            let mut emb = minmax_scale(&random_init(n, 2, &mut rng), n, 2);
            optimize(&mut emb, &g, 2, 60, 0.58, 1.33, &opts, 9, isa);
            emb
        };
        let generic = run(Isa::Generic);
        assert!(generic.iter().all(|v| v.is_finite()));
        #[cfg(target_arch = "x86_64")]
        if detect_isa() != Isa::Generic {
            assert_eq!(generic, run(Isa::Avx2));
        }
    }

    #[test]
    fn fast_pow_accuracy() {
        for &x in &[1e-12, 1e-6, 0.003, 0.5, 0.9999, 1.0, 1.5, 7.0, 123.4, 1e6] {
            for &y in &[0.33, 0.79, 1.3341, 1.9, -0.2] {
                let (f, e) = (fast_pow(x, y), f64::powf(x, y));
                assert!((f - e).abs() <= 1e-9 * e, "{x}^{y}: {f} vs {e}");
            }
        }
    }

    #[test]
    fn jacobi_small() {
        let mut a = vec![2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0];
        let (vals, _) = jacobi_eigen(&mut a, 3);
        let mut v = vals.clone();
        v.sort_by(f64::total_cmp);
        assert!((v[0] - 1.0).abs() < 1e-12 && (v[1] - 3.0).abs() < 1e-12);
        assert!((v[2] - 5.0).abs() < 1e-12);
    }
}
