#!/usr/bin/env python3
"""Synthetic sparse log-normalised expression matrix for the PCA / DE benchmarks.

Writes (``--out DIR``, default ``target/bench-data/sparse_expr``) raw little-endian binaries
that both the Rust bench and ``pca_de_peer.py`` read:

- ``indptr.u64`` (n_cells + 1), ``indices.u32`` (sorted per row), ``data.f32``: the CSR matrix
  cells x genes, values ln(CP10k + 1) of Poisson counts;
- ``groups.u32``: a group code (0..n_groups) per cell;
- ``meta.json``: shape, nnz, n_groups, seed.

Counts: gene base rates are log-normal, every group multiplies a random 5 % of the genes by
4 (its markers), and each cell has a log-normal size factor; rates are scaled so that about
``--density`` of the entries are non-zero. Generated in chunks of 5,000 cells.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--density", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "target" / "bench-data" / "sparse_expr"))
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    base = rng.lognormal(0.0, 1.0, a.genes)
    mult = np.ones((a.groups, a.genes))
    for g in range(a.groups):
        mult[g, rng.choice(a.genes, max(1, a.genes // 20), replace=False)] = 4.0
    groups = rng.integers(0, a.groups, a.cells).astype(np.uint32)
    size = rng.lognormal(0.0, 0.3, a.cells)
    # scale so that the mean P(count > 0) is about `density`
    lo, hi = 1e-6, 1e3
    probe = base[None, :] * mult  # groups x genes
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        frac = np.mean(1.0 - np.exp(-mid * probe))
        lo, hi = (mid, hi) if frac < a.density else (lo, mid)
    scale = np.sqrt(lo * hi)

    indptr = [np.zeros(1, dtype=np.uint64)]
    indices, data = [], []
    nnz = 0
    for c0 in range(0, a.cells, 5_000):
        c1 = min(c0 + 5_000, a.cells)
        lam = scale * size[c0:c1, None] * base[None, :] * mult[groups[c0:c1]]
        counts = rng.poisson(lam).astype(np.float32)
        tot = counts.sum(axis=1, keepdims=True)
        tot[tot == 0] = 1
        vals = np.log1p(counts / tot * 1e4).astype(np.float32)
        r, c = np.nonzero(counts)
        indices.append(c.astype(np.uint32))
        data.append(vals[r, c])
        per_row = np.bincount(r, minlength=c1 - c0)
        indptr.append((nnz + np.cumsum(per_row)).astype(np.uint64))
        nnz += len(r)
    (out / "indptr.u64").write_bytes(np.concatenate(indptr).astype("<u8").tobytes())
    (out / "indices.u32").write_bytes(np.concatenate(indices).astype("<u4").tobytes())
    (out / "data.f32").write_bytes(np.concatenate(data).astype("<f4").tobytes())
    (out / "groups.u32").write_bytes(groups.astype("<u4").tobytes())
    meta = {"n_cells": a.cells, "n_genes": a.genes, "nnz": int(nnz), "n_groups": a.groups,
            "density": nnz / (a.cells * a.genes), "seed": a.seed}
    (out / "meta.json").write_text(json.dumps(meta))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
