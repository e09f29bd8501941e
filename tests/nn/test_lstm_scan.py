"""The fused LSTM scan equals the per-frame autograd reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder
from lightning_amortized.nn.amortized.cells import lstm_cell
from lightning_amortized.nn.amortized.scan import lstm_scan


def _reference(parts, mix, h, c):
    """The scan written out frame by frame with autograd (the equations of the module docstring)."""
    ys = []
    T = parts[0][0].shape[0] if parts[0][0].dim() == 3 else parts[0][3].shape[0]
    for t in range(T):
        states = []
        for P, A, U, R in parts:
            p_t = P[t] if P.dim() == 3 else P
            if U is None:
                gates = p_t + h @ A.t()
            else:
                gates = p_t + ((0 if R is None else R[t]) + h @ A.t()) @ U.t()
            states.append(lstm_cell(gates, c))
        if mix is None:
            h, c = states[0]
        else:
            h = sum(mix[t, k] * s[0] for k, s in enumerate(states))
            c = sum(mix[t, k] * s[1] for k, s in enumerate(states))
        ys.append(h)
    return torch.stack(ys), h, c


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    T, B, H, N, R = 4, 3, 5, 7, 2

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    parts = [
        (r(T, B, 4 * H), r(4 * H, H), None, None),  # dense (slow, sparse)
        (r(4 * H), r(R, H), r(4 * H, R), r(T, B, R)),  # low rank: bias, V_hh, U, V_ih x
        (r(T, B, 4 * H), r(N, H), r(4 * H, N), None),  # small: dense input part, factorized W_hh
    ]
    mix = torch.softmax(torch.randn(T, 3, B, 1, generator=g, dtype=torch.float64), 1).requires_grad_()
    return parts, mix, r(B, H), r(B, H)


def test_scan_gradcheck_every_input():
    parts, mix, h0, c0 = _inputs(0)
    flat = [t for p in parts for t in p if t is not None]

    def run(*tensors: torch.Tensor):
        it = iter(tensors[3:])
        rebuilt = [tuple(None if t is None else next(it) for t in p) for p in parts]
        ys, h, c = lstm_scan(rebuilt, tensors[0], tensors[1], tensors[2])
        return ys, h, c

    assert torch.autograd.gradcheck(run, (mix, h0, c0, *flat))


@pytest.mark.parametrize("branches", [[0], [1], [2], [0, 1], [1, 2], [0, 1, 2]])
def test_scan_equals_reference(branches):
    parts, mix, h0, c0 = _inputs(1)
    parts = [parts[k] for k in branches]
    mix = mix[:, branches] if len(branches) > 1 else None
    leaves = [t for p in parts for t in p if t is not None] + [h0, c0] + ([mix] if mix is not None else [])
    out_f, out_r = lstm_scan(parts, mix, h0, c0), _reference(parts, mix, h0, c0)
    w = [torch.randn_like(o) for o in out_r]
    grads_f = torch.autograd.grad(sum((o * v).sum() for o, v in zip(out_f, w)), leaves)
    grads_r = torch.autograd.grad(sum((o * v).sum() for o, v in zip(out_r, w)), leaves)
    for a, b in zip(out_f, out_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("only", [None, 0, 1])
@pytest.mark.parametrize("kind", ["lowrank", "sparse", "small"])
def test_encoder_fused_equals_per_frame_loop(kind, only):
    """Outputs, every parameter's gradient and the gates' gradient of the whole encoder, fused vs reference."""
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(6, 8, num_layers=3), fast=kind, rank=3).double()
    x, n = torch.randn(3, 7, 6, dtype=torch.float64), torch.tensor([7, 5, 2])
    gates = torch.softmax(torch.randn(3, 7, 2, dtype=torch.float64), -1).requires_grad_()
    weight = torch.randn(3, 7, 8, dtype=torch.float64)
    results = []
    for fused in (True, False):
        am.core.fused_lstm_scan = fused
        am.zero_grad()
        gates.grad = None
        y = am.core.forward_gated(x, n, gates, only=only)
        (y * weight).sum().backward()
        grads = {k: p.grad.clone() for k, p in am.named_parameters() if p.grad is not None}
        results.append((y.detach(), grads, gates.grad))
    (y_f, g_f, m_f), (y_r, g_r, m_r) = results
    torch.testing.assert_close(y_f, y_r, rtol=0, atol=1e-12)
    assert sorted(g_f) == sorted(g_r) and len(g_f) >= 12  # the same parameters get gradients
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=0, atol=1e-12, msg=name)
    if only is None:
        torch.testing.assert_close(m_f, m_r, rtol=0, atol=1e-12)
    else:
        assert m_f is None and m_r is None  # one-hot gates: the branch mix is not differentiated


def test_float32_training_step_matches_reference():
    """In float32 (the training dtype) the two paths agree to float rounding, routing losses included."""
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(10, 16, num_layers=2), fast="lowrank", rank=4)
    am.arbitrator.gumbel_noise = False
    x, n = torch.randn(4, 12, 10), torch.tensor([12, 9, 12, 3])
    out = []
    for fused in (True, False):
        am.core.fused_lstm_scan = fused
        am.zero_grad()
        y, _ = am(x, n)
        (y.pow(2).mean() + am.routing_losses(lambda_cost=0.3, lambda_amr=1.0)["total"]).backward()
        out.append((y.detach(), [p.grad.clone() for p in am.parameters()]))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_one_branch_needs_no_mix():
    parts, _, h0, c0 = _inputs(2)
    with pytest.raises(ValueError, match="one branch without `mix`"):
        lstm_scan(parts[:2], None, h0, c0)


def test_autocast_runs_the_reference_loop(monkeypatch):
    """Under autocast the per-frame loop runs (the fused scan writes into buffers of one dtype)."""
    from lightning_amortized.nn.amortized import scan as scan_module

    calls = []
    original = scan_module.LSTMScan.apply
    monkeypatch.setattr(scan_module.LSTMScan, "apply", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(6, 8, num_layers=2), fast="lowrank", rank=2)
    x, n = torch.randn(2, 5, 6), torch.tensor([5, 4])
    y32, _ = am(x, n)
    assert len(calls) == 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, _ = am(x, n)
    assert len(calls) == 2  # no more fused scans
    torch.testing.assert_close(y16.float(), y32, atol=0.05, rtol=0)  # bfloat16 products
    y16.float().sum().backward()
