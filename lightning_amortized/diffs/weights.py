"""New weights from a decoded diff: ``W0 + D`` and ``W - D`` for one target, and a bitwise comparison.

Shared by applying a file (:mod:`~lightning_amortized.diffs.apply`) and by checking, at export,
that the file reproduces the trained weights (:mod:`~lightning_amortized.diffs.export`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lightning_amortized.diffs.codec import _decode, _sparse_indices
from lightning_amortized.diffs.format import DiffTarget
from lightning_amortized.diffs.hashed import hashed_delta
from lightning_amortized.diffs.sparse import sparse_apply


def _new_weight(
    method: str, seed: int, target: DiffTarget, tensors: Mapping[str, torch.Tensor], base: torch.Tensor, sign: int = 1
) -> torch.Tensor:
    """``W0 + D`` (``sign=+1``) or ``W - D`` (``sign=-1``) for one target, as a new tensor."""
    scale = tensors.get(f"{target.name}::scale")
    if method == "sparse":
        values = _decode(tensors[f"{target.name}::values"], scale)
        if sign < 0:
            values = -values
        out = sparse_apply(base, _sparse_indices(target, tensors), values)
    else:
        buckets = _decode(tensors[f"{target.name}::buckets"], scale).to(device=base.device, dtype=base.dtype)
        delta = hashed_delta(target.name, target.shape, seed, buckets)
        with torch.no_grad():
            out = (base.detach() + delta) if sign > 0 else (base.detach() - delta)
    undo = tensors.get(f"{target.name}::undo_indices")
    if sign < 0 and undo is not None:  # entries where (W0 + D) - D rounds away from W0
        undo_values = tensors[f"{target.name}::undo_values"].to(out.device, out.dtype)
        out.view(-1)[undo.to(out.device, torch.int64)] = undo_values
    return out


def _bitwise_differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Flat bool mask of entries whose bytes differ (``-0.0 != 0.0``, NaN payloads compared)."""
    size = a.element_size()
    av = a.detach().contiguous().reshape(-1).view(torch.uint8).reshape(-1, size)
    bv = b.detach().contiguous().reshape(-1).view(torch.uint8).reshape(-1, size)
    return (av != bv).any(dim=1)
