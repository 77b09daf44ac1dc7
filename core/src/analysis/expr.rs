//! Expression-matrix input shared by [`super::pca`], [`super::de`] and [`super::score`].
//!
//! An [`Expr`] is a cells x genes matrix of `f32`, either dense row-major ([`DenseMatrix`],
//! finite by construction) or compressed sparse row ([`CsrMatrix<f32>`], whose values are
//! checked for NaN/inf by [`Expr::validate`], which every public function of those modules
//! calls first). All reductions over it are accumulated in `f64`.

use rayon::prelude::*;

use super::{AnalysisError, CsrMatrix, DenseMatrix, Result};

/// A borrowed cells x genes expression matrix.
#[derive(Debug, Clone, Copy)]
pub enum Expr<'a> {
    /// Dense row-major matrix (rows = cells).
    Dense(DenseMatrix<'a>),
    /// Sparse CSR matrix (rows = cells); absent entries are zeros.
    Sparse(&'a CsrMatrix<f32>),
}

impl<'a> From<DenseMatrix<'a>> for Expr<'a> {
    fn from(m: DenseMatrix<'a>) -> Self {
        Expr::Dense(m)
    }
}

impl<'a> From<&'a CsrMatrix<f32>> for Expr<'a> {
    fn from(m: &'a CsrMatrix<f32>) -> Self {
        Expr::Sparse(m)
    }
}

impl<'a> Expr<'a> {
    /// Number of cells (rows).
    pub fn n_rows(&self) -> usize {
        match self {
            Expr::Dense(m) => m.n_rows(),
            Expr::Sparse(m) => m.n_rows,
        }
    }

    /// Number of genes (columns).
    pub fn n_cols(&self) -> usize {
        match self {
            Expr::Dense(m) => m.n_cols(),
            Expr::Sparse(m) => m.n_cols,
        }
    }

    /// Checks that the matrix is non-empty and, for sparse input, structurally valid
    /// ([`CsrMatrix::validate`]) with only finite stored values. Dense matrices are checked
    /// when they are built.
    pub fn validate(&self) -> Result<()> {
        match self {
            Expr::Dense(_) => Ok(()),
            Expr::Sparse(m) => {
                if m.n_rows == 0 {
                    return Err(AnalysisError::Empty("matrix has no rows"));
                }
                if m.n_cols == 0 {
                    return Err(AnalysisError::Empty("matrix has no columns"));
                }
                m.validate()?;
                if let Some(pos) = m.data.iter().position(|v| !v.is_finite()) {
                    let row = m.indptr.partition_point(|&p| p <= pos).saturating_sub(1);
                    return Err(AnalysisError::NonFinite {
                        row,
                        col: m.indices[pos] as usize,
                        value: m.data[pos],
                    });
                }
                Ok(())
            }
        }
    }

    /// Calls `f(col, value)` for the stored entries of row `i` (every column for dense
    /// input, the stored ones in increasing column order for sparse input).
    #[inline(always)]
    pub(crate) fn for_row(&self, i: usize, mut f: impl FnMut(usize, f32)) {
        match self {
            Expr::Dense(m) => {
                for (j, &v) in m.row(i).iter().enumerate() {
                    f(j, v);
                }
            }
            Expr::Sparse(m) => {
                let (idx, val) = m.row(i);
                for (&j, &v) in idx.iter().zip(val) {
                    f(j as usize, v);
                }
            }
        }
    }

    /// Column means and (ddof 0) variances in `f64` (two passes; zeros of sparse input
    /// counted analytically).
    pub(crate) fn col_mean_var(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.n_rows();
        let d = self.n_cols();
        let sums = self.col_reduce(|_, v| v);
        let mean: Vec<f64> = sums.iter().map(|s| s / n as f64).collect();
        let mut m2 = self.col_reduce(|j, v| {
            let t = v - mean[j];
            t * t
        });
        if let Expr::Sparse(m) = self {
            let mut nnz = vec![0usize; d];
            for &j in &m.indices {
                nnz[j as usize] += 1;
            }
            for j in 0..d {
                m2[j] += (n - nnz[j]) as f64 * mean[j] * mean[j];
            }
        }
        let var = m2.iter().map(|s| s / n as f64).collect();
        (mean, var)
    }

    /// `out[j] = sum over stored entries (i, j) of f(j, x_ij)`, in parallel over row blocks.
    pub(crate) fn col_reduce(&self, f: impl Fn(usize, f64) -> f64 + Sync) -> Vec<f64> {
        let d = self.n_cols();
        let blocks = row_blocks(self.n_rows());
        let parts: Vec<Vec<f64>> = blocks
            .par_iter()
            .map(|&(a, b)| {
                let mut acc = vec![0.0f64; d];
                for i in a..b {
                    self.for_row(i, |j, v| acc[j] += f(j, v as f64));
                }
                acc
            })
            .collect();
        sum_parts(parts, d)
    }
}

/// Splits `0..n` into about four contiguous blocks per rayon thread.
pub(crate) fn row_blocks(n: usize) -> Vec<(usize, usize)> {
    let t = rayon::current_num_threads().max(1) * 4;
    let size = n.div_ceil(t).max(256);
    (0..n)
        .step_by(size)
        .map(|a| (a, (a + size).min(n)))
        .collect()
}

/// Element-wise sum of equally long vectors (parallel over the elements).
pub(crate) fn sum_parts(mut parts: Vec<Vec<f64>>, len: usize) -> Vec<f64> {
    let Some(mut out) = parts.pop() else {
        return vec![0.0; len];
    };
    out.par_chunks_mut(4096).enumerate().for_each(|(c, o)| {
        let off = c * 4096;
        let len = o.len();
        for p in &parts {
            for (x, y) in o.iter_mut().zip(&p[off..off + len]) {
                *x += y;
            }
        }
    });
    out
}
