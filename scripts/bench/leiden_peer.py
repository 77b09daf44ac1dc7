#!/usr/bin/env python3
"""Leiden peer for ``cargo bench -p cellforge-core --bench analysis_peer``.

``make OUT_DIR [--n 200000]`` writes a seeded weighted graph with planted communities (sizes
drawn from a power law between 50 and 2,000 nodes; each node gets ~12 edges inside its
community and ~3 to random nodes, weights uniform in (0.2, 1], symmetric) as little-endian CSR
binaries ``indptr.u64``, ``indices.u32``, ``data.f32`` plus the planted labels
``truth.u32`` and ``graph.json``.

``run OUT_DIR [--resolution 1.0] [--seed 0]`` runs leidenalg (RBConfigurationVertexPartition,
the quality scanpy uses, ``n_iterations=-1``) on that graph through igraph (a directed edge per stored entry, as scanpy's ``tl.leiden`` builds it), writes its labels to
``leidenalg.u32`` and prints one JSON line: wall seconds of the clustering (graph construction
timed separately), number of clusters, quality, package versions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def make(out: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = []
    total = 0
    while total < n:
        s = int(min(2000, max(50, 50 * (1 - rng.random()) ** (-1 / 1.5))))
        s = min(s, n - total)
        sizes.append(s)
        total += s
    truth = np.repeat(np.arange(len(sizes), dtype=np.uint32), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    comm_start = starts[truth]
    comm_size = np.asarray(sizes)[truth]
    src_in = np.repeat(np.arange(n), 6)
    dst_in = comm_start[src_in] + rng.integers(0, comm_size[src_in])
    src_out = np.repeat(np.arange(n), 2)
    dst_out = rng.integers(0, n, size=src_out.size)
    src = np.concatenate([src_in, src_out])
    dst = np.concatenate([dst_in, dst_out])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    w = rng.uniform(0.2, 1.0, size=src.size).astype(np.float32)
    import scipy.sparse as sp

    a = sp.coo_matrix((w, (src, dst)), shape=(n, n)).tocsr()
    a = a.maximum(a.T).tocsr()
    a.sort_indices()
    out.mkdir(parents=True, exist_ok=True)
    a.indptr.astype("<u8").tofile(out / "indptr.u64")
    a.indices.astype("<u4").tofile(out / "indices.u32")
    a.data.astype("<f4").tofile(out / "data.f32")
    truth.astype("<u4").tofile(out / "truth.u32")
    (out / "graph.json").write_text(json.dumps(
        {"n": n, "nnz": int(a.nnz), "communities": len(sizes), "seed": seed}))
    print(json.dumps({"n": n, "nnz": int(a.nnz), "communities": len(sizes)}))


def run(out: Path, resolution: float, seed: int) -> None:
    import igraph as ig
    import leidenalg

    meta = json.loads((out / "graph.json").read_text())
    n = meta["n"]
    indptr = np.fromfile(out / "indptr.u64", dtype="<u8").astype(np.int64)
    indices = np.fromfile(out / "indices.u32", dtype="<u4").astype(np.int64)
    data = np.fromfile(out / "data.f32", dtype="<f4").astype(np.float64)
    t0 = time.perf_counter()
    rows = np.repeat(np.arange(n), np.diff(indptr))
    # as scanpy's sc.tl.leiden (flavor leidenalg): every stored entry is a directed edge
    g = ig.Graph(n=n, edges=list(zip(rows.tolist(), indices.tolist())), directed=True)
    g.es["weight"] = data.tolist()
    t_graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    part = leidenalg.find_partition(
        g, leidenalg.RBConfigurationVertexPartition, weights="weight",
        resolution_parameter=resolution, seed=seed, n_iterations=-1)
    t_leiden = time.perf_counter() - t0
    labels = np.asarray(part.membership, dtype=np.uint32)
    labels.astype("<u4").tofile(out / "leidenalg.u32")
    print(json.dumps({
        "seconds": t_leiden, "graph_seconds": t_graph, "n_clusters": int(labels.max()) + 1,
        "quality": part.quality() / float(data.sum()),
        "leidenalg": leidenalg.__version__, "igraph": ig.__version__,
    }))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    m.add_argument("--n", type=int, default=200_000)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--resolution", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.out, a.n, a.seed)
    else:
        run(a.out, a.resolution, a.seed)


if __name__ == "__main__":
    main()
