"""Shared-state core: one LSTM/GRU state, fast and slow weights per layer, one recurrence for all paths.

Branch 0 is fast (a :class:`~lightning_amortized.nn.amortized.fast.FastLayer` per layer),
branch 1 slow (the wrapped encoder's own weights). The gate ``g_t`` mixes the states
the two weight sets give::

    h_t = g_t * cell_slow(x_t, h_{t-1}) + (1 - g_t) * cell_fast(x_t, h_{t-1})

:meth:`_SharedRecurrentCore.scan` is the only time loop: the training forward runs it
layer by layer over all frames (with soft gates, or on one branch only), streaming
``step`` runs it on one frame per layer (with one-hot gates, or on the chosen branch
only when ``B == 1``). The gates never depend on encoder states (the arbitrator sees
input frames, backlog and its previous gate), so every layer runs over the whole
sequence before the next: each layer's input parts are one product over all ``B T``
frames, and only the recurrent products and the cell stay in the loop. For an LSTM
over several frames ``scan`` runs the fused
:class:`~lightning_amortized.nn.amortized.scan.LSTMScan` (one autograd node per layer,
a hand-written backward batched over frames where the recurrence allows); otherwise
(GRU, one frame, autocast), and with ``fused_lstm_scan = False``, the reference loop
with autograd on every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_amortized.functional.flops import gru_flops, linear_flops, lstm_flops
from lightning_amortized.functional.masks import lengths_to_mask
from lightning_amortized.nn.amortized.cells import gru_cell, lstm_cell
from lightning_amortized.nn.amortized.fast import FAST_KINDS, FAST_LAYERS, BranchLayer, SlowLayer, step_layers
from lightning_amortized.nn.amortized.scan import lstm_scan
from lightning_amortized.nn.encoders import RecurrentEncoder
from lightning_amortized.nn.stream_cache import StreamCaches

__all__ = ["_SharedRecurrentCore"]


class _SharedRecurrentCore(StreamCaches, nn.Module):
    """Shared-state branches over one :class:`RecurrentEncoder`: branch 0 fast, branch 1 slow.

    Args:
        encoder: The slow encoder; its weights are used in place, its projection (if
            any) is shared by both branches.
        fast: A kind of :data:`~lightning_amortized.nn.amortized.fast.FAST_KINDS`.
        rank: Rank of factorized matrices; ``None`` means ``hidden_size // 4``.
        density: Kept fraction for ``"sparse"``.
    """

    num_branches = 2
    _stream_caches = ("_stream_cache", "_stream_layers")
    fused_lstm_scan = True
    """Run full-sequence LSTM layers with the fused scan (``False``: the per-frame autograd reference)."""

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
        layer_cls = FAST_LAYERS[fast]
        fast_layers = []
        for layer in range(L):
            slow = self._slow(layer)
            fast_layers.append(layer_cls(self.rnn_type, slow.w_ih, slow.w_hh, slow.b_ih, slow.b_hh, rank, density))
        self.fast = nn.ModuleList(fast_layers)
        self._dropout = float(encoder.torch_rnn.dropout)
        self._stream_cache: list[dict[str, Any]] | None = None
        self._stream_layers: list[list[tuple[BranchLayer, dict[str, Any]]]] | None = None
        fast_flops, slow_flops = self.branch_flops()
        if fast_flops >= slow_flops:  # the routing losses and the slow share take the dearer branch as slow
            raise ValueError(
                f"The {fast!r} fast branch costs {fast_flops} FLOPs per frame, no less than the slow one's "
                f"{slow_flops}: nothing to amortize. Choose a lower rank or density (hidden size {H})."
            )

    def _slow(self, layer: int) -> SlowLayer:
        """The slow weights of ``layer``, read from the wrapped encoder each time (shared, never copied)."""
        return SlowLayer(self.encoder.torch_rnn, layer, self.rnn_type)

    def _branch(self, layer: int, k: int) -> BranchLayer:
        return self.fast[layer] if k == 0 else self._slow(layer)

    def branch_flops(self) -> list[int]:
        """FLOPs per frame of ``[fast, slow]`` (the encoder's projection counted in both)."""
        proj = self.encoder.proj
        extra = linear_flops(proj.in_features, proj.out_features) if proj is not None else 0
        count = lstm_flops if self.rnn_type == "lstm" else gru_flops
        slow = count(self.input_size, self.hidden_size, self.num_layers, False, self.encoder.torch_rnn.bias)
        return [sum(f.flops() for f in self.fast) + extra, slow + extra]

    # -- the recurrence -------------------------------------------------------------------------

    def scan(
        self,
        branches: Sequence[BranchLayer],
        weights: Sequence[dict[str, Any]],
        inp: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor | None,
        mix: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run one layer over ``T`` frames; the single time loop of this core.

        Args:
            branches: The layer of each computed branch (one, or ``[fast, slow]``).
            weights: ``branches[k].weights()`` (or ``stream_weights()``) for each.
            inp: ``(T, B, I)`` the layer's input, time-major.
            h: ``(B, H)`` state before the first frame.
            c: ``(B, H)`` LSTM cell state, ``None`` for a GRU.
            mix: ``(T, len(branches), B, 1)`` gates; ``None`` when a single branch takes
                every frame.

        Returns:
            The states of every frame ``(T, B, H)`` and the final ``(h, c)``.
        """
        lstm = self.rnn_type == "lstm"
        T = inp.shape[0]
        if lstm and T > 1 and self.fused_lstm_scan and not torch.is_autocast_enabled(inp.device.type):
            return lstm_scan([b.lstm_parts(inp, w) for b, w in zip(branches, weights)], mix, h, c)
        one = len(branches) == 1
        # unbind (not indexing) in time loops: the backward of T selects would be O(T^2)
        flat = inp.reshape(-1, inp.shape[-1])  # (T B, I): CSR stream weights take matrices only
        pre = [b.precompute(flat, w).view(T, inp.shape[1], -1).unbind(0) for b, w in zip(branches, weights)]
        mixes = None if mix is None else mix.unbind(0)  # T x (K, B, 1)
        outs = []
        for t in range(T):
            g = [b.recurrent(p[t], h, w) for b, p, w in zip(branches, pre, weights)]
            g = g[0] if one else torch.stack(g)
            if lstm:
                h_new, c_new = lstm_cell(g, c)
            else:
                h_new = gru_cell(pre[0][t] if one else torch.stack([p[t] for p in pre]), g, h)
            if mixes is None:
                h, c = h_new, (c_new if lstm else None)
            else:
                if lstm:
                    c = (mixes[t] * c_new).sum(0)
                h = (mixes[t] * h_new).sum(0)
            outs.append(h)
        ys = torch.stack(outs) if outs else inp.new_zeros(0, inp.shape[1], self.hidden_size)
        return ys, h, c

    # -- training / batched forward -------------------------------------------------------------

    def forward_gated(
        self, x: torch.Tensor, lengths: torch.Tensor, gates: torch.Tensor, only: int | None = None
    ) -> torch.Tensor:
        """Encode ``(B, T, F)`` with gates ``(B, T, 2)`` (layer-outer, time-inner) -> ``(B, T, D)``.

        ``only=k``: the gates are one-hot on branch ``k`` everywhere; only that branch computes.
        """
        B, T, _ = x.shape
        ks = [0, 1] if only is None else [only]
        mix = None if only is not None else gates.permute(1, 2, 0).unsqueeze(-1)  # (T, 2, B, 1)
        inp = x.transpose(0, 1).contiguous()  # time-major (T, B, F)
        for layer in range(self.num_layers):
            branches = [self._branch(layer, k) for k in ks]
            weights = [b.weights() for b in branches]
            h = x.new_zeros(B, self.hidden_size)
            c = x.new_zeros(B, self.hidden_size)
            ys, _, _ = self.scan(branches, weights, inp, h, c, mix)
            inp = self._layer_output(ys, layer)
        return self._encoder_output(inp.transpose(0, 1), lengths, T)

    def _layer_output(self, ys: torch.Tensor, layer: int) -> torch.Tensor:
        """A layer's states ``(T, B, H)``, with dropout between layers."""
        if self._dropout > 0 and self.training and layer < self.num_layers - 1:
            ys = F.dropout(ys, self._dropout, True)
        return ys

    def _encoder_output(self, inp: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
        """Zero the padding and apply the wrapped encoder's projection, if any."""
        y = inp * lengths_to_mask(lengths, T, device=inp.device)[..., None].to(inp.dtype)
        if self.encoder.proj is not None:
            y = self.encoder.proj(y)
        return y

    # -- streaming ------------------------------------------------------------------------------

    def init_state(self, batch_size: int) -> Any:
        """The wrapped encoder's zero state: ``(h, c)`` ``(L, B, H)`` each (LSTM) or ``h`` (GRU)."""
        return self.encoder.init_state(batch_size)

    def begin_streaming(self) -> None:
        """Cache per-layer inference tensors (CSR for sparse layers) until :meth:`end_streaming`."""
        self._stream_cache = [f.stream_weights() for f in self.fast]
        self._stream_layers = [  # views of the slow weights; StreamCaches keeps them (and CSR) out of copies
            [(self.fast[layer], self._stream_cache[layer]), (slow, slow.stream_weights())]
            for layer in range(self.num_layers)
            for slow in [self._slow(layer)]
        ]

    def end_streaming(self) -> None:
        """Drop the cache of :meth:`begin_streaming`."""
        self._stream_cache = None
        self._stream_layers = None

    def step(self, x_t: torch.Tensor, state: Any, choice: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One frame ``(B, F)`` with hard choices ``(B,)`` -> ``(B, D)``.

        With ``B == 1`` only the chosen branch computes; otherwise both, mixed one-hot.
        """
        proj = self.encoder.proj
        if x_t.shape[0] == 1:  # one stream: the chosen branch's kernels only (cached while streaming)
            k = int(choice[0])
            cached = getattr(self, "_stream_layers", None)
            if cached is not None:
                layers = [branches[k] for branches in cached]
            else:
                layers = [(b, self._stream_weights(layer, k, b))
                          for layer in range(self.num_layers) for b in [self._branch(layer, k)]]
            h, new_state = step_layers(layers, self.rnn_type, x_t, state)
            return (h if proj is None else proj(h)), new_state
        lstm = self.rnn_type == "lstm"
        hs, cs = state if lstm else (state, None)
        mix = F.one_hot(choice, 2).t().to(x_t.dtype)[None, ..., None]  # (1, 2, B, 1)
        inp = x_t
        new_h, new_c = [], []
        for layer in range(self.num_layers):
            branches = [self._branch(layer, k) for k in (0, 1)]
            weights = [self._stream_weights(layer, k, b) for k, b in enumerate(branches)]
            _, h, c = self.scan(branches, weights, inp[None], hs[layer], cs[layer] if lstm else None, mix)
            new_h.append(h)
            new_c.append(c)
            inp = h
        y = inp if proj is None else proj(inp)
        hs = torch.stack(new_h)
        return y, ((hs, torch.stack(new_c)) if lstm else hs)

    def _stream_weights(self, layer: int, k: int, branch: BranchLayer) -> dict[str, Any]:
        if k == 0 and self._stream_cache is not None:
            return self._stream_cache[layer]
        return branch.weights()
