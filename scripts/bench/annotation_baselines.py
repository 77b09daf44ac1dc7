"""Simple cell-type annotation baselines that the cellforge fine-tuning engine must beat.

What it computes (all seeded / deterministic; only the *_seconds timings vary run to run):

1. `symphony` (symphony_pbmcs_small.h5ad, 1,200 cells x 1,767 genes, `obs["cell_type"]`, 9
   classes). Reference = donor in {3pv2, 5p} (910 cells), query = donor 3pv1 (290 cells).
   Features: log1p CP10k recomputed from `layers["counts"]` (scanpy normalize_total 1e4 + log1p).
   - `celltypist_lr`: CellTypist's default `celltypist.train` recipe (v1.6/1.7 train.py +
     classifier.py), reimplemented because celltypist is not installed:
       * drop genes with no non-zero value in the training cells;
       * StandardScaler(with_mean=True) fit on the training cells (CellTypist's default
         with_mean=True: centred AND scaled to unit variance; sparse input is densified);
       * clip from above only at 10 (np.minimum(x, 10); negatives are not clipped);
       * query cells are scaled with the *training* mean/scale and clipped the same way;
       * LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000) one-vs-rest (CellTypist passes
         multi_class="ovr"; that argument is gone from scikit-learn >= 1.8, so this uses
         OneVsRestClassifier(LogisticRegression(...)), which fits the same per-class binary
         problems); prediction = argmax of the decision function ("best match" mode).
   - `lr_multinomial`: same features/scaling, plain multinomial LogisticRegression(C=1.0,
     lbfgs, max_iter=1000) (scikit-learn's default for multi-class lbfgs).
   - `knn_pca`: same scaled/clipped features, PCA(50, svd_solver="full") fit on the reference,
     query projected, KNeighborsClassifier(k=10, uniform weights, Euclidean) majority vote
     (ties go to the lexicographically smallest label, scikit-learn's behaviour).
   Metrics on the query: accuracy; macro precision / recall / F1 (scikit-learn,
   zero_division=0, labels = sorted(set(y_true) | set(y_pred))); per-class precision / recall /
   F1 / support; train / predict seconds (train includes scaling).
2. `pbmc68k` (pbmc68k_reduced.h5ad, 700 cells, `obs["bulk_labels"]`, 10 classes). Features =
   `adata.raw.X` (log-normalised, 765 genes; `X` itself is z-scored, as CellTypist would also
   fall back to `.raw`). StratifiedKFold(5, shuffle=True, random_state=0) over bulk_labels; in
   each fold the same three methods are fit on the 4 training folds (gene filter, scaler and PCA
   fit on the training folds only) and scored on the held-out fold. Reports per-fold and mean
   (and population std) accuracy / macro-F1, the out-of-fold predictions, and `fold_of_cell`
   (cell index in file order -> held-out fold 0..4) so the Rust side can reuse identical folds.
3. The symphony reference / query cell indices (0-based, file order) are written out too.

Output: one JSON object on stdout (compact, one line; `--pretty` indents it) and, with
`--out FILE`, the same JSON in FILE. `--summary` also prints a short human-readable table on
stderr. Keys: see `SCHEMA` below. Runs in ~10 s, single
threaded (OMP/OpenBLAS/MKL thread counts default to 1).

How to run (from the repo root):
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/annotation_baselines.py \
        [--data-dir ../shared/data] [--out baselines.json] [--pretty] [--summary]

Versions this was written and checked against (the repo's .venv):
    Python 3.11.7, numpy 2.4.6, scipy 1.17.1, scikit-learn 1.9.1, anndata 0.12.19, scanpy 1.11.5
Input files (sha256): symphony_pbmcs_small.h5ad 006f7bb95cdb190c…, pbmc68k_reduced.h5ad
e71d41e737c94155… (recorded in the output as well).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from importlib.metadata import version as _pkg_version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)

import anndata as ad  # noqa: E402
import scanpy as sc  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import accuracy_score, precision_recall_fscore_support  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.multiclass import OneVsRestClassifier  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

SCHEMA_VERSION = 1
SEED = 0
LR_C = 1.0
LR_MAX_ITER = 1000
CLIP_MAX = 10.0
PCA_COMPONENTS = 50
KNN_K = 10
SYMPHONY_REF_DONORS = ["3pv2", "5p"]
SYMPHONY_QUERY_DONOR = "3pv1"

METHODS = {
    "celltypist_lr": "CellTypist default: drop all-zero genes, StandardScaler(with_mean=True) fit on "
    "train, clip >10 to 10, LogisticRegression(C=1, lbfgs, max_iter=1000) one-vs-rest, argmax",
    "lr_multinomial": "same features/scaling, multinomial LogisticRegression(C=1, lbfgs, max_iter=1000)",
    "knn_pca": "same features/scaling, PCA(50, full SVD) fit on train, kNN k=10 uniform majority vote",
}

# Documentation of the output (kept in sync with build_* below).
SCHEMA = {
    "schema_version": "int",
    "script": "str",
    "versions": "{python, numpy, scipy, scikit-learn, anndata, scanpy: str}",
    "total_seconds": "float (wall time of the whole run)",
    "settings": "{seed, lr_C, lr_max_iter, clip_max, pca_components, knn_k, methods: {name: description}}",
    "symphony": "{file, sha256, n_cells, n_genes, label_key, batch_key, features, reference_donors, "
    "query_donor, reference_indices[int], query_indices[int], n_reference, n_query, n_genes_used, "
    "classes[str], methods: {name: METRICS + predictions[str] (query order)}}",
    "pbmc68k": "{file, sha256, n_cells, n_genes, label_key, features, classes[str], "
    "cv: {n_splits, shuffle, random_state}, fold_of_cell[int], "
    "methods: {name: {folds: [{fold, n_train, n_test, n_genes_used, accuracy, macro_precision, "
    "macro_recall, macro_f1, train_seconds, predict_seconds}], mean_accuracy, std_accuracy, "
    "mean_macro_f1, std_macro_f1, pooled: METRICS (over all out-of-fold predictions), "
    "predictions[str] (out-of-fold, file order)}}}",
    "METRICS": "{accuracy, macro_precision, macro_recall, macro_f1, labels[str], per_class: {label: "
    "{precision, recall, f1, support}}, train_seconds, predict_seconds, converged(bool, LR only)}",
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dense(x):
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def metrics(y_true, y_pred):
    labels = sorted(set(y_true) | set(y_pred))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "labels": labels,
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
    }


def celltypist_scale(x_train, x_test):
    """CellTypist's preprocessing: drop genes never expressed in train, z-score with the train
    mean/std (ddof=0), clip values above CLIP_MAX. Returns (train, test, n_genes_used)."""
    keep = np.count_nonzero(x_train, axis=0) > 0
    x_train, x_test = x_train[:, keep], x_test[:, keep]
    scaler = StandardScaler(with_mean=True)
    a = scaler.fit_transform(x_train)
    b = (x_test - scaler.mean_) / scaler.scale_
    np.minimum(a, CLIP_MAX, out=a)
    np.minimum(b, CLIP_MAX, out=b)
    return a, b, int(keep.sum())


def fit_predict(method, a, y_train, b):
    """Fit `method` on scaled train features `a`; predict scaled test features `b`.
    Returns (predictions, fit_seconds, predict_seconds, converged or None)."""
    converged = None
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if method == "celltypist_lr":
            model = OneVsRestClassifier(
                LogisticRegression(C=LR_C, solver="lbfgs", max_iter=LR_MAX_ITER)
            ).fit(a, y_train)
        elif method == "lr_multinomial":
            model = LogisticRegression(C=LR_C, solver="lbfgs", max_iter=LR_MAX_ITER).fit(a, y_train)
        elif method == "knn_pca":
            pca = PCA(n_components=min(PCA_COMPONENTS, *a.shape), svd_solver="full", random_state=SEED)
            za = pca.fit_transform(a)
            model = KNeighborsClassifier(n_neighbors=KNN_K, weights="uniform").fit(za, y_train)
        else:
            raise ValueError(method)
    t1 = time.perf_counter()
    if method != "knn_pca":
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    pred = model.predict(pca.transform(b) if method == "knn_pca" else b)
    t2 = time.perf_counter()
    return np.asarray(pred).astype(str), t1 - t0, t2 - t1, converged


def build_symphony(path):
    adata = ad.read_h5ad(path)
    donors = adata.obs["donor"].astype(str).to_numpy()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    ref_idx = np.flatnonzero(np.isin(donors, SYMPHONY_REF_DONORS))
    qry_idx = np.flatnonzero(donors == SYMPHONY_QUERY_DONOR)

    # log1p CP10k from the integer counts (per-cell, so computing it on all cells at once is the
    # same as doing reference and query separately).
    counts = ad.AnnData(X=sp.csr_matrix(adata.layers["counts"], dtype=np.float64))
    sc.pp.normalize_total(counts, target_sum=1e4)
    sc.pp.log1p(counts)
    x = dense(counts.X)

    out = {
        "file": str(path),
        "sha256": sha256(path),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "label_key": "cell_type",
        "batch_key": "donor",
        "features": "log1p(CP10k) of layers['counts'] (scanpy normalize_total 1e4 + log1p)",
        "reference_donors": SYMPHONY_REF_DONORS,
        "query_donor": SYMPHONY_QUERY_DONOR,
        "reference_indices": ref_idx.tolist(),
        "query_indices": qry_idx.tolist(),
        "n_reference": int(ref_idx.size),
        "n_query": int(qry_idx.size),
        "classes": sorted(set(y)),
        "methods": {},
    }
    a, b, n_used = celltypist_scale(x[ref_idx], x[qry_idx])
    out["n_genes_used"] = n_used
    for method in METHODS:
        pred, t_fit, t_pred, conv = fit_predict(method, a, y[ref_idx], b)
        m = metrics(y[qry_idx], pred)
        m.update(train_seconds=t_fit, predict_seconds=t_pred)
        if conv is not None:
            m["converged"] = conv
        m["predictions"] = pred.tolist()
        out["methods"][method] = m
    return out


def build_pbmc68k(path):
    adata = ad.read_h5ad(path)
    y = adata.obs["bulk_labels"].astype(str).to_numpy()
    x = dense(adata.raw.X)
    skf = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    splits = list(skf.split(np.zeros((len(y), 1)), y))
    fold_of_cell = np.full(len(y), -1, dtype=int)
    for k, (_, te) in enumerate(splits):
        fold_of_cell[te] = k
    assert (fold_of_cell >= 0).all()

    out = {
        "file": str(path),
        "sha256": sha256(path),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.raw.n_vars),
        "label_key": "bulk_labels",
        "features": "adata.raw.X (log-normalised, as stored)",
        "classes": sorted(set(y)),
        "cv": {"n_splits": 5, "shuffle": True, "random_state": SEED},
        "fold_of_cell": fold_of_cell.tolist(),
        "methods": {},
    }
    for method in METHODS:
        folds, oof = [], np.empty(len(y), dtype=object)
        for k, (tr, te) in enumerate(splits):
            a, b, n_used = celltypist_scale(x[tr], x[te])
            pred, t_fit, t_pred, conv = fit_predict(method, a, y[tr], b)
            oof[te] = pred
            m = metrics(y[te], pred)
            row = {"fold": k, "n_train": int(tr.size), "n_test": int(te.size), "n_genes_used": n_used}
            row.update({key: m[key] for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1")})
            row.update(train_seconds=t_fit, predict_seconds=t_pred)
            if conv is not None:
                row["converged"] = conv
            folds.append(row)
        acc = np.array([f["accuracy"] for f in folds])
        f1 = np.array([f["macro_f1"] for f in folds])
        out["methods"][method] = {
            "folds": folds,
            "mean_accuracy": float(acc.mean()),
            "std_accuracy": float(acc.std()),
            "mean_macro_f1": float(f1.mean()),
            "std_macro_f1": float(f1.std()),
            "pooled": metrics(y, oof.astype(str)),
            "predictions": oof.astype(str).tolist(),
        }
    return out


def summary(res):
    lines = []
    s = res["symphony"]
    lines.append(
        f"symphony: reference {'+'.join(s['reference_donors'])} ({s['n_reference']} cells) -> "
        f"query {s['query_donor']} ({s['n_query']} cells), {s['n_genes_used']} genes"
    )
    lines.append(f"  {'method':<16}{'acc':>8}{'macroP':>8}{'macroR':>8}{'macroF1':>9}{'train_s':>9}")
    for name, m in s["methods"].items():
        lines.append(
            f"  {name:<16}{m['accuracy']:8.4f}{m['macro_precision']:8.4f}{m['macro_recall']:8.4f}"
            f"{m['macro_f1']:9.4f}{m['train_seconds']:9.3f}"
        )
    m = s["methods"]["celltypist_lr"]
    lines.append("  celltypist_lr per-class F1 (support): " + ", ".join(
        f"{k} {v['f1']:.3f} ({v['support']})" for k, v in m["per_class"].items()))
    p = res["pbmc68k"]
    lines.append(f"pbmc68k: {p['n_cells']} cells, {p['n_genes']} genes, 5-fold stratified CV")
    lines.append(f"  {'method':<16}{'fold accs':<42}{'mean acc':>9}{'mean F1':>9}")
    for name, m in p["methods"].items():
        accs = " ".join(f"{f['accuracy']:.3f}" for f in m["folds"])
        lines.append(f"  {name:<16}{accs:<42}{m['mean_accuracy']:9.4f}{m['mean_macro_f1']:9.4f}")
        f1s = "F1: " + " ".join(f"{f['macro_f1']:.3f}" for f in m["folds"])
        lines.append(f"  {'':<16}{f1s:<42}")
    return "\n".join(lines)


def main():
    repo = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=repo.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--pretty", action="store_true", help="indent the JSON")
    ap.add_argument("--summary", action="store_true", help="print a human-readable table on stderr")
    args = ap.parse_args()

    np.random.seed(SEED)
    t0 = time.perf_counter()
    res = {
        "schema_version": SCHEMA_VERSION,
        "script": "scripts/bench/annotation_baselines.py",
        "versions": {
            "python": platform.python_version(),
            **{k: _pkg_version(k) for k in ("numpy", "scipy", "scikit-learn", "anndata", "scanpy")},
        },
        "settings": {
            "seed": SEED,
            "lr_C": LR_C,
            "lr_max_iter": LR_MAX_ITER,
            "clip_max": CLIP_MAX,
            "pca_components": PCA_COMPONENTS,
            "knn_k": KNN_K,
            "methods": METHODS,
        },
        "symphony": build_symphony(args.data_dir / "symphony_pbmcs_small.h5ad"),
        "pbmc68k": build_pbmc68k(args.data_dir / "pbmc68k_reduced.h5ad"),
    }
    res["total_seconds"] = time.perf_counter() - t0
    text = json.dumps(res, indent=1 if args.pretty else None)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    if args.summary:
        print(summary(res), file=sys.stderr)


if __name__ == "__main__":
    main()
