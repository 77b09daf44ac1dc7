//! The fine-tuning job on files: a model folder (scGPT release or cellforge) and a
//! labelled reference h5ad in, a fine-tuned cellforge model folder out (weights, config,
//! vocabulary, `labels.json` with the classes and tokenisation, `train_log.json`).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::device::{DeviceChoice, DeviceRequest, OnAutodiff, dispatch_autodiff};
use crate::model::config::{CellEmbStyle, InputNorm, MvcStyle};
use crate::model::weights::load_matching;
use crate::model::{LoadReport, ModelConfig, ModelFiles, ScGpt};
use crate::tl::embed_job::GeneColumn;

use super::data::{CellQuery, TokenSettings, split, split_stratified};
use super::{History, TrainConfig, TrainError, TrainEvent, train};

/// Name of the file describing a fine-tuned model's classes and tokenisation.
pub const LABELS_FILE: &str = "labels.json";

/// What a fine-tuned model needs to be applied to new data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelLabels {
    pub label_key: Option<String>,
    pub classes: Vec<String>,
    pub batch_key: Option<String>,
    pub batches: Vec<String>,
    pub tokens: TokenSettings,
    pub use_batch_labels: bool,
    pub reference: String,
}

impl ModelLabels {
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(LABELS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            TrainError::Input(format!(
                "{}: {e} (is {} a model fine-tuned by cellforge?)",
                path.display(),
                dir.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))
    }
}

/// Everything a fine-tuning run needs.
#[derive(Clone, Debug)]
pub struct FinetuneRequest {
    pub reference: PathBuf,
    pub layer: Option<String>,
    pub gene_col: GeneColumn,
    pub label_key: Option<String>,
    pub batch_key: Option<String>,
    pub model_dir: PathBuf,
    pub output: PathBuf,
    pub device: DeviceRequest,
    /// Training settings; `config.tokens` pad/mask/bins are taken from the model.
    pub config: TrainConfig,
    pub validation_fraction: f64,
    pub resume: bool,
    /// Domain-specific batch norm (one BatchNorm per batch label).
    pub dsbn: bool,
    /// Zero-probability heads on the decoders (Bernoulli NLL terms).
    pub explicit_zero_prob: bool,
    /// Weigh the CLS loss by inverse class frequency (scikit-learn's "balanced").
    pub balance_classes: bool,
    /// How the classifier reads the cell from the transformer output; `None` keeps the
    /// base model's style (`<cls>` for scGPT's releases). Mean pooling reaches every
    /// gene token in one step, which suits small models trained on few cells.
    pub cell_emb: Option<CellEmbStyle>,
    pub dropout: f32,
}

/// Events of a fine-tuning job.
#[derive(Clone, Debug)]
pub enum FinetuneEvent {
    Device(DeviceChoice),
    ModelLoaded(LoadReport),
    Data {
        n_train: usize,
        n_valid: usize,
        classes: Vec<String>,
        batches: Vec<String>,
        genes_matched: usize,
        empty_cells: usize,
    },
    Train(TrainEvent),
}

/// How a finished run went.
#[derive(Clone, Debug)]
pub struct FinetuneSummary {
    pub device: DeviceChoice,
    pub history: History,
    pub n_train: usize,
    pub n_valid: usize,
    pub classes: Vec<String>,
}

/// The fine-tuning model's configuration: the pretrained one plus the heads the
/// objectives need (scGPT builds the same heads from the tutorial flags).
pub fn finetune_config(
    base: &ModelConfig,
    cfg: &TrainConfig,
    n_classes: usize,
    n_batches: usize,
    dsbn: bool,
    explicit_zero_prob: bool,
    dropout: f32,
) -> ModelConfig {
    let mut c = base.clone();
    let o = &cfg.objectives;
    c.dropout = dropout;
    c.ecs_threshold = o.ecs_threshold as f32;
    if o.cls > 0.0 {
        c.n_cls = Some(n_classes);
    }
    if o.gepc > 0.0 && c.mvc.is_none() {
        c.mvc = Some(MvcStyle::InnerProduct);
    }
    if cfg.use_batch_labels {
        c.num_batch_labels = Some(n_batches);
    }
    if dsbn {
        c.input_norm = InputNorm::Dsbn {
            num_domains: n_batches,
        };
    }
    if o.dar > 0.0 {
        c.dab_classes = Some(n_batches);
    }
    c.explicit_zero_prob |= explicit_zero_prob;
    c
}

/// Run a fine-tuning job to completion (or cancellation).
pub fn run_finetune(
    req: &FinetuneRequest,
    events: &mut dyn FnMut(FinetuneEvent) -> ControlFlow<()>,
) -> Result<FinetuneSummary, TrainError> {
    if crate::io::same_file(&req.reference, &req.output) {
        return Err(TrainError::Input(format!(
            "the output {} is the reference dataset",
            req.output.display()
        )));
    }
    let files = ModelFiles::open(&req.model_dir)?;
    let choice = crate::device::choose(req.device).map_err(TrainError::Device)?;
    let _ = events(FinetuneEvent::Device(choice.clone()));
    struct Job<'a> {
        req: &'a FinetuneRequest,
        files: &'a ModelFiles,
        choice: DeviceChoice,
        events: &'a mut dyn FnMut(FinetuneEvent) -> ControlFlow<()>,
    }
    impl OnAutodiff for Job<'_> {
        type Output = Result<FinetuneSummary, TrainError>;
        fn run<B: AutodiffBackend>(self, device: &B::Device) -> Self::Output {
            run_on::<B>(self.req, self.files, self.choice, device, self.events)
        }
    }
    let kind = choice.backend;
    let job = Job {
        req,
        files: &files,
        choice,
        events,
    };
    dispatch_autodiff(kind, job)
}

fn run_on<B: AutodiffBackend>(
    req: &FinetuneRequest,
    files: &ModelFiles,
    choice: DeviceChoice,
    device: &B::Device,
    events: &mut dyn FnMut(FinetuneEvent) -> ControlFlow<()>,
) -> Result<FinetuneSummary, TrainError> {
    let mut cfg = req.config.clone();
    let base = &files.config;
    cfg.tokens.pad_value = base.pad_value;
    cfg.tokens.mask_value = base.mask_value;
    cfg.tokens.n_bins = base.n_bins;
    let o = cfg.objectives.clone();
    if o.cls > 0.0 && req.label_key.is_none() {
        return Err(TrainError::Input(
            "the CLS objective needs --label-key (the obs column with cell types)".into(),
        ));
    }
    let needs_batches = cfg.use_batch_labels || req.dsbn || o.dar > 0.0;
    if needs_batches && req.batch_key.is_none() {
        return Err(TrainError::Input(
            "batch tokens, DSBN and DAR need --batch-key (the obs column with batches)".into(),
        ));
    }
    cfg.by_batch |= req.dsbn;
    if let Some(d) = cfg.augment_depth
        && !(d > 0.0 && d <= 1.0)
    {
        return Err(TrainError::Input(format!(
            "depth augmentation: the smallest fraction of molecules kept must be in (0, 1], not {d}"
        )));
    }
    let set = CellQuery {
        path: &req.reference,
        layer: req.layer.as_deref(),
        gene_col: &req.gene_col,
        vocab: &files.vocab,
        label_key: req.label_key.as_deref().filter(|_| o.cls > 0.0),
        batch_key: req.batch_key.as_deref().filter(|_| needs_batches),
        fixed_classes: None,
        fixed_batches: None,
        tokens: &cfg.tokens,
        seed: cfg.seed,
        keep_counts: cfg.augment_depth.is_some(),
    }
    .read()?;
    // Cells without a label (or batch, when needed) cannot take part.
    let usable: Vec<usize> = (0..set.cells.len())
        .filter(|&i| o.cls <= 0.0 || set.labels[i].is_some())
        .filter(|&i| !needs_batches || set.batches[i].is_some())
        .collect();
    if usable.is_empty() {
        return Err(TrainError::Input(format!(
            "{} has no cell with both expressed vocabulary genes and the needed labels",
            req.reference.display()
        )));
    }
    // Stratified by cell type when classifying, so rare types keep their few cells in
    // training and the validation set (which picks the best epoch) holds every common one.
    let (train_items, valid_items) = if o.cls > 0.0 {
        split_stratified(&usable, &set.labels, req.validation_fraction, cfg.seed)
    } else {
        split(&usable, req.validation_fraction, cfg.seed)
    };
    if req.balance_classes && cfg.objectives.cls > 0.0 {
        cfg.objectives.class_weights =
            super::balanced_class_weights(&set.labels, &train_items, set.class_names.len());
    }
    let _ = events(FinetuneEvent::Data {
        n_train: train_items.len(),
        n_valid: valid_items.len(),
        classes: set.class_names.clone(),
        batches: set.batch_names.clone(),
        genes_matched: set.genes_matched,
        empty_cells: set.empty_rows.len(),
    });
    let mut mc = finetune_config(
        base,
        &cfg,
        set.class_names.len().max(1),
        set.batch_names.len().max(1),
        req.dsbn,
        req.explicit_zero_prob,
        req.dropout,
    );
    if let Some(style) = req.cell_emb {
        mc.cell_emb_style = style;
    }
    mc.validate()?;
    // New heads start from seeded weights, so a run is reproducible (and resumable).
    B::seed(device, cfg.seed);
    let mut model = ScGpt::<B>::init(&mc, device);
    model.set_gene_padding_idx(files.pad_id());
    let report = load_matching(&mut model, &files.weights, device);
    let _ = events(FinetuneEvent::ModelLoaded(report));
    let labels = ModelLabels {
        label_key: req.label_key.clone().filter(|_| o.cls > 0.0),
        classes: set.class_names.clone(),
        batch_key: req.batch_key.clone().filter(|_| needs_batches),
        batches: set.batch_names.clone(),
        tokens: cfg.tokens.clone(),
        use_batch_labels: cfg.use_batch_labels,
        reference: req.reference.display().to_string(),
    };
    let out = req.output.clone();
    std::fs::create_dir_all(&out)
        .map_err(|e| TrainError::Input(format!("{}: {e}", out.display())))?;
    let provenance = serde_json::json!({
        "task": "finetune",
        "base_model": req.model_dir.display().to_string(),
        "reference": req.reference.display().to_string(),
        "objectives": cfg.objectives,
        "train": &cfg,
        "cellforge": env!("CARGO_PKG_VERSION"),
    });
    let text =
        serde_json::to_string_pretty(&labels).map_err(|e| TrainError::Input(e.to_string()))?;
    crate::model::write_atomic(&out.join(LABELS_FILE), text.as_bytes())?;
    let (_, history) = train(
        model,
        &files.vocab,
        &set,
        &train_items,
        &valid_items,
        &cfg,
        &out,
        req.resume,
        device,
        &provenance,
        &mut |e| events(FinetuneEvent::Train(e)),
    )?;
    Ok(FinetuneSummary {
        device: choice,
        history,
        n_train: train_items.len(),
        n_valid: valid_items.len(),
        classes: set.class_names,
    })
}
