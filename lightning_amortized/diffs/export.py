"""Writing diff files: from the diffs attached to a model, or from base and fine-tuned weights.

Files are written atomically and byte-reproducibly (metadata keys sorted), with the
result hash computed from what a device will compute (after quantization).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from lightning_amortized.atomic import write_atomic
from lightning_amortized.diffs.attach import base_tensor, diff_modules
from lightning_amortized.diffs.checksum import _lookup, _payload_sha256, weights_sha256
from lightning_amortized.diffs.codec import _build, _sorted_metadata, _large_dtype, check_finite, non_finite_tensors
from lightning_amortized.diffs.format import (
    BaseMismatchError,
    DiffInfo,
    DiffTarget,
    IndexEncoding,
    PathLike,
    ValueDtype,
    _metadata,
)
from lightning_amortized.diffs.hashed import HashedDiff
from lightning_amortized.diffs.read import inspect_diff
from lightning_amortized.diffs.sparse import SparseDiff
from lightning_amortized.diffs.targets import resolve
from lightning_amortized.diffs.weights import _bitwise_differs, _new_weight
from lightning_amortized.functional.selection import topk_mask

__all__ = ["export_diff", "export_diff_from_weights"]


def _write(
    path: PathLike,
    *,
    method: str,
    seed: int,
    value_dtype: str,
    targets: Sequence[DiffTarget],
    tensors: dict[str, torch.Tensor],
    base_sha256: str,
    result_sha256: str,
    extra: Mapping[str, Any],
    index_encoding: str,
) -> DiffInfo:
    check_finite(tensors, path)
    metadata = _metadata(method, seed, value_dtype, targets, base_sha256, result_sha256, extra, index_encoding)
    metadata["payload_sha256"] = _payload_sha256(tensors, metadata)
    data = _sorted_metadata(safetensors.torch.save(tensors, metadata=metadata))
    write_atomic(Path(path), data)
    return inspect_diff(path)


def _reversible_sparse_values(base: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per entry, ``fl(W1 - W0)`` where it reproduces ``W1`` and subtracts back to ``W0``, else ``D``.

    ``W1 = fl(W0 + D)``; both choices give the same ``W1`` on apply, the first also unmerges
    exactly (always when ``|D| <= |W0|``, by the Fast2Sum lemma).
    """
    w0 = base.detach().reshape(-1)[indices]
    w1 = w0 + values.to(w0.dtype)
    alt = w1 - w0
    ok = ~_bitwise_differs(w0 + alt, w1) & ~_bitwise_differs(w1 - alt, w0)
    return torch.where(ok, alt.to(values.dtype), values)


def export_diff(
    model: nn.Module,
    path: PathLike,
    *,
    value_dtype: ValueDtype = "fp32",
    seed: int | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    reversible: bool = False,
    index_encoding: IndexEncoding = "gap-u8",
) -> DiffInfo:
    """Write the diffs attached to ``model`` to a file (atomically).

    Sparse diffs store exactly the kept entries; hashed diffs store the bucket values.
    The result hash is computed from what a device will compute (after quantization), and
    ``extra["max_abs_error"]`` records the largest difference to the trained weights
    (``0.0`` for fp32).

    Args:
        model: a model with diffs attached (``NeuralDiff`` or ``attach_diffs``).
        path: output file (``.safetensors``); parent directories are created.
        value_dtype: ``"fp32"`` (bit-exact), ``"fp16"`` or ``"int8"`` (per-tensor scale).
        seed: recorded seed for sparse diffs (hashed diffs record their hash seed).
        extra_metadata: JSON-serialisable data stored under ``extra``.
        reversible: also store the base values of the entries where ``(W0 + D) - D`` does not
            round back to ``W0`` (``<name>::undo_*``), so :func:`unmerge` is always exact. Costs
            bytes beyond the budget (typically a few % of the kept entries for sparse diffs,
            more for hashed diffs, which touch every entry).
        index_encoding: sparse index storage: ``"gap-u8"`` (about 1 byte per kept entry, format
            version 2) or ``"int32"`` (4 bytes per kept entry, format version 1, readable by
            releases before the gap encoding). Ignored for hashed diffs.

    Returns:
        The :class:`DiffInfo` of the written file.

    Raises:
        ValueError: if the model carries no diff, mixes sparse and hashed diffs, or asks for
            ``reversible`` on bfloat16 weights (nothing is written).

    Example::

        >>> import tempfile, os
        >>> from lightning_amortized.diffs import attach_diffs
        >>> lin = nn.Linear(4, 3)
        >>> d = attach_diffs(lin, ["weight"], "sparse")
        >>> with torch.no_grad():
        ...     _ = d["weight"].delta.fill_(0.1); d["weight"].mask[1:] = False
        >>> tmp = tempfile.TemporaryDirectory()
        >>> info = export_diff(lin, os.path.join(tmp.name, "u1.safetensors"))
        >>> info.method, info.stored
        ('sparse', 4)
        >>> tmp.cleanup()
    """
    diffs = diff_modules(model)
    if not diffs:
        raise ValueError("Model carries no diff to export; attach one with NeuralDiff or attach_diffs().")
    kinds = {type(d) for d in diffs.values()}
    if len(kinds) > 1:
        raise ValueError("Model mixes sparse and hashed diffs; export them separately.")
    method = "sparse" if kinds == {SparseDiff} else "hashed"
    if reversible:
        unstorable = sorted(n for n in diffs if base_tensor(model, n).dtype == torch.bfloat16)
        if unstorable:
            raise ValueError(
                f"reversible=True stores base values in the base dtype, and bfloat16 ({unstorable}) is not readable "
                "by the diff readers (numpy has no bfloat16). Export with reversible=False and keep a copy of the "
                "base, or train the diff on a float32/float16 model."
            )
    entries: dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}
    hash_seeds = set()
    for name, d in diffs.items():
        base = base_tensor(model, name)
        if isinstance(d, SparseDiff):
            idx, values = d.kept()
            if value_dtype == "fp32":
                values = _reversible_sparse_values(base, idx, values)
            entries[name] = (base, idx, values)
        else:
            assert isinstance(d, HashedDiff)
            hash_seeds.add(int(d.hash_seed))
            entries[name] = (base, None, d.buckets.detach())
    if method == "hashed":
        if len(hash_seeds) != 1:
            raise ValueError(f"Hashed diffs use different seeds {sorted(hash_seeds)}; cannot store one seed.")
        seed = hash_seeds.pop()
    seed = 0 if seed is None else int(seed)
    targets, tensors = _build(method, value_dtype, entries, index_encoding)
    results: dict[str, torch.Tensor] = {}
    max_err = 0.0
    for t in targets:
        module, attr = resolve(model, t.name)
        results[t.name] = _new_weight(method, seed, t, tensors, entries[t.name][0])
        with torch.no_grad():
            trained = getattr(module, attr)
        if results[t.name].numel():
            err = float((results[t.name].float() - trained.float()).abs().max())
            if not math.isfinite(err):  # max() would hide a NaN
                raise ValueError(f"Refusing to export: the trained weights of {t.name!r} hold NaN or Inf.")
            max_err = max(max_err, err)
    undo_entries = 0
    if reversible:
        for t in targets:
            w0 = entries[t.name][0].detach()
            back = _new_weight(method, seed, t, tensors, results[t.name], sign=-1)
            bad = torch.nonzero(_bitwise_differs(back, w0)).reshape(-1)
            tensors[f"{t.name}::undo_indices"] = bad.to("cpu", _large_dtype(t.numel))
            tensors[f"{t.name}::undo_values"] = w0.reshape(-1)[bad].to("cpu").contiguous()
            undo_entries += bad.numel()
    extra = {"max_abs_error": max_err, **({"undo_entries": undo_entries} if reversible else {})}
    extra.update(extra_metadata or {})
    return _write(
        path,
        method=method,
        seed=seed,
        value_dtype=value_dtype,
        targets=targets,
        tensors=tensors,
        base_sha256=weights_sha256(model, diffs),
        result_sha256=weights_sha256(results, results),
        extra=extra,
        index_encoding=index_encoding,
    )


def export_diff_from_weights(
    base: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, torch.Tensor],
    names: Sequence[str],
    path: PathLike,
    *,
    keep: int,
    value_dtype: ValueDtype = "fp32",
    extra_metadata: Mapping[str, Any] | None = None,
    index_encoding: IndexEncoding = "gap-u8",
) -> DiffInfo:
    """A sparse diff keeping the ``keep`` largest ``|finetuned - base|`` entries over ``names``.

    Entries the fine-tuning left unchanged are never stored: with fewer than ``keep`` changed
    entries the file keeps only those.

    Args:
        base: base state dict.
        finetuned: fine-tuned state dict (same names, shapes and dtypes for ``names``).
        names: plain parameter names to diff.
        path: output file.
        keep: total number of entries kept (global magnitude top-k).
        value_dtype: stored value type.
        extra_metadata: stored under ``extra``.
        index_encoding: ``"gap-u8"`` (default) or ``"int32"``, see :func:`export_diff`.

    Returns:
        The written file's :class:`DiffInfo`; ``extra["max_abs_error"]`` is the largest
        difference between the applied result and ``finetuned`` over ``names``.

    Raises:
        BaseMismatchError: a name whose shape or dtype differs between the two.
        ValueError: ``keep`` out of range, no entry changed, or non-finite fine-tuned weights.
    """
    deltas = {}
    for n in names:
        b, f = _lookup(base, n), _lookup(finetuned, n)
        if b.shape != f.shape or b.dtype != f.dtype:
            raise BaseMismatchError(
                f"Parameter {n!r}: base is {tuple(b.shape)} {b.dtype}, fine-tuned is {tuple(f.shape)} {f.dtype}."
            )
        deltas[n] = (f.detach() - b.detach()).reshape(-1)
    total = sum(d.numel() for d in deltas.values())
    if not 1 <= keep <= total:
        raise ValueError(f"Expected argument `keep` to be between 1 and {total}, but got {keep}.")
    bad = non_finite_tensors(deltas)
    if bad:
        raise ValueError(f"Refusing to write {str(path)!r}: the fine-tuned weights of {bad} hold NaN or Inf.")
    changed = sum(int((d != 0).sum()) for d in deltas.values())
    if changed == 0:
        raise ValueError(
            f"The fine-tuned weights equal the base on all {len(names)} target(s) ({total:,} entries): there is no "
            "update to export. Check that --finetuned is the trained checkpoint and the targets are what it trained."
        )
    keep = min(keep, changed)  # an unchanged entry would cost bytes and change nothing
    chosen = topk_mask(torch.cat([d.float().abs() for d in deltas.values()]), keep)
    entries = {}
    offset = 0
    for n, d in deltas.items():
        sel = chosen[offset : offset + d.numel()]
        offset += d.numel()
        idx = torch.nonzero(sel).reshape(-1)
        if idx.numel():
            entries[n] = (_lookup(base, n), idx, d[idx])
    targets, tensors = _build("sparse", value_dtype, entries, index_encoding)
    results = {t.name: _new_weight("sparse", 0, t, tensors, _lookup(base, t.name)) for t in targets}
    max_err = max(  # over every name: a target with nothing kept is off by its whole delta
        [float((_lookup(finetuned, n).float() - results[n].float()).abs().max()) for n in results]
        + [float(deltas[n].float().abs().max()) for n in names if n not in results and deltas[n].numel()] + [0.0]
    )
    extra = {"max_abs_error": max_err, **dict(extra_metadata or {})}
    return _write(
        path,
        method="sparse",
        seed=0,
        value_dtype=value_dtype,
        targets=targets,
        tensors=tensors,
        base_sha256=weights_sha256(base, entries),
        result_sha256=weights_sha256(results, results),
        extra=extra,
        index_encoding=index_encoding,
    )
