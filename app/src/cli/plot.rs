//! `cellforge plot`: a publication figure of an embedding (PNG at a chosen DPI, or SVG),
//! coloured by an obs column or a gene, with scanpy's palettes and marker sizes.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cellforge_core::io::read_h5ad_with_warnings;
use cellforge_core::tl::plot::scatter_data;

use crate::figure::{
    Colormap, DrawOrder, ScatterFigure, color_by, render_png, render_svg, write_atomic,
};

#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// The .h5ad file (only read).
    pub input: PathBuf,
    /// The figure to write: .png or .svg (temporary file, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// obsm key of the embedding (`umap` finds `X_umap`).
    #[arg(long, default_value = "X_umap")]
    pub basis: String,
    /// obs column or gene to colour by (scanpy's `color=`).
    #[arg(long)]
    pub color: Option<String>,
    /// Layer the gene values come from (default X; `raw` for raw/X).
    #[arg(long)]
    pub layer: Option<String>,
    /// Components to plot, 1-based (`--components 2,3`).
    #[arg(long, default_value = "1,2")]
    pub components: String,
    /// Colormap for genes and numeric columns: viridis, magma or reds.
    #[arg(long, default_value = "viridis")]
    pub cmap: String,
    /// Width in inches.
    #[arg(long, default_value_t = 6.0)]
    pub width: f32,
    /// Height in inches.
    #[arg(long, default_value_t = 4.5)]
    pub height: f32,
    /// Resolution of a PNG (dots per inch).
    #[arg(long, default_value_t = 300.0)]
    pub dpi: f32,
    /// Marker diameter in points (default: scanpy's, from the number of cells).
    #[arg(long)]
    pub point_size: Option<f32>,
    /// Title (default: the colour key).
    #[arg(long)]
    pub title: Option<String>,
    /// Append the number of cells to each legend entry.
    #[arg(long)]
    pub counts: bool,
}

pub fn run(a: &PlotArgs) -> anyhow::Result<()> {
    let ext = a
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let svg = match ext.as_deref() {
        Some("png") => false,
        Some("svg") => true,
        _ => bail!("the output {} must end in .png or .svg", a.output.display()),
    };
    let comps: Vec<usize> = a
        .components
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .ok()
        .filter(|v: &Vec<usize>| v.len() == 2 && v.iter().all(|&c| c >= 1))
        .with_context(|| {
            format!(
                "--components takes two 1-based numbers such as 1,2 (got {})",
                a.components
            )
        })?;
    let cmap = match a.cmap.to_ascii_lowercase().as_str() {
        "viridis" => Colormap::Viridis,
        "magma" => Colormap::Magma,
        "reds" => Colormap::Reds,
        other => bail!("unknown colormap {other}: use viridis, magma or reds"),
    };
    let (adata, _) = read_h5ad_with_warnings(&a.input)
        .with_context(|| format!("reading {}", a.input.display()))?;
    let data = scatter_data(
        &adata,
        &a.basis,
        a.color.as_deref(),
        a.layer.as_deref(),
        (comps[0] - 1, comps[1] - 1),
    )?;
    let n = data.points.len();
    let (colors, title) = color_by(data.color, n, cmap);
    let mut fig = ScatterFigure::new(data.points, colors);
    fig.x_label = data.x_label;
    fig.y_label = data.y_label;
    fig.title = a.title.clone().unwrap_or(title);
    fig.show_counts = a.counts;
    fig.draw_order = DrawOrder::Auto;
    if let Some(p) = a.point_size {
        fig.point_size_pt = p;
    }
    fig.validate()?;
    let bytes = if svg {
        render_svg(&fig, a.width, a.height).into_bytes()
    } else {
        render_png(&fig, a.width, a.height, a.dpi)?
    };
    write_atomic(&a.output, &bytes).with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "wrote {} ({} cells, {} x {} in{})",
        a.output.display(),
        n,
        a.width,
        a.height,
        if svg {
            String::new()
        } else {
            format!(" at {} dpi", a.dpi)
        }
    );
    Ok(())
}
