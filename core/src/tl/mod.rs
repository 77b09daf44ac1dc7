//! Tools built on the model.

pub mod annotate;
pub mod embed;
pub mod embed_job;
