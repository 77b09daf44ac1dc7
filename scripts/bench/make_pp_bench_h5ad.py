"""Write the preprocessing benchmark's input with anndata: N cells x G genes of raw UMI-like
counts (CSR, float32 as most h5ad files store counts): Poisson counts with lognormal gene
means and per-cell size factors, ~1,500 expressed genes per cell at the defaults, a
categorical `batch` obs column. Deterministic (seeded).

usage: make_pp_bench_h5ad.py OUT.h5ad [--cells 100000] [--genes 20000] [--seed 0]
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
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    n, g = a.cells, a.genes
    base = np.exp(rng.normal(-3.0, 1.9, g)) * 0.4
    size = rng.lognormal(0.0, 0.35, n)
    blocks = []
    step = 2_000
    for start in range(0, n, step):
        stop = min(start + step, n)
        lam = np.outer(size[start:stop], base)
        blocks.append(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    x = sp.vstack(blocks, format="csr")
    obs = pd.DataFrame(
        {"batch": pd.Categorical(rng.choice(["a", "b", "c"], size=n))},
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(g)])
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(a.out)
    print(f"wrote {a.out}: {n} x {g}, {x.nnz} non-zeros")


if __name__ == "__main__":
    main()
