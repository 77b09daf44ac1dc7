//! The cellforge application: the desktop app ([`gui`]) and the command-line interface
//! ([`cli`]) over the `cellforge-core` engine. `main.rs` only dispatches between the two.

pub mod cli;
pub mod figure;
pub mod gui;
