"""Independent-encoders core: any encoders, each with its own state, projected to a common size.

Each encoder advances only on the frames routed to it (a soft gate ``g`` blends its new
and old state, ``g * new + (1 - g) * old``; a one-hot gate leaves a skipped encoder's
state unchanged); the output of a frame is the gated sum of the projected outputs.
:meth:`_IndependentCore.advance` is that one frame, used by the training forward (over
all frames) and by streaming ``step``. Encoders without ``step``/``init_state`` are
mixed on full-sequence outputs instead (compute is then saved per chunk, not per frame).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_amortized.functional.flops import linear_flops
from lightning_amortized.functional.masks import lengths_to_mask

__all__ = ["_IndependentCore"]


def _tree_map(fn: Callable[..., torch.Tensor], *trees: Any) -> Any:
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return fn(*trees)
    if isinstance(first, (tuple, list)):
        return type(first)(_tree_map(fn, *items) for items in zip(*trees))
    if isinstance(first, dict):
        return {k: _tree_map(fn, *(t[k] for t in trees)) for k in first}
    if first is None:
        return None
    raise TypeError(f"Cannot blend encoder state of type {type(first).__name__}; use tensors, tuples, lists or dicts.")


def _can_stream(encoder: nn.Module) -> bool:
    """Whether ``encoder`` follows the streaming contract (``init_state`` and ``step``)."""
    return callable(getattr(encoder, "step", None)) and callable(getattr(encoder, "init_state", None))


def _batch_dims(encoder: nn.Module, batch_size: int) -> Any:
    """Which dimension of every state tensor is the batch (found by comparing two batch sizes)."""
    a, b = encoder.init_state(2), encoder.init_state(3)

    def find(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dims = [i for i, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q]
        return torch.tensor(dims[0] if dims else -1)

    return _tree_map(find, a, b)


def _blend(new: Any, old: Any, g: torch.Tensor, dims: Any) -> Any:
    """``g * new + (1 - g) * old`` with ``g`` ``(B,)`` broadcast along each tensor's batch dim."""

    def one(n: torch.Tensor, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        d = int(d)
        if d < 0:  # no batch dimension: keep the new value
            return n
        shape = [1] * n.dim()
        shape[d] = g.shape[0]
        gg = g.reshape(shape).to(n.dtype)
        return gg * n + (1 - gg) * o

    return _tree_map(one, new, old, dims)


class _IndependentCore(nn.Module):
    """Independent encoders ``[fast, slow, ...]`` with projections to a common size.

    Args:
        branches: The encoders (encoder contract), branch ``k`` at index ``k``.
        projection: Common output size (a ``Linear`` per branch); ``None`` requires
            equal output sizes.

    Raises:
        ValueError: if input sizes differ, or output sizes differ without ``projection``.
    """

    def __init__(self, branches: list[nn.Module], projection: int | None) -> None:
        super().__init__()
        for i, b in enumerate(branches):  # the encoder contract, named before anything reads it
            missing = [a for a in ("input_size", "output_size", "flops_per_frame") if not hasattr(b, a)]
            if missing or not isinstance(b, nn.Module):
                raise TypeError(
                    f"Branch {i} ({type(b).__name__}) does not follow the encoder contract: it lacks {missing or 'nn.Module'}. "
                    "Wrap it (e.g. RecurrentEncoder, ConformerEncoderAdapter, SpeechBrainEncoder) or give it "
                    "`input_size`, `output_size` and `flops_per_frame()`."
                )
        sizes = [int(b.output_size) for b in branches]
        ins = {int(b.input_size) for b in branches}
        if len(ins) != 1:
            got = [b.input_size for b in branches]
            raise ValueError(f"Expected all branches to take the same `input_size`, but got {got}.")
        if projection is None and len(set(sizes)) > 1:
            names = ", ".join(f"branch {i} ({type(b).__name__}): {s}" for i, (b, s) in enumerate(zip(branches, sizes)))
            raise ValueError(
                f"Branch output sizes differ ({names}); pass `projection=<size>` to project them to a common size."
            )
        self.branches = nn.ModuleList(branches)
        self.num_branches = len(branches)
        self.input_size = ins.pop()
        self.output_size = projection if projection is not None else sizes[0]
        self.projections = nn.ModuleList(
            nn.Linear(s, projection) if projection is not None else nn.Identity() for s in sizes
        )
        self.streaming = all(_can_stream(b) for b in branches)

    def branch_flops(self) -> list[int]:
        """FLOPs per frame of every branch, its projection included."""
        out = []
        for b, p in zip(self.branches, self.projections):
            extra = linear_flops(p.in_features, p.out_features) if isinstance(p, nn.Linear) else 0
            out.append(int(b.flops_per_frame()) + extra)
        return out

    def advance(self, x_t: torch.Tensor, states: list[Any], g: torch.Tensor, dims: list[Any]) -> torch.Tensor:
        """One frame ``(B, F)`` through every branch with gates ``g`` ``(B, K)``; updates ``states`` in place.

        Returns:
            ``(B, D)``, the gated sum of the projected outputs.
        """
        y: Any = 0
        for k, (b, p) in enumerate(zip(self.branches, self.projections)):
            yk, new = b.step(x_t, states[k])
            states[k] = _blend(new, states[k], g[:, k], dims[k])
            y = y + g[:, k : k + 1] * p(yk)
        return y

    def forward_gated(
        self, x: torch.Tensor, lengths: torch.Tensor, gates: torch.Tensor, only: int | None = None
    ) -> torch.Tensor:
        """Encode ``(B, T, F)`` with gates ``(B, T, K)`` -> ``(B, T, D)``; ``only=k``: one-hot gates on ``k``."""
        B, T, _ = x.shape
        mask = lengths_to_mask(lengths, T, device=x.device)[..., None]
        if only is not None:  # one-hot gates on branch `only`: the other branches keep their state
            y = self.projections[only](self._whole(only, x, lengths))
            return y * mask.to(y.dtype)
        if not self.streaming:  # full-sequence outputs mixed per frame (compute saved only per chunk)
            y = 0
            for k, p in enumerate(self.projections):
                y = y + gates[..., k : k + 1] * p(self._whole(k, x, lengths))
            return y * mask.to(x.dtype)
        states = [b.init_state(B) for b in self.branches]
        dims = [_batch_dims(b, B) for b in self.branches]
        g_t, x_t = gates.unbind(1), x.unbind(1)  # unbind: O(T) backward
        outs = [self.advance(x_t[t], states, g_t[t], dims) for t in range(T)]
        y = torch.stack(outs, 1) if outs else x.new_zeros(B, 0, self.output_size)
        return y * mask.to(y.dtype)

    def _whole(self, k: int, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Branch ``k`` on whole utterances ``(B, T, F)`` -> ``(B, T, D_k)``; refuses a branch that changes ``T``."""
        b = self.branches[k]
        yk, _ = b(x, lengths)
        if yk.shape[1] != x.shape[1]:
            raise ValueError(
                f"Branch {k} ({type(b).__name__}) changes the frame rate ({x.shape[1]} -> {yk.shape[1]} frames); "
                "frame-wise routing needs branches with the same frame rate."
            )
        return yk

    def _require_streaming(self) -> None:
        if not self.streaming:
            kinds = ", ".join(type(b).__name__ for b in self.branches if not _can_stream(b))
            raise RuntimeError(
                f"These branches have no `step`/`init_state` ({kinds}): they cannot stream frame by frame. "
                "Use forward() on whole utterances, or give every branch the streaming encoder contract."
            )

    def init_state(self, batch_size: int) -> Any:
        """One state per branch.

        Raises:
            RuntimeError: if a branch cannot stream.
        """
        self._require_streaming()
        return [b.init_state(batch_size) for b in self.branches]

    def begin_streaming(self) -> None:
        """Let every branch that caches per-frame weights (``RecurrentEncoder``) build its cache."""
        for branch in self.branches:
            begin = getattr(branch, "begin_streaming", None)
            if callable(begin):
                begin()

    def end_streaming(self) -> None:
        """Drop the branches' caches of :meth:`begin_streaming`."""
        for branch in self.branches:
            end = getattr(branch, "end_streaming", None)
            if callable(end):
                end()

    def step(self, x_t: torch.Tensor, state: Any, choice: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One frame ``(B, F)`` with hard choices ``(B,)``; with ``B == 1`` only the chosen branch runs."""
        self._require_streaming()
        state = list(state)
        if x_t.shape[0] == 1:  # only the chosen branch runs; the others keep their state
            k = int(choice[0])
            yk, state[k] = self.branches[k].step(x_t, state[k])
            return self.projections[k](yk), state
        g = F.one_hot(choice, self.num_branches).to(x_t.dtype)
        y = self.advance(x_t, state, g, [_batch_dims(b, x_t.shape[0]) for b in self.branches])
        return y, state
