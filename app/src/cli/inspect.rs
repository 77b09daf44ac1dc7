//! `cellforge inspect FILE.h5ad`

use std::path::PathBuf;

use anyhow::Context;
use cellforge_core::summary::Summary;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .h5ad file to describe (opened read-only).
    pub file: PathBuf,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // X is streamed in row chunks, so inspecting a file larger than memory works.
    let (summary, warnings) = Summary::of_file(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary_json(&summary, &warnings))?
        );
    } else {
        print!("{}", summary.render());
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

fn summary_json(s: &Summary, warnings: &[cellforge_core::io::ReadWarning]) -> serde_json::Value {
    serde_json::json!({
        "n_obs": s.n_obs,
        "n_vars": s.n_vars,
        "file_size_bytes": s.file_size_bytes,
        "x": s.x.as_ref().map(|x| serde_json::json!({
            "encoding": x.encoding, "dtype": x.dtype, "shape": x.shape, "stored": x.stored,
            "density": x.density, "min": x.min, "max": x.max, "nan": x.nan, "inf": x.inf,
            "looks_like_counts": x.looks_like_counts,
        })),
        "x_verdict": s.x_verdict(),
        "obs": s.obs.iter().map(|c| serde_json::json!({"name": c.name, "kind": c.kind, "n_categories": c.n_categories})).collect::<Vec<_>>(),
        "var": s.var.iter().map(|c| serde_json::json!({"name": c.name, "kind": c.kind, "n_categories": c.n_categories})).collect::<Vec<_>>(),
        "obsm": s.obsm.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "varm": s.varm.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "obsp": s.obsp.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "varp": s.varp.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "layers": s.layers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "uns": s.uns,
        "raw": s.raw,
        "warnings": warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
    })
}
