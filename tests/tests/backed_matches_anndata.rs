//! Backed, chunked reads agree with Python anndata: per-cell totals and non-zero counts
//! computed chunk by chunk (CSR as stored, and after a CSC rewrite) equal what anndata
//! computes from the whole matrix.

use std::process::Command;

use cellforge_core::io::{BackedH5ad, RowChunk, WriteOptions, XFormat, read_h5ad, write_h5ad};
use cellforge_e2e::{python, shared_data};

const CHECK: &str = r#"
import sys, json
import numpy as np
import anndata as ad
a = ad.read_h5ad(sys.argv[1])
got = json.load(open(sys.argv[2]))
x = a.X
totals = np.asarray(x.sum(axis=1)).ravel()
nnz = np.diff(x.tocsr().indptr) if hasattr(x, "tocsr") else (x != 0).sum(axis=1)
assert len(got["totals"]) == a.n_obs, "row count"
assert np.allclose(np.array(got["totals"]), totals, rtol=1e-6, atol=1e-6), "totals differ"
assert (np.array(got["nnz"]) == np.asarray(nnz).ravel()).all(), "non-zero counts differ"
print("ok", a.n_obs)
"#;

fn chunk_stats(path: &std::path::Path, chunk_rows: usize) -> (Vec<f64>, Vec<u64>) {
    let backed = BackedH5ad::open(path).expect("open backed");
    let mut totals = Vec::new();
    let mut nnz = Vec::new();
    for item in backed.chunks(chunk_rows) {
        let (_, chunk) = item.expect("chunk");
        match chunk {
            RowChunk::Sparse(m) => {
                let v = m.data.to_f64_vec();
                for r in 0..m.shape[0] {
                    let (a, b) = (m.indptr[r] as usize, m.indptr[r + 1] as usize);
                    totals.push(v[a..b].iter().sum());
                    nnz.push(v[a..b].iter().filter(|&&x| x != 0.0).count() as u64);
                }
            }
            RowChunk::Dense(d) => {
                let v = d.data.to_f64_vec();
                for row in v.chunks(d.shape[1]) {
                    totals.push(row.iter().sum());
                    nnz.push(row.iter().filter(|&&x| x != 0.0).count() as u64);
                }
            }
        }
    }
    (totals, nnz)
}

fn check_with_anndata(h5ad: &std::path::Path, totals: &[f64], nnz: &[u64]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("stats.json");
    std::fs::write(
        &json,
        serde_json::json!({ "totals": totals, "nnz": nnz }).to_string(),
    )
    .expect("write json");
    let out = Command::new(python())
        .args(["-c", CHECK])
        .arg(h5ad)
        .arg(&json)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "anndata disagrees for {}: {}{}",
        h5ad.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chunked_csr_and_csc_reads_match_anndata() {
    let src = shared_data().join("harmony_pbmc_stim.h5ad");
    let (totals, nnz) = chunk_stats(&src, 333);
    assert_eq!(totals.len(), 2000);
    check_with_anndata(&src, &totals, &nnz);

    let dir = tempfile::tempdir().expect("tempdir");
    let a = read_h5ad(&src).expect("read");
    for (fmt, name) in [(XFormat::Csc, "csc.h5ad"), (XFormat::Dense, "dense.h5ad")] {
        let out = dir.path().join(name);
        write_h5ad(&a, &out, &WriteOptions::with_x_format(fmt)).expect("write");
        let (t2, n2) = chunk_stats(&out, 257);
        assert_eq!(t2, totals, "{name}: totals differ from the CSR read");
        assert_eq!(n2, nnz, "{name}: non-zero counts differ from the CSR read");
        check_with_anndata(&out, &t2, &n2);
    }
}
