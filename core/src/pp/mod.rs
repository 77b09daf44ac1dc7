//! Preprocessing as scGPT's `Preprocessor` runs it, with scanpy's numbers: gene and cell
//! filters, `normalize_total`, `log1p`, highly variable genes (`seurat_v3`, `seurat`,
//! `cell_ranger`, optionally per batch) and scGPT's per-cell value binning.
//!
//! The input matrix is read in row chunks in a few streaming passes (statistics, then the
//! output rows), so memory follows the output (kept cells x kept genes), not the input.
//! Arithmetic follows scanpy's dtypes (float32 for integer and float32 input), so values
//! agree with scanpy to float32 rounding, and binning uses the per-cell seeded generator of
//! [`crate::tokenize`], so the same seed gives the same bins whatever the chunking.

pub mod hvg;
pub mod loess;
pub mod source;

use std::path::Path;

use rayon::prelude::*;

use crate::anndata::{
    AnnData, ArrayData, DenseArray, Dtype, Element, Mapping, SparseFormat, SparseMatrix,
};
use crate::io::H5adError;
use crate::tokenize::{Rng, ValuePrecision, bin_cell};

pub use hvg::{HvgFlavor, HvgResult};
pub use source::{Chunk, Passes, Row, Source};

/// Preprocessing errors.
#[derive(Debug, thiserror::Error)]
pub enum PpError {
    #[error(transparent)]
    Read(#[from] H5adError),
    #[error("{0}")]
    Input(String),
    #[error(
        "{matrix} has a {what} value ({value}) in cell {cell} (row {row}), gene {gene}: \
         preprocessing needs finite, non-negative expression (raw counts or normalised \
         values){hint}"
    )]
    BadValue {
        matrix: String,
        what: &'static str,
        value: f64,
        row: usize,
        cell: String,
        gene: String,
        hint: &'static str,
    },
    #[error("highly variable genes: {0}")]
    Hvg(String),
    #[error("every cell was filtered out ({0})")]
    NoCells(String),
    #[error("every gene was filtered out ({0})")]
    NoGenes(String),
    #[error("cancelled")]
    Cancelled,
}

/// `normalize_total`'s target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TargetSum {
    Fixed(f64),
    /// The median of the cells' totals (scanpy's default when no target is given).
    Median,
}

/// Highly variable gene selection.
#[derive(Clone, Debug)]
pub struct HvgOptions {
    pub n_top_genes: usize,
    pub flavor: HvgFlavor,
    pub batch_key: Option<String>,
    /// Keep only the selected genes (scGPT's `subset_hvg`).
    pub subset: bool,
    /// LOESS span of `seurat_v3`.
    pub span: f64,
    /// Mean bins of the dispersion flavors.
    pub n_bins: usize,
    /// Compute on the input matrix (scGPT's default `hvg_use_key=None`) or on `X_log1p`.
    pub on_log1p: bool,
}

impl Default for HvgOptions {
    fn default() -> Self {
        Self {
            n_top_genes: 1200,
            flavor: HvgFlavor::SeuratV3,
            batch_key: None,
            subset: true,
            span: 0.3,
            n_bins: 20,
            on_log1p: false,
        }
    }
}

/// The whole chain, each step optional, in scGPT's order.
#[derive(Clone, Debug)]
pub struct PreprocessOptions {
    /// Input matrix: `None` = X, else a layer name.
    pub layer: Option<String>,
    pub filter_genes_min_counts: Option<f64>,
    pub filter_genes_min_cells: Option<u64>,
    pub filter_cells_min_counts: Option<f64>,
    pub filter_cells_min_genes: Option<u64>,
    pub normalize_total: Option<TargetSum>,
    pub log1p: bool,
    pub hvg: Option<HvgOptions>,
    /// scGPT value binning into this many bins (0 = not expressed, 1..n_bins-1).
    pub n_bins: Option<usize>,
    pub seed: u64,
    pub chunk_rows: usize,
    /// Bytes of the input matrix kept in memory after the first pass so the later passes
    /// need not read the file again. 0 (the default) streams every pass from the file, which
    /// the OS page cache makes about as fast on a local disk (see BENCHMARKS.md for the
    /// 1.2 GB benchmark input: the same time within noise) while memory stays flat; a budget
    /// helps on slow or network storage.
    pub memory_budget: usize,
}

impl Default for PreprocessOptions {
    /// scGPT's tutorial defaults for raw counts: normalise to 1e4, log1p, 51 bins.
    fn default() -> Self {
        Self {
            layer: None,
            filter_genes_min_counts: None,
            filter_genes_min_cells: None,
            filter_cells_min_counts: None,
            filter_cells_min_genes: None,
            normalize_total: Some(TargetSum::Fixed(1e4)),
            log1p: true,
            hvg: None,
            n_bins: Some(51),
            seed: 0,
            // ~1,500 values per cell: about 6 M values, 24 MB per array, a chunk (below
            // glibc's largest mmap threshold, see `sys::tune_allocator`)
            chunk_rows: 4096,
            memory_budget: 0,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct PreprocessReport {
    pub cells_in: usize,
    pub genes_in: usize,
    pub cells_out: usize,
    pub genes_out: usize,
    pub genes_filtered: usize,
    pub cells_filtered: usize,
    /// The target sum used (the median when none was given).
    pub target_sum: Option<f64>,
    pub hvg_selected: Option<usize>,
    /// Cells whose binned row is all zero (no expressed gene left).
    pub all_zero_cells: usize,
    /// Non-integer input values while `seurat_v3` runs on the input (it expects counts).
    pub hvg_non_integer: bool,
    /// The input looked log-transformed already while log1p was requested.
    pub looks_logged: bool,
    /// Elements dropped because they could not be subset.
    pub dropped: Vec<String>,
    /// Things the user should know (e.g. a widened LOESS span).
    pub notes: Vec<String>,
}

/// Progress: which pass, rows done of total.
#[derive(Clone, Debug)]
pub struct PpProgress {
    pub pass: &'static str,
    pub rows_done: usize,
    pub rows_total: usize,
}

fn bad_value(
    matrix: &str,
    v: f64,
    row: usize,
    col: usize,
    obs: &[String],
    var: &[String],
) -> PpError {
    let what = if v.is_nan() {
        "NaN"
    } else if v.is_infinite() {
        "infinite"
    } else {
        "negative"
    };
    PpError::BadValue {
        matrix: matrix.to_string(),
        what,
        value: v,
        row,
        cell: obs.get(row).cloned().unwrap_or_default(),
        gene: var.get(col).cloned().unwrap_or_default(),
        hint: if v < 0.0 {
            "; negative values usually mean scaled data (sc.pp.scale): use counts or a \
             log-normalised layer (--layer)"
        } else {
            ""
        },
    }
}

/// Batch labels of the cells (codes into `names`).
fn batch_codes(
    obs: &crate::anndata::DataFrame,
    key: &str,
) -> Result<(Vec<usize>, Vec<String>), PpError> {
    let cat = obs
        .categorical(key)
        .map_err(|e| PpError::Input(format!("batch key: {e}")))?;
    let names = cat.category_labels();
    let codes = cat
        .codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            usize::try_from(c)
                .ok()
                .filter(|&c| c < names.len())
                .ok_or_else(|| {
                    PpError::Input(format!(
                        "batch key \"{key}\" is missing for cell {} (row {i})",
                        obs.index.get(i).cloned().unwrap_or_default()
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((codes, names))
}

/// Per-thread partial sums of a chunk: applies `f(row, col, value)` to each entry of kept
/// rows in parallel and merges per-gene accumulators.
fn chunk_rows_par<T: Send>(
    chunk: &Chunk,
    init: impl Fn() -> T + Sync + Send,
    f: impl Fn(&mut T, usize, Row<'_>) + Sync + Send,
    merge: impl Fn(&mut T, T) + Sync + Send,
) -> T {
    let n = chunk.n_rows();
    let parts = rayon::current_num_threads().max(1);
    let per = n.div_ceil(parts).max(256);
    let ranges: Vec<(usize, usize)> = (0..n).step_by(per).map(|a| (a, (a + per).min(n))).collect();
    let partials: Vec<T> = ranges
        .par_iter()
        .map(|&(a, b)| {
            let mut acc = init();
            for r in a..b {
                f(&mut acc, chunk.first_row + r, chunk.row(r));
            }
            acc
        })
        .collect();
    let mut it = partials.into_iter();
    let mut acc = it.next().unwrap_or_else(&init);
    for p in it {
        merge(&mut acc, p);
    }
    acc
}

/// Everything the passes decide: which cells and genes stay, the totals, the selection.
struct Plan {
    keep_cell: Vec<bool>,
    /// Input column -> position among kept genes.
    gene_pos: Vec<Option<u32>>,
    kept_genes: Vec<usize>,
    totals: Vec<f64>,
    /// normalize_total's target (none: not normalised).
    target: Option<f64>,
    prec: ValuePrecision,
}

impl Plan {
    /// scanpy's divisor for a cell: total / target in the data's precision, 1 for a cell
    /// with no counts.
    fn scale(&self, cell: usize) -> Option<f64> {
        self.target.map(|t| {
            let s = self.prec.round(self.totals[cell] / t);
            if s == 0.0 { 1.0 } else { s }
        })
    }

    /// A value after normalize_total (in the working precision).
    fn normalize(&self, v: f64, scale: Option<f64>) -> f64 {
        match scale {
            Some(s) => self.prec.round(self.prec.round(v) / s),
            None => self.prec.round(v),
        }
    }

    /// log(1 + x), correctly rounded to the working precision.
    fn log1p(&self, n: f64) -> f64 {
        self.prec.round(n.ln_1p())
    }
}

/// The backed matrix read whole into memory.
fn whole_matrix(backed: &crate::io::BackedH5ad) -> Result<Element, PpError> {
    Ok(match backed.read_rows(0..backed.shape()[0])? {
        crate::io::RowChunk::Sparse(s) => Element::Sparse(s),
        crate::io::RowChunk::Dense(d) => Element::Dense(d),
    })
}

/// Runs the chain on `path` and returns the output AnnData (not yet written) and a report.
pub fn preprocess_file(
    path: &Path,
    opts: &PreprocessOptions,
    progress: &mut dyn FnMut(PpProgress) -> std::ops::ControlFlow<()>,
) -> Result<(AnnData, PreprocessReport), PpError> {
    let (mut meta, backed, _warnings) = crate::io::read_h5ad_backed(path)?;
    if opts.layer.is_some() && backed.layout_name() != "absent" {
        // Processing a layer: X is carried into the output (cut like everything else).
        meta.x = Some(whole_matrix(&backed)?);
    }
    let source = match &opts.layer {
        None if backed.layout_name() == "absent" => {
            return Err(PpError::Input(
                "the file has no X; pass --layer to preprocess a layer".into(),
            ));
        }
        // Row chunks of a CSC matrix each scan the whole matrix: read it once instead.
        None if backed.layout_name() == "csc" => Source::from_element(whole_matrix(&backed)?, "X")?,
        None => Source::Backed(&backed),
        Some(name) => {
            // Taken out of the dataset: the output gets the processed version in its place.
            let el = meta.layers.remove(name).ok_or_else(|| {
                let names: Vec<&str> = meta.layers.keys().map(|s| s.as_str()).collect();
                PpError::Input(format!(
                    "layer \"{name}\" does not exist (layers: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
            Source::from_element(el, &format!("layers[\"{name}\"]"))?
        }
    };
    let out = preprocess(&meta, &source, opts, progress)?;
    drop(backed);
    Ok(out)
}

/// Runs the chain on `source` (X or a layer of the dataset described by `meta`).
pub fn preprocess(
    meta: &AnnData,
    source: &Source<'_>,
    opts: &PreprocessOptions,
    progress: &mut dyn FnMut(PpProgress) -> std::ops::ControlFlow<()>,
) -> Result<(AnnData, PreprocessReport), PpError> {
    let [n_cells, n_genes] = source.shape();
    if n_cells != meta.n_obs() || n_genes != meta.n_vars() {
        return Err(PpError::Input(format!(
            "the matrix is {n_cells} x {n_genes} but the dataset has {} cells and {} genes",
            meta.n_obs(),
            meta.n_vars()
        )));
    }
    if n_cells == 0 || n_genes == 0 {
        return Err(PpError::Input(format!(
            "the dataset is empty ({n_cells} cells x {n_genes} genes)"
        )));
    }
    if let Some(b) = opts.n_bins
        && b < 3
    {
        return Err(PpError::Input(format!(
            "--n-bins must be at least 3 (got {b})"
        )));
    }
    let matrix = opts
        .layer
        .as_ref()
        .map_or("X".to_string(), |l| format!("layers[\"{l}\"]"));
    let prec = ValuePrecision::of(source.dtype());
    let obs = meta.obs_names();
    let var = meta.var_names();
    let chunk_rows = opts.chunk_rows.max(1);
    let mut report = PreprocessReport {
        cells_in: n_cells,
        genes_in: n_genes,
        ..Default::default()
    };
    let mut tick = |pass: &'static str, done: usize| -> Result<(), PpError> {
        match progress(PpProgress {
            pass,
            rows_done: done,
            rows_total: n_cells,
        }) {
            std::ops::ControlFlow::Continue(()) => Ok(()),
            std::ops::ControlFlow::Break(()) => Err(PpError::Cancelled),
        }
    };

    // Pass 1: validate; per-gene counts and expressing cells; per-cell totals and genes.
    struct P1 {
        gsum: Vec<f64>,
        gcells: Vec<u64>,
        bad: Option<(usize, usize, f64)>,
        max: f64,
        min_nz: f64,
        non_integer: bool,
    }
    let mut gene_sum = vec![0.0f64; n_genes];
    let mut gene_cells = vec![0u64; n_genes];
    let mut cell_total = vec![0.0f64; n_cells];
    let mut cell_genes = vec![0u64; n_cells];
    let (mut max_v, mut min_nz, mut non_integer) = (0.0f64, f64::INFINITY, false);
    let mut passes = Passes::new(source, chunk_rows, opts.memory_budget);
    passes.for_each(|ch| {
        let p = chunk_rows_par(
            ch,
            || P1 {
                gsum: vec![0.0; n_genes],
                gcells: vec![0; n_genes],
                bad: None,
                max: 0.0,
                min_nz: f64::INFINITY,
                non_integer: false,
            },
            |acc, row, r| {
                r.for_each(|c, v| {
                    if !v.is_finite() || v < 0.0 {
                        if acc.bad.is_none() {
                            acc.bad = Some((row, c as usize, v));
                        }
                        return;
                    }
                    acc.gsum[c as usize] += v;
                    if v > 0.0 {
                        acc.gcells[c as usize] += 1;
                        acc.min_nz = acc.min_nz.min(v);
                    }
                    acc.max = acc.max.max(v);
                    acc.non_integer |= !is_whole(v);
                });
            },
            |a, b| {
                for (x, y) in a.gsum.iter_mut().zip(&b.gsum) {
                    *x += y;
                }
                for (x, y) in a.gcells.iter_mut().zip(&b.gcells) {
                    *x += y;
                }
                if a.bad.is_none() {
                    a.bad = b.bad;
                }
                a.max = a.max.max(b.max);
                a.min_nz = a.min_nz.min(b.min_nz);
                a.non_integer |= b.non_integer;
            },
        );
        if let Some((row, col, v)) = p.bad {
            return Err(bad_value(&matrix, v, row, col, obs, var));
        }
        for (x, y) in gene_sum.iter_mut().zip(&p.gsum) {
            *x += y;
        }
        for (x, y) in gene_cells.iter_mut().zip(&p.gcells) {
            *x += y;
        }
        max_v = max_v.max(p.max);
        min_nz = min_nz.min(p.min_nz);
        non_integer |= p.non_integer;
        let n = ch.n_rows();
        let rows = ch.first_row..ch.first_row + n;
        cell_total[rows.clone()]
            .par_iter_mut()
            .zip(cell_genes[rows].par_iter_mut())
            .enumerate()
            .for_each(|(r, (t, g))| {
                let row = ch.row(r);
                *t = row.sum();
                let mut n = 0;
                row.for_each(|_, v| n += u64::from(v > 0.0));
                *g = n;
            });
        tick("checking values", ch.first_row + ch.n_rows())
    })?;
    // scGPT's check_logged: max <= 30 and the smallest non-zero value below 1.
    report.looks_logged = max_v <= 30.0 && min_nz < 1.0;

    // Gene filter (scanpy filter_genes).
    let gene_ok: Vec<bool> = (0..n_genes)
        .map(|g| {
            opts.filter_genes_min_counts
                .is_none_or(|m| gene_sum[g] >= m)
                && opts
                    .filter_genes_min_cells
                    .is_none_or(|m| gene_cells[g] >= m)
        })
        .collect();
    let kept_genes: Vec<usize> = (0..n_genes).filter(|&g| gene_ok[g]).collect();
    report.genes_filtered = n_genes - kept_genes.len();
    if kept_genes.is_empty() {
        return Err(PpError::NoGenes(format!(
            "no gene passes min_counts {:?} / min_cells {:?}",
            opts.filter_genes_min_counts, opts.filter_genes_min_cells
        )));
    }
    let mut gene_pos: Vec<Option<u32>> = vec![None; n_genes];
    for (k, &g) in kept_genes.iter().enumerate() {
        gene_pos[g] = Some(k as u32);
    }

    // Cell totals over the kept genes (a second pass only when genes were removed).
    if report.genes_filtered > 0 {
        passes.for_each(|ch| {
            for r in 0..ch.n_rows() {
                let mut t = 0.0;
                let mut n = 0;
                ch.row(r).for_each(|c, v| {
                    if gene_ok[c as usize] {
                        t += v;
                        n += u64::from(v > 0.0);
                    }
                });
                cell_total[ch.first_row + r] = t;
                cell_genes[ch.first_row + r] = n;
            }
            tick("cell totals", ch.first_row + ch.n_rows())
        })?;
    }
    let keep_cell: Vec<bool> = (0..n_cells)
        .map(|c| {
            opts.filter_cells_min_counts
                .is_none_or(|m| cell_total[c] >= m)
                && opts
                    .filter_cells_min_genes
                    .is_none_or(|m| cell_genes[c] >= m)
        })
        .collect();
    let kept_cells: Vec<usize> = (0..n_cells).filter(|&c| keep_cell[c]).collect();
    report.cells_filtered = n_cells - kept_cells.len();
    if kept_cells.is_empty() {
        return Err(PpError::NoCells(format!(
            "no cell passes min_counts {:?} / min_genes {:?}",
            opts.filter_cells_min_counts, opts.filter_cells_min_genes
        )));
    }
    // scanpy keeps the per-cell sum in the data's dtype.
    let totals: Vec<f64> = cell_total.iter().map(|&t| prec.round(t)).collect();
    let target = match opts.normalize_total {
        None => None,
        Some(TargetSum::Fixed(t)) => Some(prec.round(t)),
        Some(TargetSum::Median) => {
            // scanpy: the median of all totals for CSR input, of the non-zero ones for dense.
            let vals: Vec<f64> = kept_cells
                .iter()
                .map(|&c| totals[c])
                .filter(|&t| !source.is_dense() || t > 0.0)
                .collect();
            Some(prec.round(hvg::median(vals)))
        }
    };
    report.target_sum = target;
    let plan = Plan {
        keep_cell,
        gene_pos,
        kept_genes,
        totals,
        target,
        prec,
    };

    // Highly variable genes over kept cells and genes.
    let mut hvg_result = None;
    if let Some(h) = &opts.hvg {
        let r = run_hvg(meta, &mut passes, source, h, &plan, &mut tick, &mut report)?;
        report.hvg_non_integer = non_integer && h.flavor == HvgFlavor::SeuratV3 && !h.on_log1p;
        hvg_result = Some(r);
    }
    let out_genes: Vec<usize> = match (&hvg_result, &opts.hvg) {
        (Some(r), Some(h)) if h.subset => plan
            .kept_genes
            .iter()
            .enumerate()
            .filter(|(k, _)| r.highly_variable[*k])
            .map(|(_, &g)| g)
            .collect(),
        _ => plan.kept_genes.clone(),
    };
    report.hvg_selected = hvg_result
        .as_ref()
        .map(|r| r.highly_variable.iter().filter(|&&b| b).count());

    // Output pass.
    let mut out_pos: Vec<Option<u32>> = vec![None; n_genes];
    for (k, &g) in out_genes.iter().enumerate() {
        out_pos[g] = Some(k as u32);
    }
    let n_out = out_genes.len();
    let mut b_x = CsrBuilder::new(n_out);
    let mut b_norm = CsrBuilder::new(n_out);
    let mut b_log = CsrBuilder::new(n_out);
    let mut b_bin = CsrBuilder::new(n_out);
    let n_bins = opts.n_bins;
    let mut edges_out: Vec<f64> = Vec::new();
    let mut all_zero = 0usize;
    let keep_x_dtype = source.dtype();
    passes.for_each(|ch| {
        struct RowOut {
            idx: Vec<u32>,
            raw: Vec<f64>,
            norm: Vec<f64>,
            log: Vec<f64>,
            bins: Vec<u16>,
            edges: Vec<f64>,
        }
        let rows: Vec<RowOut> = (0..ch.n_rows())
            .into_par_iter()
            .filter(|&r| plan.keep_cell[ch.first_row + r])
            .map(|r| {
                let cell = ch.first_row + r;
                let row = ch.row(r);
                let mut o = RowOut {
                    idx: Vec::new(),
                    raw: Vec::new(),
                    norm: Vec::new(),
                    log: Vec::new(),
                    bins: Vec::new(),
                    edges: Vec::new(),
                };
                let scale = plan.scale(cell);
                row.for_each(|c, v| {
                    let Some(p) = out_pos[c as usize] else {
                        return;
                    };
                    o.idx.push(p);
                    o.raw.push(v);
                    let n = plan.normalize(v, scale);
                    o.norm.push(n);
                    if opts.log1p {
                        o.log.push(plan.log1p(n));
                    }
                });
                if let Some(nb) = n_bins {
                    let basis = if opts.log1p { &o.log } else { &o.norm };
                    let mut rng = Rng::for_item(opts.seed, cell as u64);
                    let (bins, edges) = bin_cell(basis, nb, prec, &mut rng);
                    o.bins = bins;
                    o.edges = edges;
                }
                o
            })
            .collect();
        for o in rows {
            b_x.push_row(&o.idx, &o.raw);
            if target.is_some() {
                b_norm.push_row(&o.idx, &o.norm);
            }
            if opts.log1p {
                b_log.push_row(&o.idx, &o.log);
            }
            if let Some(nb) = n_bins {
                let nz: Vec<(u32, f64)> = o
                    .idx
                    .iter()
                    .zip(&o.bins)
                    .filter(|(_, b)| **b > 0)
                    .map(|(&i, &b)| (i, b as f64))
                    .collect();
                let (i2, v2): (Vec<u32>, Vec<f64>) = nz.into_iter().unzip();
                b_bin.push_row(&i2, &v2);
                edges_out.push(0.0);
                if o.edges.is_empty() {
                    all_zero += 1;
                    edges_out.extend(std::iter::repeat_n(0.0, nb - 1));
                } else {
                    edges_out.extend_from_slice(&o.edges);
                }
            }
        }
        tick("writing rows", ch.first_row + ch.n_rows())
    })?;
    report.all_zero_cells = all_zero;

    // Assemble the output AnnData: the input's elements cut to kept cells / output genes.
    let (mut out, dropped) = meta.subset(Some(&kept_cells), Some(&out_genes));
    report.dropped = dropped;
    let float_dtype = match prec {
        ValuePrecision::F32 => Dtype::F32,
        ValuePrecision::F64 => Dtype::F64,
    };
    let as_x = |b: CsrBuilder, dtype: Dtype| b.finish(kept_cells.len(), dtype);
    let mut x_mat = as_x(b_x, keep_x_dtype);
    // The processed matrix keeps its storage: dense stays dense.
    if source.is_dense()
        && let Element::Sparse(s) = &x_mat
    {
        x_mat = Element::Dense(s.to_dense());
    }
    match &opts.layer {
        None => out.x = Some(x_mat),
        Some(l) => {
            out.layers.insert(l.clone(), x_mat);
        }
    }
    if target.is_some() {
        out.layers
            .insert("X_normed".into(), as_x(b_norm, float_dtype));
    }
    if opts.log1p {
        out.layers
            .insert("X_log1p".into(), as_x(b_log, float_dtype));
    }
    if let Some(nb) = n_bins {
        out.layers
            .insert("X_binned".into(), as_x(b_bin, Dtype::I64));
        out.obsm.insert(
            "bin_edges".into(),
            Element::Dense(DenseArray {
                shape: vec![kept_cells.len(), nb],
                data: ArrayData::F64(edges_out),
            }),
        );
    }
    if let (Some(r), Some(h)) = (&hvg_result, &opts.hvg) {
        // Columns for the output genes (positions among kept genes).
        let kept_index: Vec<usize> = out_genes
            .iter()
            .filter_map(|&g| plan.gene_pos[g].map(|p| p as usize))
            .collect();
        let pick_f = |v: &Vec<f64>| kept_index.iter().map(|&k| v[k]).collect::<Vec<f64>>();
        out.var.set_column(
            "highly_variable",
            Element::Dense(DenseArray {
                shape: vec![kept_index.len()],
                data: ArrayData::Bool(kept_index.iter().map(|&k| r.highly_variable[k]).collect()),
            }),
        );
        for (name, vals, f32col) in &r.float_columns {
            let v = pick_f(vals);
            let data = if *f32col {
                ArrayData::F32(v.iter().map(|&x| x as f32).collect())
            } else {
                ArrayData::F64(v)
            };
            out.var.set_column(
                name,
                Element::Dense(DenseArray {
                    shape: vec![kept_index.len()],
                    data,
                }),
            );
        }
        if let Some(nb) = &r.nbatches {
            out.var.set_column(
                "highly_variable_nbatches",
                Element::Dense(DenseArray {
                    shape: vec![kept_index.len()],
                    data: ArrayData::I64(kept_index.iter().map(|&k| nb[k]).collect()),
                }),
            );
        }
        if let Some(ix) = &r.intersection {
            out.var.set_column(
                "highly_variable_intersection",
                Element::Dense(DenseArray {
                    shape: vec![kept_index.len()],
                    data: ArrayData::Bool(kept_index.iter().map(|&k| ix[k]).collect()),
                }),
            );
        }
        let mut hvg_uns = Mapping::new();
        hvg_uns.insert("flavor".into(), Element::String(h.flavor.name().into()));
        out.uns.insert("hvg".into(), Element::Mapping(hvg_uns));
    }
    report.cells_out = kept_cells.len();
    report.genes_out = n_out;
    Ok((out, report))
}

/// Whether `v` is a whole number (cheap: no libm call).
#[inline]
fn is_whole(v: f64) -> bool {
    v.abs() >= 9.0e15 || (v as i64) as f64 == v
}

#[allow(clippy::too_many_arguments)]
fn run_hvg(
    meta: &AnnData,
    passes: &mut Passes<'_, '_>,
    source: &Source<'_>,
    h: &HvgOptions,
    plan: &Plan,
    tick: &mut dyn FnMut(&'static str, usize) -> Result<(), PpError>,
    report: &mut PreprocessReport,
) -> Result<HvgResult, PpError> {
    let nk = plan.kept_genes.len();
    let n_top = h.n_top_genes;
    if n_top == 0 {
        return Err(PpError::Hvg("--n-hvg must be at least 1".into()));
    }
    let (codes, batch_names) = match &h.batch_key {
        Some(k) => batch_codes(&meta.obs, k)?,
        None => (vec![0; meta.n_obs()], vec!["all".to_string()]),
    };
    let nb = batch_names.len();
    // The values HVG looks at: the input, or log1p(normalised input).
    let transform = |cell: usize, v: f64| -> f64 {
        if h.on_log1p {
            plan.log1p(plan.normalize(v, plan.scale(cell)))
        } else {
            v
        }
    };
    let flavor = h.flavor;
    // scanpy computes expm1 (seurat) and the squares in the values' own dtype: float32 for
    // float32 data (and for log1p of integer or float32 data), exact for integers.
    let vals_f32 = source.dtype() == Dtype::F32 || (h.on_log1p && plan.prec == ValuePrecision::F32);
    let value_of = |v: f64| -> f64 {
        if flavor == HvgFlavor::Seurat {
            if vals_f32 {
                v.exp_m1() as f32 as f64
            } else {
                v.exp_m1()
            }
        } else {
            v
        }
    };
    let square = |x: f64| -> f64 {
        if vals_f32 {
            (x as f32 * x as f32) as f64
        } else {
            x * x
        }
    };
    let mut stats: Vec<hvg::BatchStats> = (0..nb).map(|_| hvg::BatchStats::new(nk)).collect();
    for (c, &code) in codes.iter().enumerate() {
        if plan.keep_cell[c] {
            stats[code].n_cells += 1;
        }
    }
    passes.for_each(|ch| {
        let part = chunk_rows_par(
            ch,
            || {
                (0..nb)
                    .map(|_| hvg::BatchStats::new(nk))
                    .collect::<Vec<_>>()
            },
            |acc, row, r| {
                if !plan.keep_cell[row] {
                    return;
                }
                let st = &mut acc[codes[row]];
                r.for_each(|c, v| {
                    let Some(p) = plan.gene_pos[c as usize] else {
                        return;
                    };
                    let p = p as usize;
                    let raw = transform(row, v);
                    let x = value_of(raw);
                    st.sum[p] += x;
                    st.sumsq[p] += square(x);
                    if raw > 0.0 {
                        st.n_expressing[p] += 1;
                    }
                });
            },
            |a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    x.merge(y);
                }
            },
        );
        for (s, p) in stats.iter_mut().zip(&part) {
            s.merge(p);
        }
        tick("gene statistics", ch.first_row + ch.n_rows())
    })?;
    for (s, name) in stats.iter().zip(&batch_names) {
        if s.n_cells < 2 {
            return Err(PpError::Hvg(format!(
                "batch \"{name}\" has {} cell(s) after filtering; variance needs at least 2",
                s.n_cells
            )));
        }
    }
    let kept_names: Vec<String> = plan
        .kept_genes
        .iter()
        .map(|&g| meta.var_names()[g].clone())
        .collect();
    match flavor {
        HvgFlavor::SeuratV3 => {
            // scanpy (scikit-misc) fails outright when the LOESS neighbourhood at some gene
            // mean holds a single distinct value, e.g. a small batch where hundreds of genes
            // have exactly one count. Rather than stop, widen the span until the fit is
            // defined, and say so; where scanpy succeeds the numbers are scanpy's.
            let mut fits = Vec::with_capacity(nb);
            for (s, name) in stats.iter().zip(&batch_names) {
                let mut span = h.span;
                let fit = loop {
                    match hvg::seurat_v3_fit(s, span) {
                        Ok(f) => break f,
                        Err(e) if span < 1.0 => {
                            let next = (span + 0.2).min(1.0);
                            let why = match &e {
                                PpError::Hvg(m) => m.clone(),
                                other => other.to_string(),
                            };
                            report.notes.push(format!(
                                "seurat_v3 in batch \"{name}\": the LOESS fit with span \
                                 {span:.2} is undefined ({why}); used span {next:.2} (scanpy \
                                 stops with an error here)"
                            ));
                            span = next;
                        }
                        Err(e) => return Err(e),
                    }
                };
                fits.push(fit);
            }
            // Sums of the clipped values per batch (`n_expressing` unused).
            let new_sums = || {
                (0..nb)
                    .map(|_| hvg::BatchStats::new(nk))
                    .collect::<Vec<_>>()
            };
            let mut clipped = new_sums();
            passes.for_each(|ch| {
                let part = chunk_rows_par(
                    ch,
                    new_sums,
                    |acc, row, r| {
                        if !plan.keep_cell[row] {
                            return;
                        }
                        let b = codes[row];
                        let clip = &fits[b].clip;
                        let st = &mut acc[b];
                        r.for_each(|c, v| {
                            let Some(p) = plan.gene_pos[c as usize] else {
                                return;
                            };
                            let p = p as usize;
                            let e = transform(row, v).min(clip[p]);
                            st.sum[p] += e;
                            st.sumsq[p] += e * e;
                        });
                    },
                    |a, b| {
                        for (x, y) in a.iter_mut().zip(&b) {
                            x.merge(y);
                        }
                    },
                );
                for (x, y) in clipped.iter_mut().zip(&part) {
                    x.merge(y);
                }
                tick("clipped variances", ch.first_row + ch.n_rows())
            })?;
            let norm_vars: Vec<Vec<f64>> = (0..nb)
                .map(|b| {
                    hvg::seurat_v3_norm_var(
                        &fits[b],
                        stats[b].n_cells,
                        &clipped[b].sum,
                        &clipped[b].sumsq,
                    )
                })
                .collect();
            let mut all = hvg::BatchStats::new(nk);
            for s in &stats {
                all.merge(s);
            }
            let (gm, gv) = all.mean_var();
            Ok(hvg::seurat_v3_select(
                &norm_vars,
                gm,
                gv,
                n_top,
                h.batch_key.is_some(),
            ))
        }
        HvgFlavor::Seurat | HvgFlavor::CellRanger => {
            let batched = h.batch_key.is_some();
            let tables = stats
                .iter()
                .map(|s| hvg::dispersion_table(s, flavor, h.n_bins, n_top, batched))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(hvg::dispersion_combine(
                &tables,
                &kept_names,
                n_top,
                batched,
            ))
        }
    }
}

/// Builds a CSR matrix row by row.
struct CsrBuilder {
    n_cols: usize,
    indptr: Vec<u64>,
    indices: Vec<u32>,
    values: Vec<f64>,
}

impl CsrBuilder {
    fn new(n_cols: usize) -> Self {
        Self {
            n_cols,
            indptr: vec![0],
            indices: Vec::new(),
            values: Vec::new(),
        }
    }

    fn push_row(&mut self, idx: &[u32], vals: &[f64]) {
        self.indices.extend_from_slice(idx);
        self.values.extend_from_slice(vals);
        self.indptr.push(self.indices.len() as u64);
    }

    fn finish(self, n_rows: usize, dtype: Dtype) -> Element {
        let v = self.values;
        let data = match dtype {
            Dtype::F64 => ArrayData::F64(v),
            Dtype::I64 => ArrayData::I64(v.iter().map(|&x| x as i64).collect()),
            Dtype::I32 => ArrayData::I32(v.iter().map(|&x| x as i32).collect()),
            Dtype::I16 => ArrayData::I16(v.iter().map(|&x| x as i16).collect()),
            Dtype::I8 => ArrayData::I8(v.iter().map(|&x| x as i8).collect()),
            Dtype::U64 => ArrayData::U64(v.iter().map(|&x| x as u64).collect()),
            Dtype::U32 => ArrayData::U32(v.iter().map(|&x| x as u32).collect()),
            Dtype::U16 => ArrayData::U16(v.iter().map(|&x| x as u16).collect()),
            Dtype::U8 => ArrayData::U8(v.iter().map(|&x| x as u8).collect()),
            Dtype::Bool => ArrayData::Bool(v.iter().map(|&x| x != 0.0).collect()),
            _ => ArrayData::F32(v.iter().map(|&x| x as f32).collect()),
        };
        Element::Sparse(SparseMatrix {
            format: SparseFormat::Csr,
            shape: [n_rows, self.n_cols],
            data,
            indices: self.indices,
            indptr: self.indptr,
        })
    }
}

/// Records what was done in `uns["cellforge"]["preprocess"]`.
fn add_provenance(out: &mut AnnData, opts: &PreprocessOptions, report: &PreprocessReport) {
    let mut p = Mapping::new();
    p.insert(
        "tool".into(),
        Element::String("cellforge preprocess".into()),
    );
    p.insert(
        "version".into(),
        Element::String(env!("CARGO_PKG_VERSION").into()),
    );
    p.insert(
        "input_matrix".into(),
        Element::String(opts.layer.clone().unwrap_or_else(|| "X".into())),
    );
    let mut steps = Vec::new();
    if let Some(m) = opts.filter_genes_min_counts {
        steps.push(format!("filter_genes(min_counts={m})"));
    }
    if let Some(m) = opts.filter_genes_min_cells {
        steps.push(format!("filter_genes(min_cells={m})"));
    }
    if let Some(m) = opts.filter_cells_min_counts {
        steps.push(format!("filter_cells(min_counts={m})"));
    }
    if let Some(m) = opts.filter_cells_min_genes {
        steps.push(format!("filter_cells(min_genes={m})"));
    }
    if let Some(t) = report.target_sum {
        steps.push(format!(
            "normalize_total(target_sum={t}) -> layers[X_normed]"
        ));
    }
    if opts.log1p {
        steps.push("log1p -> layers[X_log1p]".into());
    }
    if let Some(h) = &opts.hvg {
        steps.push(format!(
            "highly_variable_genes(flavor={}, n_top_genes={}, batch_key={}, subset={})",
            h.flavor.name(),
            h.n_top_genes,
            h.batch_key.as_deref().unwrap_or("None"),
            h.subset
        ));
    }
    if let Some(nb) = opts.n_bins {
        steps.push(format!(
            "scGPT binning(n_bins={nb}, seed={}) -> layers[X_binned], obsm[bin_edges]",
            opts.seed
        ));
    }
    p.insert(
        "steps".into(),
        Element::Strings(crate::anndata::StringArray::from_vec(steps)),
    );
    for (key, n) in [
        ("seed", opts.seed as usize),
        ("cells_in", report.cells_in),
        ("genes_in", report.genes_in),
        ("cells_out", report.cells_out),
        ("genes_out", report.genes_out),
        ("all_zero_cells", report.all_zero_cells),
    ] {
        p.insert(key.into(), Element::scalar_i64(n as i64));
    }
    if let Some(t) = report.target_sum {
        p.insert("target_sum".into(), Element::scalar_f64(t));
    }
    if !report.notes.is_empty() {
        p.insert(
            "notes".into(),
            Element::Strings(crate::anndata::StringArray::from_vec(report.notes.clone())),
        );
    }
    out.record_provenance("preprocess", p);
}

/// Preprocesses `input` and writes the result to `output` (a temporary file, then renamed);
/// the input is never opened for writing and must not be the output.
pub fn preprocess_to_file(
    input: &Path,
    output: &Path,
    opts: &PreprocessOptions,
    progress: &mut dyn FnMut(PpProgress) -> std::ops::ControlFlow<()>,
) -> Result<PreprocessReport, PpError> {
    if crate::io::same_file(input, output) {
        return Err(PpError::Input(format!(
            "the output {} is the input file; cellforge never overwrites its input",
            output.display()
        )));
    }
    let (mut out, report) = preprocess_file(input, opts, progress)?;
    add_provenance(&mut out, opts, &report);
    if progress(PpProgress {
        pass: "writing the file",
        rows_done: 0,
        rows_total: report.cells_out,
    })
    .is_break()
    {
        return Err(PpError::Cancelled);
    }
    crate::io::write_h5ad(&out, output, &crate::io::WriteOptions::default())?;
    Ok(report)
}
