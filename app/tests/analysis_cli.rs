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
    plot_figures(&p("umap.h5ad"), dir.path());
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

/// `plot` on the UMAP: a PNG by cluster (size and DPI as asked, one colour per cluster), an
/// SVG by a gene (one circle per cell), and clear errors.
fn plot_figures(umap: &Path, dir: &Path) {
    let adata = cellforge_core::io::read_h5ad(umap).expect("read umap.h5ad");
    let n = adata.n_obs();
    let gene = adata.var.index[0].clone();
    let n_clusters = match adata.obs.column("leiden") {
        Some(cellforge_core::anndata::Element::Categorical(c)) => c.n_categories(),
        other => panic!("leiden column: {other:?}"),
    };
    let png_path = dir.join("umap_leiden.png");
    let t = ok(&[
        "plot",
        s(umap),
        "-o",
        s(&png_path),
        "--color",
        "leiden",
        "--width",
        "5",
        "--height",
        "4",
        "--dpi",
        "120",
    ]);
    assert!(t.contains(&format!("{n} cells")), "{t}");
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).expect("open png"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let info = reader.info().clone();
    assert_eq!((info.width, info.height), (600, 480));
    let dims = info.pixel_dims.expect("pHYs chunk");
    assert_eq!(dims.xppu, (120.0f64 / 0.0254).round() as u32);
    let mut buf = vec![0u8; reader.output_buffer_size().expect("size")];
    let frame = reader.next_frame(&mut buf).expect("png data");
    let px = frame.line_size / frame.width as usize;
    let colours: std::collections::HashSet<&[u8]> = buf[..frame.buffer_size()]
        .chunks_exact(px)
        .filter(|c| {
            // saturated pixels only: point centres, not anti-aliased edges or grey text
            let (mx, mn) = (c[..3].iter().max(), c[..3].iter().min());
            matches!((mx, mn), (Some(&a), Some(&b)) if a - b > 60)
        })
        .collect();
    assert!(
        colours.len() >= n_clusters,
        "{} saturated colours for {n_clusters} clusters",
        colours.len()
    );

    let svg_path = dir.join("umap_gene.svg");
    ok(&[
        "plot",
        s(umap),
        "-o",
        s(&svg_path),
        "--color",
        &gene,
        "--cmap",
        "magma",
    ]);
    let svg = std::fs::read_to_string(&svg_path).expect("svg");
    assert!(
        svg.starts_with("<?xml") || svg.starts_with("<svg"),
        "not an SVG"
    );
    assert_eq!(svg.matches("<circle").count(), n, "one circle per cell");
    assert!(svg.contains(&gene), "the colorbar names the gene");

    fails(
        &[
            "plot",
            s(umap),
            "-o",
            s(&dir.join("x.png")),
            "--color",
            "no_such_thing",
        ],
        "is neither an obs column",
    );
    fails(
        &[
            "plot",
            s(umap),
            "-o",
            s(&dir.join("x.png")),
            "--basis",
            "X_tsne",
        ],
        "obsm has no \"X_tsne\"",
    );
    fails(
        &["plot", s(umap), "-o", s(&dir.join("x.pdf"))],
        "must end in .png or .svg",
    );
    assert!(!dir.join("x.png").exists());
}
