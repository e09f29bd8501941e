"""The exported weights file (``weights.safetensors``): canonical hash, reading and atomic rewriting, numpy only.

The file holds every tensor the step graphs read, under its ``ASRModule`` name, and the
metadata ``format``, ``format_version`` and ``weights_sha256`` (:func:`weights_sha256`
over all tensors). The ONNX graphs point into it (external data at fixed byte
offsets), so a rewrite must keep every tensor's offset: :func:`write_weights` refuses
otherwise. Names, dtypes and shapes never change, and the hash has a fixed length, so
the header, and with it every offset, stays byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from lightning_amortized.atomic import write_atomic
from lightning_amortized.diff_format import safetensors_header
from lightning_amortized.diff_format import weights_sha256 as _weights_sha256

__all__ = ["WEIGHTS_FORMAT", "WeightsError", "read_weights", "weights_sha256", "write_weights"]

WEIGHTS_FORMAT = "lightning_amortized.device.weights"


class WeightsError(ValueError):
    """The exported weights file is missing, unreadable or inconsistent with its manifest."""


def weights_sha256(arrays: Mapping[str, np.ndarray], names: Iterable[str]) -> str:
    """Canonical SHA-256 of named arrays, equal to :func:`lightning_amortized.diffs.io.weights_sha256`.

    Sorted names; per name the UTF-8 JSON ``[name, dtype, shape]`` and the little-endian
    bytes of the C-contiguous array, each preceded by its length (``<Q``).

    Args:
        arrays: ``{name: array}``.
        names: The names to hash.

    Returns:
        64-character lowercase hex digest.

    Raises:
        KeyError: if a name is missing.
    """
    return _weights_sha256(arrays, names)


def _header(blob: bytes, where: str) -> dict:
    try:
        return safetensors_header(blob)
    except ValueError as err:
        raise WeightsError(f"{where} is not a readable safetensors file ({len(blob)} bytes): {err}.") from err


def read_weights(path: str | Path, verify: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read ``weights.safetensors``: ``({name: array}, metadata)``.

    Args:
        path: The weights file.
        verify: Recompute the hash and compare it with the recorded ``weights_sha256``.

    Raises:
        WeightsError: missing, truncated, not an exported weights file, or a hash mismatch.
    """
    import safetensors.numpy

    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as err:
        raise WeightsError(f"Cannot read exported weights {str(p)!r}: {err}.") from err
    meta = _header(blob, repr(str(p))).get("__metadata__") or {}
    if meta.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{str(p)!r} is not a {WEIGHTS_FORMAT} file (format={meta.get('format')!r}).")
    try:
        arrays = safetensors.numpy.load(blob)
    except Exception as err:
        raise WeightsError(f"{str(p)!r} is truncated or corrupted: {err}.") from err
    if verify:
        found = weights_sha256(arrays, arrays)
        if found != meta.get("weights_sha256"):
            raise WeightsError(
                f"{str(p)!r} failed its integrity check: recorded sha256 {meta.get('weights_sha256')}, "
                f"found {found}. Export the model again."
            )
    return arrays, meta


def write_weights(path: str | Path, arrays: Mapping[str, np.ndarray]) -> str:
    """Atomically replace ``path`` with ``arrays``, keeping every tensor at its byte offset.

    Args:
        path: An existing exported weights file.
        arrays: The full new set of tensors (same names, dtypes and shapes).

    Returns:
        The new ``weights_sha256``.

    Raises:
        WeightsError: the layout would change (names, dtypes or shapes differ); the file is untouched.
    """
    import safetensors.numpy

    p = Path(path)
    old = p.read_bytes()
    sha = weights_sha256(arrays, arrays)
    blob = safetensors.numpy.save(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()},
        metadata={"format": WEIGHTS_FORMAT, "format_version": "1", "weights_sha256": sha},
    )
    old_h, new_h = _header(old, repr(str(p))), _header(blob, "new weights")
    old_h.pop("__metadata__", None)
    new_h.pop("__metadata__", None)
    if old_h != new_h or old[:8] != blob[:8]:
        raise WeightsError(
            f"New weights would change the tensor layout of {str(p)!r} (names, dtypes or shapes differ); "
            "the ONNX graphs point into it at fixed offsets. Refusing; the file is unchanged."
        )
    write_atomic(p, blob)
    return sha
