"""Evaluation helpers shared by the recipes and benchmarks: timed fit + test, parameter counts, real-time factor."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from lightning_amortized.nn.modes import eval_mode
from lightning_amortized.nn.streaming import stream

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["count_parameters", "fit_and_test", "single_thread", "realtime_factor", "split_fields", "split_keys"]


def fit_and_test(
    trainer: "pl.Trainer",
    model: "pl.LightningModule",
    datamodule: "pl.LightningDataModule",
    test: bool = True,
    monitor: str = "val/wer",
    ckpt_path: str | None = None,
) -> dict[str, Any]:
    """Fit with a :class:`~lightning_amortized.callbacks.ValidationClock`, then test the best checkpoint.

    The one fit-then-test path of the demo recipe, the base benchmark and the convergence study.
    The clock is added to ``trainer.callbacks`` (a trainer that already has a clock for
    ``monitor`` keeps its own: its state key would collide).

    Args:
        trainer: A ``lightning.pytorch.Trainer`` (its ``ModelCheckpoint``, if any, names the best checkpoint).
        model: The ``LightningModule``.
        datamodule: The ``LightningDataModule``.
        test: Run ``trainer.test`` on the best checkpoint (the last weights when there is none).
        monitor: Metric the clock records after every validation run.
        ckpt_path: Resume the fit from this checkpoint (``trainer.fit(ckpt_path=...)``); the clock's
            rows of the interrupted run come back with it and its seconds go on from there.

    Returns:
        ``{"fit_seconds", "best_checkpoint" ("" without a checkpoint callback), "test" (the
        logged test metrics of every test dataloader, e.g. ``test/test/wer`` and
        ``test/test-other/wer``; ``{}`` when ``test`` is False), "val_curve" ({"seconds",
        "step", "epoch", "value"}: lists of equal length)}``. ``fit_seconds`` is this call's
        ``fit``; after a resume the curve's ``seconds`` include the interrupted run's.
    """
    from lightning_amortized.callbacks.validation_clock import ValidationClock

    clock = next((c for c in trainer.callbacks if isinstance(c, ValidationClock) and c.monitor == monitor), None)
    if clock is None:
        clock = ValidationClock(monitor)
        trainer.callbacks.append(clock)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_s = time.perf_counter() - t0
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results: dict[str, Any] = {}
    if test:  # one dict per test dataloader, each with its own split's metrics
        for per_loader in trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False):
            results.update(per_loader)
    return {
        "fit_seconds": round(fit_s, 1),
        "best_checkpoint": best,
        "test": {k: float(v) for k, v in results.items()},
        "val_curve": {k: [r[k] for r in clock.rows] for k in ("seconds", "step", "epoch", "value")},
    }


def split_keys(splits: Sequence[str]) -> list[str]:
    """The field prefix of each test split in results files.

    The first split is the headline test set and is ``test`` whatever its name (as in results
    written before there were several); every further split is its name with ``-`` and ``.``
    as ``_``.

    Raises:
        ValueError: no splits, or two splits with the same prefix.

    Example:
        >>> split_keys(["test", "test-other"]), split_keys(["test-clean", "test-other"])
        (['test', 'test_other'], ['test', 'test_other'])
    """
    if not splits:
        raise ValueError("Expected argument `splits` to name at least one test split, but got none.")
    keys = ["test"] + [s.replace("-", "_").replace(".", "_") for s in splits[1:]]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"Expected test splits with distinct field names, but got {list(splits)} (fields {keys}); "
            "list the headline test split first and no split named like it after it."
        )
    return keys


def split_fields(results: Mapping[str, float], splits: Sequence[str]) -> dict[str, float]:
    """WER and CER of each test split as flat results fields, from what ``ASRModule.test_step`` logged.

    Fields are ``<prefix>_wer`` and ``<prefix>_cer`` with the prefixes of :func:`split_keys`:
    ``[test, test-other]`` gives ``test_wer``, ``test_cer``, ``test_other_wer``, ``test_other_cer``.
    Values are fractions, not percentages.

    Args:
        results: Logged test metrics (``fit_and_test(...)["test"]``), keyed ``test/<split>/wer|cer``.
        splits: The datamodule's ``test_splits``, in order.

    Raises:
        ValueError: see :func:`split_keys`; or a split without logged metrics.

    Example:
        >>> split_fields({"test/test/wer": 0.1, "test/test/cer": 0.05, "test/test-other/wer": 0.2,
        ...               "test/test-other/cer": 0.08}, ["test", "test-other"])
        {'test_wer': 0.1, 'test_cer': 0.05, 'test_other_wer': 0.2, 'test_other_cer': 0.08}
    """
    out: dict[str, float] = {}
    for split, key in zip(splits, split_keys(splits)):
        for kind in ("wer", "cer"):
            name = f"test/{split}/{kind}"
            if name not in results:
                raise ValueError(
                    f"No logged metric {name!r} (logged: {sorted(results)}); was {split!r} among the "
                    "datamodule's `test_splits` when `trainer.test` ran?"
                )
            out[f"{key}_{kind}"] = float(results[name])
    return out


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)`` (an on-device core), restoring the old value."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def realtime_factor(
    model: nn.Module,
    feats: Sequence[torch.Tensor],
    frame_ms: float,
) -> dict[str, float]:
    """Measured single-thread real-time factor of encoding plus the output layer.

    The encoder is timed by :func:`lightning_amortized.nn.streaming.stream` (``step``
    frame by frame for streaming encoders, which is what a device does; one full
    forward otherwise); the output layer is then timed on the encoder outputs.

    Args:
        model: An :class:`~lightning_amortized.module.ASRModule` (anything with
            ``stacker``, ``encoder`` and ``head``).
        feats: Feature matrices ``(T, n_mels)``, one per utterance (10 ms frames).
        frame_ms: Encoder frame length in ms (``10 * stack``).

    Returns:
        ``{"rtf": compute seconds / audio seconds, "ms_per_frame": mean wall ms per encoder frame,
        "frames": encoder frames}``.
    """
    feats = list(feats)
    if not feats:
        raise ValueError("Expected at least one feature matrix in `feats`, but got none.")
    out_layer = model.head if getattr(model, "loss_kind", "ctc") == "ctc" else model.joint_enc
    total_ms, frames = 0.0, 0
    with eval_mode(model):  # every mode restored: a later fit must train as before
        for f in feats:
            x, n = model.stacker(f[None], torch.tensor([f.shape[0]], device=f.device))
            result = stream(model.encoder, x[0, : int(n[0])], frame_ms=frame_ms)
            with single_thread():
                t0 = time.perf_counter()
                out_layer(result.outputs)
                total_ms += result.total_ms + 1000.0 * (time.perf_counter() - t0)
            frames += int(n[0])
    audio_ms = frames * frame_ms
    return {"rtf": total_ms / audio_ms, "ms_per_frame": total_ms / max(1, frames), "frames": float(frames)}
