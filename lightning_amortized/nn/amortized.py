"""Amortized encoders: branches of different cost and an arbitrator choosing one per frame.

Two routing modes (see ``docs/amortized.md``):

* **Shared-state** (:class:`SharedStateAmortizedEncoder`, built by
  :meth:`AmortizedEncoder.from_recurrent`): one LSTM/GRU state, two weight sets per
  layer. Branch 0 (fast) is a low-rank, sparse or "small" version of branch 1 (slow,
  the original weights). The gate ``g_t`` picks the weights that update the state::

      h_t = g_t * cell_slow(x_t, h_{t-1}) + (1 - g_t) * cell_fast(x_t, h_{t-1})

* **Independent** (:class:`AmortizedEncoder`): any encoders; each keeps its own state
  and advances only on frames routed to it (soft gates blend new and old state). The
  output at a frame is the chosen encoder's output projected to a common size.
  Non-streaming encoders are mixed on full-sequence outputs.

In both modes the arbitrator decisions of a batch are computed first (they depend only
on input frames, backlog and the previous decision), then the branches run with known
gates. After ``forward`` the routing of the batch is in :attr:`AmortizedEncoder.last_routing`
and :meth:`AmortizedEncoder.routing_losses` gives the cost and amortization losses.

Example:
    >>> from lightning_amortized.nn.encoders import RecurrentEncoder
    >>> enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(40, 32, num_layers=2), fast="lowrank", rank=8)
    >>> y, n = enc(torch.randn(2, 10, 40), torch.tensor([10, 6]))
    >>> y.shape, enc.last_routing.gates.shape
    (torch.Size([2, 10, 32]), torch.Size([2, 10, 2]))
    >>> sorted(enc.routing_losses(lambda_cost=0.1, lambda_amr=1.0))
    ['amortization', 'cost', 'total']
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_amortized.functional.backlog import (
    DEFAULT_DEVICE_FLOPS_PER_S,
    SimulatedDevice,
    backlog,
    backlog_step,
    eou_latency,
)
from lightning_amortized.functional.flops import (
    gru_flops,
    hidden_lowrank_rnn_flops,
    linear_flops,
    lowrank_rnn_flops,
    lstm_flops,
    sparse_rnn_flops,
)
from lightning_amortized.functional.losses import amortization_loss, expected_cost_penalty
from lightning_amortized.nn.arbitrator import Arbitrator
from lightning_amortized.nn.encoders import RecurrentEncoder, lengths_to_mask

__all__ = ["AmortizedEncoder", "SharedStateAmortizedEncoder", "RoutingInfo", "FAST_KINDS"]

FAST_KINDS = ("lowrank", "sparse", "small")


@dataclass
class RoutingInfo:
    """Routing of one batch, as computed by the last ``forward``.

    Attributes:
        logits: ``(B, T, K)`` arbitrator logits.
        gates: ``(B, T, K)`` gate values the branches were mixed with: relaxed
            (Gumbel-softmax) in training, one-hot at eval. Differentiable.
        decisions: ``(B, T)`` int64, ``gates.argmax(-1)`` (the branch that "took" the frame).
        expected_flops: ``(B, T)`` ``arbitrator + gates @ branch_flops`` (differentiable).
        cost_ms: ``(B, T)`` the same on the simulated device, in ms.
        backlog_ms: ``(B, T)`` backlog after each frame (differentiable, frozen past length).
        lengths: ``(B,)`` valid frames.
        branch_flops: FLOPs per frame of every branch (arbitrator excluded).
        slow_index: Index of the most expensive branch.
        frame_ms: Audio per frame in ms.
    """

    logits: torch.Tensor
    gates: torch.Tensor
    decisions: torch.Tensor
    expected_flops: torch.Tensor
    cost_ms: torch.Tensor
    backlog_ms: torch.Tensor
    lengths: torch.Tensor
    branch_flops: tuple[int, ...]
    slow_index: int
    frame_ms: float

    @property
    def p_slow(self) -> torch.Tensor:
        """``(B, T)`` gate of the slow branch."""
        return self.gates[..., self.slow_index]

    @property
    def probs(self) -> torch.Tensor:
        """``(B, T, K)`` noise-free ``softmax(logits)``."""
        return torch.softmax(self.logits, dim=-1)

    @property
    def mask(self) -> torch.Tensor:
        """``(B, T)`` bool, True on valid frames."""
        return lengths_to_mask(self.lengths.to(self.gates.device), self.gates.shape[1])

    def sharpness(self) -> torch.Tensor:
        """Mean over valid frames of ``max_k gates`` (1.0 = hard decisions)."""
        m = self.mask
        return self.gates.detach().max(-1).values[m].mean()

    def slow_share(self) -> torch.Tensor:
        """Fraction of valid frames whose decision is the slow branch."""
        return (self.decisions[self.mask] == self.slow_index).float().mean()

    def eou_latency_ms(self) -> torch.Tensor:
        """``(B,)`` simulated end-of-utterance latency (ms) of this routing."""
        return eou_latency(self.cost_ms.detach(), self.frame_ms, self.lengths.to(self.cost_ms.device))


# -- shared-state recurrent core --------------------------------------------------------------


def _svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``U (O x r)``, ``V (r x I)`` with ``U V`` the best rank-``r`` approximation of ``w``."""
    u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w.dtype), (root[:, None] * vh[:rank]).to(w.dtype)


def _lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


def _csr_matmul(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for a CSR ``w`` (a matrix-vector product when ``x`` is one row: fastest on CPU)."""
    if x.shape[0] == 1:
        return torch.mv(w, x[0])[None]
    return (w @ x.t()).t()


class _FastLayer(nn.Module):
    """Fast weights of one recurrent layer (see :class:`SharedStateAmortizedEncoder` for the kinds).

    ``precompute(x)`` gives the input part for all frames; ``recurrent(pre_t, h)`` the
    gate pre-activations (LSTM: ``(B, 4H)``) or the hidden part (GRU: ``(B, 3H)``, the
    input part being ``pre_t``).
    """

    def __init__(
        self,
        kind: str,
        rnn_type: str,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        rank: int,
        density: float,
    ) -> None:
        super().__init__()
        self.kind, self.rnn_type = kind, rnn_type
        self.input_size, self.hidden_size = w_ih.shape[1], w_hh.shape[1]
        self.rank = rank
        lstm = rnn_type == "lstm"
        P = nn.Parameter
        if kind == "lowrank":
            if lstm:  # one factorization of [W_ih W_hh]
                u, v = _svd_factors(torch.cat([w_ih, w_hh], 1), rank)
                self.u = P(u)
                self.v_ih, self.v_hh = P(v[:, : self.input_size].clone()), P(v[:, self.input_size :].clone())
                self.bias = P((b_ih + b_hh).detach().clone())
            else:
                u_i, v_i = _svd_factors(w_ih, rank)
                u_h, v_h = _svd_factors(w_hh, rank)
                self.u_ih, self.v_ih, self.u_hh, self.v_hh = P(u_i), P(v_i), P(u_h), P(v_h)
                self.b_ih, self.b_hh = P(b_ih.detach().clone()), P(b_hh.detach().clone())
        elif kind == "sparse":
            both = torch.cat([w_ih, w_hh], 1).detach().abs()
            keep = max(1, int(round(density * both.numel())))
            threshold = both.flatten().kthvalue(both.numel() - keep + 1).values
            mask = both >= threshold
            self.register_buffer("mask_ih", mask[:, : self.input_size].clone())
            self.register_buffer("mask_hh", mask[:, self.input_size :].clone())
            self.w_ih = P(w_ih.detach() * self.mask_ih)
            self.w_hh = P(w_hh.detach() * self.mask_hh)
            self.b_ih, self.b_hh = P(b_ih.detach().clone()), P(b_hh.detach().clone())
        else:  # "small": dense input weights, rank-r recurrent weights
            u_h, v_h = _svd_factors(w_hh, rank)
            self.w_ih = P(w_ih.detach().clone())
            self.u_hh, self.v_hh = P(u_h), P(v_h)
            self.b_ih, self.b_hh = P(b_ih.detach().clone()), P(b_hh.detach().clone())

    def nonzeros(self) -> int:
        """Stored non-zero weights of a sparse layer."""
        return int(self.mask_ih.sum() + self.mask_hh.sum())

    def flops(self) -> int:
        if self.kind == "lowrank":
            return lowrank_rnn_flops(self.rnn_type, self.input_size, self.hidden_size, self.rank)
        if self.kind == "sparse":
            return sparse_rnn_flops(self.rnn_type, self.nonzeros(), self.hidden_size)
        return hidden_lowrank_rnn_flops(self.rnn_type, self.input_size, self.hidden_size, self.rank)

    def weights(self) -> dict[str, torch.Tensor]:
        """Effective tensors for one forward (masks applied once, not per frame)."""
        if self.kind == "sparse":
            return {"w_ih": self.w_ih * self.mask_ih, "w_hh": self.w_hh * self.mask_hh}
        return {}

    @torch.no_grad()
    def stream_weights(self) -> dict[str, Any]:
        """Tensors for frame-by-frame inference: a sparse layer's masked weights in CSR form."""
        if self.kind != "sparse":
            return {}
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return {
                "w_ih": (self.w_ih * self.mask_ih).to_sparse_csr(),
                "w_hh": (self.w_hh * self.mask_hh).to_sparse_csr(),
                "csr": True,
            }

    def precompute(self, x: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
        lstm = self.rnn_type == "lstm"
        if w.get("csr"):  # (B, I) frame, sparse product over stored non-zeros only
            return _csr_matmul(w["w_ih"], x) + (self.b_ih + self.b_hh if lstm else self.b_ih)
        if self.kind == "lowrank":
            if lstm:
                return F.linear(x, self.v_ih)
            return F.linear(F.linear(x, self.v_ih), self.u_ih, self.b_ih)
        w_ih = w["w_ih"] if self.kind == "sparse" else self.w_ih
        bias = self.b_ih + self.b_hh if lstm else self.b_ih
        return F.linear(x, w_ih, bias)

    def recurrent(self, pre_t: torch.Tensor, h: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        lstm = self.rnn_type == "lstm"
        if self.kind == "lowrank" and lstm:
            return torch.addmm(self.bias, pre_t + h @ self.v_hh.t(), self.u.t())
        if w.get("csr"):
            hid = _csr_matmul(w["w_hh"], h)
        elif self.kind == "sparse":
            hid = h @ w["w_hh"].t()
        else:  # low-rank recurrent product
            hid = (h @ self.v_hh.t()) @ self.u_hh.t()
        if lstm:
            return pre_t + hid
        return hid + self.b_hh


class _SharedRecurrentCore(nn.Module):
    """Shared-state branches over one :class:`RecurrentEncoder`: branch 0 fast, branch 1 slow."""

    num_branches = 2

    def __init__(self, encoder: RecurrentEncoder, fast: str, rank: int | None, density: float) -> None:
        super().__init__()
        if not isinstance(encoder, RecurrentEncoder):
            raise TypeError(f"Expected argument `encoder` to be a RecurrentEncoder, but got {type(encoder).__name__}.")
        if fast not in FAST_KINDS:
            raise ValueError(f"Expected argument `fast` to be one of {FAST_KINDS}, but got {fast!r}.")
        H, L = encoder.hidden_size, encoder.num_layers
        rank = max(1, H // 4) if rank is None else int(rank)
        if fast in ("lowrank", "small") and not 1 <= rank <= H:
            raise ValueError(f"Expected argument `rank` to be in [1, {H}] (hidden size), but got {rank}.")
        if fast == "sparse" and not 0.0 < density <= 1.0:
            raise ValueError(f"Expected argument `density` to be in (0, 1], but got {density}.")
        self.encoder = encoder
        self.rnn_type, self.kind, self.rank, self.density = encoder.rnn_type, fast, rank, density
        self.input_size, self.hidden_size, self.num_layers = encoder.input_size, H, L
        self.output_size = encoder.output_size
        rnn = encoder.torch_rnn
        fast_layers = []
        for layer in range(L):
            w_ih, w_hh, b_ih, b_hh = self._slow_weights(layer)
            fast_layers.append(_FastLayer(fast, self.rnn_type, w_ih, w_hh, b_ih, b_hh, rank, density))
        self.fast = nn.ModuleList(fast_layers)
        self._dropout = float(rnn.dropout)
        self._stream_cache: list[dict[str, Any]] | None = None

    # slow weights are read from the wrapped encoder each time (shared, never copied)
    def _slow_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rnn = self.encoder.torch_rnn
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        if rnn.bias:
            b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
        else:
            b_ih = b_hh = w_ih.new_zeros(w_ih.shape[0])
        return w_ih, w_hh, b_ih, b_hh

    def _slow_precompute(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        w_ih, _, b_ih, b_hh = self._slow_weights(layer)
        return F.linear(x, w_ih, b_ih + b_hh if self.rnn_type == "lstm" else b_ih)

    def _slow_recurrent(self, layer: int, pre_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        _, w_hh, _, b_hh = self._slow_weights(layer)
        if self.rnn_type == "lstm":
            return torch.addmm(pre_t, h, w_hh.t())
        return torch.addmm(b_hh, h, w_hh.t())

    def branch_flops(self) -> list[int]:
        """FLOPs per frame of ``[fast, slow]`` (the encoder's projection counted in both)."""
        proj = self.encoder.proj
        extra = linear_flops(proj.in_features, proj.out_features) if proj is not None else 0
        count = lstm_flops if self.rnn_type == "lstm" else gru_flops
        slow = count(self.input_size, self.hidden_size, self.num_layers, False, self.encoder.torch_rnn.bias)
        return [sum(f.flops() for f in self.fast) + extra, slow + extra]

    def forward_gated(
        self, x: torch.Tensor, lengths: torch.Tensor, gates: torch.Tensor, only: int | None = None
    ) -> torch.Tensor:
        """Encode ``(B, T, F)`` with gates ``(B, T, 2)`` (layer-outer, time-inner).

        ``only=k``: the gates are one-hot on branch ``k`` everywhere; only that branch computes.
        """
        B, T, _ = x.shape
        lstm = self.rnn_type == "lstm"
        if only is not None:
            return self._forward_one(x, lengths, only)
        # unbind (not indexing) in time loops: the backward of T selects would be O(T^2)
        w = gates.permute(1, 2, 0).unsqueeze(-1).unbind(0)  # T x (2, B, 1)
        inp = x
        for layer in range(self.num_layers):
            fast = self.fast[layer]
            fw = fast.weights()
            pre_s = self._slow_precompute(layer, inp).unbind(1)  # T x (B, G)
            pre_f = fast.precompute(inp, fw).unbind(1)
            _, w_hh, _, b_hh = self._slow_weights(layer)
            w_hh_t = w_hh.t()
            h = x.new_zeros(B, self.hidden_size)
            c = x.new_zeros(B, self.hidden_size)
            outs = []
            for t in range(T):
                gf = fast.recurrent(pre_f[t], h, fw)
                if lstm:
                    gs = torch.addmm(pre_s[t], h, w_hh_t)
                    h2, c2 = _lstm_cell(torch.stack([gf, gs]), c)
                    c = (w[t] * c2).sum(0)
                else:
                    gs = torch.addmm(b_hh, h, w_hh_t)
                    h2 = _gru_cell(torch.stack([pre_f[t], pre_s[t]]), torch.stack([gf, gs]), h)
                h = (w[t] * h2).sum(0)
                outs.append(h)
            inp = self._layer_output(outs, x, layer)
        return self._encoder_output(inp, lengths, T)

    def _layer_output(self, outs: list[torch.Tensor], x: torch.Tensor, layer: int) -> torch.Tensor:
        """Stack a layer's per-frame states ``(B, H)`` into ``(B, T, H)``, with dropout between layers."""
        inp = torch.stack(outs, 1) if outs else x.new_zeros(x.shape[0], 0, self.hidden_size)
        if self._dropout > 0 and self.training and layer < self.num_layers - 1:
            inp = F.dropout(inp, self._dropout, True)
        return inp

    def _encoder_output(self, inp: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
        """Zero the padding and apply the wrapped encoder's projection, if any."""
        y = inp * lengths_to_mask(lengths.to(inp.device), T)[..., None].to(inp.dtype)
        if self.encoder.proj is not None:
            y = self.encoder.proj(y)
        return y

    def _forward_one(self, x: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
        """:meth:`forward_gated` with every gate one-hot on branch ``k`` (the other branch skipped)."""
        B, T, _ = x.shape
        inp = x
        for layer in range(self.num_layers):
            if k == 1:
                _, w_hh, _, b_hh = self._slow_weights(layer)
                pre = self._slow_precompute(layer, inp).unbind(1)
                w_hh_t = w_hh.t()
            else:
                fast = self.fast[layer]
                fw = fast.weights()
                pre = fast.precompute(inp, fw).unbind(1)
            h = x.new_zeros(B, self.hidden_size)
            c = x.new_zeros(B, self.hidden_size)
            outs = []
            for t in range(T):
                if k == 1:
                    g = torch.addmm(pre[t] if self.rnn_type == "lstm" else b_hh, h, w_hh_t)
                else:
                    g = fast.recurrent(pre[t], h, fw)
                if self.rnn_type == "lstm":
                    h, c = _lstm_cell(g, c)
                else:
                    h = _gru_cell(pre[t], g, h)
                outs.append(h)
            inp = self._layer_output(outs, x, layer)
        return self._encoder_output(inp, lengths, T)

    def init_state(self, batch_size: int) -> Any:
        return self.encoder.init_state(batch_size)

    def begin_streaming(self) -> None:
        """Cache per-layer inference tensors (CSR for sparse layers) until :meth:`end_streaming`."""
        self._stream_cache = [f.stream_weights() for f in self.fast]

    def end_streaming(self) -> None:
        self._stream_cache = None

    def step(self, x_t: torch.Tensor, state: Any, choice: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One frame with hard choices ``(B,)``; with ``B == 1`` only the chosen branch computes."""
        cache = self._stream_cache
        lstm = self.rnn_type == "lstm"
        hs, cs = (state if lstm else (state, None))
        if x_t.shape[0] == 1:
            branches = [int(choice[0])]
        else:
            branches = [0, 1]
            w = F.one_hot(choice, 2).t().to(x_t.dtype)[..., None]  # (2, B, 1)
        inp = x_t
        new_h, new_c = [], []
        for layer in range(self.num_layers):
            h = hs[layer]
            c = cs[layer] if lstm else None
            hh, cc = [], []
            for k in branches:
                if k == 1:
                    pre = self._slow_precompute(layer, inp)
                    g = self._slow_recurrent(layer, pre, h)
                else:
                    fast = self.fast[layer]
                    fw = cache[layer] if cache is not None else fast.weights()
                    pre = fast.precompute(inp, fw)
                    g = fast.recurrent(pre, h, fw)
                if lstm:
                    h_k, c_k = _lstm_cell(g, c)
                    cc.append(c_k)
                else:
                    h_k = _gru_cell(pre, g, h)
                hh.append(h_k)
            if len(branches) == 1:
                h = hh[0]
                c = cc[0] if lstm else None
            else:
                h = (w * torch.stack(hh)).sum(0)
                c = (w * torch.stack(cc)).sum(0) if lstm else None
            new_h.append(h)
            new_c.append(c)
            inp = h
        y = inp if self.encoder.proj is None else self.encoder.proj(inp)
        hs = torch.stack(new_h)
        return y, ((hs, torch.stack(new_c)) if lstm else hs)


# -- independent-encoders core ----------------------------------------------------------------


def _tree_map(fn: Callable[..., torch.Tensor], *trees: Any) -> Any:
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return fn(*trees)
    if isinstance(first, (tuple, list)):
        return type(first)(_tree_map(fn, *items) for items in zip(*trees))
    if isinstance(first, dict):
        return {k: _tree_map(fn, *(t[k] for t in trees)) for k in first}
    if first is None:
        return None
    raise TypeError(f"Cannot blend encoder state of type {type(first).__name__}; use tensors, tuples, lists or dicts.")



def _can_stream(encoder: nn.Module) -> bool:
    """Whether ``encoder`` follows the streaming contract (``init_state`` and ``step``)."""
    return callable(getattr(encoder, "step", None)) and callable(getattr(encoder, "init_state", None))

def _batch_dims(encoder: nn.Module, batch_size: int) -> Any:
    """Which dimension of every state tensor is the batch (found by comparing two batch sizes)."""
    a, b = encoder.init_state(2), encoder.init_state(3)

    def find(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dims = [i for i, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q]
        return torch.tensor(dims[0] if dims else -1)

    return _tree_map(find, a, b)


def _blend(new: Any, old: Any, g: torch.Tensor, dims: Any) -> Any:
    """``g * new + (1 - g) * old`` with ``g`` ``(B,)`` broadcast along each tensor's batch dim."""

    def one(n: torch.Tensor, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        d = int(d)
        if d < 0:  # no batch dimension: keep the new value
            return n
        shape = [1] * n.dim()
        shape[d] = g.shape[0]
        gg = g.reshape(shape).to(n.dtype)
        return gg * n + (1 - gg) * o

    return _tree_map(one, new, old, dims)


class _IndependentCore(nn.Module):
    """Independent encoders ``[fast, slow, ...]`` with projections to a common size."""

    def __init__(self, branches: list[nn.Module], projection: int | None) -> None:
        super().__init__()
        sizes = [int(b.output_size) for b in branches]
        ins = {int(b.input_size) for b in branches}
        if len(ins) != 1:
            got = [b.input_size for b in branches]
            raise ValueError(f"Expected all branches to take the same `input_size`, but got {got}.")
        if projection is None and len(set(sizes)) > 1:
            names = ", ".join(f"branch {i} ({type(b).__name__}): {s}" for i, (b, s) in enumerate(zip(branches, sizes)))
            raise ValueError(
                f"Branch output sizes differ ({names}); pass `projection=<size>` to project them to a common size."
            )
        self.branches = nn.ModuleList(branches)
        self.num_branches = len(branches)
        self.input_size = ins.pop()
        self.output_size = projection if projection is not None else sizes[0]
        self.projections = nn.ModuleList(
            nn.Linear(s, projection) if projection is not None else nn.Identity() for s in sizes
        )
        self.streaming = all(_can_stream(b) for b in branches)

    def branch_flops(self) -> list[int]:
        out = []
        for b, p in zip(self.branches, self.projections):
            extra = linear_flops(p.in_features, p.out_features) if isinstance(p, nn.Linear) else 0
            out.append(int(b.flops_per_frame()) + extra)
        return out

    def forward_gated(
        self, x: torch.Tensor, lengths: torch.Tensor, gates: torch.Tensor, only: int | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if only is not None:  # one-hot gates on branch `only`: the other branches keep their state
            y, _ = self.branches[only](x, lengths)
            y = self.projections[only](y)
            return y * lengths_to_mask(lengths.to(x.device), T)[..., None].to(y.dtype)
        if not self.streaming:  # full-sequence outputs mixed per frame (compute saved only per chunk)
            y = 0
            for k, (b, p) in enumerate(zip(self.branches, self.projections)):
                yk, nk = b(x, lengths)
                if yk.shape[1] != T:
                    raise ValueError(
                        f"Branch {k} ({type(b).__name__}) changes the frame rate ({T} -> {yk.shape[1]} frames); "
                        "frame-wise routing needs branches with the same frame rate."
                    )
                y = y + gates[..., k : k + 1] * p(yk)
            return y * lengths_to_mask(lengths.to(x.device), T)[..., None].to(x.dtype)
        states = [b.init_state(B) for b in self.branches]
        dims = [_batch_dims(b, B) for b in self.branches]
        outs = []
        g_t, x_t = gates.unbind(1), x.unbind(1)
        for t in range(T):
            y_t = 0
            for k, (b, p) in enumerate(zip(self.branches, self.projections)):
                g = g_t[t][:, k]
                yk, new = b.step(x_t[t], states[k])
                states[k] = _blend(new, states[k], g, dims[k])
                y_t = y_t + g[:, None] * p(yk)
            outs.append(y_t)
        y = torch.stack(outs, 1) if outs else x.new_zeros(B, 0, self.output_size)
        return y * lengths_to_mask(lengths.to(x.device), T)[..., None].to(y.dtype)

    def _require_streaming(self) -> None:
        if not self.streaming:
            kinds = ", ".join(type(b).__name__ for b in self.branches if not _can_stream(b))
            raise RuntimeError(
                f"These branches have no `step`/`init_state` ({kinds}): they cannot stream frame by frame. "
                "Use forward() on whole utterances, or give every branch the streaming encoder contract."
            )

    def init_state(self, batch_size: int) -> Any:
        self._require_streaming()
        return [b.init_state(batch_size) for b in self.branches]

    def begin_streaming(self) -> None:
        pass

    def end_streaming(self) -> None:
        pass

    def step(self, x_t: torch.Tensor, state: Any, choice: torch.Tensor) -> tuple[torch.Tensor, Any]:
        self._require_streaming()
        state = list(state)
        if x_t.shape[0] == 1:  # only the chosen branch runs; the others keep their state
            k = int(choice[0])
            yk, state[k] = self.branches[k].step(x_t, state[k])
            return self.projections[k](yk), state
        g = F.one_hot(choice, self.num_branches).to(x_t.dtype)
        y = 0
        for k, (b, p) in enumerate(zip(self.branches, self.projections)):
            yk, new = b.step(x_t, state[k])
            state[k] = _blend(new, state[k], g[:, k], _batch_dims(b, x_t.shape[0]))
            y = y + g[:, k : k + 1] * p(yk)
        return y, state


# -- the public module ------------------------------------------------------------------------


class AmortizedEncoder(nn.Module):
    """Independent encoders ``fast, slow[, ...]`` routed frame by frame by an :class:`Arbitrator`.

    Follows the encoder contract (``forward``, ``flops_per_frame``, and ``init_state``/``step``
    when all branches stream). Branch ``k`` is the ``k``-th positional argument; the most
    expensive branch is "slow" for the losses.

    Args:
        fast: Cheap encoder (branch 0).
        slow: Expensive encoder (branch 1).
        *others: More branches (``K > 2``).
        projection: Common output size; every branch gets a ``Linear`` to it. Required
            when output sizes differ.
        frame_ms: Audio per input frame in ms.
        device_flops_per_s: Speed of the simulated device the backlog is computed on.
        arbitrator_hidden: Hidden units of the arbitrator.
        temperature: Initial Gumbel-softmax temperature.
        straight_through: Straight-through hard gates in training.
        use_prev_decision: Feed the previous gate to the arbitrator.
        force_branch: Route every frame to this branch: the arbitrator is skipped (and
            not counted), only that branch computes, ``flops_per_frame()`` is that
            branch's. Builds single-branch baselines (fast-only, compressed single
            encoders) from the same class.

    Raises:
        ValueError: if output sizes differ and ``projection`` is ``None``, or
            ``force_branch`` is not a branch index.

    Example:
        >>> from lightning_amortized.nn.encoders import RecurrentEncoder
        >>> enc = AmortizedEncoder(RecurrentEncoder(40, 16, 1), RecurrentEncoder(40, 64, 2), projection=32)
        >>> y, n = enc(torch.randn(2, 5, 40), torch.tensor([5, 3]))
        >>> y.shape, enc.last_routing.decisions.shape
        (torch.Size([2, 5, 32]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        fast: nn.Module,
        slow: nn.Module,
        *others: nn.Module,
        projection: int | None = None,
        frame_ms: float = 30.0,
        device_flops_per_s: float = DEFAULT_DEVICE_FLOPS_PER_S,
        arbitrator_hidden: int = 16,
        temperature: float = 1.0,
        straight_through: bool = False,
        use_prev_decision: bool = True,
        force_branch: int | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            _IndependentCore([fast, slow, *others], projection),
            frame_ms,
            device_flops_per_s,
            arbitrator_hidden,
            temperature,
            straight_through,
            use_prev_decision,
            force_branch,
        )

    def _setup(
        self,
        core: nn.Module,
        frame_ms: float,
        device_flops_per_s: float,
        arbitrator_hidden: int,
        temperature: float,
        straight_through: bool,
        use_prev_decision: bool,
        force_branch: int | None = None,
    ) -> None:
        if force_branch is not None and not 0 <= int(force_branch) < core.num_branches:
            raise ValueError(
                f"Expected argument `force_branch` to be None or in [0, {core.num_branches}), but got {force_branch}."
            )
        self.force_branch = None if force_branch is None else int(force_branch)
        self.core = core
        self.device_model = SimulatedDevice(flops_per_s=float(device_flops_per_s), frame_ms=float(frame_ms))
        self.frame_ms = float(frame_ms)
        self.device_flops_per_s = float(device_flops_per_s)
        self.input_size = core.input_size
        self.output_size = core.output_size
        self.num_branches = core.num_branches
        self.arbitrator = Arbitrator(
            core.input_size,
            core.num_branches,
            hidden_size=arbitrator_hidden,
            frame_ms=frame_ms,
            temperature=temperature,
            straight_through=straight_through,
            use_prev_decision=use_prev_decision,
        )
        self.last_routing: RoutingInfo | None = None
        self._stream_costs: tuple[torch.Tensor, int] | None = None

    @classmethod
    def from_recurrent(
        cls,
        encoder: RecurrentEncoder,
        fast: str = "lowrank",
        rank: int | None = None,
        density: float = 0.25,
        **kwargs: Any,
    ) -> "SharedStateAmortizedEncoder":
        """Shared-state AmNet from one LSTM/GRU encoder (see :class:`SharedStateAmortizedEncoder`)."""
        return SharedStateAmortizedEncoder(encoder, fast=fast, rank=rank, density=density, **kwargs)

    # -- costs ----------------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        """Whether ``init_state``/``step`` are available."""
        return bool(getattr(self.core, "streaming", True))

    def branch_flops(self) -> list[int]:
        """FLOPs per frame of every branch (arbitrator excluded)."""
        return [int(f) for f in self.core.branch_flops()]

    @property
    def slow_index(self) -> int:
        """Index of the most expensive branch."""
        flops = self.branch_flops()
        return max(range(len(flops)), key=flops.__getitem__)

    def flops_per_frame(self) -> int:
        """Worst case FLOPs per frame: the most expensive branch plus the arbitrator.

        With ``force_branch`` it is that branch's FLOPs (no arbitrator runs). The routed
        average is ``last_routing.expected_flops`` (see ``LatencyMonitor``).
        """
        if self.force_branch is not None:
            return self.branch_flops()[self.force_branch]
        return max(self.branch_flops()) + self.arbitrator.flops_per_frame()

    def set_device(self, device_flops_per_s: float) -> None:
        """Swap the simulated device (e.g. to evaluate a trained model on a slower or faster one).

        The backlog the arbitrator sees, the costs and the latencies of the next
        ``forward``/``step`` are computed on the new device; ``frame_ms`` is unchanged.

        Raises:
            ValueError: if ``device_flops_per_s`` is not positive.
        """
        self.device_model = SimulatedDevice(flops_per_s=float(device_flops_per_s), frame_ms=self.frame_ms)
        self.device_flops_per_s = float(device_flops_per_s)

    # -- training / batched forward -------------------------------------------------------------

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Route and encode a padded batch ``(B, T, F)`` -> ``(B, T, D)``; sets :attr:`last_routing`."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"Expected `x` of shape (B, T, {self.input_size}), but got {tuple(x.shape)}.")
        flops = torch.tensor(self.branch_flops(), dtype=x.dtype, device=x.device)
        if self.force_branch is None:
            arb_flops = self.arbitrator.flops_per_frame()
            logits, gates, cost_ms, backlog_ms = self.arbitrator.decide(
                x, lengths, self.device_model.cost_ms(flops), float(self.device_model.cost_ms(arb_flops))
            )
            y = self.core.forward_gated(x, lengths, gates)
        else:  # no arbitrator: one-hot gates, the same backlog recursion on that branch's cost
            arb_flops = 0
            B, T, _ = x.shape
            k = self.force_branch
            gates = x.new_zeros(B, T, self.num_branches)
            gates[..., k] = 1.0
            logits = gates.log()  # 0 on the forced branch, -inf elsewhere
            cost_ms = self.device_model.cost_ms(gates @ flops)
            backlog_ms = backlog(cost_ms, self.frame_ms, lengths)
            y = self.core.forward_gated(x, lengths, gates, only=k)
        self.last_routing = RoutingInfo(
            logits=logits,
            gates=gates,
            decisions=gates.detach().argmax(-1),
            expected_flops=arb_flops + gates @ flops,
            cost_ms=cost_ms,
            backlog_ms=backlog_ms,
            lengths=lengths,
            branch_flops=tuple(int(f) for f in flops.tolist()),
            slow_index=self.slow_index,
            frame_ms=self.frame_ms,
        )
        return y, lengths

    def routing_losses(
        self,
        lambda_cost: float = 0.0,
        lambda_amr: float = 0.0,
        threshold_ms: float | None = None,
        end_weight: float = 1.0,
        slack_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Losses of the last ``forward``: ``{"cost", "amortization", "total"}``.

        ``cost`` is the expected FLOPs per valid frame over the slow branch's FLOPs (in
        ``[0, 1]``), ``amortization`` is
        :func:`~lightning_amortized.functional.losses.amortization_loss`, ``total`` is
        ``lambda_cost * cost + lambda_amr * amortization`` (add it to the ASR loss).

        Raises:
            RuntimeError: if ``forward`` has not run yet.
        """
        r = self.last_routing
        if r is None:
            raise RuntimeError("`routing_losses` needs a `forward` first: call the encoder on a batch.")
        cost = expected_cost_penalty(r.expected_flops, r.lengths, float(max(r.branch_flops)))
        amr = amortization_loss(
            r.p_slow, r.backlog_ms, r.lengths, self.frame_ms, threshold_ms, end_weight, slack_weight
        )
        return {"cost": cost, "amortization": amr, "total": lambda_cost * cost + lambda_amr * amr}

    # -- streaming ------------------------------------------------------------------------------

    def _costs(self, like: torch.Tensor) -> tuple[torch.Tensor, int]:
        flops = torch.tensor(self.branch_flops(), dtype=like.dtype, device=like.device)
        return flops, self.arbitrator.flops_per_frame()

    def begin_streaming(self) -> None:
        """Freeze per-frame inference caches (costs, CSR weights) until :meth:`end_streaming`.

        Optional: ``step`` is correct without it, only slower. :func:`~lightning_amortized.nn.streaming.stream`
        calls both.
        """
        self._stream_costs = self._costs(next(self.parameters()))
        self.core.begin_streaming()

    def end_streaming(self) -> None:
        """Drop the caches of :meth:`begin_streaming` (call after changing weights)."""
        self._stream_costs = None
        self.core.end_streaming()

    def init_state(self, batch_size: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """``(branch state, backlog_ms (B,), previous gate (B, K))``."""
        b, prev = self.arbitrator.init_state(batch_size)
        return self.core.init_state(batch_size), b, prev

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One frame ``(B, F)`` -> ``(B, D)`` with hard decisions (only the chosen branch runs when ``B == 1``)."""
        y, state, _ = self.step_with_decision(x_t, state)
        return y, state

    def step_with_decision(
        self, x_t: torch.Tensor, state: Any, force_branch: int | None = None
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Like :meth:`step`, also returning the decision ``(B,)``.

        Args:
            force_branch: Route every frame to this branch and skip the arbitrator
                (single-branch baselines on the same weights).
        """
        core_state, b, prev = state
        flops, arb_flops = self._stream_costs if self._stream_costs is not None else self._costs(x_t)
        force_branch = self.force_branch if force_branch is None else force_branch
        if force_branch is None:
            logits = self.arbitrator.step(x_t, b, prev)
            choice = logits.argmax(-1)
            base = arb_flops
        else:
            if not 0 <= force_branch < self.num_branches:
                raise ValueError(f"Expected `force_branch` in [0, {self.num_branches}), but got {force_branch}.")
            choice = torch.full((x_t.shape[0],), force_branch, dtype=torch.long, device=x_t.device)
            base = 0
        g = F.one_hot(choice, self.num_branches).to(x_t.dtype)
        cost = self.device_model.cost_ms(base + g @ flops)
        b = backlog_step(b, cost, self.frame_ms)
        y, core_state = self.core.step(x_t, core_state, choice)
        return y, (core_state, b, g), choice

    def extra_repr(self) -> str:
        forced = "" if self.force_branch is None else f", force_branch={self.force_branch}"
        return f"frame_ms={self.frame_ms}, device_flops_per_s={self.device_flops_per_s:g}{forced}"


class SharedStateAmortizedEncoder(AmortizedEncoder):
    """Shared-state AmNet over one SpeechBrain LSTM/GRU stack: one state, fast and slow weights per layer.

    Branch 1 (slow) uses the wrapped encoder's own weights (shared, not copied: they
    stay at ``core.encoder.rnn.rnn.weight_*``); branch 0 (fast) is, per layer:

    * ``"lowrank"``: LSTM ``[W_ih W_hh] = U V`` of rank ``rank`` (one factorization,
      one merged bias); GRU ``W_ih`` and ``W_hh`` factorized separately. Initialised
      by truncated SVD of the slow weights.
    * ``"sparse"``: own copies of ``W_ih``, ``W_hh`` with a fixed magnitude-pruned mask
      keeping a fraction ``density`` of ``[W_ih W_hh]``; FLOPs count the non-zeros.
    * ``"small"``: own dense ``W_ih`` and a rank-``rank`` ``W_hh = U V`` (only the
      recurrent matrix is small; initialised from the slow weights).

    Args:
        encoder: The slow encoder (:class:`RecurrentEncoder`; its projection, if any,
            is shared by both branches).
        fast: ``"lowrank"``, ``"sparse"`` or ``"small"``.
        rank: Rank of the factorized matrices (default ``hidden_size // 4``).
        density: Kept fraction for ``"sparse"``.
        **kwargs: ``frame_ms``, ``device_flops_per_s``, ``arbitrator_hidden``,
            ``temperature``, ``straight_through``, ``use_prev_decision``,
            ``force_branch`` as in :class:`AmortizedEncoder` (``force_branch=0``: the
            compressed encoder alone, e.g. a factorized or sparse single encoder).

    Raises:
        ValueError: for an unknown ``fast`` kind, a bad ``rank`` or ``density``.
        TypeError: if ``encoder`` is not a :class:`RecurrentEncoder`.
    """

    def __init__(
        self,
        encoder: RecurrentEncoder,
        fast: str = "lowrank",
        rank: int | None = None,
        density: float = 0.25,
        frame_ms: float = 30.0,
        device_flops_per_s: float = DEFAULT_DEVICE_FLOPS_PER_S,
        arbitrator_hidden: int = 16,
        temperature: float = 1.0,
        straight_through: bool = False,
        use_prev_decision: bool = True,
        force_branch: int | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._setup(
            _SharedRecurrentCore(encoder, fast, rank, density),
            frame_ms,
            device_flops_per_s,
            arbitrator_hidden,
            temperature,
            straight_through,
            use_prev_decision,
            force_branch,
        )
