#!/usr/bin/env python3
"""The Python side of the preprocessing benchmark (`cargo bench -p cellforge-core --bench
preprocess`): scGPT's tutorial chain on raw counts with the scgpt 0.2.4 Preprocessor (scanpy
underneath), end to end: read the h5ad, normalize_total 1e4, log1p, HVG seurat_v3
(n_top_genes, optionally per batch, subset), bin 51, write the h5ad. Prints one JSON line:
seconds per step and in total, and the process's peak RSS.

usage: bench_pp_reference.py IN.h5ad OUT.h5ad [--n-hvg 1200] [--batch-key KEY]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scgpt_env  # noqa: E402,F401

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
from scgpt.preprocess import Preprocessor  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--n-hvg", type=int, default=1200)
    p.add_argument("--batch-key", default=None)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("scGPT").setLevel(logging.WARNING)
    np.random.seed(0)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(a.input)
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    Preprocessor(
        use_key="X",
        normalize_total=1e4,
        result_normed_key="X_normed",
        log1p=True,
        result_log1p_key="X_log1p",
        subset_hvg=a.n_hvg,
        hvg_flavor="seurat_v3",
        binning=51,
        result_binned_key="X_binned",
    )(adata, batch_key=a.batch_key)
    t_pp = time.perf_counter() - t1
    t2 = time.perf_counter()
    adata.write_h5ad(a.output)
    t_write = time.perf_counter() - t2
    total = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"read_s": t_read, "preprocess_s": t_pp, "write_s": t_write,
                      "total_s": total, "peak_rss_kib": peak_kib,
                      "cells": adata.n_obs, "genes": adata.n_vars}))


if __name__ == "__main__":
    main()
