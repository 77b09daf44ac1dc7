#!/usr/bin/env python3
"""Write the UMAP / NN-descent goldens under ``tests/fixtures/umap/``.

References: umap-learn 0.5.12 (``find_ab_params``, ``simplicial_set_embedding`` through
scanpy), scanpy 1.11.5 (``pp.pca``, ``pp.neighbors`` with exact kNN at these sizes,
``tl.umap``), scikit-learn 1.9.1 (``manifold.trustworthiness``), numpy/scipy (dense
eigendecomposition of the normalised graph Laplacian). Run it with the reference venv::

    .venv/bin/python scripts/reference/make_umap_goldens.py

Inputs (``--data DIR``, default ``$CELLFORGE_SHARED_DATA`` or ``<repo>/../shared/data``):
``pbmc68k_reduced.h5ad`` (``obsm["X_pca"]``, 700 x 50) and ``symphony_pbmcs_small.h5ad``
(1,200 cells; ``sc.pp.pca(n_comps=50, random_state=0)`` of the stored log-normalised X, as
``make_analysis_goldens.py`` does). The embedding used is stored, so the Rust test needs no
scanpy.

Output (``--out DIR``, default ``tests/fixtures/umap``): ``umap.json`` (scalars, small
vectors, versions and a manifest of raw little-endian ``.f32`` / ``.u32`` arrays) and the
arrays; ``README.md`` there describes the layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

warnings.filterwarnings("ignore")

import anndata as ad  # noqa: E402
import pynndescent  # noqa: E402
import scanpy as sc  # noqa: E402
import sklearn  # noqa: E402
import umap  # noqa: E402
from sklearn.manifold import trustworthiness  # noqa: E402
from umap.umap_ import find_ab_params  # noqa: E402

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "reference"))
from fixture_dir import prepare_out_dir  # noqa: E402

K = 15
SEEDS = range(5)
AB_CASES = [(1.0, 0.5), (1.0, 0.1), (1.0, 0.01), (2.0, 0.3), (1.0, 0.0), (0.5, 0.25)]
N_EIG = 2  # eigenvectors the 2-d spectral init uses

README = """# UMAP / NN-descent goldens

Written by `scripts/reference/make_umap_goldens.py` (versions in `umap.json["versions"]`);
read by `core/tests/umap_parity.rs`. Do not edit by hand.

- `umap.json`: scalars and small vectors plus `files`, a manifest of raw little-endian
  `float32` (`.f32`) / `uint32` (`.u32`) arrays, C order, shape given.
- `ab`: umap-learn `find_ab_params(spread, min_dist)` for several `(spread, min_dist)`.
- `datasets.{pbmc68k,symphony}`:
  - `embedding` (`*_pca.f32`, n x 50): pbmc68k_reduced `obsm["X_pca"]`; symphony
    `sc.pp.pca(X, n_comps=50, random_state=0)`.
  - `knn_indices` (`*_knn_indices.u32`, n x 15): exact euclidean neighbours, self first
    (scanpy `pp.neighbors(n_neighbors=15)`, brute force at this size).
  - `connectivities` (`*_conn_{indptr,indices,data}`): scanpy's UMAP connectivities (CSR,
    sorted columns), the graph `sc.tl.umap` lays out.
  - `spectral`: dense `numpy.linalg.eigh` of `I - D^-1/2 W D^-1/2` of those connectivities
    (no pruning): `eigenvalues` (the 3 smallest, the first is the trivial 0) and
    `eigenvectors` (`*_eigvecs.f32`, n x 2, the vectors of eigenvalues 2 and 3), plus
    `n_components_graph` (connected components; the pruned graph umap-learn initialises
    from has `n_components_pruned`).
  - `umap`: `sc.tl.umap(min_dist=0.5, random_state=seed)` (spectral init, 500 epochs) for
    seeds 0..4: `trustworthiness` (sklearn, k = 15, euclidean, in the 50-d embedding) per
    seed, their mean/min/max; `layout_seed0` (`*_umap0.f32`, n x 2).
  - `trust_checks`: sklearn `trustworthiness(embedding, layout_seed0, n_neighbors=k,
    metric=m)` for several `k` / metrics (exact parity target for the Rust implementation).
"""


def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("CELLFORGE_SHARED_DATA")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data"


class Writer:
    def __init__(self, out: Path):
        self.out = out
        self.files: dict[str, dict] = {}

    def array(self, name: str, arr: np.ndarray, dtype: str) -> str:
        a = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
        fname = f"{name}.{ {'float32': 'f32', 'uint32': 'u32'}[dtype] }"
        (self.out / fname).write_bytes(a.tobytes())
        self.files[name] = {"file": fname, "dtype": dtype, "shape": list(a.shape)}
        return fname

    def csr(self, name: str, m) -> dict:
        m = sp.csr_matrix(m)
        m.sort_indices()
        return {
            "n_rows": int(m.shape[0]),
            "n_cols": int(m.shape[1]),
            "nnz": int(m.nnz),
            "indptr": self.array(f"{name}_indptr", m.indptr, "uint32"),
            "indices": self.array(f"{name}_indices", m.indices, "uint32"),
            "data": self.array(f"{name}_data", m.data, "float32"),
        }


def knn_self_first(adata: ad.AnnData) -> np.ndarray:
    dist = adata.obsp["distances"].tocsr()
    n = dist.shape[0]
    out = np.empty((n, K), dtype=np.int64)
    for i in range(n):
        a, b = dist.indptr[i], dist.indptr[i + 1]
        cols, vals = dist.indices[a:b], dist.data[a:b]
        keep = cols != i
        cols, vals = cols[keep], vals[keep]
        order = np.lexsort((cols, vals))[: K - 1]
        out[i, 0] = i
        out[i, 1:] = cols[order]
    return out


def spectral_case(w: Writer, name: str, conn) -> dict:
    g = sp.csr_matrix(conn, dtype=np.float64)
    ncomp, _ = connected_components(g)
    pruned = sp.csr_matrix(conn, dtype=np.float32, copy=True)
    pruned.data[pruned.data < pruned.data.max() / 500.0] = 0
    pruned.eliminate_zeros()
    ncomp_pruned, _ = connected_components(pruned)
    deg = np.asarray(g.sum(axis=0)).ravel()
    dinv = 1.0 / np.sqrt(deg)
    lap = np.eye(g.shape[0]) - (g.multiply(dinv[:, None]).multiply(dinv[None, :])).toarray()
    vals, vecs = np.linalg.eigh(lap)
    return {
        "n_components_graph": int(ncomp),
        "n_components_pruned": int(ncomp_pruned),
        "eigenvalues": vals[: N_EIG + 1].tolist(),
        "eigenvectors": w.array(f"{name}_eigvecs", vecs[:, 1 : N_EIG + 1], "float32"),
    }


def dataset_case(w: Writer, name: str, emb: np.ndarray, source: str) -> dict:
    adata = ad.AnnData(np.zeros((emb.shape[0], 1), dtype=np.float32))
    adata.obsm["X_emb"] = emb
    sc.pp.neighbors(adata, n_neighbors=K, use_rep="X_emb")
    conn = adata.obsp["connectivities"]
    knn = knn_self_first(adata)
    trusts = []
    layout0 = None
    for seed in SEEDS:
        sc.tl.umap(adata, min_dist=0.5, random_state=seed)
        lay = np.asarray(adata.obsm["X_umap"], dtype=np.float32)
        if seed == 0:
            layout0 = lay
        trusts.append(float(trustworthiness(emb, lay, n_neighbors=K)))
    checks = []
    for k, metric in [(15, "euclidean"), (5, "euclidean"), (30, "euclidean"), (15, "cosine")]:
        checks.append(
            {
                "k": k,
                "metric": metric,
                "value": float(trustworthiness(emb, layout0, n_neighbors=k, metric=metric)),
            }
        )
    return {
        "source": source,
        "n": int(emb.shape[0]),
        "d": int(emb.shape[1]),
        "embedding": w.array(f"{name}_pca", emb, "float32"),
        "knn_indices": w.array(f"{name}_knn_indices", knn, "uint32"),
        "connectivities": w.csr(f"{name}_conn", conn),
        "spectral": spectral_case(w, name, conn),
        "umap": {
            "min_dist": 0.5,
            "spread": 1.0,
            "init": "spectral",
            "n_epochs": 500,
            "seeds": list(SEEDS),
            "trustworthiness": trusts,
            "trust_mean": float(np.mean(trusts)),
            "trust_min": float(np.min(trusts)),
            "trust_max": float(np.max(trusts)),
            "layout_seed0": w.array(f"{name}_umap0", layout0, "float32"),
        },
        "trust_checks": checks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "umap"))
    args = ap.parse_args()
    data = data_dir(args.data)
    out = Path(args.out)
    if not prepare_out_dir(out, "umap.json"):
        raise SystemExit(2)
    w = Writer(out)
    sc.settings.n_jobs = 1

    pb = ad.read_h5ad(data / "pbmc68k_reduced.h5ad")
    pb_emb = np.asarray(pb.obsm["X_pca"], dtype=np.float32)
    sym = ad.read_h5ad(data / "symphony_pbmcs_small.h5ad")
    sc.pp.pca(sym, n_comps=50, random_state=0)
    sym_emb = np.asarray(sym.obsm["X_pca"], dtype=np.float32)

    result = {
        "generator": "scripts/reference/make_umap_goldens.py",
        "versions": {
            "umap-learn": umap.__version__,
            "pynndescent": pynndescent.__version__,
            "scanpy": sc.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "k": K,
        "ab": [
            {"spread": s, "min_dist": m, "a": float(a), "b": float(b)}
            for (s, m) in AB_CASES
            for (a, b) in [find_ab_params(s, m)]
        ],
        "datasets": {
            "pbmc68k": dataset_case(w, "pbmc68k", pb_emb, "pbmc68k_reduced.h5ad obsm['X_pca']"),
            "symphony": dataset_case(
                w,
                "symphony",
                sym_emb,
                "symphony_pbmcs_small.h5ad: sc.pp.pca(X, n_comps=50, random_state=0)",
            ),
        },
    }
    result["files"] = w.files
    (out / "umap.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "README.md").write_text(README)
    print(json.dumps({k: v for k, v in result.items() if k in ("versions", "ab")}, indent=1))
    for name, ds in result["datasets"].items():
        print(name, ds["umap"]["trustworthiness"], ds["spectral"])


if __name__ == "__main__":
    main()
