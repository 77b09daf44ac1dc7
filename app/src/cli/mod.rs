//! The command-line interface: one subcommand per engine capability.

mod analyze;
mod annotate;
mod convert;
mod embed;
mod genes;
mod inspect;
mod plot;
mod preprocess;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// cellforge: the scGPT single-cell foundation model on your desktop.
///
/// Started without a subcommand it opens the desktop app.
#[derive(Debug, Parser)]
#[command(name = "cellforge", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Open this .h5ad file in the app at start-up.
    #[arg(global = false)]
    pub open: Option<PathBuf>,
    /// App: open the bundled demo dataset and demo model at start-up.
    #[arg(long)]
    pub demo: bool,
    /// App: open this model folder at start-up.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// App: run these steps at start-up, in order (embed, umap, leiden, finetune, annotate).
    #[arg(long, value_delimiter = ',')]
    pub run: Vec<String>,
    /// App: once the start-up steps are done, save a screenshot of the window (PNG) and quit.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Describe an .h5ad file: shape, how X is stored, value range, columns, embeddings.
    Inspect(inspect::Args),
    /// Rewrite an .h5ad file in current encodings, keeping every field.
    Convert(convert::Args),
    /// Embed cells with an scGPT model (CUDA, wgpu or CPU) into obsm["X_scGPT"].
    Embed(embed::Args),
    /// scGPT preprocessing with scanpy's numbers: filters, normalize_total, log1p, highly
    /// variable genes, value binning (layers X_normed, X_log1p, X_binned).
    Preprocess(preprocess::Args),
    /// Fine-tune a model on a labelled reference (CLS, GEP, GEPC, ECS, DAR, CCE objectives).
    Finetune(train::FinetuneArgs),
    /// Pretrain an scGPT-architecture model from scratch on a corpus (generative objective).
    Pretrain(train::PretrainArgs),
    /// Label a query with a fine-tuned model (obs label + confidence, "Unknown" below a
    /// threshold).
    Annotate(annotate::AnnotateArgs),
    /// Zero-shot reference mapping: kNN majority vote on cell embeddings.
    Map(annotate::MapArgs),
    /// kNN graph with UMAP connectivities (scanpy's sc.pp.neighbors) on an embedding.
    Neighbors(analyze::NeighborsArgs),
    /// Leiden clusters of the neighbors graph into obs["leiden"].
    Leiden(analyze::LeidenArgs),
    /// UMAP layout of the neighbors graph into obsm["X_umap"].
    Umap(analyze::UmapArgs),
    /// PCA of the expression (exact or randomised SVD) into obsm["X_pca"].
    Pca(analyze::PcaArgs),
    /// Differential expression of groups (Wilcoxon or t-test, as scanpy's
    /// rank_genes_groups).
    RankGenes(analyze::RankGenesArgs),
    /// Gene programs and networks from a model's gene embeddings (and attention).
    GenePrograms(genes::GeneProgramsArgs),
    /// Generate expression from a gene or cell prompt, most confident genes first.
    Generate(genes::GenerateArgs),
    /// Figure of an embedding coloured by an obs column or a gene (PNG at a chosen DPI, or
    /// SVG), with scanpy's palettes.
    Plot(plot::PlotArgs),
}

/// Fault injection for the reliability tests (`CELLFORGE_FAULT_OOM_ABOVE=N`): steps and
/// forward passes over more than N cells fail as if the device had run out of memory.
pub(crate) fn fault_oom_above() -> Option<usize> {
    std::env::var("CELLFORGE_FAULT_OOM_ABOVE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Inspect(a) => inspect::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Embed(a) => embed::run(&a),
        Command::Preprocess(a) => preprocess::run(&a),
        Command::Finetune(a) => train::run_finetune_cmd(&a),
        Command::Pretrain(a) => train::run_pretrain_cmd(&a),
        Command::Annotate(a) => annotate::run_annotate_cmd(&a),
        Command::Map(a) => annotate::run_map_cmd(&a),
        Command::Neighbors(a) => analyze::run_neighbors(&a),
        Command::Leiden(a) => analyze::run_leiden(&a),
        Command::Pca(a) => analyze::run_pca(&a),
        Command::Umap(a) => analyze::run_umap(&a),
        Command::RankGenes(a) => analyze::run_rank_genes(&a),
        Command::GenePrograms(a) => genes::run_gene_programs_cmd(&a),
        Command::Generate(a) => genes::run_generate_cmd(&a),
        Command::Plot(a) => plot::run(&a),
    }
}
