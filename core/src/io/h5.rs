//! Low-level HDF5 helpers: typed reads that dispatch on the on-disk datatype (every numeric
//! dtype, h5py booleans, variable- and fixed-length strings, compound records), attribute
//! access, and typed writes with the requested compression.

use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Container, Dataset, Datatype, Group, Hyperslab, Location, Selection, SliceOrIndex};

use super::error::{H5Context, H5adError, Result};
use crate::anndata::{ArrayData, Dtype};

/// What an HDF5 datatype holds, as far as h5ad cares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Numeric(Dtype),
    /// Variable-length string (UTF-8 or ASCII).
    VarString {
        utf8: bool,
    },
    /// Fixed-length string of `len` bytes.
    FixedString {
        len: usize,
    },
    Compound(hdf5::types::CompoundType),
    Reference,
    Other(String),
}

pub(crate) fn kind_of(desc: &TypeDescriptor) -> Kind {
    match desc {
        TypeDescriptor::Integer(s) => Kind::Numeric(match s {
            IntSize::U1 => Dtype::I8,
            IntSize::U2 => Dtype::I16,
            IntSize::U4 => Dtype::I32,
            IntSize::U8 => Dtype::I64,
        }),
        TypeDescriptor::Unsigned(s) => Kind::Numeric(match s {
            IntSize::U1 => Dtype::U8,
            IntSize::U2 => Dtype::U16,
            IntSize::U4 => Dtype::U32,
            IntSize::U8 => Dtype::U64,
        }),
        TypeDescriptor::Float(FloatSize::U4) => Kind::Numeric(Dtype::F32),
        TypeDescriptor::Float(FloatSize::U8) => Kind::Numeric(Dtype::F64),
        TypeDescriptor::Boolean => Kind::Numeric(Dtype::Bool),
        TypeDescriptor::Enum(e) if is_bool_enum(e) => Kind::Numeric(Dtype::Bool),
        TypeDescriptor::VarLenUnicode => Kind::VarString { utf8: true },
        TypeDescriptor::VarLenAscii => Kind::VarString { utf8: false },
        TypeDescriptor::FixedAscii(n) | TypeDescriptor::FixedUnicode(n) => {
            Kind::FixedString { len: *n }
        }
        TypeDescriptor::Compound(c) => Kind::Compound(c.clone()),
        TypeDescriptor::Reference(_) => Kind::Reference,
        other => Kind::Other(other.to_string()),
    }
}

fn is_bool_enum(e: &hdf5::types::EnumType) -> bool {
    e.members.len() == 2
        && e.members.iter().all(|m| {
            let n = m.name.to_ascii_lowercase();
            (n == "false" && m.value == 0) || (n == "true" && m.value == 1)
        })
}

/// The kind of a dataset's or attribute's datatype.
pub(crate) fn container_kind(c: &Container, element: &str) -> Result<Kind> {
    let dtype = c.dtype().at(element)?;
    match dtype.to_descriptor() {
        Ok(desc) => Ok(kind_of(&desc)),
        Err(e) => Ok(Kind::Other(e.to_string())),
    }
}

/// Reads raw bytes of the whole container converted to the memory type `mem`.
fn read_bytes_as(c: &Container, mem: &Datatype, element: &str) -> Result<Vec<u8>> {
    use hdf5_sys::h5a::H5Aread;
    use hdf5_sys::h5d::H5Dread;
    use hdf5_sys::h5i::{H5I_type_t, H5Iget_type};
    use hdf5_sys::h5p::H5P_DEFAULT;
    use hdf5_sys::h5s::H5S_ALL;

    let n = c.size();
    let mut buf = vec![0u8; n.saturating_mul(mem.size())];
    let id = c.id();
    let status = hdf5::sync::sync(|| {
        // SAFETY: `buf` holds `n` elements of `mem`'s size, which is what HDF5 writes; the ids
        // are live handles owned by `c` and `mem`.
        unsafe {
            match H5Iget_type(id) {
                H5I_type_t::H5I_DATASET => H5Dread(
                    id,
                    mem.id(),
                    H5S_ALL,
                    H5S_ALL,
                    H5P_DEFAULT,
                    buf.as_mut_ptr().cast(),
                ),
                H5I_type_t::H5I_ATTR => H5Aread(id, mem.id(), buf.as_mut_ptr().cast()),
                _ => -1,
            }
        }
    });
    if status < 0 {
        return Err(H5adError::Hdf5 {
            element: element.to_string(),
            message: "reading the values failed (corrupt or truncated data?)".to_string(),
        });
    }
    Ok(buf)
}

/// Reads a whole numeric (or boolean) dataset or attribute as a flat buffer.
pub(crate) fn read_numeric(c: &Container, dtype: Dtype, element: &str) -> Result<ArrayData> {
    let r = c.as_reader();
    Ok(match dtype {
        Dtype::Bool => ArrayData::Bool(read_bool(c, element)?),
        Dtype::I8 => ArrayData::I8(r.read_raw().at(element)?),
        Dtype::I16 => ArrayData::I16(r.read_raw().at(element)?),
        Dtype::I32 => ArrayData::I32(r.read_raw().at(element)?),
        Dtype::I64 => ArrayData::I64(r.read_raw().at(element)?),
        Dtype::U8 => ArrayData::U8(r.read_raw().at(element)?),
        Dtype::U16 => ArrayData::U16(r.read_raw().at(element)?),
        Dtype::U32 => ArrayData::U32(r.read_raw().at(element)?),
        Dtype::U64 => ArrayData::U64(r.read_raw().at(element)?),
        Dtype::F32 => ArrayData::F32(r.read_raw().at(element)?),
        Dtype::F64 => ArrayData::F64(r.read_raw().at(element)?),
    })
}

/// Reads a whole numeric dataset, through the fast path when it is stored contiguously.
pub(crate) fn read_dataset_numeric(ds: &Dataset, dtype: Dtype, element: &str) -> Result<ArrayData> {
    let layout = super::direct::DirectLayout::of(ds);
    read_dataset_numeric_range(ds, layout.as_ref(), dtype, 0..ds.size(), element)
}

/// Reads `range` of a 1-D numeric dataset (the whole of any dataset when the range covers it).
/// `layout` is the dataset's direct-read layout when it has one (see `direct`).
pub(crate) fn read_dataset_numeric_range(
    ds: &Dataset,
    layout: Option<&super::direct::DirectLayout>,
    dtype: Dtype,
    range: std::ops::Range<usize>,
    element: &str,
) -> Result<ArrayData> {
    macro_rules! fast {
        ($variant:ident) => {
            if let Some(v) = layout.and_then(|l| l.read(range.clone())) {
                return Ok(ArrayData::$variant(v));
            }
        };
    }
    match dtype {
        Dtype::Bool => {}
        Dtype::I8 => fast!(I8),
        Dtype::I16 => fast!(I16),
        Dtype::I32 => fast!(I32),
        Dtype::I64 => fast!(I64),
        Dtype::U8 => fast!(U8),
        Dtype::U16 => fast!(U16),
        Dtype::U32 => fast!(U32),
        Dtype::U64 => fast!(U64),
        Dtype::F32 => fast!(F32),
        Dtype::F64 => fast!(F64),
    }
    if range.start == 0 && range.end == ds.size() {
        return read_numeric(ds, dtype, element);
    }
    read_numeric_range(ds, dtype, range, element)
}

/// Reads booleans stored as h5py's enum, as HDF5's bool, or as plain integers.
fn read_bool(c: &Container, element: &str) -> Result<Vec<bool>> {
    let dtype = c.dtype().at(element)?;
    let size = dtype.size();
    let bytes = read_bytes_as(c, &dtype, element)?;
    if size == 0 {
        return Ok(Vec::new());
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|b| b.iter().any(|&x| x != 0))
        .collect())
}

/// Reads a 1-D range of a numeric dataset.
pub(crate) fn read_numeric_range(
    ds: &Dataset,
    dtype: Dtype,
    range: std::ops::Range<usize>,
    element: &str,
) -> Result<ArrayData> {
    if dtype == Dtype::Bool {
        let all = read_bool(ds, element)?;
        return Ok(ArrayData::Bool(
            all.get(range).map(<[bool]>::to_vec).unwrap_or_default(),
        ));
    }
    read_selection(ds, dtype, Selection::from(range), element)
}

/// Reads rows `range` of a 2-D numeric dataset (row-major).
pub(crate) fn read_numeric_rows(
    ds: &Dataset,
    dtype: Dtype,
    range: std::ops::Range<usize>,
    element: &str,
) -> Result<ArrayData> {
    if dtype == Dtype::Bool {
        return Err(H5adError::invalid(
            element,
            "boolean matrices cannot be read in row chunks",
        ));
    }
    let sel = Hyperslab::from(vec![SliceOrIndex::from(range), SliceOrIndex::from(..)]).into();
    read_selection(ds, dtype, sel, element)
}

/// Reads a hyperslab of a non-boolean numeric dataset as a flat row-major buffer.
fn read_selection(ds: &Dataset, dtype: Dtype, sel: Selection, element: &str) -> Result<ArrayData> {
    let r = ds.as_reader();
    macro_rules! rd {
        ($variant:ident) => {
            ArrayData::$variant(
                r.read_slice::<_, _, ndarray::IxDyn>(sel)
                    .at(element)?
                    .into_raw_vec_and_offset()
                    .0,
            )
        };
    }
    Ok(match dtype {
        Dtype::Bool => ArrayData::Bool(read_bool(ds, element)?),
        Dtype::I8 => rd!(I8),
        Dtype::I16 => rd!(I16),
        Dtype::I32 => rd!(I32),
        Dtype::I64 => rd!(I64),
        Dtype::U8 => rd!(U8),
        Dtype::U16 => rd!(U16),
        Dtype::U32 => rd!(U32),
        Dtype::U64 => rd!(U64),
        Dtype::F32 => rd!(F32),
        Dtype::F64 => rd!(F64),
    })
}

/// Reads an integer dataset as non-negative u64 values (for indptr), checking the sign.
pub(crate) fn read_index_u64(ds: &Dataset, element: &str) -> Result<Vec<u64>> {
    let data = match container_kind(ds, element)? {
        Kind::Numeric(d) if d.is_integer() => read_numeric(ds, d, element)?,
        other => return Err(dtype_error(element, &other, "an integer array")),
    };
    to_u64(data, element)
}

pub(crate) fn to_u64(data: ArrayData, element: &str) -> Result<Vec<u64>> {
    macro_rules! conv {
        ($v:expr) => {
            $v.into_iter()
                .map(|x| {
                    u64::try_from(x).map_err(|_| {
                        H5adError::invalid(element, format!("negative value {x} in an index array"))
                    })
                })
                .collect()
        };
    }
    match data {
        ArrayData::I8(v) => conv!(v),
        ArrayData::I16(v) => conv!(v),
        ArrayData::I32(v) => conv!(v),
        ArrayData::I64(v) => conv!(v),
        ArrayData::U8(v) => Ok(v.into_iter().map(u64::from).collect()),
        ArrayData::U16(v) => Ok(v.into_iter().map(u64::from).collect()),
        ArrayData::U32(v) => Ok(v.into_iter().map(u64::from).collect()),
        ArrayData::U64(v) => Ok(v),
        other => Err(H5adError::Dtype {
            element: element.to_string(),
            dtype: other.dtype().to_string(),
            expected: "an integer array".to_string(),
        }),
    }
}

/// Converts sparse indices to u32, refusing negative or huge values.
pub(crate) fn to_u32_indices(data: ArrayData, element: &str) -> Result<Vec<u32>> {
    macro_rules! conv {
        ($v:expr) => {
            $v.into_iter()
                .map(|x| {
                    u32::try_from(x).map_err(|_| {
                        H5adError::invalid(
                            element,
                            format!("indices out of bounds: {x} is negative or too large"),
                        )
                    })
                })
                .collect()
        };
    }
    match data {
        // The common case (scipy's int32 indices): validate, then reuse the allocation.
        // Negative values become huge u32 values, which the bounds check of the sparse
        // structure reports as negative indices.
        ArrayData::I32(v) => Ok(bytemuck::allocation::cast_vec::<i32, u32>(v)),
        ArrayData::I64(v) => conv!(v),
        ArrayData::I16(v) => conv!(v),
        ArrayData::I8(v) => conv!(v),
        ArrayData::U64(v) => conv!(v),
        ArrayData::U32(v) => Ok(v),
        ArrayData::U16(v) => Ok(v.into_iter().map(u32::from).collect()),
        ArrayData::U8(v) => Ok(v.into_iter().map(u32::from).collect()),
        other => Err(H5adError::Dtype {
            element: element.to_string(),
            dtype: other.dtype().to_string(),
            expected: "an integer array".to_string(),
        }),
    }
}

pub(crate) fn dtype_error(element: &str, kind: &Kind, expected: &str) -> H5adError {
    H5adError::Dtype {
        element: element.to_string(),
        dtype: match kind {
            Kind::Numeric(d) => d.to_string(),
            Kind::VarString { .. } => "variable-length string".to_string(),
            Kind::FixedString { len } => format!("fixed-length string ({len} bytes)"),
            Kind::Compound(_) => "compound (record)".to_string(),
            Kind::Reference => "object reference".to_string(),
            Kind::Other(s) => s.clone(),
        },
        expected: expected.to_string(),
    }
}

/// Reads any string dataset or attribute (variable or fixed length, UTF-8 or ASCII).
pub(crate) fn read_strings(c: &Container, element: &str) -> Result<Vec<String>> {
    match container_kind(c, element)? {
        Kind::VarString { utf8: true } => Ok(c
            .as_reader()
            .read_raw::<VarLenUnicode>()
            .at(element)?
            .into_iter()
            // hdf5's `as_str` trusts the file to hold UTF-8 (it does not check): a corrupt or
            // mislabelled string would become an invalid Rust string. Decode the bytes
            // instead, replacing invalid sequences with U+FFFD (as fixed-length strings are).
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
            .collect()),
        Kind::VarString { utf8: false } => Ok(c
            .as_reader()
            .read_raw::<VarLenAscii>()
            .at(element)?
            .into_iter()
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
            .collect()),
        Kind::FixedString { len } => {
            let dtype = c.dtype().at(element)?;
            let bytes = read_bytes_as(c, &dtype, element)?;
            if len == 0 {
                return Ok(vec![String::new(); c.size()]);
            }
            Ok(bytes.chunks_exact(len).map(fixed_bytes_to_string).collect())
        }
        other => Err(dtype_error(element, &other, "strings")),
    }
}

/// Decodes a fixed-length, NUL-padded byte string (numpy `S` dtype), lossily for non-UTF-8.
pub(crate) fn fixed_bytes_to_string(b: &[u8]) -> String {
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Reads a compound dataset as raw records in the file's layout converted to native order.
/// Returns the record bytes and the compound description (field offsets within a record).
pub(crate) fn read_compound(
    ds: &Dataset,
    element: &str,
) -> Result<(Vec<u8>, hdf5::types::CompoundType)> {
    let dtype = ds.dtype().at(element)?;
    let desc = dtype.to_descriptor().at(element)?;
    let TypeDescriptor::Compound(comp) = desc else {
        return Err(H5adError::invalid(
            element,
            "expected a compound (record) dataset",
        ));
    };
    // Convert to a native-endian memory type with the same field layout.
    let mem = Datatype::from_descriptor(&TypeDescriptor::Compound(comp.clone())).at(element)?;
    let bytes = read_bytes_as(ds, &mem, element)?;
    Ok((bytes, comp))
}

/// Reads a string attribute (any string storage); `None` when absent.
pub(crate) fn attr_string(loc: &Location, name: &str, element: &str) -> Result<Option<String>> {
    if !attr_exists(loc, name) {
        return Ok(None);
    }
    let attr = loc.attr(name).at(element)?;
    let values = read_strings(&attr, &format!("{element} (attribute {name})"))?;
    Ok(values.into_iter().next())
}

pub(crate) fn attr_exists(loc: &Location, name: &str) -> bool {
    loc.attr_names()
        .map(|names| names.iter().any(|n| n == name))
        .unwrap_or(false)
}

/// Reads an attribute holding a list of strings. h5py stores an empty list as a zero-length
/// float64 array, which reads as an empty list here.
pub(crate) fn attr_strings(
    loc: &Location,
    name: &str,
    element: &str,
) -> Result<Option<Vec<String>>> {
    if !attr_exists(loc, name) {
        return Ok(None);
    }
    let attr = loc.attr(name).at(element)?;
    let el = format!("{element} (attribute {name})");
    match container_kind(&attr, &el)? {
        Kind::Numeric(_) if attr.size() == 0 => Ok(Some(Vec::new())),
        _ => read_strings(&attr, &el).map(Some),
    }
}

/// Reads a numeric attribute as f64 values; `None` when absent.
pub(crate) fn attr_numbers(loc: &Location, name: &str, element: &str) -> Result<Option<Vec<f64>>> {
    if !attr_exists(loc, name) {
        return Ok(None);
    }
    let attr = loc.attr(name).at(element)?;
    let el = format!("{element} (attribute {name})");
    match container_kind(&attr, &el)? {
        Kind::Numeric(d) => Ok(Some(read_numeric(&attr, d, &el)?.to_f64_vec())),
        other => Err(dtype_error(&el, &other, "numbers")),
    }
}

/// Reads a 2-element `shape` attribute as a matrix shape.
pub(crate) fn attr_shape(loc: &Location, name: &str, element: &str) -> Result<Option<[usize; 2]>> {
    let Some(v) = attr_numbers(loc, name, element)? else {
        return Ok(None);
    };
    if v.len() != 2
        || v.iter()
            .any(|&x| x < 0.0 || x.fract() != 0.0 || !x.is_finite())
    {
        return Err(H5adError::shape(
            element,
            format!("attribute '{name}' must be two non-negative integers, found {v:?}"),
        ));
    }
    Ok(Some([v[0] as usize, v[1] as usize]))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// How datasets are compressed when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    /// Deflate at level 4 (anndata's `compression="gzip"` default level).
    Gzip,
    Lzf,
}

pub(crate) fn write_attr_str(loc: &Location, name: &str, value: &str, element: &str) -> Result<()> {
    let v = to_varlen(value, element)?;
    if attr_exists(loc, name) {
        loc.delete_attr(name).at(element)?;
    }
    loc.new_attr::<VarLenUnicode>()
        .create(name)
        .at(element)?
        .write_scalar(&v)
        .at(element)
}

pub(crate) fn write_attr_strs(
    loc: &Location,
    name: &str,
    values: &[String],
    element: &str,
) -> Result<()> {
    let v = values
        .iter()
        .map(|s| to_varlen(s, element))
        .collect::<Result<Vec<_>>>()?;
    if v.is_empty() {
        // h5py writes an empty list as an empty float64 array; anndata expects that.
        return loc
            .new_attr::<f64>()
            .shape(0)
            .create(name)
            .at(element)
            .map(|_| ());
    }
    loc.new_attr::<VarLenUnicode>()
        .shape(v.len())
        .create(name)
        .at(element)?
        .write_raw(&v)
        .at(element)
}

pub(crate) fn write_attr_bool(
    loc: &Location,
    name: &str,
    value: bool,
    element: &str,
) -> Result<()> {
    loc.new_attr::<bool>()
        .create(name)
        .at(element)?
        .write_scalar(&value)
        .at(element)
}

pub(crate) fn write_attr_i64s(
    loc: &Location,
    name: &str,
    values: &[i64],
    element: &str,
) -> Result<()> {
    loc.new_attr::<i64>()
        .shape(values.len())
        .create(name)
        .at(element)?
        .write_raw(values)
        .at(element)
}

pub(crate) fn set_encoding(loc: &Location, kind: &str, version: &str, element: &str) -> Result<()> {
    write_attr_str(loc, "encoding-type", kind, element)?;
    write_attr_str(loc, "encoding-version", version, element)
}

pub(crate) fn to_varlen(s: &str, element: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>().map_err(|_| {
        H5adError::invalid(
            element,
            format!("string {s:?} contains a NUL byte and cannot be stored"),
        )
    })
}

/// A scalar dataspace for an empty shape, a simple one otherwise.
fn extents(shape: &[usize]) -> hdf5::Extents {
    if shape.is_empty() {
        ().into()
    } else {
        shape.to_vec().into()
    }
}

/// Adds chunking and the compression filter to a dataset builder (nothing for scalars, empty
/// arrays, or no compression).
fn compressed(
    builder: hdf5::DatasetBuilderEmptyShape,
    shape: &[usize],
    elem_bytes: usize,
    compression: Compression,
) -> hdf5::DatasetBuilderEmptyShape {
    if compression == Compression::None || shape.is_empty() || shape.contains(&0) {
        return builder;
    }
    let mut chunk = shape.to_vec();
    chunk[0] = chunk_len(shape[0], shape[1..].iter().product(), elem_bytes);
    let b = builder.chunk(chunk);
    match compression {
        Compression::Gzip => b.deflate(4),
        Compression::Lzf => b.lzf(),
        Compression::None => b,
    }
}

fn chunk_len(total: usize, row_len: usize, elem_bytes: usize) -> usize {
    // ~1 MiB chunks, at least one row.
    let per_row = (row_len.max(1) * elem_bytes).max(1);
    ((1 << 20) / per_row).clamp(1, total.max(1))
}

/// Writes a numeric buffer as a dataset of the given shape.
pub(crate) fn write_numeric(
    group: &Group,
    name: &str,
    data: &ArrayData,
    shape: &[usize],
    compression: Compression,
    element: &str,
) -> Result<Dataset> {
    macro_rules! w {
        ($v:expr, $t:ty) => {{
            let builder = group.new_dataset::<$t>().shape(extents(shape));
            let total = shape.iter().product::<usize>();
            let builder = compressed(builder, shape, std::mem::size_of::<$t>(), compression);
            let ds = builder.create(name).at(element)?;
            if total > 0 || shape.is_empty() {
                ds.as_writer().write_raw($v.as_slice()).at(element)?;
            }
            ds
        }};
    }
    Ok(match data {
        ArrayData::Bool(v) => w!(v, bool),
        ArrayData::I8(v) => w!(v, i8),
        ArrayData::I16(v) => w!(v, i16),
        ArrayData::I32(v) => w!(v, i32),
        ArrayData::I64(v) => w!(v, i64),
        ArrayData::U8(v) => w!(v, u8),
        ArrayData::U16(v) => w!(v, u16),
        ArrayData::U32(v) => w!(v, u32),
        ArrayData::U64(v) => w!(v, u64),
        ArrayData::F32(v) => w!(v, f32),
        ArrayData::F64(v) => w!(v, f64),
    })
}

/// Writes strings as a variable-length UTF-8 dataset (what h5py and anndata write).
pub(crate) fn write_strings(
    group: &Group,
    name: &str,
    values: &[String],
    shape: &[usize],
    compression: Compression,
    element: &str,
) -> Result<Dataset> {
    let v = values
        .iter()
        .map(|s| to_varlen(s, element))
        .collect::<Result<Vec<_>>>()?;
    let builder = group.new_dataset::<VarLenUnicode>().shape(extents(shape));
    let builder = compressed(builder, shape, 16, compression);
    let ds = builder.create(name).at(element)?;
    if !v.is_empty() {
        ds.as_writer().write_raw(&v).at(element)?;
    }
    Ok(ds)
}
