//! Row-chunk access to the matrix being preprocessed, whether it stays on disk (X of a backed
//! file) or is already in memory (a layer), as CSR chunks. The first pass over a backed file
//! can keep the chunks in memory, within a budget, so the later passes need not read the
//! file again; past the budget every pass streams from disk.

use crate::anndata::{ArrayData, Dtype, Element, SparseFormat, SparseMatrix};
use crate::io::BackedH5ad;

use super::PpError;

/// Stored values of a chunk: float32 kept as is, everything else as f64 (exact for every
/// dtype but 64-bit integers beyond 2^53).
#[derive(Clone, Debug)]
pub enum Vals {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A block of consecutive rows as CSR.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// Index of the chunk's first row in the matrix.
    pub first_row: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vals,
}

/// One row of a chunk.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    pub idx: &'a [u32],
    vals: RowVals<'a>,
}

#[derive(Clone, Copy)]
enum RowVals<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl<'a> Row<'a> {
    /// Calls `f(column, value)` for each entry; the loop is specialised per value type.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(u32, f64)) {
        match self.vals {
            RowVals::F32(v) => {
                for (&c, &x) in self.idx.iter().zip(v) {
                    f(c, x as f64);
                }
            }
            RowVals::F64(v) => {
                for (&c, &x) in self.idx.iter().zip(v) {
                    f(c, x);
                }
            }
        }
    }

    /// Sum of the row's values.
    pub fn sum(&self) -> f64 {
        match self.vals {
            RowVals::F32(v) => v.iter().map(|&x| x as f64).sum(),
            RowVals::F64(v) => v.iter().sum(),
        }
    }
}

impl Chunk {
    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Row `r` (chunk-relative).
    #[inline]
    pub fn row(&self, r: usize) -> Row<'_> {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        Row {
            idx: &self.indices[a..b],
            vals: match &self.values {
                Vals::F32(v) => RowVals::F32(&v[a..b]),
                Vals::F64(v) => RowVals::F64(&v[a..b]),
            },
        }
    }

    fn bytes(&self) -> usize {
        let v = match &self.values {
            Vals::F32(v) => v.len() * 4,
            Vals::F64(v) => v.len() * 8,
        };
        v + self.indices.len() * 4 + self.indptr.len() * 8
    }

    /// Takes a whole CSR matrix (a chunk read from disk) without copying its arrays.
    fn from_owned_csr(first_row: usize, m: SparseMatrix) -> Self {
        let values = match m.data {
            ArrayData::F32(v) => Vals::F32(v),
            ArrayData::F64(v) => Vals::F64(v),
            other => Vals::F64(other.to_f64_vec()),
        };
        Chunk {
            first_row,
            indptr: m.indptr.iter().map(|&p| p as usize).collect(),
            indices: m.indices,
            values,
        }
    }

    /// Rows `rows` of an in-memory CSR matrix.
    fn from_csr_rows(first_row: usize, m: &SparseMatrix, rows: std::ops::Range<usize>) -> Self {
        let a = m.indptr[rows.start] as usize;
        let b = m.indptr[rows.end] as usize;
        let values = match &m.data {
            ArrayData::F32(v) => Vals::F32(v[a..b].to_vec()),
            ArrayData::F64(v) => Vals::F64(v[a..b].to_vec()),
            other => Vals::F64(other.gather(&(a..b).collect::<Vec<_>>()).to_f64_vec()),
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
    Memory { csr: SparseMatrix, dense: bool },
}

impl<'a> Source<'a> {
    /// An in-memory matrix element (dense or sparse) as a source; a CSR matrix is taken
    /// as is, other layouts are converted once.
    pub fn from_element(el: Element, name: &str) -> Result<Source<'a>, PpError> {
        let dense = matches!(el, Element::Dense(_));
        let csr = match el {
            Element::Sparse(s) if s.format == SparseFormat::Csr => s,
            Element::Sparse(s) => s.to_format(SparseFormat::Csr),
            Element::Dense(d) if d.shape.len() == 2 => {
                SparseMatrix::from_dense(&d, SparseFormat::Csr)
                    .ok_or_else(|| PpError::Input(format!("{name} is not a numeric matrix")))?
            }
            other => {
                return Err(PpError::Input(format!(
                    "{name} is a {}, not a cells x genes matrix",
                    other.encoding_type()
                )));
            }
        };
        if csr.data.dtype() == Dtype::Bool {
            return Err(PpError::Input(format!(
                "{name} holds booleans, not expression"
            )));
        }
        Ok(Source::Memory { csr, dense })
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
            Source::Memory { csr, .. } => csr.data.dtype(),
        }
    }

    /// Whether the stored matrix is dense (scanpy's median target differs there).
    pub fn is_dense(&self) -> bool {
        match self {
            Source::Backed(b) => b.layout_name() == "dense",
            Source::Memory { dense, .. } => *dense,
        }
    }

    fn read(&self, r0: usize, r1: usize) -> Result<Chunk, PpError> {
        Ok(match self {
            Source::Backed(b) => Chunk::from_owned_csr(r0, b.read_rows(r0..r1)?.into_csr()),
            Source::Memory { csr, .. } => Chunk::from_csr_rows(r0, csr, r0..r1),
        })
    }
}

/// Repeated passes over a source: the first pass may fill an in-memory cache (backed
/// sources only, up to `budget` bytes) that later passes read instead of the file.
pub struct Passes<'s, 'a> {
    source: &'s Source<'a>,
    chunk_rows: usize,
    budget: usize,
    cache: Option<Vec<Chunk>>,
    cache_full: bool,
}

impl<'s, 'a> Passes<'s, 'a> {
    pub fn new(source: &'s Source<'a>, chunk_rows: usize, budget: usize) -> Self {
        Self {
            source,
            chunk_rows: chunk_rows.max(1),
            budget,
            cache: None,
            cache_full: false,
        }
    }

    /// Calls `f` on each chunk in order. While reading the next chunk from disk, the
    /// current one is processed (one chunk of read-ahead).
    pub fn for_each(
        &mut self,
        mut f: impl FnMut(&Chunk) -> Result<(), PpError>,
    ) -> Result<(), PpError> {
        if self.cache_full
            && let Some(cache) = &self.cache
        {
            for ch in cache {
                f(ch)?;
            }
            return Ok(());
        }
        let n = self.source.shape()[0];
        let step = self.chunk_rows;
        let fill = self.cache.is_none() && matches!(self.source, Source::Backed(_));
        let mut cache: Vec<Chunk> = Vec::new();
        let mut bytes = 0usize;
        let mut caching = fill && self.budget > 0;
        let starts: Vec<usize> = (0..n).step_by(step).collect();
        let source = self.source;
        std::thread::scope(|scope| -> Result<(), PpError> {
            let mut pending: Option<std::thread::ScopedJoinHandle<'_, Result<Chunk, PpError>>> =
                None;
            let spawn = |r0: usize| {
                let r1 = (r0 + step).min(n);
                scope.spawn(move || source.read(r0, r1))
            };
            if let Some(&r0) = starts.first() {
                pending = Some(spawn(r0));
            }
            for k in 0..starts.len() {
                let handle = pending.take();
                let chunk = match handle {
                    Some(h) => h
                        .join()
                        .map_err(|_| PpError::Input("a reader thread failed".into()))??,
                    None => break,
                };
                if let Some(&next) = starts.get(k + 1) {
                    pending = Some(spawn(next));
                }
                f(&chunk)?;
                if caching {
                    bytes += chunk.bytes();
                    if bytes > self.budget {
                        caching = false;
                        cache = Vec::new();
                    } else {
                        cache.push(chunk);
                    }
                }
            }
            Ok(())
        })?;
        if fill {
            self.cache_full = caching;
            self.cache = Some(if caching { cache } else { Vec::new() });
        }
        Ok(())
    }
}
