"""Stop training at the first non-finite loss or gradient, naming the step and the parameter.

Shared by :class:`~lightning_amortized.callbacks.NeuralDiff` (the diff tensors) and
:class:`~lightning_amortized.callbacks.ArbitratorTemperature` (the arbitrators). The
check runs in ``on_before_backward`` (the loss) and ``on_before_optimizer_step`` (the
gradients), so the optimizer never applies a non-finite update: the weights are those
after the last good step.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

__all__ = ["NonFiniteError", "check_finite_grads", "check_finite_loss", "grad_scale", "grads_finite", "loss_scaling"]


class NonFiniteError(FloatingPointError):
    """A NaN or Inf loss or gradient; training stopped before the optimizer step."""


_ADVICE = (
    "Training stopped before the optimizer step, so the weights are those after the previous step. "
    "Lower the learning rate, set `gradient_clip_val`, or look for a bad input in this batch."
)


def check_finite_loss(loss: torch.Tensor, step: int, who: str) -> None:
    """Raise :class:`NonFiniteError` if ``loss`` is NaN or Inf.

    Example:
        >>> check_finite_loss(torch.tensor(float("nan")), 7, "NeuralDiff")
        Traceback (most recent call last):
        ...
        lightning_amortized.callbacks.finite.NonFiniteError: NeuralDiff: the loss is nan at step 7. ...
    """
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteError(f"{who}: the loss is {float(loss.detach().float().sum())} at step {step}. {_ADVICE}")


def loss_scaling(trainer: Any) -> bool:
    """Whether the trainer's precision plugin scales the loss (fp16 mixed precision's ``GradScaler``).

    Its NaN/Inf gradients are routine: the scaler skips that step and lowers the scale, so
    gradient checks must leave them to it.
    """
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None


def grad_scale(trainer: Any, optimizer: Any) -> float:
    """The factor the gradients still carry in ``on_before_optimizer_step``: the loss scale or 1.

    Lightning unscales fp16 gradients before that hook, except for optimizers that unscale
    inside their own ``step`` (``_step_supports_amp_scaling``: fused Adam/AdamW); with those the
    gradients the hook sees are multiplied by the ``GradScaler``'s scale. A gradient added in
    the hook must be multiplied by this factor, and one read there divided by it.
    """
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    inner = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
    if scaler is None or not getattr(inner, "_step_supports_amp_scaling", False) or not scaler.is_enabled():
        return 1.0
    return float(scaler.get_scale())


def grads_finite(grads: Iterable[torch.Tensor]) -> bool:
    """Whether every given gradient tensor is free of NaN/Inf (one host sync)."""
    grads = list(grads)
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def check_finite_grads(named: Iterable[tuple[str, torch.Tensor]], step: int, who: str) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter whose gradient has NaN/Inf entries.

    Args:
        named: ``(name, parameter)`` pairs; parameters without a gradient are skipped.
        step: The optimizer step about to be taken (``trainer.global_step``).
        who: What is checking (a callback name), for the message.
    """
    named = [(name, p.grad) for name, p in named if p.grad is not None]
    if grads_finite(p for _, p in named):
        return  # one host sync per step; the offending parameter is looked up only on failure
    name, g = next((n, g) for n, g in named if not bool(torch.isfinite(g).all()))
    n_nan = int(torch.isnan(g).sum())
    raise NonFiniteError(
        f"{who}: the gradient of `{name}` has {n_nan} NaN and {int((~torch.isfinite(g)).sum()) - n_nan} Inf "
        f"entries (of {g.numel()}) at step {step}. {_ADVICE}"
    )
