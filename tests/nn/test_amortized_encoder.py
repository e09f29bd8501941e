"""AmortizedEncoder: exactness of the slow branch, train/eval/step equality, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_amortized.functional.flops import (
    linear_flops,
    lowrank_linear_flops,
    lowrank_rnn_flops,
    lstm_flops,
    rnn_pointwise_flops,
)
from lightning_amortized.nn import AmortizedEncoder, Arbitrator, RecurrentEncoder, SharedStateAmortizedEncoder
from lightning_amortized.nn.encoders import lengths_to_mask

KINDS = ["lowrank", "sparse", "small"]


def _batch(F: int = 12, B: int = 3, T: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, F, generator=g), torch.tensor([T, 5, 2])[:B]


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("kind", KINDS)
def test_slow_branch_matches_recurrent_encoder(rnn_type, kind):
    torch.manual_seed(0)
    enc = RecurrentEncoder(12, 16, num_layers=2, rnn_type=rnn_type, projection=10)
    am = AmortizedEncoder.from_recurrent(enc, fast=kind, rank=4, density=0.3).eval()
    x, lengths = _batch()
    gates = torch.zeros(3, 9, 2)
    gates[..., 1] = 1.0  # hard g = 1: slow weights everywhere
    y = am.core.forward_gated(x, lengths, gates)
    ref, _ = enc(x, lengths)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)
    # the slow weights are the encoder's own parameters, not copies
    names = dict(am.named_parameters())
    assert names["core.encoder.rnn.rnn.weight_hh_l0"] is enc.rnn.rnn.weight_hh_l0


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("kind", KINDS)
def test_eval_forward_equals_step_loop_and_straight_through_training(rnn_type, kind):
    torch.manual_seed(1)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 16, 2, rnn_type=rnn_type), fast=kind, rank=4)
    with torch.no_grad():  # decisions that depend strongly on the input: both branches get frames
        am.arbitrator.out.weight.mul_(20.0)
    x, lengths = _batch()
    am.eval()
    y_eval, _ = am(x, lengths)
    dec_eval = am.last_routing.decisions
    assert set(dec_eval[lengths_to_mask(lengths)].tolist()) == {0, 1}
    # step loop, batch of 3 (both branches computed, one-hot blend)
    state, ys, ds = am.init_state(3), [], []
    for t in range(x.shape[1]):
        y_t, state, d = am.step_with_decision(x[:, t], state)
        ys.append(y_t)
        ds.append(d)
    y_step = torch.stack(ys, 1) * lengths_to_mask(lengths)[..., None]
    assert torch.equal(torch.stack(ds, 1)[lengths_to_mask(lengths)], dec_eval[lengths_to_mask(lengths)])
    torch.testing.assert_close(y_step, y_eval, atol=1e-5, rtol=0)
    # one utterance at a time: only the chosen branch computes
    state, ys = am.init_state(1), []
    for t in range(int(lengths[1])):
        y_t, state = am.step(x[1:2, t], state)
        ys.append(y_t[0])
    torch.testing.assert_close(torch.stack(ys), y_eval[1, : int(lengths[1])], atol=1e-5, rtol=0)
    # training with straight-through hard gates and no noise computes the same function
    am.train()
    am.arbitrator.straight_through, am.arbitrator.gumbel_noise = True, False
    am.arbitrator.temperature = 0.01
    y_train, _ = am(x, lengths)
    assert torch.equal(am.last_routing.decisions, dec_eval)
    torch.testing.assert_close(y_train, y_eval, atol=1e-5, rtol=0)


def test_gradients_reach_arbitrator_through_gate_and_amortization_loss():
    torch.manual_seed(2)
    # a slow device so that the backlog is non-zero and the end term is active
    am = AmortizedEncoder.from_recurrent(
        RecurrentEncoder(12, 16, 2), fast="lowrank", rank=4, frame_ms=10.0, device_flops_per_s=2e5
    ).train()
    x, lengths = _batch()
    y, _ = am(x, lengths)
    r = am.last_routing
    assert r.backlog_ms.detach().max() > 0
    # through the relaxed gate into the encoder output
    grad_y = torch.autograd.grad(y.sum(), am.arbitrator.out.weight, retain_graph=True)[0]
    assert grad_y.abs().sum() > 0
    losses = am.routing_losses(lambda_cost=0.5, lambda_amr=2.0)
    assert set(losses) == {"cost", "amortization", "total"}
    torch.testing.assert_close(losses["total"], 0.5 * losses["cost"] + 2.0 * losses["amortization"])
    grad_amr = torch.autograd.grad(losses["amortization"], am.arbitrator.hidden.weight, retain_graph=True)[0]
    grad_cost = torch.autograd.grad(losses["cost"], am.arbitrator.hidden.weight)[0]
    assert grad_amr.abs().sum() > 0 and grad_cost.abs().sum() > 0
    # the cost loss is the expected FLOPs over the slow branch's FLOPs
    fast, slow = am.branch_flops()
    assert 0 < losses["cost"].item() < 1 and fast < slow


def test_eou_term_uses_each_utterances_floor_and_pushes_the_last_frame_fast(monkeypatch):
    torch.manual_seed(3)
    am = AmortizedEncoder.from_recurrent(
        RecurrentEncoder(12, 16, 2), fast="lowrank", rank=4, frame_ms=10.0, device_flops_per_s=2e7,
        load_aware=True, train_rho_range=(0.2, 0.4),  # fast devices: a slow frame ends within real time
    ).train()
    x, lengths = _batch()
    fast, slow = am.branch_flops()
    arb = am.arbitrator.flops_per_frame()
    assert am.floor_flops() == fast + arb
    speeds = torch.tensor([3e7, 4e7, 5e7])[: x.shape[0]]
    monkeypatch.setattr(am, "_sample_devices", lambda b, slow_flops, like: speeds.to(like))
    am(x, lengths)
    r = am.last_routing
    # the floor of each utterance: the fast branch plus the arbitrator on its own device
    torch.testing.assert_close(r.floor_ms, 1000.0 * (fast + arb) / speeds.to(r.floor_ms))
    assert float(r.backlog_ms.detach().max()) == 0.0  # nothing for the end term to see
    off = am.routing_losses(lambda_amr=1.0, slack_weight=0.0)
    on = am.routing_losses(lambda_amr=1.0, slack_weight=0.0, eou_weight=1.0, eou_factor=1.0)
    assert float(off["amortization"].detach()) == 0.0
    # the term is the simulated latency of this routing above the floor
    expected = (torch.relu(r.eou_latency_ms() - r.floor_ms) / 10.0).mean()
    torch.testing.assert_close(on["amortization"].detach(), expected)
    assert float(expected) > 0
    # ... and charges the last valid frame of each utterance (through its cost: the gate of the slow branch)
    g = torch.autograd.grad(on["amortization"], r.cost_ms, retain_graph=True)[0]
    last = (lengths - 1).long()
    rows = torch.arange(len(last))
    assert bool((g[rows, last] >= 0).all()) and float(g[rows, last].sum()) > 0
    g[rows, last] = 0.0
    assert float(g.abs().sum()) == 0.0
    assert torch.autograd.grad(on["amortization"], am.arbitrator.out.weight)[0].abs().sum() > 0
    with pytest.raises(ValueError, match="eou_factor"):
        am.routing_losses(lambda_amr=1.0, eou_weight=1.0, eou_factor=0.0)
    # at eval: the device of set_device; with force_branch: that branch alone, no arbitrator
    am.eval()
    am.set_device(1e7)
    am(x, lengths)
    torch.testing.assert_close(am.last_routing.floor_ms, torch.full((x.shape[0],), 1000.0 * (fast + arb) / 1e7))
    am.force_branch = 1
    assert am.floor_flops() == slow
    am(x, lengths)
    torch.testing.assert_close(am.last_routing.floor_ms, torch.full((x.shape[0],), 1000.0 * slow / 1e7))


def test_flops_of_shared_lowrank_branches():
    enc = RecurrentEncoder(240, 320, 3)
    am = AmortizedEncoder.from_recurrent(enc, fast="lowrank", rank=64)
    fast, slow = am.branch_flops()
    assert slow == lstm_flops(240, 320, 3) == enc.flops_per_frame()
    assert fast == lowrank_rnn_flops("lstm", 240, 320, 64) + 2 * lowrank_rnn_flops("lstm", 320, 320, 64)
    # the arbitrator: Linear(240 + 1 + 2 -> 16), tanh, Linear(16 -> 2), 2 for the backlog feature, 2 argmax
    arb = am.arbitrator.flops_per_frame()
    assert arb == linear_flops(243, 16) + 16 + linear_flops(16, 2) + 2 + 2
    assert arb < 0.02 * fast  # design target: below 2% of the fast branch
    assert am.flops_per_frame() == slow + arb


def test_sparse_flops_count_nonzeros():
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(20, 32, 1), fast="sparse", density=0.25)
    layer = am.core.fast[0]
    nnz = int(torch.count_nonzero(layer.w_ih * layer.mask_ih) + torch.count_nonzero(layer.w_hh * layer.mask_hh))
    assert nnz == round(0.25 * 4 * 32 * (20 + 32))
    fast, slow = am.branch_flops()
    assert slow - fast == 2 * (4 * 32 * (20 + 32) - nnz)


def test_independent_branches_skip_frames_and_project():
    torch.manual_seed(3)
    fast, slow = RecurrentEncoder(12, 8, 1), RecurrentEncoder(12, 24, 2)
    am = AmortizedEncoder(fast, slow, projection=16).eval()
    x = torch.randn(1, 6, 12)
    gates = torch.tensor([[1, 0], [0, 1], [0, 1], [1, 0], [0, 1], [1, 0]], dtype=torch.float)[None]
    y = am.core.forward_gated(x, torch.tensor([6]), gates)
    # each encoder only ever saw the frames routed to it, in order
    fast_frames, slow_frames = x[:, [0, 3, 5]], x[:, [1, 2, 4]]
    yf = am.core.projections[0](fast(fast_frames, torch.tensor([3]))[0])
    ys = am.core.projections[1](slow(slow_frames, torch.tensor([3]))[0])
    torch.testing.assert_close(y[0, [0, 3, 5]], yf[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[0, [1, 2, 4]], ys[0], atol=1e-5, rtol=0)
    # the streaming path with the arbitrator's own decisions agrees with forward
    y_eval, _ = am(x, torch.tensor([6]))
    state, outs = am.init_state(1), []
    for t in range(6):
        y_t, state = am.step(x[:, t], state)
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y_eval, atol=1e-5, rtol=0)
    am.begin_streaming()  # the branches cache their per-frame weights: the same frames
    assert fast._stream_layers is not None and slow._stream_layers is not None
    state, cached = am.init_state(1), []
    for t in range(6):
        y_t, state = am.step(x[:, t], state)
        cached.append(y_t)
    assert torch.equal(torch.stack(cached, 1), torch.stack(outs, 1))
    am.end_streaming()
    assert fast._stream_layers is None


def test_three_independent_branches_and_soft_blend():
    torch.manual_seed(4)
    encs = [RecurrentEncoder(12, 8, 1), RecurrentEncoder(12, 8, 2), RecurrentEncoder(12, 8, 3)]
    am = AmortizedEncoder(*encs).train()
    x, lengths = _batch()
    y, _ = am(x, lengths)
    assert y.shape == (3, 9, 8) and am.last_routing.gates.shape == (3, 9, 3)
    assert am.slow_index == 2
    torch.testing.assert_close(am.last_routing.gates.sum(-1), torch.ones(3, 9))
    y.sum().backward()
    assert am.arbitrator.out.weight.grad.abs().sum() > 0


class _FullContext(nn.Module):
    """A non-streaming encoder (no step): output depends on the whole utterance."""

    def __init__(self, size: int, cost_scale: int = 1) -> None:
        super().__init__()
        self.input_size = self.output_size = size
        self.lin = nn.Linear(size, size)
        self.cost_scale = cost_scale  # as if it were this many times bigger (branches must differ in cost)

    def forward(self, x, lengths):
        return self.lin(x) + x.mean(1, keepdim=True), lengths

    def flops_per_frame(self) -> int:
        return self.cost_scale * linear_flops(self.input_size, self.output_size)


def test_non_streaming_branches_are_mixed():
    am = AmortizedEncoder(_FullContext(12), _FullContext(12, cost_scale=3)).eval()
    x, lengths = _batch()
    y, _ = am(x, lengths)
    g = am.last_routing.gates
    y0 = am.core.branches[0](x, lengths)[0]
    y1 = am.core.branches[1](x, lengths)[0]
    ref = (g[..., :1] * y0 + g[..., 1:] * y1) * lengths_to_mask(lengths)[..., None]
    torch.testing.assert_close(y, ref)
    assert not am.streaming
    with pytest.raises(RuntimeError, match="cannot stream"):
        am.step(x[:, 0], (None, torch.zeros(3), torch.zeros(3, 2)))
    with pytest.raises(RuntimeError, match=r"\(_FullContext, _FullContext\): they cannot stream"):
        am.init_state(1)  # used to be a raw AttributeError


def test_configuration_errors():
    with pytest.raises(TypeError, match=r"Branch 0 \(LSTM\) does not follow the encoder contract: it lacks"):
        AmortizedEncoder(nn.LSTM(12, 8, batch_first=True), RecurrentEncoder(12, 24, 1))
    streaming = AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 8, 1), rank=2)
    with pytest.raises(ValueError, match=r"`x_t` to be one frame per stream, \(B, 12\), but got \(1, 1, 12\)"):
        streaming.step(torch.randn(1, 1, 12), streaming.init_state(1))
    with pytest.raises(ValueError, match=r"The branches cost \[300, 300\] FLOPs per frame: the most expensive"):
        AmortizedEncoder(_FullContext(12), _FullContext(12))
    with pytest.raises(ValueError, match="no less than the slow one.s"):
        AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 8, 1), fast="sparse", density=1.0)
    with pytest.raises(ValueError, match=r"branch 0 \(RecurrentEncoder\): 8.*branch 1 \(RecurrentEncoder\): 24"):
        AmortizedEncoder(RecurrentEncoder(12, 8, 1), RecurrentEncoder(12, 24, 1))
    with pytest.raises(ValueError, match=r"`temperature`.*-0.5"):
        Arbitrator(12, temperature=-0.5)
    arb = Arbitrator(12)
    with pytest.raises(ValueError, match=r"`temperature`.*0"):
        arb.temperature = 0.0
    with pytest.raises(ValueError, match=r"`fast`.*'dense'"):
        AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 8, 1), fast="dense")
    with pytest.raises(ValueError, match=r"`rank`.*\[1, 8\].*9"):
        AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 8, 1), rank=9)
    with pytest.raises(TypeError, match="RecurrentEncoder"):
        SharedStateAmortizedEncoder(nn.Linear(3, 3))
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 8, 1))
    with pytest.raises(RuntimeError, match="forward"):
        am.routing_losses(1.0, 1.0)


def test_routing_info_metrics():
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 8, 1), frame_ms=10.0, device_flops_per_s=1e6).eval()
    x, lengths = _batch()
    am(x, lengths)
    r = am.last_routing
    assert float(r.sharpness()) == 1.0  # hard decisions at eval
    fast, slow = r.branch_flops
    arb = am.arbitrator.flops_per_frame()
    expected = torch.where(r.decisions == 1, float(slow + arb), float(fast + arb))
    torch.testing.assert_close(r.expected_flops, expected)
    torch.testing.assert_close(r.cost_ms, expected / 1e3)  # 1 MFLOP/s: 1 FLOP = 1e-3 ms
    assert r.eou_latency_ms().shape == (3,)
    share = (r.decisions[lengths_to_mask(lengths)] == 1).float().mean()
    assert float(r.slow_share()) == pytest.approx(float(share))


def test_decide_on_an_empty_batch_with_a_guard_returns_empty_tensors():
    arb = Arbitrator(4)
    x = torch.randn(2, 0, 4)
    for lengths in (None, torch.tensor([0, 0])):
        shapes = [tuple(t.shape) for t in arb.decide(x, lengths, torch.tensor([1.0, 2.0]), 0.5, guard=2.0)]
        assert shapes == [(2, 0, 2), (2, 0, 2), (2, 0), (2, 0)]
    with pytest.raises(ValueError, match=r"`frame_cost_ms` to have shape \(2,\) or \(2, 2\)"):
        arb.decide(torch.randn(2, 3, 4), None, torch.tensor([1.0, 2.0]), frame_cost_ms=torch.ones(3))


def test_a_fast_branch_that_costs_as_much_as_the_slow_one_is_refused_and_gru_ranks_are_counted_as_built():
    with pytest.raises(ValueError, match="'small' fast branch costs .* no less than the slow one's"):
        AmortizedEncoder.from_recurrent(RecurrentEncoder(24, 16, 2), fast="small", rank=16)
    gru = AmortizedEncoder.from_recurrent(RecurrentEncoder(4, 32, 1, rnn_type="gru"), fast="lowrank", rank=16)
    layer = gru.core.fast[0]
    assert layer.v_ih.shape[0] == 4  # W_ih (96 x 4) has rank 4 at most
    fast, slow = gru.branch_flops()
    assert fast == lowrank_linear_flops(4, 96, 4) + lowrank_linear_flops(32, 96, 16) + rnn_pointwise_flops("gru", 32)
    assert fast < slow and gru.slow_index == 1
