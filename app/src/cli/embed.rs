//! `cellforge embed IN.h5ad --model DIR --output OUT.h5ad [...]`: scGPT cell embeddings.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use cellforge_core::device::{DeviceRequest, Precision};
use cellforge_core::tl::embed::EmbedOptions;
use cellforge_core::tl::embed_job::{EmbedEvent, EmbedRequest, GeneColumn, run_embed};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .h5ad file to embed (never modified).
    pub input: PathBuf,
    /// Model folder: an scGPT release (args.json, vocab.json, best_model.pt) or one cellforge saved.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Where to write the dataset with the embeddings (temporary file, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Gene names to match against the vocabulary: `index` (var_names) or a var column.
    #[arg(long, default_value = "index")]
    pub gene_col: String,
    /// Cells per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Most tokens per cell, <cls> included (cells with more genes are subsampled, seeded).
    #[arg(long, default_value_t = 1200)]
    pub max_length: usize,
    /// auto (CUDA, then a hardware GPU through wgpu, then CPU), cuda, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (fp16 on CUDA, as scGPT runs; fp32 elsewhere), f32 or f16 (GPU backends).
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Seed for tie-breaking in binning and gene subsampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// obsm key of the embedding (gene embeddings go to varm["<key>_genes"]).
    #[arg(long, default_value = "X_scGPT")]
    pub key_added: String,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let device: DeviceRequest = args.device.parse().map_err(anyhow::Error::msg)?;
    let precision: Precision = args.precision.parse().map_err(anyhow::Error::msg)?;
    let req = EmbedRequest {
        input: args.input.clone(),
        model_dir: args.model.clone(),
        output: args.output.clone(),
        gene_col: GeneColumn::parse(&args.gene_col),
        device,
        precision,
        key_added: args.key_added.clone(),
        options: EmbedOptions {
            max_length: args.max_length.max(2),
            batch_size: args.batch_size.max(1),
            seed: args.seed,
            simulate_oom_above: super::fault_oom_above(),
            ..EmbedOptions::default()
        },
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_print = std::time::Instant::now();
    let mut batch_now = req.options.batch_size;
    let summary = run_embed(&req, &mut |ev| {
        match ev {
            EmbedEvent::Device(d) => eprintln!("device: {d}"),
            EmbedEvent::ModelLoaded { report, summary } => {
                eprintln!("model: {summary}; {}", report.render())
            }
            EmbedEvent::GenesMatched(m, vocab) => eprintln!("genes: {}", m.render(vocab)),
            EmbedEvent::Progress(p) => {
                if p.batch_size < batch_now {
                    batch_now = p.batch_size;
                    eprintln!(
                        "{}the device ran out of memory: continuing with {} cells per batch",
                        if tty { "\n" } else { "" },
                        p.batch_size
                    );
                }
                let final_one = p.cells_done == p.cells_total;
                if final_one || last_print.elapsed().as_millis() >= 500 {
                    last_print = std::time::Instant::now();
                    let rate = p.cells_done as f64 / p.elapsed_s.max(1e-9);
                    let eta = (p.cells_total - p.cells_done) as f64 / rate.max(1e-9);
                    let line = format!(
                        "embedding {}/{} cells ({:.0}%), {:.1} cells/s, ETA {:.0} s",
                        p.cells_done,
                        p.cells_total,
                        100.0 * p.cells_done as f64 / p.cells_total.max(1) as f64,
                        rate,
                        eta
                    );
                    if tty {
                        eprint!("\r{line}   ");
                        let _ = std::io::stderr().flush();
                        if final_one {
                            eprintln!();
                        }
                    } else {
                        eprintln!("{line}");
                    }
                }
            }
            EmbedEvent::Writing => eprintln!("writing {}", args.output.display()),
        }
        ControlFlow::Continue(())
    })
    .with_context(|| format!("cellforge embed {}", args.input.display()))?;
    eprintln!(
        "embedded {} cells in {:.1} s ({:.1} cells/s) on {}; obsm[\"{}\"]{}{}",
        summary.n_cells,
        summary.seconds,
        summary.n_cells as f64 / summary.seconds.max(1e-9),
        summary.device.name,
        args.key_added,
        if summary.empty_cells > 0 {
            format!(
                "; {} cells have no expressed vocabulary gene (zero embedding)",
                summary.empty_cells
            )
        } else {
            String::new()
        },
        if summary.truncated_cells > 0 {
            format!(
                "; {} cells had more than {} genes and were subsampled",
                summary.truncated_cells,
                args.max_length - 1
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
