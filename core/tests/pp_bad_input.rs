//! Preprocessing on bad input: clear errors naming the problem, documented skips, no panic,
//! the input never modified.

#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use cellforge_core::anndata::{AnnData, ArrayData, Categorical, DenseArray, Element};
use cellforge_core::io::{WriteOptions, read_h5ad, write_h5ad};
use cellforge_core::pp::{
    HvgFlavor, HvgOptions, PpError, PreprocessOptions, TargetSum, preprocess_file,
    preprocess_to_file,
};

fn shared_data() -> PathBuf {
    std::env::var_os("CELLFORGE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

fn dense_file(dir: &Path, name: &str, rows: &[&[f32]]) -> PathBuf {
    let n = rows.len();
    let g = rows[0].len();
    let mut a = AnnData::new(
        (0..n).map(|i| format!("c{i}")).collect(),
        (0..g).map(|j| format!("g{j}")).collect(),
    );
    a.x = Some(Element::Dense(DenseArray {
        shape: vec![n, g],
        data: ArrayData::F32(rows.iter().flat_map(|r| r.iter().copied()).collect()),
    }));
    let labels: Vec<Option<&str>> = (0..n)
        .map(|i| Some(if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    a.obs.set_column(
        "batch",
        Element::Categorical(Categorical::from_labels(&labels)),
    );
    let p = dir.join(name);
    write_h5ad(&a, &p, &WriteOptions::default()).unwrap();
    p
}

fn run(path: &Path, opts: &PreprocessOptions) -> Result<AnnData, PpError> {
    preprocess_file(path, opts, &mut |_| ControlFlow::Continue(())).map(|r| r.0)
}

#[test]
fn negative_values_are_refused_naming_cell_and_gene() {
    // pbmc68k_reduced's X is scaled (negative values): binning must refuse it.
    let p = shared_data().join("pbmc68k_reduced.h5ad");
    let err = run(&p, &PreprocessOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            PpError::BadValue {
                what: "negative",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("scaled data"), "{msg}");
    assert!(msg.contains("cell ") && msg.contains("gene "), "{msg}");
}

#[test]
fn nan_and_inf_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dense_file(dir.path(), "nan.h5ad", &[&[1.0, 2.0], &[f32::NAN, 1.0]]);
    let err = run(&p, &PreprocessOptions::default()).unwrap_err();
    assert!(err.to_string().contains("NaN value"), "{err}");
    assert!(
        err.to_string().contains("cell c1 (row 1), gene g0"),
        "{err}"
    );
    let p = dense_file(
        dir.path(),
        "inf.h5ad",
        &[&[1.0, f32::INFINITY], &[3.0, 1.0]],
    );
    let err = run(&p, &PreprocessOptions::default()).unwrap_err();
    assert!(err.to_string().contains("infinite value"), "{err}");
}

#[test]
fn missing_layer_and_batch_key_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dense_file(
        dir.path(),
        "ok.h5ad",
        &[&[1.0, 2.0], &[3.0, 1.0], &[2.0, 2.0]],
    );
    let opts = PreprocessOptions {
        layer: Some("counts".into()),
        ..PreprocessOptions::default()
    };
    let err = run(&p, &opts).unwrap_err();
    assert!(
        err.to_string()
            .contains("layer \"counts\" does not exist (layers: none)"),
        "{err}"
    );
    let opts = PreprocessOptions {
        hvg: Some(HvgOptions {
            n_top_genes: 1,
            flavor: HvgFlavor::Seurat,
            batch_key: Some("donor".into()),
            ..HvgOptions::default()
        }),
        ..PreprocessOptions::default()
    };
    let err = run(&p, &opts).unwrap_err();
    assert!(
        err.to_string()
            .contains("batch key: \"donor\" is not a column (there are: batch)"),
        "{err}"
    );
}

#[test]
fn all_zero_cells_are_kept_with_zero_bins_and_filters_can_empty_everything() {
    let dir = tempfile::tempdir().unwrap();
    let p = dense_file(
        dir.path(),
        "zeros.h5ad",
        &[&[1.0, 2.0, 0.0], &[0.0, 0.0, 0.0], &[4.0, 1.0, 1.0]],
    );
    let out = dir.path().join("out.h5ad");
    let report = preprocess_to_file(&p, &out, &PreprocessOptions::default(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(report.all_zero_cells, 1);
    let back = read_h5ad(&out).unwrap();
    let edges = match back.obsm.get("bin_edges").unwrap() {
        Element::Dense(d) => d.data.to_f64_vec(),
        _ => panic!(),
    };
    assert!(
        edges[51..102].iter().all(|&e| e == 0.0),
        "all-zero cell: zero edges"
    );
    let opts = PreprocessOptions {
        filter_cells_min_counts: Some(1e9),
        ..PreprocessOptions::default()
    };
    let err = run(&p, &opts).unwrap_err();
    assert!(matches!(err, PpError::NoCells(_)), "{err}");
    let opts = PreprocessOptions {
        normalize_total: Some(TargetSum::Median),
        filter_genes_min_cells: Some(10),
        ..PreprocessOptions::default()
    };
    assert!(matches!(run(&p, &opts).unwrap_err(), PpError::NoGenes(_)));
}

#[test]
fn the_input_is_never_the_output_and_is_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let p = dense_file(dir.path(), "in.h5ad", &[&[1.0, 2.0], &[3.0, 1.0]]);
    let before = std::fs::read(&p).unwrap();
    let err = preprocess_to_file(&p, &p, &PreprocessOptions::default(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("never overwrites its input"),
        "{err}"
    );
    let out = dir.path().join("o.h5ad");
    preprocess_to_file(&p, &out, &PreprocessOptions::default(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), before, "input bytes unchanged");
}

#[test]
fn truncated_and_foreign_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("not.h5ad");
    std::fs::write(&p, b"cell,gene\n1,2\n").unwrap();
    let err = run(&p, &PreprocessOptions::default()).unwrap_err();
    assert!(matches!(err, PpError::Read(_)), "{err}");
    let empty = dir.path().join("empty.h5ad");
    std::fs::write(&empty, b"").unwrap();
    assert!(run(&empty, &PreprocessOptions::default()).is_err());
}

#[test]
fn cancellation_stops_the_run() {
    let p = shared_data().join("harmony_pbmc_stim.h5ad");
    let opts = PreprocessOptions {
        chunk_rows: 100,
        ..PreprocessOptions::default()
    };
    let mut calls = 0;
    let err = preprocess_file(&p, &opts, &mut |_| {
        calls += 1;
        if calls > 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap_err();
    assert!(matches!(err, PpError::Cancelled));
}

#[test]
fn preprocessing_a_layer_keeps_x() {
    // symphony: X is log-normalised, layers["counts"] the counts.
    let p = shared_data().join("symphony_pbmcs_small.h5ad");
    let opts = PreprocessOptions {
        layer: Some("counts".into()),
        ..PreprocessOptions::default()
    };
    let out = run(&p, &opts).unwrap();
    let x = out.x.as_ref().expect("X is carried over");
    assert_eq!(x.shape(), Some(vec![1200, 1767]));
    assert!(out.layers.contains_key("counts"));
    assert!(out.layers.contains_key("X_binned"));
    let orig = read_h5ad(&p).unwrap();
    assert_eq!(
        orig.x.as_ref(),
        Some(x),
        "X unchanged when a layer is processed"
    );
}

/// scanpy (scikit-misc) stops with "There are other near singularities" on the symphony
/// counts per donor (hundreds of genes with exactly one count in a batch share one mean).
/// cellforge widens the LOESS span for that batch and says so.
#[test]
fn undefined_loess_fit_widens_the_span_with_a_note() {
    let p = shared_data().join("symphony_pbmcs_small.h5ad");
    let opts = PreprocessOptions {
        layer: Some("counts".into()),
        hvg: Some(HvgOptions {
            n_top_genes: 500,
            batch_key: Some("donor".into()),
            ..HvgOptions::default()
        }),
        ..PreprocessOptions::default()
    };
    let (out, report) = preprocess_file(&p, &opts, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(out.n_vars(), 500);
    assert!(
        report.notes.iter().any(|n| n.contains("used span 0.50")),
        "{:?}",
        report.notes
    );
}
