"""Fast branches of the shared-state amortized encoder: one class per kind, one interface.

Every layer of a :class:`~lightning_amortized.nn.amortized.SharedStateAmortizedEncoder`
has two weight sets over one recurrent state: the slow weights (the wrapped encoder's
own, :class:`SlowLayer`) and fast weights built from them by one of

* :class:`LowRankLayer` (``"lowrank"``): LSTM ``[W_ih W_hh] = U V`` of rank ``rank``
  (one factorization, one merged bias); GRU ``W_ih`` and ``W_hh`` factorized separately;
* :class:`SparseLayer` (``"sparse"``): own ``W_ih``, ``W_hh`` with a fixed magnitude
  mask keeping a fraction ``density`` of ``[W_ih W_hh]``;
* :class:`SmallLayer` (``"small"``): own dense ``W_ih`` and a rank-``rank`` ``W_hh = U V``.

The interface (:class:`BranchLayer`) splits one step into the part that depends only on
the input (``precompute``, batched over all frames in training) and the recurrent part
(``recurrent``); ``weights()``/``stream_weights()`` give the tensors to reuse over the
frames of one forward or one stream. For an LSTM ``recurrent`` returns the gate
pre-activations ``(B, 4H)``; for a GRU the hidden part ``W_hh h + b_hh`` ``(B, 3H)``
(the input part being ``precompute``'s). For the fused LSTM training scan
(:func:`~lightning_amortized.nn.amortized.scan.lstm_scan`) ``lstm_parts`` gives the
same step as ``gates_t = P_t + h A^T`` or, factorized, ``P_t + (R_t + h A^T) U^T``,
with the input parts ``P``, ``R`` of all frames computed at once.

Example:
    >>> lstm = torch.nn.LSTM(6, 8)
    >>> layer = FAST_LAYERS["lowrank"]("lstm", lstm.weight_ih_l0, lstm.weight_hh_l0,
    ...                                lstm.bias_ih_l0, lstm.bias_hh_l0, rank=2, density=1.0)
    >>> w = layer.weights()
    >>> layer.recurrent(layer.precompute(torch.randn(3, 6), w), torch.zeros(3, 8), w).shape
    torch.Size([3, 32])
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_amortized.functional.flops import (
    hidden_lowrank_rnn_flops,
    lowrank_linear_flops,
    lowrank_rnn_flops,
    rnn_pointwise_flops,
    sparse_rnn_flops,
)
from lightning_amortized.functional.lowrank import svd_factors
from lightning_amortized.nn.amortized.cells import gru_cell, lstm_cell
from lightning_amortized.functional.selection import topk_mask

__all__ = ["BranchLayer", "SlowLayer", "LowRankLayer", "SparseLayer", "SmallLayer", "FAST_LAYERS", "FAST_KINDS"]


class BranchLayer:
    """Interface of one layer of one branch (see the module docstring).

    ``rnn_type`` (``"lstm"`` or ``"gru"``) is set by every implementation.
    """

    rnn_type: str

    def weights(self) -> dict[str, Any]:
        """Tensors computed once per ``forward`` (e.g. masks applied once, not per frame)."""
        return {}

    def stream_weights(self) -> dict[str, Any]:
        """Tensors cached for frame-by-frame inference (default: :meth:`weights`)."""
        return self.weights()

    def precompute(self, x: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        """Input part for ``x`` ``(..., I)``: ``(..., 4H)`` (LSTM, biases included) or ``(..., 3H)`` (GRU)."""
        raise NotImplementedError

    def recurrent(self, pre_t: torch.Tensor, h: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        """LSTM: gate pre-activations ``(B, 4H)``; GRU: hidden part ``(B, 3H)``, from ``pre_t`` and ``h`` ``(B, H)``."""
        raise NotImplementedError

    def step(
        self, x_t: torch.Tensor, w: dict[str, Any], h: torch.Tensor, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One frame ``x_t`` ``(B, I)`` from state ``h`` (and LSTM cell ``c``) ``(B, H)`` -> new ``(h, c)``.

        What streaming runs per layer: one input product, one recurrent product and the
        cell, with no time loop around them (``c`` is ``None`` for a GRU).
        """
        pre = self.precompute(x_t, w)
        gates = self.recurrent(pre, h, w)
        if self.rnn_type == "lstm":
            assert c is not None
            return lstm_cell(gates, c)
        return gru_cell(pre, gates, h), None

    def lstm_parts(
        self, x: torch.Tensor, w: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """LSTM only: ``(P, A, U, R)``, the gate pre-activations of all frames of ``x`` ``(..., I)`` (fused scan).

        The gates are ``P + h A^T`` (``U`` None) or ``P + (R + h A^T) U^T``: ``P``
        ``(..., 4H)`` (biases included) or a ``(4H,)`` bias, ``A`` ``(N, H)``, ``U``
        ``(4H, N)``, ``R`` ``(..., N)`` or ``None``. Equal to :meth:`recurrent` after
        :meth:`precompute` up to float rounding.
        """
        return self.precompute(x, w), *self._recurrent_factors(w), None

    def _recurrent_factors(self, w: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _finish(self, pre_t: torch.Tensor, hidden: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
        """LSTM: ``pre_t + hidden`` (biases are in ``pre_t``); GRU: ``hidden + b_hh``."""
        return pre_t + hidden if self.rnn_type == "lstm" else hidden + b_hh


def step_layers(
    layers: list[tuple[BranchLayer, dict[str, Any]]], rnn_type: str, x_t: torch.Tensor, state: Any
) -> tuple[torch.Tensor, Any]:
    """One frame ``(B, I)`` through a stack of ``(branch layer, its weights)`` -> ``(B, H)`` and the new state.

    ``state`` is ``(h, c)`` ``(L, B, H)`` each for an LSTM, ``h`` for a GRU. What a plain
    ``RecurrentEncoder`` and a one-stream amortized step run per frame.
    """
    lstm = rnn_type == "lstm"
    hs, cs = state if lstm else (state, None)
    new_h, new_c, inp = [], [], x_t
    for layer, (branch, w) in enumerate(layers):
        inp, c = branch.step(inp, w, hs[layer], cs[layer] if lstm else None)
        new_h.append(inp)
        new_c.append(c)
    h_all = torch.stack(new_h)
    return inp, ((h_all, torch.stack(new_c)) if lstm else h_all)


class SlowLayer(BranchLayer):
    """The slow branch of layer ``layer``: the wrapped ``nn.LSTM``/``nn.GRU``'s own weights (read, never copied).

    A plain object made per forward (not a submodule), so the slow weights appear once
    in the ``state_dict``, under the wrapped encoder.
    """

    def __init__(self, rnn: nn.LSTM | nn.GRU, layer: int, rnn_type: str) -> None:
        self.rnn_type = rnn_type
        self.w_ih, self.w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        if rnn.bias:
            self.b_ih, self.b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
        else:
            self.b_ih = self.b_hh = self.w_ih.new_zeros(self.w_ih.shape[0])

    def weights(self) -> dict[str, Any]:
        return {"w_hh_t": self.w_hh.t()}

    def precompute(self, x: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        return F.linear(x, self.w_ih, self.b_ih + self.b_hh if self.rnn_type == "lstm" else self.b_ih)

    def recurrent(self, pre_t: torch.Tensor, h: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        return torch.addmm(pre_t if self.rnn_type == "lstm" else self.b_hh, h, w["w_hh_t"])

    def _recurrent_factors(self, w: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.w_hh, None


class FastLayer(nn.Module, BranchLayer):
    """Base of the fast kinds: built from one layer's slow weights, owns its own parameters.

    Args:
        rnn_type: ``"lstm"`` or ``"gru"``.
        w_ih: ``(G H, I)`` slow input weights (``G`` = 4 for LSTM, 3 for GRU).
        w_hh: ``(G H, H)`` slow recurrent weights.
        b_ih: ``(G H,)`` slow input bias.
        b_hh: ``(G H,)`` slow recurrent bias.
        rank: Rank of factorized matrices (``"lowrank"``, ``"small"``).
        density: Kept fraction of weights (``"sparse"``).
    """

    kind: str = ""

    def __init__(
        self,
        rnn_type: str,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        rank: int,
        density: float,
    ) -> None:
        nn.Module.__init__(self)
        self.rnn_type = rnn_type
        self.input_size, self.hidden_size = w_ih.shape[1], w_hh.shape[1]
        self.rank = rank

    def flops(self) -> int:
        """Counted FLOPs of this layer per frame (:mod:`lightning_amortized.functional.flops`)."""
        raise NotImplementedError

    def _input_bias(self) -> torch.Tensor:
        return self.b_ih + self.b_hh if self.rnn_type == "lstm" else self.b_ih


def _copy(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


class LowRankLayer(FastLayer):
    """``"lowrank"``: truncated-SVD factors of the slow weights (LSTM: one ``U V`` of ``[W_ih W_hh]``)."""

    kind = "lowrank"

    def __init__(
        self,
        rnn_type: str,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        rank: int,
        density: float,
    ) -> None:
        super().__init__(rnn_type, w_ih, w_hh, b_ih, b_hh, rank, density)
        if rnn_type == "lstm":  # one factorization of [W_ih W_hh], one merged bias
            u, v = svd_factors(torch.cat([w_ih, w_hh], 1), rank)
            self.u = nn.Parameter(u)
            self.v_ih, self.v_hh = _copy(v[:, : self.input_size]), _copy(v[:, self.input_size :])
            self.bias = _copy(b_ih + b_hh)
        else:
            u_i, v_i = svd_factors(w_ih, rank)
            u_h, v_h = svd_factors(w_hh, rank)
            self.u_ih, self.v_ih, self.u_hh, self.v_hh = (nn.Parameter(t) for t in (u_i, v_i, u_h, v_h))
            self.b_ih, self.b_hh = _copy(b_ih), _copy(b_hh)

    def flops(self) -> int:
        # the factors' real ranks: svd_factors caps a rank above min(rows, columns) (a GRU's W_ih
        # has only input_size columns), and a count with the requested rank would be too high
        if self.rnn_type == "lstm":
            return lowrank_rnn_flops("lstm", self.input_size, self.hidden_size, int(self.u.shape[1]))
        G = 3 * self.hidden_size
        return (lowrank_linear_flops(self.input_size, G, int(self.v_ih.shape[0]))
                + lowrank_linear_flops(self.hidden_size, G, int(self.v_hh.shape[0]))
                + rnn_pointwise_flops("gru", self.hidden_size))

    def precompute(self, x: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        if self.rnn_type == "lstm":
            return F.linear(x, self.v_ih)
        return F.linear(F.linear(x, self.v_ih), self.u_ih, self.b_ih)

    def recurrent(self, pre_t: torch.Tensor, h: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        if self.rnn_type == "lstm":
            return torch.addmm(self.bias, pre_t + h @ self.v_hh.t(), self.u.t())
        return (h @ self.v_hh.t()) @ self.u_hh.t() + self.b_hh

    def lstm_parts(
        self, x: torch.Tensor, w: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.rnn_type != "lstm":
            raise NotImplementedError("`lstm_parts` is for LSTM layers")
        # as `recurrent`: U (V_ih x + V_hh h) + bias, with V_ih x of all frames at once
        return self.bias, self.v_hh, self.u, F.linear(x, self.v_ih)


def _csr_matmul(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for a CSR ``w`` (a matrix-vector product when ``x`` is one row: fastest on CPU)."""
    if x.shape[0] == 1:
        return torch.mv(w, x[0])[None]
    return (w @ x.t()).t()


class SparseLayer(FastLayer):
    """``"sparse"``: own copies of ``W_ih``, ``W_hh`` under a fixed mask of the largest ``[W_ih W_hh]`` magnitudes.

    The masks are buffers (``mask_ih``, ``mask_hh``); FLOPs count the kept entries.
    Streaming uses the masked weights in CSR form.
    """

    kind = "sparse"

    def __init__(
        self,
        rnn_type: str,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        rank: int,
        density: float,
    ) -> None:
        super().__init__(rnn_type, w_ih, w_hh, b_ih, b_hh, rank, density)
        both = torch.cat([w_ih, w_hh], 1).detach().abs()
        mask = topk_mask(both, max(1, round(density * both.numel())))
        self.register_buffer("mask_ih", mask[:, : self.input_size].clone())
        self.register_buffer("mask_hh", mask[:, self.input_size :].clone())
        self.w_ih = nn.Parameter(w_ih.detach() * self.mask_ih)
        self.w_hh = nn.Parameter(w_hh.detach() * self.mask_hh)
        self.b_ih, self.b_hh = _copy(b_ih), _copy(b_hh)

    def nonzeros(self) -> int:
        """Stored non-zero weights (kept entries of both masks)."""
        return int(self.mask_ih.sum() + self.mask_hh.sum())

    def flops(self) -> int:
        return sparse_rnn_flops(self.rnn_type, self.nonzeros(), self.hidden_size)

    def weights(self) -> dict[str, Any]:
        return {"w_ih": self.w_ih * self.mask_ih, "w_hh": self.w_hh * self.mask_hh}

    @torch.no_grad()
    def stream_weights(self) -> dict[str, Any]:
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return {
                "w_ih": (self.w_ih * self.mask_ih).to_sparse_csr(),
                "w_hh": (self.w_hh * self.mask_hh).to_sparse_csr(),
                "csr": True,
            }

    def precompute(self, x: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        if w.get("csr"):  # (B, I) frame, product over the stored non-zeros only
            return _csr_matmul(w["w_ih"], x) + self._input_bias()
        return F.linear(x, w["w_ih"], self._input_bias())

    def recurrent(self, pre_t: torch.Tensor, h: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        hidden = _csr_matmul(w["w_hh"], h) if w.get("csr") else h @ w["w_hh"].t()
        return self._finish(pre_t, hidden, self.b_hh)

    def _recurrent_factors(self, w: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if w.get("csr"):
            raise NotImplementedError("the fused scan needs the dense masked weights of `weights()`")
        return w["w_hh"], None


class SmallLayer(FastLayer):
    """``"small"``: own dense ``W_ih`` and a rank-``rank`` recurrent matrix ``W_hh = U V``."""

    kind = "small"

    def __init__(
        self,
        rnn_type: str,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        rank: int,
        density: float,
    ) -> None:
        super().__init__(rnn_type, w_ih, w_hh, b_ih, b_hh, rank, density)
        u_h, v_h = svd_factors(w_hh, rank)
        self.w_ih = _copy(w_ih)
        self.u_hh, self.v_hh = nn.Parameter(u_h), nn.Parameter(v_h)
        self.b_ih, self.b_hh = _copy(b_ih), _copy(b_hh)

    def flops(self) -> int:
        return hidden_lowrank_rnn_flops(self.rnn_type, self.input_size, self.hidden_size, self.rank)

    def precompute(self, x: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        return F.linear(x, self.w_ih, self._input_bias())

    def recurrent(self, pre_t: torch.Tensor, h: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        return self._finish(pre_t, (h @ self.v_hh.t()) @ self.u_hh.t(), self.b_hh)

    def _recurrent_factors(self, w: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.v_hh, self.u_hh


FAST_LAYERS: dict[str, type[FastLayer]] = {c.kind: c for c in (LowRankLayer, SparseLayer, SmallLayer)}
"""Fast kind name -> layer class."""

FAST_KINDS = tuple(FAST_LAYERS)
"""``("lowrank", "sparse", "small")``."""
