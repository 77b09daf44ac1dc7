#!/usr/bin/env python3
"""Check the files written by ``cellforge gene-programs`` and ``cellforge generate`` as a user
would read them (anndata): structure, ranges and consistency with the input.

Usage: check_genes.py programs OUT.h5ad MIN_SIZE QUERY_GENE
       check_genes.py print-genes IN.h5ad N   (the first N var names, one per line)
       check_genes.py generate OUT.h5ad INPUT.h5ad LAYER PROMPT_FILE|- N_BINS

Prints one line and exits non-zero on the first failure.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import scipy.sparse as sp

warnings.filterwarnings("ignore")


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def programs(path, min_size, query):
    import anndata as ad

    a = ad.read_h5ad(path)
    gp = a.var["gene_program"]
    if gp.dtype.name != "category":
        fail("var['gene_program'] is not categorical")
    progs = a.uns["gene_programs"]["programs"]
    k = len(progs)
    if k == 0:
        fail("no gene program")
    for name, genes in progs.items():
        genes = list(genes)
        if len(genes) < min_size:
            fail(f"program {name} has {len(genes)} genes < {min_size}")
        if not all(gp.loc[g] == name for g in genes):
            fail(f"var['gene_program'] disagrees with program {name}")
    sim = a.varp["gene_similarity"]
    if not sp.issparse(sim) or abs(sim - sim.T).max() > 1e-6:
        fail("gene_similarity is not a symmetric sparse matrix")
    thr = float(a.uns["gene_programs"]["params"]["similarity_threshold"])
    if sim.nnz and sim.data.min() < thr - 1e-6:
        fail("a similarity edge is below the threshold")
    emb = np.asarray(a.varm["gene_embedding"])
    # the stored similarities are the cosine of the stored embeddings
    r, c = sim.nonzero()
    if len(r):
        i, j = r[0], c[0]
        cos = emb[i] @ emb[j] / np.linalg.norm(emb[i]) / np.linalg.norm(emb[j])
        if abs(cos - sim[i, j]) > 1e-4:
            fail(f"similarity {sim[i, j]} != cosine {cos}")
    scores = np.asarray(a.obsm["X_gene_programs"])
    if scores.shape != (a.n_obs, k) or scores.min() < 0 or scores.max() > 1 + 1e-6:
        fail(f"X_gene_programs shape {scores.shape} or range [{scores.min()}, {scores.max()}]")
    sim_df = a.uns["gene_programs"]["similar"][query]
    if len(sim_df) == 0 or not np.all(np.diff(sim_df["similarity"].to_numpy()) <= 1e-7):
        fail("similarity ranking not in decreasing order")
    att = a.uns.get("gene_attention")
    note = ""
    if att is not None:
        s = np.asarray(att["scores"])
        m = len(att["genes"])
        if s.shape != (m, m) or not np.isfinite(s).all() or s.min() <= 0 or s.max() > 1:
            fail(f"attention scores shape {s.shape} range [{s.min()}, {s.max()}]")
        note = f", attention {m}x{m} over {int(att['n_cells'])} cells"
    print(f"ok programs: {k} programs, {sim.nnz // 2} edges, top match of {query}: "
          f"{sim_df['gene'].iloc[0]} ({sim_df['similarity'].iloc[0]:.3f}){note}")


def generate(path, inp, layer, prompt_file, n_bins):
    import anndata as ad

    a = ad.read_h5ad(path)
    src = ad.read_h5ad(inp)
    x = src.layers[layer] if layer != "X" else src.X
    x = sp.csr_matrix(x)
    g = a.layers["X_generated"]
    c = a.layers["X_generated_confidence"]
    if not (sp.issparse(g) and sp.issparse(c)):
        fail("generated layers are not sparse")
    if (g != 0).nnz == 0 or not np.isfinite(g.data).all() or not np.isfinite(c.data).all():
        fail("no or non-finite generated values")
    if g.data.min() < -5 or g.data.max() > n_bins + 5:
        fail(f"generated values outside the bin range: [{g.data.min()}, {g.data.max()}]")
    gi = sp.csr_matrix(g)
    prompt = set()
    if prompt_file != "-":
        prompt = {s.strip() for s in open(prompt_file).read().replace(",", "\n").split() if s.strip()}
    names = np.asarray(a.var_names)
    rows, cols = gi.nonzero()
    # generated only at genes the cell expresses, never at prompt genes
    expressed = np.asarray(x[rows, cols]).ravel() != 0
    if not expressed.all():
        fail(f"{(~expressed).sum()} generated values at genes the cell does not express")
    if prompt and any(names[j] in prompt for j in set(cols.tolist())):
        fail("a prompt gene was generated")
    print(f"ok generate: {gi.nnz} values over {len(set(rows.tolist()))} cells, range "
          f"[{g.data.min():.2f}, {g.data.max():.2f}]")


def main():
    if sys.argv[1] == "programs":
        programs(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "print-genes":
        import anndata as ad

        names = ad.read_h5ad(sys.argv[2], backed="r").var_names[: int(sys.argv[3])]
        print("\n".join(names))
    elif sys.argv[1] == "generate":
        generate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    else:
        fail(f"unknown check {sys.argv[1]}")


if __name__ == "__main__":
    main()
