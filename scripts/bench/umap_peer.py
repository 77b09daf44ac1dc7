#!/usr/bin/env python3
"""Python peer of cellforge's approximate kNN + UMAP: what scanpy users run.

Reads a raw little-endian float32 matrix (``n x d``, row-major), then times, separately,

1. ``sc.pp.neighbors(adata, n_neighbors=k, use_rep="X_emb", random_state=0)``: above 8,192
   cells (euclidean; 4,096 for other metrics) scanpy 1.11 builds the graph with pynndescent's
   ``PyNNDescentTransformer`` (NNDescent, ``n_trees = min(64, 5 + round(sqrt(n) / 20))``,
   ``n_iters = max(5, round(log2 n))``, ``random_state=0``, ``n_jobs`` = scanpy's
   ``settings.n_jobs``, set to -1 here = all cores), then umap-learn's fuzzy connectivities;
   below the threshold it is exact brute force (sklearn);
2. ``sc.tl.umap(adata, min_dist=0.5, random_state=0)`` (spectral init, 200 epochs above
   10,000 cells, else 500; single threaded because a seed is set, as umap-learn does).

Before timing, numba's JIT is warmed up on a small random problem (``--no-warmup`` to time
a cold start; pynndescent/umap cache part of their compiled code on disk anyway).

Quality: trustworthiness (sklearn, k = 15, euclidean) of the layout on a random subset of
``--subset`` points (default 5,000; ``np.random.default_rng(0).choice(n, m,
replace=False)``, sorted), and kNN recall against exact neighbours for ``--recall-queries``
random query points (default 2,000, seed 1; exact = brute force in float64 over all n).

Prints one JSON line: ``{"n", "d", "k", "knn_s", "umap_s", "total_s", "jit_warmup_s",
"peak_rss_mb_after_knn", "peak_rss_mb", "trustworthiness", "trust_subset", "recall",
"recall_queries", "threads", "versions"}``. With ``--out PREFIX`` also writes
``PREFIX_layout.f32`` (n x 2 float32), ``PREFIX_knn_indices.u32`` (n x k, self first),
``PREFIX_subset.u32`` (the trustworthiness subset) so the Rust side can score identically.

Usage::

    python scripts/bench/umap_peer.py DATA.f32 N D [--k 15] [--out PREFIX]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def exact_recall(x: np.ndarray, knn_idx: np.ndarray, k: int, n_queries: int) -> float:
    """Mean fraction of the exact k nearest (self included) found, over random queries."""
    n = x.shape[0]
    rng = np.random.default_rng(1)
    q = rng.choice(n, size=min(n_queries, n), replace=False)
    x64 = x.astype(np.float64)
    sq = (x64**2).sum(1)
    hits = 0
    for start in range(0, len(q), 256):
        qq = q[start : start + 256]
        d2 = sq[qq, None] + sq[None, :] - 2.0 * x64[qq] @ x64.T
        d2[np.arange(len(qq)), qq] = -1.0  # self first
        exact = np.argpartition(d2, k - 1, axis=1)[:, :k]
        for r, i in enumerate(qq):
            hits += len(np.intersect1d(exact[r], knn_idx[i]))
    return hits / (len(q) * k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("n", type=int)
    ap.add_argument("d", type=int)
    ap.add_argument("--k", type=int, default=15)
    ap.add_argument("--min-dist", type=float, default=0.5)
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--recall-queries", type=int, default=2000)
    ap.add_argument("--out", default=None, help="prefix of the layout/kNN/subset outputs")
    ap.add_argument("--no-warmup", action="store_true")
    args = ap.parse_args()

    import anndata as ad
    import pynndescent
    import scanpy as sc
    import sklearn
    import umap
    from sklearn.manifold import trustworthiness

    # compat shim: pynndescent 0.7's transformer returns a scipy `csr_array`, which scanpy
    # 1.11.5 cannot read (`getnnz`); hand scanpy the same matrix as `csr_matrix` (O(nnz)).
    import scipy.sparse as sp

    _fit_transform = pynndescent.PyNNDescentTransformer.fit_transform

    def _fit_transform_csr_matrix(self, X, y=None, **kw):
        return sp.csr_matrix(_fit_transform(self, X, y, **kw))

    pynndescent.PyNNDescentTransformer.fit_transform = _fit_transform_csr_matrix

    sc.settings.n_jobs = -1
    sc.settings.verbosity = 0
    x = np.fromfile(args.data, dtype="<f4")
    if x.size != args.n * args.d:
        sys.exit(f"{args.data}: {x.size} values, expected {args.n} x {args.d}")
    x = x.reshape(args.n, args.d)

    warm = 0.0
    if not args.no_warmup:
        t0 = time.perf_counter()
        rng = np.random.default_rng(123)
        xw = rng.normal(size=(9000, args.d)).astype(np.float32)
        aw = ad.AnnData(np.zeros((xw.shape[0], 1), dtype=np.float32))
        aw.obsm["X_emb"] = xw
        sc.pp.neighbors(aw, n_neighbors=args.k, use_rep="X_emb", random_state=0)
        sc.tl.umap(aw, min_dist=args.min_dist, random_state=0, maxiter=5)
        warm = time.perf_counter() - t0

    adata = ad.AnnData(np.zeros((args.n, 1), dtype=np.float32))
    adata.obsm["X_emb"] = x
    t0 = time.perf_counter()
    sc.pp.neighbors(adata, n_neighbors=args.k, use_rep="X_emb", random_state=0)
    t1 = time.perf_counter()
    rss_knn = peak_rss_mb()
    sc.tl.umap(adata, min_dist=args.min_dist, random_state=0)
    t2 = time.perf_counter()
    layout = np.asarray(adata.obsm["X_umap"], dtype=np.float32)

    # kNN as scanpy kept it: self + the k - 1 nearest stored neighbours per row (pynndescent's
    # transformer returns k + 1 entries per row, self included at distance 0)
    dist = adata.obsp["distances"].tocsr()
    knn_idx = np.empty((args.n, args.k), dtype=np.int64)
    for i in range(args.n):
        a, b = dist.indptr[i], dist.indptr[i + 1]
        cols, vals = dist.indices[a:b], dist.data[a:b]
        keep = cols != i
        cols, vals = cols[keep], vals[keep]
        row = cols[np.lexsort((cols, vals))][: args.k - 1]
        knn_idx[i, 0] = i
        knn_idx[i, 1 : 1 + len(row)] = row
        knn_idx[i, 1 + len(row) :] = i  # (never: scanpy keeps >= k - 1 neighbours)
    recall = exact_recall(x, knn_idx, args.k, args.recall_queries)

    m = min(args.subset, args.n)
    subset = np.sort(np.random.default_rng(0).choice(args.n, size=m, replace=False))
    trust = float(trustworthiness(x[subset], layout[subset], n_neighbors=15))

    if args.out:
        np.ascontiguousarray(layout, dtype="<f4").tofile(args.out + "_layout.f32")
        np.ascontiguousarray(knn_idx, dtype="<u4").tofile(
            args.out + "_knn_indices.u32"
        )
        np.ascontiguousarray(subset, dtype="<u4").tofile(args.out + "_subset.u32")

    print(
        json.dumps(
            {
                "n": args.n,
                "d": args.d,
                "k": args.k,
                "knn_s": t1 - t0,
                "umap_s": t2 - t1,
                "total_s": t2 - t0,
                "jit_warmup_s": warm,
                "peak_rss_mb_after_knn": rss_knn,
                "peak_rss_mb": peak_rss_mb(),
                "trustworthiness": trust,
                "trust_subset": m,
                "recall": recall,
                "recall_queries": min(args.recall_queries, args.n),
                "threads": os.cpu_count(),
                "versions": {
                    "scanpy": sc.__version__,
                    "umap-learn": umap.__version__,
                    "pynndescent": pynndescent.__version__,
                    "scikit-learn": sklearn.__version__,
                    "numpy": np.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
