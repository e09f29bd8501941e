"""Checkpoint files as the ``diff`` command and the recipes read and write them.

Lightning ``.ckpt`` files (weights under ``"state_dict"``), plain ``state_dict`` files saved
with ``torch.save`` (``.pt``/``.pth``) and ``.safetensors`` files. A checkpoint written
while ``NeuralDiff`` was training (keys such as
``rnn.parametrizations.weight_ih_l0.original``) is folded into plain weights ``W0 + D``
when read.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from lightning_amortized.atomic import write_atomic
from lightning_amortized.diffs.hashed import hashed_delta
from lightning_amortized.errors import first_line

__all__ = ["fold_parametrized", "load_checkpoint", "load_module", "save_checkpoint"]

_ORIGINAL = re.compile(r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<attr>[^.]+)\.original$")


def fold_parametrized(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a state dict of a model with diffs attached into plain weights ``W0 + D``.

    Sparse diffs (``.0.delta`` + ``.0.mask``) give ``where(mask, W0 + delta, W0)``; hashed
    diffs (``.0.buckets`` + ``.0.hash_seed``) give ``W0 + sign * buckets[h]``, exactly as in
    the forward pass. Other entries are passed through.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _ORIGINAL.match(key)
        if m is None:
            if ".parametrizations." not in f".{key}":
                out[key] = value
            continue
        name = m.group("prefix") + m.group("attr")
        stem = key[: -len("original")] + "0."
        if stem + "mask" in state:
            mask, delta = state[stem + "mask"], state[stem + "delta"]
            out[name] = torch.where(mask, value + delta, value)
        elif stem + "buckets" in state:
            seed = int(state[stem + "hash_seed"])
            out[name] = value + hashed_delta(name, tuple(value.shape), seed, state[stem + "buckets"])
        else:
            raise ValueError(f"Unknown parametrization on {name!r}; cannot fold {key!r}.")
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read weights from a checkpoint.

    Only what ``torch.load(weights_only=True)`` reads is accepted (tensors, containers,
    numbers, strings: everything ``lightning-amortized fit`` writes): unpickling arbitrary
    objects could run code from the file.

    Returns:
        ``(state_dict, container)``: plain (folded) weights on CPU, and the full Lightning
        checkpoint dict (``None`` for plain state dicts and safetensors files).

    Raises:
        ValueError: the file is missing, unreadable, truncated, holds pickled objects, or
            holds neither a Lightning checkpoint nor a state dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"Checkpoint {str(p)!r} does not exist or is not a file.")
    try:
        if p.suffix == ".safetensors":
            return fold_parametrized(safetensors.torch.load_file(p)), None
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types; one message for the user
        first = first_line(err)
        raise ValueError(
            f"Cannot read checkpoint {str(p)!r} ({first}). Expected a Lightning checkpoint, a torch.save state "
            "dict or a .safetensors file, loadable with torch.load(weights_only=True); a file that is truncated, "
            "not a checkpoint, or holds pickled objects (which could run code) is refused."
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return fold_parametrized(obj["state_dict"]), obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return fold_parametrized(obj), None
    raise ValueError(f"{str(p)!r} holds neither a Lightning checkpoint nor a state dict of tensors.")


def load_module(cls: type, path: str | os.PathLike, **kwargs: Any) -> Any:
    """``cls.load_from_checkpoint`` for a Lightning checkpoint saved while diffs were attached.

    A checkpoint written during ``NeuralDiff`` training holds each target as ``W0`` plus its
    diff tensors (``emb.parametrizations.weight.original``, ``...0.delta``, ``...0.mask``),
    which a module without the diffs attached cannot load (Lightning reports missing and
    unexpected keys; with ``strict=False`` it would silently load a different model). This
    folds them into plain weights ``W0 + D`` (:func:`fold_parametrized`, exactly what the
    forward pass computed) and hands the rest of the checkpoint to Lightning. A checkpoint
    without diffs loads unchanged. To go on training the diff, resume the ``Trainer`` with
    ``ckpt_path`` and the callback instead.

    Args:
        cls: The ``LightningModule`` class.
        path: A Lightning ``.ckpt`` file (read with ``torch.load(weights_only=True)``).
        **kwargs: Passed to ``cls.load_from_checkpoint`` (``map_location``, hyper-parameter
            overrides such as ``encoder=...`` for a module built in Python).

    Returns:
        The module, in the mode Lightning returns it.

    Raises:
        ValueError: an unreadable file, or plain weights without a Lightning checkpoint around them.

    Example::

        >>> model = load_module(MyModule, "runs/update-1/last.ckpt")  # doctest: +SKIP
    """
    state, container = load_checkpoint(path)
    if container is None:
        raise ValueError(
            f"{str(path)!r} holds plain weights, not a Lightning checkpoint: build the module yourself and call "
            "module.load_state_dict(lightning_amortized.diffs.load_checkpoint(path)[0])."
        )
    buf = io.BytesIO()
    torch.save({**container, "state_dict": state}, buf)
    buf.seek(0)
    return cls.load_from_checkpoint(buf, weights_only=True, **kwargs)


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, torch.Tensor], container: dict[str, Any] | None) -> None:
    """Write weights atomically, as a Lightning checkpoint (when ``container`` is given),
    a ``.safetensors`` file or a ``torch.save`` state dict, chosen by ``container``/suffix."""
    p = Path(path)
    if p.suffix == ".safetensors":
        # safetensors refuses tensors sharing memory (tied weights): each name gets its own copy
        seen: set[int] = set()
        flat = {}
        for k, v in state.items():
            ptr = v.untyped_storage().data_ptr()
            flat[k] = v.contiguous().clone() if ptr in seen and v.numel() else v.contiguous()
            seen.add(ptr)
        data = safetensors.torch.save(flat)
    else:
        buf = io.BytesIO()
        torch.save({**container, "state_dict": dict(state)} if container is not None else dict(state), buf)
        data = buf.getvalue()
    write_atomic(p, data)
