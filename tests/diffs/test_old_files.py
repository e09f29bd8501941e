"""Diff files written before the split of diffs/io.py still read and apply.

The fixtures were written by the code of commit b7378bd (before the split) for the model
below: a sparse gap-u8 fp16 file (format version 2), a sparse int32 int8 file (version 1)
and a hashed fp32 file. They must read, verify and apply bit-exactly with today's code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_amortized.diffs import apply_diff, inspect_diff, weights_sha256

FIXTURES = Path(__file__).parent / "fixtures"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GRU(16, 12, batch_first=True))


@pytest.mark.parametrize(
    "name, version, method",
    [("v0_sparse_gap-u8_fp16", 2, "sparse"), ("v0_sparse_int32_int8", 1, "sparse"), ("v0_hashed_hash_fp32", 1, "hashed")],
)
def test_files_from_before_the_split_read_and_apply(name: str, version: int, method: str) -> None:
    path = FIXTURES / f"{name}.safetensors"
    info = inspect_diff(path)
    assert (info.format_version, info.method) == (version, method)
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    applied = apply_diff(model, path)  # checks the base hash before and the result hash after
    assert applied.result_sha256 == info.result_sha256 == weights_sha256(model, info.names)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(info.names)
