"""Write the h5ad read benchmark's input with anndata: N cells x G genes, CSR float32 counts,
about K non-zeros per cell (gene ids drawn without replacement per cell), integer-valued like
UMI counts, plus a categorical obs column. Deterministic (seeded).

usage: make_bench_h5ad.py OUT.h5ad [--cells 100000] [--genes 20000] [--nnz-per-cell 1500]
"""

import argparse

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--nnz-per-cell", type=int, default=1_500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    n, g, k = a.cells, a.genes, a.nnz_per_cell
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
    x = sp.csr_matrix((data, indices, indptr.astype(np.int64)), shape=(n, g))
    obs = pd.DataFrame(
        {"batch": pd.Categorical(rng.choice(["a", "b", "c"], size=n))},
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(g)])
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(a.out)
    print(f"wrote {a.out}: {n} x {g}, {nnz} non-zeros")


if __name__ == "__main__":
    main()
