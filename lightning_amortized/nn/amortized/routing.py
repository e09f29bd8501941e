"""What the arbitrator decided for one batch: :class:`RoutingInfo`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_amortized.functional.backlog import eou_latency
from lightning_amortized.functional.masks import lengths_to_mask

__all__ = ["RoutingInfo"]


@dataclass
class RoutingInfo:
    """Routing of one batch, as computed by the last ``forward``.

    Attributes:
        logits: ``(B, T, K)`` arbitrator logits.
        gates: ``(B, T, K)`` gate values the branches were mixed with: relaxed
            (Gumbel-softmax) in training, one-hot at eval. Differentiable.
        decisions: ``(B, T)`` int64, ``gates.argmax(-1)`` (the branch that "took" the frame).
        expected_flops: ``(B, T)`` ``arbitrator + gates @ branch_flops`` (differentiable).
        cost_ms: ``(B, T)`` the same on the simulated device, in ms.
        backlog_ms: ``(B, T)`` backlog after each frame (differentiable, frozen past length).
        lengths: ``(B,)`` valid frames.
        branch_flops: FLOPs per frame of every branch (arbitrator excluded).
        slow_index: Index of the most expensive branch.
        frame_ms: Audio per frame in ms.
        floor_ms: ``(B,)`` the physical floor of the end-of-utterance latency on each
            utterance's device (ms): ``AmortizedEncoder.floor_flops`` (the cheapest branch
            plus the arbitrator; with ``force_branch`` that branch alone) on it, or ``None``.

    Example:
        >>> g = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
        >>> r = RoutingInfo(logits=g, gates=g, decisions=g.argmax(-1), expected_flops=g @ torch.tensor([1.0, 3.0]),
        ...                 cost_ms=g @ torch.tensor([10.0, 40.0]), backlog_ms=torch.tensor([[10.0, 0.0, 0.0]]),
        ...                 lengths=torch.tensor([2]), branch_flops=(1, 3), slow_index=1, frame_ms=30.0)
        >>> float(r.slow_share()), r.eou_latency_ms().tolist()  # frame 2 waits 10 ms, costs 10 ms
        (0.5, [20.0])
    """

    logits: torch.Tensor
    gates: torch.Tensor
    decisions: torch.Tensor
    expected_flops: torch.Tensor
    cost_ms: torch.Tensor
    backlog_ms: torch.Tensor
    lengths: torch.Tensor
    branch_flops: tuple[int, ...]
    slow_index: int
    frame_ms: float
    floor_ms: torch.Tensor | None = None

    @property
    def p_slow(self) -> torch.Tensor:
        """``(B, T)`` gate of the slow branch."""
        return self.gates[..., self.slow_index]

    @property
    def probs(self) -> torch.Tensor:
        """``(B, T, K)`` noise-free ``softmax(logits)``."""
        return torch.softmax(self.logits, dim=-1)

    @property
    def mask(self) -> torch.Tensor:
        """``(B, T)`` bool, True on valid frames."""
        return lengths_to_mask(self.lengths, self.gates.shape[1], device=self.gates.device)

    def sharpness(self) -> torch.Tensor:
        """Mean over valid frames of ``max_k gates`` (1.0 = hard decisions); NaN if no frame is valid."""
        m = self.mask
        return self.gates.detach().max(-1).values[m].mean()

    def slow_share(self) -> torch.Tensor:
        """Fraction of valid frames whose decision is the slow branch; NaN if no frame is valid (all lengths 0)."""
        return (self.decisions[self.mask] == self.slow_index).float().mean()

    def eou_latency_ms(self) -> torch.Tensor:
        """``(B,)`` simulated end-of-utterance latency (ms) of this routing."""
        return eou_latency(self.cost_ms.detach(), self.frame_ms, self.lengths.to(self.cost_ms.device))
