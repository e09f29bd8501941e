"""The neural diff file: export, inspect, apply, merge, unmerge and chains of updates.

One ``safetensors`` file per update. Tensors, per target parameter ``<name>``:

- sparse: ``<name>::indices`` (int32, or int64 for tensors with ``>= 2**31`` entries; flat
  row-major indices, ascending) and ``<name>::values`` (float32, float16 or int8);
- hashed: ``<name>::buckets`` (float32, float16 or int8), indices recomputed from the hash;
- int8 only: ``<name>::scale``, a ``(1,)`` float32 scale (``value = int8 * scale``);
- reversible files only (``export_diff(..., reversible=True)``): ``<name>::undo_indices`` and
  ``<name>::undo_values`` (base dtype): the base values of the entries where
  ``(W0 + D) - D != W0`` in floating point, so :func:`unmerge` restores the base exactly.

Metadata (``safetensors`` string-to-string header; JSON where structured): ``format``
(``"lightning_amortized.diff"``), ``format_version`` (``"1"``), ``method``, ``seed``,
``value_dtype``, ``targets`` (list of ``{name, shape, dtype, numel, stored}``),
``base_sha256``, ``result_sha256`` (see :func:`weights_sha256`), ``payload_sha256`` (over
all tensors and all other metadata; detects edits) and ``extra`` (free JSON: statistics
such as ``max_abs_error``, budget, user data).

Every operation reads and verifies the whole file and computes the new weights in
temporaries before it writes into the model, so a refused operation leaves the model
untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_amortized.diffs.attach import base_tensor, detach_diffs, diff_modules
from lightning_amortized.diffs.hashed import HashedDiff, hashed_delta
from lightning_amortized.diffs.sparse import SparseDiff, sparse_apply
from lightning_amortized.diffs.targets import resolve

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "BaseMismatchError",
    "DiffError",
    "DiffFormatError",
    "DiffInfo",
    "DiffIntegrityError",
    "DiffTarget",
    "apply_chain",
    "apply_diff",
    "apply_to_state_dict",
    "estimate_diff_bytes",
    "export_diff",
    "export_diff_from_weights",
    "inspect_diff",
    "merge",
    "read_diff",
    "unmerge",
    "weights_sha256",
]

FORMAT_NAME = "lightning_amortized.diff"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
ValueDtype = Literal["fp32", "fp16", "int8"]
VALUE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}
StateOrModel = Union[nn.Module, Mapping[str, torch.Tensor]]
PathLike = Union[str, os.PathLike]


class DiffError(ValueError):
    """A diff operation was refused; the model was not modified."""


class DiffFormatError(DiffError):
    """The file is not a readable diff (truncated, corrupted, unknown format version)."""


class DiffIntegrityError(DiffError):
    """The file reads but its payload hash does not match (edited or damaged)."""


class BaseMismatchError(DiffError):
    """The model is not the base the diff applies to (hash, shape or names differ)."""


@dataclass(frozen=True)
class DiffTarget:
    """One parameter in a diff file.

    Attributes:
        name: plain parameter name.
        shape: shape of the parameter.
        dtype: parameter dtype (e.g. ``"float32"``).
        numel: number of entries.
        stored: kept entries (sparse) or buckets (hashed).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    stored: int


@dataclass(frozen=True)
class DiffInfo:
    """What :func:`inspect_diff` reports about a diff file (``str()`` gives a readable table).

    Attributes:
        path: the file.
        format_version: file format version.
        method: ``"sparse"`` or ``"hashed"``.
        seed: hash seed (hashed) or the training seed (sparse).
        value_dtype: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        targets: the parameters it changes.
        base_sha256: :func:`weights_sha256` of the targets before applying.
        result_sha256: :func:`weights_sha256` of the targets after applying.
        payload_sha256: hash of tensors and metadata.
        file_bytes: file size in bytes.
        payload_bytes: bytes of tensor data.
        extra: free-form metadata (e.g. ``max_abs_error``, ``budget``).
    """

    path: str
    format_version: int
    method: str
    seed: int
    value_dtype: str
    targets: tuple[DiffTarget, ...]
    base_sha256: str
    result_sha256: str
    payload_sha256: str
    file_bytes: int
    payload_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def stored(self) -> int:
        """Total kept entries (sparse) or buckets (hashed)."""
        return sum(t.stored for t in self.targets)

    def __str__(self) -> str:
        total = sum(t.numel for t in self.targets)
        what = "kept" if self.method == "sparse" else "buckets"
        lines = [
            f"{FORMAT_NAME} v{self.format_version}: {self.method} diff, {self.value_dtype} values, seed {self.seed}",
            f"  file     {self.path} ({self.file_bytes:,} bytes, payload {self.payload_bytes:,} bytes)",
            f"  base     sha256:{self.base_sha256}",
            f"  result   sha256:{self.result_sha256}",
            f"  payload  sha256:{self.payload_sha256}",
            f"  {what} {self.stored:,} of {total:,} entries ({100.0 * self.stored / max(total, 1):.3f}%)"
            f" in {len(self.targets)} target(s):",
        ]
        width = max([len(t.name) for t in self.targets] + [4])
        for t in self.targets:
            lines.append(
                f"    {t.name.ljust(width)}  {str(t.shape):<16} {t.dtype:<9} {t.stored:>10,} / {t.numel:,}"
            )
        for k, v in sorted(self.extra.items()):
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- hashing


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
    h = hashlib.sha256(b"lightning_amortized.weights.v1\0")
    for name in sorted(set(names)):
        t = _lookup(state_or_model, name)
        head = json.dumps([name, _dtype_name(t.dtype), list(t.shape)]).encode("utf-8")
        h.update(struct.pack("<Q", len(head)) + head)
        data = _tensor_bytes(t)
        h.update(struct.pack("<Q", data.nbytes))
        h.update(data)
    return h.hexdigest()


def _payload_sha256(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    h = hashlib.sha256(b"lightning_amortized.payload.v1\0")
    meta = {k: v for k, v in metadata.items() if k != "payload_sha256"}
    blob = json.dumps(meta, sort_keys=True).encode("utf-8")
    h.update(struct.pack("<Q", len(blob)) + blob)
    for name in sorted(tensors):
        t = tensors[name]
        head = json.dumps([name, _dtype_name(t.dtype), list(t.shape)]).encode("utf-8")
        h.update(struct.pack("<Q", len(head)) + head)
        data = _tensor_bytes(t)
        h.update(struct.pack("<Q", data.nbytes))
        h.update(data)
    return h.hexdigest()


# --------------------------------------------------------------------------- values


def _encode(values: torch.Tensor, value_dtype: str) -> dict[str, torch.Tensor]:
    """Stored tensors for values: ``{"values": ...}`` plus ``{"scale": (1,)}`` for int8."""
    v = values.detach().to("cpu", torch.float32).contiguous()
    if value_dtype == "fp32":
        return {"values": v}
    if value_dtype == "fp16":
        return {"values": v.to(torch.float16)}
    amax = float(v.abs().max()) if v.numel() else 0.0
    scale = torch.tensor([amax / 127.0 if amax > 0 else 1.0], dtype=torch.float32)
    q = torch.round(v / scale).clamp_(-127, 127).to(torch.int8)
    return {"values": q, "scale": scale}


def _decode(values: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """float32 values from stored ones (``int8 * scale`` for int8)."""
    if values.dtype == torch.int8:
        assert scale is not None
        return values.to(torch.float32) * scale.to(torch.float32)
    return values.to(torch.float32)


def estimate_diff_bytes(method: str, value_dtype: str, targets: Mapping[str, tuple[int, int]]) -> int:
    """Projected size of a diff file in bytes.

    Tensor data is counted exactly; the JSON header is estimated (about 300 bytes per
    target plus 1 kB).

    Args:
        method: ``"sparse"`` or ``"hashed"``.
        value_dtype: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        targets: ``{name: (numel, stored)}`` with ``stored`` the kept entries or buckets.

    Example::

        >>> estimate_diff_bytes("sparse", "fp16", {"w": (1000, 100)}) - estimate_diff_bytes("sparse", "fp16", {"w": (1000, 0)})
        600
    """
    value_bytes = VALUE_DTYPES[value_dtype].itemsize
    total = 1024
    for name, (numel, stored) in targets.items():
        total += 300 + 2 * len(name)
        total += stored * value_bytes
        if method == "sparse":
            total += stored * (4 if numel < 2**31 else 8)
        if value_dtype == "int8":
            total += 4
    return total


# --------------------------------------------------------------------------- writing


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable (best effort; not possible on every OS)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


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
) -> DiffInfo:
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "method": method,
        "seed": str(seed),
        "value_dtype": value_dtype,
        "targets": json.dumps(
            [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "numel": t.numel, "stored": t.stored} for t in targets]
        ),
        "base_sha256": base_sha256,
        "result_sha256": result_sha256,
        "extra": json.dumps(dict(extra), sort_keys=True),
    }
    metadata["payload_sha256"] = _payload_sha256(tensors, metadata)
    data = safetensors.torch.save(tensors, metadata=metadata)
    _write_atomic(Path(path), data)
    return inspect_diff(path)


def _build(
    method: str,
    value_dtype: str,
    entries: Mapping[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]],
) -> tuple[list[DiffTarget], dict[str, torch.Tensor]]:
    """``entries``: ``{name: (base, indices or None, values)}`` -> targets and stored tensors."""
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"Expected argument `value_dtype` to be one of {list(VALUE_DTYPES)}, but got {value_dtype!r}.")
    targets, tensors = [], {}
    for name, (base, indices, values) in entries.items():
        if "::" in name:
            raise ValueError(f"Parameter names containing '::' cannot be stored in a diff file, got {name!r}.")
        enc = _encode(values, value_dtype)
        if method == "sparse":
            assert indices is not None
            idx_dtype = torch.int32 if base.numel() < 2**31 else torch.int64
            tensors[f"{name}::indices"] = indices.detach().to("cpu", idx_dtype).contiguous()
            tensors[f"{name}::values"] = enc["values"]
        else:
            tensors[f"{name}::buckets"] = enc["values"]
        if "scale" in enc:
            tensors[f"{name}::scale"] = enc["scale"]
        targets.append(DiffTarget(name, tuple(base.shape), _dtype_name(base.dtype), base.numel(), values.numel()))
    return targets, tensors


def _new_weight(
    method: str, seed: int, target: DiffTarget, tensors: Mapping[str, torch.Tensor], base: torch.Tensor, sign: int = 1
) -> torch.Tensor:
    """``W0 + D`` (``sign=+1``) or ``W - D`` (``sign=-1``) for one target, as a new tensor."""
    scale = tensors.get(f"{target.name}::scale")
    if method == "sparse":
        values = _decode(tensors[f"{target.name}::values"], scale)
        if sign < 0:
            values = -values
        out = sparse_apply(base, tensors[f"{target.name}::indices"], values)
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

    Returns:
        The :class:`DiffInfo` of the written file.

    Raises:
        ValueError: if the model carries no diff, or mixes sparse and hashed diffs.

    Example::

        >>> import tempfile, os
        >>> from lightning_amortized.diffs import attach_diffs
        >>> lin = nn.Linear(4, 3)
        >>> d = attach_diffs(lin, ["weight"], "sparse")
        >>> with torch.no_grad():
        ...     _ = d["weight"].delta.fill_(0.1); d["weight"].mask[1:] = False
        >>> info = export_diff(lin, os.path.join(tempfile.mkdtemp(), "u1.safetensors"))
        >>> info.method, info.stored
        ('sparse', 4)
    """
    diffs = diff_modules(model)
    if not diffs:
        raise ValueError("Model carries no diff to export; attach one with NeuralDiff or attach_diffs().")
    kinds = {type(d) for d in diffs.values()}
    if len(kinds) > 1:
        raise ValueError("Model mixes sparse and hashed diffs; export them separately.")
    method = "sparse" if kinds == {SparseDiff} else "hashed"
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
    targets, tensors = _build(method, value_dtype, entries)
    results: dict[str, torch.Tensor] = {}
    max_err = 0.0
    for t in targets:
        module, attr = resolve(model, t.name)
        results[t.name] = _new_weight(method, seed, t, tensors, entries[t.name][0])
        with torch.no_grad():
            trained = getattr(module, attr)
        if results[t.name].numel():
            max_err = max(max_err, float((results[t.name].float() - trained.float()).abs().max()))
    undo_entries = 0
    if reversible:
        for t in targets:
            w0 = entries[t.name][0].detach()
            back = _new_weight(method, seed, t, tensors, results[t.name], sign=-1)
            bad = torch.nonzero(_bitwise_differs(back, w0)).reshape(-1)
            idx_dtype = torch.int32 if t.numel < 2**31 else torch.int64
            tensors[f"{t.name}::undo_indices"] = bad.to("cpu", idx_dtype)
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
) -> DiffInfo:
    """A sparse diff keeping the ``keep`` largest ``|finetuned - base|`` entries over ``names``.

    Args:
        base: base state dict.
        finetuned: fine-tuned state dict (same names, shapes and dtypes for ``names``).
        names: plain parameter names to diff.
        path: output file.
        keep: total number of entries kept (global magnitude top-k).
        value_dtype: stored value type.
        extra_metadata: stored under ``extra``.

    Returns:
        The written file's :class:`DiffInfo`; ``extra["max_abs_error"]`` is the largest
        difference between the applied result and ``finetuned`` over ``names``.
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
    scores = torch.cat([d.float().abs() for d in deltas.values()])
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.topk(scores, keep, sorted=False).indices] = True
    entries = {}
    offset = 0
    for n, d in deltas.items():
        sel = chosen[offset : offset + d.numel()]
        offset += d.numel()
        idx = torch.nonzero(sel).reshape(-1)
        if idx.numel():
            entries[n] = (_lookup(base, n), idx, d[idx])
    targets, tensors = _build("sparse", value_dtype, entries)
    results = {t.name: _new_weight("sparse", 0, t, tensors, _lookup(base, t.name)) for t in targets}
    max_err = max(
        [float((_lookup(finetuned, n).float() - results[n].float()).abs().max()) for n in results] + [0.0]
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
    )


# --------------------------------------------------------------------------- reading


def read_diff(path: PathLike) -> tuple[DiffInfo, dict[str, torch.Tensor]]:
    """Read and fully verify a diff file: its :class:`DiffInfo` and stored tensors (CPU).

    Raises:
        DiffFormatError: missing, truncated or corrupted file, not a diff, unknown version.
        DiffIntegrityError: payload hash mismatch (the file was edited or damaged).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise DiffFormatError(f"Cannot read diff file {str(p)!r}: {err}.") from err
    try:
        tensors = safetensors.torch.load(data)
        (hlen,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + hlen]).get("__metadata__") or {}
    except Exception as err:  # safetensors raises its own error types
        raise DiffFormatError(
            f"{str(p)!r} is not a readable safetensors file ({len(data)} bytes; truncated or corrupted?): {err}"
        ) from err
    if meta.get("format") != FORMAT_NAME:
        raise DiffFormatError(f"{str(p)!r} is a safetensors file but not a {FORMAT_NAME} file (format={meta.get('format')!r}).")
    try:
        version = int(meta["format_version"])
    except (KeyError, ValueError) as err:
        raise DiffFormatError(f"{str(p)!r} has no valid format_version ({meta.get('format_version')!r}).") from err
    if version not in SUPPORTED_VERSIONS:
        raise DiffFormatError(
            f"{str(p)!r} has format version {version}; this lightning_amortized reads version(s) "
            f"{list(SUPPORTED_VERSIONS)}. Upgrade lightning_amortized to apply it."
        )
    expected = meta.get("payload_sha256")
    found = _payload_sha256(tensors, meta)
    if expected != found:
        raise DiffIntegrityError(
            f"{str(p)!r} failed its integrity check: payload sha256 expected {expected}, found {found}. "
            "The file was edited or damaged; fetch it again."
        )
    try:
        targets = tuple(
            DiffTarget(t["name"], tuple(int(s) for s in t["shape"]), t["dtype"], int(t["numel"]), int(t["stored"]))
            for t in json.loads(meta["targets"])
        )
        info = DiffInfo(
            path=str(p),
            format_version=version,
            method=meta["method"],
            seed=int(meta["seed"]),
            value_dtype=meta["value_dtype"],
            targets=targets,
            base_sha256=meta["base_sha256"],
            result_sha256=meta["result_sha256"],
            payload_sha256=expected,
            file_bytes=len(data),
            payload_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
            extra=json.loads(meta.get("extra", "{}")),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise DiffFormatError(f"{str(p)!r} has malformed metadata: {err!r}.") from err
    _check_tensors(info, tensors)
    return info, tensors


def _check_tensors(info: DiffInfo, tensors: Mapping[str, torch.Tensor]) -> None:
    if info.method not in ("sparse", "hashed") or info.value_dtype not in VALUE_DTYPES:
        raise DiffFormatError(f"{info.path!r}: unknown method {info.method!r} or value dtype {info.value_dtype!r}.")
    for t in info.targets:
        key = f"{t.name}::values" if info.method == "sparse" else f"{t.name}::buckets"
        values = tensors.get(key)
        if values is None or values.shape != (t.stored,) or values.dtype != VALUE_DTYPES[info.value_dtype]:
            raise DiffFormatError(f"{info.path!r}: tensor {key!r} missing or not ({t.stored},) {info.value_dtype}.")
        if info.value_dtype == "int8" and f"{t.name}::scale" not in tensors:
            raise DiffFormatError(f"{info.path!r}: int8 target {t.name!r} has no scale tensor.")
        undo_idx, undo_val = tensors.get(f"{t.name}::undo_indices"), tensors.get(f"{t.name}::undo_values")
        if (undo_idx is None) != (undo_val is None) or (
            undo_idx is not None
            and (
                undo_idx.shape != undo_val.shape
                or (undo_idx.numel() and (int(undo_idx.min()) < 0 or int(undo_idx.max()) >= t.numel))
            )
        ):
            raise DiffFormatError(f"{info.path!r}: undo tensors of {t.name!r} are inconsistent.")
        if info.method == "sparse":
            idx = tensors.get(f"{t.name}::indices")
            if idx is None or idx.shape != (t.stored,):
                raise DiffFormatError(f"{info.path!r}: indices of {t.name!r} missing or of the wrong length.")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t.numel):
                raise DiffFormatError(f"{info.path!r}: indices of {t.name!r} fall outside [0, {t.numel}).")
            if math.prod(t.shape) != t.numel:
                raise DiffFormatError(f"{info.path!r}: target {t.name!r} shape and numel disagree.")


def inspect_diff(path: PathLike) -> DiffInfo:
    """Read and verify a diff file and describe it.

    Example::

        >>> info = inspect_diff("update-1.safetensors")  # doctest: +SKIP
        >>> print(info)  # doctest: +SKIP
    """
    return read_diff(path)[0]


# --------------------------------------------------------------------------- applying


def _plain_weights(model: nn.Module, info: DiffInfo, *, allow_diffs: bool = False) -> dict[str, torch.Tensor]:
    """The model's tensors for the diff's targets, after checking names and shapes."""
    missing, out = [], {}
    for t in info.targets:
        try:
            module, attr = resolve(model, t.name)
        except KeyError:
            missing.append(t.name)
            continue
        if parametrize.is_parametrized(module, attr) and not allow_diffs:
            raise DiffError(
                f"Parameter {t.name!r} carries a diff (parametrization); use merge() on a training model, "
                "or detach_diffs() first."
            )
        w = base_tensor(model, t.name)
        if tuple(w.shape) != t.shape:
            raise BaseMismatchError(
                f"Shape mismatch for {t.name!r}: the diff expects {t.shape}, the model has {tuple(w.shape)}."
            )
        out[t.name] = w
    if missing:
        raise BaseMismatchError(f"{info.path!r} changes parameters the model does not have: {missing}.")
    return out


def _step(
    info: DiffInfo,
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool,
    sign: int = 1,
) -> dict[str, torch.Tensor]:
    """New tensors for the diff's targets given the current ones; verifies hashes, mutates nothing."""
    names = info.names
    before, after = (info.base_sha256, info.result_sha256) if sign > 0 else (info.result_sha256, info.base_sha256)
    found = weights_sha256(state, names)
    if strict and found != before:
        what = "base" if sign > 0 else "result"
        raise BaseMismatchError(
            f"{info.path!r} applies to a different {what}: expected weights sha256 {before}, found {found} "
            f"(over {len(names)} target(s)). Apply the earlier updates first, or use the matching model."
        )
    new = {t.name: _new_weight(info.method, info.seed, t, tensors, state[t.name], sign) for t in info.targets}
    got = weights_sha256(new, names)
    if strict and got != after:
        if sign > 0:
            raise DiffError(
                f"Applying {info.path!r} gave weights sha256 {got}, expected {after}; refusing "
                "(arithmetic differs from the exporting machine)."
            )
        raise DiffError(
            f"Unmerging {info.path!r} does not restore the base bit-exactly (sha256 {got}, expected {after}): "
            "floating-point (W0 + D) - D rounds differently for some entries. Export with reversible=True, "
            "or keep a copy of the base."
        )
    return new


@torch.no_grad()
def _commit(model: nn.Module, new: Mapping[str, torch.Tensor]) -> None:
    for name, value in new.items():
        base_tensor(model, name).copy_(value)


def apply_diff(model: nn.Module, path: PathLike, *, strict: bool = True) -> DiffInfo:
    """Add a diff into the plain weights of a model (the on-device path), in place.

    Checks, before touching anything: the file (format, version, payload hash), the
    parameter names and shapes, the base hash and (after computing the new weights in
    temporaries) the result hash. Parameter objects keep their identity and storage.

    Args:
        model: a model without diffs attached on the targets.
        path: the diff file.
        strict: ``False`` skips the base and result hash checks (names, shapes and file
            integrity are still checked).

    Returns:
        The applied file's :class:`DiffInfo`.

    Raises:
        DiffFormatError, DiffIntegrityError: unreadable, unknown version or edited file.
        BaseMismatchError: wrong base (hash), missing parameter names or shape mismatch.
        DiffError: other refusals. In every case the model is unchanged.

    Example::

        >>> model = build_model(); model.load_state_dict(torch.load("base.pt"))  # doctest: +SKIP
        >>> apply_diff(model, "update-1.safetensors")  # doctest: +SKIP
    """
    info, tensors = read_diff(path)
    state = _plain_weights(model, info)
    new = _step(info, tensors, state, strict=strict)
    _commit(model, new)
    return info


def apply_chain(model: nn.Module, paths: Sequence[PathLike], *, strict: bool = True) -> list[DiffInfo]:
    """Apply updates ``1..k`` in order; all links are checked before the model changes.

    Each diff's base hash must equal the weights after the previous diffs (computed on
    temporaries). If any link fails, nothing is written.

    Returns:
        The :class:`DiffInfo` of each file, in order.

    Raises:
        Like :func:`apply_diff`; messages name the failing file.
    """
    infos, state = [], {}
    for path in paths:
        info, tensors = read_diff(path)
        current = _plain_weights(model, info)
        view = {n: state.get(n, current[n]) for n in info.names}
        state.update(_step(info, tensors, view, strict=strict))
        infos.append(info)
    _commit(model, state)
    return infos


def apply_to_state_dict(
    state: Mapping[str, torch.Tensor], paths: Sequence[PathLike], *, strict: bool = True
) -> tuple[dict[str, torch.Tensor], list[DiffInfo]]:
    """Apply diffs ``1..k`` to a plain ``state_dict`` (no model needed); the input is not modified.

    Returns:
        ``(new_state, infos)``: a new dict in which the targets are new tensors and every
        other entry is the input tensor.

    Raises:
        Like :func:`apply_chain`.
    """
    new = dict(state)
    infos = []
    for path in paths:
        info, tensors = read_diff(path)
        missing = [t.name for t in info.targets if t.name not in new]
        if missing:
            raise BaseMismatchError(f"{info.path!r} changes tensors the state dict does not have: {missing}.")
        for t in info.targets:
            if tuple(new[t.name].shape) != t.shape:
                raise BaseMismatchError(
                    f"Shape mismatch for {t.name!r}: the diff expects {t.shape}, the state dict has "
                    f"{tuple(new[t.name].shape)}."
                )
        new.update(_step(info, tensors, new, strict=strict))
        infos.append(info)
    return new, infos


def merge(model: nn.Module, path: PathLike | None = None) -> DiffInfo | None:
    """Make the base include the diff: ``W0 <- W0 + D``; diffs on the targets are removed.

    - ``path=None``: merge the attached (trained) diffs exactly as the forward pass uses them.
    - ``path`` given: merge the *file's* diff (e.g. quantized values), so the training
      machine holds exactly what devices will hold after ``apply_diff``; any diff attached
      on those targets is discarded. Works on plain models too (then equal to ``apply_diff``).

    Returns:
        The file's :class:`DiffInfo`, or ``None`` when ``path`` is ``None``.
    """
    if path is None:
        if not diff_modules(model):
            raise ValueError("Model carries no diff to merge.")
        detach_diffs(model, merge=True)
        return None
    info, tensors = read_diff(path)
    state = _plain_weights(model, info, allow_diffs=True)
    new = _step(info, tensors, state, strict=True)
    attached = [n for n in info.names if n in diff_modules(model)]
    detach_diffs(model, merge=False, names=attached)
    _commit(model, new)
    return info


def unmerge(model: nn.Module, path: PathLike) -> DiffInfo:
    """Subtract a diff again: ``W <- W - D``, refused unless the result is bit-exactly the base.

    The model must currently hold the diff's result (checked by hash). Because
    ``(W0 + D) - D`` is not always ``W0`` in floating point, the new weights are hashed and
    compared with the recorded base hash before anything is written. Files exported with
    ``reversible=True`` carry the few base values needed, so their unmerge always succeeds.

    Raises:
        BaseMismatchError: the model does not hold this diff's result.
        DiffError: the subtraction does not restore the base exactly (model unchanged).
    """
    info, tensors = read_diff(path)
    state = _plain_weights(model, info)
    new = _step(info, tensors, state, strict=True, sign=-1)
    _commit(model, new)
    return info
