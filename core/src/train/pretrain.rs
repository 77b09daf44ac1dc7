//! Generative pretraining from scratch (SCGPT_SPEC 1.17): each minibatch splits every
//! cell's expressed genes at a ratio drawn from {0.25, 0.5, 0.75} into known ("pcpt",
//! gene + value) and generated ("gen", gene + flag embedding) tokens; the model predicts
//! the generated values (GEP on gen tokens), the MVC decoder predicts them from the cell
//! embedding, and after a warm-up a second, cell-prompted pass (the detached cell
//! embedding in place of `<cls>`) predicts them again.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::device::{DeviceChoice, DeviceRequest, OnAutodiff, dispatch_autodiff};
use crate::model::config::{
    CellEmbStyle, InputEmbStyle, InputNorm, ModelConfig, ModelKind, MvcStyle,
};
use crate::model::{ForwardError, ScGpt};
use crate::tl::embed_job::{GeneColumn, gene_names};
use crate::tokenize::{CellTokens, Rng};
use crate::vocab::GeneVocab;

use super::cache::{CacheWriter, TokenSink};
use super::data::{CellQuery, CellSet, split};
use super::{History, Losses, TrainConfig, TrainError, TrainEvent, loss, train};

/// Generative objective settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerativeSettings {
    /// Fractions of each cell's genes to generate; one is drawn per minibatch.
    pub ratios: Vec<f64>,
    /// Add the MVC (GEPC) loss on the generated genes.
    pub mvc: bool,
    /// Start the cell-prompted second pass after this many steps (scGPT: 1000).
    pub cell_prompt_after: Option<u64>,
}

impl Default for GenerativeSettings {
    fn default() -> Self {
        Self {
            ratios: vec![0.25, 0.5, 0.75],
            mvc: true,
            cell_prompt_after: Some(1000),
        }
    }
}

/// A generative minibatch on the host.
#[derive(Clone, Debug)]
pub struct GenHost {
    pub n: usize,
    pub lp: usize,
    pub lg: usize,
    pub pcpt_genes: Vec<u32>,
    pub pcpt_values: Vec<f32>,
    pub gen_genes: Vec<u32>,
    pub gen_target: Vec<f32>,
}

/// scGPT's `DataCollator` in "both" mode for the cells `cells`: `max_len` = the longest cell
/// (at most `max_seq_len`), `gen_len = (max_len - 1) * ratio`, the rest known. Returns
/// `None` when the cells are too short to generate anything.
pub fn gen_host_batch(
    cells: &[CellTokens],
    ratio: f64,
    max_seq_len: usize,
    pad_id: u32,
    pad_value: f32,
    rng: &mut Rng,
) -> Option<GenHost> {
    let longest = cells.iter().map(|c| c.genes.len()).max()?;
    let max_len = longest.min(max_seq_len);
    let lg = ((max_len.saturating_sub(1)) as f64 * ratio) as usize;
    let lp = max_len - lg;
    if lg == 0 || lp == 0 {
        return None;
    }
    let n = cells.len();
    let mut h = GenHost {
        n,
        lp,
        lg,
        pcpt_genes: vec![pad_id; n * lp],
        pcpt_values: vec![pad_value; n * lp],
        gen_genes: vec![pad_id; n * lg],
        gen_target: vec![pad_value; n * lg],
    };
    for (i, c) in cells.iter().enumerate() {
        // Position 0 is <cls>; the rest are the cell's genes.
        let mut rest: Vec<usize> = (1..c.genes.len()).collect();
        rng.shuffle(&mut rest);
        let n_gen = (rest.len() as f64 * ratio) as usize;
        let (generated, known) = rest.split_at(n_gen);
        let mut known = known.to_vec();
        rng.shuffle(&mut known);
        let mut pcpt = vec![0usize];
        pcpt.extend(known.iter().take(lp - 1));
        for (j, &p) in pcpt.iter().enumerate() {
            h.pcpt_genes[i * lp + j] = c.genes[p];
            h.pcpt_values[i * lp + j] = c.values[p];
        }
        for (j, &p) in generated.iter().take(lg).enumerate() {
            h.gen_genes[i * lg + j] = c.genes[p];
            h.gen_target[i * lg + j] = c.values[p];
        }
    }
    Some(h)
}

/// The generative losses of one minibatch: `gen` (and `gen_mvc`, and `gen_prompt` once the
/// cell-prompted pass is on).
pub fn generative_losses<B: Backend>(
    model: &ScGpt<B>,
    h: &GenHost,
    pad_id: u32,
    settings: &GenerativeSettings,
    cell_prompt: bool,
    device: &B::Device,
) -> Result<Losses<B>, TrainError> {
    let ints = |v: &[u32], l: usize| {
        Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(),
                [h.n, l],
            ),
            device,
        )
    };
    let pads = |v: &[u32], l: usize| {
        Tensor::<B, 2, Bool>::from_data(
            TensorData::new(v.iter().map(|&x| x == pad_id).collect::<Vec<_>>(), [h.n, l]),
            device,
        )
    };
    let pcpt_src = ints(&h.pcpt_genes, h.lp);
    let gen_src = ints(&h.gen_genes, h.lg);
    let pcpt_values =
        Tensor::<B, 2>::from_data(TensorData::new(h.pcpt_values.clone(), [h.n, h.lp]), device);
    let target =
        Tensor::<B, 2>::from_data(TensorData::new(h.gen_target.clone(), [h.n, h.lg]), device);
    let gen_pad = pads(&h.gen_genes, h.lg);
    let keep = gen_pad.clone().bool_not().float();
    let out = model.forward_generative(
        pcpt_src.clone(),
        pcpt_values.clone(),
        pads(&h.pcpt_genes, h.lp),
        gen_src.clone(),
        gen_pad.clone(),
        None,
    )?;
    let mut terms = vec![(
        "gen",
        1.0,
        loss::masked_mse(out.gen_mlm_output, target.clone(), keep.clone()),
    )];
    if settings.mvc {
        let dec = model
            .mvc_decoder
            .as_ref()
            .ok_or(ForwardError::MissingHead("MVC"))?;
        let genes = model.encoder.forward(gen_src.clone());
        let (pred, _) = dec.forward(out.cell_emb.clone(), genes);
        terms.push((
            "gen_mvc",
            1.0,
            loss::masked_mse(pred, target.clone(), keep.clone()),
        ));
    }
    if cell_prompt {
        let again = model.forward_generative(
            pcpt_src,
            pcpt_values,
            pads(&h.pcpt_genes, h.lp),
            gen_src,
            gen_pad,
            Some(out.cell_emb.detach()),
        )?;
        terms.push((
            "gen_prompt",
            1.0,
            loss::masked_mse(again.gen_mlm_output, target, keep),
        ));
    }
    let mut total: Option<Tensor<B, 1>> = None;
    for (_, _, t) in &terms {
        total = Some(match total {
            Some(s) => s + t.clone(),
            None => t.clone(),
        });
    }
    let total = total.ok_or_else(|| TrainError::Objectives("no generative term".into()))?;
    Ok(Losses {
        terms,
        total,
        cls_logits: None,
        bn: Vec::new(),
    })
}

/// Model sizes for a model trained from scratch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelSize {
    pub d_model: usize,
    pub nlayers: usize,
    pub nhead: usize,
    pub d_hid: usize,
    pub dropout: f32,
}

/// A generative scGPT-architecture model configuration for `ntoken` tokens.
pub fn pretrain_config(ntoken: usize, size: &ModelSize, max_seq_len: usize) -> ModelConfig {
    ModelConfig {
        kind: ModelKind::Transformer,
        ntoken,
        d_model: size.d_model,
        nhead: size.nhead,
        d_hid: size.d_hid,
        nlayers: size.nlayers,
        nlayers_cls: 3,
        n_cls: None,
        dropout: size.dropout,
        pad_token: "<pad>".into(),
        pad_value: -2.0,
        mask_value: -1.0,
        n_bins: 51,
        max_seq_len,
        input_emb_style: InputEmbStyle::Continuous,
        n_input_bins: None,
        cell_emb_style: CellEmbStyle::Cls,
        mvc: Some(MvcStyle::InnerProduct),
        explicit_zero_prob: false,
        input_norm: InputNorm::None,
        num_batch_labels: None,
        dab_classes: None,
        pre_norm: false,
        generative: true,
        ecs_threshold: 0.3,
    }
}

/// Everything a pretraining run needs.
#[derive(Clone, Debug)]
pub struct PretrainRequest {
    /// h5ad files; folders stand for every `.h5ad` inside.
    pub corpus: Vec<PathBuf>,
    pub layer: Option<String>,
    pub gene_col: GeneColumn,
    pub output: PathBuf,
    pub device: DeviceRequest,
    pub size: ModelSize,
    /// An existing vocabulary (e.g. scGPT's); otherwise the corpus genes plus specials.
    pub vocab: Option<PathBuf>,
    pub config: TrainConfig,
    pub validation_fraction: f64,
    pub resume: bool,
    /// Keep tokens in a memory-mapped cache file in the output folder instead of RAM.
    pub token_cache: bool,
}

/// Events of a pretraining job.
#[derive(Clone, Debug)]
pub enum PretrainEvent {
    Device(DeviceChoice),
    Corpus {
        files: usize,
        cells: usize,
        tokens: u64,
        vocab: usize,
    },
    Train(TrainEvent),
}

/// How a pretraining run went.
#[derive(Clone, Debug)]
pub struct PretrainSummary {
    pub device: DeviceChoice,
    pub history: History,
    pub n_train: usize,
    pub n_valid: usize,
    pub parameters: usize,
}

/// The h5ad files of a corpus (folders expanded, sorted).
pub fn corpus_files(corpus: &[PathBuf]) -> Result<Vec<PathBuf>, TrainError> {
    let mut files = Vec::new();
    for p in corpus {
        if p.is_dir() {
            let rd = std::fs::read_dir(p)
                .map_err(|e| TrainError::Input(format!("{}: {e}", p.display())))?;
            let mut inner: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "h5ad"))
                .collect();
            inner.sort();
            files.extend(inner);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(TrainError::Input(format!(
                "{}: no such file or folder",
                p.display()
            )));
        }
    }
    if files.is_empty() {
        return Err(TrainError::Input("the corpus holds no .h5ad file".into()));
    }
    Ok(files)
}

fn read_genes(
    path: &Path,
    layer: Option<&str>,
    col: &GeneColumn,
) -> Result<Vec<String>, TrainError> {
    let matrix = super::data::matrix_path(layer);
    let b =
        crate::io::BackedH5ad::open_matrix(path, &matrix).map_err(|source| TrainError::Read {
            path: path.display().to_string(),
            source,
        })?;
    gene_names(&b.var, col).map_err(TrainError::Input)
}

/// Run a pretraining job to completion (or cancellation).
pub fn run_pretrain(
    req: &PretrainRequest,
    events: &mut dyn FnMut(PretrainEvent) -> ControlFlow<()>,
) -> Result<PretrainSummary, TrainError> {
    let choice = crate::device::choose(req.device).map_err(TrainError::Device)?;
    let _ = events(PretrainEvent::Device(choice.clone()));
    struct Job<'a> {
        req: &'a PretrainRequest,
        choice: DeviceChoice,
        events: &'a mut dyn FnMut(PretrainEvent) -> ControlFlow<()>,
    }
    impl OnAutodiff for Job<'_> {
        type Output = Result<PretrainSummary, TrainError>;
        fn run<B: AutodiffBackend>(self, device: &B::Device) -> Self::Output {
            run_on::<B>(self.req, self.choice, device, self.events)
        }
    }
    let kind = choice.backend;
    let job = Job {
        req,
        choice,
        events,
    };
    dispatch_autodiff(kind, job)
}

fn run_on<B: AutodiffBackend>(
    req: &PretrainRequest,
    choice: DeviceChoice,
    device: &B::Device,
    events: &mut dyn FnMut(PretrainEvent) -> ControlFlow<()>,
) -> Result<PretrainSummary, TrainError> {
    let files = corpus_files(&req.corpus)?;
    for f in &files {
        if crate::io::same_file(f, &req.output) {
            return Err(TrainError::Input(format!(
                "the output {} is a corpus file",
                req.output.display()
            )));
        }
    }
    let vocab = match &req.vocab {
        Some(p) => GeneVocab::from_json_file(p).map_err(|e| TrainError::Input(e.to_string()))?,
        None => {
            let mut genes: Vec<String> = Vec::new();
            for f in &files {
                genes.extend(read_genes(f, req.layer.as_deref(), &req.gene_col)?);
            }
            genes.retain(|g| !g.is_empty() && !g.starts_with('<'));
            genes.sort();
            genes.dedup();
            genes.extend(["<pad>", "<cls>", "<eoc>"].map(String::from));
            GeneVocab::from_tokens(genes).map_err(TrainError::Input)?
        }
    };
    let mut cfg = req.config.clone();
    cfg.tokens.cls_value = -2.0;
    cfg.tokens.pad_value = -2.0;
    cfg.tokens.mask_value = -1.0;
    cfg.tokens.include_zero_genes = false;
    if cfg.generative.is_none() {
        cfg.generative = Some(GenerativeSettings::default());
    }
    std::fs::create_dir_all(&req.output)
        .map_err(|e| TrainError::Input(format!("{}: {e}", req.output.display())))?;
    let mut sink = if req.token_cache {
        TokenSink::File(
            CacheWriter::create(&req.output.join("tokens.cftok"))
                .map_err(|e| TrainError::Input(e.to_string()))?,
        )
    } else {
        TokenSink::Memory(Vec::new())
    };
    let mut set = CellSet::default();
    for (fi, f) in files.iter().enumerate() {
        let part = CellQuery {
            path: f,
            layer: req.layer.as_deref(),
            gene_col: &req.gene_col,
            vocab: &vocab,
            label_key: None,
            batch_key: None,
            fixed_classes: None,
            fixed_batches: None,
            tokens: &cfg.tokens,
            seed: cfg.seed.wrapping_add(fi as u64),
            keep_counts: false,
        }
        .read_into(&mut sink)?;
        let base = set.n_rows;
        set.rows.extend(part.rows.iter().map(|r| base + r));
        set.labels.extend(part.labels);
        // The source file is the cell's batch.
        set.batches
            .extend(std::iter::repeat_n(Some(fi as u32), part.rows.len()));
        set.n_rows += part.n_rows;
        set.empty_rows
            .extend(part.empty_rows.iter().map(|r| base + r));
        set.genes_matched = set.genes_matched.max(part.genes_matched);
    }
    set.batch_names = files.iter().map(|f| f.display().to_string()).collect();
    set.cells = sink
        .finish()
        .map_err(|e| TrainError::Input(e.to_string()))?;
    let tokens: u64 = (0..set.cells.len())
        .map(|i| set.cells.cell_len(i) as u64)
        .sum();
    let _ = events(PretrainEvent::Corpus {
        files: files.len(),
        cells: set.cells.len(),
        tokens,
        vocab: vocab.len(),
    });
    let items: Vec<usize> = (0..set.cells.len()).collect();
    let (train_items, valid_items) = split(&items, req.validation_fraction, cfg.seed);
    let mc = pretrain_config(vocab.len(), &req.size, cfg.tokens.max_len);
    mc.validate()?;
    B::seed(device, cfg.seed);
    let mut model = ScGpt::<B>::init(&mc, device);
    model.set_gene_padding_idx(vocab.id("<pad>").map(|i| i as usize));
    let parameters = burn::module::Module::num_params(&model);
    let provenance = serde_json::json!({
        "task": "pretrain",
        "corpus": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "layer": req.layer,
        "size": req.size,
        "train": &cfg,
        "cellforge": env!("CARGO_PKG_VERSION"),
    });
    let (_, history) = train(
        model,
        &vocab,
        &set,
        &train_items,
        &valid_items,
        &cfg,
        &req.output,
        req.resume,
        device,
        &provenance,
        &mut |e| events(PretrainEvent::Train(e)),
    )?;
    Ok(PretrainSummary {
        device: choice,
        history,
        n_train: train_items.len(),
        n_valid: valid_items.len(),
        parameters,
    })
}
