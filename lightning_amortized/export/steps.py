"""The single-frame step modules that are traced to ONNX, and what a model's export consists of."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


__all__ = ["ExportError"]

_PREFIX = "m."  # the wrapper modules hold the ASRModule as `m`


class ExportError(ValueError):
    """The model cannot be exported (unsupported encoder or loss); nothing was written."""


def _recurrent_step(enc: nn.Module, x: torch.Tensor, states: list[torch.Tensor]) -> tuple[torch.Tensor, list]:
    """One frame of a :class:`RecurrentEncoder` written as matrix products (``x (1, F)``, states ``(L, 1, H)``)."""
    from lightning_amortized.nn.amortized.cells import gru_cell as _gru_cell
    from lightning_amortized.nn.amortized.cells import lstm_cell as _lstm_cell

    rnn = enc.torch_rnn
    lstm = enc.rnn_type == "lstm"
    hs = states[0]
    cs = states[1] if lstm else None
    inp = x
    new_h, new_c = [], []
    for layer in range(enc.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b_ih = getattr(rnn, f"bias_ih_l{layer}") if rnn.bias else None
        b_hh = getattr(rnn, f"bias_hh_l{layer}") if rnn.bias else None
        gi = F.linear(inp, w_ih, b_ih)
        gh = F.linear(hs[layer], w_hh, b_hh)
        if lstm:
            h, c = _lstm_cell(gi + gh, cs[layer])
            new_c.append(c)
        else:
            h = _gru_cell(gi, gh, hs[layer])
        new_h.append(h)
        inp = h
    y = inp if enc.proj is None else enc.proj(inp)
    out = [torch.stack(new_h)] + ([torch.stack(new_c)] if lstm else [])
    return y, out


class _BranchStep(nn.Module):
    """``(x, *states) -> (y, logits, *states_out)`` for one branch of the model ``m`` plus its CTC head."""

    def __init__(self, model: nn.Module, mode: str, branch: int) -> None:
        super().__init__()
        self.m = model
        self.mode, self.branch = mode, branch

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.m.encoder
        if self.mode == "recurrent":
            y, out = _recurrent_step(enc, x, list(states))
        elif self.mode == "shared":  # the eager code path of SharedStateAmortizedEncoder.step (B == 1)
            core = enc.core
            state = (states[0], states[1]) if core.rnn_type == "lstm" else states[0]
            choice = torch.full((1,), self.branch, dtype=torch.long)
            y, new = core.step(x, state, choice)
            out = list(new) if core.rnn_type == "lstm" else [new]
        else:  # independent branches: this branch's own state, its projection
            core = enc.core
            y, out = _recurrent_step(core.branches[self.branch], x, list(states))
            y = core.projections[self.branch](y)
        return (y, self.m.head(y), *out)


class _ArbitratorStep(nn.Module):
    """``(x, backlog_ms, prev_gate[, load]) -> logits``: :meth:`Arbitrator.step` of ``m.encoder.arbitrator``.

    ``load`` (``log rho`` of the device, ``(1,)``) is an input of load-aware arbitrators only.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(
        self, x: torch.Tensor, backlog_ms: torch.Tensor, prev_gate: torch.Tensor, load: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.m.encoder.arbitrator.step(x, backlog_ms, prev_gate, load)


def _plan(model: nn.Module) -> dict[str, Any]:
    """What to export for ``model``: kind, branches (name, mode, index, flops, state names), arbitrator."""
    from lightning_amortized.nn.amortized import AmortizedEncoder, SharedStateAmortizedEncoder
    from lightning_amortized.nn.amortized.independent import _IndependentCore
    from lightning_amortized.nn.encoders import RecurrentEncoder

    if getattr(model, "loss_kind", "ctc") != "ctc":
        raise ExportError(
            f"Only CTC models export to the device runtime (greedy CTC decoding); this model uses "
            f"loss={model.loss_kind!r}. Train with loss='ctc'."
        )
    enc = model.encoder

    def states(rnn_type: str, prefix: str = "") -> list[str]:
        return [f"{prefix}h", f"{prefix}c"] if rnn_type == "lstm" else [f"{prefix}h"]

    if isinstance(enc, RecurrentEncoder):
        return {
            "kind": "single",
            "routing": None,
            "branches": [{"name": "step", "mode": "recurrent", "index": 0, "flops": int(enc.flops_per_frame()),
                          "states": states(enc.rnn_type), "encoder": enc}],
            "device_flops_per_s": None,
        }
    if isinstance(enc, SharedStateAmortizedEncoder):
        core = enc.core
        flops = enc.branch_flops()
        names = ["fast", "slow"]
        branches = [{"name": names[k], "mode": "shared", "index": k, "flops": int(flops[k]),
                     "states": states(core.rnn_type), "encoder": core.encoder} for k in range(2)]
        routing = "shared_state"
    elif isinstance(enc, AmortizedEncoder) and isinstance(enc.core, _IndependentCore):
        core = enc.core
        bad = [type(b).__name__ for b in core.branches if not isinstance(b, RecurrentEncoder)]
        if bad:
            raise ExportError(
                f"Independent AmNet branches must be RecurrentEncoders to export step graphs, but got {bad}."
            )
        flops = enc.branch_flops()
        names = ["fast", "slow"] + [f"branch{k}" for k in range(2, core.num_branches)]
        branches = [{"name": names[k], "mode": "independent", "index": k, "flops": int(flops[k]),
                     "states": states(b.rnn_type, f"{names[k]}."), "encoder": b} for k, b in enumerate(core.branches)]
        routing = "independent"
    else:
        raise ExportError(
            f"Cannot export encoder {type(enc).__name__}: the device runtime supports RecurrentEncoder, "
            "SharedStateAmortizedEncoder and AmortizedEncoder over RecurrentEncoder branches (streaming LSTM/GRU)."
        )
    if enc.force_branch is not None:  # a single branch of the AmNet (fast-only, compressed single encoder)
        b = dict(branches[enc.force_branch], name="step")
        return {"kind": "single", "routing": None, "branches": [b], "device_flops_per_s": enc.device_flops_per_s}
    return {"kind": "amnet", "routing": routing, "branches": branches, "device_flops_per_s": enc.device_flops_per_s}


def _state_shape(encoder: nn.Module) -> list[int]:
    return [int(encoder.num_layers), 1, int(encoder.hidden_size)]
