//! Tools built on the model.

pub mod embed;
