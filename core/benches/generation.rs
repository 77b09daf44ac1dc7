//! Does confidence-ordered iterative generation beat one-shot prediction? An evaluation run
//! that prints a table.
//!
//! A small scGPT-architecture model is pretrained by cellforge (generative objective) on the
//! available counts (symphony + harmony; or `BENCH_GEN_MODEL` names a model folder such a
//! run produced). Held-out cells: symphony's `3pv1` chemistry, tokenised as in pretraining
//! (the cell's expressed vocabulary genes, binned into 51 bins, at most the model's
//! `max_seq_len` tokens). For every cell a seeded random `prompt` fraction of its genes is
//! known with its value, the other genes are generated; the table gives the mean squared
//! error (bin units) on those held-out genes for one-shot prediction (K = 1) and for
//! K = 2, 4, 8 rounds, for each confidence measure, next to two trivial predictors (the
//! mean of the cell's known values, and the global mean).
//!
//! Run: `cargo bench -p cellforge-core --bench generation`. Environment (optional):
//! `BENCH_GEN_MODEL` (model folder), `BENCH_PRE_EPOCHS` (pretraining epochs, 15),
//! `BENCH_PROMPTS` (comma list of known fractions, `0.25,0.5`), `BENCH_CELLS` (most
//! held-out cells, 400), `BENCH_DIR` (default `<repo>/target/bench-data/generation`),
//! `CELLFORGE_SHARED_DATA`.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Autodiff;
use cellforge_core::device::{Cpu, DeviceRequest};
use cellforge_core::io::{WriteOptions, read_h5ad, write_h5ad};
use cellforge_core::model::ModelFiles;
use cellforge_core::tl::embed_job::GeneColumn;
use cellforge_core::tl::generate::{
    Confidence, GenCell, GenerateSettings, Generated, generate, generation_mse,
};
use cellforge_core::tokenize::Rng;
use cellforge_core::train::data::{CellQuery, TokenSettings};
use cellforge_core::train::pretrain::{
    GenerativeSettings, ModelSize, PretrainRequest, run_pretrain,
};
use cellforge_core::train::{ScheduleSpec, TrainConfig};
use common::{env_usize, repo, shared};

fn pretrain_model(dir: &Path, sym: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).expect("corpus dir");
    let mut c = read_h5ad(sym).expect("read symphony");
    if let Some(counts) = c.layers.remove("counts") {
        c.x = Some(counts);
    }
    write_h5ad(
        &c,
        &corpus.join("symphony_counts.h5ad"),
        &WriteOptions::default(),
    )
    .expect("write corpus");
    std::fs::copy(
        shared().join("harmony_pbmc_stim.h5ad"),
        corpus.join("harmony_counts.h5ad"),
    )
    .expect("copy harmony");
    let out = dir.join("pretrained");
    let base = TrainConfig::pretrain_recipe();
    let req = PretrainRequest {
        corpus: vec![corpus],
        layer: None,
        gene_col: GeneColumn::Index,
        output: out.clone(),
        device: DeviceRequest::Cpu,
        size: ModelSize {
            d_model: 64,
            nlayers: 2,
            nhead: 4,
            d_hid: 64,
            dropout: 0.1,
        },
        vocab: None,
        config: TrainConfig {
            epochs: env_usize("BENCH_PRE_EPOCHS", 15),
            lr: 1e-3,
            schedule: ScheduleSpec::Cosine {
                warmup_fraction: 0.05,
            },
            generative: Some(GenerativeSettings {
                cell_prompt_after: Some(300),
                ..GenerativeSettings::default()
            }),
            tokens: TokenSettings {
                max_len: 192,
                ..base.tokens.clone()
            },
            ..base
        },
        validation_fraction: 0.05,
        resume: false,
        token_cache: false,
    };
    let t = Instant::now();
    run_pretrain(&req, &mut |_| ControlFlow::Continue(())).expect("pretrain");
    eprintln!("pretrained in {:.0} s", t.elapsed().as_secs_f64());
    out
}

fn main() {
    cellforge_core::sys::tune_allocator();
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/bench-data/generation"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let sym = shared().join("symphony_pbmcs_small.h5ad");
    let model_dir = match std::env::var_os("BENCH_GEN_MODEL") {
        Some(p) => PathBuf::from(p),
        None => pretrain_model(&dir, &sym),
    };
    let files = ModelFiles::open(&model_dir).expect("open model");
    let cfg = &files.config;
    let tokens = TokenSettings {
        include_zero_genes: false,
        max_len: cfg.max_seq_len,
        cls_value: cfg.pad_value,
        n_bins: cfg.n_bins,
        pad_value: cfg.pad_value,
        mask_value: cfg.mask_value,
    };
    // held-out cells: 3pv1, as counts
    let query = dir.join("sym_3pv1_counts.h5ad");
    {
        let a = read_h5ad(&sym).expect("read symphony");
        let donors = a.obs.categorical("donor").expect("donor").labels();
        let rows: Vec<usize> = (0..a.n_obs())
            .filter(|&i| donors[i].as_deref() == Some("3pv1"))
            .collect();
        let (mut q, _) = a.subset(Some(&rows), None);
        if let Some(c) = q.layers.remove("counts") {
            q.x = Some(c);
        }
        write_h5ad(&q, &query, &WriteOptions::default()).expect("write query");
    }
    let set = CellQuery {
        path: &query,
        layer: None,
        gene_col: &GeneColumn::Index,
        vocab: &files.vocab,
        label_key: None,
        batch_key: None,
        fixed_classes: None,
        fixed_batches: None,
        tokens: &tokens,
        seed: 0,
        keep_counts: false,
    }
    .read()
    .expect("tokenise");
    let n_cells = set.cells.len().min(env_usize("BENCH_CELLS", 400));
    let pad_id = files.pad_id().expect("pad id") as u32;
    let cls_id = files.vocab.id("<cls>").expect("cls");
    let device = Default::default();
    let model = files.build::<Autodiff<Cpu>>(&device).expect("build").0;
    let plain = files.build::<Cpu>(&device).expect("build").0;
    println!(
        "model {} (d_model {}, {} layers); {} held-out cells (symphony 3pv1), mean {:.0} genes per cell",
        model_dir.display(),
        cfg.d_model,
        cfg.nlayers,
        n_cells,
        (0..n_cells)
            .map(|i| set.cells.cell_len(i) - 1)
            .sum::<usize>() as f64
            / n_cells as f64
    );
    let prompts: Vec<f64> = std::env::var("BENCH_PROMPTS")
        .unwrap_or_else(|_| "0.25,0.5".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for &prompt in &prompts {
        let mut cells = Vec::new();
        let mut truth = Vec::new();
        let mut known_mean = Vec::new();
        for i in 0..n_cells {
            let c = set.cells.get(i);
            let mut pos: Vec<usize> = (1..c.genes.len()).collect();
            Rng::for_item(7, i as u64).shuffle(&mut pos);
            let n_known = ((pos.len() as f64) * prompt).round() as usize;
            let (k, t) = pos.split_at(n_known.min(pos.len()));
            if t.is_empty() || k.is_empty() {
                continue;
            }
            let known: Vec<(u32, f32)> = k.iter().map(|&p| (c.genes[p], c.values[p])).collect();
            known_mean.push(known.iter().map(|x| x.1).sum::<f32>() / known.len() as f32);
            truth.push(t.iter().map(|&p| c.values[p]).collect::<Vec<f32>>());
            cells.push(GenCell {
                known,
                targets: t.iter().map(|&p| c.genes[p]).collect(),
                cell_emb: None,
            });
        }
        let n_targets: usize = truth.iter().map(Vec::len).sum();
        let global = truth.iter().flatten().map(|&v| f64::from(v)).sum::<f64>() / n_targets as f64;
        let mse_const = truth
            .iter()
            .flatten()
            .map(|&v| (f64::from(v) - global).powi(2))
            .sum::<f64>()
            / n_targets as f64;
        let mse_known: f64 = truth
            .iter()
            .zip(&known_mean)
            .flat_map(|(t, &m)| {
                t.iter()
                    .map(move |&v| (f64::from(v) - f64::from(m)).powi(2))
            })
            .sum::<f64>()
            / n_targets as f64;
        println!(
            "\nprompt: {:.0}% of each cell's genes known, {} cells, {} held-out genes",
            prompt * 100.0,
            cells.len(),
            n_targets
        );
        println!("| predictor | K | MSE (bins^2) | vs one-shot | seconds |");
        println!("|---|---|---|---|---|");
        println!("| global mean of held-out values | - | {mse_const:.3} | | |");
        println!("| mean of the cell's known values | - | {mse_known:.3} | | |");
        let run = |cells: &[GenCell], conf: Confidence, k: usize| -> (Vec<Generated>, f64) {
            let s = GenerateSettings {
                rounds: k,
                confidence: conf,
                cls_id,
                cls_value: tokens.cls_value,
                pad_id,
                pad_value: tokens.pad_value,
                batch_size: 32,
            };
            let t = Instant::now();
            let out = match conf {
                Confidence::Dropout { .. } => generate(&model, cells, &s, &device, &mut |_| {
                    ControlFlow::Continue(())
                }),
                _ => generate(&plain, cells, &s, &device, &mut |_| {
                    ControlFlow::Continue(())
                }),
            }
            .expect("generate");
            (out, t.elapsed().as_secs_f64())
        };
        // dropout runs 8 passes on the (slower) autodiff backend: fewer cells
        let n_dropout = cells.len().min(env_usize("BENCH_DROPOUT_CELLS", 50));
        for (conf, ks, n) in [
            (Confidence::Heads, vec![1usize, 2, 4, 8], cells.len()),
            (Confidence::Dropout { samples: 8 }, vec![1, 4], n_dropout),
        ] {
            let mut one_shot = f64::NAN;
            for k in ks {
                let (out, secs) = run(&cells[..n], conf, k);
                let mse = generation_mse(&out, &truth[..n]);
                if k == 1 {
                    one_shot = mse;
                }
                println!(
                    "| model, confidence {conf}, {n} cells | {k} | {mse:.3} | {:+.1}% | {secs:.1} |",
                    100.0 * (mse / one_shot - 1.0),
                );
            }
        }
    }

    // cell prompt: the model's own embedding of the whole cell at position 0, no known gene
    {
        let mut cells = Vec::new();
        let mut truth = Vec::new();
        for i in 0..n_cells {
            let c = set.cells.get(i);
            let b = cellforge_core::tl::embed::make_batch::<Cpu>(
                &[&c],
                pad_id,
                tokens.pad_value,
                &device,
            );
            let e = plain.embed_cells(&b).expect("embed");
            let e = e
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("host");
            truth.push(c.values[1..].to_vec());
            cells.push(GenCell {
                known: Vec::new(),
                targets: c.genes[1..].to_vec(),
                cell_emb: Some(e),
            });
        }
        println!(
            "\ncell prompt: each cell's embedding (by the same model, all its genes seen) at position 0, every gene generated"
        );
        println!("| predictor | K | MSE (bins^2) | vs one-shot | seconds |");
        println!("|---|---|---|---|---|");
        let mut one_shot = f64::NAN;
        for k in [1usize, 4] {
            let s = GenerateSettings {
                rounds: k,
                confidence: Confidence::Heads,
                cls_id,
                cls_value: tokens.cls_value,
                pad_id,
                pad_value: tokens.pad_value,
                batch_size: 32,
            };
            let t = Instant::now();
            let out = generate(&plain, &cells, &s, &device, &mut |_| {
                ControlFlow::Continue(())
            })
            .expect("generate");
            let mse = generation_mse(&out, &truth);
            if k == 1 {
                one_shot = mse;
            }
            println!(
                "| model, confidence heads | {k} | {mse:.3} | {:+.1}% | {:.1} |",
                100.0 * (mse / one_shot - 1.0),
                t.elapsed().as_secs_f64()
            );
        }
    }
}
