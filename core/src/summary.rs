//! A description of what an AnnData holds, for people: the `cellforge inspect` output and the
//! app's data panel. Mirrors anndata's repr and adds what matters before modelling: how X is
//! stored, its value range, and whether it looks like raw counts.

use std::fmt::Write as _;

use std::path::Path;

use crate::anndata::{AnnData, ArrayData, Element, Mapping};
use crate::fmt::{bytes, thousands};
use crate::io::{BackedH5ad, H5adError, ReadWarning, RowChunk};

/// Facts about X.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixSummary {
    /// "csr_matrix", "csc_matrix" or "array".
    pub encoding: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Stored values (non-zeros for sparse, all values for dense).
    pub stored: usize,
    /// Fraction of entries that are stored (sparse) or non-zero (dense).
    pub density: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub nan: usize,
    pub inf: usize,
    /// Non-negative whole numbers only: X looks like raw counts.
    pub looks_like_counts: bool,
}

/// One obs/var column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSummary {
    pub name: String,
    pub kind: String,
    pub n_categories: Option<usize>,
}

/// Everything `inspect` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub n_obs: usize,
    pub n_vars: usize,
    pub x: Option<MatrixSummary>,
    pub obs: Vec<ColumnSummary>,
    pub var: Vec<ColumnSummary>,
    pub obsm: Vec<(String, String)>,
    pub varm: Vec<(String, String)>,
    pub obsp: Vec<(String, String)>,
    pub varp: Vec<(String, String)>,
    pub layers: Vec<(String, String)>,
    pub uns: Vec<String>,
    pub raw: Option<String>,
    pub file_size_bytes: Option<u64>,
}

/// Accumulates X statistics over one matrix or over its row chunks.
#[derive(Debug, Clone, Default)]
struct MatrixStats {
    lo: Option<f64>,
    hi: Option<f64>,
    nan: usize,
    inf: usize,
    all_counts: bool,
    nonzero: usize,
    seen: usize,
}

impl MatrixStats {
    fn new() -> Self {
        Self {
            all_counts: true,
            ..Self::default()
        }
    }

    /// Adds values; `dense` counts non-zeros (sparse layouts know their stored count).
    fn add(&mut self, data: &ArrayData, dense: bool) {
        if let Some((lo, hi)) = data.finite_range() {
            self.lo = Some(self.lo.map_or(lo, |x| x.min(lo)));
            self.hi = Some(self.hi.map_or(hi, |x| x.max(hi)));
        }
        let (nan, inf) = data.count_non_finite();
        self.nan += nan;
        self.inf += inf;
        self.all_counts &= data.looks_like_counts();
        if dense {
            self.nonzero += (0..data.len())
                .filter(|&i| data.get_f64(i).is_some_and(|x| x != 0.0))
                .count();
        }
        self.seen += data.len();
    }

    /// Builds the summary. For sparse layouts the implicit zeros count toward the range.
    fn finish(
        self,
        encoding: &str,
        dtype: &str,
        shape: [usize; 2],
        stored: usize,
    ) -> MatrixSummary {
        let cells = shape[0] as f64 * shape[1] as f64;
        let sparse = encoding != "array";
        let implicit_zeros = sparse && (stored as f64) < cells;
        let (min, max) = match (self.lo, self.hi) {
            (Some(lo), Some(hi)) if implicit_zeros => (Some(lo.min(0.0)), Some(hi.max(0.0))),
            (Some(lo), Some(hi)) => (Some(lo), Some(hi)),
            _ if implicit_zeros => (Some(0.0), Some(0.0)),
            _ => (None, None),
        };
        let density = if cells <= 0.0 {
            0.0
        } else if sparse {
            stored as f64 / cells
        } else {
            self.nonzero as f64 / cells
        };
        MatrixSummary {
            encoding: encoding.to_string(),
            dtype: dtype.to_string(),
            shape: shape.to_vec(),
            stored,
            density,
            min,
            max,
            nan: self.nan,
            inf: self.inf,
            looks_like_counts: self.all_counts && self.seen > 0,
        }
    }
}

fn summarize_matrix(el: &Element) -> Option<MatrixSummary> {
    let mut stats = MatrixStats::new();
    match el {
        Element::Sparse(s) => {
            stats.add(&s.data, false);
            Some(stats.finish(el.encoding_type(), s.data.dtype().name(), s.shape, s.nnz()))
        }
        Element::Dense(d) if d.shape.len() == 2 => {
            stats.add(&d.data, true);
            let shape = [d.shape[0], d.shape[1]];
            Some(stats.finish("array", d.data.dtype().name(), shape, d.data.len()))
        }
        _ => None,
    }
}

/// Streams X of `backed` in row chunks (bounded memory) and summarises it. Structural
/// problems found on the way (indices out of bounds ...) are errors.
fn summarize_backed(backed: &BackedH5ad) -> Result<Option<MatrixSummary>, H5adError> {
    let encoding = match backed.layout_name() {
        "absent" => return Ok(None),
        "csr" => "csr_matrix",
        "csc" => "csc_matrix",
        _ => "array",
    };
    let mut stats = MatrixStats::new();
    let mut stored = 0;
    for item in backed.chunks(SUMMARY_CHUNK_ROWS) {
        let (_, chunk) = item?;
        match chunk {
            RowChunk::Sparse(m) => {
                stored += m.nnz();
                stats.add(&m.data, false);
            }
            RowChunk::Dense(d) => {
                stored += d.data.len();
                stats.add(&d.data, true);
            }
        }
    }
    Ok(Some(stats.finish(
        encoding,
        backed.dtype().name(),
        backed.shape(),
        stored,
    )))
}

const SUMMARY_CHUNK_ROWS: usize = 8192;

fn columns(df: &crate::anndata::DataFrame) -> Vec<ColumnSummary> {
    df.columns
        .iter()
        .map(|(name, el)| ColumnSummary {
            name: name.clone(),
            kind: df.column_kind(name).unwrap_or_default(),
            n_categories: match el {
                Element::Categorical(c) => Some(c.n_categories()),
                _ => None,
            },
        })
        .collect()
}

fn entries(m: &Mapping) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (k.clone(), v.describe())).collect()
}

impl Summary {
    /// Summarises `a`; `file_size_bytes` is shown when given.
    pub fn of(a: &AnnData, file_size_bytes: Option<u64>) -> Self {
        Self {
            n_obs: a.n_obs(),
            n_vars: a.n_vars(),
            x: a.x.as_ref().and_then(summarize_matrix),
            obs: columns(&a.obs),
            var: columns(&a.var),
            obsm: entries(&a.obsm),
            varm: entries(&a.varm),
            obsp: entries(&a.obsp),
            varp: entries(&a.varp),
            layers: entries(&a.layers),
            uns: a.uns.keys().cloned().collect(),
            raw: a.raw.as_ref().map(|r| {
                format!(
                    "{} genes, X {}",
                    thousands(r.var.n_rows() as u64),
                    r.x.describe()
                )
            }),
            file_size_bytes,
        }
    }

    /// Summarises the file at `path` without ever holding X in memory: everything else is
    /// read, X is streamed in row chunks. Returns the warnings found on the way.
    pub fn of_file(path: &Path) -> Result<(Self, Vec<ReadWarning>), H5adError> {
        let (adata, backed, warnings) = crate::io::read_h5ad_backed(path)?;
        let size = std::fs::metadata(path).ok().map(|m| m.len());
        Self::of_backed(&adata, &backed, warnings, size)
    }

    /// Summarises a dataset opened with [`crate::io::read_h5ad_backed`], streaming its X;
    /// adds X's NaN/Inf warnings to `warnings`.
    pub fn of_backed(
        adata: &AnnData,
        backed: &BackedH5ad,
        mut warnings: Vec<ReadWarning>,
        file_size_bytes: Option<u64>,
    ) -> Result<(Self, Vec<ReadWarning>), H5adError> {
        let mut summary = Self::of(adata, file_size_bytes);
        summary.x = summarize_backed(backed)?;
        if let Some(x) = &summary.x {
            warnings.extend(crate::io::non_finite_warnings(x.nan, x.inf));
        }
        Ok((summary, warnings))
    }

    /// What X holds, in words a biologist can act on.
    pub fn x_verdict(&self) -> String {
        match &self.x {
            None => "no X in this file".into(),
            Some(x) if x.nan > 0 => format!(
                "X contains {} NaN value(s): fix the step that produced it before modelling",
                thousands(x.nan as u64)
            ),
            Some(x) if x.looks_like_counts => {
                "X looks like raw counts (non-negative whole numbers)".into()
            }
            Some(x) if x.min.is_some_and(|m| m < 0.0) => {
                "X has negative values: it looks scaled/centred, not counts or log-normalised"
                    .into()
            }
            Some(x) if x.max.is_some_and(|m| m < 30.0) => {
                "X looks log-normalised (non-integer, small values)".into()
            }
            Some(_) => "X holds non-integer values (normalised, e.g. CPM/RPKM, not logged)".into(),
        }
    }

    /// The multi-line text `cellforge inspect` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "AnnData object with n_obs x n_vars = {} x {}",
            thousands(self.n_obs as u64),
            thousands(self.n_vars as u64)
        );
        if let Some(size) = self.file_size_bytes {
            let _ = writeln!(s, "  file size: {}", bytes(size));
        }
        match &self.x {
            Some(x) => {
                let _ = writeln!(
                    s,
                    "  X: {} {} {}, {} stored values ({:.2}% {})",
                    x.encoding,
                    x.dtype,
                    crate::anndata::fmt_shape(&x.shape),
                    thousands(x.stored as u64),
                    x.density * 100.0,
                    if x.encoding == "array" {
                        "non-zero"
                    } else {
                        "dense"
                    }
                );
                if let (Some(lo), Some(hi)) = (x.min, x.max) {
                    let _ = writeln!(
                        s,
                        "     value range {} .. {}",
                        crate::fmt::number(lo),
                        crate::fmt::number(hi)
                    );
                }
                if x.inf > 0 {
                    let _ = writeln!(s, "     {} infinite value(s)", thousands(x.inf as u64));
                }
                let _ = writeln!(s, "     {}", self.x_verdict());
            }
            None => {
                let _ = writeln!(s, "  X: absent");
            }
        }
        for (label, cols) in [("obs", &self.obs), ("var", &self.var)] {
            if cols.is_empty() {
                continue;
            }
            let _ = writeln!(s, "  {label}: {}", cols.len());
            for c in cols {
                let _ = writeln!(s, "     {:<24} {}", c.name, c.kind);
            }
        }
        for (label, items) in [
            ("obsm", &self.obsm),
            ("varm", &self.varm),
            ("obsp", &self.obsp),
            ("varp", &self.varp),
            ("layers", &self.layers),
        ] {
            if items.is_empty() {
                continue;
            }
            let _ = writeln!(s, "  {label}:");
            for (k, v) in items {
                let _ = writeln!(s, "     {k:<24} {v}");
            }
        }
        if !self.uns.is_empty() {
            let _ = writeln!(s, "  uns: {}", self.uns.join(", "));
        }
        if let Some(r) = &self.raw {
            let _ = writeln!(s, "  raw: {r}");
        }
        s
    }
}
