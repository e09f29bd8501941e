"""A load-aware arbitrator sees the device load log(rho): one AmNet for devices of every speed."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_amortized.nn import AmortizedEncoder, Arbitrator, RecurrentEncoder

F_IN = 12


def _amnet(**kw) -> AmortizedEncoder:
    torch.manual_seed(0)
    return AmortizedEncoder.from_recurrent(RecurrentEncoder(F_IN, 16, 1), fast="lowrank", rank=4, frame_ms=30.0, **kw)


def _device(enc: AmortizedEncoder, rho: float) -> float:
    """FLOP/s of a device on which the slow branch costs rho frames per frame."""
    return max(enc.branch_flops()) / (rho * enc.frame_ms / 1000.0)


def test_layout_and_refusals() -> None:
    arb = Arbitrator(F_IN, 2, hidden_size=8, load_aware=True)
    assert arb.hidden.weight.shape == (8, F_IN + 1 + 1 + 2)  # frame, backlog, load, previous gate
    assert Arbitrator(F_IN, 2, hidden_size=8).hidden.weight.shape == (8, F_IN + 1 + 2)  # unchanged without
    b, prev = arb.init_state(3)
    with pytest.raises(ValueError, match="needs the device load"):
        arb.step(torch.randn(3, F_IN), b, prev)
    assert arb.step(torch.randn(3, F_IN), b, prev, load=0.2).shape == (3, 2)
    with pytest.raises(ValueError, match="load_aware=True"):
        _amnet(train_rho_range=(0.5, 2.5))
    with pytest.raises(ValueError, match="0 < low <= high"):
        _amnet(load_aware=True, train_rho_range=(2.0, 1.0))


def test_training_draws_a_device_per_utterance_and_inference_uses_the_set_one() -> None:
    enc = _amnet(load_aware=True, train_rho_range=(0.5, 2.5))
    x, n = torch.randn(6, 9, F_IN), torch.full((6,), 9)
    torch.manual_seed(1)
    enc.train()
    enc(x, n)
    r = enc.last_routing
    speeds = r.expected_flops.detach() / (r.cost_ms.detach() / 1000.0)  # FLOP/s each frame ran on
    rho = max(enc.branch_flops()) / speeds[:, 0] * 1000.0 / enc.frame_ms
    assert torch.allclose(speeds, speeds[:, :1].expand_as(speeds), rtol=1e-4)  # one device per utterance
    assert float(rho.min()) >= 0.5 - 1e-4 and float(rho.max()) <= 2.5 + 1e-4 and float(rho.std()) > 0.05
    enc.eval()
    enc.set_device(_device(enc, 2.0))
    with torch.no_grad():
        enc(x, n)
    speeds = enc.last_routing.expected_flops / (enc.last_routing.cost_ms / 1000.0)
    assert torch.allclose(speeds, torch.full_like(speeds, _device(enc, 2.0)), rtol=1e-4)


@pytest.mark.parametrize("rho", [0.5, 2.5])
def test_streaming_steps_decide_like_the_batched_forward(rho: float) -> None:
    enc = _amnet(load_aware=True, train_rho_range=(0.5, 2.5)).eval()
    with torch.no_grad():
        enc.arbitrator.hidden.weight[:, F_IN + 1] = 3.0  # make the load matter
    enc.set_device(_device(enc, rho))
    x = torch.randn(1, 20, F_IN)
    with torch.no_grad():
        enc(x, torch.tensor([20]))
        batched = enc.last_routing.decisions[0].tolist()
        state, stepped = enc.init_state(1), []
        for t in range(20):
            _, state, choice = enc.step_with_decision(x[:, t], state)
            stepped.append(int(choice))
    assert stepped == batched


def test_one_arbitrator_learns_to_use_the_slow_branch_more_on_fast_devices() -> None:
    """Trained on the routing losses alone over rho in [0.5, 2.5]: at rho = 0.5 the slow branch
    never builds a backlog and idle fast frames are penalised; at rho = 2.5 slow frames pile up."""
    enc = _amnet(load_aware=True, train_rho_range=(0.5, 2.5), arbitrator_hidden=8)
    opt = torch.optim.Adam(enc.arbitrator.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    enc.train()
    for _ in range(150):
        x = torch.randn(16, 20, F_IN, generator=g)
        enc(x, torch.full((16,), 20))
        loss = enc.routing_losses(lambda_cost=0.05, lambda_amr=1.0)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    share = {}
    x = torch.randn(32, 20, F_IN, generator=g)
    for rho in (0.5, 2.5):
        enc.set_device(_device(enc, rho))
        with torch.no_grad():
            enc(x, torch.full((32,), 20))
        share[rho] = float(enc.last_routing.decisions.float().mean())  # branch 1 is slow
    assert share[0.5] > share[2.5] + 0.2, share
    assert not math.isnan(share[0.5])
