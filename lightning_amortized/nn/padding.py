"""Padding that SpeechBrain's Conformer convolution would otherwise read.

SpeechBrain's ``ConvolutionModule`` (in every Conformer layer) zeroes padded frames only
*after* its depthwise convolution, so the last valid frames of an utterance mix in what the
batch holds past its end, and, through attention in later layers, every frame does: the
outputs depend on how much padding the batch has. :class:`ConvPaddingMask` registers a
forward hook on each such module's pointwise ``bottleneck`` that zeroes the padded frames
before the depthwise convolution sees them, while the owner's forward runs
(:meth:`ConvPaddingMask.padding_masked`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["ConvPaddingMask"]


class ConvPaddingMask:
    """Mixin for an ``nn.Module`` that runs SpeechBrain Conformer layers on padded batches.

    Call :meth:`_mask_conv_padding` once in ``__init__`` (after ``super().__init__()``) with
    the module holding the layers, and run the layers inside ``with self.padding_masked(pad):``
    (``pad``: ``(B, T)``, True past each length). The hooks are bound methods of the owner,
    so ``copy.deepcopy`` and pickling keep each copy masking its own batches.
    """

    _padding: torch.Tensor | None = None

    def _mask_conv_padding(self, module: nn.Module) -> int:
        """Hook every Conformer ``ConvolutionModule`` inside ``module``; returns how many."""
        from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule

        count = 0
        for m in module.modules():
            if isinstance(m, ConvolutionModule):
                m.bottleneck.register_forward_hook(self._zero_padding)
                count += 1
        return count

    def _zero_padding(self, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        pad = self._padding
        if pad is None or out.dim() != 3 or out.shape[0] != pad.shape[0] or out.shape[-1] != pad.shape[1]:
            return out
        return out.masked_fill(pad[:, None, :], 0.0)

    @contextmanager
    def padding_masked(self, pad: torch.Tensor) -> Iterator[None]:
        """Zero ``pad`` (``(B, T)``, True where padded) before every hooked depthwise convolution."""
        self._padding = pad
        try:
            yield
        finally:
            self._padding = None
