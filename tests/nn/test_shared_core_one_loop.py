"""The shared-state core has one time loop (``scan``): training forward and streaming step both run it."""

from __future__ import annotations

import pytest
import torch

from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder
from lightning_amortized.nn.amortized.shared import _SharedRecurrentCore


@pytest.mark.parametrize("kind", ["lowrank", "sparse", "small"])
def test_forward_and_step_share_the_scan(kind, monkeypatch):
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(6, 8, num_layers=3, rnn_type="gru"), fast=kind, rank=2).eval()
    frames: list[int] = []
    original = _SharedRecurrentCore.scan

    def counting(self, branches, weights, pre, h, c, mix):  # noqa: ANN001, ANN202
        frames.append(len(pre[0]))
        return original(self, branches, weights, pre, h, c, mix)

    monkeypatch.setattr(_SharedRecurrentCore, "scan", counting)
    x, n = torch.randn(2, 5, 6), torch.tensor([5, 3])
    with torch.no_grad():
        y, _ = am(x, n)
    assert frames == [5, 5, 5]  # one scan per layer over all frames
    frames.clear()
    state, ys = am.init_state(2), []
    with torch.no_grad():
        for t in range(5):
            y_t, state = am.step(x[:, t], state)
            ys.append(y_t)
    assert frames == [1] * 15  # one scan per layer per frame
    mask = torch.arange(5)[None, :, None] < n[:, None, None]
    torch.testing.assert_close(torch.stack(ys, 1) * mask, y, atol=1e-5, rtol=0)
