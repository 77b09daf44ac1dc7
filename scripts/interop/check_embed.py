#!/usr/bin/env python3
"""Check a `cellforge embed` output with anndata against scGPT's embed_data golden.

usage: check_embed.py OUT.h5ad EXPECTED.safetensors KEY MIN_COSINE

Reads OUT.h5ad with anndata (so the file must be valid for Python users too), checks that
obsm[KEY] has the golden's shape, every row is unit length, and the cosine similarity with
the golden row (scgpt.tasks.embed_data output) is at least MIN_COSINE for every cell.
Prints the worst cosine. Exit status 1 on any failure.
"""
import json
import struct
import sys

import anndata
import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64, "U8": np.uint8}[meta["dtype"]]
        out[name] = np.frombuffer(body[a:b], dtype=dtype).reshape(meta["shape"])
    return out


def main():
    out_path, gold_path, key, min_cos = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    adata = anndata.read_h5ad(out_path)
    gold = read_safetensors(gold_path)["X_scGPT"].astype(np.float64)
    emb = np.asarray(adata.obsm[key], dtype=np.float64)
    if emb.shape != gold.shape:
        sys.exit(f"obsm[{key}] has shape {emb.shape}, golden {gold.shape}")
    norms = np.linalg.norm(emb, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-5):
        sys.exit(f"rows are not unit length: {norms.min()}..{norms.max()}")
    cos = (emb * gold).sum(1) / (norms * np.linalg.norm(gold, axis=1))
    print(f"worst cosine {cos.min():.8f} over {len(cos)} cells")
    if cos.min() < min_cos:
        sys.exit(f"worst cosine {cos.min()} < {min_cos}")
    prov = adata.uns["cellforge"][f"embed_{key}"]
    if int(prov["genes_matched"]) <= 0:
        sys.exit("provenance lacks genes_matched")


if __name__ == "__main__":
    main()
