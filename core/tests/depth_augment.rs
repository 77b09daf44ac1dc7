//! Depth augmentation for fine-tuning: cells kept as raw counts bin exactly as the token
//! cache would have binned them, thinning only ever removes molecules, and data that are not
//! counts are refused with a message naming the value.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use cellforge_core::io::BackedH5ad;
use cellforge_core::tl::embed_job::GeneColumn;
use cellforge_core::tokenize::Rng;
use cellforge_core::train::data::{CellQuery, CellSet, TokenSettings, cell_tokens};
use cellforge_core::vocab::GeneVocab;

fn vocab(path: &Path) -> GeneVocab {
    let backed = BackedH5ad::open_matrix(path, "X").unwrap();
    // every other gene, so matching to a partial vocabulary is exercised too
    let mut tokens: Vec<String> = vec!["<pad>".into(), "<cls>".into(), "<eoc>".into()];
    tokens.extend(backed.var.index.iter().step_by(2).cloned());
    GeneVocab::from_tokens(tokens).unwrap()
}

fn read(
    path: &Path,
    layer: Option<&str>,
    vocab: &GeneVocab,
    tokens: &TokenSettings,
    keep_counts: bool,
) -> Result<CellSet, cellforge_core::train::TrainError> {
    CellQuery {
        path,
        layer,
        gene_col: &GeneColumn::Index,
        vocab,
        label_key: Some("cell_type"),
        batch_key: None,
        fixed_classes: None,
        fixed_batches: None,
        tokens,
        seed: 11,
        keep_counts,
    }
    .read()
}

fn settings(max_len: usize) -> TokenSettings {
    TokenSettings {
        include_zero_genes: false,
        max_len,
        cls_value: 0.0,
        n_bins: 51,
        pad_value: -2.0,
        mask_value: -1.0,
    }
}

#[test]
fn counts_bin_like_the_token_cache_and_thinning_removes_molecules() {
    let path = common::shared_data().join("symphony_pbmcs_small.h5ad");
    let v = vocab(&path);
    // 64 tokens: most cells are cut, so the seeded gene subset must match too
    let s = settings(64);
    let bins = read(&path, Some("counts"), &v, &s, false).unwrap();
    let raw = read(&path, Some("counts"), &v, &s, true).unwrap();
    assert!(bins.counts.is_none() && raw.counts.is_some());
    assert_eq!(bins.cells.len(), raw.cells.len());
    assert_eq!(bins.rows, raw.rows);
    assert!(bins.cells.len() > 1000);
    let mut rng = Rng::new(5);
    let mut cut = 0;
    for i in 0..raw.cells.len() {
        let stored = bins.cells.get(i);
        cut += usize::from(raw.cells.get(i).genes.len() > 64);
        assert_eq!(
            cell_tokens(&raw, i, &s, None, &mut rng),
            stored,
            "cell {i}: binned from counts differs from the token cache"
        );
        // cells stored as bins come back unchanged, augmentation or not
        assert_eq!(cell_tokens(&bins, i, &s, Some(0.3), &mut rng), stored);
    }
    assert!(cut > 500, "only {cut} cells longer than max_len");

    // Thinning, all genes kept: fewer genes per cell, never a gene the cell did not express,
    // and the same draws give the same cell.
    let all = settings(100_000);
    let raw = read(&path, Some("counts"), &v, &all, true).unwrap();
    let (mut before, mut after, mut same) = (0usize, 0usize, 0usize);
    for i in 0..raw.cells.len() {
        let full = cell_tokens(&raw, i, &all, None, &mut rng);
        let a = cell_tokens(&raw, i, &all, Some(0.3), &mut Rng::for_item(9, i as u64));
        let b = cell_tokens(&raw, i, &all, Some(0.3), &mut Rng::for_item(9, i as u64));
        assert_eq!(a, b, "cell {i}: same draws, different cell");
        let kept = cell_tokens(&raw, i, &all, Some(1.0), &mut Rng::for_item(9, i as u64));
        assert_eq!(
            kept.genes, full.genes,
            "cell {i}: keeping every molecule lost a gene"
        );
        assert!(a.genes.len() >= 2, "cell {i} thinned to nothing");
        assert!(
            a.genes.iter().all(|g| full.genes.contains(g)),
            "cell {i}: thinning added a gene"
        );
        assert!(a.values[1..].iter().all(|&b| (1.0..=50.0).contains(&b)));
        before += full.genes.len() - 1;
        after += a.genes.len() - 1;
        same += usize::from(a.genes.len() == full.genes.len());
    }
    let ratio = after as f64 / before as f64;
    // a mean of 65 % of the molecules kept; most expressed genes hold one or two molecules
    assert!(
        (0.55..0.9).contains(&ratio),
        "thinned cells keep {ratio:.3} of their genes"
    );
    assert!(same < raw.cells.len() / 10, "{same} cells lost no gene");
}

#[test]
fn depth_augmentation_refuses_values_that_are_not_counts() {
    let path = common::shared_data().join("symphony_pbmcs_small.h5ad");
    let v = vocab(&path);
    let err = read(&path, None, &v, &settings(64), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("thins counts") && err.contains("--layer counts"),
        "{err}"
    );
    // the same X tokenises fine without the augmentation
    assert!(read(&path, None, &v, &settings(64), false).is_ok());
}
