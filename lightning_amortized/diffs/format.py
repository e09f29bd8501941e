"""The neural diff file format: constants, errors, what a file describes, its metadata.

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

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import nn

# the constants and errors live in the framework-free core, shared with the device runtime
from lightning_amortized.diff_format import (
    _VERSION_OF_ENCODING,
    FORMAT_NAME,
    FORMAT_VERSION,
    GAP_ESCAPE,
    INDEX_ENCODINGS,
    SUPPORTED_VERSIONS,
    BaseMismatchError,
    DiffError,
    DiffFormatError,
    DiffIntegrityError,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GAP_ESCAPE",
    "INDEX_ENCODINGS",
    "SUPPORTED_VERSIONS",
    "VALUE_DTYPES",
    "BaseMismatchError",
    "DiffError",
    "DiffFormatError",
    "DiffInfo",
    "DiffIntegrityError",
    "DiffTarget",
]


ValueDtype = Literal["fp32", "fp16", "int8"]
IndexEncoding = Literal["gap-u8", "int32"]
VALUE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}
StateOrModel = Union[nn.Module, Mapping[str, torch.Tensor]]
PathLike = Union[str, os.PathLike]


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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
