//! The scGPT model family in burn (CUDA, wgpu or CPU), its checkpoints and folders.
//!
//! - [`config`]: sizes and heads, from an scGPT `args.json` + checkpoint keys, or native.
//! - [`statedict`]: named host tensors with the attention key spellings unified.
//! - [`layers`], [`net`]: the model itself.
//! - [`weights`]: parameter names, loading with a report, saving.
//!
//! A model folder is either an scGPT release folder (`args.json`, `vocab.json`,
//! `best_model.pt`) or a cellforge folder (`config.json`, `vocab.json`,
//! `model.safetensors`).

pub mod config;
pub mod cpu_attention;
pub mod cpu_encoder;
pub mod layers;
pub mod net;
pub mod statedict;
pub mod weights;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

pub use config::{CellEmbStyle, InputEmbStyle, InputNorm, ModelConfig, ModelKind, MvcStyle};
pub use net::{ForwardError, Heads, ModelOutput, ScGpt, TokenBatch};
pub use statedict::{HostTensor, StateDict};
pub use weights::LoadReport;

use crate::checkpoint::{PtCheckpoint, PtError};
use crate::vocab::{GeneVocab, VocabError};

/// Name of the native weights file.
pub const NATIVE_WEIGHTS: &str = "model.safetensors";
/// Name of the native config file.
pub const NATIVE_CONFIG: &str = "config.json";
/// Format tag written into native configs.
pub const NATIVE_FORMAT: &str = "cellforge-scgpt-1";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is not a model folder: it has neither best_model.pt + args.json (scGPT) nor model.safetensors + config.json (cellforge)"
    )]
    NotAModelFolder(String),
    #[error("{path} is not valid JSON: {message}")]
    Json { path: String, message: String },
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] PtError),
    #[error("{0}")]
    Vocab(#[from] VocabError),
    #[error("model configuration: {0}")]
    Config(String),
    #[error("the checkpoint lacks {} weight(s) the model needs: {}{}", .0.len(), .0.iter().take(6).cloned().collect::<Vec<_>>().join(", "), if .0.len() > 6 { ", ..." } else { "" })]
    MissingWeights(Vec<String>),
    #[error("weight {name} has shape {found:?} in the checkpoint but the model (from args.json) needs {expected:?}{}", if *.others > 0 { format!(" ({} more mismatches)", .others) } else { String::new() })]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        others: usize,
    },
    #[error("weight {name} has shape {found:?}, expected {expected}")]
    Shape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error(
        "vocab.json has {vocab} tokens but the checkpoint's gene embedding has {rows} rows: the vocabulary and the weights belong to different models"
    )]
    VocabMismatch { vocab: usize, rows: usize },
    #[error("safetensors: {0}")]
    Safetensors(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Which kind of folder a model came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelSource {
    /// An scGPT release / fine-tune folder.
    ScGpt,
    /// A folder cellforge saved.
    Native,
}

/// A model folder read into host memory: config, vocabulary and weights, checked
/// against each other. Turn it into a device model with [`ModelFiles::build`].
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub source: ModelSource,
    pub config: ModelConfig,
    pub vocab: GeneVocab,
    pub weights: StateDict,
}

impl ModelFiles {
    /// Open a model folder (scGPT or cellforge).
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        if dir.join(NATIVE_WEIGHTS).is_file() && dir.join(NATIVE_CONFIG).is_file() {
            return Self::open_native(dir);
        }
        let pt = dir.join("best_model.pt");
        let args = dir.join("args.json");
        if !pt.is_file() || !args.is_file() {
            if !dir.is_dir() {
                return Err(ModelError::Io {
                    path: dir.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
                });
            }
            return Err(ModelError::NotAModelFolder(dir.display().to_string()));
        }
        let args_json = read_json(&args)?;
        let vocab = GeneVocab::from_json_file(&dir.join("vocab.json"))?;
        let ckpt = PtCheckpoint::open(&pt)?;
        let named = ckpt
            .into_tensors()
            .into_iter()
            .map(|(name, t)| {
                let shape = t.shape().to_vec();
                HostTensor::new(shape, t.to_f32()).map(|h| (name, h))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let weights = StateDict::from_named(named)?;
        let config = ModelConfig::from_scgpt(&args_json, &weights)?;
        let files = Self {
            dir: dir.to_path_buf(),
            source: ModelSource::ScGpt,
            config,
            vocab,
            weights,
        };
        files.check_vocab()?;
        Ok(files)
    }

    fn open_native(dir: &Path) -> Result<Self, ModelError> {
        let cfg_path = dir.join(NATIVE_CONFIG);
        let value = read_json(&cfg_path)?;
        let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
        if format != NATIVE_FORMAT {
            return Err(ModelError::Config(format!(
                "{} has format \"{format}\", this cellforge reads \"{NATIVE_FORMAT}\"",
                cfg_path.display()
            )));
        }
        let config: ModelConfig = serde_json::from_value(
            value.get("model").cloned().unwrap_or_default(),
        )
        .map_err(|e| ModelError::Json {
            path: cfg_path.display().to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        let vocab = GeneVocab::from_json_file(&dir.join("vocab.json"))?;
        let named = read_safetensors(&dir.join(NATIVE_WEIGHTS))?;
        let weights = StateDict::from_named(named)?;
        let files = Self {
            dir: dir.to_path_buf(),
            source: ModelSource::Native,
            config,
            vocab,
            weights,
        };
        files.check_vocab()?;
        Ok(files)
    }

    fn check_vocab(&self) -> Result<(), ModelError> {
        if self.vocab.len() != self.config.ntoken {
            return Err(ModelError::VocabMismatch {
                vocab: self.vocab.len(),
                rows: self.config.ntoken,
            });
        }
        self.vocab
            .special(&self.config.pad_token)
            .map_err(ModelError::Config)?;
        Ok(())
    }

    /// Build the model on a device and load every weight.
    pub fn build<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(ScGpt<B>, LoadReport), ModelError> {
        let mut model = ScGpt::<B>::init(&self.config, device);
        model.set_gene_padding_idx(self.pad_id());
        let report = weights::load_into(&mut model, &self.weights, device)?;
        Ok((model, report))
    }

    /// Vocabulary id of the padding token.
    pub fn pad_id(&self) -> Option<usize> {
        self.vocab.id(&self.config.pad_token).map(|i| i as usize)
    }
}

/// Save a model as a cellforge folder (`config.json`, `vocab.json`, `model.safetensors`).
/// Files are written to temporary names and renamed, so an interrupted save leaves any
/// previous model intact.
pub fn save_native<B: Backend>(
    model: &mut ScGpt<B>,
    vocab: &GeneVocab,
    dir: &Path,
    provenance: serde_json::Value,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let named = weights::named_tensors(model)?;
    let config = serde_json::json!({
        "format": NATIVE_FORMAT,
        "model": model.config(),
        "provenance": provenance,
    });
    let config_text =
        serde_json::to_string_pretty(&config).map_err(|e| ModelError::Config(e.to_string()))?;
    write_safetensors(&dir.join(NATIVE_WEIGHTS), &named)?;
    write_atomic(&dir.join("vocab.json"), vocab.to_json().as_bytes())?;
    write_atomic(&dir.join(NATIVE_CONFIG), config_text.as_bytes())?;
    Ok(())
}

/// Float32 tensors of a safetensors file, by name.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, HostTensor)>, ModelError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::Safetensors(format!("{}: {e}", path.display())))?;
    let mut named = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(ModelError::Safetensors(format!(
                "{name}: dtype {:?}, cellforge writes float32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        named.push((name, HostTensor::new(view.shape().to_vec(), data)?));
    }
    Ok(named)
}

/// Write named float32 tensors as a safetensors file (temporary name, then renamed).
pub fn write_safetensors(path: &Path, named: &[(String, HostTensor)]) -> Result<(), ModelError> {
    let bytes: Vec<(&str, Vec<u8>, &[usize])> = named
        .iter()
        .map(|(n, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.as_str(), b, t.shape.as_slice())
        })
        .collect();
    let mut tensors = Vec::with_capacity(bytes.len());
    for (name, data, shape) in &bytes {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), data)
                .map_err(|e| ModelError::Safetensors(format!("{name}: {e}")))?;
        tensors.push((name.to_string(), view));
    }
    let st = safetensors::serialize(tensors, None)
        .map_err(|e| ModelError::Safetensors(e.to_string()))?;
    write_atomic(path, &st)
}

/// Write a file under a temporary name in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| ModelError::Io {
        path: path.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

/// Largest absolute difference between two equally long slices (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
