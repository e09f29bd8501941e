"""The fused training scan of one shared-state LSTM layer: :func:`lstm_scan` (:class:`LSTMScan`).

One autograd node per layer instead of a dozen per frame. Its forward runs the frames
with preallocated buffers (about a dozen small kernels per frame: the recurrent
products and the cell), its backward runs them in reverse with as few, and everything
that does not depend on the recurrence is batched over all ``T B`` rows: the input
parts (computed by the caller, their gradients handed back to autograd), the
activation derivatives, the gradients of the recurrent weights (one product each) and
of the gates.

Each branch ``k`` is given as ``(P, A, U, R)``, meaning the gate pre-activations::

    gates_k = P_k[t] + h A_k^T                       (U_k is None)
    gates_k = P_k[t] + (R_k[t] + h A_k^T) U_k^T      (factorized: R_k optional, P_k may be a bias (4H,))

and the step is :func:`~lightning_amortized.nn.amortized.cells.lstm_cell` of every
branch from the one shared state, mixed by the gates::

    h_k, c_k = lstm_cell(gates_k, c)
    h, c = sum_k mix[t, k] * h_k, sum_k mix[t, k] * c_k

This is what :meth:`~lightning_amortized.nn.amortized.shared._SharedRecurrentCore.scan`
otherwise runs frame by frame with autograd (the reference; outputs and gradients agree
up to float rounding, see ``tests/nn/test_lstm_scan.py``). ``tanh(x)`` is computed as
``2 sigmoid(2x) - 1``: on CPU PyTorch's ``tanh`` kernel is several times slower than its
``sigmoid``.

Example:
    >>> T, B, H = 5, 2, 3
    >>> P, A = torch.randn(T, B, 4 * H), torch.randn(4 * H, H)
    >>> ys, h, c = lstm_scan([(P, A, None, None)], None, torch.zeros(B, H), torch.zeros(B, H))
    >>> ys.shape, torch.equal(ys[-1], h)
    (torch.Size([5, 2, 3]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["LSTMScan", "lstm_scan"]

Part = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]


class LSTMScan(torch.autograd.Function):
    """``LSTMScan.apply(K, T, mix, h0, c0, P_0, A_0, U_0, R_0, P_1, ...)``; use :func:`lstm_scan`."""

    @staticmethod
    def forward(
        ctx: Any, K: int, T: int, mix: torch.Tensor | None, h0: torch.Tensor, c0: torch.Tensor, *flat: Any
    ) -> Any:
        P, A, U, R = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
        B, H = h0.shape
        G = 4 * H
        new = h0.new_empty
        S = new(K, T, B, G)  # sigmoid of every gate pre-activation (of twice the cell block's)
        GG = new(K, T, B, H)  # tanh of the cell block
        TC = new(K, T, B, H)  # tanh of each branch's new cell state
        HCn = new(T, K, B, 2 * H)  # each branch's new [h | c]
        HC = new(T + 1, B, 2 * H)  # the mixed [h | c] before/after every frame
        HC[0, :, :H] = h0
        HC[0, :, H:] = c0
        Y: list[list[torch.Tensor] | None] = [None if u is None else [] for u in U]  # R + h A^T (factorized)
        gates = new(K, B, G)
        gates_cell = gates[..., 2 * H : 3 * H]
        At = [a.t() for a in A]
        Ut = [None if u is None else u.t() for u in U]
        # per-frame views made once (indexing inside the loop costs more than the small kernels)
        P_t = [p.unbind(0) if p.dim() == 3 else [p] * T for p in P]
        R_t = [None if r is None else r.unbind(0) for r in R]
        S_t, GG_t, TC_t = S.unbind(1), GG.unbind(1), TC.unbind(1)
        Si_t, Sf_t, So_t = S[..., :H].unbind(1), S[..., H : 2 * H].unbind(1), S[..., 3 * H :].unbind(1)
        Sg_t = S[..., 2 * H : 3 * H].unbind(1)
        minus_one, two = h0.new_full((), -1.0), h0.new_full((), 2.0)
        hn_t, cn_t, hcn_t = HCn[..., :H].unbind(0), HCn[..., H:].unbind(0), HCn.unbind(0)
        h_t, c_t, hc_t = HC[:, :, :H].unbind(0), HC[:, :, H:].unbind(0), HC.unbind(0)
        mix_t = None if mix is None else mix.unbind(0)
        for t in range(T):
            h = h_t[t]
            for k in range(K):
                if Ut[k] is None:
                    torch.addmm(P_t[k][t], h, At[k], out=gates[k])
                else:  # (not mm(out=...): it zero-fills its output first)
                    y = torch.mm(h, At[k]) if R_t[k] is None else torch.addmm(R_t[k][t], h, At[k])
                    Y[k].append(y)
                    torch.addmm(P_t[k][t], y, Ut[k], out=gates[k])
            gates_cell.mul_(2.0)  # tanh(x) = 2 sigmoid(2x) - 1
            torch.sigmoid(gates, out=S_t[t])
            gg = torch.addcmul(minus_one, Sg_t[t], two, out=GG_t[t])
            cn = torch.mul(Sf_t[t], c_t[t], out=cn_t[t])
            cn.addcmul_(Si_t[t], gg)
            tc = torch.addcmul(minus_one, torch.sigmoid(cn * 2.0), two, out=TC_t[t])
            torch.mul(So_t[t], tc, out=hn_t[t])
            if mix_t is None:
                hc_t[t + 1].copy_(hcn_t[t][0])
            else:
                torch.sum(mix_t[t] * hcn_t[t], 0, out=hc_t[t + 1])
        ctx.K, ctx.H = K, H
        ctx.factored = [u is not None for u in U]
        ctx.has_r = [r is not None for r in R]
        ctx.p_dims = [p.dim() for p in P]
        ctx.save_for_backward(
            mix, S, GG, TC, HCn, HC, *A, *[u for u in U if u is not None], *[torch.stack(y) for y in Y if y is not None]
        )
        return HC[1:, :, :H], HC[T, :, :H], HC[T, :, H:]

    @staticmethod
    def backward(ctx: Any, d_ys: torch.Tensor | None, d_hT: torch.Tensor | None, d_cT: torch.Tensor | None) -> Any:
        K, H, factored = ctx.K, ctx.H, ctx.factored
        saved = ctx.saved_tensors
        mix, S, GG, TC, HCn, HC = saved[:6]
        A = saved[6 : 6 + K]
        n_f = sum(factored)
        U_it, Y_it = iter(saved[6 + K : 6 + K + n_f]), iter(saved[6 + K + n_f :])
        U = [next(U_it) if f else None for f in factored]
        Y = [next(Y_it) if f else None for f in factored]
        _, T, B, G = S.shape
        H_prev, C_prev = HC[:-1, :, :H], HC[:-1, :, H:]
        # derivatives times forward factors, all frames at once: the gate gradients are
        # dc_k * [gg s_i', c_prev s_f', s_i tanh'(g)] and dh_k * [tanh(c) s_o'], with dc_k += dh_k s_o tanh'(c)
        Q = torch.addcmul(S, S, S, value=-1.0)  # sigmoid'
        Q[..., 2 * H : 3 * H] = torch.addcmul(torch.ones_like(GG), GG, GG, value=-1.0)  # tanh'
        Q[..., :H] *= GG
        Q[..., H : 2 * H] *= C_prev
        Q[..., 2 * H : 3 * H] *= S[..., :H]
        Q[..., 3 * H :] *= TC
        E = torch.addcmul(torch.ones_like(TC), TC, TC, value=-1.0).mul_(S[..., 3 * H :]).transpose(0, 1)
        dG = S.new_empty(K, T, B, G)
        dY: list[list[torch.Tensor] | None] = [None if u is None else [] for u in U]
        dHC = S.new_zeros(T, B, 2 * H)  # gradient of the mixed [h | c] after every frame
        dh = d_hT.clone() if d_hT is not None else S.new_zeros(B, H)
        if d_cT is not None:
            dHC[T - 1, :, H:] = d_cT
        dG4, Q4 = dG.view(K, T, B, 4, H), Q.view(K, T, B, 4, H)
        g3_t, go_t = dG4[:, :, :, :3].unbind(1), dG4[:, :, :, 3].unbind(1)
        q3_t, qo_t = Q4[:, :, :, :3].unbind(1), Q4[:, :, :, 3].unbind(1)
        dGk_t = [g.unbind(0) for g in dG]
        dhc_t, dh_t, dc_t = dHC.unbind(0), dHC[:, :, :H].unbind(0), dHC[:, :, H:].unbind(0)
        dys_t = None if d_ys is None else d_ys.unbind(0)
        mix_t = None if mix is None else mix.unbind(0)
        E_t, Sf_t = E.unbind(0), S[..., H : 2 * H].unbind(1)
        dc0 = S.new_empty(B, H)
        for t in range(T - 1, -1, -1):
            if dys_t is not None:
                torch.add(dys_t[t], dh, out=dh_t[t])
            else:
                dh_t[t].copy_(dh)
            dk = mix_t[t] * dhc_t[t] if mix_t is not None else dhc_t[t][None]  # (K, B, 2H)
            dh_k = dk[..., :H]
            dc_k = torch.addcmul(dk[..., H:], dh_k, E_t[t])
            torch.mul(q3_t[t], dc_k[:, :, None], out=g3_t[t])
            torch.mul(qo_t[t], dh_k, out=go_t[t])
            torch.sum(dc_k * Sf_t[t], 0, out=dc_t[t - 1] if t > 0 else dc0)
            dh = None
            for k in range(K):
                back = dGk_t[k][t]
                if U[k] is not None:
                    back = torch.mm(back, U[k])
                    dY[k].append(back)
                dh = torch.mm(back, A[k]) if dh is None else torch.addmm(dh, back, A[k])
        # batched over all frames: the gradients of weights, input parts and gates
        hp = H_prev.reshape(T * B, H)
        d_flat: list[torch.Tensor | None] = []
        for k in range(K):
            g = dG[k].reshape(T * B, G)
            dP = dG[k] if ctx.p_dims[k] == 3 else g.sum(0)
            if U[k] is None:
                d_flat += [dP, g.t() @ hp, None, None]
            else:
                dy = torch.stack(dY[k][::-1])
                dU = g.t() @ Y[k].reshape(T * B, -1)
                dA = dy.reshape(T * B, -1).t() @ hp
                d_flat += [dP, dA, dU, dy if ctx.has_r[k] else None]
        d_mix = (HCn * dHC[:, None]).sum(-1, keepdim=True) if mix is not None and ctx.needs_input_grad[2] else None
        return (None, None, d_mix, dh, dc0, *d_flat)


def lstm_scan(
    parts: Sequence[Part], mix: torch.Tensor | None, h0: torch.Tensor, c0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run one shared-state LSTM layer over ``T >= 1`` frames (differentiable in every tensor).

    Args:
        parts: Per branch ``(P, A, U, R)`` from
            :meth:`~lightning_amortized.nn.amortized.fast.BranchLayer.lstm_parts`:
            ``P`` ``(T, B, 4H)`` input parts (time-major), or a ``(4H,)`` bias for a
            factorized branch with ``R``; ``A`` ``(N, H)``; ``U`` ``(4H, N)`` or ``None``;
            ``R`` ``(T, B, N)`` (factorized branches only) or ``None``.
        mix: ``(T, K, B, 1)`` gates; ``None`` when one branch takes every frame (``K == 1``).
        h0: ``(B, H)`` state before the first frame.
        c0: ``(B, H)`` cell state before the first frame.

    Returns:
        The mixed states of every frame ``(T, B, H)`` and the final ``(h, c)``.

    Raises:
        ValueError: without ``mix`` for more than one branch.
    """
    if mix is None and len(parts) != 1:
        raise ValueError(f"Expected one branch without `mix`, but got {len(parts)} branches.")
    T = next(p.shape[0] if p.dim() == 3 else r.shape[0] for p, _, _, r in parts)
    flat = [t for part in parts for t in part]
    return LSTMScan.apply(len(parts), T, mix, h0, c0, *flat)
