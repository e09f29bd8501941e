"""Evaluation helpers shared by the recipes and benchmarks: parameter counts and real-time factor."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from lightning_amortized.nn.streaming import stream

__all__ = ["count_parameters", "single_thread", "realtime_factor"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)`` (an on-device core), restoring the old value."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def realtime_factor(
    model: nn.Module,
    feats: Sequence[torch.Tensor],
    frame_ms: float,
) -> dict[str, float]:
    """Measured single-thread real-time factor of encoding plus the output layer.

    The encoder is timed by :func:`lightning_amortized.nn.streaming.stream` (``step``
    frame by frame for streaming encoders, which is what a device does; one full
    forward otherwise); the output layer is then timed on the encoder outputs.

    Args:
        model: An :class:`~lightning_amortized.module.ASRModule` (anything with
            ``stacker``, ``encoder`` and ``head``).
        feats: Feature matrices ``(T, n_mels)``, one per utterance (10 ms frames).
        frame_ms: Encoder frame length in ms (``10 * stack``).

    Returns:
        ``{"rtf": compute seconds / audio seconds, "ms_per_frame": mean wall ms per encoder frame,
        "frames": encoder frames}``.
    """
    model.eval()
    out_layer = model.head if getattr(model, "loss_kind", "ctc") == "ctc" else model.joint_enc
    total_ms, frames = 0.0, 0
    for f in feats:
        x, n = model.stacker(f[None], torch.tensor([f.shape[0]]))
        result = stream(model.encoder, x[0, : int(n[0])], frame_ms=frame_ms)
        with single_thread():
            t0 = time.perf_counter()
            out_layer(result.outputs)
            total_ms += result.total_ms + 1000.0 * (time.perf_counter() - t0)
        frames += int(n[0])
    audio_ms = frames * frame_ms
    return {"rtf": total_ms / audio_ms, "ms_per_frame": total_ms / max(1, frames), "frames": float(frames)}
