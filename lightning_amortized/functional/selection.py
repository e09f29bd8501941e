"""Magnitude selection: a boolean mask of the ``k`` largest scores.

One definition for the package: the sparse fast branch of an amortized encoder
(:mod:`lightning_amortized.nn.amortized.fast`), the pruning schedule of sparse diffs
(:mod:`lightning_amortized.diffs.sparse`) and the export of diff files all keep "the
``k`` entries of largest magnitude" through :func:`topk_mask`.

Example:
    >>> w = torch.tensor([[0.5, -3.0], [2.0, 0.1]])
    >>> topk_mask(w.abs(), 2).tolist()
    [[False, True], [True, False]]
"""

from __future__ import annotations

import torch

__all__ = ["topk_mask"]


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` largest entries of ``scores`` (over all its elements, any shape).

    Exactly ``k`` entries are True. Between equal scores at the boundary the choice is
    ``torch.topk``'s. For magnitude pruning pass ``w.abs()``; to exclude entries give
    them a score below every candidate (e.g. ``-1`` for magnitudes).

    Args:
        scores: Tensor of any shape (float or integer scores).
        k: Number of entries to keep, ``0 <= k <= scores.numel()``.

    Returns:
        bool tensor of the shape and device of ``scores``.

    Raises:
        ValueError: if ``k`` is negative or larger than the number of entries.

    Example:
        >>> topk_mask(torch.tensor([1.0, 5.0, 3.0, 4.0]), 0).tolist()
        [False, False, False, False]
    """
    n = scores.numel()
    if not 0 <= int(k) <= n:
        raise ValueError(f"Expected argument `k` to be in [0, {n}] (the number of scores), but got {k}.")
    flat = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k > 0:
        flat[torch.topk(scores.reshape(-1), int(k), sorted=False).indices] = True
    return flat.reshape(scores.shape)
