//! scGPT value binning and cell tokenisation (embedding and fine-tuning conventions, padding,
//! masking) and Geneformer's rank-value order.
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

/// One SplitMix64 step: advances `state` and returns a well-mixed 64-bit value.
#[inline(always)]
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 finaliser of `z` (a stateless hash: `splitmix` of a copy).
#[inline(always)]
pub(crate) fn mix(z: u64) -> u64 {
    let mut s = z;
    splitmix(&mut s)
}

/// A uniform integer in `0..m` from the high bits of a hash (`m >= 1`).
#[inline(always)]
pub(crate) fn hash_below(h: u64, m: usize) -> usize {
    (((h >> 32) * m as u64) >> 32) as usize
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

    /// Uniform integer in `0..n` (`n > 0`) without the tiny bias of [`Rng::below`]
    /// (Lemire's multiply-and-reject).
    pub fn below_unbiased(&mut self, n: u64) -> u64 {
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below_unbiased(i as u64 + 1) as usize;
            v.swap(i, j);
        }
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

impl ValuePrecision {
    /// The precision scanpy and NumPy compute in for stored values of `dtype`: float64 stays
    /// float64; float32 and integers (scanpy casts integers to float32 to normalise) are
    /// float32.
    pub fn of(dtype: crate::anndata::Dtype) -> Self {
        if dtype == crate::anndata::Dtype::F64 {
            Self::F64
        } else {
            Self::F32
        }
    }

    /// Rounds `v` to this precision.
    #[inline]
    pub fn round(self, v: f64) -> f64 {
        match self {
            Self::F32 => v as f32 as f64,
            Self::F64 => v,
        }
    }
}

/// NumPy `np.linspace(start, stop, num)` (endpoint included) for `num >= 2`, computed the
/// way NumPy does (`i * step + start`, the last value set to `stop`).
pub(crate) fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = (num - 1) as f64;
    let step = (stop - start) / div;
    let mut v: Vec<f64> = (0..num)
        .map(|i| {
            if step == 0.0 {
                (i as f64 / div) * (stop - start) + start
            } else {
                i as f64 * step + start
            }
        })
        .collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// NumPy `np.quantile(sorted, q)` (method "linear") for already sorted values.
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64, precision: ValuePrecision) -> f64 {
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
    let edges: Vec<f64> = numpy_linspace(0.0, 1.0, n_bins - 1)
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
    let genes: Vec<Option<u32>> = entries.iter().map(|e| Some(e.0)).collect();
    let bins: Vec<f32> = bins.iter().map(|&b| f32::from(b)).collect();
    let opts = TokenizeOptions {
        // the entries are the cell's chosen genes already
        include_zero_genes: true,
        ..TokenizeOptions::embedding(cls_value, max_len)
    };
    tokenize_values(&genes, &bins, cls_id, &opts, rng)
}

/// Which of scGPT's conventions a cell is tokenised with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenizeOptions {
    /// Keep every gene (scGPT `include_zero_gene=True`, the integration tutorial) or only the
    /// expressed ones (pretraining, embedding, the annotation tutorial).
    pub include_zero_genes: bool,
    /// Put `<cls>` first.
    pub append_cls: bool,
    /// Value at the `<cls>` position: the pad value (-2) when embedding or pretraining, 0 in
    /// the fine-tuning tutorials (`tokenize_and_pad_batch`).
    pub cls_value: f32,
    /// Most tokens per cell, `<cls>` included; longer cells keep a seeded random subset.
    pub max_len: usize,
}

impl TokenizeOptions {
    /// `embed_data` / pretraining: expressed genes, `<cls>` valued as the pad value.
    pub fn embedding(pad_value: f32, max_len: usize) -> Self {
        Self {
            include_zero_genes: false,
            append_cls: true,
            cls_value: pad_value,
            max_len,
        }
    }

    /// The fine-tuning tutorials: `<cls>` valued 0, zero genes optional.
    pub fn fine_tuning(include_zero_genes: bool, max_len: usize) -> Self {
        Self {
            include_zero_genes,
            append_cls: true,
            cls_value: 0.0,
            max_len,
        }
    }
}

/// Tokenises one cell from its (already binned or otherwise prepared) values over `genes`
/// (vocabulary ids, one per column; `None` for genes outside the vocabulary, which are
/// dropped). Column order is kept; subsampling is seeded.
pub fn tokenize_values(
    genes: &[Option<u32>],
    values: &[f32],
    cls_id: u32,
    opts: &TokenizeOptions,
    rng: &mut Rng,
) -> CellTokens {
    let picked: Vec<(u32, f32)> = genes
        .iter()
        .zip(values)
        .filter_map(|(g, &v)| g.map(|g| (g, v)))
        .filter(|&(_, v)| opts.include_zero_genes || v != 0.0)
        .collect();
    let room = opts.max_len.saturating_sub(usize::from(opts.append_cls));
    let chosen: Vec<usize> = if picked.len() > room {
        rng.choose_sorted(picked.len(), room)
    } else {
        (0..picked.len()).collect()
    };
    let mut out = CellTokens {
        genes: Vec::with_capacity(chosen.len() + 1),
        values: Vec::with_capacity(chosen.len() + 1),
    };
    if opts.append_cls {
        out.genes.push(cls_id);
        out.values.push(opts.cls_value);
    }
    for i in chosen {
        out.genes.push(picked[i].0);
        out.values.push(picked[i].1);
    }
    out
}

/// Cells padded on the right to one length: row-major `[n, len]` genes and values.
#[derive(Clone, Debug, PartialEq)]
pub struct PaddedBatch {
    pub n: usize,
    pub len: usize,
    pub genes: Vec<u32>,
    pub values: Vec<f32>,
}

impl PaddedBatch {
    /// Whether position `(i, j)` is padding.
    pub fn is_pad(&self, i: usize, j: usize, pad_id: u32) -> bool {
        self.genes[i * self.len + j] == pad_id
    }
}

/// scGPT's `pad_batch`: the batch length is the longest cell (at most `max_len`); shorter
/// cells are padded with `pad_id` / `pad_value`. Cells longer than `max_len` are cut to
/// `max_len` (tokenise with the same `max_len` to subsample them instead).
pub fn pad_batch(cells: &[CellTokens], max_len: usize, pad_id: u32, pad_value: f32) -> PaddedBatch {
    let len = cells
        .iter()
        .map(|c| c.genes.len())
        .max()
        .unwrap_or(0)
        .min(max_len);
    let mut genes = Vec::with_capacity(cells.len() * len);
    let mut values = Vec::with_capacity(cells.len() * len);
    for c in cells {
        let k = c.genes.len().min(len);
        genes.extend_from_slice(&c.genes[..k]);
        values.extend_from_slice(&c.values[..k]);
        genes.extend(std::iter::repeat_n(pad_id, len - k));
        values.extend(std::iter::repeat_n(pad_value, len - k));
    }
    PaddedBatch {
        n: cells.len(),
        len,
        genes,
        values,
    }
}

/// scGPT's `random_mask_value`: in each row, `floor(candidates * mask_ratio)` positions,
/// chosen uniformly without replacement among the non-pad positions after the first
/// `keep_first` (the `<cls>`), get `mask_value`. Returns the masked values and the mask.
/// Unlike scGPT, `<cls>` is never a candidate (scGPT masks it when `pad_value != 0`).
pub fn random_mask_value(
    batch: &PaddedBatch,
    pad_id: u32,
    mask_ratio: f64,
    mask_value: f32,
    keep_first: usize,
    rng: &mut Rng,
) -> (Vec<f32>, Vec<bool>) {
    let mut values = batch.values.clone();
    let mut mask = vec![false; values.len()];
    for i in 0..batch.n {
        let cand: Vec<usize> = (keep_first.min(batch.len)..batch.len)
            .filter(|&j| !batch.is_pad(i, j, pad_id))
            .collect();
        let n_mask = (cand.len() as f64 * mask_ratio).floor() as usize;
        for k in rng.choose_sorted(cand.len(), n_mask) {
            let p = i * batch.len + cand[k];
            values[p] = mask_value;
            mask[p] = true;
        }
    }
    (values, mask)
}

/// Geneformer's rank-value encoding of one cell: counts divided by the cell's total
/// (times `target_sum`, 10,000 in Geneformer) and by the gene's median over the corpus
/// (`medians`, one per column; `None` for genes outside Geneformer's dictionary), the
/// expressed genes sorted by that value, highest first, at most `max_len` (2,048). Returns
/// the columns in rank order; ties keep column order.
pub fn rank_value_order(
    counts: &[(u32, f64)],
    total: f64,
    medians: &[Option<f64>],
    target_sum: f64,
    max_len: usize,
) -> Vec<u32> {
    let mut scored: Vec<(u32, f64)> = counts
        .iter()
        .filter(|&&(_, c)| c > 0.0)
        .filter_map(|&(g, c)| {
            let m = medians.get(g as usize).copied().flatten()?;
            (m > 0.0 && total > 0.0).then(|| (g, c / total * target_sum / m))
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(max_len);
    scored.into_iter().map(|(g, _)| g).collect()
}

/// A gene dictionary file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeneDictError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
}

/// Geneformer's per-gene medians (the non-zero median of each gene's normalised expression
/// over its pretraining corpus, keyed by Ensembl id), read from a JSON object
/// `{"ENSG...": median}` or a two-column TSV/CSV (`gene<TAB>median`, an optional header).
/// Geneformer ships them as a Python pickle; cellforge does not execute pickles, so convert
/// once (`json.dump({k: float(v) for k, v in d.items()}, f)`).
pub fn load_gene_medians(
    path: &std::path::Path,
) -> Result<std::collections::HashMap<String, f64>, GeneDictError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| GeneDictError::Io {
        path: p.clone(),
        source,
    })?;
    let bad = |message: String| GeneDictError::Format {
        path: p.clone(),
        message,
    };
    let mut out = std::collections::HashMap::new();
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("expected a JSON object {gene: median}".into()))?;
        for (k, v) in obj {
            let m = v
                .as_f64()
                .ok_or_else(|| bad(format!("the median of {k} is not a number")))?;
            out.insert(k.clone(), m);
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split(['\t', ',']);
            let (Some(g), Some(m)) = (parts.next(), parts.next()) else {
                return Err(bad(format!("line {} has no second column", i + 1)));
            };
            match m.trim().parse::<f64>() {
                Ok(m) => {
                    out.insert(g.trim().to_string(), m);
                }
                Err(_) if i == 0 => {} // header
                Err(_) => return Err(bad(format!("line {}: {m:?} is not a number", i + 1))),
            }
        }
    }
    if let Some((g, m)) = out.iter().find(|(_, m)| !m.is_finite() || **m <= 0.0) {
        return Err(bad(format!(
            "the median of {g} is {m}; medians must be positive"
        )));
    }
    if out.is_empty() {
        return Err(bad("no genes".into()));
    }
    Ok(out)
}

/// The median of each dataset gene (`None` when the dictionary lacks it); versioned Ensembl
/// ids (`ENSG....16`) fall back to the unversioned id.
pub fn medians_for(
    genes: &[String],
    medians: &std::collections::HashMap<String, f64>,
) -> Vec<Option<f64>> {
    genes
        .iter()
        .map(|g| {
            medians.get(g).copied().or_else(|| {
                crate::vocab::unversioned_ensembl(g).and_then(|id| medians.get(id).copied())
            })
        })
        .collect()
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

    #[test]
    fn fine_tuning_convention_keeps_zeros_and_cls_zero() {
        let genes = [Some(10), None, Some(12), Some(13)];
        let vals = [3.0, 5.0, 0.0, 1.0];
        let t = tokenize_values(
            &genes,
            &vals,
            1,
            &TokenizeOptions::fine_tuning(true, 10),
            &mut Rng::new(0),
        );
        assert_eq!(t.genes, vec![1, 10, 12, 13]);
        assert_eq!(t.values, vec![0.0, 3.0, 0.0, 1.0]);
        let t = tokenize_values(
            &genes,
            &vals,
            1,
            &TokenizeOptions::embedding(-2.0, 10),
            &mut Rng::new(0),
        );
        assert_eq!(t.genes, vec![1, 10, 13]);
        assert_eq!(t.values, vec![-2.0, 3.0, 1.0]);
    }

    #[test]
    fn padding_and_masking_never_touch_pad_or_cls() {
        let a = CellTokens {
            genes: vec![1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
            values: vec![0.0; 11],
        };
        let b = CellTokens {
            genes: vec![1, 5, 6],
            values: vec![0.0, 2.0, 3.0],
        };
        let p = pad_batch(&[a, b], 100, 0, -2.0);
        assert_eq!(p.len, 11);
        assert_eq!(&p.genes[11..], &[1, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(p.values[14], -2.0);
        let (vals, mask) = random_mask_value(&p, 0, 0.5, -1.0, 1, &mut Rng::new(3));
        // row 0: 10 candidates -> 5 masked; row 1: 2 candidates -> 1 masked
        assert_eq!(mask[..11].iter().filter(|&&m| m).count(), 5);
        assert_eq!(mask[11..].iter().filter(|&&m| m).count(), 1);
        assert!(!mask[0] && !mask[11], "cls is never masked");
        assert!(mask[14..].iter().all(|&m| !m), "padding is never masked");
        assert!(mask.iter().zip(&vals).all(|(&m, &v)| !m || v == -1.0));
    }

    #[test]
    fn rank_value_orders_by_normalised_expression() {
        // gene 2 has the lowest median, so it ranks first despite fewer counts
        let counts = [(0u32, 10.0), (1, 5.0), (2, 2.0), (3, 0.0)];
        let medians = [Some(10.0), Some(1.0), Some(0.1), Some(1.0)];
        assert_eq!(
            rank_value_order(&counts, 17.0, &medians, 1e4, 2048),
            vec![2, 1, 0]
        );
        assert_eq!(
            rank_value_order(&counts, 17.0, &medians, 1e4, 2),
            vec![2, 1]
        );
        let no_dict = [None, Some(1.0), None, None];
        assert_eq!(rank_value_order(&counts, 17.0, &no_dict, 1e4, 10), vec![1]);
    }

    #[test]
    fn gene_medians_from_json_and_tsv() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("m.json");
        std::fs::write(&j, r#"{"ENSG1": 2.5, "ENSG2": 0.5}"#).unwrap();
        let m = load_gene_medians(&j).unwrap();
        let t = dir.path().join("m.tsv");
        std::fs::write(&t, "gene\tmedian\nENSG1\t2.5\nENSG2\t0.5\n").unwrap();
        assert_eq!(load_gene_medians(&t).unwrap(), m);
        let genes = vec![
            "ENSG1.7".to_string(),
            "ENSG3".to_string(),
            "ENSG2".to_string(),
        ];
        assert_eq!(medians_for(&genes, &m), vec![Some(2.5), None, Some(0.5)]);
        std::fs::write(&j, r#"{"ENSG1": -1}"#).unwrap();
        let e = load_gene_medians(&j).unwrap_err().to_string();
        assert!(e.contains("medians must be positive"), "{e}");
        std::fs::write(&t, "ENSG1\t2\nENSG2\tx\n").unwrap();
        let e = load_gene_medians(&t).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
