"""ValidationClock: one row per validation run, increasing seconds and steps, resumable."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

from lightning_amortized.callbacks import ValidationClock
from lightning_amortized.data import LibriSpeechDataModule
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder


def _fit(root: Path, clock: ValidationClock, epochs: int, ckpt: str | None = None, dirpath: Path | None = None) -> pl.Trainer:
    dm = LibriSpeechDataModule(str(root), ["train"], ["train"], [], max_batch_seconds=2.0)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, val_check_interval=0.5, num_sanity_val_steps=1, callbacks=[clock],
        enable_checkpointing=dirpath is not None, default_root_dir=str(dirpath or root),
    )
    pl.seed_everything(0)
    trainer.fit(ASRModule(RecurrentEncoder(240, 8, 1)), datamodule=dm, ckpt_path=ckpt)
    return trainer


def test_rows_per_validation_with_increasing_time_and_steps(fake_layout: Path) -> None:
    clock = ValidationClock("val/wer")
    trainer = _fit(fake_layout, clock, epochs=2)
    per_epoch = trainer.num_training_batches // int(trainer.val_check_batch)
    assert per_epoch >= 2 and len(clock.rows) == 2 * per_epoch  # mid-epoch runs counted, the sanity check not
    steps = [r["step"] for r in clock.rows]
    assert [r["epoch"] for r in clock.rows] == [round(s / trainer.num_training_batches, 2) for s in steps]
    assert steps == sorted(steps) and steps[-1] == trainer.global_step
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(clock.rows, clock.rows[1:]))
    assert clock.rows[-1]["epoch"] == pytest.approx(2.0)
    assert clock.rows[-1]["value"] == pytest.approx(float(trainer.callback_metrics["val/wer"]))
    trainer.validate(trainer.lightning_module, datamodule=trainer.datamodule)
    assert len(clock.rows) == 2 * per_epoch  # trainer.validate() is not part of the curve


def test_resumed_run_continues_the_curve(fake_layout: Path, tmp_path: Path) -> None:
    first = ValidationClock()
    trainer = _fit(fake_layout, first, epochs=1, dirpath=tmp_path)
    ckpt = trainer.checkpoint_callback.best_model_path
    resumed = ValidationClock()
    _fit(fake_layout, resumed, epochs=2, ckpt=ckpt, dirpath=tmp_path / "r")
    assert resumed.rows[: len(first.rows)] == first.rows
    assert len(resumed.rows) == 2 * len(first.rows)
    assert resumed.rows[-1]["seconds"] >= first.rows[-1]["seconds"]


def test_testing_a_checkpoint_keeps_the_curve(fake_layout: Path, tmp_path: Path) -> None:
    """`trainer.test(ckpt_path=...)` (and validate) load the callbacks' states of that checkpoint; the clock
    keeps the rows of the fit instead of going back to those of an earlier (best) epoch."""
    early = _fit(fake_layout, ValidationClock(), epochs=1, dirpath=tmp_path / "a").checkpoint_callback.best_model_path
    clock = ValidationClock()
    trainer = _fit(fake_layout, clock, epochs=2, ckpt=early, dirpath=tmp_path / "b")
    rows = list(clock.rows)
    import torch

    assert len(torch.load(early, weights_only=False)["callbacks"][clock.state_key]["rows"]) < len(rows)
    trainer.test(trainer.lightning_module, datamodule=trainer.datamodule, ckpt_path=early, verbose=False)
    trainer.validate(trainer.lightning_module, datamodule=trainer.datamodule, ckpt_path=early, verbose=False)
    assert clock.rows == rows


def test_monitor_must_be_named_and_match_on_resume() -> None:
    with pytest.raises(ValueError, match="`monitor`"):
        ValidationClock("")
    assert ValidationClock("val/wer").state_key != ValidationClock("val/cer").state_key
    with pytest.raises(ValueError, match="same `monitor`"):
        ValidationClock("val/cer").load_state_dict({"monitor": "val/wer", "rows": []})


def test_epochs_are_counted_in_batches_with_gradient_accumulation() -> None:
    import torch

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            return self.lin(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            self.log("val/wer", 0.5)

        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(20, 4))
    clock = ValidationClock("val/wer")
    pl.Trainer(max_epochs=3, accumulate_grad_batches=4, callbacks=[clock], logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(
        Tiny(), torch.utils.data.DataLoader(data, batch_size=2), torch.utils.data.DataLoader(data, batch_size=10))
    # 10 batches per epoch, steps after batches 4, 8 and 10 (the last, incomplete window): 3 per epoch
    assert [(r["step"], r["epoch"]) for r in clock.rows] == [(3, 1.0), (6, 2.0), (9, 3.0)]
