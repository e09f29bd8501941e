r"""
Periodic checkpoint
===================

Crash insurance beside the usual best-model checkpoint: the newest training state every
``every_n_train_steps`` steps and at the end of training, in a file of its own
(``last-step.ckpt``). After ``fit`` it holds the final weights.

Why not a second plain ``ModelCheckpoint(save_last=True)``: two of them in one folder share
the name ``last``, whichever writes first gets ``last.ckpt`` and the other ``last-v1.ckpt``;
and Lightning writes ``last`` only as a copy of a checkpoint it saves, so with a
``monitor``-ed one (saved when the metric improves) and a step-based one, no file is
guaranteed to hold the weights of the last step.

"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

__all__ = ["PeriodicCheckpoint"]


class PeriodicCheckpoint(ModelCheckpoint):
    """Save the full training state every ``every_n_train_steps`` steps and when training ends, as ``last-step.ckpt``.

    A ``ModelCheckpoint`` with ``save_top_k=0`` and ``save_last=True`` whose last
    checkpoint is named ``last-step`` instead of ``last`` (so it never takes the ``last.ckpt``
    of another ``ModelCheckpoint`` in the same folder) and which also saves at the end of
    ``fit``: after training, ``last-step.ckpt`` holds the final weights whether or not the
    monitored metric improved at the end (tested). Resume with ``Trainer.fit(ckpt_path="last")``
    when the callbacks write to a fixed ``dirpath``: Lightning takes the newest of every
    callback's last checkpoints, which after a crash is this one.

    Args:
        every_n_train_steps: Training steps between two saves (``>= 1``).
        dirpath: Folder of the checkpoints (default: the trainer's checkpoint folder, as
            for ``ModelCheckpoint``).
        verbose: Report each save.

    Raises:
        ValueError: for ``every_n_train_steps < 1``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> from lightning_amortized.callbacks import PeriodicCheckpoint
        >>> trainer = Trainer(callbacks=[ModelCheckpoint(monitor="val/wer", save_last=True),
        ...                              PeriodicCheckpoint(every_n_train_steps=200)])

    """

    CHECKPOINT_NAME_LAST = "last-step"

    def __init__(self, every_n_train_steps: int = 200, dirpath: str | None = None, verbose: bool = False) -> None:
        if isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int) or every_n_train_steps < 1:
            raise ValueError(
                f"Expected argument `every_n_train_steps` to be an integer >= 1, but got {every_n_train_steps!r}."
            )
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=0, save_last=True,
                         verbose=verbose)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the final state (Lightning's own ``on_train_end`` saves ``last`` only if none was saved yet)."""
        if trainer.fast_dev_run or trainer.sanity_checking or self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
