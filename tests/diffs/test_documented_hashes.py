"""The hashes a device port must reproduce, recomputed from their documented byte layout alone.

docs/neural_diff.md (File format) and docs/device.md (Hash) describe `payload_sha256` and
`weights_sha256` for ports to other languages; these tests rebuild both with hashlib, json and
struct only, so the documents cannot drift from the files the package writes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch

from lightning_amortized.diffs import export_diff_from_weights, weights_sha256


def _named(h: "hashlib._Hash", arrays: dict[str, np.ndarray]) -> None:
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        for part in (json.dumps([name, a.dtype.name, list(a.shape)]).encode("utf-8"), a.tobytes()):
            h.update(struct.pack("<Q", len(part)))
            h.update(part)


def _metadata(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n])["__metadata__"]


def test_payload_and_weights_hashes_follow_their_documented_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = {"enc.weight": torch.randn(40, 30), "héad.bias": torch.randn(7)}  # a non-ASCII name: escaped in the JSON
    tuned = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
    tuned["héad.bias"] += 1.0  # among the kept entries: both names are targets
    for value_dtype in ("fp32", "fp16", "int8"):
        path = tmp_path / f"d-{value_dtype}.safetensors"
        export_diff_from_weights(base, tuned, sorted(base), path, keep=100, value_dtype=value_dtype)
        meta = _metadata(path)
        h = hashlib.sha256(b"lightning_amortized.payload.v1\0")
        blob = json.dumps({k: v for k, v in meta.items() if k != "payload_sha256"}, sort_keys=True).encode("utf-8")
        h.update(struct.pack("<Q", len(blob)) + blob)
        _named(h, safetensors.numpy.load_file(path))
        assert h.hexdigest() == meta["payload_sha256"], value_dtype

    h = hashlib.sha256(b"lightning_amortized.weights.v1\0")
    _named(h, {k: v.numpy() for k, v in base.items()})
    assert h.hexdigest() == weights_sha256(base, sorted(base))
    targets = [t["name"] for t in json.loads(meta["targets"])]  # base_sha256 covers the targeted tensors
    assert sorted(targets) == sorted(base)
    h = hashlib.sha256(b"lightning_amortized.weights.v1\0")
    _named(h, {k: base[k].numpy() for k in targets})
    assert h.hexdigest() == meta["base_sha256"]
