//! Batch-integration metrics as scGPT's `eval_scib_metrics` computes them with scib 1.1.7
//! (`scib.metrics.metrics(adata, adata, batch_key, label_key, embed=..., silhouette_=True,
//! graph_conn_=True, nmi_=True, ari_=True, ...)`).
//!
//! On an embedding (`n` cells x `d`), with cell-type `labels` and `batches`:
//!
//! - kNN graph: scanpy's `pp.neighbors(use_rep=embed)` defaults, `k = 15` euclidean, UMAP
//!   connectivities ([`knn::neighbors`]).
//! - `cluster_optimal_resolution`: Leiden on the connectivities at each resolution (scib
//!   1.1.7: `0.2, 0.4, …, 2.0`), keeping the clustering with the highest NMI against the labels
//!   (the first one on ties) ([`cluster_optimal_resolution`]).
//! - **NMI_cluster/label**, **ARI_cluster/label** of that clustering
//!   ([`metrics::normalized_mutual_info`], [`metrics::adjusted_rand_index`]).
//! - **ASW_label** `= (silhouette_score(embedding, labels) + 1) / 2` ([`asw_label`]).
//! - **ASW_label/batch** (scib `silhouette_batch`): for every label with at least 2 batches and
//!   fewer batches than cells, the silhouette of its cells w.r.t. batch, per cell `1 - |s|`,
//!   averaged per label, then over those labels; `None` if no label qualifies
//!   ([`asw_batch`]).
//! - **graph connectivity**: for every label, the largest connected component of the
//!   connectivities restricted to the label's cells divided by the label's cell count, averaged
//!   over labels ([`graph_connectivity`]).
//! - **AvgBIO** `= mean(NMI, ARI, ASW_label)`, **AvgBATCH** `= mean(ASW_label/batch, graph
//!   connectivity)` — the scGPT convention (`Tutorial_Integration`/zero-shot notebooks), not
//!   scib's 0.6/0.4 overall score.
//!
//! Differences to scib: our Leiden is a reimplementation (same quality function and
//! algorithm, different random numbers), so the chosen clustering and hence NMI/ARI can differ
//! slightly; scib's own ARI formula returns NaN where scikit-learn's returns 1 (single-cluster
//! edge case); scib crashes when every resolution scores NMI 0, here the first resolution is
//! kept; labels are the values present in `labels` (scib's graph connectivity iterates the
//! pandas categories and gives NaN for a category without cells).

use super::knn::{self, Metric};
use super::leiden::{LeidenOptions, leiden};
use super::metrics::{self, silhouette_samples, silhouette_score};
use super::{AnalysisError, CsrMatrix, DenseMatrix, Result, encode_labels};

/// scib's `get_resolutions(n, max)`: `max * (x + 1) / n` for `x in 0..n` (min 0).
pub fn scib_resolutions(n: usize, max: f64) -> Vec<f64> {
    (0..n).map(|x| max * (x as f64 + 1.0) / n as f64).collect()
}

/// Options of [`integration_metrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationOptions {
    /// Neighbours per cell including itself (scanpy default 15).
    pub n_neighbors: usize,
    /// Distance of the kNN graph (scanpy default euclidean).
    pub metric: Metric,
    /// Leiden resolutions to search; default scib 1.1.7's `0.2, 0.4, …, 2.0`
    /// (`scib_resolutions(10, 2.0)`; older scib `opt_louvain` used 20 values `0.1..=2.0`:
    /// `scib_resolutions(20, 2.0)`).
    pub resolutions: Vec<f64>,
    /// Leiden seed (scanpy's `random_state`, default 0).
    pub seed: u64,
    /// Leiden iterations (scanpy/leidenalg default -1: until stable).
    pub n_iterations: i32,
}

impl Default for IntegrationOptions {
    fn default() -> Self {
        Self {
            n_neighbors: 15,
            metric: Metric::Euclidean,
            resolutions: scib_resolutions(10, 2.0),
            seed: 0,
            n_iterations: -1,
        }
    }
}

/// NMI of the Leiden clustering at one resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResolutionScore {
    /// Leiden resolution.
    pub resolution: f64,
    /// NMI of its clustering against the labels.
    pub nmi: f64,
    /// Number of clusters.
    pub n_clusters: usize,
}

/// Result of [`cluster_optimal_resolution`].
#[derive(Debug, Clone, PartialEq)]
pub struct OptimalClustering {
    /// Resolution with the highest NMI (first on ties).
    pub resolution: f64,
    /// That NMI.
    pub nmi: f64,
    /// Its cluster labels (numbered by decreasing size).
    pub labels: Vec<u32>,
    /// Every resolution tried, in order.
    pub scores: Vec<ResolutionScore>,
}

/// All integration metrics (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationMetrics {
    /// NMI_cluster/label.
    pub nmi: f64,
    /// ARI_cluster/label.
    pub ari: f64,
    /// ASW_label, rescaled to `[0, 1]`.
    pub asw_label: f64,
    /// ASW_label/batch in `[0, 1]`; `None` when no label has cells from 2+ batches (scib: NaN).
    pub asw_batch: Option<f64>,
    /// Graph connectivity in `[0, 1]`.
    pub graph_connectivity: f64,
    /// mean(NMI, ARI, ASW_label).
    pub avg_bio: f64,
    /// mean(ASW_label/batch, graph connectivity); `None` when `asw_batch` is.
    pub avg_batch: Option<f64>,
    /// The clustering NMI/ARI were computed from.
    pub clustering: OptimalClustering,
}

fn check_len(what: &'static str, v: &[u32], n: usize) -> Result<()> {
    if v.len() != n {
        return Err(AnalysisError::LengthMismatch {
            what,
            expected: n,
            got: v.len(),
        });
    }
    Ok(())
}

/// scGPT's `eval_scib_metrics` on an embedding: builds the kNN graph
/// ([`knn::neighbors`] with `opts.n_neighbors`, `opts.metric`) and computes every metric.
pub fn integration_metrics(
    embedding: &DenseMatrix<'_>,
    labels: &[u32],
    batches: &[u32],
    opts: &IntegrationOptions,
) -> Result<IntegrationMetrics> {
    let n = embedding.n_rows();
    check_len("labels", labels, n)?;
    check_len("batches", batches, n)?;
    let graph = knn::neighbors(embedding, opts.n_neighbors, opts.metric)?;
    integration_metrics_with_graph(embedding, labels, batches, &graph.connectivities, opts)
}

/// Like [`integration_metrics`] but on a precomputed neighbour graph (e.g. scanpy's
/// `obsp["connectivities"]`); `opts.n_neighbors` and `opts.metric` are not used.
pub fn integration_metrics_with_graph<T: Copy + Into<f64>>(
    embedding: &DenseMatrix<'_>,
    labels: &[u32],
    batches: &[u32],
    connectivities: &CsrMatrix<T>,
    opts: &IntegrationOptions,
) -> Result<IntegrationMetrics> {
    let n = embedding.n_rows();
    check_len("labels", labels, n)?;
    check_len("batches", batches, n)?;
    if connectivities.n_rows != n {
        return Err(AnalysisError::LengthMismatch {
            what: "graph rows",
            expected: n,
            got: connectivities.n_rows,
        });
    }
    let clustering = cluster_optimal_resolution(
        connectivities,
        labels,
        &opts.resolutions,
        opts.seed,
        opts.n_iterations,
    )?;
    let nmi = metrics::normalized_mutual_info(&clustering.labels, labels)?;
    let ari = metrics::adjusted_rand_index(&clustering.labels, labels)?;
    let asw_label = asw_label(embedding, labels)?;
    let asw_batch = asw_batch(embedding, labels, batches)?;
    let graph_connectivity = graph_connectivity(connectivities, labels)?;
    let avg_bio = (nmi + ari + asw_label) / 3.0;
    let avg_batch = asw_batch.map(|a| (a + graph_connectivity) / 2.0);
    Ok(IntegrationMetrics {
        nmi,
        ari,
        asw_label,
        asw_batch,
        graph_connectivity,
        avg_bio,
        avg_batch,
        clustering,
    })
}

/// scib's `cluster_optimal_resolution` with Leiden and NMI: cluster `graph` at each
/// resolution (seed and iterations as given) and keep the clustering whose NMI against
/// `labels` is highest (strictly greater than all earlier ones; the first resolution if all
/// are 0).
pub fn cluster_optimal_resolution<T: Copy + Into<f64>>(
    graph: &CsrMatrix<T>,
    labels: &[u32],
    resolutions: &[f64],
    seed: u64,
    n_iterations: i32,
) -> Result<OptimalClustering> {
    check_len("labels", labels, graph.n_rows)?;
    if resolutions.is_empty() {
        return Err(AnalysisError::Empty("resolutions"));
    }
    let mut best: Option<OptimalClustering> = None;
    let mut scores = Vec::with_capacity(resolutions.len());
    for &resolution in resolutions {
        let res = leiden(
            graph,
            &LeidenOptions {
                resolution,
                seed,
                n_iterations,
            },
        )?;
        let nmi = metrics::normalized_mutual_info(&res.labels, labels)?;
        scores.push(ResolutionScore {
            resolution,
            nmi,
            n_clusters: res.n_clusters,
        });
        let better = match &best {
            None => true,
            Some(b) => b.nmi < nmi,
        };
        if better {
            best = Some(OptimalClustering {
                resolution,
                nmi,
                labels: res.labels,
                scores: Vec::new(),
            });
        }
    }
    let mut best = best.ok_or(AnalysisError::Empty("resolutions"))?;
    best.scores = scores;
    Ok(best)
}

/// Cell-type ASW: `(silhouette_score(embedding, labels) + 1) / 2` (scib `silhouette`,
/// euclidean, `scale=True`).
pub fn asw_label(embedding: &DenseMatrix<'_>, labels: &[u32]) -> Result<f64> {
    Ok((silhouette_score(embedding, labels)? + 1.0) / 2.0)
}

/// Batch ASW (scib `silhouette_batch`, euclidean, `scale=True`), see the module
/// documentation. `None` when no label has cells from 2 or more batches (and fewer batches
/// than cells).
pub fn asw_batch(
    embedding: &DenseMatrix<'_>,
    labels: &[u32],
    batches: &[u32],
) -> Result<Option<f64>> {
    let n = embedding.n_rows();
    check_len("labels", labels, n)?;
    check_len("batches", batches, n)?;
    let (classes, codes) = encode_labels(labels);
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); classes.len()];
    for (i, &c) in codes.iter().enumerate() {
        groups[c].push(i);
    }
    let d = embedding.n_cols();
    let mut label_means = Vec::new();
    for cells in &groups {
        let group_batches: Vec<u32> = cells.iter().map(|&i| batches[i]).collect();
        let mut distinct = group_batches.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() == 1 || distinct.len() == cells.len() {
            continue;
        }
        let mut sub = Vec::with_capacity(cells.len() * d);
        for &i in cells {
            sub.extend_from_slice(embedding.row(i));
        }
        let sub = DenseMatrix::new(&sub, cells.len(), d)?;
        let s = silhouette_samples(&sub, &group_batches)?;
        let mean = s.iter().map(|v| 1.0 - v.abs()).sum::<f64>() / s.len() as f64;
        label_means.push(mean);
    }
    if label_means.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        label_means.iter().sum::<f64>() / label_means.len() as f64,
    ))
}

/// scib's graph connectivity: mean over labels of |largest connected component of the
/// label's induced subgraph| / |label's cells|. Every stored entry of `graph` is an edge
/// (scipy's convention); the graph is taken as undirected.
pub fn graph_connectivity<T: Copy>(graph: &CsrMatrix<T>, labels: &[u32]) -> Result<f64> {
    graph.validate()?;
    let n = graph.n_rows;
    if graph.n_cols != n {
        return Err(AnalysisError::InvalidSparse(format!(
            "graph must be square, got {} x {}",
            n, graph.n_cols
        )));
    }
    check_len("labels", labels, n)?;
    if n == 0 {
        return Err(AnalysisError::Empty("graph has no nodes"));
    }
    let (classes, codes) = encode_labels(labels);
    // union-find over edges whose endpoints share a label
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for i in 0..n {
        let (idx, _) = graph.row(i);
        for &j in idx {
            let j = j as usize;
            if codes[i] == codes[j] {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                if a != b {
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    let mut comp_size = vec![0usize; n];
    for i in 0..n {
        let r = find(&mut parent, i);
        comp_size[r] += 1;
    }
    let mut largest = vec![0usize; classes.len()];
    let mut count = vec![0usize; classes.len()];
    for i in 0..n {
        count[codes[i]] += 1;
        if parent[i] == i {
            largest[codes[i]] = largest[codes[i]].max(comp_size[i]);
        }
    }
    let total: f64 = largest
        .iter()
        .zip(&count)
        .map(|(&l, &c)| l as f64 / c as f64)
        .sum();
    Ok(total / classes.len() as f64)
}
