#!/usr/bin/env python3
"""Check a `cellforge preprocess` output with anndata against a golden from
`scripts/reference/make_pp_goldens.py` (scGPT's Preprocessor + scanpy).

usage: check_preprocess.py OUT.h5ad GOLDEN.h5ad

Reads OUT.h5ad with anndata (the file must be valid for Python users), then checks: the
genes and cells kept equal the golden's (first cells only where the golden stores a prefix),
layers X_normed / X_log1p agree to 1e-6 relative, X_binned has scGPT's range (0..n_bins-1,
zero exactly where the expression is zero), obsm["bin_edges"] equals the golden's edges to
1e-6, var["highly_variable"] is set and uns["cellforge"]["preprocess"] records the steps.
Exit status 1 on any failure.
"""
import sys

import anndata
import numpy as np
import scipy.sparse as sp


def dense(m):
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def main():
    out, gold = anndata.read_h5ad(sys.argv[1]), anndata.read_h5ad(sys.argv[2])
    errors = []
    if list(out.var_names) != list(gold.var_names):
        errors.append("genes differ from the golden")
    n = gold.n_obs
    if list(out.obs_names[:n]) != list(gold.obs_names):
        errors.append("cells differ from the golden")
    for layer in ("X_normed", "X_log1p"):
        a = dense(out.layers[layer][:n]).astype(np.float64)
        b = dense(gold.layers[layer]).astype(np.float64)
        rel = np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0))
        if rel > 1e-6:
            errors.append(f"{layer} differs by {rel:g}")
    binned = dense(out.layers["X_binned"])
    log = dense(out.layers["X_log1p"])
    nb = out.obsm["bin_edges"].shape[1]
    if binned.min() < 0 or binned.max() > nb - 1:
        errors.append(f"X_binned outside 0..{nb - 1}")
    if not np.array_equal(binned == 0, log == 0):
        errors.append("X_binned is zero where the expression is not (or the reverse)")
    e = np.abs(out.obsm["bin_edges"][:n] - gold.obsm["bin_edges"])
    if e.max() > 1e-6 * max(1.0, float(np.abs(gold.obsm["bin_edges"]).max())):
        errors.append(f"bin_edges differ by {e.max():g}")
    if "highly_variable" not in out.var or not out.var["highly_variable"].all():
        errors.append("var['highly_variable'] missing or not all True after subsetting")
    steps = list(out.uns["cellforge"]["preprocess"]["steps"])
    if not any("highly_variable_genes" in s for s in steps):
        errors.append(f"provenance lacks the HVG step: {steps}")
    for msg in errors:
        print("FAIL:", msg)
    print(f"checked {out.n_obs} cells x {out.n_vars} genes; {len(errors)} problem(s)")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
