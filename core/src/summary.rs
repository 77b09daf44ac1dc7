//! A description of what an AnnData holds, for people: the `cellforge inspect` output and the
//! app's data panel. Mirrors anndata's repr and adds what matters before modelling: how X is
//! stored, its value range, and whether it looks like raw counts.

use std::fmt::Write as _;

use crate::anndata::{AnnData, ArrayData, Element, Mapping};
use crate::fmt::{bytes, thousands};

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

fn data_stats(data: &ArrayData) -> (Option<(f64, f64)>, usize, usize, bool, usize) {
    let range = data.finite_range();
    let (nan, inf) = data.count_non_finite();
    let counts = data.looks_like_counts();
    let nonzero = (0..data.len())
        .filter(|&i| data.get_f64(i).is_some_and(|x| x != 0.0))
        .count();
    (range, nan, inf, counts, nonzero)
}

fn summarize_matrix(el: &Element) -> Option<MatrixSummary> {
    match el {
        Element::Sparse(s) => {
            let (range, nan, inf, counts, _) = data_stats(&s.data);
            let cells = (s.shape[0] as f64) * (s.shape[1] as f64);
            // Implicit zeros count toward the range.
            let (min, max) = match range {
                Some((lo, hi)) if s.nnz() as f64 >= cells => (lo, hi),
                Some((lo, hi)) => (lo.min(0.0), hi.max(0.0)),
                None => (0.0, 0.0),
            };
            Some(MatrixSummary {
                encoding: el.encoding_type().to_string(),
                dtype: s.data.dtype().to_string(),
                shape: s.shape.to_vec(),
                stored: s.nnz(),
                density: if cells > 0.0 {
                    s.nnz() as f64 / cells
                } else {
                    0.0
                },
                min: Some(min),
                max: Some(max),
                nan,
                inf,
                looks_like_counts: counts,
            })
        }
        Element::Dense(d) => {
            let (range, nan, inf, counts, nonzero) = data_stats(&d.data);
            let n = d.data.len();
            Some(MatrixSummary {
                encoding: "array".into(),
                dtype: d.data.dtype().to_string(),
                shape: d.shape.clone(),
                stored: n,
                density: if n > 0 {
                    nonzero as f64 / n as f64
                } else {
                    0.0
                },
                min: range.map(|r| r.0),
                max: range.map(|r| r.1),
                nan,
                inf,
                looks_like_counts: counts,
            })
        }
        _ => None,
    }
}

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
