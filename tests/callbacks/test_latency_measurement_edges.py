"""Latency measurement on what users build: downsampling encoders, keyword calls, mixed precision, short streams."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lightning_amortized.callbacks.latency_monitor as lm
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder
from lightning_amortized.nn.streaming import StreamResult, stream

TRAINER = SimpleNamespace(sanity_checking=False, world_size=1, is_global_zero=True)


class Host(nn.Module):
    """The smallest LightningModule stand-in LatencyMonitor talks to."""

    frame_ms = 10.0

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.logged = encoder, {}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def log(self, name: str, value: float, **kw) -> None:
        self.logged[name] = float(value)


def monitored(host: Host, run, **kw) -> dict[str, float]:
    mon = lm.LatencyMonitor(plot=False, **kw)
    mon.on_validation_epoch_start(TRAINER, host)
    with torch.no_grad():
        run()
    mon.on_validation_batch_end(TRAINER, host, None, None, 0)
    mon.on_validation_epoch_end(TRAINER, host)
    return host.logged


def test_a_downsampling_encoder_is_costed_per_output_frame() -> None:
    """flops_per_frame is per output frame; it was charged on every input frame: rho and latency x2."""

    class Pool2(nn.Module):
        input_size, output_size, time_downsampling = 4, 4, 2

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def flops_per_frame(self) -> int:
            return 15_000_000

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.lin(x[:, ::2]), (lengths + 1) // 2

    host = Host(Pool2())  # 15 ms per output frame of 20 ms audio on a 1 GFLOP/s device
    logged = monitored(host, lambda: host.encoder(torch.randn(1, 10, 4), torch.tensor([10])),
                       device_flops_per_s=1e9, rtf_samples=0)
    assert logged["latency/rho"] == pytest.approx(0.75) and logged["latency/eou_p90_ms"] == pytest.approx(15.0)


def test_an_encoder_called_with_keyword_lengths_is_measured() -> None:
    """The hook saw positional arguments only: `self.encoder(x, lengths=n)` logged nothing."""
    torch.manual_seed(0)
    host = Host(AmortizedEncoder.from_recurrent(RecurrentEncoder(6, 8, 1), rank=2, frame_ms=10.0).eval())
    logged = monitored(host, lambda: host.encoder(torch.randn(2, 9, 6), lengths=torch.tensor([9, 5])), rtf_samples=0)
    assert "latency/eou_p90_ms" in logged and logged["latency/flops_per_frame"] > 0


def test_rtf_is_total_compute_over_total_audio(monkeypatch) -> None:
    """It was the mean of per-utterance ratios (1.01 here instead of 0.54)."""

    def fake_stream(enc, x, frame_ms):  # 20 ms start-up + 5 ms per frame
        wall = torch.full((x.shape[0],), 5.0, dtype=torch.float64)
        wall[0] += 20.0
        return StreamResult(x, torch.zeros(len(x), dtype=torch.long), wall, frame_ms)

    monkeypatch.setattr(lm, "stream", fake_stream)
    host = Host(RecurrentEncoder(4, 8, 1))
    logged = monitored(host, lambda: host.encoder(torch.randn(2, 100, 4), torch.tensor([2, 100])), rtf_samples=2)
    assert logged["latency/rtf"] == pytest.approx((2 * 5 + 20 + 100 * 5 + 20) / (102 * 10.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_routing_costs_stay_exact_under_mixed_precision(dtype: torch.dtype) -> None:
    """gates @ flops ran in float16 under autocast: 3e6 FLOPs overflowed, 0 * inf gave NaN costs and losses."""
    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(240, 256, 3), rank=48, device_flops_per_s=69.54e6).eval()
    x = torch.randn(1, 12, 240)
    with torch.no_grad():
        enc(x, torch.tensor([12]))
        ref = enc.last_routing
        with torch.autocast("cpu", dtype=dtype):
            enc(x, torch.tensor([12]))
    got = enc.last_routing
    torch.testing.assert_close(got.expected_flops, ref.expected_flops)
    assert torch.isfinite(enc.routing_losses(lambda_cost=1.0)["cost"])
    enc.force_branch = 1
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        enc(x, torch.tensor([12]))
    assert torch.isfinite(enc.last_routing.eou_latency_ms()).all()


def test_a_bfloat16_amnet_prices_and_accumulates_its_backlog_in_float32() -> None:
    """precision="bf16-true": costs and backlog were cast to bfloat16 (41.32 ms -> 41.25), so the backlog the
    arbitrator saw, the guard and the latencies drifted from the float32 recursion streaming and devices run."""
    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(240, 64, 2), rank=8, device_flops_per_s=5e6).eval()
    x, lengths = torch.randn(2, 40, 240), torch.tensor([40, 33])
    with torch.no_grad():
        enc.force_branch = 1  # the same routes in both precisions: only the arithmetic of the backlog differs
        enc(x, lengths)
        ref = enc.last_routing
        enc.to(torch.bfloat16)(x.to(torch.bfloat16), lengths)
    got = enc.last_routing
    assert got.cost_ms.dtype == torch.float32 and got.backlog_ms.dtype == torch.float32
    torch.testing.assert_close(got.cost_ms, ref.cost_ms)
    torch.testing.assert_close(got.backlog_ms, ref.backlog_ms)
    enc.force_branch = None
    with torch.no_grad():
        enc(x.to(torch.bfloat16), lengths)
    assert enc.last_routing.backlog_ms.dtype == torch.float32


def test_an_encoder_priced_for_other_frames_is_refused() -> None:
    """An AmNet built for 30 ms frames under stack=4 (40 ms) priced every backlog and latency for 30 ms."""
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(320, 16, 1), rank=2)
    with pytest.raises(ValueError, match=r"frame_ms \(30\) differs .* stack=4 .* frame_ms=40"):
        ASRModule(enc, stack=4)
    ASRModule(AmortizedEncoder.from_recurrent(RecurrentEncoder(320, 16, 1), rank=2, frame_ms=40.0), stack=4)


def test_the_first_streamed_frame_is_not_charged_for_warm_up() -> None:
    """Lazy caches and first kernel calls ran inside frame 0's timer (32 % of a short stream's time)."""
    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(24, 64, 2), rank=4, frame_ms=30.0)
    calls = []
    step = enc.step_with_decision

    def counted(*args, **kw):
        calls.append(kw.get("final"))
        return step(*args, **kw)

    enc.step_with_decision = counted
    r = stream(enc, torch.randn(5, 24))
    assert len(calls) == 6 and r.wall_ms.numel() == 5  # one untimed frame first, then the five timed ones


def test_sharpness_is_averaged_over_valid_frames() -> None:
    """It was logged with batch_size = utterances: a 200-frame batch weighed as much as a 2-frame one."""
    from lightning_amortized.callbacks.temperature import ArbitratorTemperature

    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(6, 8, 1), rank=2, frame_ms=10.0)
    host = Host(enc)
    sizes = []
    host.log = lambda name, value, **kw: sizes.append((name, kw.get("batch_size")))
    enc(torch.randn(2, 50, 6), torch.tensor([50, 30]))
    ArbitratorTemperature().on_train_batch_end(None, host, None, None, 0)
    assert dict(sizes) == {"arbitrator/temperature": 2, "arbitrator/sharpness": 80}


@pytest.mark.parametrize("frames", [9, 10, 11])
def test_downsampling_uses_the_declared_factor_whatever_the_padding(frames: int) -> None:
    """The factor was read from padded shapes (T=11 gave rho 0.82 for 0.75); a floor-rounded 0-frame utterance
    crashed validation."""

    class Pool2(nn.Module):
        input_size, output_size, time_downsampling = 4, 4, 2

        def flops_per_frame(self) -> int:
            return 15_000_000

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:, 1::2], lengths // 2  # floor

    host = Host(Pool2())
    logged = monitored(host, lambda: host.encoder(torch.randn(2, frames, 4), torch.tensor([frames, 1])),
                       device_flops_per_s=1e9, rtf_samples=0)
    assert logged["latency/rho"] == pytest.approx(0.75)
