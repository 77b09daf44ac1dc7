#!/usr/bin/env python3
"""Check files written by cellforge's analysis commands against scanpy / scikit-learn run on the
same input, reading them with anndata (the way a user would).

Usage: check_analysis.py CHECK=FILE [CHECK=FILE ...] with the input given by ``--input``
(one input per run):

- ``pca=OUT``: ``uns["pca"]["variance_ratio"]`` / ``variance`` equal scikit-learn's
  ``PCA(svd_solver="full")`` on the same genes within 1e-4 (relative), ``obsm["X_pca"]`` equals
  its scores up to each component's sign, ``varm["PCs"]`` its loadings.
- ``neighbors=OUT``: ``obsp["connectivities"]`` and ``obsp["distances"]`` equal scanpy's
  ``pp.neighbors`` on the same representation (``--use-rep``) within 1e-5.
- ``leiden=OUT``: ``obs["leiden"]`` is a categorical of "0", "1", ... and agrees with scanpy's
  Leiden (leidenalg flavour) on the file's own graph (ARI >= 0.7).
- ``umap=OUT``: the trustworthiness (k = 15) of ``obsm["X_umap"]`` in the representation it was
  built on is within 0.02 of umap-learn's (through ``sc.tl.umap`` on the same graph).
- ``de=OUT``: ``sc.get.rank_genes_groups_df`` reads every group; the top 20 genes of each group
  overlap scanpy's ``tl.rank_genes_groups`` (same groupby, method, input) by >= 18, and the
  scores agree within 1e-4 (relative).

Prints one line per check and exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import scipy.sparse as sp

warnings.filterwarnings("ignore")


def fail(msg: str) -> None:
    print(f"FAIL {msg}")
    sys.exit(1)


def dense(x):
    return np.asarray(x.todense() if sp.issparse(x) else x, dtype=np.float64)


def check_pca(out, src):
    from sklearn.decomposition import PCA

    mask = src.var["highly_variable"].to_numpy() if "highly_variable" in src.var else None
    x = dense(src.X)
    if mask is not None:
        x = x[:, mask]
    k = out.obsm["X_pca"].shape[1]
    ref = PCA(n_components=k, svd_solver="full").fit(x)
    vr = np.asarray(out.uns["pca"]["variance_ratio"])
    v = np.asarray(out.uns["pca"]["variance"])
    e_vr = np.max(np.abs(vr - ref.explained_variance_ratio_) / ref.explained_variance_ratio_)
    e_v = np.max(np.abs(v - ref.explained_variance_) / ref.explained_variance_)
    if e_vr > 1e-4 or e_v > 1e-4:
        fail(f"pca variance ratio rel err {e_vr:.2e}, variance {e_v:.2e}")
    scores = ref.transform(x)
    ours = np.asarray(out.obsm["X_pca"], dtype=np.float64)
    sign = np.sign(np.sum(ours * scores, axis=0))
    e_s = np.max(np.abs(ours * sign - scores)) / np.max(np.abs(scores))
    if e_s > 1e-3:
        fail(f"pca scores rel err {e_s:.2e}")
    pcs = np.asarray(out.varm["PCs"], dtype=np.float64)
    if mask is not None:
        if np.any(pcs[~mask] != 0):
            fail("PCs outside the gene mask are not zero")
        pcs = pcs[mask]
    e_c = np.max(np.abs(pcs * sign - ref.components_.T))
    if e_c > 1e-3:
        fail(f"pca loadings abs err {e_c:.2e}")
    print(f"ok pca: {k} components, variance ratio rel err {e_vr:.1e}, scores {e_s:.1e}, "
          f"loadings {e_c:.1e}")


def check_neighbors(out, use_rep):
    import scanpy as sc

    ref = out.copy()
    sc.pp.neighbors(ref, use_rep=use_rep, n_neighbors=int(out.uns["neighbors"]["params"]["n_neighbors"]),
                    metric=str(out.uns["neighbors"]["params"]["metric"]), transformer="sklearn")
    for key in ["connectivities", "distances"]:
        d = abs(out.obsp[key] - ref.obsp[key]).max()
        if d > 1e-5:
            fail(f"neighbors {key} max abs diff {d:.2e}")
    print(f"ok neighbors: {out.n_obs} cells on {use_rep}, connectivities and distances equal "
          f"scanpy's within 1e-5")


def check_leiden(out):
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score

    col = out.obs["leiden"]
    if col.dtype.name != "category":
        fail("obs['leiden'] is not categorical")
    cats = list(col.cat.categories)
    if cats != [str(i) for i in range(len(cats))]:
        fail(f"leiden categories {cats[:5]}... are not 0..k-1 in order")
    ref = out.copy()
    sc.tl.leiden(ref, flavor="leidenalg", resolution=float(out.uns["leiden"]["params"]["resolution"]),
                 key_added="ref")
    ari = adjusted_rand_score(col, ref.obs["ref"])
    if ari < 0.7:
        fail(f"leiden ARI vs scanpy {ari:.3f}")
    print(f"ok leiden: {len(cats)} clusters (scanpy {ref.obs['ref'].nunique()}), ARI {ari:.3f}")


def check_umap(out, use_rep):
    import scanpy as sc
    from sklearn.manifold import trustworthiness

    x = np.asarray(out.obsm[use_rep], dtype=np.float64)
    ours = trustworthiness(x, np.asarray(out.obsm["X_umap"]), n_neighbors=15)
    ref = out.copy()
    sc.tl.umap(ref, min_dist=0.5, random_state=0)
    theirs = trustworthiness(x, ref.obsm["X_umap"], n_neighbors=15)
    if ours < theirs - 0.02:
        fail(f"umap trustworthiness {ours:.4f} vs umap-learn {theirs:.4f}")
    print(f"ok umap: trustworthiness {ours:.4f} (umap-learn {theirs:.4f})")


def check_de(out, src):
    import scanpy as sc

    p = out.uns["rank_genes_groups"]["params"]
    groupby = str(p["groupby"])
    method = str(p["method"])
    use_raw = bool(p["use_raw"])
    ref = src.copy()
    ref.obs[groupby] = out.obs[groupby].values
    sc.tl.rank_genes_groups(ref, groupby, method=method, use_raw=use_raw, key_added="ref")
    groups = list(out.uns["rank_genes_groups"]["names"].keys())
    worst = 20
    for g in groups:
        df = sc.get.rank_genes_groups_df(out, group=g)
        # HDF5 keys cannot hold "/": cellforge stores it as U+2215
        rf = sc.get.rank_genes_groups_df(ref, group=g.replace("\u2215", "/"), key="ref")
        overlap = len(set(df["names"][:20]) & set(rf["names"][:20]))
        worst = min(worst, overlap)
        if overlap < 18:
            fail(f"de group {g}: top-20 overlap {overlap}")
        merged = rf.set_index("names").loc[df["names"][:20]]
        e = np.max(np.abs(df["scores"][:20].to_numpy() - merged["scores"].to_numpy())
                   / np.maximum(np.abs(merged["scores"].to_numpy()), 1e-6))
        if e > 1e-4:
            fail(f"de group {g}: scores rel err {e:.2e}")
    print(f"ok de: {len(groups)} groups of {groupby} ({method}), smallest top-20 overlap {worst}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checks", nargs="+")
    ap.add_argument("--input", required=True)
    ap.add_argument("--use-rep", default="X_pca")
    args = ap.parse_args()
    import anndata as ad

    src = ad.read_h5ad(args.input)
    for c in args.checks:
        name, _, path = c.partition("=")
        out = ad.read_h5ad(path)
        if name == "pca":
            check_pca(out, src)
        elif name == "neighbors":
            check_neighbors(out, args.use_rep)
        elif name == "leiden":
            check_leiden(out)
        elif name == "umap":
            check_umap(out, args.use_rep)
        elif name == "de":
            check_de(out, src)
        else:
            fail(f"unknown check {name}")


if __name__ == "__main__":
    main()
