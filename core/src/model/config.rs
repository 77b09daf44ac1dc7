//! Model configuration: what an scGPT `args.json` plus the checkpoint's keys say about a
//! model, and what cellforge's native `config.json` stores.

use serde::{Deserialize, Serialize};

use super::ModelError;
use super::statedict::StateDict;

/// How expression values enter the model (scGPT `input_emb_style`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputEmbStyle {
    /// `LayerNorm(W2 ReLU(W1 min(v, 512)))` added to the gene embedding (released models).
    Continuous,
    /// Binned values looked up in an embedding table of `n_input_bins` rows.
    Category,
    /// Gene embedding multiplied by the value.
    Scaling,
}

/// How the cell embedding is read from the transformer output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellEmbStyle {
    /// Row 0 (the `<cls>` token).
    Cls,
    /// Mean over the cell's positions (`<cls>` included; scGPT also counts padding).
    AvgPool,
    /// Sum weighted by the input values, then L2-normalised (padding left out).
    WPool,
}

impl CellEmbStyle {
    /// The style scGPT's `cell_emb_style` names: `cls`, `avg-pool` or `w-pool`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "cls" => Some(Self::Cls),
            "avg-pool" => Some(Self::AvgPool),
            "w-pool" => Some(Self::WPool),
            _ => None,
        }
    }
}

/// MVC (GEPC) decoder architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MvcStyle {
    InnerProduct,
    InnerProductDetach,
    ConcatQuery,
    SumQuery,
}

impl MvcStyle {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inner product" => Some(Self::InnerProduct),
            "inner product, detach" => Some(Self::InnerProductDetach),
            "concat query" => Some(Self::ConcatQuery),
            "sum query" => Some(Self::SumQuery),
            _ => None,
        }
    }
}

/// Normalisation applied to the input embeddings before the transformer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputNorm {
    None,
    /// Domain-specific BatchNorm: one (non-affine) BatchNorm per batch label.
    Dsbn {
        num_domains: usize,
    },
    /// One affine BatchNorm.
    BatchNorm,
}

/// Which model class of the family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// `TransformerModel` (also the generative pretraining model when `flag_encoder` exists).
    Transformer,
    /// `TransformerGenerator` (perturbation) with the affine expression decoder.
    Generator {
        pert_pad_id: usize,
        decoder_activation: Option<String>,
        adaptive_bias: bool,
    },
    /// `MultiOmicTransformerModel` with a modality encoder of `ntokens_mod` rows.
    MultiOmic { ntokens_mod: usize },
}

/// Everything needed to build and run a model of the scGPT family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Vocabulary size (embedding rows).
    pub ntoken: usize,
    pub d_model: usize,
    pub nhead: usize,
    pub d_hid: usize,
    pub nlayers: usize,
    /// Layers of the classifier head (including its output layer).
    pub nlayers_cls: usize,
    /// Classes of the classifier head; `None` when the model has no classifier.
    pub n_cls: Option<usize>,
    pub dropout: f32,
    pub pad_token: String,
    pub pad_value: f32,
    pub mask_value: f32,
    pub n_bins: usize,
    pub max_seq_len: usize,
    pub input_emb_style: InputEmbStyle,
    pub n_input_bins: Option<usize>,
    pub cell_emb_style: CellEmbStyle,
    /// MVC decoder style; `None` when the model has no MVC decoder.
    pub mvc: Option<MvcStyle>,
    pub explicit_zero_prob: bool,
    pub input_norm: InputNorm,
    /// Batch-label encoder size (scGPT `use_batch_labels`); `None` when off.
    pub num_batch_labels: Option<usize>,
    /// Adversarial batch discriminator classes; `None` when off.
    pub dab_classes: Option<usize>,
    pub pre_norm: bool,
    /// The generative pretraining flag embedding is present.
    pub generative: bool,
    pub ecs_threshold: f32,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.nhead.max(1)
    }

    /// Check internal consistency (sizes divisible, styles with what they need).
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.d_model == 0 || self.nhead == 0 || self.nlayers == 0 || self.d_hid == 0 {
            return bad("embsize, nheads, nlayers and d_hid must all be positive".into());
        }
        if !self.d_model.is_multiple_of(self.nhead) {
            return bad(format!(
                "embsize {} is not divisible by nheads {}",
                self.d_model, self.nhead
            ));
        }
        if self.input_emb_style == InputEmbStyle::Category && self.n_input_bins.is_none() {
            return bad("input_emb_style \"category\" needs n_input_bins".into());
        }
        if let InputNorm::Dsbn { num_domains } = self.input_norm
            && num_domains == 0
        {
            return bad("domain-specific batchnorm with zero domains".into());
        }
        Ok(())
    }

    /// Build a configuration from an scGPT `args.json` and the keys/shapes of the
    /// checkpoint: sizes come from the args (checked against the weights), and which heads
    /// exist (MVC, classifier, batch encoder, DSBN/BN, discriminator, zero-probability
    /// heads, flag embedding) from the weights, since fine-tuned checkpoints add heads the
    /// pretraining args do not mention.
    pub fn from_scgpt(args: &serde_json::Value, sd: &StateDict) -> Result<Self, ModelError> {
        let num = |k: &str| args.get(k).and_then(|v| v.as_f64());
        let req = |k: &str| -> Result<usize, ModelError> {
            let v = num(k)
                .ok_or_else(|| ModelError::Config(format!("args.json has no numeric \"{k}\"")))?;
            if v < 0.0 || v.fract() != 0.0 {
                return Err(ModelError::Config(format!(
                    "args.json \"{k}\" = {v} is not a non-negative integer"
                )));
            }
            Ok(v as usize)
        };
        let s = |k: &str| args.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let b = |k: &str| args.get(k).and_then(|v| v.as_bool());

        let d_model = req("embsize")?;
        let nhead = req("nheads")?;
        let d_hid = req("d_hid")?;
        let nlayers = req("nlayers")?;
        let nlayers_cls = req("n_layers_cls").unwrap_or(3);

        let emb = sd
            .shape("encoder.embedding.weight")
            .ok_or_else(|| ModelError::MissingWeights(vec!["encoder.embedding.weight".into()]))?;
        if emb.len() != 2 {
            return Err(ModelError::Shape {
                name: "encoder.embedding.weight".into(),
                expected: "[ntoken, embsize]".into(),
                found: emb.to_vec(),
            });
        }
        if emb[1] != d_model {
            return Err(ModelError::Config(format!(
                "args.json says embsize {d_model} but the checkpoint's gene embedding is \
                 {} wide (encoder.embedding.weight {:?}); the args and weights belong to \
                 different models",
                emb[1], emb
            )));
        }
        let ntoken = emb[0];

        let input_emb_style = match s("input_emb_style").as_deref() {
            Some("category") => InputEmbStyle::Category,
            Some("scaling") => InputEmbStyle::Scaling,
            Some("continuous") => InputEmbStyle::Continuous,
            None => {
                if sd.contains("value_encoder.embedding.weight") {
                    InputEmbStyle::Category
                } else if sd.has_prefix("value_encoder.") {
                    InputEmbStyle::Continuous
                } else {
                    InputEmbStyle::Scaling
                }
            }
            Some(other) => {
                return Err(ModelError::Config(format!(
                    "unknown input_emb_style \"{other}\" (expected continuous, category or scaling)"
                )));
            }
        };
        let n_input_bins = sd.shape("value_encoder.embedding.weight").map(|s| s[0]);

        let cell_emb_style = match s("cell_emb_style").as_deref() {
            None => CellEmbStyle::Cls,
            Some(name) => CellEmbStyle::from_name(name)
                .ok_or_else(|| ModelError::Config(format!("unknown cell_emb_style \"{name}\"")))?,
        };

        let mvc = if sd.has_prefix("mvc_decoder.") {
            let style = match s("mvc_decoder_style") {
                Some(v) => MvcStyle::parse(&v).ok_or_else(|| {
                    ModelError::Config(format!("unknown mvc_decoder_style \"{v}\""))
                })?,
                None if sd.contains("mvc_decoder.fc1.weight") => {
                    // concat query: fc1 input = d + 64; sum query: fc1 input = d.
                    match sd.shape("mvc_decoder.fc1.weight") {
                        Some(s) if s.len() == 2 && s[1] == d_model => MvcStyle::SumQuery,
                        _ => MvcStyle::ConcatQuery,
                    }
                }
                None => MvcStyle::InnerProduct,
            };
            Some(style)
        } else {
            None
        };

        let n_cls = sd.shape("cls_decoder.out_layer.weight").map(|s| s[0]);
        let nlayers_cls = if n_cls.is_some() {
            1 + (0..)
                .take_while(|i| sd.contains(&format!("cls_decoder._decoder.{}.weight", 3 * i)))
                .count()
        } else {
            nlayers_cls
        };

        let explicit_zero_prob = sd.has_prefix("decoder.zero_logit.")
            || sd.has_prefix("decoder.coeff_decoder.zero_logit.")
            || sd.contains("mvc_decoder.W_zero_logit.weight");

        let input_norm = if sd.has_prefix("dsbn.bns.") {
            let n = (0..)
                .take_while(|i| sd.contains(&format!("dsbn.bns.{i}.running_mean")))
                .count();
            InputNorm::Dsbn { num_domains: n }
        } else if sd.contains("bn.running_mean") {
            InputNorm::BatchNorm
        } else {
            InputNorm::None
        };

        let num_batch_labels = sd.shape("batch_encoder.embedding.weight").map(|s| s[0]);
        let dab_classes = sd
            .shape("grad_reverse_discriminator.out_layer.weight")
            .map(|s| s[0]);

        let kind = if sd.contains("pert_encoder.weight") {
            ModelKind::Generator {
                pert_pad_id: num("pert_pad_id").map(|v| v as usize).unwrap_or(2),
                decoder_activation: s("decoder_activation"),
                adaptive_bias: b("decoder_adaptive_bias").unwrap_or(false),
            }
        } else if let Some(shape) = sd.shape("mod_encoder.embedding.weight") {
            ModelKind::MultiOmic {
                ntokens_mod: shape[0],
            }
        } else {
            ModelKind::Transformer
        };

        let config = ModelConfig {
            kind,
            ntoken,
            d_model,
            nhead,
            d_hid,
            nlayers,
            nlayers_cls,
            n_cls,
            dropout: num("dropout").unwrap_or(0.2) as f32,
            pad_token: s("pad_token").unwrap_or_else(|| "<pad>".into()),
            pad_value: num("pad_value").unwrap_or(-2.0) as f32,
            mask_value: num("mask_value").unwrap_or(-1.0) as f32,
            n_bins: num("n_bins").map(|v| v as usize).unwrap_or(51),
            max_seq_len: num("max_seq_len").map(|v| v as usize).unwrap_or(1200),
            input_emb_style,
            n_input_bins,
            cell_emb_style,
            mvc,
            explicit_zero_prob,
            input_norm,
            num_batch_labels,
            dab_classes,
            pre_norm: b("pre_norm").unwrap_or(false),
            generative: sd.contains("flag_encoder.weight"),
            ecs_threshold: num("ecs_threshold").unwrap_or(0.3) as f32,
        };
        config.validate()?;
        Ok(config)
    }
}
