"""The latency guard: with it, every utterance's end-of-utterance latency is within ``factor`` x the floor.

The guard (``AmortizedEncoder(latency_guard=...)``) lets a frame take a costlier branch
only if the backlog after it stays within ``(factor - 1)`` x the floor, and gives each
utterance's last frame the cheapest branch. The tests use an arbitrator pushed to always
want the slow branch, so that without the guard the bound is broken.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_amortized.backlog_rule import allowed_branches, check_guard, guard_allows
from lightning_amortized.functional.backlog import guard_mask
from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder

F_IN = 12


def _greedy_amnet(**kw) -> AmortizedEncoder:
    """A load-aware AmNet whose arbitrator always prefers the slow branch (logit margin 40)."""
    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(F_IN, 16, 1), fast="lowrank", rank=4, frame_ms=30.0,
                                          load_aware=True, **kw)
    with torch.no_grad():
        enc.arbitrator.out.weight.zero_()
        enc.arbitrator.out.bias.copy_(torch.tensor([-20.0, 20.0]))
    return enc


def _device(enc: AmortizedEncoder, rho: float) -> float:
    """FLOP/s of a device on which the slow branch costs rho frames per frame."""
    return max(enc.branch_flops()) / (rho * enc.frame_ms / 1000.0)


def _floor_ms(enc: AmortizedEncoder) -> float:
    return float(enc.device_model.cost_ms(enc.floor_flops()))


def test_guard_factor_is_validated() -> None:
    assert check_guard(None) is None and check_guard(2) == 2.0
    for bad in (0.5, 0.0, -1.0, float("inf"), float("nan"), True, "2"):
        with pytest.raises(ValueError, match="latency guard"):
            check_guard(bad)
    with pytest.raises(ValueError, match="latency guard"):
        _greedy_amnet(latency_guard=0.9)
    enc = _greedy_amnet()
    with pytest.raises(ValueError, match="latency guard"):
        enc.latency_guard = float("inf")
    enc.latency_guard = 1.5
    assert "latency_guard=1.5" in repr(enc)


def test_rule_by_hand() -> None:
    # backlog after = relu(b + c - 30) against (factor - 1) * floor = 10 ms
    assert guard_allows(0.0, 40.0, 30.0, 10.0, 2.0) and not guard_allows(0.5, 40.0, 30.0, 10.0, 2.0)
    assert allowed_branches(0.0, [10.0, 40.0], 30.0, 2.0) == [True, True]
    assert allowed_branches(0.0, [10.0, 40.0], 30.0, 2.0, final=True) == [True, False]
    assert allowed_branches(100.0, [10.0, 40.0], 30.0, 1.0) == [True, False]  # the cheapest: always
    assert allowed_branches(0.0, [10.0, 20.0, 45.0], 30.0, 2.5) == [True, True, True]  # 15 ms left <= 1.5 x 10
    assert allowed_branches(0.0, [10.0, 20.0, 45.0], 30.0, 2.4) == [True, True, False]


def test_batched_mask_equals_the_per_frame_rule() -> None:
    g = torch.Generator().manual_seed(0)
    b = 40.0 * torch.rand(64, generator=g)
    costs = torch.tensor([12.0, 31.0, 55.0])
    final = torch.rand(64, generator=g) < 0.2
    mask = guard_mask(b, costs + 0.5, 30.0, 1.8, final=final)
    for i in range(64):
        expect = allowed_branches(float(b[i]), [float(c) + 0.5 for c in costs], 30.0, 1.8, final=bool(final[i]))
        assert mask[i].tolist() == expect
    per_utt = guard_mask(b[:2], torch.stack([costs + 0.5, 2 * costs + 1.0]), 30.0, 1.8)
    assert per_utt[1].tolist() == allowed_branches(float(b[1]), [2 * float(c) + 1.0 for c in costs], 30.0, 1.8)


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0])
def test_every_utterance_is_within_the_bound_at_every_device(factor: float) -> None:
    enc = _greedy_amnet().eval()
    x = torch.randn(8, 40, F_IN)
    n = torch.tensor([40, 37, 25, 9, 3, 1, 40, 18])
    for rho in (0.5, 1.0, 1.5, 2.0, 2.5):
        enc.set_device(_device(enc, rho))
        floor = _floor_ms(enc)
        assert floor <= enc.frame_ms  # the guarantee's premise on these devices
        enc.latency_guard = None
        with torch.no_grad():
            enc(x, n)
        unguarded = enc.last_routing.eou_latency_ms()
        enc.latency_guard = factor
        with torch.no_grad():
            enc(x, n)
        r = enc.last_routing
        eou = r.eou_latency_ms()
        assert float(eou.max()) <= factor * floor * (1 + 1e-5), (rho, eou.tolist(), floor)
        assert float(unguarded.max()) > 2.0 * floor  # the arbitrator alone would break it
        slow_ms = float(enc.device_model.cost_ms(enc.flops_per_frame()))
        if max(0.0, slow_ms - enc.frame_ms) <= (factor - 1.0) * floor:  # a slow frame fits from an empty backlog
            assert float(r.slow_share()) > 0.3, rho  # so the guard still lets the arbitrator spend the slack
        else:
            assert float(r.slow_share()) == 0.0, rho
        last = n - 1
        assert (r.decisions[torch.arange(8), last] == 0).all()  # final frames: the cheapest branch


def test_streaming_steps_decide_like_the_batched_forward() -> None:
    enc = _greedy_amnet(latency_guard=2.0).eval()
    with torch.no_grad():
        enc.arbitrator.out.weight.normal_(0.0, 3.0)  # decisions that depend on the frame and the backlog
    x = torch.randn(3, 30, F_IN)
    for rho in (0.7, 1.2):
        enc.set_device(_device(enc, rho))
        with torch.no_grad():
            enc(x, torch.full((3,), 30))
            batched = enc.last_routing.decisions
            state = enc.init_state(3)
            steps = []
            for t in range(30):
                _, state, choice = enc.step_with_decision(x[:, t], state, final=t == 29)
                steps.append(choice)
        assert torch.equal(torch.stack(steps, 1), batched)
        assert 0 < int((batched == 1).sum()) < batched.numel()


def test_training_gates_respect_the_guard_and_stay_finite() -> None:
    enc = _greedy_amnet(latency_guard=2.0, train_rho_range=(0.5, 2.5), temperature=0.5).train()
    with torch.no_grad():
        enc.arbitrator.out.bias.copy_(torch.tensor([0.0, 2.0]))  # relaxed gates on both branches
    x, n = torch.randn(6, 30, F_IN), torch.tensor([30, 30, 22, 15, 30, 7])
    torch.manual_seed(1)
    y, _ = enc(x, n)
    r = enc.last_routing
    eou = r.eou_latency_ms()
    assert bool((eou <= 2.0 * r.floor_ms * (1 + 1e-5)).all())  # soft costs too: the rule is monotone in cost
    losses = enc.routing_losses(lambda_cost=0.1, lambda_amr=1.0)
    (y.square().mean() + losses["total"]).backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert math.isfinite(float(losses["total"].detach()))
