"""Write a benchmark input with anndata: N cells x G genes of integer-valued counts stored as
float32 CSR (as most h5ad files store counts), plus a categorical `batch` obs column.
Deterministic (seeded).

Two count models:
- `--counts geometric` (default; the h5ad read benchmark): about K non-zeros per cell
  (+-20 %), gene ids drawn uniformly without replacement, geometric values.
- `--counts poisson` (the preprocessing benchmark): Poisson counts with lognormal gene means
  and per-cell size factors, so genes differ in mean and variance as in real data (~1,500
  expressed genes per cell at the defaults); `--nnz-per-cell` is ignored.

usage: make_bench_h5ad.py OUT.h5ad [--cells 100000] [--genes 20000] [--nnz-per-cell 1500]
       [--counts geometric|poisson] [--seed 0]
"""

import argparse

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def geometric_counts(rng, n, g, k):
    # Per-cell non-zero counts vary around k (+-20%).
    per_cell = rng.integers(int(k * 0.8), int(k * 1.2) + 1, size=n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_cell, out=indptr[1:])
    nnz = int(indptr[-1])
    indices = np.empty(nnz, dtype=np.int32)
    block = 5_000
    for start in range(0, n, block):
        stop = min(start + block, n)
        # Sort random keys and keep the first m of each row: sampling without replacement.
        keys = rng.random((stop - start, g), dtype=np.float32)
        order = np.argpartition(keys, int(per_cell[start:stop].max()), axis=1)
        for i in range(start, stop):
            m = per_cell[i]
            row = np.sort(order[i - start, :m])
            indices[indptr[i] : indptr[i + 1]] = row
    data = (rng.geometric(0.5, size=nnz)).astype(np.float32)
    return sp.csr_matrix((data, indices, indptr.astype(np.int64)), shape=(n, g))


def poisson_counts(rng, n, g):
    base = np.exp(rng.normal(-3.0, 1.9, g)) * 0.4
    size = rng.lognormal(0.0, 0.35, n)
    blocks = []
    step = 2_000
    for start in range(0, n, step):
        stop = min(start + step, n)
        lam = np.outer(size[start:stop], base)
        blocks.append(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    return sp.vstack(blocks, format="csr")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--nnz-per-cell", type=int, default=1_500)
    p.add_argument("--counts", choices=["geometric", "poisson"], default="geometric")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    n, g = a.cells, a.genes
    if a.counts == "poisson":
        x = poisson_counts(rng, n, g)
    else:
        x = geometric_counts(rng, n, g, a.nnz_per_cell)
    obs = pd.DataFrame(
        {"batch": pd.Categorical(rng.choice(["a", "b", "c"], size=n))},
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(g)])
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(a.out)
    print(f"wrote {a.out}: {n} x {g}, {x.nnz} non-zeros")


if __name__ == "__main__":
    main()
