//! scanpy-style analysis steps on an in-memory [`AnnData`]: `neighbors`, `umap`, `leiden`,
//! `pca` and `rank_genes_groups`, each reading its input where scanpy reads it and writing
//! its results under scanpy's keys, so a file processed here reads in scanpy as if scanpy had
//! done it:
//!
//! | step | reads | writes |
//! |---|---|---|
//! | neighbors | `obsm[use_rep]` (or `X_pca`, or X) | `obsp["distances"]`, `obsp["connectivities"]`, `uns["neighbors"]` |
//! | umap | the neighbors graph | `obsm["X_umap"]`, `uns["umap"]` |
//! | leiden | the neighbors graph | `obs["leiden"]`, `uns["leiden"]` |
//! | pca | X, a layer or `raw` | `obsm["X_pca"]`, `varm["PCs"]`, `uns["pca"]` |
//! | rank_genes_groups | X/layer/raw and an obs grouping | `uns["rank_genes_groups"]` |
//!
//! Each step also records what it did under `uns["cellforge"]`. The functions never touch
//! the disk; [`process_file`] reads an input file, applies steps and writes a new file
//! atomically (never the input).

use std::path::Path;
use std::time::Instant;

use crate::analysis::knn::{self, Knn, Metric};
use crate::analysis::leiden::{LeidenOptions, leiden as run_leiden_graph};
use crate::analysis::{AnalysisError, CsrMatrix, DenseMatrix};
use crate::anndata::{
    AnnData, ArrayData, Categorical, Element, Mapping, SparseFormat, SparseMatrix, StringArray,
};
use crate::io::{H5adError, WriteOptions, read_h5ad_with_warnings, write_h5ad};

/// Errors of the analysis steps.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The data does not have what the step needs (message says what and what to do).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Forward(#[from] crate::model::net::ForwardError),
    #[error("device: {0}")]
    Device(String),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: H5adError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: H5adError,
    },
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, ToolError>;

pub(crate) fn input(msg: impl Into<String>) -> ToolError {
    ToolError::Input(msg.into())
}

/// A cells x features matrix taken from the AnnData, as dense row-major `f32`.
#[derive(Debug, Clone)]
pub struct Representation {
    pub data: Vec<f32>,
    pub n_rows: usize,
    pub n_cols: usize,
    /// Where it came from (`"X_pca"`, `"X"`, ...), for provenance.
    pub name: String,
}

impl Representation {
    pub fn matrix(&self) -> Result<DenseMatrix<'_>> {
        DenseMatrix::new(&self.data, self.n_rows, self.n_cols).map_err(|e| match e {
            AnalysisError::NonFinite { row, col, value } => input(format!(
                "{} has a non-finite value ({value}) at cell {row}, column {col}",
                self.name
            )),
            other => other.into(),
        })
    }
}

/// Dense `f32` values of a 2-D element (dense or sparse), or an error naming `what`.
pub fn element_to_dense(e: &Element, what: &str) -> Result<(Vec<f32>, usize, usize)> {
    match e {
        Element::Dense(a) => {
            if a.shape.len() != 2 {
                return Err(input(format!(
                    "{what} is a {}-dimensional array, expected cells x features",
                    a.shape.len()
                )));
            }
            if matches!(a.data, ArrayData::Bool(_)) {
                return Err(input(format!("{what} holds booleans, not numbers")));
            }
            Ok((a.data.to_f32_vec(), a.shape[0], a.shape[1]))
        }
        Element::Sparse(s) => {
            s.check_structure()
                .map_err(|m| input(format!("{what} is a malformed sparse matrix: {m}")))?;
            let d = s.to_dense();
            Ok((d.data.to_f32_vec(), s.shape[0], s.shape[1]))
        }
        other => Err(input(format!(
            "{what} is a {}, not a matrix",
            other.encoding_type()
        ))),
    }
}

/// The representation scanpy's `neighbors` would use: `obsm[use_rep]` when given (`"X"`
/// means X itself), otherwise `X_pca` when present, otherwise X when it has at most 50
/// columns. `n_pcs` keeps the first columns.
pub fn representation(
    adata: &AnnData,
    use_rep: Option<&str>,
    n_pcs: Option<usize>,
) -> Result<Representation> {
    let (name, (data, n, d)) = match use_rep {
        Some("X") => (
            "X".to_string(),
            element_to_dense(
                adata.x.as_ref().ok_or_else(|| input("the file has no X"))?,
                "X",
            )?,
        ),
        Some(key) => {
            let e = adata.obsm.get(key).ok_or_else(|| {
                let keys: Vec<&str> = adata.obsm.keys().map(String::as_str).collect();
                input(format!(
                    "obsm has no \"{key}\" (it has: {}); run `cellforge embed` or `cellforge \
                     pca` first, or pick another --use-rep",
                    if keys.is_empty() {
                        "nothing".into()
                    } else {
                        keys.join(", ")
                    }
                ))
            })?;
            (
                key.to_string(),
                element_to_dense(e, &format!("obsm[\"{key}\"]"))?,
            )
        }
        None => {
            if let Some(e) = adata.obsm.get("X_pca") {
                ("X_pca".to_string(), element_to_dense(e, "obsm[\"X_pca\"]")?)
            } else {
                let x = adata.x.as_ref().ok_or_else(|| input("the file has no X"))?;
                if adata.n_vars() > 50 {
                    return Err(input(format!(
                        "no obsm[\"X_pca\"] and X has {} genes: run `cellforge pca` first or \
                         choose a representation with --use-rep (e.g. X_scGPT)",
                        adata.n_vars()
                    )));
                }
                ("X".to_string(), element_to_dense(x, "X")?)
            }
        }
    };
    if n != adata.n_obs() {
        return Err(input(format!(
            "{name} has {n} rows but the file has {} cells",
            adata.n_obs()
        )));
    }
    let (data, d, name) = match n_pcs {
        Some(p) if p == 0 || p > d => {
            return Err(input(format!("n_pcs = {p} but {name} has {d} columns")));
        }
        Some(p) if p < d => {
            let mut out = Vec::with_capacity(n * p);
            for r in 0..n {
                out.extend_from_slice(&data[r * d..r * d + p]);
            }
            (out, p, format!("{name}[:, :{p}]"))
        }
        _ => (data, d, name),
    };
    Ok(Representation {
        data,
        n_rows: n,
        n_cols: d,
        name,
    })
}

/// How neighbours are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KnnMethod {
    /// Exact below scanpy's size thresholds, approximate above.
    #[default]
    Auto,
    /// Brute force (all pairs).
    Exact,
    /// NN-descent.
    Approximate,
}

impl std::str::FromStr for KnnMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "exact" | "brute" => Ok(Self::Exact),
            "approx" | "approximate" | "nndescent" => Ok(Self::Approximate),
            _ => Err(format!("unknown kNN method \"{s}\" (auto, exact, approx)")),
        }
    }
}

/// Parses `euclidean` / `cosine`.
pub fn parse_metric(s: &str) -> std::result::Result<Metric, String> {
    match s {
        "euclidean" => Ok(Metric::Euclidean),
        "cosine" => Ok(Metric::Cosine),
        _ => Err(format!("unknown metric \"{s}\" (euclidean, cosine)")),
    }
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Euclidean => "euclidean",
        Metric::Cosine => "cosine",
    }
}

/// Parameters of [`neighbors`] (scanpy's `sc.pp.neighbors`).
#[derive(Debug, Clone)]
pub struct NeighborsParams {
    pub n_neighbors: usize,
    pub metric: Metric,
    pub use_rep: Option<String>,
    pub n_pcs: Option<usize>,
    pub method: KnnMethod,
    pub seed: u64,
    /// `None`: `uns["neighbors"]`, `obsp["connectivities"]`, `obsp["distances"]`; otherwise
    /// `uns[key]`, `obsp[key + "_connectivities"]`, `obsp[key + "_distances"]`.
    pub key_added: Option<String>,
}

impl Default for NeighborsParams {
    fn default() -> Self {
        Self {
            n_neighbors: 15,
            metric: Metric::Euclidean,
            use_rep: None,
            n_pcs: None,
            method: KnnMethod::Auto,
            seed: 0,
            key_added: None,
        }
    }
}

/// What [`neighbors`] did.
#[derive(Debug, Clone)]
pub struct NeighborsSummary {
    pub representation: String,
    pub n_cells: usize,
    pub n_dims: usize,
    pub exact: bool,
    pub seconds: f64,
}

use crate::analysis::nndescent::{
    EXACT_THRESHOLD_EUCLIDEAN as EXACT_LIMIT_EUCLIDEAN, EXACT_THRESHOLD_OTHER as EXACT_LIMIT_OTHER,
};

fn knn_of(x: &DenseMatrix<'_>, p: &NeighborsParams) -> Result<(Knn, bool)> {
    let n = x.n_rows();
    if p.n_neighbors < 2 || p.n_neighbors > n {
        return Err(input(format!(
            "n_neighbors = {} needs 2 <= n_neighbors <= number of cells ({n})",
            p.n_neighbors
        )));
    }
    let limit = match p.metric {
        Metric::Euclidean => EXACT_LIMIT_EUCLIDEAN,
        Metric::Cosine => EXACT_LIMIT_OTHER,
    };
    let exact = match p.method {
        KnnMethod::Exact => true,
        KnnMethod::Approximate => false,
        KnnMethod::Auto => n < limit,
    };
    if exact {
        return Ok((knn::knn(x, p.n_neighbors, p.metric)?, true));
    }
    approximate_knn(x, p).map(|k| (k, false))
}

fn approximate_knn(x: &DenseMatrix<'_>, p: &NeighborsParams) -> Result<Knn> {
    use crate::analysis::nndescent::{NnDescentOptions, approx_knn};
    Ok(approx_knn(
        x,
        p.n_neighbors,
        p.metric,
        &NnDescentOptions {
            seed: p.seed,
            ..NnDescentOptions::default()
        },
    )?)
}

fn keys(key_added: Option<&str>) -> (String, String, String) {
    match key_added {
        None => (
            "neighbors".into(),
            "connectivities".into(),
            "distances".into(),
        ),
        Some(k) => (
            k.to_string(),
            format!("{k}_connectivities"),
            format!("{k}_distances"),
        ),
    }
}

fn csr_element(m: &CsrMatrix<f32>) -> Element {
    Element::Sparse(SparseMatrix {
        format: SparseFormat::Csr,
        shape: [m.n_rows, m.n_cols],
        data: ArrayData::F32(m.data.clone()),
        indices: m.indices.clone(),
        indptr: m.indptr.iter().map(|&p| p as u64).collect(),
    })
}

/// An `obsp` graph as [`CsrMatrix`] (CSC and dense are converted; rows sorted).
pub fn graph_from_element(e: &Element, what: &str) -> Result<CsrMatrix<f32>> {
    let s = match e {
        Element::Sparse(s) => s.clone(),
        Element::Dense(d) => SparseMatrix::from_dense(d, SparseFormat::Csr)
            .ok_or_else(|| input(format!("{what} is not a 2-D matrix")))?,
        other => {
            return Err(input(format!(
                "{what} is a {}, not a graph",
                other.encoding_type()
            )));
        }
    };
    s.check_structure()
        .map_err(|m| input(format!("{what} is a malformed sparse matrix: {m}")))?;
    let g = canonical_csr(&s)?;
    if let Some(i) = g.data.iter().position(|v| !v.is_finite()) {
        let row = g.indptr.partition_point(|&p| p <= i).saturating_sub(1);
        return Err(input(format!(
            "{what} has a non-finite weight at row {row}"
        )));
    }
    Ok(g)
}

/// A structurally checked sparse matrix as [`CsrMatrix`] `f32`: CSC converted, each row's
/// columns sorted, duplicate entries summed (as scipy does).
pub fn canonical_csr(s: &SparseMatrix) -> Result<CsrMatrix<f32>> {
    let csr = s.to_format(SparseFormat::Csr);
    let [n, d] = csr.shape;
    let values = csr.data.to_f32_vec();
    let mut indptr = Vec::with_capacity(n + 1);
    let mut indices = Vec::with_capacity(csr.indices.len());
    let mut data = Vec::with_capacity(values.len());
    indptr.push(0usize);
    let mut row: Vec<(u32, f32)> = Vec::new();
    for i in 0..n {
        let (a, b) = (csr.indptr[i] as usize, csr.indptr[i + 1] as usize);
        row.clear();
        row.extend(
            csr.indices[a..b]
                .iter()
                .copied()
                .zip(values[a..b].iter().copied()),
        );
        row.sort_unstable_by_key(|e| e.0);
        for (t, &(j, v)) in row.iter().enumerate() {
            if t > 0 && row[t - 1].0 == j {
                if let Some(last) = data.last_mut() {
                    *last += v;
                }
                continue;
            }
            indices.push(j);
            data.push(v);
        }
        indptr.push(indices.len());
    }
    Ok(CsrMatrix::new(n, d, indptr, indices, data)?)
}

/// `sc.pp.neighbors`: the kNN graph, scanpy's `distances` and UMAP `connectivities`.
pub fn neighbors(adata: &mut AnnData, p: &NeighborsParams) -> Result<NeighborsSummary> {
    let start = Instant::now();
    let rep = representation(adata, p.use_rep.as_deref(), p.n_pcs)?;
    let x = rep.matrix()?;
    let (knn, exact) = knn_of(&x, p)?;
    let conn = knn::umap_connectivities(&knn)?;
    let dist = knn::knn_distance_matrix(&knn)?;
    let (uns_key, conn_key, dist_key) = keys(p.key_added.as_deref());
    adata.obsp.insert(conn_key.clone(), csr_element(&conn));
    adata.obsp.insert(dist_key.clone(), csr_element(&dist));
    let mut params = Mapping::new();
    params.insert(
        "n_neighbors".into(),
        Element::scalar_i64(p.n_neighbors as i64),
    );
    params.insert("method".into(), Element::String("umap".into()));
    params.insert("random_state".into(), Element::scalar_i64(p.seed as i64));
    params.insert(
        "metric".into(),
        Element::String(metric_name(p.metric).into()),
    );
    if let Some(r) = &p.use_rep {
        params.insert("use_rep".into(), Element::String(r.clone()));
    }
    if let Some(n) = p.n_pcs {
        params.insert("n_pcs".into(), Element::scalar_i64(n as i64));
    }
    let mut uns = Mapping::new();
    uns.insert("connectivities_key".into(), Element::String(conn_key));
    uns.insert("distances_key".into(), Element::String(dist_key));
    uns.insert("params".into(), Element::Mapping(params));
    adata.uns.insert(uns_key.clone(), Element::Mapping(uns));
    let mut prov = Mapping::new();
    prov.insert("representation".into(), Element::String(rep.name.clone()));
    prov.insert(
        "knn".into(),
        Element::String(if exact { "exact" } else { "nn-descent" }.into()),
    );
    prov.insert(
        "n_neighbors".into(),
        Element::scalar_i64(p.n_neighbors as i64),
    );
    prov.insert(
        "metric".into(),
        Element::String(metric_name(p.metric).into()),
    );
    adata.record_provenance(&uns_key, prov);
    Ok(NeighborsSummary {
        representation: rep.name,
        n_cells: rep.n_rows,
        n_dims: rep.n_cols,
        exact,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Builds the neighbors graph with `p` unless `uns[p.key_added or "neighbors"]` already
/// holds one; returns what was built.
pub fn ensure_neighbors(
    adata: &mut AnnData,
    p: &NeighborsParams,
) -> Result<Option<NeighborsSummary>> {
    if adata
        .uns
        .contains_key(p.key_added.as_deref().unwrap_or("neighbors"))
    {
        return Ok(None);
    }
    neighbors(adata, p).map(Some)
}

/// The connectivities of a neighbors result (`uns[neighbors_key]`, default `"neighbors"`).
pub fn connectivities(adata: &AnnData, neighbors_key: Option<&str>) -> Result<CsrMatrix<f32>> {
    let key = neighbors_key.unwrap_or("neighbors");
    let conn_key = match adata.uns.get(key) {
        Some(Element::Mapping(m)) => match m.get("connectivities_key") {
            Some(Element::String(s)) => s.clone(),
            _ => keys(neighbors_key).1,
        },
        _ => {
            return Err(input(format!(
                "no neighbors graph (uns[\"{key}\"]): run `cellforge neighbors` first"
            )));
        }
    };
    let e = adata.obsp.get(&conn_key).ok_or_else(|| {
        input(format!(
            "uns[\"{key}\"] names obsp[\"{conn_key}\"], which is missing; run `cellforge \
             neighbors` again"
        ))
    })?;
    let g = graph_from_element(e, &format!("obsp[\"{conn_key}\"]"))?;
    if g.n_rows != adata.n_obs() || g.n_cols != adata.n_obs() {
        return Err(input(format!(
            "obsp[\"{conn_key}\"] is {} x {} but the file has {} cells",
            g.n_rows,
            g.n_cols,
            adata.n_obs()
        )));
    }
    Ok(g)
}

/// Parameters of [`leiden`] (`sc.tl.leiden` with the leidenalg flavour).
#[derive(Debug, Clone)]
pub struct LeidenParams {
    pub resolution: f64,
    pub seed: u64,
    /// `-1`: until no move improves the partition.
    pub n_iterations: i32,
    pub neighbors_key: Option<String>,
    pub key_added: String,
}

impl Default for LeidenParams {
    fn default() -> Self {
        Self {
            resolution: 1.0,
            seed: 0,
            n_iterations: -1,
            neighbors_key: None,
            key_added: "leiden".into(),
        }
    }
}

/// What [`leiden`] did.
#[derive(Debug, Clone)]
pub struct LeidenSummary {
    pub n_clusters: usize,
    pub quality: f64,
    pub sizes: Vec<usize>,
    pub seconds: f64,
}

/// Cluster labels `0..k` as scanpy stores them: a categorical of the strings "0", "1", ...
/// with categories in numeric order.
pub fn cluster_categorical(labels: &[u32], n_clusters: usize) -> Categorical {
    Categorical {
        codes: labels.iter().map(|&l| l as i32).collect(),
        categories: Box::new(Element::Strings(StringArray::from_vec(
            (0..n_clusters).map(|c| c.to_string()).collect(),
        ))),
        ordered: false,
    }
}

/// `sc.tl.leiden`: clusters numbered by decreasing size into `obs[key_added]`.
pub fn leiden(adata: &mut AnnData, p: &LeidenParams) -> Result<LeidenSummary> {
    let start = Instant::now();
    if !(p.resolution.is_finite() && p.resolution > 0.0) {
        return Err(input(format!(
            "resolution must be a positive number, got {}",
            p.resolution
        )));
    }
    let g = connectivities(adata, p.neighbors_key.as_deref())?;
    let r = run_leiden_graph(
        &g,
        &LeidenOptions {
            resolution: p.resolution,
            seed: p.seed,
            n_iterations: p.n_iterations,
        },
    )?;
    adata.obs.set_column(
        &p.key_added,
        Element::Categorical(cluster_categorical(&r.labels, r.n_clusters)),
    );
    let mut params = Mapping::new();
    params.insert("resolution".into(), Element::scalar_f64(p.resolution));
    params.insert("random_state".into(), Element::scalar_i64(p.seed as i64));
    params.insert(
        "n_iterations".into(),
        Element::scalar_i64(i64::from(p.n_iterations)),
    );
    let mut uns = Mapping::new();
    uns.insert("params".into(), Element::Mapping(params));
    adata.uns.insert(p.key_added.clone(), Element::Mapping(uns));
    let mut prov = Mapping::new();
    prov.insert(
        "method".into(),
        Element::String("Leiden, RB-configuration quality (leidenalg's default)".into()),
    );
    prov.insert("resolution".into(), Element::scalar_f64(p.resolution));
    prov.insert("seed".into(), Element::scalar_i64(p.seed as i64));
    prov.insert("quality".into(), Element::scalar_f64(r.quality));
    prov.insert(
        "neighbors_key".into(),
        Element::String(
            p.neighbors_key
                .clone()
                .unwrap_or_else(|| "neighbors".into()),
        ),
    );
    adata.record_provenance(&p.key_added, prov);
    let mut sizes = vec![0usize; r.n_clusters];
    for &l in &r.labels {
        sizes[l as usize] += 1;
    }
    Ok(LeidenSummary {
        n_clusters: r.n_clusters,
        quality: r.quality,
        sizes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Reads `input`, applies `steps` to it and writes the result to `output` atomically. The
/// input file is only read (an output naming the input is refused).
pub fn process_file<T>(
    input_path: &Path,
    output: &Path,
    steps: impl FnOnce(&mut AnnData) -> Result<T>,
) -> Result<T> {
    let mut adata = read_input(input_path, output)?;
    let out = steps(&mut adata)?;
    write_output(&adata, output)?;
    Ok(out)
}

/// Reads `input_path` for a step that will write `output`, refusing an output that names
/// the input.
pub fn read_input(input_path: &Path, output: &Path) -> Result<AnnData> {
    if crate::io::same_file(input_path, output) {
        return Err(input(format!(
            "the output {} is the input file; cellforge never overwrites its input",
            output.display()
        )));
    }
    let (adata, _) = read_h5ad_with_warnings(input_path).map_err(|source| ToolError::Read {
        path: input_path.display().to_string(),
        source,
    })?;
    Ok(adata)
}

/// Writes a step's result atomically (temporary file, then rename).
pub fn write_output(adata: &AnnData, output: &Path) -> Result<()> {
    write_h5ad(adata, output, &WriteOptions::default()).map_err(|source| ToolError::Write {
        path: output.display().to_string(),
        source,
    })
}

/// An expression matrix taken from the AnnData, sparse (CSR) or dense, `f32`.
#[derive(Debug, Clone)]
pub enum OwnedExpr {
    Dense {
        data: Vec<f32>,
        n_rows: usize,
        n_cols: usize,
    },
    Sparse(CsrMatrix<f32>),
}

impl OwnedExpr {
    /// The borrowed view the analysis functions take.
    pub fn view(&self) -> Result<crate::analysis::expr::Expr<'_>> {
        use crate::analysis::expr::Expr;
        Ok(match self {
            Self::Dense {
                data,
                n_rows,
                n_cols,
            } => Expr::Dense(DenseMatrix::new(data, *n_rows, *n_cols)?),
            Self::Sparse(m) => Expr::Sparse(m),
        })
    }

    pub fn n_cols(&self) -> usize {
        match self {
            Self::Dense { n_cols, .. } => *n_cols,
            Self::Sparse(m) => m.n_cols,
        }
    }

    /// Keeps the columns where `keep` is true.
    pub fn select_columns(&self, keep: &[bool]) -> Self {
        let map: Vec<Option<u32>> = {
            let mut next = 0u32;
            keep.iter()
                .map(|&k| {
                    k.then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect()
        };
        let n_keep = keep.iter().filter(|&&k| k).count();
        match self {
            Self::Dense {
                data,
                n_rows,
                n_cols,
            } => {
                let mut out = Vec::with_capacity(n_rows * n_keep);
                for r in 0..*n_rows {
                    let row = &data[r * n_cols..(r + 1) * n_cols];
                    out.extend(row.iter().zip(keep).filter(|(_, k)| **k).map(|(v, _)| *v));
                }
                Self::Dense {
                    data: out,
                    n_rows: *n_rows,
                    n_cols: n_keep,
                }
            }
            Self::Sparse(m) => {
                let mut indptr = vec![0usize];
                let mut indices = Vec::new();
                let mut data = Vec::new();
                for i in 0..m.n_rows {
                    let (idx, val) = m.row(i);
                    for (&j, &v) in idx.iter().zip(val) {
                        if let Some(Some(nj)) = map.get(j as usize) {
                            indices.push(*nj);
                            data.push(v);
                        }
                    }
                    indptr.push(indices.len());
                }
                Self::Sparse(CsrMatrix {
                    n_rows: m.n_rows,
                    n_cols: n_keep,
                    indptr,
                    indices,
                    data,
                })
            }
        }
    }
}

/// X (`layer = None`), `layers[layer]` or `raw` (`layer = Some("raw")`, with raw's genes)
/// as an expression matrix, plus the gene names of its columns.
pub fn expression(adata: &AnnData, layer: Option<&str>) -> Result<(OwnedExpr, Vec<String>)> {
    let (e, what, genes) = match layer {
        None => (
            adata.x.as_ref().ok_or_else(|| input("the file has no X"))?,
            "X".to_string(),
            adata.var.index.clone(),
        ),
        Some("raw") => {
            let raw = adata
                .raw
                .as_ref()
                .ok_or_else(|| input("the file has no raw"))?;
            (&raw.x, "raw/X".to_string(), raw.var.index.clone())
        }
        Some(l) => (
            adata.layers.get(l).ok_or_else(|| {
                let keys: Vec<&str> = adata.layers.keys().map(String::as_str).collect();
                input(format!(
                    "there is no layer \"{l}\" (layers: {})",
                    if keys.is_empty() {
                        "none".into()
                    } else {
                        keys.join(", ")
                    }
                ))
            })?,
            format!("layers[\"{l}\"]"),
            adata.var.index.clone(),
        ),
    };
    let m = match e {
        Element::Sparse(s) => {
            s.check_structure()
                .map_err(|m| input(format!("{what} is a malformed sparse matrix: {m}")))?;
            OwnedExpr::Sparse(canonical_csr(s)?)
        }
        other => {
            let (data, n_rows, n_cols) = element_to_dense(other, &what)?;
            OwnedExpr::Dense {
                data,
                n_rows,
                n_cols,
            }
        }
    };
    if m.n_cols() != genes.len() {
        return Err(input(format!(
            "{what} has {} columns for {} genes",
            m.n_cols(),
            genes.len()
        )));
    }
    let mx = m.view()?;
    mx.validate().map_err(|e| match e {
        AnalysisError::NonFinite { row, col, value } => input(format!(
            "{what} has a non-finite value ({value}) at cell {row}, gene {}",
            genes.get(col).cloned().unwrap_or_default()
        )),
        other => other.into(),
    })?;
    Ok((m, genes))
}

/// A boolean var column (e.g. `highly_variable`), if present.
pub fn bool_var_column(adata: &AnnData, name: &str) -> Result<Option<Vec<bool>>> {
    match adata.var.column(name) {
        None => Ok(None),
        Some(Element::Dense(d)) => match &d.data {
            ArrayData::Bool(b) => Ok(Some(b.clone())),
            other => Ok(Some(other.to_f64_vec().iter().map(|&v| v != 0.0).collect())),
        },
        Some(Element::NullableBoolean { values, mask }) => Ok(Some(
            values.iter().zip(mask).map(|(&v, &m)| v && !m).collect(),
        )),
        Some(other) => Err(input(format!(
            "var[\"{name}\"] is a {}, not a boolean column",
            other.encoding_type()
        ))),
    }
}

/// Parameters of [`pca`] (`sc.pp.pca`).
#[derive(Debug, Clone)]
pub struct PcaParams {
    pub n_comps: usize,
    pub layer: Option<String>,
    /// Restrict to `var[mask_var]` genes; `None`: `highly_variable` when present (scanpy's
    /// default), `Some("")`: all genes.
    pub mask_var: Option<String>,
    pub zero_center: bool,
    /// `None`: exact below [`PCA_EXACT_GENES`] genes, randomised (tight settings) above.
    pub solver: Option<crate::analysis::pca::PcaSolver>,
    pub seed: u64,
    pub key_added: String,
}

impl Default for PcaParams {
    fn default() -> Self {
        Self {
            n_comps: 50,
            layer: None,
            mask_var: None,
            zero_center: true,
            solver: None,
            seed: 0,
            key_added: "X_pca".into(),
        }
    }
}

/// Up to this many genes [`pca`] solves exactly by default.
pub const PCA_EXACT_GENES: usize = 4000;

/// What [`pca`] did.
#[derive(Debug, Clone)]
pub struct PcaSummary {
    pub n_genes: usize,
    pub n_comps: usize,
    pub solver: String,
    pub variance_ratio: Vec<f64>,
    pub seconds: f64,
}

/// `sc.pp.pca`: `obsm["X_pca"]`, `varm["PCs"]` (zero rows for genes outside the mask),
/// `uns["pca"]` with `variance` and `variance_ratio`.
pub fn pca(adata: &mut AnnData, p: &PcaParams) -> Result<PcaSummary> {
    use crate::analysis::pca::{PcaOptions, PcaSolver, pca as run_pca};
    let start = Instant::now();
    if p.layer.as_deref() == Some("raw") {
        return Err(input(
            "PCA writes varm for X's genes; use X or a layer, not raw",
        ));
    }
    let (x, genes) = expression(adata, p.layer.as_deref())?;
    let (mask_name, mask) =
        match p.mask_var.as_deref() {
            Some("") => (None, None),
            Some(name) => (
                Some(name.to_string()),
                Some(bool_var_column(adata, name)?.ok_or_else(|| {
                    input(format!("var has no column \"{name}\" to select genes"))
                })?),
            ),
            None => match bool_var_column(adata, "highly_variable")? {
                Some(m) => (Some("highly_variable".to_string()), Some(m)),
                None => (None, None),
            },
        };
    let x = match &mask {
        Some(m) => {
            if m.iter().filter(|&&k| k).count() < 2 {
                return Err(input(format!(
                    "var[\"{}\"] selects fewer than 2 genes",
                    mask_name.clone().unwrap_or_default()
                )));
            }
            x.select_columns(m)
        }
        None => x,
    };
    let d = x.n_cols();
    let solver = p.solver.unwrap_or(if d <= PCA_EXACT_GENES {
        PcaSolver::Exact
    } else {
        PcaSolver::Randomized
    });
    let opts = PcaOptions {
        n_comps: p.n_comps,
        zero_center: p.zero_center,
        solver,
        // tight randomised settings: explained variance within 1e-4 of the exact solution
        // on the reference datasets (the scikit-learn defaults drift on the last components)
        n_oversamples: if solver == PcaSolver::Randomized {
            p.n_comps.max(50)
        } else {
            10
        },
        n_power_iter: (solver == PcaSolver::Randomized).then_some(12),
        seed: p.seed,
    };
    let r = run_pca(x.view()?, &opts)?;
    let n = adata.n_obs();
    let k = r.n_comps;
    adata.obsm.insert(
        p.key_added.clone(),
        Element::Dense(crate::anndata::DenseArray {
            shape: vec![n, k],
            data: ArrayData::F32(r.scores.clone()),
        }),
    );
    // PCs: n_vars x k, zeros outside the mask
    let n_vars = genes.len();
    let mut pcs = vec![0f32; n_vars * k];
    let cols: Vec<usize> = match &mask {
        Some(m) => (0..n_vars).filter(|&g| m[g]).collect(),
        None => (0..n_vars).collect(),
    };
    for c in 0..k {
        for (j, &g) in cols.iter().enumerate() {
            pcs[g * k + c] = r.components[c * d + j];
        }
    }
    let pcs_key = if p.key_added == "X_pca" {
        "PCs".to_string()
    } else {
        format!("{}_PCs", p.key_added)
    };
    adata.varm.insert(
        pcs_key,
        Element::Dense(crate::anndata::DenseArray {
            shape: vec![n_vars, k],
            data: ArrayData::F32(pcs),
        }),
    );
    let f64s = |v: &[f64]| {
        Element::Dense(crate::anndata::DenseArray {
            shape: vec![v.len()],
            data: ArrayData::F64(v.to_vec()),
        })
    };
    let mut params = Mapping::new();
    params.insert(
        "zero_center".into(),
        Element::Dense(crate::anndata::DenseArray::scalar(ArrayData::Bool(vec![
            p.zero_center,
        ]))),
    );
    params.insert(
        "use_highly_variable".into(),
        Element::Dense(crate::anndata::DenseArray::scalar(ArrayData::Bool(vec![
            mask_name.as_deref() == Some("highly_variable"),
        ]))),
    );
    if let Some(mn) = &mask_name {
        params.insert("mask_var".into(), Element::String(mn.clone()));
    }
    let mut uns = Mapping::new();
    uns.insert("params".into(), Element::Mapping(params));
    uns.insert("variance".into(), f64s(&r.variance));
    uns.insert("variance_ratio".into(), f64s(&r.variance_ratio));
    let uns_key = if p.key_added == "X_pca" {
        "pca".to_string()
    } else {
        p.key_added.clone()
    };
    adata.uns.insert(uns_key.clone(), Element::Mapping(uns));
    let solver_name = match solver {
        PcaSolver::Exact => "exact (gene-gene covariance eigendecomposition)",
        PcaSolver::Randomized => "randomised SVD",
    };
    let mut prov = Mapping::new();
    prov.insert("solver".into(), Element::String(solver_name.into()));
    prov.insert("n_comps".into(), Element::scalar_i64(k as i64));
    prov.insert(
        "input".into(),
        Element::String(p.layer.clone().unwrap_or_else(|| "X".into())),
    );
    prov.insert("seed".into(), Element::scalar_i64(p.seed as i64));
    adata.record_provenance(&uns_key, prov);
    Ok(PcaSummary {
        n_genes: d,
        n_comps: k,
        solver: solver_name.into(),
        variance_ratio: r.variance_ratio,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Parameters of [`rank_genes_groups`] (`sc.tl.rank_genes_groups`).
#[derive(Debug, Clone)]
pub struct DeParams {
    pub groupby: String,
    /// Groups to test (`None`: all); each against the rest or `reference`.
    pub groups: Option<Vec<String>>,
    pub reference: Option<String>,
    pub method: crate::analysis::de::DeMethod,
    pub layer: Option<String>,
    /// Use `raw` when the file has it and no layer is named (scanpy's `use_raw` default).
    pub use_raw: bool,
    pub tie_correct: bool,
    pub pts: bool,
    pub key_added: String,
    /// Genes reported per group.
    pub n_genes: usize,
}

impl Default for DeParams {
    fn default() -> Self {
        Self {
            groupby: String::new(),
            groups: None,
            reference: None,
            method: crate::analysis::de::DeMethod::Wilcoxon,
            layer: None,
            use_raw: true,
            tie_correct: false,
            pts: false,
            key_added: "rank_genes_groups".into(),
            n_genes: 100,
        }
    }
}

/// What [`rank_genes_groups`] did: the top genes of each tested group.
#[derive(Debug, Clone)]
pub struct DeSummary {
    pub input: String,
    pub top: Vec<(String, Vec<String>)>,
    pub seconds: f64,
}

fn method_name(m: crate::analysis::de::DeMethod) -> &'static str {
    use crate::analysis::de::DeMethod;
    match m {
        DeMethod::Wilcoxon => "wilcoxon",
        DeMethod::TTest => "t-test",
        DeMethod::TTestOverestimVar => "t-test_overestim_var",
    }
}

/// Parses scanpy's method names.
pub fn parse_de_method(s: &str) -> std::result::Result<crate::analysis::de::DeMethod, String> {
    use crate::analysis::de::DeMethod;
    match s {
        "wilcoxon" => Ok(DeMethod::Wilcoxon),
        "t-test" | "ttest" => Ok(DeMethod::TTest),
        "t-test_overestim_var" => Ok(DeMethod::TTestOverestimVar),
        _ => Err(format!(
            "unknown method \"{s}\" (wilcoxon, t-test, t-test_overestim_var)"
        )),
    }
}

/// HDF5 names cannot hold `/` (scanpy keeps groups as rec-array fields, which can): a group
/// name is stored with each `/` replaced by `∕` (U+2215, DIVISION SLASH), an empty one as `_`.
pub fn storable_key(name: &str) -> String {
    if name.is_empty() {
        "_".into()
    } else {
        name.replace('/', "\u{2215}")
    }
}

/// `sc.tl.rank_genes_groups`: per tested group, the `n_genes` best genes with scores, log
/// fold changes, p-values and adjusted p-values in `uns[key_added]` (each field a mapping of
/// group -> array, which `sc.get.rank_genes_groups_df` reads; see [`storable_key`] for group
/// names with `/`), plus `pts` / `pts_rest` dataframes when asked.
pub fn rank_genes_groups(adata: &mut AnnData, p: &DeParams) -> Result<DeSummary> {
    use crate::analysis::de::{DeOptions, DeTargets, NO_GROUP, rank_genes_groups as de};
    let start = Instant::now();
    let cat = adata
        .obs
        .categorical(&p.groupby)
        .map_err(|e| input(format!("--groupby: {e}")))?;
    let names = cat.category_labels();
    let layer = match (&p.layer, p.use_raw && adata.raw.is_some()) {
        (Some(l), _) => Some(l.as_str()),
        (None, true) => Some("raw"),
        (None, false) => None,
    };
    let (x, genes) = expression(adata, layer)?;
    let codes: Vec<u32> = cat
        .codes
        .iter()
        .map(|&c| u32::try_from(c).unwrap_or(NO_GROUP))
        .collect();
    let find = |g: &str| -> Result<u32> {
        names
            .iter()
            .position(|n| n == g)
            .map(|i| i as u32)
            .ok_or_else(|| {
                input(format!(
                    "\"{g}\" is not a group of {} ({})",
                    p.groupby,
                    names.join(", ")
                ))
            })
    };
    let listed: Vec<u32> = match &p.groups {
        Some(gs) => gs.iter().map(|g| find(g)).collect::<Result<_>>()?,
        None => (0..names.len() as u32).collect(),
    };
    let targets = match &p.reference {
        Some(r) => DeTargets::VsReference {
            groups: listed,
            reference: find(r)?,
        },
        None if p.groups.is_none() => DeTargets::AllVsRest,
        None => DeTargets::GroupsVsRest(listed),
    };
    let results = de(
        x.view()?,
        &codes,
        names.len(),
        &targets,
        p.method,
        &DeOptions {
            tie_correct: p.tie_correct,
            pts: p.pts,
            ..DeOptions::default()
        },
    )?;
    let top_n = p.n_genes.max(1).min(genes.len());
    let mut fields: Vec<(&str, Mapping)> =
        ["names", "scores", "logfoldchanges", "pvals", "pvals_adj"]
            .into_iter()
            .map(|f| (f, Mapping::new()))
            .collect();
    let mut top = Vec::new();
    let f32s = |v: Vec<f32>| {
        Element::Dense(crate::anndata::DenseArray {
            shape: vec![v.len()],
            data: ArrayData::F32(v),
        })
    };
    let f64s = |v: Vec<f64>| {
        Element::Dense(crate::anndata::DenseArray {
            shape: vec![v.len()],
            data: ArrayData::F64(v),
        })
    };
    let mut pts_cols = Vec::new();
    let mut pts_rest_cols = Vec::new();
    for r in &results {
        let g = storable_key(&names[r.group as usize]);
        let ranked: Vec<String> = r.genes[..top_n]
            .iter()
            .map(|&i| genes[i as usize].clone())
            .collect();
        top.push((g.clone(), ranked.iter().take(10).cloned().collect()));
        fields[0]
            .1
            .insert(g.clone(), Element::Strings(StringArray::from_vec(ranked)));
        // scanpy stores scores and log fold changes as float32, p-values as float64
        fields[1].1.insert(
            g.clone(),
            f32s(r.scores[..top_n].iter().map(|&v| v as f32).collect()),
        );
        fields[2].1.insert(
            g.clone(),
            f32s(
                r.logfoldchanges[..top_n]
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
            ),
        );
        fields[3]
            .1
            .insert(g.clone(), f64s(r.pvals[..top_n].to_vec()));
        fields[4]
            .1
            .insert(g.clone(), f64s(r.pvals_adj[..top_n].to_vec()));
        // pts in gene order, as scanpy's dataframes
        for (out, src) in [(&mut pts_cols, &r.pts), (&mut pts_rest_cols, &r.pts_rest)] {
            if let Some(v) = src {
                let mut by_gene = vec![0f64; genes.len()];
                for (rank, &gi) in r.genes.iter().enumerate() {
                    by_gene[gi as usize] = v[rank];
                }
                out.push((g.clone(), f64s(by_gene)));
            }
        }
    }
    let mut uns = Mapping::new();
    let mut params = Mapping::new();
    params.insert("groupby".into(), Element::String(p.groupby.clone()));
    params.insert(
        "reference".into(),
        Element::String(p.reference.clone().unwrap_or_else(|| "rest".into())),
    );
    params.insert(
        "method".into(),
        Element::String(method_name(p.method).into()),
    );
    params.insert(
        "use_raw".into(),
        Element::Dense(crate::anndata::DenseArray::scalar(ArrayData::Bool(vec![
            layer == Some("raw"),
        ]))),
    );
    if let Some(l) = &p.layer {
        params.insert("layer".into(), Element::String(l.clone()));
    }
    params.insert(
        "corr_method".into(),
        Element::String("benjamini-hochberg".into()),
    );
    uns.insert("params".into(), Element::Mapping(params));
    for (f, m) in fields {
        uns.insert(f.to_string(), Element::Mapping(m));
    }
    for (key, cols) in [("pts", pts_cols), ("pts_rest", pts_rest_cols)] {
        if !cols.is_empty() {
            let mut df = crate::anndata::DataFrame::with_index(genes.clone());
            for (g, c) in cols {
                df.set_column(&g, c);
            }
            uns.insert(key.into(), Element::DataFrame(df));
        }
    }
    adata.uns.insert(p.key_added.clone(), Element::Mapping(uns));
    let mut prov = Mapping::new();
    prov.insert(
        "method".into(),
        Element::String(method_name(p.method).into()),
    );
    prov.insert("groupby".into(), Element::String(p.groupby.clone()));
    prov.insert(
        "input".into(),
        Element::String(layer.unwrap_or("X").to_string()),
    );
    adata.record_provenance(&p.key_added, prov);
    Ok(DeSummary {
        input: layer.unwrap_or("X").to_string(),
        top,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Parameters of [`umap`] (`sc.tl.umap`).
#[derive(Debug, Clone)]
pub struct UmapParams {
    pub options: crate::analysis::umap::UmapOptions,
    pub neighbors_key: Option<String>,
    pub key_added: String,
}

impl Default for UmapParams {
    fn default() -> Self {
        Self {
            options: crate::analysis::umap::UmapOptions::default(),
            neighbors_key: None,
            key_added: "X_umap".into(),
        }
    }
}

/// What [`umap`] did.
#[derive(Debug, Clone)]
pub struct UmapSummary {
    pub n_epochs: usize,
    pub init: String,
    pub a: f64,
    pub b: f64,
    pub seconds: f64,
}

/// Parses `spectral` / `pca` / `random`.
pub fn parse_umap_init(s: &str) -> std::result::Result<crate::analysis::umap::UmapInit, String> {
    use crate::analysis::umap::UmapInit;
    match s {
        "spectral" => Ok(UmapInit::Spectral),
        "pca" => Ok(UmapInit::Pca),
        "random" => Ok(UmapInit::Random),
        _ => Err(format!("unknown UMAP init \"{s}\" (spectral, pca, random)")),
    }
}

/// `sc.tl.umap` on the neighbors graph: `obsm[key_added]` and `uns["umap"]["params"]`
/// (`a`, `b`). PCA initialisation uses the representation the graph was built on.
pub fn umap(adata: &mut AnnData, p: &UmapParams) -> Result<UmapSummary> {
    use crate::analysis::umap::{UmapInit, umap as run_umap};
    let start = Instant::now();
    let g = connectivities(adata, p.neighbors_key.as_deref())?;
    let rep = if p.options.init == UmapInit::Pca {
        let key = p.neighbors_key.as_deref().unwrap_or("neighbors");
        let use_rep = match adata.uns.get(key) {
            Some(Element::Mapping(m)) => match m.get("params") {
                Some(Element::Mapping(pm)) => match pm.get("use_rep") {
                    Some(Element::String(r)) => Some(r.clone()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        Some(representation(adata, use_rep.as_deref(), None)?)
    } else {
        None
    };
    let init_data = match &rep {
        Some(r) => Some(r.matrix()?),
        None => None,
    };
    let r = run_umap(&g, init_data.as_ref(), &p.options)?;
    let n = adata.n_obs();
    let k = p.options.n_components;
    adata.obsm.insert(
        p.key_added.clone(),
        Element::Dense(crate::anndata::DenseArray {
            shape: vec![n, k],
            data: ArrayData::F32(r.embedding),
        }),
    );
    let mut params = Mapping::new();
    params.insert("a".into(), Element::scalar_f64(r.a));
    params.insert("b".into(), Element::scalar_f64(r.b));
    let mut uns = Mapping::new();
    uns.insert("params".into(), Element::Mapping(params));
    let uns_key = if p.key_added == "X_umap" {
        "umap".to_string()
    } else {
        p.key_added.clone()
    };
    adata.uns.insert(uns_key.clone(), Element::Mapping(uns));
    let init = format!("{:?}", r.init_used).to_lowercase();
    let mut prov = Mapping::new();
    prov.insert("init".into(), Element::String(init.clone()));
    prov.insert("n_epochs".into(), Element::scalar_i64(r.n_epochs as i64));
    prov.insert("min_dist".into(), Element::scalar_f64(p.options.min_dist));
    prov.insert("spread".into(), Element::scalar_f64(p.options.spread));
    prov.insert("seed".into(), Element::scalar_i64(p.options.seed as i64));
    adata.record_provenance(&uns_key, prov);
    Ok(UmapSummary {
        n_epochs: r.n_epochs,
        init,
        a: r.a,
        b: r.b,
        seconds: start.elapsed().as_secs_f64(),
    })
}
