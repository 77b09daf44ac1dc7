#!/usr/bin/env python3
"""Write a corpus of small, deliberately broken .h5ad files for reader robustness tests.

Usage:
    make_broken.py OUTDIR [--no-readme]

Writes into OUTDIR:
  * one ``<case>.h5ad`` per case (each < 50 KB, byte-for-byte deterministic: the
    files are written with h5py directly, without timestamps);
  * ``expected.json``: ``{"<case>.h5ad": {"kind": "error"|"warn"|"ok",
    "contains": "<lowercase substring>", "contains_any": [...], "what": "..."}}``.
    ``kind: error`` -> a good reader refuses the file and its error message
    (lower-cased) contains ``contains`` (or at least one of ``contains_any``,
    which always includes ``contains``). ``kind: warn`` -> the file opens, and
    the reader reports a warning/diagnostic containing the substring.
    ``kind: ok`` -> opens without error (the control file, which anndata must read
    too, and damage a reader can recover from, such as invalid UTF-8 in strings).
  * ``README.md`` listing each file, what is wrong with it, and what anndata
    (the version installed here) does with it.

Exit status: 0 on success, 1 if a self-check failed (a file >= 50 KB, the
control file not readable by anndata, or a non-deterministic write).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

MAX_BYTES = 50 * 1024
N_OBS, N_VARS = 6, 4

# --------------------------------------------------------------------------- low-level writers
# These mirror the on-disk layout anndata 0.12 writes (see anndata/_io/specs/methods.py).

STR = h5py.string_dtype(encoding="utf-8")


def _enc(obj, etype: str, version: str) -> None:
    obj.attrs["encoding-type"] = etype
    obj.attrs["encoding-version"] = version


def w_array(g: h5py.Group, name: str, data) -> h5py.Dataset:
    ds = g.create_dataset(name, data=np.asarray(data))
    _enc(ds, "array", "0.2.0")
    return ds


def w_str_array(g: h5py.Group, name: str, values) -> h5py.Dataset:
    ds = g.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR)
    _enc(ds, "string-array", "0.2.0")
    return ds


def w_dict(g: h5py.Group, name: str) -> h5py.Group:
    sub = g.create_group(name)
    _enc(sub, "dict", "0.1.0")
    return sub


def w_sparse(g: h5py.Group, name: str, data, indices, indptr, shape, fmt: str = "csr") -> h5py.Group:
    sub = g.create_group(name)
    _enc(sub, f"{fmt}_matrix", "0.1.0")
    sub.attrs["shape"] = np.asarray(shape, dtype=np.int64)
    sub.create_dataset("data", data=np.asarray(data))
    sub.create_dataset("indices", data=np.asarray(indices))
    sub.create_dataset("indptr", data=np.asarray(indptr))
    return sub


def w_categorical(g: h5py.Group, name: str, codes, categories, ordered: bool = False) -> h5py.Group:
    sub = g.create_group(name)
    _enc(sub, "categorical", "0.2.0")
    sub.attrs["ordered"] = np.bool_(ordered)
    w_array(sub, "codes", np.asarray(codes, dtype=np.int8))
    w_str_array(sub, "categories", categories)
    return sub


def w_dataframe(g: h5py.Group, name: str, index, columns: dict[str, Callable[[h5py.Group, str], object]],
                index_name: str = "_index") -> h5py.Group:
    sub = g.create_group(name)
    sub.attrs["_index"] = index_name
    if columns:
        sub.attrs["column-order"] = np.array(list(columns), dtype=object)
    else:
        sub.attrs["column-order"] = np.array([], dtype=np.float64)  # what anndata writes for no columns
    _enc(sub, "dataframe", "0.2.0")
    w_str_array(sub, index_name, index)
    for col, writer in columns.items():
        writer(sub, col)
    return sub


# --------------------------------------------------------------------------- the valid base file

OBS_NAMES = [f"cell_{i}" for i in range(N_OBS)]
VAR_NAMES = [f"GENE{j}" for j in range(N_VARS)]
# 6 x 4 CSR, rows: [1 0 2 0] [0 0 0 3] [0 0 0 0] [4 5 0 0] [0 6 0 7] [8 0 0 0]
X_DATA = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)
X_INDICES = np.array([0, 2, 3, 0, 1, 1, 3, 0], dtype=np.int32)
X_INDPTR = np.array([0, 2, 3, 3, 5, 7, 8], dtype=np.int32)


def x_dense() -> np.ndarray:
    m = np.zeros((N_OBS, N_VARS), dtype=np.float32)
    for r in range(N_OBS):
        for k in range(X_INDPTR[r], X_INDPTR[r + 1]):
            m[r, X_INDICES[k]] = X_DATA[k]
    return m


def write_base(f: h5py.File, *, skip: frozenset[str] = frozenset()) -> None:
    """A small, fully valid AnnData (anndata 0.12 layout)."""
    _enc(f, "anndata", "0.1.0")
    if "X" not in skip:
        w_sparse(f, "X", X_DATA, X_INDICES, X_INDPTR, (N_OBS, N_VARS))
    if "obs" not in skip:
        w_dataframe(f, "obs", OBS_NAMES, {
            "n_genes": lambda g, k: w_array(g, k, np.array([2, 1, 0, 2, 2, 1], dtype=np.int64)),
            "cell_type": lambda g, k: w_categorical(g, k, [0, 1, 0, -1, 2, 1], ["B", "NK", "T"]),
        })
    if "var" not in skip:
        w_dataframe(f, "var", VAR_NAMES, {
            "gene_ids": lambda g, k: w_str_array(g, k, [f"ENSG{j:05d}" for j in range(N_VARS)]),
        })
    obsm = w_dict(f, "obsm")
    if "obsm/X_pca" not in skip:
        w_array(obsm, "X_pca", np.arange(N_OBS * 2, dtype=np.float32).reshape(N_OBS, 2))
    varm = w_dict(f, "varm")
    if "varm/PCs" not in skip:
        w_array(varm, "PCs", np.arange(N_VARS * 2, dtype=np.float64).reshape(N_VARS, 2))
    obsp = w_dict(f, "obsp")
    if "obsp/distances" not in skip:
        w_array(obsp, "distances", np.eye(N_OBS, dtype=np.float64))
    w_dict(f, "varp")
    layers = w_dict(f, "layers")
    if "layers/counts" not in skip:
        w_array(layers, "counts", x_dense().astype(np.int32))
    uns = w_dict(f, "uns")
    ds = uns.create_dataset("title", data=np.array("base", dtype=object), dtype=STR)
    _enc(ds, "string", "0.2.0")


def replace(g: h5py.Group, name: str) -> None:
    if name in g:
        del g[name]


def new_x_csr(f, data=X_DATA, indices=X_INDICES, indptr=X_INDPTR, shape=(N_OBS, N_VARS), fmt="csr"):
    replace(f, "X")
    return w_sparse(f, "X", data, indices, indptr, shape, fmt=fmt)


# --------------------------------------------------------------------------- cases

CASES: dict[str, dict] = {}


def case(name: str, kind: str, contains: str, what: str, *also: str):
    def deco(func):
        CASES[name] = {
            "kind": kind,
            "contains": contains,
            "contains_any": [contains, *also],
            "what": what,
            "build": func,
        }
        return func

    return deco


def h5case(mutate: Callable[[h5py.File], None], skip: frozenset[str] = frozenset()) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        with h5py.File(path, "w") as f:
            write_base(f, skip=skip)
            mutate(f)

    return build


def bytes_case(data: bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(data)

    return build


def base_bytes() -> bytes:
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        write_base(f)
    return bio.getvalue()


def _png() -> bytes:
    import struct
    import zlib

    def chunk(typ: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + typ + payload + struct.pack(">I", zlib.crc32(typ + payload))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00", 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _zip() -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", compression=zipfile.ZIP_STORED) as z:
        for name, payload in [(".zgroup", b'{"zarr_format": 2}'), ("X/.zarray", b"{}")]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, payload)
    return bio.getvalue()


# ---- control
CASES["control_valid.h5ad"] = {
    "kind": "ok", "contains": "", "contains_any": [""],
    "what": "CONTROL: the valid 6 x 4 base file every other case is derived from (csr X, obs with int64 + "
            "categorical column, var with string column, obsm/varm/obsp/layers/uns). Must open cleanly.",
    "build": h5case(lambda f: None),
}

# ---- not a (complete) HDF5 file
case("truncated_half.h5ad", "error", "truncated",
     "the valid base file cut to its first half (HDF5 superblock intact, end-of-file address beyond EOF)",
     "hdf5", "eof", "end of file")(bytes_case(base_bytes()[: len(base_bytes()) // 2]))
case("not_hdf5_text.h5ad", "error", "hdf5", "a plain UTF-8 text file with an .h5ad name",
     "not an hdf5", "signature", "format")(bytes_case(b"cell,gene,count\ncell_0,GENE0,1\n"))
case("not_hdf5_png.h5ad", "error", "hdf5", "a 1x1 PNG image (PNG signature) with an .h5ad name",
     "not an hdf5", "signature", "format")(bytes_case(_png()))
case("not_hdf5_zip.h5ad", "error", "hdf5", "a zip archive (zipped zarr-like store) with an .h5ad name",
     "not an hdf5", "signature", "format", "zip")(bytes_case(_zip()))
case("zero_length.h5ad", "error", "empty", "a zero-byte file",
     "zero-length", "0 bytes", "hdf5")(bytes_case(b""))
@case("no_groups.h5ad", "error", "obs",
      "a valid HDF5 file with an empty root group: no X, obs, var or anything else, no root attributes",
      "anndata", "empty", "missing")
def _no_groups(path: Path) -> None:
    with h5py.File(path, "w"):
        pass

# ---- shape disagreements
case("x_shape_attr_mismatch.h5ad", "error", "shape",
     "csr X has shape attr (7, 4) while obs has 6 rows (indptr length 7 matches 6 rows)",
     "obs", "rows")(h5case(lambda f: f["X"].attrs.__setitem__("shape", np.array([7, 4], dtype=np.int64))))
case("x_dense_wrong_shape.h5ad", "error", "shape",
     "dense X is (6, 5) while var has 4 rows",
     "var", "columns")(h5case(lambda f: (replace(f, "X"), w_array(f, "X", np.ones((N_OBS, 5), np.float32)))))
case("x_not_2d.h5ad", "error", "shape",
     "dense X is 1-D (24,) instead of (6, 4)",
     "dimension", "2-d", "2d", "ndim")(h5case(lambda f: (replace(f, "X"), w_array(f, "X", x_dense().ravel()))))
case("x_csr_shape_attr_missing.h5ad", "error", "shape",
     "csr X group has no 'shape' attribute")(h5case(lambda f: f["X"].attrs.__delitem__("shape")))

# ---- CSR/CSC structure
case("csr_indptr_not_starting_at_zero.h5ad", "error", "indptr",
     "indptr = [1, 2, 3, 3, 5, 7, 8]: first entry must be 0")(
    h5case(lambda f: new_x_csr(f, indptr=np.array([1, 2, 3, 3, 5, 7, 8], np.int32))))
case("csr_indptr_decreasing.h5ad", "error", "indptr",
     "indptr = [0, 2, 3, 1, 5, 7, 8]: not monotonically non-decreasing", "decreas", "monoton")(
    h5case(lambda f: new_x_csr(f, indptr=np.array([0, 2, 3, 1, 5, 7, 8], np.int32))))
case("csr_indptr_last_ne_nnz.h5ad", "error", "indptr",
     "indptr[-1] = 7 but data/indices have 8 entries", "nnz")(
    h5case(lambda f: new_x_csr(f, indptr=np.array([0, 2, 3, 3, 5, 7, 7], np.int32))))
case("csr_indptr_wrong_length.h5ad", "error", "indptr",
     "indptr has 6 entries for 6 rows (needs n_obs + 1 = 7)", "length")(
    h5case(lambda f: new_x_csr(f, indptr=np.array([0, 2, 3, 3, 5, 8], np.int32))))
case("csr_indptr_missing.h5ad", "error", "indptr",
     "csr X group has data and indices but no indptr dataset", "missing")(
    h5case(lambda f: f["X"].__delitem__("indptr")))
case("csr_indptr_float_dtype.h5ad", "error", "indptr",
     "indptr stored as float64 instead of an integer type", "dtype", "integer")(
    h5case(lambda f: new_x_csr(f, indptr=X_INDPTR.astype(np.float64))))
case("csr_indices_out_of_bounds.h5ad", "error", "indices",
     "a column index is 4 (= n_vars) in row 4", "out of bounds", "out of range", "bounds")(
    h5case(lambda f: new_x_csr(f, indices=np.array([0, 2, 3, 0, 1, 4, 3, 0], np.int32))))
case("csr_indices_negative.h5ad", "error", "indices",
     "a column index is -1 (indices stored as signed int32)", "negative", "out of bounds", "out of range")(
    h5case(lambda f: new_x_csr(f, indices=np.array([0, 2, 3, 0, 1, -1, 3, 0], np.int32))))
case("csr_data_indices_length_mismatch.h5ad", "error", "indices",
     "data has 7 entries, indices 8 (indptr[-1] = 8)", "data", "length", "mismatch")(
    h5case(lambda f: new_x_csr(f, data=X_DATA[:7])))
case("csc_indices_out_of_bounds.h5ad", "error", "indices",
     "X is csc_matrix (6 x 4); a row index is 6 (= n_obs)", "out of bounds", "out of range", "bounds")(
    h5case(lambda f: new_x_csr(
        f,
        data=np.array([1, 4, 8, 5, 6, 2, 3, 7], np.float32),
        indices=np.array([0, 3, 6, 3, 4, 0, 1, 4], np.int32),
        indptr=np.array([0, 3, 5, 6, 8], np.int32),
        fmt="csc")))

# ---- encodings
case("x_unknown_encoding_type.h5ad", "error", "encoding",
     "X group has encoding-type 'zarr_matrix' (not an anndata encoding)", "zarr_matrix", "unsupported", "unknown")(
    h5case(lambda f: f["X"].attrs.__setitem__("encoding-type", "zarr_matrix")))
case("csr_unknown_encoding_version.h5ad", "error", "version",
     "X csr_matrix with encoding-version '9.9.9'", "9.9.9", "encoding")(
    h5case(lambda f: f["X"].attrs.__setitem__("encoding-version", "9.9.9")))


def _str_col_numeric(f):
    del f["var"]["gene_ids"]
    ds = f["var"].create_dataset("gene_ids", data=np.arange(N_VARS, dtype=np.int64))
    _enc(ds, "string-array", "0.2.0")


case("string_array_numeric_dtype.h5ad", "error", "string",
     "var['gene_ids'] has encoding-type string-array but is stored as int64", "gene_ids", "dtype")(
    h5case(_str_col_numeric))


def _x_strings(f):
    replace(f, "X")
    ds = f.create_dataset("X", data=np.array([["a"] * N_VARS] * N_OBS, dtype=object), dtype=STR)
    _enc(ds, "array", "0.2.0")


case("x_string_dtype.h5ad", "error", "dtype",
     "dense X (array encoding) stored as variable-length strings", "numeric", "string")(h5case(_x_strings))

# ---- obs / var groups
case("missing_obs_group.h5ad", "error", "obs",
     "no /obs group (everything else valid)", "missing")(h5case(lambda f: None, skip=frozenset({"obs"})))
case("missing_var_group.h5ad", "error", "var",
     "no /var group (everything else valid)", "missing")(h5case(lambda f: None, skip=frozenset({"var"})))


def _obs_col_len(f):
    del f["obs"]["n_genes"]
    w_array(f["obs"], "n_genes", np.array([2, 1, 0, 2, 2], dtype=np.int64))


case("obs_column_wrong_length.h5ad", "error", "n_genes",
     "obs['n_genes'] has 5 values for 6 cells", "length", "rows")(h5case(_obs_col_len))
case("obs_index_missing.h5ad", "error", "index",
     "obs has _index attr '_index' but no '_index' dataset", "_index", "missing")(
    h5case(lambda f: f["obs"].__delitem__("_index")))
case("obs_column_order_lists_missing_column.h5ad", "error", "ghost",
     "obs column-order lists 'ghost', which has no dataset", "missing", "column")(
    h5case(lambda f: f["obs"].attrs.__setitem__(
        "column-order", np.array(["n_genes", "cell_type", "ghost"], dtype=object))))


def _dup_obs(f):
    del f["obs"]["_index"]
    w_str_array(f["obs"], "_index", ["cell_0", "cell_1", "cell_2", "cell_1", "cell_4", "cell_5"])


case("duplicate_obs_names.h5ad", "warn", "duplicate",
     "obs_names contain 'cell_1' twice (anndata reads it with a 'not unique' UserWarning); cellforge must "
     "flag it and refuse operations that need unique names", "not unique", "unique")(h5case(_dup_obs))

# ---- values
case("x_contains_nan.h5ad", "warn", "nan",
     "csr X data contains NaN (2 of 8 stored values); must be reported, not crash", "non-finite", "not finite")(
    h5case(lambda f: new_x_csr(f, data=np.array([1, np.nan, 3, 4, 5, np.nan, 7, 8], np.float32))))


def _dense_inf(f):
    x = x_dense()
    x[0, 1], x[5, 3] = np.inf, -np.inf
    replace(f, "X")
    w_array(f, "X", x)


case("x_contains_inf.h5ad", "warn", "inf",
     "dense X contains +inf and -inf; must be reported, not crash", "non-finite", "not finite", "infinite")(
    h5case(_dense_inf))

# ---- categoricals


def _cat(codes, categories=("B", "NK", "T"), with_categories=True):
    def mutate(f):
        del f["obs"]["cell_type"]
        g = w_categorical(f["obs"], "cell_type", codes, categories if with_categories else ["x"])
        if not with_categories:
            del g["categories"]

    return mutate


case("cat_codes_out_of_range.h5ad", "error", "code",
     "obs['cell_type'] codes contain 3 with only 3 categories (valid: -1..2)", "categor", "cell_type")(
    h5case(_cat([0, 1, 3, -1, 2, 1])))
case("cat_codes_below_minus_one.h5ad", "error", "code",
     "obs['cell_type'] codes contain -2 (only -1 means missing)", "categor", "cell_type")(
    h5case(_cat([0, 1, -2, -1, 2, 1])))
case("cat_missing_categories.h5ad", "error", "categories",
     "obs['cell_type'] categorical group has codes but no categories dataset", "missing", "cell_type")(
    h5case(_cat([0, 1, 0, -1, 2, 1], with_categories=False)))
case("cat_duplicate_categories.h5ad", "error", "duplicate",
     "obs['cell_type'] categories are ['B', 'NK', 'B'] (must be unique)", "unique", "categor")(
    h5case(_cat([0, 1, 0, -1, 2, 1], categories=("B", "NK", "B"))))


def _nullable_mask(f):
    g = f["obs"].create_group("n_umi")
    _enc(g, "nullable-integer", "0.1.0")
    w_array(g, "values", np.arange(N_OBS, dtype=np.int64))
    w_array(g, "mask", np.zeros(N_OBS - 2, dtype=bool))
    f["obs"].attrs["column-order"] = np.array(["n_genes", "cell_type", "n_umi"], dtype=object)


case("nullable_mask_length_mismatch.h5ad", "error", "mask",
     "obs['n_umi'] nullable-integer: values has 6 entries, mask 4", "length", "n_umi")(h5case(_nullable_mask))

# ---- aligned mappings


def _put(path: str, data):
    def mutate(f):
        grp, key = path.rsplit("/", 1)
        replace(f[grp], key)
        w_array(f[grp], key, data)

    return mutate


case("obsm_wrong_first_dim.h5ad", "error", "obsm",
     "obsm['X_pca'] is (5, 2) for 6 cells", "x_pca", "shape")(
    h5case(_put("obsm/X_pca", np.zeros((N_OBS - 1, 2), np.float32))))
case("varm_wrong_first_dim.h5ad", "error", "varm",
     "varm['PCs'] is (3, 2) for 4 genes", "pcs", "shape")(
    h5case(_put("varm/PCs", np.zeros((N_VARS - 1, 2), np.float64))))
case("obsp_not_square.h5ad", "error", "obsp",
     "obsp['distances'] is (6, 5); must be (n_obs, n_obs)", "distances", "shape")(
    h5case(_put("obsp/distances", np.zeros((N_OBS, N_OBS - 1), np.float64))))
case("layers_wrong_shape.h5ad", "error", "layers",
     "layers['counts'] is (6, 3); must equal X's shape (6, 4)", "counts", "shape")(
    h5case(_put("layers/counts", np.zeros((N_OBS, N_VARS - 1), np.int32))))


def _raw(n_obs_raw: int, n_var_index: int):
    def mutate(f):
        raw = f.create_group("raw")
        _enc(raw, "raw", "0.1.0")
        n_vars_raw = 5
        dense = np.arange(n_obs_raw * n_vars_raw, dtype=np.float32).reshape(n_obs_raw, n_vars_raw)
        indptr = np.arange(0, n_obs_raw * n_vars_raw + 1, n_vars_raw, dtype=np.int32)
        indices = np.tile(np.arange(n_vars_raw, dtype=np.int32), n_obs_raw)
        w_sparse(raw, "X", dense.ravel(), indices, indptr, (n_obs_raw, n_vars_raw))
        w_dataframe(raw, "var", [f"RAWGENE{j}" for j in range(n_var_index)], {})
        w_dict(raw, "varm")

    return mutate


case("raw_x_n_obs_mismatch.h5ad", "error", "raw",
     "raw/X is (5, 5) while the AnnData has 6 cells", "shape", "obs")(h5case(_raw(N_OBS - 1, 5)))
case("raw_var_length_mismatch.h5ad", "error", "raw",
     "raw/X has 5 columns but raw/var has 7 rows", "var", "shape")(h5case(_raw(N_OBS, 7)))


# ---- more structure and encodings (added for the reliability corpus)


def _obsp_csr_oob(f):
    replace(f["obsp"], "distances")
    w_sparse(f["obsp"], "distances", np.ones(3, np.float32), np.array([1, 6, 2], np.int32),
             np.array([0, 1, 2, 3, 3, 3, 3], np.int32), (N_OBS, N_OBS))


case("obsp_csr_index_out_of_bounds.h5ad", "error", "distances",
     "obsp['distances'] is a 6 x 6 csr_matrix with a column index of 6", "indices", "bounds", "obsp")(
    h5case(_obsp_csr_oob))


def _codes_float(f):
    g = f["obs"]["cell_type"]
    del g["codes"]
    w_array(g, "codes", np.array([0, 1, 0, -1, 2, 1], dtype=np.float64))


case("cat_codes_float_dtype.h5ad", "error", "codes",
     "obs['cell_type'] categorical codes stored as float64 (must be integers)", "integer", "dtype", "cell_type")(
    h5case(_codes_float))


def _var_col_short(f):
    del f["var"]["gene_ids"]
    w_str_array(f["var"], "gene_ids", [f"ENSG{j:05d}" for j in range(N_VARS - 1)])


case("string_array_wrong_length.h5ad", "error", "gene_ids",
     "var['gene_ids'] has 3 strings for 4 genes", "length", "rows", "var")(h5case(_var_col_short))


def _nullable_no_mask(f):
    g = f["obs"].create_group("n_umi")
    _enc(g, "nullable-integer", "0.1.0")
    w_array(g, "values", np.arange(N_OBS, dtype=np.int64))
    f["obs"].attrs["column-order"] = np.array(["n_genes", "cell_type", "n_umi"], dtype=object)


case("nullable_missing_mask.h5ad", "error", "mask",
     "obs['n_umi'] nullable-integer group has values but no mask", "n_umi", "missing")(h5case(_nullable_no_mask))


def _csr_data_strings(f):
    g = new_x_csr(f)
    del g["data"]
    g.create_dataset("data", data=np.array([str(v) for v in X_DATA], dtype=object), dtype=STR)


case("csr_data_string_dtype.h5ad", "error", "data",
     "csr X data holds strings instead of numbers", "dtype", "string", "numeric")(h5case(_csr_data_strings))

case("truncated_header.h5ad", "error", "hdf5",
     "only the first 64 bytes of the valid base file (inside the superblock)", "truncated", "signature", "eof")(
    bytes_case(base_bytes()[:64]))


def _indptr_huge(f):
    new_x_csr(f, indptr=np.array([0, 2, 3, 3, 5, 7, 2**40], dtype=np.int64))


case("csr_indptr_huge_value.h5ad", "error", "indptr",
     "indptr[-1] = 2**40 (a corrupt count that would make a reader allocate a terabyte)", "nnz", "length")(
    h5case(_indptr_huge))


def _obs_index_short(f):
    del f["obs"]["_index"]
    w_str_array(f["obs"], "_index", OBS_NAMES[:-1])


case("obs_index_wrong_length.h5ad", "error", "obs",
     "obs index has 5 names while X and the obs columns have 6 rows", "shape", "rows", "length")(
    h5case(_obs_index_short))


def _raw_no_x(f):
    raw = f.create_group("raw")
    _enc(raw, "raw", "0.1.0")
    w_dataframe(raw, "var", VAR_NAMES, {})


case("raw_missing_x.h5ad", "error", "raw",
     "raw group with var but no X", "missing", "x")(h5case(_raw_no_x))


def _bad_utf8(f):
    del f["var"]["gene_ids"]
    vals = np.array([b"ENSG0", b"\xff\xfe", b"ENSG2", b"caf\xe9"], dtype=object)
    ds = f["var"].create_dataset("gene_ids", data=vals, dtype=STR)
    _enc(ds, "string-array", "0.2.0")


CASES["string_array_invalid_utf8.h5ad"] = {
    "kind": "ok", "contains": "", "contains_any": [""],
    "what": "var['gene_ids'] is declared UTF-8 but two strings hold invalid bytes (found by the fuzzer: "
            "the HDF5 library hands them over unchecked). Must open, with U+FFFD for the bad bytes, "
            "and convert without crashing.",
    "build": h5case(_bad_utf8),
}


# --------------------------------------------------------------------------- anndata's behaviour (for the README)


def anndata_behaviour(path: Path) -> str:
    try:
        import anndata as ad
    except Exception:  # pragma: no cover
        return "(anndata not installed)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            a = ad.read_h5ad(path)
            _ = a.X  # noqa: F841
            res = f"reads OK ({a.n_obs} x {a.n_vars})"
        except Exception as e:
            msg = str(e).split("\n")[0].replace(str(path.parent) + "/", "").replace(str(path.parent), "")
            res = f"raises {type(e).__name__}: {msg[:110]}"
    ws = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:70]}" for w in caught
                 if not issubclass(w.category, (DeprecationWarning,))})
    if ws:
        res += "; warns " + " | ".join(ws)
    return res


# --------------------------------------------------------------------------- main


def build_all(outdir: Path) -> dict[str, str]:
    outdir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, spec in CASES.items():
        path = outdir / name
        if path.exists():
            path.unlink()
        spec["build"](path)
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path)
    p.add_argument("--no-readme", action="store_true", help="do not (re)write README.md")
    args = p.parse_args(argv)
    outdir: Path = args.outdir

    problems: list[str] = []
    digests = build_all(outdir)
    # determinism: build again in a scratch folder and compare bytes
    import tempfile

    with tempfile.TemporaryDirectory() as td:
        again = build_all(Path(td))
    for name in CASES:
        if digests[name] != again[name]:
            problems.append(f"{name}: bytes differ between two builds")

    expected = {}
    rows = []
    for name, spec in CASES.items():
        path = outdir / name
        size = path.stat().st_size
        if size >= MAX_BYTES:
            problems.append(f"{name}: {size} bytes >= {MAX_BYTES}")
        expected[name] = {k: spec[k] for k in ("kind", "contains", "contains_any", "what")}
        behaviour = anndata_behaviour(path)
        if name == "control_valid.h5ad" and not behaviour.startswith("reads OK"):
            problems.append(f"{name}: control file not readable by anndata: {behaviour}")
        rows.append((name, spec, size, behaviour))
        print(f"{name:45s} {size:>6d} B  {spec['kind']:5s} '{spec['contains']}'  anndata: {behaviour}")

    with open(outdir / "expected.json", "w", encoding="utf-8") as fh:
        json.dump(expected, fh, indent=2, ensure_ascii=False)
        fh.write("\n")

    if not args.no_readme:
        write_readme(outdir, rows)

    n_err = sum(1 for s in CASES.values() if s["kind"] == "error")
    n_warn = sum(1 for s in CASES.values() if s["kind"] == "warn")
    print(f"{len(CASES)} files ({n_err} error, {n_warn} warn, 1 control) in {outdir}")
    if problems:
        for pr in problems:
            print("PROBLEM: " + pr, file=sys.stderr)
        return 1
    return 0


def write_readme(outdir: Path, rows) -> None:
    from importlib.metadata import version

    lines = [
        "# Broken .h5ad corpus",
        "",
        "Generated by `scripts/interop/make_broken.py` (do not edit by hand; re-run",
        "`python scripts/interop/make_broken.py tests/fixtures/broken`). Every file is small (< 50 KB) and",
        "byte-for-byte deterministic (written with h5py, no timestamps). All HDF5 cases derive from",
        "`control_valid.h5ad`: a valid 6 x 4 AnnData in the anndata 0.12 layout (csr float32 X,",
        "obs `n_genes` int64 + `cell_type` categorical, var `gene_ids` string-array, obsm `X_pca`,",
        "varm `PCs`, obsp `distances`, layers `counts` int32, uns `title`), with exactly one thing broken.",
        "",
        "`expected.json` maps each file name to:",
        "",
        "- `kind`: `error` (a good reader refuses the file), `warn` (it opens, and the reader reports",
        "  a warning/diagnostic), or `ok` (the control: opens cleanly);",
        "- `contains`: a lowercase substring the error/warning message should contain;",
        "- `contains_any`: acceptable alternatives (always includes `contains`); a test may accept any;",
        "- `what`: what is wrong with the file.",
        "",
        f"The last column is what anndata {version('anndata')} (`anndata.read_h5ad`, h5py {version('h5py')}) does;",
        "\"reads OK\" means anndata does not notice the problem.",
        "",
        "| file | kind | expected substring | what is wrong | anndata |",
        "|---|---|---|---|---|",
    ]
    for name, spec, size, behaviour in rows:
        alts = ", ".join(f"`{a}`" for a in spec["contains_any"] if a)
        b = behaviour.replace("|", "/").replace("`", "'")
        lines.append(f"| `{name}` | {spec['kind']} | {alts or '—'} | {spec['what']} | {b} |")
    lines.append("")
    (outdir / "README.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
