//! Does the training engine learn on real data? An evaluation run that prints tables:
//!
//! 1. Symphony PBMCs (`symphony_pbmcs_small.h5ad`), reference = chemistries 3pv2 + 5p,
//!    query = 3pv1, label `cell_type`:
//!    (a) a small scGPT-architecture model pretrained by cellforge (generative objective) on
//!    the available counts (symphony + harmony), then fine-tuned with CLS on the
//!    reference (every expressed gene, class-balanced loss, mean-pooled cell; see the
//!    environment below for scGPT's plain recipe), annotating the query;
//!    (b) zero-shot kNN mapping (k = 10) with the pretrained model's embeddings;
//!    (c) CellTypist-style logistic regression on log1p CP10k (scikit-learn, run by
//!    `scripts/bench/annotation_baselines.py` in the same run).
//!    Accuracy and macro F1 of each, side by side.
//! 2. pbmc68k_reduced `bulk_labels`, stratified 5-fold (the baseline script's folds): the
//!    same pretrained model fine-tuned per fold, against the same logistic regression.
//! 3. Integration on symphony's three chemistries: AvgBIO / AvgBATCH of the pretrained
//!    model's embedding, and after fine-tuning with batch tokens + DSBN + DAR + ECS (+ GEP,
//!    GEPC), by cellforge's metrics and by scib on the same embeddings
//!    (`scripts/bench/scib_metrics.py`).
//!
//! Run: `cargo bench -p cellforge-core --bench annotation`. Environment (optional):
//! `BENCH_D_MODEL` (64), `BENCH_LAYERS` (4), `BENCH_HEADS` (4), `BENCH_PRE_EPOCHS` (15),
//! `BENCH_FT_EPOCHS` (15), `BENCH_FT_LR` (1e-3), `BENCH_MAX_LEN` (256, pretraining and zero-shot mapping),
//! `BENCH_FT_MAX_LEN` (3001, i.e. every expressed gene: the annotation fine-tunes; the
//! integration fine-tune uses `BENCH_MAX_LEN`), `BENCH_PRETRAINED` (a model folder an
//! earlier run pretrained on the same corpus, reused instead of pretraining), `BENCH_BALANCE`
//! (`0`: plain CLS loss; default class-balanced), `BENCH_CELL_EMB` (`avg-pool` default,
//! `cls`, `w-pool`: how the classifier reads the cell), `BENCH_AUGMENT_DEPTH` (the
//! symphony fine-tune's `--augment-depth`, 0.15; `0` off), `BENCH_FT_VALID` (the annotation
//! fine-tunes' validation fraction, 0.1), `BENCH_PBMC_OWN_PRETRAIN` (`1`:
//! pretrain pbmc68k's own model), `BENCH_SKIP` (comma list of `symphony`,
//! `pbmc68k`, `integration`), `BENCH_DIR` (default `<repo>/target/bench-data/annotation`),
//! `CELLFORGE_SHARED_DATA`, `CELLFORGE_PYTHON` (default `<repo>/.venv/bin/python`).

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cellforge_core::analysis::DenseMatrix;
use cellforge_core::analysis::integration::{IntegrationOptions, integration_metrics};
use cellforge_core::analysis::metrics::classification_report;
use cellforge_core::anndata::{AnnData, ArrayData, DenseArray, Element};
use cellforge_core::device::DeviceRequest;
use cellforge_core::io::{WriteOptions, read_h5ad, write_h5ad};
use cellforge_core::model::{CellEmbStyle, ModelFiles};
use cellforge_core::tl::annotate::{AnnotateRequest, MapRequest, embed_set, run_annotate, run_map};
use cellforge_core::tl::embed_job::GeneColumn;
use cellforge_core::train::data::{CellQuery, TokenSettings};
use cellforge_core::train::finetune::{FinetuneRequest, ModelLabels, run_finetune};
use cellforge_core::train::pretrain::{
    GenerativeSettings, ModelSize, PretrainRequest, run_pretrain,
};
use cellforge_core::train::{Objectives, ScheduleSpec, TrainConfig, TrainEvent};
use common::{env_usize, python, repo, shared, skip};

/// Prints a line per epoch (validation) and a step line every 20 s.
fn printer(tag: &str) -> impl FnMut(TrainEvent) -> ControlFlow<()> + '_ {
    let mut last = Instant::now();
    move |e| {
        match e {
            TrainEvent::Validation(v) => eprintln!(
                "  [{tag}] epoch {}: validation loss {:.4}{}",
                v.epoch + 1,
                v.loss,
                v.accuracy
                    .map(|a| format!(
                        ", accuracy {a:.3}, macro F1 {:.3}",
                        v.macro_f1.unwrap_or(0.0)
                    ))
                    .unwrap_or_default()
            ),
            TrainEvent::Step(s) if last.elapsed().as_secs() >= 20 => {
                last = Instant::now();
                eprintln!(
                    "  [{tag}] step {}/{}: loss {:.4}, {:.1} cells/s, ETA {:.0} s",
                    s.step,
                    s.total_steps,
                    s.losses.last().map_or(0.0, |l| l.1),
                    s.cells_per_s,
                    s.eta_s
                );
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

struct Settings {
    size: ModelSize,
    pre_epochs: usize,
    ft_epochs: usize,
    /// Tokens per cell when pretraining (and for zero-shot mapping).
    max_len: usize,
    /// Tokens per cell when fine-tuning and annotating.
    ft_max_len: usize,
    /// Fine-tuning learning rate.
    ft_lr: f64,
    /// Class-balanced CLS loss.
    balance: bool,
    /// How the classifier reads the cell.
    cell_emb: CellEmbStyle,
    /// Depth augmentation of the annotation fine-tunes that read counts (symphony).
    augment_depth: Option<f64>,
    /// Validation fraction of the annotation fine-tunes (0: every reference cell trains and
    /// the last epoch is kept).
    ft_valid: f64,
}

fn train_config(epochs: usize, lr: f64, generative: bool, max_len: usize) -> TrainConfig {
    let base = if generative {
        TrainConfig {
            schedule: ScheduleSpec::Cosine {
                warmup_fraction: 0.05,
            },
            generative: Some(GenerativeSettings {
                cell_prompt_after: Some(300),
                ..GenerativeSettings::default()
            }),
            ..TrainConfig::pretrain_recipe()
        }
    } else {
        TrainConfig::finetune_recipe()
    };
    TrainConfig {
        epochs,
        lr,
        tokens: TokenSettings {
            max_len,
            ..base.tokens.clone()
        },
        ..base
    }
}

fn pretrain(s: &Settings, corpus: Vec<PathBuf>, layer: Option<&str>, out: &Path) -> f64 {
    let t = Instant::now();
    let req = PretrainRequest {
        corpus,
        layer: layer.map(String::from),
        gene_col: GeneColumn::Index,
        output: out.to_path_buf(),
        device: DeviceRequest::Cpu,
        size: s.size.clone(),
        vocab: None,
        config: train_config(s.pre_epochs, 1e-3, true, s.max_len),
        validation_fraction: 0.05,
        resume: false,
        token_cache: false,
    };
    let mut p = printer("pretrain");
    let r = run_pretrain(&req, &mut |e| match e {
        cellforge_core::train::pretrain::PretrainEvent::Train(t) => p(t),
        _ => ControlFlow::Continue(()),
    })
    .expect("pretrain");
    eprintln!(
        "  pretrained {} parameters on {} cells, {} steps, {:.0} s",
        r.parameters,
        r.n_train,
        r.history.steps,
        t.elapsed().as_secs_f64()
    );
    t.elapsed().as_secs_f64()
}

#[allow(clippy::too_many_arguments)]
fn finetune(
    s: &Settings,
    reference: &Path,
    layer: Option<&str>,
    model: &Path,
    out: &Path,
    objectives: Objectives,
    batch_key: Option<&str>,
    integration: bool,
) -> f64 {
    let t = Instant::now();
    // the integration fine-tune keeps the pretraining length (as in the first round)
    let max_len = if integration { s.max_len } else { s.ft_max_len };
    let mut cfg = train_config(s.ft_epochs, s.ft_lr, false, max_len);
    cfg.objectives = objectives;
    // thinning needs counts: symphony's counts layer, not pbmc68k's log-normalised raw
    if !integration && layer == Some("counts") {
        cfg.augment_depth = s.augment_depth;
    }
    if integration {
        cfg.mask_ratio = 0.4;
        cfg.use_batch_labels = true;
        cfg.by_batch = true;
    }
    let req = FinetuneRequest {
        reference: reference.to_path_buf(),
        layer: layer.map(String::from),
        gene_col: GeneColumn::Index,
        label_key: (!integration).then(|| "cell_type".to_string()),
        batch_key: batch_key.map(String::from),
        model_dir: model.to_path_buf(),
        output: out.to_path_buf(),
        device: DeviceRequest::Cpu,
        config: cfg,
        validation_fraction: if integration { 0.1 } else { s.ft_valid },
        resume: false,
        dsbn: integration,
        explicit_zero_prob: integration,
        balance_classes: s.balance,
        cell_emb: (!integration).then_some(s.cell_emb),
        dropout: 0.2,
    };
    let mut p = printer("finetune");
    run_finetune(&req, &mut |e| match e {
        cellforge_core::train::finetune::FinetuneEvent::Train(t) => p(t),
        _ => ControlFlow::Continue(()),
    })
    .expect("finetune");
    t.elapsed().as_secs_f64()
}

/// Accuracy and macro F1 of obs[key] of `out` against obs[truth] of `truth_file`.
fn score(out: &Path, key: &str, truth_file: &Path, truth: &str) -> (f64, f64) {
    let a = read_h5ad(out).expect("read output");
    let t = read_h5ad(truth_file).expect("read truth");
    let pred = a.obs.categorical(key).expect("labels").labels();
    let want = t.obs.categorical(truth).expect("truth").labels();
    let mut names: Vec<String> = pred.iter().chain(&want).flatten().cloned().collect();
    names.sort();
    names.dedup();
    let code = |l: &Option<String>| {
        names
            .iter()
            .position(|n| Some(n) == l.as_ref())
            .unwrap_or(0) as u32
    };
    let p: Vec<u32> = pred.iter().map(code).collect();
    let w: Vec<u32> = want.iter().map(code).collect();
    let r = classification_report(&w, &p).expect("report");
    (r.accuracy, r.macro_f1)
}

/// Label `query` into obs["pred"] of `out`, no confidence threshold, on the CPU.
fn query_request(model: &Path, query: &Path, out: &Path, layer: Option<&str>) -> AnnotateRequest {
    AnnotateRequest {
        model_dir: model.to_path_buf(),
        query: query.to_path_buf(),
        output: out.to_path_buf(),
        layer: layer.map(String::from),
        gene_col: GeneColumn::Index,
        key_added: "pred".into(),
        min_confidence: 0.0,
        device: DeviceRequest::Cpu,
        batch_size: 64,
        seed: 0,
    }
}

fn annotate(model: &Path, query: &Path, out: &Path, layer: Option<&str>) {
    let req = query_request(model, query, out, layer);
    run_annotate(&req, &mut |_| ControlFlow::Continue(())).expect("annotate");
}

fn map(
    model: &Path,
    reference: &Path,
    query: &Path,
    out: &Path,
    layer: Option<&str>,
    max_len: usize,
) {
    let req = MapRequest {
        reference: reference.to_path_buf(),
        label_key: "cell_type".into(),
        query: query_request(model, query, out, layer),
        k: 10,
        max_length: max_len,
    };
    run_map(&req, &mut |_| ControlFlow::Continue(())).expect("map");
}

fn write_subset(adata: &AnnData, rows: &[usize], path: &Path) {
    let (sub, _) = adata.subset(Some(rows), None);
    write_h5ad(&sub, path, &WriteOptions::default()).expect("write subset");
}

fn baselines(dir: &Path) -> serde_json::Value {
    let out = dir.join("baselines.json");
    let st = Command::new(python())
        .arg(repo().join("scripts/bench/annotation_baselines.py"))
        .arg("--data-dir")
        .arg(shared())
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run annotation_baselines.py");
    assert!(st.success(), "annotation_baselines.py failed");
    serde_json::from_str(&std::fs::read_to_string(&out).expect("read baselines")).expect("json")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

fn row(name: &str, acc: f64, f1: f64, note: &str) {
    println!("| {name} | {acc:.4} | {f1:.4} | {note} |");
}

fn main() {
    cellforge_core::sys::tune_allocator();
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/bench-data/annotation"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let d = env_usize("BENCH_D_MODEL", 64);
    let s = Settings {
        size: ModelSize {
            d_model: d,
            nlayers: env_usize("BENCH_LAYERS", 4),
            nhead: env_usize("BENCH_HEADS", 4),
            d_hid: d,
            dropout: 0.1,
        },
        pre_epochs: env_usize("BENCH_PRE_EPOCHS", 15),
        ft_epochs: env_usize("BENCH_FT_EPOCHS", 15),
        max_len: env_usize("BENCH_MAX_LEN", 256),
        // scGPT's annotation recipe: every expressed gene (its max_seq_len is 3001)
        ft_max_len: env_usize("BENCH_FT_MAX_LEN", 3001),
        ft_lr: std::env::var("BENCH_FT_LR")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1e-3),
        balance: std::env::var("BENCH_BALANCE").map_or(true, |v| v != "0"),
        cell_emb: std::env::var("BENCH_CELL_EMB").map_or(CellEmbStyle::AvgPool, |v| {
            CellEmbStyle::from_name(&v).expect("BENCH_CELL_EMB: cls, avg-pool or w-pool")
        }),
        augment_depth: match std::env::var("BENCH_AUGMENT_DEPTH") {
            Ok(v) if v == "0" => None,
            Ok(v) => Some(
                v.parse()
                    .expect("BENCH_AUGMENT_DEPTH: a fraction in (0, 1]"),
            ),
            Err(_) => None,
        },
        ft_valid: std::env::var("BENCH_FT_VALID")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.1),
    };
    println!(
        "model: d_model {}, {} layers, {} heads; pretrain {} epochs (max_len {}), fine-tune {} epochs (max_len {}, lr {}, balanced {}, {:?}, depth augmentation {:?}, validation {}), CPU ({} threads)",
        d,
        s.size.nlayers,
        s.size.nhead,
        s.pre_epochs,
        s.max_len,
        s.ft_epochs,
        s.ft_max_len,
        s.ft_lr,
        s.balance,
        s.cell_emb,
        s.augment_depth,
        s.ft_valid,
        rayon::current_num_threads()
    );
    let t0 = Instant::now();
    let base = baselines(&dir);
    let sym_path = shared().join("symphony_pbmcs_small.h5ad");
    let sym = read_h5ad(&sym_path).expect("read symphony");

    // Pretraining corpus: every available count matrix.
    let pre = dir.join("pretrained");
    let corpus_dir = dir.join("corpus");
    std::fs::create_dir_all(&corpus_dir).expect("corpus dir");
    {
        // symphony's counts layer as X, so one corpus reads X from both files
        let mut c = sym.clone();
        if let Some(counts) = c.layers.remove("counts") {
            c.x = Some(counts);
        }
        write_h5ad(
            &c,
            &corpus_dir.join("symphony_counts.h5ad"),
            &WriteOptions::default(),
        )
        .expect("write corpus");
        std::fs::copy(
            shared().join("harmony_pbmc_stim.h5ad"),
            corpus_dir.join("harmony_counts.h5ad"),
        )
        .expect("copy harmony");
    }
    // BENCH_PRETRAINED reuses a model an earlier run pretrained on the same corpus.
    let pre_s = match std::env::var_os("BENCH_PRETRAINED") {
        Some(p) => {
            copy_dir(Path::new(&p), &pre);
            0.0
        }
        None => pretrain(&s, vec![corpus_dir.clone()], None, &pre),
    };

    if !skip("symphony") {
        let donors = sym.obs.categorical("donor").expect("donor").labels();
        let ref_rows: Vec<usize> = (0..sym.n_obs())
            .filter(|&i| donors[i].as_deref() != Some("3pv1"))
            .collect();
        let query_rows: Vec<usize> = (0..sym.n_obs())
            .filter(|&i| donors[i].as_deref() == Some("3pv1"))
            .collect();
        let reference = dir.join("sym_ref.h5ad");
        let query = dir.join("sym_query.h5ad");
        write_subset(&sym, &ref_rows, &reference);
        write_subset(&sym, &query_rows, &query);
        let ft = dir.join("sym_ft");
        let ft_s = finetune(
            &s,
            &reference,
            Some("counts"),
            &pre,
            &ft,
            Objectives::default(),
            None,
            false,
        );
        let out = dir.join("sym_annotated.h5ad");
        annotate(&ft, &query, &out, Some("counts"));
        let (acc, f1) = score(&out, "pred", &query, "cell_type");
        let mapped = dir.join("sym_mapped.h5ad");
        map(&pre, &reference, &query, &mapped, Some("counts"), s.max_len);
        let (macc, mf1) = score(&mapped, "pred", &query, "cell_type");
        let lr = &base["symphony"]["methods"]["celltypist_lr"];
        let (lacc, lf1) = (
            lr["accuracy"].as_f64().unwrap_or(f64::NAN),
            lr["macro_f1"].as_f64().unwrap_or(f64::NAN),
        );
        println!();
        println!(
            "symphony: reference 3pv2 + 5p ({} cells), query 3pv1 ({} cells), cell_type",
            ref_rows.len(),
            query_rows.len()
        );
        println!("| method | accuracy | macro F1 | notes |");
        println!("|---|---|---|---|");
        row(
            "(a) cellforge pretrain + fine-tune (CLS)",
            acc,
            f1,
            &format!("pretrain {pre_s:.0} s, fine-tune {ft_s:.0} s"),
        );
        row(
            "(b) cellforge zero-shot kNN map (k=10)",
            macc,
            mf1,
            "pretrained embeddings",
        );
        row(
            "(c) logistic regression (CellTypist-style)",
            lacc,
            lf1,
            "scikit-learn, log1p CP10k",
        );
        println!("fine-tuned macro F1 / logistic regression: {:.3}", f1 / lf1);
    }

    if !skip("pbmc68k") {
        let path = shared().join("pbmc68k_reduced.h5ad");
        let pb = read_h5ad(&path).expect("read pbmc68k");
        let folds: Vec<u64> = base["pbmc68k"]["fold_of_cell"]
            .as_array()
            .expect("folds")
            .iter()
            .map(|v| v.as_u64().unwrap_or(0))
            .collect();
        let mut c = pb.clone();
        c.obs.set_column(
            "cell_type",
            c.obs.column("bulk_labels").expect("bulk_labels").clone(),
        );
        let pb_file = dir.join("pbmc68k.h5ad");
        write_h5ad(&c, &pb_file, &WriteOptions::default()).expect("write pbmc");
        // The model pretrained on the count corpus (742 of pbmc68k's 765 genes are in its
        // vocabulary); BENCH_PBMC_OWN_PRETRAIN=1 pretrains one on pbmc68k's own 700
        // log-normalised cells instead (raw/X: X is scaled, with negative values).
        let (pre_pb, pre_note) = if std::env::var("BENCH_PBMC_OWN_PRETRAIN").is_ok_and(|v| v == "1")
        {
            let p = dir.join("pbmc_pretrained");
            let t = pretrain(&s, vec![pb_file.clone()], Some("raw"), &p);
            (p, format!("pretrained on pbmc68k's 700 cells ({t:.0} s)"))
        } else {
            (
                pre.clone(),
                "the count corpus' pretrained model".to_string(),
            )
        };
        let (mut accs, mut f1s) = (Vec::new(), Vec::new());
        for f in 0..5u64 {
            let train: Vec<usize> = (0..folds.len()).filter(|&i| folds[i] != f).collect();
            let test: Vec<usize> = (0..folds.len()).filter(|&i| folds[i] == f).collect();
            let tr = dir.join(format!("pbmc_train{f}.h5ad"));
            let te = dir.join(format!("pbmc_test{f}.h5ad"));
            write_subset(&c, &train, &tr);
            write_subset(&c, &test, &te);
            let ft = dir.join(format!("pbmc_ft{f}"));
            finetune(
                &s,
                &tr,
                Some("raw"),
                &pre_pb,
                &ft,
                Objectives::default(),
                None,
                false,
            );
            let out = dir.join(format!("pbmc_annot{f}.h5ad"));
            annotate(&ft, &te, &out, Some("raw"));
            let (a, f1) = score(&out, "pred", &te, "cell_type");
            eprintln!("  fold {f}: accuracy {a:.4}, macro F1 {f1:.4}");
            accs.push(a);
            f1s.push(f1);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let lr = &base["pbmc68k"]["methods"]["celltypist_lr"];
        println!();
        println!("pbmc68k_reduced bulk_labels, stratified 5-fold (means over folds)");
        println!("| method | accuracy | macro F1 | notes |");
        println!("|---|---|---|---|");
        row(
            "cellforge pretrain + fine-tune (CLS)",
            mean(&accs),
            mean(&f1s),
            &format!("{pre_note}; per-fold F1 {f1s:.3?}"),
        );
        row(
            "logistic regression (CellTypist-style)",
            lr["mean_accuracy"].as_f64().unwrap_or(f64::NAN),
            lr["mean_macro_f1"].as_f64().unwrap_or(f64::NAN),
            "scikit-learn on raw (log-normalised)",
        );
    }

    if !skip("integration") {
        let ft = dir.join("sym_integration");
        let objectives = Objectives {
            gep: 1.0,
            gepc: 1.0,
            ecs: 10.0,
            ecs_threshold: 0.8,
            dar: 1.0,
            cls: 0.0,
            cce: 0.0,
            class_weights: Vec::new(),
        };
        let ft_s = finetune(
            &s,
            &sym_path,
            Some("counts"),
            &pre,
            &ft,
            objectives,
            Some("donor"),
            true,
        );
        let labels: Vec<Option<String>> = sym.obs.categorical("cell_type").expect("ct").labels();
        let batches: Vec<Option<String>> = sym.obs.categorical("donor").expect("donor").labels();
        let codes = |v: &[Option<String>]| {
            let mut names: Vec<String> = v.iter().flatten().cloned().collect();
            names.sort();
            names.dedup();
            v.iter()
                .map(|l| {
                    names
                        .iter()
                        .position(|n| Some(n) == l.as_ref())
                        .unwrap_or(0) as u32
                })
                .collect::<Vec<u32>>()
        };
        let (lab, bat) = (codes(&labels), codes(&batches));
        println!();
        println!("integration: symphony, 3 chemistries (donor), cell_type; fine-tune {ft_s:.0} s");
        println!(
            "| embedding | AvgBIO | AvgBATCH | NMI | ARI | ASW label | ASW batch | graph conn. | scib ASW label | scib ASW batch | scib graph conn. | scib AvgBIO |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (name, model_dir) in [
            ("pretrained", &pre),
            ("fine-tuned (batch tokens + DSBN + DAR + ECS)", &ft),
        ] {
            let files = ModelFiles::open(model_dir).expect("model");
            let dev = Default::default();
            let (model, _) = files
                .build::<cellforge_core::device::Cpu>(&dev)
                .expect("build");
            let (tokens, use_batch, batch_key, fixed) = match ModelLabels::read(model_dir) {
                Ok(l) => (l.tokens, l.use_batch_labels, l.batch_key, Some(l.batches)),
                Err(_) => (
                    train_config(1, 1e-3, false, s.max_len).tokens,
                    false,
                    None,
                    None,
                ),
            };
            let tokens = TokenSettings {
                cls_value: if files.config.generative && batch_key.is_none() {
                    -2.0
                } else {
                    tokens.cls_value
                },
                ..tokens
            };
            let set = CellQuery {
                path: &sym_path,
                layer: Some("counts"),
                gene_col: &GeneColumn::Index,
                vocab: &files.vocab,
                label_key: None,
                batch_key: batch_key.as_deref(),
                fixed_classes: None,
                fixed_batches: fixed.as_deref(),
                tokens: &tokens,
                seed: 0,
                keep_counts: false,
            }
            .read()
            .expect("cells");
            let pad = files.vocab.id("<pad>").expect("pad");
            let emb = embed_set(&model, &set, &tokens, pad, use_batch, 64, &dev).expect("embed");
            let dm = model.config().d_model;
            let x = DenseMatrix::new(&emb, sym.n_obs(), dm).expect("matrix");
            let m = integration_metrics(&x, &lab, &bat, &IntegrationOptions::default())
                .expect("metrics");
            // the same embedding through scib
            let mut a = sym.clone();
            a.obsm.insert(
                "X_emb".into(),
                Element::Dense(DenseArray {
                    shape: vec![sym.n_obs(), dm],
                    data: ArrayData::F32(emb),
                }),
            );
            let f = dir.join(format!(
                "emb_{}.h5ad",
                if model_dir == &pre { "pre" } else { "ft" }
            ));
            write_h5ad(&a, &f, &WriteOptions::default()).expect("write embedding");
            let o = Command::new(python())
                .arg(repo().join("scripts/bench/scib_metrics.py"))
                .arg(&f)
                .args(["X_emb", "cell_type", "donor"])
                .output()
                .expect("run scib_metrics.py");
            // scib prints progress on stdout; the JSON is the last line.
            let stdout = String::from_utf8_lossy(&o.stdout);
            let last = stdout
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .unwrap_or("");
            let scib: BTreeMap<String, f64> = serde_json::from_str(last).unwrap_or_else(|_| {
                eprintln!(
                    "scib_metrics.py ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
                BTreeMap::new()
            });
            let g = |k: &str| scib.get(k).copied().unwrap_or(f64::NAN);
            println!(
                "| {name} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
                m.avg_bio,
                m.avg_batch.unwrap_or(f64::NAN),
                m.nmi,
                m.ari,
                m.asw_label,
                m.asw_batch.unwrap_or(f64::NAN),
                m.graph_connectivity,
                g("ASW_label"),
                g("ASW_label/batch"),
                g("graph_conn"),
                g("avg_bio"),
            );
            let worst = [
                (m.asw_label - g("ASW_label")).abs(),
                (m.asw_batch.unwrap_or(f64::NAN) - g("ASW_label/batch")).abs(),
                (m.graph_connectivity - g("graph_conn")).abs(),
            ]
            .into_iter()
            .fold(0f64, |m, x| {
                if x.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(x)
                }
            });
            println!("  deterministic metrics, largest |cellforge - scib|: {worst:.2e}");
        }
    }
    println!();
    println!("total {:.0} s", t0.elapsed().as_secs_f64());
}
