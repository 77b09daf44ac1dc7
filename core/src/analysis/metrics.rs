//! Classification and clustering metrics, as scikit-learn 1.9 computes them.
//!
//! Labels are `u32` codes; any values may be used (they are compared, never used as
//! indices). Classification metrics use the sorted union of the labels present in `y_true`
//! or `y_pred` (scikit-learn's `unique_labels`), with `zero_division = 0`.
//!
//! - [`accuracy`], [`confusion_matrix`], [`classification_report`] (per-class and macro
//!   precision / recall / F1 as `precision_recall_fscore_support(average=None | "macro",
//!   zero_division=0)`).
//! - [`normalized_mutual_info`] (`normalized_mutual_info_score`, arithmetic mean of the two
//!   entropies), [`adjusted_rand_index`] (`adjusted_rand_score`).
//! - [`silhouette_samples`] / [`silhouette_score`] (euclidean), exact `O(n^2 d)`,
//!   multi-threaded, in `f64`.

use super::knn::{Metric, scan_pairs};
use super::{AnalysisError, DenseMatrix, Result, encode_labels};

fn check_pair(y_true: &[u32], y_pred: &[u32]) -> Result<()> {
    if y_true.len() != y_pred.len() {
        return Err(AnalysisError::LengthMismatch {
            what: "predicted labels",
            expected: y_true.len(),
            got: y_pred.len(),
        });
    }
    if y_true.is_empty() {
        return Err(AnalysisError::Empty("labels"));
    }
    Ok(())
}

/// Fraction of positions where `y_pred == y_true`.
pub fn accuracy(y_true: &[u32], y_pred: &[u32]) -> Result<f64> {
    check_pair(y_true, y_pred)?;
    let hits = y_true.iter().zip(y_pred).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / y_true.len() as f64)
}

/// Confusion matrix over `labels` (the sorted union of true and predicted labels):
/// `counts[t * labels.len() + p]` = number of samples with true label `labels[t]` predicted as
/// `labels[p]` (scikit-learn's layout: rows true, columns predicted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// Row/column labels, increasing.
    pub labels: Vec<u32>,
    /// Row-major counts, `labels.len()^2` entries.
    pub counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// Number of labels (rows = columns).
    pub fn n_labels(&self) -> usize {
        self.labels.len()
    }

    /// Count for true label index `t` and predicted label index `p` (indices into `labels`;
    /// 0 when out of range).
    pub fn get(&self, t: usize, p: usize) -> u64 {
        let l = self.labels.len();
        if t >= l || p >= l {
            return 0;
        }
        self.counts[t * l + p]
    }
}

/// Most distinct labels [`confusion_matrix`] and [`classification_report`] accept (the dense
/// matrix has `labels^2` cells).
pub const MAX_CONFUSION_LABELS: usize = 8192;

/// Confusion matrix of `y_true` vs `y_pred` (at most [`MAX_CONFUSION_LABELS`] distinct labels).
pub fn confusion_matrix(y_true: &[u32], y_pred: &[u32]) -> Result<ConfusionMatrix> {
    check_pair(y_true, y_pred)?;
    let mut labels: Vec<u32> = y_true.iter().chain(y_pred).copied().collect();
    labels.sort_unstable();
    labels.dedup();
    let l = labels.len();
    if l > MAX_CONFUSION_LABELS {
        return Err(AnalysisError::InvalidParameter(format!(
            "{l} distinct labels: a dense confusion matrix is limited to {MAX_CONFUSION_LABELS}"
        )));
    }
    let pos = |v: &u32| labels.partition_point(|c| c < v);
    let mut counts = vec![0u64; l * l];
    for (t, p) in y_true.iter().zip(y_pred) {
        counts[pos(t) * l + pos(p)] += 1;
    }
    Ok(ConfusionMatrix { labels, counts })
}

/// Scores of one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    /// The class label.
    pub label: u32,
    /// `tp / (tp + fp)`, 0 when the class is never predicted.
    pub precision: f64,
    /// `tp / (tp + fn)`, 0 when the class never occurs in `y_true`.
    pub recall: f64,
    /// `2 tp / (2 tp + fp + fn)`, 0 when the denominator is 0.
    pub f1: f64,
    /// Number of samples whose true label is this class.
    pub support: u64,
}

/// Accuracy, per-class and macro-averaged precision/recall/F1 and the confusion matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationReport {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// One entry per label of the union, in increasing label order.
    pub per_class: Vec<ClassScores>,
    /// Unweighted mean of the per-class precisions.
    pub macro_precision: f64,
    /// Unweighted mean of the per-class recalls.
    pub macro_recall: f64,
    /// Unweighted mean of the per-class F1 scores (not the F1 of the macro P and R).
    pub macro_f1: f64,
    /// The confusion matrix the scores come from.
    pub confusion: ConfusionMatrix,
}

/// All classification metrics of `y_pred` against `y_true` (at most [`MAX_CONFUSION_LABELS`]
/// distinct labels; scikit-learn's
/// `precision_recall_fscore_support(..., zero_division=0)` with `average=None` and
/// `"macro"`, `accuracy_score`, `confusion_matrix`).
pub fn classification_report(y_true: &[u32], y_pred: &[u32]) -> Result<ClassificationReport> {
    let confusion = confusion_matrix(y_true, y_pred)?;
    let l = confusion.n_labels();
    let mut per_class = Vec::with_capacity(l);
    for c in 0..l {
        let tp = confusion.get(c, c);
        let true_sum: u64 = (0..l).map(|p| confusion.get(c, p)).sum();
        let pred_sum: u64 = (0..l).map(|t| confusion.get(t, c)).sum();
        let div = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
        per_class.push(ClassScores {
            label: confusion.labels[c],
            precision: div(tp as f64, pred_sum as f64),
            recall: div(tp as f64, true_sum as f64),
            f1: div(2.0 * tp as f64, true_sum as f64 + pred_sum as f64),
            support: true_sum,
        });
    }
    let mean = |f: fn(&ClassScores) -> f64| per_class.iter().map(f).sum::<f64>() / l as f64;
    let trace: u64 = (0..l).map(|c| confusion.get(c, c)).sum();
    Ok(ClassificationReport {
        accuracy: trace as f64 / y_true.len() as f64,
        macro_precision: mean(|s| s.precision),
        macro_recall: mean(|s| s.recall),
        macro_f1: mean(|s| s.f1),
        per_class,
        confusion,
    })
}

/// Sparse contingency table: `(row code, column code, count)` in row-major order, plus the
/// row and column sums.
struct Contingency {
    cells: Vec<(usize, usize, u64)>,
    row_sums: Vec<u64>,
    col_sums: Vec<u64>,
}

fn contingency(a: &[u32], b: &[u32]) -> Contingency {
    let (ca, codes_a) = encode_labels(a);
    let (cb, codes_b) = encode_labels(b);
    let nb = cb.len() as u64;
    let mut keys: Vec<u64> = codes_a
        .iter()
        .zip(&codes_b)
        .map(|(&x, &y)| x as u64 * nb + y as u64)
        .collect();
    keys.sort_unstable();
    let mut cells: Vec<(usize, usize, u64)> = Vec::new();
    let mut last_key = None;
    for key in keys {
        match cells.last_mut() {
            Some(last) if last_key == Some(key) => last.2 += 1,
            _ => cells.push(((key / nb) as usize, (key % nb) as usize, 1)),
        }
        last_key = Some(key);
    }
    let mut row_sums = vec![0u64; ca.len()];
    let mut col_sums = vec![0u64; cb.len()];
    for &(r, c, v) in &cells {
        row_sums[r] += v;
        col_sums[c] += v;
    }
    Contingency {
        cells,
        row_sums,
        col_sums,
    }
}

fn entropy(counts: &[u64]) -> f64 {
    if counts.len() == 1 {
        return 0.0;
    }
    let total: u64 = counts.iter().sum();
    let (tf, lt) = (total as f64, (total as f64).ln());
    -counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| (c as f64 / tf) * ((c as f64).ln() - lt))
        .sum::<f64>()
}

/// Normalized mutual information of two labelings (scikit-learn's
/// `normalized_mutual_info_score`, `average_method="arithmetic"`): `MI / mean(H(a), H(b))`,
/// natural logarithms; 1 when both labelings have a single class, 0 when the MI is 0.
pub fn normalized_mutual_info(a: &[u32], b: &[u32]) -> Result<f64> {
    check_pair(a, b)?;
    let ct = contingency(a, b);
    let (na, nb) = (ct.row_sums.len(), ct.col_sums.len());
    if na == 1 && nb == 1 {
        return Ok(1.0);
    }
    // mutual_info_score
    let mi = if na == 1 || nb == 1 {
        0.0
    } else {
        let n = a.len() as f64;
        let ln_n = n.ln();
        let mut sum = 0.0f64;
        for &(r, c, v) in &ct.cells {
            let nm = v as f64 / n;
            let outer = (ct.row_sums[r] as f64) * (ct.col_sums[c] as f64);
            let log_outer = -outer.ln() + ln_n + ln_n;
            let term = nm * ((v as f64).ln() - ln_n) + nm * log_outer;
            sum += if term.abs() < f64::EPSILON { 0.0 } else { term };
        }
        sum.max(0.0)
    };
    if mi == 0.0 {
        return Ok(0.0);
    }
    let normalizer = (entropy(&ct.row_sums) + entropy(&ct.col_sums)) / 2.0;
    Ok(mi / normalizer)
}

/// Adjusted Rand index of two labelings (scikit-learn's `adjusted_rand_score`, from the pair
/// confusion matrix in exact integer arithmetic); 1 for identical partitions.
pub fn adjusted_rand_index(a: &[u32], b: &[u32]) -> Result<f64> {
    check_pair(a, b)?;
    let ct = contingency(a, b);
    let n = a.len() as i128;
    let sum_squares: i128 = ct.cells.iter().map(|c| (c.2 as i128) * (c.2 as i128)).sum();
    let dot_cols: i128 = ct
        .cells
        .iter()
        .map(|&(_, c, v)| v as i128 * ct.col_sums[c] as i128)
        .sum();
    let dot_rows: i128 = ct
        .cells
        .iter()
        .map(|&(r, _, v)| v as i128 * ct.row_sums[r] as i128)
        .sum();
    let tp = sum_squares - n;
    let fp = dot_cols - sum_squares;
    let fn_ = dot_rows - sum_squares;
    let tn = n * n - fp - fn_ - sum_squares;
    if fn_ == 0 && fp == 0 {
        return Ok(1.0);
    }
    let num = tp * tn - fn_ * fp;
    let den = (tp + fn_) * (fn_ + tn) + (tp + fp) * (fp + tn);
    Ok(2.0 * (num as f64) / (den as f64))
}

/// Per-sample silhouette widths with euclidean distances (scikit-learn's
/// `silhouette_samples`): `s_i = (b_i - a_i) / max(a_i, b_i)` with `a_i` the mean distance to
/// the other members of its cluster and `b_i` the smallest mean distance to another cluster;
/// 0 for members of singleton clusters. Needs `2 <= number of labels <= n - 1`.
pub fn silhouette_samples(x: &DenseMatrix<'_>, labels: &[u32]) -> Result<Vec<f64>> {
    let n = x.n_rows();
    if labels.len() != n {
        return Err(AnalysisError::LengthMismatch {
            what: "labels",
            expected: n,
            got: labels.len(),
        });
    }
    let (classes, codes) = encode_labels(labels);
    let nc = classes.len();
    if nc < 2 || nc + 1 > n {
        return Err(AnalysisError::InvalidLabelCount { n_labels: nc, n });
    }
    let mut freq = vec![0u64; nc];
    for &c in &codes {
        freq[c] += 1;
    }
    Ok(silhouette_chunked(x, &codes, &freq, SUM_BUDGET))
}

/// Silhouettes from dense cluster codes, keeping per-row sums for about `budget` values at a
/// time.
fn silhouette_chunked(
    x: &DenseMatrix<'_>,
    codes: &[usize],
    freq: &[u64],
    budget: usize,
) -> Vec<f64> {
    let (n, nc) = (x.n_rows(), freq.len());
    let chunk = (budget / nc).clamp(1, n);
    let mut out = Vec::with_capacity(n);
    for row0 in (0..n).step_by(chunk) {
        let rows = chunk.min(n - row0);
        let mut sums: Vec<Vec<f64>> = (0..rows).map(|_| vec![0.0f64; nc]).collect();
        scan_pairs(
            x,
            Metric::Euclidean,
            row0,
            &mut sums,
            |s, _i, j0, d2, len| {
                let d = d2.map(f64::sqrt);
                for (c, &v) in d.iter().enumerate().take(len) {
                    s[codes[j0 + c]] += v;
                }
            },
        );
        out.extend(
            sums.iter()
                .zip(&codes[row0..row0 + rows])
                .map(|(s, &own)| silhouette_of(s, own, freq)),
        );
    }
    out
}

/// Number of per-cluster distance sums kept at once by [`silhouette_samples`].
const SUM_BUDGET: usize = 1 << 24;

fn silhouette_of(s: &[f64], own: usize, freq: &[u64]) -> f64 {
    if freq[own] <= 1 {
        return 0.0;
    }
    let a = s[own] / (freq[own] - 1) as f64;
    let b = s
        .iter()
        .zip(freq)
        .enumerate()
        .filter(|(c, _)| *c != own)
        .map(|(_, (&sum, &f))| sum / f as f64)
        .fold(f64::INFINITY, f64::min);
    let m = a.max(b);
    if m > 0.0 { (b - a) / m } else { 0.0 }
}

/// Mean silhouette width (scikit-learn's `silhouette_score`, euclidean, no sampling).
pub fn silhouette_score(x: &DenseMatrix<'_>, labels: &[u32]) -> Result<f64> {
    let s = silhouette_samples(x, labels)?;
    Ok(s.iter().sum::<f64>() / s.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silhouette_chunking_is_invisible() {
        let n = 300;
        let x: Vec<f32> = (0..n * 3)
            .map(|i| ((i * 7919) % 1013) as f32 / 100.0)
            .collect();
        let m = DenseMatrix::new(&x, n, 3).unwrap();
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 31) % 40).collect();
        let (_, codes) = encode_labels(&labels);
        let mut freq = vec![0u64; 40];
        for &c in &codes {
            freq[c] += 1;
        }
        let whole = silhouette_chunked(&m, &codes, &freq, usize::MAX);
        for budget in [40, 41, 1000, 40 * 97] {
            assert_eq!(silhouette_chunked(&m, &codes, &freq, budget), whole);
        }
        assert_eq!(silhouette_samples(&m, &labels).unwrap(), whole);
    }
}
