"""The neural diff file without a framework: constants, errors, hashes, reading and checking.

The one implementation of reading a diff file that both sides use: the PyTorch side
(:mod:`lightning_amortized.diffs`, which also writes files) and the torch-free device
runtime (:mod:`lightning_amortized.device`). It imports numpy and safetensors only. The
layout of the file is specified in :mod:`lightning_amortized.diffs.format`.

* :func:`named_sha256`: the canonical hash of named arrays (``weights_sha256`` of the
  targets, ``payload_sha256`` of a file);
* :func:`decode_gaps`: the ``gap-u8`` index stream back to flat indices, checked;
* :func:`read_verified`: a file's metadata and arrays after the format, version and
  payload-hash checks; :func:`check_arrays`: every stored array against the targets.

Example:
    >>> import numpy as np
    >>> decode_gaps(np.array([0, 0, 3, 255], dtype=np.uint8), np.array([994], dtype=np.int32), 1200).tolist()
    [0, 1, 5, 1000]
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GAP_ESCAPE",
    "INDEX_ENCODINGS",
    "LOWRANK_FORMAT",
    "LOWRANK_VERSION",
    "SUPPORTED_VERSIONS",
    "VALUE_DTYPE_NAMES",
    "BaseMismatchError",
    "DiffError",
    "DiffFormatError",
    "DiffIntegrityError",
    "check_arrays",
    "check_lowrank_arrays",
    "decode_gaps",
    "file_format",
    "lowrank_shapes",
    "named_sha256",
    "non_finite",
    "payload_sha256",
    "read_verified",
    "safetensors_header",
    "weights_sha256",
]

FORMAT_NAME = "lightning_amortized.diff"
#: The format name of low-rank (LoRA) update files (:mod:`lightning_amortized.diffs.lowrank`).
LOWRANK_FORMAT = "lightning_amortized.lowrank"
#: The version of low-rank files written, and the only one read (PyTorch and the device runtime).
LOWRANK_VERSION = 1
FORMAT_VERSION = 2  # the newest version written; version 1 is still written when it suffices
SUPPORTED_VERSIONS = (1, 2)
INDEX_ENCODINGS = ("gap-u8", "int32")
GAP_ESCAPE = 255  # a gap byte of 255 means "the skip is the next entry of large_gaps"
_VERSION_OF_ENCODING = {"int32": 1, "gap-u8": 2}
#: Value dtypes of a file and the array dtype each is stored as.
VALUE_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
PathLike = Union[str, Path]


class DiffError(ValueError):
    """A diff operation was refused; the model (or the exported weights) was not modified."""


class DiffFormatError(DiffError):
    """The file is not a readable diff (truncated, corrupted, unknown format version)."""


class DiffIntegrityError(DiffError):
    """The file reads but its payload hash does not match (edited or damaged)."""


class BaseMismatchError(DiffError):
    """The weights are not the base the diff applies to (hash, shape or names differ)."""


# -- hashes ------------------------------------------------------------------------------------


def named_sha256(domain: bytes, items: Iterable[tuple[str, str, Sequence[int], Any]], prefix: bytes = b"") -> str:
    """SHA-256 over named arrays: per item the length-prefixed JSON ``[name, dtype, shape]``, then its bytes.

    Args:
        domain: What is hashed (``b"lightning_amortized.weights.v1\\0"`` or ``...payload.v1\\0``).
        items: ``(name, dtype name, shape, little-endian bytes)`` in the order to hash
            (the callers sort by name); the bytes as any buffer (``memoryview``, ``bytes``).
        prefix: Bytes hashed after ``domain`` and before the items.

    Returns:
        64-character lowercase hex digest.
    """
    h = hashlib.sha256(domain)
    h.update(prefix)
    for name, dtype, shape, data in items:
        head = json.dumps([name, dtype, list(shape)]).encode("utf-8")
        h.update(struct.pack("<Q", len(head)) + head)
        view = memoryview(data).cast("B")
        h.update(struct.pack("<Q", view.nbytes))
        h.update(view)
    return h.hexdigest()


def array_item(name: str, a: np.ndarray) -> tuple[str, str, tuple[int, ...], memoryview]:
    """``(name, dtype, shape, bytes)`` of a numpy array for :func:`named_sha256` (little-endian, contiguous)."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return name, a.dtype.name, a.shape, memoryview(a.reshape(-1).view(np.uint8))


WEIGHTS_DOMAIN = b"lightning_amortized.weights.v1\0"
PAYLOAD_DOMAIN = b"lightning_amortized.payload.v1\0"


def metadata_prefix(metadata: Mapping[str, str]) -> bytes:
    """What :func:`payload_sha256` hashes of the metadata: its JSON (keys sorted, without the hash), length-prefixed."""
    meta = {k: v for k, v in metadata.items() if k != "payload_sha256"}
    blob = json.dumps(meta, sort_keys=True).encode("utf-8")
    return struct.pack("<Q", len(blob)) + blob


def payload_sha256(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> str:
    """The ``payload_sha256`` of a file: its metadata (without this hash) and every stored array."""
    items = (array_item(name, arrays[name]) for name in sorted(arrays))
    return named_sha256(PAYLOAD_DOMAIN, items, metadata_prefix(metadata))


def weights_sha256(arrays: Mapping[str, np.ndarray], names: Iterable[str]) -> str:
    """The canonical hash of the named arrays (a diff's ``base_sha256`` / ``result_sha256``).

    Sorted names; per name the length-prefixed UTF-8 JSON ``[name, dtype, shape]`` and the
    length-prefixed little-endian bytes of the C-contiguous array.

    Raises:
        KeyError: if a name is missing.
    """
    return named_sha256(WEIGHTS_DOMAIN, (array_item(name, arrays[name]) for name in sorted(set(names))))


# -- indices -----------------------------------------------------------------------------------


def large_dtype(numel: int) -> str:
    """The dtype of ``::large_gaps`` (and of ``int32`` indices) for a tensor of ``numel`` entries."""
    return "int32" if numel < 2**31 else "int64"


def decode_gaps(gaps: np.ndarray, large_gaps: np.ndarray, numel: int) -> np.ndarray:
    """Flat int64 indices ``(n,)`` from a ``gap-u8`` stream, checked against ``numel``.

    ``i_k = k + s_0 + ... + s_k``: one cumulative sum, no loop. The result is strictly
    ascending by construction.

    Raises:
        DiffFormatError: the number of 255 bytes differs from ``large_gaps.size``, a large
            gap is below 255 or not below ``numel``, or the last index is ``>= numel``.
    """
    gaps, large_gaps = np.asarray(gaps), np.asarray(large_gaps)
    if gaps.dtype != np.uint8 or gaps.ndim != 1 or large_gaps.ndim != 1 or large_gaps.dtype.kind not in "iu":
        raise DiffFormatError(
            f"Expected uint8 gaps (n,) and integer large gaps (e,), but got {gaps.dtype} {tuple(gaps.shape)} "
            f"and {large_gaps.dtype} {tuple(large_gaps.shape)}."
        )
    escape = gaps == GAP_ESCAPE
    n_escape = int(escape.sum())
    if n_escape != large_gaps.size:
        raise DiffFormatError(
            f"Gap stream has {n_escape} escape byte(s) (255) but {large_gaps.size} large gap(s); "
            "the index data is corrupt."
        )
    large = large_gaps.astype(np.int64)
    if large.size and (int(large.min()) < GAP_ESCAPE or int(large.max()) >= numel):
        raise DiffFormatError(
            f"Large gaps must lie in [{GAP_ESCAPE}, {numel}), found [{int(large.min())}, {int(large.max())}]; "
            "the index data is corrupt."
        )
    n = gaps.size
    # the last index is n - 1 + sum(skips); a float64 bound first, so the int64 cumsum cannot overflow
    approx_last = n - 1 + float(gaps[~escape].astype(np.float64).sum()) + float(large.astype(np.float64).sum())
    if n and approx_last >= numel + 1024:
        raise DiffFormatError(
            f"Gap stream decodes to indices beyond the tensor ({numel} entries); the index data is corrupt."
        )
    skips = gaps.astype(np.int64)
    skips[escape] = large
    idx = np.cumsum(skips) + np.arange(n, dtype=np.int64)
    if n and int(idx[-1]) >= numel:
        raise DiffFormatError(
            f"Gap stream decodes to index {int(idx[-1])}, outside [0, {numel}); the index data is corrupt."
        )
    return idx


# -- reading -----------------------------------------------------------------------------------


def safetensors_header(blob: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file from its bytes (the first ``8 + header length`` suffice).

    Raises:
        ValueError: the bytes do not start with a readable safetensors header (too short,
            truncated or corrupt JSON, not a JSON object); the message says which.
    """
    try:
        (hlen,) = struct.unpack("<Q", blob[:8])
        if hlen > len(blob) - 8:
            raise ValueError(f"the header claims {hlen} bytes, {max(len(blob) - 8, 0)} follow")
        header = json.loads(blob[8 : 8 + hlen])
    except ValueError:
        raise
    except Exception as err:  # struct.error, UnicodeDecodeError, RecursionError of a hostile header
        raise ValueError(f"no readable header ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
    return header


def file_format(path: PathLike) -> str | None:
    """The ``format`` named in a safetensors file's metadata, read from its header alone.

    ``None`` when the file cannot be read or has no such entry: the reader for the file's
    kind then reports why (see :func:`read_verified`).

    Example::

        >>> file_format("update-1.safetensors")  # doctest: +SKIP
        'lightning_amortized.diff'
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            (hlen,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
            if not 0 < hlen <= 100_000_000:
                return None
            meta = safetensors_header(head + fh.read(hlen)).get("__metadata__")
    except (OSError, ValueError):
        return None
    value = meta.get("format") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def non_finite(arrays: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point arrays (numpy, or anything ``np.asarray`` takes) holding a NaN or an Inf.

    Example:
        >>> non_finite({"a::values": np.array([1.0, np.nan], np.float32), "a::gaps": np.array([3], np.uint8)})
        ['a::values']
    """
    bad = []
    for name, value in arrays.items():
        a = np.asarray(value)
        if np.issubdtype(a.dtype, np.floating) and not bool(np.isfinite(a).all()):
            bad.append(name)
    return sorted(bad)


def read_verified(
    path: PathLike,
    reader: str = "lightning_amortized",
    *,
    format_name: str = FORMAT_NAME,
    versions: Sequence[int] = SUPPORTED_VERSIONS,
) -> tuple[dict[str, str], dict[str, np.ndarray], int]:
    """Read a diff file and check its format, version and payload hash.

    Args:
        path: The file.
        reader: Who reads (named in the message for a version it cannot read).
        format_name: The ``format`` its metadata must name (another file of the same
            safetensors + metadata + payload-hash layout, e.g. the low-rank peer's).
        versions: The format versions this reader accepts.

    Returns:
        ``(metadata, {name: array}, file size in bytes)``.

    Raises:
        DiffFormatError: missing, truncated or corrupted file, not a diff, unknown version,
            NaN or Inf among the stored values (an update made from a diverged run).
        DiffIntegrityError: payload hash mismatch (the file was edited or damaged).
    """
    import safetensors.numpy

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise DiffFormatError(f"Cannot read diff file {str(p)!r}: {err}.") from err
    try:
        arrays = safetensors.numpy.load(data)
        meta = safetensors_header(data).get("__metadata__") or {}
    except Exception as err:  # safetensors raises its own error types
        raise DiffFormatError(
            f"{str(p)!r} is not a readable safetensors file ({len(data)} bytes; truncated or corrupted?): {err}"
        ) from err
    if meta.get("format") != format_name:
        raise DiffFormatError(
            f"{str(p)!r} is a safetensors file but not a {format_name} file (format={meta.get('format')!r}); "
            f"update files are {FORMAT_NAME!r} (diffs) or {LOWRANK_FORMAT!r} (LoRA)."
        )
    try:
        version = int(meta["format_version"])
    except (KeyError, ValueError) as err:
        raise DiffFormatError(f"{str(p)!r} has no valid format_version ({meta.get('format_version')!r}).") from err
    if version not in versions:
        raise DiffFormatError(
            f"{str(p)!r} has format version {version}; this {reader} reads version(s) "
            f"{list(versions)}. Upgrade {reader} to apply it."
        )
    expected, found = meta.get("payload_sha256"), payload_sha256(arrays, meta)
    if expected != found:
        raise DiffIntegrityError(
            f"{str(p)!r} failed its integrity check: payload sha256 expected {expected}, found {found}. "
            "The file was edited or damaged; fetch it again."
        )
    bad = non_finite(arrays)
    if bad:
        raise DiffFormatError(
            f"{str(p)!r} stores NaN or Inf values in {bad}: it was made from a diverged training run. Refusing "
            "to apply it; retrain the update (e.g. with a lower learning rate) and export it again."
        )
    return meta, arrays, len(data)


def lowrank_shapes(name: str, shape: Sequence[int], rank: int) -> dict[str, tuple[int, ...]]:
    """The stored arrays of one low-rank target and their shapes.

    A target ``(m, *rest)`` of rank ``r > 0`` stores ``B (m, r)`` and ``A (r, prod(rest))``; a
    dense one (``rank`` 0, a 1-D target) stores ``delta`` of its own shape.

    Example:
        >>> lowrank_shapes("w", (8, 2, 3), 2), lowrank_shapes("b", (8,), 0)
        ({'w::A': (2, 6), 'w::B': (8, 2)}, {'b::delta': (8,)})
    """
    if rank == 0:
        return {f"{name}::delta": tuple(int(s) for s in shape)}
    m, n = int(shape[0]), int(math.prod(shape[1:]))
    return {f"{name}::A": (rank, n), f"{name}::B": (m, rank)}


def check_lowrank_arrays(
    path: str, targets: Iterable[tuple[str, Sequence[int], int]], arrays: Mapping[str, Any]
) -> None:
    """Check a low-rank file's arrays against its ``(name, shape, rank)`` targets: the names, shapes, fp16.

    Raises:
        DiffFormatError: an array missing, extra, of another shape or not float16.
    """
    expected: dict[str, tuple[int, ...]] = {}
    for name, shape, rank in targets:
        expected.update(lowrank_shapes(name, shape, rank))
    got = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    if got != expected or any(np.asarray(v).dtype != np.float16 for v in arrays.values()):
        raise DiffFormatError(f"{path!r}: stored tensors {got} do not match its targets (expected fp16 {expected}).")


def check_arrays(
    path: str,
    method: str,
    value_dtype: str,
    index_encoding: str,
    format_version: int,
    targets: Sequence[Mapping[str, Any]],
    arrays: Mapping[str, np.ndarray],
) -> None:
    """Check every stored array of a file against its targets (shapes, dtypes, indices, undo data).

    Args:
        path: The file (for messages).
        method: ``"sparse"`` or ``"hashed"``.
        value_dtype: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        index_encoding: ``"gap-u8"`` or ``"int32"`` (sparse), anything for hashed.
        format_version: The file's version.
        targets: ``[{name, shape, dtype, numel, stored}]``.
        arrays: The stored arrays.

    Raises:
        DiffFormatError: naming the file, the target and what is wrong.
    """
    if method not in ("sparse", "hashed") or value_dtype not in VALUE_DTYPE_NAMES:
        raise DiffFormatError(f"{path!r}: unknown method {method!r} or value dtype {value_dtype!r}.")
    if method == "sparse" and (
        index_encoding not in INDEX_ENCODINGS or _VERSION_OF_ENCODING[index_encoding] > format_version
    ):
        raise DiffFormatError(
            f"{path!r}: index encoding {index_encoding!r} is unknown or not allowed in format version "
            f"{format_version} (known: {list(INDEX_ENCODINGS)})."
        )
    vdtype = VALUE_DTYPE_NAMES[value_dtype]
    for t in targets:
        name, stored, numel = t["name"], int(t["stored"]), int(t["numel"])
        key = f"{name}::values" if method == "sparse" else f"{name}::buckets"
        values = arrays.get(key)
        if values is None or values.shape != (stored,) or values.dtype.name != vdtype:
            raise DiffFormatError(f"{path!r}: tensor {key!r} missing or not ({stored},) {value_dtype}.")
        if value_dtype == "int8" and f"{name}::scale" not in arrays:
            raise DiffFormatError(f"{path!r}: int8 target {name!r} has no scale tensor.")
        undo_i, undo_v = arrays.get(f"{name}::undo_indices"), arrays.get(f"{name}::undo_values")
        if (undo_i is None) != (undo_v is None) or (
            undo_i is not None
            and (
                undo_i.shape != undo_v.shape
                or (undo_i.size and (int(undo_i.min()) < 0 or int(undo_i.max()) >= numel))
            )
        ):
            raise DiffFormatError(f"{path!r}: undo tensors of {name!r} are inconsistent.")
        if method != "sparse":
            continue
        if math.prod(t["shape"]) != numel:
            raise DiffFormatError(f"{path!r}: target {name!r} shape and numel disagree.")
        other = ("::gaps", "::large_gaps") if index_encoding == "int32" else ("::indices",)
        if any(f"{name}{suffix}" in arrays for suffix in other):
            raise DiffFormatError(
                f"{path!r}: target {name!r} stores indices in two encodings ({index_encoding} expected)."
            )
        if index_encoding == "int32":
            idx = arrays.get(f"{name}::indices")
            if idx is None or idx.shape != (stored,) or idx.dtype.kind not in "iu":
                raise DiffFormatError(f"{path!r}: indices of {name!r} missing or of the wrong length.")
            if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= numel):
                raise DiffFormatError(f"{path!r}: indices of {name!r} fall outside [0, {numel}).")
            continue
        gaps, large = arrays.get(f"{name}::gaps"), arrays.get(f"{name}::large_gaps")
        if gaps is None or large is None or gaps.shape != (stored,) or large.dtype.name != large_dtype(numel):
            raise DiffFormatError(
                f"{path!r}: gap-u8 indices of {name!r} missing or malformed (expected ::gaps uint8 "
                f"({stored},) and ::large_gaps {large_dtype(numel)})."
            )
        try:
            decode_gaps(gaps, large, numel)
        except DiffFormatError as err:
            raise DiffFormatError(f"{path!r}: indices of {name!r}: {err}") from err
