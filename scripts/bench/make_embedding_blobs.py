#!/usr/bin/env python3
"""Write a seeded synthetic clustered embedding for the kNN / UMAP benchmarks.

Model (defaults: 50,000 x 512, 30 clusters, 20-d latent space, seed 0):

1. cluster sizes: a Dirichlet(alpha = 1.0) split of n (every cluster keeps >= 50 points);
2. cluster centres: N(0, 4^2 I) in the latent space; per-cluster spread s_c ~ U(0.5, 1.5)
   with an anisotropic per-axis scale U(0.5, 1.5), points = centre + s_c * scale * N(0, I);
3. a random linear map latent -> d (orthonormal columns from the QR of a Gaussian matrix, so
   latent distances are kept), plus isotropic noise N(0, noise^2) in all d dimensions
   (default noise 0.1: the noise adds ~d * noise^2 = 5.1 to squared distances, comparable
   to the latent within-cluster variance, so neighbours are not trivially separable);
4. rows are shuffled (seeded) so clusters are not contiguous in the file.

Output: ``<out>.f32`` (raw little-endian float32, row-major n x d) and ``<out>.json``
(``{"n", "d", "n_clusters", "latent_dim", "noise", "seed", "file", "labels_file"}``) plus
``<out>_labels.u32`` (cluster of every row). Usage::

    python scripts/bench/make_embedding_blobs.py --out /tmp/blobs50k [--n 50000 --d 512]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def make_blobs(n: int, d: int, n_clusters: int, latent: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    props = rng.dirichlet(np.full(n_clusters, 1.0))
    min_size = min(50, n // n_clusters)
    sizes = np.maximum(np.floor(props * n).astype(np.int64), min_size)
    while sizes.sum() > n:  # trim the largest clusters back to exactly n
        sizes[np.argmax(sizes)] -= 1
    while sizes.sum() < n:
        sizes[rng.integers(n_clusters)] += 1
    centres = rng.normal(0.0, 4.0, size=(n_clusters, latent))
    z = np.empty((n, latent), dtype=np.float64)
    labels = np.empty(n, dtype=np.uint32)
    start = 0
    for c, size in enumerate(sizes):
        spread = rng.uniform(0.5, 1.5)
        axis = rng.uniform(0.5, 1.5, size=latent)
        z[start : start + size] = centres[c] + spread * axis * rng.normal(size=(size, latent))
        labels[start : start + size] = c
        start += size
    q, _ = np.linalg.qr(rng.normal(size=(d, latent)))  # d x latent, orthonormal columns
    x = z @ q.T + rng.normal(0.0, noise, size=(n, d))
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), labels[perm]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output path prefix (no extension)")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=30)
    ap.add_argument("--latent", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x, labels = make_blobs(args.n, args.d, args.clusters, args.latent, args.noise, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    f32 = out.with_name(out.name + ".f32")
    lab = out.with_name(out.name + "_labels.u32")
    f32.write_bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())
    lab.write_bytes(np.ascontiguousarray(labels, dtype="<u4").tobytes())
    meta = {
        "n": args.n,
        "d": args.d,
        "n_clusters": args.clusters,
        "latent_dim": args.latent,
        "noise": args.noise,
        "seed": args.seed,
        "file": f32.name,
        "labels_file": lab.name,
    }
    out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
