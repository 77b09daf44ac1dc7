//! The analysis commands end to end on real data (symphony PBMCs): `pca` -> `neighbors` ->
//! `leiden` -> `umap` -> `rank-genes`, each output read by Python anndata and compared with
//! scanpy / scikit-learn run on the same input (`scripts/interop/check_analysis.py`); bad
//! requests fail with a message naming the problem; the input is never modified.

mod common;

use std::path::Path;

use cellforge_e2e::{run_script, shared_data};
use common::{cellforge, text};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn ok(args: &[&str]) -> String {
    let o = cellforge(args);
    let t = text(&o);
    assert!(o.status.success(), "cellforge {args:?} failed:\n{t}");
    t
}

fn fails(args: &[&str], needle: &str) {
    let o = cellforge(args);
    let t = text(&o);
    assert!(!o.status.success(), "cellforge {args:?} should fail:\n{t}");
    assert!(t.contains(needle), "expected \"{needle}\" in:\n{t}");
}

#[test]
fn pca_neighbors_leiden_umap_rank_genes_match_scanpy() {
    let data = shared_data().join("symphony_pbmcs_small.h5ad");
    let before = std::fs::read(&data).expect("read input");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);

    let t = ok(&["pca", s(&data), "-o", s(&p("pca.h5ad")), "--n-comps", "30"]);
    assert!(t.contains("30 components of 1767 genes"), "{t}");
    ok(&[
        "neighbors",
        s(&p("pca.h5ad")),
        "-o",
        s(&p("nn.h5ad")),
        "--use-rep",
        "X_pca",
    ]);
    let t = ok(&["leiden", s(&p("nn.h5ad")), "-o", s(&p("leiden.h5ad"))]);
    assert!(t.contains("clusters"), "{t}");
    ok(&["umap", s(&p("leiden.h5ad")), "-o", s(&p("umap.h5ad"))]);
    let t = ok(&[
        "rank-genes",
        s(&p("umap.h5ad")),
        "-o",
        s(&p("de.h5ad")),
        "--groupby",
        "cell_type",
    ]);
    assert!(t.contains("top genes"), "{t}");

    let checks = [
        format!("pca={}", s(&p("pca.h5ad"))),
        format!("neighbors={}", s(&p("nn.h5ad"))),
        format!("leiden={}", s(&p("leiden.h5ad"))),
        format!("umap={}", s(&p("umap.h5ad"))),
        format!("de={}", s(&p("de.h5ad"))),
    ];
    let mut args: Vec<&std::ffi::OsStr> = vec!["--input".as_ref(), data.as_os_str()];
    args.extend(checks.iter().map(|c| std::ffi::OsStr::new(c.as_str())));
    let o = run_script("check_analysis.py", &args);
    let t = text(&o);
    println!("{t}");
    assert!(o.status.success(), "{t}");
    assert_eq!(
        t.matches("\nok ").count() + usize::from(t.starts_with("ok ")),
        5,
        "{t}"
    );

    // pbmc68k: DE on raw (log-normalised) by bulk_labels, whose names include a "/"
    let pbmc = shared_data().join("pbmc68k_reduced.h5ad");
    let t = ok(&[
        "rank-genes",
        s(&pbmc),
        "-o",
        s(&p("de68k.h5ad")),
        "--groupby",
        "bulk_labels",
        "--method",
        "t-test",
    ]);
    assert!(t.contains("on raw"), "{t}");
    let check = format!("de={}", s(&p("de68k.h5ad")));
    let o = run_script(
        "check_analysis.py",
        &[
            "--input".as_ref(),
            pbmc.as_os_str(),
            std::ffi::OsStr::new(check.as_str()),
        ],
    );
    let t = text(&o);
    println!("{t}");
    assert!(o.status.success() && t.contains("ok de: 10 groups"), "{t}");

    // bad requests: clear messages, nothing written
    fails(
        &[
            "rank-genes",
            s(&p("umap.h5ad")),
            "-o",
            s(&p("x.h5ad")),
            "--groupby",
            "no_such_column",
        ],
        "\"no_such_column\" is not a column",
    );
    fails(
        &[
            "neighbors",
            s(&data),
            "-o",
            s(&p("x.h5ad")),
            "--use-rep",
            "X_nope",
        ],
        "obsm has no \"X_nope\"",
    );
    fails(
        &["neighbors", s(&data), "-o", s(&p("x.h5ad"))],
        "run `cellforge pca` first",
    );
    fails(
        &["leiden", s(&p("nn.h5ad")), "-o", s(&p("nn.h5ad"))],
        "never overwrites its input",
    );
    fails(
        &["pca", s(&data), "-o", s(&p("x.h5ad")), "--n-comps", "5000"],
        "n_comps = 5000",
    );
    assert!(!p("x.h5ad").exists());
    assert_eq!(
        std::fs::read(&data).expect("reread"),
        before,
        "input modified"
    );
}
