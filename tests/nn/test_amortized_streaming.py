"""Streaming inference: only the chosen branch computes, timing, thread settings restored."""

from __future__ import annotations

import pytest
import torch

from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder, compare_wall_clock, stream


def test_stream_matches_forward_and_restores_threads():
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 16, 2), fast="sparse", density=0.3, frame_ms=25.0)
    am.train()
    x = torch.randn(15, 12)
    old = torch.get_num_threads()
    r = stream(am, x)
    assert torch.get_num_threads() == old and am.training  # both restored
    am.eval()
    y, _ = am(x[None], torch.tensor([15]))
    torch.testing.assert_close(r.outputs, y[0], atol=1e-5, rtol=0)
    assert torch.equal(r.decisions, am.last_routing.decisions[0])
    assert r.wall_ms.shape == (15,) and bool((r.wall_ms > 0).all())
    assert r.rtf == pytest.approx(r.total_ms / (15 * 25.0))
    forced = stream(am, x, force_branch=1)
    assert forced.decisions.tolist() == [1] * 15
    with pytest.raises(ValueError, match="frame_ms"):
        stream(RecurrentEncoder(12, 16, 1), x)


@pytest.mark.slow
def test_fast_branch_takes_less_wall_clock_than_slow():
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(80, 512, 2), fast="lowrank", rank=32)
    result = compare_wall_clock(am, torch.randn(30, 80), repeats=3)
    # rank 32 vs dense 512: about 8x fewer FLOPs; a relaxed bound against timing noise
    assert result["fast_over_slow"] < 0.9, result
    assert 0.0 <= result["routed_slow_share"] <= 1.0
