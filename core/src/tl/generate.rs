//! Confidence-ordered iterative generation with a generatively pretrained model (scGPT's
//! pcpt/gen attention: generated genes see the known genes and themselves, not each other).
//!
//! A cell starts from a prompt: **known genes** with their (binned) values, or a **cell
//! embedding** placed at position 0 (the cell-prompted pass of pretraining), or both. The
//! genes to generate are predicted together; the most confident `1/K` of those still
//! unknown are then fixed at their predicted values and join the known set, and the rest are
//! predicted again with that larger prompt, `K` rounds in all (`K = 1` is one-shot
//! prediction). A gene's output is the value it had when it was fixed.
//!
//! Confidence of a prediction (selectable, [`Confidence`]):
//! - `Heads`: agreement of the model's two predictors of a gene's value, the expression
//!   decoder on the gene's own output token and the MVC/GEPC decoder on the cell embedding
//!   (`-|expr - mvc|`). One forward pass; needs an MVC head (cellforge's pretraining trains
//!   both). The value used is the expression decoder's.
//! - `Dropout { samples }`: agreement across `samples` forward passes with dropout on
//!   (`-std` over the samples; the value is their mean). Any generative model; `samples`
//!   times the work. Needs an autodiff backend (dropout runs only while training).
//! - `ZeroProb`: certainty of the explicit zero-probability head, `max(p0, 1 - p0)`, for
//!   models with zero-probability heads (the value is the expression decoder's).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::model::ScGpt;
use crate::model::net::ForwardError;

use super::analyze::{Result, ToolError};

/// How the confidence of a predicted value is measured (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidence {
    Heads,
    Dropout { samples: usize },
    ZeroProb,
}

impl std::str::FromStr for Confidence {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "heads" => Ok(Self::Heads),
            "zero-prob" | "zero_prob" => Ok(Self::ZeroProb),
            _ => {
                if let Some(n) = s.strip_prefix("dropout") {
                    let n = n.trim_start_matches([':', '=']);
                    let samples = if n.is_empty() {
                        8
                    } else {
                        n.parse()
                            .map_err(|_| format!("bad dropout sample count in \"{s}\""))?
                    };
                    if samples < 2 {
                        return Err("dropout confidence needs at least 2 samples".into());
                    }
                    Ok(Self::Dropout { samples })
                } else {
                    Err(format!(
                        "unknown confidence \"{s}\" (heads, dropout[:N], zero-prob)"
                    ))
                }
            }
        }
    }
}

impl std::fmt::Display for Confidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Heads => write!(f, "heads"),
            Self::Dropout { samples } => write!(f, "dropout:{samples}"),
            Self::ZeroProb => write!(f, "zero-prob"),
        }
    }
}

/// The confidence measure a model supports best: `Heads` with an MVC head, `ZeroProb` with
/// zero-probability heads, otherwise `Dropout`.
pub fn default_confidence<B: Backend>(model: &ScGpt<B>) -> Confidence {
    if model.mvc_decoder.is_some() {
        Confidence::Heads
    } else if has_zero_prob(model) {
        Confidence::ZeroProb
    } else {
        Confidence::Dropout { samples: 8 }
    }
}

fn has_zero_prob<B: Backend>(model: &ScGpt<B>) -> bool {
    model
        .decoder
        .as_ref()
        .is_some_and(|d| d.zero_logit.is_some())
}

/// One cell to generate.
#[derive(Debug, Clone, Default)]
pub struct GenCell {
    /// Known genes (vocabulary ids) and their values, `<cls>` excluded.
    pub known: Vec<(u32, f32)>,
    /// Genes to generate.
    pub targets: Vec<u32>,
    /// A cell embedding for position 0 (cell prompt); `None`: `<cls>` with its value.
    pub cell_emb: Option<Vec<f32>>,
}

/// What generation produced for one cell, aligned with [`GenCell::targets`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    pub values: Vec<f32>,
    pub confidence: Vec<f32>,
    /// Round (0-based) in which each gene was fixed.
    pub round: Vec<u16>,
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateSettings {
    /// Rounds `K` (1 = one-shot).
    pub rounds: usize,
    pub confidence: Confidence,
    pub cls_id: u32,
    pub cls_value: f32,
    pub pad_id: u32,
    pub pad_value: f32,
    pub batch_size: usize,
}

/// Per-round predictions for a batch: `(value, confidence)` per target position.
type RoundOut = Vec<Vec<(f32, f32)>>;

/// Generates the targets of `cells` with `model`. `progress` receives the cells done.
pub fn generate<B: Backend>(
    model: &ScGpt<B>,
    cells: &[GenCell],
    s: &GenerateSettings,
    device: &B::Device,
    progress: &mut dyn FnMut(usize) -> std::ops::ControlFlow<()>,
) -> Result<Vec<Generated>> {
    if s.rounds == 0 {
        return Err(ToolError::Input("generation needs at least 1 round".into()));
    }
    if model.flag_encoder.is_none() {
        return Err(ToolError::Input(
            "this model has no generative flag embedding: generation needs a model pretrained \
             with the generative objective (`cellforge pretrain`)"
                .into(),
        ));
    }
    match s.confidence {
        Confidence::Heads if model.mvc_decoder.is_none() => {
            return Err(ToolError::Input(
                "confidence \"heads\" needs an MVC (GEPC) head, which this model lacks; use \
                 dropout"
                    .into(),
            ));
        }
        Confidence::ZeroProb if !has_zero_prob(model) => {
            return Err(ToolError::Input(
                "confidence \"zero-prob\" needs explicit zero-probability heads, which this \
                 model lacks"
                    .into(),
            ));
        }
        Confidence::Dropout { .. } if !B::ad_enabled(device) => {
            return Err(ToolError::Input(
                "dropout confidence needs dropout at inference (an autodiff backend)".into(),
            ));
        }
        _ => {}
    }
    let d = model.config().d_model;
    for (i, c) in cells.iter().enumerate() {
        if let Some(e) = &c.cell_emb
            && e.len() != d
        {
            return Err(ToolError::Input(format!(
                "cell {i}: the cell prompt has {} values, the model's embedding {d}",
                e.len()
            )));
        }
    }
    let mut out = Vec::with_capacity(cells.len());
    for (ci, chunk) in cells.chunks(s.batch_size.max(1)).enumerate() {
        out.extend(generate_batch(model, chunk, s, device)?);
        if progress((ci * s.batch_size.max(1) + chunk.len()).min(cells.len())).is_break() {
            return Err(ToolError::Cancelled);
        }
    }
    Ok(out)
}

fn generate_batch<B: Backend>(
    model: &ScGpt<B>,
    cells: &[GenCell],
    s: &GenerateSettings,
    device: &B::Device,
) -> Result<Vec<Generated>> {
    let mut known: Vec<Vec<(u32, f32)>> = cells.iter().map(|c| c.known.clone()).collect();
    // positions (into targets) still unknown
    let mut open: Vec<Vec<usize>> = cells
        .iter()
        .map(|c| (0..c.targets.len()).collect())
        .collect();
    let mut res: Vec<Generated> = cells
        .iter()
        .map(|c| Generated {
            values: vec![0.0; c.targets.len()],
            confidence: vec![0.0; c.targets.len()],
            round: vec![0; c.targets.len()],
        })
        .collect();
    for round in 0..s.rounds {
        if open.iter().all(Vec::is_empty) {
            break;
        }
        let preds = predict_round(model, cells, &known, &open, s, device)?;
        let left = s.rounds - round;
        for (i, p) in preds.into_iter().enumerate() {
            let n_open = open[i].len();
            if n_open == 0 {
                continue;
            }
            // fix the most confident ceil(n_open / left) (all of them in the last round)
            let take = n_open.div_ceil(left);
            let mut order: Vec<usize> = (0..n_open).collect();
            order.sort_by(|&a, &b| p[b].1.total_cmp(&p[a].1).then(a.cmp(&b)));
            let mut fixed = vec![false; n_open];
            for &o in order.iter().take(take) {
                fixed[o] = true;
                let t = open[i][o];
                res[i].values[t] = p[o].0;
                res[i].confidence[t] = p[o].1;
                res[i].round[t] = round as u16;
                known[i].push((cells[i].targets[t], p[o].0));
            }
            let mut k = 0;
            open[i].retain(|_| {
                let keep = !fixed[k];
                k += 1;
                keep
            });
        }
    }
    Ok(res)
}

/// One forward pass (or several, for dropout) over the open targets of every cell.
fn predict_round<B: Backend>(
    model: &ScGpt<B>,
    cells: &[GenCell],
    known: &[Vec<(u32, f32)>],
    open: &[Vec<usize>],
    s: &GenerateSettings,
    device: &B::Device,
) -> Result<RoundOut> {
    let n = cells.len();
    let lp = 1 + known.iter().map(Vec::len).max().unwrap_or(0);
    let lg = open.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut pg = vec![i64::from(s.pad_id); n * lp];
    let mut pv = vec![s.pad_value; n * lp];
    let mut pp = vec![true; n * lp];
    let mut gg = vec![i64::from(s.pad_id); n * lg];
    let mut gp = vec![true; n * lg];
    for i in 0..n {
        pg[i * lp] = i64::from(s.cls_id);
        pv[i * lp] = s.cls_value;
        pp[i * lp] = false;
        for (j, &(g, v)) in known[i].iter().enumerate() {
            pg[i * lp + 1 + j] = i64::from(g);
            pv[i * lp + 1 + j] = v;
            pp[i * lp + 1 + j] = false;
        }
        for (j, &t) in open[i].iter().enumerate() {
            gg[i * lg + j] = i64::from(cells[i].targets[t]);
            gp[i * lg + j] = false;
        }
    }
    let d = model.config().d_model;
    let cell_emb = if cells.iter().any(|c| c.cell_emb.is_some()) {
        // cells without a cell prompt keep <cls>: use their own <cls> row (computed below)
        let mut e = vec![0f32; n * d];
        let mut has = vec![false; n];
        for (i, c) in cells.iter().enumerate() {
            if let Some(v) = &c.cell_emb {
                e[i * d..(i + 1) * d].copy_from_slice(v);
                has[i] = true;
            }
        }
        Some((e, has))
    } else {
        None
    };
    let ints =
        |v: Vec<i64>, l: usize| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [n, l]), device);
    let bools = |v: Vec<bool>, l: usize| {
        Tensor::<B, 2, Bool>::from_data(TensorData::new(v, [n, l]), device)
    };
    let pcpt_src = ints(pg, lp);
    let pcpt_values = Tensor::<B, 2>::from_data(TensorData::new(pv, [n, lp]), device);
    let pcpt_pad = bools(pp, lp);
    let gen_src = ints(gg, lg);
    let gen_pad = bools(gp, lg);
    let input_emb = match &cell_emb {
        None => None,
        Some((e, has)) => {
            let given = Tensor::<B, 2>::from_data(TensorData::new(e.clone(), [n, d]), device);
            if has.iter().all(|&h| h) {
                Some(given)
            } else {
                // rows without a prompt: the <cls> token's own input embedding
                let cls = model.encoder.forward(pcpt_src.clone().slice([0..n, 0..1]));
                let cls = match &model.value_encoder {
                    Some(v) => cls + v.forward(pcpt_values.clone().slice([0..n, 0..1])),
                    None => cls,
                };
                let cls = cls.squeeze_dim::<2>(1);
                let mask = Tensor::<B, 2, Bool>::from_data(
                    TensorData::new(
                        has.iter()
                            .flat_map(|&h| std::iter::repeat_n(h, d))
                            .collect::<Vec<_>>(),
                        [n, d],
                    ),
                    device,
                );
                Some(cls.mask_where(mask, given))
            }
        }
    };
    let samples = match s.confidence {
        Confidence::Dropout { samples } => samples,
        _ => 1,
    };
    let mut runs: Vec<Vec<f32>> = Vec::with_capacity(samples);
    let mut conf_vals: Option<Vec<f32>> = None;
    for _ in 0..samples {
        let o = model.forward_generative(
            pcpt_src.clone(),
            pcpt_values.clone(),
            pcpt_pad.clone(),
            gen_src.clone(),
            gen_pad.clone(),
            input_emb.clone(),
        )?;
        runs.push(host(o.gen_mlm_output.clone())?);
        if samples == 1 {
            conf_vals = Some(match s.confidence {
                Confidence::Heads => {
                    let dec = model
                        .mvc_decoder
                        .as_ref()
                        .ok_or(ForwardError::MissingHead("MVC"))?;
                    let genes = model.encoder.forward(gen_src.clone());
                    let (mvc, _) = dec.forward(o.cell_emb, genes);
                    let mvc = host(mvc)?;
                    runs[0]
                        .iter()
                        .zip(&mvc)
                        .map(|(a, b)| -(a - b).abs())
                        .collect()
                }
                Confidence::ZeroProb => {
                    let dec = model
                        .decoder
                        .as_ref()
                        .ok_or(ForwardError::MissingHead("expression decoder"))?;
                    let (_, zero) = dec.forward(o.gen_output);
                    let zero = zero.ok_or(ForwardError::MissingHead("zero-probability"))?;
                    host(zero)?.iter().map(|&p| p.max(1.0 - p)).collect()
                }
                Confidence::Dropout { .. } => Vec::new(),
            });
        }
    }
    let (values, conf) = if samples > 1 {
        let m = runs[0].len();
        let mut mean = vec![0f32; m];
        let mut conf = vec![0f32; m];
        for j in 0..m {
            let mu = runs.iter().map(|r| f64::from(r[j])).sum::<f64>() / samples as f64;
            let var = runs
                .iter()
                .map(|r| (f64::from(r[j]) - mu).powi(2))
                .sum::<f64>()
                / samples as f64;
            mean[j] = mu as f32;
            conf[j] = -(var.sqrt() as f32);
        }
        (mean, conf)
    } else {
        let v = runs.pop().unwrap_or_default();
        (v, conf_vals.unwrap_or_default())
    };
    Ok((0..n)
        .map(|i| {
            (0..open[i].len())
                .map(|j| (values[i * lg + j], conf[i * lg + j]))
                .collect()
        })
        .collect())
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ToolError::Input(format!("reading predictions: {e:?}")))
}

/// Mean squared error between generated and true values over all targets of all cells.
pub fn generation_mse(out: &[Generated], truth: &[Vec<f32>]) -> f64 {
    let mut sum = 0f64;
    let mut n = 0usize;
    for (g, t) in out.iter().zip(truth) {
        for (a, b) in g.values.iter().zip(t) {
            sum += (f64::from(*a) - f64::from(*b)).powi(2);
            n += 1;
        }
    }
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_confidence() {
        assert_eq!("heads".parse::<Confidence>(), Ok(Confidence::Heads));
        assert_eq!(
            "dropout".parse::<Confidence>(),
            Ok(Confidence::Dropout { samples: 8 })
        );
        assert_eq!(
            "dropout:4".parse::<Confidence>(),
            Ok(Confidence::Dropout { samples: 4 })
        );
        assert!("dropout:1".parse::<Confidence>().is_err());
        assert!("vibes".parse::<Confidence>().is_err());
    }
}

/// What a generation run starts from.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    /// Genes whose values are known (the cell's own values); the cell's other expressed genes
    /// are generated. Empty: every expressed gene is generated.
    pub genes: Vec<String>,
    /// obsm key of a cell embedding to place at position 0 (the cell prompt).
    pub cell_key: Option<String>,
}

/// `cellforge generate`.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub model_dir: std::path::PathBuf,
    pub input: std::path::PathBuf,
    pub output: std::path::PathBuf,
    pub layer: Option<String>,
    pub gene_col: super::embed_job::GeneColumn,
    pub prompt: Prompt,
    pub rounds: usize,
    /// `None`: [`default_confidence`].
    pub confidence: Option<Confidence>,
    /// Most tokens per cell, `<cls>` included (`None`: the model's `max_seq_len`).
    pub max_len: Option<usize>,
    pub batch_size: usize,
    pub seed: u64,
    pub device: crate::device::DeviceRequest,
    pub key_added: String,
}

/// What [`run_generate`] did.
#[derive(Debug, Clone)]
pub struct GenerateSummary {
    pub device: String,
    pub confidence: Confidence,
    pub n_cells: usize,
    pub n_generated: usize,
    pub n_prompt_genes_found: usize,
    pub seconds: f64,
}

/// Runs generation over every cell of a file and writes `layers[key_added]` (the generated
/// values, in bins, at the generated genes) and `layers[key_added + "_confidence"]` into a
/// copy of the input.
pub fn run_generate(
    req: &GenerateRequest,
    progress: &mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>,
) -> Result<GenerateSummary> {
    use crate::anndata::{ArrayData, Element, Mapping, SparseFormat, SparseMatrix};
    use crate::device::{OnAutodiff, OnBackend, dispatch, dispatch_autodiff};
    use crate::model::ModelFiles;
    use crate::train::data::{CellQuery, TokenSettings};

    let start = std::time::Instant::now();
    let files = ModelFiles::open(&req.model_dir)?;
    let cfg = &files.config;
    let tokens = TokenSettings {
        include_zero_genes: false,
        max_len: req.max_len.unwrap_or(cfg.max_seq_len).max(2),
        cls_value: cfg.pad_value,
        n_bins: cfg.n_bins,
        pad_value: cfg.pad_value,
        mask_value: cfg.mask_value,
    };
    let mut adata = super::analyze::read_input(&req.input, &req.output)?;
    let set = CellQuery {
        path: &req.input,
        layer: req.layer.as_deref(),
        gene_col: &req.gene_col,
        vocab: &files.vocab,
        label_key: None,
        batch_key: None,
        fixed_classes: None,
        fixed_batches: None,
        tokens: &tokens,
        seed: req.seed,
        keep_counts: false,
    }
    .read()
    .map_err(|e| ToolError::Input(e.to_string()))?;
    let prompt_ids: std::collections::HashSet<u32> = req
        .prompt
        .genes
        .iter()
        .filter_map(|g| files.vocab.id(g))
        .collect();
    if !req.prompt.genes.is_empty() && prompt_ids.is_empty() {
        return Err(ToolError::Input(format!(
            "none of the {} prompt genes is in the model's vocabulary",
            req.prompt.genes.len()
        )));
    }
    let d = cfg.d_model;
    let cell_embs = match &req.prompt.cell_key {
        None => None,
        Some(key) => {
            let e = adata.obsm.get(key).ok_or_else(|| {
                ToolError::Input(format!(
                    "obsm has no \"{key}\" for the cell prompt; embed the cells with this model \
                     first (`cellforge embed --key-added {key}`)"
                ))
            })?;
            let (v, n, dd) = super::analyze::element_to_dense(e, &format!("obsm[\"{key}\"]"))?;
            if dd != d || n != adata.n_obs() {
                return Err(ToolError::Input(format!(
                    "obsm[\"{key}\"] is {n} x {dd}; the cell prompt needs one {d}-value row per \
                     cell (the model's d_model)"
                )));
            }
            if let Some(p) = v.iter().position(|x| !x.is_finite()) {
                return Err(ToolError::Input(format!(
                    "obsm[\"{key}\"] has a non-finite value in cell {}",
                    p / d
                )));
            }
            Some(v)
        }
    };
    // genes of each cell -> known / targets
    let mut cells = Vec::with_capacity(set.cells.len());
    for i in 0..set.cells.len() {
        let c = set.cells.get(i);
        let mut cell = GenCell::default();
        for (&g, &v) in c.genes.iter().zip(&c.values).skip(1) {
            if prompt_ids.contains(&g) {
                cell.known.push((g, v));
            } else {
                cell.targets.push(g);
            }
        }
        if let Some(e) = &cell_embs {
            let r = set.rows[i];
            cell.cell_emb = Some(e[r * d..(r + 1) * d].to_vec());
        }
        cells.push(cell);
    }
    let n_prompt_genes_found = cells.iter().map(|c| c.known.len()).sum::<usize>();
    let choice = crate::device::choose(req.device).map_err(ToolError::Device)?;
    let pad_id = files
        .pad_id()
        .ok_or_else(|| ToolError::Input("the vocabulary has no padding token".into()))?
        as u32;
    let cls_id = files.vocab.special("<cls>").map_err(ToolError::Input)?;
    let total = cells.len();
    struct Job<'a> {
        files: &'a ModelFiles,
        cells: &'a [GenCell],
        settings: GenerateSettings,
        want: Option<Confidence>,
        progress: &'a mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>,
        total: usize,
    }
    impl Job<'_> {
        fn go<B: Backend>(self, device: &B::Device) -> Result<(Vec<Generated>, Confidence)> {
            let (model, _) = self.files.build::<B>(device)?;
            let mut s = self.settings;
            s.confidence = self.want.unwrap_or_else(|| default_confidence(&model));
            let total = self.total;
            let progress = self.progress;
            let out = generate(&model, self.cells, &s, device, &mut |done| {
                progress(done, total)
            })?;
            Ok((out, s.confidence))
        }
    }
    impl OnBackend for Job<'_> {
        type Output = Result<(Vec<Generated>, Confidence)>;
        fn run<B: Backend>(self, device: &B::Device) -> Self::Output {
            self.go::<B>(device)
        }
    }
    impl OnAutodiff for Job<'_> {
        type Output = Result<(Vec<Generated>, Confidence)>;
        fn run<B: burn::tensor::backend::AutodiffBackend>(
            self,
            device: &B::Device,
        ) -> Self::Output {
            self.go::<B>(device)
        }
    }
    let job = Job {
        files: &files,
        cells: &cells,
        settings: GenerateSettings {
            rounds: req.rounds,
            confidence: Confidence::Heads,
            cls_id,
            cls_value: tokens.cls_value,
            pad_id,
            pad_value: tokens.pad_value,
            batch_size: req.batch_size.max(1),
        },
        want: req.confidence,
        progress,
        total,
    };
    // dropout needs the autodiff backend; the default measure is decided by the model, so
    // ask for it first when none was given
    let wants_dropout = match req.confidence {
        Some(c) => matches!(c, Confidence::Dropout { .. }),
        None => files.config.mvc.is_none() && !files.config.explicit_zero_prob,
    };
    let (out, confidence) = if wants_dropout {
        let job = Job {
            want: Some(req.confidence.unwrap_or(Confidence::Dropout { samples: 8 })),
            ..job
        };
        dispatch_autodiff(choice.backend, job)?
    } else {
        dispatch(choice.backend, job)?
    };

    // write the generated values at (cell, gene) as CSR layers
    let names =
        super::embed_job::gene_names(&adata.var, &req.gene_col).map_err(ToolError::Input)?;
    let matched = files.vocab.match_genes(&names);
    let mut col_of = std::collections::HashMap::new();
    for (c, id) in matched.ids.iter().enumerate() {
        if let Some(id) = id {
            col_of.entry(*id).or_insert(c as u32);
        }
    }
    let n_obs = adata.n_obs();
    let mut per_row: Vec<Vec<(u32, f32, f32)>> = vec![Vec::new(); n_obs];
    let mut n_generated = 0;
    for (i, g) in out.iter().enumerate() {
        let r = set.rows[i];
        for (t, &gene) in cells[i].targets.iter().enumerate() {
            if let Some(&c) = col_of.get(&gene) {
                per_row[r].push((c, g.values[t], g.confidence[t]));
                n_generated += 1;
            }
        }
    }
    let mut indptr = vec![0u64];
    let mut indices = Vec::new();
    let mut vals = Vec::new();
    let mut confs = Vec::new();
    for row in &mut per_row {
        row.sort_by_key(|e| e.0);
        for &(c, v, k) in row.iter() {
            indices.push(c);
            vals.push(v);
            confs.push(k);
        }
        indptr.push(indices.len() as u64);
    }
    let n_vars = adata.n_vars();
    let layer = |data: Vec<f32>| {
        Element::Sparse(SparseMatrix {
            format: SparseFormat::Csr,
            shape: [n_obs, n_vars],
            data: ArrayData::F32(data),
            indices: indices.clone(),
            indptr: indptr.clone(),
        })
    };
    adata.layers.insert(req.key_added.clone(), layer(vals));
    adata
        .layers
        .insert(format!("{}_confidence", req.key_added), layer(confs));
    let mut prov = Mapping::new();
    prov.insert(
        "model".into(),
        Element::String(req.model_dir.display().to_string()),
    );
    prov.insert("rounds".into(), Element::scalar_i64(req.rounds as i64));
    prov.insert("confidence".into(), Element::String(confidence.to_string()));
    prov.insert(
        "prompt_genes".into(),
        Element::Strings(crate::anndata::StringArray::from_vec(
            req.prompt.genes.clone(),
        )),
    );
    if let Some(k) = &req.prompt.cell_key {
        prov.insert("cell_prompt".into(), Element::String(k.clone()));
    }
    prov.insert(
        "values".into(),
        Element::String(format!(
            "expression bins (0-{}) of each cell's expressed genes outside the prompt",
            tokens.n_bins - 1
        )),
    );
    prov.insert("device".into(), Element::String(choice.to_string()));
    adata.record_provenance(&format!("generate_{}", req.key_added), prov);
    super::analyze::write_output(&adata, &req.output)?;
    Ok(GenerateSummary {
        device: choice.to_string(),
        confidence,
        n_cells: total,
        n_generated,
        n_prompt_genes_found,
        seconds: start.elapsed().as_secs_f64(),
    })
}
