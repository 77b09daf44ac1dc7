//! End-to-end test support: where the repository, the shared data and a Python with anndata
//! are, and wrappers around the interop scripts (`scripts/interop`). Used by the app's CLI
//! interop tests and this crate's own tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// `../shared/data` beside the repository, or `CELLFORGE_SHARED_DATA`. Missing data is a
/// failure: these tests never skip.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("CELLFORGE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/data"));
    assert!(
        dir.join("README.md").is_file(),
        "shared data not found at {} (set CELLFORGE_SHARED_DATA)",
        dir.display()
    );
    dir
}

/// A Python with anndata: `CELLFORGE_PYTHON`, else the repository's `.venv`. Panics with the
/// set-up command when there is none (the interop tests must not silently pass).
pub fn python() -> PathBuf {
    let candidate = std::env::var_os("CELLFORGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import anndata"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "no Python with anndata at {}: run `bash scripts/test.sh` (it creates .venv) or set CELLFORGE_PYTHON",
        candidate.display()
    );
    candidate
}

/// Runs an interop script with arguments and returns its output.
pub fn run_script(script: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(python())
        .arg(repo_root().join("scripts/interop").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"))
}

/// Writes the interop fixtures (plus copies of the real shared files) into `dir` and returns
/// the fixture file names from its manifest.
pub fn make_fixtures(dir: &Path) -> Vec<String> {
    let out = run_script(
        "make_fixtures.py",
        &[
            dir.as_os_str(),
            "--shared-data".as_ref(),
            shared_data().as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "make_fixtures.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("fixture dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".h5ad"))
        .collect();
    names.sort();
    names
}

/// Asks Python anndata whether `converted` reads back equal to `original`. Returns the
/// verifier's report on failure.
pub fn verify_roundtrip(
    original: &Path,
    converted: &Path,
    x_format: Option<&str>,
) -> Result<(), String> {
    let mut args: Vec<&std::ffi::OsStr> = vec![original.as_os_str(), converted.as_os_str()];
    if let Some(f) = x_format {
        args.push("--x-format".as_ref());
        args.push(f.as_ref());
    }
    let out = run_script("verify_roundtrip.py", &args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
