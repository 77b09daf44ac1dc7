//! What the app works on (the open dataset and its working copies, the model) and the jobs
//! that change them. Every job reads its inputs and writes a new working file in the
//! session folder; the file the user opened is only ever read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cellforge_core::anndata::{AnnData, Categorical, Element, Mapping};
use cellforge_core::device::DeviceRequest;
use cellforge_core::io::{read_h5ad_with_warnings, write_h5ad};
use cellforge_core::model::ModelFiles;
use cellforge_core::summary::Summary;
use cellforge_core::tl::annotate::{AnnotateEvent, AnnotateRequest, run_annotate};
use cellforge_core::tl::embed::EmbedOptions;
use cellforge_core::tl::embed_job::{EmbedEvent, EmbedRequest, GeneColumn, run_embed};
use cellforge_core::tl::labels::LabelSession;
use cellforge_core::train::finetune::{FinetuneEvent, FinetuneRequest, ModelLabels, run_finetune};
use cellforge_core::train::{Objectives, TrainConfig, TrainError, TrainEvent};
use cellforge_core::vocab::GeneVocab;

use super::jobs::{Failure, Output, Reporter};

/// The open dataset.
pub struct Dataset {
    /// The file the user opened (never written).
    pub source: PathBuf,
    /// The newest version: `source`, or a working file in the session folder.
    pub current: PathBuf,
    pub adata: Arc<AnnData>,
    pub summary: Box<Summary>,
    pub warnings: Vec<String>,
    /// What was done to the data since it was opened, oldest first.
    pub steps: Vec<String>,
    /// Bumped whenever `adata` is replaced.
    pub version: u64,
}

/// A model folder the user opened.
pub struct ModelInfo {
    pub dir: PathBuf,
    /// "2 layers x 64 dims, 4 heads, FFN 64".
    pub architecture: String,
    pub vocab: Arc<GeneVocab>,
    pub max_seq_len: usize,
    /// Cell types of its classifier (empty: no classifier; fine-tune it first).
    pub classes: Vec<String>,
    pub label_key: Option<String>,
}

/// The session folder: working files, fine-tuned models and the label journal.
pub struct WorkDir {
    pub path: PathBuf,
    counter: u32,
}

impl WorkDir {
    /// A fresh folder under `root`, else `$CELLFORGE_WORK_DIR`, else the system temp folder.
    pub fn create(root: Option<&Path>) -> std::io::Result<Self> {
        let root = root
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CELLFORGE_WORK_DIR").map(PathBuf::from))
            .unwrap_or_else(|| std::env::temp_dir().join("cellforge-sessions"));
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let path = root.join(format!("session-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path, counter: 0 })
    }

    /// A new file or folder name in the session folder.
    pub fn next(&mut self, stem: &str, ext: &str) -> PathBuf {
        self.counter += 1;
        let name = if ext.is_empty() {
            format!("{:02}-{stem}", self.counter)
        } else {
            format!("{:02}-{stem}.{ext}", self.counter)
        };
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    /// Working copies of the data go when the session ends; the label journal (the only
    /// record of unexported edits) and fine-tuned models stay.
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.path) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() && p.extension().is_some_and(|x| x == "h5ad") {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

fn read_dataset(path: &Path) -> Result<(AnnData, Vec<String>), Failure> {
    read_h5ad_with_warnings(path)
        .map(|(a, w)| (a, w.iter().map(|w| w.to_string()).collect()))
        .map_err(|e| {
            Failure::new(
                format!(
                    "Could not open {}",
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| path.display().to_string())
                ),
                e,
            )
        })
}

/// Opened dataset, summarised.
pub fn open(path: &Path, r: &Reporter) -> Result<(AnnData, Box<Summary>, Vec<String>), Failure> {
    r.stage(format!("Reading {}", path.display()));
    let (adata, warnings) = read_dataset(path)?;
    let size = std::fs::metadata(path).ok().map(|m| m.len());
    let summary = Box::new(Summary::of(&adata, size));
    Ok((adata, summary, warnings))
}

/// Reads a model folder's configuration, vocabulary and classes.
pub fn open_model(dir: &Path) -> Result<ModelInfo, Failure> {
    let files = ModelFiles::open(dir).map_err(|e| {
        Failure::new(
            "This folder is not a model cellforge can use (scGPT release or cellforge model)",
            format!("{}: {e}", dir.display()),
        )
    })?;
    let c = &files.config;
    let labels = ModelLabels::read(dir).ok();
    Ok(ModelInfo {
        dir: dir.to_path_buf(),
        architecture: format!(
            "{} layers × {} dims, {} heads, FFN {}",
            c.nlayers, c.d_model, c.nhead, c.d_hid
        ),
        max_seq_len: c.max_seq_len,
        vocab: Arc::new(files.vocab),
        classes: labels
            .as_ref()
            .map(|l| l.classes.clone())
            .unwrap_or_default(),
        label_key: labels.and_then(|l| l.label_key),
    })
}

fn dataset_output(path: PathBuf, message: String, r: &Reporter) -> Result<Output, Failure> {
    r.stage("Reading the result");
    let (adata, _) = read_dataset(&path)?;
    Ok(Output::Dataset {
        adata: Box::new(adata),
        path,
        message,
    })
}

/// Settings of the embed step.
#[derive(Clone, Debug)]
pub struct EmbedSettings {
    pub batch_size: usize,
    pub max_length: usize,
}

impl Default for EmbedSettings {
    fn default() -> Self {
        let o = EmbedOptions::default();
        Self {
            batch_size: o.batch_size,
            max_length: o.max_length,
        }
    }
}

pub fn embed(
    input: PathBuf,
    model_dir: PathBuf,
    output: PathBuf,
    device: DeviceRequest,
    s: EmbedSettings,
    r: &Reporter,
) -> Result<Output, Failure> {
    let req = EmbedRequest {
        input,
        model_dir,
        output: output.clone(),
        gene_col: GeneColumn::Index,
        device,
        precision: cellforge_core::device::Precision::Auto,
        key_added: "X_scGPT".into(),
        options: EmbedOptions {
            batch_size: s.batch_size.max(1),
            max_length: s.max_length.max(2),
            ..EmbedOptions::default()
        },
    };
    r.stage("Loading the model");
    let mut batch_now = req.options.batch_size;
    let summary = run_embed(&req, &mut |e| {
        match e {
            EmbedEvent::Device(d) => r.log(format!("device: {d}")),
            EmbedEvent::ModelLoaded { summary, .. } => r.log(format!("model: {summary}")),
            EmbedEvent::GenesMatched(m, vocab) => {
                r.log(format!("genes: {}", m.render(vocab)));
                r.stage("Embedding");
            }
            EmbedEvent::Progress(p) => {
                if p.batch_size < batch_now {
                    batch_now = p.batch_size;
                    r.log(format!(
                        "the device ran out of memory: continuing with {} cells per batch",
                        p.batch_size
                    ));
                }
                r.progress(p.cells_done as u64, p.cells_total as u64)
            }
            EmbedEvent::Writing => r.stage("Writing"),
        }
        r.flow()
    })
    .map_err(|e| Failure::new("Embedding failed", e))?;
    let msg = format!(
        "Embedded {} cells in {:.1} s on {} (obsm X_scGPT)",
        cellforge_core::fmt::thousands(summary.n_cells as u64),
        summary.seconds,
        summary.device.name
    );
    r.log(msg.clone());
    dataset_output(output, msg, r)
}

/// Settings of the neighbours + UMAP step.
#[derive(Clone, Debug)]
pub struct UmapSettings {
    /// obsm key of the representation (`X_scGPT`, `X_pca`, ...).
    pub use_rep: String,
    pub n_neighbors: usize,
    pub min_dist: f64,
}

impl Default for UmapSettings {
    fn default() -> Self {
        Self {
            use_rep: "X_scGPT".into(),
            n_neighbors: 15,
            min_dist: 0.5,
        }
    }
}

fn analysis_failure(title: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(title, e)
}

pub fn umap(
    adata: Arc<AnnData>,
    output: PathBuf,
    s: UmapSettings,
    r: &Reporter,
) -> Result<Output, Failure> {
    use cellforge_core::tl::analyze as an;
    let mut a = (*adata).clone();
    r.stage(format!("Neighbours on {}", s.use_rep));
    r.progress(0, 3);
    let p = an::NeighborsParams {
        n_neighbors: s.n_neighbors.max(2),
        use_rep: Some(s.use_rep.clone()),
        ..Default::default()
    };
    an::neighbors(&mut a, &p).map_err(|e| analysis_failure("Neighbour search failed", e))?;
    if r.cancelled() {
        return Err(Failure::new("Cancelled", ""));
    }
    r.progress(1, 3);
    r.stage("UMAP layout");
    let mut up = an::UmapParams::default();
    up.options.min_dist = s.min_dist;
    let u = an::umap(&mut a, &up).map_err(|e| analysis_failure("UMAP failed", e))?;
    if r.cancelled() {
        return Err(Failure::new("Cancelled", ""));
    }
    r.progress(2, 3);
    r.stage("Writing");
    an::write_output(&a, &output).map_err(|e| Failure::new("Could not save the result", e))?;
    r.progress(3, 3);
    let msg = format!(
        "UMAP of {} ({} neighbours) in {:.1} s",
        s.use_rep, p.n_neighbors, u.seconds
    );
    r.log(msg.clone());
    Ok(Output::Dataset {
        adata: Box::new(a),
        path: output,
        message: msg,
    })
}

pub fn leiden(
    adata: Arc<AnnData>,
    output: PathBuf,
    resolution: f64,
    use_rep: String,
    r: &Reporter,
) -> Result<Output, Failure> {
    use cellforge_core::tl::analyze as an;
    let mut a = (*adata).clone();
    r.stage("Neighbours");
    let p = an::NeighborsParams {
        use_rep: Some(use_rep),
        ..Default::default()
    };
    an::ensure_neighbors(&mut a, &p).map_err(|e| analysis_failure("Neighbour search failed", e))?;
    r.stage("Leiden");
    let l = an::leiden(
        &mut a,
        &an::LeidenParams {
            resolution,
            ..Default::default()
        },
    )
    .map_err(|e| analysis_failure("Clustering failed", e))?;
    if r.cancelled() {
        return Err(Failure::new("Cancelled", ""));
    }
    r.stage("Writing");
    an::write_output(&a, &output).map_err(|e| Failure::new("Could not save the result", e))?;
    let msg = format!(
        "Leiden at resolution {resolution}: {} clusters (obs leiden)",
        l.n_clusters
    );
    r.log(msg.clone());
    Ok(Output::Dataset {
        adata: Box::new(a),
        path: output,
        message: msg,
    })
}

/// The fine-tuning form, with scGPT's annotation recipe as defaults.
#[derive(Clone, Debug)]
pub struct FinetuneSettings {
    pub label_key: String,
    /// Empty: no batch column.
    pub batch_key: String,
    pub cls: bool,
    pub cls_weight: f64,
    pub gep: bool,
    pub gep_weight: f64,
    pub gepc: bool,
    pub gepc_weight: f64,
    pub ecs: bool,
    pub ecs_weight: f64,
    pub dar: bool,
    pub dar_weight: f64,
    pub cce: bool,
    pub cce_weight: f64,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub mask_ratio: f64,
    pub validation_fraction: f64,
    pub max_len: usize,
    pub balance_classes: bool,
    /// Mean-pool the cell's genes for the classifier instead of reading `<cls>`.
    pub mean_pool: bool,
    /// Depth augmentation (thin training cells' counts to 30-100 % every step).
    pub augment_depth: bool,
}

impl Default for FinetuneSettings {
    fn default() -> Self {
        let r = TrainConfig::finetune_recipe();
        Self {
            label_key: String::new(),
            batch_key: String::new(),
            cls: true,
            cls_weight: 1.0,
            gep: false,
            gep_weight: 1.0,
            gepc: false,
            gepc_weight: 1.0,
            ecs: false,
            ecs_weight: 10.0,
            dar: false,
            dar_weight: 1.0,
            cce: false,
            cce_weight: 10.0,
            epochs: r.epochs,
            lr: r.lr,
            batch_size: r.batch_size,
            mask_ratio: 0.4,
            validation_fraction: 0.1,
            max_len: r.tokens.max_len,
            balance_classes: false,
            mean_pool: false,
            augment_depth: false,
        }
    }
}

impl FinetuneSettings {
    pub fn objectives(&self) -> Objectives {
        let w = |on: bool, weight: f64| if on { weight } else { 0.0 };
        Objectives {
            cls: w(self.cls, self.cls_weight),
            gep: w(self.gep, self.gep_weight),
            gepc: w(self.gepc, self.gepc_weight),
            ecs: w(self.ecs, self.ecs_weight),
            dar: w(self.dar, self.dar_weight),
            cce: w(self.cce, self.cce_weight),
            ..Objectives::default()
        }
    }

    /// What is wrong with the form, in words, or `None` when it can run.
    pub fn problem(&self) -> Option<String> {
        let o = self.objectives();
        if o.cls + o.gep + o.gepc + o.ecs + o.dar + o.cce <= 0.0 {
            return Some("Pick at least one objective.".into());
        }
        if self.cls && self.label_key.is_empty() {
            return Some("Pick the column with the cell types (needed by CLS).".into());
        }
        if self.dar && self.batch_key.is_empty() {
            return Some("Pick the batch column (needed by DAR).".into());
        }
        None
    }
}

pub fn finetune(
    reference: PathBuf,
    model_dir: PathBuf,
    output: PathBuf,
    device: DeviceRequest,
    s: FinetuneSettings,
    r: &Reporter,
) -> Result<Output, Failure> {
    let objectives = s.objectives();
    let base = TrainConfig::finetune_recipe();
    let mask_ratio = if objectives.needs_mask() {
        s.mask_ratio
    } else {
        0.0
    };
    let config = TrainConfig {
        objectives,
        epochs: s.epochs.max(1),
        lr: s.lr,
        batch_size: s.batch_size.max(1),
        mask_ratio,
        tokens: cellforge_core::train::data::TokenSettings {
            max_len: s.max_len.max(2),
            ..base.tokens.clone()
        },
        use_batch_labels: false,
        augment_depth: s.augment_depth.then_some(0.3),
        ..base
    };
    // Thinning needs counts: the file's `counts` layer when it has one. Bins are ranks within
    // a cell, so they are the same as those of log-normalised X that annotation reads.
    let layer = (s.augment_depth
        && cellforge_core::io::BackedH5ad::open_matrix(&reference, "layers/counts").is_ok())
    .then(|| "counts".to_string());
    let req = FinetuneRequest {
        reference,
        layer,
        gene_col: GeneColumn::Index,
        label_key: (!s.label_key.is_empty()).then(|| s.label_key.clone()),
        batch_key: (!s.batch_key.is_empty()).then(|| s.batch_key.clone()),
        model_dir,
        output: output.clone(),
        device,
        config,
        validation_fraction: s.validation_fraction,
        resume: false,
        dsbn: false,
        explicit_zero_prob: false,
        balance_classes: s.balance_classes,
        cell_emb: s
            .mean_pool
            .then_some(cellforge_core::model::CellEmbStyle::AvgPool),
        dropout: 0.2,
    };
    r.stage("Loading the model");
    let summary = run_finetune(&req, &mut |e| {
        match e {
            FinetuneEvent::Device(d) => r.log(format!("device: {d}")),
            FinetuneEvent::ModelLoaded(rep) => r.log(format!("model: {}", rep.render())),
            FinetuneEvent::Data {
                n_train,
                n_valid,
                classes,
                genes_matched,
                ..
            } => {
                r.log(format!(
                    "data: {n_train} training and {n_valid} validation cells, {} cell types, \
                     {genes_matched} genes in the vocabulary",
                    classes.len()
                ));
                r.stage("Training");
            }
            FinetuneEvent::Train(TrainEvent::Step(st)) => {
                r.train_step(st.step, st.losses.clone());
                r.progress(st.step, st.total_steps);
                r.stage(format!("Training, epoch {}", st.epoch + 1));
            }
            FinetuneEvent::Train(TrainEvent::Validation(v)) => {
                r.validation(v.epoch, v.loss, v.accuracy);
                r.log(format!(
                    "epoch {}: validation loss {:.4}{}",
                    v.epoch + 1,
                    v.loss,
                    v.accuracy
                        .map(|a| format!(", accuracy {:.1}%", a * 100.0))
                        .unwrap_or_default()
                ));
            }
            FinetuneEvent::Train(TrainEvent::BatchReduced { cells }) => r.log(format!(
                "the device ran out of memory: continuing with steps of about {cells} cells"
            )),
            FinetuneEvent::Train(TrainEvent::EarlyStop { epoch }) => {
                r.log(format!("stopped early after epoch {}", epoch + 1))
            }
            FinetuneEvent::Train(_) => {}
        }
        r.flow()
    })
    .map_err(|e| train_failure("Fine-tuning failed", e))?;
    let h = summary.history;
    let msg = format!(
        "Fine-tuned on {} cells in {:.1} s ({} cell types) on {}",
        summary.n_train,
        h.seconds,
        summary.classes.len(),
        summary.device.name
    );
    r.log(msg.clone());
    Ok(Output::Model {
        dir: output,
        message: msg,
        history: Box::new(h),
        classes: summary.classes,
    })
}

pub fn annotate(
    query: PathBuf,
    model_dir: PathBuf,
    output: PathBuf,
    device: DeviceRequest,
    min_confidence: f64,
    r: &Reporter,
) -> Result<Output, Failure> {
    let req = AnnotateRequest {
        model_dir,
        query,
        output: output.clone(),
        layer: None,
        gene_col: GeneColumn::Index,
        key_added: "predicted_cell_type".into(),
        min_confidence,
        device,
        batch_size: 64,
        seed: 0,
    };
    r.stage("Predicting");
    let s = run_annotate(&req, &mut |e| annotate_event(r, e))
        .map_err(|e| train_failure("Annotation failed", e))?;
    let msg = format!(
        "Annotated {} cells ({} below confidence {min_confidence}, labelled Unknown) into obs \
         predicted_cell_type",
        cellforge_core::fmt::thousands(s.n_cells as u64),
        s.n_unknown
    );
    r.log(msg.clone());
    dataset_output(output, msg, r)
}

/// Progress of an annotate or map run, reported to the job bar.
fn annotate_event(r: &Reporter, e: AnnotateEvent) -> std::ops::ControlFlow<()> {
    match e {
        AnnotateEvent::Device(d) => r.log(format!("device: {d}")),
        AnnotateEvent::Progress { done, total } => r.progress(done as u64, total as u64),
        AnnotateEvent::Writing => r.stage("Writing"),
    }
    r.flow()
}

/// An engine error in words (a cancellation is not a failure: the job ends as cancelled).
fn train_failure(title: &str, e: TrainError) -> Failure {
    match e {
        TrainError::Cancelled => Failure::new("Cancelled", ""),
        e => Failure::new(title, e),
    }
}

/// The label column being edited, as it goes into the exported file.
pub struct LabelsToWrite {
    pub column: String,
    pub categories: Vec<String>,
    pub codes: Vec<i32>,
    pub sources: Vec<&'static str>,
    pub metadata: Option<serde_json::Value>,
    pub edits: usize,
}

impl LabelsToWrite {
    pub fn from_session(column: &str, s: &LabelSession, edits: usize) -> Self {
        let c = s.to_column();
        let (categories, codes) = c.into_parts();
        Self {
            column: column.to_string(),
            categories,
            codes,
            sources: s.sources_as_strings(),
            metadata: s.metadata().cloned(),
            edits,
        }
    }
}

/// Writes the annotated dataset: the current data, the edited label column and its
/// per-cell provenance (`<column>_source`: original / model / mapped / manual), and a record
/// of what was done in `uns["cellforge"]["annotation"]`. Written to a temp file next to
/// `path`, fsynced and renamed, so an existing file is replaced whole or not at all.
pub fn export(
    adata: Arc<AnnData>,
    labels: Option<LabelsToWrite>,
    steps: Vec<String>,
    source: PathBuf,
    path: PathBuf,
    r: &Reporter,
) -> Result<Output, Failure> {
    if cellforge_core::io::same_file(&source, &path) {
        return Err(Failure::new(
            "cellforge does not overwrite the file you opened; pick another name",
            path.display(),
        ));
    }
    r.stage("Preparing");
    let mut a = (*adata).clone();
    let mut record = Mapping::new();
    record.insert(
        "source_file".into(),
        Element::String(source.display().to_string()),
    );
    record.insert(
        "steps".into(),
        Element::Strings(cellforge_core::anndata::StringArray::from_vec(steps)),
    );
    let mut note = String::new();
    if let Some(l) = labels {
        if l.codes.len() != a.n_obs() {
            return Err(Failure::new(
                "The labels do not fit this dataset",
                format!("{} labels for {} cells", l.codes.len(), a.n_obs()),
            ));
        }
        // The session's categories in its order (the legend's), codes as they are.
        let k = l.categories.len() as i32;
        let cat = Categorical {
            codes: l
                .codes
                .iter()
                .map(|&c| if (0..k).contains(&c) { c } else { -1 })
                .collect(),
            categories: Box::new(Element::Strings(
                cellforge_core::anndata::StringArray::from_vec(l.categories.clone()),
            )),
            ordered: false,
        };
        a.obs.set_column(&l.column, Element::Categorical(cat));
        let src: Vec<Option<&str>> = l.sources.iter().map(|s| Some(*s)).collect();
        a.obs.set_column(
            &format!("{}_source", l.column),
            Element::Categorical(Categorical::from_labels(&src)),
        );
        record.insert("label_column".into(), Element::String(l.column.clone()));
        record.insert("manual_edits".into(), Element::scalar_i64(l.edits as i64));
        let n_manual = l.sources.iter().filter(|s| **s == "manual").count();
        record.insert("manual_cells".into(), Element::scalar_i64(n_manual as i64));
        if let Some(m) = &l.metadata {
            record.insert("label_metadata".into(), Element::String(m.to_string()));
        }
        note = format!(
            " with obs {} ({} cells labelled by hand)",
            l.column,
            cellforge_core::fmt::thousands(n_manual as u64)
        );
    }
    record.insert(
        "cellforge_version".into(),
        Element::String(env!("CARGO_PKG_VERSION").into()),
    );
    a.record_provenance("annotation", record);
    r.stage("Writing");
    write_h5ad(&a, &path, &Default::default())
        .map_err(|e| Failure::new("Could not write the file; nothing was replaced", e))?;
    let msg = format!("Saved {}{note}", path.display());
    r.log(msg.clone());
    Ok(Output::Exported { path, message: msg })
}

/// scib-style integration metrics of `obsm[rep]` against a label column and an optional batch
/// column, each given as its name and one value per cell.
pub fn integration(
    adata: Arc<AnnData>,
    rep: String,
    (label_key, labels): (String, Vec<Option<String>>),
    (batch_key, batches): (String, Option<Vec<Option<String>>>),
    r: &Reporter,
) -> Result<Output, Failure> {
    use cellforge_core::analysis::integration::{IntegrationOptions, integration_metrics};
    r.stage(format!("Neighbours and clusterings on {rep}"));
    let bad = |e: String| Failure::new("Could not compute the integration metrics", e);
    let m = cellforge_core::tl::analyze::representation(&adata, Some(&rep), None)
        .map_err(|e| bad(e.to_string()))?;
    // Codes in order of first appearance (the metrics do not depend on the numbering).
    let codes = |key: &str, values: &[Option<String>]| -> Result<Vec<u32>, Failure> {
        let mut seen = std::collections::HashMap::<&str, u32>::new();
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let v = v.as_deref().ok_or_else(|| {
                    bad(format!(
                        "cell {} has no value in {key}; integration metrics need every cell labelled",
                        adata.obs_names().get(i).cloned().unwrap_or_default()
                    ))
                })?;
                let next = seen.len() as u32;
                Ok(*seen.entry(v).or_insert(next))
            })
            .collect()
    };
    let labels = codes(&label_key, &labels)?;
    let batches = match &batches {
        None => vec![0; labels.len()],
        Some(b) => codes(&batch_key, b)?,
    };
    let mat = m.matrix().map_err(|e| bad(e.to_string()))?;
    let metrics = integration_metrics(&mat, &labels, &batches, &IntegrationOptions::default())
        .map_err(|e| bad(e.to_string()))?;
    Ok(Output::Metrics {
        metrics: Box::new(metrics),
        description: format!(
            "{rep}, labels {label_key}{}",
            if batch_key.is_empty() {
                String::new()
            } else {
                format!(", batches {batch_key}")
            }
        ),
    })
}

/// Settings of the preprocess step (scGPT's chain; cells and genes are kept, so labels and
/// embeddings stay aligned: highly variable genes are marked, not subset).
#[derive(Clone, Debug)]
pub struct PreprocessSettings {
    /// Raw counts layer (`counts`) or X when empty.
    pub layer: String,
    pub normalize_total: bool,
    pub log1p: bool,
    /// 0: no highly variable gene selection.
    pub n_hvg: usize,
    pub batch_key: String,
    pub n_bins: usize,
}

impl Default for PreprocessSettings {
    fn default() -> Self {
        Self {
            layer: String::new(),
            normalize_total: true,
            log1p: true,
            n_hvg: 1200,
            batch_key: String::new(),
            n_bins: 51,
        }
    }
}

pub fn preprocess(
    input: PathBuf,
    output: PathBuf,
    s: PreprocessSettings,
    r: &Reporter,
) -> Result<Output, Failure> {
    use cellforge_core::pp::{HvgFlavor, HvgOptions, PreprocessOptions, TargetSum};
    let opts = PreprocessOptions {
        layer: (!s.layer.is_empty()).then(|| s.layer.clone()),
        normalize_total: s.normalize_total.then_some(TargetSum::Fixed(1e4)),
        log1p: s.log1p,
        hvg: (s.n_hvg > 0).then(|| HvgOptions {
            n_top_genes: s.n_hvg,
            flavor: if s.layer.is_empty() {
                HvgFlavor::Seurat
            } else {
                HvgFlavor::SeuratV3
            },
            batch_key: (!s.batch_key.is_empty()).then(|| s.batch_key.clone()),
            subset: false,
            on_log1p: s.layer.is_empty(),
            ..HvgOptions::default()
        }),
        n_bins: (s.n_bins > 1).then_some(s.n_bins),
        ..PreprocessOptions::default()
    };
    let rep = cellforge_core::pp::preprocess_to_file(&input, &output, &opts, &mut |p| {
        r.stage(format!("Preprocessing: {}", p.pass));
        r.progress(p.rows_done as u64, p.rows_total as u64);
        r.flow()
    })
    .map_err(|e| Failure::new("Preprocessing failed", e))?;
    let msg = format!(
        "Preprocessed ({}{}{}{})",
        if s.normalize_total {
            "normalised to 1e4"
        } else {
            "not normalised"
        },
        if s.log1p { ", log1p" } else { "" },
        if s.n_hvg > 0 {
            format!(", {} highly variable genes marked", s.n_hvg)
        } else {
            String::new()
        },
        if s.n_bins > 1 {
            format!(", {} bins", s.n_bins)
        } else {
            String::new()
        }
    );
    for n in &rep.notes {
        r.log(n.clone());
    }
    r.log(msg.clone());
    dataset_output(output, msg, r)
}

/// Reference mapping: each cell gets the majority label of the most similar reference cells.
pub fn map(
    query: PathBuf,
    reference: PathBuf,
    label_key: String,
    model_dir: PathBuf,
    output: PathBuf,
    device: DeviceRequest,
    k: usize,
    r: &Reporter,
) -> Result<Output, Failure> {
    use cellforge_core::tl::annotate::{MapRequest, run_map};
    let req = MapRequest {
        reference,
        label_key: label_key.clone(),
        query: AnnotateRequest {
            model_dir,
            query,
            output: output.clone(),
            layer: None,
            gene_col: GeneColumn::Index,
            key_added: "mapped_cell_type".into(),
            min_confidence: 0.0,
            device,
            batch_size: 64,
            seed: 0,
        },
        k: k.max(1),
        max_length: EmbedOptions::default().max_length,
    };
    r.stage("Embedding the reference and the query");
    let s = run_map(&req, &mut |e| annotate_event(r, e))
        .map_err(|e| train_failure("Reference mapping failed", e))?;
    let msg = format!(
        "Mapped {} cells onto the reference's {label_key} (obs mapped_cell_type)",
        cellforge_core::fmt::thousands(s.n_cells as u64)
    );
    r.log(msg.clone());
    dataset_output(output, msg, r)
}

/// Gene programs from the model's gene embeddings (`var["gene_program"]`,
/// `varm["gene_embedding"]`, `varp["gene_similarity"]`, per-cell scores).
pub fn gene_programs(
    input: PathBuf,
    model_dir: PathBuf,
    output: PathBuf,
    device: DeviceRequest,
    resolution: f64,
    threshold: f32,
    r: &Reporter,
) -> Result<Output, Failure> {
    use cellforge_core::tl::genes::{GeneProgramsRequest, ProgramParams, run_gene_programs};
    let req = GeneProgramsRequest {
        model_dir,
        input,
        output: output.clone(),
        gene_col: GeneColumn::Index,
        gene_mask: None,
        layer: None,
        programs: ProgramParams {
            resolution,
            ..ProgramParams::default()
        },
        threshold,
        query_genes: Vec::new(),
        top: 10,
        attention: None,
        device,
    };
    r.stage("Gene embeddings and programs");
    let s = run_gene_programs(&req, &mut |done, total| {
        r.progress(done as u64, total as u64);
        r.flow()
    })
    .map_err(|e| Failure::new("Gene programs failed", e))?;
    let msg = format!(
        "{} gene programs over {} genes, {} similarity edges (var gene_program)",
        s.programs.len(),
        s.n_genes,
        s.n_edges
    );
    r.log(msg.clone());
    dataset_output(output, msg, r)
}

/// Marker genes of a selection of cells against all other cells (Wilcoxon, as scanpy's
/// `rank_genes_groups` with `reference="rest"`), best first.
pub fn markers(adata: Arc<AnnData>, cells: Vec<u32>, r: &Reporter) -> Result<Output, Failure> {
    use cellforge_core::tl::analyze::{DeParams, rank_genes_groups};
    let n = adata.n_obs();
    if cells.is_empty() || cells.len() >= n {
        return Err(Failure::new(
            "Select some cells (not all) to find their marker genes",
            format!("{} of {n} cells selected", cells.len()),
        ));
    }
    r.stage(format!("Ranking genes of {} selected cells", cells.len()));
    let mut a = (*adata).clone();
    let mut inside = vec![false; n];
    for &c in &cells {
        if let Some(x) = inside.get_mut(c as usize) {
            *x = true;
        }
    }
    let labels: Vec<Option<&str>> = inside
        .iter()
        .map(|&x| Some(if x { "selected" } else { "rest" }))
        .collect();
    let key = "cellforge_selection";
    a.obs
        .set_column(key, Element::Categorical(Categorical::from_labels(&labels)));
    let s = rank_genes_groups(
        &mut a,
        &DeParams {
            groupby: key.into(),
            groups: Some(vec!["selected".into()]),
            reference: Some("rest".into()),
            n_genes: 25,
            key_added: "cellforge_selection_markers".into(),
            ..DeParams::default()
        },
    )
    .map_err(|e| Failure::new("Could not rank the genes", e))?;
    let genes = s
        .top
        .into_iter()
        .find(|(g, _)| g == "selected")
        .map(|x| x.1)
        .unwrap_or_default();
    Ok(Output::Markers {
        n_cells: cells.len(),
        genes,
    })
}
