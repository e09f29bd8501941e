r"""
Periodic checkpoint
===================

Crash insurance beside the usual best and epoch-end checkpoints: the newest training state
every ``every_n_train_steps`` steps, in a file of its own (``last-step.ckpt``), so that
``last.ckpt`` stays the epoch-end checkpoint of the other :class:`ModelCheckpoint`.

Two plain ``ModelCheckpoint(save_last=True)`` callbacks in one folder share the name
``last``: whichever writes first gets ``last.ckpt``, the other ``last-v1.ckpt``. With a
step-based one beside the epoch-end one, the step-based one writes first, and after
training ``last.ckpt`` holds the weights of up to ``every_n_train_steps - 1`` steps
before the end: a stale model for anyone who exports ``last.ckpt``.

"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["PeriodicCheckpoint"]


class PeriodicCheckpoint(ModelCheckpoint):
    """Save the full training state every ``every_n_train_steps`` steps as ``last-step.ckpt``.

    A ``ModelCheckpoint`` with ``save_top_k=0`` and ``save_last=True`` whose last
    checkpoint is named ``last-step`` instead of ``last``, so it never takes the epoch-end
    ``last.ckpt`` of another ``ModelCheckpoint`` in the same folder (tested). Resume with
    ``Trainer.fit(ckpt_path="last")`` (``--ckpt_path last`` on the command line): Lightning
    takes the newest of every callback's last checkpoints, which after a crash mid-epoch is
    this one, and after a finished epoch the epoch-end one.

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
