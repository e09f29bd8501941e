r"""
Transcript writer
=================

``Trainer.predict`` returns what ``predict_step`` gives, batch by batch, and keeps it in memory;
run from the command line (``lightning-amortized predict``) that is thrown away. This
callback writes every transcript to a JSON-lines file as its batch ends, one line per
utterance, ``{"split": ..., "id": ..., "text": ...}``, so a long prediction run keeps what it
has done and a user gets a file to score or diff. ``lightning-amortized predict`` adds one
when the config has no prediction writer of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from lightning_amortized.data.datamodule import test_split_name

__all__ = ["TranscriptWriter"]


class TranscriptWriter(BasePredictionWriter):
    """Write the ``{"id", "text"}`` transcripts of ``ASRModule.predict_step`` as JSON lines.

    Args:
        path: The file to write; ``None`` writes ``predictions.jsonl`` in the trainer's
            ``log_dir`` (or ``default_root_dir``). Under DDP each rank writes its own file,
            ``<stem>.rank<r>.jsonl``. An existing file is replaced when prediction starts.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[TranscriptWriter("runs/predictions.jsonl")], logger=False)
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = None if path is None else Path(path)
        self.written: Path | None = None
        self.lines = 0
        self._file: Any = None

    def _target(self, trainer: pl.Trainer) -> Path:
        path = self.path or Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl"
        return path if trainer.world_size == 1 else path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written, self.lines = self._target(trainer), 0
        self.written.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.written.open("w")

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if self._file is None:
            return
        split = test_split_name(trainer, dataloader_idx)
        for item in prediction or []:
            self._file.write(json.dumps({"split": split, **item}) + "\n")
            self.lines += 1
        self._file.flush()

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

