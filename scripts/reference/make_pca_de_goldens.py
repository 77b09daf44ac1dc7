#!/usr/bin/env python3
"""Write the PCA / differential-expression / gene-scoring goldens under ``tests/fixtures/pca_de/``.

References: scikit-learn 1.9.1 (``PCA(svd_solver="full")``, ``TruncatedSVD`` semantics),
scanpy 1.11.5 (``pp.pca``, ``tl.rank_genes_groups``, ``tl.score_genes``). Run it with the
project venv::

    .venv/bin/python scripts/reference/make_pca_de_goldens.py

Inputs (``--data DIR``, default ``$CELLFORGE_SHARED_DATA`` or ``<repo>/../shared/data``):
``symphony_pbmcs_small.h5ad`` (1,200 x 1,767, X sparse CSR float32 = ln(CP10k + 1), labels
``cell_type``) and ``pbmc68k_reduced.h5ad`` (700 x 765, X dense scaled, ``.raw`` sparse
log-normalised, labels ``bulk_labels``).

Output (``--out DIR``, default ``tests/fixtures/pca_de``): ``pca_de.json`` (scalars, small
vectors and a manifest of raw little-endian binary arrays) plus the binaries themselves. The
matrices are stored with a value codebook (``*_values.f32`` = the distinct values,
``*_codes.u16`` = index into it per stored entry) to keep the folder small; the Rust test
decodes them with a few lines. ``README.md`` in that folder describes the layout.

How the control genes of ``score_genes`` are recovered: scanpy draws them inside its private
generator ``scanpy.tools._score_genes._score_genes_bins``; this script wraps that generator
(module attribute, looked up at call time by ``score_genes``) and records every gene set it
yields, i.e. exactly the sets scanpy unions into ``control_genes``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

warnings.filterwarnings("ignore")

import anndata as ad  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402
import scanpy.tools._score_genes as sg  # noqa: E402
import sklearn  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "reference"))
from fixture_dir import prepare_out_dir  # noqa: E402

N_COMPS = 50
DE_METHODS = [
    # (key, scanpy method, tie_correct)
    ("wilcoxon", "wilcoxon", False),
    ("wilcoxon_tie", "wilcoxon", True),
    ("t-test", "t-test", False),
    ("t-test_overestim_var", "t-test_overestim_var", False),
]
SCORE_GENES = [
    "LYZ", "S100A8", "S100A9", "FCGR3A", "CST3", "TYROBP", "LST1", "AIF1", "FCER1G",
    "FCN1", "NKG7", "GNLY", "CD3E", "MS4A1", "CD79A", "IL7R", "CCR7", "HLA-DRA",
]


def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("CELLFORGE_SHARED_DATA")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data"


class Writer:
    """Raw little-endian arrays next to a JSON manifest."""

    EXT = {"float32": "f32", "float64": "f64", "uint32": "u32", "uint16": "u16"}

    def __init__(self, out: Path):
        self.out = out
        self.files: dict[str, dict] = {}

    def array(self, name: str, arr, dtype: str) -> str:
        a = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
        if dtype == "uint16":
            assert np.asarray(arr).max(initial=0) < 2**16
        fname = f"{name}.{self.EXT[dtype]}"
        (self.out / fname).write_bytes(a.tobytes())
        self.files[name] = {"file": fname, "dtype": dtype, "shape": list(a.shape)}
        return fname

    def coded(self, name: str, values: np.ndarray) -> dict:
        """float32 values as (distinct-value table, uint16 code per value)."""
        v = np.asarray(values, dtype=np.float32).ravel()
        table, codes = np.unique(v, return_inverse=True)
        assert len(table) < 2**16, name
        return {
            "values": self.array(f"{name}_values", table, "float32"),
            "codes": self.array(f"{name}_codes", codes, "uint16"),
            "len": int(v.size),
        }

    def csr(self, name: str, m) -> dict:
        m = sp.csr_matrix(m, dtype=np.float32, copy=True)
        m.sum_duplicates()
        m.sort_indices()
        assert m.has_canonical_format
        return {
            "n_rows": int(m.shape[0]),
            "n_cols": int(m.shape[1]),
            "nnz": int(m.nnz),
            "indptr": self.array(f"{name}_indptr", m.indptr, "uint32"),
            "indices": self.array(f"{name}_indices", m.indices, "uint16"),
            "data": self.coded(f"{name}_data", m.data),
        }


def neglog10(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -np.log10(np.asarray(p, dtype=np.float64))


def pca_refs(w: Writer, name: str, x, n_pcs_scores: int = N_COMPS) -> dict:
    """sklearn full-SVD PCA (float64) and scanpy's pp.pca defaults on the same matrix."""
    dense = x.toarray() if sp.issparse(x) else np.asarray(x)
    d64 = dense.astype(np.float64)
    full = PCA(n_components=N_COMPS, svd_solver="full").fit(d64)
    scores = full.transform(d64)
    w.array(f"{name}_pca_scores", scores, "float32")
    w.array(f"{name}_pca_components10", full.components_[:10], "float32")
    # the float32 run (what sklearn does when handed the f32 matrix) for scale
    full32 = PCA(n_components=N_COMPS, svd_solver="full").fit(dense.astype(np.float32))

    adata = ad.AnnData(x.copy() if sp.issparse(x) else dense.copy())
    sc.pp.pca(adata, n_comps=N_COMPS)
    sc_scores = np.asarray(adata.obsm["X_pca"], dtype=np.float64)
    # per-component agreement of scanpy's sign with sklearn's svd_flip(u_based_decision=False)
    sc_sign = np.sign(np.sum(sc_scores * scores, axis=0)).astype(int)

    # zero_center=False: TruncatedSVD semantics, computed exactly (dense SVD of uncentred X)
    u, s, vt = np.linalg.svd(d64, full_matrices=False)
    u, s, vt = u[:, :N_COMPS], s[:N_COMPS], vt[:N_COMPS]
    signs = np.sign(vt[np.arange(N_COMPS), np.argmax(np.abs(vt), axis=1)])
    u, vt = u * signs, vt * signs[:, None]
    tsvd_scores = u * s
    tsvd_var = np.var(tsvd_scores, axis=0)
    tsvd_ratio = tsvd_var / np.var(d64, axis=0).sum()
    w.array(f"{name}_tsvd_scores10", tsvd_scores[:, :10], "float32")
    return {
        "n_comps": N_COMPS,
        "sklearn_full": {
            "variance": full.explained_variance_.tolist(),
            "variance_ratio": full.explained_variance_ratio_.tolist(),
            "singular_values": full.singular_values_.tolist(),
            "scores": f"{name}_pca_scores.f32",
            "components10": f"{name}_pca_components10.f32",
            "variance_f32_input": full32.explained_variance_.tolist(),
        },
        "scanpy_pp_pca": {
            "svd_solver": "arpack (scanpy 1.11 default with sklearn >= 1.4)",
            "variance": np.asarray(adata.uns["pca"]["variance"]).tolist(),
            "variance_ratio": np.asarray(adata.uns["pca"]["variance_ratio"]).tolist(),
            "sign_vs_sklearn_full": sc_sign.tolist(),
        },
        "truncated_svd_exact": {
            "variance": tsvd_var.tolist(),
            "variance_ratio": tsvd_ratio.tolist(),
            "scores10": f"{name}_tsvd_scores10.f32",
        },
    }


def de_case(w: Writer, tag: str, adata: ad.AnnData, groupby: str, var_names, *,
            method: str, tie_correct: bool, use_raw: bool, groups="all",
            reference: str = "rest", pts: bool = True) -> dict:
    a = adata.copy()
    sc.tl.rank_genes_groups(a, groupby, method=method, tie_correct=tie_correct,
                            use_raw=use_raw, groups=groups, reference=reference, pts=pts,
                            corr_method="benjamini-hochberg")
    r = a.uns["rank_genes_groups"]
    group_names = list(r["names"].dtype.names)
    pos = {g: i for i, g in enumerate(var_names)}
    cats = list(adata.obs[groupby].cat.categories)
    names = np.stack([[pos[g] for g in r["names"][k]] for k in group_names])
    scores = np.stack([np.asarray(r["scores"][k], dtype=np.float32) for k in group_names])
    pvals = np.stack([neglog10(r["pvals"][k]) for k in group_names])
    padj = np.stack([neglog10(r["pvals_adj"][k]) for k in group_names])
    # logfoldchanges back in gene order (the same for every method: they use the means only)
    lfc = np.zeros((len(group_names), len(var_names)), dtype=np.float32)
    for i, k in enumerate(group_names):
        lfc[i, names[i]] = np.asarray(r["logfoldchanges"][k], dtype=np.float32)
    out = {
        "groups": [cats.index(g) for g in group_names],
        "group_names": group_names,
        "names": w.array(f"{tag}_names", names, "uint16"),
        "scores": w.array(f"{tag}_scores", scores, "float32"),
        "neglog10_pvals": w.array(f"{tag}_pvals", pvals, "float32"),
        "neglog10_pvals_adj": w.array(f"{tag}_pvals_adj", padj, "float32"),
    }
    extra = {"lfc": lfc}
    if pts:
        extra["pts"] = np.asarray(r["pts"][group_names], dtype=np.float32).T
        if "pts_rest" in r:
            extra["pts_rest"] = np.asarray(r["pts_rest"][group_names], dtype=np.float32).T
    return out, extra


def de_refs(w: Writer, name: str, adata, groupby: str, var_names, use_raw: bool) -> dict:
    res = {"groupby": groupby, "methods": {}}
    lfc_ref = None
    for key, method, tie in DE_METHODS:
        out, extra = de_case(w, f"{name}_de_{key}", adata, groupby, var_names, method=method,
                             tie_correct=tie, use_raw=use_raw)
        res["methods"][key] = {"method": method, "tie_correct": tie, **out}
        if lfc_ref is None:
            lfc_ref = extra
            res["logfoldchanges"] = w.array(f"{name}_de_lfc", extra["lfc"], "float32")
            res["pts"] = w.array(f"{name}_de_pts", extra["pts"], "float32")
            res["pts_rest"] = w.array(f"{name}_de_pts_rest", extra["pts_rest"], "float32")
        else:
            assert np.array_equal(extra["lfc"], lfc_ref["lfc"]), "lfc differs across methods"
    return res


class ControlRecorder:
    """Wraps scanpy's control-gene generator and records what it yields."""

    def __init__(self):
        self.orig = sg._score_genes_bins
        self.sets: list[list[str]] = []

    def __enter__(self):
        def wrapped(*args, **kwargs):
            for r_genes in self.orig(*args, **kwargs):
                self.sets.append([str(g) for g in r_genes])
                yield r_genes

        sg._score_genes_bins = wrapped
        return self

    def __exit__(self, *exc):
        sg._score_genes_bins = self.orig


def score_case(adata: ad.AnnData, var_names, use_raw: bool) -> dict:
    a = adata.copy()
    genes = [g for g in SCORE_GENES if g in set(var_names)]
    with ControlRecorder() as rec:
        sc.tl.score_genes(a, genes, random_state=0, use_raw=use_raw)
    pos = {g: i for i, g in enumerate(var_names)}
    controls = sorted({pos[g] for s in rec.sets for g in s})
    return {
        "genes": [pos[g] for g in genes],
        "gene_names": genes,
        "ctrl_size": 50,
        "n_bins": 25,
        "random_state": 0,
        "control_genes": controls,
        "control_sets_per_cut": [[pos[g] for g in s] for s in rec.sets],
        "scores": np.asarray(a.obs["score"], dtype=np.float64).tolist(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data")
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "pca_de"))
    args = ap.parse_args()
    data = data_dir(args.data)
    out = Path(args.out)
    if not prepare_out_dir(out, "pca_de.json"):
        return 1
    w = Writer(out)

    # ---- symphony: sparse ln(CP10k+1) ----
    sym = ad.read_h5ad(data / "symphony_pbmcs_small.h5ad")
    sym.X = sp.csr_matrix(sym.X, dtype=np.float32)
    sym.obs["cell_type"] = sym.obs["cell_type"].astype("category")
    sym_cats = list(sym.obs["cell_type"].cat.categories)
    sym_codes = np.asarray(sym.obs["cell_type"].cat.codes, dtype=np.uint32)
    sym_vn = list(sym.var_names)
    j: dict = {
        "versions": {"scanpy": sc.__version__, "sklearn": sklearn.__version__,
                     "anndata": ad.__version__, "numpy": np.__version__},
        "datasets": {},
    }
    ds = {
        "X": w.csr("symphony_X", sym.X),
        "labels": w.array("symphony_labels", sym_codes, "uint32"),
        "label_names": sym_cats,
        "pca": pca_refs(w, "symphony", sym.X),
        "de": de_refs(w, "symphony", sym, "cell_type", sym_vn, use_raw=False),
        "score_genes": score_case(sym, sym_vn, use_raw=False),
    }
    # one group vs one reference group
    cases = {}
    for key, method, tie in DE_METHODS:
        if key == "wilcoxon_tie":
            continue
        o, _ = de_case(w, f"symphony_de_ref_{key}", sym, "cell_type", sym_vn, method=method,
                       tie_correct=tie, use_raw=False, groups=["B", "NK"], reference="T_CD4",
                       pts=False)
        cases[key] = {"method": method, "tie_correct": tie, **o}
    ds["de_reference"] = {"reference": sym_cats.index("T_CD4"), "methods": cases}
    # a user selection vs the rest: NK and T_CD8 cells whose index is not a multiple of 3
    idx = np.arange(sym.n_obs)
    mask = np.isin(sym.obs["cell_type"].astype(str), ["NK", "T_CD8"]) & (idx % 3 != 0)
    sel = sym.copy()
    sel.obs["sel"] = pd.Categorical(np.where(mask, "sel", "rest"), categories=["rest", "sel"])
    cases = {}
    sel_extra = None
    for key, method, tie in DE_METHODS:
        o, extra = de_case(w, f"symphony_de_sel_{key}", sel, "sel", sym_vn, method=method,
                           tie_correct=tie, use_raw=False, groups=["sel"])
        cases[key] = {"method": method, "tie_correct": tie, **o}
        sel_extra = sel_extra or extra
    ds["de_selection"] = {
        "rule": "cell_type in {NK, T_CD8} and cell index % 3 != 0",
        "selected": w.array("symphony_selection", np.flatnonzero(mask), "uint32"),
        "logfoldchanges": w.array("symphony_de_sel_lfc", sel_extra["lfc"][0], "float32"),
        "pts": w.array("symphony_de_sel_pts", sel_extra["pts"][0], "float32"),
        "pts_rest": w.array("symphony_de_sel_pts_rest", sel_extra["pts_rest"][0], "float32"),
        "methods": cases,
    }
    j["datasets"]["symphony"] = ds

    # ---- pbmc68k_reduced: dense scaled X, sparse log-normalised raw ----
    pb = ad.read_h5ad(data / "pbmc68k_reduced.h5ad")
    pb.obs["bulk_labels"] = pb.obs["bulk_labels"].astype("category")
    pb_cats = list(pb.obs["bulk_labels"].cat.categories)
    pb_codes = np.asarray(pb.obs["bulk_labels"].cat.codes, dtype=np.uint32)
    X = np.ascontiguousarray(pb.X, dtype=np.float32)
    raw = sp.csr_matrix(pb.raw.X, dtype=np.float32, copy=True)
    raw.sum_duplicates()
    raw.sort_indices()
    pb_raw = ad.AnnData(raw.copy(), obs=pb.obs.copy(), var=pd.DataFrame(index=pb.raw.var_names))
    raw_vn = list(pb.raw.var_names)
    ds = {
        "X": {"n_rows": X.shape[0], "n_cols": X.shape[1], **w.coded("pbmc68k_X", X)},
        "raw": w.csr("pbmc68k_raw", raw),
        "labels": w.array("pbmc68k_labels", pb_codes, "uint32"),
        "label_names": pb_cats,
        "pca": pca_refs(w, "pbmc68k", X),
        "de": de_refs(w, "pbmc68k", pb_raw, "bulk_labels", raw_vn, use_raw=False),
    }
    pbx = ad.AnnData(X.copy(), obs=pb.obs.copy(), var=pd.DataFrame(index=pb.var_names))
    ds["score_genes_dense_X"] = score_case(pbx, list(pb.var_names), use_raw=False)
    j["datasets"]["pbmc68k"] = ds

    j["files"] = w.files
    (out / "pca_de.json").write_text(json.dumps(j, separators=(",", ":")))
    (out / "README.md").write_text(README)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(w.files)} arrays, {total / 1e6:.2f} MB to {out}")
    return 0


README = """# PCA / DE / score_genes goldens

Written by `scripts/reference/make_pca_de_goldens.py` (scanpy 1.11.5, scikit-learn 1.9.1; see
its docstring); read by `core/tests/pca_de_parity.rs`. Do not edit by hand.

- `pca_de.json`: every scalar and small vector, plus `files`, a manifest of the binary arrays:
  raw little-endian `float32` (`.f32`), `float64` (`.f64`), `uint32` (`.u32`) or `uint16`
  (`.u16`), C order, shape given.
- Matrices are stored with a value codebook to stay small: `<name>_values.f32` holds the
  distinct values (sorted), `<name>_codes.u16` one index into it per stored value.
  CSR matrices: `<name>_indptr.u32`, `<name>_indices.u16` (sorted per row), `<name>_data_*`
  (coded). `datasets.symphony.X`: `symphony_pbmcs_small.h5ad` X (1200 x 1767, ln(CP10k+1));
  `datasets.pbmc68k.X`: `pbmc68k_reduced.h5ad` dense scaled X (700 x 765, row-major, coded);
  `datasets.pbmc68k.raw`: its `.raw.X` (log-normalised, CSR). `labels`: category codes of
  `cell_type` / `bulk_labels` (`label_names` in category order).
- `pca.sklearn_full`: `PCA(n_components=50, svd_solver="full")` fitted on the float64 copy:
  `variance` (explained_variance_, ddof 1), `variance_ratio`, `*_pca_scores.f32` (n x 50,
  `transform`), `*_pca_components10.f32` (first 10 components x n_genes);
  `variance_f32_input`: the same fit on
  the float32 matrix (shows the reference's own float32 noise).
- `pca.scanpy_pp_pca`: `sc.pp.pca(n_comps=50)` defaults (arpack): variance, ratio and
  `sign_vs_sklearn_full` (+1 where scanpy's X_pca column has the same sign as sklearn's; both
  use `svd_flip(u_based_decision=False)`: the largest-|.| loading of each component > 0).
- `pca.truncated_svd_exact`: zero_center=False semantics (sklearn TruncatedSVD, computed
  exactly by dense SVD): variance = var(X V, ddof 0), ratio = that / sum of column variances
  (ddof 0); `*_tsvd_scores10.f32`: scores of the first 10 components (n x 10).
- `de.methods.<key>` for `wilcoxon`, `wilcoxon_tie` (tie_correct=True), `t-test`,
  `t-test_overestim_var`: `sc.tl.rank_genes_groups(groupby, method, pts=True)` each group vs
  rest, all genes. Per group (rows in `groups` order = category codes): `*_names.u16` ranked
  gene indices, `*_scores.f32` ranked scores (scanpy stores float32), `*_pvals.f32` and
  `*_pvals_adj.f32` as -log10 (inf where the p-value underflowed to 0), ranked.
  `de.logfoldchanges` (`*_de_lfc.f32`), `de.pts`, `de.pts_rest`: n_groups x n_genes in gene
  order (identical for every method).
- `de_reference` (symphony): groups B and NK vs reference T_CD4 (no pts).
  `de_selection` (symphony): a fixed selection (`symphony_selection.u32`, cell indices) vs
  the rest (`symphony_de_sel_lfc.f32`, `_pts.f32`, `_pts_rest.f32`: gene order).
- `score_genes` (symphony X) and `score_genes_dense_X` (pbmc68k dense X):
  `sc.tl.score_genes(gene_list, random_state=0)` defaults (ctrl_size 50, n_bins 25):
  `genes` (indices), `control_genes` (the union scanpy used, recorded by wrapping its
  `_score_genes_bins` generator), `control_sets_per_cut`, and the per-cell `scores`.
"""

if __name__ == "__main__":
    sys.exit(main())
