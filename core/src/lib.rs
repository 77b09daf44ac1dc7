//! cellforge-core: the engine behind the cellforge app and CLI, with no GUI dependency.
//!
//! - [`analysis`]: metrics (classification, NMI/ARI, silhouette), exact kNN + UMAP
//!   connectivities, Leiden, scib-style integration metrics.
//! - [`anndata`]: the in-memory AnnData object.
//! - [`io`]: h5ad reading (including legacy layouts), atomic writing, backed chunked reads.
//! - [`summary`]: what a file holds, in words (the `inspect` command and the data panel).
//! - [`vocab`]: scGPT gene vocabularies and gene matching.
//! - [`checkpoint`]: a PyTorch `.pt` reader that never executes the pickle.
//! - [`model`]: the scGPT model family in burn, model folders (scGPT and native).
//! - [`device`]: CUDA -> wgpu -> CPU selection with reasons.
//! - [`pp`]: preprocessing (filters, normalize_total, log1p, HVG, binning) with scanpy parity.
//! - [`tl`]: tools on top of the model (`tl::embed`: cell embeddings).
//! - [`train`]: fine-tuning objectives, optimiser, training loop with checkpoints.

pub mod analysis;
pub mod anndata;
pub mod checkpoint;
pub mod device;
pub mod fmt;
pub mod io;
pub mod model;
pub mod pp;
pub mod summary;
pub mod sys;
pub mod tl;
pub mod tokenize;
pub mod train;
pub mod vocab;

pub use anndata::AnnData;
