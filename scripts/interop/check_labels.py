#!/usr/bin/env python3
"""Check labels written by `cellforge annotate` / `cellforge map` with anndata.

usage: check_labels.py OUT.h5ad KEY TRUTH_KEY MIN_AGREEMENT PROVENANCE_KEY

OUT.h5ad must open in anndata; obs[KEY] must be categorical, obs[KEY + "_confidence"] a
float column in [0, 1], uns["cellforge"][PROVENANCE_KEY] present, cells below the
recorded min_confidence labelled "Unknown", and the agreement with obs[TRUTH_KEY] at least
MIN_AGREEMENT. Prints the agreement. Exit status 1 on any failure.
"""
import sys

import anndata
import numpy as np
import pandas as pd


def main():
    path, key, truth_key, min_agree, prov_key = sys.argv[1:6]
    a = anndata.read_h5ad(path)
    lab = a.obs[key]
    if not isinstance(lab.dtype, pd.CategoricalDtype):
        sys.exit(f"obs[{key}] is {lab.dtype}, not categorical")
    conf = np.asarray(a.obs[f"{key}_confidence"], dtype=np.float64)
    if conf.min() < 0 or conf.max() > 1 + 1e-6:
        sys.exit(f"confidence outside [0, 1]: {conf.min()} .. {conf.max()}")
    prov = a.uns["cellforge"][prov_key]
    thr = float(prov["min_confidence"])
    low = conf < thr
    if not (lab[low] == "Unknown").all():
        sys.exit("a cell below the threshold is not Unknown")
    agree = float((lab.astype(str).values == a.obs[truth_key].astype(str).values).mean())
    print(f"agreement {agree:.4f} ({len(lab)} cells, {int(low.sum())} below {thr})")
    if agree < float(min_agree):
        sys.exit(f"agreement {agree} < {min_agree}")


if __name__ == "__main__":
    main()
