//! Errors of the h5ad reader and writer. Every variant names the element (its path inside the
//! file) so a user can tell which part of a file is at fault.

use std::path::PathBuf;

/// What went wrong while reading or writing an `.h5ad` file.
#[derive(Debug, thiserror::Error)]
pub enum H5adError {
    #[error("the file is empty (zero bytes); it is not an h5ad file")]
    EmptyFile { path: PathBuf },
    #[error(
        "not an HDF5 file (no HDF5 signature found); h5ad files are HDF5 files, \
         this one may be truncated, a different format, or still being copied"
    )]
    NotHdf5 { path: PathBuf },
    #[error("cannot open the file: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the HDF5 library could not open the file (truncated or corrupt?): {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("element '{element}': HDF5 error: {message}")]
    Hdf5 { element: String, message: String },
    #[error("element '{element}' is missing{hint}")]
    Missing { element: String, hint: String },
    #[error(
        "element '{element}' has encoding-type '{encoding_type}' version '{version}', which cellforge does not understand"
    )]
    UnknownEncoding {
        element: String,
        encoding_type: String,
        version: String,
    },
    #[error("element '{element}': {message}")]
    Invalid { element: String, message: String },
    #[error("element '{element}': shape mismatch: {message}")]
    Shape { element: String, message: String },
    #[error("element '{element}' has data type {dtype}, expected {expected}")]
    Dtype {
        element: String,
        dtype: String,
        expected: String,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl H5adError {
    pub(crate) fn invalid(element: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            element: element.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn shape(element: &str, message: impl Into<String>) -> Self {
        Self::Shape {
            element: element.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn hdf5(element: &str, err: hdf5::Error) -> Self {
        Self::Hdf5 {
            element: element.to_string(),
            message: err.to_string(),
        }
    }
}

pub type Result<T, E = H5adError> = std::result::Result<T, E>;

/// Adds the element path to an HDF5 error.
pub(crate) trait H5Context<T> {
    fn at(self, element: &str) -> Result<T>;
}

impl<T> H5Context<T> for hdf5::Result<T> {
    fn at(self, element: &str) -> Result<T> {
        self.map_err(|e| H5adError::hdf5(element, e))
    }
}
