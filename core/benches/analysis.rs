//! Timings of the analysis toolbox at 20,000 cells (exact kNN + UMAP connectivities, Leiden,
//! silhouette, the integration metrics, kNN at 512 dimensions) on clustered synthetic data.
//! Side-by-side runs against pynndescent / umap-learn / leidenalg belong to issue 5's bench.
//!
//! Run: `cargo bench -p cellforge-core --bench analysis`.

#[path = "../tests/common/mod.rs"]
mod test_common;

use std::time::Instant;

use cellforge_core::analysis::DenseMatrix;
use cellforge_core::analysis::integration::{IntegrationOptions, integration_metrics};
use cellforge_core::analysis::knn::{Metric, knn, neighbors};
use cellforge_core::analysis::leiden::{LeidenOptions, leiden};
use cellforge_core::analysis::metrics::{adjusted_rand_index, silhouette_score};
use test_common::synthetic_clusters;

fn main() {
    let (n, d) = (20_000, 50);
    let (x, labels) = synthetic_clusters(n, d, 30);
    let m = DenseMatrix::new(&x, n, d).expect("matrix");
    println!("threads: {}", rayon::current_num_threads());
    let t = Instant::now();
    let g = neighbors(&m, 15, Metric::Euclidean).expect("neighbors");
    println!(
        "kNN (k=15) + connectivities, {n} x {d}: {:.2?} (nnz {})",
        t.elapsed(),
        g.connectivities.nnz()
    );
    let t = Instant::now();
    let r = leiden(&g.connectivities, &LeidenOptions::default()).expect("leiden");
    println!(
        "Leiden res 1.0: {:.2?} ({} clusters, {} iterations, Q {:.4}, ARI vs centres {:.4})",
        t.elapsed(),
        r.n_clusters,
        r.iterations,
        r.quality,
        adjusted_rand_index(&r.labels, &labels).expect("ari")
    );
    let t = Instant::now();
    let s = silhouette_score(&m, &labels).expect("silhouette");
    println!("silhouette_score: {:.2?} ({s:.4})", t.elapsed());
    let batches: Vec<u32> = (0..n as u32).map(|i| (i / 7) % 3).collect();
    let t = Instant::now();
    let im = integration_metrics(&m, &labels, &batches, &IntegrationOptions::default())
        .expect("integration");
    println!(
        "integration_metrics: {:.2?} (AvgBIO {:.4}, AvgBATCH {:.4})",
        t.elapsed(),
        im.avg_bio,
        im.avg_batch.unwrap_or(f64::NAN)
    );
    let (x512, _) = synthetic_clusters(n, 512, 30);
    let m512 = DenseMatrix::new(&x512, n, 512).expect("matrix");
    let t = Instant::now();
    let k512 = knn(&m512, 15, Metric::Euclidean).expect("knn");
    println!(
        "kNN (k=15), {n} x 512: {:.2?} ({} rows)",
        t.elapsed(),
        k512.n()
    );
}
