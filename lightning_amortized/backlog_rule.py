"""The backlog rule without any framework: one definition for PyTorch and the device runtime.

``b_t = relu(b_{t-1} + cost_t - frame_ms)`` (ms), the end-of-utterance latency
``b_{L-1} + cost_L`` (see :mod:`lightning_amortized.functional.backlog` for the model) and
the latency guard (:func:`guard_allows`: which branches a frame may take so that every
utterance's latency stays within ``factor`` times the floor, whatever the arbitrator wants).
:func:`next_backlog` is the single place the recursion is written:
:func:`lightning_amortized.functional.backlog.backlog_step` calls it with ``torch.relu``
on tensors (training, streaming, benchmarks), and the torch-free device runtime
(:mod:`lightning_amortized.device`) calls it on numpy ``float32`` scalars. This module
imports nothing, so the device runtime can use it without PyTorch.

Example:
    >>> b = 0.0
    >>> [b := next_backlog(b, c, 30.0) for c in (40.0, 40.0, 10.0, 50.0, 20.0)]
    [10.0, 20.0, 0.0, 20.0, 10.0]
    >>> eou_latency_ms([40.0, 40.0, 10.0, 50.0, 20.0], 30.0)
    40.0
    >>> allowed_branches(0.0, [10.0, 40.0], 30.0, factor=2.0)  # leaves 10 ms of backlog: at most (2 - 1) x 10
    [True, True]
    >>> allowed_branches(5.0, [10.0, 40.0], 30.0, factor=2.0), allowed_branches(0.0, [10.0, 40.0], 30.0, 2.0, final=True)
    ([True, False], [True, False])
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["next_backlog", "eou_latency_ms", "guard_allows", "guard_cap", "allowed_branches", "check_guard"]


def _relu(value: Any) -> Any:
    """``max(0, value)`` that keeps the type of ``value`` (float, numpy scalar)."""
    return value if value > 0 else value - value


def next_backlog(backlog_ms: Any, cost_ms: Any, frame_ms: float, relu: Callable[[Any], Any] = _relu) -> Any:
    """Backlog after a frame: ``relu(backlog_ms + cost_ms - frame_ms)``.

    Args:
        backlog_ms: Backlog before the frame in ms (float, numpy scalar/array, tensor).
        cost_ms: Processing time of the frame in ms (same kind).
        frame_ms: Audio duration of one frame in ms.
        relu: ``max(0, .)`` for the value kind (``torch.relu`` for tensors).

    Returns:
        The backlog after the frame, of the kind of the inputs.
    """
    return relu(backlog_ms + cost_ms - frame_ms)


def eou_latency_ms(costs_ms: Sequence[float], frame_ms: float) -> float:
    """End-of-utterance latency ``b_{L-1} + cost_L`` of one utterance's per-frame costs (ms).

    Args:
        costs_ms: ``(L,)`` processing time of every frame in ms, ``L >= 1``.
        frame_ms: Audio duration of one frame in ms.

    Raises:
        ValueError: if ``costs_ms`` is empty.
    """
    if len(costs_ms) == 0:
        raise ValueError("Expected argument `costs_ms` to hold at least one frame, but got none.")
    b = 0.0
    for cost in costs_ms[:-1]:
        b = next_backlog(b, float(cost), frame_ms)
    return float(b + float(costs_ms[-1]))


def check_guard(factor: Any) -> float | None:
    """Validate a latency-guard factor: ``None`` (no guard) or a finite number ``>= 1``; returns it as a float.

    Raises:
        ValueError: for a factor below 1 (no routing ends sooner than the floor) or not finite.
    """
    if factor is None:
        return None
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 1.0 <= float(factor) < float("inf"):
        raise ValueError(
            f"Expected the latency guard to be None or a finite number >= 1 (a multiple of the latency floor), "
            f"but got {factor!r}."
        )
    return float(factor)


def guard_allows(backlog_ms: Any, cost_ms: Any, frame_ms: float, floor_ms: Any, factor: float,
                 relu: Callable[[Any], Any] = _relu) -> Any:
    """Whether a (non-final) frame costing ``cost_ms`` keeps the backlog within the latency guard's cap.

    The latency guard's rule. ``floor_ms`` is the cheapest frame's cost on the device (the
    cheapest branch plus the arbitrator), the physical floor of end-of-utterance latency.
    A frame may take a branch of cost ``c`` if the backlog after it,
    ``relu(backlog_ms + c - frame_ms)``, is at most ``(factor - 1) * floor_ms``; the cheapest
    branch is always allowed and the utterance's final frame takes the cheapest branch
    (:func:`allowed_branches`).

    Why this bounds every utterance: when the cheapest frame runs in real time
    (``floor_ms <= frame_ms``) a cheapest frame never raises the backlog, so by induction
    the backlog after every frame stays at most ``(factor - 1) * floor_ms``, and the
    latency ``b_{L-1} + cost_L`` of the final (cheapest) frame at most ``factor * floor_ms``,
    whatever the arbitrator's weights.

    Args:
        backlog_ms: Backlog before the frame (ms): float, numpy value or tensor.
        cost_ms: The frame's cost on that branch (ms), broadcastable with ``backlog_ms``.
        frame_ms: Audio duration of one frame in ms.
        floor_ms: The cheapest frame's cost (ms), broadcastable.
        factor: The bound as a multiple of the floor (``>= 1``, see :func:`check_guard`).
        relu: ``max(0, .)`` for the value kind (``torch.relu`` for tensors).

    Returns:
        A bool (or bool array/tensor of the broadcast shape).
    """
    return next_backlog(backlog_ms, cost_ms, frame_ms, relu) <= guard_cap(floor_ms, factor)


def guard_cap(floor_ms: Any, factor: float) -> Any:
    """The guard's backlog cap ``(factor - 1) * floor_ms``, of the kind of ``floor_ms``.

    A tensor stays a tensor of its dtype; a numpy ``float32`` stays ``float32`` with any numpy
    (``floor_ms * np.float32(factor - 1)``: no promotion to ``float64`` under numpy 1.x's rules).
    """
    scale = factor - 1.0
    dtype = getattr(floor_ms, "dtype", None)
    if dtype is not None and hasattr(dtype, "type"):  # numpy scalars and arrays (a torch dtype has no `.type`)
        scale = dtype.type(scale)
    return floor_ms * scale


def allowed_branches(
    backlog_ms: float, costs_ms: Sequence[float], frame_ms: float, factor: float, final: bool = False
) -> list[bool]:
    """Which of ``K`` branches (frame costs ``costs_ms``, arbitrator included, ms) one frame may take.

    :func:`guard_allows` for every branch; the cheapest is always allowed, and it is the
    only one for the ``final`` frame of an utterance. The device runtime calls it per
    frame; the PyTorch encoders call :func:`guard_allows` on whole batches
    (:func:`lightning_amortized.functional.backlog.guard_mask`).
    """
    floor = min(costs_ms)
    return [bool(c == floor or (not final and guard_allows(backlog_ms, c, frame_ms, floor, factor))) for c in costs_ms]
