"""The public amortized encoders: :class:`AmortizedEncoder` and :class:`SharedStateAmortizedEncoder`.

Two routing modes (see ``docs/amortized.md``):

* **Shared-state** (:class:`SharedStateAmortizedEncoder`, built by
  :meth:`AmortizedEncoder.from_recurrent`): one LSTM/GRU state, two weight sets per
  layer. Branch 0 (fast) is a low-rank, sparse or "small" version of branch 1 (slow,
  the original weights); see :mod:`~lightning_amortized.nn.amortized.fast` and
  :mod:`~lightning_amortized.nn.amortized.shared`.
* **Independent** (:class:`AmortizedEncoder`): any encoders; each keeps its own state
  and advances only on frames routed to it (see
  :mod:`~lightning_amortized.nn.amortized.independent`).

In both modes the arbitrator decisions of a batch are computed first (they depend only
on input frames, backlog and the previous decision), then the branches run with known
gates. After ``forward`` the routing of the batch is in :attr:`AmortizedEncoder.last_routing`
and :meth:`AmortizedEncoder.routing_losses` gives the cost and amortization losses.

Example:
    >>> from lightning_amortized.nn.encoders import RecurrentEncoder
    >>> enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(40, 32, num_layers=2), fast="lowrank", rank=8)
    >>> y, n = enc(torch.randn(2, 10, 40), torch.tensor([10, 6]))
    >>> y.shape, enc.last_routing.gates.shape
    (torch.Size([2, 10, 32]), torch.Size([2, 10, 2]))
    >>> sorted(enc.routing_losses(lambda_cost=0.1, lambda_amr=1.0))
    ['amortization', 'cost', 'total']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_amortized.backlog_rule import check_guard
from lightning_amortized.functional.backlog import (
    DEFAULT_DEVICE_FLOPS_PER_S,
    SimulatedDevice,
    backlog,
    backlog_step,
    guard_mask,
)
from lightning_amortized.functional.losses import amortization_loss, expected_cost_penalty
from lightning_amortized.nn.amortized.independent import _IndependentCore
from lightning_amortized.nn.amortized.routing import RoutingInfo
from lightning_amortized.nn.amortized.shared import _SharedRecurrentCore
from lightning_amortized.nn.arbitrator import Arbitrator
from lightning_amortized.nn.encoders import RecurrentEncoder

__all__ = ["AmortizedEncoder", "SharedStateAmortizedEncoder"]


class AmortizedEncoder(nn.Module):
    """Independent encoders ``fast, slow[, ...]`` routed frame by frame by an :class:`Arbitrator`.

    Follows the encoder contract (``forward``, ``flops_per_frame``, and ``init_state``/``step``
    when all branches stream). Branch ``k`` is the ``k``-th positional argument; the most
    expensive branch is "slow" for the losses.

    Args:
        fast: Cheap encoder (branch 0).
        slow: Expensive encoder (branch 1).
        *others: More branches (``K > 2``).
        projection: Common output size; every branch gets a ``Linear`` to it. Required
            when output sizes differ.
        frame_ms: Audio per input frame in ms.
        device_flops_per_s: Speed of the simulated device the backlog is computed on.
        arbitrator_hidden: Hidden units of the arbitrator.
        temperature: Initial Gumbel-softmax temperature.
        straight_through: Straight-through hard gates in training.
        use_prev_decision: Feed the previous gate to the arbitrator.
        force_branch: Route every frame to this branch: the arbitrator is skipped (and
            not counted), only that branch computes, ``flops_per_frame()`` is that
            branch's. Builds single-branch baselines (fast-only, compressed single
            encoders) from the same class.
        load_aware: The arbitrator also sees the device load ``log(rho)`` (``rho``: the
            slow branch's cost per frame over ``frame_ms``), so one model can serve
            devices of different speeds (:meth:`set_device` picks the device at inference).
        train_rho_range: ``(low, high)``: in training, each utterance runs on a device
            drawn with ``rho`` log-uniform in this range (needs ``load_aware``); ``None``
            trains on ``device_flops_per_s`` only.
        latency_guard: ``None`` or a factor ``>= 1``: a frame may take a costlier branch
            than the cheapest only if the backlog after it stays within ``factor - 1``
            times the floor (:meth:`floor_flops` on the device), and an utterance's last
            frame takes the cheapest branch
            (:func:`~lightning_amortized.backlog_rule.guard_allows`). On a device where
            the cheapest frame runs in real time this bounds *every* utterance's
            end-of-utterance latency by ``factor`` x the floor, whatever the arbitrator
            learned. Applied in ``forward`` (training and eval; the last frame from
            ``lengths``) and :meth:`step_with_decision` (``final=True`` marks the last
            frame), and exported to the device runtime.

    Raises:
        ValueError: if output sizes differ and ``projection`` is ``None``,
            ``force_branch`` is not a branch index, ``train_rho_range`` is given
            without ``load_aware`` or is not ``0 < low <= high``, or ``latency_guard``
            is below 1.

    Example:
        >>> from lightning_amortized.nn.encoders import RecurrentEncoder
        >>> enc = AmortizedEncoder(RecurrentEncoder(40, 16, 1), RecurrentEncoder(40, 64, 2), projection=32)
        >>> y, n = enc(torch.randn(2, 5, 40), torch.tensor([5, 3]))
        >>> y.shape, enc.last_routing.decisions.shape
        (torch.Size([2, 5, 32]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        fast: nn.Module,
        slow: nn.Module,
        *others: nn.Module,
        projection: int | None = None,
        frame_ms: float = 30.0,
        device_flops_per_s: float = DEFAULT_DEVICE_FLOPS_PER_S,
        arbitrator_hidden: int = 16,
        temperature: float = 1.0,
        straight_through: bool = False,
        use_prev_decision: bool = True,
        force_branch: int | None = None,
        load_aware: bool = False,
        train_rho_range: tuple[float, float] | None = None,
        latency_guard: float | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            _IndependentCore([fast, slow, *others], projection),
            frame_ms,
            device_flops_per_s,
            arbitrator_hidden,
            temperature,
            straight_through,
            use_prev_decision,
            force_branch,
            load_aware,
            train_rho_range,
            latency_guard,
        )

    def _setup(
        self,
        core: nn.Module,
        frame_ms: float,
        device_flops_per_s: float,
        arbitrator_hidden: int,
        temperature: float,
        straight_through: bool,
        use_prev_decision: bool,
        force_branch: int | None = None,
        load_aware: bool = False,
        train_rho_range: tuple[float, float] | None = None,
        latency_guard: float | None = None,
    ) -> None:
        if train_rho_range is not None:
            low, high = (float(v) for v in train_rho_range)
            if not load_aware:
                raise ValueError(
                    "Expected `load_aware=True` with `train_rho_range`: the arbitrator must see the device."
                )
            if not 0 < low <= high:
                raise ValueError(
                    f"Expected argument `train_rho_range` to be (low, high) with 0 < low <= high, "
                    f"but got {train_rho_range}."
                )
            train_rho_range = (low, high)
        self.train_rho_range = train_rho_range
        if force_branch is not None and not 0 <= int(force_branch) < core.num_branches:
            raise ValueError(
                f"Expected argument `force_branch` to be None or in [0, {core.num_branches}), but got {force_branch}."
            )
        self.force_branch = None if force_branch is None else int(force_branch)
        costs = [int(f) for f in core.branch_flops()]
        if costs.count(max(costs)) > 1:  # which is "the slow branch" (routing losses, slow share) is undefined
            raise ValueError(
                f"The branches cost {costs} FLOPs per frame: the most expensive cost is shared, so no branch is the "
                "slow one and routing saves nothing. Make the fast branch cheaper (a lower rank, density or size)."
            )
        self.core = core
        self.device_model = SimulatedDevice(flops_per_s=float(device_flops_per_s), frame_ms=float(frame_ms))
        self.frame_ms = float(frame_ms)
        self.device_flops_per_s = float(device_flops_per_s)
        self.input_size = core.input_size
        self.output_size = core.output_size
        self.num_branches = core.num_branches
        self.arbitrator = Arbitrator(
            core.input_size,
            core.num_branches,
            hidden_size=arbitrator_hidden,
            frame_ms=frame_ms,
            temperature=temperature,
            straight_through=straight_through,
            use_prev_decision=use_prev_decision,
            load_aware=load_aware,
        )
        self.latency_guard = latency_guard
        self.last_routing: RoutingInfo | None = None
        self._stream_costs: tuple[torch.Tensor, int] | None = None
        self._guard_costs: tuple[float, torch.Tensor] | None = None
        self._frame_costs: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_recurrent(
        cls,
        encoder: RecurrentEncoder,
        fast: str = "lowrank",
        rank: int | None = None,
        density: float = 0.25,
        **kwargs: Any,
    ) -> SharedStateAmortizedEncoder:
        """Shared-state AmNet from one LSTM/GRU encoder (see :class:`SharedStateAmortizedEncoder`)."""
        return SharedStateAmortizedEncoder(encoder, fast=fast, rank=rank, density=density, **kwargs)

    # -- costs ----------------------------------------------------------------------------------

    @property
    def latency_guard(self) -> float | None:
        """The latency guard factor (``None``: off); settable, e.g. to guard a model trained without it."""
        return self._latency_guard

    @latency_guard.setter
    def latency_guard(self, factor: float | None) -> None:
        self._latency_guard = check_guard(factor)

    @property
    def streaming(self) -> bool:
        """Whether ``init_state``/``step`` are available."""
        return bool(getattr(self.core, "streaming", True))

    def branch_flops(self) -> list[int]:
        """FLOPs per frame of every branch (arbitrator excluded)."""
        return [int(f) for f in self.core.branch_flops()]

    @property
    def slow_index(self) -> int:
        """Index of the most expensive branch."""
        flops = self.branch_flops()
        return max(range(len(flops)), key=flops.__getitem__)

    def flops_per_frame(self) -> int:
        """Worst case FLOPs per frame: the most expensive branch plus the arbitrator.

        With ``force_branch`` it is that branch's FLOPs (no arbitrator runs). The routed
        average is ``last_routing.expected_flops`` (see ``LatencyMonitor``).
        """
        if self.force_branch is not None:
            return self.branch_flops()[self.force_branch]
        return max(self.branch_flops()) + self.arbitrator.flops_per_frame()

    def floor_flops(self) -> int:
        """FLOPs of the cheapest frame: the cheapest branch plus the arbitrator (with ``force_branch``, that branch).

        On a device, its cost is the physical floor of end-of-utterance latency (no routing
        ends an utterance sooner than one such frame after the audio).
        """
        if self.force_branch is not None:
            return self.branch_flops()[self.force_branch]
        return min(self.branch_flops()) + self.arbitrator.flops_per_frame()

    def set_device(self, device_flops_per_s: float) -> None:
        """Swap the simulated device (e.g. to evaluate a trained model on a slower or faster one).

        The backlog the arbitrator sees, the costs and the latencies of the next
        ``forward``/``step`` are computed on the new device; ``frame_ms`` is unchanged.

        Raises:
            ValueError: if ``device_flops_per_s`` is not positive.
        """
        self.device_model = SimulatedDevice(flops_per_s=float(device_flops_per_s), frame_ms=self.frame_ms)
        self.device_flops_per_s = float(device_flops_per_s)

    def routing_settings(self) -> dict[str, Any]:
        """What decides the routes besides the weights, as plain values.

        The simulated device (:meth:`set_device`), the :attr:`latency_guard`, ``force_branch``
        and the arbitrator's ``temperature``, ``straight_through`` and ``gumbel_noise`` are
        attributes, not tensors, so ``state_dict`` does not hold them. :class:`ASRModule` saves
        them in its checkpoints (``checkpoint["routing_settings"]``) and applies them on load
        (``load_from_checkpoint``, ``fit(ckpt_path=...)``); a LightningModule of your own can do
        the same with this method and :meth:`load_routing_settings` in its
        ``on_save_checkpoint``/``on_load_checkpoint``.

        Example::

            >>> from lightning_amortized.nn import RecurrentEncoder, SharedStateAmortizedEncoder
            >>> enc = SharedStateAmortizedEncoder(RecurrentEncoder(16, 8, 1), rank=2)
            >>> enc.set_device(2e6); enc.latency_guard = 3.0
            >>> other = SharedStateAmortizedEncoder(RecurrentEncoder(16, 8, 1), rank=2)
            >>> other.load_routing_settings(enc.routing_settings())
            >>> other.device_flops_per_s, other.latency_guard
            (2000000.0, 3.0)
        """
        arb = self.arbitrator
        return {
            "device_flops_per_s": self.device_flops_per_s,
            "latency_guard": self.latency_guard,
            "force_branch": self.force_branch,
            "temperature": arb.temperature,
            "straight_through": bool(arb.straight_through),
            "gumbel_noise": bool(arb.gumbel_noise),
        }

    def load_routing_settings(self, settings: Mapping[str, Any]) -> None:
        """Apply what :meth:`routing_settings` returned; keys it lacks keep their current value.

        Raises:
            ValueError: a device speed that is not positive, a guard below 1, a ``force_branch``
                outside the branches, or a temperature that is not a positive number; nothing
                is changed then.
        """
        force = settings.get("force_branch", self.force_branch)
        if force is not None and not 0 <= int(force) < self.num_branches:
            raise ValueError(
                f"Expected `force_branch` to be None or in [0, {self.num_branches}), but got {force} "
                "(settings saved by a model with other branches?)."
            )
        device = float(settings.get("device_flops_per_s", self.device_flops_per_s))
        if not (math.isfinite(device) and device > 0):
            raise ValueError(f"Expected `device_flops_per_s` to be a positive finite FLOP/s, but got {device!r}.")
        guard = check_guard(settings.get("latency_guard", self.latency_guard))
        arb = self.arbitrator
        arb.temperature = settings.get("temperature", arb.temperature)  # validates: the first change made
        self.set_device(device)
        self.latency_guard = guard
        self.force_branch = None if force is None else int(force)
        arb.straight_through = bool(settings.get("straight_through", arb.straight_through))
        arb.gumbel_noise = bool(settings.get("gumbel_noise", arb.gumbel_noise))

    def _sample_devices(self, batch_size: int, slow_flops: float, like: torch.Tensor) -> torch.Tensor:
        """Device speeds ``(B,)`` in FLOP/s with ``rho = slow cost / frame_ms`` log-uniform in ``train_rho_range``."""
        assert self.train_rho_range is not None
        low, high = self.train_rho_range
        u = torch.rand(batch_size, device=like.device, dtype=like.dtype)
        rho = low * (high / low) ** u
        return slow_flops / (rho * self.frame_ms / 1000.0)

    # -- training / batched forward -------------------------------------------------------------

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Route and encode a padded batch ``(B, T, F)`` -> ``(B, T, D)``; sets :attr:`last_routing`."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"Expected `x` of shape (B, T, {self.input_size}), but got {tuple(x.shape)}.")
        # costs in float32 whatever the model's precision: 3e6 FLOPs overflow float16, bfloat16 rounds them
        flops = torch.tensor(self.branch_flops(), dtype=torch.float32, device=x.device)
        if self.force_branch is None:
            arb_flops = self.arbitrator.flops_per_frame()
            speed = None  # a device per utterance (load-aware training), else the one of set_device
            # branch costs feed the load feature; whole frames (arbitrator included, from summed FLOPs,
            # as step() and the device runtime price them) feed the backlog and the guard
            if self.training and self.train_rho_range is not None:
                speed = self._sample_devices(x.shape[0], float(flops.max()), flops)  # FLOP/s per utterance
                branch_ms = 1000.0 * flops[None, :] / speed[:, None]
                whole_ms = 1000.0 * (flops[None, :] + arb_flops) / speed[:, None]
            else:
                branch_ms, whole_ms = self.device_model.cost_ms(flops), self.device_model.cost_ms(flops + arb_flops)
            logits, gates, cost_ms, backlog_ms = self.arbitrator.decide(
                x, lengths, branch_ms, guard=self.latency_guard, frame_cost_ms=whole_ms
            )
            y = self.core.forward_gated(x, lengths, gates)
        else:  # no arbitrator: one-hot gates, the same backlog recursion on that branch's cost
            arb_flops = 0
            B, T, _ = x.shape
            k = self.force_branch
            gates = x.new_zeros(B, T, self.num_branches)
            gates[..., k] = 1.0
            logits = gates.log()  # 0 on the forced branch, -inf elsewhere
            cost_ms = self.device_model.cost_ms(_per_frame(gates, flops))
            backlog_ms = backlog(cost_ms, self.frame_ms, lengths)
            speed = None
            y = self.core.forward_gated(x, lengths, gates, only=k)
        floor = self.floor_flops()
        floor_ms = (1000.0 * floor / speed if speed is not None
                    else x.new_full((x.shape[0],), float(self.device_model.cost_ms(floor))))
        self.last_routing = RoutingInfo(
            logits=logits,
            gates=gates,
            decisions=gates.detach().argmax(-1),
            expected_flops=arb_flops + _per_frame(gates, flops),
            cost_ms=cost_ms,
            backlog_ms=backlog_ms,
            lengths=lengths,
            branch_flops=tuple(int(f) for f in flops.tolist()),
            slow_index=self.slow_index,
            frame_ms=self.frame_ms,
            floor_ms=floor_ms,
        )
        return y, lengths

    def routing_losses(
        self,
        lambda_cost: float = 0.0,
        lambda_amr: float = 0.0,
        threshold_ms: float | None = None,
        end_weight: float = 1.0,
        slack_weight: float = 1.0,
        eou_weight: float = 0.0,
        eou_factor: float = 2.0,
    ) -> dict[str, torch.Tensor]:
        """Losses of the last ``forward``: ``{"cost", "amortization", "total"}``.

        ``cost`` is the expected FLOPs per valid frame (arbitrator included) over the slow
        branch's FLOPs (so it can slightly exceed 1), ``amortization`` is
        :func:`~lightning_amortized.functional.losses.amortization_loss`, ``total`` is
        ``lambda_cost * cost + lambda_amr * amortization`` (add it to the ASR loss).
        With ``eou_weight > 0`` the penalty also charges end-of-utterance latency above
        ``eou_factor`` times each utterance's floor (``last_routing.floor_ms``, the cost of
        :meth:`floor_flops` on the device of that ``forward``: in load-aware training the
        device drawn for the utterance, otherwise the one of ``set_device``).

        Raises:
            RuntimeError: if ``forward`` has not run yet.
            ValueError: if ``eou_factor`` is not positive.
        """
        r = self.last_routing
        if r is None:
            raise RuntimeError("`routing_losses` needs a `forward` first: call the encoder on a batch.")
        cost = expected_cost_penalty(r.expected_flops, r.lengths, float(max(r.branch_flops)))
        if not eou_factor > 0:
            raise ValueError(f"Expected argument `eou_factor` to be positive, but got {eou_factor}.")
        limit = None if r.floor_ms is None else eou_factor * r.floor_ms
        amr = amortization_loss(
            r.p_slow, r.backlog_ms, r.lengths, self.frame_ms, threshold_ms, end_weight, slack_weight,
            cost_ms=r.cost_ms, eou_limit_ms=limit, eou_weight=eou_weight,
        )
        return {"cost": cost, "amortization": amr, "total": lambda_cost * cost + lambda_amr * amr}

    # -- streaming ------------------------------------------------------------------------------

    def _costs(self, like: torch.Tensor) -> tuple[torch.Tensor, int]:
        flops = torch.tensor(self.branch_flops(), dtype=like.dtype, device=like.device)
        return flops, self.arbitrator.flops_per_frame()

    def begin_streaming(self) -> None:
        """Freeze per-frame inference caches (costs, CSR weights) until :meth:`end_streaming`.

        Optional: ``step`` is correct without it, only slower. :func:`~lightning_amortized.nn.streaming.stream`
        calls both.
        """
        self._stream_costs = self._costs(next(self.parameters()))
        self._guard_costs = None
        self._frame_costs = None
        self.core.begin_streaming()

    def end_streaming(self) -> None:
        """Drop the caches of :meth:`begin_streaming` (call after changing weights)."""
        self._stream_costs = None
        self._guard_costs = None
        self._frame_costs = None
        self.core.end_streaming()

    def init_state(self, batch_size: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """``(branch state, backlog_ms (B,), previous gate (B, K))``."""
        b, prev = self.arbitrator.init_state(batch_size)
        return self.core.init_state(batch_size), b, prev

    def step(self, x_t: torch.Tensor, state: Any, final: bool = False) -> tuple[torch.Tensor, Any]:
        """One frame ``(B, F)`` -> ``(B, D)`` with hard decisions (only the chosen branch runs when ``B == 1``).

        ``final`` marks the utterance's last frame (see :meth:`step_with_decision`).
        """
        y, state, _ = self.step_with_decision(x_t, state, final=final)
        return y, state

    def step_with_decision(
        self, x_t: torch.Tensor, state: Any, force_branch: int | None = None, final: bool = False
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Like :meth:`step`, also returning the decision ``(B,)``.

        Args:
            force_branch: Route every frame to this branch and skip the arbitrator
                (single-branch baselines on the same weights).
            final: This is the utterance's last frame (the audio has ended): with a
                ``latency_guard`` it takes the cheapest branch, as in ``forward``.
        """
        if x_t.dim() != 2 or x_t.shape[-1] != self.input_size:
            raise ValueError(
                f"Expected argument `x_t` to be one frame per stream, (B, {self.input_size}), but got {tuple(x_t.shape)}."
            )
        core_state, b, prev = state
        flops, arb_flops = self._stream_costs if self._stream_costs is not None else self._costs(x_t)
        force_branch = self.force_branch if force_branch is None else force_branch
        if force_branch is None:
            load = None
            if self.arbitrator.load_aware:
                load = float(self.arbitrator.load_feature(self.device_model.cost_ms(flops)))
            logits = self.arbitrator.step(x_t, b, prev, load)
            if self.latency_guard is not None:
                logits = logits.masked_fill(~self._guard_allowed(b, flops, arb_flops, final), float("-inf"))
            choice = logits.argmax(-1)
            base = arb_flops
        else:
            if not 0 <= force_branch < self.num_branches:
                raise ValueError(f"Expected `force_branch` in [0, {self.num_branches}), but got {force_branch}.")
            choice = torch.full((x_t.shape[0],), force_branch, dtype=torch.long, device=x_t.device)
            base = 0
        if self._stream_costs is not None:  # streaming: one-hot rows and frame costs looked up, not computed
            eye, cost_routed, cost_forced = self._stream_frame_costs(flops, arb_flops)
            g = eye[choice]
            cost = (cost_routed if force_branch is None else cost_forced)[choice]
        else:
            g = F.one_hot(choice, self.num_branches).to(x_t.dtype)
            cost = self.device_model.cost_ms(base + g @ flops)
        b = backlog_step(b, cost, self.frame_ms)
        y, core_state = self.core.step(x_t, core_state, choice)
        return y, (core_state, b, g), choice

    def _stream_frame_costs(self, flops: torch.Tensor, arb_flops: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One-hot rows ``(K, K)`` and each branch's frame cost in ms ``(K,)``, routed (arbitrator included) and
        forced, on the current device: the same float operations as ``cost_ms(base + one_hot @ flops)``, so the
        backlog stays bit-equal to the batched forward's. Cached per device while streaming."""
        cached = getattr(self, "_frame_costs", None)
        if cached is None or cached[0] != self.device_flops_per_s:
            eye = torch.eye(self.num_branches, dtype=flops.dtype, device=flops.device)
            cached = (self.device_flops_per_s, eye, self.device_model.cost_ms(arb_flops + eye @ flops),
                      self.device_model.cost_ms(0 + eye @ flops))
            self._frame_costs = cached
        return cached[1], cached[2], cached[3]

    def _guard_allowed(self, b: torch.Tensor, flops: torch.Tensor, arb_flops: int, final: bool) -> torch.Tensor:
        """``(B, K)`` branches the latency guard allows one streaming frame (:func:`guard_mask`, as in ``forward``).

        Each branch's frame cost is ``(arbitrator + branch FLOPs)`` on the device in float32, as
        the backlog below and the device runtime compute it; cached per device between
        :meth:`begin_streaming` and :meth:`end_streaming`.
        """
        cached = self._guard_costs
        if cached is None or cached[0] != self.device_flops_per_s:
            cached = (self.device_flops_per_s, self.device_model.cost_ms(flops + arb_flops))
            if self._stream_costs is not None:
                self._guard_costs = cached
        assert self.latency_guard is not None
        return guard_mask(b, cached[1], self.frame_ms, self.latency_guard, final=final)

    def extra_repr(self) -> str:
        forced = "" if self.force_branch is None else f", force_branch={self.force_branch}"
        rho = "" if self.train_rho_range is None else f", train_rho_range={self.train_rho_range}"
        guard = "" if self.latency_guard is None else f", latency_guard={self.latency_guard:g}"
        return f"frame_ms={self.frame_ms}, device_flops_per_s={self.device_flops_per_s:g}{forced}{rho}{guard}"


class SharedStateAmortizedEncoder(AmortizedEncoder):
    """Shared-state AmNet over one SpeechBrain LSTM/GRU stack: one state, fast and slow weights per layer.

    Branch 1 (slow) uses the wrapped encoder's own weights (shared, not copied: they
    stay at ``core.encoder.rnn.rnn.weight_*``); branch 0 (fast) is, per layer:

    * ``"lowrank"``: LSTM ``[W_ih W_hh] = U V`` of rank ``rank`` (one factorization,
      one merged bias); GRU ``W_ih`` and ``W_hh`` factorized separately. Initialised
      by truncated SVD of the slow weights.
    * ``"sparse"``: own copies of ``W_ih``, ``W_hh`` with a fixed magnitude-pruned mask
      keeping a fraction ``density`` of ``[W_ih W_hh]``; FLOPs count the non-zeros.
    * ``"small"``: own dense ``W_ih`` and a rank-``rank`` ``W_hh = U V`` (only the
      recurrent matrix is small; initialised from the slow weights).

    Args:
        encoder: The slow encoder (:class:`RecurrentEncoder`; its projection, if any,
            is shared by both branches).
        fast: ``"lowrank"``, ``"sparse"`` or ``"small"``.
        rank: Rank of the factorized matrices (default ``hidden_size // 4``).
        density: Kept fraction for ``"sparse"``.
        **kwargs: ``frame_ms``, ``device_flops_per_s``, ``arbitrator_hidden``,
            ``temperature``, ``straight_through``, ``use_prev_decision``,
            ``force_branch``, ``load_aware``, ``train_rho_range``, ``latency_guard`` as in
            :class:`AmortizedEncoder` (``force_branch=0``: the compressed encoder alone,
            e.g. a factorized or sparse single encoder).

    Raises:
        ValueError: for an unknown ``fast`` kind, a bad ``rank`` or ``density``.
        TypeError: if ``encoder`` is not a :class:`RecurrentEncoder`.
    """

    def __init__(
        self,
        encoder: RecurrentEncoder,
        fast: str = "lowrank",
        rank: int | None = None,
        density: float = 0.25,
        frame_ms: float = 30.0,
        device_flops_per_s: float = DEFAULT_DEVICE_FLOPS_PER_S,
        arbitrator_hidden: int = 16,
        temperature: float = 1.0,
        straight_through: bool = False,
        use_prev_decision: bool = True,
        force_branch: int | None = None,
        load_aware: bool = False,
        train_rho_range: tuple[float, float] | None = None,
        latency_guard: float | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._setup(
            _SharedRecurrentCore(encoder, fast, rank, density),
            frame_ms,
            device_flops_per_s,
            arbitrator_hidden,
            temperature,
            straight_through,
            use_prev_decision,
            force_branch,
            load_aware,
            train_rho_range,
            latency_guard,
        )


def _per_frame(gates: torch.Tensor, flops: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` gate-weighted FLOPs per frame, in float32 and outside autocast (elementwise, not a matmul that
    autocast would run in float16, where 3e6 FLOPs overflow to inf and a zero gate times inf is NaN)."""
    return (gates.float() * flops.float()).sum(-1)
