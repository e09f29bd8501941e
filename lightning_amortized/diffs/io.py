"""The neural diff file: export, inspect, apply, merge, unmerge and chains of updates.

One ``safetensors`` file per update. Tensors, per target parameter ``<name>``:

- sparse, ``index_encoding="gap-u8"`` (the default, format version 2): ``<name>::gaps``
  (uint8, one per kept entry) and ``<name>::large_gaps`` (int32, or int64 for tensors with
  ``>= 2**31`` entries): the flat row-major indices ``i_0 < i_1 < ...`` as skips
  ``s_k = i_k - i_{k-1} - 1`` (``i_{-1} = -1``, so ``s_0 = i_0``); a skip below 255 is its
  byte, a skip ``>= 255`` is the byte 255 and the next entry of ``large_gaps``
  (see :func:`encode_gaps`);
- sparse, ``index_encoding="int32"`` (format version 1, older files): ``<name>::indices``
  (int32, or int64 for tensors with ``>= 2**31`` entries; flat row-major indices, ascending);
- sparse, both: ``<name>::values`` (float32, float16 or int8), in ascending index order;
- hashed: ``<name>::buckets`` (float32, float16 or int8), indices recomputed from the hash;
- int8 only: ``<name>::scale``, a ``(1,)`` float32 scale (``value = int8 * scale``);
- reversible files only (``export_diff(..., reversible=True)``): ``<name>::undo_indices`` and
  ``<name>::undo_values`` (base dtype): the base values of the entries where
  ``(W0 + D) - D != W0`` in floating point, so :func:`unmerge` restores the base exactly.

Metadata (``safetensors`` string-to-string header; JSON where structured): ``format``
(``"lightning_amortized.diff"``), ``format_version`` (``"2"`` for sparse files with
``gap-u8`` indices, ``"1"`` otherwise, so older readers still read hashed and int32 files),
``method``, ``seed``, ``value_dtype``, ``index_encoding`` (sparse only; absent means
``"int32"``), ``targets`` (list of ``{name, shape, dtype, numel, stored}``),
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_amortized.atomic import write_atomic
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
    "INDEX_ENCODINGS",
    "apply_chain",
    "apply_diff",
    "apply_to_state_dict",
    "count_large_gaps",
    "decode_gaps",
    "encode_gaps",
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
FORMAT_VERSION = 2  # the newest version written; version 1 is still written when it suffices
SUPPORTED_VERSIONS = (1, 2)
ValueDtype = Literal["fp32", "fp16", "int8"]
IndexEncoding = Literal["gap-u8", "int32"]
INDEX_ENCODINGS = ("gap-u8", "int32")
GAP_ESCAPE = 255  # a gap byte of 255 means "the skip is the next entry of large_gaps"
_VERSION_OF_ENCODING = {"int32": 1, "gap-u8": 2}
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
        index_encoding: ``"gap-u8"`` or ``"int32"`` (sparse), ``"hash"`` (hashed).
        index_bytes: bytes of stored index data (``::gaps`` + ``::large_gaps``, or
            ``::indices``; 0 for hashed diffs).
        value_bytes: bytes of stored values (``::values`` or ``::buckets``, and ``::scale``).
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
    index_encoding: str = "int32"
    index_bytes: int = 0
    value_bytes: int = 0

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
        undo = self.payload_bytes - self.index_bytes - self.value_bytes  # reversible files only
        lines = [
            f"{FORMAT_NAME} v{self.format_version}: {self.method} diff, {self.value_dtype} values, seed {self.seed}",
            f"  file     {self.path} ({self.file_bytes:,} bytes, payload {self.payload_bytes:,} bytes)",
            f"  bytes    indices {self.index_bytes:,} ({self.index_encoding}), values {self.value_bytes:,} "
            f"({self.value_dtype})" + (f", undo {undo:,}" if undo else ""),
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


# --------------------------------------------------------------------------- indices


def _large_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def encode_gaps(indices: torch.Tensor, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``gap-u8`` encoding of ascending flat indices: ``(gaps, large_gaps)``.

    With ``i_{-1} = -1``, entry ``k`` skips ``s_k = i_k - i_{k-1} - 1 >= 0`` entries (so
    ``s_0 = i_0``, and adjacent kept entries have ``s = 0``). ``gaps[k] = s_k`` if
    ``s_k < 255``, else ``255``, and the skips ``>= 255`` are stored, in order, in
    ``large_gaps``. Every kept entry costs one byte, plus 4 bytes (8 for tensors with
    ``>= 2**31`` entries) per skip of 255 or more.

    Args:
        indices: ``(n,)`` integer flat indices, strictly ascending, in ``[0, numel)``.
        numel: entries of the tensor they index.

    Returns:
        ``gaps``: ``(n,)`` uint8; ``large_gaps``: ``(e,)`` int32 (int64 if ``numel >= 2**31``),
        ``e`` the number of 255 bytes in ``gaps``. Both on the CPU.

    Raises:
        ValueError: if ``indices`` are not strictly ascending or fall outside ``[0, numel)``.

    Example::

        >>> gaps, large = encode_gaps(torch.tensor([0, 1, 5, 1000]), 1200)
        >>> gaps.tolist(), large.tolist()
        ([0, 0, 3, 255], [994])
    """
    idx = indices.detach().to("cpu", torch.int64).reshape(-1)
    skips = torch.diff(idx, prepend=idx.new_tensor([-1])) - 1
    if idx.numel() and (int(skips.min()) < 0 or int(idx[-1]) >= numel):
        raise ValueError(f"Expected strictly ascending indices in [0, {numel}), got {idx[:8].tolist()}...")
    big = skips >= GAP_ESCAPE
    gaps = torch.where(big, GAP_ESCAPE, skips).to(torch.uint8)
    return gaps, skips[big].to(_large_dtype(numel))


def decode_gaps(gaps: torch.Tensor, large_gaps: torch.Tensor, numel: int) -> torch.Tensor:
    """Flat int64 indices ``(n,)`` from :func:`encode_gaps` output, checked against ``numel``.

    ``i_k = k + s_0 + ... + s_k``: one cumulative sum, no loop. The result is strictly
    ascending by construction.

    Raises:
        DiffFormatError: the number of 255 bytes differs from ``large_gaps.numel()``, a large
            gap is below 255 or not below ``numel``, or the last index is ``>= numel``.

    Example::

        >>> decode_gaps(torch.tensor([0, 0, 3, 255], dtype=torch.uint8), torch.tensor([994]), 1200).tolist()
        [0, 1, 5, 1000]
    """
    if gaps.dtype != torch.uint8 or gaps.dim() != 1 or large_gaps.dim() != 1 or large_gaps.is_floating_point():
        raise DiffFormatError(
            f"Expected uint8 gaps (n,) and integer large gaps (e,), but got {gaps.dtype} {tuple(gaps.shape)} "
            f"and {large_gaps.dtype} {tuple(large_gaps.shape)}."
        )
    escape = gaps == GAP_ESCAPE
    n_escape = int(escape.sum())
    if n_escape != large_gaps.numel():
        raise DiffFormatError(
            f"Gap stream has {n_escape} escape byte(s) (255) but {large_gaps.numel()} large gap(s); "
            "the index data is corrupt."
        )
    large = large_gaps.to(torch.int64)
    if large.numel() and (int(large.min()) < GAP_ESCAPE or int(large.max()) >= numel):
        raise DiffFormatError(
            f"Large gaps must lie in [{GAP_ESCAPE}, {numel}), found [{int(large.min())}, {int(large.max())}]; "
            "the index data is corrupt."
        )
    n = gaps.numel()
    # the last index is n - 1 + sum(skips); a float64 bound first, so the int64 cumsum cannot overflow
    approx_last = n - 1 + float(gaps[~escape].to(torch.float64).sum()) + float(large.to(torch.float64).sum())
    if n and approx_last >= numel + 1024:
        raise DiffFormatError(
            f"Gap stream decodes to indices beyond the tensor ({numel} entries); the index data is corrupt."
        )
    skips = gaps.to(torch.int64)
    skips[escape] = large
    idx = torch.cumsum(skips, 0) + torch.arange(n, dtype=torch.int64)
    if n and int(idx[-1]) >= numel:
        raise DiffFormatError(
            f"Gap stream decodes to index {int(idx[-1])}, outside [0, {numel}); the index data is corrupt."
        )
    return idx


def count_large_gaps(indices: torch.Tensor) -> int:
    """Number of skips ``>= 255`` (4-byte escapes in ``gap-u8``) among ascending flat ``indices``.

    Example::

        >>> count_large_gaps(torch.tensor([300, 301, 600]))
        2
    """
    idx = indices.detach().reshape(-1).to(torch.int64)
    if idx.numel() == 0:
        return 0
    skips = torch.diff(idx, prepend=idx.new_tensor([-1])) - 1
    return int((skips >= GAP_ESCAPE).sum())


def _expected_large_gaps(numel: int, stored: int) -> float:
    """Expected skips ``>= 255`` when ``stored`` of ``numel`` positions are kept uniformly at random.

    Each of the ``stored`` skips is ``>= m`` with probability ``C(numel - m, stored) / C(numel, stored)``.
    """
    if stored <= 0 or numel - GAP_ESCAPE < stored:
        return 0.0
    log_p = sum(math.log((numel - stored - i) / (numel - i)) for i in range(GAP_ESCAPE))
    return stored * math.exp(log_p)


def estimate_diff_bytes(
    method: str,
    value_dtype: str,
    targets: Mapping[str, tuple[int, int]],
    *,
    index_encoding: str = "gap-u8",
    large_gaps: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Projected size in bytes of the file :func:`export_diff` writes (without undo data).

    Values are counted exactly. Sparse indices: ``int32`` counts 4 bytes per entry (8 for
    tensors with ``>= 2**31`` entries); ``gap-u8`` counts 1 byte per entry plus 4 (8) per
    skip ``>= 255``, using the exact number of such skips where ``large_gaps`` gives it
    (:func:`count_large_gaps` of the kept indices) and otherwise its expectation for kept
    positions drawn uniformly at random (about ``stored * (1 - stored / numel) ** 255``:
    negligible above ~3 % density, 0.6 % of the entries at 2 %). The header is built as the
    writer builds it, with placeholder hashes, 2-D shapes and a 20-character
    ``max_abs_error``; it is typically within a few bytes per target of the real one.

    Args:
        method: ``"sparse"`` or ``"hashed"``.
        value_dtype: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        targets: ``{name: (numel, stored)}`` with ``stored`` the kept entries or buckets.
        index_encoding: ``"gap-u8"`` (what :func:`export_diff` writes) or ``"int32"``.
        large_gaps: ``{name: skips >= 255}`` for targets whose kept indices are known.
        extra: the ``extra_metadata`` the file will carry.

    Example::

        >>> estimate_diff_bytes("sparse", "fp16", {"w": (100_000, 10_000)})  # 3 bytes per kept entry + header
        30792
        >>> estimate_diff_bytes("sparse", "fp16", {"w": (100_000, 10_000)}, index_encoding="int32")
        60720
    """
    if index_encoding not in INDEX_ENCODINGS:
        raise ValueError(
            f"Expected argument `index_encoding` to be one of {list(INDEX_ENCODINGS)}, but got {index_encoding!r}."
        )
    value_bytes = VALUE_DTYPES[value_dtype].itemsize
    value_code = {"fp32": "F32", "fp16": "F16", "int8": "I8"}[value_dtype]
    known = dict(large_gaps or {})
    specs: list[tuple[str, str, int, int]] = []  # (tensor name, safetensors dtype, entries, bytes)
    for name, (numel, stored) in targets.items():
        wide = 4 if numel < 2**31 else 8
        code = "I32" if wide == 4 else "I64"
        if method == "sparse":
            specs.append((f"{name}::values", value_code, stored, stored * value_bytes))
            if index_encoding == "int32":
                specs.append((f"{name}::indices", code, stored, stored * wide))
            else:
                large = known[name] if name in known else round(_expected_large_gaps(numel, stored))
                specs += [(f"{name}::gaps", "U8", stored, stored), (f"{name}::large_gaps", code, large, large * wide)]
        else:
            specs.append((f"{name}::buckets", value_code, stored, stored * value_bytes))
        if value_dtype == "int8":
            specs.append((f"{name}::scale", "F32", 1, 4))
    rows = [DiffTarget(name, (numel, 1), "float32", numel, stored) for name, (numel, stored) in targets.items()]
    error = 0.0 if value_dtype == "fp32" else 0.012345678901234567
    extra = {"max_abs_error": error, **dict(extra or {})}
    meta = _metadata(method, 0, value_dtype, rows, "0" * 64, "0" * 64, extra, index_encoding)
    header: dict[str, Any] = {"__metadata__": {**meta, "payload_sha256": "0" * 64}}
    offset = 0
    for key, code, count, nbytes in specs:
        header[key] = {"dtype": code, "shape": [count], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return 8 + -(-header_bytes // 8) * 8 + offset


# --------------------------------------------------------------------------- writing


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
    metadata = _metadata(method, seed, value_dtype, targets, base_sha256, result_sha256, extra, index_encoding)
    metadata["payload_sha256"] = _payload_sha256(tensors, metadata)
    data = _sorted_metadata(safetensors.torch.save(tensors, metadata=metadata))
    write_atomic(Path(path), data)
    return inspect_diff(path)


def _sorted_metadata(data: bytes) -> bytes:
    """The same ``safetensors`` bytes with the metadata keys in sorted order.

    ``safetensors`` writes metadata from a hash map, in an order that changes from one
    process to the next; sorting makes the same diff the same file, byte for byte (so
    its SHA-256 identifies it). Tensor offsets are relative to the data section and
    unaffected; the header stays padded to a multiple of 8 bytes.
    """
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def _metadata(
    method: str,
    seed: int,
    value_dtype: str,
    targets: Sequence[DiffTarget],
    base_sha256: str,
    result_sha256: str,
    extra: Mapping[str, Any],
    index_encoding: str,
) -> dict[str, str]:
    """The file's metadata, without ``payload_sha256``."""
    sparse = method == "sparse"
    return {
        "format": FORMAT_NAME,
        # the oldest version that describes the file, so older readers read what they can
        "format_version": str(_VERSION_OF_ENCODING[index_encoding] if sparse else 1),
        "method": method,
        "seed": str(seed),
        "value_dtype": value_dtype,
        **({"index_encoding": index_encoding} if sparse else {}),
        "targets": json.dumps(
            [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "numel": t.numel, "stored": t.stored} for t in targets]
        ),
        "base_sha256": base_sha256,
        "result_sha256": result_sha256,
        "extra": json.dumps(dict(extra), sort_keys=True),
    }


def _build(
    method: str,
    value_dtype: str,
    entries: Mapping[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]],
    index_encoding: str = "gap-u8",
) -> tuple[list[DiffTarget], dict[str, torch.Tensor]]:
    """``entries``: ``{name: (base, indices or None, values)}`` -> targets and stored tensors."""
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"Expected argument `value_dtype` to be one of {list(VALUE_DTYPES)}, but got {value_dtype!r}.")
    if index_encoding not in INDEX_ENCODINGS:
        raise ValueError(
            f"Expected argument `index_encoding` to be one of {list(INDEX_ENCODINGS)}, but got {index_encoding!r}."
        )
    targets, tensors = [], {}
    for name, (base, indices, values) in entries.items():
        if "::" in name:
            raise ValueError(f"Parameter names containing '::' cannot be stored in a diff file, got {name!r}.")
        if method == "sparse":
            assert indices is not None
            idx = indices.detach().to("cpu", torch.int64).reshape(-1)
            order = torch.argsort(idx)
            idx, values = idx[order], values.reshape(-1)[order.to(values.device)]  # values follow their indices
            if index_encoding == "gap-u8":
                tensors[f"{name}::gaps"], tensors[f"{name}::large_gaps"] = encode_gaps(idx, base.numel())
            else:
                tensors[f"{name}::indices"] = idx.to(_large_dtype(base.numel())).contiguous()
        enc = _encode(values, value_dtype)
        if method == "sparse":
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


def _sparse_indices(target: DiffTarget, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Flat indices of a sparse target, from the gap stream (``gap-u8``) or ``::indices`` (``int32``)."""
    if f"{target.name}::gaps" in tensors:
        return decode_gaps(tensors[f"{target.name}::gaps"], tensors[f"{target.name}::large_gaps"], target.numel)
    return tensors[f"{target.name}::indices"]


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
    targets, tensors = _build(method, value_dtype, entries, index_encoding)
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
    targets, tensors = _build("sparse", value_dtype, entries, index_encoding)
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
        index_encoding=index_encoding,
    )


# --------------------------------------------------------------------------- reading


def read_diff(path: PathLike) -> tuple[DiffInfo, dict[str, torch.Tensor]]:
    """Read and fully verify a diff file: its :class:`DiffInfo` and stored tensors (CPU).

    Reads format versions 1 (int32 indices) and 2 (``gap-u8`` indices). The tensors are
    returned as stored (a ``gap-u8`` file has ``::gaps`` and ``::large_gaps``, no
    ``::indices``); the gap streams are decoded once here to check them.

    Raises:
        DiffFormatError: missing, truncated or corrupted file, not a diff, unknown version,
            inconsistent tensors (e.g. a gap stream that decodes outside the tensor).
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
        method = meta["method"]
        encoding = meta.get("index_encoding", "int32") if method == "sparse" else "hash"
        sizes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
        index_keys = ("::indices", "::gaps", "::large_gaps") if method == "sparse" else ()
        value_keys = ("::values", "::buckets", "::scale")
        info = DiffInfo(
            path=str(p),
            format_version=version,
            method=method,
            seed=int(meta["seed"]),
            value_dtype=meta["value_dtype"],
            targets=targets,
            base_sha256=meta["base_sha256"],
            result_sha256=meta["result_sha256"],
            payload_sha256=expected,
            file_bytes=len(data),
            payload_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
            extra=json.loads(meta.get("extra", "{}")),
            index_encoding=encoding,
            index_bytes=sum(b for name, b in sizes.items() if name.endswith(index_keys) and "::undo" not in name),
            value_bytes=sum(b for name, b in sizes.items() if name.endswith(value_keys) and "::undo" not in name),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise DiffFormatError(f"{str(p)!r} has malformed metadata: {err!r}.") from err
    _check_tensors(info, tensors)
    return info, tensors


def _check_tensors(info: DiffInfo, tensors: Mapping[str, torch.Tensor]) -> None:
    if info.method not in ("sparse", "hashed") or info.value_dtype not in VALUE_DTYPES:
        raise DiffFormatError(f"{info.path!r}: unknown method {info.method!r} or value dtype {info.value_dtype!r}.")
    if info.method == "sparse" and (
        info.index_encoding not in INDEX_ENCODINGS or _VERSION_OF_ENCODING[info.index_encoding] > info.format_version
    ):
        raise DiffFormatError(
            f"{info.path!r}: index encoding {info.index_encoding!r} is unknown or not allowed in format version "
            f"{info.format_version} (known: {list(INDEX_ENCODINGS)})."
        )
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
            if math.prod(t.shape) != t.numel:
                raise DiffFormatError(f"{info.path!r}: target {t.name!r} shape and numel disagree.")
            other = ("::gaps", "::large_gaps") if info.index_encoding == "int32" else ("::indices",)
            if any(f"{t.name}{suffix}" in tensors for suffix in other):
                raise DiffFormatError(
                    f"{info.path!r}: target {t.name!r} stores indices in two encodings ({info.index_encoding} expected)."
                )
            if info.index_encoding == "int32":
                idx = tensors.get(f"{t.name}::indices")
                if idx is None or idx.shape != (t.stored,) or idx.is_floating_point():
                    raise DiffFormatError(f"{info.path!r}: indices of {t.name!r} missing or of the wrong length.")
                if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t.numel):
                    raise DiffFormatError(f"{info.path!r}: indices of {t.name!r} fall outside [0, {t.numel}).")
                continue
            gaps, large = tensors.get(f"{t.name}::gaps"), tensors.get(f"{t.name}::large_gaps")
            if gaps is None or large is None or gaps.shape != (t.stored,) or large.dtype != _large_dtype(t.numel):
                raise DiffFormatError(
                    f"{info.path!r}: gap-u8 indices of {t.name!r} missing or malformed (expected ::gaps uint8 "
                    f"({t.stored},) and ::large_gaps {_dtype_name(_large_dtype(t.numel))})."
                )
            try:
                decode_gaps(gaps, large, t.numel)
            except DiffFormatError as err:
                raise DiffFormatError(f"{info.path!r}: indices of {t.name!r}: {err}") from err


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

    ``requires_grad`` flags are left exactly as they are: ``merge`` does not know which flags
    the model had before a :class:`~lightning_amortized.callbacks.neural_diff.NeuralDiff`
    froze it, and never unfreezes parameters on its own. After training with ``NeuralDiff``
    *every* parameter therefore still has ``requires_grad=False``; that is what the next
    ``NeuralDiff`` wants (it freezes everything anyway). For a later plain fine-tune, either
    call ``callback.remove(model, merge=False)`` first (restores the flags the model had
    before the callback, discards the in-memory diff) and then ``merge(model, path)``, or
    re-enable gradients yourself (``model.requires_grad_(True)``).

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
