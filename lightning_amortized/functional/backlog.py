"""The simulated device: FLOPs to milliseconds, the audio backlog recursion and end-of-utterance latency.

One recursion for the whole package (the :class:`~lightning_amortized.nn.AmortizedEncoder`
in training and streaming, the ``LatencyMonitor`` callback and the benchmarks all call
:func:`backlog`).

**Model.** Audio arrives one frame every ``frame_ms``; frame ``t`` (1-based) is complete
at time ``t * frame_ms``. The device processes frames in order, one at a time; frame
``t`` costs ``cost_t`` ms (``flops / device_flops_per_s``). The *backlog after frame t*
is how far the device is still behind when the next frame arrives::

    b_0 = 0
    b_t = max(0, b_{t-1} + cost_t - frame_ms)

``b_{t-1}`` is exactly the time frame ``t`` waits before its processing starts, so the
delay from the arrival of frame ``t`` to its encoder output is ``b_{t-1} + cost_t``.
The **end-of-utterance (EOU) latency** is this delay for the last valid frame ``L``::

    eou = b_{L-1} + cost_L

i.e. "the backlog when the last frame arrives plus the last frame's own cost" (the
AmNet paper writes that backlog as ``b_T``; in our 1-based indexing it is the
backlog *after* frame ``L-1``, so that no frame's cost is counted twice).

Example:
    >>> costs = torch.tensor([[40.0, 40.0, 10.0, 50.0, 20.0]])
    >>> backlog(costs, frame_ms=30.0).tolist()
    [[10.0, 20.0, 0.0, 20.0, 10.0]]
    >>> eou_latency(costs, frame_ms=30.0).tolist()
    [40.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_amortized.backlog_rule import check_guard, guard_allows, next_backlog
from lightning_amortized.functional.masks import lengths_to_mask

__all__ = [
    "backlog",
    "backlog_step",
    "backlog_before",
    "guard_mask",
    "eou_latency",
    "eou_from_backlog",
    "last_valid_index",
    "flops_to_ms",
    "SimulatedDevice",
    "DEFAULT_DEVICE_FLOPS_PER_S",
]

DEFAULT_DEVICE_FLOPS_PER_S = 650e6
"""Single-threaded 650 MFLOP/s: the simulated device of the published work."""


def _check_frame_ms(frame_ms: float) -> None:
    if not frame_ms > 0:
        raise ValueError(f"Expected argument `frame_ms` to be a positive number of milliseconds, but got {frame_ms}.")


def _valid_mask(costs_ms: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
    if lengths is None:
        return None
    if lengths.shape != costs_ms.shape[:1]:
        raise ValueError(
            f"Expected argument `lengths` to have shape ({costs_ms.shape[0]},), but got {tuple(lengths.shape)}."
        )
    return lengths_to_mask(lengths, costs_ms.shape[1], device=costs_ms.device)


def backlog_step(
    backlog_ms: torch.Tensor, cost_ms: torch.Tensor, frame_ms: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """One step of the recursion, ``max(0, b + cost - frame_ms)``, frozen where ``valid`` is False.

    The loop body of :func:`backlog`, exposed for code that must interleave decisions
    with the recursion (the arbitrator, streaming inference).

    Args:
        backlog_ms: ``(B,)`` backlog before the frame.
        cost_ms: ``(B,)`` cost of the frame.
        frame_ms: Audio duration of one frame in ms.
        valid: ``(B,)`` bool, or ``None`` if all frames are valid.

    Returns:
        ``(B,)`` backlog after the frame.
    """
    new = next_backlog(backlog_ms, cost_ms, frame_ms, relu=torch.relu)  # the one rule, shared with the device
    return new if valid is None else torch.where(valid, new, backlog_ms)


def backlog(costs_ms: torch.Tensor, frame_ms: float, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Backlog after every frame, ``b_t = max(0, b_{t-1} + cost_t - frame_ms)`` with ``b_0 = 0``.

    Works on hard costs and on expected (soft, differentiable) costs: the result is
    differentiable with respect to ``costs_ms`` wherever the ``max`` is not clamped.

    Args:
        costs_ms: ``(B, T)`` processing time of every frame in ms.
        frame_ms: Audio duration of one frame in ms.
        lengths: ``(B,)`` number of valid frames, or ``None`` if all ``T`` are valid.
            Past its length the backlog of a sequence stays frozen at its last value
            (padding frames cost nothing and do not drain the backlog).

    Returns:
        ``(B, T)`` backlog in ms after each frame.
    """
    _check_frame_ms(frame_ms)
    if costs_ms.dim() != 2:
        raise ValueError(f"Expected argument `costs_ms` to have shape (B, T), but got {tuple(costs_ms.shape)}.")
    valid = _valid_mask(costs_ms, lengths)
    b = costs_ms.new_zeros(costs_ms.shape[0])
    out = []
    for t, cost in enumerate(costs_ms.unbind(1)):  # unbind: O(T) backward, unlike T selects
        b = backlog_step(b, cost, frame_ms, None if valid is None else valid[:, t])
        out.append(b)
    if not out:
        return costs_ms.new_zeros(costs_ms.shape)
    return torch.stack(out, dim=1)


def guard_mask(
    backlog_ms: torch.Tensor,
    frame_cost_ms: torch.Tensor,
    frame_ms: float,
    factor: float,
    final: torch.Tensor | bool = False,
) -> torch.Tensor:
    """``(B, K)`` bool: the branches each sequence's next frame may take under the latency guard.

    :func:`lightning_amortized.backlog_rule.guard_allows` on a batch: the floor is the
    cheapest branch's frame cost; the cheapest branch is always allowed and is the only one
    for a sequence's final frame. With the floor within ``frame_ms``, routing only to
    allowed branches bounds every utterance's end-of-utterance latency by ``factor`` x the
    floor.

    Args:
        backlog_ms: ``(B,)`` backlog before the frame (ms).
        frame_cost_ms: ``(K,)`` or ``(B, K)`` cost of a frame on each branch, the arbitrator
            included (ms), on the device.
        frame_ms: Audio duration of one frame in ms.
        factor: The bound as a multiple of the floor (``>= 1``).
        final: ``(B,)`` bool, True where the frame is the sequence's last, or one bool for all.

    Returns:
        ``(B, K)`` bool.

    Raises:
        ValueError: if ``factor`` is below 1 or not finite.

    Example:
        >>> guard_mask(torch.tensor([0.0, 15.0, 0.0]), torch.tensor([10.0, 40.0]), 30.0, factor=2.0,
        ...            final=torch.tensor([False, False, True])).tolist()
        [[True, True], [True, False], [True, False]]
    """
    factor = check_guard(factor)
    costs = frame_cost_ms.to(backlog_ms).expand(backlog_ms.shape[0], -1)
    floor = costs.min(-1, keepdim=True).values
    cheapest = costs == floor
    if isinstance(final, bool):
        if final:
            return cheapest
        return guard_allows(backlog_ms[:, None], costs, frame_ms, floor, factor, relu=torch.relu) | cheapest
    allowed = guard_allows(backlog_ms[:, None], costs, frame_ms, floor, factor, relu=torch.relu) & ~final[:, None]
    return allowed | cheapest


def backlog_before(backlog_ms: torch.Tensor) -> torch.Tensor:
    """Shift a ``(B, T)`` backlog by one frame: ``b_{t-1}`` (the wait of frame ``t``), with ``b_0 = 0``."""
    return torch.nn.functional.pad(backlog_ms[:, :-1], (1, 0))


def last_valid_index(lengths: torch.Tensor | None, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """``(B,)`` int64 index of each sequence's last valid frame (``T - 1`` for all when ``lengths`` is ``None``).

    Raises:
        ValueError: if a length is below 1 (an empty utterance has no last frame) or above
            ``steps`` (lengths of another frame rate than the costs', e.g. input frames for
            costs of subsampled encoder frames).
    """
    if lengths is None:
        if steps < 1:
            raise ValueError(f"Expected at least one frame (T >= 1), but got T={steps}.")
        return torch.full((batch,), steps - 1, dtype=torch.long, device=device)
    last = lengths.to(device).long() - 1
    if bool(((last < 0) | (last >= steps)).any()):
        raise ValueError(
            f"Expected argument `lengths` to be in [1, {steps}] (frames of the costs), but got {lengths.tolist()}."
        )
    return last


def eou_from_backlog(
    costs_ms: torch.Tensor, backlog_ms: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """End-of-utterance latency ``b_{L-1} + cost_L`` (ms) from a backlog already computed by :func:`backlog`.

    The one definition of the latency: :func:`eou_latency` and the routing losses (which
    hold the differentiable backlog of the arbitrator's decisions) both call it.

    Args:
        costs_ms: ``(B, T)`` processing time of every frame in ms.
        backlog_ms: ``(B, T)`` backlog after every frame (``backlog(costs_ms, ...)``).
        lengths: ``(B,)`` valid frames (``>= 1``); ``None`` means ``T`` for all.

    Returns:
        ``(B,)`` latency in ms, differentiable in both inputs.

    Example:
        >>> costs = torch.tensor([[40.0, 40.0, 10.0]])
        >>> eou_from_backlog(costs, backlog(costs, 30.0)).tolist()  # waits 20 ms, costs 10 ms
        [30.0]
    """
    if backlog_ms.shape != costs_ms.shape:
        raise ValueError(
            f"Expected `backlog_ms` to have the shape of `costs_ms` {tuple(costs_ms.shape)}, "
            f"but got {tuple(backlog_ms.shape)}."
        )
    B, T = costs_ms.shape
    idx = last_valid_index(lengths, B, T, costs_ms.device)[:, None]
    return (backlog_before(backlog_ms).gather(1, idx) + costs_ms.gather(1, idx))[:, 0]


def eou_latency(costs_ms: torch.Tensor, frame_ms: float, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """End-of-utterance latency ``b_{L-1} + cost_L`` per sequence (ms).

    The time from the last audio sample (end of frame ``L``) to the last encoder
    output: the backlog when the last frame arrives plus that frame's own cost (see
    the module docstring).

    Args:
        costs_ms: ``(B, T)`` processing time of every frame in ms.
        frame_ms: Audio duration of one frame in ms.
        lengths: ``(B,)`` valid frames (``>= 1``); ``None`` means ``T`` for all.

    Returns:
        ``(B,)`` latency in ms.
    """
    return eou_from_backlog(costs_ms, backlog(costs_ms, frame_ms, lengths), lengths)


def flops_to_ms(flops: float | torch.Tensor, device_flops_per_s: float = DEFAULT_DEVICE_FLOPS_PER_S):
    """Processing time in ms of ``flops`` FLOPs on a device running ``device_flops_per_s``.

    Example:
        >>> flops_to_ms(6.5e6)  # 6.5 MFLOPs at 650 MFLOP/s
        10.0
    """
    if not device_flops_per_s > 0:
        raise ValueError(f"Expected argument `device_flops_per_s` to be positive, but got {device_flops_per_s}.")
    return flops * (1000.0 / device_flops_per_s)


@dataclass(frozen=True)
class SimulatedDevice:
    """A single-threaded device of fixed speed receiving audio in real time.

    Args:
        flops_per_s: Sustained FLOP/s (default 650 MFLOP/s).
        frame_ms: Audio duration of one encoder input frame in ms.

    Example:
        >>> dev = SimulatedDevice(flops_per_s=1e9, frame_ms=10.0)
        >>> dev.cost_ms(5e6), dev.load_factor(15e6)
        (5.0, 1.5)
        >>> dev.eou_latency(torch.full((1, 4), 15e6)).tolist()  # 15 ms per 10 ms frame
        [30.0]
    """

    flops_per_s: float = DEFAULT_DEVICE_FLOPS_PER_S
    frame_ms: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.flops_per_s < float("inf"):  # inf would make every frame free
            raise ValueError(f"Expected argument `flops_per_s` to be positive and finite, but got {self.flops_per_s}.")
        _check_frame_ms(self.frame_ms)

    def cost_ms(self, flops: float | torch.Tensor):
        """Milliseconds to process ``flops`` FLOPs (float or tensor of any shape)."""
        return flops_to_ms(flops, self.flops_per_s)

    def load_factor(self, flops_per_frame: float) -> float:
        """``rho = cost of one frame / frame_ms``; above 1 the backlog grows without bound."""
        return float(self.cost_ms(flops_per_frame)) / self.frame_ms

    def backlog(self, flops: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`backlog` of per-frame FLOPs ``(B, T)`` on this device, in ms."""
        return backlog(self.cost_ms(flops), self.frame_ms, lengths)

    def eou_latency(self, flops: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`eou_latency` of per-frame FLOPs ``(B, T)`` on this device, in ms."""
        return eou_latency(self.cost_ms(flops), self.frame_ms, lengths)
