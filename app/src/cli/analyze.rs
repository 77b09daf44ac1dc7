//! `cellforge neighbors | umap | leiden | pca | rank-genes`: scanpy's analysis steps, writing
//! scanpy's keys into a copy of the input.

use std::path::PathBuf;

use anyhow::Context;
use cellforge_core::anndata::AnnData;
use cellforge_core::tl::analyze::{
    self, KnnMethod, LeidenParams, NeighborsParams, NeighborsSummary, parse_metric, process_file,
};

#[derive(Debug, clap::Args)]
pub struct IoArgs {
    /// The .h5ad file to analyse (never modified).
    pub input: PathBuf,
    /// Where to write the result (temporary file, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// Neighbours per cell, the cell itself included (scanpy's n_neighbors).
    #[arg(long, default_value_t = 15)]
    pub n_neighbors: usize,
    /// euclidean or cosine.
    #[arg(long, default_value = "euclidean")]
    pub metric: String,
    /// obsm key to build the graph on (X_scGPT, X_pca, ...; `X` for X itself). Default:
    /// X_pca when present.
    #[arg(long)]
    pub use_rep: Option<String>,
    /// Use only the first N columns of the representation.
    #[arg(long)]
    pub n_pcs: Option<usize>,
    /// auto (exact below 8,192 cells, NN-descent above), exact or approx.
    #[arg(long, default_value = "auto")]
    pub knn: String,
}

impl GraphArgs {
    fn params(&self, seed: u64, key_added: Option<String>) -> anyhow::Result<NeighborsParams> {
        Ok(NeighborsParams {
            n_neighbors: self.n_neighbors,
            metric: parse_metric(&self.metric).map_err(anyhow::Error::msg)?,
            use_rep: self.use_rep.clone(),
            n_pcs: self.n_pcs,
            method: self.knn.parse::<KnnMethod>().map_err(anyhow::Error::msg)?,
            seed,
            key_added,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct NeighborsArgs {
    #[command(flatten)]
    pub io: IoArgs,
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Seed of the approximate search.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Store under uns[KEY] and obsp[KEY_connectivities] / obsp[KEY_distances].
    #[arg(long)]
    pub key_added: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LeidenArgs {
    #[command(flatten)]
    pub io: IoArgs,
    /// Higher gives more, smaller clusters.
    #[arg(long, default_value_t = 1.0)]
    pub resolution: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Passes over the graph; -1 runs until the partition stops improving.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub n_iterations: i32,
    /// obs column for the clusters.
    #[arg(long, default_value = "leiden")]
    pub key_added: String,
    /// Which neighbors graph (uns key); built with the options below when absent.
    #[arg(long)]
    pub neighbors_key: Option<String>,
    #[command(flatten)]
    pub graph: GraphArgs,
}

fn print_neighbors(s: &NeighborsSummary) {
    eprintln!(
        "neighbors: {} cells on {} ({} dims), {} search, {:.2} s",
        s.n_cells,
        s.representation,
        s.n_dims,
        if s.exact { "exact" } else { "NN-descent" },
        s.seconds
    );
}

fn ensure_neighbors(adata: &mut AnnData, p: &NeighborsParams) -> analyze::Result<()> {
    if let Some(s) = analyze::ensure_neighbors(adata, p)? {
        eprintln!("no neighbors graph yet: built one");
        print_neighbors(&s);
    }
    Ok(())
}

pub fn run_neighbors(a: &NeighborsArgs) -> anyhow::Result<()> {
    let p = a.graph.params(a.seed, a.key_added.clone())?;
    let s = process_file(&a.io.input, &a.io.output, |adata| {
        analyze::neighbors(adata, &p)
    })
    .with_context(|| format!("cellforge neighbors {}", a.io.input.display()))?;
    print_neighbors(&s);
    eprintln!("wrote {}", a.io.output.display());
    Ok(())
}

pub fn run_leiden(a: &LeidenArgs) -> anyhow::Result<()> {
    let p = LeidenParams {
        resolution: a.resolution,
        seed: a.seed,
        n_iterations: a.n_iterations,
        neighbors_key: a.neighbors_key.clone(),
        key_added: a.key_added.clone(),
    };
    let np = a.graph.params(a.seed, a.neighbors_key.clone())?;
    let s = process_file(&a.io.input, &a.io.output, |adata| {
        ensure_neighbors(adata, &np)?;
        analyze::leiden(adata, &p)
    })
    .with_context(|| format!("cellforge leiden {}", a.io.input.display()))?;
    let sizes: Vec<String> = s.sizes.iter().take(20).map(|n| n.to_string()).collect();
    eprintln!(
        "leiden: {} clusters (quality {:.4}, {:.2} s) into obs[\"{}\"]; sizes {}{}",
        s.n_clusters,
        s.quality,
        s.seconds,
        a.key_added,
        sizes.join(", "),
        if s.sizes.len() > 20 { ", ..." } else { "" }
    );
    eprintln!("wrote {}", a.io.output.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PcaArgs {
    #[command(flatten)]
    pub io: IoArgs,
    /// Number of principal components.
    #[arg(long, default_value_t = 50)]
    pub n_comps: usize,
    /// Use a layer instead of X.
    #[arg(long)]
    pub layer: Option<String>,
    /// Only genes where this boolean var column is true (default: highly_variable when
    /// present; `all` for every gene).
    #[arg(long)]
    pub mask_var: Option<String>,
    /// Do not centre the genes (truncated SVD).
    #[arg(long)]
    pub no_zero_center: bool,
    /// auto (exact up to 4,000 genes, randomised above), exact or randomized.
    #[arg(long, default_value = "auto")]
    pub solver: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// obsm key of the scores.
    #[arg(long, default_value = "X_pca")]
    pub key_added: String,
}

pub fn run_pca(a: &PcaArgs) -> anyhow::Result<()> {
    use cellforge_core::analysis::pca::PcaSolver;
    let solver = match a.solver.as_str() {
        "auto" => None,
        "exact" | "full" => Some(PcaSolver::Exact),
        "randomized" | "randomised" => Some(PcaSolver::Randomized),
        other => anyhow::bail!("unknown solver \"{other}\" (auto, exact, randomized)"),
    };
    let p = analyze::PcaParams {
        n_comps: a.n_comps,
        layer: a.layer.clone(),
        mask_var: a.mask_var.as_deref().map(|m| {
            if m == "all" {
                String::new()
            } else {
                m.to_string()
            }
        }),
        zero_center: !a.no_zero_center,
        solver,
        seed: a.seed,
        key_added: a.key_added.clone(),
    };
    let s = process_file(&a.io.input, &a.io.output, |adata| analyze::pca(adata, &p))
        .with_context(|| format!("cellforge pca {}", a.io.input.display()))?;
    let first: Vec<String> = s
        .variance_ratio
        .iter()
        .take(5)
        .map(|v| format!("{:.3}", v))
        .collect();
    eprintln!(
        "pca: {} components of {} genes ({}, {:.2} s) into obsm[\"{}\"]; variance ratio {}, ...; total {:.3}",
        s.n_comps,
        s.n_genes,
        s.solver,
        s.seconds,
        a.key_added,
        first.join(", "),
        s.variance_ratio.iter().sum::<f64>()
    );
    eprintln!("wrote {}", a.io.output.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct UmapArgs {
    #[command(flatten)]
    pub io: IoArgs,
    /// Effective minimum distance between embedded points.
    #[arg(long, default_value_t = 0.5)]
    pub min_dist: f64,
    #[arg(long, default_value_t = 1.0)]
    pub spread: f64,
    /// Optimisation epochs (default: 500 up to 10,000 cells, 200 above).
    #[arg(long)]
    pub n_epochs: Option<usize>,
    /// spectral, pca or random.
    #[arg(long, default_value = "spectral")]
    pub init: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which neighbors graph (uns key); built with the options below when absent.
    #[arg(long)]
    pub neighbors_key: Option<String>,
    /// obsm key of the layout.
    #[arg(long, default_value = "X_umap")]
    pub key_added: String,
    #[command(flatten)]
    pub graph: GraphArgs,
}

#[derive(Debug, clap::Args)]
pub struct RankGenesArgs {
    #[command(flatten)]
    pub io: IoArgs,
    /// obs column with the groups (clusters, cell types, a selection).
    #[arg(long)]
    pub groupby: String,
    /// Test only these groups (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// Compare against this group instead of the rest.
    #[arg(long)]
    pub reference: Option<String>,
    /// wilcoxon, t-test or t-test_overestim_var.
    #[arg(long, default_value = "wilcoxon")]
    pub method: String,
    /// Use a layer (or `raw`); default: raw when the file has it, else X (log1p values).
    #[arg(long)]
    pub layer: Option<String>,
    /// Use X even when the file has raw.
    #[arg(long)]
    pub no_raw: bool,
    /// Tie-corrected Wilcoxon z-scores.
    #[arg(long)]
    pub tie_correct: bool,
    /// Also store the fraction of cells expressing each gene (pts, pts_rest).
    #[arg(long)]
    pub pts: bool,
    /// Genes stored per group.
    #[arg(long, default_value_t = 100)]
    pub n_genes: usize,
    #[arg(long, default_value = "rank_genes_groups")]
    pub key_added: String,
}

pub fn run_rank_genes(a: &RankGenesArgs) -> anyhow::Result<()> {
    let p = analyze::DeParams {
        groupby: a.groupby.clone(),
        groups: a.groups.clone(),
        reference: a.reference.clone(),
        method: analyze::parse_de_method(&a.method).map_err(anyhow::Error::msg)?,
        layer: a.layer.clone(),
        use_raw: !a.no_raw,
        tie_correct: a.tie_correct,
        pts: a.pts,
        key_added: a.key_added.clone(),
        n_genes: a.n_genes,
    };
    let s = process_file(&a.io.input, &a.io.output, |adata| {
        analyze::rank_genes_groups(adata, &p)
    })
    .with_context(|| format!("cellforge rank-genes {}", a.io.input.display()))?;
    eprintln!(
        "rank-genes ({}, on {}, {:.2} s) into uns[\"{}\"]; top genes:",
        a.method, s.input, s.seconds, a.key_added
    );
    for (g, genes) in &s.top {
        eprintln!("  {g}: {}", genes.join(", "));
    }
    eprintln!("wrote {}", a.io.output.display());
    Ok(())
}

pub fn run_umap(a: &UmapArgs) -> anyhow::Result<()> {
    use cellforge_core::analysis::umap::UmapOptions;
    let p = analyze::UmapParams {
        options: UmapOptions {
            min_dist: a.min_dist,
            spread: a.spread,
            n_epochs: a.n_epochs,
            init: analyze::parse_umap_init(&a.init).map_err(anyhow::Error::msg)?,
            seed: a.seed,
            ..UmapOptions::default()
        },
        neighbors_key: a.neighbors_key.clone(),
        key_added: a.key_added.clone(),
    };
    let np = a.graph.params(a.seed, a.neighbors_key.clone())?;
    let s = process_file(&a.io.input, &a.io.output, |adata| {
        ensure_neighbors(adata, &np)?;
        analyze::umap(adata, &p)
    })
    .with_context(|| format!("cellforge umap {}", a.io.input.display()))?;
    eprintln!(
        "umap: {} epochs, {} initialisation, a = {:.4}, b = {:.4}, {:.2} s into obsm[\"{}\"]",
        s.n_epochs, s.init, s.a, s.b, s.seconds, a.key_added
    );
    eprintln!("wrote {}", a.io.output.display());
    Ok(())
}
