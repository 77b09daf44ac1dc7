//! `cellforge annotate` (a fine-tuned classifier) and `cellforge map` (zero-shot kNN
//! reference mapping on cell embeddings).

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use cellforge_core::tl::annotate::{
    AnnotateEvent, AnnotateRequest, AnnotateSummary, MapRequest, run_annotate, run_map,
};
use cellforge_core::tl::embed_job::GeneColumn;

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Query .h5ad to label (never modified).
    #[arg(long)]
    pub query: PathBuf,
    /// Where to write the labelled copy (temporary file, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// obs column for the labels (`<key>_confidence` holds the confidence).
    #[arg(long, default_value = "predicted_cell_type")]
    pub key_added: String,
    /// Cells below this confidence are labelled "Unknown".
    #[arg(long, default_value_t = 0.5)]
    pub min_confidence: f64,
    /// Use a layer instead of X, or `raw` for raw/X.
    #[arg(long)]
    pub layer: Option<String>,
    /// Gene names to match against the vocabulary: `index` (var_names) or a var column.
    #[arg(long, default_value = "index")]
    pub gene_col: String,
    /// auto, cuda, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct AnnotateArgs {
    /// A model folder written by `cellforge finetune` (with labels.json).
    #[arg(short, long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub query: QueryArgs,
}

#[derive(Debug, clap::Args)]
pub struct MapArgs {
    /// Labelled reference .h5ad.
    #[arg(long)]
    pub reference: PathBuf,
    /// obs column of the reference with the labels to transfer.
    #[arg(long)]
    pub label_key: String,
    /// Any model folder (scGPT release or cellforge) used to embed both datasets.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Neighbours that vote.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Most tokens per cell when embedding.
    #[arg(long, default_value_t = 1200)]
    pub max_length: usize,
    #[command(flatten)]
    pub query: QueryArgs,
}

fn request(model: &std::path::Path, q: &QueryArgs) -> anyhow::Result<AnnotateRequest> {
    Ok(AnnotateRequest {
        model_dir: model.to_path_buf(),
        query: q.query.clone(),
        output: q.output.clone(),
        layer: q.layer.clone(),
        gene_col: GeneColumn::parse(&q.gene_col),
        key_added: q.key_added.clone(),
        min_confidence: q.min_confidence,
        device: q.device.parse().map_err(anyhow::Error::msg)?,
        batch_size: q.batch_size,
        seed: q.seed,
    })
}

fn print_event(e: AnnotateEvent) -> ControlFlow<()> {
    match e {
        AnnotateEvent::Device(d) => eprintln!("device: {d}"),
        AnnotateEvent::Progress { done, total } => {
            if done == total {
                eprintln!("{done}/{total} cells");
            }
        }
        AnnotateEvent::Writing => eprintln!("writing"),
    }
    ControlFlow::Continue(())
}

fn report(s: &AnnotateSummary, key: &str, out: &std::path::Path) {
    let top: Vec<String> = s
        .counts
        .iter()
        .take(12)
        .map(|(l, n)| format!("{l} {n}"))
        .collect();
    eprintln!(
        "labelled {} cells in {:.1} s on {} into obs[\"{key}\"] of {}: {}{}",
        s.n_cells,
        s.seconds,
        s.device.name,
        out.display(),
        top.join(", "),
        if s.n_empty > 0 {
            format!(
                "; {} cells without expressed vocabulary genes are Unknown",
                s.n_empty
            )
        } else {
            String::new()
        }
    );
}

pub fn run_annotate_cmd(a: &AnnotateArgs) -> anyhow::Result<()> {
    let req = request(&a.model, &a.query)?;
    let s = run_annotate(&req, &mut print_event)
        .with_context(|| format!("cellforge annotate {}", a.query.query.display()))?;
    report(&s, &a.query.key_added, &a.query.output);
    Ok(())
}

pub fn run_map_cmd(a: &MapArgs) -> anyhow::Result<()> {
    let req = MapRequest {
        reference: a.reference.clone(),
        label_key: a.label_key.clone(),
        query: request(&a.model, &a.query)?,
        k: a.k,
        max_length: a.max_length,
    };
    let s = run_map(&req, &mut print_event)
        .with_context(|| format!("cellforge map {}", a.query.query.display()))?;
    report(&s, &a.query.key_added, &a.query.output);
    Ok(())
}
