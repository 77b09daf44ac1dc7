//! Tools built on the model.

pub mod embed;
pub mod embed_job;
