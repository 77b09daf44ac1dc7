//! The whole scGPT preprocessing chain on raw counts, cellforge against scanpy + the scgpt
//! `Preprocessor`, side by side on the same file, each in its own process (peak memory is per
//! implementation): read, normalize_total 1e4, log1p, HVG seurat_v3 (1,200, subset), bin 51,
//! write.
//!
//! Run: `cargo bench -p cellforge-core --bench preprocess`. The first run writes the input
//! with `scripts/bench/make_bench_h5ad.py --counts poisson` (100,000 cells x 20,000 genes, Poisson counts
//! with lognormal gene means, ~1.2 GB). The Python side is
//! `scripts/reference/bench_pp_reference.py` in the reference venv.
//!
//! Environment (all optional):
//! - `BENCH_PP_DIR` (default `<repo>/target/bench-data/pp`, absolute)
//! - `BENCH_CELLS` / `BENCH_GENES` (default 100000 / 20000): size of the generated input
//! - `BENCH_N_HVG` (default 1200), `BENCH_BATCH_KEY` (default none; `batch` ranks per batch)
//! - `BENCH_MEMORY_BUDGET_MB` (default: cellforge's, 0): input kept in memory between
//!   passes; 0 streams every pass from disk
//! - `BENCH_RUNS` (default 1): runs per implementation, the median is reported
//! - `BENCH_SKIP`: `cellforge` or `scgpt` to run one side only
//! - `CELLFORGE_PYTHON` (default `<repo>/.venv/bin/python`) writes the input;
//!   `CELLFORGE_REF_PYTHON` (default `<repo>/.venv-ref/bin/python`) runs the reference

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cellforge_core::pp::{HvgFlavor, HvgOptions, PreprocessOptions, TargetSum, preprocess_to_file};
use common::{env_usize, peak_rss_kib, repo};

fn python(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default))
}

/// Runs in the child process: the chain end to end, then one JSON line.
fn child(input: &Path, output: &Path, n_hvg: usize, batch_key: Option<String>) {
    // as the cellforge binary does at start-up
    cellforge_core::sys::tune_allocator();
    let t0 = Instant::now();
    let opts = PreprocessOptions {
        normalize_total: Some(TargetSum::Fixed(1e4)),
        log1p: true,
        hvg: Some(HvgOptions {
            n_top_genes: n_hvg,
            flavor: HvgFlavor::SeuratV3,
            batch_key,
            subset: true,
            ..HvgOptions::default()
        }),
        n_bins: Some(51),
        seed: 0,
        memory_budget: std::env::var("BENCH_MEMORY_BUDGET_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(PreprocessOptions::default().memory_budget, |mb| mb << 20),
        ..PreprocessOptions::default()
    };
    // Time spent in each pass, on stderr.
    let mut pass = "";
    let mut since = Instant::now();
    let report = preprocess_to_file(input, output, &opts, &mut |p| {
        if p.pass != pass {
            if !pass.is_empty() {
                eprintln!("  {pass}: {:.2} s", since.elapsed().as_secs_f64());
            }
            pass = p.pass;
            since = Instant::now();
        }
        ControlFlow::Continue(())
    })
    .expect("cellforge preprocess");
    eprintln!("  {pass} + write: {:.2} s", since.elapsed().as_secs_f64());
    println!(
        "{{\"total_s\": {}, \"peak_rss_kib\": {}, \"cells\": {}, \"genes\": {}}}",
        t0.elapsed().as_secs_f64(),
        peak_rss_kib(),
        report.cells_out,
        report.genes_out
    );
}

struct Run {
    seconds: f64,
    peak_kib: u64,
    shape: (u64, u64),
}

fn parse(stdout: &[u8], who: &str) -> Run {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("{who} printed no result:\n{text}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    Run {
        seconds: v["total_s"].as_f64().unwrap_or(f64::NAN),
        peak_kib: v["peak_rss_kib"].as_u64().unwrap_or(0),
        shape: (
            v["cells"].as_u64().unwrap_or(0),
            v["genes"].as_u64().unwrap_or(0),
        ),
    }
}

fn median_run(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let k = runs.len() / 2;
    runs.swap_remove(k)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let n_hvg = args[pos + 3].parse().expect("n_hvg");
        let key = args.get(pos + 4).filter(|k| !k.is_empty()).cloned();
        child(
            Path::new(&args[pos + 1]),
            Path::new(&args[pos + 2]),
            n_hvg,
            key,
        );
        return;
    }
    let dir = std::env::var_os("BENCH_PP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/bench-data/pp"));
    let cells = env_usize("BENCH_CELLS", 100_000);
    let genes = env_usize("BENCH_GENES", 20_000);
    let n_hvg = env_usize("BENCH_N_HVG", 1200);
    let runs = env_usize("BENCH_RUNS", 1).max(1);
    let batch_key = std::env::var("BENCH_BATCH_KEY").unwrap_or_default();
    let skip = std::env::var("BENCH_SKIP").unwrap_or_default();
    std::fs::create_dir_all(&dir).expect("bench dir");
    let input = dir.join(format!("counts_{}k_{}k.h5ad", cells / 1000, genes / 1000));
    if !input.exists() {
        eprintln!("writing {} ...", input.display());
        let st = Command::new(python("CELLFORGE_PYTHON", ".venv/bin/python"))
            .arg(repo().join("scripts/bench/make_bench_h5ad.py"))
            .arg(&input)
            .args(["--counts", "poisson"])
            .args(["--cells", &cells.to_string(), "--genes", &genes.to_string()])
            .status()
            .expect("run the generator");
        assert!(st.success(), "generator failed");
    }
    let size = std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0);
    println!(
        "input: {} ({:.2} GB), HVG seurat_v3 {n_hvg}{}, 51 bins",
        input.display(),
        size as f64 / 1e9,
        if batch_key.is_empty() {
            String::new()
        } else {
            format!(" per batch ({batch_key})")
        }
    );
    let mut results: Vec<(&str, Run)> = Vec::new();
    if !skip.contains("cellforge") {
        let exe = std::env::current_exe().expect("exe");
        let out = dir.join("cellforge_out.h5ad");
        let mut rs = Vec::new();
        for _ in 0..runs {
            let o = Command::new(&exe)
                .arg("--child")
                .arg(&input)
                .arg(&out)
                .arg(n_hvg.to_string())
                .arg(&batch_key)
                .output()
                .expect("run child");
            assert!(
                o.status.success(),
                "cellforge child failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            eprint!("{}", String::from_utf8_lossy(&o.stderr));
            rs.push(parse(&o.stdout, "cellforge"));
        }
        results.push(("cellforge preprocess", median_run(rs)));
    }
    if !skip.contains("scgpt") {
        let out = dir.join("scgpt_out.h5ad");
        let mut rs = Vec::new();
        for _ in 0..runs {
            let mut cmd = Command::new(python("CELLFORGE_REF_PYTHON", ".venv-ref/bin/python"));
            cmd.arg(repo().join("scripts/reference/bench_pp_reference.py"))
                .arg(&input)
                .arg(&out)
                .args(["--n-hvg", &n_hvg.to_string()]);
            if !batch_key.is_empty() {
                cmd.args(["--batch-key", &batch_key]);
            }
            let o = cmd.output().expect("run the reference");
            assert!(
                o.status.success(),
                "reference failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            rs.push(parse(&o.stdout, "scgpt"));
        }
        results.push(("scanpy + scgpt Preprocessor", median_run(rs)));
    }
    let base = results
        .iter()
        .find(|(n, _)| n.starts_with("scanpy"))
        .map(|(_, r)| r.seconds);
    println!(
        "\n| implementation | output | seconds | peak RSS | speed-up vs scanpy+scGPT |\n|---|---|---:|---:|---:|"
    );
    for (name, r) in &results {
        println!(
            "| {name} | {} x {} | {:.2} | {:.2} GiB | {} |",
            r.shape.0,
            r.shape.1,
            r.seconds,
            r.peak_kib as f64 / 1024.0 / 1024.0,
            base.map(|b| format!("{:.2}x", b / r.seconds))
                .unwrap_or_else(|| "-".into())
        );
    }
}
