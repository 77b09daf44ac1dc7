//! `cellforge gene-programs` (gene networks from a model) and `cellforge generate`
//! (confidence-ordered iterative generation).

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use cellforge_core::tl::embed_job::GeneColumn;
use cellforge_core::tl::generate::{GenerateRequest, Prompt, run_generate};
use cellforge_core::tl::genes::{
    AttentionRequest, GeneProgramsRequest, ProgramParams, run_gene_programs,
};

#[derive(Debug, clap::Args)]
pub struct GeneProgramsArgs {
    /// The .h5ad file (never modified): its genes define the network, its cells get program
    /// scores.
    pub input: PathBuf,
    /// Model folder (scGPT release or cellforge).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Where to write the result (temporary file, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Leiden resolution on the genes' kNN graph (scGPT's tutorial uses 40).
    #[arg(long, default_value_t = 40.0)]
    pub resolution: f64,
    /// Neighbours per gene in the kNN graph.
    #[arg(long, default_value_t = 15)]
    pub n_neighbors: usize,
    /// Smallest cluster reported as a program.
    #[arg(long, default_value_t = 5)]
    pub min_size: usize,
    /// Similarity network edges at cosine similarity >= this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Genes to rank the most similar genes for (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub similar_to: Vec<String>,
    /// How many similar genes to report.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Only genes where this boolean var column is true (default: highly_variable when
    /// present; `all` for every gene in the vocabulary).
    #[arg(long)]
    pub genes: Option<String>,
    /// Expression for the program scores (a layer; default X).
    #[arg(long)]
    pub layer: Option<String>,
    /// Gene names to match against the vocabulary: `index` or a var column.
    #[arg(long, default_value = "index")]
    pub gene_col: String,
    /// Also compute attention-based gene-gene scores from this transformer layer (0-based).
    #[arg(long)]
    pub attention_layer: Option<usize>,
    /// Restrict the attention scores to the cells where COLUMN=VALUE.
    #[arg(long, value_name = "COLUMN=VALUE")]
    pub attention_group: Option<String>,
    /// Most cells used for the attention scores.
    #[arg(long, default_value_t = 500)]
    pub attention_cells: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cuda, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run_gene_programs_cmd(a: &GeneProgramsArgs) -> anyhow::Result<()> {
    let group = match &a.attention_group {
        None => None,
        Some(s) => {
            let (c, v) = s
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--attention-group wants COLUMN=VALUE"))?;
            Some((c.to_string(), v.to_string()))
        }
    };
    let req = GeneProgramsRequest {
        model_dir: a.model.clone(),
        input: a.input.clone(),
        output: a.output.clone(),
        gene_col: GeneColumn::parse(&a.gene_col),
        gene_mask: a.genes.as_deref().map(|g| {
            if g == "all" {
                String::new()
            } else {
                g.to_string()
            }
        }),
        layer: a.layer.clone(),
        programs: ProgramParams {
            resolution: a.resolution,
            n_neighbors: a.n_neighbors,
            min_size: a.min_size,
            seed: a.seed,
        },
        threshold: a.threshold,
        query_genes: a.similar_to.clone(),
        top: a.top,
        attention: a.attention_layer.map(|layer| AttentionRequest {
            layer,
            group,
            max_cells: a.attention_cells,
            batch_size: 8,
        }),
        device: a.device.parse().map_err(anyhow::Error::msg)?,
    };
    let s = run_gene_programs(&req, &mut |done, total| {
        if done == total {
            eprintln!("attention: {done}/{total} cells");
        }
        ControlFlow::Continue(())
    })
    .with_context(|| format!("cellforge gene-programs {}", a.input.display()))?;
    eprintln!(
        "{} genes with embeddings, {} clusters, {} programs of >= {} genes, {} network edges \
         (cosine >= {}), {:.1} s",
        s.n_genes,
        s.n_clusters,
        s.programs.len(),
        a.min_size,
        s.n_edges,
        a.threshold,
        s.seconds
    );
    for (i, p) in s.programs.iter().take(10).enumerate() {
        let shown: Vec<&str> = p.iter().take(12).map(String::as_str).collect();
        eprintln!(
            "  program {i} ({} genes): {}{}",
            p.len(),
            shown.join(", "),
            if p.len() > 12 { ", ..." } else { "" }
        );
    }
    for (q, list) in &s.similar {
        let shown: Vec<String> = list.iter().map(|(g, c)| format!("{g} {c:.3}")).collect();
        eprintln!("  most similar to {q}: {}", shown.join(", "));
    }
    if !s.attention_top.is_empty() {
        let shown: Vec<String> = s
            .attention_top
            .iter()
            .take(10)
            .map(|(a, b, v)| format!("{a}->{b} {v:.3}"))
            .collect();
        eprintln!(
            "  attention ({} cells), strongest pairs: {}",
            s.attention_cells,
            shown.join(", ")
        );
    }
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The .h5ad file (never modified) with the cells to generate for.
    pub input: PathBuf,
    /// A model pretrained with the generative objective (`cellforge pretrain`).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Where to write the result (temporary file, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// File with the known (prompt) genes, one per line or comma-separated; each cell's
    /// other expressed genes are generated.
    #[arg(long)]
    pub prompt_genes: Option<PathBuf>,
    /// obsm key of cell embeddings used as the cell prompt (position 0).
    #[arg(long)]
    pub cell_prompt: Option<String>,
    /// Rounds K: each round fixes the most confident 1/K of the remaining genes (1 =
    /// one-shot).
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// heads (expression vs MVC decoder agreement), dropout[:N] (agreement of N dropout
    /// samples) or zero-prob; default: the best the model supports.
    #[arg(long)]
    pub confidence: Option<String>,
    /// Use a layer (or `raw`) instead of X for the known values.
    #[arg(long)]
    pub layer: Option<String>,
    /// Gene names to match against the vocabulary: `index` or a var column.
    #[arg(long, default_value = "index")]
    pub gene_col: String,
    /// Most tokens per cell (default: the model's max_seq_len).
    #[arg(long)]
    pub max_length: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cuda, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Layer name for the generated values (`<key>_confidence` holds the confidence).
    #[arg(long, default_value = "X_generated")]
    pub key_added: String,
}

pub fn run_generate_cmd(a: &GenerateArgs) -> anyhow::Result<()> {
    let genes = match &a.prompt_genes {
        None => Vec::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the prompt genes {}", p.display()))?;
            let genes: Vec<String> = text
                .split(|c: char| c == ',' || c.is_whitespace())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if genes.is_empty() {
                anyhow::bail!("{} lists no genes", p.display());
            }
            genes
        }
    };
    if genes.is_empty() && a.cell_prompt.is_none() {
        anyhow::bail!("give a prompt: --prompt-genes FILE, --cell-prompt KEY, or both");
    }
    let req = GenerateRequest {
        model_dir: a.model.clone(),
        input: a.input.clone(),
        output: a.output.clone(),
        layer: a.layer.clone(),
        gene_col: GeneColumn::parse(&a.gene_col),
        prompt: Prompt {
            genes,
            cell_key: a.cell_prompt.clone(),
        },
        rounds: a.rounds,
        confidence: a
            .confidence
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        max_len: a.max_length,
        batch_size: a.batch_size,
        seed: a.seed,
        device: a.device.parse().map_err(anyhow::Error::msg)?,
        key_added: a.key_added.clone(),
    };
    let s = run_generate(&req, &mut |done, total| {
        if done == total {
            eprintln!("{done}/{total} cells");
        }
        ControlFlow::Continue(())
    })
    .with_context(|| format!("cellforge generate {}", a.input.display()))?;
    eprintln!(
        "generated {} values for {} cells ({} prompt values found) in {} rounds, confidence \
         {}, on {}, {:.1} s, into layers[\"{}\"]",
        s.n_generated,
        s.n_cells,
        s.n_prompt_genes_found,
        a.rounds,
        s.confidence,
        s.device,
        s.seconds,
        a.key_added
    );
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
