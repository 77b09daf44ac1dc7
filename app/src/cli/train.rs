//! `cellforge finetune` and `cellforge pretrain`: the training engine from the command line,
//! with per-step progress (each loss term, learning rate, cells/s, ETA) on stderr.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use cellforge_core::device::DeviceRequest;
use cellforge_core::model::CellEmbStyle;
use cellforge_core::tl::embed_job::GeneColumn;
use cellforge_core::train::data::TokenSettings;
use cellforge_core::train::finetune::{FinetuneEvent, FinetuneRequest, run_finetune};
use cellforge_core::train::optim::{AdamConfig, Freeze};
use cellforge_core::train::pretrain::{
    GenerativeSettings, ModelSize, PretrainEvent, PretrainRequest, run_pretrain,
};
use cellforge_core::train::{Objectives, ScheduleSpec, TrainConfig, TrainEvent};

/// Options both commands share.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Passes over the training cells.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Cells per optimiser step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Fraction of cells held out for validation (seeded).
    #[arg(long)]
    pub validation_fraction: Option<f64>,
    /// Seed for the split, minibatch order, masking, dropout and initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto (CUDA, then a hardware GPU through wgpu, then CPU), cuda, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Most tokens per cell, <cls> included (cells with more genes are subsampled).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Use a layer instead of X (e.g. counts), or `raw` for raw/X.
    #[arg(long)]
    pub layer: Option<String>,
    /// Gene names to match against the vocabulary: `index` (var_names) or a var column.
    #[arg(long, default_value = "index")]
    pub gene_col: String,
    /// Learning-rate schedule: `step:GAMMA` (per epoch), `cosine:WARMUP_FRACTION` or
    /// `constant`.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Adam epsilon (scGPT: 1e-8 in fp32, 1e-4 with mixed precision).
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Weight decay; decoupled (AdamW) with --adamw, else L2 (Adam).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long)]
    pub adamw: bool,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Write a resumable checkpoint every N optimiser steps (and at each epoch end).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue from OUTPUT/checkpoint (same settings and seed give the same result).
    #[arg(long)]
    pub resume: bool,
    /// Dropout probability.
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f32,
}

impl Common {
    fn device(&self) -> anyhow::Result<DeviceRequest> {
        self.device.parse().map_err(anyhow::Error::msg)
    }

    fn gene_col(&self) -> GeneColumn {
        GeneColumn::parse(&self.gene_col)
    }

    fn schedule(&self, default: ScheduleSpec) -> anyhow::Result<ScheduleSpec> {
        let Some(s) = &self.schedule else {
            return Ok(default);
        };
        let (kind, arg) = s.split_once(':').unwrap_or((s.as_str(), ""));
        let num = |d: f64| -> anyhow::Result<f64> {
            if arg.is_empty() {
                Ok(d)
            } else {
                arg.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .with_context(|| format!("--schedule {s}: bad number \"{arg}\""))
            }
        };
        Ok(match kind {
            "constant" => ScheduleSpec::Constant,
            "step" => ScheduleSpec::Step { gamma: num(0.9)? },
            "cosine" => ScheduleSpec::Cosine {
                warmup_fraction: num(0.1)?,
            },
            other => anyhow::bail!(
                "--schedule: unknown kind \"{other}\" (step:GAMMA, cosine:WARMUP, constant)"
            ),
        })
    }

    /// The recipe `base` with the shared options applied (epochs, lr, batch size, seed,
    /// optimiser, schedule, patience, checkpoints).
    fn apply(&self, base: TrainConfig) -> anyhow::Result<TrainConfig> {
        Ok(TrainConfig {
            epochs: self.epochs.unwrap_or(base.epochs),
            lr: self.lr.unwrap_or(base.lr),
            batch_size: self.batch_size.max(1),
            seed: self.seed,
            adam: self.adam(),
            schedule: self.schedule(base.schedule.clone())?,
            patience: self.patience,
            checkpoint_every: self.checkpoint_every,
            simulate_oom_above: super::fault_oom_above(),
            ..base
        })
    }

    fn adam(&self) -> AdamConfig {
        AdamConfig {
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: self.adamw,
            clip_norm: (self.clip > 0.0).then_some(self.clip),
            ..AdamConfig::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct FinetuneArgs {
    /// Labelled reference .h5ad (never modified).
    #[arg(long)]
    pub reference: PathBuf,
    /// obs column with the cell types (CLS objective).
    #[arg(long)]
    pub label_key: Option<String>,
    /// Pretrained model folder (scGPT release or cellforge).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Folder for the fine-tuned model (best by validation loss) and its checkpoints.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Objectives with optional weights: cls, gep, gepc, ecs, dar, cce (e.g. `cls` or
    /// `gep,gepc,ecs=10,dar`). Defaults follow scGPT's tutorials.
    #[arg(long, default_value = "cls")]
    pub objectives: String,
    /// obs column with batches (batch tokens, DSBN, DAR).
    #[arg(long)]
    pub batch_key: Option<String>,
    /// Fraction of each cell's genes masked for GEP/GEPC (default 0.4 when they are on).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// Feed batch labels to the decoders (scGPT's use_batch_labels).
    #[arg(long)]
    pub batch_tokens: bool,
    /// Domain-specific batch norm, one per batch (minibatches then hold one batch each).
    #[arg(long)]
    pub dsbn: bool,
    /// Zero-probability heads with their Bernoulli likelihood terms.
    #[arg(long)]
    pub explicit_zero_prob: bool,
    /// Keep zero-expressed genes in the input (integration tutorial).
    #[arg(long)]
    pub include_zero_genes: bool,
    /// Weigh the CLS loss by inverse class frequency, so rare cell types count as much as
    /// common ones (not in scGPT's recipe; helps macro F1).
    #[arg(long)]
    pub balance_classes: bool,
    /// How the classifier reads a cell: `cls` (the `<cls>` token, scGPT's default),
    /// `avg-pool` (mean over the cell's genes; learns faster for small models and few
    /// cells) or `w-pool`. Default: the base model's style.
    #[arg(long, value_parser = parse_cell_emb)]
    pub cell_emb: Option<CellEmbStyle>,
    /// Depth augmentation: every step, thin each training cell's counts to a random
    /// fraction between this and 1 of its molecules (e.g. 0.3), so the model also learns
    /// from shallower versions of the reference; helps when the query was sequenced less
    /// deeply or with an older chemistry. Needs raw counts (`--layer counts`). Not in
    /// scGPT's recipe.
    #[arg(long, value_name = "MIN_FRACTION")]
    pub augment_depth: Option<f64>,
    /// ECS similarity threshold (integration tutorial: 0.8).
    #[arg(long, default_value_t = 0.8)]
    pub ecs_threshold: f64,
    /// Freeze the gene/value/batch embeddings (scGPT's `freeze`).
    #[arg(long)]
    pub freeze_embeddings: bool,
    /// Freeze the first N transformer layers.
    #[arg(long, default_value_t = 0)]
    pub freeze_layers: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, clap::Args)]
pub struct PretrainArgs {
    /// Corpus: .h5ad files and/or folders of them (raw counts or log-normalised).
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// Folder for the model (best by validation loss), checkpoints and token cache.
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    #[arg(long, default_value_t = 4)]
    pub nlayers: usize,
    #[arg(long, default_value_t = 4)]
    pub nhead: usize,
    /// Feed-forward width (scGPT uses d_model).
    #[arg(long)]
    pub d_hid: Option<usize>,
    /// A vocabulary to reuse (e.g. scGPT's vocab.json); default: the corpus genes.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Keep the tokenised corpus in a memory-mapped file instead of RAM.
    #[arg(long)]
    pub token_cache: bool,
    /// Leave out the MVC (GEPC) term.
    #[arg(long)]
    pub no_mvc: bool,
    /// Add the cell-prompted generation pass after this many steps (scGPT: 1000).
    #[arg(long, default_value_t = 1000)]
    pub cell_prompt_after: u64,
    #[command(flatten)]
    pub common: Common,
}

/// Prints training events; returns Continue always (Ctrl-C ends the process; the last
/// checkpoint stays resumable).
struct Printer {
    tty: bool,
    last: std::time::Instant,
}

impl Printer {
    fn new() -> Self {
        Self {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            last: std::time::Instant::now() - std::time::Duration::from_secs(10),
        }
    }

    fn train(&mut self, e: TrainEvent) {
        match e {
            TrainEvent::Step(s) => {
                let last_step = s.step == s.total_steps;
                if !last_step && self.last.elapsed().as_millis() < if self.tty { 200 } else { 2000 }
                {
                    return;
                }
                self.last = std::time::Instant::now();
                let terms: Vec<String> = s
                    .losses
                    .iter()
                    .map(|(n, v)| format!("{n} {v:.4}"))
                    .collect();
                let line = format!(
                    "epoch {} step {}/{}: {} | lr {:.2e} | |g| {:.3} | {:.1} cells/s | ETA {:.0} s",
                    s.epoch + 1,
                    s.step,
                    s.total_steps,
                    terms.join(", "),
                    s.lr,
                    s.grad_norm,
                    s.cells_per_s,
                    s.eta_s
                );
                if self.tty {
                    eprint!("\r{line}   ");
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{line}");
                }
            }
            TrainEvent::Validation(v) => {
                if self.tty {
                    eprintln!();
                }
                let acc = match (v.accuracy, v.macro_f1) {
                    (Some(a), Some(f)) => format!(", accuracy {a:.4}, macro F1 {f:.4}"),
                    _ => String::new(),
                };
                let terms: Vec<String> = v
                    .losses
                    .iter()
                    .map(|(n, x)| format!("{n} {x:.4}"))
                    .collect();
                eprintln!(
                    "validation after epoch {}: loss {:.4} ({}){acc}{}",
                    v.epoch + 1,
                    v.loss,
                    terms.join(", "),
                    if v.best { " (best so far, saved)" } else { "" }
                );
            }
            TrainEvent::Checkpoint(p) => {
                if !self.tty {
                    eprintln!("checkpoint: {}", p.display());
                }
            }
            TrainEvent::Resumed { step, epoch } => {
                eprintln!("resumed at step {step} (epoch {})", epoch + 1)
            }
            TrainEvent::BatchReduced { cells } => {
                eprintln!(
                    "the device ran out of memory: continuing with steps of about {cells} cells \
                     (each minibatch is now split; the split is kept by checkpoints)"
                );
            }
            TrainEvent::EarlyStop { epoch } => {
                eprintln!(
                    "early stop after epoch {}: no better validation loss",
                    epoch + 1
                )
            }
        }
    }
}

pub fn run_finetune_cmd(a: &FinetuneArgs) -> anyhow::Result<()> {
    let mut objectives = Objectives::parse(&a.objectives).map_err(anyhow::Error::msg)?;
    objectives.ecs_threshold = a.ecs_threshold;
    let mask_ratio = a
        .mask_ratio
        .unwrap_or(if objectives.needs_mask() { 0.4 } else { 0.0 });
    let c = &a.common;
    let base = TrainConfig::finetune_recipe();
    let config = TrainConfig {
        objectives,
        mask_ratio,
        freeze: Freeze {
            embeddings: a.freeze_embeddings,
            layers: a.freeze_layers,
        },
        tokens: TokenSettings {
            include_zero_genes: a.include_zero_genes,
            max_len: c.max_len.unwrap_or(base.tokens.max_len).max(2),
            ..base.tokens.clone()
        },
        use_batch_labels: a.batch_tokens,
        by_batch: a.dsbn,
        augment_depth: a.augment_depth,
        ..c.apply(base)?
    };
    let req = FinetuneRequest {
        reference: a.reference.clone(),
        layer: c.layer.clone(),
        gene_col: c.gene_col(),
        label_key: a.label_key.clone(),
        batch_key: a.batch_key.clone(),
        model_dir: a.model.clone(),
        output: a.output.clone(),
        device: c.device()?,
        config,
        validation_fraction: c.validation_fraction.unwrap_or(0.1),
        resume: c.resume,
        dsbn: a.dsbn,
        explicit_zero_prob: a.explicit_zero_prob,
        balance_classes: a.balance_classes,
        cell_emb: a.cell_emb,
        dropout: c.dropout,
    };
    let mut p = Printer::new();
    let summary = run_finetune(&req, &mut |e| {
        match e {
            FinetuneEvent::Device(d) => eprintln!("device: {d}"),
            FinetuneEvent::ModelLoaded(r) => {
                eprintln!("model: {}", r.render());
                if !r.missing.is_empty() || !r.mismatched.is_empty() {
                    eprintln!(
                        "model: {} new or resized weight(s) start from initialisation: {}",
                        r.missing.len() + r.mismatched.len(),
                        r.missing
                            .iter()
                            .chain(r.mismatched.iter().map(|m| &m.0))
                            .take(6)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            FinetuneEvent::Data {
                n_train,
                n_valid,
                classes,
                batches,
                genes_matched,
                empty_cells,
            } => eprintln!(
                "data: {n_train} training and {n_valid} validation cells, {} classes, {} batches, \
                 {genes_matched} genes in the vocabulary{}",
                classes.len(),
                batches.len(),
                if empty_cells > 0 {
                    format!(", {empty_cells} cells without expressed genes left out")
                } else {
                    String::new()
                }
            ),
            FinetuneEvent::Train(t) => p.train(t),
        }
        ControlFlow::Continue(())
    })
    .with_context(|| format!("cellforge finetune {}", a.reference.display()))?;
    let h = &summary.history;
    eprintln!(
        "fine-tuned on {} cells in {:.1} s ({} steps) on {}; best epoch {}, validation loss {}; \
         model in {}",
        summary.n_train,
        h.seconds,
        h.steps,
        summary.device.name,
        h.best_epoch.map_or("-".into(), |e| (e + 1).to_string()),
        h.best_loss.map_or("-".into(), |l| format!("{l:.4}")),
        a.output.display()
    );
    Ok(())
}

pub fn run_pretrain_cmd(a: &PretrainArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let base = TrainConfig::pretrain_recipe();
    let config = TrainConfig {
        tokens: TokenSettings {
            max_len: c.max_len.unwrap_or(base.tokens.max_len).max(3),
            ..base.tokens.clone()
        },
        generative: Some(GenerativeSettings {
            mvc: !a.no_mvc,
            cell_prompt_after: Some(a.cell_prompt_after),
            ..GenerativeSettings::default()
        }),
        ..c.apply(base)?
    };
    let req = PretrainRequest {
        corpus: a.corpus.clone(),
        layer: c.layer.clone(),
        gene_col: c.gene_col(),
        output: a.output.clone(),
        device: c.device()?,
        size: ModelSize {
            d_model: a.d_model,
            nlayers: a.nlayers,
            nhead: a.nhead,
            d_hid: a.d_hid.unwrap_or(a.d_model),
            dropout: c.dropout,
        },
        vocab: a.vocab.clone(),
        config,
        validation_fraction: c.validation_fraction.unwrap_or(0.03),
        resume: c.resume,
        token_cache: a.token_cache,
    };
    let mut p = Printer::new();
    let summary = run_pretrain(&req, &mut |e| {
        match e {
            PretrainEvent::Device(d) => eprintln!("device: {d}"),
            PretrainEvent::Corpus {
                files,
                cells,
                tokens,
                vocab,
            } => eprintln!(
                "corpus: {files} file(s), {cells} cells, {tokens} tokens; vocabulary {vocab}"
            ),
            PretrainEvent::Train(t) => p.train(t),
        }
        ControlFlow::Continue(())
    })
    .context("cellforge pretrain")?;
    let h = &summary.history;
    eprintln!(
        "pretrained a {}-parameter model on {} cells in {:.1} s ({} steps) on {}; best epoch {}, \
         validation loss {}; model in {}",
        summary.parameters,
        summary.n_train,
        h.seconds,
        h.steps,
        summary.device.name,
        h.best_epoch.map_or("-".into(), |e| (e + 1).to_string()),
        h.best_loss.map_or("-".into(), |l| format!("{l:.4}")),
        a.output.display()
    );
    Ok(())
}

fn parse_cell_emb(s: &str) -> Result<CellEmbStyle, String> {
    let name = if matches!(s, "avg" | "mean") {
        "avg-pool"
    } else {
        s
    };
    CellEmbStyle::from_name(name)
        .ok_or_else(|| format!("unknown cell embedding \"{s}\" (use cls, avg-pool or w-pool)"))
}
