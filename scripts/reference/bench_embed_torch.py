#!/usr/bin/env python3
"""CPU throughput of scGPT (PyTorch reference) for cell embedding.

Builds a scGPT_human-shaped TransformerModel (12 layers, d_model 512, 8 heads,
d_hid 512, 60,697-token vocabulary, continuous values, <cls> embedding) with
random weights and measures on the CPU:

1. ``torch-encoder``: ``model._encode`` under ``torch.inference_mode`` on
   pre-tokenised batches (<cls> + G gene tokens per cell, binned values, no
   padding), ``--batch-size`` cells per call;
2. ``scgpt-embed_data``: ``scgpt.tasks.embed_data`` end to end on a generated
   h5ad (N cells with exactly G expressed genes each, pairwise distinct values)
   with the model folder saved to disk (``use_fast_transformer=False``,
   ``device="cpu"``).

Each measurement runs in a fresh child process so that ``peak_rss_mib`` (the
child's peak resident set size) is not polluted by the other one.  One JSON
line per measurement on stdout::

    {"impl": "torch-encoder", "cells": N, "tokens": G+1, "seconds": s,
     "cells_per_s": x, "peak_rss_mib": m, ...}

``--save-model DIR --save-data PATH`` keep the model folder (args.json,
vocab.json, best_model.pt with flash ``self_attn.Wqkv.*`` names, ~205 MB) and
the h5ad so that a Rust benchmark can run on exactly the same inputs;
otherwise they go to a temporary directory that is deleted afterwards.

Example::

    .venv-ref/bin/python scripts/reference/bench_embed_torch.py \\
        --cells 2000 --genes-per-cell 1000 --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20250612

# scGPT_human shape (SCGPT_SPEC 2.3 / 2.5)
D_MODEL, NHEAD, D_HID, NLAYERS, NLAYERS_CLS = 512, 8, 512, 12, 3
N_VOCAB_GENES = 60694  # + <pad>, <cls>, <eoc> = 60,697


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


# --------------------------------------------------------------------------
# preparation (parent process)
# --------------------------------------------------------------------------

def make_vocab() -> "OrderedDict[str, int]":
    names = [f"BG{i:05d}" for i in range(N_VOCAB_GENES)] + ["<pad>", "<cls>", "<eoc>"]
    return OrderedDict((t, i) for i, t in enumerate(names))


def save_model(model_dir: Path, layers: int) -> None:
    sys.path.insert(0, str(HERE))
    import scgpt_env  # noqa: F401
    import torch
    from make_scgpt_fixtures import export_state_dict, randomize_, released_args
    from scgpt_env import GeneVocab, TransformerModel

    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = make_vocab()
    torch.manual_seed(SEED)
    model = TransformerModel(
        ntoken=len(vocab), d_model=D_MODEL, nhead=NHEAD, d_hid=D_HID, nlayers=layers,
        nlayers_cls=NLAYERS_CLS, n_cls=1, vocab=GeneVocab.from_dict(vocab), dropout=0.2,
        pad_token="<pad>", pad_value=-2, do_mvc=True, do_dab=False, use_batch_labels=False,
        domain_spec_batchnorm=False, explicit_zero_prob=False, use_fast_transformer=False,
        pre_norm=False,
    )
    g = torch.Generator().manual_seed(SEED)
    randomize_(model, g)
    flag = {"flag_encoder.weight": torch.empty(2, D_MODEL).normal_(0, 1, generator=g)}
    sd = export_state_dict(model, "Wqkv", False, ("cls_decoder.",), flag)
    torch.save(sd, model_dir / "best_model.pt")
    args = released_args(D_MODEL, NHEAD, D_HID, layers, NLAYERS_CLS, -2, -1, "continuous")
    (model_dir / "args.json").write_text(json.dumps(args, indent=2) + "\n")
    (model_dir / "vocab.json").write_text(json.dumps(vocab) + "\n")


def save_data(path: Path, cells: int, genes_per_cell: int, n_genes: int) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(SEED + 1)
    indptr = np.arange(cells + 1, dtype=np.int64) * genes_per_cell
    indices = np.empty(cells * genes_per_cell, dtype=np.int32)
    data = np.empty(cells * genes_per_cell, dtype=np.float32)
    for i in range(cells):
        cols = np.sort(rng.choice(n_genes, size=genes_per_cell, replace=False))
        counts = rng.geometric(0.3, size=genes_per_cell).astype(np.float64)
        k = rng.permutation(genes_per_cell)
        vals = (counts + (k + 0.5) / (genes_per_cell + 1)).astype(np.float32)
        assert len(np.unique(vals)) == genes_per_cell
        s = i * genes_per_cell
        indices[s:s + genes_per_cell] = cols
        data[s:s + genes_per_cell] = vals
    X = sp.csr_matrix((data, indices, indptr), shape=(cells, n_genes))
    var = pd.DataFrame(index=[f"BG{i:05d}" for i in range(n_genes)])
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(cells)])
    path.parent.mkdir(parents=True, exist_ok=True)
    ad.AnnData(X=X, obs=obs, var=var).write_h5ad(path)


# --------------------------------------------------------------------------
# measurements (child processes)
# --------------------------------------------------------------------------

def load_model(model_dir: Path):
    sys.path.insert(0, str(HERE))
    import scgpt_env  # noqa: F401
    import torch
    from scgpt.utils import load_pretrained
    from scgpt_env import GeneVocab, TransformerModel

    args = json.loads((model_dir / "args.json").read_text())
    vocab = GeneVocab.from_file(model_dir / "vocab.json")
    model = TransformerModel(
        ntoken=len(vocab), d_model=args["embsize"], nhead=args["nheads"], d_hid=args["d_hid"],
        nlayers=args["nlayers"], nlayers_cls=args["n_layers_cls"], n_cls=1, vocab=vocab,
        dropout=args["dropout"], pad_token=args["pad_token"], pad_value=args["pad_value"],
        do_mvc=True, do_dab=False, use_batch_labels=False, domain_spec_batchnorm=False,
        explicit_zero_prob=False, use_fast_transformer=False, pre_norm=False,
    )
    sd = torch.load(model_dir / "best_model.pt", map_location="cpu", weights_only=True)
    load_pretrained(model, sd, verbose=False)
    del sd
    model.eval()
    return model, vocab


def measure_encoder(a) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    model, vocab = load_model(Path(a.model_dir))
    rng = np.random.default_rng(SEED + 2)
    n_tok = a.genes_per_cell + 1
    gene_ids = np.arange(N_VOCAB_GENES)
    batches = []
    for s in range(0, a.cells, a.batch_size):
        b = min(a.batch_size, a.cells - s)
        src = np.empty((b, n_tok), dtype=np.int64)
        val = np.empty((b, n_tok), dtype=np.float32)
        src[:, 0] = vocab["<cls>"]
        val[:, 0] = -2.0
        for r in range(b):
            src[r, 1:] = rng.choice(gene_ids[: a.n_genes], size=a.genes_per_cell, replace=False)
            val[r, 1:] = rng.integers(1, 51, size=a.genes_per_cell)
        src_t = torch.from_numpy(src)
        batches.append((src_t, torch.from_numpy(val), src_t.eq(vocab["<pad>"])))
    with torch.inference_mode():
        model._encode(*batches[0])  # warm-up (not timed)
        t0 = time.perf_counter()
        for src, val, mask in batches:
            out = model._encode(src, val, mask)[:, 0, :]
        secs = time.perf_counter() - t0
    assert torch.isfinite(out).all()
    return {"impl": "torch-encoder", "cells": a.cells, "tokens": n_tok, "seconds": round(secs, 4),
            "cells_per_s": round(a.cells / secs, 3), "peak_rss_mib": round(peak_rss_mib(), 1),
            "threads": a.threads, "batch_size": a.batch_size, "torch": torch.__version__,
            "note": "model._encode under inference_mode, fp32, no padding, warm-up batch excluded"}


def measure_embed_data(a) -> dict:
    sys.path.insert(0, str(HERE))
    import scgpt_env  # noqa: F401
    import numpy as np
    import torch
    from scgpt_env import embed_data

    torch.set_num_threads(a.threads)
    np.random.seed(0)
    t0 = time.perf_counter()
    res = embed_data(a.data, model_dir=a.model_dir, gene_col="index", max_length=1200,
                     batch_size=a.embed_batch_size, device="cpu", use_fast_transformer=False,
                     return_new_adata=False)
    secs = time.perf_counter() - t0
    emb = np.asarray(res.obsm["X_scGPT"])
    assert emb.shape == (a.cells, D_MODEL) and np.isfinite(emb).all()
    tokens = min(a.genes_per_cell + 1, 1200)
    return {"impl": "scgpt-embed_data", "cells": a.cells, "tokens": tokens,
            "seconds": round(secs, 4), "cells_per_s": round(a.cells / secs, 3),
            "peak_rss_mib": round(peak_rss_mib(), 1), "threads": a.threads,
            "batch_size": a.embed_batch_size, "torch": torch.__version__,
            "note": "end to end: read h5ad, vocab, build+load model, densify, bin, "
                    "DataLoader workers, encode, L2-normalise; peak_rss_mib excludes "
                    "DataLoader worker processes"}


# --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, required=True)
    ap.add_argument("--genes-per-cell", type=int, required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=8, help="cells per _encode call (torch-encoder)")
    ap.add_argument("--embed-batch-size", type=int, default=64, help="embed_data batch_size")
    ap.add_argument("--n-genes", type=int, default=None,
                    help="genes (columns) in the generated h5ad; default max(2000, 2*G)")
    ap.add_argument("--layers", type=int, default=NLAYERS, help="transformer layers (default 12)")
    ap.add_argument("--skip-embed-data", action="store_true")
    ap.add_argument("--skip-encoder", action="store_true")
    ap.add_argument("--save-model", type=Path, default=None, help="keep the model folder here")
    ap.add_argument("--save-data", type=Path, default=None, help="keep the generated h5ad here")
    ap.add_argument("--_measure", choices=["encoder", "embed"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.n_genes is None:
        a.n_genes = max(2000, 2 * a.genes_per_cell)
    if not (1 <= a.genes_per_cell <= a.n_genes <= N_VOCAB_GENES):
        ap.error("need 1 <= genes-per-cell <= n-genes <= 60694")

    if a._measure:
        rec = measure_encoder(a) if a._measure == "encoder" else measure_embed_data(a)
        emit(rec)
        return 0

    tmp = tempfile.TemporaryDirectory(prefix="cellforge-bench-")
    try:
        model_dir = a.save_model or Path(tmp.name) / "model"
        data = a.save_data or Path(tmp.name) / "data.h5ad"
        t0 = time.perf_counter()
        save_model(model_dir, a.layers)
        save_data(data, a.cells, a.genes_per_cell, a.n_genes)
        print(f"# prepared model {model_dir} and data {data} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
                   TQDM_DISABLE="1")
        common = [sys.executable, str(Path(__file__).resolve()), "--cells", str(a.cells),
                  "--genes-per-cell", str(a.genes_per_cell), "--threads", str(a.threads),
                  "--batch-size", str(a.batch_size), "--embed-batch-size", str(a.embed_batch_size),
                  "--n-genes", str(a.n_genes), "--layers", str(a.layers),
                  "--model-dir", str(model_dir), "--data", str(data)]
        todo = ([] if a.skip_encoder else ["encoder"]) + ([] if a.skip_embed_data else ["embed"])
        for m in todo:
            r = subprocess.run(common + ["--_measure", m], env=env, stdout=subprocess.PIPE,
                               text=True)
            if r.returncode != 0:
                print(f"# measurement {m} failed (exit {r.returncode})", file=sys.stderr)
                return r.returncode
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]
            print(line, flush=True)
    finally:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
