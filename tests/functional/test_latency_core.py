"""The latency core (functional/latency.py) by hand, and LatencyMonitor as a thin class over it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_amortized.callbacks.latency_monitor import LatencyMonitor
from lightning_amortized.functional.backlog import flops_to_ms
from lightning_amortized.functional.latency import (
    LatencyStats,
    eou_quantiles,
    latency_compute,
    latency_metrics,
    latency_update,
    real_time_factor,
)
from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder

# frame 30 ms; utterance 0: costs 40 40 10 50 | 20  -> b = 10 20 0 20, EOU = b_4 + 20 = 40
#              utterance 1: costs 10 70 | padding  -> b = 0, EOU = 0 + 70 = 70
COSTS = torch.tensor([[40.0, 40.0, 10.0, 50.0, 20.0], [10.0, 70.0, 99.0, 99.0, 99.0]])
LENGTHS = torch.tensor([5, 2])
DECISIONS = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])


def test_latency_update_by_hand():
    s = latency_update(COSTS, COSTS * 2, LENGTHS, 30.0, DECISIONS, slow_index=1)
    assert s.eou_ms.tolist() == [40.0, 70.0] and s.eou_ms.dtype == torch.float64
    assert s.frames == 7 and s.slow_frames == 4  # padding ignored
    assert s.flops_sum == 2 * (160.0 + 80.0)
    plain = latency_update(COSTS, COSTS, LENGTHS, 30.0)  # no decisions: every frame is "slow"
    assert plain.slow_frames == plain.frames == 7


def test_merged_batches_equal_one_batch():
    a = latency_update(COSTS[:1], COSTS[:1], LENGTHS[:1], 30.0, DECISIONS[:1])
    b = latency_update(COSTS[1:, :2], COSTS[1:, :2], LENGTHS[1:], 30.0, DECISIONS[1:, :2])
    merged, whole = a + b, latency_update(COSTS, COSTS, LENGTHS, 30.0, DECISIONS)
    assert (merged.flops_sum, merged.frames, merged.slow_frames) == (whole.flops_sum, whole.frames, whole.slow_frames)
    assert torch.equal(merged.eou_ms, whole.eou_ms)
    assert latency_compute(LatencyStats() + whole) == latency_compute(whole)


def test_latency_compute_and_metrics():
    m = latency_metrics(COSTS, COSTS, LENGTHS, 30.0, DECISIONS)
    assert m["flops_per_frame"] == pytest.approx(240.0 / 7)
    assert m["slow_share"] == pytest.approx(4 / 7)
    assert m["eou_ms"] == {"p50": 55.0, "p90": 67.0, "max": 70.0, "mean": 55.0}


def test_eou_quantiles_named_by_percent():
    q = eou_quantiles(torch.arange(1.0, 101.0), quantiles=(0.5, 0.9, 0.99))
    assert list(q) == ["p50", "p90", "p99", "max", "mean"]
    assert q["p99"] == pytest.approx(99.01) and q["max"] == 100.0


def test_errors():
    with pytest.raises(ValueError, match="at least one latency"):
        eou_quantiles(torch.zeros(0))
    with pytest.raises(ValueError, match="at least one valid frame"):
        latency_compute(LatencyStats())
    with pytest.raises(ValueError, match="same shape"):
        latency_update(COSTS, COSTS[:, :2], LENGTHS, 30.0)
    with pytest.raises(ValueError, match="`decisions` of shape"):
        latency_update(COSTS, COSTS, LENGTHS, 30.0, DECISIONS[:, :2])
    with pytest.raises(ValueError, match=r"`lengths` to be in \[1, "):
        latency_update(COSTS, COSTS, torch.tensor([5, 0]), 30.0)


def test_real_time_factor():
    assert real_time_factor(torch.tensor([3.0, 6.0, 3.0]), 10.0) == pytest.approx(0.4)
    assert real_time_factor(torch.zeros(0), 10.0) == 0.0
    with pytest.raises(ValueError, match="`frame_ms`"):
        real_time_factor(torch.ones(2), 0.0)


class _Module(nn.Module):
    """The parts of a LightningModule the monitor uses (``encoder``, ``device``, ``log``)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.logged: dict[str, float] = {}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def log(self, name: str, value: float, **kwargs: object) -> None:
        self.logged[name] = float(value)


def test_latency_monitor_reports_the_functional_core():
    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(6, 8, 1), fast="lowrank", rank=2,
                                          device_flops_per_s=2e6, frame_ms=10.0).eval()
    with torch.no_grad():
        enc.arbitrator.out.weight.mul_(20.0)  # both branches get frames
    module = _Module(enc)
    trainer = SimpleNamespace(sanity_checking=False, world_size=1, is_global_zero=True)
    monitor = LatencyMonitor(rtf_samples=0, plot=False)
    monitor.on_validation_epoch_start(trainer, module)
    expected = LatencyStats()
    g = torch.Generator().manual_seed(1)
    for i, lengths in enumerate((torch.tensor([9, 4, 6]), torch.tensor([3, 7]))):
        x = torch.randn(len(lengths), 9, 6, generator=g)
        with torch.no_grad():
            enc(x, lengths)
        r = enc.last_routing
        flops = r.expected_flops.float()
        expected = expected + latency_update(flops_to_ms(flops, 2e6), flops, lengths, 10.0, r.decisions, r.slow_index)
        monitor.on_validation_batch_end(trainer, module, None, None, i)
    monitor.on_validation_epoch_end(trainer, module)
    want = latency_compute(expected)
    assert 0.0 < want["slow_share"] < 1.0
    assert module.logged["latency/flops_per_frame"] == want["flops_per_frame"]
    assert module.logged["latency/slow_share"] == want["slow_share"]
    for q in ("p50", "p90", "max"):
        assert module.logged[f"latency/eou_{q}_ms"] == want["eou_ms"][q]
    assert module.logged["latency/rho"] == pytest.approx(max(enc.branch_flops()) / 2e6 * 1000.0 / 10.0)


def test_lengths_outside_the_cost_frames_are_refused_by_name() -> None:
    from lightning_amortized.functional import eou_latency

    with pytest.raises(ValueError, match=r"`lengths` to be in \[1, 3\] \(frames of the costs\), but got \[5\]"):
        eou_latency(torch.ones(1, 3), 30.0, torch.tensor([5]))  # e.g. input frames for encoder-frame costs
    with pytest.raises(ValueError, match=r"`lengths` to be in \[1, 3\]"):
        eou_latency(torch.ones(2, 3), 30.0, torch.tensor([3, 0]))
    with pytest.raises(ValueError, match=r"at least one frame \(T >= 1\), but got T=0"):
        eou_latency(torch.zeros(2, 0), 30.0)
