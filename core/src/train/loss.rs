//! scGPT's training losses (`scgpt/loss.py` and the model's built-in ECS/CCE terms),
//! written with burn tensor ops so autodiff differentiates them.

use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::model::net::l2_normalize;

/// Smallest probability the Bernoulli likelihood sees (PyTorch clamps probabilities to
/// `[eps, 1 - eps]` with float32's machine epsilon when turning them into logits).
pub const PROB_EPS: f64 = f32::EPSILON as f64;

/// `sum(((pred - target) * mask)^2) / sum(mask)`: scGPT's `masked_mse_loss` (mask as 0/1).
pub fn masked_mse<B: Backend>(
    pred: Tensor<B, 2>,
    target: Tensor<B, 2>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let n = mask.clone().sum();
    let diff = (pred - target) * mask;
    diff.powi_scalar(2).sum() / n
}

/// scGPT's `criterion_neg_log_bernoulli`: `-sum(mask * log Bernoulli(p).pmf(target > 0)) /
/// sum(mask)`, where `p` is the model's probability that the value is non-zero.
pub fn neg_log_bernoulli<B: Backend>(
    probs: Tensor<B, 2>,
    target: Tensor<B, 2>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let n = mask.clone().sum();
    let p = probs.clamp(PROB_EPS, 1.0 - PROB_EPS);
    let positive = target.greater_elem(0.0).float();
    let ll = positive.clone() * p.clone().log() + (positive.neg() + 1.0) * (p.neg() + 1.0).log();
    (ll * mask).sum().neg() / n
}

/// Mean cross-entropy of `logits` `[B, C]` against class ids `[B]` (PyTorch's
/// `CrossEntropyLoss` with mean reduction).
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, labels.reshape([b, 1]));
    picked.mean().neg()
}

/// Class-weighted mean cross-entropy (PyTorch's `CrossEntropyLoss(weight=w)`):
/// `sum_i w[y_i] * nll_i / sum_i w[y_i]`.
pub fn weighted_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    weights: &[f32],
) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let device = logits.device();
    let w = Tensor::<B, 1>::from_data(
        burn::tensor::TensorData::new(weights.to_vec(), [weights.len()]),
        &device,
    );
    let wy = w.select(0, labels.clone());
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, labels.reshape([b, 1])).reshape([b]);
    (picked * wy.clone()).sum().neg() / wy.sum()
}

/// scGPT's elastic cell similarity: cosine similarities of the L2-normalised cell
/// embeddings with the diagonal zeroed, negatives cut to 0, then
/// `mean(1 - (S - beta)^2)` over all `B x B` entries.
pub fn ecs<B: Backend>(cell_emb: Tensor<B, 2>, beta: f64) -> Tensor<B, 1> {
    let [b, _] = cell_emb.dims();
    let e = l2_normalize(cell_emb);
    let s = e.clone().matmul(e.transpose());
    let off_diag = Tensor::<B, 2, Int>::eye(b, &s.device())
        .equal_elem(0)
        .float();
    let s = relu(s * off_diag);
    ((s - beta).powi_scalar(2).neg() + 1.0).mean()
}

/// Contrastive cell embedding (SimCSE-style): `S[i, j] = cos(a_i, b_j) / temperature`,
/// cross-entropy with the matching cell as the target.
pub fn cce<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>, temperature: f64) -> Tensor<B, 1> {
    let [n, _] = a.dims();
    let s = l2_normalize(a).matmul(l2_normalize(b).transpose()) / temperature;
    let labels = Tensor::<B, 1, Int>::arange(0..n as i64, &s.device());
    cross_entropy(s, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    fn t2(v: &[f32], shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    #[test]
    fn masked_mse_divides_by_masked_count() {
        let pred = t2(&[1.0, 2.0, 3.0, 4.0], [2, 2]);
        let target = t2(&[0.0, 2.0, 1.0, 0.0], [2, 2]);
        let mask = t2(&[1.0, 1.0, 0.0, 1.0], [2, 2]);
        // (1^2 + 0 + 4^2) / 3
        let v = masked_mse(pred, target, mask).into_scalar();
        assert!((v - 17.0 / 3.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn bernoulli_nll_matches_hand_computation() {
        let p = t2(&[0.8, 0.3], [1, 2]);
        let target = t2(&[5.0, 0.0], [1, 2]);
        let mask = t2(&[1.0, 1.0], [1, 2]);
        let v = neg_log_bernoulli(p, target, mask).into_scalar() as f64;
        let want = -(0.8f64.ln() + 0.7f64.ln()) / 2.0;
        assert!((v - want).abs() < 1e-6, "{v} vs {want}");
    }

    #[test]
    fn weighted_cross_entropy_reduces_to_the_plain_one_and_weighs() {
        let logits = t2(&[2.0, 0.0, 0.5, 1.0, 0.0, 3.0], [3, 2]);
        let labels = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![0i64, 1, 0], [3]),
            &Default::default(),
        );
        let plain = cross_entropy(logits.clone(), labels.clone()).into_scalar();
        let even =
            weighted_cross_entropy(logits.clone(), labels.clone(), &[1.0, 1.0]).into_scalar();
        assert!((plain - even).abs() < 1e-6);
        // Only class 1 counts: the loss is row 1's NLL.
        let only1 = weighted_cross_entropy(logits, labels, &[0.0, 1.0]).into_scalar() as f64;
        let want = -(1.0f64.exp() / (0.5f64.exp() + 1.0f64.exp())).ln();
        assert!((only1 - want).abs() < 1e-6, "{only1} vs {want}");
    }

    #[test]
    fn ecs_of_identical_cells() {
        // Two identical cells: S = [[0,1],[1,0]] -> entries (1-(0-b)^2), (1-(1-b)^2).
        let e = t2(&[1.0, 0.0, 2.0, 0.0], [2, 2]);
        let beta = 0.8;
        let v = ecs(e, beta).into_scalar() as f64;
        let want = (2.0 * (1.0 - beta * beta) + 2.0 * (1.0 - (1.0 - beta) * (1.0 - beta))) / 4.0;
        assert!((v - want).abs() < 1e-6, "{v} vs {want}");
    }
}
