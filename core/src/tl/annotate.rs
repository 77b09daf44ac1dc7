//! Cell-type annotation with a fine-tuned model (`annotate`: the classifier head, softmax
//! confidence, "Unknown" below a threshold) and zero-shot reference mapping (`map`: cell
//! embeddings of a labelled reference and a query, majority vote of the k nearest
//! reference cells by cosine similarity, as scGPT's reference-mapping tutorial does).
//! Both write a copy of the query with the labels, their confidence and provenance.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use rayon::prelude::*;

use crate::anndata::{AnnData, ArrayData, Categorical, DenseArray, Element, Mapping};
use crate::device::{DeviceChoice, DeviceRequest, OnBackend, dispatch};
use crate::io::{BackedH5ad, WriteOptions, read_h5ad_with_warnings, write_h5ad};
use crate::model::{Heads, ModelFiles, ModelOutput, ScGpt};
use crate::tokenize::Rng;
use crate::train::TrainError;
use crate::train::data::{CellQuery, CellSet, TokenSettings, host_batch};
use crate::train::finetune::ModelLabels;

use super::embed::{EmbedOptions, embed_backed};
use super::embed_job::{GeneColumn, gene_names};

/// Label given to cells below the confidence threshold or without expressed genes.
pub const UNKNOWN: &str = "Unknown";

/// What an annotation or mapping run reports.
#[derive(Clone, Debug)]
pub enum AnnotateEvent {
    Device(DeviceChoice),
    Progress { done: usize, total: usize },
    Writing,
}

/// How many cells got which label.
#[derive(Clone, Debug)]
pub struct AnnotateSummary {
    pub device: DeviceChoice,
    pub n_cells: usize,
    pub n_unknown: usize,
    pub n_empty: usize,
    pub counts: Vec<(String, usize)>,
    pub seconds: f64,
}

/// `cellforge annotate`.
#[derive(Clone, Debug)]
pub struct AnnotateRequest {
    pub model_dir: PathBuf,
    pub query: PathBuf,
    pub output: PathBuf,
    pub layer: Option<String>,
    pub gene_col: GeneColumn,
    pub key_added: String,
    pub min_confidence: f64,
    pub device: DeviceRequest,
    pub batch_size: usize,
    pub seed: u64,
}

fn same_file_check(input: &std::path::Path, output: &std::path::Path) -> Result<(), TrainError> {
    if crate::io::same_file(input, output) {
        return Err(TrainError::Input(format!(
            "the output {} is the input file; cellforge never overwrites its input",
            output.display()
        )));
    }
    Ok(())
}

/// Run `annotate` to completion.
pub fn run_annotate(
    req: &AnnotateRequest,
    events: &mut dyn FnMut(AnnotateEvent) -> ControlFlow<()>,
) -> Result<AnnotateSummary, TrainError> {
    same_file_check(&req.query, &req.output)?;
    let labels = ModelLabels::read(&req.model_dir)?;
    if labels.classes.is_empty() {
        return Err(TrainError::Input(format!(
            "{} was not trained with a classifier (no classes in labels.json)",
            req.model_dir.display()
        )));
    }
    let files = ModelFiles::open(&req.model_dir)?;
    let choice = crate::device::choose(req.device).map_err(TrainError::Device)?;
    let _ = events(AnnotateEvent::Device(choice.clone()));
    struct Predict<'a> {
        req: &'a AnnotateRequest,
        files: &'a ModelFiles,
        labels: &'a ModelLabels,
        events: &'a mut dyn FnMut(AnnotateEvent) -> ControlFlow<()>,
    }
    impl OnBackend for Predict<'_> {
        type Output = Result<Probabilities, TrainError>;
        fn run<B: Backend>(self, device: &B::Device) -> Self::Output {
            predict::<B>(self.req, self.files, self.labels, device, self.events)
        }
    }
    let job = Predict {
        req,
        files: &files,
        labels: &labels,
        events,
    };
    let probs = dispatch(choice.backend, job)?;
    let start = Instant::now();
    let k = labels.classes.len();
    let mut out_labels = Vec::with_capacity(probs.rows.len());
    let mut confidence = Vec::with_capacity(probs.rows.len());
    let mut n_empty = 0;
    for p in &probs.rows {
        match p {
            Some(p) => {
                let (best, &conf) = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap_or((0, &0.0));
                confidence.push(conf);
                out_labels.push(if f64::from(conf) >= req.min_confidence {
                    labels.classes[best].clone()
                } else {
                    UNKNOWN.to_string()
                });
            }
            None => {
                n_empty += 1;
                confidence.push(0.0);
                out_labels.push(UNKNOWN.to_string());
            }
        }
    }
    let mut matrix = vec![0f32; probs.rows.len() * k];
    for (i, p) in probs.rows.iter().enumerate() {
        if let Some(p) = p {
            matrix[i * k..(i + 1) * k].copy_from_slice(p);
        }
    }
    let mut prov = Mapping::new();
    prov.insert(
        "classes".into(),
        Element::Strings(crate::anndata::StringArray::from_vec(
            labels.classes.clone(),
        )),
    );
    prov.insert(
        "method".into(),
        Element::String("scGPT classifier head (softmax)".into()),
    );
    prov.insert("device".into(), Element::String(probs.device.clone()));
    write_labels(
        None,
        req,
        out_labels,
        confidence,
        Some((matrix, k)),
        prov,
        "annotate",
        events,
        choice,
        n_empty,
        start,
        probs.seconds,
    )
}

/// Writes a copy of the query (`adata`, or the file read again) with the labels, their
/// confidence, optional class probabilities and provenance (model, threshold + `prov`).
#[allow(clippy::too_many_arguments)]
fn write_labels(
    adata: Option<AnnData>,
    req: &AnnotateRequest,
    out_labels: Vec<String>,
    confidence: Vec<f32>,
    probabilities: Option<(Vec<f32>, usize)>,
    prov: Mapping,
    task: &str,
    events: &mut dyn FnMut(AnnotateEvent) -> ControlFlow<()>,
    choice: DeviceChoice,
    n_empty: usize,
    start: Instant,
    seconds_before: f64,
) -> Result<AnnotateSummary, TrainError> {
    let key = req.key_added.as_str();
    let mut adata = match adata {
        Some(a) => a,
        None => {
            read_h5ad_with_warnings(&req.query)
                .map_err(|source| TrainError::Read {
                    path: req.query.display().to_string(),
                    source,
                })?
                .0
        }
    };
    let mut prov = prov;
    prov.insert(
        "model".into(),
        Element::String(req.model_dir.display().to_string()),
    );
    prov.insert(
        "min_confidence".into(),
        Element::scalar_f64(req.min_confidence),
    );
    let n = out_labels.len();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for l in &out_labels {
        *counts.entry(l.clone()).or_default() += 1;
    }
    let n_unknown = counts.get(UNKNOWN).copied().unwrap_or(0);
    let opt: Vec<Option<&str>> = out_labels.iter().map(|s| Some(s.as_str())).collect();
    adata
        .obs
        .set_column(key, Element::Categorical(Categorical::from_labels(&opt)));
    adata.obs.set_column(
        &format!("{key}_confidence"),
        Element::Dense(DenseArray {
            shape: vec![n],
            data: ArrayData::F32(confidence),
        }),
    );
    if let Some((m, k)) = probabilities {
        adata.obsm.insert(
            format!("{key}_probabilities"),
            Element::Dense(DenseArray {
                shape: vec![n, k],
                data: ArrayData::F32(m),
            }),
        );
    }
    adata.record_provenance(&format!("{task}_{key}"), prov);
    let _ = events(AnnotateEvent::Writing);
    write_h5ad(&adata, &req.output, &WriteOptions::default()).map_err(|source| {
        TrainError::Write {
            path: req.output.display().to_string(),
            source,
        }
    })?;
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(AnnotateSummary {
        device: choice,
        n_cells: n,
        n_unknown,
        n_empty,
        counts,
        seconds: seconds_before + start.elapsed().as_secs_f64(),
    })
}

/// Class probabilities per file row (`None`: no expressed vocabulary gene).
struct Probabilities {
    rows: Vec<Option<Vec<f32>>>,
    device: String,
    seconds: f64,
}

fn predict<B: Backend>(
    req: &AnnotateRequest,
    files: &ModelFiles,
    labels: &ModelLabels,
    device: &B::Device,
    events: &mut dyn FnMut(AnnotateEvent) -> ControlFlow<()>,
) -> Result<Probabilities, TrainError> {
    let start = Instant::now();
    let (model, _) = files.build::<B>(device)?;
    let needs_batches = labels.use_batch_labels || !model.dsbn.is_empty();
    let batch_key = labels.batch_key.as_deref().filter(|_| needs_batches);
    let set = CellQuery {
        path: &req.query,
        layer: req.layer.as_deref(),
        gene_col: &req.gene_col,
        vocab: &files.vocab,
        label_key: None,
        batch_key,
        fixed_classes: None,
        fixed_batches: Some(&labels.batches),
        tokens: &labels.tokens,
        seed: req.seed,
        keep_counts: false,
    }
    .read()?;
    if let Some(key) = batch_key
        && let Some(i) = set.batches.iter().position(Option::is_none)
    {
        return Err(TrainError::Input(format!(
            "this model was trained with batch labels from \"{key}\" ({}); cell {} of the query \
             has a batch the model does not know or none",
            labels.batches.join(", "),
            set.rows[i]
        )));
    }
    let pad_id = files
        .vocab
        .special(&files.config.pad_token)
        .map_err(TrainError::Input)?;
    let mut rows = vec![None; set.n_rows];
    let k = labels.classes.len();
    let heads = Heads {
        cls: true,
        mvc: false,
    };
    forward_set(
        &model,
        &set,
        &labels.tokens,
        pad_id,
        labels.use_batch_labels,
        req.batch_size,
        heads,
        device,
        &mut |idx, out, done| {
            let logits = out
                .cls_output
                .ok_or(crate::model::ForwardError::MissingHead("classifier"))?;
            let p: Vec<f32> = softmax(logits, 1)
                .into_data()
                .convert::<f32>()
                .into_vec()
                .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
            for (j, &i) in idx.iter().enumerate() {
                rows[set.rows[i]] = Some(p[j * k..(j + 1) * k].to_vec());
            }
            if events(AnnotateEvent::Progress {
                done,
                total: set.cells.len(),
            })
            .is_break()
            {
                return Err(TrainError::Cancelled);
            }
            Ok(())
        },
    )?;
    Ok(Probabilities {
        rows,
        device: std::any::type_name::<B>().to_string(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Called per minibatch with the set's cell indices, the model output and the cells done.
pub type EachBatch<'a, B> =
    dyn FnMut(&[usize], ModelOutput<B>, usize) -> Result<(), TrainError> + 'a;

/// Runs the evaluation-mode model over every cell of `set` in minibatches of similar
/// length (one batch label each, for DSBN), calling `each(cells, output, cells_done)`.
#[allow(clippy::too_many_arguments)]
pub fn forward_set<B: Backend>(
    model: &ScGpt<B>,
    set: &CellSet,
    tokens: &TokenSettings,
    pad_id: u32,
    use_batch_labels: bool,
    batch_size: usize,
    heads: Heads,
    device: &B::Device,
    each: &mut EachBatch<'_, B>,
) -> Result<(), TrainError> {
    let mut order: Vec<usize> = (0..set.cells.len()).collect();
    order.sort_by_key(|&i| (set.batches[i], std::cmp::Reverse(set.cells.cell_len(i))));
    let groups: Vec<Vec<usize>> = order
        .chunk_by(|a, b| set.batches[*a] == set.batches[*b])
        .flat_map(|g| {
            g.chunks(batch_size.max(1))
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut done = 0;
    for idx in groups {
        let mut rng = Rng::new(0);
        let host = host_batch(set, &idx, tokens, pad_id, 0.0, None, &mut rng);
        let tb = host.to_device::<B>(pad_id, use_batch_labels, device);
        let out = model.forward(&tb.tokens, heads)?;
        done += idx.len();
        each(&idx, out, done)?;
    }
    Ok(())
}

/// L2-normalised cell embeddings of every cell of `set`, row-major `[set.n_rows, d]` in file
/// order (zero rows for cells without expressed genes). Unlike `embed`, batch labels reach
/// the model, so models with batch tokens or DSBN embed as they were trained.
#[allow(clippy::too_many_arguments)]
pub fn embed_set<B: Backend>(
    model: &ScGpt<B>,
    set: &CellSet,
    tokens: &TokenSettings,
    pad_id: u32,
    use_batch_labels: bool,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f32>, TrainError> {
    let d = model.config().d_model;
    let mut out = vec![0f32; set.n_rows * d];
    forward_set(
        model,
        set,
        tokens,
        pad_id,
        use_batch_labels,
        batch_size,
        Heads::default(),
        device,
        &mut |idx, o, _| {
            let e: Vec<f32> = crate::model::net::l2_normalize(o.cell_emb)
                .into_data()
                .convert::<f32>()
                .into_vec()
                .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
            for (j, &i) in idx.iter().enumerate() {
                let r = set.rows[i];
                out[r * d..(r + 1) * d].copy_from_slice(&e[j * d..(j + 1) * d]);
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// `cellforge map`.
#[derive(Clone, Debug)]
pub struct MapRequest {
    pub reference: PathBuf,
    pub label_key: String,
    /// Settings for the query side (query, output, model, gene column, device, key).
    pub query: AnnotateRequest,
    pub k: usize,
    pub max_length: usize,
}

/// Majority vote of the `k` most cosine-similar reference cells for each query cell.
/// Embeddings are row-major `[n, d]` and L2-normalised (zero rows are cells without
/// genes). Returns `(reference row index of the winning label, vote fraction)`; ties go to
/// the label with the larger summed similarity.
pub fn knn_vote(
    reference: &[f32],
    ref_labels: &[Option<u32>],
    query: &[f32],
    d: usize,
    k: usize,
) -> Vec<Option<(u32, f32)>> {
    let n_ref = ref_labels.len();
    let usable: Vec<usize> = (0..n_ref)
        .filter(|&i| {
            ref_labels[i].is_some() && reference[i * d..(i + 1) * d].iter().any(|&x| x != 0.0)
        })
        .collect();
    let k = k.max(1).min(usable.len().max(1));
    query
        .par_chunks(d.max(1))
        .map(|q| {
            if usable.is_empty() || q.iter().all(|&x| x == 0.0) {
                return None;
            }
            let mut sims: Vec<(f32, usize)> = usable
                .iter()
                .map(|&i| {
                    let r = &reference[i * d..(i + 1) * d];
                    (q.iter().zip(r).map(|(a, b)| a * b).sum::<f32>(), i)
                })
                .collect();
            let kth = k - 1;
            sims.select_nth_unstable_by(kth, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut tally: std::collections::BTreeMap<u32, (usize, f32)> = Default::default();
            for &(s, i) in &sims[..k] {
                if let Some(l) = ref_labels[i] {
                    let e = tally.entry(l).or_default();
                    e.0 += 1;
                    e.1 += s;
                }
            }
            tally
                .into_iter()
                .max_by(|a, b| a.1.0.cmp(&b.1.0).then(a.1.1.total_cmp(&b.1.1)))
                .map(|(l, (votes, _))| (l, votes as f32 / k as f32))
        })
        .collect()
}

/// Embeddings of the reference and the query with one model, and the reference's labels.
struct MapEmbeddings {
    reference: Vec<f32>,
    query: Vec<f32>,
    d: usize,
    ref_labels: Vec<Option<u32>>,
    label_names: Vec<String>,
}

/// Builds the model once and embeds both files; the label column is checked before the
/// query is embedded.
struct MapEmbed<'a> {
    req: &'a MapRequest,
    files: &'a ModelFiles,
    opts: EmbedOptions,
    events: &'a mut dyn FnMut(AnnotateEvent) -> ControlFlow<()>,
}

impl OnBackend for MapEmbed<'_> {
    type Output = Result<MapEmbeddings, TrainError>;

    fn run<B: Backend>(self, device: &B::Device) -> Self::Output {
        let MapEmbed {
            req,
            files,
            opts,
            events,
        } = self;
        let q = &req.query;
        let (model, _) = files.build::<B>(device)?;
        let mut embed =
            |path: &std::path::Path| -> Result<(Vec<f32>, usize, BackedH5ad), TrainError> {
                let backed = BackedH5ad::open_matrix(
                    path,
                    &crate::train::data::matrix_path(q.layer.as_deref()),
                )
                .map_err(|source| TrainError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let names = gene_names(&backed.var, &q.gene_col).map_err(|e| {
                    TrainError::Input(format!("--gene-col {}: {e}", q.gene_col.name()))
                })?;
                let ids = files.vocab.match_genes(&names).ids;
                let res = embed_backed(
                    &model,
                    device,
                    &files.vocab,
                    &backed,
                    &ids,
                    &opts,
                    &mut |p| {
                        events(AnnotateEvent::Progress {
                            done: p.cells_done,
                            total: p.cells_total,
                        })
                    },
                )
                .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
                Ok((res.embeddings, res.d_model, backed))
            };
        let (reference, d, ref_backed) = embed(&req.reference)?;
        let cat = ref_backed
            .obs
            .categorical(&req.label_key)
            .map_err(|e| TrainError::Input(format!("--label-key: {e}")))?;
        let label_names = cat.category_labels();
        let ref_labels = cat
            .codes
            .iter()
            .map(|&c| {
                u32::try_from(c)
                    .ok()
                    .filter(|&c| (c as usize) < label_names.len())
            })
            .collect();
        let (query, _, _) = embed(&q.query)?;
        Ok(MapEmbeddings {
            reference,
            query,
            d,
            ref_labels,
            label_names,
        })
    }
}

/// Run `map` to completion.
pub fn run_map(
    req: &MapRequest,
    events: &mut dyn FnMut(AnnotateEvent) -> ControlFlow<()>,
) -> Result<AnnotateSummary, TrainError> {
    let q = &req.query;
    same_file_check(&q.query, &q.output)?;
    same_file_check(&req.reference, &q.output)?;
    let files = ModelFiles::open(&q.model_dir)?;
    let choice = crate::device::choose(q.device).map_err(TrainError::Device)?;
    let _ = events(AnnotateEvent::Device(choice.clone()));
    let opts = EmbedOptions {
        max_length: req.max_length.max(2),
        batch_size: q.batch_size.max(1),
        seed: q.seed,
        ..EmbedOptions::default()
    };
    let start = Instant::now();
    let job = MapEmbed {
        req,
        files: &files,
        opts,
        events,
    };
    let MapEmbeddings {
        reference: ref_emb,
        query: query_emb,
        d,
        ref_labels,
        label_names: names,
    } = dispatch(choice.backend, job)?;
    let votes = knn_vote(&ref_emb, &ref_labels, &query_emb, d, req.k);
    let n_empty = votes.iter().filter(|v| v.is_none()).count();
    let mut out_labels = Vec::with_capacity(votes.len());
    let mut confidence = Vec::with_capacity(votes.len());
    for v in &votes {
        match v {
            Some((l, c)) if f64::from(*c) >= q.min_confidence => {
                out_labels.push(names[*l as usize].clone());
                confidence.push(*c);
            }
            Some((_, c)) => {
                out_labels.push(UNKNOWN.to_string());
                confidence.push(*c);
            }
            None => {
                out_labels.push(UNKNOWN.to_string());
                confidence.push(0.0);
            }
        }
    }
    let (mut adata, _) = read_h5ad_with_warnings(&q.query).map_err(|source| TrainError::Read {
        path: q.query.display().to_string(),
        source,
    })?;
    let n = adata.n_obs();
    adata.obsm.insert(
        "X_scGPT".into(),
        Element::Dense(DenseArray {
            shape: vec![n, d],
            data: ArrayData::F32(query_emb),
        }),
    );
    let mut prov = Mapping::new();
    prov.insert(
        "reference".into(),
        Element::String(req.reference.display().to_string()),
    );
    prov.insert("label_key".into(), Element::String(req.label_key.clone()));
    prov.insert("k".into(), Element::scalar_i64(req.k as i64));
    prov.insert(
        "method".into(),
        Element::String("kNN majority vote on L2-normalised scGPT cell embeddings (cosine)".into()),
    );
    write_labels(
        Some(adata),
        q,
        out_labels,
        confidence,
        None,
        prov,
        "map",
        events,
        choice,
        n_empty,
        start,
        0.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_vote_majority_and_ties() {
        // 2-d unit vectors: three "a" near (1,0), two "b" near (0,1).
        let r = [1.0, 0.0, 0.99, 0.14, 0.98, 0.2, 0.0, 1.0, 0.14, 0.99];
        let labels = [Some(0), Some(0), Some(0), Some(1), Some(1)];
        let q = [0.9, 0.43, 0.0, 1.0, 0.0, 0.0];
        let v = knn_vote(&r, &labels, &q, 2, 3);
        assert_eq!(v[0], Some((0, 1.0)));
        assert_eq!(v[1].map(|x| x.0), Some(1));
        assert!((v[1].map(|x| x.1).unwrap_or(0.0) - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(v[2], None, "an empty query cell gets no vote");
    }
}
