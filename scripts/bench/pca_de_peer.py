#!/usr/bin/env python3
"""scanpy peer timings for the PCA / DE bench on the matrix of ``make_sparse_expr.py``.

Prints one JSON line: wall seconds of ``sc.pp.pca(n_comps=50)`` (scanpy 1.11 default for
sparse input: implicitly centred arpack; plus ``zero_center=False``, randomized TruncatedSVD)
and of ``sc.tl.rank_genes_groups(groupby="group", method="wilcoxon")`` and ``method="t-test"``.
Limit the threads with e.g. ``OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 NUMBA_NUM_THREADS=2``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

warnings.filterwarnings("ignore")
import anndata as ad  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / "target" / "bench-data" / "sparse_expr"))
    ap.add_argument("--skip", default="", help="comma list of: pca,pca_nozc,wilcoxon,ttest")
    a = ap.parse_args()
    d = Path(a.data)
    meta = json.loads((d / "meta.json").read_text())
    n, g = meta["n_cells"], meta["n_genes"]
    indptr = np.fromfile(d / "indptr.u64", dtype="<u8").astype(np.int64)
    indices = np.fromfile(d / "indices.u32", dtype="<u4").astype(np.int32)
    data = np.fromfile(d / "data.f32", dtype="<f4")
    groups = np.fromfile(d / "groups.u32", dtype="<u4")
    x = sp.csr_matrix((data, indices, indptr), shape=(n, g))
    adata = ad.AnnData(x)
    adata.obs["group"] = pd.Categorical(groups.astype(str))
    skip = set(filter(None, a.skip.split(",")))
    res = {"n_cells": n, "n_genes": g, "nnz": int(x.nnz), "scanpy": sc.__version__,
           "threads": os.environ.get("OMP_NUM_THREADS")}
    if "pca" not in skip:
        t = time.perf_counter()
        sc.pp.pca(adata, n_comps=50)
        res["pca_s"] = time.perf_counter() - t
    if "pca_nozc" not in skip:
        t = time.perf_counter()
        sc.pp.pca(adata, n_comps=50, zero_center=False)
        res["pca_zero_center_false_s"] = time.perf_counter() - t
    if "wilcoxon" not in skip:
        t = time.perf_counter()
        sc.tl.rank_genes_groups(adata, "group", method="wilcoxon")
        res["wilcoxon_s"] = time.perf_counter() - t
    if "ttest" not in skip:
        t = time.perf_counter()
        sc.tl.rank_genes_groups(adata, "group", method="t-test")
        res["ttest_s"] = time.perf_counter() - t
    print(json.dumps(res))


if __name__ == "__main__":
    main()
