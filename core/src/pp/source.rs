//! Row-chunk access to the matrix being preprocessed, whether it stays on disk (X of a backed
//! file) or is already in memory (a layer), as CSR chunks with f64 values.

use crate::anndata::{Dtype, Element, SparseFormat, SparseMatrix};
use crate::io::BackedH5ad;

use super::PpError;

/// Precision scanpy computes in for this input: integer and float32 data are processed as
/// float32 (scanpy casts integers to float32 before normalising), float64 stays float64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prec {
    F32,
    F64,
}

impl Prec {
    pub fn of(dtype: Dtype) -> Self {
        if dtype == Dtype::F64 {
            Prec::F64
        } else {
            Prec::F32
        }
    }

    /// Rounds to the working precision.
    #[inline]
    pub fn r(self, v: f64) -> f64 {
        match self {
            Prec::F32 => v as f32 as f64,
            Prec::F64 => v,
        }
    }
}

/// A block of consecutive rows as CSR with f64 values (exact for every stored dtype but
/// 64-bit integers beyond 2^53).
#[derive(Clone, Debug, Default)]
pub struct Chunk {
    /// Index of the chunk's first row in the matrix.
    pub first_row: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f64>,
}

impl Chunk {
    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Column indices and values of row `r` (chunk-relative).
    pub fn row(&self, r: usize) -> (&[u32], &[f64]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    fn from_csr(first_row: usize, m: &SparseMatrix, rows: std::ops::Range<usize>) -> Self {
        let a = m.indptr[rows.start] as usize;
        let b = m.indptr[rows.end] as usize;
        let values = match &m.data {
            crate::anndata::ArrayData::F64(v) => v[a..b].to_vec(),
            crate::anndata::ArrayData::F32(v) => v[a..b].iter().map(|&x| x as f64).collect(),
            other => other.gather(&(a..b).collect::<Vec<_>>()).to_f64_vec(),
        };
        Chunk {
            first_row,
            indptr: m.indptr[rows.start..=rows.end]
                .iter()
                .map(|&p| p as usize - a)
                .collect(),
            indices: m.indices[a..b].to_vec(),
            values,
        }
    }
}

/// Where the rows come from.
pub enum Source<'a> {
    Backed(&'a BackedH5ad),
    Memory {
        csr: SparseMatrix,
        dtype: Dtype,
        dense: bool,
    },
}

impl<'a> Source<'a> {
    /// An in-memory matrix element (dense or sparse) as a source.
    pub fn from_element(el: &Element, name: &str) -> Result<Source<'a>, PpError> {
        let csr = match el {
            Element::Sparse(s) => s.to_format(SparseFormat::Csr),
            Element::Dense(d) if d.shape.len() == 2 => {
                SparseMatrix::from_dense(d, SparseFormat::Csr)
                    .ok_or_else(|| PpError::Input(format!("{name} is not a numeric matrix")))?
            }
            other => {
                return Err(PpError::Input(format!(
                    "{name} is a {}, not a cells x genes matrix",
                    other.encoding_type()
                )));
            }
        };
        let dtype = csr.data.dtype();
        if dtype == Dtype::Bool {
            return Err(PpError::Input(format!(
                "{name} holds booleans, not expression"
            )));
        }
        let dense = matches!(el, Element::Dense(_));
        Ok(Source::Memory { csr, dtype, dense })
    }

    pub fn shape(&self) -> [usize; 2] {
        match self {
            Source::Backed(b) => b.shape(),
            Source::Memory { csr, .. } => csr.shape,
        }
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            Source::Backed(b) => b.dtype(),
            Source::Memory { dtype, .. } => *dtype,
        }
    }

    /// Whether the stored matrix is dense (scanpy's normalisation differs there, see
    /// [`super::normalize_totals_target`]).
    pub fn is_dense(&self) -> bool {
        match self {
            Source::Backed(b) => b.layout_name() == "dense",
            Source::Memory { dense, .. } => *dense,
        }
    }

    /// Calls `f` on each chunk of `chunk_rows` rows, in order.
    pub fn for_each_chunk(
        &self,
        chunk_rows: usize,
        mut f: impl FnMut(&Chunk) -> Result<(), PpError>,
    ) -> Result<(), PpError> {
        let n = self.shape()[0];
        let step = chunk_rows.max(1);
        for r0 in (0..n).step_by(step) {
            let r1 = (r0 + step).min(n);
            let chunk = match self {
                Source::Backed(b) => {
                    let csr = b.read_rows(r0..r1)?.into_csr();
                    Chunk::from_csr(r0, &csr, 0..csr.shape[0])
                }
                Source::Memory { csr, .. } => Chunk::from_csr(r0, csr, r0..r1),
            };
            f(&chunk)?;
        }
        Ok(())
    }
}
