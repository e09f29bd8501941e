"""Low-rank updates (LoRA) on frozen weights: ``W = W0 + B @ A * (alpha / r)``, shipped as fp16 factors.

A peer of the sparse and hashed diffs, on the same targets (PEFT refuses ``nn.LSTM``
weights, so this is a parametrization of our own). Each target with two or more
dimensions ``(m, *rest)`` is treated as the matrix ``(m, n)``, ``n = prod(rest)``, and gets
the trainable factors ``B`` ``(m, r_j)`` (zeros) and ``A`` ``(r_j, n)`` (uniform in
``±1/sqrt(n)``, seeded), ``r_j = min(r, m, n)``; a 1-D target (a bias) gets a dense
trainable ``delta`` instead (a rank cannot make a vector smaller). The base parameter stays
the same object (``parametrizations.<attr>.original``), as for
:class:`~lightning_amortized.diffs.sparse.SparseDiff`, so ``nn.LSTM`` flattened weights
(``weight_ih_l0`` ...) work as they do there: the RNN re-reads its weights on every forward.

The file (``safetensors``; its own small format, ``lightning_amortized.lowrank`` version 1,
next to the diff format of :mod:`~lightning_amortized.diffs.format`): tensors
``<name>::A`` and ``<name>::B`` (float16) per matrix target, ``<name>::delta`` (float16)
per 1-D target; metadata ``format``, ``format_version``, ``method`` (``"lora"``),
``rank``, ``alpha``, ``targets`` (JSON list of ``{name, shape, dtype, rank}``, rank 0 for
dense targets), ``base_sha256`` and ``result_sha256``
(:func:`~lightning_amortized.diffs.weights_sha256` of the targets before and after) and
``payload_sha256`` (tensors and the other metadata). Every value of the header is known
before training, so :func:`lowrank_file_bytes` gives the exact file size and
:func:`rank_for_bytes` the largest rank that fits a byte budget.

Applying computes, per matrix target, ``W0 + fl(B.double() @ A.double() * alpha / r)`` (the
product of the fp16 factors in float64, rounded once to the weight's dtype, so the result
does not depend on the BLAS summation order), per 1-D target ``W0 + delta``; the training
machine folds the file in with the same function (:func:`merge_lowrank`), so a device
holds bit for bit what the next update trains from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_amortized.atomic import write_atomic
from lightning_amortized.diff_format import (
    LOWRANK_FORMAT,
    LOWRANK_VERSION,
    check_lowrank_arrays,
    file_format,
    lowrank_shapes,
    read_verified,
)
from lightning_amortized.diffs.attach import base_tensor, parametrizations_of, remove_parametrizations
from lightning_amortized.diffs.checksum import _lookup, _payload_sha256, weights_sha256
from lightning_amortized.diffs.codec import _sorted_metadata, check_finite
from lightning_amortized.diffs.format import (
    BaseMismatchError,
    DiffError,
    DiffFormatError,
    DiffInfo,
    PathLike,
    StateOrModel,
    _dtype_name,
)
from lightning_amortized.diffs.read import read_diff
from lightning_amortized.diffs.targets import distinct_names, resolve

__all__ = [
    "LOWRANK_FORMAT",
    "LOWRANK_VERSION",
    "read_update",
    "DenseDelta",
    "LowRankDelta",
    "LowRankInfo",
    "LowRankTarget",
    "apply_lowrank",
    "attach_lowrank",
    "detach_lowrank",
    "export_lowrank",
    "inspect_lowrank",
    "lowrank_file_bytes",
    "lowrank_modules",
    "lowrank_weights",
    "merge_lowrank",
    "rank_for_bytes",
    "read_lowrank",
]

_PLACEHOLDER = "0" * 64  # a sha256 hex digest has 64 characters: the header size does not depend on it


def _matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    return int(shape[0]), int(math.prod(shape[1:]))


def _target_rank(shape: Sequence[int], rank: int) -> int:
    """``min(rank, m, n)`` for a matrix target, ``0`` (dense) for a 1-D one."""
    if len(shape) < 2:
        return 0
    m, n = _matrix_shape(shape)
    return min(rank, m, n)


class LowRankDelta(nn.Module):
    """Parametrization ``W0 -> W0 + (B @ A).reshape(W0.shape) * alpha / run_rank``.

    Args:
        base: the frozen base tensor ``W0`` with two or more dimensions ``(m, *rest)``;
            the factors get its dtype and device.
        rank: columns of ``B`` (at most ``min(m, prod(rest))``).
        alpha: numerator of the scale.
        run_rank: the run's rank ``r`` in the scale ``alpha / r`` (a matrix too small for
            ``r`` holds fewer columns but keeps the run's scale); ``None``: ``rank``.
        generator: random source of ``A`` (CPU); ``None`` uses the global one.

    Attributes:
        A: trainable ``(rank, n)``, uniform in ``[-1/sqrt(n), 1/sqrt(n)]`` (as PEFT's default).
        B: trainable ``(m, rank)``, zeros: the parametrized weight starts at ``W0`` exactly.
        scale: ``alpha / run_rank``.

    Example::

        >>> p = LowRankDelta(torch.ones(4, 3), rank=2, alpha=1.0, generator=torch.Generator().manual_seed(0))
        >>> p.A.shape, p.B.shape, p.scale
        (torch.Size([2, 3]), torch.Size([4, 2]), 0.5)
        >>> torch.equal(p(torch.ones(4, 3)), torch.ones(4, 3))  # B = 0
        True
    """

    def __init__(
        self,
        base: torch.Tensor,
        rank: int,
        alpha: float,
        run_rank: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if base.dim() < 2:
            raise ValueError(f"Expected a tensor with 2 or more dimensions for a low-rank delta, but got {tuple(base.shape)}.")
        m, n = _matrix_shape(base.shape)
        if not 1 <= rank <= min(m, n):
            raise ValueError(
                f"Expected argument `rank` to be between 1 and {min(m, n)} for shape {tuple(base.shape)}, but got {rank}."
            )
        bound = 1.0 / math.sqrt(n)
        a = (torch.rand(rank, n, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        self.A = nn.Parameter(a.to(device=base.device, dtype=base.dtype))
        self.B = nn.Parameter(torch.zeros(m, rank, device=base.device, dtype=base.dtype))
        self.alpha = float(alpha)
        self.run_rank = int(run_rank if run_rank is not None else rank)
        self.scale = self.alpha / self.run_rank

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return base + (self.B @ self.A).reshape(base.shape) * self.scale

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def extra_repr(self) -> str:
        return f"B={tuple(self.B.shape)}, A={tuple(self.A.shape)}, scale={self.scale:g}"


class DenseDelta(nn.Module):
    """Parametrization ``W0 -> W0 + delta`` for the 1-D targets of a low-rank update (biases).

    Args:
        base: the frozen base tensor; ``delta`` gets its shape, dtype and device, zeros.

    Example::

        >>> p = DenseDelta(torch.ones(3))
        >>> with torch.no_grad():
        ...     _ = p.delta.fill_(0.25)
        >>> p(torch.ones(3))
        tensor([1.2500, 1.2500, 1.2500], grad_fn=<AddBackward0>)
    """

    def __init__(self, base: torch.Tensor) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros_like(base, memory_format=torch.contiguous_format))

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return base + self.delta


LowRankModule = LowRankDelta | DenseDelta


def attach_lowrank(
    model: nn.Module, names: Sequence[str], rank: int, alpha: float | None = None, *, seed: int = 0
) -> dict[str, LowRankModule]:
    """Wrap each named parameter with a :class:`LowRankDelta` (matrices) or :class:`DenseDelta` (vectors).

    The base parameters are not frozen here: freeze the model first
    (``model.requires_grad_(False)``) so that only ``A``, ``B`` and ``delta`` train.

    Args:
        model: the model; ``names`` are plain parameter names (see ``select_targets``).
        names: parameters to wrap.
        rank: ``r``; a matrix ``(m, n)`` gets ``min(r, m, n)``.
        alpha: ``scale = alpha / r``; ``None``: ``alpha = r`` (scale 1).
        seed: seed of the ``A`` initialisation (one generator, targets in ``names`` order).

    Returns:
        ``{name: parametrization}``.

    Raises:
        ValueError: if ``rank < 1`` or a name already carries a parametrization.

    Example::

        >>> lstm = nn.LSTM(4, 3)
        >>> w0 = lstm.weight_ih_l0
        >>> d = attach_lowrank(lstm, ["weight_ih_l0", "bias_ih_l0"], rank=2)
        >>> lstm.parametrizations.weight_ih_l0.original is w0, d["weight_ih_l0"].B.shape, type(d["bias_ih_l0"]).__name__
        (True, torch.Size([12, 2]), 'DenseDelta')
        >>> lstm(torch.randn(5, 1, 4))[0].shape
        torch.Size([5, 1, 3])
    """
    if rank < 1:
        raise ValueError(f"Expected argument `rank` to be >= 1, but got {rank}.")
    alpha = float(rank) if alpha is None else float(alpha)
    names = distinct_names(names, model)
    plan = []
    for name in names:
        module, attr = resolve(model, name)
        if parametrize.is_parametrized(module, attr):
            raise ValueError(f"Parameter {name!r} already carries a parametrization; detach it first.")
        plan.append((name, module, attr))
    generator = torch.Generator().manual_seed(int(seed))
    out: dict[str, LowRankModule] = {}
    for name, module, attr in plan:
        base = getattr(module, attr)
        r = _target_rank(base.shape, rank)
        p: LowRankModule = LowRankDelta(base, r, alpha, rank, generator) if r else DenseDelta(base)
        parametrize.register_parametrization(module, attr, p, unsafe=True)
        out[name] = p
    return out


def lowrank_modules(model: nn.Module) -> dict[str, LowRankModule]:
    """``{plain name: parametrization}`` for every parameter carrying a low-rank (or dense) delta."""
    return parametrizations_of(model, (LowRankDelta, DenseDelta))  # type: ignore[return-value]


@torch.no_grad()
def detach_lowrank(model: nn.Module, *, merge: bool, names: Sequence[str] | None = None) -> list[str]:
    """Remove low-rank parametrizations; ``merge=True``: ``W0 <- W0 + B @ A * scale`` (fp32, as trained).

    The original ``nn.Parameter`` objects are kept. To fold in what was *shipped* (fp16
    factors), use :func:`merge_lowrank` instead.

    Returns:
        The names whose delta was removed.
    """
    return remove_parametrizations(model, lowrank_modules(model), merge, names, "low-rank delta")


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class LowRankTarget:
    """One parameter in a low-rank file: plain name, shape, dtype name, rank (0: dense fp16 delta)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    rank: int


@dataclass(frozen=True)
class LowRankInfo:
    """What :func:`inspect_lowrank` reports about a low-rank file.

    Attributes:
        path: the file.
        rank: the run's rank ``r`` (targets may hold fewer columns, see ``targets``).
        alpha: ``scale = alpha / rank``.
        targets: the parameters it changes.
        base_sha256: :func:`weights_sha256` of the targets before applying.
        result_sha256: :func:`weights_sha256` of the targets after applying.
        payload_sha256: hash of the tensors and the other metadata.
        file_bytes: file size in bytes.
        payload_bytes: bytes of tensor data (fp16 factors and deltas).
        stored_entries: numbers stored (``r_j * (m + n)`` per matrix, ``numel`` per vector).
    """

    path: str
    rank: int
    alpha: float
    targets: tuple[LowRankTarget, ...]
    base_sha256: str
    result_sha256: str
    payload_sha256: str
    file_bytes: int
    payload_bytes: int
    stored_entries: int

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def method(self) -> str:
        """``"lora"`` (the update kind, as :attr:`DiffInfo.method` names a diff's)."""
        return "lora"

    @property
    def stored(self) -> int:
        """Numbers stored (:attr:`stored_entries`; the name :class:`DiffInfo` uses)."""
        return self.stored_entries

    def __str__(self) -> str:
        lines = [
            f"{LOWRANK_FORMAT} v{LOWRANK_VERSION}: LoRA update, rank {self.rank}, alpha {self.alpha:g} "
            f"(scale {self.scale:g}), fp16 factors",
            f"  file     {self.path} ({self.file_bytes:,} bytes, payload {self.payload_bytes:,} bytes)",
            f"  base     sha256:{self.base_sha256}",
            f"  result   sha256:{self.result_sha256}",
            f"  payload  sha256:{self.payload_sha256}",
            f"  stored   {self.stored_entries:,} numbers in {len(self.targets)} target(s) (rank 0: a dense fp16 delta):",
        ]
        width = max([len(t.name) for t in self.targets] + [4])
        lines += [f"    {t.name.ljust(width)}  {str(t.shape):<16} {t.dtype:<9} rank {t.rank}" for t in self.targets]
        return "\n".join(lines)


def _metadata(rank: int, alpha: float, targets: Sequence[LowRankTarget], base_sha256: str, result_sha256: str) -> dict[str, str]:
    return {
        "format": LOWRANK_FORMAT,
        "format_version": str(LOWRANK_VERSION),
        "method": "lora",
        "rank": str(rank),
        "alpha": repr(float(alpha)),
        "targets": json.dumps([{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "rank": t.rank} for t in targets]),
        "base_sha256": base_sha256,
        "result_sha256": result_sha256,
    }


def _encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    metadata = {**metadata, "payload_sha256": _payload_sha256(tensors, metadata)}
    return _sorted_metadata(safetensors.torch.save(tensors, metadata=metadata))


def _targets(shapes: Mapping[str, tuple[tuple[int, ...], str]], rank: int) -> list[LowRankTarget]:
    return [LowRankTarget(n, tuple(s), d, _target_rank(s, rank)) for n, (s, d) in shapes.items()]


def _stored_tensors(t: LowRankTarget, fill: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The fp16 tensors of one target (zeros when ``fill`` is ``None``)."""
    out = {}
    for key, shape in lowrank_shapes(t.name, t.shape, t.rank).items():
        value = torch.zeros(shape) if fill is None else fill[key.rpartition("::")[2]]
        out[key] = value.detach().to("cpu", torch.float16).reshape(shape).contiguous()
    return out


def lowrank_file_bytes(shapes: Mapping[str, Sequence[int]], rank: int, alpha: float | None = None, dtype: str = "float32") -> int:
    """Exact size in bytes of the file :func:`export_lowrank` writes for these targets and rank.

    ``8 + header + 2 * (sum over matrices (m, n) of r_j * (m + n) + sum over vectors of numel)``,
    ``r_j = min(r, m, n)``; the header (JSON, padded to 8 bytes) is built as the writer builds
    it, with placeholder hashes of the same length, so the result is the real size.

    Args:
        shapes: ``{plain name: shape}`` of the targets.
        rank: ``r``.
        alpha: as in :func:`attach_lowrank` (``None``: ``r``); its text is in the header.
        dtype: the targets' dtype name, recorded in the header.

    Example::

        >>> lowrank_file_bytes({"w": (64, 240), "b": (64,)}, rank=4) - lowrank_file_bytes({"w": (64, 240), "b": (64,)}, rank=3)
        608
    """
    alpha = float(rank) if alpha is None else float(alpha)
    targets = _targets({n: (tuple(s), dtype) for n, s in shapes.items()}, rank)
    tensors: dict[str, torch.Tensor] = {}
    for t in targets:
        tensors.update(_stored_tensors(t))
    return len(_encode(tensors, _metadata(rank, alpha, targets, _PLACEHOLDER, _PLACEHOLDER)))


def rank_for_bytes(
    shapes: Mapping[str, Sequence[int]], budget_bytes: int, alpha: float | None = None, dtype: str = "float32"
) -> int:
    """The largest rank ``r`` whose file (:func:`lowrank_file_bytes`) fits in ``budget_bytes``.

    Beyond ``max(min(m, n))`` over the matrix targets a larger rank changes nothing, so the
    search stops there.

    Raises:
        ValueError: if not even rank 1 fits (the message gives its size).

    Example::

        >>> shapes = {"w": (64, 240), "b": (64,)}
        >>> r = rank_for_bytes(shapes, 4000)
        >>> lowrank_file_bytes(shapes, r) <= 4000 < lowrank_file_bytes(shapes, r + 1)
        True
    """
    cap = max([min(_matrix_shape(s)) for s in shapes.values() if len(s) >= 2] + [1])
    smallest = lowrank_file_bytes(shapes, 1, alpha, dtype)
    if smallest > budget_bytes:
        raise ValueError(
            f"A rank-1 update of these {len(shapes)} target(s) takes {smallest:,} bytes, over the budget of "
            f"{budget_bytes:,} bytes; raise the budget or select fewer targets."
        )
    lo, hi = 1, cap
    while lo < hi:  # the size grows with the rank
        mid = (lo + hi + 1) // 2
        if lowrank_file_bytes(shapes, mid, alpha, dtype) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _delta(t: LowRankTarget, tensors: Mapping[str, torch.Tensor], scale: float, like: torch.Tensor) -> torch.Tensor:
    """The update of one target as the device computes it, in ``like``'s dtype and device."""
    if t.rank == 0:
        d = tensors[f"{t.name}::delta"].to(torch.float64)
    else:
        d = (tensors[f"{t.name}::B"].to(torch.float64) @ tensors[f"{t.name}::A"].to(torch.float64)) * scale
    return d.reshape(t.shape).to(device=like.device, dtype=like.dtype)


def lowrank_weights(
    info: LowRankInfo, tensors: Mapping[str, torch.Tensor], state: StateOrModel, *, strict: bool = True
) -> dict[str, torch.Tensor]:
    """New tensors ``W0 + delta`` for the file's targets; checks names, shapes and hashes, mutates nothing.

    Args:
        info, tensors: from :func:`read_lowrank`.
        state: the weights to apply to: a model (its base tensors) or a ``{name: tensor}`` dict.
        strict: ``False`` skips the base and result hash checks.

    Raises:
        BaseMismatchError: a missing name, a shape mismatch or (``strict``) the wrong base.
        DiffError: (``strict``) the result differs from the one recorded.
    """
    current = {}
    missing = []
    for t in info.targets:
        try:
            w = _lookup(state, t.name)
        except (KeyError, AttributeError):
            missing.append(t.name)
            continue
        if tuple(w.shape) != t.shape:
            raise BaseMismatchError(f"Shape mismatch for {t.name!r}: {info.path!r} expects {t.shape}, found {tuple(w.shape)}.")
        current[t.name] = w.detach()
    if missing:
        raise BaseMismatchError(f"{info.path!r} changes parameters the model does not have: {missing}.")
    found = weights_sha256(current, info.names)
    if strict and found != info.base_sha256:
        raise BaseMismatchError(
            f"{info.path!r} applies to a different base: expected weights sha256 {info.base_sha256}, found {found} "
            f"(over {len(info.names)} target(s)). Apply the earlier updates first, or use the matching model."
        )
    new = {t.name: current[t.name] + _delta(t, tensors, info.scale, current[t.name]) for t in info.targets}
    got = weights_sha256(new, info.names)
    if strict and got != info.result_sha256:
        raise DiffError(
            f"Applying {info.path!r} gave weights sha256 {got}, expected {info.result_sha256}; refusing "
            "(arithmetic differs from the exporting machine)."
        )
    return new


@torch.no_grad()
def export_lowrank(model: nn.Module, path: PathLike) -> LowRankInfo:
    """Write the low-rank deltas attached to ``model`` as fp16 factors (atomically).

    The result hash is computed from what a device computes from the fp16 factors
    (:func:`lowrank_weights`), not from the fp32 training weights.

    Args:
        model: a model with :func:`attach_lowrank` deltas.
        path: output file (``.safetensors``); parent directories are created.

    Returns:
        The written file's :class:`LowRankInfo`.

    Raises:
        ValueError: if the model carries no low-rank delta, or deltas of different scales.

    Example::

        >>> import tempfile, os
        >>> lin = nn.Linear(6, 4)
        >>> _ = lin.requires_grad_(False)
        >>> d = attach_lowrank(lin, ["weight", "bias"], rank=2, seed=0)
        >>> tmp = tempfile.TemporaryDirectory()
        >>> info = export_lowrank(lin, os.path.join(tmp.name, "lora-1.safetensors"))
        >>> info.rank, info.stored_entries, info.file_bytes == lowrank_file_bytes({"weight": (4, 6), "bias": (4,)}, 2)
        (2, 24, True)
        >>> tmp.cleanup()
    """
    mods = lowrank_modules(model)
    if not mods:
        raise ValueError("Model carries no low-rank delta to export; attach one with attach_lowrank().")
    runs = {(p.run_rank, p.alpha) for p in mods.values() if isinstance(p, LowRankDelta)}
    if len(runs) > 1:
        raise ValueError(f"Low-rank deltas of different runs (rank, alpha) {sorted(runs)}; export them separately.")
    rank, alpha = runs.pop() if runs else (1, 1.0)
    base = {n: base_tensor(model, n) for n in mods}
    targets = [
        LowRankTarget(n, tuple(base[n].shape), _dtype_name(base[n].dtype), p.rank if isinstance(p, LowRankDelta) else 0)
        for n, p in mods.items()
    ]
    tensors: dict[str, torch.Tensor] = {}
    for t in targets:
        p = mods[t.name]
        fill = {"delta": p.delta} if isinstance(p, DenseDelta) else {"A": p.A, "B": p.B}
        tensors.update(_stored_tensors(t, fill))
    check_finite(tensors, path)
    probe = LowRankInfo("<export>", rank, alpha, tuple(targets), "", "", "", 0, 0, 0)
    result = lowrank_weights(probe, tensors, base, strict=False)
    meta = _metadata(rank, alpha, targets, weights_sha256(base, list(base)), weights_sha256(result, list(result)))
    write_atomic(Path(path), _encode(tensors, meta))
    return inspect_lowrank(path)


def read_lowrank(path: PathLike) -> tuple[LowRankInfo, dict[str, torch.Tensor]]:
    """Read and verify a low-rank file: its :class:`LowRankInfo` and the stored tensors (CPU).

    Raises:
        DiffFormatError: missing, truncated or corrupted file, not a low-rank file, unknown
            version, tensors that do not match the recorded targets.
        DiffIntegrityError: payload hash mismatch (the file was edited or damaged).
    """
    p = Path(path)
    meta, arrays, file_bytes = read_verified(p, format_name=LOWRANK_FORMAT, versions=(LOWRANK_VERSION,))
    tensors = {name: torch.from_numpy(a.copy()) for name, a in arrays.items()}
    try:
        targets = tuple(
            LowRankTarget(t["name"], tuple(int(s) for s in t["shape"]), t["dtype"], int(t["rank"]))
            for t in json.loads(meta["targets"])
        )
        info = LowRankInfo(
            path=str(p),
            rank=int(meta["rank"]),
            alpha=float(meta["alpha"]),
            targets=targets,
            base_sha256=meta["base_sha256"],
            result_sha256=meta["result_sha256"],
            payload_sha256=meta["payload_sha256"],
            file_bytes=file_bytes,
            payload_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
            stored_entries=sum(t.numel() for t in tensors.values()),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise DiffFormatError(f"{str(p)!r} has malformed metadata: {err!r}.") from err
    check_lowrank_arrays(str(p), ((t.name, t.shape, t.rank) for t in targets), arrays)
    return info, tensors


def read_update(path: PathLike) -> tuple[DiffInfo | LowRankInfo, dict[str, torch.Tensor]]:
    """Read and verify an update file of either kind: a diff (:func:`~lightning_amortized.diffs.read.read_diff`)
    or a low-rank file (:func:`read_lowrank`), told apart by the format in its header.

    Returns:
        ``(info, tensors)``: a :class:`~lightning_amortized.diffs.format.DiffInfo` or a
        :class:`LowRankInfo`, and the stored tensors.

    Raises:
        Like the reader of its kind (a file of neither kind: ``DiffFormatError`` naming both formats).
    """
    if file_format(path) == LOWRANK_FORMAT:
        return read_lowrank(path)
    return read_diff(path)


def inspect_lowrank(path: PathLike) -> LowRankInfo:
    """Read and verify a low-rank file and describe it (see :func:`read_lowrank`)."""
    return read_lowrank(path)[0]


@torch.no_grad()
def _commit(model: nn.Module, new: Mapping[str, torch.Tensor]) -> None:
    for name, value in new.items():
        base_tensor(model, name).copy_(value)


def apply_lowrank(model: nn.Module, path: PathLike, *, strict: bool = True) -> LowRankInfo:
    """Add a low-rank file into the plain weights of a model (the on-device path), in place.

    Checks the file, the names and shapes, the base hash and the result hash before
    anything is written; a refusal leaves the model untouched.

    Raises:
        DiffFormatError, DiffIntegrityError: unreadable or edited file.
        BaseMismatchError: wrong base (hash), missing parameter or shape mismatch.
        DiffError: a target carries a parametrization, or the result hash differs.

    Example::

        >>> model = build_model(); model.load_state_dict(torch.load("base.pt"))  # doctest: +SKIP
        >>> apply_lowrank(model, "lora-1.safetensors")  # doctest: +SKIP
    """
    info, tensors = read_lowrank(path)
    for name in info.names:
        try:
            module, attr = resolve(model, name)
        except KeyError:
            continue  # reported with every missing name by lowrank_weights
        if parametrize.is_parametrized(module, attr):
            raise DiffError(f"Parameter {name!r} carries a parametrization; use merge_lowrank() on a training model.")
    new = lowrank_weights(info, tensors, model, strict=strict)
    _commit(model, new)
    return info


def merge_lowrank(model: nn.Module, path: PathLike) -> LowRankInfo:
    """Fold a shipped file into a training model: ``W0 <- W0 + delta(file)``, the low-rank deltas removed.

    The model then holds exactly what a device holds after :func:`apply_lowrank` (fp16
    factors, the device's arithmetic), so the next update trains from it. The base hash is
    checked against ``W0`` first; a refusal leaves the model (and its deltas) untouched.
    """
    info, tensors = read_lowrank(path)
    new = lowrank_weights(info, tensors, model, strict=True)
    attached = [n for n in info.names if n in lowrank_modules(model)]
    detach_lowrank(model, merge=False, names=attached)
    _commit(model, new)
    return info
