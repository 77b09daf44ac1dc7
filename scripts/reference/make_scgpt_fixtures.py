#!/usr/bin/env python3
"""Write the scGPT golden fixtures under ``tests/fixtures/scgpt/``.

Reference implementation: the released ``scgpt==0.2.4`` Python package on
PyTorch (CPU, fp32, ``use_fast_transformer=False`` i.e. scGPT's PyTorch
``nn.TransformerEncoder`` path), with the stand-ins from ``stubs/`` (see
README.md).  Run with the venv from ``setup.sh``::

    bash scripts/reference/setup.sh
    .venv-ref/bin/python scripts/reference/make_scgpt_fixtures.py

Options: ``--out DIR`` (default ``<repo>/tests/fixtures/scgpt``),
``--data FILE`` (``harmony_pbmc_stim.h5ad``; default
``$CELLFORGE_SHARED_DATA/harmony_pbmc_stim.h5ad``, else
``<repo>/../shared/data/harmony_pbmc_stim.h5ad``).

Everything is seeded; the script re-loads every file it wrote and checks it
reproduces the recorded outputs (see ``verify_*``).  Layout and contract: see
README.md next to this script and ``tests/fixtures/scgpt/README.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import pickletools
import shutil
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scgpt_env  # noqa: E402
from fixture_dir import prepare_out_dir  # noqa: E402  (sets up stubs + imports scgpt)
from scgpt_env import (  # noqa: E402
    GeneVocab,
    MultiOmicTransformerModel,
    TransformerGenerator,
    TransformerModel,
    embed_data,
    scgpt,
)

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

REPO = scgpt_env.REPO
SEED = 20250611
B = 6
L = 40
# lengths incl. <cls>; rows 0 and 3 have no padding, the others differ.
ROW_LENGTHS = [40, 31, 22, 40, 13, 35]
NO_PAD_LENGTHS = [L] * B
SPECIALS = ["<pad>", "<cls>", "<eoc>"]
N_FAKE_GENES = 50
LEAVE_OUT_FRAC = 0.05
N_CASE_GENES = 100  # dataset genes drawn for the small model-case vocabularies

CLASSES = {
    "TransformerModel": TransformerModel,
    "TransformerGenerator": TransformerGenerator,
    "MultiOmicTransformerModel": MultiOmicTransformerModel,
}

CONTRACT_KEYS = [
    "ntoken", "d_model", "nhead", "d_hid", "nlayers", "nlayers_cls", "n_cls",
    "dropout", "pad_token", "pad_value", "do_mvc", "do_dab", "use_batch_labels",
    "num_batch_labels", "domain_spec_batchnorm", "input_emb_style", "n_input_bins",
    "cell_emb_style", "mvc_decoder_style", "ecs_threshold", "explicit_zero_prob",
    "use_fast_transformer", "pre_norm",
]
# TransformerModel defaults, used to fill contract keys a class does not take.
MODEL_DEFAULTS = dict(
    nlayers_cls=3, n_cls=1, dropout=0.5, pad_token="<pad>", pad_value=0,
    do_mvc=False, do_dab=False, use_batch_labels=False, num_batch_labels=None,
    domain_spec_batchnorm=False, input_emb_style="continuous", n_input_bins=None,
    cell_emb_style="cls", mvc_decoder_style="inner product", ecs_threshold=0.3,
    explicit_zero_prob=False, use_fast_transformer=False, pre_norm=False,
)


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# vocabularies
# --------------------------------------------------------------------------

def fake_gene_names(n: int, taken: set) -> List[str]:
    out = []
    i = 1
    while len(out) < n:
        name = f"CFFAKE{i}"
        if name not in taken:
            out.append(name)
        i += 1
    return out


def build_vocab(rng: np.random.Generator, data_genes: List[str]):
    """Shuffled dataset genes minus ~5 %, plus fake genes; specials last."""
    n_out = int(round(len(data_genes) * LEAVE_OUT_FRAC))
    out_idx = set(rng.choice(len(data_genes), size=n_out, replace=False).tolist())
    missing = [g for i, g in enumerate(data_genes) if i in out_idx]
    kept = [g for i, g in enumerate(data_genes) if i not in out_idx]
    tokens = kept + fake_gene_names(N_FAKE_GENES, set(data_genes))
    order = rng.permutation(len(tokens))
    tokens = [tokens[i] for i in order] + SPECIALS
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    return vocab, missing


def gene_token_ids(vocab: Dict[str, int]) -> np.ndarray:
    return np.array([i for t, i in vocab.items() if t not in SPECIALS], dtype=np.int64)


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

def _u(t: torch.Tensor, bound: float, g: torch.Generator) -> None:
    t.uniform_(-bound, bound, generator=g)


def randomize_(model: nn.Module, g: torch.Generator) -> None:
    """Overwrite every parameter and buffer (except num_batches_tracked)."""
    touched = set()
    with torch.no_grad():
        for mname, m in model.named_modules():
            pre = f"{mname}." if mname else ""
            if isinstance(m, nn.Linear):
                if mname.endswith("value_encoder.linear1"):
                    # scalar input (binned values 1..50, up to 512 after the
                    # clamp): keep w*x = O(1..40) and biases visible so that the
                    # clamp at 512 changes the output measurably.
                    _u(m.weight, 0.08, g)
                    if m.bias is not None:
                        _u(m.bias, 0.5, g)
                else:
                    _u(m.weight, 1.5 / math.sqrt(m.in_features), g)
                    if m.bias is not None:
                        _u(m.bias, 0.1, g)
                touched.add(pre + "weight")
                if m.bias is not None:
                    touched.add(pre + "bias")
            elif isinstance(m, nn.MultiheadAttention):
                assert m._qkv_same_embed_dim
                _u(m.in_proj_weight, 1.5 / math.sqrt(m.embed_dim), g)
                _u(m.in_proj_bias, 0.1, g)
                touched.update({pre + "in_proj_weight", pre + "in_proj_bias"})
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(1.0 + torch.empty_like(m.weight).uniform_(-0.3, 0.3, generator=g))
                _u(m.bias, 0.1, g)
                touched.update({pre + "weight", pre + "bias"})
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 1.0, generator=g)
                touched.add(pre + "weight")
            elif isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                touched.update({pre + "running_mean", pre + "running_var"})
                if m.affine:
                    m.weight.copy_(1.0 + torch.empty_like(m.weight).uniform_(-0.3, 0.3, generator=g))
                    _u(m.bias, 0.1, g)
                    touched.update({pre + "weight", pre + "bias"})
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4, generator=g)
                touched.add(pre + "weight")
    for k in model.state_dict():
        if k.endswith("num_batches_tracked"):
            continue
        assert k in touched, f"not randomised: {k}"


def rename_key(k: str, qkv_naming: str, module_prefix: bool) -> str:
    if qkv_naming == "Wqkv":
        k = k.replace("self_attn.in_proj_weight", "self_attn.Wqkv.weight")
        k = k.replace("self_attn.in_proj_bias", "self_attn.Wqkv.bias")
    elif qkv_naming == "_impl.Wqkv":
        k = k.replace("self_attn.in_proj_weight", "self_attn._impl.Wqkv.weight")
        k = k.replace("self_attn.in_proj_bias", "self_attn._impl.Wqkv.bias")
        k = k.replace("self_attn.out_proj.", "self_attn._impl.out_proj.")
    elif qkv_naming != "in_proj":
        raise ValueError(qkv_naming)
    return ("module." + k) if module_prefix else k


def unrename_key(k: str) -> str:
    if k.startswith("module."):
        k = k[len("module."):]
    k = k.replace("self_attn._impl.Wqkv.", "self_attn.in_proj_")
    k = k.replace("self_attn.Wqkv.", "self_attn.in_proj_")
    k = k.replace("self_attn._impl.out_proj.", "self_attn.out_proj.")
    return k


def export_state_dict(model, qkv_naming, module_prefix, drop_prefixes=(), extra=None):
    sd = OrderedDict()
    for k, v in model.state_dict().items():
        if any(k.startswith(p) for p in drop_prefixes):
            continue
        sd[rename_key(k, qkv_naming, module_prefix)] = v.detach().clone().contiguous()
        if extra and k.startswith("value_encoder.") and k.endswith("norm.bias"):
            # the released file stores flag_encoder next to the encoders
            for ek, ev in extra.items():
                sd[rename_key(ek, qkv_naming, module_prefix)] = ev.clone().contiguous()
    if extra:
        for ek in extra:
            assert rename_key(ek, qkv_naming, module_prefix) in sd, ek
    return sd


# --------------------------------------------------------------------------
# model cases
# --------------------------------------------------------------------------

def released_args(d, nhead, d_hid, nlayers, nlayers_cls, pad_value, mask_value,
                  input_emb_style, dropout=0.2):
    """args.json shaped like the released scGPT_human file."""
    return OrderedDict([
        ("data_source", "synthetic cellforge reference fixture"),
        ("save_dir", "save/cellforge-fixture"),
        ("load_model", None),
        ("n_hvg", None),
        ("valid_size_or_ratio", 0.003),
        ("dist_backend", "nccl"),
        ("grad_accu_steps", 1),
        ("pad_token", "<pad>"),
        ("input_style", "binned"),
        ("input_emb_style", input_emb_style),
        ("n_bins", 51),
        ("max_seq_len", 1200),
        ("training_tasks", "both"),
        ("dist_url", "tcp://127.0.0.1:23456"),
        ("mask_ratio", [0.25, 0.5, 0.75]),
        ("trunc_by_sample", True),
        ("vocab_path", "vocab.json"),
        ("rank", 0),
        ("batch_size", 32),
        ("eval_batch_size", 64),
        ("epochs", 6),
        ("lr", 0.0001),
        ("scheduler_interval", 100),
        ("scheduler_factor", 0.99),
        ("warmup_ratio_or_step", 10000.0),
        ("no_cls", True),
        ("no_cce", True),
        ("fp16", True),
        ("fast_transformer", True),
        ("nlayers", nlayers),
        ("nheads", nhead),
        ("embsize", d),
        ("d_hid", d_hid),
        ("dropout", dropout),
        ("n_layers_cls", nlayers_cls),
        ("log_interval", 9000),
        ("save_interval", 27000),
        ("mask_value", mask_value),
        ("pad_value", pad_value),
        ("USE_CLS", False),
        ("USE_CCE", False),
        ("MVC", True),
        ("USE_GENERATIVE_TRAINING", True),
        ("world_size", 16),
        ("distributed", True),
        ("local_rank", 0),
        ("gpu", 0),
    ])


def int_values(rng, lengths, lo=1, hi=50, cls_value=-2.0, pad_value=-2.0, with_cls=True):
    v = np.full((B, L), pad_value, dtype=np.float32)
    for b, n in enumerate(lengths):
        start = 1 if with_cls else 0
        v[b, start:n] = rng.integers(lo, hi + 1, size=n - start).astype(np.float32)
        if with_cls:
            v[b, 0] = cls_value
    return v


def make_src(rng, vocab, lengths, with_cls=True):
    pad_id, cls_id = vocab["<pad>"], vocab["<cls>"]
    ids = gene_token_ids(vocab)
    src = np.full((B, L), pad_id, dtype=np.int64)
    for b, n in enumerate(lengths):
        if with_cls:
            src[b, 0] = cls_id
            src[b, 1:n] = rng.choice(ids, size=n - 1, replace=False)
        else:
            src[b, :n] = rng.choice(ids, size=n, replace=False)
    return src


def to_np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    elif t.is_floating_point():
        t = t.to(torch.float32)
    elif t.dtype != torch.uint8:
        t = t.to(torch.int64)
    return np.ascontiguousarray(t.numpy())


def run_model(case: dict, model: nn.Module, inp: Dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Eval-mode forward of one case; returns the named outputs."""
    model.eval()
    out = OrderedDict()
    fk = case["forward_kwargs"]
    src, values, mask = inp["src"], inp["values"], inp["src_key_padding_mask"].bool()
    with torch.no_grad():
        if case["kind"] == "prenorm":
            return prenorm_forward(model, src, values, mask)
        if case["class"] == "TransformerGenerator":
            enc = model._encode(src, values, inp["pert_flags"], mask)
            res = model(src, values, inp["pert_flags"], mask, **fk)
            out["encoder_output"] = enc
            out["cell_emb"] = model._get_cell_emb_from_layer(enc, values)
        else:
            bl = inp.get("batch_labels")
            enc = model._encode(src, values, mask, bl)
            if case["class"] == "MultiOmicTransformerModel":
                res = model(src, values, mask, batch_labels=bl, mod_types=inp["mod_types"], **fk)
            else:
                res = model(src, values, mask, batch_labels=bl, **fk)
            out["encoder_output"] = enc
        for k, v in res.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                out[k] = v
        out["gene_embs"] = model.encoder(torch.arange(model.encoder.embedding.num_embeddings))
    return out


def prenorm_forward(model: TransformerModel, src, values, mask):
    """The flash layer's norm_scheme="pre" (SCGPT_SPEC 1.7) written out with
    the scgpt model's own modules: x = LN1(x); x = x + MHA(x); x = LN2(x);
    x = x + FFN(x).  No final LayerNorm."""
    out = OrderedDict()
    x = model.encoder(src) + model.value_encoder(values)
    for layer in model.transformer_encoder.layers:
        x = layer.norm1(x)
        a = layer.self_attn(x, x, x, key_padding_mask=mask, need_weights=False)[0]
        x = x + a
        x = layer.norm2(x)
        x = x + layer.linear2(F.relu(layer.linear1(x)))
    out["encoder_output"] = x
    out["cell_emb"] = x[:, 0, :]
    out["mlm_output"] = model.decoder(x)["pred"]
    out["gene_embs"] = model.encoder(torch.arange(model.encoder.embedding.num_embeddings))
    return out


def _heads(x: torch.Tensor, nhead: int) -> torch.Tensor:
    b, s, d = x.shape
    return x.view(b, s, nhead, d // nhead).transpose(1, 2)  # b h s hd


def _attend(q, k, v, allowed: torch.Tensor, nhead: int) -> torch.Tensor:
    """q [b,lq,d], k/v [b,lk,d], allowed [b,lq,lk] bool -> context [b,lq,d]."""
    qh, kh, vh = _heads(q, nhead), _heads(k, nhead), _heads(v, nhead)
    hd = qh.shape[-1]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(~allowed[:, None, :, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    ctx = p @ vh  # b h lq hd
    b, h, lq, _ = ctx.shape
    return ctx.transpose(1, 2).reshape(b, lq, h * hd)


def generative_forward(model: TransformerModel, flag_weight: torch.Tensor, pcpt_src, pcpt_values, gen_src, pad_id):
    """Reference for the pcpt/gen attention of the pretraining branch
    (SCGPT_SPEC 1.17, FlashscGPTLayer / FlashscGPTMHA, post-norm)."""
    nhead = model.transformer_encoder.layers[0].self_attn.num_heads
    d = model.d_model
    pmask = pcpt_src.eq(pad_id)  # True = padding
    gmask = gen_src.eq(pad_id)
    xp = model.encoder(pcpt_src) + model.value_encoder(pcpt_values)
    xg = model.encoder(gen_src) + flag_weight[1].view(1, 1, -1)
    b, lp = pcpt_src.shape
    lg = gen_src.shape[1]
    allowed_p = (~pmask)[:, None, :].expand(b, lp, lp)
    eye = torch.eye(lg, dtype=torch.bool)
    allowed_g = torch.cat(
        [(~pmask)[:, None, :].expand(b, lg, lp), eye[None, :, :] & (~gmask)[:, None, :]], dim=2
    )
    for layer in model.transformer_encoder.layers:
        W, bias = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
        qkv_p = F.linear(xp, W, bias)
        qkv_g = F.linear(xg, W, bias)
        qp, kp, vp = qkv_p[..., :d], qkv_p[..., d:2 * d], qkv_p[..., 2 * d:]
        qg, kg, vg = qkv_g[..., :d], qkv_g[..., d:2 * d], qkv_g[..., 2 * d:]
        ctx_p = _attend(qp, kp, vp, allowed_p, nhead)
        ap = layer.self_attn.out_proj(ctx_p)
        # gen queries: all pcpt keys + own key; NO out_proj (upstream quirk)
        ag = _attend(qg, torch.cat([kp, kg], 1), torch.cat([vp, vg], 1), allowed_g, nhead)
        new = []
        for x, a in ((xp, ap), (xg, ag)):
            x = layer.norm1(x + a)
            x = layer.norm2(x + layer.linear2(F.relu(layer.linear1(x))))
            new.append(x)
        xp, xg = new
    out = OrderedDict()
    out["pcpt_output"] = xp
    out["gen_output"] = xg
    out["gen_mlm_output"] = model.decoder(xg)["pred"]
    out["pcpt_mlm_output"] = model.decoder(xp)["pred"]
    out["cell_emb"] = xp[:, 0, :]
    return out


def build_model(case: dict, vocab: Dict[str, int], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(case["ctor"])
    kwargs["ntoken"] = len(vocab)
    gv = GeneVocab.from_dict(vocab)
    cls = CLASSES[case["class"]]
    if case["class"] == "MultiOmicTransformerModel":
        kwargs["vocab_mod"] = case["vocab_mod"]
    return cls(vocab=gv, **kwargs)


def case_specs(harmony_genes: List[str]) -> List[dict]:
    base = dict(dropout=0.2, pad_token="<pad>", use_fast_transformer=False)
    cases = []
    cases.append(dict(
        name="embed_flash", kind="model", class_="TransformerModel",
        ctor=dict(d_model=64, nhead=4, d_hid=96, nlayers=3, nlayers_cls=3, n_cls=1,
                  pad_value=-2, do_mvc=True, do_dab=False, use_batch_labels=False,
                  domain_spec_batchnorm=False, input_emb_style="continuous",
                  cell_emb_style="cls", mvc_decoder_style="inner product",
                  explicit_zero_prob=False, pre_norm=False, **base),
        mask_value=-1, qkv_naming="Wqkv", module_prefix=False,
        drop_prefixes=("cls_decoder.",), add_flag_encoder=True,
        forward_kwargs=dict(CLS=False, CCE=False, MVC=True, ECS=False),
        lengths=ROW_LENGTHS, cls_value=-2.0, big_values=True,
        notes=["released-model configuration (scGPT_human-like): flash naming "
               "self_attn.Wqkv.* / self_attn.out_proj.*, no cls_decoder.* keys, extra "
               "random flag_encoder.weight [2,d] (ignored by TransformerModel 0.2.4)",
               "values: binned 1..50, plus 600 at [1,5], 1000 at [3,5], 5000 at [3,7] "
               "and 513 at [1,9] to exercise the value-encoder clamp at 512",
               "also used by tests/fixtures/scgpt/embed (embed_data) and the "
               "generative case"],
    ))
    cases.append(dict(
        name="finetune_dsbn", kind="model", class_="TransformerModel",
        ctor=dict(d_model=64, nhead=4, d_hid=48, nlayers=2, nlayers_cls=3, n_cls=5,
                  pad_value=-2, do_mvc=True, do_dab=True, use_batch_labels=True,
                  num_batch_labels=3, domain_spec_batchnorm="dsbn",
                  input_emb_style="continuous", cell_emb_style="cls",
                  mvc_decoder_style="inner product", explicit_zero_prob=True,
                  pre_norm=False, **base),
        mask_value=-1, qkv_naming="_impl.Wqkv", module_prefix=True,
        forward_kwargs=dict(CLS=True, CCE=False, MVC=True, ECS=False),
        lengths=ROW_LENGTHS, cls_value=0.0, mlm_mask=True,
        batch_labels=[1, 0, 2, 1, 2, 0],
        notes=["fine-tuning conventions: <cls> value 0, pad -2, ~15% of gene "
               "positions masked with -1",
               "DSBN (non-affine, eps 6.1e-5) uses batch_labels[0] (= 1) for the whole "
               "batch; batch_encoder uses each cell's own label",
               "keys: module. prefix + self_attn._impl.Wqkv.* / self_attn._impl.out_proj.*"],
    ))
    cases.append(dict(
        name="bn_inproj", kind="model", class_="TransformerModel",
        ctor=dict(d_model=64, nhead=8, d_hid=80, nlayers=2, nlayers_cls=3, n_cls=4,
                  pad_value=-2, do_mvc=True, do_dab=False, use_batch_labels=False,
                  domain_spec_batchnorm="batchnorm", input_emb_style="continuous",
                  cell_emb_style="avg-pool", mvc_decoder_style="inner product, detach",
                  explicit_zero_prob=False, pre_norm=False, **base),
        mask_value=-1, qkv_naming="in_proj", module_prefix=False,
        forward_kwargs=dict(CLS=True, CCE=False, MVC=True, ECS=False),
        lengths=NO_PAD_LENGTHS, cls_value=-2.0, batch_labels_passed=True,
        batch_labels=[0, 0, 0, 0, 0, 0],
        notes=["plain affine BatchNorm1d (eps 6.1e-5) with random running stats",
               "avg-pool cell embedding: the batch has NO padding",
               "scgpt 0.2.4 requires batch_labels whenever domain_spec_batchnorm is "
               "truthy (_check_batch_labels), so zeros are passed; plain BN ignores them",
               "head_dim 8 (d_model 64, nhead 8)"],
        no_padding=True,
    ))
    cases.append(dict(
        name="category_wpool", kind="model", class_="TransformerModel",
        ctor=dict(d_model=64, nhead=4, d_hid=48, nlayers=2, nlayers_cls=2, n_cls=3,
                  pad_value=51, do_mvc=False, do_dab=False, use_batch_labels=False,
                  domain_spec_batchnorm=False, input_emb_style="category",
                  n_input_bins=53, cell_emb_style="w-pool",
                  explicit_zero_prob=False, pre_norm=False, **base),
        mask_value=52, qkv_naming="Wqkv", module_prefix=False,
        forward_kwargs=dict(CLS=True, CCE=False, MVC=False, ECS=False),
        lengths=NO_PAD_LENGTHS, cls_value=51.0, category=True,
        notes=["category value embedding: n_bins 51 -> pad_value 51, mask_value 52, "
               "n_input_bins 53; values are integers 0..52, <cls> value 51",
               "w-pool: forward passes the raw values as weights (sum_l h*w then L2 "
               "normalise) over ALL positions, so the batch has NO padding (padded "
               "rows of the PyTorch path are implementation-defined)",
               "nlayers_cls 2"],
        no_padding=True,
    ))
    cases.append(dict(
        name="scaling", kind="model", class_="TransformerModel",
        ctor=dict(d_model=64, nhead=4, d_hid=40, nlayers=2, nlayers_cls=1, n_cls=1,
                  pad_value=-2, do_mvc=True, do_dab=False, use_batch_labels=False,
                  domain_spec_batchnorm=False, input_emb_style="scaling",
                  cell_emb_style="cls", mvc_decoder_style="inner product",
                  explicit_zero_prob=True, pre_norm=False, **base),
        mask_value=-1, qkv_naming="Wqkv", module_prefix=False,
        forward_kwargs=dict(CLS=False, CCE=False, MVC=True, ECS=False),
        lengths=ROW_LENGTHS, cls_value=-2.0, scaling=True,
        notes=["scaling style: token = GeneEncoder(gene) * value; values are binned "
               "1..50 divided by 10 (0.1..5.0); <cls> and pad value -2"],
    ))
    cases.append(dict(
        name="generator", kind="model", class_="TransformerGenerator",
        ctor=dict(d_model=64, nhead=4, d_hid=56, nlayers=2, nlayers_cls=1, n_cls=1,
                  pad_value=0, pert_pad_id=2, do_mvc=False,
                  domain_spec_batchnorm=False, n_input_bins=0, cell_emb_style="cls",
                  mvc_decoder_style="inner product", decoder_activation=None,
                  decoder_adaptive_bias=True, explicit_zero_prob=False,
                  pre_norm=False, **base),
        mask_value=-1, qkv_naming="Wqkv", module_prefix=False,
        forward_kwargs=dict(CLS=False, CCE=False, MVC=False, ECS=False),
        lengths=ROW_LENGTHS, generator=True,
        notes=["TransformerGenerator (perturbation model): input = gene + value + "
               "pert_encoder(pert_flags); AffineExprDecoder pred = coeff*values + "
               "bias*mean(non-zero values of the cell) (decoder_adaptive_bias=True)",
               "explicit_zero_prob=False: with True, TransformerGenerator.forward in "
               "eval mode forces do_sample=True (random Bernoulli draw)",
               "perturbation conventions: NO <cls> token (position 0 is a gene), "
               "pad_value 0, values are log1p-like floats in [0, 4.5] with ~25% exact "
               "zeros; pert_flags in {0,1} on genes and 2 (= pert_pad_id) on padding",
               "cell_emb = encoder_output[:, 0] (cell_emb_style cls; the generator's "
               "forward does not return it)"],
    ))
    cases.append(dict(
        name="multiomic", kind="model", class_="MultiOmicTransformerModel",
        ctor=dict(d_model=64, nhead=8, d_hid=48, nlayers=2, nlayers_cls=1, n_cls=1,
                  pad_value=-2, do_mvc=True, do_dab=False, use_batch_labels=True,
                  num_batch_labels=3, domain_spec_batchnorm=False,
                  input_emb_style="continuous", cell_emb_style="cls",
                  mvc_decoder_style="inner product", explicit_zero_prob=False,
                  pre_norm=False, use_mod=True, ntokens_mod=5, **base),
        vocab_mod=OrderedDict([("Protein", 0), ("RNA", 1), ("<pad>", 2), ("<cls>", 3), ("<eoc>", 4)]),
        mask_value=-1, qkv_naming="Wqkv", module_prefix=False,
        forward_kwargs=dict(CLS=False, CCE=False, MVC=True, ECS=False),
        lengths=ROW_LENGTHS, cls_value=-2.0, multiomic=True,
        batch_labels=[0, 2, 1, 1, 0, 2],
        notes=["MultiOmicTransformerModel: mod_encoder = BatchLabelEncoder(ntokens_mod, "
               "d, padding_idx=vocab_mod['<pad>']); decoders see concat(h, batch_emb + "
               "mod_emb); MVC cell side concat(cell_emb, batch_emb + mod_emb[:,0]), "
               "gene side concat(gene_embs, batch_emb + mod_emb), MVC dims doubled",
               "mod_types: <cls> mod id at position 0, <pad> mod id on padding"],
    ))
    cases.append(dict(
        name="prenorm", kind="prenorm", class_="TransformerModel",
        ctor=dict(d_model=64, nhead=4, d_hid=72, nlayers=2, nlayers_cls=1, n_cls=1,
                  pad_value=-2, do_mvc=False, do_dab=False, use_batch_labels=False,
                  domain_spec_batchnorm=False, input_emb_style="continuous",
                  cell_emb_style="cls", explicit_zero_prob=False, pre_norm=True, **base),
        mask_value=-1, qkv_naming="Wqkv", module_prefix=False,
        forward_kwargs={},
        lengths=ROW_LENGTHS, cls_value=-2.0,
        notes=["reference computed by make_scgpt_fixtures.py from scgpt modules, not by "
               "the flash layer: per layer x = LN1(x); x = x + MHA(x); x = LN2(x); "
               "x = x + FFN(x); no final norm (FlashTransformerEncoderLayer "
               "norm_scheme='pre', SCGPT_SPEC 1.7)"],
    ))
    for c in cases:
        c["class"] = c.pop("class_")
    return cases


def make_case_inputs(case: dict, vocab: Dict[str, int], rng) -> "OrderedDict[str, np.ndarray]":
    lengths = case["lengths"]
    inp = OrderedDict()
    pad_id = vocab["<pad>"]
    if case.get("generator"):
        src = make_src(rng, vocab, lengths, with_cls=False)
        vals = np.zeros((B, L), dtype=np.float32)
        pert = np.full((B, L), 2, dtype=np.int64)
        for b, n in enumerate(lengths):
            x = rng.uniform(0.2, 4.5, size=n).astype(np.float32)
            x[rng.random(n) < 0.25] = 0.0
            x[0] = max(x[0], 0.5)  # every row has non-zero values
            vals[b, :n] = np.round(x * 64) / 64
            pert[b, :n] = (rng.random(n) < 0.15).astype(np.int64)
        inp["src"] = src
        inp["values"] = vals
        inp["src_key_padding_mask"] = (src == pad_id).astype(np.uint8)
        inp["pert_flags"] = pert
        return inp
    src = make_src(rng, vocab, lengths, with_cls=True)
    pv = float(case["ctor"]["pad_value"])
    if case.get("category"):
        vals = int_values(rng, lengths, lo=0, hi=52, cls_value=case["cls_value"], pad_value=pv)
    else:
        vals = int_values(rng, lengths, lo=1, hi=50, cls_value=case["cls_value"], pad_value=pv)
    if case.get("scaling"):
        body = vals[:, 1:] > 0
        vals[:, 1:][body] = vals[:, 1:][body] / 10.0
    if case.get("big_values"):
        vals[1, 5] = 600.0
        vals[3, 5] = 1000.0
        vals[3, 7] = 5000.0
        vals[1, 9] = 513.0
    if case.get("mlm_mask"):
        for b, n in enumerate(lengths):
            k = max(1, int((n - 1) * 0.15))
            pos = 1 + rng.choice(n - 1, size=k, replace=False)
            vals[b, pos] = case["mask_value"]
    inp["src"] = src
    inp["values"] = vals
    inp["src_key_padding_mask"] = (src == pad_id).astype(np.uint8)
    if "batch_labels" in case:
        inp["batch_labels"] = np.array(case["batch_labels"], dtype=np.int64)
    if case.get("multiomic"):
        vm = case["vocab_mod"]
        mt = np.full((B, L), vm["<pad>"], dtype=np.int64)
        for b, n in enumerate(lengths):
            mt[b, 0] = vm["<cls>"]
            mt[b, 1:n] = np.where(rng.random(n - 1) < 0.3, vm["Protein"], vm["RNA"])
        inp["mod_types"] = mt
    return inp


def model_json(case: dict, ntoken: int, outputs: List[str], extra: Optional[dict] = None) -> dict:
    ctor = dict(case["ctor"])
    passed = ["ntoken"] + list(ctor.keys())
    mj = OrderedDict()
    mj["class"] = case["class"]
    mj["ntoken"] = ntoken
    for k in CONTRACT_KEYS[1:]:
        mj[k] = ctor.get(k, MODEL_DEFAULTS.get(k))
    for k, v in ctor.items():  # class-specific kwargs (generator, multiomic)
        if k not in mj:
            mj[k] = v
    if case["class"] == "TransformerGenerator":
        # effective (not constructor) values for keys the class does not take
        mj["input_emb_style"] = "continuous"
    mj["constructor_kwargs"] = passed + ["vocab"] + (["vocab_mod"] if "vocab_mod" in case else [])
    mj["qkv_naming"] = case["qkv_naming"]
    mj["module_prefix"] = case["module_prefix"]
    mj["forward_kwargs"] = case["forward_kwargs"]
    mj["mask_value"] = case["mask_value"]
    mj["no_padding"] = bool(case.get("no_padding", False))
    mj["outputs"] = outputs
    mj["scgpt_version"] = scgpt.__version__
    mj["torch_version"] = torch.__version__
    mj["notes"] = case.get("notes", [])
    if extra:
        mj.update(extra)
    return mj


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_io(path: Path, inp: Dict[str, np.ndarray], out: Dict[str, torch.Tensor]) -> None:
    tensors = OrderedDict()
    for k, v in inp.items():
        tensors[k] = np.ascontiguousarray(v)
    for k, v in out.items():
        assert k not in tensors, k
        a = to_np(v)
        if a.dtype.kind == "f":
            assert np.isfinite(a).all(), f"non-finite output {k}"
        tensors[k] = a
    save_file(tensors, str(path))


def input_tensors(inp: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in inp.items()}


def reload_model(case: dict, vocab: Dict[str, int], folder: Path, seed: int,
                 allowed_missing=(), allowed_unexpected=()):
    """Fresh model (other random init) + the saved best_model.pt."""
    sd = torch.load(folder / "best_model.pt", map_location="cpu", weights_only=True)
    model = build_model(case, vocab, seed + 7777)
    sd2 = OrderedDict((unrename_key(k), v) for k, v in sd.items())
    res = model.load_state_dict(sd2, strict=False)
    for k in res.missing_keys:
        assert any(k.startswith(p) for p in allowed_missing), f"missing {k}"
    for k in res.unexpected_keys:
        assert k in allowed_unexpected, f"unexpected {k}"
    return model, sd


def make_model_case(case: dict, out_root: Path, harmony_genes: List[str], idx: int) -> dict:
    name = case["name"]
    folder = out_root / name
    folder.mkdir(parents=True, exist_ok=True)
    seed = SEED + 1000 * (idx + 1)
    rng = np.random.default_rng(seed)
    if name == "embed_flash":
        vocab, missing = case["vocab"], case["missing"]
    else:
        sub = rng.choice(len(harmony_genes), size=N_CASE_GENES, replace=False)
        vocab, missing = build_vocab(rng, [harmony_genes[i] for i in sorted(sub)])
    ntoken = len(vocab)
    model = build_model(case, vocab, seed)
    g = torch.Generator().manual_seed(seed)
    randomize_(model, g)
    model.eval()
    extra_keys = None
    if case.get("add_flag_encoder"):
        extra_keys = {"flag_encoder.weight": torch.empty(2, case["ctor"]["d_model"]).normal_(0, 1, generator=g)}
        case["flag_weight"] = extra_keys["flag_encoder.weight"]
    inp = make_case_inputs(case, vocab, rng)
    out = run_model(case, model, input_tensors(inp))
    # sanity: the forward's cell_emb agrees with _encode (+ pooling)
    if case["kind"] == "model" and case["class"] != "TransformerGenerator":
        ce = model._get_cell_emb_from_layer(out["encoder_output"], input_tensors(inp)["values"])
        assert torch.equal(ce, out["cell_emb"]), name

    sd = export_state_dict(model, case["qkv_naming"], case["module_prefix"],
                           case.get("drop_prefixes", ()), extra_keys)
    torch.save(sd, folder / "best_model.pt")
    pad_value = case["ctor"]["pad_value"]
    args = released_args(case["ctor"]["d_model"], case["ctor"]["nhead"], case["ctor"]["d_hid"],
                         case["ctor"]["nlayers"], case["ctor"]["nlayers_cls"], pad_value,
                         case["mask_value"], case["ctor"].get("input_emb_style", "continuous"))
    write_json(folder / "args.json", args)
    write_json(folder / "vocab.json", vocab)
    if "vocab_mod" in case:
        write_json(folder / "vocab_mod.json", case["vocab_mod"])
    extra = {"vocab_mod_file": "vocab_mod.json"} if "vocab_mod" in case else None
    write_json(folder / "model.json", model_json(case, ntoken, list(out.keys()), extra))
    save_io(folder / "io.safetensors", inp, out)

    # verify: a fresh model loaded from the saved file reproduces the outputs
    model2, saved = reload_model(case, vocab, folder, seed,
                                 allowed_missing=case.get("drop_prefixes", ()),
                                 allowed_unexpected=("flag_encoder.weight",))
    out2 = run_model(case, model2, input_tensors(inp))
    for k in out:
        assert torch.equal(out[k], out2[k]), f"{name}: {k} differs after reload"
    for k in saved:
        if case["module_prefix"]:
            assert k.startswith("module."), k
        if "self_attn" in k:
            if case["qkv_naming"] == "Wqkv":
                assert ".self_attn.Wqkv." in k or ".self_attn.out_proj." in k, k
            elif case["qkv_naming"] == "_impl.Wqkv":
                assert ".self_attn._impl.Wqkv." in k or ".self_attn._impl.out_proj." in k, k
            else:
                assert ".self_attn.in_proj_" in k or ".self_attn.out_proj." in k, k
    if name == "embed_flash":
        assert not any(k.startswith("cls_decoder.") for k in saved)
        assert "flag_encoder.weight" in saved and any(k.startswith("mvc_decoder.") for k in saved)
        # the clamp at 512 must be visible: unclamped values change the outputs
        vals = input_tensors(inp)["values"]
        with torch.no_grad():
            e_clamped = model.value_encoder(vals)
            lin = model.value_encoder
            x = vals.unsqueeze(-1)
            e_raw = lin.norm(lin.linear2(F.relu(lin.linear1(x))))
        d_big = (e_clamped[3, 7] - e_raw[3, 7]).abs().max().item()
        assert d_big > 1e-2, f"clamp not exercised ({d_big})"
        case["model"] = model
        case["vocab"] = vocab
        case["inputs"] = inp
    log(f"  {name:15s} ntoken={ntoken:5d} outputs={list(out.keys())}")
    case["ntoken"] = ntoken
    return case


def make_generative_case(flash: dict, out_root: Path) -> None:
    """pcpt/gen attention reference using the embed_flash weights."""
    folder = out_root / "generative"
    folder.mkdir(parents=True, exist_ok=True)
    model, vocab = flash["model"], flash["vocab"]
    rng = np.random.default_rng(SEED + 99)
    pad_id, cls_id = vocab["<pad>"], vocab["<cls>"]
    ids = gene_token_ids(vocab)
    lp, lg = 24, 16
    p_len = [24, 20, 24, 13, 17, 24]  # incl. <cls>
    g_len = [16, 16, 9, 12, 5, 14]
    psrc = np.full((B, lp), pad_id, dtype=np.int64)
    pval = np.full((B, lp), -2.0, dtype=np.float32)
    gsrc = np.full((B, lg), pad_id, dtype=np.int64)
    for b in range(B):
        genes = rng.choice(ids, size=p_len[b] - 1 + g_len[b], replace=False)
        psrc[b, 0] = cls_id
        psrc[b, 1:p_len[b]] = genes[: p_len[b] - 1]
        pval[b, 1:p_len[b]] = rng.integers(1, 51, size=p_len[b] - 1)
        gsrc[b, : g_len[b]] = genes[p_len[b] - 1:]
    inp = OrderedDict()
    inp["pcpt_src"] = psrc
    inp["pcpt_values"] = pval
    inp["pcpt_key_padding_mask"] = (psrc == pad_id).astype(np.uint8)
    inp["gen_src"] = gsrc
    inp["gen_key_padding_mask"] = (gsrc == pad_id).astype(np.uint8)
    with torch.no_grad():
        out = generative_forward(model, flash["flag_weight"], torch.from_numpy(psrc),
                                 torch.from_numpy(pval), torch.from_numpy(gsrc), pad_id)
        # cross-check the pcpt stream against scgpt's own encoder (pcpt tokens
        # only attend to pcpt tokens, so it must equal _encode on pcpt alone)
        enc = model._encode(torch.from_numpy(psrc), torch.from_numpy(pval),
                            torch.from_numpy(psrc == pad_id))
        valid = torch.from_numpy(psrc != pad_id)
        diff = (enc - out["pcpt_output"]).abs()[valid].max().item()
        assert diff < 1e-4, f"generative pcpt stream disagrees with scgpt _encode: {diff}"
    mj = json.loads((out_root / "embed_flash" / "model.json").read_text())
    mj["outputs"] = list(out.keys())
    mj["forward_kwargs"] = {}
    mj["weights_from"] = "embed_flash"
    mj["generative"] = True
    mj["notes"] = [
        "reference computed by make_scgpt_fixtures.py from SCGPT_SPEC 1.17 "
        "(FlashscGPTLayer/FlashscGPTMHA of the pretraining branch), not by scgpt 0.2.4 "
        "(which has no generative attention); weights, args.json and vocab.json: "
        "load the embed_flash folder (weights_from); this folder holds only model.json "
        "and io.safetensors",
        "pcpt tokens = GeneEncoder(gene) + ValueEncoder(value) (<cls> at 0, value -2); "
        "gen tokens = GeneEncoder(gene) + flag_encoder.weight[1] (no value)",
        "per layer, shared Wqkv/out_proj/linear1/linear2/norm1/norm2: pcpt queries "
        "attend to non-padded pcpt keys, then out_proj; gen query i attends to all "
        "non-padded pcpt keys plus its own key (if not padding), NO out_proj on the "
        "gen context; then post-norm residual + FFN on each stream",
        "gen_mlm_output / pcpt_mlm_output = ExprDecoder pred on gen_output / "
        "pcpt_output; cell_emb = pcpt_output[:, 0]",
        f"pcpt_output checked against scgpt TransformerModel._encode on the pcpt "
        f"tokens alone (max abs diff {diff:.2e} on non-padded rows)",
    ]
    write_json(folder / "model.json", mj)
    save_io(folder / "io.safetensors", inp, out)
    log(f"  {'generative':15s} outputs={list(out.keys())} (pcpt vs _encode {diff:.1e})")


# --------------------------------------------------------------------------
# embed_data case
# --------------------------------------------------------------------------

def select_embed_data(harmony_path: Path, rng):
    a = ad.read_h5ad(harmony_path)
    X = a.X.tocsr().astype(np.float32)
    stim = a.obs["stim"].astype(str).to_numpy()
    # 48 ctrl + 48 stim cells, then ~1,500 genes
    cells = np.concatenate([
        rng.choice(np.where(stim == "ctrl")[0], 60, replace=False),
        rng.choice(np.where(stim == "stim")[0], 60, replace=False),
    ])
    Xc = X[cells]
    det = np.asarray((Xc > 0).sum(axis=0)).ravel()
    order = np.argsort(-det, kind="stable")
    top = order[:200]
    rest = order[200:]
    rest = rest[det[rest] >= 2]
    mid = rng.choice(rest, size=1300, replace=False)
    genes = np.sort(np.concatenate([top, mid]))
    Xg = Xc[:, genes]
    nnz = np.diff(Xg.indptr)
    ok = (nnz >= 20) & (nnz <= 1000)
    keep_ctrl = [i for i in range(60) if ok[i]][:48]
    keep_stim = [i for i in range(60, 120) if ok[i]][:48]
    assert len(keep_ctrl) == 48 and len(keep_stim) == 48
    rows = np.array(keep_ctrl + keep_stim)
    Xg = Xg[rows].tocsr()
    Xg.sort_indices()
    obs_names = a.obs_names[cells[rows]]
    var_names = a.var_names[genes]
    stim_sel = a.obs["stim"].iloc[cells[rows]]
    return Xg, obs_names, var_names, stim_sel


def make_distinct(X: sp.csr_matrix, rng) -> sp.csr_matrix:
    X = X.copy().astype(np.float32)
    for i in range(X.shape[0]):
        s, e = X.indptr[i], X.indptr[i + 1]
        n = e - s
        k = rng.permutation(n)
        vals = X.data[s:e].astype(np.float64) + (k + 0.5) / (n + 1)
        X.data[s:e] = vals.astype(np.float32)
        assert len(np.unique(X.data[s:e])) == n, f"cell {i}: values not distinct"
        assert (X.data[s:e] > 0).all()
    return X


def binning_is_deterministic(values: np.ndarray) -> bool:
    """scGPT's _digitize draws random numbers only where >1 bin edge equals a
    value; check that never happens (same float32 arithmetic as binning())."""
    row = values.astype(np.float32)
    bins = np.quantile(row, np.linspace(0, 1, 50))
    left = np.digitize(row, bins)
    right = np.digitize(row, bins, right=True)
    return bool(((left - right) <= 1).all())


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run_embed_data(h5ad_path: Path, model_dir: Path, np_seed: int, torch_seed: int):
    np.random.seed(np_seed)
    torch.manual_seed(torch_seed)
    captured = []
    orig = TransformerModel._encode

    def spy(self, src, values, src_key_padding_mask, batch_labels=None):
        captured.append((src.clone(), values.clone()))
        return orig(self, src, values, src_key_padding_mask, batch_labels)

    cap = _LogCapture()
    scgpt.logger.addHandler(cap)
    TransformerModel._encode = spy
    try:
        adata = ad.read_h5ad(h5ad_path)
        res = embed_data(adata, model_dir=str(model_dir), gene_col="index", max_length=1200,
                         batch_size=16, device="cpu", use_fast_transformer=False,
                         return_new_adata=False)
    finally:
        TransformerModel._encode = orig
        scgpt.logger.removeHandler(cap)
    return res, captured, cap.lines


def make_embed_case(harmony_path: Path, out_root: Path, flash_case: dict) -> None:
    folder = out_root / "embed"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 5)
    X, obs_names, var_names, stim = flash_case["embed_selection"]
    X = make_distinct(X, rng)
    vocab = flash_case["vocab"]
    missing = flash_case["missing"]
    in_vocab = np.array([g in vocab for g in var_names])
    assert sorted(missing) == sorted(np.asarray(var_names)[~in_vocab].tolist())
    for i in range(X.shape[0]):
        s, e = X.indptr[i], X.indptr[i + 1]
        cols = X.indices[s:e]
        mask = in_vocab[cols]
        n_voc = int(mask.sum())
        assert 10 <= n_voc <= 1199, (i, n_voc)
        assert binning_is_deterministic(X.data[s:e][mask]), f"cell {i}: binning tie"
    obs = pd.DataFrame({"stim": stim.to_numpy()}, index=np.asarray(obs_names))
    obs["stim"] = obs["stim"].astype("category")
    var = pd.DataFrame(index=np.asarray(var_names))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    h5 = folder / "data.h5ad"
    adata.write_h5ad(h5)

    r1, cap1, logs = run_embed_data(h5, out_root / "embed_flash", 0, 0)
    r2, _, _ = run_embed_data(h5, out_root / "embed_flash", 12345, 999)
    emb1 = np.asarray(r1.obsm["X_scGPT"], dtype=np.float32)
    emb2 = np.asarray(r2.obsm["X_scGPT"], dtype=np.float32)
    assert emb1.shape == (X.shape[0], flash_case["ctor"]["d_model"])
    maxdiff = float(np.abs(emb1 - emb2).max())
    assert maxdiff <= 1e-7, f"embed_data not deterministic: {maxdiff}"
    match = [ln for ln in logs if ln.startswith("match ")]
    assert len(match) == 1, logs
    n_match, n_total = match[0].split()[1].split("/")
    assert int(n_match) == int(in_vocab.sum()) and int(n_total) == X.shape[1]

    # cross-check: the captured binned batches through the fixture model
    model = flash_case["model"]
    pad_id = vocab["<pad>"]
    recon = []
    with torch.no_grad():
        for src, vals in cap1:
            h = model._encode(src, vals, src.eq(pad_id))[:, 0, :]
            recon.append(h)
    recon = torch.cat(recon).numpy()
    recon = recon / np.linalg.norm(recon, axis=1, keepdims=True)
    xdiff = float(np.abs(recon - emb1).max())
    assert xdiff < 1e-5, f"embed_data disagrees with the fixture model: {xdiff}"
    # the binned input of the first cells
    tensors = OrderedDict()
    tensors["X_scGPT"] = emb1
    src0, val0 = cap1[0]
    for i in range(4):
        keep = src0[i] != pad_id
        tensors[f"binned_cell{i}_genes"] = src0[i][keep].numpy().astype(np.int64)
        tensors[f"binned_cell{i}_values"] = val0[i][keep].numpy().astype(np.float32)
        # binned values: <cls> -2 then integers 1..50 in gene column order
        v = tensors[f"binned_cell{i}_values"]
        assert v[0] == -2 and (v[1:] >= 1).all() and (v[1:] <= 50).all()
    save_file(tensors, str(folder / "expected.safetensors"))
    exp = OrderedDict()
    exp["n_cells"] = int(X.shape[0])
    exp["n_genes"] = int(X.shape[1])
    exp["n_genes_in_vocab"] = int(n_match)
    exp["match_log_line"] = match[0]
    exp["vocab_size"] = len(vocab)
    exp["missing_genes"] = sorted(missing)
    exp["embed_data_call"] = {
        "model_dir": "tests/fixtures/scgpt/embed_flash", "gene_col": "index",
        "max_length": 1200, "batch_size": 16, "device": "cpu",
        "use_fast_transformer": False, "return_new_adata": False,
        "output": "obsm['X_scGPT'] (L2-normalised <cls> embedding)",
    }
    nnz = np.diff(X.indptr)
    exp["expressed_genes_per_cell"] = {"min": int(nnz.min()), "max": int(nnz.max())}
    exp["deterministic_check"] = f"two runs with different numpy/torch seeds: max abs diff {maxdiff:.1e}"
    exp["fixture_model_check"] = f"captured binned batches through the fixture model: max abs diff {xdiff:.1e}"
    exp["values_note"] = ("X = raw UMI counts of harmony_pbmc_stim (Kang et al. 2018) plus a "
                          "per-cell unique offset (k+0.5)/(n_nonzero+1), k a random permutation, "
                          "so every cell's non-zero values are pairwise distinct in float32 and "
                          "scGPT's random tie-breaking in binning never fires")
    exp["binned_note"] = ("binned_cell{i}_genes/values: the first 4 cells as fed to "
                          "model._encode (vocab ids incl. <cls> at 0, value -2 then bins 1..50; "
                          "padding stripped)")
    exp["source"] = "harmony_pbmc_stim.h5ad (immunogenomics/harmony@df19af23, data/pbmc_stim.RData), GPL-3"
    exp["scgpt_version"] = scgpt.__version__
    exp["torch_version"] = torch.__version__
    write_json(folder / "expected.json", exp)
    log(f"  {'embed':15s} {X.shape[0]} cells x {X.shape[1]} genes, match {n_match}/{n_total}, "
        f"deterministic diff {maxdiff:.1e}, vs fixture model {xdiff:.1e}")


# --------------------------------------------------------------------------
# bad checkpoints
# --------------------------------------------------------------------------

class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def _pickle_globals(path: Path) -> List[str]:
    with zipfile.ZipFile(path) as z:
        name = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        data = z.read(name)
    out = []
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name in ("GLOBAL", "STACK_GLOBAL", "INST"):
            out.append(str(arg))
    return out


def make_bad_cases(out_root: Path, harmony_genes: List[str]) -> None:
    """Checkpoints a loader must reject.  To keep the fixtures small, the
    non-pickle ones derive from a tiny but otherwise valid released-format
    checkpoint (``control_valid``: d=32, flash ``Wqkv`` naming, no cls_decoder,
    with flag_encoder and mvc_decoder) instead of the 1,478-token embed_flash."""
    bad = out_root / "bad"
    if bad.exists():
        shutil.rmtree(bad)
    bad.mkdir(parents=True)
    flash_dir = out_root / "embed_flash"

    rng = np.random.default_rng(SEED + 77)
    sub = rng.choice(len(harmony_genes), size=150, replace=False)
    vocab, _ = build_vocab(rng, [harmony_genes[i] for i in sorted(sub)])
    base = dict(
        name="control_valid", kind="model", class_="TransformerModel",
        ctor=dict(d_model=32, nhead=4, d_hid=48, nlayers=1, nlayers_cls=3, n_cls=1,
                  pad_value=-2, do_mvc=True, do_dab=False, use_batch_labels=False,
                  domain_spec_batchnorm=False, input_emb_style="continuous",
                  cell_emb_style="cls", mvc_decoder_style="inner product",
                  explicit_zero_prob=False, pre_norm=False, dropout=0.2,
                  pad_token="<pad>", use_fast_transformer=False),
    )
    base["class"] = base.pop("class_")
    model = build_model(base, vocab, SEED + 78)
    g = torch.Generator().manual_seed(SEED + 78)
    randomize_(model, g)
    flag = {"flag_encoder.weight": torch.empty(2, 32).normal_(0, 1, generator=g)}
    good_sd = export_state_dict(model, "Wqkv", False, ("cls_decoder.",), flag)
    good_args = released_args(32, 4, 48, 1, 3, -2, -1, "continuous")

    def write_dir(name, sd=None, args=good_args, voc=vocab, raw=None):
        d = bad / name
        d.mkdir(parents=True)
        write_json(d / "args.json", args)
        write_json(d / "vocab.json", voc)
        if raw is not None:
            (d / "best_model.pt").write_bytes(raw)
        else:
            torch.save(sd, d / "best_model.pt")
        return d

    readme = ["# Bad scGPT checkpoints (written by scripts/reference/make_scgpt_fixtures.py)", "",
              "Each folder is a model directory (best_model.pt, args.json, vocab.json). "
              "`control_valid/` is a valid checkpoint and must load; every other folder must "
              "be rejected with an error (never executed, never a panic).", ""]
    d = write_dir("control_valid", good_sd)
    # control_valid really loads (strict, apart from the absent cls_decoder)
    sd = torch.load(d / "best_model.pt", map_location="cpu", weights_only=True)
    m2 = build_model(base, vocab, SEED + 79)
    res = m2.load_state_dict(OrderedDict((unrename_key(k), v) for k, v in sd.items()), strict=False)
    assert all(k.startswith("cls_decoder.") for k in res.missing_keys), res.missing_keys
    assert res.unexpected_keys == ["flag_encoder.weight"], res.unexpected_keys
    readme.append(f"- `control_valid/`: valid released-format checkpoint: TransformerModel "
                  f"d_model 32, 4 heads, d_hid 48, 1 layer, {len(vocab)} tokens, continuous, "
                  f"cls, MVC; keys `self_attn.Wqkv.*`/`self_attn.out_proj.*`, no `cls_decoder.*`, "
                  f"extra `flag_encoder.weight`. The folders below are derived from it unless "
                  f"stated otherwise.")

    import builtins
    for name, fn, arg, glob in (
        ("pickle_system", os.system, "echo pwned", "posix system"),
        # protocol 2 (torch.save's default) writes builtins as "__builtin__"
        ("pickle_eval", builtins.eval, "print('pwned')", "__builtin__ eval"),
    ):
        d = bad / name
        d.mkdir(parents=True)
        shutil.copyfile(flash_dir / "args.json", d / "args.json")
        shutil.copyfile(flash_dir / "vocab.json", d / "vocab.json")
        payload = OrderedDict()
        payload["encoder.embedding.weight"] = torch.zeros(4, 4)
        payload["evil"] = _Evil(fn, arg)
        torch.save(payload, d / "best_model.pt")  # pickles the reduce tuple, runs nothing
        globs = _pickle_globals(d / "best_model.pt")
        assert glob in globs, (name, globs)
        try:
            torch.load(d / "best_model.pt", map_location="cpu", weights_only=True)
        except Exception:
            pass
        else:
            raise AssertionError(f"{name}: torch weights_only load accepted it")
        readme.append(f"- `{name}/`: zip-format torch.save file whose `data.pkl` contains "
                      f"GLOBAL `{glob}` (a `__reduce__` call with argument {arg!r}; Python's "
                      f"unpickler would call it); must be refused, not executed. args.json and "
                      f"vocab.json are embed_flash's.")

    args = OrderedDict(good_args)
    args["embsize"] = 64
    write_dir("wrong_embsize", good_sd, args=args)
    readme.append("- `wrong_embsize/`: control_valid weights (d_model 32) but args.json says "
                  "embsize 64.")

    toks = [t for t, _ in sorted(vocab.items(), key=lambda x: x[1])]
    genes = [t for t in toks if t not in SPECIALS][:-100]
    v2 = {t: i for i, t in enumerate(genes + SPECIALS)}
    assert len(v2) == len(vocab) - 100
    write_dir("vocab_mismatch", good_sd, voc=v2)
    readme.append(f"- `vocab_mismatch/`: control_valid weights ({len(vocab)} embedding rows) but "
                  f"vocab.json has {len(v2)} tokens (100 fewer; ids consecutive, specials last).")

    sd = OrderedDict((k, v) for k, v in good_sd.items() if ".self_attn.Wqkv." not in k)
    assert len(sd) == len(good_sd) - 2
    write_dir("missing_attention", sd)
    readme.append("- `missing_attention/`: control_valid state dict with every "
                  "`*.self_attn.Wqkv.*` key removed (out_proj kept).")

    data = (bad / "control_valid" / "best_model.pt").read_bytes()
    write_dir("truncated", raw=data[: len(data) // 2])
    readme.append(f"- `truncated/`: control_valid best_model.pt cut to half its length "
                  f"({len(data) // 2} of {len(data)} bytes).")
    (bad / "README.md").write_text("\n".join(readme) + "\n")
    log(f"  {'bad':15s} " + ", ".join(sorted(p.name for p in bad.iterdir() if p.is_dir())))


# --------------------------------------------------------------------------

def write_top_readme(out_root: Path, cases: List[dict]) -> None:
    lines = [
        "# scGPT golden fixtures",
        "",
        "Generated by `scripts/reference/make_scgpt_fixtures.py` from the real "
        f"`scgpt=={scgpt.__version__}` package on PyTorch {torch.__version__} (CPU, fp32, "
        "eval mode, `use_fast_transformer=False`). Do not edit by hand; rerun "
        "`bash scripts/reference/setup.sh && .venv-ref/bin/python "
        "scripts/reference/make_scgpt_fixtures.py`.",
        "",
        "Model case folders: `args.json`, `vocab.json` (specials `<pad>`,`<cls>`,`<eoc>` are "
        "the last three ids), `best_model.pt` (torch.save of the state dict, attention "
        "keys spelled as `model.json` `qkv_naming`, `module.` prefix if `module_prefix`), "
        "`model.json` (constructor kwargs + class, qkv_naming, module_prefix, "
        "forward_kwargs, outputs, notes), `io.safetensors` (inputs `src` int64 [B,L], "
        "`values` f32, `src_key_padding_mask` u8 (1 = padding = src==<pad>), optional "
        "`batch_labels`, `mod_types`, `pert_flags`; then the outputs listed in model.json). "
        "Compare outputs at non-padded positions only (padded rows of the PyTorch path are "
        "implementation-defined); cases with `no_padding: true` have none.",
        "",
        "| case | class | summary |",
        "|---|---|---|",
    ]
    for c in cases:
        ct = c["ctor"]
        lines.append(
            f"| `{c['name']}` | {c['class']} | d={ct['d_model']} heads={ct['nhead']} "
            f"d_hid={ct['d_hid']} layers={ct['nlayers']} emb={ct.get('input_emb_style', 'continuous')} "
            f"cell={ct.get('cell_emb_style', 'cls')} naming={c['qkv_naming']}"
            f"{' +module.' if c['module_prefix'] else ''} |")
    lines += [
        "| `generative` | reference (SCGPT_SPEC 1.17) | pcpt/gen attention with the embed_flash weights |",
        "| `embed` | `scgpt.tasks.embed_data` | 96 cells of harmony_pbmc_stim, model embed_flash |",
        "| `bad/` | - | checkpoints a loader must reject (see bad/README.md) |",
        "",
    ]
    (out_root / "README.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "scgpt")
    default_data = Path(os.environ.get("CELLFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=default_data / "harmony_pbmc_stim.h5ad")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"error: {args.data} not found (use --data or CELLFORGE_SHARED_DATA)", file=sys.stderr)
        return 1
    t_start = time.time()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out_root = args.out
    if not prepare_out_dir(out_root, "embed_flash", "README.md"):
        return 2
    log(f"scgpt {scgpt.__version__}, torch {torch.__version__}, numpy {np.__version__}")

    harmony = ad.read_h5ad(args.data, backed="r")
    harmony_genes = [str(g) for g in harmony.var_names]
    harmony.file.close()

    cases = case_specs(harmony_genes)
    # embed_flash's vocabulary comes from the embed dataset's genes
    rng = np.random.default_rng(SEED)
    sel = select_embed_data(args.data, rng)
    flash = cases[0]
    vocab, missing = build_vocab(rng, [str(g) for g in sel[2]])
    flash["vocab"], flash["missing"], flash["embed_selection"] = vocab, missing, sel

    for i, c in enumerate(cases):
        make_model_case(c, out_root, harmony_genes, i)
    make_generative_case(flash, out_root)
    make_embed_case(args.data, out_root, flash)
    make_bad_cases(out_root, harmony_genes)
    write_top_readme(out_root, cases)

    total = 0
    for p in sorted(out_root.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
    log(f"total fixture size {total / 1e6:.2f} MB; {time.time() - t_start:.1f} s")
    assert total < 6e6, "fixtures too large"
    return 0


if __name__ == "__main__":
    sys.exit(main())
