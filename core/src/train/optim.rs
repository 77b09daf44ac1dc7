//! Adam / AdamW over the model's named parameters, with PyTorch's global gradient-norm
//! clipping (`clip_grad_norm_`, one norm over all parameters, which burn's per-tensor
//! clipping is not), freezing by name, learning-rate schedules, and a state that can be
//! written to disk and read back for exact resumption.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::ScGpt;
use crate::model::statedict::HostTensor;
use crate::model::weights::{Layout, ParamVisitor, visit};

/// Optimiser settings (defaults: the scGPT fine-tuning recipe, fp32).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    /// scGPT uses 1e-8 in fp32 and 1e-4 under mixed precision.
    pub eps: f64,
    /// Decoupled weight decay (AdamW) when `decoupled`, else L2 added to the gradient.
    pub weight_decay: f64,
    pub decoupled: bool,
    /// Global gradient-norm clip (`None`: off). scGPT: 1.0.
    pub clip_norm: Option<f64>,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            clip_norm: Some(1.0),
        }
    }
}

/// Learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Schedule {
    Constant,
    /// PyTorch `StepLR`: multiply by `gamma` every `every_epochs` epochs (scGPT: 1, 0.9).
    Step {
        every_epochs: usize,
        gamma: f64,
    },
    /// `get_cosine_schedule_with_warmup`: linear warm-up over `warmup_steps`, then a
    /// half-cosine to 0 at `total_steps`.
    CosineWarmup {
        warmup_steps: usize,
        total_steps: usize,
    },
}

impl Schedule {
    /// Multiplier of the base rate at optimiser step `step` (0-based) in epoch `epoch`.
    pub fn factor(&self, step: usize, epoch: usize) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Step {
                every_epochs,
                gamma,
            } => gamma.powi((epoch / every_epochs.max(1)) as i32),
            Schedule::CosineWarmup {
                warmup_steps,
                total_steps,
            } => {
                if step < warmup_steps {
                    step as f64 / warmup_steps.max(1) as f64
                } else {
                    let progress = (step - warmup_steps) as f64
                        / (total_steps.saturating_sub(warmup_steps)).max(1) as f64;
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
        }
    }
}

/// Which parameters the optimiser leaves alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Freeze {
    /// scGPT's `freeze`: every parameter whose name contains "encoder" but not
    /// "transformer_encoder" (gene, value and batch embeddings).
    pub embeddings: bool,
    /// The first `n` transformer layers.
    pub layers: usize,
}

impl Freeze {
    pub fn is_frozen(&self, name: &str) -> bool {
        if name.contains("running_mean") || name.contains("running_var") {
            return true;
        }
        if self.embeddings && name.contains("encoder") && !name.contains("transformer_encoder") {
            return true;
        }
        if let Some(rest) = name.strip_prefix("transformer_encoder.layers.")
            && let Some(i) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok())
        {
            return i < self.layers;
        }
        false
    }
}

/// Adam moments of one parameter (flattened).
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// Adam/AdamW with named state.
pub struct Adam<B: AutodiffBackend> {
    pub config: AdamConfig,
    pub freeze: Freeze,
    /// Optimiser steps taken.
    pub step: u64,
    state: BTreeMap<String, Moments<B::InnerBackend>>,
}

/// What one optimiser step saw.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Factor the gradients were scaled by (1 when not clipped).
    pub clip_scale: f64,
}

struct NormVisitor<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    freeze: &'a Freeze,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ParamVisitor<B> for NormVisitor<'_, B> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, _: Layout) {
        if self.freeze.is_frozen(name) {
            return;
        }
        if let Some(g) = p.val().grad(self.grads) {
            let sq = g.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

struct UpdateVisitor<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    config: &'a AdamConfig,
    freeze: &'a Freeze,
    state: &'a mut BTreeMap<String, Moments<B::InnerBackend>>,
    lr: f64,
    scale: f64,
    t: i32,
}

impl<B: AutodiffBackend> ParamVisitor<B> for UpdateVisitor<'_, B> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, _: Layout) {
        if self.freeze.is_frozen(name) {
            return;
        }
        let Some(g) = p.val().grad(self.grads) else {
            return;
        };
        let shape = p.dims();
        let n: usize = shape.iter().product();
        let c = self.config;
        let mut w = p.val().inner().reshape([n]);
        let mut g = g.reshape([n]);
        if self.scale != 1.0 {
            g = g * self.scale;
        }
        if c.weight_decay > 0.0 {
            if c.decoupled {
                w = w * (1.0 - self.lr * c.weight_decay);
            } else {
                g = g + w.clone() * c.weight_decay;
            }
        }
        let (m, v) = match self.state.remove(name) {
            Some(s) => (
                s.m * c.beta1 + g.clone() * (1.0 - c.beta1),
                s.v * c.beta2 + g.powi_scalar(2) * (1.0 - c.beta2),
            ),
            None => (
                g.clone() * (1.0 - c.beta1),
                g.powi_scalar(2) * (1.0 - c.beta2),
            ),
        };
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        // PyTorch: w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
        let denom = v.clone().sqrt() / bc2.sqrt() + c.eps;
        let w = w - m.clone() / denom * (self.lr / bc1);
        self.state.insert(name.to_owned(), Moments { m, v });
        let w = Tensor::<B, D>::from_inner(w.reshape(shape)).require_grad();
        *p = Param::initialized(p.id, w);
    }
}

struct StateSaver<'a, B: Backend> {
    state: &'a BTreeMap<String, Moments<B>>,
    out: Vec<(String, HostTensor)>,
    error: Option<String>,
}

fn host<B: Backend>(t: Tensor<B, 1>) -> Result<HostTensor, String> {
    let n = t.dims()[0];
    let data = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    Ok(HostTensor {
        shape: vec![n],
        data,
    })
}

impl<B: Backend> StateSaver<'_, B> {
    fn save(&mut self) {
        for (name, s) in self.state {
            match (host(s.m.clone()), host(s.v.clone())) {
                (Ok(m), Ok(v)) => {
                    self.out.push((format!("{name}.exp_avg"), m));
                    self.out.push((format!("{name}.exp_avg_sq"), v));
                }
                (Err(e), _) | (_, Err(e)) => self.error = Some(format!("{name}: {e}")),
            }
        }
    }
}

impl<B: AutodiffBackend> Adam<B> {
    pub fn new(config: AdamConfig, freeze: Freeze) -> Self {
        Self {
            config,
            freeze,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// Clip (globally) and apply one update with learning rate `lr`.
    pub fn step(&mut self, model: &mut ScGpt<B>, grads: &B::Gradients, lr: f64) -> StepInfo {
        let mut norm = NormVisitor::<B> {
            grads,
            freeze: &self.freeze,
            total: None,
        };
        visit(model, &mut norm);
        let grad_norm = norm
            .total
            .map(|t| f64::from(t.into_scalar().elem::<f32>()).sqrt())
            .unwrap_or(0.0);
        let scale = match self.config.clip_norm {
            // PyTorch: clip_coef = max_norm / (total_norm + 1e-6), clamped at 1.
            Some(max) if grad_norm.is_finite() => (max / (grad_norm + 1e-6)).min(1.0),
            _ => 1.0,
        };
        self.step += 1;
        let mut up = UpdateVisitor::<B> {
            grads,
            config: &self.config,
            freeze: &self.freeze,
            state: &mut self.state,
            lr,
            scale,
            t: self.step.min(i32::MAX as u64) as i32,
        };
        visit(model, &mut up);
        StepInfo {
            grad_norm,
            clip_scale: scale,
        }
    }

    /// The moments as named host tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`).
    pub fn state_tensors(&self) -> Result<Vec<(String, HostTensor)>, String> {
        let mut saver = StateSaver {
            state: &self.state,
            out: Vec::new(),
            error: None,
        };
        saver.save();
        match saver.error {
            Some(e) => Err(e),
            None => Ok(saver.out),
        }
    }

    /// Restore moments written by [`Adam::state_tensors`] and the step count.
    pub fn load_state(
        &mut self,
        step: u64,
        tensors: &BTreeMap<String, HostTensor>,
        device: &B::Device,
    ) -> Result<(), String> {
        self.step = step;
        self.state.clear();
        for (key, m) in tensors {
            let Some(name) = key.strip_suffix(".exp_avg") else {
                continue;
            };
            let v = tensors
                .get(&format!("{name}.exp_avg_sq"))
                .ok_or_else(|| format!("optimizer state has {key} but no {name}.exp_avg_sq"))?;
            if v.data.len() != m.data.len() {
                return Err(format!("optimizer state for {name}: moment sizes differ"));
            }
            let t = |h: &HostTensor| {
                Tensor::<B::InnerBackend, 1>::from_data(
                    TensorData::new(h.data.clone(), [h.data.len()]),
                    device,
                )
            };
            self.state
                .insert(name.to_owned(), Moments { m: t(m), v: t(v) });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = Schedule::Step {
            every_epochs: 1,
            gamma: 0.9,
        };
        assert_eq!(s.factor(123, 0), 1.0);
        assert!((s.factor(0, 2) - 0.81).abs() < 1e-12);
        let c = Schedule::CosineWarmup {
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(c.factor(0, 0), 0.0);
        assert!((c.factor(5, 0) - 0.5).abs() < 1e-12);
        assert!((c.factor(10, 0) - 1.0).abs() < 1e-12);
        assert!((c.factor(60, 0) - 0.5).abs() < 1e-12);
        assert!(c.factor(110, 0).abs() < 1e-12);
    }

    #[test]
    fn freeze_rules() {
        let f = Freeze {
            embeddings: true,
            layers: 1,
        };
        assert!(f.is_frozen("encoder.embedding.weight"));
        assert!(f.is_frozen("value_encoder.linear1.weight"));
        assert!(f.is_frozen("batch_encoder.enc_norm.weight"));
        assert!(f.is_frozen("transformer_encoder.layers.0.linear1.weight"));
        assert!(!f.is_frozen("transformer_encoder.layers.1.linear1.weight"));
        assert!(!f.is_frozen("cls_decoder.out_layer.weight"));
        assert!(f.is_frozen("dsbn.bns.0.running_mean"));
        assert!(!Freeze::default().is_frozen("encoder.embedding.weight"));
    }
}
