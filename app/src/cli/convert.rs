//! `cellforge convert IN.h5ad --output OUT.h5ad [--compression] [--x-format]`

use std::path::PathBuf;

use anyhow::{Context, bail};
use cellforge_core::io::{Compression, WriteOptions, XFormat, read_h5ad_with_warnings, write_h5ad};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Lzf,
    None,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum XFormatArg {
    Csr,
    Csc,
    Dense,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .h5ad file to read (never modified).
    pub input: PathBuf,
    /// Where to write the converted file (written to a temporary file, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Compression of the written datasets.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// Store X as CSR, CSC or dense (default: as in the input).
    #[arg(long, value_enum)]
    pub x_format: Option<XFormatArg>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if cellforge_core::io::same_file(&args.input, &args.output) {
        bail!(
            "the output {} is the input file; cellforge never overwrites its input: choose another output path",
            args.output.display()
        );
    }
    let (adata, warnings) = read_h5ad_with_warnings(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let opts = WriteOptions {
        compression: match args.compression {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Lzf => Compression::Lzf,
            CompressionArg::None => Compression::None,
        },
        x_format: args.x_format.map(|f| match f {
            XFormatArg::Csr => XFormat::Csr,
            XFormatArg::Csc => XFormat::Csc,
            XFormatArg::Dense => XFormat::Dense,
        }),
    };
    write_h5ad(&adata, &args.output, &opts)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "wrote {} ({} cells x {} genes)",
        args.output.display(),
        adata.n_obs(),
        adata.n_vars()
    );
    Ok(())
}
