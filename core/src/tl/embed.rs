//! Cell embeddings the way `scgpt.tasks.embed_data` computes them, streamed over a backed
//! h5ad: genes mapped through the vocabulary, each cell's non-zero genes binned, `<cls>`
//! first with the model's pad value, at most `max_length` tokens, batches of similar
//! length, the `<cls>` output L2-normalised. X is read in row chunks and never densified.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::anndata::{ArrayData, SparseMatrix};
use crate::io::BackedH5ad;
use crate::model::net::l2_normalize;
use crate::model::{ForwardError, ScGpt, TokenBatch};
use crate::tokenize::{CellTokens, Rng, ValuePrecision, tokenize_cell};

/// Embedding options (defaults as `embed_data`).
#[derive(Clone, Debug)]
pub struct EmbedOptions {
    /// Most tokens per cell, `<cls>` included.
    pub max_length: usize,
    /// Cells per forward pass.
    pub batch_size: usize,
    /// Seed for tie-breaking in binning and for gene subsampling.
    pub seed: u64,
    /// Rows of X read at once.
    pub chunk_rows: usize,
    /// Fault injection for tests: a forward pass over more cells than this fails as if the
    /// device had run out of memory (the same path a real allocation failure takes).
    pub simulate_oom_above: Option<usize>,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            max_length: 1200,
            batch_size: 64,
            seed: 0,
            chunk_rows: 4096,
            simulate_oom_above: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("reading X: {0}")]
    Read(#[from] crate::io::H5adError),
    #[error("{0}")]
    Forward(#[from] ForwardError),
    #[error(
        "X has a {what} value ({value}) in cell {cell} (row {row}), gene {gene}: binning needs \
         finite, non-negative expression (raw counts or log-normalised data)"
    )]
    BadValue {
        what: &'static str,
        value: f64,
        row: usize,
        cell: String,
        gene: String,
    },
    #[error("the vocabulary has no \"{0}\" token")]
    MissingToken(String),
    #[error("none of the dataset's {0} genes is in the model's vocabulary; check --gene-col")]
    NoGenesMatched(usize),
    #[error("cancelled")]
    Cancelled,
    #[error("reading the model output: {0}")]
    Output(String),
    #[error(
        "the device ran out of memory even with one cell per batch ({0}); try --device cpu or \
         a smaller --max-length"
    )]
    OutOfMemory(String),
    #[error("the compute backend failed: {0}")]
    Backend(String),
}

/// Progress of an embedding run.
#[derive(Clone, Copy, Debug)]
pub struct EmbedProgress {
    pub cells_done: usize,
    pub cells_total: usize,
    pub elapsed_s: f64,
    /// Cells per forward pass now: lower than asked after the device ran out of memory.
    pub batch_size: usize,
}

/// Embeddings and what happened on the way.
#[derive(Clone, Debug)]
pub struct EmbedResult {
    /// Row-major `[n_cells, d_model]`.
    pub embeddings: Vec<f32>,
    pub d_model: usize,
    /// Rows of cells without any expressed vocabulary gene (their embedding is all zeros).
    pub empty_cells: Vec<usize>,
    /// Cells whose gene list was subsampled to `max_length - 1`.
    pub truncated_cells: usize,
    /// Tokens fed to the model (`<cls>` included, padding excluded).
    pub tokens: u64,
    pub seconds: f64,
}

/// Tokenised non-empty cells `(row, tokens)`, rows of empty cells, truncated count.
type TokenizedChunk = (Vec<(usize, CellTokens)>, Vec<usize>, usize);

/// The tokenised non-empty cells of one chunk: `(row, tokens)`.
fn tokenize_chunk(
    csr: &SparseMatrix,
    row0: usize,
    gene_ids: &[Option<u32>],
    cls_id: u32,
    cls_value: f32,
    n_bins: usize,
    opts: &EmbedOptions,
    backed: &BackedH5ad,
) -> Result<TokenizedChunk, EmbedError> {
    let precision = match csr.data {
        ArrayData::F32(_) => ValuePrecision::F32,
        _ => ValuePrecision::F64,
    };
    let values = csr.data.to_f64_vec();
    let mut cells = Vec::new();
    let mut empty = Vec::new();
    let mut truncated = 0;
    let mut entries: Vec<(u32, f64)> = Vec::new();
    for r in 0..csr.shape[0] {
        let (a, b) = (csr.indptr[r] as usize, csr.indptr[r + 1] as usize);
        entries.clear();
        for (&col, &v) in csr.indices[a..b].iter().zip(&values[a..b]) {
            let col = col as usize;
            if !v.is_finite() || v < 0.0 {
                let row = row0 + r;
                return Err(EmbedError::BadValue {
                    what: if v.is_nan() {
                        "NaN"
                    } else if v.is_infinite() {
                        "infinite"
                    } else {
                        "negative"
                    },
                    value: v,
                    row,
                    cell: backed.obs.index.get(row).cloned().unwrap_or_default(),
                    gene: backed.var.index.get(col).cloned().unwrap_or_default(),
                });
            }
            if v == 0.0 {
                continue;
            }
            if let Some(Some(id)) = gene_ids.get(col) {
                entries.push((*id, v));
            }
        }
        if entries.is_empty() {
            empty.push(row0 + r);
            continue;
        }
        if entries.len() + 1 > opts.max_length {
            truncated += 1;
        }
        let mut rng = Rng::for_item(opts.seed, (row0 + r) as u64);
        let t = tokenize_cell(
            &entries,
            cls_id,
            cls_value,
            n_bins,
            opts.max_length,
            precision,
            &mut rng,
        );
        cells.push((row0 + r, t));
    }
    Ok((cells, empty, truncated))
}

/// Build a padded batch on the device from tokenised cells.
pub fn make_batch<B: Backend>(
    cells: &[&CellTokens],
    pad_id: u32,
    pad_value: f32,
    device: &B::Device,
) -> TokenBatch<B> {
    let b = cells.len();
    let l = cells.iter().map(|c| c.genes.len()).max().unwrap_or(1);
    let mut ids = vec![pad_id as i64; b * l];
    let mut vals = vec![pad_value; b * l];
    let mut pad = vec![true; b * l];
    for (i, c) in cells.iter().enumerate() {
        for (j, (&g, &v)) in c.genes.iter().zip(&c.values).enumerate() {
            ids[i * l + j] = g as i64;
            vals[i * l + j] = v;
            pad[i * l + j] = false;
        }
    }
    let any_pad = pad.iter().any(|&p| p);
    TokenBatch {
        src: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, l]), device),
        values: Tensor::<B, 2>::from_data(TensorData::new(vals, [b, l]), device),
        padding: any_pad.then(|| Tensor::from_data(TensorData::new(pad, [b, l]), device)),
        batch_labels: None,
        dsbn_domain: None,
        mod_types: None,
        pert_flags: None,
    }
}

/// Embed every cell of a backed file. `progress` may return `ControlFlow::Break(())` to
/// cancel (checked after every batch).
pub fn embed_backed<B: Backend>(
    model: &ScGpt<B>,
    device: &B::Device,
    vocab: &crate::vocab::GeneVocab,
    backed: &BackedH5ad,
    gene_ids: &[Option<u32>],
    opts: &EmbedOptions,
    progress: &mut dyn FnMut(EmbedProgress) -> ControlFlow<()>,
) -> Result<EmbedResult, EmbedError> {
    let config = model.config();
    let d = config.d_model;
    let cls_id = vocab
        .id("<cls>")
        .ok_or_else(|| EmbedError::MissingToken("<cls>".into()))?;
    let pad_id = vocab
        .id(&config.pad_token)
        .ok_or_else(|| EmbedError::MissingToken(config.pad_token.clone()))?;
    if !gene_ids.iter().any(Option::is_some) {
        return Err(EmbedError::NoGenesMatched(gene_ids.len()));
    }
    let [n_cells, _] = backed.shape();
    let start = Instant::now();
    let mut out = vec![0f32; n_cells * d];
    let mut empty_cells = Vec::new();
    let mut truncated_cells = 0;
    let mut tokens = 0u64;
    let mut done = 0usize;
    let mut batch_size = opts.batch_size.max(1);
    for chunk in backed.chunks(opts.chunk_rows.max(1)) {
        let (rows, chunk) = chunk?;
        let csr = chunk.into_csr();
        let (mut cells, empty, truncated) = tokenize_chunk(
            &csr,
            rows.start,
            gene_ids,
            cls_id,
            config.pad_value,
            config.n_bins,
            opts,
            backed,
        )?;
        done += empty.len();
        empty_cells.extend(empty);
        truncated_cells += truncated;
        // Similar lengths together: less padding, same results (cells are independent).
        cells.sort_by_key(|(_, t)| std::cmp::Reverse(t.genes.len()));
        let mut at = 0;
        while at < cells.len() {
            let group = &cells[at..(at + batch_size).min(cells.len())];
            let refs: Vec<&CellTokens> = group.iter().map(|(_, t)| t).collect();
            // A failed allocation panics inside the backend: catch it, halve the batch and
            // try the same cells again (results do not depend on the batch: cells are
            // independent), down to one cell per batch.
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if opts.simulate_oom_above.is_some_and(|m| refs.len() > m) {
                    panic!(
                        "injected fault: out of memory allocating a batch of {} cells",
                        refs.len()
                    );
                }
                let batch = make_batch::<B>(&refs, pad_id, config.pad_value, device);
                let emb = l2_normalize(model.embed_cells(&batch)?);
                emb.into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| EmbedError::Output(format!("{e:?}")))
            }));
            let host = match attempt {
                Ok(r) => r?,
                Err(p) => {
                    let msg = crate::sys::panic_message(p.as_ref());
                    if !crate::sys::is_oom_message(&msg) {
                        return Err(EmbedError::Backend(msg));
                    }
                    if batch_size == 1 {
                        return Err(EmbedError::OutOfMemory(msg));
                    }
                    batch_size = (batch_size / 2).max(1);
                    continue;
                }
            };
            tokens += refs.iter().map(|t| t.genes.len() as u64).sum::<u64>();
            for (i, (row, _)) in group.iter().enumerate() {
                out[row * d..(row + 1) * d].copy_from_slice(&host[i * d..(i + 1) * d]);
            }
            at += group.len();
            done += group.len();
            let p = EmbedProgress {
                cells_done: done,
                cells_total: n_cells,
                elapsed_s: start.elapsed().as_secs_f64(),
                batch_size,
            };
            if progress(p).is_break() {
                return Err(EmbedError::Cancelled);
            }
        }
    }
    Ok(EmbedResult {
        embeddings: out,
        d_model: d,
        empty_cells,
        truncated_cells,
        tokens,
        seconds: start.elapsed().as_secs_f64(),
    })
}
