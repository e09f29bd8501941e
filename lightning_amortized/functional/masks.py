"""Length masks: which frames of a padded batch are valid.

One definition for the whole package (encoders, arbitrator, losses, backlog, callbacks,
feature normalisation).

Example:
    >>> lengths_to_mask(torch.tensor([2, 3])).int().tolist()
    [[1, 1, 0], [1, 1, 1]]
"""

from __future__ import annotations

import torch

__all__ = ["lengths_to_mask"]


def lengths_to_mask(
    lengths: torch.Tensor, max_len: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean mask ``(B, T)`` that is True on the valid frames ``t < lengths[b]``.

    Args:
        lengths: ``(B,)`` integer number of valid frames per sequence.
        max_len: ``T``, the padded length; ``None`` uses ``lengths.max()`` (``0`` for an
            empty batch).
        device: Where the mask is made (``lengths`` is moved there); ``None`` keeps
            ``lengths.device``.

    Returns:
        ``(B, T)`` bool tensor.

    Raises:
        ValueError: if ``lengths`` is not one-dimensional.

    Example:
        >>> lengths_to_mask(torch.tensor([1, 0]), max_len=3).tolist()
        [[True, False, False], [False, False, False]]
    """
    if lengths.dim() != 1:
        raise ValueError(f"Expected argument `lengths` to have shape (B,), but got {tuple(lengths.shape)}.")
    device = lengths.device if device is None else torch.device(device)
    lengths = lengths.to(device)
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    return torch.arange(max_len, device=device)[None, :] < lengths[:, None]
