//! Backed mode: open an h5ad file, load obs and var, and read X in chunks of rows without ever
//! loading the whole matrix, so a dataset larger than memory can be processed chunk by chunk.
//! CSR reads just the chunk's slice; CSC streams the column-major arrays in bounded blocks and
//! keeps the entries that fall in the requested rows; dense X reads a row hyperslab.

use std::ops::Range;
use std::path::Path;

use hdf5::{Dataset, Group, LocationType};

use super::direct::DirectLayout;
use super::error::{H5Context, H5adError, Result};
use super::h5::{self, Kind};
use crate::anndata::{ArrayData, DataFrame, DenseArray, Dtype, SparseFormat, SparseMatrix};

/// How many stored values a CSC scan reads at once (bounds the scan's memory).
const CSC_SCAN_BLOCK: usize = 1 << 20;

/// A block of rows of X.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChunk {
    /// Rows as a CSR matrix (from CSR or CSC X).
    Sparse(SparseMatrix),
    /// Rows of a dense X.
    Dense(DenseArray),
}

impl RowChunk {
    pub fn n_rows(&self) -> usize {
        match self {
            RowChunk::Sparse(s) => s.shape[0],
            RowChunk::Dense(d) => d.shape[0],
        }
    }

    /// The chunk as a CSR matrix (dense chunks keep non-zeros only).
    pub fn into_csr(self) -> SparseMatrix {
        match self {
            RowChunk::Sparse(s) => s,
            RowChunk::Dense(d) => {
                SparseMatrix::from_dense(&d, SparseFormat::Csr).unwrap_or(SparseMatrix {
                    format: SparseFormat::Csr,
                    shape: [0, 0],
                    data: ArrayData::F32(Vec::new()),
                    indices: Vec::new(),
                    indptr: vec![0],
                })
            }
        }
    }
}

enum Layout {
    Sparse {
        format: SparseFormat,
        data: Dataset,
        data_raw: Option<DirectLayout>,
        indices: Dataset,
        indices_raw: Option<DirectLayout>,
        indices_dtype: Dtype,
        indptr: Vec<u64>,
    },
    Dense(Dataset),
}

/// An h5ad file opened read-only with X left on disk.
pub struct BackedH5ad {
    file: hdf5::File,
    pub obs: DataFrame,
    pub var: DataFrame,
    shape: [usize; 2],
    dtype: Dtype,
    layout: Option<Layout>,
    element: String,
}

impl std::fmt::Debug for BackedH5ad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackedH5ad")
            .field("file", &self.file.filename())
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl BackedH5ad {
    /// Opens `path`, reads obs and var, and prepares chunked access to X.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_matrix(path, "X")
    }

    /// Like [`open`](Self::open) for another matrix: `"X"`, `"layers/counts"`, `"raw/X"`.
    pub fn open_matrix(path: &Path, matrix: &str) -> Result<Self> {
        let file = super::open_read_only(path)?;
        let (obs, var) = super::read::read_obs_var(&file)?;
        Self::with_frames(file, obs, var, matrix)
    }

    /// Backed access to `matrix` of an open file whose obs and var are already read.
    pub(crate) fn with_frames(
        file: hdf5::File,
        obs: DataFrame,
        var: DataFrame,
        matrix: &str,
    ) -> Result<Self> {
        let element = format!("/{matrix}");
        let root: &Group = &file;
        let mut backed = Self {
            shape: [obs.n_rows(), var.n_rows()],
            obs,
            var,
            dtype: Dtype::F32,
            layout: None,
            element: element.clone(),
            file: file.clone(),
        };
        if !root.link_exists(matrix) {
            if matrix == "X" {
                return Ok(backed);
            }
            return Err(H5adError::Missing {
                element,
                hint: String::new(),
            });
        }
        match root.loc_type_by_name(matrix).at(&element)? {
            LocationType::Dataset => {
                let ds = root.dataset(matrix).at(&element)?;
                if let Some(kind) = h5::attr_string(&ds, "encoding-type", &element)? {
                    let version =
                        h5::attr_string(&ds, "encoding-version", &element)?.unwrap_or_default();
                    if kind != "array" {
                        return Err(H5adError::UnknownEncoding {
                            element,
                            encoding_type: kind,
                            version,
                        });
                    }
                    super::read::check_version(&element, &kind, &version, &["0.2.0"])?;
                }
                let shape = ds.shape();
                let Kind::Numeric(d) = h5::container_kind(&ds, &element)? else {
                    return Err(H5adError::invalid(&element, "X must hold numbers"));
                };
                if shape.len() != 2 {
                    return Err(H5adError::shape(&element, "a dense matrix must be 2-D"));
                }
                backed.dtype = d;
                backed.shape = [shape[0], shape[1]];
                backed.layout = Some(Layout::Dense(ds));
            }
            LocationType::Group => {
                let g = root.group(matrix).at(&element)?;
                let enc = h5::attr_string(&g, "encoding-type", &element)?;
                if let Some(kind) = &enc {
                    let version =
                        h5::attr_string(&g, "encoding-version", &element)?.unwrap_or_default();
                    super::read::check_version(&element, kind, &version, &["0.1.0"])?;
                }
                let enc = enc.or(h5::attr_string(&g, "h5sparse_format", &element)?);
                let format = match enc.as_deref() {
                    Some("csr_matrix" | "csr") => SparseFormat::Csr,
                    Some("csc_matrix" | "csc") => SparseFormat::Csc,
                    other => {
                        return Err(H5adError::UnknownEncoding {
                            element,
                            encoding_type: other.unwrap_or("none").to_string(),
                            version: String::new(),
                        });
                    }
                };
                let shape = h5::attr_shape(&g, "shape", &element)?
                    .or(h5::attr_shape(&g, "h5sparse_shape", &element)?)
                    .ok_or_else(|| H5adError::Missing {
                        element: format!("{element} (attribute shape)"),
                        hint: String::new(),
                    })?;
                let data = g.dataset("data").at(&format!("{element}/data"))?;
                let indices = g.dataset("indices").at(&format!("{element}/indices"))?;
                let Kind::Numeric(d) = h5::container_kind(&data, &element)? else {
                    return Err(H5adError::invalid(&element, "data must hold numbers"));
                };
                let indices_dtype = match h5::container_kind(&indices, &element)? {
                    Kind::Numeric(d) if d.is_integer() => d,
                    other => return Err(h5::dtype_error(&element, &other, "integer indices")),
                };
                let indptr_el = format!("{element}/indptr");
                let indptr = h5::read_index_u64(&g.dataset("indptr").at(&indptr_el)?, &indptr_el)?;
                let n_major = if format == SparseFormat::Csr {
                    shape[0]
                } else {
                    shape[1]
                };
                if indptr.len() != n_major + 1 {
                    return Err(H5adError::invalid(
                        &indptr_el,
                        format!(
                            "indptr has {} entries, expected {}",
                            indptr.len(),
                            n_major + 1
                        ),
                    ));
                }
                if indptr.windows(2).any(|w| w[1] < w[0])
                    || indptr.first() != Some(&0)
                    || indptr.last().copied() != Some(data.size() as u64)
                    || indices.size() != data.size()
                {
                    return Err(H5adError::invalid(
                        &indptr_el,
                        "indptr is not a valid offset array for data/indices",
                    ));
                }
                backed.dtype = d;
                backed.shape = shape;
                backed.layout = Some(Layout::Sparse {
                    format,
                    data_raw: DirectLayout::of(&data),
                    data,
                    indices_raw: DirectLayout::of(&indices),
                    indices,
                    indices_dtype,
                    indptr,
                });
            }
            other => {
                return Err(H5adError::invalid(
                    &element,
                    format!("is a {other:?}, not a matrix"),
                ));
            }
        }
        if backed.shape[0] != backed.obs.n_rows() {
            return Err(H5adError::shape(
                &backed.element,
                format!(
                    "has {} rows but obs has {} cells",
                    backed.shape[0],
                    backed.obs.n_rows()
                ),
            ));
        }
        Ok(backed)
    }

    /// Rows x columns of the matrix.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// The stored value dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// "csr", "csc", "dense", or "absent".
    pub fn layout_name(&self) -> &'static str {
        match &self.layout {
            Some(Layout::Sparse { format, .. }) => format.name(),
            Some(Layout::Dense(_)) => "dense",
            None => "absent",
        }
    }

    pub fn file(&self) -> &hdf5::File {
        &self.file
    }

    /// Reads rows `rows` (clamped to the matrix) of X.
    pub fn read_rows(&self, rows: Range<usize>) -> Result<RowChunk> {
        let el = &self.element;
        let r0 = rows.start.min(self.shape[0]);
        let r1 = rows.end.clamp(r0, self.shape[0]);
        let n_cols = self.shape[1];
        match &self.layout {
            None => Err(H5adError::Missing {
                element: el.clone(),
                hint: " (this file has no X)".into(),
            }),
            Some(Layout::Dense(ds)) => {
                let data = h5::read_numeric_rows(ds, self.dtype, r0..r1, el)?;
                Ok(RowChunk::Dense(DenseArray {
                    shape: vec![r1 - r0, n_cols],
                    data,
                }))
            }
            Some(Layout::Sparse {
                format: SparseFormat::Csr,
                data,
                data_raw,
                indices,
                indices_raw,
                indices_dtype,
                indptr,
            }) => {
                let (a, b) = (indptr[r0] as usize, indptr[r1] as usize);
                let values =
                    h5::read_dataset_numeric_range(data, data_raw.as_ref(), self.dtype, a..b, el)?;
                let idx = h5::to_u32_indices(
                    h5::read_dataset_numeric_range(
                        indices,
                        indices_raw.as_ref(),
                        *indices_dtype,
                        a..b,
                        el,
                    )?,
                    el,
                )?;
                let local_ptr = indptr[r0..=r1].iter().map(|&p| p - a as u64).collect();
                let m = SparseMatrix {
                    format: SparseFormat::Csr,
                    shape: [r1 - r0, n_cols],
                    data: values,
                    indices: idx,
                    indptr: local_ptr,
                };
                m.check_structure()
                    .map_err(|msg| H5adError::invalid(el, msg))?;
                Ok(RowChunk::Sparse(m))
            }
            Some(Layout::Sparse {
                format: SparseFormat::Csc,
                data,
                data_raw,
                indices,
                indices_raw,
                indices_dtype,
                indptr,
            }) => self
                .csc_rows(
                    (data, data_raw.as_ref()),
                    (indices, indices_raw.as_ref()),
                    *indices_dtype,
                    indptr,
                    r0..r1,
                )
                .map(RowChunk::Sparse),
        }
    }

    /// Gathers rows from a CSC matrix by scanning its stored values in bounded blocks.
    fn csc_rows(
        &self,
        (data, data_raw): (&Dataset, Option<&DirectLayout>),
        (indices, indices_raw): (&Dataset, Option<&DirectLayout>),
        indices_dtype: Dtype,
        indptr: &[u64],
        rows: Range<usize>,
    ) -> Result<SparseMatrix> {
        let el = &self.element;
        let n_rows = rows.end - rows.start;
        let nnz = indices.size();
        // (row within chunk, column, position in the block's data)
        let mut entries: Vec<(u32, u32)> = Vec::new();
        let mut values = ArrayData::with_capacity(self.dtype, 0);
        let mut col = 0usize;
        let mut start = 0usize;
        while start < nnz {
            let end = (start + CSC_SCAN_BLOCK).min(nnz);
            let idx = h5::to_u32_indices(
                h5::read_dataset_numeric_range(
                    indices,
                    indices_raw,
                    indices_dtype,
                    start..end,
                    el,
                )?,
                el,
            )?;
            let mut keep = Vec::new();
            for (k, &r) in idx.iter().enumerate() {
                let pos = (start + k) as u64;
                while col + 1 < indptr.len() && indptr[col + 1] <= pos {
                    col += 1;
                }
                let r = r as usize;
                if r >= self.shape[0] {
                    return Err(H5adError::invalid(
                        el,
                        format!("indices out of bounds: row {r} >= {}", self.shape[0]),
                    ));
                }
                if rows.contains(&r) {
                    entries.push(((r - rows.start) as u32, col as u32));
                    keep.push(k);
                }
            }
            if !keep.is_empty() {
                let block =
                    h5::read_dataset_numeric_range(data, data_raw, self.dtype, start..end, el)?;
                values.extend_from(&block.gather(&keep));
            }
            start = end;
        }
        // Counting sort by row; columns within a row stay ascending (scan order).
        let mut indptr_out = vec![0u64; n_rows + 1];
        for &(r, _) in &entries {
            indptr_out[r as usize + 1] += 1;
        }
        for i in 0..n_rows {
            indptr_out[i + 1] += indptr_out[i];
        }
        let mut next = indptr_out.clone();
        let mut order = vec![0usize; entries.len()];
        let mut cols = vec![0u32; entries.len()];
        for (k, &(r, c)) in entries.iter().enumerate() {
            let dst = next[r as usize] as usize;
            next[r as usize] += 1;
            order[dst] = k;
            cols[dst] = c;
        }
        Ok(SparseMatrix {
            format: SparseFormat::Csr,
            shape: [n_rows, self.shape[1]],
            data: values.gather(&order),
            indices: cols,
            indptr: indptr_out,
        })
    }

    /// Iterates over X in blocks of `chunk_rows` rows.
    pub fn chunks(
        &self,
        chunk_rows: usize,
    ) -> impl Iterator<Item = Result<(Range<usize>, RowChunk)>> + '_ {
        let step = chunk_rows.max(1);
        (0..self.shape[0]).step_by(step).map(move |r0| {
            let r1 = (r0 + step).min(self.shape[0]);
            self.read_rows(r0..r1).map(|c| (r0..r1, c))
        })
    }
}
