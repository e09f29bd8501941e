"""Reading a diff file: parse, verify (format, payload hash, tensor shapes, index stream), inspect."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lightning_amortized.diff_format import check_arrays, read_verified
from lightning_amortized.diffs.format import DiffFormatError, DiffInfo, DiffTarget, PathLike

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
    meta, arrays, file_bytes = read_verified(p)
    tensors = {name: torch.from_numpy(a.copy()) for name, a in arrays.items()}
    try:
        version = int(meta["format_version"])
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
            payload_sha256=meta["payload_sha256"],
            file_bytes=file_bytes,
            payload_bytes=sum(sizes.values()),
            extra=json.loads(meta.get("extra", "{}")),
            index_encoding=encoding,
            index_bytes=sum(b for name, b in sizes.items() if name.endswith(index_keys) and "::undo" not in name),
            value_bytes=sum(b for name, b in sizes.items() if name.endswith(value_keys) and "::undo" not in name),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise DiffFormatError(f"{str(p)!r} has malformed metadata: {err!r}.") from err
    check_arrays(
        info.path, info.method, info.value_dtype, info.index_encoding, info.format_version,
        [{"name": t.name, "shape": t.shape, "numel": t.numel, "stored": t.stored} for t in info.targets], arrays,
    )
    return info, tensors


def inspect_diff(path: PathLike) -> DiffInfo:
    """Read and verify a diff file and describe it.

    Example::

        >>> info = inspect_diff("update-1.safetensors")  # doctest: +SKIP
        >>> print(info)  # doctest: +SKIP
    """
    return read_diff(path)[0]
