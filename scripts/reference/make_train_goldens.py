#!/usr/bin/env python3
"""Write the scGPT *training-step* golden fixtures under ``tests/fixtures/train/``.

Reference: the released ``scgpt==0.2.4`` package on PyTorch (CPU, fp32,
``use_fast_transformer=False``), stubs as in README.md.  One optimisation step
of the fine-tuning objectives, computed by scgpt's own code
(``TransformerModel.forward`` with its flags, ``scgpt.loss.masked_mse_loss``,
``scgpt.loss.criterion_neg_log_bernoulli``, ``nn.CrossEntropyLoss``,
``scgpt.tokenizer.random_mask_value``) plus ``clip_grad_norm_`` and
``torch.optim.Adam``::

    .venv-ref/bin/python scripts/reference/make_train_goldens.py [--out DIR]

Cases:

- ``finetune_all``: the integration-tutorial objectives all at once (GEP MSE +
  Bernoulli NLL, GEPC/MVC + NLL, ECS x10, CCE x10, CLS, DAB), DSBN, batch
  labels, explicit zero probs, mask_ratio 0.4, Adam(lr 1e-3, eps 1e-8).
- ``annotation_cls``: the annotation-tutorial objective (CLS only, no
  masking), Adam(lr 1e-4, eps 1e-4).

Both: dropout 0 (deterministic), clip_grad_norm_(1.0), one Adam step, then the
same batch again (train mode) for the step-1 losses.  Everything is seeded and
single-threaded; after writing, the script reloads the files into a fresh model
and asserts that the whole step is reproduced bit for bit, and checks the
documented loss / DSBN formulas by hand.  Contract: tests/fixtures/train/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scgpt_env  # noqa: E402  (sets up stubs + imports scgpt)
from scgpt_env import GeneVocab, TransformerModel, scgpt  # noqa: E402,F401
from fixture_dir import prepare_out_dir  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from scgpt.loss import criterion_neg_log_bernoulli, masked_mse_loss  # noqa: E402
from scgpt.tokenizer import random_mask_value  # noqa: E402

import make_scgpt_fixtures as msf  # noqa: E402  (shared helpers; writes nothing on import)

REPO = scgpt_env.REPO
SEED = 20250612
B = 8
L = 16
PAD_VALUE = -2
MASK_VALUE = -1
N_FAKE_GENES = 60
# Fine-tuning tutorials build the batch with tokenize_and_pad_batch, which
# inserts <cls> with value 0 (SCGPT_SPEC 4.5; scgpt/tokenizer/gene_tokenizer.py
# tokenize_batch: np.insert(values, 0, 0)).  Both tutorials (annotation and
# integration) therefore feed <cls> value 0, not pad_value.
CLS_VALUE = 0.0
QKV_NAMING = "in_proj"  # best_model.pt keys == PyTorch names (self_attn.in_proj_*)

base_ctor = dict(d_model=32, nhead=4, d_hid=48, nlayers=2, nlayers_cls=3,
                 dropout=0.0, pad_token="<pad>", pad_value=PAD_VALUE,
                 input_emb_style="continuous", cell_emb_style="cls",
                 mvc_decoder_style="inner product", use_fast_transformer=False,
                 pre_norm=False)

CASES = [
    dict(
        name="finetune_all",
        ctor=dict(base_ctor, n_cls=5, do_mvc=True, do_dab=True, use_batch_labels=True,
                  num_batch_labels=3, domain_spec_batchnorm=True, explicit_zero_prob=True,
                  ecs_threshold=0.8),
        forward_kwargs=dict(CLS=True, CCE=True, MVC=True, ECS=True),
        lengths=[16, 12, 16, 9, 14, 6, 16, 11],  # incl. <cls>
        value_lo=0, zero_frac=0.3,  # binned 0..50, ~30 % exact zeros (include_zero_gene=True)
        mask_ratio=0.4,
        batch_labels=[1, 0, 2, 1, 2, 0, 1, 2],  # DSBN uses batch_labels[0] = 1 for the minibatch
        celltype_labels=[3, 0, 4, 1, 2, 4, 0, 1],
        # (name, weight) in the order scgpt's tutorials add them to the loss
        loss_terms=[("mse", 1.0), ("zero_nll", 1.0), ("cls", 1.0), ("cce", 10.0),
                    ("gepc", 1.0), ("gepc_zero_nll", 1.0), ("ecs", 10.0), ("dab", 1.0)],
        optim=dict(lr=1e-3, eps=1e-8),
        max_norm=1.0,
    ),
    dict(
        name="annotation_cls",
        ctor=dict(base_ctor, n_cls=4, do_mvc=False, do_dab=False, use_batch_labels=False,
                  domain_spec_batchnorm=False, explicit_zero_prob=False),
        forward_kwargs=dict(CLS=True, CCE=False, MVC=False, ECS=False),
        lengths=[16, 13, 16, 7, 11, 16, 9, 14],
        value_lo=1, zero_frac=0.0,  # include_zero_gene=False: bins 1..50 only
        mask_ratio=0.0,
        batch_labels=None,
        celltype_labels=[2, 0, 3, 1, 3, 0, 2, 1],
        loss_terms=[("cls", 1.0)],
        optim=dict(lr=1e-4, eps=1e-4),
        max_norm=1.0,
    ),
]

OUTPUT_KEYS = ["mlm_output", "mlm_zero_probs", "mvc_output", "mvc_zero_probs",
               "cell_emb", "cls_output", "dab_output"]


def log(msg: str) -> None:
    print(msg, flush=True)


def f64(t) -> float:
    return float(t.detach().double().item()) if isinstance(t, torch.Tensor) else float(t)


# --------------------------------------------------------------------------
# vocabulary, model, inputs
# --------------------------------------------------------------------------

def make_vocab(rng) -> Dict[str, int]:
    genes = msf.fake_gene_names(N_FAKE_GENES, set())
    genes = [genes[i] for i in rng.permutation(len(genes))]
    return {t: i for i, t in enumerate(genes + msf.SPECIALS)}


def build_model(case: dict, vocab: Dict[str, int], seed: int) -> TransformerModel:
    torch.manual_seed(seed)
    return TransformerModel(ntoken=len(vocab), vocab=GeneVocab.from_dict(vocab), **case["ctor"])


def make_inputs(case: dict, vocab: Dict[str, int], rng) -> "OrderedDict[str, np.ndarray]":
    pad_id, cls_id = vocab["<pad>"], vocab["<cls>"]
    ids = msf.gene_token_ids(vocab)
    src = np.full((B, L), pad_id, dtype=np.int64)
    vals = np.full((B, L), PAD_VALUE, dtype=np.float32)
    for b, n in enumerate(case["lengths"]):
        src[b, 0] = cls_id
        src[b, 1:n] = rng.choice(ids, size=n - 1, replace=False)
        vals[b, 0] = CLS_VALUE
        v = rng.integers(max(1, case["value_lo"]), 51, size=n - 1).astype(np.float32)
        if case["zero_frac"] > 0:
            z = rng.random(n - 1) < case["zero_frac"]
            z[rng.integers(0, n - 1)] = True  # every row has a zero ...
            nz = np.where(~z)[0]
            if len(nz) == 0:
                z[0] = False  # ... and a non-zero gene
            v[z] = 0.0
        vals[b, 1:n] = v
    inp = OrderedDict()
    inp["src"] = src
    inp["values"] = vals
    inp["src_key_padding_mask"] = (src == pad_id).astype(np.uint8)
    if case["batch_labels"] is not None:
        inp["batch_labels"] = np.array(case["batch_labels"], dtype=np.int64)
    inp["celltype_labels"] = np.array(case["celltype_labels"], dtype=np.int64)
    return inp


def apply_masking(case: dict, inp: "OrderedDict[str, np.ndarray]", seed0: int) -> int:
    """scgpt's random_mask_value after np.random.seed(s); the first s >= seed0
    whose draw satisfies the coverage conditions is used (deterministic)."""
    vals = inp["values"]
    for s in range(seed0, seed0 + 1000):
        np.random.seed(s)
        iv = random_mask_value(torch.from_numpy(vals.copy()), mask_ratio=case["mask_ratio"],
                               mask_value=MASK_VALUE, pad_value=PAD_VALUE).numpy()
        masked = iv == MASK_VALUE
        if case["mask_ratio"] > 0:
            if not masked.any(axis=1).all():
                continue
            tgt = vals[masked]
            if (tgt == 0).sum() < 3 or (tgt > 0).sum() < 3:
                continue
            cls_m = masked[:, 0]
            if not (cls_m.any() and (~cls_m).any()):  # <cls> (value 0) is a candidate
                continue
        else:
            assert not masked.any()
        break
    else:
        raise RuntimeError("no mask seed satisfied the conditions")
    # padding is never masked; everything else unchanged
    pad = inp["src_key_padding_mask"].astype(bool)
    assert not masked[pad].any()
    assert np.array_equal(iv[~masked], vals[~masked])
    inp["input_values"] = iv.astype(np.float32)
    inp["target_values"] = vals.copy()
    inp["masked"] = masked.astype(np.uint8)
    return s


def to_torch(inp: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in inp.items()}


# --------------------------------------------------------------------------
# the training step (scgpt tutorial skeleton)
# --------------------------------------------------------------------------

class Capture:
    """Forward hooks: DSBN input/output and encoder output of every _encode."""

    def __init__(self, model: TransformerModel):
        self.dsbn_in: List[torch.Tensor] = []
        self.dsbn_out: List[torch.Tensor] = []
        self.dsbn_domains: List[int] = []
        self.enc_out: List[torch.Tensor] = []
        self.handles = []
        if getattr(model, "dsbn", None) is not None:
            self.handles.append(model.dsbn.register_forward_hook(self._dsbn))
        self.handles.append(model.transformer_encoder.register_forward_hook(self._enc))

    def _dsbn(self, mod, args, out):
        self.dsbn_in.append(args[0].detach().clone())
        self.dsbn_domains.append(int(args[1]))
        self.dsbn_out.append(out.detach().clone())

    def _enc(self, mod, args, out):
        self.enc_out.append(out.detach().clone())

    def reset(self):
        self.dsbn_in, self.dsbn_out, self.dsbn_domains, self.enc_out = [], [], [], []

    def close(self):
        for h in self.handles:
            h.remove()


def loss_terms(case: dict, model: TransformerModel, t: Dict[str, torch.Tensor]):
    """One train-mode forward; returns (output dict, OrderedDict of raw terms,
    total), the total accumulated exactly as the tutorials do."""
    src = t["src"]
    pad_mask = t["src_key_padding_mask"].bool()
    bl = t.get("batch_labels")
    out = model(src, t["input_values"], src_key_padding_mask=pad_mask, batch_labels=bl,
                **case["forward_kwargs"])
    target = t["target_values"]
    masked = t["input_values"].eq(MASK_VALUE)  # tutorials: input_values == mask_value
    assert torch.equal(masked, t["masked"].bool())
    ce = nn.CrossEntropyLoss()
    terms = OrderedDict()
    for name, _ in case["loss_terms"]:
        if name == "mse":
            terms[name] = masked_mse_loss(out["mlm_output"], target, masked)
        elif name == "zero_nll":
            terms[name] = criterion_neg_log_bernoulli(out["mlm_zero_probs"], target, masked)
        elif name == "gepc":
            terms[name] = masked_mse_loss(out["mvc_output"], target, masked)
        elif name == "gepc_zero_nll":
            terms[name] = criterion_neg_log_bernoulli(out["mvc_zero_probs"], target, masked)
        elif name == "ecs":
            terms[name] = out["loss_ecs"]
        elif name == "cce":
            terms[name] = out["loss_cce"]
        elif name == "cls":
            terms[name] = ce(out["cls_output"], t["celltype_labels"])
        elif name == "dab":
            terms[name] = ce(out["dab_output"], t["batch_labels"])
        else:
            raise ValueError(name)
    total = 0.0
    for name, w in case["loss_terms"]:
        total = total + (terms[name] if w == 1.0 else w * terms[name])
    return out, terms, total


def dsbn_buffers(model: TransformerModel) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items()
                       if k.startswith("dsbn."))


def run_step(case: dict, model: TransformerModel, t: Dict[str, torch.Tensor]) -> dict:
    """Forward (train) -> backward(total) -> clip_grad_norm_ -> Adam.step ->
    forward (train) again.  Returns everything that is recorded."""
    rec = {}
    cap = Capture(model)
    rec["dsbn_init"] = dsbn_buffers(model)
    model.train()
    model.zero_grad(set_to_none=True)
    out0, terms0, total0 = loss_terms(case, model, t)
    rec["capture0"] = dict(dsbn_in=cap.dsbn_in, dsbn_out=cap.dsbn_out,
                           dsbn_domains=cap.dsbn_domains, enc_out=cap.enc_out,
                           gene_embs=model.cur_gene_token_embs.detach().clone())
    cap.reset()
    rec["dsbn_after_forward0"] = dsbn_buffers(model)
    total0.backward()
    grads = OrderedDict()
    no_grad = []
    for n, p in model.named_parameters():
        if p.grad is None:
            no_grad.append(n)
            grads[n] = torch.zeros_like(p)
        else:
            grads[n] = p.grad.detach().clone()
    gn64 = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), case["max_norm"])
    opt = torch.optim.Adam(model.parameters(), lr=case["optim"]["lr"], eps=case["optim"]["eps"])
    opt.step()
    rec["after_step"] = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    out1, terms1, total1 = loss_terms(case, model, t)
    rec["capture1"] = dict(dsbn_domains=cap.dsbn_domains)
    cap.close()
    rec["dsbn_after_forward1"] = dsbn_buffers(model)
    rec.update(out0=out0, terms0=terms0, total0=total0, out1=out1, terms1=terms1,
               total1=total1, grads=grads, no_grad=no_grad, grad_norm=norm.detach().clone(),
               grad_norm_f64=gn64, opt_defaults=dict(opt.defaults))
    return rec


# --------------------------------------------------------------------------
# independent hand checks of the documented formulas
# --------------------------------------------------------------------------

def close(a, b, rtol=2e-5, atol=1e-6, what=""):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    err = (a - b).abs().max().item()
    assert torch.allclose(a, b, rtol=rtol, atol=atol), f"{what}: max abs diff {err:.3e}"
    return err


def hand_checks(case: dict, model0: TransformerModel, t: Dict[str, torch.Tensor], rec: dict) -> List[str]:
    notes = []
    o = {k: v.detach().double() for k, v in rec["out0"].items() if isinstance(v, torch.Tensor)}
    terms = rec["terms0"]
    target = t["target_values"].double()
    m = t["masked"].bool()
    if "mse" in terms:
        for name, key in (("mse", "mlm_output"), ("gepc", "mvc_output")):
            ref = ((o[key] - target)[m] ** 2).sum() / m.sum()
            close(terms[name], ref, what=name)
        for name, key in (("zero_nll", "mlm_zero_probs"), ("gepc_zero_nll", "mvc_zero_probs")):
            p = o[key][m].clamp(1.1920929e-07, 1 - 1.1920929e-07)
            y = (target[m] > 0).double()
            ref = -(y * p.log() + (1 - y) * (1 - p).log()).sum() / m.sum()
            close(terms[name], ref, what=name)
        notes.append("mse/gepc/zero_nll/gepc_zero_nll re-derived by hand (sum over masked / n_masked)")
    if "ecs" in terms:
        e = F.normalize(o["cell_emb"], dim=1)
        s = e @ e.T
        s.fill_diagonal_(0.0)
        s = s.clamp_min(0.0)
        ref = (1 - (s - case["ctor"]["ecs_threshold"]) ** 2).mean()
        close(terms["ecs"], ref, what="ecs")
        notes.append("ecs re-derived: mean over all B*B entries incl. the zeroed diagonal")
    if "cce" in terms:
        encs = rec["capture0"]["enc_out"]
        assert len(encs) == 2 and torch.equal(encs[0], encs[1]), "CCE passes differ"
        c = o["cell_emb"]
        cn = c / c.norm(dim=1, keepdim=True)
        sim = (cn @ cn.T) / 0.5
        ref = F.cross_entropy(sim, torch.arange(B))
        close(terms["cce"], ref, what="cce")
        notes.append("cce re-derived: CE(cos(cell_emb_i, cell_emb2_j)/0.5, arange(B)) with "
                     "cell_emb2 == cell_emb (dropout 0)")
    if "cls" in terms:
        close(terms["cls"], F.cross_entropy(o["cls_output"], t["celltype_labels"]), what="cls")
    if "dab" in terms:
        close(terms["dab"], F.cross_entropy(o["dab_output"], t["batch_labels"]), what="dab")
    cap = rec["capture0"]
    if case["ctor"].get("domain_spec_batchnorm"):
        dom = int(t["batch_labels"][0])
        n_calls = 2 if case["forward_kwargs"].get("CCE") else 1
        assert cap["dsbn_domains"] == [dom] * n_calls, cap["dsbn_domains"]
        assert rec["capture1"]["dsbn_domains"] == [dom] * n_calls
        x = cap["dsbn_in"][0].double()  # [B, d, L]
        assert torch.equal(cap["dsbn_in"][0], cap["dsbn_in"][-1])
        mean = x.mean(dim=(0, 2))
        var_b = x.var(dim=(0, 2), unbiased=False)
        var_u = x.var(dim=(0, 2), unbiased=True)
        y = (x - mean[None, :, None]) / torch.sqrt(var_b[None, :, None] + 6.1e-5)
        close(cap["dsbn_out"][0], y, rtol=1e-4, atol=2e-5, what="dsbn output")
        rm0 = rec["dsbn_init"][f"dsbn.bns.{dom}.running_mean"].double()
        rv0 = rec["dsbn_init"][f"dsbn.bns.{dom}.running_var"].double()
        rm, rv = rm0, rv0
        for _ in range(n_calls):
            rm = 0.9 * rm + 0.1 * mean
            rv = 0.9 * rv + 0.1 * var_u
        close(rec["dsbn_after_forward0"][f"dsbn.bns.{dom}.running_mean"], rm, what="running_mean")
        close(rec["dsbn_after_forward0"][f"dsbn.bns.{dom}.running_var"], rv, what="running_var")
        for k, v in rec["dsbn_init"].items():
            if not k.startswith(f"dsbn.bns.{dom}."):
                assert torch.equal(v, rec["dsbn_after_forward0"][k]), k
                assert torch.equal(v, rec["dsbn_after_forward1"][k]), k
        nbt = rec["dsbn_after_forward0"][f"dsbn.bns.{dom}.num_batches_tracked"].item()
        assert nbt == n_calls, nbt
        notes.append(f"DSBN re-derived: stats over axes (B, L) of [B, d, L] = {B * L} values per "
                     f"feature incl. padding and <cls>; biased var for normalising, unbiased for "
                     f"running_var; {n_calls} running-stat updates per model forward")
    # clip + Adam re-derived from the recorded raw grads
    gn = rec["grad_norm_f64"]
    close(rec["grad_norm"], gn, rtol=1e-5, what="grad norm")
    coef = min(1.0, case["max_norm"] / (float(rec["grad_norm"]) + 1e-6))
    lr, eps = case["optim"]["lr"], case["optim"]["eps"]
    p0 = dict(model0.named_parameters())
    max_err = 0.0
    for n, g in rec["grads"].items():
        if n in rec["no_grad"]:
            assert torch.equal(rec["after_step"][n], p0[n].detach()), n
            continue
        gc = g.double() * coef
        m1 = 0.1 * gc
        v1 = 0.001 * gc * gc
        upd = (lr / 0.1) * m1 / (torch.sqrt(v1) / math.sqrt(0.001) + eps)
        ref = p0[n].detach().double() - upd
        max_err = max(max_err, close(rec["after_step"][n], ref, rtol=1e-5, atol=1e-6, what=f"adam {n}"))
    notes.append(f"clip + Adam step re-derived in float64 from the recorded grads "
                 f"(max abs diff {max_err:.1e})")
    return notes


def fp64_check(case: dict, model0: TransformerModel, t: Dict[str, torch.Tensor], rec: dict) -> dict:
    """The same step in float64 (to show how much fp32 noise to expect)."""
    m = copy.deepcopy(model0).double()
    t64 = {k: (v.double() if v.is_floating_point() else v) for k, v in t.items()}
    m.train()
    _, terms, total = loss_terms(case, m, t64)
    total.backward()
    res = OrderedDict()
    res["losses_step0_f64"] = OrderedDict((k, f64(v)) for k, v in terms.items())
    res["losses_step0_f64"]["total"] = f64(total)
    res["max_rel_diff_losses_f32_vs_f64"] = max(
        abs(f64(rec["terms0"][k]) - res["losses_step0_f64"][k]) / max(1e-12, abs(res["losses_step0_f64"][k]))
        for k in terms)
    gmax, gscale = 0.0, 0.0
    gn2 = 0.0
    for n, p in m.named_parameters():
        g64 = p.grad if p.grad is not None else torch.zeros_like(p)
        gn2 += float(g64.pow(2).sum())
        gmax = max(gmax, (rec["grads"][n].double() - g64).abs().max().item())
        gscale = max(gscale, g64.abs().max().item())
    res["grad_norm_before_clip_f64"] = math.sqrt(gn2)
    res["max_abs_diff_grads_f32_vs_f64"] = gmax
    res["max_abs_grad_f64"] = gscale
    # sensitivity of the Adam step to fp32 gradient noise: clip + Adam in f64
    # from the f64 grads, compared with the recorded (fp32) after_step
    coef = min(1.0, case["max_norm"] / (math.sqrt(gn2) + 1e-6))
    lr, eps = case["optim"]["lr"], case["optim"]["eps"]
    p0 = dict(model0.named_parameters())
    dmax, n_tiny = 0.0, 0
    ref_sd = OrderedDict((k, v.detach().clone()) for k, v in rec["after_step"].items())
    zero_grads = OrderedDict()
    for n, p in m.named_parameters():
        if p.grad is None:
            continue
        gc = p.grad * coef
        n_tiny += int(((gc != 0) & (gc.abs() < 10 * eps)).sum())
        upd = lr * gc / (gc.abs() + eps)  # step-1 Adam: m_hat = g, sqrt(v_hat) = |g|
        ref = p0[n].detach().double() - upd
        ref_sd[n] = ref.float()
        dmax = max(dmax, (rec["after_step"][n].double() - ref).abs().max().item())
        # analytically zero gradient (f64 ~ 1e-15) that fp32 turns into noise
        z = (p.grad.abs() <= 1e-10 * gscale) & (rec["grads"][n] != 0)
        if z.any():
            idx = torch.nonzero(z.flatten()).flatten()
            zero_grads[n] = OrderedDict(
                n_entries=int(z.sum()), flat_index_range=[int(idx.min()), int(idx.max()) + 1],
                max_abs_f32_grad=float(rec["grads"][n][z].abs().max()),
                max_abs_after_step_diff_vs_f64_step=float(
                    (rec["after_step"][n].double() - ref).abs()[z].max()))
    res["max_abs_diff_after_step_f32_vs_f64_step"] = dmax
    res["n_clipped_grad_entries_below_10eps"] = n_tiny
    res["analytically_zero_grads"] = zero_grads
    # how much that moves the step-1 losses: fp32 forward with the f64-step weights
    m2 = copy.deepcopy(model0)
    m2.load_state_dict(ref_sd)
    m2.train()
    with torch.no_grad():
        _, terms2, _ = loss_terms(case, m2, t)
    res["max_rel_diff_losses_step1_f32_step_vs_f64_step"] = max(
        abs(f64(rec["terms1"][k]) - f64(terms2[k])) / max(1e-12, abs(f64(terms2[k]))) for k in terms2)
    return res


# --------------------------------------------------------------------------
# writing + verification
# --------------------------------------------------------------------------

def np_f32(t: torch.Tensor) -> np.ndarray:
    return msf.to_np(t)


def write_case(case: dict, out_root: Path, idx: int) -> dict:
    name = case["name"]
    folder = out_root / name
    folder.mkdir(parents=True)
    seed = SEED + 1000 * (idx + 1)
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng)
    model = build_model(case, vocab, seed)
    g = torch.Generator().manual_seed(seed)
    msf.randomize_(model, g)
    model0 = copy.deepcopy(model)
    init_sd = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    inp = make_inputs(case, vocab, rng)
    mask_seed = apply_masking(case, inp, seed)
    t = to_torch(inp)

    rec = run_step(case, model, t)
    checks = hand_checks(case, model0, t, rec)
    f64c = fp64_check(case, model0, t, rec)

    # ---- files
    sd = msf.export_state_dict(model0, QKV_NAMING, False)
    torch.save(sd, folder / "best_model.pt")
    args = msf.released_args(case["ctor"]["d_model"], case["ctor"]["nhead"], case["ctor"]["d_hid"],
                             case["ctor"]["nlayers"], case["ctor"]["nlayers_cls"], PAD_VALUE,
                             MASK_VALUE, case["ctor"]["input_emb_style"], dropout=0.0)
    msf.write_json(folder / "args.json", args)
    msf.write_json(folder / "vocab.json", vocab)

    outputs = OrderedDict()
    for k in OUTPUT_KEYS:
        if k in rec["out0"]:
            outputs[k] = rec["out0"][k]
    cap = rec["capture0"]
    outputs["encoder_output"] = cap["enc_out"][0]
    outputs["gene_token_embs"] = cap["gene_embs"]
    if cap["dsbn_in"]:
        outputs["dsbn_input"] = cap["dsbn_in"][0].permute(0, 2, 1)
        outputs["dsbn_output"] = cap["dsbn_out"][0].permute(0, 2, 1)
    for k in OUTPUT_KEYS:
        if k in rec["out1"]:
            outputs[f"step1_{k}"] = rec["out1"][k]
    msf.save_io(folder / "io.safetensors", inp, outputs)
    save_file(OrderedDict((k, np_f32(v)) for k, v in rec["grads"].items()),
              str(folder / "grads.safetensors"))
    save_file(OrderedDict((k, np_f32(v)) for k, v in rec["after_step"].items()),
              str(folder / "after_step.safetensors"))
    dsbn_file = None
    if rec["dsbn_init"]:
        dsbn_file = "dsbn_stats.safetensors"
        ds = OrderedDict()
        for tag, d in (("init", rec["dsbn_init"]), ("after_forward0", rec["dsbn_after_forward0"]),
                       ("after_forward1", rec["dsbn_after_forward1"])):
            for k, v in d.items():
                ds[f"{tag}.{k}"] = np_f32(v)
        save_file(ds, str(folder / dsbn_file))

    mcase = dict(name=name, **{"class": "TransformerModel"}, ctor=case["ctor"],
                 qkv_naming=QKV_NAMING, module_prefix=False,
                 forward_kwargs=case["forward_kwargs"], mask_value=MASK_VALUE,
                 notes=["training-step fixture; see train.json"])
    msf.write_json(folder / "model.json", msf.model_json(mcase, len(vocab), list(outputs.keys())))

    tj = OrderedDict()
    tj["case"] = name
    tj["model_class"] = "TransformerModel"
    tj["constructor_kwargs"] = OrderedDict([("ntoken", len(vocab))] + list(case["ctor"].items())
                                           + [("vocab", "vocab.json")])
    tj["qkv_naming"] = QKV_NAMING
    tj["key_spelling"] = ("best_model.pt, grads.safetensors and after_step.safetensors all use "
                          "PyTorch names (self_attn.in_proj_weight/in_proj_bias, "
                          "self_attn.out_proj.*), no module. prefix")
    tj["special_ids"] = {s: vocab[s] for s in msf.SPECIALS}
    tj["forward_kwargs"] = case["forward_kwargs"]
    tj["forward_call"] = ("model.train(); model(src, input_values, src_key_padding_mask="
                          "src==<pad>, batch_labels=" + ("batch_labels" if "batch_labels" in inp else "None")
                          + ", " + ", ".join(f"{k}={v}" for k, v in case["forward_kwargs"].items()) + ")")
    tj["inputs"] = OrderedDict(
        B=B, L=L, row_lengths_incl_cls=case["lengths"], cls_value=CLS_VALUE, pad_value=PAD_VALUE,
        mask_value=MASK_VALUE, mask_ratio=case["mask_ratio"], mask_seed=mask_seed,
        masking=(f"np.random.seed({mask_seed}); input_values = scgpt.tokenizer.random_mask_value("
                 f"values, mask_ratio={case['mask_ratio']}, mask_value={MASK_VALUE}, "
                 f"pad_value={PAD_VALUE}); masked = input_values == {MASK_VALUE}"),
        n_masked=int(inp["masked"].sum()),
        n_masked_per_row=inp["masked"].sum(axis=1).tolist(),
        cls_masked_rows=np.where(inp["masked"][:, 0])[0].tolist(),
        n_masked_zero_targets=int((inp["values"][inp["masked"].astype(bool)] == 0).sum()),
        batch_labels=case["batch_labels"], celltype_labels=case["celltype_labels"],
    )
    tj["loss_weights"] = OrderedDict(case["loss_terms"])
    tj["loss_order"] = [n for n, _ in case["loss_terms"]]
    tj["total_formula"] = ("total = 0.0; for (term, w) in loss_order: total = total + "
                           "(term if w == 1 else w * term)   (fp32, in this order, as the tutorials)")
    tj["optimizer"] = OrderedDict(
        type="torch.optim.Adam", lr=case["optim"]["lr"], betas=[0.9, 0.999], eps=case["optim"]["eps"],
        weight_decay=0.0, amsgrad=False, steps=1,
        update=("m = 0.1*g; v = 0.001*g^2; p -= (lr/0.1) * m / (sqrt(v)/sqrt(0.001) + eps) "
                "(g = clipped grad; torch's single-tensor Adam, bias corrections of step 1)"),
        torch_defaults={k: (v if isinstance(v, (int, float, bool, type(None), str)) else str(v))
                        for k, v in rec["opt_defaults"].items()})
    gn = float(rec["grad_norm"])
    tj["clip"] = OrderedDict(
        max_norm=case["max_norm"], norm_type=2.0,
        formula="total_norm = ||(||g_p||_2 for p with grad)||_2; coef = min(1, max_norm/(total_norm+1e-6)); g *= coef",
        clip_coef=min(1.0, case["max_norm"] / (gn + 1e-6)))
    tj["losses_step0"] = OrderedDict((k, f64(v)) for k, v in rec["terms0"].items())
    tj["losses_step0"]["total"] = f64(rec["total0"])
    tj["grad_norm_before_clip"] = gn
    tj["grad_norm_before_clip_f64_from_f32_grads"] = rec["grad_norm_f64"]
    tj["losses_step1"] = OrderedDict((k, f64(v)) for k, v in rec["terms1"].items())
    tj["losses_step1"]["total"] = f64(rec["total1"])
    tj["grads"] = ("grads.safetensors: raw (pre-clip) gradient of total for every parameter, "
                   "PyTorch names/layouts; parameters with grad None are stored as zeros and "
                   "listed in params_without_grad (Adam skips them: after_step == initial)")
    tj["params_without_grad"] = rec["no_grad"]
    tj["n_parameters"] = len(rec["grads"])
    if dsbn_file:
        dom = case["batch_labels"][0]
        n_calls = 2 if case["forward_kwargs"].get("CCE") else 1
        nbt = {tag: {str(i): int(rec[f"dsbn_{tag}"][f"dsbn.bns.{i}.num_batches_tracked"])
                     for i in range(case["ctor"]["num_batch_labels"])}
               for tag in ("init", "after_forward0", "after_forward1")}
        tj["dsbn"] = OrderedDict(
            file=dsbn_file,
            keys="{init,after_forward0,after_forward1}.dsbn.bns.{i}.{running_mean,running_var,num_batches_tracked}",
            used_domain=dom, momentum=0.1, eps=6.1e-5, affine=False,
            init="randomised like the other fixtures (also in best_model.pt); num_batches_tracked 0",
            updates_per_forward=n_calls,
            update=("per BN call, over the [B, d, L] input (axes B and L, padding and <cls> "
                    "included, N = B*L): running_mean = 0.9*rm + 0.1*mean; running_var = "
                    "0.9*rv + 0.1*var_unbiased (N-1); normalise with the biased var + eps"),
            num_batches_tracked=nbt,
            after_step_safetensors="after_step.safetensors holds the buffers after forward 0 (before the step-1 forward)")
    tj["fp64_check"] = f64c
    tj["hand_checks"] = checks
    tj["io_safetensors"] = OrderedDict(
        inputs=list(inp.keys()), outputs_step0=list(k for k in outputs if not k.startswith("step1_")),
        outputs_step1=[k for k in outputs if k.startswith("step1_")])
    tj["files"] = sorted(p.name for p in folder.iterdir()) + ["train.json"]
    tj["seed"] = seed
    tj["torch_version"] = torch.__version__
    tj["scgpt_version"] = scgpt.__version__
    tj["numpy_version"] = np.__version__
    tj["notes"] = case_notes(case, rec, f64c)
    msf.write_json(folder / "train.json", tj)

    verify(case, folder, vocab, seed, rec, tj)
    case["_summary"] = (tj["losses_step0"], tj["losses_step1"], gn)
    return tj


def case_notes(case: dict, rec: dict, f64c: dict) -> List[str]:
    n = [
        "dropout 0.0 everywhere: the forward is deterministic; model.train() still matters "
        "(DSBN/BatchNorm use batch statistics, nn.TransformerEncoder takes its plain math path)",
        "CrossEntropyLoss (cls, dab, and cce inside forward) uses mean reduction over the B rows",
        "masked_mse_loss = F.mse_loss(pred*m, target*m, reduction='sum') / m.sum(); "
        "criterion_neg_log_bernoulli = -(Bernoulli(probs=p).log_prob((target>0).float())*m).sum()/m.sum() "
        "(torch converts p to logits with p clamped to [eps, 1-eps], eps = 1.19e-7; target>0 means "
        "'non-zero', i.e. zero_probs is trained as P(non-zero))",
        "<cls> value 0 (tokenize_and_pad_batch convention of both fine-tuning tutorials); as "
        "pad_value is -2, random_mask_value treats <cls> and zero-valued genes as mask "
        "candidates, so <cls> is masked in some rows (its input value becomes -1 and it is a "
        "loss position with target 0)",
        "padded positions (src == <pad>) are never masked (value -2 == pad_value) and are "
        "excluded as attention keys; the <pad> embedding row gets a zero gradient (padding_idx)",
    ]
    if case["forward_kwargs"].get("CCE"):
        n.append("CCE: forward() calls _encode twice (second pass for cell2); with dropout 0 both "
                 "passes are identical, so loss_cce = CE(cos(c_i, c_j)/0.5, arange(B)) with gradient "
                 "through BOTH passes; the second _encode also overwrites cur_gene_token_embs, so "
                 "MVC's gene side comes from the second pass; and DSBN running stats are updated "
                 "twice per forward (num_batches_tracked +2)")
    if case["forward_kwargs"].get("ECS"):
        n.append("ECS: e = F.normalize(cell_emb); S = e e^T; diagonal set to 0; S = relu(S); "
                 "loss_ecs = mean over all B*B entries (diagonal included as 1 - thr^2) of "
                 "1 - (S - thr)^2, thr = ecs_threshold = 0.8; recorded raw, weight 10 in total")
    if case["ctor"].get("do_dab"):
        n.append("DAB: dab_output = grad_reverse_discriminator(cell_emb) is returned whenever "
                 "do_dab (not gated by a flag); the gradient reversal (x -1, lambda 1) acts only "
                 "on the gradient flowing into cell_emb; the discriminator's own parameters get "
                 "ordinary gradients")
    if case["ctor"].get("use_batch_labels"):
        n.append("use_batch_labels: ExprDecoder input = concat(h, batch_emb repeated over L) "
                 "(2d wide); MVC cell side = concat(cell_emb, batch_emb); batch_emb = "
                 "batch_encoder(batch_labels) uses each cell's own label, DSBN uses batch_labels[0] "
                 "for the whole minibatch")
    if f64c["analytically_zero_grads"]:
        n.append("analytically zero gradients (see fp64_check.analytically_zero_grads): the key "
                 "third [d:2d] of every self_attn.in_proj_bias (adding a constant to all logits of "
                 "a softmax row changes nothing)"
                 + (", and value_encoder.norm.bias (a per-feature constant removed by the "
                    "following non-affine DSBN mean subtraction)" if case["ctor"].get("domain_spec_batchnorm") else "")
                 + "; their recorded fp32 grads are rounding noise. With Adam eps "
                 f"{case['optim']['eps']:g} the first step turns noise g into lr*g/(|g|+eps), so "
                 "after_step there can carry noise of up to ~lr when that noise is comparable to eps: compare those entries with atol 2*lr "
                 f"({2 * case['optim']['lr']:g}) or skip them (max diff vs an f64 step: "
                 f"{max(v['max_abs_after_step_diff_vs_f64_step'] for v in f64c['analytically_zero_grads'].values()):.1e})")
    if rec["no_grad"]:
        n.append("parameters without gradient (outputs not in the loss): "
                 + ", ".join(rec["no_grad"]))
    return n


def verify(case: dict, folder: Path, vocab: Dict[str, int], seed: int, rec: dict, tj: dict) -> None:
    """Fresh model (other init) + the files -> the whole step again, bit for bit."""
    sd = torch.load(folder / "best_model.pt", map_location="cpu", weights_only=True)
    model = build_model(case, json.loads((folder / "vocab.json").read_text()), seed + 7777)
    res = model.load_state_dict(OrderedDict((msf.unrename_key(k), v) for k, v in sd.items()), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    io = load_file(str(folder / "io.safetensors"))
    names = ["src", "values", "input_values", "target_values", "src_key_padding_mask",
             "batch_labels", "celltype_labels", "masked"]
    t = {k: torch.from_numpy(io[k]) for k in names if k in io}
    assert io["src"].dtype == np.int64 and io["celltype_labels"].dtype == np.int64
    assert io["masked"].dtype == np.uint8 and io["src_key_padding_mask"].dtype == np.uint8
    r2 = run_step(case, model, t)
    for k in rec["terms0"]:
        assert torch.equal(rec["terms0"][k], r2["terms0"][k]), f"{case['name']}: {k} step0"
        assert torch.equal(rec["terms1"][k], r2["terms1"][k]), f"{case['name']}: {k} step1"
        assert tj["losses_step0"][k] == f64(r2["terms0"][k]) and tj["losses_step1"][k] == f64(r2["terms1"][k])
    assert tj["losses_step0"]["total"] == f64(r2["total0"]) and tj["losses_step1"]["total"] == f64(r2["total1"])
    assert tj["grad_norm_before_clip"] == float(r2["grad_norm"])
    for k in OUTPUT_KEYS:
        if k in r2["out0"]:
            assert np.array_equal(io[k], np_f32(r2["out0"][k])), k
            assert np.array_equal(io[f"step1_{k}"], np_f32(r2["out1"][k])), k
    grads = load_file(str(folder / "grads.safetensors"))
    assert set(grads) == set(r2["grads"]) == set(dict(model.named_parameters()))
    for k, v in r2["grads"].items():
        assert np.array_equal(grads[k], np_f32(v)), f"grad {k}"
    after = load_file(str(folder / "after_step.safetensors"))
    assert set(after) == set(r2["after_step"])
    for k, v in r2["after_step"].items():
        assert np.array_equal(after[k], msf.to_np(v)), f"after_step {k}"
        if k in dict(model.named_parameters()) and k not in r2["no_grad"]:
            assert not torch.equal(v, sd[k]), f"{k} not updated"
    if (folder / "dsbn_stats.safetensors").exists():
        ds = load_file(str(folder / "dsbn_stats.safetensors"))
        for tag in ("init", "after_forward0", "after_forward1"):
            for k, v in r2[f"dsbn_{tag}"].items():
                assert np.array_equal(ds[f"{tag}.{k}"], msf.to_np(v)), f"{tag}.{k}"
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == 0, k


def write_readme(out_root: Path, summaries: List[dict]) -> None:
    lines = [
        "# scGPT training-step golden fixtures",
        "",
        "Generated by `scripts/reference/make_train_goldens.py` from the real "
        f"`scgpt=={scgpt.__version__}` package on PyTorch {torch.__version__} (CPU, fp32, "
        "single thread, `use_fast_transformer=False`, dropout 0). Do not edit by hand; rerun "
        "`.venv-ref/bin/python scripts/reference/make_train_goldens.py`.",
        "",
        "Each case folder is a model folder (`args.json`, `vocab.json` with specials "
        "`<pad>`,`<cls>`,`<eoc>` last, `best_model.pt` = initial weights with PyTorch key "
        "names `self_attn.in_proj_*`, `model.json`) plus:",
        "",
        "- `io.safetensors`: inputs `src` i64 [B,L], `values` f32 (original), `input_values` "
        "f32 (after `random_mask_value`, fed to the model), `target_values` f32 (= values), "
        "`src_key_padding_mask` u8 (1 = `<pad>`), `batch_labels` i64 [B] (only if the model "
        "takes them), `celltype_labels` i64 [B], `masked` u8 (= input_values == -1); step-0 "
        "outputs (`mlm_output`, `mlm_zero_probs`, `mvc_output`, `mvc_zero_probs`, `cell_emb`, "
        "`cls_output`, `dab_output` where present), debugging intermediates "
        "(`encoder_output`, `gene_token_embs`, `dsbn_input`/`dsbn_output` [B,L,d]) and the "
        "same outputs after the step as `step1_*`.",
        "- `grads.safetensors`: raw (pre-clip) gradient of the total loss for every parameter "
        "(PyTorch names and layouts; zeros where PyTorch's grad is None, see "
        "`train.json` `params_without_grad`).",
        "- `after_step.safetensors`: full state dict after clip_grad_norm_(1.0) + one Adam step "
        "(buffers as after the step-0 forward).",
        "- `dsbn_stats.safetensors` (DSBN case): running stats of every domain at `init`, "
        "`after_forward0`, `after_forward1`.",
        "- `train.json`: constructor kwargs, forward flags, loss weights and summation order, "
        "optimizer and clip settings, `losses_step0` / `losses_step1` (each raw term + total), "
        "`grad_norm_before_clip`, DSBN info, an fp64 rerun (`fp64_check`, how much fp32 "
        "noise to expect), notes on scgpt quirks.",
        "",
        "Procedure: `model.train()`; forward with the recorded flags; terms as the tutorials "
        "compute them; `total.backward()`; `clip_grad_norm_(params, 1.0)`; `Adam.step()`; "
        "forward again on the same batch (train mode) -> `losses_step1`. Compare losses with a "
        "relative tolerance (the MSE terms are O(10^2..10^3)); padded rows of per-token outputs "
        "are computed normally in train mode but do not enter any loss.",
        "",
        "Caveats for a reimplementation (details in each `train.json` `notes`):",
        "",
        "- `<cls>` has input value 0 (the tutorials' `tokenize_and_pad_batch`), so "
        "`random_mask_value` (pad_value -2) may mask it: in `finetune_all` rows "
        f"{summaries[0]['inputs']['cls_masked_rows']} have "
        "`<cls>` masked (input -1, a loss position with target 0).",
        "- DSBN (`finetune_all`) normalises over axes B and L of all B*L tokens, padding and "
        "`<cls>` included, with `batch_labels[0]`'s BatchNorm; `forward(CCE=True)` runs "
        "`_encode` twice, so running stats move twice per forward.",
        "- Some gradients are analytically zero (the key third of every "
        "`self_attn.in_proj_bias`; `value_encoder.norm.bias` under DSBN). Their fp32 values are "
        "rounding noise, and Adam's first step (eps 1e-8) blows noise up to about lr. Compare "
        "those `after_step` entries with atol 2*lr, or skip them "
        "(`train.json` `fp64_check.analytically_zero_grads`).",
        "",
        "| case | recipe | step-0 total | step-1 total | grad norm |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(f"| `{s['case']}` | {', '.join(s['loss_order'])} | "
                     f"{s['losses_step0']['total']:.6f} | {s['losses_step1']['total']:.6f} | "
                     f"{s['grad_norm_before_clip']:.4f} |")
    lines.append("")
    (out_root / "README.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "train")
    args = ap.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out_root = args.out
    if not prepare_out_dir(out_root, "README.md", "finetune_all"):
        return 2
    log(f"scgpt {scgpt.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    summaries = []
    for i, case in enumerate(CASES):
        tj = write_case(case, out_root, i)
        summaries.append(tj)
        l0, l1 = tj["losses_step0"], tj["losses_step1"]
        log(f"  {case['name']}: grad norm {tj['grad_norm_before_clip']:.6g}, "
            f"masked {tj['inputs']['n_masked']}, verified bit-exact after reload")
        for k in l0:
            log(f"    {k:14s} step0 {l0[k]:.9g}  step1 {l1[k]:.9g}")
        log(f"    fp32 vs fp64: losses max rel {tj['fp64_check']['max_rel_diff_losses_f32_vs_f64']:.1e}, "
            f"grads max abs {tj['fp64_check']['max_abs_diff_grads_f32_vs_f64']:.1e} "
            f"(max |grad| {tj['fp64_check']['max_abs_grad_f64']:.3g})")
    write_readme(out_root, summaries)
    total = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file())
    log(f"total fixture size {total / 1e6:.3f} MB; {time.time() - t0:.1f} s")
    assert total < 1e6, "fixtures too large"
    return 0


if __name__ == "__main__":
    sys.exit(main())
