"""Reads a file the cellforge app exported, with anndata, and prints what the app tests
assert on as JSON: the curated label column, its per-cell provenance column, the obsm keys
and the uns["cellforge"]["annotation"] record.

Usage: check_export.py FILE.h5ad COLUMN
"""
import json
import sys

import anndata as ad

path, column = sys.argv[1], sys.argv[2]
a = ad.read_h5ad(path)
rec = a.uns.get("cellforge", {}).get("annotation", {})
out = {
    "n_obs": int(a.n_obs),
    "labels": [None if v != v else str(v) for v in a.obs[column].astype(object)],
    "categories": [str(c) for c in a.obs[column].cat.categories],
    "sources": [str(v) for v in a.obs[column + "_source"].astype(object)],
    "obsm": sorted(a.obsm.keys()),
    "record": {
        k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in rec.items()
    },
}
print(json.dumps(out, default=str))
