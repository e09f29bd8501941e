"""Attach diffs to a model's parameters (``torch.nn.utils.parametrize``) and remove them.

After :func:`attach_diffs`, ``module.<attr>`` evaluates to ``W0 + D`` on every access,
``module.parametrizations.<attr>.original`` is the original ``nn.Parameter`` object (``W0``)
and ``module.parametrizations.<attr>[0]`` is the :class:`SparseDiff` / :class:`HashedDiff`.

RNNs: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` keep a list of their weights
(``_flat_weights``). Their ``forward`` re-reads the weights whenever the attribute returns
a different tensor object, which a parametrization does on every access, so the forward
pass uses ``W0 + D`` (checked in ``tests/diffs/test_diff_parametrize.py`` against a plain
LSTM holding ``W0 + D``). On CUDA the weights are then no longer one contiguous cuDNN
buffer, which costs speed (PyTorch warns), not correctness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_amortized.diffs.hashed import HashedDiff
from lightning_amortized.diffs.sparse import SparseDiff
from lightning_amortized.diffs.targets import distinct_names, plain_parameters, resolve

__all__ = ["attach_diffs", "base_tensor", "detach_diffs", "diff_modules", "effective_tensor"]

DiffModule = SparseDiff | HashedDiff


def attach_diffs(
    model: nn.Module,
    names: Sequence[str],
    method: Literal["sparse", "hashed"],
    *,
    num_buckets: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, DiffModule]:
    """Wrap each named parameter with a diff parametrization; the base stays the same object.

    The base parameters are not frozen here (the callback freezes the whole model).

    Args:
        model: the model; ``names`` are plain parameter names (see ``select_targets``).
        names: parameters to wrap.
        method: ``"sparse"`` or ``"hashed"``.
        num_buckets: for ``"hashed"``, the bucket count per name.
        seed: hash seed for ``"hashed"``.

    Returns:
        ``{name: diff module}``.

    Raises:
        ValueError: if a name already carries a parametrization or a bucket count is missing.

    Example::

        >>> lin = nn.Linear(3, 2)
        >>> w0 = lin.weight
        >>> d = attach_diffs(lin, ["weight"], "sparse")
        >>> lin.parametrizations.weight.original is w0, type(d["weight"]).__name__
        (True, 'SparseDiff')
    """
    if method not in ("sparse", "hashed"):
        raise ValueError(f"Expected argument `method` to be 'sparse' or 'hashed', but got {method!r}.")
    names = distinct_names(names, model)
    plan = []
    for name in names:
        module, attr = resolve(model, name)
        if parametrize.is_parametrized(module, attr):
            raise ValueError(f"Parameter {name!r} already carries a parametrization; detach it first.")
        if method == "hashed" and (num_buckets is None or name not in num_buckets):
            raise ValueError(f"Missing bucket count for hashed target {name!r}.")
        plan.append((name, module, attr))
    out: dict[str, DiffModule] = {}
    done: list[tuple[nn.Module, str]] = []
    try:
        for name, module, attr in plan:
            base = getattr(module, attr)
            diff: DiffModule
            if method == "sparse":
                diff = SparseDiff(base)
            else:
                assert num_buckets is not None
                diff = HashedDiff(base, name, num_buckets[name], seed)
            parametrize.register_parametrization(module, attr, diff, unsafe=True)
            done.append((module, attr))
            out[name] = diff
    except BaseException:  # all or nothing: the targets attached so far are plain again
        for module, attr in done:
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        raise
    return out


def parametrizations_of(model: nn.Module, kinds: tuple[type, ...]) -> dict[str, nn.Module]:
    """``{plain name: parametrization}`` for every parameter carrying one of type ``kinds``, in model order."""
    out: dict[str, nn.Module] = {}
    for name in plain_parameters(model):
        module, attr = resolve(model, name)
        if parametrize.is_parametrized(module, attr):
            for p in module.parametrizations[attr]:
                if isinstance(p, kinds):
                    out[name] = p
    return out


def diff_modules(model: nn.Module) -> dict[str, DiffModule]:
    """``{plain name: diff module}`` for every parameter carrying a diff, in model order."""
    return parametrizations_of(model, (SparseDiff, HashedDiff))  # type: ignore[return-value]


def base_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """``W0``: the original parameter, whether or not a diff is attached."""
    module, attr = resolve(model, name)
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def effective_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The weight the forward pass uses (``W0 + D`` with a diff attached), detached."""
    module, attr = resolve(model, name)
    with torch.no_grad():
        return getattr(module, attr).detach()


@torch.no_grad()
def detach_diffs(model: nn.Module, *, merge: bool, names: Sequence[str] | None = None) -> list[str]:
    """Remove diff parametrizations; with ``merge=True`` the base becomes ``W0 + D`` in place.

    The original ``nn.Parameter`` objects (and their storage) are kept, so optimizers and
    references held elsewhere stay valid. The merged value is exactly the value the forward
    pass used.

    Args:
        model: a model with diffs attached.
        merge: ``True``: ``W0 <- W0 + D``; ``False``: discard ``D``.
        names: restrict to these plain names (default: all diffs).

    Returns:
        The names whose diff was removed.
    """
    return remove_parametrizations(model, diff_modules(model), merge, names, "diff")


def remove_parametrizations(
    model: nn.Module, carried: Mapping[str, nn.Module], merge: bool, names: Sequence[str] | None, what: str
) -> list[str]:
    """Remove the parametrizations ``carried`` (``{plain name: module}``) from ``model``, merged or discarded.

    Raises:
        KeyError: a name of ``names`` is not in ``carried`` (the message says it carries no ``what``).
    """
    removed = []
    for name in names if names is not None else list(carried):
        if name not in carried:
            raise KeyError(f"Parameter {name!r} carries no {what}.")
        module, attr = resolve(model, name)
        merged = getattr(module, attr).detach().clone() if merge else None
        original = module.parametrizations[attr].original
        parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        if merged is not None:
            original.copy_(merged)
        removed.append(name)
    return removed
