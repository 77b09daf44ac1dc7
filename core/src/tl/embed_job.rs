//! The whole `embed` job on a file: open the model and the dataset, pick the device, embed
//! every cell, and write a copy of the dataset with the embeddings and provenance. Used by
//! the CLI and the app (which run it off the UI thread and show its events).

use std::ops::ControlFlow;
use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::anndata::{ArrayData, DenseArray, Element, Mapping};
use crate::device::{DeviceChoice, DeviceRequest, OnBackend, Precision, dispatch};
use crate::io::{BackedH5ad, WriteOptions, read_h5ad_with_warnings, write_h5ad};
use crate::model::{LoadReport, ModelFiles};
use crate::vocab::GeneMatch;

use super::embed::{EmbedError, EmbedOptions, EmbedProgress, EmbedResult, embed_backed};

/// Which var field holds the gene names matched against the vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeneColumn {
    /// `var_names`.
    Index,
    /// A string or categorical var column (e.g. `feature_name`, `gene_symbols`).
    Column(String),
}

impl GeneColumn {
    /// `index` means var_names; anything else names a var column.
    pub fn parse(s: &str) -> Self {
        if s == "index" {
            GeneColumn::Index
        } else {
            GeneColumn::Column(s.to_string())
        }
    }

    /// The name as the user gives it (`index` or the column).
    pub fn name(&self) -> &str {
        match self {
            GeneColumn::Index => "index",
            GeneColumn::Column(c) => c,
        }
    }
}

/// Everything an embed run needs.
#[derive(Clone, Debug)]
pub struct EmbedRequest {
    pub input: PathBuf,
    pub model_dir: PathBuf,
    pub output: PathBuf,
    pub gene_col: GeneColumn,
    pub device: DeviceRequest,
    pub precision: Precision,
    pub key_added: String,
    pub options: EmbedOptions,
}

/// What the job reports as it goes.
#[derive(Clone, Debug)]
pub enum EmbedEvent {
    Device(DeviceChoice),
    ModelLoaded { report: LoadReport, summary: String },
    GenesMatched(GeneMatch, usize),
    Progress(EmbedProgress),
    Writing,
}

/// The end state of a finished run.
#[derive(Clone, Debug)]
pub struct EmbedSummary {
    pub device: DeviceChoice,
    pub n_cells: usize,
    pub empty_cells: usize,
    pub truncated_cells: usize,
    pub seconds: f64,
    pub tokens: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedJobError {
    #[error("the output {0} is the input file; cellforge never overwrites its input")]
    OutputIsInput(String),
    #[error("model {dir}: {source}")]
    Model {
        dir: String,
        #[source]
        source: crate::model::ModelError,
    },
    #[error("{input}: {source}")]
    Read {
        input: String,
        #[source]
        source: crate::io::H5adError,
    },
    #[error("--gene-col {0}: {1}")]
    GeneColumn(String, String),
    #[error("device: {0}")]
    Device(String),
    #[error("{0}")]
    Embed(#[from] EmbedError),
    #[error("writing {output}: {source}")]
    Write {
        output: String,
        #[source]
        source: crate::io::H5adError,
    },
}

/// Gene names from `var` as the request says.
pub fn gene_names(
    var: &crate::anndata::DataFrame,
    col: &GeneColumn,
) -> Result<Vec<String>, String> {
    match col {
        GeneColumn::Index => Ok(var.index.clone()),
        GeneColumn::Column(name) => match var.column(name) {
            None => {
                let cols: Vec<&str> = var.columns.iter().map(|(n, _)| n.as_str()).collect();
                Err(format!(
                    "var has no column \"{name}\" (columns: {})",
                    if cols.is_empty() {
                        "none".to_string()
                    } else {
                        cols.join(", ")
                    }
                ))
            }
            Some(Element::Strings(s)) => Ok(s.values.clone()),
            Some(Element::Categorical(c)) => Ok(c
                .labels()
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect()),
            Some(Element::NullableString { values, mask, .. }) => Ok(values
                .iter()
                .zip(mask)
                .map(|(v, &m)| if m { String::new() } else { v.clone() })
                .collect()),
            Some(other) => Err(format!(
                "column \"{name}\" holds {}, not gene names",
                other.describe()
            )),
        },
    }
}

/// Run an embed job to completion (or cancellation, when `events` breaks).
pub fn run_embed(
    req: &EmbedRequest,
    events: &mut dyn FnMut(EmbedEvent) -> ControlFlow<()>,
) -> Result<EmbedSummary, EmbedJobError> {
    if crate::io::same_file(&req.input, &req.output) {
        return Err(EmbedJobError::OutputIsInput(
            req.output.display().to_string(),
        ));
    }
    let files = ModelFiles::open(&req.model_dir).map_err(|source| EmbedJobError::Model {
        dir: req.model_dir.display().to_string(),
        source,
    })?;
    let choice = crate::device::choose(req.device).map_err(EmbedJobError::Device)?;
    let _ = events(EmbedEvent::Device(choice.clone()));
    struct Job<'a> {
        req: &'a EmbedRequest,
        files: &'a ModelFiles,
        choice: DeviceChoice,
        events: &'a mut dyn FnMut(EmbedEvent) -> ControlFlow<()>,
    }
    impl OnBackend for Job<'_> {
        type Output = Result<EmbedSummary, EmbedJobError>;
        fn run<B: Backend>(self, device: &B::Device) -> Self::Output {
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
    dispatch(kind, job)
}

fn run_on<B: Backend>(
    req: &EmbedRequest,
    files: &ModelFiles,
    choice: DeviceChoice,
    device: &B::Device,
    events: &mut dyn FnMut(EmbedEvent) -> ControlFlow<()>,
) -> Result<EmbedSummary, EmbedJobError> {
    let (model, report) = files
        .build::<B>(device)
        .map_err(|source| EmbedJobError::Model {
            dir: req.model_dir.display().to_string(),
            source,
        })?;
    let c = &files.config;
    let summary = format!(
        "{} layers x {} dims, {} heads, FFN {}, vocabulary {}",
        c.nlayers,
        c.d_model,
        c.nhead,
        c.d_hid,
        files.vocab.len()
    );
    let _ = events(EmbedEvent::ModelLoaded { report, summary });
    let input = req.input.display().to_string();
    let backed = BackedH5ad::open(&req.input).map_err(|source| EmbedJobError::Read {
        input: input.clone(),
        source,
    })?;
    let names = gene_names(&backed.var, &req.gene_col)
        .map_err(|e| EmbedJobError::GeneColumn(req.gene_col.name().to_string(), e))?;
    let matched = files.vocab.match_genes(&names);
    let _ = events(EmbedEvent::GenesMatched(matched.clone(), files.vocab.len()));
    let result: EmbedResult = embed_backed(
        &model,
        device,
        &files.vocab,
        &backed,
        &matched.ids,
        &req.options,
        &mut |p| events(EmbedEvent::Progress(p)),
    )?;
    drop(backed);

    // Gene embeddings of the dataset's genes (zeros for genes outside the vocabulary).
    let d = files.config.d_model;
    let ids: Vec<i64> = matched
        .ids
        .iter()
        .map(|i| i.map(i64::from).unwrap_or(0))
        .collect();
    let n_vars = ids.len();
    let gene_emb = if n_vars > 0 {
        let t = model.gene_embeddings(Tensor::<B, 1, Int>::from_data(
            TensorData::new(ids, [n_vars]),
            device,
        ));
        let mut v = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| EmbedError::Output(format!("{e:?}")))?;
        for (g, id) in matched.ids.iter().enumerate() {
            if id.is_none() {
                v[g * d..(g + 1) * d].fill(0.0);
            }
        }
        v
    } else {
        Vec::new()
    };

    let _ = events(EmbedEvent::Writing);
    let (mut adata, _) =
        read_h5ad_with_warnings(&req.input).map_err(|source| EmbedJobError::Read {
            input: input.clone(),
            source,
        })?;
    let n = adata.n_obs();
    adata.obsm.insert(
        req.key_added.clone(),
        Element::Dense(DenseArray {
            shape: vec![n, d],
            data: ArrayData::F32(result.embeddings),
        }),
    );
    adata.varm.insert(
        format!("{}_genes", req.key_added),
        Element::Dense(DenseArray {
            shape: vec![n_vars, d],
            data: ArrayData::F32(gene_emb),
        }),
    );
    adata.var.set_column(
        "scGPT_in_vocab",
        Element::Dense(DenseArray {
            shape: vec![n_vars],
            data: ArrayData::Bool(matched.ids.iter().map(Option::is_some).collect()),
        }),
    );
    let mut prov = Mapping::new();
    prov.insert("tool".into(), Element::String("cellforge embed".into()));
    prov.insert(
        "version".into(),
        Element::String(env!("CARGO_PKG_VERSION").into()),
    );
    prov.insert(
        "model".into(),
        Element::String(req.model_dir.display().to_string()),
    );
    prov.insert(
        "model_format".into(),
        Element::String(format!("{:?}", files.source).to_lowercase()),
    );
    prov.insert("device".into(), Element::String(choice.to_string()));
    prov.insert("seed".into(), Element::scalar_i64(req.options.seed as i64));
    prov.insert(
        "precision".into(),
        Element::String(
            if choice.name.ends_with("fp16") {
                "fp16"
            } else {
                "fp32"
            }
            .into(),
        ),
    );
    prov.insert(
        "max_length".into(),
        Element::scalar_i64(req.options.max_length as i64),
    );
    prov.insert(
        "batch_size".into(),
        Element::scalar_i64(req.options.batch_size as i64),
    );
    prov.insert(
        "gene_col".into(),
        Element::String(req.gene_col.name().to_string()),
    );
    prov.insert(
        "genes_matched".into(),
        Element::scalar_i64(matched.n_matched as i64),
    );
    prov.insert(
        "genes_total".into(),
        Element::scalar_i64(matched.n_genes as i64),
    );
    prov.insert(
        "vocab_size".into(),
        Element::scalar_i64(files.vocab.len() as i64),
    );
    prov.insert(
        "cells_without_vocab_genes".into(),
        Element::scalar_i64(result.empty_cells.len() as i64),
    );
    prov.insert(
        "cells_subsampled".into(),
        Element::scalar_i64(result.truncated_cells as i64),
    );
    prov.insert("seconds".into(), Element::scalar_f64(result.seconds));
    prov.insert(
        "note".into(),
        Element::String(
            "cell embedding = L2-normalised <cls> output, as scgpt.tasks.embed_data; cells \
             without vocabulary genes have an all-zero embedding"
                .into(),
        ),
    );
    adata.record_provenance(&format!("embed_{}", req.key_added), prov);
    write_h5ad(&adata, &req.output, &WriteOptions::default()).map_err(|source| {
        EmbedJobError::Write {
            output: req.output.display().to_string(),
            source,
        }
    })?;
    Ok(EmbedSummary {
        device: choice,
        n_cells: n,
        empty_cells: result.empty_cells.len(),
        truncated_cells: result.truncated_cells,
        seconds: result.seconds,
        tokens: result.tokens,
    })
}
