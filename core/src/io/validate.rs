//! Structural checks of an [`AnnData`] against the AnnData rules (shapes of X, layers, obsm,
//! varm, obsp, varp and raw), returning hard errors for broken structure and warnings for
//! content a user must know about (NaN/Inf in X, duplicate cell or gene names).

use super::error::{H5adError, Result};
use super::read::ReadWarning;
use crate::anndata::{AnnData, Element, Mapping};

fn matrix_shape(el: &Element) -> Option<Vec<usize>> {
    match el {
        Element::Dense(a) => Some(a.shape.clone()),
        Element::Sparse(s) => Some(s.shape.to_vec()),
        _ => None,
    }
}

fn check_matrix(el: &Element, element: &str, rows: usize, cols: usize) -> Result<()> {
    if let Element::Opaque(o) = el {
        return Err(H5adError::UnknownEncoding {
            element: element.to_string(),
            encoding_type: o.kind.clone(),
            version: String::new(),
        });
    }
    let Some(shape) = matrix_shape(el) else {
        return Err(H5adError::invalid(
            element,
            format!("must be a dense or sparse matrix, found {}", el.describe()),
        ));
    };
    if shape != [rows, cols] {
        return Err(H5adError::shape(
            element,
            format!(
                "is {} but must be {} x {} (cells x genes)",
                crate::anndata::fmt_shape(&shape),
                rows,
                cols
            ),
        ));
    }
    Ok(())
}

fn check_first_dims(map: &Mapping, slot: &str, dims: &[usize], what: &str) -> Result<()> {
    for (name, el) in map {
        let element = format!("/{slot}/{name}");
        let shape = match el {
            Element::Opaque(o) => o.len.map(|n| vec![n]),
            other => other.shape(),
        };
        let Some(shape) = shape else {
            return Err(H5adError::invalid(
                &element,
                format!("must be an array or dataframe, found {}", el.describe()),
            ));
        };
        if shape.len() < dims.len() && !matches!(el, Element::Opaque(_)) {
            return Err(H5adError::shape(
                &element,
                format!("needs at least {} dimensions", dims.len()),
            ));
        }
        for (axis, (&have, &want)) in shape.iter().zip(dims).enumerate() {
            if have != want {
                return Err(H5adError::shape(
                    &element,
                    format!(
                        "axis {axis} has length {have} but must equal the number of {what} ({want})"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The warnings for NaN and infinite values in X.
pub(crate) fn non_finite_warnings(nan: usize, inf: usize) -> Vec<ReadWarning> {
    let mut out = Vec::new();
    if nan > 0 {
        out.push(ReadWarning {
            element: "/X".into(),
            message: format!(
                "{nan} NaN value(s) in X; models and statistics treat them as missing data \
                 and most will fail: fix the upstream step that produced them"
            ),
        });
    }
    if inf > 0 {
        out.push(ReadWarning {
            element: "/X".into(),
            message: format!("{inf} infinite value(s) (Inf) in X"),
        });
    }
    out
}

/// Validates the structure; returns warnings for suspicious content.
pub(crate) fn validate(a: &AnnData) -> Result<Vec<ReadWarning>> {
    let (n_obs, n_vars) = (a.n_obs(), a.n_vars());
    let mut warnings = Vec::new();
    if let Some(x) = &a.x {
        check_matrix(x, "/X", n_obs, n_vars)?;
        let data = match x {
            Element::Dense(d) => Some(&d.data),
            Element::Sparse(s) => Some(&s.data),
            _ => None,
        };
        if let Some(data) = data {
            let (nan, inf) = data.count_non_finite();
            warnings.extend(non_finite_warnings(nan, inf));
        }
    }
    for (name, layer) in &a.layers {
        check_matrix(layer, &format!("/layers/{name}"), n_obs, n_vars)?;
    }
    check_first_dims(&a.obsm, "obsm", &[n_obs], "cells")?;
    check_first_dims(&a.varm, "varm", &[n_vars], "genes")?;
    check_first_dims(&a.obsp, "obsp", &[n_obs, n_obs], "cells")?;
    check_first_dims(&a.varp, "varp", &[n_vars, n_vars], "genes")?;
    if let Some(raw) = &a.raw {
        check_matrix(&raw.x, "/raw/X", n_obs, raw.var.n_rows())?;
        check_first_dims(&raw.varm, "raw/varm", &[raw.var.n_rows()], "raw genes")?;
    }
    for (frame, what) in [(&a.obs, "obs"), (&a.var, "var")] {
        let dups = frame.duplicate_index_values(5);
        if !dups.is_empty() {
            warnings.push(ReadWarning {
                element: format!("/{what}"),
                message: format!(
                    "duplicate {what} names (e.g. {}); names should be unique \
                     (anndata: .{what}_names_make_unique())",
                    dups.join(", ")
                ),
            });
        }
    }
    Ok(warnings)
}
