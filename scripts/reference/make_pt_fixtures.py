#!/usr/bin/env python3
"""Generate the small PyTorch checkpoints used by core/tests/pt_reader.rs.

Run with a Python that has torch installed, e.g.

    python3 -m venv .venv-ref && .venv-ref/bin/pip install torch numpy   (or: bash scripts/reference/setup.sh)
        .venv-ref/bin/python scripts/reference/make_pt_fixtures.py core/tests/fixtures/pt

Valid fixtures are written by real `torch.save`. The hostile ones are either real
`torch.save` output of objects whose `__reduce__` names a dangerous callable, or archives
assembled with `pickle` + `zipfile` exactly the way torch lays them out (folder prefix,
`data.pkl`, `data/<key>` storage records, persistent ids `('storage', torch.FloatStorage,
key, 'cpu', numel)`), then tampered with. None of the hostile files is ever loaded here.

All values are deterministic; the Rust tests hard-code the expected numbers.
"""

import collections
import io
import os
import pickle
import struct
import sys
import zipfile

import torch
from torch import nn


# ---------------------------------------------------------------- valid checkpoints


def state_dict_fixture():
    """A real module state dict (OrderedDict with `_metadata`, BatchNorm's int64
    `num_batches_tracked`) plus tensors covering every dtype and view kind."""
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4 - 0.5)
        model[0].bias.copy_(torch.tensor([0.25, -0.75]))
        model[1].running_mean.copy_(torch.tensor([1.5, -2.0]))
        model[1].running_var.copy_(torch.tensor([0.5, 4.0]))
        model[1].num_batches_tracked.fill_(7)
    sd = model.state_dict()
    assert isinstance(sd, collections.OrderedDict) and hasattr(sd, "_metadata")

    sd["extra.f16"] = torch.tensor([[0.5, -1.25, 3.0], [65504.0, -0.0, 0.099975586]], dtype=torch.float16)
    sd["extra.bf16"] = torch.tensor([1.0, -2.5, 3.140625, 1e30], dtype=torch.bfloat16)
    sd["extra.f64"] = torch.tensor([1.0, -1e-3, 123456.789], dtype=torch.float64)
    sd["extra.i32"] = torch.tensor([-3, 0, 2147483647], dtype=torch.int32)
    sd["extra.i16"] = torch.tensor([-32768, 5], dtype=torch.int16)
    sd["extra.i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["extra.u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["extra.bool"] = torch.tensor([True, False, True])

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd["extra.base"] = base
    sd["extra.transposed"] = base.t()  # shares base's storage, stride (1, 4)
    assert not sd["extra.transposed"].is_contiguous()

    shared = torch.arange(100, 112, dtype=torch.float32).reshape(3, 4)
    sd["extra.row0"] = shared[0]  # offset 0
    sd["extra.rows12"] = shared[1:]  # same storage, offset 4
    assert sd["extra.rows12"].storage_offset() == 4

    sd["extra.strided"] = torch.arange(200, 212, dtype=torch.float32).reshape(3, 4)[:, 1::2]
    sd["extra.expanded"] = torch.tensor([7.0]).expand(2, 3)  # stride (0, 0)
    sd["extra.empty"] = torch.zeros(0, 3)
    return sd


def nested_fixture():
    """A training checkpoint: nested dicts, an optimizer state (int keys, lists, tuples),
    and non-tensor leaves."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(2, 2)
            self.decoder = nn.Linear(2, 1, bias=False)

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.decoder(net.encoder(torch.ones(1, 2))).sum().backward()
    opt.step()  # fills the optimizer state (step, exp_avg, exp_avg_sq per parameter)
    with torch.no_grad():  # then pin the weights to exact values
        net.encoder.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        net.encoder.bias.copy_(torch.tensor([0.5, -0.5]))
        net.decoder.weight.copy_(torch.tensor([[-1.0, 1.0]]))
    return {
        "epoch": 3,
        "lr": 0.001,
        "name": "run1",
        "done": False,
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
    }


def parameters_fixture():
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    q = nn.Parameter(torch.tensor([3.0]))
    q.tag = "with-state"  # makes torch use _rebuild_parameter_with_state
    return {"p": p, "q": q}


# ------------------------------------------------------------- hostile checkpoints


class Evil:
    """What a trojaned checkpoint looks like: unpickling calls os.system."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


class EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned')",))


class FakeStorage:
    def __init__(self, storage_cls, key, numel):
        self.storage_cls, self.key, self.numel = storage_cls, key, numel


class FakeTensor:
    """Pickles exactly like a torch tensor, but with whatever offset/size/stride we like."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()),
        )


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.storage_cls, obj.key, "cpu", obj.numel)
        return None


def torch_like_zip(obj, records, prefix="archive", extra_entries=(), pickle_bytes=None, compress=()):
    """Lay out an archive the way torch.save does: <prefix>/data.pkl, byteorder, data/<key>,
    version. `compress` names records to deflate."""
    if pickle_bytes is None:
        buf = io.BytesIO()
        TorchLikePickler(buf, protocol=2).dump(obj)
        pickle_bytes = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pickle_bytes)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, data in records.items():
            method = zipfile.ZIP_DEFLATED if key in compress else zipfile.ZIP_STORED
            z.writestr(zipfile.ZipInfo(f"{prefix}/data/{key}"), data, compress_type=method)
        z.writestr(f"{prefix}/version", "3\n")
        for name, data in extra_entries:
            z.writestr(zipfile.ZipInfo(name), data)
    return out.getvalue()


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)


def patch_uncompressed_size(blob, entry_name, new_size):
    """Rewrite the declared uncompressed size of one entry in both its local header and its
    central directory record (what a zip bomb does)."""
    blob = bytearray(blob)
    name = entry_name.encode()
    patched = 0
    # local file headers: signature, ..., uncompressed size at +22, name length at +26, name at +30
    pos = 0
    while (pos := blob.find(b"PK\x03\x04", pos)) >= 0:
        n = struct.unpack_from("<H", blob, pos + 26)[0]
        if blob[pos + 30 : pos + 30 + n] == name:
            struct.pack_into("<I", blob, pos + 22, new_size)
            patched += 1
        pos += 4
    # central directory: uncompressed size at +24, name length at +28, name at +46
    pos = 0
    while (pos := blob.find(b"PK\x01\x02", pos)) >= 0:
        n = struct.unpack_from("<H", blob, pos + 28)[0]
        if blob[pos + 46 : pos + 46 + n] == name:
            struct.pack_into("<I", blob, pos + 24, new_size)
            patched += 1
        pos += 4
    assert patched == 2, patched
    return bytes(blob)


def save_bytes(obj, **kwargs):
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "core/tests/fixtures/pt"
    os.makedirs(out_dir, exist_ok=True)
    files = {}

    # Valid, written by torch.save itself.
    files["state_dict.pt"] = save_bytes(state_dict_fixture())
    files["nested.pt"] = save_bytes(nested_fixture())
    files["proto4.pt"] = save_bytes(
        {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t(), "b": torch.tensor(5, dtype=torch.int64)},
        pickle_protocol=4,
    )
    files["parameters.pt"] = save_bytes(parameters_fixture())
    files["tensor_only.pt"] = save_bytes(torch.arange(3, dtype=torch.float32))
    # Saved to a path, so the top folder is the file stem rather than "archive".
    torch.save({"w": torch.tensor([1.5])}, os.path.join(out_dir, "stem_named.pt"))

    # Hostile: real torch.save output whose pickle calls os.system / eval on load.
    files["evil_posix_system.pt"] = save_bytes({"w": torch.zeros(2), "payload": Evil()})
    files["evil_builtins_eval.pt"] = save_bytes({"w": torch.zeros(2), "payload": EvilEval()})
    # Protocol 4 names globals with STACK_GLOBAL (and Python 3 module names).
    files["evil_stack_global.pt"] = save_bytes({"w": torch.zeros(2), "payload": EvilEval()}, pickle_protocol=4)
    # Protocol 4 pickles a set with EMPTY_SET, an opcode a state dict never needs.
    files["unknown_opcode.pt"] = save_bytes({"w": torch.zeros(2), "tags": {"a"}}, pickle_protocol=4)
    # Pre-1.6 format: a bare pickle stream.
    files["legacy.pt"] = save_bytes({"w": torch.zeros(2)}, _use_new_zipfile_serialization=False)
    files["lfs_pointer.pt"] = (
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:0000000000000000000000000000000000000000000000000000000000000000\nsize 123\n"
    )

    # Hostile: torch-layout archives with bad tensor metadata.
    six = FakeStorage(torch.FloatStorage, "0", 6)
    files["oob_shape.pt"] = torch_like_zip(
        {"ok": FakeTensor(six, 0, (2, 3), (3, 1)), "big": FakeTensor(six, 0, (4, 4), (4, 1))},
        {"0": f32(*range(6))},
    )
    files["oob_offset.pt"] = torch_like_zip(
        {"shifted": FakeTensor(six, 5, (2,), (1,))}, {"0": f32(*range(6))}
    )
    files["oob_stride.pt"] = torch_like_zip(
        {"strided": FakeTensor(six, 0, (2, 2), (1, 1 << 40))}, {"0": f32(*range(6))}
    )
    files["missing_storage.pt"] = torch_like_zip(
        {"ghost": FakeTensor(FakeStorage(torch.FloatStorage, "1", 2), 0, (2,), (1,))},
        {"0": f32(1.0, 2.0)},
    )
    files["short_storage.pt"] = torch_like_zip(
        {"short": FakeTensor(FakeStorage(torch.FloatStorage, "0", 100), 0, (2,), (1,))},
        {"0": f32(1.0, 2.0)},
    )
    ok = {"w": FakeTensor(FakeStorage(torch.FloatStorage, "0", 2), 0, (2,), (1,))}
    files["traversal.pt"] = torch_like_zip(
        ok, {"0": f32(1.0, 2.0)}, extra_entries=[("archive/../../../tmp/evil.sh", b"echo pwned\n")]
    )
    files["absolute_path.pt"] = torch_like_zip(
        ok, {"0": f32(1.0, 2.0)}, extra_entries=[("/etc/cron.d/evil", b"* * * * * root sh\n")]
    )
    # 64 KiB of zeros deflates to ~100 bytes; then claim it inflates to 2 GiB.
    bomb_obj = {"w": FakeTensor(FakeStorage(torch.FloatStorage, "0", 16384), 0, (16384,), (1,))}
    bomb = torch_like_zip(bomb_obj, {"0": bytes(65536)}, compress={"0"})
    files["zip_bomb.pt"] = patch_uncompressed_size(bomb, "archive/data/0", 0x7FFFFFFF)
    files["truncated_pickle.pt"] = torch_like_zip(
        None, {"0": f32(1.0, 2.0)}, pickle_bytes=zipfile.ZipFile(io.BytesIO(files["state_dict.pt"])).read("archive/data.pkl")[:200]
    )
    # Same tensors, but the byteorder record says big-endian.
    src = zipfile.ZipFile(io.BytesIO(save_bytes({"w": torch.tensor([1.0, 2.0])})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            data = b"big" if info.filename.endswith("/byteorder") else src.read(info.filename)
            z.writestr(info.filename, data)
    files["big_endian.pt"] = out.getvalue()

    for name, data in files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"wrote {len(os.listdir(out_dir))} files, {total} bytes, to {out_dir}")


if __name__ == "__main__":
    main()
