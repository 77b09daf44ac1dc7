//! The training commands end to end on real data (symphony PBMCs): `pretrain` a tiny model
//! from scratch, `finetune` it with CLS, `annotate` and `map` a query, with Python anndata
//! reading the outputs; and a run killed with SIGKILL mid-epoch that resumes to the same
//! weights as an uninterrupted run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use cellforge_e2e::shared_data;
use common::{cellforge, text};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const TINY: &[&str] = &[
    "--d-model",
    "16",
    "--nlayers",
    "1",
    "--nhead",
    "2",
    "--max-len",
    "48",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "--lr",
    "3e-3",
    "--cell-prompt-after",
    "5",
];

fn pretrain(data: &Path, out: &Path) {
    let mut args = vec![
        "pretrain",
        "--corpus",
        s(data),
        "--output",
        s(out),
        "--layer",
        "counts",
        "--epochs",
        "1",
        "--token-cache",
    ];
    args.extend_from_slice(TINY);
    let o = cellforge(&args);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("corpus: 1 file(s), 1200 cells"), "{t}");
    assert!(out.join("model.safetensors").is_file());
    // the corpus went through the memory-mapped token cache
    assert!(out.join("tokens.cftok").is_file());
}

fn finetune_args<'a>(data: &'a str, model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "finetune",
        "--reference",
        data,
        "--label-key",
        "cell_type",
        "--model",
        model,
        "--output",
        out,
        "--objectives",
        "cls",
        "--max-len",
        "48",
        "--lr",
        "3e-3",
        "--device",
        "cpu",
        "--seed",
        "3",
    ]
}

#[test]
fn pretrain_finetune_annotate_map_on_real_data() {
    let data = shared_data().join("symphony_pbmcs_small.h5ad");
    let before = std::fs::read(&data).expect("read");
    let dir = tempfile::tempdir().expect("tempdir");
    let pre = dir.path().join("pre");
    pretrain(&data, &pre);

    let ft = dir.path().join("ft");
    let mut a = finetune_args(s(&data), s(&pre), s(&ft));
    a.extend_from_slice(&[
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--cell-emb",
        "avg-pool",
    ]);
    let o = cellforge(&a);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("9 classes"), "{t}");
    assert!(t.contains("validation after epoch 2"), "{t}");
    assert!(ft.join("labels.json").is_file() && ft.join("train_log.json").is_file());
    // the classifier reads the mean of the gene tokens, and annotate uses the same style
    let config = std::fs::read_to_string(ft.join("config.json")).expect("config");
    assert!(
        config.contains("\"cell_emb_style\": \"avg-pool\""),
        "{config}"
    );
    let bad = cellforge(&[
        "finetune",
        "--reference",
        s(&data),
        "--model",
        s(&pre),
        "--output",
        s(&ft),
        "--cell-emb",
        "max",
    ]);
    assert!(
        !bad.status.success() && text(&bad).contains("unknown cell embedding \"max\""),
        "{}",
        text(&bad)
    );

    let out = dir.path().join("annotated.h5ad");
    let o = cellforge(&[
        "annotate",
        "--model",
        s(&ft),
        "--query",
        s(&data),
        "--output",
        s(&out),
        "--device",
        "cpu",
        "--min-confidence",
        "0.3",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let check = cellforge_e2e::run_script(
        "check_labels.py",
        &[
            out.as_os_str(),
            "predicted_cell_type".as_ref(),
            "cell_type".as_ref(),
            "0.0".as_ref(),
            "annotate_predicted_cell_type".as_ref(),
        ],
    );
    assert!(check.status.success(), "{}", text(&check));

    // Zero-shot mapping of the dataset onto itself: each cell is its own nearest neighbour.
    let mapped = dir.path().join("mapped.h5ad");
    let o = cellforge(&[
        "map",
        "--reference",
        s(&data),
        "--label-key",
        "cell_type",
        "--model",
        s(&pre),
        "--query",
        s(&data),
        "--output",
        s(&mapped),
        "--k",
        "1",
        "--max-length",
        "48",
        "--device",
        "cpu",
        "--key-added",
        "mapped",
        "--min-confidence",
        "0",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let check = cellforge_e2e::run_script(
        "check_labels.py",
        &[
            mapped.as_os_str(),
            "mapped".as_ref(),
            "cell_type".as_ref(),
            "0.99".as_ref(),
            "map_mapped".as_ref(),
        ],
    );
    assert!(check.status.success(), "{}", text(&check));
    // Gene programs, similarity and attention from the pretrained model's gene embeddings.
    let gp = dir.path().join("programs.h5ad");
    let o = cellforge(&[
        "gene-programs",
        s(&data),
        "--model",
        s(&pre),
        "--output",
        s(&gp),
        "--resolution",
        "10",
        "--similar-to",
        "CD3E",
        "--attention-layer",
        "0",
        "--attention-group",
        "cell_type=B",
        "--attention-cells",
        "16",
        "--genes",
        "all",
        "--device",
        "cpu",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("most similar to CD3E"), "{t}");
    let check = cellforge_e2e::run_script(
        "check_genes.py",
        &[
            "programs".as_ref(),
            gp.as_os_str(),
            "5".as_ref(),
            "CD3E".as_ref(),
        ],
    );
    assert!(check.status.success(), "{}", text(&check));

    // Generation from a gene prompt (the first 200 genes known) and from a cell prompt.
    let prompt = dir.path().join("prompt.txt");
    let genes = cellforge_e2e::run_script(
        "check_genes.py",
        &["print-genes".as_ref(), data.as_os_str(), "200".as_ref()],
    );
    assert!(genes.status.success(), "{}", text(&genes));
    std::fs::write(&prompt, &genes.stdout).expect("write prompt");
    let gen_out = dir.path().join("generated.h5ad");
    let o = cellforge(&[
        "generate",
        s(&data),
        "--model",
        s(&pre),
        "--output",
        s(&gen_out),
        "--layer",
        "counts",
        "--prompt-genes",
        s(&prompt),
        "--rounds",
        "4",
        "--device",
        "cpu",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("confidence heads"), "{t}");
    let check = cellforge_e2e::run_script(
        "check_genes.py",
        &[
            "generate".as_ref(),
            gen_out.as_os_str(),
            data.as_os_str(),
            "counts".as_ref(),
            prompt.as_os_str(),
            "51".as_ref(),
        ],
    );
    assert!(check.status.success(), "{}", text(&check));
    let emb = dir.path().join("embedded.h5ad");
    let o = cellforge(&[
        "embed",
        s(&data),
        "--model",
        s(&pre),
        "--output",
        s(&emb),
        "--max-length",
        "48",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cellforge(&[
        "generate",
        s(&emb),
        "--model",
        s(&pre),
        "--output",
        s(&gen_out),
        "--layer",
        "counts",
        "--cell-prompt",
        "X_scGPT",
        "--rounds",
        "2",
        "--confidence",
        "dropout:2",
        "--device",
        "cpu",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("confidence dropout:2"), "{t}");
    let check = cellforge_e2e::run_script(
        "check_genes.py",
        &[
            "generate".as_ref(),
            gen_out.as_os_str(),
            data.as_os_str(),
            "counts".as_ref(),
            "-".as_ref(),
            "51".as_ref(),
        ],
    );
    assert!(check.status.success(), "{}", text(&check));
    let o = cellforge(&[
        "generate",
        s(&data),
        "--model",
        s(&pre),
        "--output",
        s(&gen_out),
        "--cell-prompt",
        "X_nope",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("obsm has no \"X_nope\""),
        "{}",
        text(&o)
    );

    assert_eq!(
        std::fs::read(&data).expect("read"),
        before,
        "input modified"
    );

    // Clear errors: a model without a classifier, an unknown objective, a missing label key.
    let o = cellforge(&[
        "annotate",
        "--model",
        s(&pre),
        "--query",
        s(&data),
        "--output",
        s(&out),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("labels.json"),
        "{}",
        text(&o)
    );
    let mut a = finetune_args(s(&data), s(&pre), s(&ft));
    a[10] = "cls,bogus";
    let o = cellforge(&a);
    assert!(
        text(&o).contains("unknown objective \"bogus\""),
        "{}",
        text(&o)
    );
    let mut a = finetune_args(s(&data), s(&pre), s(&ft));
    a[4] = "no_such_column";
    let o = cellforge(&a);
    assert!(
        text(&o).contains("\"no_such_column\" is not a column"),
        "{}",
        text(&o)
    );
}

/// SIGKILL mid-epoch, then `--resume`: the final weights equal those of a run that was never
/// interrupted (same seed; dropout on, so the per-step seeding is exercised).
#[test]
fn killed_finetune_resumes_to_identical_weights() {
    let data = shared_data().join("symphony_pbmcs_small.h5ad");
    let dir = tempfile::tempdir().expect("tempdir");
    let pre = dir.path().join("pre");
    pretrain(&data, &pre);
    let extra = [
        "--checkpoint-every",
        "3",
        "--epochs",
        "3",
        "--batch-size",
        "32",
    ];

    let whole = dir.path().join("whole");
    let mut a = finetune_args(s(&data), s(&pre), s(&whole));
    a.extend_from_slice(&extra);
    let o = cellforge(&a);
    assert!(o.status.success(), "{}", text(&o));

    let resumed = dir.path().join("resumed");
    let mut a = finetune_args(s(&data), s(&pre), s(&resumed));
    a.extend_from_slice(&extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cellforge"))
        .args(&a)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = 0;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("line");
        if line.starts_with("checkpoint:") {
            seen += 1;
            // The second checkpoint is mid-epoch 1 (step 6 of 27 per epoch).
            if seen == 2 {
                break;
            }
        }
    }
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the run must have been killed, not finished"
    );
    let state = std::fs::read_to_string(resumed.join("checkpoint/state.json")).expect("state");
    assert!(state.contains("\"step\""), "{state}");

    let mut a = finetune_args(s(&data), s(&pre), s(&resumed));
    a.extend_from_slice(&extra);
    a.push("--resume");
    let o = cellforge(&a);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // It continued from the checkpoint (not from scratch): the resumed step is past 0.
    let step: u64 = t
        .split("resumed at step ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(step >= 6, "{t}");
    let w1 = std::fs::read(whole.join("model.safetensors")).expect("whole");
    let w2 = std::fs::read(resumed.join("model.safetensors")).expect("resumed");
    assert!(
        w1 == w2,
        "resumed weights differ from the uninterrupted run"
    );
}
