//! Parameter names: one walk over the model that pairs each burn parameter with its
//! canonical scGPT state-dict key, used both to load checkpoints and to save them.

use std::collections::BTreeSet;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::ModelError;
use super::layers::{BatchNorm, Emb, EmbNorm, EncoderLayer, HeadMlp, Lin, Mlp3, Norm};
use super::net::{ExprDecoder, MvcDecoder, ScGpt};
use super::statedict::{HostTensor, StateDict};

/// How a parameter is stored relative to PyTorch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Same,
    /// burn `[in, out]` vs PyTorch `[out, in]`.
    Transposed,
}

/// Visits every parameter with its canonical name.
pub trait ParamVisitor<B: Backend> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, layout: Layout);
}

fn lin<B: Backend, V: ParamVisitor<B>>(v: &mut V, name: &str, l: &mut Lin<B>) {
    v.param(&format!("{name}.weight"), &mut l.weight, Layout::Transposed);
    if let Some(b) = &mut l.bias {
        v.param(&format!("{name}.bias"), b, Layout::Same);
    }
}
fn norm<B: Backend, V: ParamVisitor<B>>(v: &mut V, name: &str, n: &mut Norm<B>) {
    v.param(&format!("{name}.weight"), &mut n.weight, Layout::Same);
    v.param(&format!("{name}.bias"), &mut n.bias, Layout::Same);
}
fn emb<B: Backend, V: ParamVisitor<B>>(v: &mut V, name: &str, e: &mut Emb<B>) {
    v.param(&format!("{name}.weight"), &mut e.weight, Layout::Same);
}
fn emb_norm<B: Backend, V: ParamVisitor<B>>(
    v: &mut V,
    name: &str,
    norm_name: &str,
    e: &mut EmbNorm<B>,
) {
    emb(v, &format!("{name}.embedding"), &mut e.embedding);
    norm(v, &format!("{name}.{norm_name}"), &mut e.norm);
}
fn bn<B: Backend, V: ParamVisitor<B>>(v: &mut V, name: &str, b: &mut BatchNorm<B>) {
    v.param(
        &format!("{name}.running_mean"),
        &mut b.running_mean,
        Layout::Same,
    );
    v.param(
        &format!("{name}.running_var"),
        &mut b.running_var,
        Layout::Same,
    );
    if let Some(w) = &mut b.weight {
        v.param(&format!("{name}.weight"), w, Layout::Same);
    }
    if let Some(x) = &mut b.bias {
        v.param(&format!("{name}.bias"), x, Layout::Same);
    }
}
fn mlp3<B: Backend, V: ParamVisitor<B>>(v: &mut V, name: &str, m: &mut Mlp3<B>) {
    lin(v, &format!("{name}.0"), &mut m.fc0);
    lin(v, &format!("{name}.2"), &mut m.fc2);
    lin(v, &format!("{name}.4"), &mut m.fc4);
}
fn expr<B: Backend, V: ParamVisitor<B>>(v: &mut V, name: &str, d: &mut ExprDecoder<B>) {
    mlp3(v, &format!("{name}.fc"), &mut d.fc);
    if let Some(z) = &mut d.zero_logit {
        mlp3(v, &format!("{name}.zero_logit"), z);
    }
}
fn head<B: Backend, V: ParamVisitor<B>>(v: &mut V, name: &str, h: &mut HeadMlp<B>) {
    for (i, block) in h.hidden.iter_mut().enumerate() {
        lin(v, &format!("{name}._decoder.{}", 3 * i), &mut block.lin);
        norm(
            v,
            &format!("{name}._decoder.{}", 3 * i + 2),
            &mut block.norm,
        );
    }
    lin(v, &format!("{name}.out_layer"), &mut h.out_layer);
}
fn layer<B: Backend, V: ParamVisitor<B>>(v: &mut V, name: &str, l: &mut EncoderLayer<B>) {
    lin(v, &format!("{name}.self_attn.Wqkv"), &mut l.self_attn.wqkv);
    lin(
        v,
        &format!("{name}.self_attn.out_proj"),
        &mut l.self_attn.out_proj,
    );
    lin(v, &format!("{name}.linear1"), &mut l.linear1);
    lin(v, &format!("{name}.linear2"), &mut l.linear2);
    norm(v, &format!("{name}.norm1"), &mut l.norm1);
    norm(v, &format!("{name}.norm2"), &mut l.norm2);
}
fn mvc<B: Backend, V: ParamVisitor<B>>(v: &mut V, m: &mut MvcDecoder<B>) {
    lin(v, "mvc_decoder.gene2query", &mut m.gene2query);
    if let Some(w) = &mut m.w {
        lin(v, "mvc_decoder.W", w);
    }
    if let Some(w) = &mut m.w_zero_logit {
        lin(v, "mvc_decoder.W_zero_logit", w);
    }
    if let Some(f) = &mut m.fc1 {
        lin(v, "mvc_decoder.fc1", f);
    }
    if let Some(f) = &mut m.fc2 {
        lin(v, "mvc_decoder.fc2", f);
    }
    if let Some(p) = &mut m.prelu {
        v.param("mvc_decoder.hidden_activation.weight", p, Layout::Same);
    }
}

/// Walk every parameter of `model` in a fixed order with its canonical name.
pub fn visit<B: Backend, V: ParamVisitor<B>>(model: &mut ScGpt<B>, v: &mut V) {
    emb_norm(v, "encoder", "enc_norm", &mut model.encoder);
    if let Some(ve) = &mut model.value_encoder {
        lin(v, "value_encoder.linear1", &mut ve.linear1);
        lin(v, "value_encoder.linear2", &mut ve.linear2);
        norm(v, "value_encoder.norm", &mut ve.norm);
    }
    if let Some(ve) = &mut model.value_embedding {
        emb_norm(v, "value_encoder", "enc_norm", ve);
    }
    if let Some(f) = &mut model.flag_encoder {
        emb(v, "flag_encoder", f);
    }
    if let Some(p) = &mut model.pert_encoder {
        emb(v, "pert_encoder", p);
    }
    if let Some(b) = &mut model.batch_encoder {
        emb_norm(v, "batch_encoder", "enc_norm", b);
    }
    if let Some(m) = &mut model.mod_encoder {
        emb_norm(v, "mod_encoder", "enc_norm", m);
    }
    for (i, b) in model.dsbn.iter_mut().enumerate() {
        bn(v, &format!("dsbn.bns.{i}"), b);
    }
    if let Some(b) = &mut model.bn {
        bn(v, "bn", b);
    }
    for (i, l) in model.layers.iter_mut().enumerate() {
        layer(v, &format!("transformer_encoder.layers.{i}"), l);
    }
    if let Some(d) = &mut model.decoder {
        expr(v, "decoder", d);
    }
    if let Some(a) = &mut model.affine_decoder {
        expr(v, "decoder.coeff_decoder", &mut a.coeff);
        expr(v, "decoder.bias_decoder", &mut a.bias);
    }
    if let Some(m) = &mut model.mvc_decoder {
        mvc(v, m);
    }
    if let Some(h) = &mut model.cls_decoder {
        head(v, "cls_decoder", h);
    }
    if let Some(h) = &mut model.discriminator {
        head(v, "grad_reverse_discriminator", h);
    }
}

/// What loading a checkpoint did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadReport {
    /// Parameters loaded (tensors).
    pub loaded: usize,
    /// Scalars loaded.
    pub loaded_values: usize,
    /// Checkpoint keys the model has no place for.
    pub unexpected: Vec<String>,
    /// Keys the model needs that the checkpoint lacks.
    pub missing: Vec<String>,
    /// `(key, expected shape, checkpoint shape)` in PyTorch layout.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Attention spellings met (`self_attn.Wqkv`, `self_attn._impl.Wqkv`, `self_attn.in_proj`).
    pub spellings: Vec<String>,
    pub stripped_module_prefix: bool,
}

impl LoadReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "loaded {} tensors ({} values)",
            self.loaded,
            crate::fmt::thousands(self.loaded_values as u64)
        );
        if !self.spellings.is_empty() {
            s.push_str(&format!(
                "; attention weights spelled {}",
                self.spellings.join(", ")
            ));
        }
        if self.stripped_module_prefix {
            s.push_str("; stripped a `module.` prefix");
        }
        if !self.unexpected.is_empty() {
            s.push_str(&format!(
                "; {} unused checkpoint keys: {}",
                self.unexpected.len(),
                abbreviate(&self.unexpected)
            ));
        }
        s
    }
}

fn abbreviate(v: &[String]) -> String {
    if v.len() <= 6 {
        v.join(", ")
    } else {
        format!("{}, ... ({} more)", v[..6].join(", "), v.len() - 6)
    }
}

/// Keys that carry no weights the model needs (BatchNorm step counters).
fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

struct Loader<'a, B: Backend> {
    sd: &'a StateDict,
    device: B::Device,
    used: BTreeSet<String>,
    report: LoadReport,
}

impl<B: Backend> ParamVisitor<B> for Loader<'_, B> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, layout: Layout) {
        let expected = p.dims().to_vec();
        let torch_shape: Vec<usize> = if layout == Layout::Transposed && D == 2 {
            vec![expected[1], expected[0]]
        } else {
            expected.clone()
        };
        let Some(t) = self.sd.get(name) else {
            self.report.missing.push(name.to_owned());
            return;
        };
        self.used.insert(name.to_owned());
        if t.shape != torch_shape {
            self.report
                .mismatched
                .push((name.to_owned(), torch_shape, t.shape.clone()));
            return;
        }
        let host = if layout == Layout::Transposed {
            t.transposed()
        } else {
            t.clone()
        };
        let tensor = Tensor::<B, D>::from_data(TensorData::new(host.data, expected), &self.device);
        *p = Param::from_tensor(tensor);
        self.report.loaded += 1;
        self.report.loaded_values += t.numel();
    }
}

/// scGPT's `load_pretrained`: fill every parameter whose name and shape match the
/// checkpoint and leave the rest as initialised (new heads of a fine-tuning model, or a
/// decoder whose input widened with batch labels). The report lists what was left.
pub fn load_matching<B: Backend>(
    model: &mut ScGpt<B>,
    sd: &StateDict,
    device: &B::Device,
) -> LoadReport {
    let mut loader = Loader::<B> {
        sd,
        device: device.clone(),
        used: BTreeSet::new(),
        report: LoadReport::default(),
    };
    visit(model, &mut loader);
    let mut report = loader.report;
    report.unexpected = sd
        .keys()
        .filter(|k| !loader.used.contains(*k) && !ignorable(k))
        .cloned()
        .collect();
    report.spellings = sd.spellings.iter().map(|s| s.to_string()).collect();
    report.stripped_module_prefix = sd.stripped_module_prefix;
    report
}

/// Fill `model` from a canonical state dict. Every parameter the model has must be in the
/// checkpoint with the right shape: a missing attention weight would otherwise stay random
/// and give plausible-looking garbage (scGPT #235), so it is an error, not a warning.
pub fn load_into<B: Backend>(
    model: &mut ScGpt<B>,
    sd: &StateDict,
    device: &B::Device,
) -> Result<LoadReport, ModelError> {
    let report = load_matching(model, sd, device);
    if let Some((name, expected, found)) = report.mismatched.first() {
        return Err(ModelError::ShapeMismatch {
            name: name.clone(),
            expected: expected.clone(),
            found: found.clone(),
            others: report.mismatched.len() - 1,
        });
    }
    if !report.missing.is_empty() {
        return Err(ModelError::MissingWeights(report.missing.clone()));
    }
    Ok(report)
}

struct Saver {
    out: Vec<(String, HostTensor)>,
    error: Option<String>,
}

impl<B: Backend> ParamVisitor<B> for Saver {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, layout: Layout) {
        let shape = p.dims().to_vec();
        match p.val().into_data().convert::<f32>().into_vec::<f32>() {
            Ok(data) => {
                let t = HostTensor { shape, data };
                let t = if layout == Layout::Transposed {
                    t.transposed()
                } else {
                    t
                };
                self.out.push((name.to_owned(), t));
            }
            Err(e) => self.error = Some(format!("{name}: {e:?}")),
        }
    }
}

/// All parameters as PyTorch-layout host tensors under canonical scGPT names.
pub fn named_tensors<B: Backend>(
    model: &mut ScGpt<B>,
) -> Result<Vec<(String, HostTensor)>, ModelError> {
    let mut saver = Saver {
        out: Vec::new(),
        error: None,
    };
    visit(model, &mut saver);
    match saver.error {
        Some(e) => Err(ModelError::Config(format!("could not read parameter {e}"))),
        None => Ok(saver.out),
    }
}
