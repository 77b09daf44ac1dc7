//! Named host tensors (a PyTorch-style state dict) with scGPT's key spellings unified.

use std::collections::{BTreeMap, BTreeSet};

use super::ModelError;

/// A dense f32 tensor on the host, row-major, in PyTorch's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ModelError> {
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| ModelError::Config(format!("tensor shape {shape:?} overflows")))?;
        if n != data.len() {
            return Err(ModelError::Config(format!(
                "tensor shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Transpose a 2-D tensor (PyTorch `[out, in]` <-> burn `[in, out]`).
    pub fn transposed(&self) -> HostTensor {
        if self.shape.len() != 2 {
            return self.clone();
        }
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor {
            shape: vec![c, r],
            data: out,
        }
    }
}

/// Which spelling of the attention weights a checkpoint used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvSpelling {
    /// flash-attn 1.x: `self_attn.Wqkv.*` (the released checkpoints).
    Flash,
    /// scGPT >= 0.2.5 flash wrapper: `self_attn._impl.Wqkv.*`, `self_attn._impl.out_proj.*`.
    FlashWrapped,
    /// `torch.nn.MultiheadAttention`: `self_attn.in_proj_weight` / `in_proj_bias`.
    PyTorch,
}

/// A state dict with canonical key names: no `module.` prefix and the flash-attn 1.x
/// spelling `self_attn.Wqkv.*` / `self_attn.out_proj.*` for attention.
#[derive(Clone, Debug, Default)]
pub struct StateDict {
    tensors: BTreeMap<String, HostTensor>,
    /// Spellings seen while canonicalising (for the load report).
    pub spellings: BTreeSet<&'static str>,
    /// Whether a DDP `module.` prefix was stripped.
    pub stripped_module_prefix: bool,
}

/// Map one key to its canonical spelling; returns the spelling family it used.
pub fn canonical_key(key: &str) -> (String, Option<QkvSpelling>, bool) {
    let mut k = key;
    let mut stripped = false;
    while let Some(rest) = k.strip_prefix("module.") {
        k = rest;
        stripped = true;
    }
    let mut out = k.to_owned();
    let mut spelling = None;
    if out.contains("self_attn._impl.Wqkv.") {
        out = out.replace("self_attn._impl.Wqkv.", "self_attn.Wqkv.");
        spelling = Some(QkvSpelling::FlashWrapped);
    } else if out.contains("self_attn._impl.out_proj.") {
        out = out.replace("self_attn._impl.out_proj.", "self_attn.out_proj.");
        spelling = Some(QkvSpelling::FlashWrapped);
    } else if out.ends_with("self_attn.in_proj_weight") || out.ends_with("self_attn.in_proj_bias") {
        out = out
            .replace("self_attn.in_proj_weight", "self_attn.Wqkv.weight")
            .replace("self_attn.in_proj_bias", "self_attn.Wqkv.bias");
        spelling = Some(QkvSpelling::PyTorch);
    } else if out.contains("self_attn.Wqkv.") {
        spelling = Some(QkvSpelling::Flash);
    }
    (out, spelling, stripped)
}

impl StateDict {
    /// Canonicalise a list of named tensors. Two keys that map to the same canonical name
    /// (e.g. both `Wqkv` and `in_proj_weight` for one layer) are an error.
    pub fn from_named(named: Vec<(String, HostTensor)>) -> Result<Self, ModelError> {
        let mut sd = StateDict::default();
        for (name, t) in named {
            let (key, spelling, stripped) = canonical_key(&name);
            sd.stripped_module_prefix |= stripped;
            if let Some(s) = spelling {
                sd.spellings.insert(match s {
                    QkvSpelling::Flash => "self_attn.Wqkv",
                    QkvSpelling::FlashWrapped => "self_attn._impl.Wqkv",
                    QkvSpelling::PyTorch => "self_attn.in_proj",
                });
            }
            if sd.tensors.insert(key.clone(), t).is_some() {
                return Err(ModelError::Config(format!(
                    "the checkpoint holds two tensors for \"{key}\" under different spellings \
                     (last one: \"{name}\")"
                )));
            }
        }
        Ok(sd)
    }

    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors
            .range(prefix.to_owned()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    pub fn insert(&mut self, key: String, t: HostTensor) {
        self.tensors.insert(key, t);
    }
    pub fn remove(&mut self, key: &str) -> Option<HostTensor> {
        self.tensors.remove(key)
    }
    pub fn into_inner(self) -> BTreeMap<String, HostTensor> {
        self.tensors
    }
}
