//! Protection pinned: when the device runs out of memory during embedding, cellforge halves
//! the batch and carries on with the same cells (results unchanged), and only fails, with a
//! clear error, when one cell does not fit. The failure is injected
//! (`EmbedOptions::simulate_oom_above`), and takes the path a real allocation panic from the
//! backend takes (caught, recognised as out-of-memory by its message). Without the back-off
//! the first test fails with the injected panic.

use std::ops::ControlFlow;
use std::path::PathBuf;

use cellforge_core::io::BackedH5ad;
use cellforge_core::model::ModelFiles;
use cellforge_core::sys::is_oom_message;
use cellforge_core::tl::embed::{EmbedError, EmbedOptions, embed_backed};

type Cpu = burn::backend::Flex;

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/demo")
}

fn run(opts: &EmbedOptions) -> (Result<Vec<f32>, EmbedError>, Vec<usize>) {
    let dev = Default::default();
    let files = ModelFiles::open(&demo().join("model")).expect("demo model");
    let (model, _) = files.build::<Cpu>(&dev).expect("build");
    let backed = BackedH5ad::open(&demo().join("pbmcs_small.h5ad")).expect("demo data");
    let m = files.vocab.match_genes(&backed.var.index);
    let mut sizes = Vec::new();
    let r = embed_backed(
        &model,
        &dev,
        &files.vocab,
        &backed,
        &m.ids,
        opts,
        &mut |p| {
            sizes.push(p.batch_size);
            ControlFlow::Continue(())
        },
    );
    (r.map(|r| r.embeddings), sizes)
}

#[test]
fn out_of_memory_halves_the_batch_and_gives_the_same_embeddings() {
    let base = EmbedOptions {
        max_length: 64,
        batch_size: 32,
        chunk_rows: 300,
        ..EmbedOptions::default()
    };
    let (clean, clean_sizes) = run(&base);
    let clean = clean.expect("clean run");
    assert!(clean_sizes.iter().all(|&b| b == 32));
    // Batches of more than 6 cells "do not fit": 32 -> 16 -> 8 -> 4.
    let (backed_off, sizes) = run(&EmbedOptions {
        simulate_oom_above: Some(6),
        ..base.clone()
    });
    let backed_off = backed_off.expect("run with back-off");
    assert!(sizes.iter().all(|&b| b == 4), "batch sizes {sizes:?}");
    assert_eq!(clean.len(), backed_off.len());
    let worst = clean
        .iter()
        .zip(&backed_off)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "embeddings differ by {worst}");
}

#[test]
fn out_of_memory_at_one_cell_is_a_clear_error() {
    let (r, _) = run(&EmbedOptions {
        max_length: 64,
        batch_size: 8,
        simulate_oom_above: Some(0),
        ..EmbedOptions::default()
    });
    match r {
        Err(e @ EmbedError::OutOfMemory(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("ran out of memory even with one cell"),
                "{text}"
            );
        }
        other => panic!("expected OutOfMemory, got {:?}", other.map(|v| v.len())),
    }
}

#[test]
fn backend_messages_for_out_of_memory_are_recognised() {
    for m in [
        "CUDA_ERROR_OUT_OF_MEMORY: out of memory",
        "Failed to allocate 2147483648 bytes",
        "OutOfMemory { size: 1 }",
        "wgpu error: Out of Memory",
    ] {
        assert!(is_oom_message(m), "{m}");
    }
    assert!(!is_oom_message("index out of bounds: the len is 3"));
}
