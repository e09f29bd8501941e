"""AmortizedEncoder: ``force_branch`` (single-branch baselines from the same class) and ``set_device``."""

from __future__ import annotations

import pytest
import torch

from lightning_amortized.functional.flops import lowrank_rnn_flops
from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder, stream


def _batch(F: int = 12, B: int = 3, T: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, F, generator=g), torch.tensor([T, 5, 2])[:B]


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("kind", ["lowrank", "sparse", "small"])
@pytest.mark.parametrize("k", [0, 1])
def test_forced_branch_equals_one_hot_gates(rnn_type, kind, k):
    torch.manual_seed(0)
    enc = RecurrentEncoder(12, 16, num_layers=2, rnn_type=rnn_type, dropout=0.0)
    am = AmortizedEncoder.from_recurrent(enc, fast=kind, rank=4, density=0.3, force_branch=k)
    x, lengths = _batch()
    gates = torch.zeros(3, 9, 2)
    gates[..., k] = 1.0
    ref = am.core.forward_gated(x, lengths, gates)  # both branches computed, one-hot mix
    y, _ = am(x, lengths)  # only branch k computed
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)
    r = am.last_routing
    assert (r.decisions == k).all() and float(r.sharpness()) == 1.0
    # no arbitrator: FLOPs are exactly the forced branch's, on every frame
    assert am.flops_per_frame() == am.branch_flops()[k]
    assert torch.equal(r.expected_flops, torch.full((3, 9), float(am.branch_flops()[k])))
    # streaming (batch size 1) routes every frame to the forced branch and matches forward
    s = stream(am, x[0])
    assert (s.decisions == k).all()
    torch.testing.assert_close(s.outputs, y[0], atol=1e-5, rtol=1e-4)


def test_forced_branch_backlog_and_flops_by_hand():
    torch.manual_seed(0)
    enc = RecurrentEncoder(12, 16, num_layers=1)
    fast_flops = lowrank_rnn_flops("lstm", 12, 16, 4)
    # the fast branch costs exactly 40 ms per 30 ms frame on this device
    am = AmortizedEncoder.from_recurrent(enc, fast="lowrank", rank=4, force_branch=0,
                                         frame_ms=30.0, device_flops_per_s=fast_flops * 25.0)
    assert am.flops_per_frame() == fast_flops
    x, lengths = _batch(B=2, T=4)
    lengths = torch.tensor([4, 2])
    am.eval()(x, lengths)
    r = am.last_routing
    torch.testing.assert_close(r.cost_ms[0], torch.full((4,), 40.0))
    # b_t = max(0, b_{t-1} + 40 - 30): 10, 20, 30, 40; frozen past length for the second row
    torch.testing.assert_close(r.backlog_ms, torch.tensor([[10.0, 20.0, 30.0, 40.0], [10.0, 20.0, 20.0, 20.0]]))
    torch.testing.assert_close(r.eou_latency_ms(), torch.tensor([30.0 + 40.0, 10.0 + 40.0]))


def test_force_branch_out_of_range():
    with pytest.raises(ValueError, match="force_branch"):
        AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 16, 1), force_branch=2)
    with pytest.raises(ValueError, match="force_branch"):
        AmortizedEncoder(RecurrentEncoder(12, 8, 1), RecurrentEncoder(12, 8, 1), force_branch=-1)


def test_independent_forced_branch_runs_only_that_encoder():
    torch.manual_seed(0)
    fast, slow = RecurrentEncoder(12, 8, 1), RecurrentEncoder(12, 16, 2)
    am = AmortizedEncoder(fast, slow, projection=10, force_branch=0).eval()
    x, lengths = _batch()
    y, _ = am(x, lengths)
    ref, _ = fast(x, lengths)
    mask = (torch.arange(9)[None] < lengths[:, None])[..., None]
    torch.testing.assert_close(y, am.core.projections[0](ref) * mask)
    assert am.flops_per_frame() == am.branch_flops()[0] < am.branch_flops()[1]  # no arbitrator counted


def test_set_device_changes_costs_and_decisions_input():
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 16, 2), fast="lowrank", rank=4).eval()
    slow = am.branch_flops()[1]
    x, lengths = _batch()
    am(x, lengths)
    before = am.last_routing.cost_ms.clone()
    am.set_device(slow / 0.045)  # slow branch: 45 ms per frame (rho = 1.5)
    assert am.device_flops_per_s == pytest.approx(slow / 0.045)
    assert am.device_model.load_factor(slow) == pytest.approx(1.5)
    am(x, lengths)
    r = am.last_routing
    arb = am.arbitrator.flops_per_frame()
    expected = (arb + r.gates @ torch.tensor(am.branch_flops(), dtype=torch.float32)) * (1000.0 / am.device_flops_per_s)
    torch.testing.assert_close(r.cost_ms, expected)
    assert float(r.cost_ms.max()) > float(before.max()) * 10  # a much slower device than 650 MFLOP/s
    for bad in (0.0, float("inf"), float("nan")):  # inf: every frame would cost nothing
        with pytest.raises(ValueError, match="flops_per_s"):
            am.set_device(bad)


def test_stream_forces_a_branch_of_a_non_streaming_amortized_encoder_too():
    from lightning_amortized.nn import ConformerEncoderAdapter

    torch.manual_seed(0)
    fast = ConformerEncoderAdapter(16, d_model=8, num_layers=1, nhead=2, d_ffn=16, kernel_size=3)
    slow = ConformerEncoderAdapter(16, d_model=32, num_layers=2, nhead=2, d_ffn=64, kernel_size=3)
    enc = AmortizedEncoder(fast, slow, projection=16)
    x = torch.randn(20, 16)
    assert len(set(stream(enc, x).decisions.tolist())) == 2  # routed: both branches
    for k in (0, 1):
        assert stream(enc, x, force_branch=k).decisions.tolist() == [k] * 20
    assert enc.force_branch is None and len(set(stream(enc, x).decisions.tolist())) == 2  # restored


def test_stream_refuses_a_branch_that_is_not_one():
    from lightning_amortized.nn import ConformerEncoderAdapter

    torch.manual_seed(0)
    fast = ConformerEncoderAdapter(16, d_model=8, num_layers=1, nhead=2, d_ffn=16, kernel_size=3)
    slow = ConformerEncoderAdapter(16, d_model=32, num_layers=2, nhead=2, d_ffn=64, kernel_size=3)
    x = torch.randn(20, 16)
    for enc in (AmortizedEncoder(fast, slow, projection=16), AmortizedEncoder.from_recurrent(RecurrentEncoder(16, 8, 1))):
        for bad in (-1, 2, True, 1.0):  # the same refusal on the non-streaming and the streaming path
            with pytest.raises(ValueError, match=r"`force_branch` to be None or in \[0, 2\)"):
                stream(enc, x, frame_ms=30.0, force_branch=bad)
    with pytest.raises(ValueError, match="needs an AmortizedEncoder"):
        stream(fast, x, frame_ms=30.0, force_branch=0)
