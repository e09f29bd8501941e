"""The shared-state core has one time loop (``scan``): training forward and streaming step both run it."""

from __future__ import annotations

import pytest
import torch

from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder
from lightning_amortized.nn.amortized import scan as scan_module
from lightning_amortized.nn.amortized.shared import _SharedRecurrentCore


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
@pytest.mark.parametrize("kind", ["lowrank", "sparse", "small"])
def test_forward_and_step_share_the_scan(kind, rnn_type, monkeypatch):
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(
        RecurrentEncoder(6, 8, num_layers=3, rnn_type=rnn_type), fast=kind, rank=2
    ).eval()
    frames: list[int] = []
    fused: list[int] = []
    original, original_fused = _SharedRecurrentCore.scan, scan_module.LSTMScan.apply

    def counting(self, branches, weights, inp, h, c, mix):
        frames.append(len(inp))
        return original(self, branches, weights, inp, h, c, mix)

    def counting_fused(*args):
        fused.append(args[1])  # T
        return original_fused(*args)

    monkeypatch.setattr(_SharedRecurrentCore, "scan", counting)
    monkeypatch.setattr(scan_module.LSTMScan, "apply", counting_fused)
    x, n = torch.randn(2, 5, 6), torch.tensor([5, 3])
    with torch.no_grad():
        y, _ = am(x, n)
    assert frames == [5, 5, 5]  # one scan per layer over all frames
    assert fused == ([5, 5, 5] if rnn_type == "lstm" else [])  # LSTM layers run the fused scan
    frames.clear()
    fused.clear()
    state, ys = am.init_state(2), []
    with torch.no_grad():
        for t in range(5):
            y_t, state = am.step(x[:, t], state)
            ys.append(y_t)
    assert frames == [1] * 15  # one scan per layer per frame
    assert fused == []  # streaming steps run the reference loop (CSR weights, one branch)
    mask = torch.arange(5)[None, :, None] < n[:, None, None]
    torch.testing.assert_close(torch.stack(ys, 1) * mask, y, atol=1e-5, rtol=0)
