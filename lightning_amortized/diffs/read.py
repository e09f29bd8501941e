"""Reading a diff file: parse, verify (format, payload hash, tensor shapes, index stream), inspect."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from lightning_amortized.diffs.checksum import _payload_sha256
from lightning_amortized.diffs.codec import _large_dtype, decode_gaps
from lightning_amortized.diffs.format import (
    _VERSION_OF_ENCODING,
    FORMAT_NAME,
    INDEX_ENCODINGS,
    SUPPORTED_VERSIONS,
    VALUE_DTYPES,
    DiffFormatError,
    DiffInfo,
    DiffIntegrityError,
    DiffTarget,
    PathLike,
    _dtype_name,
)

__all__ = ["inspect_diff", "read_diff"]


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
