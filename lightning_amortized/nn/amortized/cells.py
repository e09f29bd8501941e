"""LSTM and GRU cell updates from gate pre-activations (PyTorch's gate order and equations).

Shared by every branch of the shared-state amortized encoder and by the device export
(:mod:`lightning_amortized.export`), so that all of them compute one recurrence.
Inputs may carry leading dimensions (e.g. ``(K, B, 4H)`` for ``K`` branches at once).

Example:
    >>> h, c = lstm_cell(torch.zeros(2, 4 * 3), torch.ones(2, 3))
    >>> h.shape, round(float(c[0, 0]), 4)  # sigmoid(0) * 1 + sigmoid(0) * tanh(0)
    (torch.Size([2, 3]), 0.5)
"""

from __future__ import annotations

import torch

__all__ = ["lstm_cell", "gru_cell"]


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, c)`` after one LSTM step.

    Args:
        gates: ``(..., 4H)`` pre-activations ``W_ih x + b_ih + W_hh h + b_hh`` in the
            order input, forget, cell, output.
        c: ``(..., H)`` cell state before the step (broadcast against ``gates``).

    Returns:
        ``h (..., H)`` and ``c (..., H)``.
    """
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``h`` after one GRU step.

    Args:
        gi: ``(..., 3H)`` input part ``W_ih x + b_ih`` (reset, update, new).
        gh: ``(..., 3H)`` hidden part ``W_hh h + b_hh``.
        h: ``(..., H)`` state before the step.

    Returns:
        ``(..., H)`` new state.
    """
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)
