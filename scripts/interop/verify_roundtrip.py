#!/usr/bin/env python3
"""Check that a converted .h5ad reads back (with anndata) equal to the original.

Usage:
    verify_roundtrip.py ORIGINAL.h5ad CONVERTED.h5ad [--x-format csr|csc|dense]
                        [--strict-scalar-dtypes] [--max-diffs N] [--quiet]
    verify_roundtrip.py --self-test FIXTURE_DIR

Both files are read with ``anndata.read_h5ad`` (so legacy originals are compared
in the form anndata upgrades them to) and every field is compared strictly:
X (values, dtype, sparse format), obs/var (index values, dtype and name, column
order, per-column dtype and values, categorical categories/ordered/codes, nullable
masks), obsm/varm/obsp/varp/layers (keys, container type, values, dtypes), raw
(X, var, varm) and uns recursively (keys, container/scalar type, values, dtypes).
``anndata.tests.helpers.assert_equal`` runs afterwards as a backstop.

Equivalences accepted because anndata's own reader produces them from identical
data: ``str`` == ``np.str_``; Python ``int``/``float``/``bool`` scalars equal the
numpy scalar of the default dtype (int64/float64/bool); fixed-width unicode ('U')
and object-of-str arrays (also as structured-array fields) are both "string
arrays"; sparse matrices are compared after canonicalisation (sorted indices,
explicit zeros and duplicates removed).

--x-format FMT   the converted X and layers may be stored as FMT instead of the
                 original's format (X must then be FMT; each layer either its
                 original format or FMT). Values and dtypes must still match.
--strict-scalar-dtypes
                 additionally compare the on-disk dtype of every 0-d numeric
                 dataset under /uns present in both files (anndata reads
                 numeric-scalar with .item(), which drops the dtype, so this is
                 stricter than anndata itself and is off by default).

Exit status: 0 equal; 1 a difference was found (each printed as
``DIFF <path>: <what>``, e.g. ``DIFF obs['cell_type'].cat.categories: ...``);
2 usage error or a file could not be read. ``--self-test`` exits 0 when every
check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import numbers
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import sparse

try:  # needs pytest; optional backstop
    from anndata.tests.helpers import assert_equal as _ad_assert_equal
except Exception:  # pragma: no cover
    _ad_assert_equal = None


# --------------------------------------------------------------------------- reading


def _quiet_warnings() -> None:
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", PendingDeprecationWarning)  # anndata OldFormatWarning
    warnings.filterwarnings("ignore", message=".*names are not unique.*")


def read(path: str | Path) -> ad.AnnData:
    with warnings.catch_warnings():
        _quiet_warnings()
        return ad.read_h5ad(path)


# --------------------------------------------------------------------------- comparison


def _fmt_key(k) -> str:
    return f"[{k!r}]"


def _short(v, n: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def matrix_format(x) -> str | None:
    if isinstance(x, np.ndarray):
        return "dense"
    if sparse.issparse(x):
        return x.format
    return None


def value_kind(v) -> str:
    """Coarse type category; two values of different kind are never equal."""
    if v is None:
        return "None"
    if isinstance(v, pd.DataFrame):
        return "DataFrame"
    if isinstance(v, Mapping):
        return "dict"
    if sparse.issparse(v):
        return f"sparse.{v.format}"
    if isinstance(v, pd.Categorical):
        return "Categorical"
    if isinstance(v, pd.api.extensions.ExtensionArray):
        return f"ExtensionArray[{v.dtype}]"
    if isinstance(v, np.ndarray):
        return "ndarray"
    if isinstance(v, (str, np.str_)):
        return "str"
    if isinstance(v, (bytes, np.bytes_)):
        return "bytes"
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (numbers.Number, np.number)):
        return "number"
    return type(v).__name__


def scalar_dtype(v) -> np.dtype:
    if isinstance(v, np.generic):
        return v.dtype
    return np.asarray(v).dtype  # Python int -> int64, float -> float64, ...


def _is_str_array(a: np.ndarray) -> bool:
    if a.dtype.kind == "U":
        return True
    if a.dtype.kind == "O":
        return all(isinstance(x, str) for x in a.ravel())
    return False


def _array_kind(a: np.ndarray) -> str:
    if a.dtype.names is not None:
        return "structured"
    if _is_str_array(a):
        return "str"
    if a.dtype.kind == "O":
        return "object"
    return str(a.dtype)


def _values_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality, NaN == NaN, and 0.0 != -0.0 for floats."""
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        eq = (a == b) | (np.isnan(a) & np.isnan(b))
        if a.dtype.kind == "f" and b.dtype.kind == "f":
            zero = (a == 0) & (b == 0)
            eq &= ~zero | (np.signbit(a) == np.signbit(b))
        return eq
    return a == b


class Comparer:
    def __init__(self, x_format: str | None = None, max_diffs: int = 50):
        self.x_format = x_format
        self.max_diffs = max_diffs
        self.diffs: list[tuple[str, str]] = []

    # ---- bookkeeping
    def diff(self, path: str, msg: str) -> None:
        self.diffs.append((path, msg))

    # ---- generic dispatch
    def value(self, a, b, path: str) -> None:
        ka, kb = value_kind(a), value_kind(b)
        if ka != kb:
            ta, tb = type(a).__name__, type(b).__name__
            self.diff(f"{path}.type", f"{ka if ka == ta else f'{ka} ({ta})'} vs {kb if kb == tb else f'{kb} ({tb})'}")
            return
        if ka == "None":
            return
        if ka == "DataFrame":
            self.frame(a, b, path)
        elif ka == "dict":
            self.mapping(a, b, path)
        elif ka.startswith("sparse.") or (ka == "ndarray" and a.ndim == 2 and _array_kind(a) not in ("str", "object", "structured")):
            self.matrix(a, b, path)
        elif ka == "ndarray":
            self.array(a, b, path)
        elif ka == "Categorical" or ka.startswith("ExtensionArray"):
            self.series(pd.Series(a), pd.Series(b), path)
        elif ka in ("str", "bytes"):
            if a != b:
                self.diff(path, f"{_short(a)} vs {_short(b)}")
        elif ka in ("bool", "number"):
            da, db = scalar_dtype(a), scalar_dtype(b)
            if da != db:
                self.diff(f"{path}.dtype", f"{da} vs {db} ({_short(a)} vs {_short(b)})")
            elif not (a == b or (_isnan(a) and _isnan(b))):
                self.diff(path, f"{_short(a)} vs {_short(b)}")
        else:
            try:
                same = bool(a == b)
            except Exception as e:  # pragma: no cover
                self.diff(path, f"cannot compare {type(a).__name__}: {e}")
                return
            if not same:
                self.diff(path, f"{_short(a)} vs {_short(b)}")

    def mapping(self, a: Mapping, b: Mapping, path: str) -> None:
        ka, kb = set(a.keys()), set(b.keys())
        for k in sorted(ka - kb, key=str):
            self.diff(f"{path}{_fmt_key(k)}", "missing in converted")
        for k in sorted(kb - ka, key=str):
            self.diff(f"{path}{_fmt_key(k)}", "extra in converted (not in original)")
        for k in sorted(ka & kb, key=str):
            self.value(a[k], b[k], f"{path}{_fmt_key(k)}")

    # ---- arrays
    def array(self, a: np.ndarray, b: np.ndarray, path: str) -> None:
        if a.shape != b.shape:
            self.diff(f"{path}.shape", f"{a.shape} vs {b.shape}")
            return
        kind_a, kind_b = _array_kind(a), _array_kind(b)
        if kind_a != kind_b:
            self.diff(f"{path}.dtype", f"{a.dtype} ({kind_a}) vs {b.dtype} ({kind_b})")
            return
        if kind_a == "structured":
            if list(a.dtype.names) != list(b.dtype.names):
                self.diff(f"{path}.dtype.names", f"{list(a.dtype.names)} vs {list(b.dtype.names)}")
                return
            for name in a.dtype.names:
                self.array(np.asarray(a[name]), np.asarray(b[name]), f"{path}.field[{name!r}]")
            return
        if kind_a in ("str", "object"):
            la, lb = a.ravel().tolist(), b.ravel().tolist()
            for i, (x, y) in enumerate(zip(la, lb)):
                if kind_a == "object":
                    sub = Comparer(max_diffs=1)
                    sub.value(x, y, "")
                    if sub.diffs:
                        self.diff(f"{path}[{np.unravel_index(i, a.shape)}]", sub.diffs[0][1])
                        return
                elif x != y:
                    self.diff(f"{path}[{_idx(i, a.shape)}]", f"{_short(x)} vs {_short(y)}")
                    return
            return
        if a.dtype != b.dtype:
            self.diff(f"{path}.dtype", f"{a.dtype} vs {b.dtype}")
            return
        eq = _values_equal(a, b)
        if not np.all(eq):
            i = int(np.flatnonzero(~np.asarray(eq).ravel())[0])
            self.diff(
                f"{path}[{_idx(i, a.shape)}]",
                f"{_short(a.ravel()[i])} vs {_short(b.ravel()[i])} ({int((~eq).sum())} elements differ)",
            )

    def matrix(self, a, b, path: str, allowed_formats: tuple[str, ...] | None = None) -> None:
        fa, fb = matrix_format(a), matrix_format(b)
        if fa is None or fb is None:
            self.diff(f"{path}.type", f"{type(a).__name__} vs {type(b).__name__}")
            return
        allowed = allowed_formats if allowed_formats is not None else (fa,)
        if fb not in allowed:
            self.diff(f"{path}.format", f"{fa} vs {fb}" + ("" if allowed_formats is None else f" (allowed: {', '.join(allowed)})"))
            return
        if sparse.issparse(a) and sparse.issparse(b) and type(a).__name__.endswith("_array") != type(b).__name__.endswith("_array"):
            self.diff(f"{path}.type", f"{type(a).__name__} vs {type(b).__name__}")
            return
        if a.shape != b.shape:
            self.diff(f"{path}.shape", f"{a.shape} vs {b.shape}")
            return
        if a.dtype != b.dtype:
            self.diff(f"{path}.dtype", f"{a.dtype} vs {b.dtype}")
            return
        if fa == "dense" and fb == "dense":
            self.array(a, b, path)
            return
        ca, cb = _canonical_csr(a), _canonical_csr(b)
        if not np.array_equal(ca.indptr, cb.indptr):
            row = int(np.flatnonzero(np.diff(ca.indptr) != np.diff(cb.indptr))[0])
            self.diff(path, f"row {row}: {ca.indptr[row + 1] - ca.indptr[row]} vs "
                            f"{cb.indptr[row + 1] - cb.indptr[row]} non-zeros (nnz {ca.nnz} vs {cb.nnz})")
            return
        bad = (ca.indices != cb.indices) | ~_values_equal(ca.data, cb.data)
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            row = int(np.searchsorted(ca.indptr, k, side="right") - 1)
            if ca.indices[k] != cb.indices[k]:
                col = int(min(ca.indices[k], cb.indices[k]))
            else:
                col = int(ca.indices[k])
            self.diff(f"{path}[{row}, {col}]", f"{_short(a[row, col])} vs {_short(b[row, col])} ({int(bad.sum())} stored entries differ)")

    # ---- dataframes
    def index(self, a: pd.Index, b: pd.Index, path: str, check_name: bool = True) -> None:
        if not isinstance(b, pd.Index):
            self.diff(f"{path}.type", f"Index vs {type(b).__name__}")
            return
        if len(a) != len(b):
            self.diff(f"{path}.length", f"{len(a)} vs {len(b)}")
            return
        if a.dtype != b.dtype:
            self.diff(f"{path}.dtype", f"{a.dtype} vs {b.dtype}")
            return
        la, lb = a.tolist(), b.tolist()
        for i, (x, y) in enumerate(zip(la, lb)):
            same = (isinstance(x, str) == isinstance(y, str)) and (x == y or (_isnan(x) and _isnan(y)))
            if not same:
                self.diff(f"{path}[{i}]", f"{_short(x)} vs {_short(y)}")
                return
        if check_name and a.name != b.name:
            self.diff(f"{path}.name", f"{a.name!r} vs {b.name!r}")

    def frame(self, a: pd.DataFrame, b: pd.DataFrame, path: str) -> None:
        if not isinstance(b, pd.DataFrame):
            self.diff(f"{path}.type", f"DataFrame vs {type(b).__name__}")
            return
        self.index(a.index, b.index, f"{path}.index")
        ca, cb = list(a.columns), list(b.columns)
        if ca != cb:
            if set(ca) == set(cb):
                self.diff(f"{path}.columns", f"same columns, different order: {ca} vs {cb}")
            else:
                miss = [c for c in ca if c not in cb]
                extra = [c for c in cb if c not in ca]
                self.diff(f"{path}.columns", f"missing in converted: {miss}; extra in converted: {extra}")
        for c in ca:
            if c in cb:
                self.series(a[c], b[c], f"{path}[{c!r}]")

    def series(self, a: pd.Series, b: pd.Series, path: str) -> None:
        if len(a) != len(b):
            self.diff(f"{path}.length", f"{len(a)} vs {len(b)}")
            return
        da, db = a.dtype, b.dtype
        a_cat, b_cat = isinstance(da, pd.CategoricalDtype), isinstance(db, pd.CategoricalDtype)
        if a_cat or b_cat:
            if not (a_cat and b_cat):
                self.diff(f"{path}.dtype", f"{da} vs {db}")
                return
            self.index(a.cat.categories, b.cat.categories, f"{path}.cat.categories", check_name=False)
            if bool(a.cat.ordered) != bool(b.cat.ordered):
                self.diff(f"{path}.cat.ordered", f"{a.cat.ordered} vs {b.cat.ordered}")
            codes_a = a.cat.codes.to_numpy().astype(np.int64)
            codes_b = b.cat.codes.to_numpy().astype(np.int64)
            if not np.array_equal(codes_a, codes_b):
                i = int(np.flatnonzero(codes_a != codes_b)[0])
                self.diff(f"{path}.cat.codes[{i}]", f"{codes_a[i]} vs {codes_b[i]} "
                                                    f"({_short(a.iloc[i])} vs {_short(b.iloc[i])})")
            return
        if da != db:
            self.diff(f"{path}.dtype", f"{da} vs {db}")
            return
        if isinstance(da, pd.api.extensions.ExtensionDtype):
            ma, mb = a.isna().to_numpy(), b.isna().to_numpy()
            if not np.array_equal(ma, mb):
                i = int(np.flatnonzero(ma != mb)[0])
                self.diff(f"{path}[{i}]", f"{_short(a.iloc[i])} vs {_short(b.iloc[i])} (missing mask differs)")
                return
            va = a[~ma].to_numpy(dtype=object).tolist()
            vb = b[~mb].to_numpy(dtype=object).tolist()
            pos = np.flatnonzero(~ma)
            for j, (x, y) in enumerate(zip(va, vb)):
                if x != y or type(x) is not type(y):
                    self.diff(f"{path}[{int(pos[j])}]", f"{_short(x)} vs {_short(y)}")
                    return
            return
        self.array(a.to_numpy(), b.to_numpy(), path)


def _isnan(x) -> bool:
    try:
        return bool(x is pd.NA or (isinstance(x, (float, np.floating)) and math.isnan(x)))
    except Exception:  # pragma: no cover
        return False


def _idx(i: int, shape: tuple[int, ...]):
    if len(shape) == 1:
        return i
    return ", ".join(str(int(j)) for j in np.unravel_index(i, shape))


def _canonical_csr(x) -> sparse.csr_matrix:
    m = sparse.csr_matrix(x, copy=True)  # dense -> only non-zeros kept
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    return m


def _h5_uns_scalar_dtypes(path: str | Path) -> dict[str, np.dtype]:
    out: dict[str, np.dtype] = {}
    with h5py.File(path, "r") as f:
        if "uns" not in f or not isinstance(f["uns"], h5py.Group):
            return out

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.shape == () and obj.dtype.kind in "biufc":
                out[name] = obj.dtype

        f["uns"].visititems(visit)
    return out


def compare_adata(a: ad.AnnData, b: ad.AnnData, x_format: str | None = None, max_diffs: int = 50) -> list[tuple[str, str]]:
    c = Comparer(x_format=x_format, max_diffs=max_diffs)
    if a.shape != b.shape:
        c.diff("shape", f"{a.shape} vs {b.shape}")
    # X
    if a.X is None or b.X is None:
        if (a.X is None) != (b.X is None):
            c.diff("X", f"{'absent' if a.X is None else type(a.X).__name__} vs "
                        f"{'absent' if b.X is None else type(b.X).__name__}")
    else:
        c.matrix(a.X, b.X, "X", allowed_formats=(x_format,) if x_format else None)
    c.frame(a.obs, b.obs, "obs")
    c.frame(a.var, b.var, "var")
    for attr in ("obsm", "varm", "obsp", "varp"):
        c.mapping(dict(getattr(a, attr)), dict(getattr(b, attr)), attr)
    # layers: with --x-format a layer may be in its original format or x_format
    la, lb = dict(a.layers), dict(b.layers)
    c.mapping({k: v for k, v in la.items() if k not in lb}, {k: v for k, v in lb.items() if k not in la}, "layers")
    for k in sorted(set(la) & set(lb)):
        allowed = None
        if x_format and matrix_format(la[k]) is not None:
            allowed = tuple(dict.fromkeys((matrix_format(la[k]), x_format)))
        c.matrix(la[k], lb[k], f"layers{_fmt_key(k)}", allowed_formats=allowed)
    c.mapping(a.uns, b.uns, "uns")
    # raw
    if (a.raw is None) != (b.raw is None):
        c.diff("raw", f"{'absent' if a.raw is None else 'present'} vs {'absent' if b.raw is None else 'present'}")
    elif a.raw is not None:
        if a.raw.shape != b.raw.shape:
            c.diff("raw.shape", f"{a.raw.shape} vs {b.raw.shape}")
        c.matrix(a.raw.X, b.raw.X, "raw.X")
        c.frame(a.raw.var, b.raw.var, "raw.var")
        c.mapping(dict(a.raw.varm), dict(b.raw.varm), "raw.varm")
    return c.diffs


def verify(original: str | Path, converted: str | Path, *, x_format: str | None = None,
           strict_scalar_dtypes: bool = False, backstop: bool = True, max_diffs: int = 50,
           a: ad.AnnData | None = None, b: ad.AnnData | None = None) -> list[tuple[str, str]]:
    """Return the list of (path, message) differences; empty when equal.

    ``a``/``b`` may be passed pre-read (must be what ``read(original/converted)`` returns).
    """
    a = read(original) if a is None else a
    b = read(converted) if b is None else b
    diffs = compare_adata(a, b, x_format=x_format, max_diffs=max_diffs)
    if strict_scalar_dtypes:
        da, db = _h5_uns_scalar_dtypes(original), _h5_uns_scalar_dtypes(converted)
        for k in sorted(set(da) & set(db)):
            if da[k] != db[k]:
                diffs.append((f"uns/{k} (on-disk scalar dtype)", f"{da[k]} vs {db[k]}"))
    if not diffs and backstop and _ad_assert_equal is not None:
        try:
            with warnings.catch_warnings():
                _quiet_warnings()
                _ad_assert_equal(a, b)
        except AssertionError as e:
            diffs.append(("anndata.tests.helpers.assert_equal", str(e).strip().replace("\n", " ")[:500]))
    return diffs


# --------------------------------------------------------------------------- self-test


def _write(adata: ad.AnnData, path: Path) -> None:
    with warnings.catch_warnings():
        _quiet_warnings()
        with ad.settings.override(allow_write_nullable_strings=True):
            adata.write_h5ad(path, convert_strings_to_categoricals=False)


def _first_categorical(adata):
    for attr in ("obs", "var"):
        df = getattr(adata, attr)
        for c in df.columns:
            if isinstance(df[c].dtype, pd.CategoricalDtype) and len(df[c].cat.categories):
                return attr, c
    return None


def _find_uns_scalar(d: Mapping, path=()):
    for k in sorted(d, key=str):
        v = d[k]
        if isinstance(v, Mapping):
            r = _find_uns_scalar(v, (*path, k))
            if r:
                return r
        elif value_kind(v) in ("str", "bool", "number"):
            return (*path, k)
    return None


def _uns_path(keys) -> str:
    return "uns" + "".join(_fmt_key(k) for k in keys)


def _mut_x_value(adata):
    x = adata.X
    if x is None or 0 in x.shape:
        return None
    if sparse.issparse(x):
        x = x.tocsr() if x.format == "csr" else x.tocsc()
        if x.nnz:
            x.data[0] = 7 if x.data[0] != 7 else 8
        else:
            x = x.tolil()
            x[0, 0] = 7
            x = x.tocsr() if adata.X.format == "csr" else x.tocsc()
    else:
        x = x.copy()
        x.flat[0] = 7 if x.flat[0] != 7 else 8
    adata.X = x
    return "X"


def _other_dtype(dt: np.dtype) -> np.dtype | None:
    return {
        "float32": np.float64, "float64": np.float32, "int32": np.int64, "int64": np.int32,
        "int8": np.int16, "int16": np.int32, "uint8": np.uint16, "uint16": np.uint32,
        "uint32": np.uint64, "uint64": np.int64, "bool": np.uint8,
    }.get(str(dt))


def _mut_x_dtype(adata):
    if adata.X is not None:
        new = _other_dtype(adata.X.dtype)
        if new is not None:
            adata.X = adata.X.astype(new)
            return "X.dtype"
    for k, v in adata.layers.items():
        new = _other_dtype(v.dtype)
        if new is not None:
            adata.layers[k] = v.astype(new)
            return f"layers{_fmt_key(k)}.dtype"
    return None


def _mut_obs_col_dtype(adata):
    for attr in ("obs", "var"):
        df = getattr(adata, attr)
        for c in df.columns:
            if isinstance(df[c].dtype, np.dtype):
                new = _other_dtype(df[c].dtype)
                if new is not None:
                    df[c] = df[c].to_numpy().astype(new)
                    return f"{attr}[{c!r}].dtype"
    return None


def _mut_category_label(adata):
    found = _first_categorical(adata)
    if not found:
        return None
    attr, c = found
    df = getattr(adata, attr)
    cats = list(df[c].cat.categories)
    old = cats[0]
    if isinstance(old, str):
        cats[0] = old + "_mutated"
    else:
        cats[0] = max(cats) + 1000
    df[c] = df[c].cat.rename_categories(cats)
    return f"{attr}[{c!r}].cat.categories"


def _mut_category_ordered(adata):
    found = _first_categorical(adata)
    if not found:
        return None
    attr, c = found
    df = getattr(adata, attr)
    df[c] = df[c].cat.as_unordered() if df[c].cat.ordered else df[c].cat.as_ordered()
    return f"{attr}[{c!r}].cat.ordered"


def _mut_category_code_missing(adata):
    found = _first_categorical(adata)
    if not found:
        return None
    attr, c = found
    df = getattr(adata, attr)
    vals = df[c].copy()
    notna = np.flatnonzero(vals.notna().to_numpy())
    if not len(notna):
        return None
    vals.iloc[int(notna[0])] = np.nan
    df[c] = vals
    return f"{attr}[{c!r}].cat.codes"


def _mut_uns_scalar(adata):
    p = _find_uns_scalar(adata.uns)
    if p is None:
        return None
    d = adata.uns
    for k in p[:-1]:
        d = d[k]
    v = d[p[-1]]
    kind = value_kind(v)
    if kind == "str":
        d[p[-1]] = str(v) + "_mutated"
    elif kind == "bool":
        d[p[-1]] = not bool(v)
    else:
        d[p[-1]] = type(v)(v + 1) if not _isnan(v) else type(v)(1)
    return _uns_path(p)


def _mut_uns_drop(adata):
    if not len(adata.uns):
        return None
    k = sorted(adata.uns, key=str)[0]
    del adata.uns[k]
    return _uns_path([k])


def _mut_drop_mapping_key(adata):
    for attr in ("obsm", "varm", "obsp", "varp", "layers"):
        m = getattr(adata, attr)
        if len(m):
            k = sorted(m.keys())[0]
            del m[k]
            return f"{attr}{_fmt_key(k)}"
    return None


def _mut_obsm_value(adata):
    for k, v in adata.obsm.items():
        if isinstance(v, np.ndarray) and v.size and v.dtype.kind in "iuf":
            v = v.copy()
            v.flat[0] = 7 if v.flat[0] != 7 else 8
            adata.obsm[k] = v
            return f"obsm{_fmt_key(k)}"
    return None


def _mut_index_name(adata):
    adata.obs.index.name = "mutated_index_name" if adata.obs.index.name != "mutated_index_name" else None
    return "obs.index.name"


def _mut_var_name(adata):
    if adata.n_vars == 0:
        return None
    names = list(adata.var_names)
    names[0] = names[0] + "_mutated"
    adata.var_names = names
    return "var.index"


def _mut_column_order(adata):
    for attr in ("obs", "var"):
        df = getattr(adata, attr)
        if df.shape[1] >= 2:
            cols = list(df.columns)
            setattr(adata, attr, df[[*cols[1:], cols[0]]])
            return f"{attr}.columns"
    return None


def _mut_nullable_mask(adata):
    for attr in ("obs", "var"):
        df = getattr(adata, attr)
        for c in df.columns:
            dt = df[c].dtype
            if isinstance(dt, pd.api.extensions.ExtensionDtype) and not isinstance(dt, pd.CategoricalDtype):
                vals = df[c].copy()
                ok = np.flatnonzero(vals.notna().to_numpy())
                if len(ok):
                    vals.iloc[int(ok[0])] = pd.NA
                    df[c] = vals
                    return f"{attr}[{c!r}]"
    return None


def _mut_x_format(adata):
    x = adata.X
    if x is None:
        return None
    fmt = matrix_format(x)
    adata.X = {"dense": lambda: sparse.csr_matrix(x), "csr": lambda: x.tocsc(), "csc": lambda: x.tocsr()}[fmt]()
    return "X.format"


def _mut_raw_x(adata):
    if adata.raw is None or adata.raw.X.shape[0] == 0:
        return None
    raw = adata.raw.to_adata()
    x = raw.X.tocsr(copy=True) if sparse.issparse(raw.X) else raw.X.copy()
    if sparse.issparse(x):
        if not x.nnz:
            return None
        x.data[-1] = 7 if x.data[-1] != 7 else 8
    else:
        x.flat[-1] = 7 if x.flat[-1] != 7 else 8
    raw.X = x
    adata.raw = raw
    return "raw.X"


MUTATIONS: list[tuple[str, Callable]] = [
    ("change one X value", _mut_x_value),
    ("change X dtype", _mut_x_dtype),
    ("change X sparse format", _mut_x_format),
    ("change an obs/var column dtype", _mut_obs_col_dtype),
    ("rename one obs category", _mut_category_label),
    ("flip categorical ordered", _mut_category_ordered),
    ("set one categorical value missing", _mut_category_code_missing),
    ("set one nullable value to NA", _mut_nullable_mask),
    ("change one uns scalar", _mut_uns_scalar),
    ("drop an uns key", _mut_uns_drop),
    ("drop an obsm (or varm/obsp/varp/layers) key", _mut_drop_mapping_key),
    ("change one obsm value", _mut_obsm_value),
    ("change obs index name", _mut_index_name),
    ("change one var name", _mut_var_name),
    ("reorder obs/var columns", _mut_column_order),
    ("change one raw.X value", _mut_raw_x),
]


def self_test(fixture_dir: Path) -> int:
    files = sorted(fixture_dir.glob("*.h5ad"))
    if not files:
        print(f"no .h5ad files in {fixture_dir}", file=sys.stderr)
        return 2
    failures: list[str] = []
    n_checks = 0
    applied = {desc: 0 for desc, _ in MUTATIONS}
    tmp = Path(tempfile.mkdtemp(prefix="verify_selftest_"))
    try:
        for f in files:
            line = [f"{f.name:40s}"]
            orig = read(f)
            # 1) identical data written by anndata must be accepted
            ident = tmp / "identity.h5ad"
            _write(read(f), ident)
            d = verify(f, ident, a=orig)
            n_checks += 1
            if d:
                failures.append(f"{f.name}: identity rewrite rejected: {d[:3]}")
                line.append("identity=REJECTED")
            else:
                line.append("identity=ok")
            # a byte copy must pass the strict scalar-dtype check too
            cp = tmp / "copy.h5ad"
            shutil.copyfile(f, cp)
            d = verify(f, cp, strict_scalar_dtypes=True, a=orig)
            n_checks += 1
            if d:
                failures.append(f"{f.name}: byte copy rejected: {d[:3]}")
            # 2) --x-format: X (and layers) in another format must be accepted with the flag
            adata = read(f)
            fmt = matrix_format(adata.X) if adata.X is not None else None
            if fmt is not None:
                target = {"dense": "csr", "csr": "dense", "csc": "csr"}[fmt]
                conv = {"dense": lambda m: sparse.csr_matrix(m), "csr": lambda m: m.toarray(), "csc": lambda m: m.tocsr()}
                adata.X = conv[fmt](adata.X)
                for k in list(adata.layers.keys()):
                    lf = matrix_format(adata.layers[k])
                    if lf is not None and lf != target:
                        adata.layers[k] = {"dense": lambda m: m.toarray() if sparse.issparse(m) else m,
                                           "csr": lambda m: sparse.csr_matrix(m),
                                           "csc": lambda m: sparse.csc_matrix(m)}[target](adata.layers[k])
                xf = tmp / "xformat.h5ad"
                _write(adata, xf)
                d_ok = verify(f, xf, x_format=target, a=orig)
                d_bad = verify(f, xf, a=orig)
                n_checks += 2
                if d_ok:
                    failures.append(f"{f.name}: --x-format {target} rejected: {d_ok[:3]}")
                if not d_bad:
                    failures.append(f"{f.name}: X as {target} accepted WITHOUT --x-format")
                line.append(f"x-format({fmt}->{target})={'ok' if not d_ok and d_bad else 'FAIL'}")
            # 3) every single-field mutation must be rejected, naming the field
            rejected = na = 0
            for desc, mut in MUTATIONS:
                adata = read(f)
                with warnings.catch_warnings():
                    _quiet_warnings()
                    expected = mut(adata)
                if expected is None:
                    na += 1
                    continue
                applied[desc] += 1
                mf = tmp / "mutated.h5ad"
                _write(adata, mf)
                d = verify(f, mf, a=orig)
                n_checks += 1
                if not d:
                    failures.append(f"{f.name}: mutation '{desc}' ({expected}) was ACCEPTED")
                    continue
                paths = [p for p, _ in d]
                if not any(p.startswith(expected) for p in paths):
                    failures.append(f"{f.name}: mutation '{desc}' rejected but reported {paths[:3]}, expected {expected}")
                    continue
                rejected += 1
            line.append(f"mutations rejected={rejected} n/a={na}")
            print("  ".join(line), flush=True)
        never = [desc for desc, n in applied.items() if n == 0]
        if never:
            failures.append(f"mutations never applicable to any fixture: {never}")
        print("mutations applied (each must be rejected): "
              + ", ".join(f"{desc}: {n}" for desc, n in applied.items()))
        # 4) strict scalar dtypes: an on-disk dtype change of a uns scalar
        n_checks += _selftest_scalar_dtype(fixture_dir, tmp, failures)
        # 5) the CLI contract (exit codes)
        n_checks += _selftest_cli(files[0], tmp, failures)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"\nSELF-TEST FAILED: {len(failures)} of {n_checks} checks", file=sys.stderr)
        for msg in failures:
            print("  " + msg, file=sys.stderr)
        return 1
    print(f"\nself-test passed: {n_checks} checks over {len(files)} fixtures")
    return 0


def _selftest_scalar_dtype(fixture_dir: Path, tmp: Path, failures: list[str]) -> int:
    def score(f: Path) -> int:  # prefer a modern float numeric-scalar (read back as a Python float)
        with h5py.File(f, "r") as h:
            for name, dt in _h5_uns_scalar_dtypes(f).items():
                if dt.kind == "f" and h["uns"][name].attrs.get("encoding-type") == "numeric-scalar":
                    return 2
        return 1 if _h5_uns_scalar_dtypes(f) else 0

    scored = sorted(((score(f), f) for f in sorted(fixture_dir.glob("*.h5ad"))), key=lambda t: -t[0])
    if not scored or scored[0][0] == 0:
        return 0
    src = scored[0][1]
    dst = tmp / "scalar_dtype.h5ad"
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as h:
        # prefer a float scalar: anndata reads it as a Python float, so only the strict mode sees it
        cands = sorted(_h5_uns_scalar_dtypes(dst).items(), key=lambda kv: (kv[1].kind != "f", kv[0]))
        name, dt = cands[0]
        ds = h["uns"][name]
        val, attrs = ds[()], dict(ds.attrs)
        del h["uns"][name]
        new_dt = np.float32 if dt != np.float32 else np.float64
        if dt.kind == "b":
            new_dt = np.uint8
        nd = h["uns"].create_dataset(name, data=np.asarray(val).astype(new_dt))
        for k, v in attrs.items():
            nd.attrs[k] = v
    lenient = verify(src, dst, backstop=False)
    strict = verify(src, dst, strict_scalar_dtypes=True, backstop=False)
    if not strict:
        failures.append(f"{src.name}: on-disk dtype change of uns/{name} not caught by --strict-scalar-dtypes")
    print(f"strict-scalar-dtypes: {src.name} uns/{name} {dt}->{np.dtype(new_dt)}: "
          f"default={'rejected' if lenient else 'accepted'} strict={'rejected' if strict else 'ACCEPTED'}")
    return 1


def _selftest_cli(fixture: Path, tmp: Path, failures: list[str]) -> int:
    import subprocess

    me = [sys.executable, str(Path(__file__).resolve())]
    ident = tmp / "cli_identity.h5ad"
    _write(read(fixture), ident)
    bad = tmp / "cli_bad.h5ad"
    adata = read(fixture)
    _mut_index_name(adata)
    _write(adata, bad)
    junk = tmp / "cli_junk.h5ad"
    junk.write_bytes(b"not an hdf5 file\n")
    cases = [
        ([str(fixture), str(ident)], 0),
        ([str(fixture), str(bad)], 1),
        ([str(fixture), str(junk)], 2),
        ([str(fixture)], 2),
    ]
    for args, want in cases:
        r = subprocess.run(me + args, capture_output=True, text=True)
        if r.returncode != want:
            failures.append(f"CLI {args}: exit {r.returncode}, expected {want}; stdout={r.stdout[-300:]} stderr={r.stderr[-300:]}")
    print(f"CLI exit codes: {len(cases)} cases checked")
    return len(cases)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("original", nargs="?", help="original .h5ad")
    p.add_argument("converted", nargs="?", help="converted .h5ad (e.g. written by cellforge)")
    p.add_argument("--x-format", choices=["csr", "csc", "dense"], default=None,
                   help="allow converted X/layers to be stored in this format")
    p.add_argument("--strict-scalar-dtypes", action="store_true",
                   help="also compare on-disk dtypes of numeric scalars under /uns")
    p.add_argument("--max-diffs", type=int, default=50, help="print at most this many differences")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--self-test", metavar="FIXTURE_DIR", type=Path, default=None,
                   help="prove the verifier accepts identical data and rejects single-field mutations")
    args = p.parse_args(argv)

    if args.self_test is not None:
        if args.original or args.converted:
            p.error("--self-test takes no positional arguments")
        return self_test(args.self_test)
    if not args.original or not args.converted:
        p.error("ORIGINAL and CONVERTED are required (or use --self-test DIR)")

    loaded = {}
    for label, path in (("original", args.original), ("converted", args.converted)):
        try:
            loaded[label] = read(path)
        except Exception as e:
            print(f"ERROR reading {label} {path}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    try:
        diffs = verify(args.original, args.converted, x_format=args.x_format,
                       strict_scalar_dtypes=args.strict_scalar_dtypes, max_diffs=args.max_diffs,
                       a=loaded["original"], b=loaded["converted"])
    except Exception:
        traceback.print_exc()
        return 2
    if diffs:
        for path, msg in diffs[: args.max_diffs]:
            print(f"DIFF {path}: {msg}")
        if len(diffs) > args.max_diffs:
            print(f"... and {len(diffs) - args.max_diffs} more differences")
        print(f"NOT EQUAL: {len(diffs)} difference(s) between {args.original} and {args.converted}")
        return 1
    if not args.quiet:
        print(f"EQUAL: {args.converted} reads back equal to {args.original}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
