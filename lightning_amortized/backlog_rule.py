"""The backlog rule without any framework: one definition for PyTorch and the device runtime.

``b_t = relu(b_{t-1} + cost_t - frame_ms)`` (ms), and the end-of-utterance latency
``b_{L-1} + cost_L`` (see :mod:`lightning_amortized.functional.backlog` for the model).
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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["next_backlog", "eou_latency_ms"]


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
