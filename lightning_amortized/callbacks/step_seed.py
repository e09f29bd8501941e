r"""
Step seed
=========

Reseeds torch's global generator before every training batch from the run seed, the
epoch, the batch index and the process rank, so that the random numbers a step draws (Gumbel noise
of the arbitrators, dropout) depend only on where the run is. A run killed and resumed
from any checkpoint then trains bit for bit like the run that was never interrupted
(on CPU; on GPU as far as the kernels are deterministic), and DDP processes draw
independent noise instead of the same noise from the same seed.

"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from typing_extensions import override

from lightning_amortized.seeding import derive_seed

__all__ = ["StepSeed"]


class StepSeed(Callback):
    """Seed torch's global generator from ``(seed, epoch, batch_idx, rank)`` before each training batch.

    Lightning checkpoints no generator state, and restoring one would not be enough:
    a checkpoint is written after a step while the data pipeline may already have drawn
    from the generator for the next one. Deriving the seed from the batch's place instead
    makes the draws of batch ``i`` of epoch ``e`` the same in every run that reaches it
    (micro-batches of an accumulated step get different seeds). Together with
    :class:`~lightning_amortized.data.ResumableDataLoader` (same batches, same SpecAugment
    masks after a resume) it makes crash-and-resume exact.

    Only the training step is reseeded (``on_train_batch_start``); validation is
    deterministic in this package's modules. Python's and numpy's generators are left
    alone.

    Args:
        seed: Run seed; ``None`` uses ``PL_GLOBAL_SEED`` (set by
            ``lightning.seed_everything`` and LightningCLI's ``seed_everything``), else 0.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_amortized.callbacks import StepSeed
        >>> trainer = Trainer(callbacks=[StepSeed(seed=0)])

    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"Expected argument `seed` to be an integer or None, but got {seed!r}.")
        self.seed = seed

    def run_seed(self) -> int:
        """The run seed in use (``seed``, else ``PL_GLOBAL_SEED``, else 0)."""
        if self.seed is not None:
            return self.seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(derive_seed(self.run_seed(), trainer.current_epoch, batch_idx, trainer.global_rank))
