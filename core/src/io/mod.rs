//! h5ad input and output. The reader dispatches on the AnnData encoding attributes and also
//! opens the layouts older anndata releases wrote; the writer emits current encodings and
//! writes atomically; [`BackedH5ad`] reads X in row chunks.
//!
//! Files are only ever opened read-only for reading: the input is never modified.

mod backed;
mod direct;
mod error;
mod h5;
mod read;
mod validate;
mod write;

pub use backed::{BackedH5ad, RowChunk};
pub use error::{H5adError, Result};
pub use h5::Compression;
pub use read::{ReadWarning, read_h5ad, read_h5ad_backed, read_h5ad_with_warnings};
pub(crate) use validate::non_finite_warnings;
pub use write::{WriteOptions, XFormat, write_h5ad};

use std::io::Read;
use std::path::Path;

const HDF5_SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

/// Checks that `path` exists, is non-empty and carries the HDF5 signature (at offset 0 or at
/// a user-block offset 512, 1024, 2048 ...), before the HDF5 library sees it.
fn check_signature(path: &Path) -> Result<()> {
    let open_err = |e| error::H5adError::Open {
        path: path.to_path_buf(),
        source: e,
    };
    let meta = std::fs::metadata(path).map_err(open_err)?;
    if meta.is_dir() {
        return Err(H5adError::Open {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory, not a file"),
        });
    }
    if meta.len() == 0 {
        return Err(H5adError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let mut f = std::fs::File::open(path).map_err(open_err)?;
    let mut offset = 0u64;
    let mut buf = [0u8; 8];
    while offset + 8 <= meta.len() {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset)).map_err(open_err)?;
        f.read_exact(&mut buf).map_err(open_err)?;
        if buf == HDF5_SIGNATURE {
            return Ok(());
        }
        offset = if offset == 0 { 512 } else { offset * 2 };
    }
    Err(H5adError::NotHdf5 {
        path: path.to_path_buf(),
    })
}

/// Opens an HDF5 file read-only after checking it looks like one.
pub(crate) fn open_read_only(path: &Path) -> Result<hdf5::File> {
    check_signature(path)?;
    hdf5::File::open(path).map_err(|e| H5adError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Whether two paths name the same existing file (commands refuse to write over their input).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
