//! Gene-set scores as scanpy 1.11's `sc.tl.score_genes` (Seurat's `AddModuleScore`
//! approach).
//!
//! Reproduced algorithm (scanpy 1.11.5 `_score_genes.py`):
//!
//! 1. The average expression of every gene of the pool (default: all genes) is computed
//!    (`f64`), and the genes are cut into expression bins: with
//!    `n_items = round(n_pool / (n_bins - 1))` (NumPy rounding: half to even), a gene's bin is
//!    `floor(rank / n_items)`, where `rank` is its 1-based average-expression rank with ties
//!    given the *minimum* rank (`pandas.Series.rank(method="min")`). (Older scanpy versions
//!    used `pd.cut` on the sorted averages; 1.11 uses these rank cuts.)
//! 2. For every distinct bin of the gene list (in increasing order) the candidate controls are
//!    all pool genes of that bin; when there are more than `ctrl_size`, `ctrl_size` of them
//!    are drawn without replacement; then the listed genes are removed from the draw
//!    (`ctrl_as_ref = true`, scanpy's default; with `false` they are removed before drawing).
//!    The control set is the union over the bins.
//! 3. `score = mean(listed genes) - mean(control genes)` per cell, in `f64`.
//!
//! The random draw uses this crate's seeded generator (SplitMix64-seeded xoshiro256**, see
//! `crate::tokenize::Rng`), so the control genes **cannot equal** the ones NumPy's
//! `RandomState` draws for scanpy; scores agree closely but not exactly.
//! [`score_genes_with_controls`] takes an explicit control set (e.g. the one scanpy used) and
//! then reproduces scanpy's score exactly (to `f64` rounding). One more difference: for
//! *dense* input scanpy averages the genes in the input precision (`np.nanmean` of `float32`)
//! before binning, which can move genes whose averages tie to within `float32` rounding
//! across a bin edge; this module always averages in `f64` (as scanpy does for sparse input).

use rayon::prelude::*;

use super::expr::Expr;
use super::{AnalysisError, Result};
use crate::tokenize::Rng;

/// Options of [`score_genes`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOptions {
    /// Control genes drawn per expression bin (default 50).
    pub ctrl_size: usize,
    /// Number of expression bins (default 25).
    pub n_bins: usize,
    /// Allow listed genes to be drawn as controls, then drop them (scanpy's default `true`).
    pub ctrl_as_ref: bool,
    /// Genes that may serve as controls (`None` = all genes).
    pub gene_pool: Option<Vec<u32>>,
    /// Seed of the control-gene draw.
    pub seed: u64,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            ctrl_size: 50,
            n_bins: 25,
            ctrl_as_ref: true,
            gene_pool: None,
            seed: 0,
        }
    }
}

/// Result of [`score_genes`].
#[derive(Debug, Clone, PartialEq)]
pub struct GeneScore {
    /// Score per cell.
    pub scores: Vec<f64>,
    /// The control genes used (sorted indices).
    pub control_genes: Vec<u32>,
}

/// scanpy's `score_genes` with a seeded control-gene draw (see the module documentation).
///
/// Errors: invalid or non-finite input, an empty or out-of-range gene list, a listed gene
/// missing from the pool, `n_bins < 2`, a pool too small for `n_bins` bins, no control gene
/// found.
pub fn score_genes(x: Expr<'_>, genes: &[u32], opts: &ScoreOptions) -> Result<GeneScore> {
    x.validate()?;
    let d = x.n_cols();
    let list = gene_set(genes, d, "gene list")?;
    if opts.n_bins < 2 {
        return Err(AnalysisError::InvalidParameter(format!(
            "n_bins = {} must be at least 2",
            opts.n_bins
        )));
    }
    let pool = match &opts.gene_pool {
        Some(p) => gene_set(p, d, "gene pool")?,
        None => (0..d as u32).collect(),
    };
    let mut in_list = vec![false; d];
    for &g in &list {
        in_list[g as usize] = true;
    }
    let sums = x.col_reduce(|_, v| v);
    let n = x.n_rows() as f64;
    let avg: Vec<f64> = pool.iter().map(|&g| sums[g as usize] / n).collect();
    let n_items = round_half_even(pool.len() as f64 / (opts.n_bins - 1) as f64);
    if n_items < 1.0 {
        return Err(AnalysisError::InvalidParameter(format!(
            "gene pool of {} genes is too small for {} bins",
            pool.len(),
            opts.n_bins
        )));
    }
    // min-rank of every pool gene's average
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.sort_by(|&a, &b| avg[a].total_cmp(&avg[b]));
    let mut cut = vec![0usize; pool.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && avg[order[j]] == avg[order[i]] {
            j += 1;
        }
        let rank = (i + 1) as f64;
        for &o in &order[i..j] {
            cut[o] = (rank / n_items).floor() as usize;
        }
        i = j;
    }
    let mut pool_pos = vec![usize::MAX; d];
    for (p, &g) in pool.iter().enumerate() {
        pool_pos[g as usize] = p;
    }
    let mut list_cuts = Vec::with_capacity(list.len());
    for &g in &list {
        let p = pool_pos[g as usize];
        if p == usize::MAX {
            return Err(AnalysisError::InvalidParameter(format!(
                "listed gene {g} is not in the gene pool"
            )));
        }
        list_cuts.push(cut[p]);
    }
    list_cuts.sort_unstable();
    list_cuts.dedup();
    let mut rng = Rng::new(opts.seed);
    let mut controls: Vec<u32> = Vec::new();
    for &c in &list_cuts {
        let cand: Vec<u32> = pool
            .iter()
            .enumerate()
            .filter(|&(p, &g)| cut[p] == c && (opts.ctrl_as_ref || !in_list[g as usize]))
            .map(|(_, &g)| g)
            .collect();
        let drawn: Vec<u32> = if opts.ctrl_size < cand.len() {
            rng.choose_sorted(cand.len(), opts.ctrl_size)
                .into_iter()
                .map(|t| cand[t])
                .collect()
        } else {
            cand
        };
        controls.extend(drawn.into_iter().filter(|&g| !in_list[g as usize]));
    }
    controls.sort_unstable();
    controls.dedup();
    if controls.is_empty() {
        return Err(AnalysisError::Empty("no control genes found in any bin"));
    }
    let scores = set_difference_scores(&x, &list, &controls);
    Ok(GeneScore {
        scores,
        control_genes: controls,
    })
}

/// `mean(x[:, genes]) - mean(x[:, controls])` per cell (scanpy's score for a given control
/// set). Duplicate indices are counted once, as scanpy's index unions do.
///
/// Errors: invalid or non-finite input, an empty or out-of-range gene or control list.
pub fn score_genes_with_controls(x: Expr<'_>, genes: &[u32], controls: &[u32]) -> Result<Vec<f64>> {
    x.validate()?;
    let d = x.n_cols();
    let list = gene_set(genes, d, "gene list")?;
    let ctrl = gene_set(controls, d, "control genes")?;
    Ok(set_difference_scores(&x, &list, &ctrl))
}

/// Sorted, de-duplicated, range-checked, non-empty gene set.
fn gene_set(genes: &[u32], d: usize, what: &'static str) -> Result<Vec<u32>> {
    if genes.is_empty() {
        return Err(AnalysisError::Empty(what));
    }
    if let Some(&g) = genes.iter().find(|&&g| g as usize >= d) {
        return Err(AnalysisError::InvalidParameter(format!(
            "{what}: gene {g} out of range for {d} genes"
        )));
    }
    let mut v = genes.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn set_difference_scores(x: &Expr<'_>, list: &[u32], ctrl: &[u32]) -> Vec<f64> {
    let d = x.n_cols();
    // weight per gene: +1/|list| and -1/|ctrl| accumulated separately to keep scanpy's
    // two means
    let mut role = vec![0u8; d];
    for &g in list {
        role[g as usize] |= 1;
    }
    for &g in ctrl {
        role[g as usize] |= 2;
    }
    let (nl, nc) = (list.len() as f64, ctrl.len() as f64);
    (0..x.n_rows())
        .into_par_iter()
        .map(|i| {
            let (mut a, mut b) = (0.0f64, 0.0f64);
            x.for_row(i, |j, v| {
                let r = role[j];
                if r & 1 != 0 {
                    a += v as f64;
                }
                if r & 2 != 0 {
                    b += v as f64;
                }
            });
            a / nl - b / nc
        })
        .collect()
}

/// NumPy's `np.round` for non-negative values: half to even.
fn round_half_even(v: f64) -> f64 {
    let f = v.floor();
    let diff = v - f;
    if diff > 0.5 || (diff == 0.5 && f % 2.0 != 0.0) {
        f + 1.0
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_numpy_like() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(73.625), 74.0);
        assert_eq!(round_half_even(0.4), 0.0);
    }
}
