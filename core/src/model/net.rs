//! The scGPT model family as one burn module whose optional parts follow the config.

use burn::module::{Module, Param};
use burn::tensor::activation::{leaky_relu, relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Distribution, Int, Tensor};

use super::config::{CellEmbStyle, InputEmbStyle, InputNorm, ModelConfig, ModelKind, MvcStyle};
use super::layers::{
    BatchNorm, BnBatchStats, Emb, EmbNorm, EncoderLayer, HeadBlock, HeadMlp, LEAKY_SLOPE, Lin,
    Mlp3, Norm, SelfAttention, dropout,
};

/// Continuous value encoder: `LayerNorm(W2 ReLU(W1 min(v, 512)))`.
#[derive(Module, Debug)]
pub struct ValueEncoder<B: Backend> {
    pub linear1: Lin<B>,
    pub linear2: Lin<B>,
    pub norm: Norm<B>,
    /// Dropout after the norm (training only).
    pub dropout: f64,
}

/// Largest value the continuous value encoder sees (scGPT clamps above only).
pub const VALUE_CLAMP: f32 = 512.0;

impl<B: Backend> ValueEncoder<B> {
    pub fn forward(&self, values: Tensor<B, 2>) -> Tensor<B, 3> {
        let x = values.clamp_max(VALUE_CLAMP).unsqueeze_dim::<3>(2);
        let h = relu(self.linear1.forward(x));
        dropout(self.norm.forward(self.linear2.forward(h)), self.dropout)
    }
}

/// ExprDecoder: value prediction and, optionally, the (non-)zero probability head.
#[derive(Module, Debug)]
pub struct ExprDecoder<B: Backend> {
    pub fc: Mlp3<B>,
    pub zero_logit: Option<Mlp3<B>>,
}

impl<B: Backend> ExprDecoder<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let pred = self.fc.forward(x.clone());
        let zero = self.zero_logit.as_ref().map(|z| sigmoid(z.forward(x)));
        (pred, zero)
    }
}

/// TransformerGenerator's affine decoder: `pred = coeff * values + bias`.
#[derive(Module, Debug)]
pub struct AffineDecoder<B: Backend> {
    pub coeff: ExprDecoder<B>,
    pub bias: ExprDecoder<B>,
}

/// MVC (GEPC) decoder.
#[derive(Module, Debug)]
pub struct MvcDecoder<B: Backend> {
    pub gene2query: Lin<B>,
    /// Inner-product styles.
    pub w: Option<Lin<B>>,
    pub w_zero_logit: Option<Lin<B>>,
    /// Concat/sum query styles.
    pub fc1: Option<Lin<B>>,
    pub fc2: Option<Lin<B>>,
    pub prelu: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> MvcDecoder<B> {
    fn prelu(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.prelu {
            Some(a) => {
                let a = a.val().unsqueeze::<3>();
                relu(x.clone()) + (x.clone() - relu(x)) * a
            }
            None => x,
        }
    }

    /// `cell` `[B, dc]`, `genes` `[B, L, dg]` -> (pred `[B, L]`, zero probs).
    pub fn forward(
        &self,
        cell: Tensor<B, 2>,
        genes: Tensor<B, 3>,
    ) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let q = sigmoid(self.gene2query.forward(genes));
        if let Some(w) = &self.w {
            let c = cell.unsqueeze_dim::<3>(2); // [B, dc, 1]
            let pred = w.forward(q.clone()).matmul(c.clone()).squeeze_dim::<2>(2);
            let zero = self
                .w_zero_logit
                .as_ref()
                .map(|wz| sigmoid(wz.forward(q).matmul(c).squeeze_dim::<2>(2)));
            return (pred, zero);
        }
        let [b, l, _] = q.dims();
        let (Some(fc1), Some(fc2)) = (&self.fc1, &self.fc2) else {
            return (Tensor::zeros([b, l], &q.device()), None);
        };
        let h = if fc1.d_in() == q.dims()[2] {
            // sum query
            fc1.forward(cell.unsqueeze_dim::<3>(1) + q)
        } else {
            // concat query: [cell, query]
            let [_, dc] = cell.dims();
            let c = cell.unsqueeze_dim::<3>(1).expand([b, l, dc]);
            fc1.forward(Tensor::cat(vec![c, q], 2))
        };
        (fc2.forward(self.prelu(h)).squeeze_dim::<2>(2), None)
    }
}

/// Input embeddings, gene embeddings and (training) BatchNorm statistics.
type Embedded<B> = (Tensor<B, 3>, Tensor<B, 3>, Option<BnUpdate<B>>);

/// Per-cell `[B, d]` and per-token `[B, L, d]` side inputs of the decoders.
type SideInputs<B> = (Option<Tensor<B, 2>>, Option<Tensor<B, 3>>);

/// A model of the scGPT family. Optional members exist iff the config asks for them.
#[derive(Module, Debug)]
pub struct ScGpt<B: Backend> {
    pub encoder: EmbNorm<B>,
    pub value_encoder: Option<ValueEncoder<B>>,
    pub value_embedding: Option<EmbNorm<B>>,
    pub flag_encoder: Option<Emb<B>>,
    pub pert_encoder: Option<Emb<B>>,
    pub batch_encoder: Option<EmbNorm<B>>,
    pub mod_encoder: Option<EmbNorm<B>>,
    pub dsbn: Vec<BatchNorm<B>>,
    pub bn: Option<BatchNorm<B>>,
    pub layers: Vec<EncoderLayer<B>>,
    pub decoder: Option<ExprDecoder<B>>,
    pub affine_decoder: Option<AffineDecoder<B>>,
    pub mvc_decoder: Option<MvcDecoder<B>>,
    pub cls_decoder: Option<HeadMlp<B>>,
    pub discriminator: Option<HeadMlp<B>>,
    #[module(skip)]
    pub config: ModelConfig,
}

/// One minibatch of tokenised cells.
#[derive(Clone, Debug)]
pub struct TokenBatch<B: Backend> {
    /// Gene token ids `[B, L]`.
    pub src: Tensor<B, 2, Int>,
    /// Values `[B, L]` (binned expression, `<cls>`/pad values included).
    pub values: Tensor<B, 2>,
    /// `[B, L]`, true where `src` is `<pad>`; `None` when the batch has no padding.
    pub padding: Option<Tensor<B, 2, Bool>>,
    /// Per-cell batch labels `[B]` (batch encoder / DSBN).
    pub batch_labels: Option<Tensor<B, 1, Int>>,
    /// The DSBN domain used for the whole minibatch (scGPT uses the first cell's label).
    pub dsbn_domain: Option<usize>,
    /// Modality tokens `[B, L]` (multi-omic model).
    pub mod_types: Option<Tensor<B, 2, Int>>,
    /// Perturbation flags `[B, L]` (generator).
    pub pert_flags: Option<Tensor<B, 2, Int>>,
}

/// Which optional heads to evaluate (scGPT's `forward` flags).
#[derive(Clone, Copy, Debug, Default)]
pub struct Heads {
    pub cls: bool,
    pub mvc: bool,
}

/// Forward outputs, named as scGPT names them.
#[derive(Debug)]
pub struct ModelOutput<B: Backend> {
    pub encoder_output: Tensor<B, 3>,
    pub cell_emb: Tensor<B, 2>,
    pub mlm_output: Tensor<B, 2>,
    pub mlm_zero_probs: Option<Tensor<B, 2>>,
    pub mvc_output: Option<Tensor<B, 2>>,
    pub mvc_zero_probs: Option<Tensor<B, 2>>,
    pub cls_output: Option<Tensor<B, 2>>,
    pub dab_output: Option<Tensor<B, 2>>,
    /// Training only: the input BatchNorm's batch statistics (see [`ScGpt::update_bn`]).
    pub bn_stats: Option<BnUpdate<B>>,
}

/// Which input BatchNorm measured statistics in a training pass, and what it measured.
#[derive(Clone, Debug)]
pub struct BnUpdate<B: Backend> {
    /// DSBN domain, or `None` for the single plain BatchNorm.
    pub domain: Option<usize>,
    pub stats: BnBatchStats<B>,
}

/// Outputs of the generative (pcpt/gen) forward pass.
#[derive(Debug)]
pub struct GenerativeOutput<B: Backend> {
    pub pcpt_output: Tensor<B, 3>,
    pub gen_output: Tensor<B, 3>,
    pub gen_mlm_output: Tensor<B, 2>,
    pub cell_emb: Tensor<B, 2>,
}

/// Model errors raised while running (inputs that do not fit the model).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("this model needs batch labels (batch encoder or domain-specific batchnorm)")]
    MissingBatchLabels,
    #[error("batch label {label} is out of range: the model knows {n} batches")]
    BatchLabelOutOfRange { label: usize, n: usize },
    #[error("this model needs {0}")]
    MissingInput(&'static str),
    #[error("this model has no {0} head")]
    MissingHead(&'static str),
}

fn uniform<B: Backend, const D: usize>(
    shape: [usize; D],
    k: f64,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::random(shape, Distribution::Uniform(-k, k), device))
}

fn lin<B: Backend>(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Lin<B> {
    let k = 1.0 / (d_in.max(1) as f64).sqrt();
    Lin {
        weight: uniform([d_in, d_out], k, device),
        bias: bias.then(|| uniform([d_out], k, device)),
    }
}

fn norm<B: Backend>(d: usize, device: &B::Device) -> Norm<B> {
    Norm {
        weight: Param::from_tensor(Tensor::ones([d], device)),
        bias: Param::from_tensor(Tensor::zeros([d], device)),
    }
}

fn emb<B: Backend>(n: usize, d: usize, device: &B::Device) -> Emb<B> {
    Emb {
        weight: Param::from_tensor(Tensor::random(
            [n, d],
            Distribution::Normal(0.0, 1.0),
            device,
        )),
        padding_idx: None,
    }
}

fn emb_norm<B: Backend>(n: usize, d: usize, device: &B::Device) -> EmbNorm<B> {
    EmbNorm {
        embedding: emb(n, d, device),
        norm: norm(d, device),
    }
}

fn batch_norm<B: Backend>(d: usize, affine: bool, device: &B::Device) -> BatchNorm<B> {
    BatchNorm {
        running_mean: Param::from_tensor(Tensor::zeros([d], device)),
        running_var: Param::from_tensor(Tensor::ones([d], device)),
        weight: affine.then(|| Param::from_tensor(Tensor::ones([d], device))),
        bias: affine.then(|| Param::from_tensor(Tensor::zeros([d], device))),
    }
}

fn mlp3<B: Backend>(d_in: usize, d: usize, device: &B::Device) -> Mlp3<B> {
    Mlp3 {
        fc0: lin(d_in, d, true, device),
        fc2: lin(d, d, true, device),
        fc4: lin(d, 1, true, device),
    }
}

fn expr_decoder<B: Backend>(
    d_in: usize,
    d: usize,
    zero: bool,
    device: &B::Device,
) -> ExprDecoder<B> {
    ExprDecoder {
        fc: mlp3(d_in, d, device),
        zero_logit: zero.then(|| mlp3(d_in, d, device)),
    }
}

fn head<B: Backend>(
    d: usize,
    n_out: usize,
    nlayers: usize,
    leaky: bool,
    device: &B::Device,
) -> HeadMlp<B> {
    HeadMlp {
        hidden: (0..nlayers.saturating_sub(1))
            .map(|_| HeadBlock {
                lin: lin(d, d, true, device),
                norm: norm(d, device),
            })
            .collect(),
        out_layer: lin(d, n_out, true, device),
        leaky,
    }
}

impl<B: Backend> ScGpt<B> {
    /// A freshly initialised model (PyTorch-like default initialisation; gene embedding
    /// uniform in [-0.1, 0.1] as scGPT does).
    pub fn init(config: &ModelConfig, device: &B::Device) -> Self {
        let d = config.d_model;
        let c = config;
        let mut encoder = emb_norm(c.ntoken, d, device);
        encoder.embedding.weight = uniform([c.ntoken, d], 0.1, device);
        let multiomic = matches!(c.kind, ModelKind::MultiOmic { .. });
        let generator = matches!(c.kind, ModelKind::Generator { .. });
        let side = c.num_batch_labels.is_some() || multiomic;
        let d_in = if side { 2 * d } else { d };
        let value_encoder =
            (c.input_emb_style == InputEmbStyle::Continuous).then(|| ValueEncoder {
                linear1: lin(1, d, true, device),
                linear2: lin(d, d, true, device),
                norm: norm(d, device),
                dropout: f64::from(c.dropout),
            });
        let value_embedding = match (c.input_emb_style, c.n_input_bins) {
            (InputEmbStyle::Category, Some(n)) => Some(emb_norm(n, d, device)),
            _ => None,
        };
        let dsbn = match c.input_norm {
            InputNorm::Dsbn { num_domains } => (0..num_domains)
                .map(|_| batch_norm(d, false, device))
                .collect(),
            _ => Vec::new(),
        };
        let layers = (0..c.nlayers)
            .map(|_| EncoderLayer {
                self_attn: SelfAttention {
                    wqkv: lin(d, 3 * d, true, device),
                    out_proj: lin(d, d, true, device),
                    nhead: c.nhead,
                    dropout: f64::from(c.dropout),
                },
                linear1: lin(d, c.d_hid, true, device),
                linear2: lin(c.d_hid, d, true, device),
                norm1: norm(d, device),
                norm2: norm(d, device),
                pre_norm: c.pre_norm,
                dropout: f64::from(c.dropout),
            })
            .collect();
        let mvc_decoder = c.mvc.map(|style| {
            // Multi-omic doubles the gene side too; plain batch labels only the cell side.
            let dg = if multiomic { d_in } else { d };
            match style {
                MvcStyle::InnerProduct | MvcStyle::InnerProductDetach => MvcDecoder {
                    gene2query: lin(dg, dg, true, device),
                    w: Some(lin(dg, d_in, false, device)),
                    w_zero_logit: c.explicit_zero_prob.then(|| lin(dg, d_in, true, device)),
                    fc1: None,
                    fc2: None,
                    prelu: None,
                },
                MvcStyle::ConcatQuery => MvcDecoder {
                    gene2query: lin(dg, 64, true, device),
                    w: None,
                    w_zero_logit: None,
                    fc1: Some(lin(dg + 64, 64, true, device)),
                    fc2: Some(lin(64, 1, true, device)),
                    prelu: Some(Param::from_tensor(Tensor::full([1], 0.25, device))),
                },
                MvcStyle::SumQuery => MvcDecoder {
                    gene2query: lin(dg, dg, true, device),
                    w: None,
                    w_zero_logit: None,
                    fc1: Some(lin(dg, 64, true, device)),
                    fc2: Some(lin(64, 1, true, device)),
                    prelu: Some(Param::from_tensor(Tensor::full([1], 0.25, device))),
                },
            }
        });
        ScGpt {
            encoder,
            value_encoder,
            value_embedding,
            flag_encoder: c.generative.then(|| emb(2, d, device)),
            pert_encoder: generator.then(|| emb(3, d, device)),
            batch_encoder: c.num_batch_labels.map(|n| emb_norm(n, d, device)),
            mod_encoder: match c.kind {
                ModelKind::MultiOmic { ntokens_mod } => Some(emb_norm(ntokens_mod, d, device)),
                _ => None,
            },
            dsbn,
            bn: (c.input_norm == InputNorm::BatchNorm).then(|| batch_norm(d, true, device)),
            layers,
            decoder: (!generator).then(|| expr_decoder(d_in, d, c.explicit_zero_prob, device)),
            affine_decoder: generator.then(|| AffineDecoder {
                coeff: expr_decoder(d, d, c.explicit_zero_prob, device),
                bias: expr_decoder(d, d, c.explicit_zero_prob, device),
            }),
            mvc_decoder,
            cls_decoder: c.n_cls.map(|n| head(d, n, c.nlayers_cls, false, device)),
            discriminator: c.dab_classes.map(|n| head(d, n, 3, true, device)),
            config: c.clone(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The gene embedding's padding row (scGPT's `padding_idx = vocab["<pad>"]`): it takes
    /// no gradient while training.
    pub fn set_gene_padding_idx(&mut self, idx: Option<usize>) {
        self.encoder.embedding.padding_idx = idx;
    }

    /// `LayerNorm(Embedding(ids))` for 1-D ids: the gene embeddings scGPT's GRN tutorial
    /// uses.
    pub fn gene_embeddings(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.encoder.rows(ids)
    }

    /// Fold a training pass's BatchNorm statistics into the running averages.
    pub fn update_bn(&mut self, update: &BnUpdate<B>) {
        let bn = match update.domain {
            Some(d) => self.dsbn.get_mut(d),
            None => self.bn.as_mut(),
        };
        if let Some(bn) = bn {
            bn.update_running(&update.stats);
        }
    }

    /// Input embeddings before the transformer: `(total, gene_embs, bn statistics)`.
    fn embed(&self, batch: &TokenBatch<B>) -> Result<Embedded<B>, ForwardError> {
        let genes = self.encoder.forward(batch.src.clone());
        let mut x = match self.config().input_emb_style {
            InputEmbStyle::Continuous => match &self.value_encoder {
                Some(v) => genes.clone() + v.forward(batch.values.clone()),
                None => genes.clone(),
            },
            InputEmbStyle::Category => match &self.value_embedding {
                Some(v) => genes.clone() + v.forward(batch.values.clone().int()),
                None => genes.clone(),
            },
            InputEmbStyle::Scaling => genes.clone() * batch.values.clone().unsqueeze_dim::<3>(2),
        };
        if let Some(pert) = &self.pert_encoder {
            let flags = batch
                .pert_flags
                .clone()
                .ok_or(ForwardError::MissingInput("perturbation flags"))?;
            x = x + pert.forward(flags);
        }
        if !self.dsbn.is_empty() {
            let domain = batch.dsbn_domain.ok_or(ForwardError::MissingBatchLabels)?;
            let bn = self
                .dsbn
                .get(domain)
                .ok_or(ForwardError::BatchLabelOutOfRange {
                    label: domain,
                    n: self.dsbn.len(),
                })?;
            let (y, stats) = bn.forward(x);
            return Ok((
                y,
                genes,
                stats.map(|stats| BnUpdate {
                    domain: Some(domain),
                    stats,
                }),
            ));
        } else if let Some(bn) = &self.bn {
            let (y, stats) = bn.forward(x);
            return Ok((
                y,
                genes,
                stats.map(|stats| BnUpdate {
                    domain: None,
                    stats,
                }),
            ));
        }
        Ok((x, genes, None))
    }

    /// The transformer stack on prepared input embeddings.
    pub fn transform(
        &self,
        mut x: Tensor<B, 3>,
        padding: Option<&Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        // Inference on the CPU backend: the fused multi-threaded stack.
        if let Some(y) = super::cpu_encoder::transform(&self.layers, &x, padding) {
            return y;
        }
        for layer in &self.layers {
            x = layer.forward(x, padding);
        }
        x
    }

    /// scGPT `_encode`: `[B, L, d]` transformer output.
    pub fn encode(&self, batch: &TokenBatch<B>) -> Result<Tensor<B, 3>, ForwardError> {
        let (x, _, _) = self.embed(batch)?;
        Ok(self.transform(x, batch.padding.as_ref()))
    }

    /// `_encode` that also returns a training pass's BatchNorm statistics.
    pub fn encode_with_stats(
        &self,
        batch: &TokenBatch<B>,
    ) -> Result<(Tensor<B, 3>, Option<BnUpdate<B>>), ForwardError> {
        let (x, _, stats) = self.embed(batch)?;
        Ok((self.transform(x, batch.padding.as_ref()), stats))
    }

    /// Cell embeddings by the configured style from a transformer output. Pooling styles
    /// leave out padding positions (`padding` true): scGPT averages over them too, which
    /// makes a cell's embedding depend on the longest cell in its minibatch (and weighs
    /// padding by the pad value in w-pool). Without padding the result is scGPT's.
    pub fn cell_embedding(
        &self,
        h: Tensor<B, 3>,
        values: &Tensor<B, 2>,
        padding: Option<&Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 2> {
        let [b, _, d] = h.dims();
        // 1 at the cell's own positions; only the pooling styles need it
        let keep = || padding.map(|p| p.clone().bool_not().float());
        match self.config().cell_emb_style {
            CellEmbStyle::Cls => h.slice([0..b, 0..1, 0..d]).squeeze_dim::<2>(1),
            CellEmbStyle::AvgPool => match keep() {
                None => h.mean_dim(1).squeeze_dim::<2>(1),
                Some(k) => {
                    let n = k.clone().sum_dim(1).clamp_min(1.0);
                    (h * k.unsqueeze_dim::<3>(2)).sum_dim(1).squeeze_dim::<2>(1) / n
                }
            },
            CellEmbStyle::WPool => {
                let w = match keep() {
                    None => values.clone(),
                    Some(k) => values.clone() * k,
                };
                let s = (h * w.unsqueeze_dim::<3>(2)).sum_dim(1).squeeze_dim::<2>(1);
                l2_normalize(s)
            }
        }
    }

    /// Batch-label and modality side inputs of the decoders.
    fn side_inputs(&self, batch: &TokenBatch<B>, l: usize) -> Result<SideInputs<B>, ForwardError> {
        let batch_emb = match &self.batch_encoder {
            Some(enc) => {
                let labels = batch
                    .batch_labels
                    .clone()
                    .ok_or(ForwardError::MissingBatchLabels)?;
                let n = labels.dims()[0];
                Some(enc.forward(labels.reshape([n, 1])).squeeze_dim::<2>(1))
            }
            None => None,
        };
        let mod_emb = match &self.mod_encoder {
            Some(enc) => {
                let m = batch
                    .mod_types
                    .clone()
                    .ok_or(ForwardError::MissingInput("modality types"))?;
                Some(enc.forward(m))
            }
            None => None,
        };
        let rep = batch_emb.clone().map(|e| {
            let [b, d] = e.dims();
            e.unsqueeze_dim::<3>(1).expand([b, l, d])
        });
        let per_token = match (rep, mod_emb.clone()) {
            (Some(r), Some(m)) => Some(r + m),
            (Some(r), None) => Some(r),
            (None, Some(m)) => Some(m),
            (None, None) => None,
        };
        let per_cell = match (batch_emb, mod_emb) {
            (Some(e), Some(m)) => {
                Some(e + self.cell_embedding(m, &batch.values, batch.padding.as_ref()))
            }
            (Some(e), None) => Some(e),
            (None, Some(m)) => Some(self.cell_embedding(m, &batch.values, batch.padding.as_ref())),
            (None, None) => None,
        };
        Ok((per_cell, per_token))
    }

    /// scGPT `forward` in evaluation mode (no sampling).
    pub fn forward(
        &self,
        batch: &TokenBatch<B>,
        heads: Heads,
    ) -> Result<ModelOutput<B>, ForwardError> {
        let (x, gene_embs, bn_stats) = self.embed(batch)?;
        let h = self.transform(x, batch.padding.as_ref());
        let [_, l, _] = h.dims();
        let (per_cell, per_token) = self.side_inputs(batch, l)?;
        let dec_in = match &per_token {
            Some(t) => Tensor::cat(vec![h.clone(), t.clone()], 2),
            None => h.clone(),
        };
        let (mlm_output, mlm_zero_probs) = if let Some(dec) = &self.decoder {
            dec.forward(dec_in)
        } else if let Some(aff) = &self.affine_decoder {
            self.affine(aff, h.clone(), &batch.values)
        } else {
            return Err(ForwardError::MissingHead("expression decoder"));
        };
        let cell_emb = self.cell_embedding(h.clone(), &batch.values, batch.padding.as_ref());
        let cls_output = if heads.cls {
            let head = self
                .cls_decoder
                .as_ref()
                .ok_or(ForwardError::MissingHead("classifier"))?;
            Some(head.forward(cell_emb.clone()))
        } else {
            None
        };
        let (mvc_output, mvc_zero_probs) = if heads.mvc {
            let dec = self
                .mvc_decoder
                .as_ref()
                .ok_or(ForwardError::MissingHead("MVC"))?;
            let cell = match &per_cell {
                Some(p) => Tensor::cat(vec![cell_emb.clone(), p.clone()], 1),
                None => cell_emb.clone(),
            };
            let multiomic = self.mod_encoder.is_some();
            let genes = match (&per_token, multiomic) {
                (Some(t), true) => Tensor::cat(vec![gene_embs, t.clone()], 2),
                _ => gene_embs,
            };
            let (p, z) = dec.forward(cell, genes);
            (Some(p), z)
        } else {
            (None, None)
        };
        // Gradient reversal in front of the batch discriminator (scGPT's DAR).
        let dab_output = self
            .discriminator
            .as_ref()
            .map(|d| d.forward(grad_reverse(cell_emb.clone(), 1.0)));
        Ok(ModelOutput {
            encoder_output: h,
            cell_emb,
            mlm_output,
            mlm_zero_probs,
            mvc_output,
            mvc_zero_probs,
            cls_output,
            dab_output,
            bn_stats,
        })
    }

    fn affine(
        &self,
        dec: &AffineDecoder<B>,
        h: Tensor<B, 3>,
        values: &Tensor<B, 2>,
    ) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let (mut coeff, zero) = dec.coeff.forward(h.clone());
        let (mut bias, _) = dec.bias.forward(h);
        if let ModelKind::Generator {
            decoder_activation,
            adaptive_bias,
            ..
        } = &self.config().kind
        {
            if let Some(act) = decoder_activation {
                coeff = activation(act, coeff);
                bias = activation(act, bias);
            }
            if *adaptive_bias {
                let sum = values.clone().sum_dim(1);
                let nonzero = values.clone().not_equal_elem(0.0).float().sum_dim(1);
                bias = bias * (sum / nonzero);
            }
        }
        (coeff * values.clone() + bias, zero)
    }

    /// Raw attention scores `q·kᵀ` (no scaling, no softmax) of layer `layer`, `[B, H, L, L]`,
    /// with the input that layer sees in a normal forward pass (scGPT's attention-GRN
    /// tutorial). Padding is not masked: pass unpadded batches.
    pub fn raw_attention_scores(
        &self,
        batch: &TokenBatch<B>,
        layer: usize,
    ) -> Result<Tensor<B, 4>, ForwardError> {
        let target = self
            .layers
            .get(layer)
            .ok_or(ForwardError::MissingHead("the requested transformer layer"))?;
        let (mut x, _, _) = self.embed(batch)?;
        for l in &self.layers[..layer] {
            x = l.forward(x, batch.padding.as_ref());
        }
        if target.pre_norm {
            x = target.norm1.forward(x);
        }
        let qkv = target.self_attn.qkv(x);
        Ok(qkv.q.matmul(qkv.k.swap_dims(2, 3)))
    }

    /// Cell embeddings only (the fast path for `embed`): `[B, d]`.
    pub fn embed_cells(&self, batch: &TokenBatch<B>) -> Result<Tensor<B, 2>, ForwardError> {
        let h = self.encode(batch)?;
        Ok(self.cell_embedding(h, &batch.values, batch.padding.as_ref()))
    }

    /// The generative pass of scGPT's pretraining branch: known (pcpt) tokens carry values;
    /// gen tokens carry the flag embedding instead. `input_cell_emb` replaces pcpt row 0.
    pub fn forward_generative(
        &self,
        pcpt_src: Tensor<B, 2, Int>,
        pcpt_values: Tensor<B, 2>,
        pcpt_padding: Tensor<B, 2, Bool>,
        gen_src: Tensor<B, 2, Int>,
        gen_padding: Tensor<B, 2, Bool>,
        input_cell_emb: Option<Tensor<B, 2>>,
    ) -> Result<GenerativeOutput<B>, ForwardError> {
        let flag = self
            .flag_encoder
            .as_ref()
            .ok_or(ForwardError::MissingHead("generative flag embedding"))?;
        let value_enc = self
            .value_encoder
            .as_ref()
            .ok_or(ForwardError::MissingHead("continuous value encoder"))?;
        let mut pcpt = self.encoder.forward(pcpt_src) + value_enc.forward(pcpt_values);
        let [b, lp, d] = pcpt.dims();
        if let Some(c) = input_cell_emb {
            let rest = pcpt.clone().slice([0..b, 1..lp, 0..d]);
            pcpt = Tensor::cat(vec![c.unsqueeze_dim::<3>(1), rest], 1);
        }
        let flag_row = flag.weight.val().slice([1..2, 0..d]).unsqueeze::<3>();
        let mut gen_x = self.encoder.forward(gen_src) + flag_row;
        for layer in &self.layers {
            let (p, g) = layer.forward_generative(pcpt, gen_x, &pcpt_padding, &gen_padding);
            pcpt = p;
            gen_x = g;
        }
        let dec = self
            .decoder
            .as_ref()
            .ok_or(ForwardError::MissingHead("expression decoder"))?;
        let (gen_mlm_output, _) = dec.forward(gen_x.clone());
        let cell_emb = pcpt.clone().slice([0..b, 0..1, 0..d]).squeeze_dim::<2>(1);
        Ok(GenerativeOutput {
            pcpt_output: pcpt,
            gen_output: gen_x,
            gen_mlm_output,
            cell_emb,
        })
    }
}

/// Gradient reversal: the identity going forward; going backward the gradient is
/// multiplied by `-lambda`. Written as `x' + (x - x') * (-lambda)` with `x'` detached:
/// the second term is exactly zero forward, and only it carries a gradient.
pub fn grad_reverse<B: Backend, const D: usize>(x: Tensor<B, D>, lambda: f64) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) {
        return x;
    }
    let fixed = x.clone().detach();
    fixed.clone() + (x - fixed) * (-lambda)
}

/// Row-wise L2 normalisation with PyTorch's `F.normalize` floor (1e-12).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let n = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / n
}

fn activation<B: Backend>(name: &str, x: Tensor<B, 2>) -> Tensor<B, 2> {
    match name {
        "ReLU" => relu(x),
        "Sigmoid" => sigmoid(x),
        "Tanh" => x.tanh(),
        "LeakyReLU" => leaky_relu(x, LEAKY_SLOPE),
        "Softplus" => burn::tensor::activation::softplus(x, 1.0),
        _ => x,
    }
}
