"""Index and value codec of a diff file: how kept entries become stored tensors and back.

Values: fp32, fp16, or int8 with one float32 scale per target. Sparse indices: the
``gap-u8`` stream (one byte per kept entry, escapes for skips of 255 or more) or plain
``int32`` (format version 1). See :mod:`~lightning_amortized.diffs.format` for the layout.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch

from lightning_amortized.diff_format import decode_gaps as _decode_gaps
from lightning_amortized.diffs.format import (
    GAP_ESCAPE,
    INDEX_ENCODINGS,
    VALUE_DTYPES,
    DiffTarget,
    _dtype_name,
)

__all__ = ["count_large_gaps", "decode_gaps", "encode_gaps"]


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

    The decoding and its checks are :func:`lightning_amortized.diff_format.decode_gaps`
    (the one implementation, shared with the device runtime), on the CPU.

    Raises:
        DiffFormatError: the number of 255 bytes differs from ``large_gaps.numel()``, a large
            gap is below 255 or not below ``numel``, or the last index is ``>= numel``.

    Example::

        >>> decode_gaps(torch.tensor([0, 0, 3, 255], dtype=torch.uint8), torch.tensor([994]), 1200).tolist()
        [0, 1, 5, 1000]
    """
    return torch.from_numpy(_decode_gaps(gaps.detach().cpu().numpy(), large_gaps.detach().cpu().numpy(), numel))


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


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an Inf (any device; the numpy twin for
    files is :func:`lightning_amortized.diff_format.non_finite`)."""
    return sorted(n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))


def check_finite(tensors: Mapping[str, torch.Tensor], path: object) -> None:
    """Refuse to write an update file whose stored floating-point tensors hold a NaN or an Inf.

    Raises:
        ValueError: naming the tensors (a diverged fine-tuning run, or fp16 overflow of huge values).
    """
    bad = non_finite_tensors(tensors)
    if bad:
        raise ValueError(
            f"Refusing to write {str(path)!r}: {bad} hold NaN or Inf values. The fine-tuned weights or the trained "
            "update diverged (or overflowed the value type); fix the training run before shipping an update."
        )


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
        if non_finite_tensors({name: values}):  # before int8 quantization hides them
            raise ValueError(
                f"Refusing to encode the update of {name!r}: its values hold NaN or Inf. The fine-tuned weights or "
                "the trained update diverged; fix the training run before shipping an update."
            )
        enc = _encode(values, value_dtype)
        if method == "sparse":
            tensors[f"{name}::values"] = enc["values"]
        else:
            tensors[f"{name}::buckets"] = enc["values"]
        if "scale" in enc:
            tensors[f"{name}::scale"] = enc["scale"]
        targets.append(DiffTarget(name, tuple(base.shape), _dtype_name(base.dtype), base.numel(), values.numel()))
    return targets, tensors


def _sparse_indices(target: DiffTarget, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Flat indices of a sparse target, from the gap stream (``gap-u8``) or ``::indices`` (``int32``)."""
    if f"{target.name}::gaps" in tensors:
        return decode_gaps(tensors[f"{target.name}::gaps"], tensors[f"{target.name}::large_gaps"], target.numel)
    return tensors[f"{target.name}::indices"]


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
