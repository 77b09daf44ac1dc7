//! Tools built on the model.

pub mod analyze;
pub mod annotate;
pub mod embed;
pub mod embed_job;
pub mod generate;
pub mod genes;
pub mod labels;
pub mod plot;
