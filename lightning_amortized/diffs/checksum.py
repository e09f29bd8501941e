"""Checksums of a diff file: the weights it applies to and produces, and its own payload.

Both are canonical SHA-256 digests (names sorted; name, dtype, shape and little-endian
bytes per tensor), so they do not depend on the order of a state dict or on the file's
layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from lightning_amortized.diff_format import PAYLOAD_DOMAIN, WEIGHTS_DOMAIN, metadata_prefix, named_sha256
from lightning_amortized.diffs.attach import base_tensor
from lightning_amortized.diffs.format import StateOrModel, _dtype_name

__all__ = ["weights_sha256"]


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _lookup(state_or_model: StateOrModel, name: str) -> torch.Tensor:
    if isinstance(state_or_model, nn.Module):
        return base_tensor(state_or_model, name)
    if name in state_or_model:
        return state_or_model[name]
    prefix, _, attr = name.rpartition(".")
    alt = f"{prefix}.parametrizations.{attr}.original" if prefix else f"parametrizations.{attr}.original"
    if alt in state_or_model:
        return state_or_model[alt]
    raise KeyError(name)


def weights_sha256(state_or_model: StateOrModel, names: Iterable[str]) -> str:
    """Canonical SHA-256 of named tensors: names, dtypes, shapes and raw bytes.

    The names are sorted; for each one the hash takes the UTF-8 name, the dtype name, the
    shape and the little-endian bytes of the contiguous tensor. For a module, the base
    tensors are hashed (``W0`` when a diff is attached).

    Args:
        state_or_model: a module or a ``{name: tensor}`` mapping (a ``state_dict``).
        names: plain parameter names.

    Returns:
        64-character lowercase hex digest.

    Raises:
        KeyError: if a name is missing.

    Example::

        >>> lin = nn.Linear(2, 2)
        >>> weights_sha256(lin, ["weight"]) == weights_sha256(lin.state_dict(), ["weight"])
        True
    """
    return named_sha256(WEIGHTS_DOMAIN, (_item(name, _lookup(state_or_model, name)) for name in sorted(set(names))))


def _item(name: str, t: torch.Tensor) -> tuple[str, str, tuple[int, ...], memoryview]:
    """``(name, dtype, shape, bytes)`` of a tensor for :func:`~lightning_amortized.diff_format.named_sha256`."""
    return name, _dtype_name(t.dtype), tuple(t.shape), _tensor_bytes(t)


def _payload_sha256(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """:func:`~lightning_amortized.diff_format.payload_sha256` of tensors (any dtype, any device)."""
    items = (_item(name, tensors[name]) for name in sorted(tensors))
    return named_sha256(PAYLOAD_DOMAIN, items, metadata_prefix(metadata))
