r"""
Arbitrator temperature
======================

Anneals the Gumbel-softmax temperature of every :class:`~lightning_amortized.nn.Arbitrator`
in the model once per training epoch, switches to straight-through hard gates at the end
of the schedule, and logs the temperature and the decision sharpness.

"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_amortized.callbacks.finite import check_finite_grads, loss_scaling
from lightning_amortized.nn.amortized import AmortizedEncoder
from lightning_amortized.nn.arbitrator import Arbitrator, _as_float

__all__ = ["ArbitratorTemperature"]

_SCHEDULES = ("exponential", "linear", "constant")


class ArbitratorTemperature(Callback):
    r"""Per-epoch temperature schedule for the arbitrators of amortized encoders.

    At the start of training epoch ``e`` (0-based) every ``Arbitrator`` found in the
    ``LightningModule`` gets the temperature

    * ``"exponential"``: :math:`\tau_e = \tau_0 (\tau_1/\tau_0)^{\min(e, E-1)/(E-1)}`,
    * ``"linear"``: :math:`\tau_e = \tau_0 + (\tau_1-\tau_0)\min(e, E-1)/(E-1)`,
    * ``"constant"``: :math:`\tau_e = \tau_0`,

    with :math:`\tau_0` = ``start``, :math:`\tau_1` = ``end``, :math:`E` = ``epochs``
    (with ``epochs=1`` the schedule is at ``end`` from the first epoch). From epoch
    ``E - 1`` on, if ``straight_through_at_end``, the gates are straight-through hard
    (one-hot forward, soft gradient), so the measured sharpness is exactly 1.

    A NaN or Inf gradient in an arbitrator stops training before the optimizer step with a
    :class:`~lightning_amortized.callbacks.finite.NonFiniteError` naming the parameter and
    the step (under fp16 loss scaling the ``GradScaler`` skips such steps instead).

    Logged through ``pl_module.log`` (epoch means): ``arbitrator/temperature`` and
    ``arbitrator/sharpness`` (mean over valid frames of the largest gate value, 0.5 for
    a 50/50 split between two branches, 1.0 for hard decisions).

    Args:
        start: Temperature of the first epoch (> 0).
        end: Temperature reached at epoch ``epochs - 1`` (> 0).
        schedule: ``"exponential"``, ``"linear"`` or ``"constant"``.
        epochs: Length of the schedule in epochs (>= 1).
        straight_through_at_end: Switch the arbitrators to straight-through hard gates
            from epoch ``epochs - 1`` on (the callback then owns their
            ``straight_through`` flag).

    Raises:
        ValueError: If ``start`` or ``end`` is not positive or ``epochs`` < 1.
        MisconfigurationException: If ``schedule`` is unknown.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_amortized.callbacks.temperature import ArbitratorTemperature
        >>> cb = ArbitratorTemperature(start=1.0, end=0.05, epochs=4)
        >>> [round(cb.temperature_at(e), 4) for e in range(5)]
        [1.0, 0.3684, 0.1357, 0.05, 0.05]
        >>> trainer = Trainer(callbacks=[cb])

    """

    def __init__(
        self,
        start: float = 1.0,
        end: float = 0.05,
        schedule: Literal["exponential", "linear", "constant"] = "exponential",
        epochs: int = 4,
        straight_through_at_end: bool = True,
    ) -> None:
        for name, value in (("start", start), ("end", end)):
            value = _as_float(value)  # numpy and 0-d tensor scalars too
            if not (isinstance(value, float) and value > 0 and math.isfinite(value)):
                raise ValueError(f"Expected argument `{name}` to be a positive temperature, but got {value!r}.")
        if schedule not in _SCHEDULES:
            raise MisconfigurationException(
                f"Expected argument `schedule` to be one of {_SCHEDULES}, but got {schedule!r}."
            )
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"Expected argument `epochs` to be an integer >= 1, but got {epochs}.")
        self.start = float(start)
        self.end = float(end)
        self.schedule = schedule
        self.epochs = epochs
        self.straight_through_at_end = straight_through_at_end
        self.current_temperature: float = self.start
        self.current_straight_through: bool = False

    def temperature_at(self, epoch: int) -> float:
        """Temperature of 0-based training epoch ``epoch``."""
        if self.schedule == "constant":
            return self.start
        frac = 1.0 if self.epochs == 1 else min(max(epoch, 0), self.epochs - 1) / (self.epochs - 1)
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * frac
        return self.start * (self.end / self.start) ** frac

    def straight_through_at(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` uses straight-through hard gates."""
        return self.straight_through_at_end and epoch >= self.epochs - 1

    @staticmethod
    def _arbitrators(pl_module: pl.LightningModule) -> list[Arbitrator]:
        return [m for m in pl_module.modules() if isinstance(m, Arbitrator)]

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Set the current epoch's temperature and gates on every arbitrator; False if there are none."""
        arbitrators = self._arbitrators(pl_module)
        if not arbitrators:
            return False
        epoch = trainer.current_epoch
        self.current_temperature = self.temperature_at(epoch)
        self.current_straight_through = self.straight_through_at(epoch)
        for arb in arbitrators:
            arb.temperature = self.current_temperature
            if self.straight_through_at_end:
                arb.straight_through = self.current_straight_through
        return True

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a run resumed mid-epoch gets no `on_train_epoch_start` for that epoch
        self._apply(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._apply(trainer, pl_module):
            rank_zero_warn("ArbitratorTemperature: the model has no `Arbitrator`; nothing to anneal.")
            return
        rank_zero_info(
            f"Epoch {trainer.current_epoch}: arbitrator temperature {self.current_temperature:.4g}"
            f"{' (straight-through hard gates)' if self.current_straight_through else ''}."
        )

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if loss_scaling(trainer):  # fp16 AMP: the GradScaler skips overflow steps itself
            return
        check_finite_grads(
            (
                (f"{prefix}.{name}", p)
                for prefix, m in pl_module.named_modules()
                if isinstance(m, Arbitrator)
                for name, p in m.named_parameters()
            ),
            trainer.global_step,
            "ArbitratorTemperature",
        )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        routings = [
            m.last_routing
            for m in pl_module.modules()
            if isinstance(m, AmortizedEncoder) and m.last_routing is not None
        ]
        if not routings:
            return
        batch_size = int(routings[0].lengths.shape[0])
        sharpness = sum(float(r.sharpness()) for r in routings) / len(routings)
        frames = int(routings[0].mask.sum())  # the epoch mean weighs each batch by its valid frames, as documented
        kwargs: dict[str, Any] = {"on_step": False, "on_epoch": True}
        pl_module.log("arbitrator/temperature", self.current_temperature, batch_size=batch_size, **kwargs)
        pl_module.log("arbitrator/sharpness", sharpness, sync_dist=True, batch_size=max(frames, 1), **kwargs)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "current_temperature": self.current_temperature,
            "current_straight_through": self.current_straight_through,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.current_temperature = float(state_dict.get("current_temperature", self.start))
        self.current_straight_through = bool(state_dict.get("current_straight_through", False))
