//! Highly variable genes, following scanpy 1.11's `highly_variable_genes` for the flavors
//! `seurat_v3` (counts, LOESS-regularised variance), `seurat` and `cell_ranger`
//! (dispersion-based, on log data), with and without a batch key. Selection rules, ranks,
//! tie orders and output columns follow scanpy so the gene set is the one scanpy picks.
//!
//! The statistics are gathered by the caller in streaming passes over row chunks
//! ([`BatchStats`]); this module turns them into the selection.

use super::PpError;
use super::loess::loess_fit;
use crate::tokenize::{ValuePrecision, numpy_linspace, quantile_sorted};

/// The HVG method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HvgFlavor {
    SeuratV3,
    Seurat,
    CellRanger,
}

impl HvgFlavor {
    pub fn name(self) -> &'static str {
        match self {
            HvgFlavor::SeuratV3 => "seurat_v3",
            HvgFlavor::Seurat => "seurat",
            HvgFlavor::CellRanger => "cell_ranger",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "seurat_v3" => Some(HvgFlavor::SeuratV3),
            "seurat" => Some(HvgFlavor::Seurat),
            "cell_ranger" => Some(HvgFlavor::CellRanger),
            _ => None,
        }
    }
}

/// Per-gene sums over the cells of one batch.
#[derive(Clone, Debug)]
pub struct BatchStats {
    pub n_cells: usize,
    pub sum: Vec<f64>,
    pub sumsq: Vec<f64>,
    /// Cells with a value > 0 (scanpy's `filter_genes(min_cells=1)` within the batch).
    pub n_expressing: Vec<u64>,
}

impl BatchStats {
    pub fn new(n_genes: usize) -> Self {
        Self {
            n_cells: 0,
            sum: vec![0.0; n_genes],
            sumsq: vec![0.0; n_genes],
            n_expressing: vec![0; n_genes],
        }
    }

    pub fn merge(&mut self, other: &BatchStats) {
        self.n_cells += other.n_cells;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sumsq.iter_mut().zip(&other.sumsq) {
            *a += b;
        }
        for (a, b) in self.n_expressing.iter_mut().zip(&other.n_expressing) {
            *a += b;
        }
    }

    /// Mean and unbiased variance per gene (scanpy's `_get_mean_var`).
    pub fn mean_var(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.n_cells as f64;
        let mut mean = Vec::with_capacity(self.sum.len());
        let mut var = Vec::with_capacity(self.sum.len());
        for (&s, &q) in self.sum.iter().zip(&self.sumsq) {
            let m = s / n;
            let mut v = q / n - m * m;
            if self.n_cells != 1 {
                v *= n / (n - 1.0);
            }
            mean.push(m);
            var.push(v);
        }
        (mean, var)
    }
}

/// Per-gene columns written to `var`, and the selection.
#[derive(Clone, Debug, Default)]
pub struct HvgResult {
    pub highly_variable: Vec<bool>,
    /// `(name, values)` float columns in scanpy's order.
    pub float_columns: Vec<(String, Vec<f64>, bool)>,
    /// `highly_variable_nbatches` when a batch key was given.
    pub nbatches: Option<Vec<i64>>,
    /// `highly_variable_intersection` (dispersion flavors with a batch key).
    pub intersection: Option<Vec<bool>>,
}

/// The LOESS fit of one batch for `seurat_v3`: the regularised standard deviation and the
/// clip value per gene.
pub struct V3Fit {
    pub mean: Vec<f64>,
    pub reg_std: Vec<f64>,
    pub clip: Vec<f64>,
}

pub fn seurat_v3_fit(stats: &BatchStats, span: f64) -> Result<V3Fit, PpError> {
    let (mean, var) = stats.mean_var();
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    let mut idx = Vec::new();
    for (g, (&m, &v)) in mean.iter().zip(&var).enumerate() {
        if v > 0.0 {
            xs.push(m.log10());
            ys.push(v.log10());
            idx.push(g);
        }
    }
    let mut estimate = vec![0.0; mean.len()];
    if !xs.is_empty() {
        let fitted = loess_fit(&xs, &ys, span, 2).map_err(|e| {
            PpError::Hvg(format!(
                "the seurat_v3 variance fit failed on {} variable genes: {e}",
                xs.len()
            ))
        })?;
        for (k, &g) in idx.iter().enumerate() {
            estimate[g] = fitted[k];
        }
    }
    let vmax = (stats.n_cells as f64).sqrt();
    let reg_std: Vec<f64> = estimate.iter().map(|&e| 10f64.powf(e).sqrt()).collect();
    let clip = reg_std
        .iter()
        .zip(&mean)
        .map(|(&s, &m)| s * vmax + m)
        .collect();
    Ok(V3Fit {
        mean,
        reg_std,
        clip,
    })
}

/// Normalised variance of one batch from the clipped sums.
pub fn seurat_v3_norm_var(
    fit: &V3Fit,
    n_cells: usize,
    clipped_sum: &[f64],
    clipped_sumsq: &[f64],
) -> Vec<f64> {
    let n = n_cells as f64;
    (0..fit.mean.len())
        .map(|g| {
            let m = fit.mean[g];
            let s = fit.reg_std[g];
            (1.0 / ((n - 1.0) * (s * s)))
                * ((n * (m * m)) + clipped_sumsq[g] - 2.0 * clipped_sum[g] * m)
        })
        .collect()
}

/// Ranks within a batch (0 = most variable); exactly tied values keep gene order. (scanpy
/// ranks with NumPy's unstable default sort, whose order among ties depends on the CPU's
/// sorting kernels; a stable order makes the result the same on every machine.)
fn ranks_desc(v: &[f64]) -> Vec<f32> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| match (v[a].is_nan(), v[b].is_nan()) {
        // NumPy sorts NaN last
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => v[b].partial_cmp(&v[a]).unwrap_or(std::cmp::Ordering::Equal),
    });
    let mut rank = vec![0f32; v.len()];
    for (r, &g) in order.iter().enumerate() {
        rank[g] = r as f32;
    }
    rank
}

/// Median of the non-NaN values (NumPy's: mean of the two middle values), NaN when none.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Selection for `seurat_v3` from the per-batch normalised variances.
pub fn seurat_v3_select(
    norm_vars: &[Vec<f64>],
    global_mean: Vec<f64>,
    global_var: Vec<f64>,
    n_top: usize,
    batched: bool,
) -> HvgResult {
    let n_genes = global_mean.len();
    let ranks: Vec<Vec<f32>> = norm_vars.iter().map(|v| ranks_desc(v)).collect();
    let mut nbatches = vec![0i64; n_genes];
    let mut med_rank = vec![f64::NAN; n_genes];
    let mut var_norm = vec![0.0; n_genes];
    for g in 0..n_genes {
        let mut kept = Vec::new();
        for r in &ranks {
            if (r[g] as usize) < n_top {
                nbatches[g] += 1;
                kept.push(r[g]);
            }
        }
        // np.ma.median over float32 ranks
        if !kept.is_empty() {
            kept.sort_by(f32::total_cmp);
            let n = kept.len();
            med_rank[g] = if n % 2 == 1 {
                kept[n / 2] as f64
            } else {
                ((kept[n / 2 - 1] + kept[n / 2]) / 2.0) as f64
            };
        }
        var_norm[g] = norm_vars.iter().map(|v| v[g]).sum::<f64>() / norm_vars.len() as f64;
    }
    let mut order: Vec<usize> = (0..n_genes).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (med_rank[a], med_rank[b]);
        match (ra.is_nan(), rb.is_nan()) {
            (false, true) => std::cmp::Ordering::Less,
            (true, false) => std::cmp::Ordering::Greater,
            (true, true) => nbatches[b].cmp(&nbatches[a]),
            (false, false) => ra.total_cmp(&rb).then(nbatches[b].cmp(&nbatches[a])),
        }
    });
    let mut hv = vec![false; n_genes];
    for &g in order.iter().take(n_top) {
        hv[g] = true;
    }
    HvgResult {
        highly_variable: hv,
        float_columns: vec![
            ("highly_variable_rank".into(), med_rank, true),
            ("means".into(), global_mean, false),
            ("variances".into(), global_var, false),
            ("variances_norm".into(), var_norm, false),
        ],
        nbatches: batched.then_some(nbatches),
        intersection: None,
    }
}

/// Per-batch table of the dispersion flavors.
#[derive(Clone, Debug)]
pub struct DispTable {
    pub means: Vec<f64>,
    pub dispersions: Vec<f64>,
    pub dispersions_norm: Vec<f64>,
    pub highly_variable: Vec<bool>,
}

/// `pd.cut(x, bins=n)`: equal-width bins over [min, max], the first edge moved down by 0.1 %
/// of the range; returns each value's bin.
fn cut_equal_width(x: &[f64], n_bins: usize) -> Vec<Option<usize>> {
    let mut mn = f64::INFINITY;
    let mut mx = f64::NEG_INFINITY;
    for &v in x.iter().filter(|v| !v.is_nan()) {
        mn = mn.min(v);
        mx = mx.max(v);
    }
    let edges: Vec<f64> = if mn == mx {
        let lo = if mn != 0.0 {
            mn - 0.001 * mn.abs()
        } else {
            mn - 0.001
        };
        let hi = if mx != 0.0 {
            mx + 0.001 * mx.abs()
        } else {
            mx + 0.001
        };
        numpy_linspace(lo, hi, n_bins + 1)
    } else {
        let mut e = numpy_linspace(mn, mx, n_bins + 1);
        e[0] -= (mx - mn) * 0.001;
        e
    };
    cut_with_edges(x, &edges)
}

/// Right-closed intervals `(e[i], e[i+1]]` (the first includes its left edge, as pandas).
fn cut_with_edges(x: &[f64], edges: &[f64]) -> Vec<Option<usize>> {
    x.iter()
        .map(|&v| {
            if v.is_nan() {
                return None;
            }
            let pos = edges.partition_point(|&e| e < v);
            if v == edges[0] {
                Some(0)
            } else if pos == 0 || pos >= edges.len() {
                None
            } else {
                Some(pos - 1)
            }
        })
        .collect()
}

const GAUSSIAN_3_4: f64 = 0.674_489_750_196_081_7;

/// One batch (or all cells) of the `seurat` / `cell_ranger` flavors. `stats` hold sums of the
/// values the flavor looks at (expm1 of the log data for `seurat`, the log data itself for
/// `cell_ranger`); `expressed` limits the computation to genes seen in the batch (the
/// batched path), the others get zeros.
pub fn dispersion_table(
    stats: &BatchStats,
    flavor: HvgFlavor,
    n_bins: usize,
    n_top: usize,
    filter_unexpressed: bool,
) -> Result<DispTable, PpError> {
    let (mean_all, var_all) = stats.mean_var();
    let n_all = mean_all.len();
    let keep: Vec<usize> = (0..n_all)
        .filter(|&g| !filter_unexpressed || stats.n_expressing[g] > 0)
        .collect();
    let mut mean: Vec<f64> = keep.iter().map(|&g| mean_all[g]).collect();
    let var: Vec<f64> = keep.iter().map(|&g| var_all[g]).collect();
    for m in mean.iter_mut() {
        if *m == 0.0 {
            *m = 1e-12;
        }
    }
    let mut disp: Vec<f64> = var.iter().zip(&mean).map(|(&v, &m)| v / m).collect();
    if flavor == HvgFlavor::Seurat {
        for d in disp.iter_mut() {
            *d = if *d == 0.0 { f64::NAN } else { d.ln() };
        }
        for m in mean.iter_mut() {
            *m = m.ln_1p();
        }
    }
    let bins = match flavor {
        HvgFlavor::Seurat => cut_equal_width(&mean, n_bins),
        _ => {
            if mean.is_empty() {
                Vec::new()
            } else {
                let mut sorted = mean.clone();
                sorted.sort_by(f64::total_cmp);
                let mut edges = vec![f64::NEG_INFINITY];
                let mut q = 10.0;
                while q < 105.0 {
                    // np.percentile divides q by 100, then takes the linear quantile
                    edges.push(quantile_sorted(&sorted, q / 100.0, ValuePrecision::F64));
                    q += 5.0;
                }
                edges.push(f64::INFINITY);
                if edges.windows(2).any(|w| w[0] == w[1]) {
                    return Err(PpError::Hvg(
                        "cell_ranger: the gene means' percentiles are not distinct (too many \
                         genes with the same mean, e.g. unexpressed genes); filter genes \
                         first (--filter-genes-min-cells 1) or use another flavor"
                            .into(),
                    ));
                }
                cut_with_edges(&mean, &edges)
            }
        }
    };
    let n_groups = bins.iter().flatten().max().map_or(0, |m| m + 1);
    let mut groups: Vec<Vec<f64>> = vec![Vec::new(); n_groups];
    for (k, b) in bins.iter().enumerate() {
        if let Some(b) = b {
            groups[*b].push(disp[k]);
        }
    }
    // (avg, dev) per bin
    let stats_per_bin: Vec<(f64, f64)> = groups
        .iter()
        .map(|g| {
            let vals: Vec<f64> = g.iter().copied().filter(|v| !v.is_nan()).collect();
            match flavor {
                HvgFlavor::Seurat => {
                    let n = vals.len() as f64;
                    let avg = if vals.is_empty() {
                        f64::NAN
                    } else {
                        vals.iter().sum::<f64>() / n
                    };
                    let dev = if vals.len() < 2 {
                        f64::NAN
                    } else {
                        (vals.iter().map(|v| (v - avg) * (v - avg)).sum::<f64>() / (n - 1.0)).sqrt()
                    };
                    // A bin with a single gene: scanpy sets its normalised dispersion to 1.
                    if dev.is_nan() { (0.0, avg) } else { (avg, dev) }
                }
                _ => {
                    let med = median(vals.clone());
                    let dev = if vals.is_empty() {
                        f64::NAN
                    } else {
                        median(
                            vals.iter()
                                .map(|v| (v - med).abs() / GAUSSIAN_3_4)
                                .collect(),
                        )
                    };
                    (med, dev)
                }
            }
        })
        .collect();
    let norm: Vec<f64> = (0..mean.len())
        .map(|k| match bins[k] {
            Some(b) => (disp[k] - stats_per_bin[b].0) / stats_per_bin[b].1,
            None => f64::NAN,
        })
        .collect();
    let hv_kept = top_by_dispersion(&norm, n_top.min(keep.len()));
    let mut out = DispTable {
        means: vec![0.0; n_all],
        dispersions: vec![0.0; n_all],
        dispersions_norm: vec![0.0; n_all],
        highly_variable: vec![false; n_all],
    };
    for (k, &g) in keep.iter().enumerate() {
        out.means[g] = mean[k];
        out.dispersions[g] = disp[k];
        out.dispersions_norm[g] = norm[k];
        out.highly_variable[g] = hv_kept[k];
    }
    Ok(out)
}

/// NumPy `nan_to_num(x, nan=-inf)`: infinities become the largest finite values.
fn nan_to_num_neg(v: f64) -> f64 {
    if v.is_nan() {
        f64::NEG_INFINITY
    } else if v == f64::INFINITY {
        f64::MAX
    } else if v == f64::NEG_INFINITY {
        f64::MIN
    } else {
        v
    }
}

/// scanpy's `_subset_genes` with `n_top_genes`: everything at or above the n-th highest
/// normalised dispersion (so ties at the cut-off are all kept).
fn top_by_dispersion(norm: &[f64], n_top: usize) -> Vec<bool> {
    let mut vals: Vec<f64> = norm.iter().copied().filter(|v| !v.is_nan()).collect();
    if vals.is_empty() || n_top == 0 {
        return vec![false; norm.len()];
    }
    vals.sort_by(|a, b| b.total_cmp(a));
    let cut = vals[n_top.min(vals.len()) - 1];
    norm.iter().map(|&v| nan_to_num_neg(v) >= cut).collect()
}

/// Combines the per-batch tables (scanpy's batched path): means of the per-batch values
/// (NaNs skipped), the number of batches a gene is variable in, then the top `n_top` by
/// that number and the mean normalised dispersion, ties in gene-name order.
pub fn dispersion_combine(
    tables: &[DispTable],
    gene_names: &[String],
    n_top: usize,
    batched: bool,
) -> HvgResult {
    let n = gene_names.len();
    if !batched {
        let t = &tables[0];
        return HvgResult {
            highly_variable: t.highly_variable.clone(),
            float_columns: vec![
                ("means".into(), t.means.clone(), false),
                ("dispersions".into(), t.dispersions.clone(), false),
                ("dispersions_norm".into(), t.dispersions_norm.clone(), true),
            ],
            nbatches: None,
            intersection: None,
        };
    }
    let nanmean = |f: &dyn Fn(&DispTable) -> f64| {
        let vals: Vec<f64> = tables.iter().map(f).filter(|v| !v.is_nan()).collect();
        if vals.is_empty() {
            f64::NAN
        } else {
            vals.iter().sum::<f64>() / vals.len() as f64
        }
    };
    let mut means = vec![0.0; n];
    let mut disp = vec![0.0; n];
    let mut norm = vec![0.0; n];
    let mut nb = vec![0i64; n];
    for g in 0..n {
        means[g] = nanmean(&|t| t.means[g]);
        disp[g] = nanmean(&|t| t.dispersions[g]);
        norm[g] = nanmean(&|t| t.dispersions_norm[g]);
        nb[g] = tables.iter().filter(|t| t.highly_variable[g]).count() as i64;
    }
    let mut order: Vec<usize> = (0..n).collect();
    // groupby(gene name) sorts by name; then a stable sort on (nbatches, norm) descending.
    order.sort_by(|&a, &b| gene_names[a].cmp(&gene_names[b]));
    order.sort_by(|&a, &b| {
        nb[b]
            .cmp(&nb[a])
            .then_with(|| match (norm[a].is_nan(), norm[b].is_nan()) {
                (false, true) => std::cmp::Ordering::Less,
                (true, false) => std::cmp::Ordering::Greater,
                (true, true) => std::cmp::Ordering::Equal,
                (false, false) => norm[b].total_cmp(&norm[a]),
            })
    });
    let mut hv = vec![false; n];
    for &g in order.iter().take(n_top) {
        hv[g] = true;
    }
    let all = tables.len() as i64;
    HvgResult {
        highly_variable: hv,
        float_columns: vec![
            ("means".into(), means, false),
            ("dispersions".into(), disp, false),
            ("dispersions_norm".into(), norm, true),
        ],
        intersection: Some(nb.iter().map(|&c| c == all).collect()),
        nbatches: Some(nb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_matches_pandas_conventions() {
        let x = [0.0, 1.0, 2.0, 3.0, 4.0];
        let b = cut_equal_width(&x, 4);
        assert_eq!(b, vec![Some(0), Some(0), Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn nth_highest_keeps_ties() {
        let hv = top_by_dispersion(&[1.0, 3.0, f64::NAN, 3.0, 2.0], 2);
        assert_eq!(hv, vec![false, true, false, true, false]);
        let hv = top_by_dispersion(&[1.0, 3.0, 2.0, 3.0, 2.0], 3);
        assert_eq!(hv, vec![false, true, true, true, true]);
    }
}
