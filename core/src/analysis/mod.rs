//! Cell-embedding analysis: classification and clustering metrics, exact kNN graphs with
//! scanpy/UMAP connectivities, Leiden community detection and the scib integration metrics
//! that scGPT reports.
//!
//! Everything here is plain Rust (std + rayon), works on row-major `f32` matrices
//! ([`DenseMatrix`]) and compressed sparse row graphs ([`CsrMatrix`]), computes in `f64`, and
//! reports bad input as [`AnalysisError`] instead of panicking. Each module documents the
//! reference implementation it reproduces (scikit-learn 1.9, scanpy 1.11, umap-learn 0.5,
//! leidenalg 0.12, scib 1.1.7); `core/tests/analysis_parity.rs` checks them against goldens
//! written by `scripts/reference/make_analysis_goldens.py`.
//!
//! - [`metrics`]: accuracy, per-class/macro precision, recall and F1, confusion matrix, NMI,
//!   ARI, silhouette (score and per sample).
//! - [`knn`]: exact k nearest neighbours (euclidean, cosine) and scanpy's UMAP connectivities.
//! - [`nndescent`]: approximate kNN (NN-descent, RP-tree init) and scanpy's exact/approximate switch.
//! - [`umap`]: UMAP layout (umap-learn's simplicial_set_embedding), find_ab_params, trustworthiness.
//! - [`leiden`]: Leiden clustering with the RB-configuration (modularity) quality.
//! - [`integration`]: scib/scGPT batch-integration metrics (NMI, ARI, ASW, graph connectivity,
//!   AvgBIO, AvgBATCH).
//! - [`expr`]: the dense-or-sparse cells x genes expression input ([`expr::Expr`]) of:
//! - [`pca`]: PCA / truncated SVD as `sc.pp.pca` (randomised or exact solver).
//! - [`de`]: differential expression as `sc.tl.rank_genes_groups` (Wilcoxon, t-tests).
//! - [`score`]: gene-set scores as `sc.tl.score_genes`.

pub mod de;
pub mod expr;
pub mod integration;
pub mod knn;
pub mod leiden;
pub mod metrics;
pub mod nndescent;
pub mod pca;
pub mod score;
pub mod umap;

/// Errors of the analysis functions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    /// Two inputs that must have the same length do not.
    #[error("length mismatch: {what} has {got} entries, expected {expected}")]
    LengthMismatch {
        /// Which input.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// An input that must not be empty is.
    #[error("empty input: {0}")]
    Empty(&'static str),
    /// A matrix entry is NaN or infinite.
    #[error("non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        /// Row of the first offending entry.
        row: usize,
        /// Column of the first offending entry.
        col: usize,
        /// The value (NaN or ±inf).
        value: f32,
    },
    /// The number of neighbours is not in `1..n` (self counts as one of the `k`).
    #[error("k = {k} is invalid for {n} points (need 1 <= k < n)")]
    InvalidK {
        /// Requested number of neighbours.
        k: usize,
        /// Number of points.
        n: usize,
    },
    /// Silhouette needs `2 <= number of labels <= n - 1`.
    #[error(
        "silhouette needs 2 <= number of labels <= n_samples - 1, got {n_labels} labels for {n} samples"
    )]
    InvalidLabelCount {
        /// Distinct labels present.
        n_labels: usize,
        /// Number of samples.
        n: usize,
    },
    /// A parameter is out of range (message says which).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A sparse matrix is malformed (message says how).
    #[error("invalid sparse matrix: {0}")]
    InvalidSparse(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, AnalysisError>;

/// Borrowed row-major `n_rows x n_cols` matrix of `f32` whose entries are all finite.
#[derive(Debug, Clone, Copy)]
pub struct DenseMatrix<'a> {
    data: &'a [f32],
    n_rows: usize,
    n_cols: usize,
}

impl<'a> DenseMatrix<'a> {
    /// Wraps `data` (row-major, `n_rows * n_cols` values). Fails on a length mismatch, on an
    /// empty matrix (no rows or no columns) and on NaN/inf entries.
    pub fn new(data: &'a [f32], n_rows: usize, n_cols: usize) -> Result<Self> {
        if n_rows == 0 {
            return Err(AnalysisError::Empty("matrix has no rows"));
        }
        if n_cols == 0 {
            return Err(AnalysisError::Empty("matrix has no columns"));
        }
        let expected = n_rows.checked_mul(n_cols).ok_or_else(|| {
            AnalysisError::InvalidParameter(format!("{n_rows} x {n_cols} overflows usize"))
        })?;
        if data.len() != expected {
            return Err(AnalysisError::LengthMismatch {
                what: "matrix data",
                expected,
                got: data.len(),
            });
        }
        if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
            return Err(AnalysisError::NonFinite {
                row: pos / n_cols,
                col: pos % n_cols,
                value: data[pos],
            });
        }
        Ok(Self {
            data,
            n_rows,
            n_cols,
        })
    }

    /// Number of rows (points).
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of columns (dimensions).
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// The row-major data.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Row `i` (panics if `i >= n_rows`, like slice indexing).
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.n_cols..(i + 1) * self.n_cols]
    }
}

/// Compressed sparse row matrix (scipy's CSR layout): row `i` holds the column indices
/// `indices[indptr[i]..indptr[i + 1]]` (sorted, no duplicates) with values `data[..]` at the
/// same positions.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix<T> {
    /// Number of rows.
    pub n_rows: usize,
    /// Number of columns.
    pub n_cols: usize,
    /// Row pointers, `n_rows + 1` entries, non-decreasing, `indptr[0] == 0`.
    pub indptr: Vec<usize>,
    /// Column index of each stored value.
    pub indices: Vec<u32>,
    /// Stored values.
    pub data: Vec<T>,
}

impl<T: Copy> CsrMatrix<T> {
    /// Builds a CSR matrix and checks its structure ([`CsrMatrix::validate`]).
    pub fn new(
        n_rows: usize,
        n_cols: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        data: Vec<T>,
    ) -> Result<Self> {
        let m = Self {
            n_rows,
            n_cols,
            indptr,
            indices,
            data,
        };
        m.validate()?;
        Ok(m)
    }

    /// Checks `indptr` (length, monotone, bounds), index bounds, and that every row's column
    /// indices are strictly increasing.
    pub fn validate(&self) -> Result<()> {
        if self.indptr.len() != self.n_rows + 1 {
            return Err(AnalysisError::InvalidSparse(format!(
                "indptr has {} entries for {} rows",
                self.indptr.len(),
                self.n_rows
            )));
        }
        if self.indices.len() != self.data.len() {
            return Err(AnalysisError::InvalidSparse(format!(
                "{} indices but {} values",
                self.indices.len(),
                self.data.len()
            )));
        }
        if self.indptr.first() != Some(&0) || self.indptr.last() != Some(&self.indices.len()) {
            return Err(AnalysisError::InvalidSparse(
                "indptr must start at 0 and end at nnz".into(),
            ));
        }
        for i in 0..self.n_rows {
            let (a, b) = (self.indptr[i], self.indptr[i + 1]);
            if a > b {
                return Err(AnalysisError::InvalidSparse(format!(
                    "indptr decreases at row {i}"
                )));
            }
            let row = &self.indices[a..b];
            for (t, &j) in row.iter().enumerate() {
                if j as usize >= self.n_cols {
                    return Err(AnalysisError::InvalidSparse(format!(
                        "column index {j} out of range in row {i}"
                    )));
                }
                if t > 0 && row[t - 1] >= j {
                    return Err(AnalysisError::InvalidSparse(format!(
                        "column indices of row {i} are not strictly increasing"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Number of stored values.
    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Column indices and values of row `i` (panics if `i >= n_rows` or the matrix is
    /// malformed; see [`CsrMatrix::validate`]).
    pub fn row(&self, i: usize) -> (&[u32], &[T]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[a..b], &self.data[a..b])
    }

    /// The stored value at `(i, j)`, if any (`None` also for out-of-range positions and
    /// malformed matrices).
    pub fn get(&self, i: usize, j: usize) -> Option<T> {
        if i >= self.n_rows {
            return None;
        }
        let (a, b) = (*self.indptr.get(i)?, *self.indptr.get(i + 1)?);
        let idx = self.indices.get(a..b)?;
        let j = u32::try_from(j).ok()?;
        let p = idx.binary_search(&j).ok()?;
        self.data.get(a + p).copied()
    }
}

/// Maps arbitrary `u32` label values to dense codes `0..n_classes` in increasing order of
/// value (like `np.unique(..., return_inverse=True)`). Returns `(classes, codes)`.
pub(crate) fn encode_labels(labels: &[u32]) -> (Vec<u32>, Vec<usize>) {
    let mut classes = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let codes = labels
        .iter()
        .map(|l| classes.partition_point(|c| c < l))
        .collect();
    (classes, codes)
}
