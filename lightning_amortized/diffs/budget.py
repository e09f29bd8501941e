"""Sizes of diff files: the projected bytes of a diff, and the entries a byte budget buys.

:func:`entries_for_bytes` is the one place where a byte budget becomes a number of stored
entries (sparse) or buckets (hashed), for the real encoding (``gap-u8`` indices: about one
byte per kept entry, not four); the ``NeuralDiff`` callback, the ``diff export`` command,
the updates recipe and the benchmarks all call it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_amortized.diffs.format import GAP_ESCAPE, INDEX_ENCODINGS, VALUE_DTYPES, DiffTarget, _metadata

__all__ = ["entries_for_bytes", "estimate_diff_bytes", "fewer_entries", "split_stored"]


def _expected_large_gaps(numel: int, stored: int) -> float:
    """Expected skips ``>= 255`` when ``stored`` of ``numel`` positions are kept uniformly at random.

    Each of the ``stored`` skips is ``>= m`` with probability ``C(numel - m, stored) / C(numel, stored)``.
    """
    if stored <= 0 or numel - GAP_ESCAPE < stored:
        return 0.0
    log_p = sum(math.log((numel - stored - i) / (numel - i)) for i in range(GAP_ESCAPE))
    return stored * math.exp(log_p)


#: safetensors writes tensors sorted by dtype (its enum order, descending), then by name; the header's
#: offsets follow that order, so their digits (and the header's length) do too.
_SAFETENSORS_DTYPE_ORDER = {"I64": 0, "F64": 1, "F32": 2, "I32": 3, "BF16": 4, "F16": 5, "I8": 6, "U8": 7}

_LONGEST_FLOAT = 2.2250738585072014e-308
"""A non-negative float whose JSON form is as long as any (23 characters): the size of ``max_abs_error``."""


def estimate_diff_bytes(
    method: str,
    value_dtype: str,
    targets: Mapping[str, tuple[int, int]],
    *,
    index_encoding: str = "gap-u8",
    large_gaps: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> int:
    """Projected size in bytes of the file :func:`export_diff` writes (without undo data).

    Values are counted exactly. Sparse indices: ``int32`` counts 4 bytes per entry (8 for
    tensors with ``>= 2**31`` entries); ``gap-u8`` counts 1 byte per entry plus 4 (8) per
    skip ``>= 255``, using the exact number of such skips where ``large_gaps`` gives it
    (:func:`count_large_gaps` of the kept indices) and otherwise its expectation for kept
    positions drawn uniformly at random (about ``stored * (1 - stored / numel) ** 255``:
    negligible above ~3 % density, 0.6 % of the entries at 2 %). The header is built as the
    writer builds it (tensors in safetensors' order, placeholder hashes, a ``max_abs_error``
    as long as any float's JSON form: 23 characters, since fp32 exports of pruned entries
    record a real error too), with the targets' ``shapes`` where given and 2-D ``(numel, 1)``
    shapes otherwise. Given ``large_gaps`` and ``shapes`` it is never below the real size
    (equal up to the length of ``max_abs_error``); without them typically within a few bytes
    per target.

    Args:
        method: ``"sparse"`` or ``"hashed"``.
        value_dtype: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        targets: ``{name: (numel, stored)}`` with ``stored`` the kept entries or buckets.
        index_encoding: ``"gap-u8"`` (what :func:`export_diff` writes) or ``"int32"``.
        large_gaps: ``{name: skips >= 255}`` for targets whose kept indices are known.
        extra: the ``extra_metadata`` the file will carry.
        shapes: ``{name: shape}`` of the targets (their length is in the header).

    Example::

        >>> estimate_diff_bytes("sparse", "fp16", {"w": (100_000, 10_000)})  # 3 bytes per kept entry + header
        30784
        >>> estimate_diff_bytes("sparse", "fp16", {"w": (100_000, 10_000)}, index_encoding="int32")
        60728
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
    shape = {name: tuple(int(d) for d in (shapes or {}).get(name, (numel, 1))) for name, (numel, _) in targets.items()}
    rows = [DiffTarget(name, shape[name], "float32", numel, stored) for name, (numel, stored) in targets.items()]
    extra = {"max_abs_error": _LONGEST_FLOAT, **dict(extra or {})}
    meta = _metadata(method, 0, value_dtype, rows, "0" * 64, "0" * 64, extra, index_encoding)
    header: dict[str, Any] = {"__metadata__": {**meta, "payload_sha256": "0" * 64}}
    offset = 0
    for key, code, count, nbytes in sorted(specs, key=lambda spec: (_SAFETENSORS_DTYPE_ORDER[spec[1]], spec[0])):
        header[key] = {"dtype": code, "shape": [count], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return 8 + -(-header_bytes // 8) * 8 + offset


def split_stored(numels: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` stored entries over targets in proportion to their sizes (largest remainders).

    Args:
        numels: ``{name: entries}`` of the targets.
        total: entries (sparse) or buckets (hashed) to store, ``0 <= total <= sum(numels)``.

    Returns:
        ``{name: stored}`` summing to ``total``, each at most its target's size.

    Example::

        >>> split_stored({"a": 300, "b": 100}, 10)
        {'a': 8, 'b': 2}
    """
    n = sum(numels.values())
    if not 0 <= total <= n:
        raise ValueError(f"Expected argument `total` to be in [0, {n}], but got {total}.")
    exact = {name: total * size / max(n, 1) for name, size in numels.items()}
    out = {name: int(math.floor(v)) for name, v in exact.items()}
    left = total - sum(out.values())
    for name in sorted(exact, key=lambda k: (out[k] - exact[k], k))[:left]:
        out[name] += 1
    return out


def entries_for_bytes(
    method: str,
    value_dtype: str,
    numels: Mapping[str, int],
    budget_bytes: int,
    *,
    index_encoding: str = "gap-u8",
    extra: Mapping[str, Any] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> int:
    """The most entries (sparse) or buckets (hashed) whose file fits in ``budget_bytes``.

    The size is :func:`estimate_diff_bytes` of the entries split over the targets in
    proportion to their sizes (:func:`split_stored`), header included. With ``gap-u8``
    indices a kept entry costs one index byte plus its value (5 bytes at fp32, 3 at fp16,
    2 at int8), not the 4 + value of ``int32`` indices. The real file can differ from the
    projection by the number of skips of 255 or more among the kept entries, which is only
    known once they are chosen: ``NeuralDiff`` prunes a few more entries at the end of
    training if the exact size is over the budget.

    Args:
        method: ``"sparse"`` or ``"hashed"``.
        value_dtype: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        numels: ``{name: entries}`` of the targets.
        budget_bytes: the file size not to exceed, in bytes.
        index_encoding: ``"gap-u8"`` (what is written) or ``"int32"``.
        extra: the ``extra`` metadata the file will carry (it is in the header).
        shapes: ``{name: shape}`` of the targets (see :func:`estimate_diff_bytes`).

    Returns:
        The total count, ``0`` if not even an empty diff fits; at most ``sum(numels)``.

    Example::

        >>> entries_for_bytes("sparse", "fp16", {"w": 100_000}, 30_784)
        10000
        >>> entries_for_bytes("sparse", "fp16", {"w": 100_000}, 60_728, index_encoding="int32")
        10000
    """

    def size(count: int) -> int:
        split = split_stored(numels, count)
        return estimate_diff_bytes(
            method,
            value_dtype,
            {name: (numels[name], split[name]) for name in numels},
            index_encoding=index_encoding,
            extra=extra,
            shapes=shapes,
        )

    lo, hi = 0, sum(numels.values())
    if size(lo) > budget_bytes:
        return 0
    while lo < hi:  # the size grows with the count: the largest count that fits
        mid = (lo + hi + 1) // 2
        if size(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fewer_entries(stored: int, file_bytes: int, budget_bytes: int, value_dtype: str) -> int:
    """Sparse entries to keep so that a file of ``stored`` entries and ``file_bytes`` bytes shrinks into the budget.

    Each dropped entry saves at least its ``gap-u8`` index byte and its value, so dropping
    ``ceil(over / (1 + value bytes))`` entries brings the file within ``budget_bytes`` unless
    fewer large skips were saved than new ones made (then call again with the new size).

    Args:
        stored: entries in the file.
        file_bytes: its size in bytes.
        budget_bytes: the size not to exceed.
        value_dtype: ``"fp32"``, ``"fp16"`` or ``"int8"``.

    Returns:
        ``stored`` when the file fits, else fewer (at least 1).

    Example::

        >>> fewer_entries(1000, 3010, 3000, "fp16")  # 10 bytes over, 3 bytes per entry
        996
    """
    over = file_bytes - budget_bytes
    if over <= 0:
        return stored
    per_entry = 1 + VALUE_DTYPES[value_dtype].itemsize
    return max(1, stored - -(-over // per_entry))

