//! Gene networks from a model, as scGPT's GRN tutorials build them (SCGPT_SPEC 5.4-5.5):
//!
//! - gene embeddings: `LayerNorm(Embedding(gene))` rows of the dataset's genes that are in
//!   the vocabulary (data-independent);
//! - a cosine-similarity network (edges at cosine >= a threshold) and the similarity ranking
//!   of a query gene;
//! - gene programs: Leiden clusters (at a resolution, 40 in the tutorial) of the kNN graph of
//!   the gene embeddings with scanpy's default neighbours (15, euclidean, UMAP
//!   connectivities); programs are the clusters with at least 5 genes;
//! - per-cell program scores, `score_genes`-style, min-max scaled to [0, 1] per program;
//! - attention-based gene-gene scores for a group of cells: raw `q·kᵀ` of a chosen layer
//!   (no scaling, no softmax), rank-normalised along rows then columns, averaged over heads
//!   and over the cells of the group.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::analysis::knn::{self, Metric};
use crate::analysis::leiden::{LeidenOptions, leiden};
use crate::analysis::{CsrMatrix, DenseMatrix};
use crate::model::ScGpt;
use crate::model::net::TokenBatch;
use crate::tokenize::{Rng, ValuePrecision, bin_cell};
use crate::vocab::GeneVocab;

use super::analyze::{Result, ToolError};

/// Embedding vectors of genes, row-major `n x dim`.
#[derive(Debug, Clone)]
pub struct GeneVectors {
    pub names: Vec<String>,
    /// Position of each gene in the dataset's `var`.
    pub var_index: Vec<usize>,
    /// Vocabulary id of each gene.
    pub ids: Vec<u32>,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl GeneVectors {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Index of a gene by name (exact, then case-insensitive).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .or_else(|| self.names.iter().position(|n| n.eq_ignore_ascii_case(name)))
    }

    /// Rows scaled to unit length (zero rows stay zero).
    fn normalized(&self) -> Vec<f32> {
        let mut out = self.data.clone();
        out.par_chunks_mut(self.dim.max(1)).for_each(|r| {
            let n = r
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|v| *v = (f64::from(*v) / n) as f32);
            }
        });
        out
    }
}

/// Gene embeddings of the dataset genes `var_names` that the vocabulary has, optionally
/// restricted to `keep` (e.g. highly variable genes).
pub fn gene_vectors<B: Backend>(
    model: &ScGpt<B>,
    vocab: &GeneVocab,
    var_names: &[String],
    keep: Option<&[bool]>,
    device: &B::Device,
) -> Result<GeneVectors> {
    let matched = vocab.match_genes(var_names);
    let mut names = Vec::new();
    let mut var_index = Vec::new();
    let mut ids = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (g, id) in matched.ids.iter().enumerate() {
        let Some(id) = id else { continue };
        if keep.is_some_and(|k| !k.get(g).copied().unwrap_or(false)) {
            continue;
        }
        if !seen.insert(*id) {
            continue; // two var entries naming one vocabulary gene: keep the first
        }
        names.push(var_names[g].clone());
        var_index.push(g);
        ids.push(*id);
    }
    if ids.is_empty() {
        return Err(ToolError::Input(format!(
            "none of the {} genes{} is in the model's vocabulary",
            var_names.len(),
            if keep.is_some() { " selected" } else { "" }
        )));
    }
    let t = model.gene_embeddings(Tensor::<B, 1, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i64::from(i)).collect(), [ids.len()]),
        device,
    ));
    let dim = t.dims()[1];
    let data = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ToolError::Input(format!("reading gene embeddings: {e:?}")))?;
    Ok(GeneVectors {
        names,
        var_index,
        ids,
        dim,
        data,
    })
}

/// The `top` genes most similar (cosine) to `query`, most similar first, the query
/// excluded.
pub fn similar_genes(v: &GeneVectors, query: &str, top: usize) -> Result<Vec<(usize, f32)>> {
    let q = v.find(query).ok_or_else(|| {
        ToolError::Input(format!(
            "gene \"{query}\" is not among the {} genes with embeddings (is it in the dataset \
             and in the model's vocabulary?)",
            v.len()
        ))
    })?;
    let unit = v.normalized();
    let d = v.dim;
    let qr = &unit[q * d..(q + 1) * d];
    let mut sims: Vec<(usize, f32)> = (0..v.len())
        .filter(|&i| i != q)
        .map(|i| (i, dot(qr, &unit[i * d..(i + 1) * d]) as f32))
        .collect();
    sims.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    sims.truncate(top);
    Ok(sims)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Cosine-similarity network: an edge between two different genes where their cosine
/// similarity is at least `threshold` (scGPT's `generate_network`), symmetric, weights =
/// similarity.
pub fn similarity_network(v: &GeneVectors, threshold: f32) -> Result<CsrMatrix<f32>> {
    if !threshold.is_finite() {
        return Err(ToolError::Input(format!(
            "similarity threshold must be a number, got {threshold}"
        )));
    }
    let unit = v.normalized();
    let d = v.dim;
    let n = v.len();
    let rows: Vec<Vec<(u32, f32)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let a = &unit[i * d..(i + 1) * d];
            (0..n)
                .filter(|&j| j != i)
                .filter_map(|j| {
                    let s = dot(a, &unit[j * d..(j + 1) * d]) as f32;
                    (s >= threshold).then_some((j as u32, s))
                })
                .collect()
        })
        .collect();
    let mut indptr = Vec::with_capacity(n + 1);
    indptr.push(0);
    let mut indices = Vec::new();
    let mut data = Vec::new();
    for r in rows {
        for (j, s) in r {
            indices.push(j);
            data.push(s);
        }
        indptr.push(indices.len());
    }
    Ok(CsrMatrix::new(n, n, indptr, indices, data)?)
}

/// Parameters of [`gene_programs`].
#[derive(Debug, Clone)]
pub struct ProgramParams {
    pub resolution: f64,
    pub n_neighbors: usize,
    pub min_size: usize,
    pub seed: u64,
}

impl Default for ProgramParams {
    fn default() -> Self {
        Self {
            resolution: 40.0,
            n_neighbors: 15,
            min_size: 5,
            seed: 0,
        }
    }
}

/// Gene programs: Leiden clusters of the genes; `programs` lists the clusters with at least
/// `min_size` genes, largest first (indices into the [`GeneVectors`]).
#[derive(Debug, Clone)]
pub struct GenePrograms {
    pub cluster: Vec<u32>,
    pub n_clusters: usize,
    pub programs: Vec<Vec<usize>>,
    /// Program of each gene (`None`: its cluster is too small).
    pub program_of: Vec<Option<u32>>,
}

/// Leiden gene programs on the kNN graph of the gene embeddings.
pub fn gene_programs(v: &GeneVectors, p: &ProgramParams) -> Result<GenePrograms> {
    let n = v.len();
    if n < 3 {
        return Err(ToolError::Input(format!(
            "gene programs need at least 3 genes with embeddings, got {n}"
        )));
    }
    let x = DenseMatrix::new(&v.data, n, v.dim)?;
    let k = p.n_neighbors.clamp(2, n - 1);
    let nn = knn::knn(&x, k, Metric::Euclidean)?;
    let g = knn::umap_connectivities(&nn)?;
    let r = leiden(
        &g,
        &LeidenOptions {
            resolution: p.resolution,
            seed: p.seed,
            n_iterations: -1,
        },
    )?;
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); r.n_clusters];
    for (i, &c) in r.labels.iter().enumerate() {
        members[c as usize].push(i);
    }
    // clusters are numbered by decreasing size already
    let programs: Vec<Vec<usize>> = members
        .into_iter()
        .filter(|m| m.len() >= p.min_size.max(1))
        .collect();
    let mut program_of = vec![None; n];
    for (pi, m) in programs.iter().enumerate() {
        for &g in m {
            program_of[g] = Some(pi as u32);
        }
    }
    Ok(GenePrograms {
        cluster: r.labels,
        n_clusters: r.n_clusters,
        programs,
        program_of,
    })
}

/// Min-max scaling of each column of a row-major `n x k` matrix to [0, 1] (a constant
/// column becomes 0), as scGPT's `score_metagenes` does.
pub fn min_max_columns(m: &mut [f32], k: usize) {
    if k == 0 {
        return;
    }
    for c in 0..k {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for r in m.chunks(k) {
            lo = lo.min(r[c]);
            hi = hi.max(r[c]);
        }
        let span = hi - lo;
        for r in m.chunks_mut(k) {
            r[c] = if span > 0.0 { (r[c] - lo) / span } else { 0.0 };
        }
    }
}

/// One cell's expression over the chosen genes (dense, `genes.len()` values).
pub type CellValues = Vec<f64>;

/// Attention-based gene-gene scores of `cells` (each given as the values of the genes in
/// `v`, all genes tokenised, zeros included, binned per cell into `n_bins`): the
/// `n x n` gene-gene matrix (without `<cls>`), mean over heads and cells of the
/// rank-normalised raw attention scores of layer `layer`. `progress` gets the cells done.
#[allow(clippy::too_many_arguments)]
pub fn attention_scores<B: Backend>(
    model: &ScGpt<B>,
    v: &GeneVectors,
    cls_id: u32,
    cls_value: f32,
    cells: &[CellValues],
    layer: usize,
    n_bins: usize,
    batch_size: usize,
    device: &B::Device,
    progress: &mut dyn FnMut(usize) -> std::ops::ControlFlow<()>,
) -> Result<Vec<f64>> {
    let n_layers = model.layers.len();
    if layer >= n_layers {
        return Err(ToolError::Input(format!(
            "layer {layer} does not exist: the model has {n_layers} layers (0..{})",
            n_layers.saturating_sub(1)
        )));
    }
    if cells.is_empty() {
        return Err(ToolError::Input("no cells in the group".into()));
    }
    let m = v.len();
    let l = m + 1;
    let mut acc = vec![0f64; l * l];
    let mut done = 0usize;
    for chunk in cells.chunks(batch_size.max(1)) {
        let b = chunk.len();
        let mut ids = Vec::with_capacity(b * l);
        let mut vals = Vec::with_capacity(b * l);
        for (ci, c) in chunk.iter().enumerate() {
            if c.len() != m {
                return Err(ToolError::Input(format!(
                    "cell {} has {} values for {m} genes",
                    done + ci,
                    c.len()
                )));
            }
            let mut rng = Rng::for_item(0, (done + ci) as u64);
            let (bins, _) = bin_cell(c, n_bins, ValuePrecision::F32, &mut rng);
            ids.push(i64::from(cls_id));
            vals.push(cls_value);
            ids.extend(v.ids.iter().map(|&i| i64::from(i)));
            vals.extend(bins.iter().map(|&x| f32::from(x)));
        }
        let batch = TokenBatch {
            src: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, l]), device),
            values: Tensor::<B, 2>::from_data(TensorData::new(vals, [b, l]), device),
            padding: None,
            batch_labels: None,
            dsbn_domain: None,
            mod_types: None,
            pert_flags: None,
        };
        let scores = model.raw_attention_scores(&batch, layer)?; // [b, h, l, l]
        let [_, h, _, _] = scores.dims();
        let s = scores
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ToolError::Input(format!("reading attention scores: {e:?}")))?;
        // rank-normalise rows, then columns, per (cell, head); sum over heads and cells
        let partial: Vec<f64> = s
            .par_chunks(l * l)
            .map(|mat| rank_normalise(mat, l))
            .reduce(
                || vec![0f64; l * l],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        acc.iter_mut()
            .zip(&partial)
            .for_each(|(a, p)| *a += p / h as f64);
        done += b;
        if progress(done).is_break() {
            return Err(ToolError::Cancelled);
        }
    }
    let total = cells.len() as f64;
    // drop the <cls> row and column
    let mut out = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..m {
            out[i * m + j] = acc[(i + 1) * l + j + 1] / total;
        }
    }
    Ok(out)
}

/// Ranks (1..=l, ties by position) divided by `l` along each row, then the same along each
/// column of the result.
fn rank_normalise(mat: &[f32], l: usize) -> Vec<f64> {
    let mut rows = vec![0f64; l * l];
    let mut order: Vec<usize> = (0..l).collect();
    for i in 0..l {
        let r = &mat[i * l..(i + 1) * l];
        order.sort_by(|&a, &b| r[a].total_cmp(&r[b]).then(a.cmp(&b)));
        for (rank, &j) in order.iter().enumerate() {
            rows[i * l + j] = (rank + 1) as f64 / l as f64;
        }
    }
    let mut out = vec![0f64; l * l];
    let mut col = vec![0f64; l];
    for j in 0..l {
        for i in 0..l {
            col[i] = rows[i * l + j];
        }
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        order.sort_by(|&a, &b| col[a].total_cmp(&col[b]).then(a.cmp(&b)));
        for (rank, &i) in order.iter().enumerate() {
            out[i * l + j] = (rank + 1) as f64 / l as f64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_normalise_rows_then_columns() {
        // 2x2: rows [1, 0] -> ranks [1, 0.5]; [0, 5] -> [0.5, 1]
        // columns of that: [1, 0.5] -> [1, 0.5]; [0.5, 1] -> [0.5, 1]
        let out = rank_normalise(&[1.0, 0.0, 0.0, 5.0], 2);
        assert_eq!(out, vec![1.0, 0.5, 0.5, 1.0]);
        let out = rank_normalise(&[3.0, 2.0, 1.0, 0.0, 5.0, 9.0, 4.0, 4.0, 4.0], 3);
        // every column is a permutation of {1/3, 2/3, 1}
        for j in 0..3 {
            let mut c: Vec<f64> = (0..3).map(|i| out[i * 3 + j]).collect();
            c.sort_by(f64::total_cmp);
            assert_eq!(c, vec![1.0 / 3.0, 2.0 / 3.0, 1.0]);
        }
    }

    #[test]
    fn min_max_scales_columns() {
        let mut m = vec![1.0, 5.0, 3.0, 5.0, 2.0, 5.0];
        min_max_columns(&mut m, 2);
        assert_eq!(m, vec![0.0, 0.0, 1.0, 0.0, 0.5, 0.0]);
    }

    #[test]
    fn similarity_network_and_ranking() {
        let v = GeneVectors {
            names: vec!["A".into(), "B".into(), "C".into()],
            var_index: vec![0, 1, 2],
            ids: vec![0, 1, 2],
            dim: 2,
            data: vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0],
        };
        let s = similar_genes(&v, "a", 5).unwrap();
        assert_eq!(s[0].0, 1);
        assert!((s[0].1 - 0.9 / (0.82f32).sqrt()).abs() < 1e-6);
        assert_eq!(s[1].0, 2);
        assert!(similar_genes(&v, "Z", 1).is_err());
        let g = similarity_network(&v, 0.5).unwrap();
        assert_eq!(g.nnz(), 2);
        assert!(g.get(0, 1).is_some() && g.get(1, 0).is_some() && g.get(0, 2).is_none());
    }
}

/// Attention scores for a group of cells.
#[derive(Debug, Clone)]
pub struct AttentionRequest {
    pub layer: usize,
    /// `(obs column, value)`: the cells of one group; `None`: all cells.
    pub group: Option<(String, String)>,
    /// At most this many cells of the group (evenly spaced, deterministic).
    pub max_cells: usize,
    pub batch_size: usize,
}

/// `cellforge gene-programs`.
#[derive(Debug, Clone)]
pub struct GeneProgramsRequest {
    pub model_dir: std::path::PathBuf,
    pub input: std::path::PathBuf,
    pub output: std::path::PathBuf,
    pub gene_col: super::embed_job::GeneColumn,
    /// Restrict to genes where this boolean var column is true (default: highly_variable when
    /// present; `Some("")`: every gene).
    pub gene_mask: Option<String>,
    /// Expression used for the program scores (`None`: X).
    pub layer: Option<String>,
    pub programs: ProgramParams,
    /// Edges of the similarity network at cosine >= this.
    pub threshold: f32,
    pub query_genes: Vec<String>,
    pub top: usize,
    pub attention: Option<AttentionRequest>,
    pub device: crate::device::DeviceRequest,
}

/// What [`run_gene_programs`] found.
#[derive(Debug, Clone)]
pub struct GeneProgramsSummary {
    pub n_genes: usize,
    pub n_clusters: usize,
    /// Genes of each program (largest first).
    pub programs: Vec<Vec<String>>,
    pub n_edges: usize,
    pub similar: Vec<(String, Vec<(String, f32)>)>,
    /// Strongest attention pairs `(from, to, score)` when attention was asked for.
    pub attention_top: Vec<(String, String, f64)>,
    pub attention_cells: usize,
    pub seconds: f64,
}

/// Gene embeddings -> programs, network, similarity rankings, program scores per cell and,
/// optionally, attention scores; written into a copy of the input:
/// `var["gene_program"]`, `varm["gene_embedding"]`, `varp["gene_similarity"]`,
/// `obsm["X_gene_programs"]` (scores min-max scaled per program), `uns["gene_programs"]`
/// (programs, parameters, similarity rankings) and `uns["gene_attention"]`.
pub fn run_gene_programs(
    req: &GeneProgramsRequest,
    progress: &mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>,
) -> Result<GeneProgramsSummary> {
    use crate::analysis::expr::Expr;
    use crate::analysis::score::{ScoreOptions, score_genes};
    use crate::anndata::{
        ArrayData, Categorical, DataFrame, DenseArray, Element, Mapping, SparseFormat,
        SparseMatrix, StringArray,
    };
    use crate::device::{OnBackend, dispatch};
    use crate::model::ModelFiles;

    let start = std::time::Instant::now();
    let files = ModelFiles::open(&req.model_dir)?;
    let mut adata = super::analyze::read_input(&req.input, &req.output)?;
    let names =
        super::embed_job::gene_names(&adata.var, &req.gene_col).map_err(ToolError::Input)?;
    let mask = match req.gene_mask.as_deref() {
        Some("") => None,
        Some(m) => Some(super::analyze::bool_var_column(&adata, m)?.ok_or_else(|| {
            ToolError::Input(format!("var has no column \"{m}\" to select genes"))
        })?),
        None => super::analyze::bool_var_column(&adata, "highly_variable")?,
    };
    // the expression matrix, read once: attention cells and program scores both use it
    let (x, _) = super::analyze::expression(&adata, req.layer.as_deref())?;
    let choice = crate::device::choose(req.device).map_err(ToolError::Device)?;
    struct Job<'a> {
        files: &'a ModelFiles,
        names: &'a [String],
        mask: Option<&'a [bool]>,
        adata: &'a crate::anndata::AnnData,
        x: &'a super::analyze::OwnedExpr,
        req: &'a GeneProgramsRequest,
        progress: &'a mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>,
    }
    type JobOut = (GeneVectors, Option<(Vec<f64>, usize)>);
    impl OnBackend for Job<'_> {
        type Output = Result<JobOut>;
        fn run<B: Backend>(self, device: &B::Device) -> Self::Output {
            let (model, _) = self.files.build::<B>(device)?;
            let v = gene_vectors(&model, &self.files.vocab, self.names, self.mask, device)?;
            let Some(a) = &self.req.attention else {
                return Ok((v, None));
            };
            let x = self.x;
            let n = self.adata.n_obs();
            let rows: Vec<usize> = match &a.group {
                None => (0..n).collect(),
                Some((col, val)) => {
                    let cat = self
                        .adata
                        .obs
                        .categorical(col)
                        .map_err(|e| ToolError::Input(format!("attention group: {e}")))?;
                    let labels = cat.labels();
                    let rows: Vec<usize> = (0..n)
                        .filter(|&i| labels[i].as_deref() == Some(val.as_str()))
                        .collect();
                    if rows.is_empty() {
                        return Err(ToolError::Input(format!("no cell has {col} = \"{val}\"")));
                    }
                    rows
                }
            };
            let take = a.max_cells.max(1).min(rows.len());
            let picked: Vec<usize> = (0..take).map(|t| rows[t * rows.len() / take]).collect();
            let cells: Vec<CellValues> = picked
                .iter()
                .map(|&r| {
                    v.var_index
                        .iter()
                        .map(|&g| match &x {
                            super::analyze::OwnedExpr::Dense { data, n_cols, .. } => {
                                f64::from(data[r * n_cols + g])
                            }
                            super::analyze::OwnedExpr::Sparse(m) => {
                                m.get(r, g).map(f64::from).unwrap_or(0.0)
                            }
                        })
                        .map(|x| x.max(0.0))
                        .collect()
                })
                .collect();
            let cfg = &self.files.config;
            let cls_id = self
                .files
                .vocab
                .special("<cls>")
                .map_err(ToolError::Input)?;
            let total = cells.len();
            let progress = self.progress;
            let scores = attention_scores(
                &model,
                &v,
                cls_id,
                cfg.pad_value,
                &cells,
                a.layer,
                cfg.n_bins,
                a.batch_size,
                device,
                &mut |d| progress(d, total),
            )?;
            Ok((v, Some((scores, total))))
        }
    }
    let (v, attention) = dispatch(
        choice.backend,
        Job {
            files: &files,
            names: &names,
            mask: mask.as_deref(),
            adata: &adata,
            x: &x,
            req,
            progress,
        },
    )?;
    let progs = gene_programs(&v, &req.programs)?;
    let net = similarity_network(&v, req.threshold)?;
    let mut similar = Vec::new();
    for q in &req.query_genes {
        let s = similar_genes(&v, q, req.top)?;
        similar.push((
            v.names[v.find(q).unwrap_or(0)].clone(),
            s.into_iter()
                .map(|(i, c)| (v.names[i].clone(), c))
                .collect::<Vec<_>>(),
        ));
    }
    // program scores per cell, min-max scaled
    let n_obs = adata.n_obs();
    let n_vars = adata.n_vars();
    let k = progs.programs.len();
    let mut scores = vec![0f32; n_obs * k];
    if k > 0 {
        let view: Expr<'_> = x.view()?;
        for (pi, prog) in progs.programs.iter().enumerate() {
            let genes: Vec<u32> = prog.iter().map(|&g| v.var_index[g] as u32).collect();
            let s = score_genes(
                view,
                &genes,
                &ScoreOptions {
                    seed: req.programs.seed,
                    ..ScoreOptions::default()
                },
            )?;
            for (c, val) in s.scores.iter().enumerate() {
                scores[c * k + pi] = *val as f32;
            }
        }
        min_max_columns(&mut scores, k);
    }
    // write
    let labels: Vec<Option<String>> = {
        let mut l = vec![None; n_vars];
        for (g, p) in progs.program_of.iter().enumerate() {
            l[v.var_index[g]] = p.map(|p| p.to_string());
        }
        l
    };
    adata.var.set_column(
        "gene_program",
        Element::Categorical(Categorical {
            codes: labels
                .iter()
                .map(|l| l.as_ref().and_then(|s| s.parse::<i32>().ok()).unwrap_or(-1))
                .collect(),
            categories: Box::new(Element::Strings(StringArray::from_vec(
                (0..k).map(|p| p.to_string()).collect(),
            ))),
            ordered: false,
        }),
    );
    let d = v.dim;
    let mut emb = vec![0f32; n_vars * d];
    for (g, &vi) in v.var_index.iter().enumerate() {
        emb[vi * d..(vi + 1) * d].copy_from_slice(v.row(g));
    }
    adata.varm.insert(
        "gene_embedding".into(),
        Element::Dense(DenseArray {
            shape: vec![n_vars, d],
            data: ArrayData::F32(emb),
        }),
    );
    // network in var coordinates
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_vars];
    for i in 0..net.n_rows {
        let (idx, val) = net.row(i);
        for (&j, &s) in idx.iter().zip(val) {
            rows[v.var_index[i]].push((v.var_index[j as usize] as u32, s));
        }
    }
    let mut indptr = vec![0u64];
    let mut indices = Vec::new();
    let mut data = Vec::new();
    for r in &mut rows {
        r.sort_by_key(|e| e.0);
        for &(j, s) in r.iter() {
            indices.push(j);
            data.push(s);
        }
        indptr.push(indices.len() as u64);
    }
    adata.varp.insert(
        "gene_similarity".into(),
        Element::Sparse(SparseMatrix {
            format: SparseFormat::Csr,
            shape: [n_vars, n_vars],
            data: ArrayData::F32(data),
            indices,
            indptr,
        }),
    );
    adata.obsm.insert(
        "X_gene_programs".into(),
        Element::Dense(DenseArray {
            shape: vec![n_obs, k],
            data: ArrayData::F32(scores),
        }),
    );
    let mut uns = Mapping::new();
    let mut pm = Mapping::new();
    for (pi, prog) in progs.programs.iter().enumerate() {
        pm.insert(
            pi.to_string(),
            Element::Strings(StringArray::from_vec(
                prog.iter().map(|&g| v.names[g].clone()).collect(),
            )),
        );
    }
    uns.insert("programs".into(), Element::Mapping(pm));
    let mut params = Mapping::new();
    params.insert(
        "resolution".into(),
        Element::scalar_f64(req.programs.resolution),
    );
    params.insert(
        "n_neighbors".into(),
        Element::scalar_i64(req.programs.n_neighbors as i64),
    );
    params.insert(
        "min_size".into(),
        Element::scalar_i64(req.programs.min_size as i64),
    );
    params.insert("seed".into(), Element::scalar_i64(req.programs.seed as i64));
    params.insert(
        "similarity_threshold".into(),
        Element::scalar_f64(f64::from(req.threshold)),
    );
    params.insert(
        "model".into(),
        Element::String(req.model_dir.display().to_string()),
    );
    params.insert("n_genes".into(), Element::scalar_i64(v.len() as i64));
    uns.insert("params".into(), Element::Mapping(params));
    if !similar.is_empty() {
        let mut sm = Mapping::new();
        for (q, list) in &similar {
            let mut df = DataFrame::with_index((0..list.len()).map(|i| i.to_string()).collect());
            df.set_column(
                "gene",
                Element::Strings(StringArray::from_vec(
                    list.iter().map(|e| e.0.clone()).collect(),
                )),
            );
            df.set_column(
                "similarity",
                Element::Dense(DenseArray {
                    shape: vec![list.len()],
                    data: ArrayData::F32(list.iter().map(|e| e.1).collect()),
                }),
            );
            sm.insert(q.clone(), Element::DataFrame(df));
        }
        uns.insert("similar".into(), Element::Mapping(sm));
    }
    adata
        .uns
        .insert("gene_programs".into(), Element::Mapping(uns));
    let mut attention_top = Vec::new();
    let mut attention_cells = 0;
    if let (Some((att, n_cells)), Some(a)) = (attention, &req.attention) {
        attention_cells = n_cells;
        let m = v.len();
        let mut pairs: Vec<(usize, usize, f64)> = (0..m)
            .flat_map(|i| (0..m).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| (i, j, att[i * m + j]))
            .collect();
        pairs.sort_by(|a, b| b.2.total_cmp(&a.2));
        attention_top = pairs
            .iter()
            .take(20)
            .map(|&(i, j, s)| (v.names[i].clone(), v.names[j].clone(), s))
            .collect();
        let mut am = Mapping::new();
        am.insert(
            "genes".into(),
            Element::Strings(StringArray::from_vec(v.names.clone())),
        );
        am.insert(
            "scores".into(),
            Element::Dense(DenseArray {
                shape: vec![m, m],
                data: ArrayData::F32(att.iter().map(|&x| x as f32).collect()),
            }),
        );
        am.insert("layer".into(), Element::scalar_i64(a.layer as i64));
        am.insert("n_cells".into(), Element::scalar_i64(n_cells as i64));
        if let Some((col, val)) = &a.group {
            am.insert("groupby".into(), Element::String(col.clone()));
            am.insert("group".into(), Element::String(val.clone()));
        }
        am.insert(
            "method".into(),
            Element::String(
                "raw q.k scores of the layer, rank-normalised by row then column, mean over \
                 heads and cells (row = query gene, column = key gene)"
                    .into(),
            ),
        );
        adata
            .uns
            .insert("gene_attention".into(), Element::Mapping(am));
    }
    let mut prov = Mapping::new();
    prov.insert(
        "model".into(),
        Element::String(req.model_dir.display().to_string()),
    );
    prov.insert("device".into(), Element::String(choice.to_string()));
    adata.record_provenance("gene_programs", prov);
    super::analyze::write_output(&adata, &req.output)?;
    Ok(GeneProgramsSummary {
        n_genes: v.len(),
        n_clusters: progs.n_clusters,
        programs: progs
            .programs
            .iter()
            .map(|p| p.iter().map(|&g| v.names[g].clone()).collect())
            .collect(),
        n_edges: net.nnz() / 2,
        similar,
        attention_top,
        attention_cells,
        seconds: start.elapsed().as_secs_f64(),
    })
}
