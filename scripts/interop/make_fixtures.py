#!/usr/bin/env python3
"""Write small, deterministic .h5ad interop fixtures with anndata.

Usage:
    make_fixtures.py OUTDIR [--shared-data DIR]

Every fixture is written by anndata itself (the reference implementation), so a
reader that loads all of them and a writer whose output ``verify_roundtrip.py``
accepts are interoperable with anndata for every encoding listed in
``OUTDIR/manifest.json``.

With ``--shared-data DIR`` the real datasets (pbmc68k_reduced.h5ad, ...) and the
anndata backward-compatibility archives are copied (not linked) into OUTDIR as
well and listed in the manifest.

Prints one line per fixture: ``<name>  <size> bytes  <what it covers>``.
Exit status: 0 on success, 1 if a requested shared file is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

SEED = 20240611

# Real files copied from --shared-data (relative path in DIR -> fixture name).
SHARED_FILES = {
    "pbmc68k_reduced.h5ad": (
        "real_pbmc68k_reduced.h5ad",
        "real data, pre-0.7 legacy layout: compound obs/var/obsm/varm datasets, "
        "raw.X/raw.var at root, h5sparse_format groups in uns, *_categories in uns, "
        "fixed-length byte strings, structured arrays in uns",
    ),
    "symphony_pbmcs_small.h5ad": (
        "real_symphony_pbmcs_small.h5ad",
        "real data, modern encoding: float32 CSR X, CSR layer, categorical obs, int32 obs columns",
    ),
    "harmony_pbmc_stim.h5ad": (
        "real_harmony_pbmc_stim.h5ad",
        "real data, modern encoding: 2000 x 9015 float32 CSR counts, categorical obs",
    ),
    "scmap_yan.h5ad": (
        "real_scmap_yan.h5ad",
        "real data, modern encoding: 90 x 20214 float32 CSR (54% dense), categorical obs",
    ),
    "anndata-archives/adata-v0.7.0.h5ad": (
        "archive_adata-v0.7.0.h5ad",
        "anndata 0.7.0 archive: dataframe 0.1.0 (__categories + object-reference attrs), "
        "un-encoded dict groups, legacy rec-array in uns, dataframes in obsm/varm",
    ),
    "anndata-archives/adata-v0.7.8.h5ad": (
        "archive_adata-v0.7.8.h5ad",
        "anndata 0.7.8 archive: as 0.7.0 plus un-encoded nested dict and 0-d scalars in uns",
    ),
    "anndata-archives/adata-v0.11.4.h5ad": (
        "archive_adata-v0.11.4.h5ad",
        "anndata 0.11.4 archive: no X at all, empty obs/var (column-order is an empty float array)",
    ),
}


# --------------------------------------------------------------------------- helpers


def rng_for(name: str) -> np.random.Generator:
    """A generator seeded from the global seed and the fixture name (order-independent)."""
    return np.random.default_rng([SEED, *name.encode()])


def names(prefix: str, n: int) -> pd.Index:
    return pd.Index([f"{prefix}{i:04d}" for i in range(n)])


def plain_frames(n_obs: int, n_vars: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.DataFrame(index=names("cell_", n_obs)),
        pd.DataFrame(index=names("gene_", n_vars)),
    )


def random_csr(
    rng: np.random.Generator, shape: tuple[int, int], density: float, dtype
) -> sparse.csr_matrix:
    n_obs, n_vars = shape
    mask = rng.random(shape) < density
    values = rng.integers(1, 50, size=shape) if np.dtype(dtype).kind in "iu" else rng.random(shape) * 10 + 0.5
    dense = np.where(mask, values, 0).astype(dtype)
    m = sparse.csr_matrix(dense)
    m.sort_indices()
    return m


def counts(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.poisson(2.0, size=shape).astype(dtype)


def typed_columns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """One numpy column per numeric dtype, with extreme values in the first rows."""
    cols: dict[str, np.ndarray] = {}
    for dt in ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]:
        info = np.iinfo(dt)
        v = rng.integers(max(info.min, -1000), min(info.max, 1000), size=n, endpoint=True).astype(dt)
        v[0], v[1] = info.min, info.max
        cols[dt] = v
    for dt in ["float32", "float64"]:
        v = rng.normal(size=n).astype(dt)
        v[0] = np.nan
        v[1] = np.finfo(dt).max
        v[2] = -0.0
        v[3] = np.inf
        cols[dt] = v
    b = rng.random(n) < 0.5
    b[0], b[1] = True, False
    cols["bool"] = b
    return cols


# --------------------------------------------------------------------------- fixtures
# Each builder returns (AnnData, write-kwargs, description).

FixtureBuilder = Callable[[str], tuple[ad.AnnData, dict, str]]
FIXTURES: dict[str, FixtureBuilder] = {}


def fixture(name: str):
    def deco(func: FixtureBuilder) -> FixtureBuilder:
        FIXTURES[name] = func
        return func

    return deco


def _dense_x(dtype: str, desc: str):
    def build(name: str):
        rng = rng_for(name)
        n_obs, n_vars = 12, 7
        if np.dtype(dtype).kind == "f":
            x = (rng.normal(size=(n_obs, n_vars)) * 3).astype(dtype)
            x[0, 0] = 0.0
            x[1, 1] = -0.0
        else:
            x = counts(rng, (n_obs, n_vars), dtype)
            x[0, 0] = np.iinfo(dtype).max
        obs, var = plain_frames(n_obs, n_vars)
        return ad.AnnData(x, obs=obs, var=var), {}, desc

    return build


for _dt, _desc in [
    ("float32", "X dense float32 (array encoding), 12 x 7"),
    ("float64", "X dense float64 (array encoding), 12 x 7"),
    ("int32", "X dense int32 raw counts incl. INT32_MAX"),
    ("int64", "X dense int64 raw counts incl. INT64_MAX"),
]:
    fixture(f"x_dense_{_dt}")(_dense_x(_dt, _desc))


def _sparse_x(fmt: str, dtype: str, desc: str, density: float = 0.3):
    def build(name: str):
        rng = rng_for(name)
        n_obs, n_vars = 15, 9
        m = random_csr(rng, (n_obs, n_vars), density, dtype)
        if fmt == "csc":
            m = m.tocsc()
            m.sort_indices()
        obs, var = plain_frames(n_obs, n_vars)
        return ad.AnnData(m, obs=obs, var=var), {}, desc

    return build


for _fmt, _dt, _desc in [
    ("csr", "float32", "X csr_matrix float32 data, int32 indptr/indices"),
    ("csr", "float64", "X csr_matrix float64 data"),
    ("csr", "int32", "X csr_matrix with integer (int32) data"),
    ("csr", "int64", "X csr_matrix with integer (int64) data"),
    ("csc", "float32", "X csc_matrix float32 data (column-compressed)"),
    ("csc", "int64", "X csc_matrix with integer (int64) data"),
]:
    fixture(f"x_{_fmt}_{_dt}")(_sparse_x(_fmt, _dt, _desc))


@fixture("x_csr_empty_rows")
def _(name):
    rng = rng_for(name)
    m = random_csr(rng, (10, 8), 0.4, "float32").tolil()
    for r in (0, 3, 4, 9):  # first, consecutive and last rows empty
        m[r, :] = 0
    m = m.tocsr()
    m.eliminate_zeros()
    obs, var = plain_frames(10, 8)
    return (
        ad.AnnData(m, obs=obs, var=var),
        {},
        "X csr with all-zero rows (first, two consecutive, last): repeated indptr values",
    )


@fixture("x_csr_nnz0")
def _(name):
    m = sparse.csr_matrix((6, 4), dtype=np.float32)
    obs, var = plain_frames(6, 4)
    return ad.AnnData(m, obs=obs, var=var), {}, "X csr with nnz = 0 (zero-length data/indices, indptr all 0)"


@fixture("x_csr_zero_obs")
def _(name):
    m = sparse.csr_matrix((0, 5), dtype=np.float32)
    obs, var = plain_frames(0, 5)
    return ad.AnnData(m, obs=obs, var=var), {}, "0 cells x 5 genes: zero-length obs index, indptr = [0]"


@fixture("x_dense_zero_vars")
def _(name):
    x = np.zeros((4, 0), dtype=np.float32)
    obs, var = plain_frames(4, 0)
    return ad.AnnData(x, obs=obs, var=var), {}, "4 cells x 0 genes: dense X of shape (4, 0), empty var index"


@fixture("x_csr_min_index_dtype")
def _(name):
    rng = rng_for(name)
    m = random_csr(rng, (14, 300), 0.05, "float32")
    obs, var = plain_frames(14, 300)
    adata = ad.AnnData(m, obs=obs, var=var)
    return (
        adata,
        {"_settings": {"write_csr_csc_indices_with_min_possible_dtype": True}},
        "X csr whose indices are stored as uint16 (anndata setting "
        "write_csr_csc_indices_with_min_possible_dtype=True): unsigned index dtype",
    )


@fixture("x_absent_shape")
def _(name):
    obs, var = plain_frames(10, 6)
    return ad.AnnData(obs=obs, var=var), {}, "no X dataset; shape (10, 6) only from obs/var indices"


@fixture("x_absent_with_annotations")
def _(name):
    rng = rng_for(name)
    obs, var = plain_frames(8, 5)
    obs["score"] = rng.normal(size=8)
    obs["group"] = pd.Categorical(rng.choice(["a", "b"], size=8))
    var["highly_variable"] = rng.random(5) < 0.5
    adata = ad.AnnData(obs=obs, var=var)
    adata.obsm["X_pca"] = rng.normal(size=(8, 3)).astype(np.float32)
    adata.layers["counts"] = sparse.csr_matrix(counts(rng, (8, 5), np.float32))
    adata.uns["note"] = "no X but layers/obsm present"
    return adata, {}, "no X, but obs/var columns, obsm and a csr layer (shape from obs/var)"


@fixture("annot_numeric_dtypes")
def _(name):
    rng = rng_for(name)
    n_obs, n_vars = 11, 9
    obs = pd.DataFrame(typed_columns(rng, n_obs), index=names("cell_", n_obs))
    obs.index.name = "barcode"
    var = pd.DataFrame(typed_columns(rng, n_vars), index=names("gene_", n_vars))
    var.index.name = "gene_symbol"
    x = counts(rng, (n_obs, n_vars), np.float32)
    return (
        ad.AnnData(x, obs=obs, var=var),
        {},
        "obs/var with custom index names (barcode / gene_symbol, not _index); one column per "
        "int8..int64, uint8..uint64 (incl. min/max), float32/float64 (incl. NaN, max, -0.0, inf), bool",
    )


@fixture("annot_strings")
def _(name):
    rng = rng_for(name)
    n_obs, n_vars = 8, 6
    obs = pd.DataFrame(index=names("cell_", n_obs))
    # duplicated values: would be turned into categoricals unless
    # convert_strings_to_categoricals=False (used below)
    obs["sample"] = np.array(["s1", "s1", "s2", "s2", "s1", "s3", "s3", "s1"], dtype=object)
    obs["note"] = np.array(["", "ok", "", "naïve T", "CD4⁺", "🧬 cell", "x" * 300, "tab\tnew\nline"], dtype=object)
    obs["unique_str"] = np.array([f"u{i}" for i in range(n_obs)], dtype=object)
    var = pd.DataFrame(index=names("gene_", n_vars))
    var["symbol"] = np.array(["CD4", "CD8A", "", "MT-CO1", "CD4", "Ω-gene"], dtype=object)
    x = rng.random((n_obs, n_vars)).astype(np.float32)
    return (
        ad.AnnData(x, obs=obs, var=var),
        {"convert_strings_to_categoricals": False},
        "object string columns (string-array encoding, vlen UTF-8) incl. empty strings, duplicates, "
        "unicode, emoji, a 300-char string, tab/newline",
    )


@fixture("annot_categoricals")
def _(name):
    rng = rng_for(name)
    n_obs, n_vars = 12, 5
    obs = pd.DataFrame(index=names("cell_", n_obs))
    labels = rng.choice(["T cell", "B cell", "NK"], size=n_obs).astype(object)
    labels[[2, 7]] = np.nan
    obs["cell_type"] = pd.Categorical(labels, categories=["B cell", "NK", "T cell"])
    obs["stage"] = pd.Categorical(
        rng.choice(["early", "mid", "late"], size=n_obs), categories=["early", "mid", "late"], ordered=True
    )
    obs["cluster_int"] = pd.Categorical(rng.choice([3, 10, 42], size=n_obs))
    obs["dose_float"] = pd.Categorical(rng.choice([0.5, 1.0, 2.5], size=n_obs))
    obs["with_unused"] = pd.Categorical(
        rng.choice(["x", "y"], size=n_obs), categories=["x", "y", "never_used"]
    )
    obs["all_missing"] = pd.Categorical([np.nan] * n_obs, categories=["only"])
    obs["unicode_cat"] = pd.Categorical(rng.choice(["naïve T", "CD4⁺", "🧬", ""], size=n_obs))
    var = pd.DataFrame(index=names("gene_", n_vars))
    var["chrom"] = pd.Categorical(["chr1", "chr2", "chr1", "chrX", "chr2"])
    var["strand_ordered"] = pd.Categorical(["-", "+", "+", "-", "+"], categories=["+", "-"], ordered=True)
    x = rng.random((n_obs, n_vars)).astype(np.float32)
    return (
        ad.AnnData(x, obs=obs, var=var),
        {},
        "categoricals: string categories with NaN (code -1), ordered=True and False, int64 and float64 "
        "categories, an unused category, all-missing column, unicode/empty-string categories; var categoricals",
    )


@fixture("annot_many_categories")
def _(name):
    rng = rng_for(name)
    n_obs = 300
    obs = pd.DataFrame(index=names("cell_", n_obs))
    obs["barcode_cat"] = pd.Categorical([f"bc{i:03d}" for i in rng.permutation(n_obs)])
    obs["small"] = pd.Categorical(rng.choice(["a", "b"], size=n_obs))
    var = pd.DataFrame(index=names("gene_", 3))
    x = sparse.csr_matrix(counts(rng, (n_obs, 3), np.float32))
    return (
        ad.AnnData(x, obs=obs, var=var),
        {},
        "categorical with 300 categories: codes stored as int16 (vs int8 for small ones)",
    )


@fixture("annot_nullable")
def _(name):
    n_obs, n_vars = 7, 4
    obs = pd.DataFrame(index=names("cell_", n_obs))
    obs["int64_na"] = pd.array([1, None, 3, -4, None, 2**40, 0], dtype="Int64")
    obs["int32_na"] = pd.array([None, 2, 3, 4, 5, 6, -(2**31)], dtype="Int32")
    obs["uint8_na"] = pd.array([255, 0, None, 1, 2, 3, 4], dtype="UInt8")
    obs["int16_no_na"] = pd.array([1, 2, 3, 4, 5, 6, 7], dtype="Int16")
    obs["bool_na"] = pd.array([True, False, None, True, None, False, True], dtype="boolean")
    obs["string_na"] = pd.array(["a", None, "", "naïve T", "🧬", None, "z"], dtype="string")
    var = pd.DataFrame(index=names("gene_", n_vars))
    var["int64_na"] = pd.array([None, 1, 2, None], dtype="Int64")
    var["bool_na"] = pd.array([None, True, False, True], dtype="boolean")
    x = np.arange(n_obs * n_vars, dtype=np.float32).reshape(n_obs, n_vars)
    return (
        ad.AnnData(x, obs=obs, var=var),
        {"_settings": {"allow_write_nullable_strings": True}, "convert_strings_to_categoricals": False},
        "pandas nullable columns: nullable-integer (Int64/Int32/UInt8/Int16, with pd.NA), "
        "nullable-boolean (with NA), nullable-string-array ('string' dtype with NA; written with "
        "anndata.settings.allow_write_nullable_strings=True): values + mask datasets",
    )


@fixture("annot_unicode_names")
def _(name):
    rng = rng_for(name)
    obs_names = ["naïve_T_1", "CD4⁺-2", "🧬-3", "ß-4", "细胞-5", "cell 6 (space)"]
    var_names = ["Ω", "µ-gene", "GENE-1", "gène"]
    obs = pd.DataFrame(index=pd.Index(obs_names))
    var = pd.DataFrame(index=pd.Index(var_names))
    x = rng.random((6, 4)).astype(np.float32)
    adata = ad.AnnData(x, obs=obs, var=var)
    adata.uns["titre_été"] = "naïve T ✓"
    return adata, {}, "unicode obs_names / var_names (accents, superscript, emoji, CJK, spaces), unicode uns key"


@fixture("obsm_varm")
def _(name):
    rng = rng_for(name)
    n_obs, n_vars = 10, 6
    obs, var = plain_frames(n_obs, n_vars)
    adata = ad.AnnData(rng.random((n_obs, n_vars)).astype(np.float32), obs=obs, var=var)
    adata.obsm["X_pca"] = rng.normal(size=(n_obs, 4)).astype(np.float32)
    adata.obsm["X_umap"] = rng.normal(size=(n_obs, 2))
    adata.obsm["int_codes"] = rng.integers(0, 9, size=(n_obs, 3)).astype(np.int32)
    adata.obsm["sparse_csr"] = random_csr(rng, (n_obs, 20), 0.2, "float64")
    adata.obsm["zero_width"] = np.zeros((n_obs, 0), dtype=np.float64)
    adata.obsm["df"] = pd.DataFrame(
        {
            "a": rng.normal(size=n_obs),
            "cat": pd.Categorical(rng.choice(["u", "v"], size=n_obs)),
            "n": np.arange(n_obs, dtype=np.int16),
        },
        index=obs.index,
    )
    adata.varm["PCs"] = rng.normal(size=(n_vars, 4))
    adata.varm["sparse_csr"] = random_csr(rng, (n_vars, 7), 0.3, "float32")
    adata.varm["df"] = pd.DataFrame({"loading": rng.normal(size=n_vars).astype(np.float32)}, index=var.index)
    return (
        adata,
        {},
        "obsm: dense float32/float64/int32, csr, zero-width (n, 0), DataFrame (numeric+categorical); "
        "varm: dense, csr, DataFrame",
    )


@fixture("obsp_varp")
def _(name):
    rng = rng_for(name)
    n_obs, n_vars = 9, 5
    obs, var = plain_frames(n_obs, n_vars)
    adata = ad.AnnData(rng.random((n_obs, n_vars)).astype(np.float32), obs=obs, var=var)
    conn = random_csr(rng, (n_obs, n_obs), 0.3, "float32")
    adata.obsp["connectivities"] = conn
    adata.obsp["distances"] = random_csr(rng, (n_obs, n_obs), 0.3, "float64")
    adata.obsp["dense_kernel"] = rng.random((n_obs, n_obs))
    adata.varp["corr"] = rng.random((n_vars, n_vars)).astype(np.float32)
    adata.varp["sparse_adj"] = random_csr(rng, (n_vars, n_vars), 0.4, "float64").tocsc()
    return adata, {}, "obsp: csr float32, csr float64, dense; varp: dense float32, csc float64"


@fixture("layers")
def _(name):
    rng = rng_for(name)
    n_obs, n_vars = 10, 7
    obs, var = plain_frames(n_obs, n_vars)
    raw_counts = counts(rng, (n_obs, n_vars), np.int64)
    adata = ad.AnnData(sparse.csr_matrix(np.log1p(raw_counts).astype(np.float32)), obs=obs, var=var)
    adata.layers["counts_int32_csr"] = sparse.csr_matrix(raw_counts.astype(np.int32))
    adata.layers["dense_f64"] = rng.normal(size=(n_obs, n_vars))
    adata.layers["dense_int64"] = raw_counts
    adata.layers["csc_f32"] = sparse.csc_matrix(raw_counts.astype(np.float32))
    adata.layers["dense_uint16"] = raw_counts.astype(np.uint16)
    return adata, {}, "layers: csr int32, csc float32, dense float64/int64/uint16 (X is csr float32)"


@fixture("raw")
def _(name):
    rng = rng_for(name)
    n_obs, n_raw_vars = 9, 12
    obs = pd.DataFrame(index=names("cell_", n_obs))
    obs["group"] = pd.Categorical(rng.choice(["g1", "g2"], size=n_obs))
    raw_var = pd.DataFrame(index=names("gene_", n_raw_vars))
    raw_var["mean"] = rng.random(n_raw_vars)
    raw_var["kind"] = pd.Categorical(rng.choice(["protein_coding", "lncRNA"], size=n_raw_vars))
    full = ad.AnnData(random_csr(rng, (n_obs, n_raw_vars), 0.4, "float32"), obs=obs, var=raw_var)
    full.varm["PCs"] = rng.normal(size=(n_raw_vars, 3))
    full.varm["sparse_loadings"] = random_csr(rng, (n_raw_vars, 4), 0.5, "float64")
    full.raw = full
    keep = [0, 2, 3, 5, 8, 11]
    adata = full[:, keep].copy()
    adata.X = rng.normal(size=adata.shape).astype(np.float32)  # "scaled" dense X
    adata.var["extra"] = np.arange(len(keep), dtype=np.int32)
    return (
        adata,
        {},
        "raw with more vars than X (12 vs 6): raw/X csr float32, raw/var with numeric + categorical "
        "columns, raw/varm dense + csr; X dense float32",
    )


@fixture("uns_everything")
def _(name):
    rng = rng_for(name)
    obs, var = plain_frames(5, 4)
    adata = ad.AnnData(rng.random((5, 4)).astype(np.float32), obs=obs, var=var)
    adata.uns = {
        "int_scalar": 42,
        "neg_int_scalar": -7,
        "float_scalar": 0.125,
        "bool_true": True,
        "bool_false": False,
        "np_float32_scalar": np.float32(1.5),
        "np_int8_scalar": np.int8(-3),
        "np_uint64_scalar": np.uint64(2**63 + 1),
        "str_scalar": "hello",
        "unicode_str": "naïve T / CD4⁺ / 🧬",
        "empty_str": "",
        "arr_int64_1d": np.arange(6, dtype=np.int64),
        "arr_float32_2d": rng.normal(size=(3, 4)).astype(np.float32),
        "arr_uint8_3d": rng.integers(0, 255, size=(2, 3, 2)).astype(np.uint8),
        "arr_bool": np.array([True, False, True]),
        "arr_len1_int": np.array([7]),
        "arr_empty_float": np.zeros((0,), dtype=np.float64),
        "arr_str": np.array(["a", "bb", "", "naïve"], dtype=object),
        "arr_str_len1": np.array(["only"], dtype=object),
        "arr_str_2d": np.array([["a", "b"], ["c", "d"]], dtype=object),
        "arr_float_nan_inf": np.array([np.nan, np.inf, -np.inf, 0.0, -0.0]),
        "empty_dict": {},
        "nested": {
            "level2": {
                "level3": {"leaf_int": 1, "leaf_str": "deep", "leaf_arr": np.array([1.0, 2.0])},
                "empty": {},
            },
            "params": {"n_neighbors": 15, "method": "umap", "use_rep": "X_pca"},
        },
        "colors": np.array(["#1f77b4", "#ff7f0e", "#2ca02c"], dtype=object),
        "df": pd.DataFrame(
            {"score": [0.1, 0.2, 0.3], "count": np.array([1, 2, 3], dtype=np.int32), "name": ["x", "y", "z"]},
            index=pd.Index(["r1", "r2", "r3"], name="row_id"),
        ),
        "sparse_csr": random_csr(rng, (4, 6), 0.3, "float64"),
        "sparse_csc": random_csr(rng, (3, 3), 0.5, "float32").tocsc(),
    }
    return (
        adata,
        {},
        "uns: int/float/bool scalars (numeric-scalar), np.float32/int8/uint64 scalars, string scalars "
        "(incl. unicode, empty), numeric 1-D/2-D/3-D arrays, bool array, length-1 and empty arrays, "
        "string arrays (1-D, length-1, 2-D), NaN/inf, empty dict, 3-level nested dicts, DataFrame "
        "(with index name and string column), csr and csc matrices",
    )


def _compressed(compression: str):
    def build(name: str):
        rng = rng_for("x_csr_compressed")  # same data for both compressions
        n_obs, n_vars = 40, 30
        m = random_csr(rng, (n_obs, n_vars), 0.2, "float32")
        obs, var = plain_frames(n_obs, n_vars)
        obs["batch"] = pd.Categorical(rng.choice(["b1", "b2", "b3"], size=n_obs))
        adata = ad.AnnData(m, obs=obs, var=var)
        adata.layers["dense"] = m.toarray()
        adata.uns["params"] = {"compression": compression}
        return (
            adata,
            {"compression": compression},
            f"{compression}-compressed (chunked) datasets: csr X, dense layer, obs columns, index",
        )

    return build


fixture("x_csr_gzip")(_compressed("gzip"))
fixture("x_csr_lzf")(_compressed("lzf"))


@fixture("large_csr_counts")
def _(name):
    rng = rng_for(name)
    n_obs, n_vars = 2000, 500
    nnz_per_row = rng.binomial(n_vars, 0.1, size=n_obs)
    nnz_per_row[[5, 1000]] = 0  # a couple of empty cells
    indptr = np.zeros(n_obs + 1, dtype=np.int32)
    np.cumsum(nnz_per_row, out=indptr[1:])
    indices = np.concatenate([np.sort(rng.choice(n_vars, size=k, replace=False)) for k in nnz_per_row]).astype(
        np.int32
    )
    data = (rng.geometric(0.3, size=indptr[-1])).astype(np.float32)  # integer counts >= 1
    m = sparse.csr_matrix((data, indices, indptr), shape=(n_obs, n_vars))
    obs = pd.DataFrame(index=pd.Index([f"AAAC{i:06d}-1" for i in range(n_obs)]))
    obs["cell_type"] = pd.Categorical(rng.choice(["T", "B", "NK", "Mono", "DC"], size=n_obs, p=[0.4, 0.2, 0.15, 0.2, 0.05]))
    obs["batch"] = pd.Categorical(np.repeat(["b1", "b2", "b3", "b4"], n_obs // 4))
    obs["n_counts"] = np.asarray(m.sum(axis=1)).ravel().astype(np.float32)
    var = pd.DataFrame(index=pd.Index([f"GENE{j:04d}" for j in range(n_vars)]))
    var["n_cells"] = np.diff(m.tocsc().indptr).astype(np.int64)
    return (
        ad.AnnData(m, obs=obs, var=var),
        {},
        "2000 x 500 csr, ~10% density (~100k nnz), integer counts stored as float32, categorical obs "
        "(cell_type, batch), two empty rows: exercises chunked row reads",
    )


# --------------------------------------------------------------------------- main


def write_fixture(adata: ad.AnnData, path: Path, kwargs: dict) -> None:
    kwargs = dict(kwargs)
    settings = kwargs.pop("_settings", {})
    with ad.settings.override(**settings):
        adata.write_h5ad(path, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path, help="output folder (created if missing)")
    p.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help="folder holding pbmc68k_reduced.h5ad, ... and anndata-archives/; copied into OUTDIR",
    )
    p.add_argument("--only", nargs="*", default=None, help="only build these fixture names (debugging)")
    args = p.parse_args(argv)

    outdir: Path = args.outdir
    outdir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict] = {}
    warnings.simplefilter("ignore", FutureWarning)

    for name, build in FIXTURES.items():
        if args.only is not None and name not in args.only:
            continue
        adata, kwargs, desc = build(name)
        fname = f"{name}.h5ad"
        path = outdir / fname
        write_fixture(adata, path, kwargs)
        size = path.stat().st_size
        manifest[fname] = {
            "source": "generated",
            "covers": desc,
            "shape": list(adata.shape),
            "write_kwargs": {k: v for k, v in kwargs.items()},
        }
        print(f"{fname:40s} {size:>9d} bytes  {desc}")

    missing = []
    if args.shared_data is not None:
        for rel, (fname, desc) in SHARED_FILES.items():
            src = args.shared_data / rel
            if not src.is_file():
                missing.append(str(src))
                continue
            dst = outdir / fname
            if dst.exists():
                dst.chmod(0o644)
            shutil.copyfile(src, dst)  # a real copy, not a link; drop read-only mode bits
            dst.chmod(0o644)
            manifest[fname] = {"source": f"shared-data:{rel}", "covers": desc}
            print(f"{fname:40s} {dst.stat().st_size:>9d} bytes  {desc}")

    with open(outdir / "manifest.json", "w", encoding="utf-8") as fh:
        json.dump({"seed": SEED, "anndata_version": _version("anndata"), "fixtures": manifest}, fh, indent=2,
                  ensure_ascii=False, sort_keys=False)
        fh.write("\n")
    print(f"manifest.json: {len(manifest)} fixtures")
    if missing:
        print("missing shared files: " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


if __name__ == "__main__":
    sys.exit(main())
