"""Evaluation helpers shared by the recipes and benchmarks: parameter counts and real-time factor."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

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
    streaming: bool = True,
) -> dict[str, float]:
    """Measured single-thread real-time factor of encoding (and the output layer).

    Args:
        model: An :class:`~lightning_amortized.module.ASRModule` (anything with
            ``stacker``, ``encoder`` and ``head``).
        feats: Feature matrices ``(T, n_mels)``, one per utterance (10 ms frames).
        frame_ms: Encoder frame length in ms (``10 * stack``).
        streaming: Use the encoder's ``step`` frame by frame when it has one (what a
            device does); otherwise one full-utterance forward.

    Returns:
        ``{"rtf": compute seconds / audio seconds, "ms_per_frame": mean wall ms per encoder frame,
        "frames": encoder frames}``.
    """
    model.eval()
    total_s, frames = 0.0, 0
    with single_thread():
        for f in feats:
            x, n = model.stacker(f[None], torch.tensor([f.shape[0]]))
            enc = model.encoder
            out_layer = model.head if getattr(model, "loss_kind", "ctc") == "ctc" else model.joint_enc
            t0 = time.perf_counter()
            if streaming and hasattr(enc, "step") and hasattr(enc, "init_state"):
                state = enc.init_state(1)
                for t in range(int(n[0])):
                    y, state = enc.step(x[:, t], state)
                    out_layer(y)
            else:
                out_layer(enc(x, n)[0])
            total_s += time.perf_counter() - t0
            frames += int(n[0])
    audio_s = frames * frame_ms / 1000.0
    return {"rtf": total_s / audio_s, "ms_per_frame": 1000.0 * total_s / max(1, frames), "frames": float(frames)}
