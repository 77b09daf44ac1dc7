#!/usr/bin/env python3
"""Write the analysis goldens under ``tests/fixtures/analysis/``.

References (versions pinned in ``analysis-requirements.txt``): scikit-learn 1.9.1 (accuracy,
precision/recall/F1, confusion matrix, NMI, ARI, silhouette), scanpy 1.11.5 (``pp.pca``,
``pp.neighbors`` with exact brute-force kNN, ``tl.leiden`` with flavor ``leidenalg``),
umap-learn 0.5.12 (``fuzzy_simplicial_set``, called by scanpy), leidenalg 0.12.0 + igraph 1.0.0
and scib 1.1.7 (the metrics scGPT's ``eval_scib_metrics`` reports). Run it with a reference
venv (``.venv-ref`` from ``setup.sh``, or any venv with ``requirements.txt``) after installing
those extras::

    .venv-ref/bin/python -m pip install -r scripts/reference/analysis-requirements.txt
    .venv-ref/bin/python scripts/reference/make_analysis_goldens.py

Inputs: ``symphony_pbmcs_small.h5ad`` (1,200 cells; X is ln(CP10k + 1); labels ``cell_type``,
batch ``donor``) and ``pbmc68k_reduced.h5ad`` (700 cells; ``obsm["X_pca"]``, labels
``bulk_labels``, ``louvain``) from the shared data folder (``--data DIR``, default
``$CELLFORGE_SHARED_DATA`` or ``<repo>/../shared/data``).

Output (``--out DIR``, default ``tests/fixtures/analysis``): ``analysis.json`` with every
scalar/small value and a manifest of raw little-endian binary arrays (``*.f32``, ``*.u32``)
holding the embeddings, kNN indices/distances and CSR connectivities, so the Rust test needs
no numpy reader. ``README.md`` in that folder describes the layout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

warnings.filterwarnings("ignore")

import anndata as ad  # noqa: E402
import igraph  # noqa: E402
import leidenalg  # noqa: E402
import scanpy as sc  # noqa: E402
import scib  # noqa: E402
import sklearn  # noqa: E402
import sklearn.metrics as skm  # noqa: E402
from scanpy.neighbors._connectivity import umap as scanpy_umap  # noqa: E402

warnings.filterwarnings("ignore")  # again: scanpy/scib install their own filters on import

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "bench"))
from scib_metrics import scgpt_scib_table  # noqa: E402

sys.path.insert(0, str(REPO / "scripts" / "reference"))
from fixture_dir import prepare_out_dir  # noqa: E402
K = 15  # scanpy / scib default n_neighbors
LEIDEN_RES = [0.5, 1.0]
# leidenalg's result depends on its seed (different seeds give ARI 0.7-1.0 against each
# other on these graphs), so a reimplementation is compared with this ensemble too
ENSEMBLE_SEEDS = range(10)


def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("CELLFORGE_SHARED_DATA")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data"


class Writer:
    """Raw little-endian arrays next to a JSON manifest."""

    def __init__(self, out: Path):
        self.out = out
        self.files: dict[str, dict] = {}

    def array(self, name: str, arr: np.ndarray, dtype: str) -> dict:
        a = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
        fname = f"{name}.{ {'float32': 'f32', 'uint32': 'u32'}[dtype] }"
        (self.out / fname).write_bytes(a.tobytes())
        entry = {"file": fname, "dtype": dtype, "shape": list(a.shape)}
        self.files[name] = entry
        return entry

    def csr(self, name: str, m: sp.csr_matrix) -> dict:
        m = sp.csr_matrix(m)
        m.sort_indices()
        assert m.has_canonical_format
        return {
            "n_rows": int(m.shape[0]),
            "n_cols": int(m.shape[1]),
            "nnz": int(m.nnz),
            "indptr": self.array(f"{name}_indptr", m.indptr, "uint32")["file"],
            "indices": self.array(f"{name}_indices", m.indices, "uint32")["file"],
            "data": self.array(f"{name}_data", m.data, "float32")["file"],
        }


def codes(series) -> np.ndarray:
    return np.asarray(series.cat.codes, dtype=np.int64)


def knn_from_scanpy(adata: ad.AnnData, key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """kNN (self first) exactly as scanpy handed it to umap: self + the `distances` rows."""
    dkey = "distances" if key is None else f"{key}_distances"
    dist = adata.obsp[dkey]
    n = dist.shape[0]
    assert np.all(np.diff(dist.indptr) == K - 1)
    idx = dist.indices.reshape(n, K - 1)
    dd = dist.data.reshape(n, K - 1)
    assert np.all(np.diff(dd, axis=1) >= 0), "scanpy rows are sorted by distance"
    idx = np.hstack([np.arange(n)[:, None], idx])
    dd = np.hstack([np.zeros((n, 1)), dd])
    return idx, dd


def modularity(conn: sp.csr_matrix, membership: np.ndarray, resolution: float) -> float:
    """RB-configuration modularity normalised by the total weight S = sum_ij A_ij:
    Q = (1/S) sum_c [ sum_{i,j in c} A_ij - gamma (sum_{i in c} k_i)^2 / S ]."""
    a = sp.csr_matrix(conn, dtype=np.float64)
    s = a.sum()
    k = np.asarray(a.sum(axis=1)).ravel()
    m = np.asarray(membership)
    coo = a.tocoo()
    inside = coo.data[m[coo.row] == m[coo.col]].sum()
    kc = np.bincount(m, weights=k)
    return float((inside - resolution * (kc**2).sum() / s) / s)


def leiden_case(adata: ad.AnnData, res: float) -> dict:
    """scanpy's leiden (flavor leidenalg, its defaults) and the leidenalg quality of it."""
    key = f"leiden_{res}"
    sc.tl.leiden(adata, resolution=res, random_state=0, key_added=key, flavor="leidenalg")
    labels = np.asarray(adata.obs[key].astype(int))
    # replay with leidenalg directly to get the partition's quality
    conn = adata.obsp["connectivities"]
    g = sc._utils.get_igraph_from_adjacency(conn, directed=True)
    part = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights=np.array(g.es["weight"]).astype(np.float64),
        resolution_parameter=res,
        n_iterations=-1,
        seed=0,
    )
    memb = np.asarray(part.membership)
    assert np.array_equal(memb, labels), "leidenalg replay differs from sc.tl.leiden"
    q_raw = part.quality()
    q_norm = modularity(conn, memb, res)
    total = float(np.asarray(conn, dtype=np.float64).sum()) if not sp.issparse(conn) else float(
        conn.astype(np.float64).sum()
    )
    assert abs(q_raw / total - q_norm) < 1e-9, (q_raw / total, q_norm)
    sizes = np.bincount(memb)
    assert np.all(np.diff(sizes) <= 0), "leidenalg numbers communities by decreasing size"
    ensemble = []
    for seed in ENSEMBLE_SEEDS:
        p = leidenalg.find_partition(
            g,
            leidenalg.RBConfigurationVertexPartition,
            weights=np.array(g.es["weight"]).astype(np.float64),
            resolution_parameter=res,
            n_iterations=-1,
            seed=seed,
        )
        m = np.asarray(p.membership)
        ensemble.append(
            {"seed": seed, "labels": m.tolist(), "modularity": modularity(conn, m, res)}
        )
    return {
        "resolution": res,
        "seed": 0,
        "labels": memb.tolist(),
        "n_clusters": int(memb.max() + 1),
        "quality_leidenalg": q_raw,
        "modularity": q_norm,
        "seeds": ensemble,
    }


def silhouette_case(x: np.ndarray, labels: np.ndarray) -> dict:
    x64 = x.astype(np.float64)
    return {
        "score": float(skm.silhouette_score(x64, labels)),
        "samples": skm.silhouette_samples(x64, labels).tolist(),
        # what scib sees (sklearn on the float32 embedding: float32 distances)
        "score_f32_input": float(skm.silhouette_score(x, labels)),
    }


def classification_case(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    labels = np.union1d(y_true, y_pred)
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0
    )
    mp, mr, mf, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "y_true": y_true.tolist(),
        "y_pred": y_pred.tolist(),
        "labels": labels.tolist(),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": p.tolist(),
        "recall": r.tolist(),
        "f1": f.tolist(),
        "support": s.tolist(),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "confusion": cm.tolist(),
    }


def clustering_pair(a: np.ndarray, b: np.ndarray) -> dict:
    return {
        "a": np.asarray(a).tolist(),
        "b": np.asarray(b).tolist(),
        "nmi": float(skm.normalized_mutual_info_score(a, b)),
        "ari": float(skm.adjusted_rand_score(a, b)),
    }


def graph_case(w: Writer, name: str, adata: ad.AnnData, key: str | None = None) -> dict:
    idx, dd = knn_from_scanpy(adata, key)
    ckey = "connectivities" if key is None else f"{key}_connectivities"
    conn = adata.obsp[ckey]
    assert conn.dtype == np.float32
    # scanpy's connectivities are umap's fuzzy set of exactly this kNN (self distance 0)
    again = scanpy_umap(idx, dd, n_obs=adata.n_obs, n_neighbors=K)
    assert abs(again - conn).max() == 0
    return {
        "k": K,
        "knn_indices": w.array(f"{name}_knn_indices", idx, "uint32")["file"],
        "knn_distances": w.array(f"{name}_knn_distances", dd, "float32")["file"],
        "connectivities": w.csr(f"{name}_conn", conn),
    }


def scib_case(adata: ad.AnnData, label_key: str, batch_key: str) -> dict:
    """scib metrics as scGPT's eval_scib_metrics computes them (embed X_emb, no neighbors yet)."""
    a = adata.copy()
    for key in ("neighbors",):
        a.uns.pop(key, None)
    for key in list(a.obsp.keys()):
        del a.obsp[key]
    res_max, nmi_max, nmi_all = scib.me.cluster_optimal_resolution(
        a,
        label_key=label_key,
        cluster_key="cluster",
        metric=scib.me.nmi,
        use_rep="X_emb",
        force=True,
        verbose=False,
        return_all=True,
    )
    nmi = scib.me.nmi(a, cluster_key="cluster", label_key=label_key)
    ari = scib.me.ari(a, cluster_key="cluster", label_key=label_key)
    asw_label = scib.me.silhouette(a, label_key=label_key, embed="X_emb")
    asw_batch, sil_means, _ = scib.me.silhouette_batch(
        a, batch_key=batch_key, label_key=label_key, embed="X_emb", return_all=True, verbose=False
    )
    gc = scib.me.graph_connectivity(a, label_key=label_key)
    res_list = [float(r) for r in nmi_all["resolution"]]
    per_res = []
    for r, s in zip(nmi_all["resolution"], nmi_all["score"]):
        lab = np.asarray(a.obs[f"cluster_{r}"].astype(int))
        per_res.append({"resolution": float(r), "nmi": float(s), "labels": lab.tolist()})
    best = np.asarray(a.obs["cluster"].astype(int))

    # the same numbers through scib's master function, flags as in scGPT's eval_scib_metrics
    t = scgpt_scib_table(adata, "X_emb", label_key, batch_key)
    for k_, v in {
        "NMI_cluster/label": nmi,
        "ARI_cluster/label": ari,
        "ASW_label": asw_label,
        "ASW_label/batch": asw_batch,
        "graph_conn": gc,
    }.items():
        assert abs(t[k_] - v) < 1e-12, (k_, t[k_], v)

    avg_bio = float(np.mean([nmi, ari, asw_label]))
    avg_batch = float(np.mean([asw_batch, gc]))
    return {
        "label_key": label_key,
        "batch_key": batch_key,
        "n_neighbors": K,
        "resolutions": res_list,
        "best_resolution": float(res_max),
        "per_resolution": per_res,
        "cluster_labels": best.tolist(),
        "NMI_cluster/label": float(nmi),
        "ARI_cluster/label": float(ari),
        "ASW_label": float(asw_label),
        "ASW_label/batch": float(asw_batch),
        "ASW_label/batch_per_label": {
            str(k_): float(v) for k_, v in sil_means["silhouette_score"].items()
        },
        "graph_conn": float(gc),
        "avg_bio": avg_bio,
        "avg_batch": avg_batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "analysis"))
    args = ap.parse_args()
    data = data_dir(args.data)
    out = Path(args.out)
    if not prepare_out_dir(out, "analysis.json"):
        raise SystemExit(2)
    w = Writer(out)
    sc.settings.n_jobs = 1

    # ---- symphony: PCA(50) of the log-normalised X ----------------------------------------
    sym = ad.read_h5ad(data / "symphony_pbmcs_small.h5ad")
    sc.pp.pca(sym, n_comps=50, random_state=0)
    emb = np.asarray(sym.obsm["X_pca"], dtype=np.float32)
    sym.obsm["X_emb"] = emb
    sc.pp.neighbors(sym, n_neighbors=K, use_rep="X_emb")
    sym_ct = codes(sym.obs["cell_type"])
    sym_donor = codes(sym.obs["donor"])

    # ---- pbmc68k_reduced: its stored X_pca -----------------------------------------------
    pb = ad.read_h5ad(data / "pbmc68k_reduced.h5ad")
    pb_emb = np.asarray(pb.obsm["X_pca"], dtype=np.float32)
    pb.obsm["X_emb"] = pb_emb
    for key in list(pb.obsp.keys()):
        del pb.obsp[key]
    pb.uns.pop("neighbors", None)
    sc.pp.neighbors(pb, n_neighbors=K, use_rep="X_emb")
    sc.pp.neighbors(pb, n_neighbors=K, use_rep="X_emb", metric="cosine", key_added="cosine")
    pb_bulk = codes(pb.obs["bulk_labels"])
    pb_louvain = codes(pb.obs["louvain"])

    # ---- classification: cell_type vs a perturbed copy -------------------------------------
    rng = np.random.default_rng(20260515)
    y_true = sym_ct.copy()
    y_pred = y_true.copy()
    flip = rng.random(len(y_pred)) < 0.25
    y_pred[flip] = rng.integers(0, 11, flip.sum())  # codes 9, 10 never occur in y_true
    hsc = list(sym.obs["cell_type"].cat.categories).index("HSC")
    y_pred[y_pred == hsc] = 0  # a true class that is never predicted
    classification = classification_case(y_true, y_pred)
    assert 9 in classification["labels"] and hsc not in y_pred

    # ---- graphs, leiden ---------------------------------------------------------------------
    sym_graph = graph_case(w, "symphony", sym)
    pb_graph = graph_case(w, "pbmc68k", pb)
    pb_cos = graph_case(w, "pbmc68k_cosine", pb, key="cosine")
    sym_leiden = [leiden_case(sym, r) for r in LEIDEN_RES]
    pb_leiden = [leiden_case(pb, r) for r in LEIDEN_RES]

    result = {
        "generator": "scripts/reference/make_analysis_goldens.py",
        "versions": {
            "scanpy": sc.__version__,
            "scikit-learn": sklearn.__version__,
            "leidenalg": leidenalg.__version__,
            "igraph": igraph.__version__,
            "scib": scib.__version__,
            "numpy": np.__version__,
        },
        "files": w.files,
        "classification": classification,
        "datasets": {
            "symphony": {
                "source": "symphony_pbmcs_small.h5ad: sc.pp.pca(X log-normalised, n_comps=50, random_state=0)",
                "n": int(emb.shape[0]),
                "d": int(emb.shape[1]),
                "embedding": w.array("symphony_pca", emb, "float32")["file"],
                "labels": sym_ct.tolist(),
                "label_names": list(map(str, sym.obs["cell_type"].cat.categories)),
                "batches": sym_donor.tolist(),
                "batch_names": list(map(str, sym.obs["donor"].cat.categories)),
                "graph": sym_graph,
                "leiden": sym_leiden,
                "silhouette_labels": silhouette_case(emb, sym_ct),
                "labels_vs_leiden_1.0": clustering_pair(sym_ct, sym_leiden[1]["labels"]),
                "scib": scib_case(sym, "cell_type", "donor"),
            },
            "pbmc68k": {
                "source": "pbmc68k_reduced.h5ad: obsm['X_pca']",
                "n": int(pb_emb.shape[0]),
                "d": int(pb_emb.shape[1]),
                "embedding": w.array("pbmc68k_pca", pb_emb, "float32")["file"],
                "labels": pb_bulk.tolist(),
                "label_names": list(map(str, pb.obs["bulk_labels"].cat.categories)),
                "graph": pb_graph,
                "graph_cosine": pb_cos,
                "leiden": pb_leiden,
                "silhouette_labels": silhouette_case(pb_emb, pb_bulk),
                "labels_vs_louvain": clustering_pair(pb_bulk, pb_louvain),
                "labels_vs_leiden_1.0": clustering_pair(pb_bulk, pb_leiden[1]["labels"]),
            },
        },
    }
    text = json.dumps(result, indent=1)
    # one line per numeric array
    text = re.sub(
        r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
        lambda m: "[" + ",".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    assert json.loads(text) == result
    (out / "analysis.json").write_text(text + "\n")
    (out / "README.md").write_text(README)
    total = sum(p.stat().st_size for p in out.iterdir())
    s = result["datasets"]["symphony"]["scib"]
    print(f"wrote {out} ({total / 1e6:.2f} MB)")
    print(
        "scib symphony: NMI {:.4f} ARI {:.4f} ASW_label {:.4f} ASW_batch {:.4f} GC {:.4f} "
        "AvgBIO {:.4f} AvgBATCH {:.4f} (best res {})".format(
            s["NMI_cluster/label"],
            s["ARI_cluster/label"],
            s["ASW_label"],
            s["ASW_label/batch"],
            s["graph_conn"],
            s["avg_bio"],
            s["avg_batch"],
            s["best_resolution"],
        )
    )


README = """# Analysis goldens

Written by `scripts/reference/make_analysis_goldens.py` (see its docstring for the reference
versions); read by `core/tests/analysis_parity.rs`. Do not edit by hand.

- `analysis.json`: every scalar and small vector, plus `files`, a manifest of the binary
  arrays: raw little-endian `float32` (`.f32`) or `uint32` (`.u32`), C order, shape given.
- `datasets.symphony`: PCA (50 comps, scanpy) of `symphony_pbmcs_small.h5ad`'s log-normalised
  X (`symphony_pca.f32`, 1200 x 50); labels `cell_type`, batches `donor` (category codes).
- `datasets.pbmc68k`: `pbmc68k_reduced.h5ad` `obsm["X_pca"]` (700 x 50); labels `bulk_labels`.
- `graph`: scanpy 1.11.5 `pp.neighbors(n_neighbors=15, use_rep=...)` (exact brute-force kNN
  at this size): `*_knn_indices.u32` / `*_knn_distances.f32` (n x 15, self first, distance 0)
  and the UMAP connectivities as CSR with sorted column indices (`*_conn_indptr.u32`,
  `*_conn_indices.u32`, `*_conn_data.f32`). `graph_cosine`: the same with `metric="cosine"`.
- `leiden`: `sc.tl.leiden(resolution=r, random_state=0, flavor="leidenalg")` on those
  connectivities (leidenalg RBConfigurationVertexPartition, directed igraph as scanpy builds
  it, n_iterations=-1). `quality_leidenalg` is leidenalg's raw `quality()`; `modularity` is
  that divided by the total edge weight sum_ij A_ij (the usual normalised modularity with
  resolution). `seeds`: the same leidenalg call with seeds 0..9 (labels, modularity).
- `silhouette_labels`: sklearn `silhouette_score`/`silhouette_samples` on the float64 copy of
  the embedding (`score_f32_input`: on the float32 embedding, as scib calls it).
- `scib`: scib 1.1.7 on the symphony embedding with `cell_type` / `donor`, as scGPT's
  `eval_scib_metrics` calls it (neighbours recomputed with scanpy defaults,
  `cluster_optimal_resolution` over resolutions 0.2, 0.4, ..., 2.0, NMI/ARI of the best
  clustering, ASW label, ASW label/batch, graph connectivity); `avg_bio` = mean(NMI, ARI,
  ASW_label), `avg_batch` = mean(ASW_label/batch, graph_conn) (scGPT convention).
- `classification`: sklearn accuracy, per-class and macro precision/recall/F1
  (`zero_division=0`, labels = union of y_true and y_pred) and confusion matrix for
  `cell_type` codes vs a perturbed copy (25 % random codes 0..10; class HSC never predicted).
"""


if __name__ == "__main__":
    main()
