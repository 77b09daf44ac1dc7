//! Helpers shared by the benchmark binaries (each uses a subset).
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root (cargo runs benches from the crate folder).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A whole-number environment variable, or `default` when unset.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// A kB field of `/proc/self/status` (`VmHWM:`, `VmRSS:` ...), 0 when unavailable.
pub fn status_field(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// This process's peak resident memory in KiB (the kernel's high-water mark).
pub fn peak_rss_kib() -> u64 {
    status_field("VmHWM:")
}
