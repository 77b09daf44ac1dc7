//! Parity of `analysis::{nndescent, umap}` with umap-learn 0.5.12 / pynndescent / scikit-learn,
//! on goldens written by `scripts/reference/make_umap_goldens.py` (`tests/fixtures/umap/`).

use std::path::PathBuf;
use std::time::Instant;

use cellforge_core::analysis::knn::{Knn, Metric, knn};
use cellforge_core::analysis::nndescent::{NnDescentOptions, approx_knn, neighbors_auto};
use cellforge_core::analysis::umap::{
    UmapInit, UmapOptions, find_ab_params, spectral_eigenpairs, trustworthiness, umap,
};
use cellforge_core::analysis::{CsrMatrix, DenseMatrix};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/umap")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("umap.json")).expect("umap.json");
    serde_json::from_str(&text).expect("valid json")
}

fn read_f32(name: &str) -> Vec<f32> {
    std::fs::read(fixture_dir().join(name))
        .expect("fixture file")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn read_u32(name: &str) -> Vec<u32> {
    std::fs::read(fixture_dir().join(name))
        .expect("fixture file")
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Dataset {
    name: &'static str,
    n: usize,
    d: usize,
    x: Vec<f32>,
    knn: Vec<u32>,
    conn: CsrMatrix<f32>,
    json: Value,
}

fn dataset(g: &Value, name: &'static str) -> Dataset {
    let ds = &g["datasets"][name];
    let n = ds["n"].as_u64().expect("n") as usize;
    let d = ds["d"].as_u64().expect("d") as usize;
    let c = &ds["connectivities"];
    let conn = CsrMatrix::new(
        n,
        n,
        read_u32(c["indptr"].as_str().expect("indptr"))
            .into_iter()
            .map(|v| v as usize)
            .collect(),
        read_u32(c["indices"].as_str().expect("indices")),
        read_f32(c["data"].as_str().expect("data")),
    )
    .expect("valid CSR");
    Dataset {
        name,
        n,
        d,
        x: read_f32(ds["embedding"].as_str().expect("embedding")),
        knn: read_u32(ds["knn_indices"].as_str().expect("knn")),
        conn,
        json: ds.clone(),
    }
}

fn both() -> Vec<Dataset> {
    let g = golden();
    vec![dataset(&g, "pbmc68k"), dataset(&g, "symphony")]
}

/// Fraction of the exact neighbours (self included) found, rows of `k` indices.
fn recall(approx: &Knn, exact: &[u32], k: usize) -> f64 {
    let mut hit = 0;
    for i in 0..approx.n() {
        let e = &exact[i * k..(i + 1) * k];
        hit += approx
            .indices_of(i)
            .iter()
            .filter(|j| e.contains(j))
            .count();
    }
    hit as f64 / (approx.n() * k) as f64
}

#[test]
fn ab_params_match_umap_learn() {
    let g = golden();
    for case in g["ab"].as_array().expect("ab") {
        let f = |k: &str| case[k].as_f64().expect("number");
        let (a, b) = find_ab_params(f("spread"), f("min_dist"));
        let (ra, rb) = (f("a"), f("b"));
        println!(
            "spread {} min_dist {}: a {a} vs {ra}, b {b} vs {rb}",
            f("spread"),
            f("min_dist")
        );
        assert!((a - ra).abs() <= 1e-3 * ra, "a {a} vs {ra}");
        assert!((b - rb).abs() <= 1e-3 * rb, "b {b} vs {rb}");
    }
}

#[test]
fn spectral_eigenpairs_match_dense_reference() {
    for ds in both() {
        let sp = &ds.json["spectral"];
        assert_eq!(sp["n_components_graph"].as_u64(), Some(1));
        let ref_vals: Vec<f64> = sp["eigenvalues"]
            .as_array()
            .expect("eigenvalues")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        let ref_vecs = read_f32(sp["eigenvectors"].as_str().expect("eigvecs"));
        let t = Instant::now();
        let (vals, vecs) = spectral_eigenpairs(&ds.conn, 2, 0).expect("eigensolver");
        println!(
            "{}: eigenvalues {vals:?} vs {:?} ({:.2} s)",
            ds.name,
            &ref_vals[1..],
            t.elapsed().as_secs_f64()
        );
        for c in 0..2 {
            assert!((vals[c] - ref_vals[c + 1]).abs() <= 1e-4, "{}", ds.name);
            // the vector lies in the reference 2-d eigenspace (sign/rotation free)
            let mut proj = 0.0;
            for r in 0..2 {
                let dot: f64 = (0..ds.n)
                    .map(|i| vecs[i * 2 + c] * ref_vecs[i * 2 + r] as f64)
                    .sum();
                proj += dot * dot;
            }
            assert!(
                proj.sqrt() >= 0.99,
                "{} vector {c}: |proj| {}",
                ds.name,
                proj.sqrt()
            );
        }
    }
}

#[test]
fn umap_trustworthiness_close_to_umap_learn() {
    for ds in both() {
        let x = DenseMatrix::new(&ds.x, ds.n, ds.d).expect("matrix");
        let t = Instant::now();
        let r = umap(&ds.conn, Some(&x), &UmapOptions::default()).expect("umap");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(r.init_used, UmapInit::Spectral);
        assert_eq!(r.n_epochs, 500);
        assert_eq!(r.embedding.len(), ds.n * 2);
        let low = DenseMatrix::new(&r.embedding, ds.n, 2).expect("layout");
        let ours = trustworthiness(&x, &low, 15, Metric::Euclidean).expect("trust");
        let u = &ds.json["umap"];
        let mean = u["trust_mean"].as_f64().expect("mean");
        println!(
            "{}: trustworthiness ours {ours:.4} vs umap-learn mean {mean:.4} (seeds 0..4: {:.4}..{:.4}), umap {secs:.2} s",
            ds.name,
            u["trust_min"].as_f64().expect("min"),
            u["trust_max"].as_f64().expect("max"),
        );
        assert!((ours - mean).abs() <= 0.02, "{}: {ours} vs {mean}", ds.name);
        // PCA and random initialisations also give sensible layouts
        for init in [UmapInit::Pca, UmapInit::Random] {
            let opts = UmapOptions {
                init,
                n_epochs: Some(200),
                ..UmapOptions::default()
            };
            let r = umap(&ds.conn, Some(&x), &opts).expect("umap");
            assert_eq!(r.init_used, init);
            let low = DenseMatrix::new(&r.embedding, ds.n, 2).expect("layout");
            let t = trustworthiness(&x, &low, 15, Metric::Euclidean).expect("trust");
            println!(
                "{} {init:?} init, 200 epochs: trustworthiness {t:.4}",
                ds.name
            );
            assert!(t >= mean - 0.05, "{} {init:?}: {t}", ds.name);
        }
    }
}

#[test]
fn umap_is_deterministic() {
    let g = golden();
    let ds = dataset(&g, "pbmc68k");
    let x = DenseMatrix::new(&ds.x, ds.n, ds.d).expect("matrix");
    let opts = UmapOptions {
        n_epochs: Some(100),
        seed: 3,
        ..UmapOptions::default()
    };
    let run = |threads: usize, opts: &UmapOptions| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| umap(&ds.conn, Some(&x), opts).expect("umap"))
    };
    let a = run(2, &opts);
    let b = run(2, &opts);
    let c = run(1, &opts);
    assert_eq!(a, b, "same seed, same result");
    assert_eq!(a, c, "independent of the thread count");
    let other = run(
        2,
        &UmapOptions {
            seed: 4,
            ..opts.clone()
        },
    );
    assert_ne!(a.embedding, other.embedding, "another seed, another layout");
}

#[test]
fn trustworthiness_equals_sklearn() {
    for ds in both() {
        let x = DenseMatrix::new(&ds.x, ds.n, ds.d).expect("matrix");
        let lay = read_f32(ds.json["umap"]["layout_seed0"].as_str().expect("layout"));
        let low = DenseMatrix::new(&lay, ds.n, 2).expect("layout");
        for check in ds.json["trust_checks"].as_array().expect("checks") {
            let k = check["k"].as_u64().expect("k") as usize;
            let metric = match check["metric"].as_str() {
                Some("cosine") => Metric::Cosine,
                _ => Metric::Euclidean,
            };
            let want = check["value"].as_f64().expect("value");
            let got = trustworthiness(&x, &low, k, metric).expect("trust");
            assert!(
                (got - want).abs() <= 1e-6,
                "{} k {k} {metric:?}: {got} vs {want}",
                ds.name
            );
        }
        // the seed-0 trustworthiness recorded with the other seeds is the k = 15 check
        let t0 = ds.json["umap"]["trustworthiness"][0].as_f64().expect("t0");
        let got = trustworthiness(&x, &low, 15, Metric::Euclidean).expect("trust");
        assert!((got - t0).abs() <= 1e-6);
    }
}

#[test]
fn nndescent_recall_on_fixtures() {
    for ds in both() {
        let x = DenseMatrix::new(&ds.x, ds.n, ds.d).expect("matrix");
        let approx =
            approx_knn(&x, 15, Metric::Euclidean, &NnDescentOptions::default()).expect("nnd");
        let r = recall(&approx, &ds.knn, 15);
        println!("{}: NN-descent recall {r:.4}", ds.name);
        assert!(r >= 0.95, "{}: recall {r}", ds.name);
        // self first, distances sorted (Knn::new validated the rest)
        for i in 0..ds.n {
            assert_eq!(approx.indices_of(i)[0] as usize, i);
            assert_eq!(approx.distances_of(i)[0], 0.0);
        }
        // cosine against the exact cosine kNN
        let exact = knn(&x, 15, Metric::Cosine).expect("exact");
        let approx =
            approx_knn(&x, 15, Metric::Cosine, &NnDescentOptions::default()).expect("nnd cosine");
        let r = recall(&approx, exact.indices(), 15);
        println!("{}: NN-descent cosine recall {r:.4}", ds.name);
        assert!(r >= 0.95, "{} cosine: recall {r}", ds.name);
        // below scanpy's threshold neighbors_auto is the exact kNN
        let auto = neighbors_auto(&x, 15, Metric::Euclidean, 0).expect("auto");
        assert_eq!(auto, knn(&x, 15, Metric::Euclidean).expect("exact"));
    }
}

/// Seeded clustered data: 25 Gaussian clusters (centres N(0, 3²), unit spread) in `d` dims.
fn synthetic(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (u1, u2) = (1.0 - next(), next());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let n_clusters = 25;
    let centres: Vec<f64> = (0..n_clusters * d).map(|_| 3.0 * normal()).collect();
    let mut x = Vec::with_capacity(n * d);
    for i in 0..n {
        let c = (i * 7 + i / 3) % n_clusters;
        for t in 0..d {
            x.push((centres[c * d + t] + normal()) as f32);
        }
    }
    x
}

#[test]
fn nndescent_recall_synthetic_20k() {
    let (n, d, k) = (20_000, 64, 15);
    let x = synthetic(n, d, 7);
    let m = DenseMatrix::new(&x, n, d).expect("matrix");
    let t = Instant::now();
    let approx = approx_knn(&m, k, Metric::Euclidean, &NnDescentOptions::default()).expect("nnd");
    let secs = t.elapsed().as_secs_f64();
    // exact neighbours of 500 query points by brute force
    let mut hit = 0;
    let queries: Vec<usize> = (0..500).map(|s| (s * 7919) % n).collect();
    for &i in &queries {
        let xi = m.row(i);
        let mut dist: Vec<(f64, usize)> = (0..n)
            .map(|j| {
                let v: f64 = xi
                    .iter()
                    .zip(m.row(j))
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum();
                (if i == j { -1.0 } else { v }, j)
            })
            .collect();
        dist.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        let exact: Vec<u32> = dist[..k].iter().map(|e| e.1 as u32).collect();
        hit += approx
            .indices_of(i)
            .iter()
            .filter(|j| exact.contains(j))
            .count();
    }
    let r = hit as f64 / (queries.len() * k) as f64;
    println!("synthetic {n} x {d}: NN-descent recall {r:.4} in {secs:.2} s");
    assert!(r >= 0.95, "recall {r}");
    // seeded: same result again
    let again = approx_knn(&m, k, Metric::Euclidean, &NnDescentOptions::default()).expect("nnd");
    assert_eq!(approx, again);
}

#[test]
fn bad_input_is_an_error() {
    let g = golden();
    let ds = dataset(&g, "pbmc68k");
    let x = DenseMatrix::new(&ds.x, ds.n, ds.d).expect("matrix");
    let o = NnDescentOptions::default();
    assert!(approx_knn(&x, ds.n, Metric::Euclidean, &o).is_err());
    assert!(approx_knn(&x, 0, Metric::Euclidean, &o).is_err());
    assert!(neighbors_auto(&x, ds.n + 3, Metric::Cosine, 0).is_err());
    let mut nan = ds.x.clone();
    nan[17] = f32::NAN;
    assert!(DenseMatrix::new(&nan, ds.n, ds.d).is_err());

    let opts = UmapOptions::default();
    // n_components 0
    let zero = UmapOptions {
        n_components: 0,
        ..opts.clone()
    };
    assert!(umap(&ds.conn, Some(&x), &zero).is_err());
    // empty graph
    let empty = CsrMatrix::new(4, 4, vec![0; 5], vec![], vec![]).expect("csr");
    assert!(umap(&empty, None, &opts).is_err());
    // non-symmetric graph
    let asym = CsrMatrix::new(3, 3, vec![0, 1, 2, 2], vec![1, 2], vec![1.0, 0.5]).expect("csr");
    assert!(umap(&asym, None, &opts).is_err());
    // NaN / negative weights
    let mut bad = ds.conn.clone();
    bad.data[0] = f32::NAN;
    assert!(umap(&bad, None, &opts).is_err());
    bad.data[0] = -1.0;
    assert!(umap(&bad, None, &opts).is_err());
    // non-square, init data of the wrong size, PCA init without data
    let rect = CsrMatrix::new(2, 3, vec![0, 1, 1], vec![2], vec![1.0]).expect("csr");
    assert!(umap(&rect, None, &opts).is_err());
    let short = DenseMatrix::new(&ds.x[..ds.d * 10], 10, ds.d).expect("matrix");
    assert!(umap(&ds.conn, Some(&short), &opts).is_err());
    let pca = UmapOptions {
        init: UmapInit::Pca,
        ..opts.clone()
    };
    assert!(umap(&ds.conn, None, &pca).is_err());
    // trustworthiness: k >= n / 2, row mismatch
    let low = DenseMatrix::new(&ds.x[..ds.n * 2], ds.n, 2).expect("matrix");
    assert!(trustworthiness(&x, &low, ds.n / 2, Metric::Euclidean).is_err());
    assert!(trustworthiness(&x, &short, 5, Metric::Euclidean).is_err());
    // spectral eigenpairs of a disconnected graph
    let two = CsrMatrix::new(
        4,
        4,
        vec![0, 1, 2, 3, 4],
        vec![1, 0, 3, 2],
        vec![1.0, 1.0, 1.0, 1.0],
    )
    .expect("csr");
    assert!(spectral_eigenpairs(&two, 1, 0).is_err());
}

#[test]
fn disconnected_graph_layout() {
    // two copies of the pbmc graph side by side: umap-learn's multi-component layout
    let g = golden();
    let ds = dataset(&g, "pbmc68k");
    let n = ds.n;
    let mut indptr = ds.conn.indptr.clone();
    let mut indices = ds.conn.indices.clone();
    let mut data = ds.conn.data.clone();
    for i in 0..n {
        let (idx, val) = ds.conn.row(i);
        indices.extend(idx.iter().map(|&j| j + n as u32));
        data.extend_from_slice(val);
        indptr.push(indices.len());
    }
    let graph = CsrMatrix::new(2 * n, 2 * n, indptr, indices, data).expect("csr");
    let mut x2 = ds.x.clone();
    x2.extend(ds.x.iter().map(|v| v + 50.0));
    let x = DenseMatrix::new(&x2, 2 * n, ds.d).expect("matrix");
    let opts = UmapOptions {
        n_epochs: Some(100),
        ..UmapOptions::default()
    };
    let r = umap(&graph, Some(&x), &opts).expect("umap");
    assert_eq!(r.init_used, UmapInit::Spectral);
    assert!(r.embedding.iter().all(|v| v.is_finite()));
}
