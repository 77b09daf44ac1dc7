//! Cell-embedding throughput on the CPU: cellforge (`tl::embed::embed_backed` on burn's flex
//! backend) against the PyTorch scGPT reference, side by side on the same model folder and
//! the same h5ad, each implementation in its own process so peak memory is per implementation.
//!
//! Run: `cargo bench -p cellforge-core --bench embed` (or build with `cargo bench --no-run` and
//! run the printed binary with `--bench`). The first run writes an scGPT_human-shaped model
//! (12 layers, d_model 512, 8 heads, d_hid 512, 60,697-token vocabulary, seeded random
//! weights, ~205 MB) and the h5ad files under `BENCH_EMBED_DIR`, using
//! `scripts/reference/bench_embed_torch.py` (its `save_model`/`save_data`), so that both sides
//! read exactly the same files. Every cell has exactly `BENCH_GENES` expressed genes, all in
//! the vocabulary, so every cell is `<cls>` + G tokens with no padding on every side.
//!
//! Measured:
//! - `cellforge`: load the model folder + open the backed h5ad + match genes +
//!   `embed_backed` (read, tokenise/bin, encode, L2-normalise), timed end to end; the encode
//!   loop alone is `embed_backed`'s own `seconds`.
//! - `torch-encoder`: the script's raw `model._encode` under `torch.inference_mode` on
//!   pre-tokenised batches of the same shape (random ids/bins of the same length), model
//!   load and one warm-up batch excluded.
//! - `scgpt-embed_data`: `scgpt.tasks.embed_data` end to end on the first
//!   `BENCH_EMBED_DATA_CELLS` cells of the same data (a prefix file generated with the same
//!   seed, so the cells are identical), to keep the whole run short; cellforge is run end to
//!   end on that prefix file too.
//!
//! Environment (all optional):
//! - `BENCH_EMBED_DIR` (default `<repo>/target/bench-data/embed`; absolute paths only, cargo
//!   runs benches from the crate folder)
//! - `BENCH_CELLS` (default 400): cells in the data file (cellforge and torch-encoder); the
//!   defaults take about 12 minutes on 2 cores (cellforge ~1.3 cells/s, torch encoder ~1.7,
//!   embed_data ~1.1 at 751 tokens)
//! - `BENCH_GENES` (default 750): expressed genes per cell, i.e. 751 tokens with `<cls>`
//! - `BENCH_BATCH` (default 8): cells per forward pass (cellforge and torch-encoder)
//! - `BENCH_EMBED_DATA_CELLS` (default 64, one embed_data batch; 0 skips embed_data),
//!   `BENCH_EMBED_DATA_BATCH` (default 64, scGPT's default). cellforge is also run end to end
//!   on that same prefix file so the embed_data ratio compares identical inputs.
//! - `BENCH_THREADS` (default: available parallelism): torch threads; cellforge uses rayon's
//!   default pool (set `RAYON_NUM_THREADS` to change it)
//! - `BENCH_SKIP`: comma-separated subset of `cellforge,torch-encoder,embed_data`
//! - `CELLFORGE_REF_PYTHON` (default `<repo>/.venv-ref/bin/python`, made by
//!   `scripts/reference/setup.sh`)

mod common;

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cellforge_core::device::Cpu;
use cellforge_core::io::BackedH5ad;
use cellforge_core::model::ModelFiles;
use cellforge_core::tl::embed::{EmbedOptions, embed_backed};
use common::{env_usize, peak_rss_kib, repo};

/// CPU seconds (user + system) of this process (`self_`) or of its waited-for children,
/// from /proc/self/stat (clock ticks; 100 per second on Linux).
fn cpu_seconds(children: bool) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15,
    // cutime 16, cstime 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let (u, s) = if children { (13, 14) } else { (11, 12) };
    if f.len() <= s {
        return 0.0;
    }
    (f[u] + f[s]) / 100.0
}

/// Busy CPU seconds of the whole machine (all processes) from /proc/stat (USER_HZ = 100).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let busy: f64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / 100.0
}

/// Encoder FLOPs per cell (matmuls only): per token per layer QKV 2*3*d^2, output projection
/// 2*d^2, FFN 2*2*d*d_hid, attention scores and context 2*2*L*d.
fn encoder_flops_per_cell(layers: usize, d: usize, d_hid: usize, l: usize) -> f64 {
    let (d, d_hid, lf) = (d as f64, d_hid as f64, l as f64);
    let per_token = 2.0 * 3.0 * d * d + 2.0 * d * d + 2.0 * 2.0 * d * d_hid + 2.0 * 2.0 * lf * d;
    per_token * lf * layers as f64
}

/// One measurement, as printed in the table.
#[derive(Clone, Debug, Default)]
struct Row {
    name: String,
    cells: usize,
    tokens: usize,
    /// The seconds the throughput is computed from.
    seconds: f64,
    peak_mib: f64,
    /// CPU seconds of the whole process over its wall seconds (cores kept busy).
    cpu_util: f64,
    /// Cores kept busy by other processes on the machine during the measurement (should be
    /// close to 0; anything above ~0.1 means the numbers are disturbed).
    other_load: f64,
    note: String,
}

impl Row {
    fn cells_per_s(&self) -> f64 {
        self.cells as f64 / self.seconds
    }
}

// --------------------------------------------------------------------------------------------
// child mode: one cellforge run
// --------------------------------------------------------------------------------------------

/// Prints one line of `key=value` pairs.
fn child_cellforge(model_dir: &Path, data: &Path, batch: usize) {
    let t0 = Instant::now();
    let files = ModelFiles::open(model_dir).expect("open model folder");
    let device = Default::default();
    let (model, _report) = files.build::<Cpu>(&device).expect("build model");
    let ModelFiles { vocab, weights, .. } = files;
    drop(weights); // the state dict is not needed once the model holds the weights
    let load_s = t0.elapsed().as_secs_f64();
    let backed = BackedH5ad::open(data).expect("open h5ad");
    let m = vocab.match_genes(&backed.var.index);
    let opts = EmbedOptions {
        batch_size: batch,
        ..EmbedOptions::default()
    };
    let mut first_batch_s = None;
    let mut batches = 0usize;
    let res = embed_backed(&model, &device, &vocab, &backed, &m.ids, &opts, &mut |p| {
        first_batch_s.get_or_insert(p.elapsed_s);
        batches += 1;
        ControlFlow::Continue(())
    })
    .expect("embed");
    let total_s = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(false);
    let [n, _] = backed.shape();
    assert!(
        res.empty_cells.is_empty(),
        "empty cells in the benchmark data"
    );
    assert!(
        res.embeddings.iter().all(|v| v.is_finite()),
        "non-finite output"
    );
    let checksum: f64 = res.embeddings.iter().map(|&v| v as f64).sum();
    let mut line = String::new();
    write!(
        line,
        "cells={n} tokens={} load_s={load_s:.4} embed_s={:.4} total_s={total_s:.4} \
         first_batch_s={:.4} batches={batches} cpu_s={cpu_s:.2} peak_kib={} checksum={checksum:.6}",
        res.tokens,
        res.seconds,
        first_batch_s.unwrap_or(0.0),
        peak_rss_kib()
    )
    .expect("fmt");
    println!("{line}");
}

fn parse_kv(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

// --------------------------------------------------------------------------------------------
// preparation and the Python peers
// --------------------------------------------------------------------------------------------

fn python() -> PathBuf {
    std::env::var_os("CELLFORGE_REF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-ref/bin/python"))
}

fn script() -> PathBuf {
    repo().join("scripts/reference/bench_embed_torch.py")
}

/// Genes (columns) of the generated h5ad: the script's default.
fn n_genes(genes_per_cell: usize) -> usize {
    (2 * genes_per_cell).max(2000)
}

/// Write the model folder and/or an h5ad with the script's own generators (seeded; a file
/// with fewer cells is exactly the prefix of a larger one).
fn prepare(model_dir: &Path, data: &[(PathBuf, usize)], genes: usize) {
    let need_model = !model_dir.join("best_model.pt").is_file();
    let todo: Vec<&(PathBuf, usize)> = data.iter().filter(|(p, _)| !p.is_file()).collect();
    if !need_model && todo.is_empty() {
        return;
    }
    let mut code = String::from(
        "import sys\nfrom pathlib import Path\nsys.path.insert(0, sys.argv[1])\n\
         import bench_embed_torch as b\n",
    );
    if need_model {
        eprintln!(
            "# writing the model folder {} (one-off)",
            model_dir.display()
        );
        writeln!(
            code,
            "b.save_model(Path({:?}), b.NLAYERS)",
            model_dir.display()
        )
        .expect("fmt");
    }
    for (path, cells) in todo {
        eprintln!(
            "# writing {} ({cells} cells x {genes} genes, one-off)",
            path.display()
        );
        writeln!(
            code,
            "b.save_data(Path({:?}), {cells}, {genes}, {})",
            path.display(),
            n_genes(genes)
        )
        .expect("fmt");
    }
    let st = Command::new(python())
        .arg("-c")
        .arg(&code)
        .arg(script().parent().expect("scripts dir"))
        .status()
        .expect("run the reference python (CELLFORGE_REF_PYTHON or .venv-ref)");
    assert!(st.success(), "preparing the benchmark inputs failed");
}

/// Run one of the script's measurements (`encoder` or `embed`) in its own process, the way
/// the script's own driver does, and return its JSON record.
#[allow(clippy::too_many_arguments)]
/// A result row from one `torch_measure` record.
fn torch_row(
    name: String,
    cells: usize,
    note: String,
    (rec, wall, cpu, other): (serde_json::Value, f64, f64, f64),
) -> Row {
    Row {
        name,
        cells,
        tokens: rec["tokens"].as_u64().unwrap_or(0) as usize,
        seconds: rec["seconds"].as_f64().unwrap_or(0.0),
        peak_mib: rec["peak_rss_mib"].as_f64().unwrap_or(0.0),
        cpu_util: cpu / wall,
        other_load: other,
        note,
    }
}

fn torch_measure(
    what: &str,
    model_dir: &Path,
    data: &Path,
    cells: usize,
    genes: usize,
    threads: usize,
    batch: usize,
    embed_batch: usize,
) -> (serde_json::Value, f64, f64, f64) {
    let cpu0 = cpu_seconds(true);
    let busy0 = machine_busy_seconds();
    let t = Instant::now();
    let out = Command::new(python())
        .arg(script())
        .args(["--cells", &cells.to_string()])
        .args(["--genes-per-cell", &genes.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--batch-size", &batch.to_string()])
        .args(["--embed-batch-size", &embed_batch.to_string()])
        .args(["--n-genes", &n_genes(genes).to_string()])
        .args(["--_measure", what])
        .arg("--model-dir")
        .arg(model_dir)
        .arg("--data")
        .arg(data)
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string())
        .env("TQDM_DISABLE", "1")
        .output()
        .expect("spawn python");
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(true) - cpu0;
    let other = ((machine_busy_seconds() - busy0 - cpu) / wall).max(0.0);
    assert!(
        out.status.success(),
        "python {what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line from the script");
    (serde_json::from_str(line).expect("JSON"), wall, cpu, other)
}

/// Run cellforge on `data` in a child process: (encode-loop row, end-to-end row).
fn run_cellforge(
    model_dir: &Path,
    data: &Path,
    cells: usize,
    tokens: usize,
    batch: usize,
) -> (Row, Row) {
    let exe = std::env::current_exe().expect("exe");
    let cpu0 = cpu_seconds(true);
    let busy0 = machine_busy_seconds();
    let t = Instant::now();
    let out = Command::new(exe)
        .arg("--child")
        .arg(model_dir)
        .arg(data)
        .arg(batch.to_string())
        .output()
        .expect("spawn child");
    let wall = t.elapsed().as_secs_f64();
    let other = ((machine_busy_seconds() - busy0 - (cpu_seconds(true) - cpu0)) / wall).max(0.0);
    assert!(
        out.status.success(),
        "cellforge child failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let kv = parse_kv(text.lines().last().unwrap_or_default());
    let get = |k: &str| -> f64 {
        kv.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("child output lacks {k}: {text}"))
    };
    assert_eq!(get("cells") as usize, cells);
    assert_eq!(
        get("tokens") as usize,
        cells * tokens,
        "unexpected token count"
    );
    let peak = get("peak_kib") / 1024.0;
    let util = get("cpu_s") / wall;
    println!(
        "cellforge on {cells} cells: load {:.2} s, embed_backed {:.2} s (first batch {:.2} s, \
         {} batches), end to end {:.2} s, process CPU {:.1} s over {:.1} s wall ({:.2} cores), \
         checksum {}",
        get("load_s"),
        get("embed_s"),
        get("first_batch_s"),
        get("batches"),
        get("total_s"),
        get("cpu_s"),
        wall,
        util,
        kv.get("checksum").map_or("-", String::as_str)
    );
    let enc = Row {
        name: "cellforge embed_backed (encode loop)".into(),
        cells,
        tokens,
        seconds: get("embed_s"),
        peak_mib: peak,
        cpu_util: util,
        other_load: other,
        note: "read + tokenise + encode + normalise; model already loaded".into(),
    };
    let e2e = Row {
        name: "cellforge end to end".into(),
        cells,
        tokens,
        seconds: get("total_s"),
        peak_mib: peak,
        cpu_util: util,
        other_load: other,
        note: "load model folder + open h5ad + embed".into(),
    };
    (enc, e2e)
}

fn fmt_ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let batch = args[pos + 3].parse().expect("batch");
        child_cellforge(Path::new(&args[pos + 1]), Path::new(&args[pos + 2]), batch);
        return;
    }
    let dir = std::env::var_os("BENCH_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/bench-data/embed"));
    let cells = env_usize("BENCH_CELLS", 400);
    let genes = env_usize("BENCH_GENES", 750);
    let batch = env_usize("BENCH_BATCH", 8).max(1);
    let ed_cells = env_usize("BENCH_EMBED_DATA_CELLS", 64).min(cells);
    let ed_batch = env_usize("BENCH_EMBED_DATA_BATCH", 64).max(1);
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = env_usize("BENCH_THREADS", nproc).max(1);
    let skip = std::env::var("BENCH_SKIP").unwrap_or_default();
    let skip: Vec<&str> = skip.split(',').map(str::trim).collect();
    let tokens = genes + 1;

    let model_dir = dir.join("model");
    let data = dir.join(format!("data_{cells}x{genes}.h5ad"));
    let ed_data = dir.join(format!("data_{ed_cells}x{genes}.h5ad"));
    let mut files = vec![(data.clone(), cells)];
    if ed_cells > 0 && !skip.contains(&"embed_data") && ed_cells != cells {
        files.push((ed_data.clone(), ed_cells));
    }
    prepare(&model_dir, &files, genes);

    let config = ModelFiles::open(&model_dir).expect("model folder").config;
    let flops_cell = encoder_flops_per_cell(config.nlayers, config.d_model, config.d_hid, tokens);
    println!(
        "cell embedding benchmark: {cells} cells x {tokens} tokens (<cls> + {genes} genes), \
         {} layers, d_model {}, {} heads, d_hid {}, vocab {}; {nproc} CPUs; batch {batch}",
        config.nlayers, config.d_model, config.nhead, config.d_hid, config.ntoken
    );
    println!(
        "encoder work: {:.1} GFLOP per cell (matmuls: QKV, out proj, FFN, attention)",
        flops_cell / 1e9
    );
    println!("model {}\ndata  {}", model_dir.display(), data.display());
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut cf_e2e: Option<Row> = None;
    let mut cf_e2e_subset: Option<Row> = None;

    if !skip.contains(&"cellforge") {
        let (enc, e2e) = run_cellforge(&model_dir, &data, cells, tokens, batch);
        rows.push(enc);
        rows.push(e2e.clone());
        cf_e2e = Some(e2e);
    }

    let mut torch_enc: Option<Row> = None;
    if !skip.contains(&"torch-encoder") {
        let measured = torch_measure(
            "encoder", &model_dir, &data, cells, genes, threads, batch, ed_batch,
        );
        let note = format!(
            "model._encode, inference_mode, torch {}; load + warm-up excluded",
            measured.0["torch"].as_str().unwrap_or("?")
        );
        let row = torch_row(
            format!("torch-encoder ({threads} threads)"),
            cells,
            note,
            measured,
        );
        torch_enc = Some(row.clone());
        rows.push(row);
    }

    let mut embed_data: Option<Row> = None;
    if ed_cells > 0 && !skip.contains(&"embed_data") {
        let path = if ed_cells == cells { &data } else { &ed_data };
        let measured = torch_measure(
            "embed", &model_dir, path, ed_cells, genes, threads, batch, ed_batch,
        );
        let note = format!(
            "end to end, batch_size {ed_batch}{}",
            if ed_cells < cells {
                format!(", first {ed_cells} of the {cells} cells")
            } else {
                String::new()
            }
        );
        let row = torch_row(
            format!("scgpt embed_data ({threads} threads)"),
            ed_cells,
            note,
            measured,
        );
        embed_data = Some(row.clone());
        rows.push(row);
        // cellforge end to end on exactly the embed_data file, for a like-for-like ratio.
        if ed_cells < cells && !skip.contains(&"cellforge") {
            let (_, mut e2e) = run_cellforge(&model_dir, &ed_data, ed_cells, tokens, batch);
            e2e.name = "cellforge end to end (embed_data's cells)".into();
            e2e.note = format!("same file as embed_data: first {ed_cells} of the {cells} cells");
            rows.push(e2e.clone());
            cf_e2e_subset = Some(e2e);
        }
    }

    println!();
    println!(
        "| implementation | cells | tokens/cell | seconds | cells/s | GFLOP/s | peak RSS MiB | cores busy | other load | note |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.3} | {:.1} | {:.0} | {:.2} | {:.2} | {} |",
            r.name,
            r.cells,
            r.tokens,
            r.seconds,
            r.cells_per_s(),
            r.cells_per_s() * flops_cell / 1e9,
            r.peak_mib,
            r.cpu_util,
            r.other_load,
            r.note
        );
    }
    println!(
        "cores busy: the process's CPU seconds over its wall seconds (load included); other \
         load: cores used by other processes meanwhile (above ~0.1 the figures are disturbed)"
    );
    println!();
    let cf_loop = rows
        .iter()
        .find(|r| r.name.starts_with("cellforge embed_backed"))
        .cloned();
    if let (Some(cf), Some(te)) = (&cf_loop, &torch_enc) {
        println!(
            "cellforge embed_backed / torch-encoder (cells/s): {}",
            fmt_ratio(cf.cells_per_s(), te.cells_per_s())
        );
    }
    if let (Some(cf), Some(ed)) = (cf_e2e_subset.as_ref().or(cf_e2e.as_ref()), &embed_data) {
        println!(
            "cellforge end to end / scgpt embed_data (cells/s, same {} cells, model load \
             included on both sides): {}",
            ed.cells,
            fmt_ratio(cf.cells_per_s(), ed.cells_per_s())
        );
    }
    if let (Some(cf), Some(ed)) = (&cf_e2e, &embed_data)
        && cf.cells > ed.cells
    {
        println!(
            "cellforge end to end on {} cells / scgpt embed_data on {} cells (cells/s): {}",
            cf.cells,
            ed.cells,
            fmt_ratio(cf.cells_per_s(), ed.cells_per_s())
        );
    }
    if let (Some(cf), Some(te)) = (&cf_e2e, &torch_enc) {
        println!(
            "peak RSS cellforge / torch-encoder: {}",
            fmt_ratio(cf.peak_mib, te.peak_mib)
        );
    }
    if let (Some(cf), Some(ed)) = (cf_e2e_subset.as_ref().or(cf_e2e.as_ref()), &embed_data) {
        println!(
            "peak RSS cellforge / scgpt embed_data (same cells): {}",
            fmt_ratio(cf.peak_mib, ed.peak_mib)
        );
    }
}
