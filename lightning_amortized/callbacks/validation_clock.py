r"""
Validation clock
================

Records a time-to-accuracy curve: after every validation run, the wall-clock seconds since
the fit started, the optimizer step, the (fractional) epoch and the monitored metric.

"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks.callback import Callback
from typing_extensions import override

__all__ = ["ValidationClock"]


class ValidationClock(Callback):
    r"""Keeps ``(seconds, step, epoch, value)`` rows, one per validation run (sanity checks skipped).

    ``seconds`` is wall-clock time since ``on_fit_start`` (training and validation both
    count, as a user waiting for the model sees them; data preparation and ``setup``, e.g.
    building a feature cache, happen before the clock starts); ``epoch`` is the batches
    trained so far over the batches per epoch, so a mid-epoch validation
    (``val_check_interval < 1``) lands between integers. Only validation inside
    ``trainer.fit`` is recorded. Used by ``benchmarks/convergence.py`` and the demo recipe to plot
    validation WER against time and steps; the rows also go to the checkpoint, so a
    resumed run continues its curve.

    Args:
        monitor: Logged metric to record (from ``trainer.callback_metrics``).

    Example::

        clock = ValidationClock("val/wer")
        trainer = Trainer(callbacks=[clock], val_check_interval=0.5)
        trainer.fit(model, datamodule=dm)
        clock.rows  # [{"seconds": 31.2, "step": 268, "epoch": 0.5, "value": 0.98}, ...]
    """

    def __init__(self, monitor: str = "val/wer") -> None:
        super().__init__()
        if not monitor:
            raise ValueError(f"Expected argument `monitor` to be a metric name, but got {monitor!r}.")
        self.monitor = monitor
        self.rows: list[dict[str, float]] = []
        self._t0 = 0.0
        self._offset = 0.0
        self._stage: str | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stage = stage  # called before Lightning restores a checkpoint's callback states

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._offset = self.rows[-1]["seconds"] if self.rows else 0.0
        self._t0 = time.perf_counter()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or trainer.state.fn != "fit":  # not trainer.validate()
            return
        # training batches done (not optimizer steps x accumulation: an epoch's last, incomplete window steps too)
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.completed
        self.rows.append(
            {
                "seconds": round(self._offset + time.perf_counter() - self._t0, 1),
                "step": int(trainer.global_step),
                "epoch": round(batches / max(1, trainer.num_training_batches), 2),
                "value": float(value),
            }
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "rows": list(self.rows)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the rows of a checkpoint when fitting resumes from it; ignored by ``validate``/``test``/``predict``
        with a ``ckpt_path`` (they load the callbacks' states too, which would cut the rows back to that checkpoint's)."""
        if self._stage not in (None, "fit"):
            return
        if state_dict.get("monitor", self.monitor) != self.monitor:
            raise ValueError(
                f"This checkpoint's ValidationClock recorded {state_dict['monitor']!r}, not {self.monitor!r}; "
                "resume with the same `monitor`."
            )
        self.rows = list(state_dict.get("rows", []))
