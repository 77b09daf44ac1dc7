#!/usr/bin/env python3
"""Write the preprocessing goldens under ``tests/fixtures/pp/``.

Reference: scanpy 1.11.5 (``normalize_total``, ``log1p``, ``highly_variable_genes`` with
scikit-misc 0.5.3 for ``seurat_v3`` and statsmodels for ``cell_ranger``) and the scgpt 0.2.4
``Preprocessor`` (binning). Run with the venv from ``setup.sh``::

    bash scripts/reference/setup.sh
    .venv-ref/bin/python scripts/reference/make_pp_goldens.py

Inputs: ``harmony_pbmc_stim.h5ad`` and ``symphony_pbmcs_small.h5ad`` from the shared data
folder (``--data DIR``, default ``$CELLFORGE_SHARED_DATA`` or ``<repo>/../shared/data``) and a
generated raw-count set written to ``tests/fixtures/pp/raw_counts.h5ad`` (seeded negative
binomial counts, 3 batches, some all-zero cells and genes, many ties).

Each case is one ``<case>.h5ad`` holding what the reference produced (var columns, and for
the Preprocessor cases X, layers ``X_normed``/``X_log1p``/``X_binned``, ``obsm["bin_edges"]``
for the stored cells), and ``cases.json`` says how each was made, in the terms of
``cellforge preprocess`` options, so the Rust test replays it.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scgpt_env  # noqa: E402,F401  (stand-ins, then scgpt imports)

import anndata as ad  # noqa: E402
import scanpy as sc  # noqa: E402
from scgpt.preprocess import Preprocessor  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class _StableArgsortNumpy:
    """numpy, except that `argsort` defaults to a stable sort.

    scanpy's seurat_v3 ranks genes with `np.argsort(np.argsort(-norm_var))` using numpy's
    default (unstable) quicksort; genes whose normalised variances are exactly equal (common:
    genes seen in one cell with one count share every statistic) then get an order that
    depends on numpy's sort internals, which differ between CPUs (numpy dispatches to AVX-512
    or AVX2 sorting networks when available). With this stand-in in scanpy's module, ties keep
    gene order, which is what cellforge does, so the goldens are machine independent. The
    sets scanpy gives as is are stored too (`highly_variable_numpy_default`).
    """

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, axis=-1, kind=None, order=None):
        return np.argsort(a, axis=axis, kind="stable" if kind is None else kind, order=order)


def stable_ties(on: bool) -> None:
    import scanpy.preprocessing._highly_variable_genes as hvg_mod

    hvg_mod.np = _StableArgsortNumpy() if on else np


def gen_raw_counts(path: Path) -> None:
    rng = np.random.default_rng(20261121)
    n_cells, n_genes = 1000, 1500
    batch = rng.integers(0, 3, n_cells)
    # gene means spanning 4 decades, batch-specific scaling, NB dispersion
    base = np.exp(rng.normal(-1.5, 1.6, n_genes))
    size = rng.lognormal(0.0, 0.4, n_cells)
    bfac = np.array([1.0, 1.6, 0.7])[batch]
    lam = np.outer(size * bfac, base)
    # a few batch-specific genes
    lam[batch == 1, :40] *= 6.0
    r = 2.0
    counts = rng.negative_binomial(r, r / (r + lam)).astype(np.int64)
    counts[:, -10:] = 0  # genes never expressed
    counts[[5, 77, 901], :] = 0  # cells with no counts
    X = sp.csr_matrix(counts)
    adata = ad.AnnData(X=X)
    adata.obs_names = [f"cell{i:04d}" for i in range(n_cells)]
    adata.var_names = [f"G{i:04d}" for i in range(n_genes)]
    adata.obs["batch"] = np.array(["b0", "b1", "b2"])[batch]
    adata.obs["batch"] = adata.obs["batch"].astype("category")
    adata.uns["provenance"] = {
        "generator": "scripts/reference/make_pp_goldens.py gen_raw_counts",
        "seed": "20261121",
        "model": "negative binomial r=2, lognormal size factors, 3 batches",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path, compression="gzip")


def keep_cells(adata: ad.AnnData, n: int | None) -> ad.AnnData:
    if n is None or adata.n_obs <= n:
        return adata
    return adata[:n].copy()


def strip(adata: ad.AnnData, store_matrices: bool, n_cells: int | None) -> ad.AnnData:
    out = keep_cells(adata, n_cells) if store_matrices else adata
    if not store_matrices:
        out = ad.AnnData(obs=adata.obs[[]].copy(), var=adata.var.copy())
        return out
    out = out.copy()
    for k in list(out.layers):
        if k == "X_binned":
            out.layers[k] = sp.csr_matrix(out.layers[k])
    out.obsm = {"bin_edges": out.obsm["bin_edges"]} if "bin_edges" in out.obsm else {}
    out.uns = {}
    out.obs = out.obs[[]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    default_data = os.environ.get("CELLFORGE_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    ap.add_argument("--data", default=default_data)
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "pp"))
    args = ap.parse_args()
    data = Path(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw_path = out / "raw_counts.h5ad"
    stable_ties(True)
    gen_raw_counts(raw_path)
    warnings.simplefilter("ignore")

    inputs = {
        "raw_counts": raw_path,
        "harmony": data / "harmony_pbmc_stim.h5ad",
        "symphony": data / "symphony_pbmcs_small.h5ad",
    }
    cases = []

    def preprocessor_case(name, inp, store_cells, batch_key=None, **kw):
        adata = ad.read_h5ad(inputs[inp])
        np.random.seed(0)
        Preprocessor(use_key="X", result_normed_key="X_normed", result_log1p_key="X_log1p",
                     result_binned_key="X_binned", **kw)(adata, batch_key=batch_key)
        if kw.get("log1p") and kw.get("normalize_total"):
            # scGPT's Preprocessor stores the normalised matrix and then log1p's the same
            # object for X_log1p, so its X_normed comes out log-transformed too. The golden
            # X_normed is scanpy's normalize_total from the same filters (no log1p).
            plain = ad.read_h5ad(inputs[inp])
            kw2 = dict(kw, log1p=False, subset_hvg=False, binning=None)
            Preprocessor(use_key="X", result_normed_key="X_normed", **kw2)(plain)
            plain = plain[adata.obs_names, adata.var_names]
            adata.layers["X_normed"] = plain.layers["X_normed"].copy()
        strip(adata, True, store_cells).write_h5ad(out / f"{name}.h5ad", compression="gzip")
        opts = {
            "filter_genes_min_counts": kw.get("filter_gene_by_counts") or None,
            "filter_cells_min_counts": kw.get("filter_cell_by_counts") or None,
            "normalize_total": kw.get("normalize_total"),
            "log1p": kw.get("log1p", False),
            "n_hvg": kw.get("subset_hvg") or None,
            "hvg_flavor": kw.get("hvg_flavor", "seurat_v3"),
            "batch_key": batch_key,
            "n_bins": kw.get("binning"),
        }
        if opts["normalize_total"] is True:
            opts["normalize_total"] = "median"
        cases.append({"name": name, "input": inp, "kind": "preprocessor",
                      "stored_cells": int(min(store_cells or adata.n_obs, adata.n_obs)),
                      "options": opts})

    def hvg_case(name, inp, flavor, n_top, batch_key=None, log_of_counts=False, layer=None):
        adata = ad.read_h5ad(inputs[inp])
        if log_of_counts:
            sc.pp.normalize_total(adata, target_sum=1e4)
            sc.pp.log1p(adata)
        if flavor == "seurat_v3":
            stable_ties(False)
            as_is = adata.copy()
            sc.pp.highly_variable_genes(as_is, layer=layer, n_top_genes=n_top, flavor=flavor,
                                        batch_key=batch_key)
            stable_ties(True)
        sc.pp.highly_variable_genes(adata, layer=layer, n_top_genes=n_top, flavor=flavor,
                                    batch_key=batch_key)
        if flavor == "seurat_v3":
            adata.var["highly_variable_numpy_default"] = as_is.var["highly_variable"].to_numpy()
        strip(adata, False, None).write_h5ad(out / f"{name}.h5ad", compression="gzip")
        cases.append({"name": name, "input": inp, "kind": "hvg",
                      "options": {"hvg_flavor": flavor, "n_hvg": n_top, "batch_key": batch_key,
                                  "log_of_counts": log_of_counts, "layer": layer}})

    # The scGPT chain on raw counts (tutorial settings), per-batch seurat_v3.
    preprocessor_case("raw_chain_v3_batch", "raw_counts", 300, batch_key="batch",
                      normalize_total=1e4, log1p=True, subset_hvg=500,
                      hvg_flavor="seurat_v3", binning=51)
    # Filters and the median target (normalize_total=True means target_sum=None).
    preprocessor_case("raw_filters_median", "raw_counts", 300,
                      filter_gene_by_counts=5, filter_cell_by_counts=200,
                      normalize_total=True, log1p=True, binning=51)
    # Real counts, the tutorial chain, cells 0..300 stored.
    preprocessor_case("harmony_chain_v3", "harmony", 300,
                      normalize_total=1e4, log1p=True, subset_hvg=1200,
                      hvg_flavor="seurat_v3", binning=51)
    # Log-normalised input, binning only (what embed_data bins).
    preprocessor_case("symphony_bin_only", "symphony", 300, normalize_total=False,
                      log1p=False, binning=51)

    # HVG flavors, with and without batch key.
    hvg_case("hvg_harmony_v3", "harmony", "seurat_v3", 1200)
    hvg_case("hvg_harmony_v3_batch", "harmony", "seurat_v3", 1200, batch_key="stim")
    hvg_case("hvg_symphony_seurat", "symphony", "seurat", 500)
    hvg_case("hvg_symphony_seurat_batch", "symphony", "seurat", 500, batch_key="donor")
    hvg_case("hvg_symphony_cell_ranger", "symphony", "cell_ranger", 500)
    hvg_case("hvg_symphony_cell_ranger_batch", "symphony", "cell_ranger", 500, batch_key="donor")
    # (seurat_v3 on symphony's counts layer per donor is not a case: scikit-misc's LOESS
    # refuses it, "There are other near singularities as well".)
    hvg_case("hvg_symphony_counts_v3", "symphony", "seurat_v3", 500, layer="counts")
    hvg_case("hvg_raw_v3", "raw_counts", "seurat_v3", 300)
    hvg_case("hvg_raw_seurat_batch", "raw_counts", "seurat", 300, batch_key="batch",
             log_of_counts=True)
    hvg_case("hvg_raw_cell_ranger_batch", "raw_counts", "cell_ranger", 300, batch_key="batch",
             log_of_counts=True)

    # Tokenisation (scgpt.tokenizer.tokenize_and_pad_batch, the fine-tuning convention) of
    # the first 20 stored cells of harmony_chain_v3's X_binned, genes numbered 2.. in
    # column order (<pad> = 0, <cls> = 1), no subsampling (max_len above every length).
    from scgpt.tokenizer import GeneVocab, tokenize_and_pad_batch

    chain = ad.read_h5ad(out / "harmony_chain_v3.h5ad")
    binned = chain.layers["X_binned"][:20].toarray()
    names = list(chain.var_names)
    vocab = GeneVocab.from_dict({"<pad>": 0, "<cls>": 1, **{n: i + 2 for i, n in enumerate(names)}})
    gene_ids = np.array([vocab[n] for n in names], dtype=int)
    tok = {}
    for include_zero in (False, True):
        t = tokenize_and_pad_batch(binned, gene_ids, max_len=5000, vocab=vocab, pad_token="<pad>",
                                   pad_value=-2, append_cls=True, include_zero_gene=include_zero,
                                   cls_token="<cls>", return_pt=True)
        tok["include_zero" if include_zero else "nonzero"] = {
            "genes": t["genes"].numpy().tolist(),
            "values": t["values"].numpy().tolist(),
        }
    (out / "tokenize.json").write_text(json.dumps(tok) + "\n")

    meta = {
        "generated_by": "scripts/reference/make_pp_goldens.py",
        "versions": {"scanpy": sc.__version__, "anndata": ad.__version__,
                     "numpy": np.__version__, "scgpt": scgpt_env.scgpt.__version__},
        "cases": cases,
    }
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
