//! Training data: the cells of an h5ad tokenised as the fine-tuning tutorials do (vocabulary
//! genes, per-cell binning, `<cls>` first), their labels, a seeded train/validation split,
//! minibatches (per batch label when DSBN needs one domain per minibatch) and masking.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::anndata::ArrayData;
use crate::io::BackedH5ad;
use crate::model::TokenBatch;
use crate::tl::embed_job::{GeneColumn, gene_names};
use crate::tokenize::{
    CellTokens, PaddedBatch, Rng, TokenizeOptions, ValuePrecision, bin_cell, pad_batch,
    random_mask_value, tokenize_values,
};
use crate::vocab::GeneVocab;

use super::TrainError;
use super::cache::{TokenSink, TokenStore};

/// How cells become tokens.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenSettings {
    /// Keep zero-expressed vocabulary genes (integration tutorial) or only expressed ones.
    pub include_zero_genes: bool,
    /// Most tokens per cell, `<cls>` included.
    pub max_len: usize,
    /// Value at `<cls>` (0 in the fine-tuning tutorials, the pad value when pretraining).
    pub cls_value: f32,
    pub n_bins: usize,
    pub pad_value: f32,
    pub mask_value: f32,
}

/// The h5ad path of the matrix to read: `X`, `layers/<name>`, or `raw/X` for `raw`.
pub fn matrix_path(layer: Option<&str>) -> String {
    match layer {
        None => "X".to_string(),
        Some("raw") => "raw/X".to_string(),
        Some(l) => format!("layers/{l}"),
    }
}

/// Cells of one dataset, tokenised, with their labels.
#[derive(Debug, Default)]
pub struct CellSet {
    pub cells: TokenStore,
    /// Row of each cell in the file.
    pub rows: Vec<usize>,
    pub n_rows: usize,
    /// Class code per cell (`None`: unlabelled).
    pub labels: Vec<Option<u32>>,
    pub class_names: Vec<String>,
    pub batches: Vec<Option<u32>>,
    pub batch_names: Vec<String>,
    /// Rows without any expressed vocabulary gene (not in `cells`).
    pub empty_rows: Vec<usize>,
    /// Vocabulary genes matched in the file.
    pub genes_matched: usize,
    /// `Some` when `cells` hold each cell's raw counts (every expressed vocabulary gene,
    /// `<cls>` first) instead of bins: binning then happens per minibatch, after optional
    /// depth augmentation ([`CellQuery::keep_counts`]). The precision the file's values had.
    pub counts: Option<ValuePrecision>,
    /// The seed the cells were read with (their deterministic binning draws from it).
    pub seed: u64,
}

fn codes(
    backed: &BackedH5ad,
    key: Option<&str>,
    what: &str,
    fixed: Option<&[String]>,
) -> Result<(Vec<Option<u32>>, Vec<String>), TrainError> {
    let n = backed.obs.n_rows();
    let Some(key) = key else {
        return Ok((vec![None; n], Vec::new()));
    };
    let cat = backed
        .obs
        .categorical(key)
        .map_err(|e| TrainError::Input(format!("{what} key: {e}")))?;
    let names = cat.category_labels();
    let raw: Vec<Option<&str>> = cat
        .codes
        .iter()
        .map(|&c| {
            usize::try_from(c)
                .ok()
                .and_then(|c| names.get(c).map(String::as_str))
        })
        .collect();
    // Used categories only, sorted, unless the names are fixed (a trained model's classes).
    let names: Vec<String> = match fixed {
        Some(f) => f.to_vec(),
        None => {
            let mut used: Vec<String> = raw.iter().flatten().map(|s| s.to_string()).collect();
            used.sort();
            used.dedup();
            used
        }
    };
    let out = raw
        .iter()
        .map(|l| {
            l.and_then(|l| {
                names
                    .iter()
                    .position(|n| n == l)
                    .and_then(|i| u32::try_from(i).ok())
            })
        })
        .collect();
    Ok((out, names))
}

/// What to read from a dataset and how to tokenise it.
#[derive(Clone, Copy, Debug)]
pub struct CellQuery<'a> {
    pub path: &'a Path,
    /// `None` for X, a layer name, or `raw` for raw/X.
    pub layer: Option<&'a str>,
    pub gene_col: &'a GeneColumn,
    pub vocab: &'a GeneVocab,
    pub label_key: Option<&'a str>,
    pub batch_key: Option<&'a str>,
    /// A trained model's classes / batches (codes follow them); `None`: the used labels,
    /// sorted.
    pub fixed_classes: Option<&'a [String]>,
    pub fixed_batches: Option<&'a [String]>,
    pub tokens: &'a TokenSettings,
    pub seed: u64,
    /// Keep each cell's raw counts instead of its bins, so training can thin them per step
    /// (depth augmentation); the values must then be whole numbers.
    pub keep_counts: bool,
}

impl CellQuery<'_> {
    /// Read and tokenise every cell into memory; see [`CellQuery::read_into`].
    pub fn read(&self) -> Result<CellSet, TrainError> {
        let mut sink = TokenSink::Memory(Vec::new());
        let mut set = self.read_into(&mut sink)?;
        set.cells = sink
            .finish()
            .map_err(|e| TrainError::Input(e.to_string()))?;
        Ok(set)
    }

    /// Read and tokenise every cell of the file (X, a layer or raw/X) into `sink`; the
    /// returned set has everything but the tokens. Genes are matched to the vocabulary by
    /// `gene_col`. Binning is per cell over its vocabulary genes, seeded by `seed` and the
    /// row, so a cell always gets the same tokens.
    pub fn read_into(&self, sink: &mut TokenSink) -> Result<CellSet, TrainError> {
        let CellQuery {
            path,
            layer,
            gene_col,
            vocab,
            label_key,
            batch_key,
            fixed_classes,
            fixed_batches,
            tokens: settings,
            seed,
            keep_counts,
        } = *self;
        let backed = BackedH5ad::open_matrix(path, &matrix_path(layer)).map_err(|source| {
            TrainError::Read {
                path: path.display().to_string(),
                source,
            }
        })?;
        let names = gene_names(&backed.var, gene_col)
            .map_err(|e| TrainError::Input(format!("--gene-col {}: {e}", gene_col.name())))?;
        let matched = vocab.match_genes(&names);
        let genes_matched = matched.n_matched;
        let ids = matched.ids;
        if genes_matched == 0 {
            return Err(TrainError::Input(format!(
                "none of the {} genes of {} is in the model's vocabulary",
                names.len(),
                path.display()
            )));
        }
        let cls_id = vocab
            .id("<cls>")
            .ok_or_else(|| TrainError::Input("the vocabulary has no <cls> token".into()))?;
        let (labels, class_names) = codes(&backed, label_key, "label", fixed_classes)?;
        let (batches, batch_names) = codes(&backed, batch_key, "batch", fixed_batches)?;
        let [n_rows, n_cols] = backed.shape();
        let opts = TokenizeOptions {
            include_zero_genes: settings.include_zero_genes,
            append_cls: true,
            cls_value: settings.cls_value,
            max_len: settings.max_len,
        };
        let vocab_cols: Vec<usize> = (0..n_cols).filter(|&c| ids[c].is_some()).collect();
        let col_genes: Vec<Option<u32>> = vocab_cols.iter().map(|&c| ids[c]).collect();
        let mut pos_of_col = vec![usize::MAX; n_cols];
        for (p, &c) in vocab_cols.iter().enumerate() {
            pos_of_col[c] = p;
        }
        let mut set = CellSet {
            n_rows,
            class_names,
            batch_names,
            genes_matched,
            seed,
            ..CellSet::default()
        };
        // Counts are stored whole (every expressed gene); cutting to max_len happens when a
        // minibatch is built.
        let raw_opts = TokenizeOptions {
            max_len: usize::MAX,
            ..opts
        };
        let mut dense = vec![0f64; vocab_cols.len()];
        for chunk in backed.chunks(4096) {
            let (rows, chunk) = chunk.map_err(|source| TrainError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let csr = chunk.into_csr();
            let precision = match csr.data {
                ArrayData::F32(_) => ValuePrecision::F32,
                _ => ValuePrecision::F64,
            };
            let values = csr.data.to_f64_vec();
            for r in 0..csr.shape[0] {
                let row = rows.start + r;
                dense.iter_mut().for_each(|v| *v = 0.0);
                let (a, b) = (csr.indptr[r] as usize, csr.indptr[r + 1] as usize);
                for (&col, &v) in csr.indices[a..b].iter().zip(&values[a..b]) {
                    let col = col as usize;
                    if !v.is_finite() || v < 0.0 {
                        return Err(TrainError::Input(format!(
                            "{} has a {} value ({v}) in cell {} (row {row}), gene {}: training needs \
                         finite, non-negative expression (counts or log-normalised data)",
                            path.display(),
                            if v.is_nan() {
                                "NaN"
                            } else if v < 0.0 {
                                "negative"
                            } else {
                                "infinite"
                            },
                            backed.obs.index.get(row).cloned().unwrap_or_default(),
                            backed.var.index.get(col).cloned().unwrap_or_default()
                        )));
                    }
                    if keep_counts && v.fract() != 0.0 {
                        return Err(TrainError::Input(format!(
                            "depth augmentation thins counts, but {} holds {v} in cell {} (row \
                             {row}), gene {}: give raw counts (the CLI's --layer counts reads a \
                             counts layer) or turn the augmentation off",
                            path.display(),
                            backed.obs.index.get(row).cloned().unwrap_or_default(),
                            backed.var.index.get(col).cloned().unwrap_or_default()
                        )));
                    }
                    if let Some(&p) = pos_of_col.get(col)
                        && p != usize::MAX
                    {
                        dense[p] = v;
                    }
                }
                if dense.iter().all(|&v| v == 0.0) {
                    set.empty_rows.push(row);
                    continue;
                }
                let cell = if keep_counts {
                    set.counts.get_or_insert(precision);
                    let raw: Vec<f32> = dense.iter().map(|&v| v as f32).collect();
                    tokenize_values(&col_genes, &raw, cls_id, &raw_opts, &mut Rng::new(0))
                } else {
                    let mut rng = Rng::for_item(seed, row as u64);
                    let (bins, _) = bin_cell(&dense, settings.n_bins, precision, &mut rng);
                    let bins: Vec<f32> = bins.iter().map(|&b| f32::from(b)).collect();
                    tokenize_values(&col_genes, &bins, cls_id, &opts, &mut rng)
                };
                sink.push(cell)
                    .map_err(|e| TrainError::Input(e.to_string()))?;
                set.rows.push(row);
                set.labels.push(labels[row]);
                set.batches.push(batches[row]);
            }
        }
        Ok(set)
    }
}

/// A seeded split of `items` into (train, validation): `fraction` of the items (at least one
/// when there are two or more) go to validation.
pub fn split(items: &[usize], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order = items.to_vec();
    Rng::new(seed ^ 0x5eed_0f5b_1175).shuffle(&mut order);
    let n_valid = if fraction <= 0.0 || order.len() < 2 {
        0
    } else {
        ((order.len() as f64 * fraction).round() as usize).clamp(1, order.len() - 1)
    };
    let valid = order.split_off(order.len() - n_valid);
    (order, valid)
}

/// A seeded split stratified by label (scikit-learn's `stratify=`): each class sends
/// `round(count * fraction)` of its cells to validation, but always keeps at least one in
/// training, so a cell type with a handful of reference cells is never held out entirely.
/// Unlabelled items are split like [`split`]. When the stratified validation set would be
/// empty (every class too small), the plain split is used instead.
pub fn split_stratified(
    items: &[usize],
    labels: &[Option<u32>],
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    if fraction <= 0.0 || items.len() < 2 {
        return split(items, fraction, seed);
    }
    let mut groups: std::collections::BTreeMap<Option<u32>, Vec<usize>> = Default::default();
    for &i in items {
        groups
            .entry(labels.get(i).copied().flatten())
            .or_default()
            .push(i);
    }
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (label, mut g) in groups {
        let key = label.map_or(u64::MAX, u64::from);
        Rng::new(seed ^ 0x5eed_0f5b_1175 ^ key.wrapping_mul(0x9e37_79b9_7f4a_7c15)).shuffle(&mut g);
        let n_valid = ((g.len() as f64 * fraction).round() as usize).min(g.len().saturating_sub(1));
        valid.extend(g.split_off(g.len() - n_valid));
        train.extend(g);
    }
    if valid.is_empty() {
        return split(items, fraction, seed);
    }
    // one shuffled order, so nothing downstream sees the cells grouped by class
    let mut rng = Rng::new(seed ^ 0x0005_7a7f);
    rng.shuffle(&mut train);
    rng.shuffle(&mut valid);
    (train, valid)
}

/// The minibatches of one epoch: shuffled (seeded by `seed` and `epoch`); with
/// `by_batch`, each minibatch holds cells of one batch label only (scGPT's
/// `SubsetsBatchSampler`, needed by DSBN), minibatch order shuffled too.
pub fn epoch_batches(
    set: &CellSet,
    items: &[usize],
    batch_size: usize,
    by_batch: bool,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = Rng::for_item(seed ^ 0xe90c_4000, epoch as u64);
    let bs = batch_size.max(1);
    let mut out = Vec::new();
    if by_batch {
        let mut groups: std::collections::BTreeMap<Option<u32>, Vec<usize>> = Default::default();
        for &i in items {
            groups.entry(set.batches[i]).or_default().push(i);
        }
        for (_, mut g) in groups {
            rng.shuffle(&mut g);
            out.extend(g.chunks(bs).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut out);
    } else {
        let mut order = items.to_vec();
        rng.shuffle(&mut order);
        out.extend(order.chunks(bs).map(<[usize]>::to_vec));
    }
    out
}

/// A minibatch on the host: padded tokens, masked input values and targets.
#[derive(Clone, Debug)]
pub struct HostBatch {
    pub padded: PaddedBatch,
    /// Values fed to the model (masked positions hold the mask value).
    pub input_values: Vec<f32>,
    /// 1.0 where a value was masked.
    pub masked: Vec<f32>,
    pub labels: Option<Vec<u32>>,
    pub batches: Option<Vec<u32>>,
}

/// Binomial thinning: each of the `count` molecules is kept with probability `keep`.
fn thin(count: f32, keep: f64, rng: &mut Rng) -> f32 {
    // counts are whole numbers (checked when read); this loop is over a cell's molecules
    let n = count.max(0.0) as u64;
    (0..n).filter(|_| rng.uniform() < keep).count() as f32
}

/// Cell `i` of `set` as tokens. Cells stored as bins are returned as they are. Cells stored
/// as counts are binned here, exactly as [`CellQuery::read`] would have (same draws), unless
/// `depth` is given: then the counts are first thinned to a fraction drawn uniformly from
/// `[depth, 1]` (binomial sampling of the molecules, as if the cell had been sequenced less
/// deeply), with draws from `rng`.
pub fn cell_tokens(
    set: &CellSet,
    i: usize,
    settings: &TokenSettings,
    depth: Option<f64>,
    rng: &mut Rng,
) -> CellTokens {
    let stored = set.cells.get(i);
    let Some(precision) = set.counts else {
        return stored;
    };
    let (Some(&cls_id), Some(&cls_value)) = (stored.genes.first(), stored.values.first()) else {
        return stored;
    };
    let genes: Vec<Option<u32>> = stored.genes[1..].iter().map(|&g| Some(g)).collect();
    let mut values: Vec<f32> = stored.values[1..].to_vec();
    let mut own = Rng::for_item(set.seed, set.rows.get(i).copied().unwrap_or(i) as u64);
    let rng = match depth {
        Some(min_keep) => {
            let min_keep = min_keep.clamp(0.0, 1.0);
            let keep = min_keep + (1.0 - min_keep) * rng.uniform();
            let thinned: Vec<f32> = values.iter().map(|&c| thin(c, keep, rng)).collect();
            // a cell thinned to nothing keeps its counts
            if thinned.iter().any(|&v| v > 0.0) {
                values = thinned;
            }
            rng
        }
        None => &mut own,
    };
    let dense: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    let (bins, _) = bin_cell(&dense, settings.n_bins, precision, rng);
    let bins: Vec<f32> = bins.iter().map(|&b| f32::from(b)).collect();
    let opts = TokenizeOptions {
        include_zero_genes: settings.include_zero_genes,
        append_cls: true,
        cls_value,
        max_len: settings.max_len,
    };
    tokenize_values(&genes, &bins, cls_id, &opts, rng)
}

/// Pad and mask the cells `idx` of `set` (masking seeded by `rng`); `depth`: thin stored
/// counts first (see [`cell_tokens`]).
pub fn host_batch(
    set: &CellSet,
    idx: &[usize],
    settings: &TokenSettings,
    pad_id: u32,
    mask_ratio: f64,
    depth: Option<f64>,
    rng: &mut Rng,
) -> HostBatch {
    let cells: Vec<CellTokens> = idx
        .iter()
        .map(|&i| cell_tokens(set, i, settings, depth, rng))
        .collect();
    let padded = pad_batch(&cells, settings.max_len, pad_id, settings.pad_value);
    let (input_values, mask) = if mask_ratio > 0.0 {
        random_mask_value(&padded, pad_id, mask_ratio, settings.mask_value, 1, rng)
    } else {
        (padded.values.clone(), vec![false; padded.values.len()])
    };
    let labels: Option<Vec<u32>> = idx.iter().map(|&i| set.labels[i]).collect();
    let batches: Option<Vec<u32>> = idx.iter().map(|&i| set.batches[i]).collect();
    HostBatch {
        input_values,
        masked: mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect(),
        padded,
        labels,
        batches,
    }
}

/// A minibatch on the device, with what the losses need.
#[derive(Clone, Debug)]
pub struct TrainBatch<B: Backend> {
    pub tokens: TokenBatch<B>,
    /// Unmasked values `[B, L]`.
    pub target: Tensor<B, 2>,
    /// 1.0 at masked positions `[B, L]`.
    pub masked: Tensor<B, 2>,
    /// Class ids `[B]`.
    pub labels: Option<Tensor<B, 1, Int>>,
}

impl HostBatch {
    /// Move to the device. `batch_labels` feeds the batch encoder / DSBN / DAR.
    pub fn to_device<B: Backend>(
        &self,
        pad_id: u32,
        batch_labels: bool,
        device: &B::Device,
    ) -> TrainBatch<B> {
        let p = &self.padded;
        let shape = [p.n, p.len];
        let ids: Vec<i64> = p.genes.iter().map(|&g| i64::from(g)).collect();
        let pad: Vec<bool> = p.genes.iter().map(|&g| g == pad_id).collect();
        let any_pad = pad.iter().any(|&x| x);
        let int1 = |v: &[u32]| {
            Tensor::<B, 1, Int>::from_data(
                TensorData::new(
                    v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(),
                    [v.len()],
                ),
                device,
            )
        };
        let batch_ids = if batch_labels {
            self.batches.as_deref()
        } else {
            None
        };
        TrainBatch {
            tokens: TokenBatch {
                src: Tensor::from_data(TensorData::new(ids, shape), device),
                values: Tensor::from_data(
                    TensorData::new(self.input_values.clone(), shape),
                    device,
                ),
                padding: any_pad.then(|| Tensor::from_data(TensorData::new(pad, shape), device)),
                batch_labels: batch_ids.map(int1),
                dsbn_domain: batch_ids.and_then(|b| b.first().map(|&x| x as usize)),
                mod_types: None,
                pert_flags: None,
            },
            target: Tensor::from_data(TensorData::new(p.values.clone(), shape), device),
            masked: Tensor::from_data(TensorData::new(self.masked.clone(), shape), device),
            labels: self.labels.as_deref().map(int1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_split_keeps_rare_classes_in_training() {
        // class 0: 100 cells, class 1: 40, class 2: 4, class 3: 1, two unlabelled
        let mut labels: Vec<Option<u32>> = Vec::new();
        for (c, n) in [(0u32, 100usize), (1, 40), (2, 4), (3, 1)] {
            labels.extend(std::iter::repeat_n(Some(c), n));
        }
        labels.extend([None, None]);
        let items: Vec<usize> = (0..labels.len()).collect();
        let (train, valid) = split_stratified(&items, &labels, 0.1, 7);
        let count = |v: &[usize], c: Option<u32>| v.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!(count(&valid, Some(0)), 10);
        assert_eq!(count(&valid, Some(1)), 4);
        assert_eq!(count(&valid, Some(2)), 0, "4 * 0.1 rounds to 0");
        assert_eq!(count(&train, Some(3)), 1, "a single cell stays in training");
        let mut all: Vec<usize> = train.iter().chain(&valid).copied().collect();
        all.sort_unstable();
        assert_eq!(all, items, "every item exactly once");
        // seeded: same seed, same split; another seed, another split
        assert_eq!(
            split_stratified(&items, &labels, 0.1, 7),
            (train.clone(), valid.clone())
        );
        assert_ne!(split_stratified(&items, &labels, 0.1, 8).1, valid);
        // a class of two at fraction 0.5 keeps one cell in training
        let two = [Some(0u32), Some(0)];
        let (t, v) = split_stratified(&[0, 1], &two, 0.5, 1);
        assert_eq!((t.len(), v.len()), (1, 1));
    }

    #[test]
    fn stratified_split_falls_back_when_every_class_is_tiny() {
        let labels: Vec<Option<u32>> = (0..6).map(|i| Some(i as u32)).collect();
        let items: Vec<usize> = (0..6).collect();
        let (train, valid) = split_stratified(&items, &labels, 0.2, 3);
        assert_eq!((train, valid), split(&items, 0.2, 3));
    }
}
