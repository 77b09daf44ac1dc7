//! cellforge-core: the engine behind the cellforge app and CLI, with no GUI dependency.
//!
//! - [`anndata`]: the in-memory AnnData object.
//! - [`io`]: h5ad reading (including legacy layouts), atomic writing, backed chunked reads.
//! - [`summary`]: what a file holds, in words (the `inspect` command and the data panel).

pub mod anndata;
pub mod fmt;
pub mod io;
pub mod summary;

pub use anndata::AnnData;
