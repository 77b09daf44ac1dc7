//! What a scatter figure of cells shows: two coordinates per cell from an embedding
//! (`obsm`) and a colour per cell from an obs column or a gene's expression, resolved the
//! way scanpy's `sc.pl.embedding(adata, basis, color=...)` resolves them.
//!
//! - `basis` names an obsm key; `"umap"` also finds `"X_umap"` (scanpy's convention). Axis
//!   labels follow scanpy: `UMAP1`/`UMAP2`, `PC1`/`PC2`, `tSNE1`/`tSNE2`, otherwise the key
//!   without its `X_` prefix and the component number.
//! - `color` is looked up in obs first, then among the genes (var names). Categorical,
//!   string and boolean obs columns colour by category (scanpy's `uns["<key>_colors"]` is
//!   used when it holds one colour per category); numeric columns and genes colour on a
//!   continuous scale (missing values are NaN).

use crate::anndata::{AnnData, ArrayData, Categorical, Element};

use super::analyze::{ToolError, element_to_dense, expression, input};

/// How the cells are coloured.
#[derive(Debug, Clone, PartialEq)]
pub enum PlotColor {
    /// One colour for every cell.
    None,
    /// By category: `codes[i]` indexes `names` (-1: missing). `colors`: the file's own
    /// colours for the categories (`uns["<key>_colors"]`, hex strings), when it has them.
    Categorical {
        key: String,
        codes: Vec<i32>,
        names: Vec<String>,
        colors: Option<Vec<String>>,
    },
    /// By value (NaN: missing).
    Continuous { key: String, values: Vec<f32> },
}

/// The points and colours of an embedding scatter.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterData {
    /// The obsm key used.
    pub basis: String,
    /// Axis labels (`UMAP1`, `UMAP2`, ...).
    pub x_label: String,
    pub y_label: String,
    /// One point per cell (non-finite coordinates are kept; renderers skip them).
    pub points: Vec<[f32; 2]>,
    pub color: PlotColor,
}

/// The scatter of `obsm[basis]` (columns `components.0` and `components.1`, 0-based)
/// coloured by `color` (an obs column or a gene; gene values from `layer`, default X).
pub fn scatter_data(
    adata: &AnnData,
    basis: &str,
    color: Option<&str>,
    layer: Option<&str>,
    components: (usize, usize),
) -> Result<ScatterData, ToolError> {
    let key = if adata.obsm.contains_key(basis) {
        basis.to_string()
    } else if adata.obsm.contains_key(&format!("X_{basis}")) {
        format!("X_{basis}")
    } else {
        let keys: Vec<&str> = adata.obsm.keys().map(String::as_str).collect();
        return Err(input(format!(
            "obsm has no \"{basis}\" (it has: {}); run `cellforge umap` or `cellforge pca` first",
            if keys.is_empty() {
                "nothing".into()
            } else {
                keys.join(", ")
            }
        )));
    };
    let e = adata
        .obsm
        .get(&key)
        .ok_or_else(|| input(format!("obsm has no \"{key}\"")))?;
    let (data, n, d) = element_to_dense(e, &format!("obsm[\"{key}\"]"))?;
    let (cx, cy) = components;
    if cx >= d || cy >= d {
        return Err(input(format!(
            "obsm[\"{key}\"] has {d} columns; components {} and {} were asked for",
            cx + 1,
            cy + 1
        )));
    }
    let points: Vec<[f32; 2]> = (0..n)
        .map(|i| [data[i * d + cx], data[i * d + cy]])
        .collect();
    let stem = key.strip_prefix("X_").unwrap_or(&key);
    let prefix = match stem.to_ascii_lowercase().as_str() {
        "umap" => "UMAP".to_string(),
        "pca" => "PC".to_string(),
        "tsne" => "tSNE".to_string(),
        _ => stem.to_string(),
    };
    let color = match color {
        None => PlotColor::None,
        Some(c) => color_of(adata, c, layer, n)?,
    };
    Ok(ScatterData {
        basis: key,
        x_label: format!("{prefix}{}", cx + 1),
        y_label: format!("{prefix}{}", cy + 1),
        points,
        color,
    })
}

fn categorical(key: &str, c: Categorical, adata: &AnnData) -> PlotColor {
    let names = c.category_labels();
    let colors = match adata.uns.get(&format!("{key}_colors")) {
        Some(Element::Strings(s)) if s.values.len() == names.len() => Some(s.values.clone()),
        _ => None,
    };
    PlotColor::Categorical {
        key: key.to_string(),
        codes: c.codes,
        names,
        colors,
    }
}

fn color_of(
    adata: &AnnData,
    key: &str,
    layer: Option<&str>,
    n: usize,
) -> Result<PlotColor, ToolError> {
    if let Some(col) = adata.obs.column(key) {
        let out = match col {
            Element::Categorical(c) => categorical(key, c.clone(), adata),
            Element::Strings(s) => {
                let labels: Vec<Option<&str>> = s.values.iter().map(|v| Some(v.as_str())).collect();
                categorical(key, Categorical::from_labels(&labels), adata)
            }
            Element::NullableString { values, mask, .. } => {
                let labels: Vec<Option<&str>> = values
                    .iter()
                    .zip(mask)
                    .map(|(v, &m)| (!m).then_some(v.as_str()))
                    .collect();
                categorical(key, Categorical::from_labels(&labels), adata)
            }
            Element::NullableBoolean { values, mask } => {
                let labels: Vec<Option<&str>> = values
                    .iter()
                    .zip(mask)
                    .map(|(&v, &m)| (!m).then_some(if v { "True" } else { "False" }))
                    .collect();
                categorical(key, Categorical::from_labels(&labels), adata)
            }
            Element::Dense(a) if a.shape.len() == 1 => match &a.data {
                ArrayData::Bool(b) => {
                    let labels: Vec<Option<&str>> = b
                        .iter()
                        .map(|&v| Some(if v { "True" } else { "False" }))
                        .collect();
                    categorical(key, Categorical::from_labels(&labels), adata)
                }
                other => PlotColor::Continuous {
                    key: key.to_string(),
                    values: (0..other.len())
                        .map(|i| other.get_f64(i).map(|v| v as f32).unwrap_or(f32::NAN))
                        .collect(),
                },
            },
            Element::NullableInteger { values, mask } => PlotColor::Continuous {
                key: key.to_string(),
                values: (0..values.len())
                    .map(|i| match (mask.get(i), values.get_f64(i)) {
                        (Some(false), Some(v)) => v as f32,
                        _ => f32::NAN,
                    })
                    .collect(),
            },
            other => {
                return Err(input(format!(
                    "obs[\"{key}\"] is a {}, which cannot colour cells",
                    other.encoding_type()
                )));
            }
        };
        let len = match &out {
            PlotColor::Categorical { codes, .. } => codes.len(),
            PlotColor::Continuous { values, .. } => values.len(),
            PlotColor::None => n,
        };
        if len != n {
            return Err(input(format!(
                "obs[\"{key}\"] has {len} values for {n} cells"
            )));
        }
        return Ok(out);
    }
    // a gene
    let (m, genes) = expression(adata, layer)?;
    let Some(g) = genes.iter().position(|v| v == key) else {
        let lower = key.to_ascii_lowercase();
        let close: Vec<&str> = genes
            .iter()
            .filter(|v| v.to_ascii_lowercase() == lower)
            .map(String::as_str)
            .take(3)
            .collect();
        let cols: Vec<&str> = adata.obs.columns.iter().map(|(k, _)| k.as_str()).collect();
        return Err(input(format!(
            "\"{key}\" is neither an obs column ({}) nor a gene{}",
            if cols.is_empty() {
                "there are none".to_string()
            } else {
                cols.join(", ")
            },
            if close.is_empty() {
                String::new()
            } else {
                format!(" (did you mean {}?)", close.join(", "))
            }
        )));
    };
    let x = m.view()?;
    if x.n_rows() != n {
        return Err(input(format!(
            "the expression has {} cells, the embedding {n}",
            x.n_rows()
        )));
    }
    let mut values = vec![0.0f32; n];
    for (i, v) in values.iter_mut().enumerate() {
        x.for_row(i, |j, val| {
            if j == g {
                *v = val;
            }
        });
    }
    Ok(PlotColor::Continuous {
        key: key.to_string(),
        values,
    })
}
