"""Backlog recursion, EOU latency, simulated device, routing losses and FLOP counts, by hand."""

from __future__ import annotations

import pytest
import torch

from lightning_amortized.functional import (
    SimulatedDevice,
    amortization_loss,
    backlog,
    backlog_before,
    eou_latency,
    expected_cost_penalty,
    flops_to_ms,
)
from lightning_amortized.functional.flops import (
    gru_flops,
    hidden_lowrank_rnn_flops,
    lowrank_rnn_flops,
    lstm_flops,
    sparse_rnn_flops,
)


def test_backlog_five_frames_by_hand():
    # frame_ms = 30; costs 40, 40, 10, 50, 20
    # b1 = max(0, 0 + 40 - 30) = 10
    # b2 = max(0, 10 + 40 - 30) = 20
    # b3 = max(0, 20 + 10 - 30) = 0
    # b4 = max(0, 0 + 50 - 30) = 20
    # b5 = max(0, 20 + 20 - 30) = 10
    costs = torch.tensor([[40.0, 40.0, 10.0, 50.0, 20.0]])
    assert backlog(costs, 30.0).tolist() == [[10.0, 20.0, 0.0, 20.0, 10.0]]
    # EOU latency: backlog when the last frame arrives (b4 = 20) + its own cost (20) = 40
    assert eou_latency(costs, 30.0).tolist() == [40.0]


def test_backlog_lengths_freeze_and_batch():
    costs = torch.tensor([[40.0, 40.0, 10.0, 50.0, 20.0], [50.0, 50.0, 99.0, 99.0, 99.0]])
    b = backlog(costs, 30.0, torch.tensor([5, 2]))
    # second row: b1 = 20, b2 = 40, then frozen at 40 (padding costs nothing, drains nothing)
    assert b[1].tolist() == [20.0, 40.0, 40.0, 40.0, 40.0]
    assert b[0].tolist() == [10.0, 20.0, 0.0, 20.0, 10.0]
    # EOU of row 2 (length 2): b1 + cost2 = 20 + 50 = 70
    assert eou_latency(costs, 30.0, torch.tensor([5, 2])).tolist() == [40.0, 70.0]
    assert backlog_before(b)[1].tolist() == [0.0, 20.0, 40.0, 40.0, 40.0]


def test_eou_latency_equals_finish_time_minus_arrival():
    # independent event simulation: frame t arrives at t*F, starts at max(arrival, previous finish)
    torch.manual_seed(0)
    costs = torch.rand(4, 12) * 60
    F = 30.0
    for row, c in zip(eou_latency(costs, F).tolist(), costs.tolist()):
        finish = 0.0
        for t, ct in enumerate(c, start=1):
            finish = max(finish, t * F) + ct
        assert row == pytest.approx(finish - len(c) * F, abs=1e-4)


def test_backlog_is_differentiable_on_expected_costs():
    p = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    costs = 10.0 + 40.0 * p  # expected cost 30 ms on a 20 ms frame
    b = backlog(costs, 20.0)
    assert b.tolist() == [[10.0, 20.0, 30.0]]
    b[0, -1].backward()
    assert p.grad.tolist() == [[40.0, 40.0, 40.0]]  # every earlier decision moves the final backlog


def test_flops_to_ms_and_device():
    assert flops_to_ms(6.5e6) == pytest.approx(10.0)
    dev = SimulatedDevice(flops_per_s=1e9, frame_ms=10.0)
    assert dev.cost_ms(2e7) == pytest.approx(20.0)
    assert dev.load_factor(15e6) == pytest.approx(1.5)
    flops = torch.tensor([[15e6, 15e6, 5e6]])
    assert dev.backlog(flops)[0].tolist() == pytest.approx([5.0, 10.0, 5.0])
    with pytest.raises(ValueError, match="frame_ms"):
        SimulatedDevice(frame_ms=0.0)
    with pytest.raises(ValueError, match="flops_per_s"):
        SimulatedDevice(flops_per_s=-1.0)


def test_amortization_loss_by_hand_and_gradient():
    frame = 30.0
    p_slow = torch.tensor([[0.25, 0.5, 1.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 45.0, 15.0, 60.0]], requires_grad=True)
    lengths = torch.tensor([4])
    loss = amortization_loss(p_slow, b, lengths, frame)
    # b_{t-1} = [0, 0, 45, 15]; idle = relu(1 - b/30) = [1, 1, 0, 0.5]
    # fast share = [0.75, 0.5, 0, 1] -> slack = (0.75 + 0.5 + 0 + 0.5) / 4 = 0.4375
    # end = b_4 / 30 = 2
    assert loss.item() == pytest.approx(2.4375)
    loss.backward()
    assert p_slow.grad[0].tolist() == pytest.approx([-0.25, -0.25, 0.0, -0.125])
    # end backlog keeps its gradient; the slack term's backlog is detached
    assert b.grad[0].tolist() == pytest.approx([0.0, 0.0, 0.0, 1 / 30])


def test_amortization_loss_masks_padding_and_validates():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 0.0], [30.0, 99.0, 99.0]])
    loss = amortization_loss(p, b, torch.tensor([1, 1]), 30.0)
    # valid frames: (0, 0) slow -> 0; (1, 0) fast with b_0 = 0 -> 1 => slack 0.5; end = (0 + 30/30) / 2 = 0.5
    assert float(loss) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        amortization_loss(p, b[:, :2], None, 30.0)
    with pytest.raises(ValueError, match="threshold_ms"):
        amortization_loss(p, b, None, 30.0, threshold_ms=0.0)


def test_amortization_loss_eou_term_charges_latency_above_the_limit():
    frame = 30.0
    # a fast device: no backlog, so the end term is zero however slow the last frame
    p = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], requires_grad=True)
    cost = torch.tensor([[15.0, 15.0, 15.0], [15.0, 5.0, 99.0]], requires_grad=True)
    b = backlog(cost, frame, torch.tensor([3, 2]))
    lengths = torch.tensor([3, 2])
    off = amortization_loss(p, b, lengths, frame, slack_weight=0.0)
    assert float(off.detach()) == 0.0
    limit = torch.tensor([12.0, 12.0])  # twice a 6 ms floor
    loss = amortization_loss(p, b, lengths, frame, slack_weight=0.0, cost_ms=cost, eou_limit_ms=limit, eou_weight=2.0)
    # utterance 0 ends on a 15 ms frame: 3 ms above the limit; utterance 1 on a 5 ms frame (its padding not counted)
    assert float(loss.detach()) == pytest.approx(2.0 * (3.0 / frame + 0.0) / 2)
    loss.backward()
    # the gradient reaches the last valid frame's cost only, where the latency is above the limit
    assert cost.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 1 / frame, 0.0, 0.0, 0.0])
    # with a backlog: the term is the latency eou_latency reports, above the limit
    cost = torch.tensor([[40.0, 40.0, 10.0, 50.0, 20.0], [50.0, 50.0, 99.0, 0.0, 0.0]])
    n = torch.tensor([5, 2])
    b = backlog(cost, frame, n)
    eou = eou_latency(cost, frame, n)
    assert eou.tolist() == [40.0, 70.0]
    p5 = torch.ones_like(cost)
    loss = amortization_loss(p5, b, n, frame, end_weight=0.0, slack_weight=0.0, cost_ms=cost,
                             eou_limit_ms=torch.tensor([10.0, 10.0]), eou_weight=1.0)
    assert float(loss) == pytest.approx(((40.0 - 10.0) + (70.0 - 10.0)) / frame / 2)
    with pytest.raises(ValueError, match=r"eou_limit_ms.*shape \(2,\)"):
        amortization_loss(p5, b, n, frame, cost_ms=cost, eou_limit_ms=torch.ones(2, 1), eou_weight=1.0)
    # an empty utterance costs nothing in either end term (the EOU term used to refuse it, the end term not)
    empty = amortization_loss(p5, backlog(cost, frame, torch.tensor([5, 0])), torch.tensor([5, 0]), frame,
                              end_weight=0.0, slack_weight=0.0, cost_ms=cost, eou_limit_ms=10.0, eou_weight=1.0)
    assert float(empty) == pytest.approx((40.0 - 10.0) / frame / 2)
    with pytest.raises(ValueError, match=r"lengths` to be in \[1, "):
        amortization_loss(p5, b, torch.tensor([5, 6]), frame, cost_ms=cost, eou_limit_ms=1.0, eou_weight=1.0)
    p, cost, b = p.detach(), cost[:, :3], backlog(cost[:, :3], frame, lengths)
    with pytest.raises(ValueError, match="needs `cost_ms`"):
        amortization_loss(p, b, lengths, frame, eou_weight=1.0)
    with pytest.raises(ValueError, match="eou_weight"):
        amortization_loss(p, b, lengths, frame, cost_ms=cost, eou_limit_ms=limit, eou_weight=-1.0)
    with pytest.raises(ValueError, match="cost_ms"):
        amortization_loss(p, b, lengths, frame, cost_ms=cost[:, :2], eou_limit_ms=limit, eou_weight=1.0)


def test_expected_cost_penalty():
    e = torch.tensor([[10.0, 30.0, 1e9], [20.0, 20.0, 20.0]])
    # valid: 10, 30, 20, 20, 20 -> mean 20 -> / 40 = 0.5
    assert float(expected_cost_penalty(e, torch.tensor([2, 3]), 40.0)) == pytest.approx(0.5)


def test_lstm_flops_against_per_gate_count():
    I, H = 240, 320
    per_gate = 0
    for _gate in "ifgo":
        per_gate += 2 * H * I  # W_i* x
        per_gate += 2 * H * H  # W_h* h
        per_gate += H  # sum of the two products
        per_gate += 2 * H  # b_i*, b_h*
        per_gate += H  # sigmoid / tanh
    per_gate += 2 * H + H  # f*c, i*g, and their sum
    per_gate += H + H  # tanh(c), o*tanh(c)
    assert lstm_flops(I, H) == per_gate
    assert lstm_flops(I, H, num_layers=3) == per_gate + 2 * lstm_flops(H, H)


def test_fast_branch_flops_against_independent_counts():
    I, H, r = 240, 320, 64
    pointwise_lstm = 9 * H
    # low rank: V [x; h] (r x (I+H)), U z (4H x r), one bias
    assert lowrank_rnn_flops("lstm", I, H, r) == 2 * r * (I + H) + 2 * 4 * H * r + 4 * H + pointwise_lstm
    # sparse at full density is the dense layer
    assert sparse_rnn_flops("lstm", 4 * H * (I + H), H) == lstm_flops(I, H)
    assert sparse_rnn_flops("gru", 3 * H * (I + H), H) == gru_flops(I, H)
    # "small": dense W_ih, low-rank W_hh
    assert hidden_lowrank_rnn_flops("lstm", I, H, r) == (
        2 * 4 * H * I + 4 * H + 2 * r * (H + 4 * H) + 4 * H + 4 * H + pointwise_lstm
    )
    with pytest.raises(ValueError, match="rnn_type"):
        lowrank_rnn_flops("rnn", I, H, r)
