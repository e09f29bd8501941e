"""Apply neural diff files to an exported model with numpy and safetensors only.

Reads the file format specified in :mod:`lightning_amortized.diffs.format` (``gap-u8`` or
``int32`` sparse indices, fp32/fp16/int8 values with a scale, hashed diffs,
``base_sha256``/``result_sha256`` over the targets, ``payload_sha256`` over everything)
through :mod:`lightning_amortized.diff_format`, the framework-free reader the PyTorch side
uses too: the same checks, the same hashes, the same error classes. Low-rank (LoRA) update
files of :mod:`lightning_amortized.diffs.lowrank` (the peer the diffs are compared with) go
through the same reader and checks, and are applied with the same arithmetic as
:func:`~lightning_amortized.diffs.lowrank.merge_lowrank`, so a chain may mix both kinds.

:func:`apply_chain` (and :func:`apply_diff` for one file), before writing anything:
verifies each file (format, version, payload hash, tensor consistency), checks that its
targets exist in ``weights.safetensors`` with the same shapes and dtypes, checks the
*base hash* against the current weights (after the earlier files of the chain), computes
the new weights in temporaries and checks the *result hash*. Only then is
``weights.safetensors`` replaced atomically (temporary file and rename; the graphs point
into it, so they compute with the new weights when next loaded) and the update recorded
in ``updates.json``. A refusal raises and leaves the weights byte-identical.

Example::

    >>> apply_chain("exported/", ["update-1.safetensors", "update-2.safetensors"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_amortized.atomic import write_atomic
from lightning_amortized.diff_format import (
    LOWRANK_FORMAT,
    LOWRANK_VERSION,
    BaseMismatchError,
    DiffError,
    DiffFormatError,
    DiffIntegrityError,
    check_arrays,
    check_lowrank_arrays,
    decode_gaps,
    file_format,
    lowrank_shapes,
    read_verified,
)
from lightning_amortized.device.hashing import hash_indices
from lightning_amortized.device.weights import read_weights, weights_sha256, write_weights
from lightning_amortized.errors import first_line

__all__ = [
    "BaseMismatchError",
    "DiffError",
    "DiffFormatError",
    "DiffIntegrityError",
    "DeviceDiffInfo",
    "apply_chain",
    "apply_diff",
    "read_history",
    "decode_gaps",
    "read_diff",
]

VALUE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
UPDATES_FILE = "updates.json"


@dataclass(frozen=True)
class DeviceDiffInfo:
    """What the device needs to know about a diff file.

    Attributes:
        path: The file.
        format_version: 1 or 2 (diffs), 1 (low-rank files).
        method: ``"sparse"``, ``"hashed"`` or ``"lora"`` (a low-rank file of
            :mod:`lightning_amortized.diffs.lowrank`, the LoRA peer).
        seed: Hash seed (0 for the other methods).
        value_dtype: ``"fp32"``, ``"fp16"`` or ``"int8"`` (``"fp16"`` factors for LoRA).
        index_encoding: ``"gap-u8"``, ``"int32"``, ``"hash"`` or ``"lowrank"``.
        targets: ``[{name, shape, dtype, numel, stored}]`` (LoRA: also ``rank``, 0 for a dense 1-D target).
        base_sha256: Hash of the targets before applying.
        result_sha256: Hash of the targets after applying.
        payload_sha256: Hash of tensors and metadata.
        file_bytes: Size of the file in bytes.
    """

    path: str
    format_version: int
    method: str
    seed: int
    value_dtype: str
    index_encoding: str
    targets: tuple[dict[str, Any], ...]
    base_sha256: str
    result_sha256: str
    payload_sha256: str
    file_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [t["name"] for t in self.targets]


def read_diff(path: str | Path) -> tuple[DeviceDiffInfo, dict[str, np.ndarray]]:
    """Read and fully verify an update file: its :class:`DeviceDiffInfo` and stored arrays.

    A diff (sparse or hashed) or a low-rank (LoRA) file, told apart by the format in its header.

    Raises:
        DiffFormatError: missing, truncated, not a diff, unknown version, inconsistent tensors.
        DiffIntegrityError: payload hash mismatch (the file was edited or damaged).
    """
    p = Path(path)
    if file_format(p) == LOWRANK_FORMAT:
        return _read_lowrank(p)
    meta, tensors, file_bytes = read_verified(p, reader="device runtime")
    expected = meta["payload_sha256"]
    version = int(meta["format_version"])
    try:
        targets = tuple(
            {"name": t["name"], "shape": tuple(int(s) for s in t["shape"]), "dtype": t["dtype"],
             "numel": int(t["numel"]), "stored": int(t["stored"])}
            for t in json.loads(meta["targets"])
        )
        method = meta["method"]
        info = DeviceDiffInfo(
            path=str(p), format_version=version, method=method, seed=int(meta["seed"]),
            value_dtype=meta["value_dtype"],
            index_encoding=meta.get("index_encoding", "int32") if method == "sparse" else "hash",
            targets=targets, base_sha256=meta["base_sha256"], result_sha256=meta["result_sha256"],
            payload_sha256=expected, file_bytes=file_bytes, extra=json.loads(meta.get("extra", "{}")),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise DiffFormatError(f"{str(p)!r} has malformed metadata: {err!r}.") from err
    check_arrays(info.path, info.method, info.value_dtype, info.index_encoding, info.format_version,
                 info.targets, tensors)
    return info, tensors


def _read_lowrank(p: Path) -> tuple[DeviceDiffInfo, dict[str, np.ndarray]]:
    """A low-rank file: per matrix target ``(m, *rest)`` fp16 factors ``B (m, r)`` and ``A (r, prod(rest))``,
    per 1-D target an fp16 ``delta``; metadata ``rank`` and ``alpha`` (``scale = alpha / rank``)."""
    meta, tensors, file_bytes = read_verified(p, reader="device runtime", format_name=LOWRANK_FORMAT,
                                              versions=(LOWRANK_VERSION,))
    try:
        targets = []
        for t in json.loads(meta["targets"]):
            shape = tuple(int(s) for s in t["shape"])
            numel, rank = int(np.prod(shape, dtype=np.int64)), int(t["rank"])
            stored = sum(int(np.prod(s)) for s in lowrank_shapes(t["name"], shape, rank).values())
            targets.append({"name": t["name"], "shape": shape, "dtype": t["dtype"], "numel": numel,
                            "stored": stored, "rank": rank})
        info = DeviceDiffInfo(
            path=str(p), format_version=int(meta["format_version"]), method="lora", seed=0, value_dtype="fp16",
            index_encoding="lowrank", targets=tuple(targets), base_sha256=meta["base_sha256"],
            result_sha256=meta["result_sha256"], payload_sha256=meta["payload_sha256"], file_bytes=file_bytes,
            extra={"rank": int(meta["rank"]), "alpha": float(meta["alpha"])},
        )
    except (KeyError, ValueError, TypeError) as err:
        raise DiffFormatError(f"{str(p)!r} has malformed metadata: {err!r}.") from err
    check_lowrank_arrays(info.path, ((t["name"], t["shape"], t["rank"]) for t in info.targets), tensors)
    return info, tensors


def _values(tensors: Mapping[str, np.ndarray], key: str, name: str) -> np.ndarray:
    """float32 values (``int8 * scale`` for int8), as the PyTorch side decodes them."""
    v = tensors[key]
    if v.dtype == np.int8:
        return v.astype(np.float32) * tensors[f"{name}::scale"].astype(np.float32)
    return v.astype(np.float32)


def _new_weight(
    info: DeviceDiffInfo, t: Mapping[str, Any], tensors: Mapping[str, np.ndarray], base: np.ndarray
) -> np.ndarray:
    """``W0 + D`` for one target as a new array (same arithmetic as the PyTorch side)."""
    name = t["name"]
    if info.method == "lora":  # as diffs.lowrank: the fp16 factors' product in float64, rounded once, then added
        if t["rank"] == 0:
            delta = tensors[f"{name}::delta"].astype(np.float64)
        else:
            scale = info.extra["alpha"] / info.extra["rank"]
            delta = (tensors[f"{name}::B"].astype(np.float64) @ tensors[f"{name}::A"].astype(np.float64)) * scale
        return base + delta.reshape(t["shape"]).astype(base.dtype)
    if info.method == "sparse":
        values = _values(tensors, f"{name}::values", name)
        if f"{name}::gaps" in tensors:
            idx = decode_gaps(tensors[f"{name}::gaps"], tensors[f"{name}::large_gaps"], t["numel"])
        else:
            idx = tensors[f"{name}::indices"].astype(np.int64)
        out = np.array(base, copy=True, order="C")
        flat = out.reshape(-1)
        flat[idx] = flat[idx] + values.astype(out.dtype)
        return out
    buckets = _values(tensors, f"{name}::buckets", name).astype(base.dtype)
    idx, sign = hash_indices(name, t["numel"], info.seed, buckets.size)
    delta = (sign.astype(buckets.dtype) * buckets[idx]).reshape(t["shape"])
    return base + delta


def _step(
    info: DeviceDiffInfo, tensors: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """New arrays for the diff's targets given the current weights; checks names, shapes, hashes."""
    missing = [n for n in info.names if n not in weights]
    if missing:
        raise BaseMismatchError(
            f"{info.path!r} changes tensors the exported model does not have: {missing}. The diff was made "
            "for another model, or targets parameters the device graphs do not use."
        )
    for t in info.targets:
        w = weights[t["name"]]
        if tuple(w.shape) != t["shape"] or w.dtype.name != t["dtype"]:
            raise BaseMismatchError(
                f"Shape or dtype mismatch for {t['name']!r}: the diff expects {t['shape']} {t['dtype']}, the "
                f"exported weights have {tuple(w.shape)} {w.dtype.name}."
            )
    found = weights_sha256(weights, info.names)
    if found != info.base_sha256 and found == info.result_sha256:
        raise BaseMismatchError(
            f"{info.path!r} is already applied: the weights of its {len(info.names)} target(s) equal its result "
            f"(sha256 {found}). Leave it out and apply only the updates that follow it."
        )
    if found != info.base_sha256:
        raise BaseMismatchError(
            f"{info.path!r} applies to a different base: expected weights sha256 {info.base_sha256}, found "
            f"{found} (over {len(info.names)} target(s)). Apply the earlier updates first, or use the matching model."
        )
    new = {t["name"]: _new_weight(info, t, tensors, weights[t["name"]]) for t in info.targets}
    got = weights_sha256(new, info.names)
    if got != info.result_sha256:
        raise DiffError(
            f"Applying {info.path!r} gave weights sha256 {got}, expected {info.result_sha256}; refusing "
            "(arithmetic differs from the exporting machine)."
        )
    return new


def apply_chain(export_dir: str | Path, paths: Sequence[str | Path]) -> list[DeviceDiffInfo]:
    """Apply diff files ``1..k`` in order to ``export_dir/weights.safetensors``; all or nothing.

    Args:
        export_dir: A folder written by ``lightning-amortized export``.
        paths: Diff files in the order they were made.

    Returns:
        The :class:`DeviceDiffInfo` of each file.

    Raises:
        DiffFormatError, DiffIntegrityError: an unreadable, unknown-version or edited file.
        BaseMismatchError: a file for another base (hash), unknown names, shape or dtype mismatch.
        DiffError: other refusals. In every case the weights are unchanged.
        lightning_amortized.device.weights.WeightsError: the exported weights are damaged.
    """
    if not paths:
        raise ValueError("Expected at least one diff file in `paths`, but got none.")
    folder = Path(export_dir)
    weights_path = folder / "weights.safetensors"
    weights, meta = read_weights(weights_path)
    current = dict(weights)
    infos, records = [], []
    for path in paths:
        info, tensors = read_diff(path)
        current.update(_step(info, tensors, current))
        infos.append(info)
        records.append({"file": Path(path).name, "payload_sha256": info.payload_sha256, "method": info.method,
                        "targets": len(info.targets), "bytes": info.file_bytes,
                        "base_sha256": info.base_sha256, "result_sha256": info.result_sha256})
    history_path = folder / UPDATES_FILE
    history = read_history(folder)  # a damaged history refuses the update before the weights change
    before = meta.get("weights_sha256")
    after = write_weights(weights_path, current)
    for i, rec in enumerate(records):
        rec["weights_sha256_before"] = before if i == 0 else None
        rec["weights_sha256_after"] = after if i == len(records) - 1 else None
        history.append(rec)
    try:
        write_atomic(history_path, json.dumps(history, indent=2) + "\n")
    except OSError as err:
        raise DiffError(
            f"The weights in {str(weights_path)!r} were updated (sha256 {after}), but the update history "
            f"{str(history_path)!r} could not be written ({err}); do not apply these files again. Free space or "
            "fix the permissions, then add the records by hand or re-export the model."
        ) from err
    return infos


def read_history(export_dir: str | Path) -> list[dict]:
    """The update records of an exported model (``updates.json``; empty before the first update).

    Raises:
        DiffError: the history exists but is not a readable JSON list (nothing is changed: move it
            aside or repair it, then apply again).
    """
    path = Path(export_dir) / UPDATES_FILE
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text())
        problem = None if isinstance(history, list) else f"a JSON {type(history).__name__}, not a list"
    except (OSError, ValueError) as err:
        problem = first_line(err)
    if problem is not None:
        raise DiffError(
            f"The update history {str(path)!r} is damaged ({problem}); the weights were left unchanged. Move it "
            "aside (its records are kept there) or repair it, then apply again."
        )
    return history


def apply_diff(export_dir: str | Path, path: str | Path) -> DeviceDiffInfo:
    """Apply one diff file to an exported model (see :func:`apply_chain`)."""
    return apply_chain(export_dir, [path])[0]
