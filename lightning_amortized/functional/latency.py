"""Latency measurement: FLOPs per frame, slow share and end-of-utterance latency quantiles.

The functional core of :class:`~lightning_amortized.callbacks.latency_monitor.LatencyMonitor`
and ``benchmarks/amnet.py``, in the torchmetrics shape: :func:`latency_update` reduces one
batch to :class:`LatencyStats` (sums over valid frames and one end-of-utterance latency
per utterance), stats of many batches (or processes) are merged with ``+``, and
:func:`latency_compute` turns them into metrics. :func:`latency_metrics` does both for
one batch. Latencies come from :func:`~lightning_amortized.functional.backlog.eou_latency`
(the one backlog recursion); :func:`real_time_factor` is the measured counterpart.

Example:
    >>> costs = torch.tensor([[40.0, 40.0, 10.0, 50.0, 20.0], [10.0, 10.0, 0.0, 0.0, 0.0]])
    >>> flops = costs * 1e6  # 1 GFLOP/s: 1 MFLOP per ms
    >>> m = latency_metrics(costs, flops, torch.tensor([5, 2]), frame_ms=30.0,
    ...                     decisions=torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]]), slow_index=1)
    >>> round(m["flops_per_frame"] / 1e6, 3), round(m["slow_share"], 3)  # 180 MFLOPs / 7 frames, 3 of 7 slow
    (25.714, 0.429)
    >>> m["eou_ms"]  # utterances: 20 + 20 ms and 0 + 10 ms
    {'p50': 25.0, 'p90': 37.0, 'max': 40.0, 'mean': 25.0}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lightning_amortized.functional.backlog import eou_latency
from lightning_amortized.functional.masks import lengths_to_mask

__all__ = [
    "LatencyStats",
    "latency_update",
    "latency_compute",
    "latency_metrics",
    "eou_quantiles",
    "real_time_factor",
]


@dataclass
class LatencyStats:
    """Sufficient statistics of routed frames; ``a + b`` merges two of them.

    Attributes:
        flops_sum: Sum of FLOPs over the valid frames.
        frames: Number of valid frames.
        slow_frames: Valid frames routed to the slow branch.
        eou_ms: ``(N,)`` float64 end-of-utterance latency of every utterance, in ms.
    """

    flops_sum: float = 0.0
    frames: int = 0
    slow_frames: int = 0
    eou_ms: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

    def __add__(self, other: LatencyStats) -> LatencyStats:
        return LatencyStats(
            self.flops_sum + other.flops_sum,
            self.frames + other.frames,
            self.slow_frames + other.slow_frames,
            torch.cat([self.eou_ms, other.eou_ms.to(self.eou_ms.device)]),
        )


def latency_update(
    costs_ms: torch.Tensor,
    flops: torch.Tensor,
    lengths: torch.Tensor,
    frame_ms: float,
    decisions: torch.Tensor | None = None,
    slow_index: int = 1,
) -> LatencyStats:
    """Reduce one batch of routed frames to :class:`LatencyStats`.

    Args:
        costs_ms: ``(B, T)`` processing time of every frame on the (simulated) device, ms.
        flops: ``(B, T)`` FLOPs of every frame (as routed, arbitrator included).
        lengths: ``(B,)`` valid frames per utterance (``>= 1``).
        frame_ms: Audio per frame in ms.
        decisions: ``(B, T)`` int64 branch of every frame; ``None`` for a single
            encoder (every frame counts as slow).
        slow_index: The slow branch's index in ``decisions``.

    Returns:
        The batch's statistics (``eou_ms`` on the CPU, float64).

    Raises:
        ValueError: if the shapes disagree, or a length is below 1.
    """
    if costs_ms.dim() != 2 or flops.shape != costs_ms.shape:
        raise ValueError(
            f"Expected arguments `costs_ms` and `flops` of the same shape (B, T), but got {tuple(costs_ms.shape)} "
            f"and {tuple(flops.shape)}."
        )
    if decisions is not None and decisions.shape != costs_ms.shape:
        raise ValueError(
            f"Expected argument `decisions` of shape {tuple(costs_ms.shape)}, but got {tuple(decisions.shape)}."
        )
    lengths = lengths.to(costs_ms.device).long()
    valid = lengths_to_mask(lengths, costs_ms.shape[1])
    frames = int(valid.sum())
    slow = frames if decisions is None else int((decisions.to(valid.device)[valid] == slow_index).sum())
    eou = eou_latency(costs_ms, frame_ms, lengths)
    return LatencyStats(float(flops[valid].sum()), frames, slow, eou.detach().to("cpu", torch.float64))


def eou_quantiles(eou_ms: torch.Tensor, quantiles: tuple[float, ...] = (0.5, 0.9)) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "max": ..., "mean": ...}`` of end-of-utterance latencies (ms).

    Args:
        eou_ms: ``(N,)`` latencies, ``N >= 1``.
        quantiles: Quantiles in ``[0, 1]``; ``q`` is reported as ``f"p{100 q:g}"``.

    Raises:
        ValueError: if ``eou_ms`` is empty.

    Example:
        >>> eou_quantiles(torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]))
        {'p50': 30.0, 'p90': 46.0, 'max': 50.0, 'mean': 30.0}
    """
    x = torch.as_tensor(eou_ms, dtype=torch.float64).reshape(-1)
    if x.numel() == 0:
        raise ValueError("Expected argument `eou_ms` to hold at least one latency, but got none.")
    out = {f"p{100 * q:g}": float(torch.quantile(x, q)) for q in quantiles}
    out["max"] = float(x.max())
    out["mean"] = float(x.mean())
    return out


def latency_compute(stats: LatencyStats, quantiles: tuple[float, ...] = (0.5, 0.9)) -> dict:
    """Metrics of accumulated statistics.

    Returns:
        ``{"flops_per_frame": mean FLOPs per valid frame, "slow_share": fraction of valid
        frames on the slow branch, "eou_ms": eou_quantiles(...)}``.

    Raises:
        ValueError: if no frame or no utterance was seen.
    """
    if stats.frames == 0 or stats.eou_ms.numel() == 0:
        raise ValueError("Expected statistics of at least one valid frame and utterance, but got none.")
    return {
        "flops_per_frame": stats.flops_sum / stats.frames,
        "slow_share": stats.slow_frames / stats.frames,
        "eou_ms": eou_quantiles(stats.eou_ms, quantiles),
    }


def latency_metrics(
    costs_ms: torch.Tensor,
    flops: torch.Tensor,
    lengths: torch.Tensor,
    frame_ms: float,
    decisions: torch.Tensor | None = None,
    slow_index: int = 1,
    quantiles: tuple[float, ...] = (0.5, 0.9),
) -> dict:
    """:func:`latency_compute` of :func:`latency_update` for one batch (arguments as there)."""
    return latency_compute(latency_update(costs_ms, flops, lengths, frame_ms, decisions, slow_index), quantiles)


def real_time_factor(compute_ms: torch.Tensor, frame_ms: float) -> float:
    """Measured real-time factor: total compute time over audio duration, ``sum(compute_ms) / (T frame_ms)``.

    Args:
        compute_ms: ``(T,)`` wall-clock compute time of every frame in ms.
        frame_ms: Audio per frame in ms.

    Returns:
        The RTF (below 1: the device keeps up on average); 0.0 for no frames.

    Example:
        >>> real_time_factor(torch.tensor([3.0, 6.0, 3.0]), frame_ms=10.0)
        0.4
    """
    if not frame_ms > 0:
        raise ValueError(f"Expected argument `frame_ms` to be positive, but got {frame_ms}.")
    n = len(compute_ms)
    return float(torch.as_tensor(compute_ms, dtype=torch.float64).sum()) / (n * frame_ms) if n else 0.0
