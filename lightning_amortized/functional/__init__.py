"""Pure functions shared by modules, callbacks and benchmarks: FLOP counts, the backlog recursion, routing losses,
length masks, top-k selection and SVD factors."""

from lightning_amortized.functional.backlog import (
    DEFAULT_DEVICE_FLOPS_PER_S,
    SimulatedDevice,
    backlog,
    backlog_before,
    backlog_step,
    eou_latency,
    flops_to_ms,
)
from lightning_amortized.functional.losses import amortization_loss, expected_cost_penalty
from lightning_amortized.functional.lowrank import svd_factors
from lightning_amortized.functional.masks import lengths_to_mask
from lightning_amortized.functional.selection import topk_mask

__all__ = [
    "DEFAULT_DEVICE_FLOPS_PER_S",
    "SimulatedDevice",
    "amortization_loss",
    "backlog",
    "backlog_before",
    "backlog_step",
    "eou_latency",
    "expected_cost_penalty",
    "flops_to_ms",
    "lengths_to_mask",
    "svd_factors",
    "topk_mask",
]
