//! h5ad reading, writing and backed reads on the real files in ../shared/data and the
//! anndata archives. Deep equality with Python's anndata is checked by the interop test in
//! tests/ (the e2e crate); here the Rust side must read, round-trip and chunk consistently.

mod common;

use cellforge_core::anndata::{ArrayData, Element, SparseFormat, SparseMatrix};
use cellforge_core::io::{
    BackedH5ad, Compression, H5adError, RowChunk, WriteOptions, XFormat, read_h5ad,
    read_h5ad_with_warnings, write_h5ad,
};
use common::{fingerprint, shared_data};

fn all_real_files() -> Vec<std::path::PathBuf> {
    let d = shared_data();
    vec![
        d.join("symphony_pbmcs_small.h5ad"),
        d.join("harmony_pbmc_stim.h5ad"),
        d.join("scmap_yan.h5ad"),
        d.join("pbmc68k_reduced.h5ad"),
        d.join("anndata-archives/adata-v0.7.0.h5ad"),
        d.join("anndata-archives/adata-v0.7.8.h5ad"),
        d.join("anndata-archives/adata-v0.11.4.h5ad"),
    ]
}

#[test]
fn reads_every_real_file_with_the_documented_shape() {
    let expected = [
        (1200, 1767),
        (2000, 9015),
        (90, 20214),
        (700, 765),
        (30, 20),
        (30, 20),
        (10, 20),
    ];
    for (path, (n_obs, n_vars)) in all_real_files().iter().zip(expected) {
        let a = read_h5ad(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            (a.n_obs(), a.n_vars()),
            (n_obs, n_vars),
            "{}",
            path.display()
        );
    }
}

#[test]
fn symphony_categoricals_and_layers_are_read() {
    let a = read_h5ad(&shared_data().join("symphony_pbmcs_small.h5ad")).expect("read");
    let Some(Element::Categorical(ct)) = a.obs.column("cell_type") else {
        panic!("cell_type is not categorical");
    };
    assert_eq!(ct.n_categories(), 9);
    assert!(!ct.ordered);
    let Some(Element::Categorical(donor)) = a.obs.column("donor") else {
        panic!("donor is not categorical");
    };
    let labels = donor.labels();
    let count = |name: &str| labels.iter().filter(|l| l.as_deref() == Some(name)).count();
    assert_eq!((count("3pv1"), count("3pv2"), count("5p")), (290, 480, 430));
    let Some(Element::Sparse(counts)) = a.layers.get("counts") else {
        panic!("layers['counts'] missing or not sparse");
    };
    assert!(counts.data.looks_like_counts());
    let Some(Element::Mapping(prov)) = a.uns.get("provenance") else {
        panic!("uns['provenance'] missing");
    };
    assert!(matches!(prov.get("license"), Some(Element::String(s)) if s.contains("GPL")));
}

#[test]
fn legacy_pbmc68k_is_read_like_anndata() {
    let a = read_h5ad(&shared_data().join("pbmc68k_reduced.h5ad")).expect("read");
    // Record-array obs with categories kept in uns['<col>_categories'].
    let Some(Element::Categorical(bulk)) = a.obs.column("bulk_labels") else {
        panic!("bulk_labels should become categorical");
    };
    assert_eq!(bulk.n_categories(), 10);
    assert!(!a.uns.contains_key("bulk_labels_categories"));
    assert!(a.uns.contains_key("bulk_labels_colors"));
    // Record-array obsm split into one entry per field.
    assert_eq!(
        a.obsm.get("X_pca").and_then(Element::shape),
        Some(vec![700, 50])
    );
    assert_eq!(
        a.obsm.get("X_umap").and_then(Element::shape),
        Some(vec![700, 2])
    );
    // uns['neighbors'] matrices move to obsp, as anndata does on read.
    assert!(a.obsp.contains_key("connectivities") && a.obsp.contains_key("distances"));
    // raw.X / raw.var (h5sparse) become raw.
    let raw = a.raw.as_ref().expect("raw");
    assert_eq!(raw.x.shape(), Some(vec![700, 765]));
    // A one-element byte-string array is a scalar string, as in anndata's legacy reader.
    let Some(Element::Mapping(n)) = a.uns.get("neighbors") else {
        panic!("uns['neighbors']");
    };
    let Some(Element::Mapping(params)) = n.get("params") else {
        panic!("neighbors params");
    };
    assert_eq!(params.get("method"), Some(&Element::String("umap".into())));
}

#[test]
fn legacy_07_reference_categoricals_are_read() {
    let a = read_h5ad(&shared_data().join("anndata-archives/adata-v0.7.0.h5ad")).expect("read");
    let Some(Element::Categorical(c)) = a.obs.column("cat_ordered") else {
        panic!("cat_ordered should be categorical");
    };
    assert!(c.ordered);
    let Some(Element::Categorical(c)) = a.obs.column("obs_cat") else {
        panic!("obs_cat should be categorical");
    };
    assert!(!c.ordered);
    assert!(matches!(a.obsm.get("df"), Some(Element::DataFrame(_))));
    assert!(matches!(a.uns.get("O_recarray"), Some(Element::Opaque(_))));
}

/// Compares slot by slot so a failure names the differing element instead of dumping both.
fn assert_same(a: &cellforge_core::AnnData, b: &cellforge_core::AnnData, what: &str) {
    assert_eq!(a.x, b.x, "{what}: X");
    assert_eq!(a.obs, b.obs, "{what}: obs");
    assert_eq!(a.var, b.var, "{what}: var");
    for (name, x, y) in [
        ("obsm", &a.obsm, &b.obsm),
        ("varm", &a.varm, &b.varm),
        ("obsp", &a.obsp, &b.obsp),
        ("varp", &a.varp, &b.varp),
        ("layers", &a.layers, &b.layers),
        ("uns", &a.uns, &b.uns),
    ] {
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            y.keys().collect::<Vec<_>>(),
            "{what}: {name} keys"
        );
        for (k, v) in x {
            assert_eq!(Some(v), y.get(k), "{what}: {name}[{k}]");
        }
    }
    assert_eq!(a.raw, b.raw, "{what}: raw");
    assert_eq!(a, b, "{what}");
}

#[test]
fn write_then_read_gives_the_same_anndata_for_every_real_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for path in all_real_files() {
        let a = read_h5ad(&path).expect("read");
        for compression in [Compression::None, Compression::Gzip, Compression::Lzf] {
            let out = dir.path().join("out.h5ad");
            let opts = WriteOptions {
                compression,
                x_format: None,
            };
            write_h5ad(&a, &out, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let b = read_h5ad(&out).expect("re-read");
            assert_same(&a, &b, &format!("{} ({compression:?})", path.display()));
        }
    }
}

#[test]
fn x_format_conversion_keeps_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = read_h5ad(&shared_data().join("scmap_yan.h5ad")).expect("read");
    let Some(Element::Sparse(x)) = &a.x else {
        panic!("scmap X is sparse");
    };
    let dense = x.to_dense();
    for (fmt, check) in [
        (XFormat::Csc, "csc_matrix"),
        (XFormat::Dense, "array"),
        (XFormat::Csr, "csr_matrix"),
    ] {
        let out = dir.path().join("x.h5ad");
        write_h5ad(&a, &out, &WriteOptions::with_x_format(fmt)).expect("write");
        let b = read_h5ad(&out).expect("read");
        let x2 = b.x.as_ref().expect("X");
        assert_eq!(x2.encoding_type(), check);
        let d2 = match x2 {
            Element::Sparse(s) => s.to_dense(),
            Element::Dense(d) => d.clone(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(d2, dense, "{fmt:?}");
    }
}

fn chunk_rows_as_dense(chunk: RowChunk) -> Vec<f64> {
    match chunk {
        RowChunk::Sparse(s) => s.to_dense().data.to_f64_vec(),
        RowChunk::Dense(d) => d.data.to_f64_vec(),
    }
}

#[test]
fn backed_chunks_equal_the_full_matrix_for_csr_csc_and_dense() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = shared_data().join("symphony_pbmcs_small.h5ad");
    let a = read_h5ad(&src).expect("read");
    let Some(Element::Sparse(x)) = &a.x else {
        panic!("X is sparse");
    };
    let full = x.to_dense().data.to_f64_vec();
    for fmt in [XFormat::Csr, XFormat::Csc, XFormat::Dense] {
        let out = dir.path().join(format!("{fmt:?}.h5ad"));
        write_h5ad(
            &a,
            &out,
            &WriteOptions {
                compression: Compression::Gzip,
                x_format: Some(fmt),
            },
        )
        .expect("write");
        let backed = BackedH5ad::open(&out).expect("open backed");
        assert_eq!(backed.shape(), [1200, 1767]);
        assert_eq!(backed.obs.index, a.obs.index);
        let mut got = Vec::with_capacity(full.len());
        let mut n_chunks = 0;
        for item in backed.chunks(97) {
            let (rows, chunk) = item.expect("chunk");
            assert_eq!(chunk.n_rows(), rows.len());
            got.extend(chunk_rows_as_dense(chunk));
            n_chunks += 1;
        }
        assert_eq!(n_chunks, 1200usize.div_ceil(97));
        assert_eq!(got, full, "{fmt:?}");
    }
}

#[test]
fn backed_csr_chunk_is_a_valid_csr_matrix_with_the_file_dtype() {
    let backed = BackedH5ad::open(&shared_data().join("harmony_pbmc_stim.h5ad")).expect("open");
    let RowChunk::Sparse(m) = backed.read_rows(1000..1010).expect("rows") else {
        panic!("CSR file yields sparse chunks");
    };
    assert_eq!(m.format, SparseFormat::Csr);
    assert_eq!(m.shape, [10, 9015]);
    assert!(m.check_structure().is_ok());
    assert_eq!(m.data.dtype(), backed.dtype());
    // Reading past the end is clamped, not an error.
    assert_eq!(backed.read_rows(1995..5000).expect("tail").n_rows(), 5);
}

#[test]
fn reading_and_converting_never_modify_the_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = shared_data().join("pbmc68k_reduced.h5ad");
    let before = fingerprint(&src);
    let a = read_h5ad(&src).expect("read");
    write_h5ad(&a, &dir.path().join("o.h5ad"), &WriteOptions::default()).expect("write");
    let _ = BackedH5ad::open(&src).expect("backed");
    assert_eq!(fingerprint(&src), before);
}

#[test]
fn a_failed_write_leaves_the_existing_file_and_no_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("keep.h5ad");
    std::fs::write(&out, b"previous contents").expect("seed");
    let mut a = read_h5ad(&shared_data().join("scmap_yan.h5ad")).expect("read");
    // A key with '/' cannot be stored: the write fails part-way through.
    a.uns.insert("bad/key".into(), Element::String("x".into()));
    let err = write_h5ad(&a, &out, &WriteOptions::default()).expect_err("must fail");
    assert!(err.to_string().contains("bad/key"), "{err}");
    assert_eq!(
        std::fs::read(&out).expect("read back"),
        b"previous contents"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("keep.h5ad")]);
}

#[test]
fn writing_into_a_missing_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = read_h5ad(&shared_data().join("anndata-archives/adata-v0.11.4.h5ad")).expect("read");
    let err = write_h5ad(
        &a,
        &dir.path().join("no/such/dir/out.h5ad"),
        &WriteOptions::default(),
    )
    .expect_err("must fail");
    assert!(matches!(err, H5adError::Write { .. }), "{err}");
}

#[test]
fn nan_in_x_is_reported_as_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = read_h5ad(&shared_data().join("scmap_yan.h5ad")).expect("read");
    if let Some(Element::Sparse(SparseMatrix {
        data: ArrayData::F32(v),
        ..
    })) = a.x.as_mut()
    {
        v[3] = f32::NAN;
    } else if let Some(Element::Sparse(SparseMatrix {
        data: ArrayData::F64(v),
        ..
    })) = a.x.as_mut()
    {
        v[3] = f64::NAN;
    } else {
        panic!("scmap X is float sparse");
    }
    let out = dir.path().join("nan.h5ad");
    write_h5ad(&a, &out, &WriteOptions::default()).expect("write");
    let (_, warnings) = read_h5ad_with_warnings(&out).expect("read");
    assert!(
        warnings.iter().any(|w| w.message.contains("NaN")),
        "{warnings:?}"
    );
}

/// The streaming summary (X read in row chunks) equals the in-memory one, for CSR, CSC,
/// dense and legacy files.
#[test]
fn streamed_summary_equals_the_in_memory_summary() {
    use cellforge_core::summary::Summary;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = all_real_files();
    let a = read_h5ad(&shared_data().join("harmony_pbmc_stim.h5ad")).expect("read");
    for fmt in [XFormat::Csc, XFormat::Dense] {
        let out = dir.path().join(format!("{fmt:?}.h5ad"));
        write_h5ad(&a, &out, &WriteOptions::with_x_format(fmt)).expect("write");
        files.push(out);
    }
    for path in files {
        let (full, _) = read_h5ad_with_warnings(&path).expect("read");
        let size = std::fs::metadata(&path).ok().map(|m| m.len());
        let expected = Summary::of(&full, size);
        let (streamed, _) = Summary::of_file(&path).expect("streamed summary");
        assert_eq!(streamed, expected, "{}", path.display());
    }
}
