//! Writing [`AnnData`] as an h5ad file in the current encodings (anndata 0.8+), atomically:
//! everything goes to a temporary file in the destination folder, which is flushed, fsynced
//! and renamed over the destination only when complete.

use std::path::Path;

use hdf5::Group;

use super::error::{H5Context, H5adError, Result};
use super::h5::{self, Compression};
use crate::anndata::{AnnData, ArrayData, DataFrame, Element, Mapping, SparseFormat, SparseMatrix};

/// The layout X is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XFormat {
    Csr,
    Csc,
    Dense,
}

/// Options for [`write_h5ad`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    pub compression: Compression,
    /// Convert X to this layout (`None` keeps it as it is).
    pub x_format: Option<XFormat>,
}

impl WriteOptions {
    /// Uncompressed, with X converted to `x_format`.
    pub fn with_x_format(x_format: XFormat) -> Self {
        Self {
            compression: Compression::None,
            x_format: Some(x_format),
        }
    }
}

/// Writes `adata` to `path` atomically (temp file in the same folder, then rename).
pub fn write_h5ad(adata: &AnnData, path: &Path, opts: &WriteOptions) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let write_err = |message: String| H5adError::Write {
        path: path.to_path_buf(),
        message,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".cellforge-")
        .suffix(".h5ad.partial")
        .tempfile_in(&dir)
        .map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    "permission denied: cellforge may not create files in {} ({e}). Nothing \
                     was written; {UNCHANGED}",
                    dir.display()
                )
            } else {
                format!(
                    "cannot create a temporary file in {}: {e}. {UNCHANGED_CAP}",
                    dir.display()
                )
            };
            write_err(why)
        })?;
    let tmp_path = tmp.path().to_path_buf();
    // Any failure below leaves the temporary file to be removed by `tmp`'s drop and the
    // destination untouched; the error says so, and names a full disk when that is the cause.
    let written = (|| -> Result<()> {
        let file = hdf5::File::create(&tmp_path)
            .map_err(|e| write_err(format!("cannot create the HDF5 file: {e}")))?;
        write_root(&file, adata, opts)?;
        file.flush()
            .map_err(|e| write_err(format!("flushing failed: {e}")))?;
        file.close()
            .map_err(|e| write_err(format!("closing failed: {e}")))?;
        let handle = std::fs::File::open(&tmp_path).map_err(|e| H5adError::Io {
            path: tmp_path.clone(),
            source: e,
        })?;
        handle.sync_all().map_err(|e| H5adError::Io {
            path: tmp_path.clone(),
            source: e,
        })?;
        Ok(())
    })();
    if let Err(e) = written {
        return Err(explain_write_failure(path, e));
    }
    tmp.persist(path).map_err(|e| {
        write_err(format!(
            "renaming the finished file into place failed: {}",
            e.error
        ))
    })?;
    if let Ok(d) = std::fs::File::open(&dir) {
        // Best effort: make the rename durable too.
        let _ = d.sync_all();
    }
    Ok(())
}

const UNCHANGED: &str = "an existing file at this path is unchanged";
const UNCHANGED_CAP: &str = "Nothing was replaced: an existing file at this path is unchanged";

/// A write failure in words: a full disk or a file-size limit is named as such, and every
/// message says the destination was not touched.
fn explain_write_failure(path: &Path, e: H5adError) -> H5adError {
    let detail = match &e {
        H5adError::Write { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let io_kind = match &e {
        H5adError::Io { source, .. } => source.raw_os_error(),
        _ => None,
    };
    let full = io_kind == Some(libc::ENOSPC)
        || detail.contains("No space left on device")
        || detail.contains("errno = 28");
    let too_big = io_kind == Some(libc::EFBIG)
        || detail.contains("File too large")
        || detail.contains("errno = 27");
    let message = if full {
        format!(
            "the disk is full. {UNCHANGED_CAP}; free some space or choose another folder. \
             (detail: {detail})"
        )
    } else if too_big {
        format!(
            "the file system refused a file this large (a file-size limit or quota). \
             {UNCHANGED_CAP}. (detail: {detail})"
        )
    } else {
        format!("{detail}. {UNCHANGED_CAP}")
    };
    H5adError::Write {
        path: path.to_path_buf(),
        message,
    }
}

fn write_root(file: &hdf5::File, a: &AnnData, opts: &WriteOptions) -> Result<()> {
    let root: &Group = file;
    h5::set_encoding(root, "anndata", "0.1.0", "/")?;
    let c = opts.compression;
    write_dataframe(root, "obs", &a.obs, c, "/obs")?;
    write_dataframe(root, "var", &a.var, c, "/var")?;
    if let Some(x) = &a.x {
        let converted;
        let x = match (opts.x_format, x) {
            (Some(fmt), el) => {
                converted = convert_matrix(el, fmt, "/X")?;
                &converted
            }
            (None, el) => el,
        };
        write_element(root, "X", x, c, "/X")?;
    }
    for (name, map) in [
        ("layers", &a.layers),
        ("obsm", &a.obsm),
        ("varm", &a.varm),
        ("obsp", &a.obsp),
        ("varp", &a.varp),
        ("uns", &a.uns),
    ] {
        write_mapping(root, name, map, c, &format!("/{name}"))?;
    }
    if let Some(raw) = &a.raw {
        let g = root.create_group("raw").at("/raw")?;
        h5::set_encoding(&g, "raw", "0.1.0", "/raw")?;
        write_element(&g, "X", &raw.x, c, "/raw/X")?;
        write_dataframe(&g, "var", &raw.var, c, "/raw/var")?;
        write_mapping(&g, "varm", &raw.varm, c, "/raw/varm")?;
    }
    Ok(())
}

fn convert_matrix(el: &Element, fmt: XFormat, element: &str) -> Result<Element> {
    Ok(match (el, fmt) {
        (Element::Sparse(s), XFormat::Csr) => Element::Sparse(s.to_format(SparseFormat::Csr)),
        (Element::Sparse(s), XFormat::Csc) => Element::Sparse(s.to_format(SparseFormat::Csc)),
        (Element::Sparse(s), XFormat::Dense) => Element::Dense(s.to_dense()),
        (Element::Dense(d), XFormat::Dense) => Element::Dense(d.clone()),
        (Element::Dense(d), XFormat::Csr | XFormat::Csc) => {
            let f = if fmt == XFormat::Csr {
                SparseFormat::Csr
            } else {
                SparseFormat::Csc
            };
            Element::Sparse(SparseMatrix::from_dense(d, f).ok_or_else(|| {
                H5adError::shape(element, "only 2-D matrices can be stored sparse")
            })?)
        }
        (other, _) => {
            return Err(H5adError::invalid(
                element,
                format!("cannot change the layout of {}", other.describe()),
            ));
        }
    })
}

fn write_mapping(
    parent: &Group,
    name: &str,
    map: &Mapping,
    c: Compression,
    element: &str,
) -> Result<()> {
    let g = parent.create_group(name).at(element)?;
    h5::set_encoding(&g, "dict", "0.1.0", element)?;
    for (key, el) in map {
        if key.contains('/') || key.is_empty() {
            return Err(H5adError::invalid(
                element,
                format!("key {key:?} cannot be stored (empty or contains '/')"),
            ));
        }
        write_element(&g, key, el, c, &format!("{element}/{key}"))?;
    }
    Ok(())
}

fn write_dataframe(
    parent: &Group,
    name: &str,
    df: &DataFrame,
    c: Compression,
    element: &str,
) -> Result<()> {
    let g = parent.create_group(name).at(element)?;
    h5::set_encoding(&g, "dataframe", "0.2.0", element)?;
    let index_name = if df.index_name.is_empty() {
        "_index"
    } else {
        df.index_name.as_str()
    };
    if df.columns.iter().any(|(n, _)| n == index_name) {
        return Err(H5adError::invalid(
            element,
            format!("a column is named like the index ({index_name:?})"),
        ));
    }
    h5::write_attr_str(&g, "_index", index_name, element)?;
    let order: Vec<String> = df.columns.iter().map(|(n, _)| n.clone()).collect();
    h5::write_attr_strs(&g, "column-order", &order, element)?;
    let index_el = format!("{element}/{index_name}");
    let ds = h5::write_strings(&g, index_name, &df.index, &[df.index.len()], c, &index_el)?;
    h5::set_encoding(&ds, "string-array", "0.2.0", &index_el)?;
    for (col, el) in &df.columns {
        if col.contains('/') || col.is_empty() {
            return Err(H5adError::invalid(
                element,
                format!("column name {col:?} cannot be stored (empty or contains '/')"),
            ));
        }
        write_element(&g, col, el, c, &format!("{element}/{col}"))?;
    }
    Ok(())
}

/// Writes one element under `parent/name`.
pub(crate) fn write_element(
    parent: &Group,
    name: &str,
    el: &Element,
    c: Compression,
    element: &str,
) -> Result<()> {
    match el {
        Element::Dense(a) => {
            let ds = h5::write_numeric(parent, name, &a.data, &a.shape, c, element)?;
            h5::set_encoding(&ds, "array", "0.2.0", element)
        }
        Element::Scalar(a) => {
            let ds = h5::write_numeric(parent, name, &a.data, &[], Compression::None, element)?;
            h5::set_encoding(&ds, "numeric-scalar", "0.2.0", element)
        }
        Element::String(s) => {
            let ds = h5::write_strings(
                parent,
                name,
                std::slice::from_ref(s),
                &[],
                Compression::None,
                element,
            )?;
            h5::set_encoding(&ds, "string", "0.2.0", element)
        }
        Element::Strings(s) => {
            let ds = h5::write_strings(parent, name, &s.values, &s.shape, c, element)?;
            h5::set_encoding(&ds, "string-array", "0.2.0", element)
        }
        Element::Sparse(s) => write_sparse(parent, name, s, c, element),
        Element::DataFrame(df) => write_dataframe(parent, name, df, c, element),
        Element::Mapping(m) => write_mapping(parent, name, m, c, element),
        Element::Categorical(cat) => {
            let g = parent.create_group(name).at(element)?;
            h5::set_encoding(&g, "categorical", "0.2.0", element)?;
            h5::write_attr_bool(&g, "ordered", cat.ordered, element)?;
            let n = cat.n_categories();
            let codes = if n < i8::MAX as usize {
                ArrayData::I8(cat.codes.iter().map(|&x| x as i8).collect())
            } else if n < i16::MAX as usize {
                ArrayData::I16(cat.codes.iter().map(|&x| x as i16).collect())
            } else {
                ArrayData::I32(cat.codes.clone())
            };
            let codes_el = format!("{element}/codes");
            let ds = h5::write_numeric(&g, "codes", &codes, &[cat.codes.len()], c, &codes_el)?;
            h5::set_encoding(&ds, "array", "0.2.0", &codes_el)?;
            write_element(
                &g,
                "categories",
                &cat.categories,
                c,
                &format!("{element}/categories"),
            )
        }
        Element::NullableInteger { values, mask } => {
            write_nullable(parent, name, "nullable-integer", values, mask, c, element)
        }
        Element::NullableBoolean { values, mask } => write_nullable(
            parent,
            name,
            "nullable-boolean",
            &ArrayData::Bool(values.clone()),
            mask,
            c,
            element,
        ),
        Element::NullableString {
            values,
            mask,
            na_value,
        } => {
            let g = parent.create_group(name).at(element)?;
            h5::set_encoding(&g, "nullable-string-array", "0.1.0", element)?;
            if let Some(na) = na_value {
                h5::write_attr_str(&g, "na-value", na, element)?;
            }
            let v_el = format!("{element}/values");
            let ds = h5::write_strings(&g, "values", values, &[values.len()], c, &v_el)?;
            h5::set_encoding(&ds, "string-array", "0.2.0", &v_el)?;
            write_mask(&g, mask, c, element)
        }
        Element::Null => write_null(parent, name, element),
        Element::Opaque(o) => {
            o.source.copy_to(parent, name).at(element)?;
            if !o.add_attrs.is_empty() {
                let loc: hdf5::Location =
                    if parent.loc_type_by_name(name).at(element)? == hdf5::LocationType::Group {
                        (*parent.group(name).at(element)?).clone()
                    } else {
                        (**parent.dataset(name).at(element)?).clone()
                    };
                for (k, v) in &o.add_attrs {
                    h5::write_attr_str(&loc, k, v, element)?;
                }
            }
            Ok(())
        }
    }
}

fn write_nullable(
    parent: &Group,
    name: &str,
    kind: &str,
    values: &ArrayData,
    mask: &[bool],
    c: Compression,
    element: &str,
) -> Result<()> {
    let g = parent.create_group(name).at(element)?;
    h5::set_encoding(&g, kind, "0.1.0", element)?;
    let v_el = format!("{element}/values");
    let ds = h5::write_numeric(&g, "values", values, &[values.len()], c, &v_el)?;
    h5::set_encoding(&ds, "array", "0.2.0", &v_el)?;
    write_mask(&g, mask, c, element)
}

/// The `mask` member of a nullable element (true = missing).
fn write_mask(g: &Group, mask: &[bool], c: Compression, element: &str) -> Result<()> {
    let m_el = format!("{element}/mask");
    let data = ArrayData::Bool(mask.to_vec());
    let ds = h5::write_numeric(g, "mask", &data, &[mask.len()], c, &m_el)?;
    h5::set_encoding(&ds, "array", "0.2.0", &m_el)
}

fn write_sparse(
    parent: &Group,
    name: &str,
    s: &SparseMatrix,
    c: Compression,
    element: &str,
) -> Result<()> {
    s.check_structure()
        .map_err(|m| H5adError::invalid(element, m))?;
    let g = parent.create_group(name).at(element)?;
    let kind = match s.format {
        SparseFormat::Csr => "csr_matrix",
        SparseFormat::Csc => "csc_matrix",
    };
    h5::set_encoding(&g, kind, "0.1.0", element)?;
    h5::write_attr_i64s(
        &g,
        "shape",
        &[s.shape[0] as i64, s.shape[1] as i64],
        element,
    )?;
    h5::write_numeric(
        &g,
        "data",
        &s.data,
        &[s.nnz()],
        c,
        &format!("{element}/data"),
    )?;
    // scipy's convention: int32 indices/indptr while they fit, int64 beyond.
    let fits_i32 = s.nnz() <= i32::MAX as usize && s.n_minor() <= i32::MAX as usize;
    let (indices, indptr) = if fits_i32 {
        (
            ArrayData::I32(s.indices.iter().map(|&x| x as i32).collect()),
            ArrayData::I32(s.indptr.iter().map(|&x| x as i32).collect()),
        )
    } else {
        (
            ArrayData::I64(s.indices.iter().map(|&x| i64::from(x)).collect()),
            ArrayData::I64(s.indptr.iter().map(|&x| x as i64).collect()),
        )
    };
    h5::write_numeric(
        &g,
        "indices",
        &indices,
        &[s.nnz()],
        c,
        &format!("{element}/indices"),
    )?;
    h5::write_numeric(
        &g,
        "indptr",
        &indptr,
        &[s.indptr.len()],
        Compression::None,
        &format!("{element}/indptr"),
    )?;
    Ok(())
}

/// Writes h5py's `Empty("f")`: a float dataset with a null dataspace, encoded as `null`.
fn write_null(parent: &Group, name: &str, element: &str) -> Result<()> {
    use hdf5_sys::h5d::H5Dcreate2;
    use hdf5_sys::h5p::H5P_DEFAULT;
    use hdf5_sys::h5s::{H5S_class_t, H5Sclose, H5Screate};
    use hdf5_sys::h5t::H5T_NATIVE_FLOAT;
    let cname = std::ffi::CString::new(name)
        .map_err(|_| H5adError::invalid(element, "name contains a NUL byte"))?;
    let id = hdf5::sync::sync(|| {
        // SAFETY: plain HDF5 C calls on live ids; the dataspace is closed before returning and
        // the dataset id is handed to hdf5-metno, which closes it.
        unsafe {
            let space = H5Screate(H5S_class_t::H5S_NULL);
            if space < 0 {
                return -1;
            }
            let ds = H5Dcreate2(
                parent.id(),
                cname.as_ptr(),
                *H5T_NATIVE_FLOAT,
                space,
                H5P_DEFAULT,
                H5P_DEFAULT,
                H5P_DEFAULT,
            );
            H5Sclose(space);
            ds
        }
    });
    if id < 0 {
        return Err(H5adError::Hdf5 {
            element: element.into(),
            message: "creating the null dataset failed".into(),
        });
    }
    // SAFETY: `id` is a valid dataset id just created above; ownership passes to `ds`.
    let ds = unsafe { hdf5::from_id::<hdf5::Dataset>(id) }.at(element)?;
    h5::set_encoding(&ds, "null", "0.1.0", element)
}
