//! Training: scGPT's fine-tuning objectives and optimisation, run on any burn autodiff
//! backend (CUDA, wgpu, CPU), with progress events, cancellation, checkpoints and exact
//! resumption.
//!
//! - [`loss`]: the loss functions.
//! - [`optim`]: Adam/AdamW with global gradient clipping, schedules, freezing.
//! - [`data`]: tokenised cells, split, minibatches, masking.
//! - [`finetune`]: the whole job on files (model folder + h5ad -> fine-tuned model folder).
//!
//! Determinism: minibatch order depends on (seed, epoch), masking and dropout on
//! (seed, step), so a run resumed from a checkpoint takes the same steps as one that was
//! never interrupted.

pub mod cache;
pub mod data;
pub mod finetune;
pub mod loss;
pub mod optim;
pub mod pretrain;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::model::net::BnUpdate;
use crate::model::statedict::HostTensor;
use crate::model::{ForwardError, Heads, ModelError, ScGpt};
use crate::tokenize::Rng;
use crate::vocab::GeneVocab;

use data::{CellSet, TokenSettings, TrainBatch, epoch_batches, host_batch};
use optim::{Adam, AdamConfig, Freeze, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: crate::io::H5adError,
    },
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Forward(#[from] ForwardError),
    #[error("objectives: {0}")]
    Objectives(String),
    #[error(
        "the loss became {value} at step {step} (epoch {epoch}); lower the learning rate or check \
         the data"
    )]
    NotFinite { value: f64, step: u64, epoch: usize },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("device: {0}")]
    Device(String),
    #[error("reading a value back from the device: {0}")]
    Readback(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: crate::io::H5adError,
    },
    #[error("cancelled")]
    Cancelled,
}

/// Weights of scGPT's objectives (0 = off). Defaults: the tutorials' weights for the
/// objectives that are on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Objectives {
    /// Gene expression prediction: masked MSE of the expression decoder (GEP / "MLM"),
    /// plus its Bernoulli NLL when the model has zero-probability heads.
    pub gep: f64,
    /// GEPC / MVC: masked MSE of the cell-embedding decoder (+ its NLL).
    pub gepc: f64,
    /// Elastic cell similarity (the tutorials multiply it by 10).
    pub ecs: f64,
    pub ecs_threshold: f64,
    /// Domain adaptation by gradient reversal: batch cross-entropy of the discriminator.
    pub dar: f64,
    /// Cell-type classification cross-entropy.
    pub cls: f64,
    /// Contrastive cell embedding (the tutorials multiply it by 10).
    pub cce: f64,
    /// Per-class weights of the CLS loss (empty: unweighted, as scGPT). See
    /// [`balanced_class_weights`].
    #[serde(default)]
    pub class_weights: Vec<f32>,
}

/// scikit-learn's "balanced" class weights, `n / (k * count_c)`, over the labelled cells
/// `items` (classes without cells get weight 0). Rare cell types then count as much as
/// common ones in the CLS loss, which is what macro F1 rewards.
pub fn balanced_class_weights(
    labels: &[Option<u32>],
    items: &[usize],
    n_classes: usize,
) -> Vec<f32> {
    let mut counts = vec![0usize; n_classes];
    for &i in items {
        if let Some(l) = labels[i]
            && let Some(c) = counts.get_mut(l as usize)
        {
            *c += 1;
        }
    }
    let n: usize = counts.iter().sum();
    let k = counts.iter().filter(|&&c| c > 0).count().max(1);
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                (n as f64 / (k as f64 * c as f64)) as f32
            }
        })
        .collect()
}

impl Default for Objectives {
    fn default() -> Self {
        Self {
            gep: 0.0,
            gepc: 0.0,
            ecs: 0.0,
            ecs_threshold: 0.8,
            dar: 0.0,
            cls: 1.0,
            cce: 0.0,
            class_weights: Vec::new(),
        }
    }
}

impl Objectives {
    /// Parse `cls,gep,gepc,ecs,dar,cce`, each optionally `name=weight`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut o = Objectives {
            cls: 0.0,
            ..Objectives::default()
        };
        for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (name, w) = match item.split_once('=') {
                Some((n, w)) => (
                    n.trim(),
                    Some(
                        w.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|w| w.is_finite() && *w >= 0.0)
                            .ok_or_else(|| format!("bad weight in \"{item}\""))?,
                    ),
                ),
                None => (item, None),
            };
            let name = name.to_ascii_lowercase();
            let (slot, default) = match name.as_str() {
                "gep" | "mlm" => (&mut o.gep, 1.0),
                "gepc" | "mvc" => (&mut o.gepc, 1.0),
                "ecs" => (&mut o.ecs, 10.0),
                "dar" | "dab" => (&mut o.dar, 1.0),
                "cls" => (&mut o.cls, 1.0),
                "cce" => (&mut o.cce, 10.0),
                other => {
                    return Err(format!(
                        "unknown objective \"{other}\" (known: cls, gep, gepc, ecs, dar, cce)"
                    ));
                }
            };
            *slot = w.unwrap_or(default);
        }
        if o.active().is_empty() {
            return Err("no objective is switched on".into());
        }
        Ok(o)
    }

    /// Names of the objectives that are on.
    pub fn active(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (name, w) in [
            ("gep", self.gep),
            ("gepc", self.gepc),
            ("ecs", self.ecs),
            ("dar", self.dar),
            ("cls", self.cls),
            ("cce", self.cce),
        ] {
            if w > 0.0 {
                v.push(name);
            }
        }
        v
    }

    /// Whether the objectives need masked values.
    pub fn needs_mask(&self) -> bool {
        self.gep > 0.0 || self.gepc > 0.0
    }
}

/// Loss terms of one minibatch (unweighted values) and their weighted sum.
pub struct Losses<B: Backend> {
    pub terms: Vec<(&'static str, f64, Tensor<B, 1>)>,
    pub total: Tensor<B, 1>,
    pub cls_logits: Option<Tensor<B, 2>>,
    /// BatchNorm statistics of each encoder pass, in order (scGPT updates the running
    /// averages once per pass, so twice with CCE).
    pub bn: Vec<BnUpdate<B>>,
}

/// Evaluate the objectives on one minibatch (scGPT's `forward` with the matching flags and
/// the tutorials' loss sum). Works in training (autodiff) and evaluation mode.
pub fn compute_losses<B: Backend>(
    model: &ScGpt<B>,
    batch: &TrainBatch<B>,
    obj: &Objectives,
) -> Result<Losses<B>, TrainError> {
    let heads = Heads {
        cls: obj.cls > 0.0,
        mvc: obj.gepc > 0.0,
    };
    let mut out = model.forward(&batch.tokens, heads)?;
    let mut bn: Vec<BnUpdate<B>> = out.bn_stats.take().into_iter().collect();
    let mut terms: Vec<(&'static str, f64, Tensor<B, 1>)> = Vec::new();
    if obj.gep > 0.0 {
        terms.push((
            "gep",
            obj.gep,
            loss::masked_mse(
                out.mlm_output.clone(),
                batch.target.clone(),
                batch.masked.clone(),
            ),
        ));
        if let Some(z) = out.mlm_zero_probs.clone() {
            terms.push((
                "gep_zero",
                obj.gep,
                loss::neg_log_bernoulli(z, batch.target.clone(), batch.masked.clone()),
            ));
        }
    }
    if obj.gepc > 0.0 {
        let pred = out
            .mvc_output
            .clone()
            .ok_or(ForwardError::MissingHead("MVC"))?;
        terms.push((
            "gepc",
            obj.gepc,
            loss::masked_mse(pred, batch.target.clone(), batch.masked.clone()),
        ));
        if let Some(z) = out.mvc_zero_probs.clone() {
            terms.push((
                "gepc_zero",
                obj.gepc,
                loss::neg_log_bernoulli(z, batch.target.clone(), batch.masked.clone()),
            ));
        }
    }
    if obj.ecs > 0.0 {
        terms.push((
            "ecs",
            obj.ecs,
            loss::ecs(out.cell_emb.clone(), obj.ecs_threshold),
        ));
    }
    if obj.cce > 0.0 {
        // A second pass over the same cells (other dropout masks), SimCSE-style.
        let (again, stats) = model.encode_with_stats(&batch.tokens)?;
        bn.extend(stats);
        let second =
            model.cell_embedding(again, &batch.tokens.values, batch.tokens.padding.as_ref());
        terms.push(("cce", obj.cce, loss::cce(out.cell_emb.clone(), second, 0.5)));
    }
    if obj.dar > 0.0 {
        let logits = out
            .dab_output
            .clone()
            .ok_or(ForwardError::MissingHead("batch discriminator"))?;
        let labels = batch
            .tokens
            .batch_labels
            .clone()
            .ok_or(ForwardError::MissingBatchLabels)?;
        terms.push(("dar", obj.dar, loss::cross_entropy(logits, labels)));
    }
    if obj.cls > 0.0 {
        let logits = out
            .cls_output
            .clone()
            .ok_or(ForwardError::MissingHead("classifier"))?;
        let labels = batch
            .labels
            .clone()
            .ok_or(ForwardError::MissingInput("cell labels"))?;
        let ce = if obj.class_weights.is_empty() {
            loss::cross_entropy(logits, labels)
        } else {
            loss::weighted_cross_entropy(logits, labels, &obj.class_weights)
        };
        terms.push(("cls", obj.cls, ce));
    }
    let mut total: Option<Tensor<B, 1>> = None;
    for (_, w, t) in &terms {
        let x = t.clone() * *w;
        total = Some(match total {
            Some(s) => s + x,
            None => x,
        });
    }
    let total = total.ok_or_else(|| TrainError::Objectives("no objective is on".into()))?;
    Ok(Losses {
        terms,
        total,
        cls_logits: out.cls_output,
        bn,
    })
}

impl<B: Backend> Losses<B> {
    /// Every term's value, then `("total", weighted sum)`, read from the device at once
    /// (one synchronisation per step instead of one per term).
    pub fn values(&self) -> Result<Vec<(String, f64)>, TrainError> {
        let all: Vec<Tensor<B, 1>> = self
            .terms
            .iter()
            .map(|(_, _, t)| t.clone())
            .chain(std::iter::once(self.total.clone()))
            .collect();
        let host = Tensor::cat(all, 0)
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
        Ok(self
            .terms
            .iter()
            .map(|(n, _, _)| n.to_string())
            .chain(std::iter::once("total".to_string()))
            .zip(host)
            .collect())
    }
}

/// Learning-rate schedule kinds as configured (resolved to step counts at run time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ScheduleSpec {
    Constant,
    /// StepLR once per epoch with this gamma (scGPT: 0.9).
    Step {
        gamma: f64,
    },
    /// Cosine decay after a linear warm-up over this fraction of all steps.
    Cosine {
        warmup_fraction: f64,
    },
}

/// Everything the training loop needs besides the model and the data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub objectives: Objectives,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub mask_ratio: f64,
    pub seed: u64,
    pub adam: AdamConfig,
    pub schedule: ScheduleSpec,
    pub freeze: Freeze,
    /// Stop when validation loss has not improved for this many epochs.
    pub patience: Option<usize>,
    /// Write a resumable checkpoint every this many optimiser steps (and at each epoch end).
    pub checkpoint_every: Option<usize>,
    pub tokens: TokenSettings,
    /// Feed batch labels to the model (batch encoder / DSBN / DAR).
    pub use_batch_labels: bool,
    /// Minibatches of one batch label each (needed by DSBN).
    pub by_batch: bool,
    /// Generative pretraining instead of the fine-tuning objectives.
    #[serde(default)]
    pub generative: Option<pretrain::GenerativeSettings>,
    /// Depth augmentation for fine-tuning: each training cell's counts are thinned, every
    /// step, to a fraction drawn uniformly from `[this, 1]` of its molecules before binning,
    /// so the model learns from shallower versions of the reference (a query sequenced less
    /// deeply, an older chemistry). Needs raw counts. `None`: off (scGPT's recipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment_depth: Option<f64>,
    /// Fault injection for tests: a step over more cells than this fails as if the device had
    /// run out of memory (the path a real allocation panic from the backend takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate_oom_above: Option<usize>,
}

/// A minibatch's losses and its class labels (for accuracy).
type LabelledLosses<B> = (Losses<B>, Option<Vec<u32>>);

impl TrainConfig {
    /// scGPT's fine-tuning recipe (annotation tutorial): CLS, 10 epochs, Adam 1e-4 (eps
    /// 1e-8 in fp32), clip 1.0, StepLR 0.9 per epoch, batch 32, no masking, expressed genes
    /// with `<cls>` valued 0, up to 3,001 tokens.
    pub fn finetune_recipe() -> Self {
        Self {
            objectives: Objectives::default(),
            epochs: 10,
            lr: 1e-4,
            batch_size: 32,
            mask_ratio: 0.0,
            seed: 0,
            adam: AdamConfig::default(),
            schedule: ScheduleSpec::Step { gamma: 0.9 },
            freeze: Freeze::default(),
            patience: None,
            checkpoint_every: None,
            tokens: TokenSettings {
                include_zero_genes: false,
                max_len: 3001,
                cls_value: 0.0,
                n_bins: 51,
                pad_value: -2.0,
                mask_value: -1.0,
            },
            use_batch_labels: false,
            by_batch: false,
            generative: None,
            augment_depth: None,
            simulate_oom_above: None,
        }
    }

    /// scGPT's generative pretraining: 6 epochs, Adam 1e-4, cosine with 10 % warm-up,
    /// expressed genes with `<cls>` valued as padding, up to 1,200 tokens.
    pub fn pretrain_recipe() -> Self {
        let ft = Self::finetune_recipe();
        Self {
            epochs: 6,
            schedule: ScheduleSpec::Cosine {
                warmup_fraction: 0.1,
            },
            tokens: TokenSettings {
                max_len: 1200,
                cls_value: ft.tokens.pad_value,
                ..ft.tokens.clone()
            },
            generative: Some(pretrain::GenerativeSettings::default()),
            ..ft
        }
    }
}

/// One minibatch's losses (and its class labels, for accuracy), built from the cells `idx`
/// with masking / gene splits drawn from `rng`. `None` when the cells are too short for
/// the generative split.
#[allow(clippy::too_many_arguments)]
fn batch_losses<B: Backend>(
    model: &ScGpt<B>,
    set: &CellSet,
    idx: &[usize],
    cfg: &TrainConfig,
    pad_id: u32,
    rng: &mut Rng,
    step: u64,
    training: bool,
    device: &B::Device,
) -> Result<Option<LabelledLosses<B>>, TrainError> {
    match &cfg.generative {
        Some(g) => {
            let cells: Vec<crate::tokenize::CellTokens> =
                idx.iter().map(|&i| set.cells.get(i)).collect();
            let ratio = if g.ratios.is_empty() {
                0.5
            } else {
                g.ratios[rng.below(g.ratios.len())]
            };
            let Some(h) = pretrain::gen_host_batch(
                &cells,
                ratio,
                cfg.tokens.max_len,
                pad_id,
                cfg.tokens.pad_value,
                rng,
            ) else {
                return Ok(None);
            };
            let prompt = g.cell_prompt_after.is_some_and(|a| step >= a);
            let l = pretrain::generative_losses(model, &h, pad_id, g, prompt, device)?;
            Ok(Some((l, None)))
        }
        None => {
            let depth = cfg.augment_depth.filter(|_| training);
            let host = host_batch(set, idx, &cfg.tokens, pad_id, cfg.mask_ratio, depth, rng);
            let tb = host.to_device::<B>(pad_id, cfg.use_batch_labels, device);
            let l = compute_losses(model, &tb, &cfg.objectives)?;
            Ok(Some((l, host.labels)))
        }
    }
}

/// Per-step progress.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub epoch: usize,
    pub step: u64,
    pub total_steps: u64,
    /// `(name, unweighted value)` of each loss term, then `("total", weighted sum)`.
    pub losses: Vec<(String, f64)>,
    pub lr: f64,
    pub grad_norm: f64,
    pub cells_per_s: f64,
    pub eta_s: f64,
}

/// End-of-epoch validation.
#[derive(Clone, Debug, Serialize)]
pub struct ValidReport {
    pub epoch: usize,
    pub loss: f64,
    pub losses: Vec<(String, f64)>,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub best: bool,
}

/// What the loop reports as it goes.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    Step(StepReport),
    Validation(ValidReport),
    Checkpoint(PathBuf),
    Resumed {
        step: u64,
        epoch: usize,
    },
    EarlyStop {
        epoch: usize,
    },
    /// The device ran out of memory: minibatches are now taken in pieces of about this many
    /// cells, one optimiser step each (the back-off is kept by checkpoints).
    BatchReduced {
        cells: usize,
    },
}

/// How a finished run went.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    /// `(step, total loss)` per step.
    pub train: Vec<(u64, f64)>,
    /// `(epoch, validation loss, accuracy)`.
    pub valid: Vec<(usize, f64, Option<f64>)>,
    pub best_epoch: Option<usize>,
    pub best_loss: Option<f64>,
    pub steps: u64,
    pub seconds: f64,
    pub early_stopped: bool,
}

/// Resumable state written next to the weights of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointState {
    /// Optimiser steps taken.
    step: u64,
    /// Epoch in progress and how many of its minibatches are done.
    epoch: usize,
    batch_in_epoch: usize,
    history: History,
    epochs_without_improvement: usize,
    /// How many times the minibatch was halved after the device ran out of memory: each
    /// scheduled minibatch is then taken as `2^batch_split` consecutive steps.
    #[serde(default)]
    batch_split: u32,
    /// Which of those pieces of the current minibatch comes next.
    #[serde(default)]
    piece: usize,
}

/// Name of the training history written next to a trained model.
pub const TRAIN_LOG: &str = "train_log.json";

const CKPT_DIR: &str = "checkpoint";
const CKPT_OPTIM: &str = "optimizer.safetensors";
const CKPT_STATE: &str = "state.json";

fn ckpt_err(path: &Path, message: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn save_checkpoint<B: AutodiffBackend>(
    out: &Path,
    model: &ScGpt<B>,
    vocab: &GeneVocab,
    adam: &Adam<B>,
    state: &CheckpointState,
) -> Result<PathBuf, TrainError> {
    // A checkpoint is a folder written whole under a new name, then swapped in, so a kill
    // at any moment leaves one complete checkpoint (`checkpoint`, or `checkpoint.old`
    // between the two renames).
    let dir = out.join(CKPT_DIR);
    let new = out.join(format!("{CKPT_DIR}.new"));
    let old = out.join(format!("{CKPT_DIR}.old"));
    let _ = std::fs::remove_dir_all(&new);
    let mut inner = model.valid();
    crate::model::save_native(
        &mut inner,
        vocab,
        &new,
        serde_json::json!({"checkpoint_step": state.step}),
    )?;
    let moments = adam.state_tensors().map_err(|e| ckpt_err(&new, e))?;
    crate::model::write_safetensors(&new.join(CKPT_OPTIM), &moments)?;
    let text = serde_json::to_string_pretty(state).map_err(|e| ckpt_err(&new, e))?;
    crate::model::write_atomic(&new.join(CKPT_STATE), text.as_bytes())?;
    if dir.exists() {
        // `checkpoint.old` is a leftover only while `checkpoint` exists; otherwise it is the
        // one complete checkpoint and stays until the new one is in place.
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&dir, &old).map_err(|e| ckpt_err(&dir, e))?;
    }
    std::fs::rename(&new, &dir).map_err(|e| ckpt_err(&dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(dir)
}

/// A checkpoint read back: weights (canonical names), optimiser moments, loop state.
struct Checkpoint {
    weights: crate::model::StateDict,
    moments: std::collections::BTreeMap<String, HostTensor>,
    state: CheckpointState,
}

fn read_checkpoint(out: &Path) -> Result<Option<Checkpoint>, TrainError> {
    let mut dir = out.join(CKPT_DIR);
    let old = out.join(format!("{CKPT_DIR}.old"));
    if !dir.join(CKPT_STATE).is_file() && old.join(CKPT_STATE).is_file() {
        // Killed between the two renames of a checkpoint swap.
        dir = old;
    }
    let state_path = dir.join(CKPT_STATE);
    if !state_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| ckpt_err(&state_path, e))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| ckpt_err(&state_path, e))?;
    let weights = crate::model::StateDict::from_named(crate::model::read_safetensors(
        &dir.join(crate::model::NATIVE_WEIGHTS),
    )?)?;
    let moments = crate::model::read_safetensors(&dir.join(CKPT_OPTIM))?
        .into_iter()
        .collect();
    Ok(Some(Checkpoint {
        weights,
        moments,
        state,
    }))
}

fn mix(seed: u64, salt: u64, i: u64) -> u64 {
    Rng::for_item(seed ^ salt, i).next_u64()
}

/// Validation loss, its terms, and (accuracy, macro F1) when the classifier is trained.
type Validation = (f64, Vec<(String, f64)>, Option<(f64, f64)>);

/// Losses (and classifier accuracy) of the evaluation-mode model over `items`.
fn validate<B: Backend>(
    model: &ScGpt<B>,
    set: &CellSet,
    items: &[usize],
    cfg: &TrainConfig,
    pad_id: u32,
    device: &B::Device,
    epoch: usize,
) -> Result<Validation, TrainError> {
    let batches = epoch_batches(
        set,
        items,
        cfg.batch_size,
        cfg.by_batch,
        cfg.seed,
        usize::MAX,
    );
    let mut sums: Vec<(String, f64)> = Vec::new();
    let mut total = 0.0;
    let mut n = 0usize;
    let (mut truth, mut pred) = (Vec::new(), Vec::new());
    for (bi, idx) in batches.iter().enumerate() {
        let mut rng = Rng::for_item(cfg.seed ^ 0x7a11d, (epoch as u64) << 32 | bi as u64);
        let Some((l, labels)) =
            batch_losses(model, set, idx, cfg, pad_id, &mut rng, 0, false, device)?
        else {
            continue;
        };
        let w = idx.len() as f64;
        let mut values = l.values()?;
        total += values.pop().map_or(0.0, |t| t.1) * w;
        for (i, (name, v)) in values.into_iter().enumerate() {
            if sums.len() <= i {
                sums.push((name, 0.0));
            }
            sums[i].1 += v * w;
        }
        n += idx.len();
        if let (Some(logits), Some(labels)) = (l.cls_logits, &labels) {
            let am = logits
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .into_vec::<i64>()
                .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
            pred.extend(am.iter().map(|&x| x as u32));
            truth.extend_from_slice(labels);
        }
    }
    let n = n.max(1) as f64;
    for s in &mut sums {
        s.1 /= n;
    }
    let acc = crate::analysis::metrics::classification_report(&truth, &pred)
        .ok()
        .map(|r| (r.accuracy, r.macro_f1));
    Ok((total / n, sums, acc))
}

/// Train `model` on the cells `train` of `set`, validating on `valid` after every epoch.
/// The best model (lowest validation loss; the last one without validation) is written to
/// `out` as a cellforge model folder with `provenance` in its config, the history to
/// `out/train_log.json` after every epoch; resumable checkpoints go to `out/checkpoint`.
/// With `resume`, training continues from that checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend>(
    mut model: ScGpt<B>,
    vocab: &GeneVocab,
    set: &CellSet,
    train_items: &[usize],
    valid_items: &[usize],
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    device: &B::Device,
    provenance: &serde_json::Value,
    events: &mut dyn FnMut(TrainEvent) -> ControlFlow<()>,
) -> Result<(ScGpt<B>, History), TrainError> {
    let obj = &cfg.objectives;
    let finetuning = cfg.generative.is_none();
    if finetuning && obj.active().is_empty() {
        return Err(TrainError::Objectives("no objective is on".into()));
    }
    if finetuning && obj.needs_mask() && cfg.mask_ratio <= 0.0 {
        return Err(TrainError::Objectives(
            "GEP/GEPC predict masked values: set a mask ratio above 0 (scGPT uses 0.4)".into(),
        ));
    }
    if train_items.is_empty() {
        return Err(TrainError::Input("no training cells".into()));
    }
    let pad_id = vocab
        .special(&model.config().pad_token)
        .map_err(TrainError::Input)?;
    let per_epoch = epoch_batches(set, train_items, cfg.batch_size, cfg.by_batch, cfg.seed, 0)
        .len()
        .max(1);
    let total_steps = (per_epoch * cfg.epochs) as u64;
    let schedule = match cfg.schedule {
        ScheduleSpec::Constant => Schedule::Constant,
        ScheduleSpec::Step { gamma } => Schedule::Step {
            every_epochs: 1,
            gamma,
        },
        ScheduleSpec::Cosine { warmup_fraction } => Schedule::CosineWarmup {
            warmup_steps: (total_steps as f64 * warmup_fraction).round() as usize,
            total_steps: total_steps as usize,
        },
    };
    let mut adam = Adam::<B>::new(cfg.adam.clone(), cfg.freeze.clone());
    let mut state = CheckpointState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        history: History::default(),
        epochs_without_improvement: 0,
        batch_split: 0,
        piece: 0,
    };
    if resume && let Some(ck) = read_checkpoint(out)? {
        let report = crate::model::weights::load_into(&mut model, &ck.weights, device)?;
        if !report.unexpected.is_empty() {
            return Err(ckpt_err(
                &out.join(CKPT_DIR),
                format!(
                    "holds weights this model does not have ({}); it belongs to another run",
                    report.unexpected.join(", ")
                ),
            ));
        }
        adam.load_state(ck.state.step, &ck.moments, device)
            .map_err(|e| ckpt_err(&out.join(CKPT_DIR), e))?;
        state = ck.state;
        let _ = events(TrainEvent::Resumed {
            step: state.step,
            epoch: state.epoch,
        });
    }
    let start = Instant::now();
    let seconds_before = state.history.seconds;
    let mut cells_done = 0usize;
    let steps_at_start = state.step;
    while state.epoch < cfg.epochs {
        let epoch = state.epoch;
        let batches = epoch_batches(
            set,
            train_items,
            cfg.batch_size,
            cfg.by_batch,
            cfg.seed,
            epoch,
        );
        while state.batch_in_epoch < batches.len() {
            let full = &batches[state.batch_in_epoch];
            // After an out-of-memory back-off the minibatch is taken in 2^k pieces whose
            // boundaries nest (piece p of n is [p*len/n, (p+1)*len/n)), so halving again
            // continues exactly where the failed piece began.
            let pieces = 1usize << state.batch_split;
            let at = |p: usize| p * full.len() / pieces;
            let idx = &full[at(state.piece)..at(state.piece + 1)];
            let advance = |state: &mut CheckpointState| {
                state.piece += 1;
                if state.piece >= pieces {
                    state.piece = 0;
                    state.batch_in_epoch += 1;
                }
            };
            if idx.is_empty() {
                advance(&mut state);
                continue;
            }
            let step = state.step;
            B::seed(device, mix(cfg.seed, 0xd409, step));
            let mut rng = Rng::for_item(cfg.seed ^ 0x3a5c, step);
            // A failed device allocation panics inside the backend: catch it before the
            // optimiser touches the weights, halve the piece, and take the same cells again.
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if cfg.simulate_oom_above.is_some_and(|m| idx.len() > m) {
                    panic!(
                        "injected fault: out of memory allocating a training step of {} cells",
                        idx.len()
                    );
                }
                let Some((losses, _)) =
                    batch_losses(&model, set, idx, cfg, pad_id, &mut rng, step, true, device)?
                else {
                    return Ok(None);
                };
                let terms = losses.values()?;
                let total = terms.last().map_or(f64::NAN, |t| t.1);
                if !total.is_finite() {
                    return Err(TrainError::NotFinite {
                        value: total,
                        step,
                        epoch,
                    });
                }
                let grads = losses.total.backward();
                Ok(Some((terms, total, grads, losses.bn)))
            }));
            let (terms, total, grads, bn) = match attempt {
                Ok(Ok(Some(x))) => x,
                Ok(Ok(None)) => {
                    advance(&mut state);
                    continue;
                }
                Ok(Err(e)) => return Err(e),
                Err(p) => {
                    let msg = crate::sys::panic_message(p.as_ref());
                    if !crate::sys::is_oom_message(&msg) {
                        return Err(TrainError::Device(msg));
                    }
                    if idx.len() <= 1 || state.batch_split >= 16 {
                        return Err(TrainError::Device(format!(
                            "out of memory even with one cell per step ({msg}); try the CPU \
                             or a shorter --max-len"
                        )));
                    }
                    state.batch_split += 1;
                    state.piece *= 2;
                    let _ = events(TrainEvent::BatchReduced {
                        cells: idx.len().div_ceil(2),
                    });
                    continue;
                }
            };
            let lr = cfg.lr * schedule.factor(step as usize, epoch);
            let info = adam.step(&mut model, &grads, lr);
            for bn in &bn {
                model.update_bn(bn);
            }
            state.step += 1;
            advance(&mut state);
            state.history.train.push((step, total));
            cells_done += idx.len();
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let done = (state.step - steps_at_start) as f64;
            let report = StepReport {
                epoch,
                step: state.step,
                total_steps,
                losses: terms,
                lr,
                grad_norm: info.grad_norm,
                cells_per_s: cells_done as f64 / secs,
                eta_s: secs / done * (total_steps.saturating_sub(state.step)) as f64,
            };
            let cancel = events(TrainEvent::Step(report)).is_break();
            let due = cfg
                .checkpoint_every
                .is_some_and(|n| n > 0 && state.step.is_multiple_of(n as u64));
            if due || cancel {
                let dir = save_checkpoint(out, &model, vocab, &adam, &state)?;
                let _ = events(TrainEvent::Checkpoint(dir));
            }
            if cancel {
                return Err(TrainError::Cancelled);
            }
        }
        // End of epoch: validate, keep the best, maybe stop.
        let inner = model.valid();
        let (improved, stop) = if valid_items.is_empty() {
            (true, false)
        } else {
            let (loss, losses, acc) =
                validate(&inner, set, valid_items, cfg, pad_id, device, epoch)?;
            let improved = state.history.best_loss.is_none_or(|b| loss < b);
            state.history.valid.push((epoch, loss, acc.map(|a| a.0)));
            if improved {
                state.history.best_loss = Some(loss);
                state.epochs_without_improvement = 0;
            } else {
                state.epochs_without_improvement += 1;
            }
            let _ = events(TrainEvent::Validation(ValidReport {
                epoch,
                loss,
                losses,
                accuracy: acc.map(|a| a.0),
                macro_f1: acc.map(|a| a.1),
                best: improved,
            }));
            let stop = cfg
                .patience
                .is_some_and(|p| state.epochs_without_improvement >= p);
            (improved, stop)
        };
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.piece = 0;
        state.history.steps = state.step;
        state.history.seconds = seconds_before + start.elapsed().as_secs_f64();
        if improved {
            state.history.best_epoch = Some(epoch);
            let mut inner = inner;
            crate::model::save_native(&mut inner, vocab, out, provenance.clone())?;
        }
        if stop {
            state.history.early_stopped = true;
            let _ = events(TrainEvent::EarlyStop { epoch });
            state.epoch = cfg.epochs;
        }
        let log =
            serde_json::to_string(&state.history).map_err(|e| ckpt_err(&out.join(TRAIN_LOG), e))?;
        crate::model::write_atomic(&out.join(TRAIN_LOG), log.as_bytes())?;
        if cfg.checkpoint_every.is_some() {
            let dir = save_checkpoint(out, &model, vocab, &adam, &state)?;
            let _ = events(TrainEvent::Checkpoint(dir));
        }
    }
    Ok((model, state.history))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::pretrain::{ModelSize, pretrain_config};

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    fn state(step: u64) -> CheckpointState {
        CheckpointState {
            step,
            epoch: 0,
            batch_in_epoch: step as usize,
            history: History::default(),
            epochs_without_improvement: 0,
            batch_split: 0,
            piece: 0,
        }
    }

    /// Pins the checkpoint swap: a kill between its two renames leaves `checkpoint.old`,
    /// which resuming uses; a half-written `checkpoint.new` is never read.
    #[test]
    fn checkpoint_swap_survives_a_kill_between_renames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        let size = ModelSize {
            d_model: 8,
            nlayers: 1,
            nhead: 2,
            d_hid: 8,
            dropout: 0.0,
        };
        let genes: Vec<String> = ["a", "b", "<pad>", "<cls>", "<eoc>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab = GeneVocab::from_tokens(genes).expect("vocab");
        let dev = Default::default();
        let model = ScGpt::<B>::init(&pretrain_config(vocab.len(), &size, 8), &dev);
        let adam = Adam::<B>::new(AdamConfig::default(), Freeze::default());
        save_checkpoint(out, &model, &vocab, &adam, &state(3)).expect("save 3");
        save_checkpoint(out, &model, &vocab, &adam, &state(6)).expect("save 6");
        assert!(!out.join("checkpoint.new").exists() && !out.join("checkpoint.old").exists());
        let read = |out: &Path| read_checkpoint(out).expect("read").map(|c| c.state.step);
        assert_eq!(read(out), Some(6));
        // Killed after `checkpoint` -> `checkpoint.old`, before `checkpoint.new` -> `checkpoint`,
        // with the new one half written.
        std::fs::rename(out.join(CKPT_DIR), out.join("checkpoint.old")).expect("rename");
        std::fs::create_dir_all(out.join("checkpoint.new")).expect("mkdir");
        std::fs::write(out.join("checkpoint.new").join(CKPT_STATE), "{\"step\": 9").expect("w");
        assert_eq!(read(out), Some(6), "the complete old checkpoint is used");
        // The next save cleans up and swaps in a complete one.
        save_checkpoint(out, &model, &vocab, &adam, &state(9)).expect("save 9");
        assert_eq!(read(out), Some(9));
        assert!(!out.join("checkpoint.new").exists() && !out.join("checkpoint.old").exists());
    }
}
