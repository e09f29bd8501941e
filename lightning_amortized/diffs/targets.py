"""Select which parameters a neural diff trains, by name pattern.

Patterns are matched against *plain* parameter names, i.e. the names of
``model.named_parameters()`` before any diff is attached (``"encoder.rnn.weight_ih_l0"``,
not ``"encoder.rnn.parametrizations.weight_ih_l0.original"``):

- a glob (``fnmatch``, case-sensitive): ``"encoder.*.weight"``, ``"*weight_hh_l0*"``;
- a regular expression with the prefix ``re:`` (``re.fullmatch``): ``"re:.*\\.rnn\\.weight_.*"``.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "describe_targets", "distinct_names", "plain_parameters", "refuse_tied", "resolve", "select_names", "select_targets"
]

_PARAM_SUFFIX = re.compile(r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<attr>[^.]+)\.original$")
# a parametrization that splits its tensor (weight_norm: original0 = g, original1 = v)
_SPLIT_SUFFIX = re.compile(r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<attr>[^.]+)\.original\d+$")


def _match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def plain_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Map plain parameter names to the *base* tensors, hiding parametrizations.

    A parametrized parameter ``m.parametrizations.w.original`` is reported as ``m.w``;
    the tensors of the parametrizations themselves (``...parametrizations.w.0.delta``) are
    left out.

    Args:
        model: any module, with or without attached diffs.

    Returns:
        ``{name: base_parameter}`` in ``named_parameters()`` order.

    Example::

        >>> sorted(plain_parameters(nn.Linear(2, 3)))
        ['bias', 'weight']
    """
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        m = _PARAM_SUFFIX.match(name)
        if m is not None:
            out[m.group("prefix") + m.group("attr")] = param
        elif ".parametrizations." in name or name.startswith("parametrizations."):
            continue
        else:
            out[name] = param
    return out


def distinct_names(names: Iterable[str], model: nn.Module | None = None) -> list[str]:
    """``names`` as a list, refusing a name given twice (a second delta on it would stack on the first).

    With ``model``, a parameter tied under several names is refused too (:func:`refuse_tied`).

    Raises:
        ValueError: a name repeats, or names a tied parameter of ``model``.
    """
    names = list(names)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"Expected each target once, but {repeated} repeat; a second delta would stack on the first.")
    if model is not None:
        refuse_tied(model, names)
    return names


def resolve(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module owning plain parameter ``name`` and the attribute name inside it.

    Raises:
        KeyError: if no such parameter exists.
    """
    prefix, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(prefix) if prefix else model
    except AttributeError as err:
        raise KeyError(f"Model has no parameter named {name!r}.") from err
    if parametrize.is_parametrized(module, attr):
        return module, attr
    if not isinstance(module._parameters.get(attr), torch.Tensor):
        raise KeyError(f"Model has no parameter named {name!r}.")
    return module, attr


def _as_list(patterns: str | Iterable[str]) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def select_targets(
    model: nn.Module, include: str | Sequence[str], exclude: str | Sequence[str] = ()
) -> list[str]:
    """Names of the parameters matched by ``include`` and not by ``exclude``.

    Args:
        model: the model (plain or with diffs attached).
        include: one or more glob / ``re:`` patterns; every pattern must match something.
        exclude: patterns removing names from the selection (need not match).

    Returns:
        Matched plain parameter names, in ``named_parameters()`` order.

    Raises:
        ValueError: if an ``include`` pattern matches no parameter (the message names the
            pattern and suggests close names), if the selection is empty after ``exclude``,
            or if a matched parameter is shared (tied) between modules.

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> select_targets(model, ["*.weight"], exclude=["2.*"])
        ['0.weight']
        >>> select_targets(model, "re:[02]\\.bias")
        ['0.bias', '2.bias']
    """
    split = sorted({m.group("prefix") + m.group("attr") for m in map(_SPLIT_SUFFIX.match, dict(model.named_parameters()))
                    if m is not None})
    include_l, exclude_l = _as_list(include), _as_list(exclude)
    skipped = [n for n in split if any(_match(p, n) for p in include_l) and not any(_match(p, n) for p in exclude_l)]
    if skipped:
        warnings.warn(
            f"Target pattern(s) {include_l} also name {skipped}, which another parametrization (such as weight_norm) "
            "splits into several tensors; a diff cannot be attached on top of it, so they are not targets. Remove "
            "that parametrization (torch.nn.utils.parametrize.remove_parametrizations) to target them, or exclude "
            "them to silence this.",
            stacklevel=2,
        )
    try:
        selected = select_names(list(plain_parameters(model)), include, exclude, owner=type(model).__name__)
    except ValueError as err:
        if skipped:
            raise ValueError(f"{err} ({skipped} are parametrized by another parametrization: see the warning.)") from err
        raise
    refuse_tied(model, selected)
    return selected


def refuse_tied(model: nn.Module, names: Iterable[str]) -> None:
    """Refuse a target shared (tied) between modules: a delta on each of its names would stack.

    Raises:
        ValueError: a name in ``names`` is one of several names of the same parameter.
    """
    every = {**plain_parameters(model), **dict(model.named_parameters(remove_duplicate=False))}
    tied: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(p), []).append(n)
    for n in names:
        aliases = tied.get(id(every[n]), []) if n in every else []
        if len(aliases) > 1:
            raise ValueError(
                f"Target {n!r} is shared with {aliases}; diffs on tied parameters are not supported. Exclude it."
            )


def select_names(
    names: Sequence[str], include: str | Sequence[str], exclude: str | Sequence[str] = (), owner: str = "model"
) -> list[str]:
    """Pattern matching of :func:`select_targets` over a list of names (e.g. checkpoint keys).

    Example::

        >>> select_names(["a.weight", "a.bias", "b.weight"], "*.weight", exclude="b.*")
        ['a.weight']
    """
    include_l, exclude_l = _as_list(include), _as_list(exclude)
    if not include_l:
        raise ValueError("Expected argument `include` to hold at least one pattern, but got [].")
    names = list(names)
    for pattern in include_l:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as err:
                raise ValueError(f"Target pattern {pattern!r} is not a valid regular expression: {err}.") from err
        if not any(_match(pattern, n) for n in names):
            close = difflib.get_close_matches(pattern.removeprefix("re:"), names, n=5, cutoff=0.4)
            hint = f" Close parameter names: {close}." if close else f" Parameter names look like: {names[:5]}."
            raise ValueError(f"Target pattern {pattern!r} matches no parameter of {owner}.{hint}")
    selected = [
        n for n in names if any(_match(p, n) for p in include_l) and not any(_match(p, n) for p in exclude_l)
    ]
    if not selected:
        raise ValueError(f"Every parameter matched by {include_l} is removed by exclude={exclude_l}.")
    return selected


def describe_targets(model: nn.Module, include: str | Sequence[str], exclude: str | Sequence[str] = ()) -> str:
    """Dry run of :func:`select_targets`: a table of matched names, shapes and sizes.

    Returns:
        A multi-line string: one line per target (name, shape, entries, bytes in the
        parameter's dtype) and a total line comparing against the whole model.

    Example::

        >>> print(describe_targets(nn.Linear(2, 3), "weight"))  # doctest: +NORMALIZE_WHITESPACE
        target  shape   entries  bytes
        weight  (3, 2)  6        24
        1 target(s): 6 of 9 parameters (66.67%), 24 bytes
    """
    names = select_targets(model, include, exclude)
    params = plain_parameters(model)
    rows = [("target", "shape", "entries", "bytes")]
    total = 0
    total_bytes = 0
    for n in names:
        p = params[n]
        total += p.numel()
        total_bytes += p.numel() * p.element_size()
        rows.append((n, str(tuple(p.shape)), str(p.numel()), str(p.numel() * p.element_size())))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    n_all = sum(p.numel() for p in params.values())
    lines.append(
        f"{len(names)} target(s): {total} of {n_all} parameters ({100.0 * total / max(n_all, 1):.2f}%), "
        f"{total_bytes} bytes"
    )
    return "\n".join(lines)
