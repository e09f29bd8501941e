"""Pure functions shared by modules, callbacks and benchmarks: FLOP counts, the backlog recursion, routing losses,
latency metrics, length masks, top-k selection and SVD factors."""

from lightning_amortized.functional.backlog import (
    DEFAULT_DEVICE_FLOPS_PER_S,
    SimulatedDevice,
    backlog,
    backlog_before,
    guard_mask,
    backlog_step,
    eou_latency,
    flops_to_ms,
)
from lightning_amortized.functional.latency import (
    LatencyStats,
    eou_quantiles,
    latency_compute,
    latency_metrics,
    latency_update,
    real_time_factor,
)
from lightning_amortized.functional.losses import amortization_loss, expected_cost_penalty
from lightning_amortized.functional.lowrank import svd_factors
from lightning_amortized.functional.masks import lengths_to_mask
from lightning_amortized.functional.selection import topk_mask

__all__ = [
    "DEFAULT_DEVICE_FLOPS_PER_S",
    "LatencyStats",
    "SimulatedDevice",
    "amortization_loss",
    "backlog",
    "backlog_before",
    "guard_mask",
    "backlog_step",
    "eou_latency",
    "eou_quantiles",
    "expected_cost_penalty",
    "flops_to_ms",
    "latency_compute",
    "latency_metrics",
    "latency_update",
    "lengths_to_mask",
    "real_time_factor",
    "svd_factors",
    "topk_mask",
]
