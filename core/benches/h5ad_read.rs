//! h5ad read benchmark: cellforge full read and backed chunked read against
//! `anndata.read_h5ad`, side by side on the same file, each in its own process so peak memory
//! is measured per reader.
//!
//! Run: `cargo bench -p cellforge-core --bench h5ad_read` (generates a 100k x 20k CSR file with
//! ~1,500 non-zeros per cell under target/bench-data the first time, using Python anndata).
//! Environment: `BENCH_H5AD=/absolute/path.h5ad` to use another file (cargo runs benches from
//! the crate folder, so relative paths resolve there), `BENCH_RUNS=n` (default 3),
//! `BENCH_CHUNK_ROWS=n` (default 10000), `CELLFORGE_PYTHON=python with anndata`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cellforge_core::anndata::Element;
use cellforge_core::io::{BackedH5ad, read_h5ad};
use common::peak_rss_kib;

/// Child mode: do one read and print "seconds peak_kib checksum".
fn child(mode: &str, path: &Path, chunk_rows: usize) {
    let t = Instant::now();
    let checksum: f64 = match mode {
        "full" => {
            let a = read_h5ad(path).expect("read");
            match &a.x {
                Some(Element::Sparse(s)) => s.nnz() as f64,
                Some(Element::Dense(d)) => d.data.len() as f64,
                _ => 0.0,
            }
        }
        "backed" => {
            let b = BackedH5ad::open(path).expect("open");
            let mut nnz = 0usize;
            for item in b.chunks(chunk_rows) {
                let (_, chunk) = item.expect("chunk");
                nnz += chunk.into_csr().nnz();
            }
            nnz as f64
        }
        other => panic!("unknown mode {other}"),
    };
    let secs = t.elapsed().as_secs_f64();
    println!("{secs} {} {checksum}", peak_rss_kib());
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CELLFORGE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

const PY_READ: &str = r#"
import sys, time, resource
import anndata as ad
t = time.perf_counter()
a = ad.read_h5ad(sys.argv[1])
secs = time.perf_counter() - t
print(secs, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, a.X.nnz)
"#;

fn run(cmd: &mut Command) -> (f64, u64, f64) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default().to_string();
    let mut parts = line.split_whitespace();
    let secs = parts.next().and_then(|v| v.parse().ok()).expect("seconds");
    let kib = parts.next().and_then(|v| v.parse().ok()).expect("peak");
    let check = parts.next().and_then(|v| v.parse().ok()).expect("check");
    (secs, kib, check)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let chunk_rows: usize = std::env::var("BENCH_CHUNK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        child(&args[pos + 1], Path::new(&args[pos + 2]), chunk_rows);
        return;
    }
    let path = std::env::var_os("BENCH_H5AD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bench-data/bench_100k_20k.h5ad")
        });
    if !path.is_file() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench/make_bench_h5ad.py");
        eprintln!("generating {} with anndata (one-off)...", path.display());
        let st = Command::new(python())
            .arg(script)
            .arg(&path)
            .status()
            .expect("python");
        assert!(st.success(), "generating the benchmark file failed");
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let exe = std::env::current_exe().expect("exe");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "h5ad read benchmark: {} ({}), {runs} runs each, median shown",
        path.display(),
        cellforge_core::fmt::bytes(size)
    );
    let mut results = Vec::new();
    for (name, mk) in [
        ("anndata.read_h5ad", 0),
        ("cellforge full read", 1),
        ("cellforge backed read", 2),
    ] {
        let mut times = Vec::new();
        let mut peaks = Vec::new();
        let mut check = 0.0;
        for _ in 0..runs {
            let (s, kib, c) = match mk {
                0 => run(Command::new(python()).arg("-c").arg(PY_READ).arg(&path)),
                1 => run(Command::new(&exe).arg("--child").arg("full").arg(&path)),
                _ => run(Command::new(&exe).arg("--child").arg("backed").arg(&path)),
            };
            times.push(s);
            peaks.push(kib as f64);
            check = c;
        }
        results.push((name, median(times), median(peaks), check));
    }
    let nnz_ref = results[0].3;
    for r in &results[1..] {
        assert_eq!(r.3, nnz_ref, "{} read a different number of non-zeros", r.0);
    }
    let base = results[0].1;
    println!(
        "{:<24} {:>10} {:>12} {:>16}",
        "reader", "seconds", "peak RSS", "vs anndata"
    );
    for (name, secs, peak, _) in &results {
        println!(
            "{name:<24} {secs:>10.3} {:>12} {:>15.2}x",
            cellforge_core::fmt::bytes((*peak as u64) * 1024),
            base / secs
        );
    }
    println!("(backed read: chunks of {chunk_rows} rows; ratio > 1 means faster than anndata)");
}
