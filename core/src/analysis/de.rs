//! Differential expression as scanpy 1.11's `sc.tl.rank_genes_groups`.
//!
//! For every target group, every gene gets a score, a two-sided p-value, an adjusted p-value
//! and a log fold change; genes are returned ranked by score (descending). Reproduced
//! definitions (scanpy 1.11.5 `_rank_genes_groups.py`, scipy's `ttest_ind_from_stats`,
//! statsmodels' `fdr_bh`):
//!
//! - **Wilcoxon rank-sum** ([`DeMethod::Wilcoxon`]): cells are ranked per gene (average ranks
//!   for ties) over all cells (`reference = "rest"`; cells without a group count as rest) or
//!   over the group and reference cells only. With `R` the group's rank sum, `n₁` its size,
//!   `n₂` the other side's and `N = n₁ + n₂`: `z = (R - n₁(N+1)/2) / sqrt(tc · n₁ n₂ (N+1) /
//!   12)`, where `tc = 1 - Σ(t³ - t)/(N³ - N)` over the tie blocks when `tie_correct` is on
//!   and 1 otherwise (scanpy's default). NaN scores (a constant gene with the tie correction)
//!   become 0; `p = 2 · (1 - Φ(|z|))`.
//! - **Welch t-test** ([`DeMethod::TTest`]): `t = (μ₁ - μ₂) / sqrt(v₁/n₁ + v₂/n₂)` with the
//!   unbiased (ddof 1) variances computed as scanpy's `_get_mean_var` does (`f64` sums of the
//!   values and of their `f32`-rounded squares, `(E[x²] - E[x]²) · n/(n-1)`), Welch-Satterthwaite degrees of freedom (1 where they are
//!   undefined, as scipy), two-sided Student-t p-values. NaN scores (equal means, zero
//!   variances) become 0 and NaN p-values 1. [`DeMethod::TTestOverestimVar`] is scanpy's
//!   `t-test_overestim_var`: the same with the rest's variance divided by the *group's* size
//!   (`v₂/n₁`, and `n₁ - 1` in its degrees-of-freedom term).
//! - **Log fold change**: `log2((expm1(μ₁) + 1e-9) / (expm1(μ₂) + 1e-9))` from the group and
//!   rest (or reference) means, i.e. assuming log1p data; with [`DeOptions::log1p_base`]
//!   `expm1(x · ln base)` as scanpy does when `uns["log1p"]["base"]` is set.
//! - **Adjusted p-values**: Benjamini-Hochberg (step-up, running minimum from the largest
//!   p-value, clipped at 1) or Bonferroni (`min(p · n_genes, 1)`) over all genes of a group.
//! - **pts**: the fraction of the group's cells with a non-zero value, and of the rest's (or
//!   the reference group's) cells.
//!
//! As in scanpy, every compared group (and the reference) must have at least 2 cells; the
//! rest must have at least 2 too (scanpy silently produces NaN statistics there).
//!
//! Differences from scanpy: genes with equal scores are ordered by index (scanpy's order of
//! ties is that of `np.argpartition`, i.e. arbitrary); scores and log fold changes are kept
//! in `f64` (scanpy stores them as `float32`); p-values use this module's own `erfc` and
//! regularised incomplete beta (relative error below 1e-10 where they do not underflow).
//!
//! Implementation: the matrix is transposed to compressed sparse columns in gene blocks
//! (bounded memory); per gene (rayon) one pass gives every group's sum, sum of squares and
//! non-zero count, and, for the Wilcoxon test, one sort of the stored values gives the
//! ranks of all cells (zeros, stored or not, are one tie block), reused for every group.

use rayon::prelude::*;

use super::expr::Expr;
use super::{AnalysisError, Result};

/// Group code of a cell that belongs to no group (it only ever counts as "rest").
pub const NO_GROUP: u32 = u32::MAX;

/// Statistical test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeMethod {
    /// Wilcoxon rank-sum test (scanpy `method="wilcoxon"`).
    #[default]
    Wilcoxon,
    /// Welch's t-test (scanpy `method="t-test"`).
    TTest,
    /// Welch's t-test with the rest's variance scaled by the group size (scanpy
    /// `method="t-test_overestim_var"`).
    TTestOverestimVar,
}

/// Multiple-testing correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorrMethod {
    /// Benjamini-Hochberg false discovery rate (scanpy's default).
    #[default]
    BenjaminiHochberg,
    /// Bonferroni.
    Bonferroni,
}

/// Which comparisons [`rank_genes_groups`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeTargets {
    /// Every group `0..n_groups` against all other cells (scanpy `groups="all"`,
    /// `reference="rest"`).
    AllVsRest,
    /// The listed groups, each against all other cells.
    GroupsVsRest(Vec<u32>),
    /// The listed groups, each against the `reference` group only (scanpy
    /// `reference=<group>`; the reference itself is skipped if listed).
    VsReference {
        /// Compared groups.
        groups: Vec<u32>,
        /// Reference group.
        reference: u32,
    },
}

/// Options of [`rank_genes_groups`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeOptions {
    /// p-value correction (default Benjamini-Hochberg).
    pub corr_method: CorrMethod,
    /// Tie correction of the Wilcoxon z-scores (default off, as scanpy).
    pub tie_correct: bool,
    /// Also return the fractions of expressing cells (`pts`, `pts_rest`).
    pub pts: bool,
    /// Base of the log1p transform (`None` = natural log, scanpy's default).
    pub log1p_base: Option<f64>,
}

/// Differential expression of one group; every vector has one entry per gene, all in the
/// ranked order of `genes`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeResult {
    /// The group (code) tested.
    pub group: u32,
    /// Gene indices ranked by decreasing score.
    pub genes: Vec<u32>,
    /// Test statistic (z-score or t).
    pub scores: Vec<f64>,
    /// log2 fold change of group vs rest/reference.
    pub logfoldchanges: Vec<f64>,
    /// Two-sided p-values.
    pub pvals: Vec<f64>,
    /// Adjusted p-values.
    pub pvals_adj: Vec<f64>,
    /// Fraction of the group's cells expressing the gene (with [`DeOptions::pts`]).
    pub pts: Option<Vec<f64>>,
    /// Fraction of the rest's (or the reference group's) cells expressing the gene.
    pub pts_rest: Option<Vec<f64>>,
}

/// scanpy's `rank_genes_groups` for a cells x genes matrix of log1p expression; `groups[i]`
/// is cell `i`'s group code (`< n_groups`, or [`NO_GROUP`]). Returns one [`DeResult`] per
/// compared group, in target order.
///
/// Errors: invalid or non-finite input, a length mismatch, a code `>= n_groups` (other than
/// [`NO_GROUP`]), an unknown or repeated target group, a compared group, reference or rest
/// with fewer than 2 cells, no target group.
pub fn rank_genes_groups(
    x: Expr<'_>,
    groups: &[u32],
    n_groups: usize,
    targets: &DeTargets,
    method: DeMethod,
    opts: &DeOptions,
) -> Result<Vec<DeResult>> {
    x.validate()?;
    let n = x.n_rows();
    if groups.len() != n {
        return Err(AnalysisError::LengthMismatch {
            what: "group codes",
            expected: n,
            got: groups.len(),
        });
    }
    if n_groups == 0 {
        return Err(AnalysisError::Empty("no groups"));
    }
    if n_groups >= u32::MAX as usize {
        return Err(AnalysisError::InvalidParameter("too many groups".into()));
    }
    if let Some(base) = opts.log1p_base
        && !(base.is_finite() && base > 0.0 && base != 1.0)
    {
        return Err(AnalysisError::InvalidParameter(format!(
            "log1p base {base} must be finite, positive and not 1"
        )));
    }
    // code index: groups 0..n_groups, n_groups = no group
    let mut codes = Vec::with_capacity(n);
    let mut sizes = vec![0usize; n_groups + 1];
    for (i, &g) in groups.iter().enumerate() {
        let c = if g == NO_GROUP {
            n_groups
        } else if (g as usize) < n_groups {
            g as usize
        } else {
            return Err(AnalysisError::InvalidParameter(format!(
                "cell {i} has group {g}, but n_groups = {n_groups}"
            )));
        };
        sizes[c] += 1;
        codes.push(c as u32);
    }
    let (target_groups, reference) = match targets {
        DeTargets::AllVsRest => ((0..n_groups as u32).collect::<Vec<_>>(), None),
        DeTargets::GroupsVsRest(g) => (g.clone(), None),
        DeTargets::VsReference { groups, reference } => {
            let g: Vec<u32> = groups.iter().copied().filter(|g| g != reference).collect();
            (g, Some(*reference))
        }
    };
    if target_groups.is_empty() {
        return Err(AnalysisError::Empty("no target groups"));
    }
    let mut seen = vec![false; n_groups];
    let check_group = |g: u32, what: &str| -> Result<()> {
        if g as usize >= n_groups {
            return Err(AnalysisError::InvalidParameter(format!(
                "{what} {g} is not a group (n_groups = {n_groups})"
            )));
        }
        if sizes[g as usize] < 2 {
            return Err(AnalysisError::InvalidParameter(format!(
                "{what} {g} has {} cell(s); at least 2 are needed",
                sizes[g as usize]
            )));
        }
        Ok(())
    };
    for &g in &target_groups {
        check_group(g, "group")?;
        if std::mem::replace(&mut seen[g as usize], true) {
            return Err(AnalysisError::InvalidParameter(format!(
                "group {g} is listed twice"
            )));
        }
        if reference.is_none() && n - sizes[g as usize] < 2 {
            return Err(AnalysisError::InvalidParameter(format!(
                "the rest of group {g} has {} cell(s); at least 2 are needed",
                n - sizes[g as usize]
            )));
        }
    }
    if let Some(r) = reference {
        check_group(r, "reference group")?;
    }

    let wilcoxon = method == DeMethod::Wilcoxon;
    let tg: Vec<usize> = target_groups.iter().map(|&g| g as usize).collect();
    let per_gene = gene_stats(
        &x,
        &codes,
        &sizes,
        wilcoxon,
        reference.map(|r| r as usize),
        &tg,
    );

    let expm1 = |v: f64| match opts.log1p_base {
        Some(b) => (v * b.ln()).exp_m1(),
        None => v.exp_m1(),
    };
    let mut out = Vec::with_capacity(tg.len());
    for (t, &g) in tg.iter().enumerate() {
        let n1 = sizes[g] as f64;
        let mut scores = Vec::with_capacity(per_gene.len());
        let mut pvals = Vec::with_capacity(per_gene.len());
        let mut lfc = Vec::with_capacity(per_gene.len());
        let mut pts = Vec::with_capacity(per_gene.len());
        let mut pts_rest = Vec::with_capacity(per_gene.len());
        for gs in &per_gene {
            // scanpy's `_get_mean_var`: E[x²] - E[x]², times n / (n - 1)
            let mv = |s: f64, sq: f64, cnt: f64| {
                let m = s / cnt;
                (m, (sq / cnt - m * m) * cnt / (cnt - 1.0))
            };
            let (mean1, var1) = mv(gs.sum[g], gs.sumsq[g], n1);
            let (mean2, var2, n2, nnz2) = match reference {
                Some(r) => {
                    let r = r as usize;
                    let nr = sizes[r] as f64;
                    let (m, v) = mv(gs.sum[r], gs.sumsq[r], nr);
                    (m, v, nr, gs.nnz[r] as f64)
                }
                None => {
                    let nr = (n - sizes[g]) as f64;
                    let s: f64 = gs.sum.iter().sum::<f64>() - gs.sum[g];
                    let sq: f64 = gs.sumsq.iter().sum::<f64>() - gs.sumsq[g];
                    let (m, v) = mv(s, sq, nr);
                    let nz: usize = gs.nnz.iter().sum::<usize>() - gs.nnz[g];
                    (m, v, nr, nz as f64)
                }
            };
            let (score, p) = match method {
                DeMethod::Wilcoxon => {
                    let big_n = n1 + n2;
                    let tc = if opts.tie_correct {
                        1.0 - gs.ties[t] / (big_n * big_n * big_n - big_n)
                    } else {
                        1.0
                    };
                    let sd = (tc * n1 * n2 * (big_n + 1.0) / 12.0).sqrt();
                    let mut z = (gs.ranks[t] - n1 * (big_n + 1.0) / 2.0) / sd;
                    if z.is_nan() {
                        z = 0.0;
                    }
                    (z, erfc(z.abs() / std::f64::consts::SQRT_2))
                }
                DeMethod::TTest | DeMethod::TTestOverestimVar => {
                    let n2e = if method == DeMethod::TTest { n2 } else { n1 };
                    welch(mean1, var1, n1, mean2, var2, n2e)
                }
            };
            scores.push(score);
            pvals.push(p);
            lfc.push(((expm1(mean1) + 1e-9) / (expm1(mean2) + 1e-9)).log2());
            pts.push(gs.nnz[g] as f64 / n1);
            pts_rest.push(nnz2 / n2);
        }
        let adj = match opts.corr_method {
            CorrMethod::BenjaminiHochberg => benjamini_hochberg(&pvals),
            CorrMethod::Bonferroni => pvals
                .iter()
                .map(|p| (p * pvals.len() as f64).min(1.0))
                .collect(),
        };
        let mut order: Vec<u32> = (0..pvals.len() as u32).collect();
        order.sort_by(|&a, &b| {
            scores[b as usize]
                .total_cmp(&scores[a as usize])
                .then(a.cmp(&b))
        });
        let pick = |v: &[f64]| -> Vec<f64> { order.iter().map(|&i| v[i as usize]).collect() };
        out.push(DeResult {
            group: g as u32,
            scores: pick(&scores),
            logfoldchanges: pick(&lfc),
            pvals: pick(&pvals),
            pvals_adj: pick(&adj),
            pts: opts.pts.then(|| pick(&pts)),
            pts_rest: opts.pts.then(|| pick(&pts_rest)),
            genes: order,
        });
    }
    Ok(out)
}

/// Differential expression of a user selection of cells against all other cells (scanpy
/// with a two-category `groupby`, `groups=[selection]`, `reference="rest"`). The result's
/// `group` is 0.
pub fn de_selection(
    x: Expr<'_>,
    selected: &[bool],
    method: DeMethod,
    opts: &DeOptions,
) -> Result<DeResult> {
    let codes: Vec<u32> = selected
        .iter()
        .map(|&s| if s { 0 } else { NO_GROUP })
        .collect();
    let mut r = rank_genes_groups(
        x,
        &codes,
        1,
        &DeTargets::GroupsVsRest(vec![0]),
        method,
        opts,
    )?;
    r.pop().ok_or(AnalysisError::Empty("no result"))
}

/// Per-gene statistics: per code (groups + "no group") sum, sum of squares and non-zero
/// count; per target the Wilcoxon rank sum and tie term.
struct GeneStats {
    sum: Vec<f64>,
    sumsq: Vec<f64>,
    nnz: Vec<usize>,
    ranks: Vec<f64>,
    ties: Vec<f64>,
}

fn gene_stats(
    x: &Expr<'_>,
    codes: &[u32],
    sizes: &[usize],
    wilcoxon: bool,
    reference: Option<usize>,
    targets: &[usize],
) -> Vec<GeneStats> {
    let d = x.n_cols();
    let n = x.n_rows();
    // gene blocks of at most ~16M stored entries
    let stored_total = match x {
        Expr::Dense(_) => n * d,
        Expr::Sparse(m) => m.nnz(),
    };
    let per_gene = (stored_total / d.max(1)).max(1);
    let block = (16_000_000 / per_gene).clamp(1, d);
    let mut out = Vec::with_capacity(d);
    let mut cursor: Vec<usize> = match x {
        Expr::Sparse(m) => m.indptr[..n].to_vec(),
        Expr::Dense(_) => Vec::new(),
    };
    let mut g0 = 0;
    while g0 < d {
        let g1 = (g0 + block).min(d);
        let csc = column_block(x, g0, g1, &mut cursor);
        let stats: Vec<GeneStats> = (0..g1 - g0)
            .into_par_iter()
            .map(|c| {
                let (a, b) = (csc.ptr[c], csc.ptr[c + 1]);
                one_gene(
                    &csc.rows[a..b],
                    &csc.vals[a..b],
                    codes,
                    sizes,
                    wilcoxon,
                    reference,
                    targets,
                )
            })
            .collect();
        out.extend(stats);
        g0 = g1;
    }
    out
}

struct Csc {
    ptr: Vec<usize>,
    rows: Vec<u32>,
    vals: Vec<f32>,
}

/// Columns `g0..g1` in CSC form (rows increasing). For sparse input `cursor[i]` is the
/// position of row `i`'s first entry with column `>= g0` and is advanced past `g1`.
fn column_block(x: &Expr<'_>, g0: usize, g1: usize, cursor: &mut [usize]) -> Csc {
    let w = g1 - g0;
    match x {
        Expr::Dense(m) => {
            let n = m.n_rows();
            let ptr = (0..=w).map(|c| c * n).collect();
            let rows: Vec<u32> = (0..w).flat_map(|_| 0..n as u32).collect();
            let mut vals = vec![0.0f32; w * n];
            vals.par_chunks_mut(n).enumerate().for_each(|(c, col)| {
                for (i, v) in col.iter_mut().enumerate() {
                    *v = m.row(i)[g0 + c];
                }
            });
            Csc { ptr, rows, vals }
        }
        Expr::Sparse(m) => {
            let n = m.n_rows;
            let mut counts = vec![0usize; w + 1];
            let mut ends = vec![0usize; n];
            for i in 0..n {
                let end = m.indptr[i + 1];
                let mut p = cursor[i];
                while p < end && (m.indices[p] as usize) < g1 {
                    counts[m.indices[p] as usize - g0 + 1] += 1;
                    p += 1;
                }
                ends[i] = p;
            }
            for c in 0..w {
                counts[c + 1] += counts[c];
            }
            let nnz = counts[w];
            let mut rows = vec![0u32; nnz];
            let mut vals = vec![0.0f32; nnz];
            let mut fill = counts.clone();
            for i in 0..n {
                for p in cursor[i]..ends[i] {
                    let c = m.indices[p] as usize - g0;
                    rows[fill[c]] = i as u32;
                    vals[fill[c]] = m.data[p];
                    fill[c] += 1;
                }
                cursor[i] = ends[i];
            }
            Csc {
                ptr: counts,
                rows,
                vals,
            }
        }
    }
}

fn one_gene(
    rows: &[u32],
    vals: &[f32],
    codes: &[u32],
    sizes: &[usize],
    wilcoxon: bool,
    reference: Option<usize>,
    targets: &[usize],
) -> GeneStats {
    let gc = sizes.len();
    let mut sum = vec![0.0f64; gc];
    let mut sumsq = vec![0.0f64; gc];
    let mut stored = vec![0usize; gc];
    let mut nnz = vec![0usize; gc];
    for (&r, &v) in rows.iter().zip(vals) {
        let c = codes[r as usize] as usize;
        sum[c] += v as f64;
        // scanpy squares in the input precision (float32), then accumulates in float64
        sumsq[c] += (v * v) as f64;
        stored[c] += 1;
        nnz[c] += (v != 0.0) as usize;
    }
    let mut ranks = Vec::new();
    let mut ties = Vec::new();
    if wilcoxon {
        let mut ent: Vec<(f32, u32)> = rows
            .iter()
            .zip(vals)
            .map(|(&r, &v)| (v, codes[r as usize]))
            .collect();
        ent.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        match reference {
            None => {
                let implicit = sizes.iter().sum::<usize>() - rows.len();
                let mut rs = vec![0.0f64; gc];
                let (zr, tie) = rank_pass(&ent, implicit, |_| true, &mut rs);
                for c in 0..gc {
                    rs[c] += (sizes[c] - stored[c]) as f64 * zr;
                }
                for &g in targets {
                    ranks.push(rs[g]);
                    ties.push(tie);
                }
            }
            Some(r) => {
                for &g in targets {
                    let implicit = (sizes[g] - stored[g]) + (sizes[r] - stored[r]);
                    let mut rs = vec![0.0f64; gc];
                    let (zr, tie) =
                        rank_pass(&ent, implicit, |c| c == g as u32 || c == r as u32, &mut rs);
                    ranks.push(rs[g] + (sizes[g] - stored[g]) as f64 * zr);
                    ties.push(tie);
                }
            }
        }
    }
    GeneStats {
        sum,
        sumsq,
        nnz,
        ranks,
        ties,
    }
}

/// Walks the value-sorted entries (filtered by code), adds each entry's average rank to
/// `sums[code]` and returns the rank of the zero block (which also holds `implicit` unstored
/// zeros) and `Σ (t³ - t)` over the tie blocks.
fn rank_pass(
    ent: &[(f32, u32)],
    implicit: usize,
    keep: impl Fn(u32) -> bool,
    sums: &mut [f64],
) -> (f64, f64) {
    let mut pos = 0.0f64; // cells ranked so far
    let mut tie = 0.0f64;
    let mut zero_rank = f64::NAN;
    let mut zero_done = false;
    let block = |t: f64| t * t * t - t;
    let mut i = 0;
    let len = ent.len();
    while i < len {
        if !keep(ent[i].1) {
            i += 1;
            continue;
        }
        let v = ent[i].0;
        if !zero_done && v >= 0.0 {
            // the zero block: explicit zeros + implicit ones
            let mut j = i;
            let mut ez = 0usize;
            while j < len && ent[j].0 == 0.0 {
                if keep(ent[j].1) {
                    ez += 1;
                }
                j += 1;
            }
            let size = (implicit + ez) as f64;
            zero_rank = pos + (size + 1.0) / 2.0;
            for e in &ent[i..j] {
                if keep(e.1) {
                    sums[e.1 as usize] += zero_rank;
                }
            }
            tie += block(size);
            pos += size;
            zero_done = true;
            i = j;
            continue;
        }
        // tie block of value v
        let mut j = i;
        let mut cnt = 0usize;
        while j < len && ent[j].0 == v {
            if keep(ent[j].1) {
                cnt += 1;
            }
            j += 1;
        }
        let r = pos + (cnt as f64 + 1.0) / 2.0;
        for e in &ent[i..j] {
            if keep(e.1) {
                sums[e.1 as usize] += r;
            }
        }
        tie += block(cnt as f64);
        pos += cnt as f64;
        i = j;
    }
    if !zero_done {
        let size = implicit as f64;
        zero_rank = pos + (size + 1.0) / 2.0;
        tie += block(size);
    }
    (zero_rank, tie)
}

/// Welch's t-test from summary statistics (scipy `ttest_ind_from_stats(equal_var=False)`),
/// with scanpy's NaN handling: returns `(t, two-sided p)`.
fn welch(m1: f64, v1: f64, n1: f64, m2: f64, v2: f64, n2: f64) -> (f64, f64) {
    let vn1 = v1 / n1;
    let vn2 = v2 / n2;
    let mut df = (vn1 + vn2) * (vn1 + vn2) / (vn1 * vn1 / (n1 - 1.0) + vn2 * vn2 / (n2 - 1.0));
    if df.is_nan() {
        df = 1.0;
    }
    let t = (m1 - m2) / (vn1 + vn2).sqrt();
    if t.is_nan() {
        return (0.0, 1.0);
    }
    let p = student_t_two_sided(t, df);
    (t, if p.is_nan() { 1.0 } else { p })
}

/// Benjamini-Hochberg adjusted p-values (statsmodels `multipletests(method="fdr_bh")`).
pub(crate) fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adj = vec![0.0f64; m];
    let mut running = f64::INFINITY;
    for (r, &i) in order.iter().enumerate().rev() {
        let v = p[i] * m as f64 / (r + 1) as f64;
        running = running.min(v);
        adj[i] = running.min(1.0);
    }
    adj
}

/// Complementary error function (relative error < 1e-10 for x >= 0; `erfc(-x) = 2 -
/// erfc(x)`).
pub(crate) fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 3.0 {
        // erf(x) = 2/√π e^{-x²} Σ 2ⁿ x^{2n+1} / (2n+1)!!  (all terms positive)
        let x2 = x * x;
        let mut term = x;
        let mut s = x;
        let mut k = 0.0f64;
        while term > s * 1e-17 {
            k += 1.0;
            term *= 2.0 * x2 / (2.0 * k + 1.0);
            s += term;
        }
        1.0 - 2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * s
    } else {
        // continued fraction erfc(x) = e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))
        let mut f = x;
        for k in (1..=80).rev() {
            f = x + (k as f64 / 2.0) / f;
        }
        (-x * x).exp() / (std::f64::consts::PI.sqrt() * f)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised incomplete beta `I_x(a, b)` (continued fraction, modified Lentz).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(b, a, 1.0 - x);
    }
    let ln_front = a * x.ln() + b * (1.0 - x).ln() - (ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b));
    beta_cf(a, b, x) * ln_front.exp() / a
}

/// Continued fraction of the incomplete beta.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0f64;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // even step
        let num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
        d = 1.0 + num * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + num / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // odd step
        let num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
        d = 1.0 + num * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + num / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// `P(|T| > |t|)` for Student's t with `df` degrees of freedom.
pub(crate) fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    let t2 = t * t;
    // I_{df/(df+t²)}(df/2, 1/2), evaluated on whichever side is accurate
    let x = df / (df + t2);
    let a = df / 2.0;
    let b = 0.5;
    if x > (a + 1.0) / (a + b + 2.0) {
        1.0 - inc_beta(b, a, t2 / (df + t2))
    } else {
        inc_beta(a, b, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_functions() {
        let cases = [
            (0.1, 0.887_537_083_981_715_2),
            (1.0, 0.157_299_207_050_285_16),
            (2.5, 4.069_520_174_449_588_6e-4),
            (3.0, 2.209_049_699_858_544_5e-5),
            (5.0, 1.537_459_794_428_034_7e-12),
            (10.0, 2.088_487_583_762_544_6e-45),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!(
                ((got - want) / want).abs() < 1e-10,
                "erfc({x}) = {got}, want {want}"
            );
        }
        // scipy 2 * t.sf(2, 5) and 2 * t.sf(8, 200)
        let p = student_t_two_sided(2.0, 5.0);
        assert!((p / 0.101_939_478_829_858_35 - 1.0).abs() < 1e-12, "{p}");
        let p = student_t_two_sided(8.0, 200.0);
        assert!((p / 9.879_200_909_330_596e-14 - 1.0).abs() < 1e-9, "{p}");
        assert!((student_t_two_sided(0.0, 7.0) - 1.0).abs() < 1e-14);
    }

    #[test]
    fn bh_matches_statsmodels() {
        let p = [0.01, 0.04, 0.03, 0.2, 0.04];
        // statsmodels fdr_bh: [0.05, 0.05, 0.05, 0.2, 0.05]
        let adj = benjamini_hochberg(&p);
        for (a, w) in adj.iter().zip([0.05, 0.05, 0.05, 0.2, 0.05]) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
    }
}
