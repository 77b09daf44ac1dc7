//! The gene network view: genes as nodes coloured by gene program, edges where the model's
//! gene embeddings are similar (cosine at or above a slider threshold), laid out with UMAP on
//! the similarity graph. Nodes are drawn by the GPU scatter widget, edges as one line mesh on
//! top; search finds a gene and lists its closest neighbours.

use cellforge_core::analysis::knn::{Metric, neighbors};
use cellforge_core::analysis::umap::{UmapOptions, umap};
use cellforge_core::analysis::{CsrMatrix, DenseMatrix};
use cellforge_core::anndata::{AnnData, Element};

/// Genes, programs, edges and a layout.
#[derive(Debug, Clone)]
pub struct GeneNetwork {
    pub genes: Vec<String>,
    /// Program index per gene, `-1` when the gene is in no program.
    pub programs: Vec<i32>,
    pub program_names: Vec<String>,
    /// `(a, b, cosine)` with `a < b`, strongest first.
    pub edges: Vec<(u32, u32, f32)>,
    /// Node positions (UMAP of the similarity graph).
    pub positions: Vec<[f32; 2]>,
    /// The weakest similarity stored (the threshold gene programs were run with).
    pub min_similarity: f32,
}

/// Builds the network from what the gene-programs step wrote (`var["gene_program"]`,
/// `varp["gene_similarity"]`) and lays it out.
pub fn build(a: &AnnData, seed: u64) -> Result<GeneNetwork, String> {
    let sim = a.varp.get("gene_similarity").ok_or_else(|| {
        "the data has no gene similarity network yet: run Gene programs first".to_string()
    })?;
    let g = cellforge_core::tl::analyze::graph_from_element(sim, "varp gene_similarity")
        .map_err(|e| e.to_string())?;
    let n_vars = a.n_vars();
    if g.n_rows != n_vars {
        return Err(format!(
            "varp gene_similarity has {} rows for {n_vars} genes",
            g.n_rows
        ));
    }
    let (codes, program_names) = match a.var.categorical("gene_program") {
        Ok(c) => {
            let names = c.category_labels();
            (c.codes, names)
        }
        Err(_) => (vec![-1; n_vars], Vec::new()),
    };
    // Genes in a program or with an edge.
    let mut keep = vec![false; n_vars];
    for (i, k) in keep.iter_mut().enumerate() {
        *k = codes.get(i).is_some_and(|&c| c >= 0) || g.indptr[i + 1] > g.indptr[i];
    }
    // Position of each kept gene among the kept ones.
    let index: Vec<Option<u32>> = keep
        .iter()
        .scan(0u32, |next, &k| {
            let here = *next;
            *next += u32::from(k);
            Some(k.then_some(here))
        })
        .collect();
    let genes: Vec<String> = (0..n_vars)
        .filter(|&i| keep[i])
        .map(|i| a.var_names()[i].clone())
        .collect();
    let programs: Vec<i32> = (0..n_vars)
        .filter(|&i| keep[i])
        .map(|i| codes.get(i).copied().unwrap_or(-1))
        .collect();
    let n = genes.len();
    if n < 3 {
        return Err(format!(
            "only {n} genes have programs or similar genes; lower the threshold"
        ));
    }
    // Each pair once (the stored matrix is symmetric), `a < b` in the kept numbering.
    let mut edges = Vec::new();
    let mut min_similarity = f32::INFINITY;
    for i in 0..n_vars {
        let Some(ni) = index[i] else { continue };
        for k in g.indptr[i]..g.indptr[i + 1] {
            let w = g.data[k];
            if let Some(nj) = index.get(g.indices[k] as usize).copied().flatten()
                && ni < nj
                && w.is_finite()
                && w > 0.0
            {
                edges.push((ni, nj, w));
                min_similarity = min_similarity.min(w);
            }
        }
    }
    edges.sort_by(|a, b| b.2.total_cmp(&a.2));
    // The layout: UMAP of the genes' embeddings (15 nearest by cosine), which keeps programs
    // together without letting hub genes with hundreds of edges pull everything into a star.
    // Without embeddings (an older file), UMAP of the similarity graph itself.
    let layout = match a.varm.get("gene_embedding") {
        Some(Element::Dense(e)) if e.shape.len() == 2 && e.shape[0] == n_vars => {
            let d = e.shape[1];
            let mut rows = Vec::with_capacity(n * d);
            for i in (0..n_vars).filter(|&i| keep[i]) {
                for j in 0..d {
                    rows.push(e.data.get_f64(i * d + j).unwrap_or(0.0) as f32);
                }
            }
            let x = DenseMatrix::new(&rows, n, d).map_err(|e| e.to_string())?;
            let g = neighbors(&x, 15.min(n - 1), Metric::Cosine).map_err(|e| e.to_string())?;
            umap(&g.connectivities, None, &opts(seed))
        }
        _ => umap(&symmetric_graph(n, &edges)?, None, &opts(seed)),
    }
    .map_err(|e| e.to_string())?;
    let positions = layout
        .embedding
        .chunks_exact(2)
        .map(|p| [p[0], p[1]])
        .collect();
    Ok(GeneNetwork {
        genes,
        programs,
        program_names,
        edges,
        positions,
        min_similarity: if min_similarity.is_finite() {
            min_similarity
        } else {
            0.0
        },
    })
}

/// The similarity graph over the kept genes as a symmetric CSR matrix (weights capped at 1),
/// for the layout of files without gene embeddings.
fn symmetric_graph(n: usize, edges: &[(u32, u32, f32)]) -> Result<CsrMatrix<f32>, String> {
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    for &(a, b, w) in edges {
        rows[a as usize].push((b, w.min(1.0)));
        rows[b as usize].push((a, w.min(1.0)));
    }
    let mut indptr = vec![0usize];
    let (mut indices, mut data) = (Vec::new(), Vec::new());
    for r in &mut rows {
        r.sort_by_key(|e| e.0);
        r.dedup_by_key(|e| e.0);
        indices.extend(r.iter().map(|e| e.0));
        data.extend(r.iter().map(|e| e.1));
        indptr.push(indices.len());
    }
    CsrMatrix::new(n, n, indptr, indices, data).map_err(|e| e.to_string())
}

fn opts(seed: u64) -> UmapOptions {
    UmapOptions {
        seed,
        min_dist: 0.3,
        ..UmapOptions::default()
    }
}

impl GeneNetwork {
    /// Index of a gene by name (exact, then case-insensitive).
    pub fn find(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.genes
            .iter()
            .position(|g| g == name)
            .or_else(|| self.genes.iter().position(|g| g.eq_ignore_ascii_case(name)))
    }

    /// The genes linked to `i`, most similar first.
    pub fn neighbours(&self, i: usize, threshold: f32) -> Vec<(usize, f32)> {
        let mut v: Vec<(usize, f32)> = self
            .edges
            .iter()
            .filter(|e| e.2 >= threshold)
            .filter_map(|&(a, b, w)| {
                if a as usize == i {
                    Some((b as usize, w))
                } else if b as usize == i {
                    Some((a as usize, w))
                } else {
                    None
                }
            })
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// A first threshold that shows about three edges per gene (at least the weakest stored).
    pub fn default_threshold(&self) -> f32 {
        let k = (3 * self.genes.len()).min(self.edges.len());
        if k == 0 {
            return self.min_similarity;
        }
        self.edges[k - 1].2.max(self.min_similarity)
    }

    /// Edges at or above `threshold` (they are sorted strongest first).
    pub fn edges_above(&self, threshold: f32) -> &[(u32, u32, f32)] {
        let k = self.edges.partition_point(|e| e.2 >= threshold);
        &self.edges[..k]
    }
}

/// Node colours: the program's colour (scanpy's 20-colour palette, repeated when there are
/// more programs), grey outside programs.
pub fn node_colors(net: &GeneNetwork) -> Vec<[u8; 4]> {
    let base = crate::figure::categorical_colors(net.program_names.len().clamp(1, 20));
    let palette: Vec<[u8; 4]> = (0..net.program_names.len())
        .map(|i| base[i % base.len()])
        .collect();
    net.programs
        .iter()
        .map(|&p| {
            usize::try_from(p)
                .ok()
                .and_then(|p| palette.get(p).copied())
                .unwrap_or(crate::figure::NA_COLOR)
        })
        .collect()
}

/// The element is used by the app to tell whether a network can be built.
pub fn has_network(a: &AnnData) -> bool {
    matches!(a.varp.get("gene_similarity"), Some(Element::Sparse(_)))
}

impl GeneNetwork {
    /// The network as a figure (6 x 6 in): edges at or above `threshold` under the genes,
    /// coloured by program, with the names of `labelled` genes written next to them.
    pub fn figure(&self, threshold: f32, labelled: &[usize]) -> crate::figure::sketch::Sketch {
        use crate::figure::sketch::{Align, Sketch};
        let size = 432.0;
        let pad = 24.0;
        let mut sk = Sketch::new(size, size);
        let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in &self.positions {
            x0 = x0.min(p[0]);
            x1 = x1.max(p[0]);
            y0 = y0.min(p[1]);
            y1 = y1.max(p[1]);
        }
        let scale = (size - 2.0 * pad) / (x1 - x0).max(y1 - y0).max(1e-6);
        let at = |p: [f32; 2]| [pad + (p[0] - x0) * scale, size - pad - (p[1] - y0) * scale];
        for &(a, b, _) in self.edges_above(threshold).iter().take(50_000) {
            sk.line(
                at(self.positions[a as usize]),
                at(self.positions[b as usize]),
                0.3,
                [150, 150, 150, 90],
            );
        }
        let colors = node_colors(self);
        for (p, c) in self.positions.iter().zip(&colors) {
            sk.disc(at(*p), 1.6, *c);
        }
        for &i in labelled {
            if let Some(p) = self.positions.get(i) {
                let q = at(*p);
                sk.text(
                    q[0] + 3.0,
                    q[1] + 3.0,
                    7.0,
                    Align::Start,
                    self.genes[i].clone(),
                );
            }
        }
        sk.text(
            pad,
            14.0,
            9.0,
            Align::Start,
            format!(
                "{} genes, {} programs, cosine similarity >= {threshold:.2}",
                self.genes.len(),
                self.program_names.len()
            ),
        );
        sk
    }
}
