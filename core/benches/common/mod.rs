//! Helpers shared by the benchmark binaries (each uses a subset).
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root (cargo runs benches from the crate folder).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared datasets: `CELLFORGE_SHARED_DATA`, else `<repo>/../shared/data`.
pub fn shared() -> PathBuf {
    std::env::var_os("CELLFORGE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"))
}

/// The Python the peers run in: `CELLFORGE_PYTHON`, else `<repo>/.venv/bin/python`.
pub fn python() -> PathBuf {
    std::env::var_os("CELLFORGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"))
}

/// Whether `BENCH_SKIP` (a comma list) names `what`.
pub fn skip(what: &str) -> bool {
    std::env::var("BENCH_SKIP").is_ok_and(|s| s.split(',').any(|x| x.trim() == what))
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
