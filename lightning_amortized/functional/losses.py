"""Routing losses of amortized encoders: expected compute and the amortization penalty.

Both are means over valid frames (padding excluded) and dimensionless, so that
``lambda_cost`` and ``lambda_amr`` do not depend on batch size, utterance length,
device speed or model size.

**Expected cost** (``lambda_cost`` term)::

    L_cost = mean_{b, t <= L_b} E[flops_{b,t}] / flops_ref

with ``E[flops] = sum_k g_k flops_k`` under the relaxed gates ``g`` and ``flops_ref``
the cost of the most expensive branch (``L_cost`` is in ``[0, 1]`` for branch FLOPs alone;
``AmortizedEncoder`` adds the arbitrator's FLOPs to every frame, so its cost can slightly exceed 1).

**Amortization penalty** (``lambda_amr`` term)::

    L_amr = w_end  * mean_b  b_{L_b} / frame_ms
          + w_slack * mean_{b, t <= L_b} (1 - p_slow_{b,t}) * relu(1 - sg(b_{t-1}) / threshold_ms)

          + w_eou  * mean_b  relu(eou_b - limit_b) / frame_ms              (optional, w_eou = 0 by default)

The first term charges the backlog still left after the last frame (in frames); it is
zero when the device ends within one frame of real time. The second term charges
routing to a fast branch while there is no significant backlog (``b_{t-1}`` far below
``threshold_ms``, default ``frame_ms``): that slack should be spent on accuracy. The
backlog in the slack term is detached (``sg``, stop-gradient) so that the loss cannot
be lowered by *creating* backlog; the end term keeps its gradient, which flows through
the backlog recursion into every earlier decision.

The optional third term charges the end-of-utterance latency ``eou_b = b_{L_b - 1} + cost_{L_b}``
(:func:`~lightning_amortized.functional.backlog.eou_from_backlog`, the definition
:func:`~lightning_amortized.functional.backlog.eou_latency` uses) above a limit, typically a
multiple of the physical floor (one fast-branch frame plus the arbitrator on that
utterance's device). The end term is blind below one frame: on a fast device a slow last
frame ends within real time and costs nothing there, yet its latency is several times
the floor.

Example:
    >>> p_slow = torch.tensor([[1.0, 0.0, 0.0]])
    >>> b = torch.tensor([[30.0, 15.0, 0.0]])
    >>> # b_{t-1} = [0, 30, 15] -> idle = [1, 0, 0.5]; fast share = [0, 1, 1]; end backlog 0
    >>> round(float(amortization_loss(p_slow, b, torch.tensor([3]), frame_ms=30.0)), 4)  # (0 + 0 + 0.5) / 3
    0.1667
"""

from __future__ import annotations

import torch

from lightning_amortized.functional.backlog import backlog_before, eou_from_backlog, last_valid_index
from lightning_amortized.functional.masks import lengths_to_mask

__all__ = ["amortization_loss", "expected_cost_penalty"]


def _mask(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Valid frames of ``x`` ``(B, T)``: all of them when ``lengths`` is ``None``."""
    if lengths is None:
        return torch.ones_like(x, dtype=torch.bool)
    return lengths_to_mask(lengths, x.shape[1], device=x.device)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def expected_cost_penalty(
    expected_flops: torch.Tensor, lengths: torch.Tensor | None = None, reference_flops: float = 1.0
) -> torch.Tensor:
    """Mean expected FLOPs per valid frame divided by ``reference_flops``.

    Args:
        expected_flops: ``(B, T)`` expected FLOPs of every frame (differentiable).
        lengths: ``(B,)`` valid frames, or ``None``.
        reference_flops: Normaliser, typically the slow branch's FLOPs per frame.

    Returns:
        Scalar tensor.

    Example:
        >>> expected_cost_penalty(torch.tensor([[10.0, 20.0, 99.0]]), torch.tensor([2]), reference_flops=20.0)
        tensor(0.7500)
    """
    if not reference_flops > 0:
        raise ValueError(f"Expected argument `reference_flops` to be positive, but got {reference_flops}.")
    return _masked_mean(expected_flops, _mask(expected_flops, lengths)) / reference_flops


def amortization_loss(
    p_slow: torch.Tensor,
    backlog_ms: torch.Tensor,
    lengths: torch.Tensor | None,
    frame_ms: float,
    threshold_ms: float | None = None,
    end_weight: float = 1.0,
    slack_weight: float = 1.0,
    cost_ms: torch.Tensor | None = None,
    eou_limit_ms: torch.Tensor | float | None = None,
    eou_weight: float = 0.0,
) -> torch.Tensor:
    """Amortization penalty (formula in the module docstring).

    Args:
        p_slow: ``(B, T)`` relaxed gate of the slow branch (1 = slow), differentiable.
        backlog_ms: ``(B, T)`` backlog after every frame (from
            :func:`~lightning_amortized.functional.backlog.backlog`), differentiable.
        lengths: ``(B,)`` valid frames, or ``None``.
        frame_ms: Audio duration of a frame in ms (normalises the end backlog).
        threshold_ms: Backlog below which routing to the fast branch is penalised;
            ``None`` means ``frame_ms``.
        end_weight: Weight of the end-of-utterance backlog term.
        slack_weight: Weight of the "fast while idle" term.
        cost_ms: ``(B, T)`` cost of every frame on the simulated device (ms, differentiable);
            needed when ``eou_weight > 0``.
        eou_limit_ms: End-of-utterance latency (ms) charged above, a float or ``(B,)``;
            needed when ``eou_weight > 0``.
        eou_weight: Weight of the end-of-utterance latency term (``0``: off).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: on mismatched shapes, a non-positive ``frame_ms``/``threshold_ms``, a
            negative ``eou_weight``, or ``eou_weight > 0`` without ``cost_ms`` and ``eou_limit_ms``.

    Example:
        >>> p = torch.tensor([[1.0, 1.0]])
        >>> cost, b = torch.tensor([[15.0, 15.0]]), torch.tensor([[0.0, 0.0]])  # a fast device: no backlog
        >>> float(amortization_loss(p, b, None, 30.0, slack_weight=0.0))  # the end term sees nothing
        0.0
        >>> # the last frame's 15 ms latency is 3 ms above a limit of 12 ms (twice a 6 ms floor): 3 / 30
        >>> round(float(amortization_loss(p, b, None, 30.0, slack_weight=0.0, cost_ms=cost, eou_limit_ms=12.0,
        ...                               eou_weight=1.0)), 4)
        0.1
    """
    if p_slow.shape != backlog_ms.shape:
        raise ValueError(
            f"Expected `p_slow` and `backlog_ms` to have the same shape, but got {tuple(p_slow.shape)} "
            f"and {tuple(backlog_ms.shape)}."
        )
    if not frame_ms > 0:
        raise ValueError(f"Expected argument `frame_ms` to be positive, but got {frame_ms}.")
    threshold_ms = frame_ms if threshold_ms is None else threshold_ms
    if not threshold_ms > 0:
        raise ValueError(f"Expected argument `threshold_ms` to be positive, but got {threshold_ms}.")
    if not eou_weight >= 0:
        raise ValueError(f"Expected argument `eou_weight` to be >= 0, but got {eou_weight}.")
    mask = _mask(p_slow, lengths)
    B, T = p_slow.shape
    # an empty utterance's end term reads its first (frozen, zero) backlog
    last = last_valid_index(None if lengths is None else lengths.clamp_min(1), B, T, p_slow.device)
    end = backlog_ms.gather(1, last[:, None])[:, 0] / frame_ms
    idle = torch.relu(1.0 - backlog_before(backlog_ms).detach() / threshold_ms)
    slack = _masked_mean((1.0 - p_slow) * idle, mask)
    loss = end_weight * end.mean() + slack_weight * slack
    if eou_weight > 0:
        if cost_ms is None or eou_limit_ms is None:
            raise ValueError("The end-of-utterance latency term (`eou_weight` > 0) needs `cost_ms` (B, T) and "
                             "`eou_limit_ms`; pass both or set `eou_weight=0`.")
        if cost_ms.shape != p_slow.shape:
            raise ValueError(
                f"Expected `cost_ms` to have the shape of `p_slow` {tuple(p_slow.shape)}, "
                f"but got {tuple(cost_ms.shape)}."
            )
        if lengths is None:
            eou = eou_from_backlog(cost_ms, backlog_ms)
        else:  # an empty utterance has no end to wait for: no latency, as in the end term
            eou = eou_from_backlog(cost_ms, backlog_ms, lengths.clamp_min(1)).masked_fill(lengths == 0, 0.0)
        limit = torch.as_tensor(eou_limit_ms, dtype=eou.dtype, device=eou.device)
        if limit.dim() != 0 and limit.shape != eou.shape:
            raise ValueError(
                f"Expected argument `eou_limit_ms` to be a float or of shape ({B},), but got {tuple(limit.shape)}."
            )
        loss = loss + eou_weight * (torch.relu(eou - limit) / frame_ms).mean()
    return loss
