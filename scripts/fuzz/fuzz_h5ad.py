#!/usr/bin/env python3
"""Structure-aware mutation fuzzer for cellforge's h5ad reader, driving the real binary.

Each case takes a real .h5ad seed, applies 1-3 mutations at the HDF5 object level with h5py
(so the file stays valid HDF5 and the mutation reaches the parts cellforge parses itself:
sparse structure, dataframe encodings, categorical codes, string arrays, nullable arrays,
shapes and encoding attributes), then runs `cellforge inspect --json` and `cellforge convert`
on it. Outcomes:
  ok       exit 0
  refused  exit 1 with an "error:" message (what bad input must get)
  PANIC    a Rust panic (exit 101 / "panicked at")          -> a finding
  CRASH    killed by a signal (abort, segfault)             -> a finding
  HANG     no answer within --timeout seconds               -> a finding
Findings are saved under --crashes with the mutation list. Exit status 1 when any.

Usage: fuzz_h5ad.py --bin target/release/cellforge [--seconds 600] [--jobs 2] [--seed 1]
                    [--seeds FILE ...] [--crashes DIR] [--timeout 60]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import warnings

import h5py
import numpy as np

# Casting extreme values on purpose: numpy's overflow warnings are expected noise here.
warnings.filterwarnings("ignore", category=RuntimeWarning)

ROOT = Path(__file__).resolve().parents[2]
ENCODINGS = ["array", "csr_matrix", "csc_matrix", "dataframe", "dict", "categorical",
             "string-array", "string", "numeric-scalar", "nullable-integer", "nullable-boolean",
             "nullable-string-array", "raw", "anndata", "awkward-array", "rec-array", "zarr", ""]
VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "9.9.9", "", "x"]
INT_VALUES = [-(2**63), -(2**31), -2, -1, 0, 1, 2, 3, 7, 2**31 - 1, 2**32, 2**40, 2**63 - 1]
FLOAT_VALUES = [np.nan, np.inf, -np.inf, -1.0, 0.0, 1e308, -1e-300, 3.5]


def objects(f: h5py.File):
    out = []
    f.visititems(lambda name, obj: out.append(name))
    return out


def replace_dataset(f, name, data, dtype=None):
    ds = f[name]
    attrs = dict(ds.attrs)
    del f[name]
    new = f.create_dataset(name, data=data, dtype=dtype)
    for k, v in attrs.items():
        new.attrs[k] = v


def mutate_once(f: h5py.File, rng: random.Random) -> str:
    names = objects(f)
    if not names:
        return "empty file"
    name = rng.choice(names)
    obj = f[name]
    r = rng.random()
    if isinstance(obj, h5py.Dataset) and obj.shape is not None and r < 0.55:
        data = obj[()]
        if not isinstance(data, np.ndarray) or data.ndim == 0:
            new = rng.choice([np.int64(rng.choice(INT_VALUES)), np.float64(np.nan), "zz", np.arange(3)])
            replace_dataset(f, name, new)
            return f"{name}: scalar -> {type(new).__name__}"
        flat = data.reshape(-1).copy()
        kind = rng.random()
        if kind < 0.35 and flat.size:
            k = rng.randrange(flat.size)
            if flat.dtype.kind in "iu":
                v = rng.choice(INT_VALUES)
                info = np.iinfo(flat.dtype)
                flat[k] = min(max(v, info.min), info.max)
            elif flat.dtype.kind == "f":
                flat[k] = rng.choice(FLOAT_VALUES)
            elif flat.dtype.kind == "b":
                flat[k] = not flat[k]
            else:
                flat = flat.astype(object)
                flat[k] = rng.choice(["", "x" * 5000, "\u00e9\u6f22", "NA", "nan", b"\xff\xfe"])
                replace_dataset(f, name, flat.reshape(data.shape), dtype=h5py.string_dtype())
                return f"{name}[{k}] = odd string"
            replace_dataset(f, name, flat.reshape(data.shape))
            return f"{name}[{k}] = extreme value"
        if kind < 0.6:
            n = flat.size
            m = rng.choice([0, 1, max(n - 1, 0), n + 1, n * 2 + 3])
            if m <= n:
                new = flat[:m]
            else:
                new = np.concatenate([flat, flat[: m - n] if n else np.zeros(m - n, flat.dtype)])
            replace_dataset(f, name, new)
            return f"{name}: {n} -> {m} values (1-D)"
        if kind < 0.85:
            to = rng.choice(["float64", "int8", "uint64", "bool", "str", "float16"])
            try:
                new = flat.astype(str).astype(object) if to == "str" else flat.astype(to)
                replace_dataset(f, name, new.reshape(data.shape),
                                dtype=h5py.string_dtype() if to == "str" else None)
                return f"{name}: dtype -> {to}"
            except (ValueError, TypeError, OverflowError):
                return "dtype change skipped"
        # reshape / transpose
        if data.ndim == 2:
            replace_dataset(f, name, data.T.copy())
            return f"{name}: transposed"
        replace_dataset(f, name, flat.reshape(-1, 1) if flat.size else flat)
        return f"{name}: made 2-D"
    if r < 0.85:
        attrs = list(obj.attrs)
        choice = rng.random()
        if attrs and choice < 0.2:
            a = rng.choice(attrs)
            del obj.attrs[a]
            return f"{name}: deleted attr {a}"
        a = rng.choice(attrs + ["encoding-type", "encoding-version", "shape", "column-order", "_index"])
        v = rng.choice([
            rng.choice(ENCODINGS), rng.choice(VERSIONS),
            np.array([rng.choice(INT_VALUES) % (2**62), rng.randrange(-5, 10)], dtype=np.int64),
            np.array([], dtype=np.float64),
            np.array(["no_such_column", "cell_type"], dtype=object),
            np.int64(rng.choice(INT_VALUES)),
        ])
        try:
            obj.attrs[a] = v
        except (TypeError, ValueError):
            return "attr write skipped"
        return f"{name}: attr {a} = {v!r}"[:200]
    del f[name]
    return f"deleted {name}"


def run(cmd, timeout):
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "HANG", ""
    err = p.stderr.decode(errors="replace")
    if p.returncode < 0:
        return "CRASH", f"signal {-p.returncode}: {err[-500:]}"
    if "panicked at" in err or p.returncode == 101:
        return "PANIC", err[-2000:]
    if p.returncode == 0:
        return "ok", ""
    if "error:" in err:
        return "refused", err.strip().splitlines()[0][:160] if err.strip() else ""
    return "CRASH", f"exit {p.returncode} without an error message: {err[-500:]}"


def worker(args):
    wid, seconds, seed, binary, seeds, crashes, timeout, tmp = args
    rng = random.Random(seed * 1000 + wid)
    stats = Counter()
    findings = []
    refusals = Counter()
    end = time.time() + seconds
    case = 0
    while time.time() < end:
        case += 1
        src = rng.choice(seeds)
        path = Path(tmp) / f"w{wid}-case.h5ad"
        out = Path(tmp) / f"w{wid}-out.h5ad"
        shutil.copyfile(src, path)
        log = []
        try:
            with h5py.File(path, "r+") as f:
                for _ in range(rng.randint(1, 3)):
                    log.append(mutate_once(f, rng))
        except Exception as e:  # h5py refused the mutation itself: not a cellforge case
            stats["skipped"] += 1
            continue
        for cmd in ([binary, "inspect", str(path), "--json"],
                    [binary, "convert", str(path), "--output", str(out)]):
            outcome, detail = run(cmd, timeout)
            stats[outcome] += 1
            if outcome == "refused":
                # Group by what the message says, without the file name or numbers.
                text = detail.replace(str(path), "FILE").replace(str(out), "OUT")
                text = "".join("N" if ch.isdigit() else ch for ch in text)
                refusals[" ".join(text.split()[:9])[:90]] += 1
            if outcome in ("PANIC", "CRASH", "HANG"):
                Path(crashes).mkdir(parents=True, exist_ok=True)
                keep = Path(crashes) / f"{outcome.lower()}-w{wid}-{case}.h5ad"
                shutil.copyfile(path, keep)
                keep.with_suffix(".txt").write_text(
                    f"seed file: {src}\ncommand: {cmd[1]}\nmutations:\n  " + "\n  ".join(log)
                    + f"\n\n{detail}\n")
                findings.append(str(keep))
        out.unlink(missing_ok=True)
    return stats, refusals, findings, case


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--crashes", default="fuzz-crashes")
    ap.add_argument("--seeds", nargs="*")
    a = ap.parse_args()
    seeds = a.seeds or [str(p) for p in [
        ROOT / "tests/fixtures/broken/control_valid.h5ad",
        ROOT / "assets/demo/pbmcs_small.h5ad",
        *sorted((ROOT.parent / "shared/data/anndata-archives").glob("*.h5ad")),
    ] if Path(p).is_file()]
    tmp = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    t0 = time.time()
    print(f"fuzzing {a.bin} for {a.seconds:.0f} s with {a.jobs} workers on {len(seeds)} seeds",
          file=sys.stderr)
    with mp.Pool(a.jobs) as pool:
        results = pool.map(worker, [(w, a.seconds, a.seed, a.bin, seeds, a.crashes, a.timeout, tmp)
                                    for w in range(a.jobs)])
    shutil.rmtree(tmp, ignore_errors=True)
    stats, refusals, findings, cases = Counter(), Counter(), [], 0
    for s, r, f, c in results:
        stats.update(s)
        refusals.update(r)
        findings.extend(f)
        cases += c
    summary = {
        "target": "h5ad reader (cellforge inspect + convert)",
        "seconds": round(time.time() - t0),
        "seeds": [os.path.relpath(s, ROOT) for s in seeds],
        "mutated_files": cases - stats["skipped"],
        "runs": {k: v for k, v in stats.items()},
        "top_refusals": [f"{k}: {v}" for k, v in refusals.most_common(12)],
        "findings": findings,
    }
    print(json.dumps(summary, indent=1))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
