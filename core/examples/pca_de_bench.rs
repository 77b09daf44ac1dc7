//! Times `analysis::pca` and `analysis::de` on the matrix written by
//! `scripts/bench/make_sparse_expr.py` (default `target/bench-data/sparse_expr`, or the first
//! argument). Prints one JSON line; limit threads with `RAYON_NUM_THREADS`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cellforge_core::analysis::CsrMatrix;
use cellforge_core::analysis::de::{DeMethod, DeOptions, DeTargets, rank_genes_groups};
use cellforge_core::analysis::expr::Expr;
use cellforge_core::analysis::pca::{PcaOptions, pca};

fn read(p: &Path, name: &str) -> Vec<u8> {
    std::fs::read(p.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data/sparse_expr")
        });
    let meta: Vec<u8> = read(&dir, "meta.json");
    let meta = String::from_utf8(meta).expect("utf8");
    let field = |k: &str| -> usize {
        let i = meta.find(&format!("\"{k}\": ")).expect("field") + k.len() + 4;
        meta[i..]
            .split([',', '}'])
            .next()
            .expect("value")
            .trim()
            .parse()
            .expect("int")
    };
    let (n, g, ng) = (field("n_cells"), field("n_genes"), field("n_groups"));
    let indptr: Vec<usize> = read(&dir, "indptr.u64")
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8")) as usize)
        .collect();
    let indices: Vec<u32> = read(&dir, "indices.u32")
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    let data: Vec<f32> = read(&dir, "data.f32")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    let groups: Vec<u32> = read(&dir, "groups.u32")
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    let x = CsrMatrix::new(n, g, indptr, indices, data).expect("csr");
    let e = Expr::Sparse(&x);
    let t = Instant::now();
    let p = pca(e, &PcaOptions::default()).expect("pca");
    let pca_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let p2 = pca(
        e,
        &PcaOptions {
            n_oversamples: 100,
            n_power_iter: Some(20),
            ..Default::default()
        },
    )
    .expect("pca");
    let pca_acc_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let w = rank_genes_groups(
        e,
        &groups,
        ng,
        &DeTargets::AllVsRest,
        DeMethod::Wilcoxon,
        &DeOptions::default(),
    )
    .expect("wilcoxon");
    let wil_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tt = rank_genes_groups(
        e,
        &groups,
        ng,
        &DeTargets::AllVsRest,
        DeMethod::TTest,
        &DeOptions::default(),
    )
    .expect("t-test");
    let tt_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"n_cells\": {n}, \"n_genes\": {g}, \"nnz\": {}, \"threads\": {}, \"pca_randomized_default_s\": {pca_s:.3}, \
         \"pca_randomized_p100_q20_s\": {pca_acc_s:.3}, \"wilcoxon_s\": {wil_s:.3}, \"ttest_s\": {tt_s:.3}, \
         \"pc1_var\": {:.6}, \"pc50_var_default\": {:.6}, \"pc50_var_p100_q20\": {:.6}, \"top_gene_g0\": {}, \"top_gene_g0_t\": {}}}",
        x.nnz(),
        rayon::current_num_threads(),
        p.variance[0],
        p.variance[49],
        p2.variance[49],
        w[0].genes[0],
        tt[0].genes[0]
    );
}
