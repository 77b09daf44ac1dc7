//! Subsetting an AnnData by cells and genes (the `adata[cells, genes]` of Python), used by
//! filtering and highly-variable-gene selection. Every element aligned to an axis is cut the
//! same way; elements cellforge cannot cut (opaque ones) are dropped and named.

use super::{AnnData, DataFrame, DenseArray, Element, Mapping, Raw, SparseFormat};
use super::{SparseMatrix, StringArray};

impl DenseArray {
    /// The entries at positions `idx` along `axis` (0 or 1), in that order.
    pub fn take_axis(&self, axis: usize, idx: &[usize]) -> Option<DenseArray> {
        let dim = *self.shape.get(axis)?;
        if idx.iter().any(|&i| i >= dim) {
            return None;
        }
        let outer: usize = self.shape[..axis].iter().product();
        let inner: usize = self.shape[axis + 1..].iter().product();
        let mut positions = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in idx {
                let base = (o * dim + i) * inner;
                positions.extend(base..base + inner);
            }
        }
        let mut shape = self.shape.clone();
        shape[axis] = idx.len();
        DenseArray::new(shape, self.data.gather(&positions))
    }
}

impl SparseMatrix {
    /// Rows (`axis` 0) or columns (`axis` 1) at `idx`, in that order; the format is kept.
    pub fn take_axis(&self, axis: usize, idx: &[usize]) -> Option<SparseMatrix> {
        let major_axis = match self.format {
            SparseFormat::Csr => 0,
            SparseFormat::Csc => 1,
        };
        let dim = self.shape[axis];
        if idx.iter().any(|&i| i >= dim) || axis > 1 {
            return None;
        }
        let mut shape = self.shape;
        shape[axis] = idx.len();
        if axis == major_axis {
            let mut positions = Vec::new();
            let mut indptr = Vec::with_capacity(idx.len() + 1);
            indptr.push(0u64);
            for &i in idx {
                let a = usize::try_from(*self.indptr.get(i)?).ok()?;
                let b = usize::try_from(*self.indptr.get(i + 1)?).ok()?;
                positions.extend(a..b);
                indptr.push(positions.len() as u64);
            }
            let indices = positions.iter().map(|&p| self.indices[p]).collect();
            Some(SparseMatrix {
                format: self.format,
                shape,
                data: self.data.gather(&positions),
                indices,
                indptr,
            })
        } else {
            // Minor axis: renumber kept minor indices; a repeated index is not supported
            // (cellforge only cuts with increasing, distinct positions there).
            let mut new_pos = vec![u32::MAX; dim];
            for (k, &i) in idx.iter().enumerate() {
                if new_pos[i] != u32::MAX {
                    return None;
                }
                new_pos[i] = k as u32;
            }
            let sorted = idx.windows(2).all(|w| w[0] < w[1]);
            let mut positions = Vec::new();
            let mut indices = Vec::new();
            let mut indptr = Vec::with_capacity(self.indptr.len());
            indptr.push(0u64);
            for w in self.indptr.windows(2) {
                let a = usize::try_from(w[0]).ok()?;
                let b = usize::try_from(w[1]).ok()?;
                let start = positions.len();
                for p in a..b {
                    let m = *new_pos.get(self.indices[p] as usize)?;
                    if m != u32::MAX {
                        positions.push(p);
                        indices.push(m);
                    }
                }
                if !sorted {
                    let mut pairs: Vec<(u32, usize)> = indices[start..]
                        .iter()
                        .copied()
                        .zip(positions[start..].iter().copied())
                        .collect();
                    pairs.sort_unstable();
                    for (k, (m, p)) in pairs.into_iter().enumerate() {
                        indices[start + k] = m;
                        positions[start + k] = p;
                    }
                }
                indptr.push(positions.len() as u64);
            }
            Some(SparseMatrix {
                format: self.format,
                shape,
                data: self.data.gather(&positions),
                indices,
                indptr,
            })
        }
    }
}

impl DataFrame {
    /// The rows at `idx`, in that order.
    pub fn take_rows(&self, idx: &[usize]) -> Option<DataFrame> {
        let index = idx
            .iter()
            .map(|&i| self.index.get(i).cloned())
            .collect::<Option<Vec<_>>>()?;
        let mut columns = Vec::with_capacity(self.columns.len());
        for (name, col) in &self.columns {
            columns.push((name.clone(), col.take_axis(0, idx)?));
        }
        Some(DataFrame {
            index_name: self.index_name.clone(),
            index,
            columns,
        })
    }
}

impl Element {
    /// The element cut along `axis` (0 = first axis) at `idx`; `None` when it cannot be cut
    /// that way (opaque elements, scalars, dicts, out-of-range positions).
    pub fn take_axis(&self, axis: usize, idx: &[usize]) -> Option<Element> {
        let take1 = |len: usize| idx.iter().all(|&i| i < len);
        Some(match self {
            Element::Dense(a) => Element::Dense(a.take_axis(axis, idx)?),
            Element::Sparse(s) => Element::Sparse(s.take_axis(axis, idx)?),
            Element::DataFrame(d) if axis == 0 => Element::DataFrame(d.take_rows(idx)?),
            Element::Strings(s) if axis == 0 && s.shape.len() == 1 && take1(s.values.len()) => {
                Element::Strings(StringArray::from_vec(
                    idx.iter().map(|&i| s.values[i].clone()).collect(),
                ))
            }
            Element::Categorical(c) if axis == 0 && take1(c.codes.len()) => {
                let mut c2 = c.clone();
                c2.codes = idx.iter().map(|&i| c.codes[i]).collect();
                Element::Categorical(c2)
            }
            Element::NullableInteger { values, mask } if axis == 0 && take1(mask.len()) => {
                Element::NullableInteger {
                    values: values.gather(idx),
                    mask: idx.iter().map(|&i| mask[i]).collect(),
                }
            }
            Element::NullableBoolean { values, mask }
                if axis == 0 && take1(mask.len()) && take1(values.len()) =>
            {
                Element::NullableBoolean {
                    values: idx.iter().map(|&i| values[i]).collect(),
                    mask: idx.iter().map(|&i| mask[i]).collect(),
                }
            }
            Element::NullableString {
                values,
                mask,
                na_value,
            } if axis == 0 && take1(mask.len()) && take1(values.len()) => Element::NullableString {
                values: idx.iter().map(|&i| values[i].clone()).collect(),
                mask: idx.iter().map(|&i| mask[i]).collect(),
                na_value: na_value.clone(),
            },
            _ => return None,
        })
    }
}

fn take_mapping(
    m: &Mapping,
    axes: &[(usize, &[usize])],
    slot: &str,
    dropped: &mut Vec<String>,
) -> Mapping {
    let mut out = Mapping::new();
    for (name, el) in m {
        let mut cur = Some(el.clone());
        for &(axis, idx) in axes {
            cur = cur.and_then(|e| e.take_axis(axis, idx));
        }
        match cur {
            Some(e) => {
                out.insert(name.clone(), e);
            }
            None => dropped.push(format!("{slot}[\"{name}\"]")),
        }
    }
    out
}

/// Positions `0..n` (no cut).
fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

impl AnnData {
    /// `adata[cells, genes]`: a copy holding the given cells and genes (each `None` = all),
    /// with X, layers, obs/var, obsm/varm, obsp/varp and raw's rows cut alike. Returns the
    /// copy and the elements that could not be cut and were left out (e.g. opaque ones).
    pub fn subset(
        &self,
        cells: Option<&[usize]>,
        genes: Option<&[usize]>,
    ) -> (AnnData, Vec<String>) {
        let all_cells;
        let all_genes;
        let cells = match cells {
            Some(c) => c,
            None => {
                all_cells = all(self.n_obs());
                &all_cells
            }
        };
        let genes = match genes {
            Some(g) => g,
            None => {
                all_genes = all(self.n_vars());
                &all_genes
            }
        };
        let mut dropped = Vec::new();
        let x = self.x.as_ref().and_then(|x| {
            let cut = x.take_axis(0, cells).and_then(|e| e.take_axis(1, genes));
            if cut.is_none() {
                dropped.push("X".to_string());
            }
            cut
        });
        let obs = self.obs.take_rows(cells).unwrap_or_else(|| {
            dropped.push("obs columns".into());
            DataFrame::with_index(cells.iter().map(|&i| self.obs.index[i].clone()).collect())
        });
        let var = self.var.take_rows(genes).unwrap_or_else(|| {
            dropped.push("var columns".into());
            DataFrame::with_index(genes.iter().map(|&i| self.var.index[i].clone()).collect())
        });
        let raw = self.raw.as_ref().and_then(|r| {
            let x = r.x.take_axis(0, cells);
            if x.is_none() {
                dropped.push("raw".into());
            }
            x.map(|x| Raw {
                x,
                var: r.var.clone(),
                varm: r.varm.clone(),
            })
        });
        let out = AnnData {
            x,
            obs,
            var,
            obsm: take_mapping(&self.obsm, &[(0, cells)], "obsm", &mut dropped),
            varm: take_mapping(&self.varm, &[(0, genes)], "varm", &mut dropped),
            obsp: take_mapping(&self.obsp, &[(0, cells), (1, cells)], "obsp", &mut dropped),
            varp: take_mapping(&self.varp, &[(0, genes), (1, genes)], "varp", &mut dropped),
            layers: take_mapping(
                &self.layers,
                &[(0, cells), (1, genes)],
                "layers",
                &mut dropped,
            ),
            uns: self.uns.clone(),
            raw,
        };
        (out, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anndata::ArrayData;

    fn csr() -> SparseMatrix {
        // [[1 0 2], [0 3 0], [4 0 5]]
        SparseMatrix {
            format: SparseFormat::Csr,
            shape: [3, 3],
            data: ArrayData::F32(vec![1., 2., 3., 4., 5.]),
            indices: vec![0, 2, 1, 0, 2],
            indptr: vec![0, 2, 3, 5],
        }
    }

    #[test]
    fn sparse_cuts_match_dense_cuts() {
        let s = csr();
        let d = s.to_dense();
        for (axis, idx) in [
            (0, vec![2, 0]),
            (1, vec![0, 2]),
            (1, vec![2, 1]),
            (0, vec![]),
        ] {
            let a = s.take_axis(axis, &idx).unwrap().to_dense();
            let b = d.take_axis(axis, &idx).unwrap();
            assert_eq!(a, b, "axis {axis} idx {idx:?}");
            let c = s
                .to_format(SparseFormat::Csc)
                .take_axis(axis, &idx)
                .unwrap();
            assert_eq!(c.to_dense(), b, "csc axis {axis} idx {idx:?}");
        }
        assert!(s.take_axis(0, &[3]).is_none());
    }
}
