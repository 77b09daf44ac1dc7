//! Shared helpers for core's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project's shared data folder (`../shared/data` beside the repository), or the folder
/// named by `CELLFORGE_SHARED_DATA`. Missing data is a test failure, never a skip.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("CELLFORGE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(
        dir.join("README.md").is_file(),
        "shared data not found at {} (set CELLFORGE_SHARED_DATA)",
        dir.display()
    );
    dir
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// SHA-256-free content fingerprint: length + FNV-1a of the bytes.
pub fn fingerprint(path: &std::path::Path) -> (u64, u64) {
    let bytes = std::fs::read(path).expect("read file");
    let mut h: u64 = 0xcbf29ce484222325;
    for b in &bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (bytes.len() as u64, h)
}
