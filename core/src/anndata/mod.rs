//! The in-memory AnnData object: `X`, `obs`, `var`, `obsm`, `varm`, `obsp`, `varp`, `layers`,
//! `uns` and `raw`, with the same names and meaning as Python's anndata. Elements keep their
//! on-disk dtype so a file read and written back is equal to the original.

mod array;
mod frame;
mod subset;

pub use array::{ArrayData, DenseArray, Dtype, SparseFormat, SparseMatrix};
pub use frame::{Categorical, DataFrame, StringArray};

use std::collections::BTreeMap;

/// A mapping of names to elements (`uns`, `obsm`, `layers`, nested dicts ...). Sorted by name,
/// which is also the order h5py lists group members in.
pub type Mapping = BTreeMap<String, Element>;

/// Anything that can sit at a node of an h5ad file.
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    /// `array`: an n-dimensional numeric or boolean array (row-major).
    Dense(DenseArray),
    /// `csr_matrix` / `csc_matrix`.
    Sparse(SparseMatrix),
    /// `dataframe`.
    DataFrame(DataFrame),
    /// `dict`.
    Mapping(Mapping),
    /// `numeric-scalar`: stored as a 0-dimensional array to keep its dtype.
    Scalar(DenseArray),
    /// `string` (a scalar string).
    String(String),
    /// `string-array`.
    Strings(StringArray),
    /// `categorical`.
    Categorical(Categorical),
    /// `nullable-integer`: values plus a mask (true = missing).
    NullableInteger { values: ArrayData, mask: Vec<bool> },
    /// `nullable-boolean`.
    NullableBoolean { values: Vec<bool>, mask: Vec<bool> },
    /// `nullable-string-array`; `na_value` is the `na-value` attribute when present.
    NullableString {
        values: Vec<String>,
        mask: Vec<bool>,
        na_value: Option<String>,
    },
    /// `null` (Python's None).
    Null,
    /// An element cellforge does not interpret (awkward arrays, record arrays, ...). It is
    /// copied object for object from the file it was read from when written.
    Opaque(Opaque),
}

/// An element kept verbatim: written back by copying the HDF5 object from its source file.
#[derive(Debug, Clone)]
pub struct Opaque {
    /// What the element is, for summaries ("rec-array", "awkward-array", "compound dataset").
    pub kind: String,
    /// Length of the first axis when it has one (used for shape checks in obsm etc.).
    pub len: Option<usize>,
    /// Attributes to set on the copy (e.g. an encoding added to a legacy record array).
    pub add_attrs: Vec<(String, String)>,
    pub(crate) source: hdf5::Location,
}

impl PartialEq for Opaque {
    fn eq(&self, other: &Self) -> bool {
        // Two copies of the same element in different files compare equal by what they are;
        // their bytes are compared by the interop tests (Python reads both).
        self.kind == other.kind && self.len == other.len
    }
}

impl Element {
    /// A 64-bit integer `numeric-scalar`.
    pub fn scalar_i64(v: i64) -> Element {
        Element::Scalar(DenseArray::scalar(ArrayData::I64(vec![v])))
    }

    /// A 64-bit float `numeric-scalar`.
    pub fn scalar_f64(v: f64) -> Element {
        Element::Scalar(DenseArray::scalar(ArrayData::F64(vec![v])))
    }

    /// The `encoding-type` this element is written with.
    pub fn encoding_type(&self) -> &str {
        match self {
            Element::Dense(_) => "array",
            Element::Sparse(s) => match s.format {
                SparseFormat::Csr => "csr_matrix",
                SparseFormat::Csc => "csc_matrix",
            },
            Element::DataFrame(_) => "dataframe",
            Element::Mapping(_) => "dict",
            Element::Scalar(_) => "numeric-scalar",
            Element::String(_) => "string",
            Element::Strings(_) => "string-array",
            Element::Categorical(_) => "categorical",
            Element::NullableInteger { .. } => "nullable-integer",
            Element::NullableBoolean { .. } => "nullable-boolean",
            Element::NullableString { .. } => "nullable-string-array",
            Element::Null => "null",
            Element::Opaque(o) => &o.kind,
        }
    }

    /// The length along the first axis (`None` for scalars, dicts and null).
    pub fn len_first_axis(&self) -> Option<usize> {
        match self {
            Element::Dense(a) => a.shape.first().copied(),
            Element::Sparse(s) => Some(s.shape[0]),
            Element::DataFrame(d) => Some(d.n_rows()),
            Element::Strings(s) => s.shape.first().copied(),
            Element::Categorical(c) => Some(c.codes.len()),
            Element::NullableInteger { mask, .. }
            | Element::NullableBoolean { mask, .. }
            | Element::NullableString { mask, .. } => Some(mask.len()),
            Element::Opaque(o) => o.len,
            Element::Mapping(_) | Element::Scalar(_) | Element::String(_) | Element::Null => None,
        }
    }

    /// The shape of a matrix-like element (dense or sparse).
    pub fn shape(&self) -> Option<Vec<usize>> {
        match self {
            Element::Dense(a) => Some(a.shape.clone()),
            Element::Sparse(s) => Some(s.shape.to_vec()),
            Element::DataFrame(d) => Some(vec![d.n_rows(), d.columns.len()]),
            Element::Strings(s) => Some(s.shape.clone()),
            _ => self.len_first_axis().map(|n| vec![n]),
        }
    }

    /// A one-line human description: "csr_matrix float32 1,200 x 1,767 (245,676 stored)".
    pub fn describe(&self) -> String {
        match self {
            Element::Dense(a) => format!("array {} {}", a.data.dtype(), fmt_shape(&a.shape)),
            Element::Sparse(s) => format!(
                "{} {} {} ({} stored)",
                self.encoding_type(),
                s.data.dtype(),
                fmt_shape(&s.shape),
                crate::fmt::thousands(s.nnz() as u64)
            ),
            Element::DataFrame(d) => format!(
                "dataframe {} rows, {} columns",
                crate::fmt::thousands(d.n_rows() as u64),
                d.columns.len()
            ),
            Element::Mapping(m) => format!("dict with {} entries", m.len()),
            Element::Scalar(a) => format!("{} scalar", a.data.dtype()),
            Element::String(_) => "string".to_string(),
            Element::Strings(s) => format!("string array {}", fmt_shape(&s.shape)),
            Element::Categorical(c) => {
                format!("categorical with {} categories", c.n_categories())
            }
            Element::NullableInteger { values, .. } => {
                format!("nullable {}", values.dtype())
            }
            Element::NullableBoolean { .. } => "nullable bool".to_string(),
            Element::NullableString { .. } => "nullable string".to_string(),
            Element::Null => "null".to_string(),
            Element::Opaque(o) => format!("{} (kept as is)", o.kind),
        }
    }
}

pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    if shape.is_empty() {
        return "()".to_string();
    }
    shape
        .iter()
        .map(|&n| crate::fmt::thousands(n as u64))
        .collect::<Vec<_>>()
        .join(" x ")
}

/// The `raw` slot: an older, usually unfiltered, version of X with its own var.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub x: Element,
    pub var: DataFrame,
    pub varm: Mapping,
}

/// An annotated data matrix: cells (observations) x genes (variables).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnnData {
    /// The main matrix (`None` when the file has no X, which is valid).
    pub x: Option<Element>,
    pub obs: DataFrame,
    pub var: DataFrame,
    pub obsm: Mapping,
    pub varm: Mapping,
    pub obsp: Mapping,
    pub varp: Mapping,
    pub layers: Mapping,
    pub uns: Mapping,
    pub raw: Option<Raw>,
}

impl AnnData {
    /// Records what a cellforge step did under `uns["cellforge"][key]`, keeping the other
    /// steps' records (a non-dict `uns["cellforge"]` is replaced).
    pub fn record_provenance(&mut self, key: &str, record: Mapping) {
        let mut root = match self.uns.remove("cellforge") {
            Some(Element::Mapping(m)) => m,
            _ => Mapping::new(),
        };
        root.insert(key.to_string(), Element::Mapping(record));
        self.uns.insert("cellforge".into(), Element::Mapping(root));
    }

    /// An AnnData with the given obs and var names and nothing else.
    pub fn new(obs_names: Vec<String>, var_names: Vec<String>) -> Self {
        Self {
            obs: DataFrame::with_index(obs_names),
            var: DataFrame::with_index(var_names),
            ..Self::default()
        }
    }

    pub fn n_obs(&self) -> usize {
        self.obs.n_rows()
    }

    pub fn n_vars(&self) -> usize {
        self.var.n_rows()
    }

    pub fn obs_names(&self) -> &[String] {
        &self.obs.index
    }

    pub fn var_names(&self) -> &[String] {
        &self.var.index
    }
}
