"""Frames to chunks and back: a chunk of ``C`` frames is one frame of the encoder contract."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lightning_amortized.functional.masks import lengths_to_mask

__all__ = ["chunks_to_frames", "frames_to_chunks"]


def frames_to_chunks(x: torch.Tensor, lengths: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group feature frames into chunks: ``(B, T, F)`` -> ``(B, N, chunk_size * F)``, ``N = ceil(T / chunk_size)``.

    The last chunk of an utterance is zero-padded (as in SpeechBrain's chunked
    streaming, where the last chunk is padded to full size).

    Args:
        x: Padded features ``(B, T, F)``.
        lengths: Valid frames per utterance ``(B,)`` int64.
        chunk_size: Frames per chunk ``C``.

    Returns:
        ``(chunks (B, N, C * F), num_chunks (B,) int64 = ceil(lengths / C))``.

    Example:
        >>> c, n = frames_to_chunks(torch.randn(2, 10, 3), torch.tensor([10, 5]), 4)
        >>> c.shape, n.tolist()
        (torch.Size([2, 3, 12]), [3, 2])
    """
    if chunk_size <= 0:
        raise ValueError(f"Expected argument `chunk_size` to be a positive integer, but got {chunk_size}.")
    B, T, Fdim = x.shape
    N = -(-T // chunk_size)
    x = x * lengths_to_mask(lengths, T, device=x.device)[..., None].to(x.dtype)
    x = F.pad(x, (0, 0, 0, N * chunk_size - T))
    return x.reshape(B, N, chunk_size * Fdim), torch.div(lengths + chunk_size - 1, chunk_size, rounding_mode="floor")


def chunks_to_frames(
    y: torch.Tensor, lengths: torch.Tensor, frame_size: int, time_downsampling: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ungroup chunk outputs: ``(B, N, C' * D)`` -> ``(B, N * C', D)`` with output-frame lengths.

    Args:
        y: Chunk outputs ``(B, N, C' * D)``.
        lengths: Valid *input* feature frames per utterance ``(B,)`` (not chunks).
        frame_size: Output size per frame ``D``.
        time_downsampling: Input frames per output frame.

    Returns:
        ``(frames (B, N * C', D), out_lengths (B,) = ceil(lengths / time_downsampling))``.

    Example:
        >>> f, n = chunks_to_frames(torch.randn(2, 3, 8), torch.tensor([10, 5]), frame_size=4, time_downsampling=2)
        >>> f.shape, n.tolist()
        (torch.Size([2, 6, 4]), [5, 3])
    """
    B, N, size = y.shape
    if size % frame_size:
        raise ValueError(f"Expected `frame_size` to divide the chunk output size {size}, but got {frame_size}.")
    out = torch.div(lengths + time_downsampling - 1, time_downsampling, rounding_mode="floor")
    return y.reshape(B, N * (size // frame_size), frame_size), out


def _windows(frames: torch.Tensor, context: int, chunk_size: int) -> torch.Tensor:
    """``(B, N * C, F)`` -> ``(B * N, context + C, F)``: each chunk with the ``context`` frames before it (zeros first)."""
    Fdim = frames.shape[-1]
    padded = F.pad(frames, (0, 0, context, 0))
    return padded.unfold(1, context + chunk_size, chunk_size).permute(0, 1, 3, 2).reshape(-1, context + chunk_size, Fdim)


def _tree_zeros(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return torch.zeros_like(tree)
    return type(tree)(_tree_zeros(t) for t in tree)
