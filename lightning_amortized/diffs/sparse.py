"""Sparse diffs: a dense trainable delta ``D`` restricted to a pruned mask.

The effective weight is ``W = where(mask, W0 + D, W0)``. Applying an exported diff
computes ``W0.flat[idx] + values`` with the same dtype and the same single rounding, so
a model trained with a sparse diff and a base with the fp32 diff applied are bit-identical.

Pruning schedule (see ``docs/neural_diff.md``): the kept density after epoch ``e`` of
``E`` follows a cubic ramp from 1 to the final density ``d_final``
(:func:`scheduled_density`); each pruning step keeps the largest ``|D|`` globally, but no
matrix may keep more than ``min(1, cap_factor * d)`` of its entries
(:func:`magnitude_keep_masks`), so the densest matrices are pruned first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lightning_amortized.functional.selection import topk_mask

__all__ = ["SparseDiff", "magnitude_keep_masks", "scheduled_density", "sparse_apply"]


class SparseDiff(nn.Module):
    """Parametrization ``W0 -> where(mask, W0 + delta, W0)``.

    Args:
        base: the frozen base tensor ``W0`` (any shape); ``delta`` gets its shape, dtype
            and device and starts at zero, ``mask`` starts all ``True``.

    Attributes:
        delta: trainable ``nn.Parameter`` with the shape of ``W0``.
        mask: ``bool`` buffer with the shape of ``W0`` (saved in ``state_dict``).

    Example::

        >>> w0 = torch.ones(2, 3)
        >>> p = SparseDiff(w0)
        >>> with torch.no_grad():
        ...     _ = p.delta.fill_(0.5); p.mask[0] = False
        >>> p(w0)
        tensor([[1.0000, 1.0000, 1.0000],
                [1.5000, 1.5000, 1.5000]], grad_fn=<WhereBackward0>)
    """

    def __init__(self, base: torch.Tensor) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros_like(base, memory_format=torch.contiguous_format))
        self.register_buffer("mask", torch.ones(base.shape, dtype=torch.bool, device=base.device))

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, base + self.delta, base)

    @property
    def nnz(self) -> int:
        """Number of kept (trainable, exported) entries."""
        return int(self.mask.sum())

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """Set ``delta`` to zero outside the mask (keeps optimizer drift out of exports)."""
        self.delta.masked_fill_(~self.mask, 0.0)

    @torch.no_grad()
    def kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, values)`` of the kept entries: flat int64 indices ``(nnz,)`` and ``delta`` values."""
        idx = torch.nonzero(self.mask.reshape(-1), as_tuple=False).reshape(-1)
        return idx, self.delta.detach().reshape(-1)[idx]

    def extra_repr(self) -> str:
        return f"shape={tuple(self.delta.shape)}, nnz={self.nnz}"


def sparse_apply(base: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A new tensor ``W0`` with ``values`` added at flat ``indices`` (``W0`` is not modified).

    Args:
        base: ``W0``, any shape.
        indices: ``(n,)`` integer flat indices, unique.
        values: ``(n,)`` values, cast to ``base.dtype`` before the addition.

    Returns:
        Tensor of the shape and dtype of ``base``.

    Example::

        >>> sparse_apply(torch.zeros(2, 2), torch.tensor([3]), torch.tensor([1.5]))
        tensor([[0.0000, 0.0000],
                [0.0000, 1.5000]])
    """
    out = base.detach().clone(memory_format=torch.contiguous_format)
    flat = out.view(-1)
    idx = indices.to(device=out.device, dtype=torch.int64)
    flat[idx] = flat[idx] + values.to(device=out.device, dtype=out.dtype)
    return out


def scheduled_density(epoch: int, num_epochs: int, final_density: float, power: float = 3.0) -> float:
    """Kept density during epoch ``epoch`` (0-based) of a run of ``num_epochs`` epochs.

    ``d(e) = d_final + (1 - d_final) * (1 - e / (E - 1)) ** power`` for ``E > 1``, so the
    first epoch trains densely and the last epoch trains at ``d_final``; ``E <= 1`` gives
    ``1.0``: the only epoch trains densely and the budget is met by pruning at the end of
    training (by then the deltas say which entries matter; pruning before training would
    keep an arbitrary set, every delta being zero).

    Example::

        >>> [round(scheduled_density(e, 4, 0.1), 4) for e in range(4)]
        [1.0, 0.3667, 0.1333, 0.1]
        >>> scheduled_density(0, 1, 0.1)
        1.0
    """
    if num_epochs <= 1:
        return 1.0
    frac = min(max(epoch / (num_epochs - 1), 0.0), 1.0)
    return final_density + (1.0 - final_density) * (1.0 - frac) ** power


@torch.no_grad()
def magnitude_keep_masks(
    scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], keep: int, cap_factor: float = 4.0
) -> list[torch.Tensor]:
    """New masks keeping ``keep`` entries in total: global magnitude with a per-matrix density cap.

    1. Each matrix ``j`` (``n_j`` entries) may keep at most
       ``c_j = ceil(min(1, cap_factor * keep / N) * n_j)`` of its currently kept entries
       (its largest scores): matrices with too many non-zeros lose entries first.
    2. Among those candidates, the ``keep`` largest scores over all matrices are kept.

    Only currently kept entries can stay kept (masks only shrink). If fewer than ``keep``
    entries are currently kept, the masks are returned unchanged.

    Args:
        scores: per-matrix importance (e.g. ``|D|``), any shapes.
        masks: per-matrix ``bool`` masks, shapes as ``scores``.
        keep: total number of entries to keep.
        cap_factor: ``>= 1``; larger values let single matrices stay denser.

    Returns:
        New ``bool`` masks (same shapes and devices as ``masks``).

    Example::

        >>> s = [torch.tensor([3.0, 2.0, 1.0, 0.5]), torch.tensor([0.1, 0.2])]
        >>> m = [torch.ones(4, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
        >>> [x.tolist() for x in magnitude_keep_masks(s, m, keep=3, cap_factor=1.0)]
        [[True, True, False, False], [False, True]]
    """
    if cap_factor < 1.0:
        raise ValueError(f"Expected argument `cap_factor` to be >= 1, but got {cap_factor}.")
    total = sum(m.numel() for m in masks)
    current = sum(int(m.sum()) for m in masks)
    if keep >= current:
        return [m.clone() for m in masks]
    cap = min(1.0, cap_factor * keep / max(total, 1))
    candidates = _capped_candidates(scores, masks, cap)
    if sum(int((c >= 0).sum()) for c in candidates) < keep:  # caps too tight for sparse matrices
        candidates = _capped_candidates(scores, masks, 1.0)
    devices = {c.device for c in candidates}
    dev = next(iter(devices)) if len(devices) == 1 else torch.device("cpu")
    allc = torch.cat([c.to(dev) for c in candidates])
    chosen = topk_mask(allc, keep) & (allc >= 0)
    out = []
    offset = 0
    for m in masks:
        out.append(chosen[offset : offset + m.numel()].reshape(m.shape).to(m.device))
        offset += m.numel()
    return out


def _capped_candidates(
    scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], cap: float
) -> list[torch.Tensor]:
    """Per matrix: flat scores of its ``ceil(cap * n)`` best kept entries, ``-1`` elsewhere."""
    candidates = []
    for s, m in zip(scores, masks):
        flat_s = s.detach().reshape(-1).float().abs()
        flat_m = m.reshape(-1)
        limit = min(int(flat_m.sum()), math.ceil(cap * flat_m.numel()))
        score = torch.where(flat_m, flat_s, torch.full_like(flat_s, -1.0))
        cand = topk_mask(score, limit)
        candidates.append(torch.where(cand, score, torch.full_like(score, -1.0)))
    return candidates
