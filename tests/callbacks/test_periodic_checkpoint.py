"""PeriodicCheckpoint: crash insurance that never takes the epoch-end ``last.ckpt``; resume with ``ckpt_path="last"``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_amortized.callbacks import PeriodicCheckpoint


class _Model(BoringModel):
    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("val/wer", float(self.current_epoch))  # never improves after epoch 0: no best checkpoint after it
        return out


class _Crash(Callback):
    """Raise after training step ``at`` (a run killed mid-epoch)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def _trainer(d: Path, epochs: int, *extra: Callback) -> Trainer:
    return Trainer(
        default_root_dir=d, max_epochs=epochs, limit_train_batches=5, limit_val_batches=2, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=d, monitor="val/wer", save_last=True, filename="best-{epoch}"),
                   PeriodicCheckpoint(every_n_train_steps=3, dirpath=d), *extra],
    )


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=False)["global_step"])


def test_last_step_ckpt_holds_the_final_weights_and_resume_takes_the_newest(tmp_path: Path) -> None:
    _trainer(tmp_path, 2).fit(_Model())
    # 10 steps, saves every 3, no improvement after epoch 0: Lightning's last.ckpt is the best checkpoint's copy
    # (step 5); last-step.ckpt was saved at steps 3, 6, 9 and when training ended
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["best-epoch=0.ckpt", "last-step.ckpt", "last.ckpt"]
    assert _step(tmp_path / "last.ckpt") == 5 and _step(tmp_path / "last-step.ckpt") == 10

    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="killed"):
        _trainer(crashed, 2, _Crash(at=7)).fit(_Model())
    assert _step(crashed / "last.ckpt") == 5 and _step(crashed / "last-step.ckpt") == 6
    resumed = _trainer(crashed, 2)
    resumed.fit(_Model(), ckpt_path="last")  # the newer of the two: step 6, mid-epoch
    assert resumed.ckpt_path == str(crashed / "last-step.ckpt") and resumed.global_step == 10
    assert _step(crashed / "last-step.ckpt") == 10


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="`every_n_train_steps` to be an integer >= 1, but got 0"):
        PeriodicCheckpoint(every_n_train_steps=0)
    with pytest.raises(ValueError, match="but got True"):
        PeriodicCheckpoint(every_n_train_steps=True)
