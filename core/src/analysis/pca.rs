//! Principal component analysis as scanpy's `sc.pp.pca` / scikit-learn's `PCA` compute it.
//!
//! Two solvers:
//!
//! - [`PcaSolver::Randomized`]: randomised SVD (Halko, Martinsson & Tropp 2011, as in
//!   scikit-learn's `randomized_svd`): a Gaussian test matrix with `n_comps + n_oversamples`
//!   columns, `n_power_iter` power iterations with an orthonormalisation after every product
//!   (CholeskyQR2, falling back to shifted CholeskyQR when the block is ill-conditioned; the
//!   range is the same as with scikit-learn's LU/QR normalisers), then the SVD of the small
//!   projected matrix. Sparse input is centred *implicitly* (`X·v - 1·(μ·v)` and
//!   `Xᵀ·u - μ·(1ᵀu)`; `X - μ` is never formed), dense input the same way. The default number
//!   of power iterations follows scikit-learn: 7 when `n_comps < 0.1 · min(n_cells, n_genes)`,
//!   otherwise 4 (`PCA(svd_solver="randomized")`); 5 without centring (`TruncatedSVD`, what
//!   scanpy uses for `zero_center=False`).
//! - [`PcaSolver::Exact`]: the eigendecomposition of the `n_genes x n_genes` covariance
//!   matrix (accumulated in `f64` from row blocks), by Householder tridiagonalisation,
//!   bisection (Sturm counts) for the leading eigenvalues and inverse iteration for their
//!   eigenvectors. This equals scikit-learn's `PCA(svd_solver="full")` / `"covariance_eigh"`
//!   up to floating-point rounding; use it when `n_genes` is a few thousand at most (the cost
//!   is `O(n_cells·n_genes² + n_genes³)`).
//!
//! Conventions reproduced (scikit-learn 1.9, which scanpy 1.11 calls; with scikit-learn
//! 1.4 or newer scanpy's default `sc.pp.pca` is `PCA(svd_solver="arpack")` for dense and sparse
//! input alike, or `TruncatedSVD` for `zero_center=False`):
//!
//! - `variance` (`uns["pca"]["variance"]`) = `σ² / (n_cells - 1)`, `variance_ratio` = that
//!   divided by the total variance `Σ_j var(X_j)` (ddof 1).
//! - Signs: `svd_flip(u_based_decision=False)` (scikit-learn >= 1.5): in every component the
//!   loading with the largest absolute value (the first one on ties) is positive. scanpy
//!   1.11's `sc.pp.pca` goes through the same flip, so its `X_pca`/`varm["PCs"]` have the same
//!   signs as ours.
//! - `scores` (`obsm["X_pca"]`) = the centred data projected on the components,
//!   `(X - μ) · Vᵀ`. (scikit-learn's `fit_transform` returns `U·Σ`, identical for an exact
//!   SVD; for the randomised solver the projection is the self-consistent choice.)
//! - `zero_center = false`: scikit-learn's `TruncatedSVD`: the SVD of the uncentred `X`,
//!   `scores = X · Vᵀ`, `variance` = the (ddof 0) variance of each score column and
//!   `variance_ratio` = that divided by `Σ_j var(X_j)` (ddof 0).
//!
//! All products accumulate in `f64` (AVX2/FMA kernels when the CPU has them) and are split
//! over rayon threads by rows.

use rayon::prelude::*;

use super::expr::{Expr, row_blocks, sum_parts};
use super::{AnalysisError, Result};
use crate::tokenize::Rng;

/// Which SVD algorithm [`pca`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PcaSolver {
    /// Randomised SVD with power iterations (fast; accuracy set by
    /// [`PcaOptions::n_power_iter`] and [`PcaOptions::n_oversamples`]).
    #[default]
    Randomized,
    /// Eigendecomposition of the gene-gene covariance (exact; for up to a few thousand genes).
    Exact,
}

/// Options of [`pca`].
#[derive(Debug, Clone, PartialEq)]
pub struct PcaOptions {
    /// Number of principal components (default 50).
    pub n_comps: usize,
    /// Centre the genes (PCA, default) or not (truncated SVD, scanpy's `zero_center=False`).
    pub zero_center: bool,
    /// SVD algorithm.
    pub solver: PcaSolver,
    /// Extra columns of the randomised range finder (default 10, as scikit-learn).
    pub n_oversamples: usize,
    /// Power iterations of the randomised solver; `None` = scikit-learn's rule (see the module
    /// documentation).
    pub n_power_iter: Option<usize>,
    /// Seed of the randomised solver's Gaussian test matrix.
    pub seed: u64,
}

impl Default for PcaOptions {
    fn default() -> Self {
        Self {
            n_comps: 50,
            zero_center: true,
            solver: PcaSolver::Randomized,
            n_oversamples: 10,
            n_power_iter: None,
            seed: 0,
        }
    }
}

/// Result of [`pca`].
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// Number of cells.
    pub n_cells: usize,
    /// Number of genes.
    pub n_genes: usize,
    /// Number of components.
    pub n_comps: usize,
    /// Cell scores, row-major `n_cells x n_comps` (scanpy's `obsm["X_pca"]`).
    pub scores: Vec<f32>,
    /// Loadings, row-major `n_comps x n_genes` (scanpy's `varm["PCs"]` transposed).
    pub components: Vec<f32>,
    /// Explained variance per component (ddof 1; see the module documentation for
    /// `zero_center = false`).
    pub variance: Vec<f64>,
    /// Explained variance divided by the total variance.
    pub variance_ratio: Vec<f64>,
    /// Gene means (subtracted when `zero_center`).
    pub mean: Vec<f64>,
}

/// Largest number of genes the exact solver accepts (its covariance matrix is
/// `n_genes² · 8` bytes).
pub const EXACT_MAX_GENES: usize = 16_384;

/// PCA (or truncated SVD) of a cells x genes matrix; see the module documentation.
///
/// Errors: invalid or non-finite input, fewer than 2 cells, `n_comps` outside
/// `1..=min(n_cells, n_genes)`, the exact solver with more than [`EXACT_MAX_GENES`] genes.
pub fn pca(x: Expr<'_>, opts: &PcaOptions) -> Result<Pca> {
    x.validate()?;
    let n = x.n_rows();
    let d = x.n_cols();
    if n < 2 {
        return Err(AnalysisError::InvalidParameter(format!(
            "PCA needs at least 2 cells, got {n}"
        )));
    }
    let k = opts.n_comps;
    if k == 0 || k > n.min(d) {
        return Err(AnalysisError::InvalidParameter(format!(
            "n_comps = {k} must be in 1..={} (min of {n} cells and {d} genes)",
            n.min(d)
        )));
    }
    if opts.solver == PcaSolver::Exact && d > EXACT_MAX_GENES {
        return Err(AnalysisError::InvalidParameter(format!(
            "the exact PCA solver is limited to {EXACT_MAX_GENES} genes (got {d}); use the \
             randomized solver"
        )));
    }
    let (mean, var0) = x.col_mean_var();
    let centre = opts.zero_center.then_some(mean.as_slice());
    let op = Op { x, mean: centre };

    // right singular vectors as columns of a d x k matrix (row-major) and the squared
    // singular values
    let (mut vt, sq) = match opts.solver {
        PcaSolver::Exact => exact_components(&op, k)?,
        PcaSolver::Randomized => {
            let q = opts.n_power_iter.unwrap_or(if !opts.zero_center {
                5
            } else if (k as f64) < 0.1 * n.min(d) as f64 {
                7
            } else {
                4
            });
            randomized_components(&op, k, opts.n_oversamples, q, opts.seed)
        }
    };
    // svd_flip(u_based_decision=False): largest-|v| loading of each component positive
    for c in 0..k {
        let mut best = 0usize;
        let mut best_abs = -1.0f64;
        for j in 0..d {
            let a = vt[j * k + c].abs();
            if a > best_abs {
                best_abs = a;
                best = j;
            }
        }
        if vt[best * k + c] < 0.0 {
            for j in 0..d {
                vt[j * k + c] = -vt[j * k + c];
            }
        }
    }
    let scores64 = op.mul(&vt, k);
    let (variance, variance_ratio) = if opts.zero_center {
        let total: f64 = var0.iter().sum::<f64>() * n as f64 / (n - 1) as f64;
        let v: Vec<f64> = sq.iter().map(|s| s / (n - 1) as f64).collect();
        let r = v.iter().map(|x| x / total).collect();
        (v, r)
    } else {
        let total: f64 = var0.iter().sum();
        let mut v = vec![0.0f64; k];
        for (c, vc) in v.iter_mut().enumerate() {
            let m = (0..n).map(|i| scores64[i * k + c]).sum::<f64>() / n as f64;
            *vc = (0..n)
                .map(|i| {
                    let t = scores64[i * k + c] - m;
                    t * t
                })
                .sum::<f64>()
                / n as f64;
        }
        let r = v.iter().map(|x| x / total).collect();
        (v, r)
    };
    let mut components = vec![0.0f32; k * d];
    for j in 0..d {
        for c in 0..k {
            components[c * d + j] = vt[j * k + c] as f32;
        }
    }
    Ok(Pca {
        n_cells: n,
        n_genes: d,
        n_comps: k,
        scores: scores64.iter().map(|&v| v as f32).collect(),
        components,
        variance,
        variance_ratio,
        mean,
    })
}

/// The (optionally implicitly centred) data matrix as a linear operator.
struct Op<'a> {
    x: Expr<'a>,
    mean: Option<&'a [f64]>,
}

impl Op<'_> {
    /// `Xc · Q` for `Q` row-major `n_genes x l`; returns row-major `n_cells x l`.
    fn mul(&self, q: &[f64], l: usize) -> Vec<f64> {
        let n = self.x.n_rows();
        let mut y = vec![0.0f64; n * l];
        let rows_per = n.div_ceil(rayon::current_num_threads() * 8).clamp(16, 4096);
        let isa = Isa::detect();
        y.par_chunks_mut(rows_per * l)
            .enumerate()
            .for_each(|(c, ych)| isa.xq(&self.x, c * rows_per, q, l, ych));
        if let Some(mu) = self.mean {
            // subtract 1 · (μ · Q)
            let mut mq = vec![0.0f64; l];
            for (j, &m) in mu.iter().enumerate() {
                for (a, &b) in mq.iter_mut().zip(&q[j * l..(j + 1) * l]) {
                    *a += m * b;
                }
            }
            y.par_chunks_mut(l).for_each(|row| {
                for (a, &b) in row.iter_mut().zip(&mq) {
                    *a -= b;
                }
            });
        }
        y
    }

    /// `Xcᵀ · Y` for `Y` row-major `n_cells x l`; returns row-major `n_genes x l`.
    fn mul_t(&self, y: &[f64], l: usize) -> Vec<f64> {
        let d = self.x.n_cols();
        let isa = Isa::detect();
        let parts: Vec<Vec<f64>> = row_blocks(self.x.n_rows())
            .par_iter()
            .map(|&(a, b)| {
                let mut z = vec![0.0f64; d * l];
                isa.xty(&self.x, a, b, y, l, &mut z);
                z
            })
            .collect();
        let mut z = sum_parts(parts, d * l);
        if let Some(mu) = self.mean {
            // subtract μ · (1ᵀ Y)
            let mut cs = vec![0.0f64; l];
            for row in y.chunks_exact(l) {
                for (a, &b) in cs.iter_mut().zip(row) {
                    *a += b;
                }
            }
            z.par_chunks_mut(l)
                .zip(mu.par_iter())
                .for_each(|(row, &m)| {
                    for (a, &b) in row.iter_mut().zip(&cs) {
                        *a -= m * b;
                    }
                });
        }
        z
    }
}

// ---------------------------------------------------------------------------------------
// kernels (generic, and compiled for AVX2+FMA when available)

#[derive(Clone, Copy)]
enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Fma,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Fma;
            }
        }
        Isa::Generic
    }

    fn xq(self, x: &Expr<'_>, r0: usize, q: &[f64], l: usize, out: &mut [f64]) {
        match self {
            // SAFETY: the CPU has AVX2 and FMA (checked by `detect`).
            #[cfg(target_arch = "x86_64")]
            Isa::Fma => unsafe { xq_fma(x, r0, q, l, out) },
            Isa::Generic => xq_gen::<false>(x, r0, q, l, out),
        }
    }

    fn xty(self, x: &Expr<'_>, a: usize, b: usize, y: &[f64], l: usize, z: &mut [f64]) {
        match self {
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Fma => unsafe { xty_fma(x, a, b, y, l, z) },
            Isa::Generic => xty_gen::<false>(x, a, b, y, l, z),
        }
    }

    fn gram_rows(self, y: &[f64], l: usize, g: &mut [f64]) {
        match self {
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Fma => unsafe { gram_fma(y, l, g) },
            Isa::Generic => gram_gen::<false>(y, l, g),
        }
    }

    fn syrk(self, p: &[f64], rows: usize, d: usize, i0: usize, c: &mut [f64]) {
        match self {
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Fma => unsafe { syrk_fma(p, rows, d, i0, c) },
            Isa::Generic => syrk_gen::<false>(p, rows, d, i0, c),
        }
    }
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `y += a · x`.
#[inline(always)]
fn axpy<const FMA: bool>(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = fmadd::<FMA>(a, xi, *yi);
    }
}

#[inline(always)]
fn xq_gen<const FMA: bool>(x: &Expr<'_>, r0: usize, q: &[f64], l: usize, out: &mut [f64]) {
    for (t, row) in out.chunks_exact_mut(l).enumerate() {
        x.for_row(r0 + t, |j, v| {
            axpy::<FMA>(v as f64, &q[j * l..(j + 1) * l], row);
        });
    }
}

#[inline(always)]
fn xty_gen<const FMA: bool>(x: &Expr<'_>, a: usize, b: usize, y: &[f64], l: usize, z: &mut [f64]) {
    for i in a..b {
        let yr = &y[i * l..(i + 1) * l];
        x.for_row(i, |j, v| {
            axpy::<FMA>(v as f64, yr, &mut z[j * l..(j + 1) * l])
        });
    }
}

/// Upper triangle of `Σ_rows yᵀy` added into `g` (`l x l`).
#[inline(always)]
fn gram_gen<const FMA: bool>(y: &[f64], l: usize, g: &mut [f64]) {
    for row in y.chunks_exact(l) {
        for a in 0..l {
            axpy::<FMA>(row[a], &row[a..], &mut g[a * l + a..(a + 1) * l]);
        }
    }
}

const MR: usize = 4;
const NR: usize = 8;

/// Rows `i0 .. i0 + c.len() / d` of `C += Pᵀ P` (upper triangle only, `j >= i`), `P`
/// row-major `rows x d`.
#[inline(always)]
fn syrk_gen<const FMA: bool>(p: &[f64], rows: usize, d: usize, i0: usize, c: &mut [f64]) {
    let mr = c.len() / d;
    if mr == MR {
        let mut j = i0;
        while j + NR <= d {
            let mut acc = [[0.0f64; NR]; MR];
            for k in 0..rows {
                let pr = &p[k * d..(k + 1) * d];
                let a: &[f64; MR] = pr[i0..i0 + MR].try_into().unwrap_or(&[0.0; MR]);
                let b: &[f64; NR] = pr[j..j + NR].try_into().unwrap_or(&[0.0; NR]);
                for ii in 0..MR {
                    for jj in 0..NR {
                        acc[ii][jj] = fmadd::<FMA>(a[ii], b[jj], acc[ii][jj]);
                    }
                }
            }
            for ii in 0..MR {
                for jj in 0..NR {
                    c[ii * d + j + jj] += acc[ii][jj];
                }
            }
            j += NR;
        }
        for jt in j..d {
            for ii in 0..MR {
                let mut s = 0.0;
                for k in 0..rows {
                    s = fmadd::<FMA>(p[k * d + i0 + ii], p[k * d + jt], s);
                }
                c[ii * d + jt] += s;
            }
        }
    } else {
        for ii in 0..mr {
            let i = i0 + ii;
            for k in 0..rows {
                let pr = &p[k * d..(k + 1) * d];
                axpy::<FMA>(pr[i], &pr[i..], &mut c[ii * d + i..(ii + 1) * d]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn xq_fma(x: &Expr<'_>, r0: usize, q: &[f64], l: usize, out: &mut [f64]) {
    xq_gen::<true>(x, r0, q, l, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn xty_fma(x: &Expr<'_>, a: usize, b: usize, y: &[f64], l: usize, z: &mut [f64]) {
    xty_gen::<true>(x, a, b, y, l, z);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gram_fma(y: &[f64], l: usize, g: &mut [f64]) {
    gram_gen::<true>(y, l, g);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn syrk_fma(p: &[f64], rows: usize, d: usize, i0: usize, c: &mut [f64]) {
    syrk_gen::<true>(p, rows, d, i0, c);
}

// ---------------------------------------------------------------------------------------
// randomised solver

fn randomized_components(
    op: &Op<'_>,
    k: usize,
    oversamples: usize,
    n_iter: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let n = op.x.n_rows();
    let d = op.x.n_cols();
    let l = (k + oversamples).min(n.min(d)).max(k);
    let mut rng = Rng::new(seed);
    let mut q: Vec<f64> = (0..d * l).map(|_| gaussian(&mut rng)).collect();
    for _ in 0..n_iter {
        let mut y = op.mul(&q, l);
        orthonormalize_passes(&mut y, l, 1);
        q = op.mul_t(&y, l);
        orthonormalize_passes(&mut q, l, 1);
    }
    let mut y = op.mul(&q, l);
    orthonormalize(&mut y, l);
    // Bᵀ = Xcᵀ Q (d x l); B Bᵀ = (Bᵀ)ᵀ Bᵀ
    let bt = op.mul_t(&y, l);
    let g = gram(&bt, l);
    let (vals, vecs) = sym_eig_top(g, l, k);
    // right singular vectors: Bᵀ u / σ
    let mut vt = vec![0.0f64; d * k];
    let sig: Vec<f64> = vals.iter().map(|&v| v.max(0.0).sqrt()).collect();
    vt.par_chunks_mut(k)
        .zip(bt.par_chunks(l))
        .for_each(|(vrow, brow)| {
            for c in 0..k {
                let u = &vecs[c * l..(c + 1) * l];
                let s: f64 = brow.iter().zip(u).map(|(a, b)| a * b).sum();
                vrow[c] = if sig[c] > 0.0 { s / sig[c] } else { 0.0 };
            }
        });
    let sq = vals.iter().map(|&v| v.max(0.0)).collect();
    (vt, sq)
}

fn gaussian(rng: &mut Rng) -> f64 {
    // Box-Muller (one of the pair)
    let u1 = 1.0 - rng.uniform(); // (0, 1]
    let u2 = rng.uniform();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `YᵀY` (`l x l`, full) of a row-major `rows x l` matrix.
fn gram(y: &[f64], l: usize) -> Vec<f64> {
    let isa = Isa::detect();
    let rows = y.len() / l;
    let blocks = row_blocks(rows);
    let parts: Vec<Vec<f64>> = blocks
        .par_iter()
        .map(|&(a, b)| {
            let mut g = vec![0.0f64; l * l];
            isa.gram_rows(&y[a * l..b * l], l, &mut g);
            g
        })
        .collect();
    let mut g = sum_parts(parts, l * l);
    for a in 0..l {
        for b in 0..a {
            g[a * l + b] = g[b * l + a];
        }
    }
    g
}

/// Upper Cholesky factor `R` (`G = RᵀR`), or `None` on a non-positive pivot.
fn cholesky(g: &[f64], l: usize) -> Option<Vec<f64>> {
    let mut r = vec![0.0f64; l * l];
    for j in 0..l {
        let mut s = g[j * l + j];
        for t in 0..j {
            s -= r[t * l + j] * r[t * l + j];
        }
        if s.is_nan() || s <= 0.0 {
            return None;
        }
        let rjj = s.sqrt();
        r[j * l + j] = rjj;
        for c in j + 1..l {
            let mut s = g[j * l + c];
            for t in 0..j {
                s -= r[t * l + j] * r[t * l + c];
            }
            r[j * l + c] = s / rjj;
        }
    }
    Some(r)
}

/// Inverse of an upper-triangular matrix.
fn upper_inverse(r: &[f64], l: usize) -> Vec<f64> {
    let mut inv = vec![0.0f64; l * l];
    for c in 0..l {
        // solve R x = e_c (x upper: x[t] = 0 for t > c)
        inv[c * l + c] = 1.0 / r[c * l + c];
        for t in (0..c).rev() {
            let mut s = 0.0;
            for u in t + 1..=c {
                s += r[t * l + u] * inv[u * l + c];
            }
            inv[t * l + c] = -s / r[t * l + t];
        }
    }
    inv
}

/// Orthonormalises the columns of a row-major `rows x l` matrix in place (CholeskyQR2;
/// shifted CholeskyQR when the Gram matrix is numerically singular).
fn orthonormalize(y: &mut [f64], l: usize) {
    orthonormalize_passes(y, l, 2);
}

/// [`orthonormalize`] stopping after `want` successful CholeskyQR passes (one pass is
/// enough to keep the power iteration well conditioned, like scikit-learn's LU step).
fn orthonormalize_passes(y: &mut [f64], l: usize, want: usize) {
    let rows = y.len() / l;
    let mut good = 0;
    for _ in 0..4 {
        let mut g = gram(y, l);
        let r = match cholesky(&g, l) {
            Some(r) => {
                good += 1;
                r
            }
            None => {
                let tr: f64 = (0..l).map(|a| g[a * l + a]).sum();
                let mut shift = 11.0 * ((rows * l + l * (l + 1)) as f64) * f64::EPSILON * tr;
                if shift <= 0.0 || !shift.is_finite() {
                    shift = f64::MIN_POSITIVE;
                }
                let mut found = None;
                for _ in 0..8 {
                    for a in 0..l {
                        g[a * l + a] += shift;
                    }
                    if let Some(r) = cholesky(&g, l) {
                        found = Some(r);
                        break;
                    }
                    shift *= 100.0;
                }
                match found {
                    Some(r) => r,
                    None => return,
                }
            }
        };
        let inv = upper_inverse(&r, l);
        y.par_chunks_mut(l)
            .for_each_init(Vec::new, |src: &mut Vec<f64>, row| {
                src.clear();
                src.extend_from_slice(row);
                row.fill(0.0);
                for a in 0..l {
                    let s = src[a];
                    for (o, &v) in row[a..].iter_mut().zip(&inv[a * l + a..(a + 1) * l]) {
                        *o += s * v;
                    }
                }
            });
        if good >= want {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// exact solver

fn exact_components(op: &Op<'_>, k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = op.x.n_rows();
    let d = op.x.n_cols();
    let isa = Isa::detect();
    let chunk = (4 << 20) / (8 * d).max(1);
    let chunk = chunk.clamp(32, 512).min(n);
    let mut c = vec![0.0f64; d * d];
    let mut p = vec![0.0f64; chunk * d];
    let mut r0 = 0;
    while r0 < n {
        let rows = chunk.min(n - r0);
        let pm = &mut p[..rows * d];
        pm.par_chunks_mut(d).enumerate().for_each(|(t, prow)| {
            match op.mean {
                Some(mu) => {
                    for (o, &m) in prow.iter_mut().zip(mu) {
                        *o = -m;
                    }
                }
                None => prow.fill(0.0),
            }
            op.x.for_row(r0 + t, |j, v| prow[j] += v as f64);
        });
        let pm = &p[..rows * d];
        c.par_chunks_mut(MR * d)
            .enumerate()
            .for_each(|(b, cb)| isa.syrk(pm, rows, d, b * MR, cb));
        r0 += rows;
    }
    let denom = if op.mean.is_some() {
        (n - 1) as f64
    } else {
        1.0
    };
    for i in 0..d {
        for j in i..d {
            let v = c[i * d + j] / denom;
            c[i * d + j] = v;
            c[j * d + i] = v;
        }
    }
    let (vals, vecs) = sym_eig_top(c, d, k);
    let mut vt = vec![0.0f64; d * k];
    for cc in 0..k {
        for j in 0..d {
            vt[j * k + cc] = vecs[cc * d + j];
        }
    }
    let sq = vals.iter().map(|&v| v.max(0.0) * denom).collect();
    Ok((vt, sq))
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for t in 0..8 {
            acc[t] += x[t] * y[t];
        }
    }
    let mut s: f64 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// The `k` largest eigenvalues (descending) and their unit eigenvectors (row-major
/// `k x n`) of the symmetric `n x n` matrix `a` (full storage; consumed).
pub(crate) fn sym_eig_top(mut a: Vec<f64>, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let k = k.min(n);
    // Householder tridiagonalisation: A = Q T Qᵀ, Q = H_0 ⋯ H_{n-3}
    let mut diag = vec![0.0f64; n];
    let mut off = vec![0.0f64; n.saturating_sub(1)];
    let mut refl: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n.saturating_sub(2));
    for kk in 0..n.saturating_sub(2) {
        diag[kk] = a[kk * n + kk];
        let m = n - kk - 1;
        let x: Vec<f64> = a[kk * n + kk + 1..(kk + 1) * n].to_vec();
        let norm = dot(&x, &x).sqrt();
        if norm == 0.0 {
            off[kk] = 0.0;
            refl.push((vec![0.0; m], 0.0));
            continue;
        }
        let alpha = if x[0] > 0.0 { -norm } else { norm };
        let mut v = x;
        v[0] -= alpha;
        let vv = dot(&v, &v);
        let tau = 2.0 / vv;
        off[kk] = alpha;
        let s = kk + 1;
        // p = tau A22 v
        let mut p = vec![0.0f64; m];
        p.par_iter_mut().enumerate().for_each(|(i, pi)| {
            let row = &a[(s + i) * n + s..(s + i + 1) * n];
            *pi = tau * dot(row, &v);
        });
        let kf = 0.5 * tau * dot(&p, &v);
        let w: Vec<f64> = p.iter().zip(&v).map(|(pi, vi)| pi - kf * vi).collect();
        a[s * n..]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(i, row)| {
                let r = &mut row[s..];
                let (vi, wi) = (v[i], w[i]);
                for ((o, &wj), &vj) in r.iter_mut().zip(&w).zip(&v) {
                    *o -= vi * wj + wi * vj;
                }
            });
        refl.push((v, tau));
    }
    if n >= 2 {
        diag[n - 2] = a[(n - 2) * n + n - 2];
        diag[n - 1] = a[(n - 1) * n + n - 1];
        off[n - 2] = a[(n - 1) * n + n - 2];
    } else {
        diag[0] = a[0];
    }
    drop(a);

    // eigenvalues by bisection, largest first
    let tnorm = (0..n)
        .map(|i| {
            diag[i].abs()
                + if i > 0 { off[i - 1].abs() } else { 0.0 }
                + if i + 1 < n { off[i].abs() } else { 0.0 }
        })
        .fold(0.0f64, f64::max);
    let vals: Vec<f64> = (0..k)
        .into_par_iter()
        .map(|j| bisect(&diag, &off, n - 1 - j, tnorm))
        .collect();

    // eigenvectors of T by inverse iteration (orthogonalised within clusters)
    let mut tv: Vec<Vec<f64>> = Vec::with_capacity(k);
    let cluster_tol = 1e-3 * tnorm.max(f64::MIN_POSITIVE);
    let mut cluster_start = 0;
    for j in 0..k {
        if j > 0 && (vals[j - 1] - vals[j]).abs() > cluster_tol {
            cluster_start = j;
        }
        let v = inverse_iteration(&diag, &off, vals[j], tnorm, j as u64, &tv[cluster_start..j]);
        tv.push(v);
    }

    // back-transformation: z = H_0 ⋯ H_{n-3} y
    let mut vecs = vec![0.0f64; k * n];
    vecs.par_chunks_mut(n)
        .zip(tv.par_iter())
        .for_each(|(z, y)| {
            z.copy_from_slice(y);
            for (kk, (v, tau)) in refl.iter().enumerate().rev() {
                if *tau == 0.0 {
                    continue;
                }
                let seg = &mut z[kk + 1..];
                let s = tau * dot(v, seg);
                for (o, &vi) in seg.iter_mut().zip(v) {
                    *o -= s * vi;
                }
            }
        });
    (vals, vecs)
}

/// Number of eigenvalues of the tridiagonal matrix below `x` (Sturm sequence).
fn sturm_count(diag: &[f64], off: &[f64], x: f64, pivmin: f64) -> usize {
    let mut count = 0;
    let mut q = diag[0] - x;
    if q.abs() < pivmin {
        q = -pivmin;
    }
    if q < 0.0 {
        count += 1;
    }
    for i in 1..diag.len() {
        q = diag[i] - x - off[i - 1] * off[i - 1] / q;
        if q.abs() < pivmin {
            q = -pivmin;
        }
        if q < 0.0 {
            count += 1;
        }
    }
    count
}

/// The eigenvalue with ascending index `idx` by bisection.
fn bisect(diag: &[f64], off: &[f64], idx: usize, tnorm: f64) -> f64 {
    let pivmin = f64::MIN_POSITIVE.max(tnorm * tnorm * f64::MIN_POSITIVE);
    let mut lo = -tnorm - 1e-300;
    let mut hi = tnorm + 1e-300;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if hi - lo <= 2.0 * f64::EPSILON * (lo.abs().max(hi.abs())) {
            break;
        }
        if sturm_count(diag, off, mid, pivmin) > idx {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Unit eigenvector of the tridiagonal matrix for eigenvalue `lambda`, orthogonal to
/// `against` (the vectors of nearby eigenvalues computed before).
fn inverse_iteration(
    diag: &[f64],
    off: &[f64],
    lambda: f64,
    tnorm: f64,
    salt: u64,
    against: &[Vec<f64>],
) -> Vec<f64> {
    let n = diag.len();
    if n == 1 {
        return vec![1.0];
    }
    let tiny = (f64::EPSILON * tnorm).max(f64::MIN_POSITIVE);
    // LU with partial pivoting of T - λI: U has diagonal u0, super-diagonals u1, u2
    let mut u0: Vec<f64> = diag.iter().map(|v| v - lambda).collect();
    let mut u1: Vec<f64> = off.to_vec();
    u1.push(0.0);
    let mut u2 = vec![0.0f64; n];
    let mut mult = vec![0.0f64; n];
    let mut swap = vec![false; n];
    for i in 0..n - 1 {
        let sub = off[i];
        if u0[i].abs() >= sub.abs() {
            if u0[i] == 0.0 {
                u0[i] = tiny;
            }
            let m = sub / u0[i];
            mult[i] = m;
            u0[i + 1] -= m * u1[i];
        } else {
            // swap rows i and i + 1
            let m = u0[i] / sub;
            mult[i] = m;
            swap[i] = true;
            let (d_i, s_i, d_n, s_n) = (u0[i], u1[i], u0[i + 1], u1[i + 1]);
            let _ = d_i;
            u0[i] = sub;
            u1[i] = d_n;
            u2[i] = s_n;
            u0[i + 1] = s_i - m * d_n;
            u1[i + 1] = -m * s_n;
        }
    }
    if u0[n - 1] == 0.0 {
        u0[n - 1] = tiny;
    }
    let mut rng = Rng::new(0x5EED_0000 ^ salt);
    let mut x: Vec<f64> = (0..n).map(|_| rng.uniform() - 0.5).collect();
    for _ in 0..4 {
        // forward: apply the row operations to the right-hand side
        for i in 0..n - 1 {
            if swap[i] {
                x.swap(i, i + 1);
            }
            x[i + 1] -= mult[i] * x[i];
        }
        // back substitution
        for i in (0..n).rev() {
            let mut s = x[i];
            if i + 1 < n {
                s -= u1[i] * x[i + 1];
            }
            if i + 2 < n {
                s -= u2[i] * x[i + 2];
            }
            x[i] = s / u0[i];
        }
        for o in against {
            let p = dot(o, &x);
            for (xi, oi) in x.iter_mut().zip(o) {
                *xi -= p * oi;
            }
        }
        let nrm = dot(&x, &x).sqrt();
        if nrm == 0.0 || !nrm.is_finite() {
            x = (0..n).map(|_| rng.uniform() - 0.5).collect();
            continue;
        }
        for xi in &mut x {
            *xi /= nrm;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eig_small_matches_known() {
        // symmetric 4x4 with known spectrum via a random orthogonal conjugation of diag
        let n = 6;
        let mut rng = Rng::new(3);
        let mut m: Vec<f64> = (0..n * n).map(|_| gaussian(&mut rng)).collect();
        orthonormalize(&mut m, n);
        let ev = [9.0, 5.0, 5.0 - 1e-9, 2.0, -1.0, 0.5];
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|t| m[i * n + t] * ev[t] * m[j * n + t]).sum();
            }
        }
        let (vals, vecs) = sym_eig_top(a.clone(), n, n);
        let mut sorted = ev.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (v, e) in vals.iter().zip(&sorted) {
            assert!((v - e).abs() < 1e-10, "{v} vs {e}");
        }
        for c in 0..n {
            let v = &vecs[c * n..(c + 1) * n];
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * v[j]).sum();
                assert!((av - vals[c] * v[i]).abs() < 1e-8);
            }
            for c2 in 0..c {
                assert!(dot(v, &vecs[c2 * n..(c2 + 1) * n]).abs() < 1e-8);
            }
        }
    }
}
