//! Multi-threaded scaled dot-product attention for the CPU (flex) backend.
//!
//! burn-flex 0.21's fused attention walks (batch, head) pairs on one thread with small
//! tiled GEMMs; on a multi-core CPU that leaves most of the machine idle for a third of the
//! encoder's work. Here each (batch, head) pair is one rayon task: `Q Kᵀ` as one GEMM over
//! the valid keys, a row softmax with a vectorisable exponential, and `P V` as a second GEMM.
//! Keys masked as padding are skipped outright when they form a suffix (the usual
//! right-padding) and set to probability zero otherwise.
//!
//! Other backends (CUDA, wgpu, autodiff) keep burn's fused attention.

use std::any::{Any, TypeId};

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

/// Whether `B` is the flex CPU backend (its tensors are `FlexTensor`s).
pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
        && TypeId::of::<B::BoolTensorPrimitive>() == TypeId::of::<FlexTensor>()
}

fn to_flex<T: Any>(t: T) -> Option<FlexTensor> {
    (Box::new(t) as Box<dyn Any>)
        .downcast::<FlexTensor>()
        .ok()
        .map(|b| *b)
}

fn from_flex<T: Any>(t: FlexTensor) -> Option<T> {
    (Box::new(t) as Box<dyn Any>)
        .downcast::<T>()
        .ok()
        .map(|b| *b)
}

fn float_to_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => to_flex(p),
        TensorPrimitive::QFloat(_) => None,
    }
}

/// `softmax(Q Kᵀ / √hd) V` with keys flagged in `key_padding` (`[B, Lk]`, true = padding)
/// excluded. Inputs `[B, H, L, hd]`; returns `None` when `B` is not the flex backend or the
/// tensors are not f32 (the caller then uses burn's attention).
pub fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    key_padding: Option<&Tensor<B, 2, Bool>>,
) -> Option<Tensor<B, 4>> {
    if !is_flex::<B>() {
        return None;
    }
    let [b, h, lq, hd] = q.dims();
    let lk = k.dims()[2];
    let qf = float_to_flex(q.clone())?.to_contiguous();
    let kf = float_to_flex(k.clone())?.to_contiguous();
    let vf = float_to_flex(v.clone())?.to_contiguous();
    if qf.dtype() != burn::tensor::DType::F32 {
        return None;
    }
    let mask: Option<Vec<u8>> = match key_padding {
        Some(m) => {
            let mf = to_flex(m.clone().into_primitive())?.to_contiguous();
            Some(mf.storage::<u8>().to_vec())
        }
        None => None,
    };
    let qs: &[f32] = qf.storage();
    let ks: &[f32] = kf.storage();
    let vs: &[f32] = vf.storage();
    let mut out = vec![0f32; b * h * lq * hd];
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(lq * hd)
        .enumerate()
        .for_each_init(Vec::new, |scores, (bh, o)| {
            let bi = bh / h;
            let keys = mask.as_ref().map(|m| &m[bi * lk..(bi + 1) * lk]);
            let off_q = bh * lq * hd;
            let off_k = bh * lk * hd;
            head(
                &qs[off_q..off_q + lq * hd],
                &ks[off_k..off_k + lk * hd],
                &vs[off_k..off_k + lk * hd],
                o,
                keys,
                lq,
                lk,
                hd,
                scale,
                scores,
            );
        });
    let t = FlexTensor::new(
        burn_std_bytes(out),
        Layout::contiguous(burn::tensor::Shape::new([b, h, lq, hd])),
        burn::tensor::DType::F32,
    );
    let prim = from_flex::<B::FloatTensorPrimitive>(t)?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(prim)))
}

fn burn_std_bytes(v: Vec<f32>) -> burn::tensor::Bytes {
    burn::tensor::Bytes::from_elems(v)
}

/// One (batch, head) with contiguous `[l, hd]` q/k/v: padding that forms a suffix is
/// skipped, scattered padding gets probability zero.
#[allow(clippy::too_many_arguments)]
fn head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &mut [f32],
    key_padding: Option<&[u8]>,
    lq: usize,
    lk: usize,
    hd: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let (n, scattered) = match key_padding {
        None => (lk, false),
        Some(m) => {
            let n = m.iter().position(|&p| p != 0).unwrap_or(lk);
            (n, m[n..].contains(&0))
        }
    };
    let (n, masked) = if scattered {
        (lk, key_padding)
    } else {
        (n, None)
    };
    let view = |data| HeadView {
        data,
        row_stride: hd,
    };
    attend(
        view(q),
        view(k),
        view(v),
        o,
        lq,
        n,
        hd,
        scale,
        masked,
        scores,
    );
}

/// Rows of one head inside a larger buffer: row `i` is `data[i * row_stride..][..hd]`.
#[derive(Clone, Copy)]
pub(crate) struct HeadView<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
}

impl HeadView<'_> {
    fn holds(&self, rows: usize, hd: usize) -> bool {
        rows == 0 || self.data.len() >= (rows - 1) * self.row_stride + hd
    }
}

/// `o[lq, hd] = softmax(q kᵀ · scale) v` over the first `n` keys, `masked[j] != 0` giving
/// key `j` probability zero. Two single-threaded GEMMs (callers parallelise over heads).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: HeadView<'_>,
    k: HeadView<'_>,
    v: HeadView<'_>,
    o: &mut [f32],
    lq: usize,
    n: usize,
    hd: usize,
    scale: f32,
    masked: Option<&[u8]>,
    scores: &mut Vec<f32>,
) {
    if n == 0 || !q.holds(lq, hd) || !k.holds(n, hd) || !v.holds(n, hd) || o.len() < lq * hd {
        o.fill(0.0);
        return;
    }
    scores.resize(lq * n, 0.0);
    // SAFETY: `holds` checked that every strided row read below lies inside its slice;
    // scores is [lq, n] and o at least [lq, hd], both row-major.
    unsafe {
        gemm::gemm(
            lq,
            n,
            hd,
            scores.as_mut_ptr(),
            1,
            n as isize,
            false,
            q.data.as_ptr(),
            1,
            q.row_stride as isize,
            k.data.as_ptr(),
            k.row_stride as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    softmax_rows(scores, n, masked);
    // SAFETY: as above; scores [lq, n] times v [n, hd] into o [lq, hd].
    unsafe {
        gemm::gemm(
            lq,
            hd,
            n,
            o.as_mut_ptr(),
            1,
            hd as isize,
            false,
            scores.as_ptr(),
            1,
            n as isize,
            v.data.as_ptr(),
            1,
            v.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Row softmax in place; `masked[j] != 0` forces probability 0 for key `j`.
fn softmax_rows(s: &mut [f32], n: usize, masked: Option<&[u8]>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { softmax_rows_avx2(s, n, masked) };
            return;
        }
    }
    softmax_rows_generic(s, n, masked);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_rows_avx2(s: &mut [f32], n: usize, masked: Option<&[u8]>) {
    softmax_rows_generic(s, n, masked);
}

#[inline(always)]
fn softmax_rows_generic(s: &mut [f32], n: usize, masked: Option<&[u8]>) {
    for row in s.chunks_exact_mut(n) {
        if let Some(m) = masked {
            for (x, &p) in row.iter_mut().zip(m) {
                if p != 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        let mut sum = 0.0f32;
        for x in row.iter_mut() {
            let e = exp_nonpositive(*x - max);
            *x = e;
            sum += e;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// `exp(x)` for `x <= 0` (and `-inf`), branch-free so that loops over it vectorise:
/// `2^t` with `t = x·log2(e)` split into integer and fraction, the fraction by a degree-8
/// polynomial (relative error below 1e-6 for x > -10, below 1e-5 down to -80).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2: f32 = std::f32::consts::LN_2;
    let t = (x * LOG2E).max(-126.0);
    let i = t as i32; // truncates toward zero: i in [-126, 0], f in (-1, 0]
    let f = (t - i as f32) * LN2;
    // e^f, f in (-ln 2, 0]: Taylor to degree 8.
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0
                    + f * (1.0 / 24.0
                        + f * (1.0 / 120.0
                            + f * (1.0 / 720.0 + f * (1.0 / 5040.0 + f * (1.0 / 40320.0))))))));
    let scale = f32::from_bits(((i + 127) as u32) << 23);
    let y = p * scale;
    if x == f32::NEG_INFINITY { 0.0 } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        // Near 0 (where softmax mass is) the error is at f32 rounding level; far out it
        // grows with |x| because x·log2(e) itself is rounded in f32.
        let mut worst_near = 0f32;
        let mut worst_far = 0f32;
        let mut x = 0.0f32;
        while x > -80.0 {
            let rel = (exp_nonpositive(x) - x.exp()).abs() / x.exp();
            if x > -10.0 {
                worst_near = worst_near.max(rel);
            } else {
                worst_far = worst_far.max(rel);
            }
            x -= 0.0137;
        }
        assert!(
            worst_near < 1e-6,
            "worst relative error near 0: {worst_near}"
        );
        assert!(
            worst_far < 1e-5,
            "worst relative error far from 0: {worst_far}"
        );
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(-200.0) < 1e-37);
    }

    #[test]
    fn matches_burn_attention_with_padding() {
        use burn::tensor::{Distribution, TensorData};
        type Cpu = burn::backend::Flex;
        let dev = Default::default();
        let (b, h, l, hd) = (3, 2, 37, 8);
        let q = Tensor::<Cpu, 4>::random([b, h, l, hd], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<Cpu, 4>::random([b, h, l, hd], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<Cpu, 4>::random([b, h, l, hd], Distribution::Normal(0.0, 1.0), &dev);
        // Row 0: no padding; row 1: suffix padding; row 2: scattered padding.
        let mut pad = vec![false; b * l];
        for j in 30..l {
            pad[l + j] = true;
        }
        for j in [3, 10, 36] {
            pad[2 * l + j] = true;
        }
        let mask = Tensor::<Cpu, 2, Bool>::from_data(TensorData::new(pad, [b, l]), &dev);
        let ours = attention(&q, &k, &v, Some(&mask)).expect("flex");
        let m4 = mask.reshape([b, 1, 1, l]).expand([b, 1, l, l]);
        let theirs = burn::tensor::module::attention(
            q,
            k,
            v,
            Some(m4),
            None,
            burn::tensor::ops::AttentionModuleOptions::default(),
        );
        let a = ours.into_data().into_vec::<f32>().expect("f32");
        let t = theirs.into_data().into_vec::<f32>().expect("f32");
        let worst = crate::model::max_abs_diff(&a, &t);
        assert!(worst < 1e-5, "max abs difference {worst}");
    }
}
