//! `cellforge preprocess IN.h5ad --output OUT.h5ad [...]`: scGPT's preprocessing chain with
//! scanpy's numbers (filters, normalize_total, log1p, HVG, binning).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use cellforge_core::pp::{HvgFlavor, HvgOptions, PreprocessOptions, TargetSum, preprocess_to_file};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .h5ad file to preprocess (never modified).
    pub input: PathBuf,
    /// Where to write the result (temporary file, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Process this layer instead of X (e.g. `counts`).
    #[arg(long)]
    pub layer: Option<String>,
    /// Drop genes with fewer total counts (scanpy filter_genes min_counts).
    #[arg(long)]
    pub filter_genes_min_counts: Option<f64>,
    /// Drop genes expressed in fewer cells (scanpy filter_genes min_cells).
    #[arg(long)]
    pub filter_genes_min_cells: Option<u64>,
    /// Drop cells with fewer total counts (scanpy filter_cells min_counts).
    #[arg(long)]
    pub filter_cells_min_counts: Option<f64>,
    /// Drop cells expressing fewer genes (scanpy filter_cells min_genes).
    #[arg(long)]
    pub filter_cells_min_genes: Option<u64>,
    /// Scale each cell to this total (`median`: the median total, scanpy's default; `none`:
    /// skip). Result in layers["X_normed"].
    #[arg(long, default_value = "1e4")]
    pub normalize_total: String,
    /// log(1 + x) of the normalised values into layers["X_log1p"] (for raw counts).
    #[arg(long)]
    pub log1p: bool,
    /// Select this many highly variable genes and keep only them (scGPT's subset_hvg).
    #[arg(long)]
    pub n_hvg: Option<usize>,
    /// seurat_v3 (on counts), seurat or cell_ranger (on log data).
    #[arg(long, default_value = "seurat_v3")]
    pub hvg_flavor: String,
    /// obs column with batches: genes are ranked within each batch and merged.
    #[arg(long)]
    pub batch_key: Option<String>,
    /// Mark the highly variable genes in var but keep every gene.
    #[arg(long)]
    pub hvg_mark_only: bool,
    /// Compute HVGs on log1p(normalised) values instead of the input (for seurat and
    /// cell_ranger on raw counts).
    #[arg(long)]
    pub hvg_on_log1p: bool,
    /// LOESS span of seurat_v3 (scanpy's default 0.3; widened automatically, with a note,
    /// where the fit is undefined).
    #[arg(long, default_value_t = 0.3)]
    pub hvg_span: f64,
    /// scGPT value bins per cell (0 = not expressed); `0` skips binning.
    #[arg(long, default_value_t = 51)]
    pub n_bins: usize,
    /// Seed for the random tie-breaking in binning.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// MiB of the input matrix kept in memory between passes, for slow or network storage
    /// (0: read the file on every pass, memory stays at a few row chunks plus the output).
    #[arg(long, default_value_t = 0)]
    pub memory_budget_mb: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let normalize_total = match args.normalize_total.as_str() {
        "none" | "off" => None,
        "median" => Some(TargetSum::Median),
        v => Some(TargetSum::Fixed(
            v.parse::<f64>()
                .ok()
                .filter(|t| *t > 0.0)
                .with_context(|| {
                    format!("--normalize-total takes a positive number, median or none (got {v})")
                })?,
        )),
    };
    let hvg = match args.n_hvg {
        None => None,
        Some(n) => Some(HvgOptions {
            n_top_genes: n,
            flavor: HvgFlavor::parse(&args.hvg_flavor).with_context(|| {
                format!(
                    "--hvg-flavor is seurat_v3, seurat or cell_ranger (got {})",
                    args.hvg_flavor
                )
            })?,
            batch_key: args.batch_key.clone(),
            subset: !args.hvg_mark_only,
            on_log1p: args.hvg_on_log1p,
            span: args.hvg_span,
            ..HvgOptions::default()
        }),
    };
    let opts = PreprocessOptions {
        layer: args.layer.clone(),
        filter_genes_min_counts: args.filter_genes_min_counts,
        filter_genes_min_cells: args.filter_genes_min_cells,
        filter_cells_min_counts: args.filter_cells_min_counts,
        filter_cells_min_genes: args.filter_cells_min_genes,
        normalize_total,
        log1p: args.log1p,
        hvg,
        n_bins: (args.n_bins > 0).then_some(args.n_bins),
        seed: args.seed,
        memory_budget: args.memory_budget_mb << 20,
        ..PreprocessOptions::default()
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last = std::time::Instant::now();
    let t0 = std::time::Instant::now();
    let report = preprocess_to_file(&args.input, &args.output, &opts, &mut |p| {
        if tty && (last.elapsed().as_millis() >= 300 || p.rows_done == p.rows_total) {
            last = std::time::Instant::now();
            eprint!("\r{}: {}/{} cells   ", p.pass, p.rows_done, p.rows_total);
            let _ = std::io::stderr().flush();
        }
        ControlFlow::Continue(())
    })
    .with_context(|| format!("cellforge preprocess {}", args.input.display()))?;
    if tty {
        eprintln!();
    }
    eprintln!(
        "{} cells x {} genes -> {} cells x {} genes in {:.1} s{}{}{}",
        report.cells_in,
        report.genes_in,
        report.cells_out,
        report.genes_out,
        t0.elapsed().as_secs_f64(),
        report
            .target_sum
            .map(|t| format!("; normalised to {t}"))
            .unwrap_or_default(),
        report
            .hvg_selected
            .map(|n| format!("; {n} highly variable genes"))
            .unwrap_or_default(),
        if report.all_zero_cells > 0 {
            format!(
                "; {} cells have no expressed gene left (binned as all zeros; \
                 --filter-cells-min-counts 1 drops them)",
                report.all_zero_cells
            )
        } else {
            String::new()
        }
    );
    if args.log1p && report.looks_logged {
        eprintln!(
            "warning: the input looks log-transformed already (max <= 30, smallest non-zero < 1); \
             --log1p applied it again"
        );
    }
    if report.hvg_non_integer {
        eprintln!("warning: seurat_v3 expects raw counts, but non-integer values were found");
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if !report.dropped.is_empty() {
        eprintln!(
            "note: left out (cannot be subset): {}",
            report.dropped.join(", ")
        );
    }
    eprintln!("wrote {}", args.output.display());
    Ok(())
}
