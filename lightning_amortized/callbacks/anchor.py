r"""
Anchor to start
===============

L2-SP regularisation for fine-tuning (Li et al., 2018): pull every trainable parameter back
towards the value it had when ``fit`` started, so a model fine-tuned on new data (an update
with new names) forgets less of what it knew. The penalty ``strength * sum ||W - W_start||^2``
is applied through its gradient, ``2 * strength * (W - W_start)``, added once per optimizer
step (after gradient accumulation, and in the units of fp16 gradients at that point: unscaled,
or scaled for a fused optimizer that unscales in its own step), which is what
adding it to the loss would give, without touching the module's ``training_step``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from typing_extensions import override

from lightning_amortized.callbacks.finite import grad_scale

__all__ = ["AnchorToStart"]


class AnchorToStart(Callback):
    """Add the gradient of ``strength * sum_p ||p - p_start||^2`` over trainable parameters before each optimizer step.

    ``p_start`` is each trainable parameter's value at the first ``on_fit_start`` (a copy, in
    the parameter's dtype and device; saved in checkpoints, so a resumed run keeps it; a new
    update needs a new callback). Parameters without a gradient in a step are left alone;
    with several optimizers each step adds the penalty to its own parameters only. With AdamW
    this is an L2 penalty in the loss, not decoupled weight decay towards the start.
    Callbacks listed before this one that read gradients in ``on_before_optimizer_step``
    (``NeuralDiff``'s Fisher scores) see them without the penalty.

    Args:
        strength: ``lambda >= 0`` of the penalty (per squared weight unit); 0 turns it off.

    Raises:
        ValueError: ``strength`` is negative or not a number.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_amortized.callbacks import AnchorToStart
        >>> trainer = Trainer(callbacks=[AnchorToStart(strength=1e-2)])
    """

    def __init__(self, strength: float) -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
            raise ValueError(f"Expected argument `strength` to be a non-negative number, but got {strength!r}.")
        self.strength = float(strength)
        self._start: dict[str, torch.Tensor] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._start:  # a resumed run keeps the anchor of its checkpoint
            self._start = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # an anchor restored from a checkpoint keeps the device it was saved from
        params = dict(pl_module.named_parameters())
        self._start = {n: t.to(params[n].device, params[n].dtype) if n in params else t for n, t in self._start.items()}

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # once per step: after accumulation (on_after_backward runs per micro-batch) and after the
        # fp16 scaler unscaled the gradients (the penalty must not be divided by the loss scale)
        if not self.strength:
            return
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}  # this optimizer's only
        scale = grad_scale(trainer, optimizer)  # a fused optimizer unscales in its step: scale the penalty too
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                start = self._start.get(name)
                if start is not None and p.grad is not None and id(p) in stepped:
                    p.grad.add_(p.detach() - start, alpha=2.0 * self.strength * scale)

    def penalty(self, pl_module: pl.LightningModule) -> float:
        """The current value of ``strength * sum ||p - p_start||^2`` (for logging)."""
        with torch.no_grad():
            return self.strength * sum(
                float((p - self._start[n]).pow(2).sum()) for n, p in pl_module.named_parameters() if n in self._start
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"strength": self.strength, "start": self._start}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.strength = float(state_dict["strength"])
        self._start = dict(state_dict["start"])
