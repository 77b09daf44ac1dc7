//! Reading h5ad files into [`AnnData`]: dispatch on `encoding-type`/`encoding-version`, plus the
//! legacy layouts older anndata releases wrote (0.7 categoricals by object reference, pre-0.7
//! record-array dataframes, `h5sparse_format` groups, `raw.X`/`raw.var`, `*_categories` in uns),
//! read the way Python's anndata reads them so a round trip compares equal.

use std::path::Path;

use hdf5::{Dataset, Group, LocationType};

use super::backed::BackedH5ad;
use super::error::{H5Context, H5adError, Result};
use super::h5::{self, Kind};
use super::validate;
use crate::anndata::{
    AnnData, ArrayData, Categorical, DataFrame, DenseArray, Dtype, Element, Mapping, Opaque, Raw,
    SparseFormat, SparseMatrix, StringArray,
};

/// A problem that does not stop the file from being read (NaN in X, duplicate names ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadWarning {
    pub element: String,
    pub message: String,
}

impl std::fmt::Display for ReadWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.element, self.message)
    }
}

/// Reads a whole `.h5ad` file into memory. The file is opened read-only.
pub fn read_h5ad(path: &Path) -> Result<AnnData> {
    read_h5ad_with_warnings(path).map(|(a, _)| a)
}

/// Like [`read_h5ad`], also returning the warnings found while validating.
pub fn read_h5ad_with_warnings(path: &Path) -> Result<(AnnData, Vec<ReadWarning>)> {
    let file = super::open_read_only(path)?;
    let adata = read_root(&file, true)?;
    let warnings = validate::validate(&adata)?;
    Ok((adata, warnings))
}

/// Reads everything but X into memory and opens X for chunked reads: what a view of a
/// dataset larger than memory needs. The returned AnnData has `x: None`.
pub fn read_h5ad_backed(path: &Path) -> Result<(AnnData, BackedH5ad, Vec<ReadWarning>)> {
    let file = super::open_read_only(path)?;
    let adata = read_root(&file, false)?;
    let warnings = validate::validate(&adata)?;
    let backed = BackedH5ad::with_frames(file, adata.obs.clone(), adata.var.clone(), "X")?;
    if backed.layout_name() != "absent" && backed.shape() != [adata.n_obs(), adata.n_vars()] {
        return Err(H5adError::shape(
            "/X",
            format!(
                "is {} but must be {} x {} (cells x genes)",
                crate::anndata::fmt_shape(&backed.shape()),
                adata.n_obs(),
                adata.n_vars()
            ),
        ));
    }
    Ok((adata, backed, warnings))
}

fn member_type(group: &Group, name: &str, element: &str) -> Result<LocationType> {
    group.loc_type_by_name(name).at(element)
}

fn has_member(group: &Group, name: &str) -> bool {
    group.link_exists(name)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Reads the whole AnnData; X only when `load_x`.
pub(crate) fn read_root(file: &hdf5::File, load_x: bool) -> Result<AnnData> {
    let root: &Group = file;
    if let Some(enc) = h5::attr_string(root, "encoding-type", "/")?
        && enc != "anndata"
    {
        {
            return Err(H5adError::UnknownEncoding {
                element: "/".into(),
                encoding_type: enc,
                version: h5::attr_string(root, "encoding-version", "/")?.unwrap_or_default(),
            });
        }
    }
    let (obs, var) = read_obs_var(file)?;
    let legacy_frames = member_type(root, "obs", "/obs")? == LocationType::Dataset;

    let mut adata = AnnData {
        obs,
        var,
        ..AnnData::default()
    };
    if load_x && has_member(root, "X") {
        adata.x = Some(read_element(root, "X", "/X")?);
    }
    for (slot, name) in [
        (&mut adata.obsm, "obsm"),
        (&mut adata.varm, "varm"),
        (&mut adata.obsp, "obsp"),
        (&mut adata.varp, "varp"),
        (&mut adata.layers, "layers"),
        (&mut adata.uns, "uns"),
    ] {
        if has_member(root, name) {
            *slot = read_mapping_like(root, name, &format!("/{name}"))?;
        }
    }
    if has_member(root, "raw") {
        let raw = root.group("raw").at("/raw")?;
        let x = if has_member(&raw, "X") {
            read_element(&raw, "X", "/raw/X")?
        } else {
            return Err(H5adError::Missing {
                element: "/raw/X".into(),
                hint: String::new(),
            });
        };
        let var = read_dataframe_any(&raw, "var", "/raw/var")?;
        let varm = if has_member(&raw, "varm") {
            read_mapping_like(&raw, "varm", "/raw/varm")?
        } else {
            Mapping::new()
        };
        adata.raw = Some(Raw { x, var, varm });
    } else if has_member(root, "raw.X") {
        let x = read_element(root, "raw.X", "/raw.X")?;
        let var = if has_member(root, "raw.var") {
            read_dataframe_any(root, "raw.var", "/raw.var")?
        } else {
            DataFrame::default()
        };
        let varm = if has_member(root, "raw.varm") {
            read_mapping_like(root, "raw.varm", "/raw.varm")?
        } else {
            Mapping::new()
        };
        adata.raw = Some(Raw { x, var, varm });
    }
    move_adjacency_matrices(&mut adata);
    if legacy_frames {
        categories_from_uns(&mut adata);
    }
    Ok(adata)
}

/// anndata moves `uns['neighbors']['distances'|'connectivities']` to `obsp` on read.
fn move_adjacency_matrices(adata: &mut AnnData) {
    let Some(Element::Mapping(neighbors)) = adata.uns.get_mut("neighbors") else {
        return;
    };
    for key in ["distances", "connectivities"] {
        let is_matrix = match neighbors.get(key) {
            Some(Element::Sparse(_)) => true,
            Some(Element::Dense(a)) => a.shape.len() == 2,
            _ => false,
        };
        if is_matrix && let Some(m) = neighbors.remove(key) {
            adata.obsp.insert(key.to_string(), m);
        }
    }
}

/// Pre-0.7 files kept categories of obs/var columns in `uns['<col>_categories']`.
fn categories_from_uns(adata: &mut AnnData) {
    let keys: Vec<String> = adata
        .uns
        .keys()
        .filter(|k| k.ends_with("_categories"))
        .cloned()
        .collect();
    for key in keys {
        let name = key.replace("_categories", "");
        let cats = match adata.uns.get(&key) {
            Some(Element::Strings(s)) => s.values.clone(),
            Some(Element::String(s)) => vec![s.clone()],
            _ => continue,
        };
        let mut used = false;
        for frame in [&mut adata.obs, &mut adata.var] {
            let Some(Element::Dense(col)) = frame.column(&name) else {
                continue;
            };
            if !col.data.dtype().is_integer() {
                continue;
            }
            let codes: Vec<f64> = col.data.to_f64_vec();
            if !codes.iter().all(|&c| c < cats.len() as f64) {
                continue;
            }
            let codes = codes
                .iter()
                .map(|&c| if c < 0.0 { -1 } else { c as i32 })
                .collect();
            frame.set_column(
                &name,
                Element::Categorical(Categorical {
                    codes,
                    categories: Box::new(Element::Strings(StringArray::from_vec(cats.clone()))),
                    ordered: false,
                }),
            );
            used = true;
        }
        if used {
            adata.uns.remove(&key);
        }
    }
}

/// Reads a group member that must be a mapping (obsm, uns, ...). Legacy record-array datasets
/// (pre-0.7 obsm/varm) become one entry per field, as anndata does.
fn read_mapping_like(parent: &Group, name: &str, element: &str) -> Result<Mapping> {
    match member_type(parent, name, element)? {
        LocationType::Group => {
            let g = parent.group(name).at(element)?;
            read_mapping(&g, element)
        }
        LocationType::Dataset => {
            let ds = parent.dataset(name).at(element)?;
            let (records, fields) = read_records(&ds, element)?;
            let mut out = Mapping::new();
            for (field, column) in fields.into_iter().zip(records) {
                out.insert(field, column);
            }
            Ok(out)
        }
        other => Err(H5adError::invalid(
            element,
            format!("expected a group, found {other:?}"),
        )),
    }
}

fn read_mapping(g: &Group, element: &str) -> Result<Mapping> {
    let mut out = Mapping::new();
    for name in g.member_names().at(element)? {
        let el = join(element, &name);
        out.insert(name.clone(), read_element(g, &name, &el)?);
    }
    Ok(out)
}

fn encoding(loc: &hdf5::Location, element: &str) -> Result<(Option<String>, String)> {
    Ok((
        h5::attr_string(loc, "encoding-type", element)?,
        h5::attr_string(loc, "encoding-version", element)?.unwrap_or_default(),
    ))
}

pub(crate) fn check_version(
    element: &str,
    kind: &str,
    version: &str,
    known: &[&str],
) -> Result<()> {
    if version.is_empty() || known.contains(&version) {
        Ok(())
    } else {
        Err(H5adError::UnknownEncoding {
            element: element.to_string(),
            encoding_type: kind.to_string(),
            version: version.to_string(),
        })
    }
}

/// Reads any encoded element.
pub(crate) fn read_element(parent: &Group, name: &str, element: &str) -> Result<Element> {
    match member_type(parent, name, element)? {
        LocationType::Group => {
            let g = parent.group(name).at(element)?;
            read_group_element(&g, element)
        }
        LocationType::Dataset => {
            let ds = parent.dataset(name).at(element)?;
            read_dataset_element(&ds, element)
        }
        other => Err(H5adError::invalid(
            element,
            format!("is a {other:?}, not data"),
        )),
    }
}

fn read_group_element(g: &Group, element: &str) -> Result<Element> {
    let (enc, version) = encoding(g, element)?;
    match enc.as_deref() {
        Some("dict") => {
            check_version(element, "dict", &version, &["0.1.0"])?;
            Ok(Element::Mapping(read_mapping(g, element)?))
        }
        Some(kind @ ("csr_matrix" | "csc_matrix")) => {
            check_version(element, kind, &version, &["0.1.0"])?;
            let format = if kind == "csr_matrix" {
                SparseFormat::Csr
            } else {
                SparseFormat::Csc
            };
            let shape = h5::attr_shape(g, "shape", element)?.ok_or_else(|| H5adError::Missing {
                element: format!("{element} (attribute shape)"),
                hint: String::new(),
            })?;
            read_sparse(g, format, shape, element).map(Element::Sparse)
        }
        Some("dataframe") => {
            check_version(element, "dataframe", &version, &["0.1.0", "0.2.0"])?;
            read_dataframe_group(g, element).map(Element::DataFrame)
        }
        Some("categorical") => {
            check_version(element, "categorical", &version, &["0.2.0"])?;
            read_categorical(g, element).map(Element::Categorical)
        }
        Some("nullable-integer") => {
            check_version(element, "nullable-integer", &version, &["0.1.0"])?;
            let (values, mask) = read_nullable_parts(g, element)?;
            match values {
                ArrayData::Bool(_) | ArrayData::F32(_) | ArrayData::F64(_) => {
                    Err(H5adError::Dtype {
                        element: format!("{element}/values"),
                        dtype: values.dtype().to_string(),
                        expected: "integers".into(),
                    })
                }
                values => Ok(Element::NullableInteger { values, mask }),
            }
        }
        Some("nullable-boolean") => {
            check_version(element, "nullable-boolean", &version, &["0.1.0"])?;
            let (values, mask) = read_nullable_parts(g, element)?;
            let values = match values {
                ArrayData::Bool(v) => v,
                other => other.to_f64_vec().iter().map(|&x| x != 0.0).collect(),
            };
            Ok(Element::NullableBoolean { values, mask })
        }
        Some("nullable-string-array") => {
            check_version(element, "nullable-string-array", &version, &["0.1.0"])?;
            let values_el = join(element, "values");
            let values_ds: Dataset = g.dataset("values").at(&values_el)?;
            let values = h5::read_strings(&values_ds, &values_el)?;
            let mask = read_mask(g, element)?;
            if mask.len() != values.len() {
                return Err(H5adError::shape(
                    element,
                    "values and mask differ in length",
                ));
            }
            let na_value = h5::attr_string(g, "na-value", element)?;
            Ok(Element::NullableString {
                values,
                mask,
                na_value,
            })
        }
        // raw (nested), anndata (nested), awkward-array and anything newer: kept verbatim.
        Some(other) => Ok(opaque(g, other, None)),
        None => {
            if h5::attr_exists(g, "h5sparse_format") {
                let fmt = h5::attr_string(g, "h5sparse_format", element)?.unwrap_or_default();
                let format = match fmt.as_str() {
                    "csr" => SparseFormat::Csr,
                    "csc" => SparseFormat::Csc,
                    other => {
                        return Err(H5adError::UnknownEncoding {
                            element: element.into(),
                            encoding_type: format!("h5sparse_format={other}"),
                            version: String::new(),
                        });
                    }
                };
                let shape = h5::attr_shape(g, "h5sparse_shape", element)?.ok_or_else(|| {
                    H5adError::Missing {
                        element: format!("{element} (attribute h5sparse_shape)"),
                        hint: String::new(),
                    }
                })?;
                read_sparse(g, format, shape, element).map(Element::Sparse)
            } else if h5::attr_exists(g, "_index") {
                read_dataframe_group(g, element).map(Element::DataFrame)
            } else {
                Ok(Element::Mapping(read_mapping(g, element)?))
            }
        }
    }
}

fn opaque(loc: &hdf5::Location, kind: &str, len: Option<usize>) -> Element {
    Element::Opaque(Opaque {
        kind: kind.to_string(),
        len,
        add_attrs: Vec::new(),
        source: loc.clone(),
    })
}

fn read_nullable_parts(g: &Group, element: &str) -> Result<(ArrayData, Vec<bool>)> {
    let values_el = join(element, "values");
    let ds = g.dataset("values").at(&values_el)?;
    let values = match h5::container_kind(&ds, &values_el)? {
        Kind::Numeric(d) => h5::read_numeric(&ds, d, &values_el)?,
        other => return Err(h5::dtype_error(&values_el, &other, "numbers")),
    };
    let mask = read_mask(g, element)?;
    if mask.len() != values.len() {
        return Err(H5adError::shape(
            element,
            "values and mask differ in length",
        ));
    }
    Ok((values, mask))
}

fn read_mask(g: &Group, element: &str) -> Result<Vec<bool>> {
    let mask_el = join(element, "mask");
    let ds = g.dataset("mask").at(&mask_el)?;
    Ok(match h5::container_kind(&ds, &mask_el)? {
        Kind::Numeric(d) => match h5::read_numeric(&ds, d, &mask_el)? {
            ArrayData::Bool(v) => v,
            other => other.to_f64_vec().iter().map(|&x| x != 0.0).collect(),
        },
        other => return Err(h5::dtype_error(&mask_el, &other, "booleans")),
    })
}

fn read_sparse(
    g: &Group,
    format: SparseFormat,
    shape: [usize; 2],
    element: &str,
) -> Result<SparseMatrix> {
    let data_el = join(element, "data");
    let data_ds = g.dataset("data").at(&data_el)?;
    let data = match h5::container_kind(&data_ds, &data_el)? {
        Kind::Numeric(d) => h5::read_dataset_numeric(&data_ds, d, &data_el)?,
        other => return Err(h5::dtype_error(&data_el, &other, "numbers")),
    };
    let indices_el = join(element, "indices");
    let indices_ds = g.dataset("indices").at(&indices_el)?;
    let indices = match h5::container_kind(&indices_ds, &indices_el)? {
        Kind::Numeric(d) if d.is_integer() => h5::to_u32_indices(
            h5::read_dataset_numeric(&indices_ds, d, &indices_el)?,
            &indices_el,
        )?,
        other => return Err(h5::dtype_error(&indices_el, &other, "integers")),
    };
    let indptr_el = join(element, "indptr");
    let indptr = h5::read_index_u64(&g.dataset("indptr").at(&indptr_el)?, &indptr_el)?;
    let m = SparseMatrix {
        format,
        shape,
        data,
        indices,
        indptr,
    };
    m.check_structure()
        .map_err(|msg| H5adError::invalid(element, msg))?;
    Ok(m)
}

fn read_dataset_element(ds: &Dataset, element: &str) -> Result<Element> {
    let (enc, version) = encoding(ds, element)?;
    let kind = h5::container_kind(ds, element)?;
    let shape = ds.shape();
    match enc.as_deref() {
        Some("array") => {
            check_version(element, "array", &version, &["0.2.0"])?;
            match kind {
                Kind::Numeric(d) => dense(ds, d, shape, element).map(Element::Dense),
                Kind::VarString { .. } | Kind::FixedString { .. } => {
                    let values = h5::read_strings(ds, element)?;
                    Ok(Element::Strings(StringArray { shape, values }))
                }
                other => Err(h5::dtype_error(element, &other, "a numeric array")),
            }
        }
        Some("string-array") => {
            check_version(element, "string-array", &version, &["0.2.0"])?;
            match kind {
                Kind::VarString { .. } | Kind::FixedString { .. } => {
                    let values = h5::read_strings(ds, element)?;
                    Ok(Element::Strings(StringArray { shape, values }))
                }
                other => Err(h5::dtype_error(element, &other, "strings (string-array)")),
            }
        }
        Some("numeric-scalar") => {
            check_version(element, "numeric-scalar", &version, &["0.2.0"])?;
            match kind {
                Kind::Numeric(d) => Ok(Element::Scalar(DenseArray::scalar(h5::read_numeric(
                    ds, d, element,
                )?))),
                other => Err(h5::dtype_error(element, &other, "a number")),
            }
        }
        Some("string") => {
            check_version(element, "string", &version, &["0.2.0"])?;
            let values = h5::read_strings(ds, element)?;
            Ok(Element::String(
                values.into_iter().next().unwrap_or_default(),
            ))
        }
        Some("null") => Ok(Element::Null),
        // rec-array and anything newer: kept verbatim.
        Some(other) => Ok(opaque(ds, other, shape.first().copied())),
        None => read_legacy_dataset(ds, kind, shape, element),
    }
}

fn dense(ds: &Dataset, dtype: Dtype, shape: Vec<usize>, element: &str) -> Result<DenseArray> {
    // h5py's Empty(): a null dataspace holds no values.
    if ds.space().is_ok_and(|s| s.is_null()) {
        return Ok(DenseArray {
            shape: vec![0],
            data: ArrayData::with_capacity(dtype, 0),
        });
    }
    let data = h5::read_dataset_numeric(ds, dtype, element)?;
    DenseArray::new(shape, data)
        .ok_or_else(|| H5adError::shape(element, "number of values does not match the shape"))
}

/// Datasets without encoding attributes, read as anndata's legacy `read_dataset` does.
fn read_legacy_dataset(
    ds: &Dataset,
    kind: Kind,
    shape: Vec<usize>,
    element: &str,
) -> Result<Element> {
    match kind {
        Kind::Numeric(d) => {
            let a = dense(ds, d, shape, element)?;
            if a.shape.is_empty() {
                Ok(Element::Scalar(a))
            } else {
                Ok(Element::Dense(a))
            }
        }
        Kind::VarString { .. } => {
            let values = h5::read_strings(ds, element)?;
            if shape.is_empty() {
                Ok(Element::String(
                    values.into_iter().next().unwrap_or_default(),
                ))
            } else {
                Ok(Element::Strings(StringArray { shape, values }))
            }
        }
        Kind::FixedString { .. } => {
            let values = h5::read_strings(ds, element)?;
            // Old writers stored scalar strings as one-element byte-string arrays.
            if shape.is_empty() || (shape.len() == 1 && values.len() == 1) {
                Ok(Element::String(
                    values.into_iter().next().unwrap_or_default(),
                ))
            } else {
                Ok(Element::Strings(StringArray { shape, values }))
            }
        }
        Kind::Compound(_) => {
            let mut el = opaque(ds, "rec-array", shape.first().copied());
            if let Element::Opaque(o) = &mut el {
                o.add_attrs = vec![
                    ("encoding-type".into(), "rec-array".into()),
                    ("encoding-version".into(), "0.2.0".into()),
                ];
            }
            Ok(el)
        }
        other => Err(h5::dtype_error(
            element,
            &other,
            "a numeric or string array",
        )),
    }
}

/// Reads `obs`/`var`, which may be a dataframe group or (pre-0.7) a record array.
fn read_dataframe_any(parent: &Group, name: &str, element: &str) -> Result<DataFrame> {
    match member_type(parent, name, element)? {
        LocationType::Group => {
            let g = parent.group(name).at(element)?;
            let (enc, version) = encoding(&g, element)?;
            match enc.as_deref() {
                None | Some("dataframe") => {
                    check_version(element, "dataframe", &version, &["0.1.0", "0.2.0"])?;
                    read_dataframe_group(&g, element)
                }
                Some(other) => Err(H5adError::UnknownEncoding {
                    element: element.into(),
                    encoding_type: other.into(),
                    version,
                }),
            }
        }
        LocationType::Dataset => {
            let ds = parent.dataset(name).at(element)?;
            read_record_dataframe(&ds, element)
        }
        other => Err(H5adError::invalid(
            element,
            format!("expected a dataframe, found {other:?}"),
        )),
    }
}

fn read_dataframe_group(g: &Group, element: &str) -> Result<DataFrame> {
    let index_name = h5::attr_string(g, "_index", element)?.ok_or_else(|| H5adError::Missing {
        element: format!("{element} (attribute _index)"),
        hint: " (a dataframe names its index column in the _index attribute)".into(),
    })?;
    let index_el = join(element, &index_name);
    if !has_member(g, &index_name) {
        return Err(H5adError::Missing {
            element: index_el,
            hint: " (the dataframe's index)".into(),
        });
    }
    let index = match read_element(g, &index_name, &index_el)? {
        Element::Strings(s) if s.shape.len() == 1 => s.values,
        Element::Dense(a) if a.shape.len() == 1 => (0..a.data.len())
            .map(|i| match &a.data {
                ArrayData::F32(v) => v[i].to_string(),
                ArrayData::F64(v) => v[i].to_string(),
                other => other
                    .get_f64(i)
                    .map(|x| (x as i64).to_string())
                    .unwrap_or_default(),
            })
            .collect(),
        other => {
            return Err(H5adError::invalid(
                &index_el,
                format!(
                    "the index must be a 1-D string array, found {}",
                    other.describe()
                ),
            ));
        }
    };
    let order = h5::attr_strings(g, "column-order", element)?.unwrap_or_default();
    let mut df = DataFrame {
        index_name,
        index,
        columns: Vec::with_capacity(order.len()),
    };
    for col in order {
        let el = join(element, &col);
        if !has_member(g, &col) {
            return Err(H5adError::Missing {
                element: el,
                hint: " (listed in column-order)".into(),
            });
        }
        let value = read_column(g, &col, &el)?;
        match value.len_first_axis() {
            Some(n) if n == df.n_rows() => {}
            n => {
                return Err(H5adError::shape(
                    &el,
                    format!(
                        "column has {} rows but the dataframe index has {}",
                        n.map(|n| n.to_string()).unwrap_or_else(|| "no".into()),
                        df.n_rows()
                    ),
                ));
            }
        }
        df.columns.push((col, value));
    }
    Ok(df)
}

/// A dataframe column; handles 0.7's categorical codes with a `categories` object reference.
fn read_column(g: &Group, name: &str, element: &str) -> Result<Element> {
    if member_type(g, name, element)? == LocationType::Dataset {
        let ds = g.dataset(name).at(element)?;
        if h5::attr_exists(&ds, "categories") && !h5::attr_exists(&ds, "encoding-type") {
            return read_legacy_categorical(&ds, element).map(Element::Categorical);
        }
    }
    read_element(g, name, element)
}

fn read_legacy_categorical(ds: &Dataset, element: &str) -> Result<Categorical> {
    let attr = ds.attr("categories").at(element)?;
    let reference: hdf5::ObjectReference1 = attr.read_scalar().at(element)?;
    let target = ds.dereference(&reference).at(element)?;
    let hdf5::ReferencedObject::Dataset(cats_ds) = target else {
        return Err(H5adError::invalid(
            element,
            "categories reference does not point to a dataset",
        ));
    };
    let cats_el = format!("{element} (categories)");
    let categories = match read_dataset_element(&cats_ds, &cats_el)? {
        Element::String(s) => Element::Strings(StringArray::from_vec(vec![s])),
        Element::Scalar(a) => Element::Dense(DenseArray {
            shape: vec![1],
            data: a.data,
        }),
        other => other,
    };
    let ordered = h5::attr_numbers(&cats_ds, "ordered", &cats_el)?
        .and_then(|v| v.first().copied())
        .is_some_and(|x| x != 0.0);
    let codes = codes_of(ds, element)?;
    Ok(Categorical {
        codes,
        categories: Box::new(categories),
        ordered,
    })
}

fn codes_of(ds: &Dataset, element: &str) -> Result<Vec<i32>> {
    let data = match h5::container_kind(ds, element)? {
        Kind::Numeric(d) if d.is_integer() => h5::read_numeric(ds, d, element)?,
        other => return Err(h5::dtype_error(element, &other, "integer category codes")),
    };
    data.to_f64_vec()
        .into_iter()
        .map(|c| {
            if (-1.0..=i32::MAX as f64).contains(&c) {
                Ok(c as i32)
            } else {
                Err(H5adError::invalid(
                    element,
                    format!("category code {c} is invalid (must be -1 or a category number)"),
                ))
            }
        })
        .collect()
}

fn read_categorical(g: &Group, element: &str) -> Result<Categorical> {
    let codes_el = join(element, "codes");
    let codes = codes_of(&g.dataset("codes").at(&codes_el)?, &codes_el)?;
    let cats_el = join(element, "categories");
    if !has_member(g, "categories") {
        return Err(H5adError::Missing {
            element: cats_el,
            hint: " (a categorical needs its categories)".into(),
        });
    }
    let categories = read_element(g, "categories", &cats_el)?;
    if !matches!(categories, Element::Strings(_) | Element::Dense(_)) {
        return Err(H5adError::invalid(
            &cats_el,
            format!(
                "categories must be an array, found {}",
                categories.describe()
            ),
        ));
    }
    let ordered = h5::attr_numbers(g, "ordered", element)?
        .and_then(|v| v.first().copied())
        .is_some_and(|x| x != 0.0);
    let c = Categorical {
        codes,
        categories: Box::new(categories),
        ordered,
    };
    if let Element::Strings(s) = c.categories.as_ref() {
        let mut seen = std::collections::HashSet::with_capacity(s.values.len());
        if let Some(dup) = s.values.iter().find(|v| !seen.insert(v.as_str())) {
            return Err(H5adError::invalid(
                &cats_el,
                format!("duplicate category {dup:?}: categories must be unique"),
            ));
        }
    }
    let n = c.n_categories() as i32;
    if let Some(&bad) = c.codes.iter().find(|&&x| x >= n) {
        return Err(H5adError::invalid(
            &codes_el,
            format!("category code {bad} is out of range: there are only {n} categories"),
        ));
    }
    Ok(c)
}

/// Splits a record (compound) dataset into one element per field: strings, numbers, or
/// fixed-size sub-arrays (pre-0.7 obsm stored `X_pca` as a (50,) float field).
fn read_records(ds: &Dataset, element: &str) -> Result<(Vec<Element>, Vec<String>)> {
    use hdf5::types::TypeDescriptor as TD;
    let (bytes, comp) = h5::read_compound(ds, element)?;
    let n = ds.size();
    let rec = comp.size;
    let mut fields: Vec<_> = comp.fields.clone();
    fields.sort_by_key(|f| f.index);
    let mut out = Vec::with_capacity(fields.len());
    let mut names = Vec::with_capacity(fields.len());
    for f in fields {
        let el = format!("{element} (field {})", f.name);
        let (base, width) = match &f.ty {
            TD::FixedArray(inner, w) => (inner.as_ref().clone(), Some(*w)),
            other => (other.clone(), None),
        };
        let element = match h5::kind_of(&base) {
            Kind::Numeric(d) => {
                let size = base.size();
                let w = width.unwrap_or(1);
                let mut raw = Vec::with_capacity(n * w * size);
                for r in 0..n {
                    let start = r * rec + f.offset;
                    let Some(slice) = bytes.get(start..start + w * size) else {
                        return Err(H5adError::invalid(&el, "record field outside the record"));
                    };
                    raw.extend_from_slice(slice);
                }
                let data = decode_native(&raw, d);
                let shape = match width {
                    Some(w) => vec![n, w],
                    None => vec![n],
                };
                Element::Dense(DenseArray { shape, data })
            }
            Kind::FixedString { len } => {
                let values = (0..n)
                    .map(|r| {
                        let start = r * rec + f.offset;
                        bytes
                            .get(start..start + len)
                            .map(h5::fixed_bytes_to_string)
                            .unwrap_or_default()
                    })
                    .collect();
                Element::Strings(StringArray::from_vec(values))
            }
            other => {
                return Err(h5::dtype_error(
                    &el,
                    &other,
                    "numbers or fixed-length strings",
                ));
            }
        };
        out.push(element);
        names.push(f.name.clone());
    }
    Ok((out, names))
}

fn decode_native(raw: &[u8], dtype: Dtype) -> ArrayData {
    macro_rules! dec {
        ($variant:ident, $t:ty) => {
            ArrayData::$variant(
                raw.chunks_exact(std::mem::size_of::<$t>())
                    .map(|b| <$t>::from_ne_bytes(b.try_into().unwrap_or_default()))
                    .collect(),
            )
        };
    }
    match dtype {
        Dtype::Bool => ArrayData::Bool(raw.iter().map(|&b| b != 0).collect()),
        Dtype::I8 => dec!(I8, i8),
        Dtype::I16 => dec!(I16, i16),
        Dtype::I32 => dec!(I32, i32),
        Dtype::I64 => dec!(I64, i64),
        Dtype::U8 => dec!(U8, u8),
        Dtype::U16 => dec!(U16, u16),
        Dtype::U32 => dec!(U32, u32),
        Dtype::U64 => dec!(U64, u64),
        Dtype::F32 => dec!(F32, f32),
        Dtype::F64 => dec!(F64, f64),
    }
}

/// A pre-0.7 dataframe: a record array whose first field is the index.
fn read_record_dataframe(ds: &Dataset, element: &str) -> Result<DataFrame> {
    let (mut columns, mut names) = read_records(ds, element)?;
    if columns.is_empty() {
        return Err(H5adError::invalid(
            element,
            "record dataframe has no fields",
        ));
    }
    let index_col = columns.remove(0);
    let index_name = names.remove(0);
    let index = match index_col {
        Element::Strings(s) => s.values,
        Element::Dense(a) => a.data.to_f64_vec().iter().map(|x| x.to_string()).collect(),
        _ => Vec::new(),
    };
    Ok(DataFrame {
        index_name,
        index,
        columns: names.into_iter().zip(columns).collect(),
    })
}

/// Reads only obs and var (for backed mode).
pub(crate) fn read_obs_var(file: &hdf5::File) -> Result<(DataFrame, DataFrame)> {
    let root: &Group = file;
    for required in ["obs", "var"] {
        if !has_member(root, required) {
            return Err(H5adError::Missing {
                element: format!("/{required}"),
                hint: " (every h5ad file has obs and var dataframes; is this an AnnData file?)"
                    .into(),
            });
        }
    }
    Ok((
        read_dataframe_any(root, "obs", "/obs")?,
        read_dataframe_any(root, "var", "/var")?,
    ))
}
