//! Safe reader for PyTorch `torch.save` checkpoints (the zip format, PyTorch ≥ 1.6).
//!
//! # Format
//!
//! A checkpoint is a zip archive whose entries all sit under one top-level folder (`archive/`
//! when saved to a buffer, often the file stem when saved to a path):
//!
//! - `<name>/data.pkl` — a Python pickle (protocol 2 by default) of the saved object, usually an
//!   `OrderedDict` state dict. Each tensor is pickled as a call
//!   `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
//!   backward_hooks)`, where `storage` is a *persistent id*
//!   `('storage', torch.FloatStorage, '<key>', '<device>', numel)` (`BINPERSID`).
//! - `<name>/data/<key>` — the raw bytes of each storage, little-endian, uncompressed.
//! - `<name>/byteorder` (optional, `little` or `big`), `<name>/version`,
//!   `<name>/.data/serialization_id` and similar bookkeeping records.
//!
//! A tensor is the view `storage[offset + Σ index_i · stride_i]` over its storage, so several
//! tensors may share one storage, and a tensor may be non-contiguous (e.g. a transposed view).
//! This reader materialises every tensor into a contiguous row-major `Vec<f32>`, converting
//! f16/bf16/f64 and integer/bool storages on the way.
//!
//! # Security boundary
//!
//! Unpickling with Python's `pickle` executes code named by the file, so a checkpoint from an
//! untrusted source can run anything. This reader never executes anything: `data.pkl` is
//! interpreted by a restricted VM (`checkpoint/pickle.rs`) that knows only the opcodes `torch.save`
//! emits and resolves globals against a short allow-list (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` / `_rebuild_parameter_with_state`,
//! the `torch.*Storage` classes and `torch.<dtype>` names). Any other global (`posix.system`,
//! `builtins.eval`, a user class, …) is refused with [`PtError::ForbiddenGlobal`] at the opcode
//! that names it, and any other opcode with [`PtError::UnsupportedOpcode`].
//!
//! Untrusted sizes are never used to allocate before they are checked: zip entries must have
//! safe names (no absolute paths or `..`), only stored/deflated entries are read, declared sizes
//! are capped ([`PtLimits`]) and compared with their compressed size (zip-bomb ratio) before any
//! inflation, and every tensor's extent (`offset + Σ (size_i − 1) · stride_i`) is checked with
//! overflow-checked arithmetic against the bytes actually present in its storage record.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use zip::CompressionMethod;
use zip::ZipArchive;
use zip::result::ZipError;

use super::pickle::{self, TensorRef};

/// Element type of a stored tensor (the storage class in the checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PtDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl PtDtype {
    /// Bytes per element in the storage record.
    pub fn size_bytes(self) -> usize {
        match self {
            PtDtype::F64 | PtDtype::I64 => 8,
            PtDtype::F32 | PtDtype::I32 => 4,
            PtDtype::F16 | PtDtype::BF16 | PtDtype::I16 => 2,
            PtDtype::I8 | PtDtype::U8 | PtDtype::Bool => 1,
        }
    }

    /// The PyTorch dtype name (`float32`, `bfloat16`, …).
    pub fn torch_name(self) -> &'static str {
        match self {
            PtDtype::F32 => "float32",
            PtDtype::F64 => "float64",
            PtDtype::F16 => "float16",
            PtDtype::BF16 => "bfloat16",
            PtDtype::I64 => "int64",
            PtDtype::I32 => "int32",
            PtDtype::I16 => "int16",
            PtDtype::I8 => "int8",
            PtDtype::U8 => "uint8",
            PtDtype::Bool => "bool",
        }
    }

    /// The legacy storage class name used in persistent ids (`FloatStorage`, …).
    pub(crate) fn storage_name(self) -> &'static str {
        match self {
            PtDtype::F32 => "FloatStorage",
            PtDtype::F64 => "DoubleStorage",
            PtDtype::F16 => "HalfStorage",
            PtDtype::BF16 => "BFloat16Storage",
            PtDtype::I64 => "LongStorage",
            PtDtype::I32 => "IntStorage",
            PtDtype::I16 => "ShortStorage",
            PtDtype::I8 => "CharStorage",
            PtDtype::U8 => "ByteStorage",
            PtDtype::Bool => "BoolStorage",
        }
    }

    pub(crate) fn from_storage_name(name: &str) -> Option<PtDtype> {
        Some(match name {
            "FloatStorage" => PtDtype::F32,
            "DoubleStorage" => PtDtype::F64,
            "HalfStorage" => PtDtype::F16,
            "BFloat16Storage" => PtDtype::BF16,
            "LongStorage" => PtDtype::I64,
            "IntStorage" => PtDtype::I32,
            "ShortStorage" => PtDtype::I16,
            "CharStorage" => PtDtype::I8,
            "ByteStorage" => PtDtype::U8,
            "BoolStorage" => PtDtype::Bool,
            _ => return None,
        })
    }

    pub(crate) fn from_torch_name(name: &str) -> Option<PtDtype> {
        Some(match name {
            "float32" | "float" => PtDtype::F32,
            "float64" | "double" => PtDtype::F64,
            "float16" | "half" => PtDtype::F16,
            "bfloat16" => PtDtype::BF16,
            "int64" | "long" => PtDtype::I64,
            "int32" | "int" => PtDtype::I32,
            "int16" | "short" => PtDtype::I16,
            "int8" => PtDtype::I8,
            "uint8" => PtDtype::U8,
            "bool" => PtDtype::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for PtDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

/// One tensor, materialised as contiguous row-major `f32` values.
#[derive(Debug, Clone, PartialEq)]
pub struct PtTensor {
    /// The dtype it was stored with (its values have been converted to `f32`).
    pub dtype: PtDtype,
    /// Dimensions, outermost first; empty for a scalar.
    pub shape: Vec<usize>,
    data: Vec<f32>,
}

impl PtTensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> PtDtype {
        self.dtype
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The values in row-major order.
    pub fn as_f32(&self) -> &[f32] {
        &self.data
    }

    /// A copy of the values in row-major order.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.clone()
    }

    /// The values in row-major order, without copying.
    pub fn into_f32(self) -> Vec<f32> {
        self.data
    }
}

/// Resource limits applied while reading an untrusted checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtLimits {
    /// Sum of the declared uncompressed sizes of all archive entries (default 8 GiB).
    pub max_total_uncompressed_bytes: u64,
    /// Largest accepted uncompressed/compressed ratio for a compressed entry (default 1000).
    pub max_compression_ratio: u64,
    /// Largest accepted `data.pkl` (default 64 MiB).
    pub max_pickle_bytes: u64,
    /// Most `f32` elements materialised over all tensors (default 4 Gi = 16 GiB of `f32`).
    /// Matters for stride-0 (expanded) tensors, whose element count can exceed their storage.
    pub max_output_elements: u64,
}

impl Default for PtLimits {
    fn default() -> Self {
        PtLimits {
            max_total_uncompressed_bytes: 8 << 30,
            max_compression_ratio: 1000,
            max_pickle_bytes: 64 << 20,
            max_output_elements: 4 << 30,
        }
    }
}

/// Entries this small are exempt from the compression-ratio check (deflate cannot exceed
/// ~1032:1, so a tiny compressed stream cannot hide a large payload anyway).
const RATIO_EXEMPT_BYTES: u64 = 64 << 10;

/// Everything that can go wrong reading a checkpoint. Messages name the offending tensor, entry,
/// global or opcode.
#[derive(thiserror::Error, Debug)]
pub enum PtError {
    #[error("cannot read checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a PyTorch checkpoint: {0}")]
    NotZip(String),
    #[error(
        "this checkpoint uses the legacy (PyTorch < 1.6) non-zip torch.save format, which is not \
         supported; re-save it with a current PyTorch (torch.save(torch.load(old), new))"
    )]
    LegacyFormat,
    #[error("checkpoint is truncated or damaged: {0}")]
    Truncated(String),
    #[error(
        "checkpoint was written on a big-endian machine (byteorder = \"big\"); only little-endian \
         checkpoints are supported"
    )]
    BigEndian,
    #[error(
        "checkpoint archive has an unsafe entry name {0:?} (absolute path or '..' component); \
         refusing to read it"
    )]
    UnsafeEntryName(String),
    #[error(
        "checkpoint archive entry {entry:?} claims to inflate {compressed} compressed bytes to \
         {uncompressed} bytes (more than {max_ratio}:1); refusing a possible zip bomb"
    )]
    ZipBomb {
        entry: String,
        compressed: u64,
        uncompressed: u64,
        max_ratio: u64,
    },
    #[error("{what}: {size} exceeds the limit of {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error(
        "refusing to load checkpoint: its pickle references `{module}.{name}`, which is not an \
         allowed tensor/state-dict global (such a file could run arbitrary code when loaded \
         with torch.load)"
    )]
    ForbiddenGlobal { module: String, name: String },
    #[error(
        "refusing to load checkpoint: data.pkl uses pickle opcode {} (0x{:02x}), which a \
         torch.save state dict does not need",
        pickle::opcode_name(*.0),
        .0
    )]
    UnsupportedOpcode(u8),
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("checkpoint is missing tensor data: {0}")]
    MissingStorage(String),
    #[error(
        "tensor {name:?} reaches element {needed} of storage {storage:?} (offset + strided \
         extent), but that storage holds only {available} elements"
    )]
    TensorOutOfBounds {
        name: String,
        storage: String,
        needed: u64,
        available: u64,
    },
}

/// A loaded checkpoint: every tensor, in pickle order, with flattened dotted names.
#[derive(Debug, Clone, Default)]
pub struct PtCheckpoint {
    tensors: Vec<(String, PtTensor)>,
    index: HashMap<String, usize>,
    metadata: Vec<(String, String)>,
}

impl PtCheckpoint {
    /// Reads a checkpoint file with the default [`PtLimits`].
    pub fn open(path: &Path) -> Result<PtCheckpoint, PtError> {
        PtCheckpoint::open_with_limits(path, &PtLimits::default())
    }

    /// Reads a checkpoint file with explicit limits.
    pub fn open_with_limits(path: &Path, limits: &PtLimits) -> Result<PtCheckpoint, PtError> {
        let io_err = |source| PtError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        read_checkpoint(BufReader::new(file), len, limits, path)
    }

    /// Reads a checkpoint held in memory with the default [`PtLimits`].
    pub fn from_bytes(bytes: &[u8]) -> Result<PtCheckpoint, PtError> {
        PtCheckpoint::from_bytes_with_limits(bytes, &PtLimits::default())
    }

    /// Reads a checkpoint held in memory with explicit limits.
    pub fn from_bytes_with_limits(
        bytes: &[u8],
        limits: &PtLimits,
    ) -> Result<PtCheckpoint, PtError> {
        read_checkpoint(
            io::Cursor::new(bytes),
            bytes.len() as u64,
            limits,
            Path::new("<in-memory checkpoint>"),
        )
    }

    /// All tensors in pickle order. Nested dicts are flattened with `.` (`model.encoder.weight`),
    /// list/tuple items are named by index; a bare saved tensor is named `""`.
    pub fn tensors(&self) -> &[(String, PtTensor)] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&PtTensor> {
        self.index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
            .map(|(_, t)| t)
    }

    pub fn into_tensors(self) -> Vec<(String, PtTensor)> {
        self.tensors
    }

    /// Tensor names in pickle order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Non-tensor leaves (ints, floats, strings, bools, `None`) as text, in pickle order, with the
    /// same flattened names (`epoch` → `"3"`, `optimizer.param_groups.0.lr` → `"0.001"`).
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// One metadata value by flattened name.
    pub fn metadata_value(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the validation pass learned about one archive entry.
#[derive(Debug, Clone, Copy)]
struct EntryInfo {
    index: usize,
    size: u64,
    compressed: u64,
    stored: bool,
}

struct Archive<'p, R: Read + Seek> {
    zip: ZipArchive<R>,
    entries: HashMap<String, EntryInfo>,
    path: &'p Path,
}

fn read_checkpoint<R: Read + Seek>(
    mut reader: R,
    file_len: u64,
    limits: &PtLimits,
    path: &Path,
) -> Result<PtCheckpoint, PtError> {
    sniff(&mut reader, path)?;
    let zip = ZipArchive::new(reader).map_err(|e| match e {
        ZipError::Io(source) if source.kind() != io::ErrorKind::UnexpectedEof => PtError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => PtError::Truncated(format!(
            "the zip directory could not be read ({other}); the file is probably incomplete"
        )),
    })?;
    let mut archive = Archive {
        zip,
        entries: HashMap::new(),
        path,
    };
    archive.validate_entries(file_len, limits)?;
    let prefix = archive.find_prefix()?;

    let byteorder = format!("{prefix}byteorder");
    if archive.entries.contains_key(&byteorder) {
        let order = archive.read_entry(&byteorder, 64)?;
        match order.trim_ascii() {
            b"little" => {}
            b"big" => return Err(PtError::BigEndian),
            other => {
                return Err(PtError::Malformed(format!(
                    "{byteorder} says {:?}, expected \"little\" or \"big\"",
                    String::from_utf8_lossy(other)
                )));
            }
        }
    }

    let pkl_name = format!("{prefix}data.pkl");
    let pkl = archive.read_entry(&pkl_name, limits.max_pickle_bytes)?;
    let unpickled = pickle::unpickle(&pkl, &pkl_name)?;
    drop(pkl);
    let flat = pickle::flatten(&unpickled)?;
    drop(unpickled);

    // Each storage record is read once, shared by all tensors viewing it, and dropped after its
    // last user has been materialised.
    let mut users: HashMap<Rc<str>, usize> = HashMap::new();
    for (_, t) in &flat.tensors {
        *users.entry(t.storage.key.clone()).or_default() += 1;
    }
    let mut loaded: HashMap<Rc<str>, Vec<u8>> = HashMap::new();
    let mut budget = limits.max_output_elements;
    let mut tensors = Vec::with_capacity(flat.tensors.len());
    let mut index = HashMap::with_capacity(flat.tensors.len());
    for (name, t) in flat.tensors {
        let key = t.storage.key.clone();
        let entry = format!("{prefix}data/{key}");
        if !loaded.contains_key(&key) {
            if !archive.entries.contains_key(&entry) {
                return Err(PtError::MissingStorage(format!(
                    "tensor {name:?} uses storage record {entry:?}, which is not in the archive"
                )));
            }
            let bytes = archive.read_entry(&entry, u64::MAX)?;
            loaded.insert(key.clone(), bytes);
        }
        let bytes = loaded.get(&key).map(Vec::as_slice).unwrap_or_default();
        let tensor = materialize(&name, &t, bytes, &entry, &mut budget)?;
        if let Some(n) = users.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                loaded.remove(&key);
            }
        }
        index.insert(name.clone(), tensors.len());
        tensors.push((name, tensor));
    }
    Ok(PtCheckpoint {
        tensors,
        index,
        metadata: flat.metadata,
    })
}

/// Recognises what the file is before handing it to the zip parser, so non-zip inputs get a
/// useful message.
fn sniff<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<(), PtError> {
    let io_err = |source| PtError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(512);
    reader
        .by_ref()
        .take(512)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(());
    }
    // Legacy torch.save: a pickle stream (protocol 2) starting with the magic number, or a tar.
    let is_pickle = matches!(head.as_slice(), [0x80, 2..=5, ..]);
    let is_tar = head.get(257..262) == Some(b"ustar".as_slice());
    if is_pickle || is_tar {
        return Err(PtError::LegacyFormat);
    }
    let what = if head.is_empty() {
        "the file is empty".to_owned()
    } else if head.starts_with(b"version https://git-lfs") {
        "the file is a Git LFS pointer, not the checkpoint itself (run `git lfs pull`)".to_owned()
    } else if head.starts_with(b"\x89HDF") {
        "the file is HDF5, not a zip archive".to_owned()
    } else {
        let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!(
            "it does not start with a zip signature (first bytes: {})",
            shown.join(" ")
        )
    };
    Err(PtError::NotZip(what))
}

/// True if an entry name could escape a directory if it were ever extracted.
fn is_unsafe_name(raw: &[u8], name: &str) -> bool {
    raw.is_empty()
        || raw.contains(&0)
        || name.starts_with('/')
        || name.starts_with('\\')
        || name.as_bytes().get(1) == Some(&b':')
        || name.split(['/', '\\']).any(|part| part == "..")
}

fn zip_err(path: &Path, entry: &str, e: ZipError) -> PtError {
    match e {
        ZipError::Io(source) => io_err(path, entry, source),
        other => PtError::Malformed(format!("zip entry {entry:?}: {other}")),
    }
}

fn io_err(path: &Path, entry: &str, source: io::Error) -> PtError {
    match source.kind() {
        io::ErrorKind::UnexpectedEof => {
            PtError::Truncated(format!("zip entry {entry:?} ends early: {source}"))
        }
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            PtError::Malformed(format!("zip entry {entry:?} is corrupt: {source}"))
        }
        _ => PtError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl<R: Read + Seek> Archive<'_, R> {
    /// Checks every entry's name and declared sizes from the central directory, before anything
    /// is inflated.
    fn validate_entries(&mut self, file_len: u64, limits: &PtLimits) -> Result<(), PtError> {
        let mut total: u64 = 0;
        for index in 0..self.zip.len() {
            let label = self
                .zip
                .name_for_index(index)
                .map_or_else(|| format!("#{index}"), str::to_owned);
            let path = self.path;
            let file = self
                .zip
                .by_index_raw(index)
                .map_err(|e| zip_err(path, &label, e))?;
            let name = file.name().to_owned();
            if is_unsafe_name(file.name_raw(), &name) {
                return Err(PtError::UnsafeEntryName(name));
            }
            if file.is_dir() {
                continue;
            }
            if file.encrypted() {
                return Err(PtError::Malformed(format!(
                    "zip entry {name:?} is encrypted"
                )));
            }
            let method = file.compression();
            let stored = method == CompressionMethod::Stored;
            if !stored && method != CompressionMethod::Deflated {
                return Err(PtError::Malformed(format!(
                    "zip entry {name:?} uses compression method {method}; only stored and \
                     deflate entries are supported"
                )));
            }
            let size = file.size();
            let compressed = file.compressed_size();
            if stored && size != compressed {
                return Err(PtError::Malformed(format!(
                    "stored zip entry {name:?} declares {size} bytes but occupies {compressed}"
                )));
            }
            if !stored
                && size > RATIO_EXEMPT_BYTES
                && size > compressed.saturating_mul(limits.max_compression_ratio)
            {
                return Err(PtError::ZipBomb {
                    entry: name,
                    compressed,
                    uncompressed: size,
                    max_ratio: limits.max_compression_ratio,
                });
            }
            total = total.saturating_add(size);
            if total > limits.max_total_uncompressed_bytes {
                return Err(PtError::TooLarge {
                    what: format!("total uncompressed size of the archive (at entry {name:?})"),
                    size: total,
                    limit: limits.max_total_uncompressed_bytes,
                });
            }
            if let Some(start) = file.data_start()
                && start
                    .checked_add(compressed)
                    .is_none_or(|end| end > file_len)
            {
                return Err(PtError::Truncated(format!(
                    "zip entry {name:?} ({compressed} bytes from offset {start}) extends past \
                     the end of the {file_len}-byte file"
                )));
            }
            let info = EntryInfo {
                index,
                size,
                compressed,
                stored,
            };
            if self.entries.insert(name.clone(), info).is_some() {
                return Err(PtError::Malformed(format!(
                    "zip entry name {name:?} appears twice"
                )));
            }
        }
        Ok(())
    }

    /// The `<name>/` folder holding `data.pkl`.
    fn find_prefix(&self) -> Result<String, PtError> {
        let mut tops: Vec<&str> = self
            .entries
            .keys()
            .filter_map(|n| n.strip_suffix("/data.pkl"))
            .filter(|top| !top.is_empty() && !top.contains('/'))
            .collect();
        tops.sort_unstable();
        match tops.as_slice() {
            [top] => {
                let prefix = format!("{top}/");
                if self.entries.contains_key(&format!("{prefix}constants.pkl")) {
                    return Err(PtError::NotZip(
                        "this is a TorchScript archive (torch.jit.save), not a torch.save \
                         checkpoint"
                            .to_owned(),
                    ));
                }
                Ok(prefix)
            }
            [] => Err(PtError::NotZip(
                "the zip archive has no <name>/data.pkl record, so it is not a torch.save \
                 checkpoint"
                    .to_owned(),
            )),
            many => Err(PtError::Malformed(format!(
                "the zip archive has several data.pkl records (under {}); expected one",
                many.join(", ")
            ))),
        }
    }

    /// Inflates one entry whose declared size was validated, refusing more than `limit` bytes.
    fn read_entry(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, PtError> {
        let Some(info) = self.entries.get(name).copied() else {
            return Err(PtError::MissingStorage(format!(
                "record {name:?} is not in the archive"
            )));
        };
        if info.size > limit {
            return Err(PtError::TooLarge {
                what: format!("zip entry {name:?}"),
                size: info.size,
                limit,
            });
        }
        // Stored sizes were checked against the file length; for deflated entries reserve only
        // what the compressed size can plausibly produce and let the vector grow if needed.
        let reserve = if info.stored {
            info.size
        } else {
            info.size.min(info.compressed.saturating_mul(8))
        };
        let reserve = usize::try_from(reserve).map_err(|_| PtError::TooLarge {
            what: format!("zip entry {name:?} on this platform"),
            size: info.size,
            limit: usize::MAX as u64,
        })?;
        let mut buf = Vec::with_capacity(reserve);
        let path = self.path;
        self.zip
            .by_index(info.index)
            .map_err(|e| zip_err(path, name, e))?
            .take(info.size.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| io_err(path, name, e))?;
        if buf.len() as u64 != info.size {
            return Err(PtError::Truncated(format!(
                "zip entry {name:?} inflated to {} bytes but its header declares {}",
                buf.len(),
                info.size
            )));
        }
        Ok(buf)
    }
}

/// A validated view: where each output element lives in the storage.
struct Plan {
    offset: usize,
    shape: Vec<usize>,
    /// Strides with size-1 dimensions zeroed (their stride is irrelevant and may be huge).
    stride: Vec<usize>,
    numel: usize,
}

impl Plan {
    fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(d);
        }
        true
    }
}

fn materialize(
    name: &str,
    t: &TensorRef,
    bytes: &[u8],
    entry: &str,
    budget: &mut u64,
) -> Result<PtTensor, PtError> {
    let dtype = t.storage.dtype;
    let elem = dtype.size_bytes() as u64;
    let declared = t.storage.numel;
    let declared_bytes = declared.checked_mul(elem).ok_or_else(|| {
        PtError::Malformed(format!(
            "storage {entry:?} (tensor {name:?}) declares an impossible {declared} elements"
        ))
    })?;
    if (bytes.len() as u64) < declared_bytes {
        return Err(PtError::Malformed(format!(
            "storage {entry:?} (tensor {name:?}) holds {} bytes, but the checkpoint declares \
             {declared} {dtype} elements ({declared_bytes} bytes)",
            bytes.len()
        )));
    }

    let shape_text = || format!("{:?}", t.shape);
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| PtError::TooLarge {
            what: format!("element count of tensor {name:?} (shape {})", shape_text()),
            size: u64::MAX,
            limit: *budget,
        })?;
    if numel > *budget {
        return Err(PtError::TooLarge {
            what: format!(
                "element count of tensor {name:?} (shape {}), against the remaining output budget",
                shape_text()
            ),
            size: numel,
            limit: *budget,
        });
    }
    let out_of_bounds = |needed: u64| PtError::TensorOutOfBounds {
        name: name.to_owned(),
        storage: entry.to_owned(),
        needed,
        available: declared,
    };
    if numel > 0 {
        // Largest element index the view touches; it must lie inside the storage.
        let mut last = t.offset;
        for (&d, &s) in t.shape.iter().zip(&t.stride) {
            if d > 1 {
                last = (d - 1)
                    .checked_mul(s)
                    .and_then(|span| last.checked_add(span))
                    .ok_or_else(|| out_of_bounds(u64::MAX))?;
            }
        }
        if last >= declared {
            return Err(out_of_bounds(last.saturating_add(1)));
        }
    }
    *budget -= numel;

    let too_big = || PtError::TooLarge {
        what: format!("tensor {name:?} on this platform"),
        size: numel,
        limit: usize::MAX as u64,
    };
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| too_big());
    let shape = t
        .shape
        .iter()
        .map(|&d| to_usize(d))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = Plan {
        offset: if numel > 0 { to_usize(t.offset)? } else { 0 },
        stride: t
            .shape
            .iter()
            .zip(&t.stride)
            .map(|(&d, &s)| if d > 1 { to_usize(s) } else { Ok(0) })
            .collect::<Result<Vec<_>, _>>()?,
        shape: shape.clone(),
        numel: to_usize(numel)?,
    };
    let data = match dtype {
        PtDtype::F32 => gather(bytes, &plan, f32::from_le_bytes),
        PtDtype::F64 => gather(bytes, &plan, |b| f64::from_le_bytes(b) as f32),
        PtDtype::F16 => gather(bytes, &plan, |b| half::f16::from_le_bytes(b).to_f32()),
        PtDtype::BF16 => gather(bytes, &plan, |b| half::bf16::from_le_bytes(b).to_f32()),
        PtDtype::I64 => gather(bytes, &plan, |b| i64::from_le_bytes(b) as f32),
        PtDtype::I32 => gather(bytes, &plan, |b| i32::from_le_bytes(b) as f32),
        PtDtype::I16 => gather(bytes, &plan, |b| f32::from(i16::from_le_bytes(b))),
        PtDtype::I8 => gather(bytes, &plan, |b| f32::from(i8::from_le_bytes(b))),
        PtDtype::U8 => gather(bytes, &plan, |[b]| f32::from(b)),
        PtDtype::Bool => gather(bytes, &plan, |[b]| if b != 0 { 1.0 } else { 0.0 }),
    }
    .ok_or_else(|| out_of_bounds(declared.saturating_add(1)))?;
    Ok(PtTensor { dtype, shape, data })
}

/// Copies the view described by `plan` out of `bytes` (elements of `N` bytes), converting each
/// with `convert`. Returns `None` only if an index falls outside the storage, which the bounds
/// check in [`materialize`] already rules out.
fn gather<const N: usize>(
    bytes: &[u8],
    plan: &Plan,
    convert: impl Fn([u8; N]) -> f32,
) -> Option<Vec<f32>> {
    let (elems, _) = bytes.as_chunks::<N>();
    if plan.numel == 0 {
        return Some(Vec::new());
    }
    if plan.is_contiguous() {
        let end = plan.offset.checked_add(plan.numel)?;
        let src = elems.get(plan.offset..end)?;
        return Some(src.iter().map(|&e| convert(e)).collect());
    }
    let mut out = Vec::with_capacity(plan.numel);
    let Some((&inner_len, outer_shape)) = plan.shape.split_last() else {
        return Some(vec![convert(*elems.get(plan.offset)?)]);
    };
    let (&inner_stride, outer_stride) = plan.stride.split_last()?;
    let mut counter = vec![0usize; outer_shape.len()];
    let mut base = plan.offset;
    loop {
        for j in 0..inner_len {
            let at = j.checked_mul(inner_stride)?.checked_add(base)?;
            out.push(convert(*elems.get(at)?));
        }
        // Advance the outer odometer, last outer dimension fastest.
        let mut dim = outer_shape.len();
        loop {
            if dim == 0 {
                return Some(out);
            }
            dim -= 1;
            let (count, size, stride) = (
                counter.get_mut(dim)?,
                *outer_shape.get(dim)?,
                *outer_stride.get(dim)?,
            );
            *count += 1;
            base = base.checked_add(stride)?;
            if *count < size {
                break;
            }
            base = base.checked_sub(stride.checked_mul(size)?)?;
            *count = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(offset: usize, shape: &[usize], stride: &[usize]) -> Plan {
        Plan {
            offset,
            shape: shape.to_vec(),
            stride: shape
                .iter()
                .zip(stride)
                .map(|(&d, &s)| if d > 1 { s } else { 0 })
                .collect(),
            numel: shape.iter().product(),
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn gather_transposed_and_offset() {
        let base: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let bytes = f32_bytes(&base);
        // 3x4 row-major, transposed -> 4x3 with stride (1, 4)
        let out = gather(&bytes, &plan(0, &[4, 3], &[1, 4]), f32::from_le_bytes).unwrap();
        assert_eq!(out, vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        // rows 1.. of the 3x4 -> offset 4, contiguous
        let out = gather(&bytes, &plan(4, &[2, 4], &[4, 1]), f32::from_le_bytes).unwrap();
        assert_eq!(out, (4..12).map(|x| x as f32).collect::<Vec<_>>());
        // every other column, 3-D with a size-1 dim of absurd stride
        let out = gather(
            &bytes,
            &plan(1, &[3, 1, 2], &[4, usize::MAX, 2]),
            f32::from_le_bytes,
        )
        .unwrap();
        assert_eq!(out, vec![1., 3., 5., 7., 9., 11.]);
        // expanded (stride 0)
        let out = gather(&bytes, &plan(5, &[2, 3], &[0, 0]), f32::from_le_bytes).unwrap();
        assert_eq!(out, vec![5.; 6]);
        // scalar
        let out = gather(&bytes, &plan(7, &[], &[]), f32::from_le_bytes).unwrap();
        assert_eq!(out, vec![7.]);
        // empty
        let out = gather(&bytes, &plan(0, &[0, 3], &[3, 1]), f32::from_le_bytes).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn gather_out_of_range_is_none() {
        let bytes = f32_bytes(&[1., 2., 3.]);
        assert!(gather(&bytes, &plan(0, &[2, 2], &[2, 1]), f32::from_le_bytes).is_none());
        assert!(gather(&bytes, &plan(0, &[2, 2], &[1, 2]), f32::from_le_bytes).is_none());
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pt")
            .join(name);
        std::fs::read(&path).unwrap()
    }

    fn data_pkl(archive: &[u8]) -> Vec<u8> {
        let mut zip = ZipArchive::new(io::Cursor::new(archive)).unwrap();
        let mut file = zip.by_name("archive/data.pkl").unwrap();
        let mut out = Vec::new();
        file.read_to_end(&mut out).unwrap();
        out
    }

    /// Patches an entry's sizes in its local header and central directory record.
    fn patch_sizes(bytes: &mut [u8], entry: &str, compressed: u32, size: u32) {
        let name = entry.as_bytes();
        let mut patched = 0;
        for pos in 0..bytes.len().saturating_sub(46) {
            let sig = &bytes[pos..pos + 4];
            if sig == b"PK\x03\x04" && bytes[pos + 30..].starts_with(name) {
                bytes[pos + 18..pos + 22].copy_from_slice(&compressed.to_le_bytes());
                bytes[pos + 22..pos + 26].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            } else if sig == b"PK\x01\x02" && bytes[pos + 46..].starts_with(name) {
                bytes[pos + 20..pos + 24].copy_from_slice(&compressed.to_le_bytes());
                bytes[pos + 24..pos + 28].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
        assert_eq!(patched, 2);
    }

    #[test]
    fn mutated_pickles_never_panic() {
        // The zip CRC stops byte flips from reaching the VM, so fuzz the VM directly.
        for name in ["state_dict.pt", "nested.pt", "parameters.pt"] {
            let pkl = data_pkl(&fixture(name));
            for i in 0..pkl.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut p = pkl.clone();
                    p[i] ^= flip;
                    if let Ok(u) = pickle::unpickle(&p, "data.pkl") {
                        let _ = pickle::flatten(&u);
                    }
                }
                assert!(pickle::unpickle(&pkl[..i], "data.pkl").is_err());
            }
        }
    }

    #[test]
    fn stored_entry_claiming_more_than_the_file_is_truncated() {
        let mut bytes = fixture("stem_named.pt");
        patch_sizes(&mut bytes, "stem_named/data/0", 1 << 30, 1 << 30);
        let err = PtCheckpoint::from_bytes(&bytes).unwrap_err();
        assert!(matches!(err, PtError::Truncated(_)), "{err:?}");
        assert!(err.to_string().contains("stem_named/data/0"), "{err}");
    }

    #[test]
    fn stored_entry_with_mismatched_sizes_is_malformed() {
        let mut bytes = fixture("stem_named.pt");
        patch_sizes(&mut bytes, "stem_named/data/0", 4, 8);
        let err = PtCheckpoint::from_bytes(&bytes).unwrap_err();
        assert!(matches!(err, PtError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn unsafe_names() {
        for bad in [
            "../x",
            "archive/../../etc/passwd",
            "/etc/passwd",
            "\\x",
            "C:/x",
            "a\\..\\b",
        ] {
            assert!(is_unsafe_name(bad.as_bytes(), bad), "{bad}");
        }
        for ok in ["archive/data/0", "archive/.data/version", "a..b/c"] {
            assert!(!is_unsafe_name(ok.as_bytes(), ok), "{ok}");
        }
    }
}
