"""Frame-by-frame streaming inference with real single-thread wall-clock timing.

:func:`stream` runs an encoder's ``step`` one frame at a time with hard decisions and
``torch.set_num_threads(1)`` (the previous value is restored), timing every frame with
``time.perf_counter`` (on a GPU after waiting for the frame's kernels). For an :class:`~lightning_amortized.nn.amortized.AmortizedEncoder`
only the chosen branch computes (for a low-rank branch the ``U (V x)`` products, for a
sparse branch CSR products over the stored non-zeros). Encoders without ``step`` are
timed on one full-utterance ``forward`` (spread evenly over the frames).

The real-time factor is ``RTF = total compute time / audio duration``
(``T * frame_ms``); below 1 the device keeps up on average.

Example:
    >>> from lightning_amortized.nn.encoders import RecurrentEncoder
    >>> r = stream(RecurrentEncoder(40, 32, 1), torch.randn(20, 40), frame_ms=30.0)
    >>> r.outputs.shape, r.wall_ms.shape, r.rtf < 1.0
    (torch.Size([20, 32]), torch.Size([20]), True)
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from lightning_amortized.functional.latency import real_time_factor
from lightning_amortized.nn.modes import eval_mode

__all__ = ["StreamResult", "stream", "compare_wall_clock"]


@dataclass
class StreamResult:
    """Outputs and timing of one streamed utterance.

    Attributes:
        outputs: ``(T, D)`` encoder outputs.
        decisions: ``(T,)`` int64 branch per frame (0 for single encoders).
        wall_ms: ``(T,)`` float64 compute time of each frame in ms.
        frame_ms: Audio per frame in ms.
    """

    outputs: torch.Tensor
    decisions: torch.Tensor
    wall_ms: torch.Tensor
    frame_ms: float

    @property
    def total_ms(self) -> float:
        """Total compute time in ms."""
        return float(self.wall_ms.sum())

    @property
    def rtf(self) -> float:
        """Real-time factor: compute time over audio duration (``functional.latency.real_time_factor``)."""
        return real_time_factor(self.wall_ms, self.frame_ms)


def _frame_ms(encoder: nn.Module, frame_ms: float | None) -> float:
    value = frame_ms if frame_ms is not None else getattr(encoder, "frame_ms", None)
    if value is None or not value > 0:
        raise ValueError(
            f"Expected argument `frame_ms` to be a positive number of ms (the encoder has none), but got {frame_ms}."
        )
    return float(value)


def _synchronize(device: torch.device) -> None:
    """Wait for the kernels queued on ``device`` (CUDA, MPS), so that a wall-clock reading covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def stream(
    encoder: nn.Module,
    x: torch.Tensor,
    frame_ms: float | None = None,
    force_branch: int | None = None,
    num_threads: int = 1,
) -> StreamResult:
    """Stream one utterance ``x`` ``(T, F)`` through ``encoder`` frame by frame and time it.

    Args:
        encoder: A streaming encoder (``init_state``/``step``), an ``AmortizedEncoder``
            or any encoder (timed on a full ``forward``).
        x: ``(T, F)`` input frames of one utterance.
        frame_ms: Audio per frame; defaults to ``encoder.frame_ms``.
        force_branch: For an ``AmortizedEncoder``, route every frame to this branch
            (arbitrator skipped): the single-branch baselines on the same weights.
        num_threads: Intra-op threads during the measurement.

    Returns:
        A :class:`StreamResult`.
    """
    if x.dim() != 2:
        raise ValueError(f"Expected argument `x` to have shape (T, F), but got {tuple(x.shape)}.")
    if force_branch is not None:
        branches = getattr(encoder, "num_branches", None)
        if branches is None:
            raise ValueError(f"Argument `force_branch` needs an AmortizedEncoder, but got {type(encoder).__name__}.")
        if isinstance(force_branch, bool) or not isinstance(force_branch, int) or not 0 <= force_branch < branches:
            raise ValueError(f"Expected argument `force_branch` to be None or in [0, {branches}), but got {force_branch!r}.")
    fm = _frame_ms(encoder, frame_ms)
    T = x.shape[0]
    modes = ExitStack()  # every submodule's own mode comes back (a frozen one stays in eval)
    old_threads = torch.get_num_threads()
    amortized = callable(getattr(encoder, "step_with_decision", None))
    begin, end = getattr(encoder, "begin_streaming", None), getattr(encoder, "end_streaming", None)
    try:
        modes.enter_context(eval_mode(encoder))
        torch.set_num_threads(num_threads)
        if callable(begin):
            begin()
        wall = torch.zeros(T, dtype=torch.float64)
        decisions = torch.zeros(T, dtype=torch.long)
        streaming = callable(getattr(encoder, "step", None)) and callable(getattr(encoder, "init_state", None))
        if amortized and not getattr(encoder, "streaming", True):
            streaming = False
        if not streaming:
            forced = amortized and force_branch is not None
            if forced:  # the whole-sequence forward reads the encoder's own setting
                kept_branch, encoder.force_branch = encoder.force_branch, int(force_branch)
            try:
                _synchronize(x.device)
                start = time.perf_counter()
                y, _ = encoder(x[None], torch.tensor([T], device=x.device))
                _synchronize(x.device)
                wall[:] = (time.perf_counter() - start) * 1000.0 / max(T, 1)
            finally:
                if forced:
                    encoder.force_branch = kept_branch
            routing = getattr(encoder, "last_routing", None)
            if routing is not None:
                decisions = routing.decisions[0].cpu()
            return StreamResult(y[0], decisions, wall, fm)
        if T > 0:  # one untimed frame on a throwaway state: lazy caches and first calls are not the stream's cost
            if amortized:
                encoder.step_with_decision(x[:1], encoder.init_state(1), force_branch, final=T == 1)
            else:
                encoder.step(x[:1], encoder.init_state(1))
        state = encoder.init_state(1)
        outs = []
        _synchronize(x.device)
        for t in range(T):
            x_t = x[t : t + 1]
            start = time.perf_counter()
            if amortized:
                y_t, state, choice = encoder.step_with_decision(x_t, state, force_branch, final=t == T - 1)
            else:
                y_t, state = encoder.step(x_t, state)
            _synchronize(x.device)  # on a GPU the frame's kernels, not only their launch
            wall[t] = (time.perf_counter() - start) * 1000.0
            if amortized:
                decisions[t] = int(choice[0])
            outs.append(y_t[0])
        y = torch.stack(outs) if outs else x.new_zeros(0, int(encoder.output_size))
        return StreamResult(y, decisions, wall, fm)
    finally:
        if callable(end):
            end()
        torch.set_num_threads(old_threads)
        modes.close()


def compare_wall_clock(
    encoder: nn.Module, x: torch.Tensor, frame_ms: float | None = None, repeats: int = 3
) -> dict[str, float]:
    """Single-thread wall clock of slow-only, fast-only and routed streaming on the same input.

    Each variant is streamed ``repeats`` times and the fastest run is kept (the least
    disturbed by other processes).

    Args:
        encoder: An ``AmortizedEncoder`` (branch 0 fast, the most expensive branch slow).
        x: ``(T, F)`` one utterance.
        frame_ms: Audio per frame; defaults to ``encoder.frame_ms``.
        repeats: Runs per variant.

    Returns:
        ``{"slow_ms", "fast_ms", "routed_ms", "slow_rtf", "fast_rtf", "routed_rtf",
        "fast_over_slow", "routed_over_slow", "routed_slow_share"}`` (times are totals in ms).
    """
    if repeats < 1:
        raise ValueError(f"Expected argument `repeats` to be >= 1, but got {repeats}.")
    slow = int(getattr(encoder, "slow_index", 1))
    out: dict[str, float] = {}
    for name, force in (("slow", slow), ("fast", 0), ("routed", None)):
        runs = [stream(encoder, x, frame_ms, force_branch=force) for _ in range(repeats)]
        best = min(runs, key=lambda r: r.total_ms)
        out[f"{name}_ms"] = best.total_ms
        out[f"{name}_rtf"] = best.rtf
        if force is None:
            out["routed_slow_share"] = float((best.decisions == slow).float().mean()) if len(best.decisions) else 0.0
    out["fast_over_slow"] = out["fast_ms"] / out["slow_ms"]
    out["routed_over_slow"] = out["routed_ms"] / out["slow_ms"]
    return out
