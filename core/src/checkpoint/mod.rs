//! Reading model checkpoints from other frameworks.
//!
//! - [`pt`]: PyTorch `torch.save` zip checkpoints, read without executing any pickle code.

mod pickle;
pub mod pt;

pub use pt::{PtCheckpoint, PtDtype, PtError, PtLimits, PtTensor};
