//! scGPT value binning and cell tokenisation (the embedding convention).
//!
//! Binning follows scGPT's `binning` exactly: per cell, the quantile edges of its non-zero
//! values at probabilities `linspace(0, 1, n_bins - 1)` (NumPy's default linear
//! interpolation, reproduced operation by operation so that values landing on an edge
//! compare the same way), then a randomised digitize that only matters for ties. The tie
//! draws come from a generator seeded per cell (`seed`, cell index), so a cell gets the same
//! bins whatever chunk or batch it is processed in (scGPT draws from a global RNG, which
//! makes its embeddings depend on batch composition: scGPT #281).

/// A small, fast, seedable generator (SplitMix64 seeding + xoshiro256**).
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        Self {
            s: [
                splitmix(&mut st),
                splitmix(&mut st),
                splitmix(&mut st),
                splitmix(&mut st),
            ],
        }
    }

    /// A generator for item `index` of a run seeded with `seed`.
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut st = seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Self::new(splitmix(&mut st))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// `k` distinct indices of `0..n`, in increasing order (partial Fisher-Yates).
    pub fn choose_sorted(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below(n - i);
            idx.swap(i, j);
        }
        let mut out = idx[..k].to_vec();
        out.sort_unstable();
        out
    }
}

/// Precision of the values being binned: NumPy subtracts neighbours in the array's own
/// dtype before interpolating in float64, and that rounding decides ties with edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValuePrecision {
    F32,
    F64,
}

/// NumPy `np.linspace(0, 1, num)` for `num >= 2`.
fn linspace01(num: usize) -> Vec<f64> {
    let div = (num - 1) as f64;
    let step = 1.0 / div;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step).collect();
    if let Some(last) = v.last_mut() {
        *last = 1.0;
    }
    v
}

/// NumPy `np.quantile(sorted, q)` (method "linear") for already sorted values.
fn quantile_sorted(sorted: &[f64], q: f64, precision: ValuePrecision) -> f64 {
    let n = sorted.len();
    let virt = (n - 1) as f64 * q;
    let (prev, next) = if virt >= (n - 1) as f64 {
        (n - 1, n - 1)
    } else if virt < 0.0 {
        (0, 0)
    } else {
        let p = virt.floor() as usize;
        (p, (p + 1).min(n - 1))
    };
    let gamma = virt - virt.floor();
    let a = sorted[prev];
    let b = sorted[next];
    let diff = match precision {
        ValuePrecision::F32 => (b as f32 - a as f32) as f64,
        ValuePrecision::F64 => b - a,
    };
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

/// scGPT's binning of one cell's values (all of them, zeros included in `values`).
/// Returns the bins (0 where the value is 0, else 1..n_bins-1) and the `n_bins - 1` edges
/// (empty for an all-zero cell). Values must be finite and non-negative.
pub fn bin_cell(
    values: &[f64],
    n_bins: usize,
    precision: ValuePrecision,
    rng: &mut Rng,
) -> (Vec<u16>, Vec<f64>) {
    let mut nz: Vec<f64> = values.iter().copied().filter(|&v| v != 0.0).collect();
    if nz.is_empty() || n_bins < 3 {
        return (vec![0; values.len()], Vec::new());
    }
    nz.sort_by(f64::total_cmp);
    let edges: Vec<f64> = linspace01(n_bins - 1)
        .into_iter()
        .map(|q| quantile_sorted(&nz, q, precision))
        .collect();
    let bins = values
        .iter()
        .map(|&v| {
            if v == 0.0 {
                return 0;
            }
            // left = #edges <= v, right = #edges < v (edges are non-decreasing).
            let left = edges.partition_point(|&e| e <= v);
            let right = edges.partition_point(|&e| e < v);
            let bin = if left > right + 1 {
                let u = rng.uniform();
                (left as f64 - u * (left - right) as f64).ceil() as usize
            } else {
                left
            };
            bin.min(u16::MAX as usize) as u16
        })
        .collect();
    (bins, edges)
}

/// One cell tokenised the way `scgpt.tasks.embed_data` does: `<cls>` first with value
/// `cls_value`, then the cell's non-zero vocabulary genes with their bins.
#[derive(Clone, Debug, PartialEq)]
pub struct CellTokens {
    pub genes: Vec<u32>,
    pub values: Vec<f32>,
}

/// Tokenise one cell given its non-zero entries `(vocab id, value)` in column order.
/// Binning uses all the cell's genes; if more than `max_len - 1` remain, a seeded random
/// subset is kept (column order preserved).
pub fn tokenize_cell(
    entries: &[(u32, f64)],
    cls_id: u32,
    cls_value: f32,
    n_bins: usize,
    max_len: usize,
    precision: ValuePrecision,
    rng: &mut Rng,
) -> CellTokens {
    let values: Vec<f64> = entries.iter().map(|e| e.1).collect();
    let (bins, _) = bin_cell(&values, n_bins, precision, rng);
    let keep = max_len.saturating_sub(1);
    let chosen: Vec<usize> = if entries.len() > keep {
        rng.choose_sorted(entries.len(), keep)
    } else {
        (0..entries.len()).collect()
    };
    let mut genes = Vec::with_capacity(chosen.len() + 1);
    let mut vals = Vec::with_capacity(chosen.len() + 1);
    genes.push(cls_id);
    vals.push(cls_value);
    for i in chosen {
        genes.push(entries[i].0);
        vals.push(bins[i] as f32);
    }
    CellTokens {
        genes,
        values: vals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_values_bin_by_rank() {
        let vals: Vec<f64> = (1..=100).map(|i| i as f64 * 0.37).collect();
        let mut rng = Rng::new(1);
        let (bins, edges) = bin_cell(&vals, 51, ValuePrecision::F64, &mut rng);
        assert_eq!(edges.len(), 50);
        assert_eq!(bins[0], 1, "the minimum is bin 1");
        assert_eq!(bins[99], 50, "a unique maximum is bin 50");
        assert!(
            bins.windows(2).all(|w| w[0] <= w[1]),
            "bins are monotone in value"
        );
    }

    #[test]
    fn zeros_stay_zero_and_ties_are_seeded() {
        let vals = [0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.0, 1.0];
        let a = bin_cell(&vals, 11, ValuePrecision::F64, &mut Rng::new(7)).0;
        let b = bin_cell(&vals, 11, ValuePrecision::F64, &mut Rng::new(7)).0;
        assert_eq!(a, b, "same seed, same bins");
        assert_eq!(a[0], 0);
        assert_eq!(a[6], 0);
        assert_eq!(a[5], 10);
        for &t in &[a[1], a[2], a[3], a[4], a[7]] {
            assert!((1..=9).contains(&t), "tied value binned to {t}");
        }
        assert_eq!(
            bin_cell(&[0.0, 0.0], 51, ValuePrecision::F64, &mut Rng::new(1)).0,
            vec![0, 0]
        );
    }

    #[test]
    fn subsampling_keeps_cls_and_length() {
        let entries: Vec<(u32, f64)> = (0..50).map(|i| (i, i as f64 + 1.0)).collect();
        let t = tokenize_cell(
            &entries,
            99,
            -2.0,
            51,
            11,
            ValuePrecision::F64,
            &mut Rng::new(3),
        );
        assert_eq!(t.genes.len(), 11);
        assert_eq!(t.genes[0], 99);
        assert_eq!(t.values[0], -2.0);
        assert!(t.genes[1..].windows(2).all(|w| w[0] < w[1]));
    }
}
