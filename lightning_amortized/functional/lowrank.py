"""Truncated SVD factors: the best rank-``r`` approximation ``W ~= U V`` of a matrix.

Used to initialise factorized ("lowrank", "small") fast branches of amortized encoders
from the slow weights (:mod:`lightning_amortized.nn.amortized.fast`).

Example:
    >>> w = torch.outer(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0, 4.0]))  # rank 1
    >>> u, v = svd_factors(w, 1)
    >>> u.shape, v.shape, torch.allclose(u @ v, w)
    (torch.Size([2, 1]), torch.Size([1, 3]), True)
"""

from __future__ import annotations

import torch

__all__ = ["svd_factors"]


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``U (O, r)`` and ``V (r, I)`` with ``U @ V`` the best rank-``r`` approximation of ``w`` ``(O, I)``.

    The singular values are split evenly (``U = U_r sqrt(S_r)``, ``V = sqrt(S_r) V_r^T``),
    so both factors have the same scale. The SVD runs in float32 on a detached copy;
    the factors have ``w``'s dtype.

    Args:
        w: ``(O, I)`` matrix.
        rank: ``r >= 1``; a rank above ``min(O, I)`` gives the exact factors of rank
            ``min(O, I)``.

    Returns:
        ``(U, V)``.

    Raises:
        ValueError: if ``w`` is not a matrix or ``rank`` is out of range.
    """
    if w.dim() != 2:
        raise ValueError(f"Expected argument `w` to be a matrix (O, I), but got shape {tuple(w.shape)}.")
    if int(rank) < 1:
        raise ValueError(f"Expected argument `rank` to be >= 1, but got {rank}.")
    u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w.dtype), (root[:, None] * vh[:rank]).to(w.dtype)
