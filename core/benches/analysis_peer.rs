//! The analysis toolbox against the Python tools people use today, side by side on the same
//! input in one run, printing the ratios:
//!
//! 1. kNN + UMAP on 50,000 x 512 embeddings (seeded synthetic clusters,
//!    `scripts/bench/make_embedding_blobs.py`): cellforge's NN-descent + UMAP vs scanpy's
//!    `pp.neighbors` (pynndescent) + `tl.umap` (umap-learn) (`scripts/bench/umap_peer.py`);
//!    wall time, peak memory, kNN recall and the trustworthiness (k = 15) of both layouts on
//!    the same 5,000-point subset.
//! 2. Leiden on a 200,000-node weighted graph with planted communities
//!    (`scripts/bench/leiden_peer.py make`) vs leidenalg (`... run`): wall time, quality of both
//!    partitions by the same quality function, ARI between them and against the planted truth.
//! 3. PCA (50 components) and DE (Wilcoxon, t-test; 20 groups vs rest) on a sparse 100,000 x
//!    2,000 matrix (`scripts/bench/make_sparse_expr.py`) vs scanpy's `pp.pca` and
//!    `tl.rank_genes_groups` (`scripts/bench/pca_de_peer.py`).
//!
//! Run: `cargo bench -p cellforge-core --bench analysis_peer`. Environment (optional):
//! `BENCH_SKIP` (comma list of `umap`, `leiden`, `pca_de`), `BENCH_DIR` (default
//! `<repo>/target/bench-data/analysis_peer`), `CELLFORGE_PYTHON` (default
//! `<repo>/.venv/bin/python`). Inputs are generated once and reused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cellforge_core::analysis::de::{DeMethod, DeOptions, DeTargets, rank_genes_groups};
use cellforge_core::analysis::expr::Expr;
use cellforge_core::analysis::knn::{Metric, umap_connectivities};
use cellforge_core::analysis::leiden::{LeidenOptions, leiden, modularity};
use cellforge_core::analysis::metrics::adjusted_rand_index;
use cellforge_core::analysis::nndescent::neighbors_auto;
use cellforge_core::analysis::pca::{PcaOptions, PcaSolver, pca};
use cellforge_core::analysis::umap::{UmapOptions, trustworthiness, umap};
use cellforge_core::analysis::{CsrMatrix, DenseMatrix};
use cellforge_core::tokenize::Rng;
use common::{peak_rss_kib, python, repo, skip};

/// Runs a bench script and parses the JSON on its last stdout line.
fn script(name: &str, args: &[&str]) -> serde_json::Value {
    let o = Command::new(python())
        .arg(repo().join("scripts/bench").join(name))
        .args(args)
        .env("OMP_NUM_THREADS", rayon::current_num_threads().to_string())
        .env(
            "NUMBA_NUM_THREADS",
            rayon::current_num_threads().to_string(),
        )
        .output()
        .expect("run python");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{name} failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(out.lines().last().unwrap_or("{}")).expect("json line")
}

fn read_le<T, const N: usize>(p: &Path, f: fn([u8; N]) -> T) -> Vec<T> {
    std::fs::read(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunk")))
        .collect()
}

fn f(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn header() {
    println!("| | cellforge | peer | peer / cellforge |");
    println!("|---|---|---|---|");
}

fn row(name: &str, ours: f64, theirs: f64, unit: &str) {
    println!(
        "| {name} | {ours:.3}{unit} | {theirs:.3}{unit} | {:.2}x |",
        theirs / ours
    );
}

fn umap_section(dir: &Path) {
    let prefix = dir.join("blobs50k");
    let data = prefix.with_extension("f32");
    if !data.exists() {
        script(
            "make_embedding_blobs.py",
            &["--out", prefix.to_str().expect("utf-8")],
        );
    }
    let (n, d, k) = (50_000usize, 512usize, 15usize);
    let x: Vec<f32> = read_le(&data, f32::from_le_bytes);
    let m = DenseMatrix::new(&x, n, d).expect("matrix");
    let t = Instant::now();
    let nn = neighbors_auto(&m, k, Metric::Euclidean, 0).expect("knn");
    let graph = umap_connectivities(&nn).expect("connectivities");
    let knn_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let layout = umap(&graph, Some(&m), &UmapOptions::default()).expect("umap");
    let umap_s = t.elapsed().as_secs_f64();
    let rss = peak_rss_kib() as f64 / 1024.0;
    // recall on 2,000 random queries against brute force
    let mut rng = Rng::new(1);
    let mut q: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut q);
    q.truncate(2000);
    let mut sub = Vec::with_capacity(q.len() * d);
    for &i in &q {
        sub.extend_from_slice(m.row(i));
    }
    let mut hits = 0usize;
    for (qi, &i) in q.iter().enumerate() {
        let row = &sub[qi * d..(qi + 1) * d];
        let mut dist: Vec<(f64, usize)> = (0..n)
            .map(|j| {
                let s: f64 = row
                    .iter()
                    .zip(m.row(j))
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                    .sum();
                (if j == i { -1.0 } else { s }, j)
            })
            .collect();
        dist.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        let exact: std::collections::HashSet<usize> = dist[..k].iter().map(|e| e.1).collect();
        hits += nn
            .indices_of(i)
            .iter()
            .filter(|&&j| exact.contains(&(j as usize)))
            .count();
    }
    let recall = hits as f64 / (q.len() * k) as f64;
    let peer_prefix = dir.join("peer50k");
    let peer = script(
        "umap_peer.py",
        &[
            data.to_str().expect("utf-8"),
            &n.to_string(),
            &d.to_string(),
            "--out",
            peer_prefix.to_str().expect("utf-8"),
        ],
    );
    // trustworthiness of our layout on the peer's subset
    let subset: Vec<u32> = read_le(
        &PathBuf::from(format!("{}_subset.u32", peer_prefix.display())),
        u32::from_le_bytes,
    );
    let mut hi = Vec::with_capacity(subset.len() * d);
    let mut lo = Vec::with_capacity(subset.len() * 2);
    for &i in &subset {
        hi.extend_from_slice(m.row(i as usize));
        lo.extend_from_slice(&layout.embedding[i as usize * 2..i as usize * 2 + 2]);
    }
    let trust = trustworthiness(
        &DenseMatrix::new(&hi, subset.len(), d).expect("hi"),
        &DenseMatrix::new(&lo, subset.len(), 2).expect("lo"),
        15,
        Metric::Euclidean,
    )
    .expect("trustworthiness");
    println!(
        "\n## kNN (k = {k}) + UMAP, {n} x {d} embeddings, {} threads\n",
        rayon::current_num_threads()
    );
    header();
    row("kNN graph (s)", knn_s, f(&peer, "knn_s"), "");
    row("UMAP layout (s)", umap_s, f(&peer, "umap_s"), "");
    row("kNN + UMAP (s)", knn_s + umap_s, f(&peer, "total_s"), "");
    row(
        "kNN + UMAP incl. the peer's numba JIT warm-up (s)",
        knn_s + umap_s,
        f(&peer, "total_s") + f(&peer, "jit_warmup_s"),
        "",
    );
    row("peak memory added (MiB)", rss, f(&peer, "peak_rss_mb"), "");
    println!(
        "| kNN recall vs exact | {recall:.4} | {:.4} | |",
        f(&peer, "recall")
    );
    println!(
        "| trustworthiness (k = 15, same 5,000 points) | {trust:.4} | {:.4} | |",
        f(&peer, "trustworthiness")
    );
    println!("peer versions: {}", peer["versions"]);
}

fn leiden_section(dir: &Path) {
    let g = dir.join("leiden200k");
    if !g.join("graph.json").exists() {
        script("leiden_peer.py", &["make", g.to_str().expect("utf-8")]);
    }
    let indptr: Vec<usize> = read_le(&g.join("indptr.u64"), u64::from_le_bytes)
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let n = indptr.len() - 1;
    let graph = CsrMatrix::new(
        n,
        n,
        indptr,
        read_le(&g.join("indices.u32"), u32::from_le_bytes),
        read_le(&g.join("data.f32"), f32::from_le_bytes),
    )
    .expect("graph");
    let truth: Vec<u32> = read_le(&g.join("truth.u32"), u32::from_le_bytes);
    let t = Instant::now();
    let ours = leiden(
        &graph,
        &LeidenOptions {
            resolution: 1.0,
            seed: 0,
            n_iterations: -1,
        },
    )
    .expect("leiden");
    let secs = t.elapsed().as_secs_f64();
    let peer = script("leiden_peer.py", &["run", g.to_str().expect("utf-8")]);
    let theirs: Vec<u32> = read_le(&g.join("leidenalg.u32"), u32::from_le_bytes);
    let q_theirs = modularity(&graph, &theirs, 1.0).expect("quality");
    println!(
        "\n## Leiden (resolution 1), {n} nodes, {} stored edges, {} threads\n",
        graph.nnz(),
        rayon::current_num_threads()
    );
    header();
    row("clustering (s)", secs, f(&peer, "seconds"), "");
    println!(
        "| clusters | {} | {} | |",
        ours.n_clusters, peer["n_clusters"]
    );
    println!(
        "| quality (modularity at resolution 1, same function) | {:.5} | {q_theirs:.5} | |",
        ours.quality
    );
    println!(
        "| ARI vs planted communities | {:.4} | {:.4} | |",
        adjusted_rand_index(&ours.labels, &truth).expect("ari"),
        adjusted_rand_index(&theirs, &truth).expect("ari")
    );
    println!(
        "ARI cellforge vs leidenalg: {:.4}; leidenalg {} / igraph {}",
        adjusted_rand_index(&ours.labels, &theirs).expect("ari"),
        peer["leidenalg"],
        peer["igraph"]
    );
}

fn pca_de_section(dir: &Path) {
    let data = dir.join("sparse_expr");
    if !data.join("meta.json").exists() {
        script(
            "make_sparse_expr.py",
            &["--out", data.to_str().expect("utf-8")],
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("meta.json")).expect("meta"))
            .expect("meta json");
    let field = |k: &str| meta[k].as_u64().expect("meta field") as usize;
    let (n, g, ng) = (field("n_cells"), field("n_genes"), field("n_groups"));
    let indptr: Vec<usize> = read_le(&data.join("indptr.u64"), u64::from_le_bytes)
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let x = CsrMatrix::new(
        n,
        g,
        indptr,
        read_le(&data.join("indices.u32"), u32::from_le_bytes),
        read_le(&data.join("data.f32"), f32::from_le_bytes),
    )
    .expect("csr");
    let groups: Vec<u32> = read_le(&data.join("groups.u32"), u32::from_le_bytes);
    let e = Expr::Sparse(&x);
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let mut exact = None;
    let exact_s = time(&mut || {
        exact = Some(
            pca(
                e,
                &PcaOptions {
                    solver: PcaSolver::Exact,
                    ..PcaOptions::default()
                },
            )
            .expect("pca"),
        )
    });
    let mut rnd = None;
    let rnd_s = time(&mut || {
        rnd = Some(
            pca(
                e,
                &PcaOptions {
                    n_oversamples: 50,
                    n_power_iter: Some(12),
                    ..PcaOptions::default()
                },
            )
            .expect("pca"),
        )
    });
    let (exact, rnd) = (exact.expect("exact"), rnd.expect("randomised"));
    let var_err = exact
        .variance
        .iter()
        .zip(&rnd.variance)
        .map(|(a, b)| (a - b).abs() / a)
        .fold(0.0, f64::max);
    let de = |m: DeMethod| {
        let t = Instant::now();
        rank_genes_groups(
            e,
            &groups,
            ng,
            &DeTargets::AllVsRest,
            m,
            &DeOptions::default(),
        )
        .expect("de");
        t.elapsed().as_secs_f64()
    };
    let wil_s = de(DeMethod::Wilcoxon);
    let tt_s = de(DeMethod::TTest);
    let peer = script(
        "pca_de_peer.py",
        &[
            "--data",
            data.to_str().expect("utf-8"),
            "--skip",
            "pca_nozc",
        ],
    );
    println!(
        "\n## PCA (50 components) and DE ({ng} groups vs rest), sparse {n} x {g}, {} non-zeros, {} threads\n",
        x.nnz(),
        rayon::current_num_threads()
    );
    header();
    let peer_pca = peer["pca_s"]
        .as_f64()
        .or(peer["pca_arpack_s"].as_f64())
        .unwrap_or(f64::NAN);
    row("PCA, exact (s) vs scanpy arpack", exact_s, peer_pca, "");
    row(
        "PCA, randomised p=50 q=12 (s) vs scanpy arpack",
        rnd_s,
        peer_pca,
        "",
    );
    row("Wilcoxon (s)", wil_s, f(&peer, "wilcoxon_s"), "");
    row("t-test (s)", tt_s, f(&peer, "ttest_s"), "");
    println!(
        "randomised vs exact explained variance, largest relative difference over 50 components: {var_err:.2e}"
    );
    println!("peer: {peer}");
}

fn main() {
    cellforge_core::sys::tune_allocator();
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/bench-data/analysis_peer"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    if !skip("umap") {
        umap_section(&dir);
    }
    if !skip("leiden") {
        leiden_section(&dir);
    }
    if !skip("pca_de") {
        pca_de_section(&dir);
    }
}
