//! A fused transformer stack for inference on the CPU (flex) backend.
//!
//! burn-flex runs every elementwise operation as its own pass (mostly on one thread) and
//! its attention on one thread; for scGPT's 12 x 512 encoder that leaves a 2-core machine
//! far from its GEMM peak. This path keeps burn's weights and runs one layer as: QKV GEMM
//! with the bias pre-loaded, attention read straight out of the packed QKV buffer with
//! strided GEMMs (one rayon task per (cell, head)), output projection, residual and
//! LayerNorm fused in one parallel pass, FFN GEMMs with fused bias/ReLU, residual and
//! LayerNorm again. It computes the same function as [`super::layers::EncoderLayer`]
//! (checked against it and against scGPT in the parity tests).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::cpu_attention::{HeadView, attend, is_flex};
use super::layers::{EncoderLayer, LN_EPS, Lin, Norm};

fn flex_of<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => {
            let any: Box<dyn std::any::Any> = Box::new(p);
            any.downcast::<FlexTensor>().ok().map(|b| b.to_contiguous())
        }
        TensorPrimitive::QFloat(_) => None,
    }
}

/// A weight borrowed from a flex tensor (f32, contiguous): no copy per forward pass.
struct F32Buf(FlexTensor);

impl F32Buf {
    fn of<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<Self> {
        let f = flex_of(t)?;
        (f.dtype() == burn::tensor::DType::F32).then_some(Self(f))
    }
    fn get(&self) -> &[f32] {
        self.0.storage()
    }
}

/// Host copy of a float tensor (flex only, f32 only).
fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<Vec<f32>> {
    let f = flex_of(t)?;
    (f.dtype() == burn::tensor::DType::F32).then(|| f.storage::<f32>().to_vec())
}

struct LinW {
    w: F32Buf, // [in, out]
    b: Option<F32Buf>,
    d_in: usize,
    d_out: usize,
}

impl LinW {
    fn of<B: Backend>(l: &Lin<B>) -> Option<Self> {
        Some(Self {
            d_in: l.d_in(),
            d_out: l.d_out(),
            w: F32Buf::of(l.weight.val())?,
            b: match &l.bias {
                Some(b) => Some(F32Buf::of(b.val())?),
                None => None,
            },
        })
    }

    /// `y[rows, out] = x[rows, in] W + b`, multi-threaded.
    fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.d_out];
        let read_dst = if let Some(b) = &self.b {
            y.par_chunks_mut(self.d_out * 64).for_each(|c| {
                c.chunks_exact_mut(self.d_out)
                    .for_each(|r| r.copy_from_slice(b.get()))
            });
            true
        } else {
            false
        };
        // SAFETY: x is [rows, d_in], w is [d_in, d_out], y is [rows, d_out], all row-major
        // and of exactly these lengths.
        unsafe {
            gemm::gemm(
                rows,
                self.d_out,
                self.d_in,
                y.as_mut_ptr(),
                1,
                self.d_out as isize,
                read_dst,
                x.as_ptr(),
                1,
                self.d_in as isize,
                self.w.get().as_ptr(),
                1,
                self.d_out as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        y
    }
}

struct NormW {
    w: F32Buf,
    b: F32Buf,
}

impl NormW {
    fn of<B: Backend>(n: &Norm<B>) -> Option<Self> {
        Some(Self {
            w: F32Buf::of(n.weight.val())?,
            b: F32Buf::of(n.bias.val())?,
        })
    }

    /// `x = LayerNorm(x + add)` row by row (`add` optional), in place, multi-threaded.
    fn residual_norm(&self, x: &mut [f32], add: Option<&[f32]>, d: usize) {
        let rows_per_task = 32;
        let work = |xr: &mut [f32], ar: Option<&[f32]>| {
            if let Some(a) = ar {
                for (v, &u) in xr.iter_mut().zip(a) {
                    *v += u;
                }
            }
            let n = d as f32;
            let mean = xr.iter().sum::<f32>() / n;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + LN_EPS as f32).sqrt();
            for ((v, w), b) in xr.iter_mut().zip(self.w.get()).zip(self.b.get()) {
                *v = (*v - mean) * inv * w + b;
            }
        };
        match add {
            Some(a) => x
                .par_chunks_mut(d * rows_per_task)
                .zip(a.par_chunks(d * rows_per_task))
                .for_each(|(xc, ac)| {
                    xc.chunks_exact_mut(d)
                        .zip(ac.chunks_exact(d))
                        .for_each(|(xr, ar)| work(xr, Some(ar)))
                }),
            None => x
                .par_chunks_mut(d * rows_per_task)
                .for_each(|xc| xc.chunks_exact_mut(d).for_each(|xr| work(xr, None))),
        }
    }
}

struct LayerW {
    qkv: LinW,
    out: LinW,
    l1: LinW,
    l2: LinW,
    n1: NormW,
    n2: NormW,
    nhead: usize,
    pre_norm: bool,
}

impl LayerW {
    fn of<B: Backend>(l: &EncoderLayer<B>) -> Option<Self> {
        Some(Self {
            qkv: LinW::of(&l.self_attn.wqkv)?,
            out: LinW::of(&l.self_attn.out_proj)?,
            l1: LinW::of(&l.linear1)?,
            l2: LinW::of(&l.linear2)?,
            n1: NormW::of(&l.norm1)?,
            n2: NormW::of(&l.norm2)?,
            nhead: l.self_attn.nhead,
            pre_norm: l.pre_norm,
        })
    }

    /// Attention context `[B*L, d]` (heads merged) from a packed QKV buffer `[B*L, 3d]`.
    fn attention(&self, qkv: &[f32], b: usize, l: usize, d: usize, valid: &[usize]) -> Vec<f32> {
        let h = self.nhead;
        let hd = d / h;
        let scale = 1.0 / (hd as f32).sqrt();
        let heads: Vec<Vec<f32>> = (0..b * h)
            .into_par_iter()
            .map_init(Vec::new, |scores, bh| {
                let (bi, hi) = (bh / h, bh % h);
                let n = valid[bi];
                let mut o = vec![0f32; l * hd];
                let base = bi * l * 3 * d;
                let view = |off: usize| HeadView {
                    data: &qkv[base + off + hi * hd..],
                    row_stride: 3 * d,
                };
                attend(
                    view(0),
                    view(d),
                    view(2 * d),
                    &mut o,
                    l,
                    n,
                    hd,
                    scale,
                    None,
                    scores,
                );
                o
            })
            .collect();
        let mut ctx = vec![0f32; b * l * d];
        ctx.par_chunks_mut(l * d)
            .enumerate()
            .for_each(|(bi, cell)| {
                for hi in 0..h {
                    let o = &heads[bi * h + hi];
                    for (i, row) in cell.chunks_exact_mut(d).enumerate() {
                        row[hi * hd..(hi + 1) * hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
                    }
                }
            });
        ctx
    }

    fn forward(&self, x: &mut [f32], b: usize, l: usize, d: usize, valid: &[usize]) {
        let rows = b * l;
        if self.pre_norm {
            self.n1.residual_norm(x, None, d);
            let ctx = self.attention(&self.qkv.apply(x, rows), b, l, d, valid);
            let a = self.out.apply(&ctx, rows);
            add_in_place(x, &a);
            self.n2.residual_norm(x, None, d);
            let f = self.ffn(x, rows);
            add_in_place(x, &f);
        } else {
            let ctx = self.attention(&self.qkv.apply(x, rows), b, l, d, valid);
            let a = self.out.apply(&ctx, rows);
            self.n1.residual_norm(x, Some(&a), d);
            let f = self.ffn(x, rows);
            self.n2.residual_norm(x, Some(&f), d);
        }
    }

    fn ffn(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut h = self.l1.apply(x, rows);
        h.par_chunks_mut(1 << 14).for_each(|c| {
            for v in c {
                *v = v.max(0.0);
            }
        });
        self.l2.apply(&h, rows)
    }
}

fn add_in_place(x: &mut [f32], a: &[f32]) {
    x.par_chunks_mut(1 << 14)
        .zip(a.par_chunks(1 << 14))
        .for_each(|(xc, ac)| {
            for (v, &u) in xc.iter_mut().zip(ac) {
                *v += u;
            }
        });
}

/// Number of leading valid (non-padding) keys per cell when padding is a suffix; `None`
/// when some cell has padding in the middle (the caller then uses the general path).
fn valid_prefixes<B: Backend>(
    padding: Option<&Tensor<B, 2, Bool>>,
    b: usize,
    l: usize,
) -> Option<Vec<usize>> {
    let Some(p) = padding else {
        return Some(vec![l; b]);
    };
    let any: Box<dyn std::any::Any> = Box::new(p.clone().into_primitive());
    let f = any.downcast::<FlexTensor>().ok()?.to_contiguous();
    let m: &[u8] = f.storage();
    let mut out = Vec::with_capacity(b);
    for row in m.chunks_exact(l) {
        let n = row.iter().position(|&v| v != 0).unwrap_or(l);
        if row[n..].contains(&0) {
            return None;
        }
        out.push(n);
    }
    Some(out)
}

/// Run the encoder stack on the CPU fast path; `None` when `B` is not flex (f32) or the
/// padding is not a suffix, in which case the caller runs the generic layers.
pub fn transform<B: Backend>(
    layers: &[EncoderLayer<B>],
    x: &Tensor<B, 3>,
    padding: Option<&Tensor<B, 2, Bool>>,
) -> Option<Tensor<B, 3>> {
    if !is_flex::<B>() {
        return None;
    }
    let [b, l, d] = x.dims();
    let valid = valid_prefixes(padding, b, l)?;
    let mut h = host(x.clone())?;
    for layer in layers {
        let w = LayerW::of(layer)?;
        w.forward(&mut h, b, l, d, &valid);
    }
    let t = FlexTensor::new(
        burn::tensor::Bytes::from_elems(h),
        Layout::contiguous(burn::tensor::Shape::new([b, l, d])),
        burn::tensor::DType::F32,
    );
    let any: Box<dyn std::any::Any> = Box::new(t);
    let prim = *any.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(prim)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{CellEmbStyle, InputEmbStyle, InputNorm, ModelConfig, ModelKind};
    use burn::tensor::{Distribution, TensorData};

    type Cpu = burn::backend::Flex;

    fn config(pre_norm: bool) -> ModelConfig {
        ModelConfig {
            kind: ModelKind::Transformer,
            ntoken: 20,
            d_model: 32,
            nhead: 4,
            d_hid: 24,
            nlayers: 2,
            nlayers_cls: 3,
            n_cls: None,
            dropout: 0.0,
            pad_token: "<pad>".into(),
            pad_value: -2.0,
            mask_value: -1.0,
            n_bins: 51,
            max_seq_len: 1200,
            input_emb_style: InputEmbStyle::Continuous,
            n_input_bins: None,
            cell_emb_style: CellEmbStyle::Cls,
            mvc: None,
            explicit_zero_prob: false,
            input_norm: InputNorm::None,
            num_batch_labels: None,
            dab_classes: None,
            pre_norm,
            generative: false,
            ecs_threshold: 0.3,
        }
    }

    /// The fused stack computes what the generic burn layers compute (post- and pre-norm,
    /// with and without suffix padding); padding in the middle falls back.
    #[test]
    fn fused_stack_equals_generic_layers() {
        let dev = Default::default();
        for pre_norm in [false, true] {
            let model = crate::model::ScGpt::<Cpu>::init(&config(pre_norm), &dev);
            let (b, l, d) = (3, 11, 32);
            let x = Tensor::<Cpu, 3>::random([b, l, d], Distribution::Normal(0.0, 1.0), &dev);
            let mut pad = vec![false; b * l];
            pad[l + 9] = true;
            pad[l + 10] = true;
            let mask =
                Tensor::<Cpu, 2, Bool>::from_data(TensorData::new(pad.clone(), [b, l]), &dev);
            for m in [None, Some(&mask)] {
                let fused = transform(&model.layers, &x, m).expect("fused path");
                let mut g = x.clone();
                for layer in &model.layers {
                    g = layer.forward(g, m);
                }
                let a = fused.into_data().into_vec::<f32>().expect("f32");
                let e = g.into_data().into_vec::<f32>().expect("f32");
                let worst = crate::model::max_abs_diff(&a, &e);
                assert!(
                    worst < 1e-4,
                    "pre_norm {pre_norm}: max abs difference {worst}"
                );
            }
            pad[4] = true; // padding in the middle of cell 0
            let mid = Tensor::<Cpu, 2, Bool>::from_data(TensorData::new(pad, [b, l]), &dev);
            assert!(transform(&model.layers, &x, Some(&mid)).is_none());
        }
    }

    /// Mean- and weighted-pooled cell embeddings leave padding out: a cell gets the same
    /// embedding alone and next to a longer cell (scGPT's pooling would not).
    #[test]
    fn pooled_cell_embedding_ignores_padding() {
        let dev = Default::default();
        for style in [CellEmbStyle::AvgPool, CellEmbStyle::WPool] {
            let mut c = config(false);
            c.cell_emb_style = style;
            let model = crate::model::ScGpt::<Cpu>::init(&c, &dev);
            let a_genes: Vec<i64> = vec![0, 3, 5, 7, 9];
            let a_vals: Vec<f32> = vec![0.0, 1.0, 4.0, 2.0, 9.0];
            let batch = |genes: Vec<i64>, vals: Vec<f32>, pad: Option<Vec<bool>>, n: usize| {
                let l = genes.len() / n;
                crate::model::TokenBatch::<Cpu> {
                    src: Tensor::from_data(TensorData::new(genes, [n, l]), &dev),
                    values: Tensor::from_data(TensorData::new(vals, [n, l]), &dev),
                    padding: pad.map(|p| Tensor::from_data(TensorData::new(p, [n, l]), &dev)),
                    batch_labels: None,
                    dsbn_domain: None,
                    mod_types: None,
                    pert_flags: None,
                }
            };
            let alone = model
                .embed_cells(&batch(a_genes.clone(), a_vals.clone(), None, 1))
                .expect("alone")
                .into_data()
                .into_vec::<f32>()
                .expect("f32");
            // cell A padded to 8 (pad id 1, pad value -2) next to an 8-gene cell B
            let mut genes = a_genes.clone();
            genes.extend([1, 1, 1]);
            genes.extend([0, 2, 4, 6, 8, 10, 12, 14]);
            let mut vals = a_vals.clone();
            vals.extend([-2.0, -2.0, -2.0]);
            vals.extend([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
            let pad: Vec<bool> = genes
                .iter()
                .enumerate()
                .map(|(i, &g)| i < 8 && g == 1)
                .collect();
            let batched = model
                .embed_cells(&batch(genes, vals, Some(pad), 2))
                .expect("batched")
                .into_data()
                .into_vec::<f32>()
                .expect("f32");
            let worst = crate::model::max_abs_diff(&alone, &batched[..32]);
            assert!(
                worst < 1e-5,
                "{style:?}: padding changed the embedding by {worst}"
            );
            assert!(
                crate::model::max_abs_diff(&batched[..32], &batched[32..]) > 1e-3,
                "{style:?}: two different cells should differ"
            );
        }
    }
}
