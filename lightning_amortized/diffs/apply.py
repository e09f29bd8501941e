"""Applying diff files to a model: apply, chains of updates, state dicts, merge and unmerge.

Every operation reads and verifies the whole file and computes the new weights in
temporaries before it writes into the model, so a refused operation leaves the model
untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_amortized.diffs.attach import base_tensor, detach_diffs, diff_modules
from lightning_amortized.diffs.checksum import weights_sha256
from lightning_amortized.diffs.format import BaseMismatchError, DiffError, DiffInfo, DiffTarget, PathLike
from lightning_amortized.diffs.lowrank import LowRankInfo, lowrank_weights, read_update
from lightning_amortized.diffs.read import read_diff
from lightning_amortized.diffs.targets import resolve
from lightning_amortized.diffs.weights import _new_weight

__all__ = ["apply_chain", "apply_diff", "apply_to_state_dict", "merge", "unmerge"]


def _check_like(target: DiffTarget, w: torch.Tensor, where: str) -> None:
    """Refuse a tensor whose shape or dtype is not the one the diff was made for."""
    dtype = str(w.dtype).removeprefix("torch.")
    if tuple(w.shape) != target.shape or dtype != target.dtype:
        raise BaseMismatchError(
            f"Shape or dtype mismatch for {target.name!r}: the diff expects {target.shape} {target.dtype}, {where} "
            f"has {tuple(w.shape)} {dtype}. Apply it to the weights it was made from (cast a converted model "
            "back, e.g. with .float(), first)."
        )


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
        _check_like(t, w, "the model")
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
    if strict and found != before and found == after:
        done = "applied" if sign > 0 else "undone"
        raise BaseMismatchError(
            f"{info.path!r} is already {done}: the weights of its {len(names)} target(s) equal its "
            f"{'result' if sign > 0 else 'base'} (sha256 {found}). Leave it out"
            + (" and apply only the updates that follow it." if sign > 0 else ".")
        )
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
) -> tuple[dict[str, torch.Tensor], list[DiffInfo | LowRankInfo]]:
    """Apply update files ``1..k`` to a plain ``state_dict`` (no model needed); the input is not modified.

    Each file is a diff (:func:`read_diff`) or a low-rank (LoRA) update
    (:func:`~lightning_amortized.diffs.lowrank.read_lowrank`), told apart by the format in
    its header; a chain may mix them. Both kinds check the base and result hashes.

    Returns:
        ``(new_state, infos)``: a new dict in which the targets are new tensors and every
        other entry is the input tensor; one :class:`DiffInfo` or
        :class:`~lightning_amortized.diffs.lowrank.LowRankInfo` per file.

    Raises:
        Like :func:`apply_chain` (and :func:`~lightning_amortized.diffs.lowrank.lowrank_weights`).
    """
    new = dict(state)
    infos: list[DiffInfo | LowRankInfo] = []
    for path in paths:
        info, tensors = read_update(path)
        if isinstance(info, LowRankInfo):
            new.update(lowrank_weights(info, tensors, new, strict=strict))
            infos.append(info)
            continue
        missing = [t.name for t in info.targets if t.name not in new]
        if missing:
            raise BaseMismatchError(f"{info.path!r} changes tensors the state dict does not have: {missing}.")
        for t in info.targets:
            _check_like(t, new[t.name], "the state dict")
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
