"""The arbitrator: a tiny network choosing, frame by frame, which branch processes the frame.

Inputs at frame ``t``: the input features ``x_t``, the normalised backlog
``log1p(b_{t-1} / frame_ms)``, optionally the device load ``log(rho)`` (``rho`` = the slow
branch's cost per frame over ``frame_ms`` on the device; a *load-aware* arbitrator serves
every device with one set of weights) and optionally the previous gate ``g_{t-1}`` (``K``
values). It never sees encoder hidden states, so the decisions of a whole utterance
are computed first, in one cheap loop that also runs the backlog recursion, and the
encoders then run with known gates.

Training uses a relaxed categorical (Gumbel-softmax at ``temperature``, optionally
straight-through: hard one-hot forward, soft gradient); evaluation uses hard argmax
decisions without noise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_amortized.functional.backlog import backlog_step, guard_mask, last_valid_index
from lightning_amortized.functional.flops import linear_flops
from lightning_amortized.functional.masks import lengths_to_mask

__all__ = ["Arbitrator"]


def _as_float(value: object) -> object:
    """``float(value)`` for a real scalar (Python, numpy or a 0-d tensor); other values (bools too) as they are."""
    if isinstance(value, (bool, str, np.bool_)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray)) and (value.ndim != 0 or value.dtype in (torch.bool, np.bool_)):
        return value
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return value


class Arbitrator(nn.Module):
    """``Linear(F + 1 [+ 1] + K -> hidden) -> tanh -> Linear(hidden -> K)`` over frame, backlog, [load,] previous gate.

    Args:
        input_size: Features per input frame ``F``.
        num_branches: Number of branches ``K`` (>= 2).
        hidden_size: Hidden units.
        frame_ms: Audio per frame in ms (normalises the backlog input).
        temperature: Gumbel-softmax temperature (> 0); annealed by
            :class:`~lightning_amortized.callbacks.temperature.ArbitratorTemperature`.
        straight_through: Hard one-hot gates in the forward pass of training, soft
            gradients (straight-through Gumbel-softmax).
        use_prev_decision: Feed the previous gate back as an input.
        gumbel_noise: Add Gumbel noise in training (turn off for deterministic training
            forwards, e.g. to compare training and inference).
        load_aware: Take the device load ``log(rho)`` as an input (one more column of
            the first layer); :meth:`decide` reads it from the branch costs, :meth:`step`
            needs ``load``.

    Example:
        >>> arb = Arbitrator(input_size=40, num_branches=2).eval()
        >>> logits, gates, cost, b = arb.decide(torch.randn(3, 7, 40), torch.tensor([7, 5, 2]),
        ...                                     branch_cost_ms=torch.tensor([10.0, 40.0]))
        >>> gates.shape, b.shape, bool(((gates == 0) | (gates == 1)).all())
        (torch.Size([3, 7, 2]), torch.Size([3, 7]), True)
    """

    def __init__(
        self,
        input_size: int,
        num_branches: int = 2,
        hidden_size: int = 16,
        frame_ms: float = 30.0,
        temperature: float = 1.0,
        straight_through: bool = False,
        use_prev_decision: bool = True,
        gumbel_noise: bool = True,
        load_aware: bool = False,
    ) -> None:
        super().__init__()
        if num_branches < 2:
            raise ValueError(f"Expected argument `num_branches` to be >= 2, but got {num_branches}.")
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"Expected positive `input_size` and `hidden_size`, but got {input_size} and {hidden_size}."
            )
        if not frame_ms > 0:
            raise ValueError(f"Expected argument `frame_ms` to be positive, but got {frame_ms}.")
        self.input_size, self.num_branches, self.hidden_size = input_size, num_branches, hidden_size
        self.frame_ms = float(frame_ms)
        self.use_prev_decision = use_prev_decision
        self.straight_through = straight_through
        self.gumbel_noise = gumbel_noise
        self.load_aware = load_aware
        extra = self._extra_inputs()
        self.hidden = nn.Linear(input_size + extra, hidden_size)
        self.out = nn.Linear(hidden_size, num_branches)
        nn.init.zeros_(self.out.bias)
        self._temperature = 1.0
        self.temperature = temperature

    @property
    def temperature(self) -> float:
        """Gumbel-softmax temperature; setting a value <= 0 raises ``ValueError``."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = _as_float(value)  # numpy and 0-d tensor scalars too
        if not (isinstance(value, float) and value > 0 and math.isfinite(value)):
            raise ValueError(f"Expected argument `temperature` to be a positive finite number, but got {value!r}.")
        self._temperature = value

    def _extra_inputs(self) -> int:
        """Inputs besides the frame: backlog, load (load-aware), previous gate (``use_prev_decision``)."""
        return 1 + int(self.load_aware) + (self.num_branches if self.use_prev_decision else 0)

    def extra_repr(self) -> str:
        return (
            f"temperature={self._temperature}, straight_through={self.straight_through}, "
            f"frame_ms={self.frame_ms}, use_prev_decision={self.use_prev_decision}"
            + (", load_aware=True" if self.load_aware else "")
        )

    def load_feature(self, branch_cost_ms: torch.Tensor) -> torch.Tensor:
        """The load input ``log(rho)`` from branch costs ``(K,)`` or ``(B, K)`` in ms.

        ``rho`` is the slow branch's cost per frame over ``frame_ms``: 1 on a device that
        runs the slow branch exactly in real time.
        """
        return torch.log(branch_cost_ms.max(-1).values / self.frame_ms)

    def flops_per_frame(self) -> int:
        """Counted FLOPs per frame: both linear layers, tanh, backlog normalisation (2) and argmax (K).

        A load-aware arbitrator's load input is constant over an utterance: only its column
        of the first layer is counted.
        """
        extra = self._extra_inputs()
        return (
            linear_flops(self.input_size + extra, self.hidden_size)
            + self.hidden_size
            + linear_flops(self.hidden_size, self.num_branches)
            + 2
            + self.num_branches
        )

    # -- pieces ---------------------------------------------------------------------------------

    def _split_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Columns of the first layer: ``(frame, backlog, load or None, previous gate or None)``."""
        w = self.hidden.weight
        F_ = self.input_size
        w_load = w[:, F_ + 1] if self.load_aware else None
        w_prev = w[:, F_ + 1 + int(self.load_aware) :] if self.use_prev_decision else None
        return w[:, :F_], w[:, F_], w_load, w_prev

    def _logits(
        self,
        ax_t: torch.Tensor,
        backlog_ms: torch.Tensor,
        prev: torch.Tensor,
        w_b: torch.Tensor,
        w_prev: torch.Tensor | None,
    ) -> torch.Tensor:
        feat = torch.log1p(backlog_ms / self.frame_ms).to(ax_t.dtype)
        pre = ax_t + feat[:, None] * w_b  # ax_t holds the frame's and the (constant) load's terms
        if w_prev is not None:
            pre = pre + prev @ w_prev.t()
        return self.out(torch.tanh(pre))

    def gates_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Relaxed (training) or hard one-hot (eval) gates from logits ``(..., K)``."""
        if not self.training:
            return F.one_hot(logits.argmax(-1), self.num_branches).to(logits.dtype)
        z = logits
        if self.gumbel_noise:
            u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
            z = z - torch.log(-torch.log(u))
        soft = torch.softmax(z / self._temperature, dim=-1)
        if not self.straight_through:
            return soft
        hard = F.one_hot(soft.argmax(-1), self.num_branches).to(soft.dtype)
        return hard - soft.detach() + soft

    def init_state(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(backlog_ms (B,), previous gate (B, K))`` at the start of an utterance."""
        p = self.out.weight
        return p.new_zeros(batch_size), p.new_zeros(batch_size, self.num_branches)

    def _load_term(self, w_load: torch.Tensor | None, load: torch.Tensor | float | None, like: torch.Tensor) -> Any:
        if w_load is None:
            return 0.0
        if load is None:
            raise ValueError("A load-aware arbitrator needs the device load: pass `load` (log rho, (B,) or a float).")
        load = torch.as_tensor(load, dtype=like.dtype, device=like.device)
        return load.reshape(-1, *([1] * (like.dim() - 1))) * w_load if load.dim() else load * w_load

    def step(
        self, x_t: torch.Tensor, backlog_ms: torch.Tensor, prev: torch.Tensor, load: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Logits ``(B, K)`` for one frame ``x_t`` ``(B, F)`` given the backlog before it and the previous gate.

        Args:
            load: ``log(rho)`` of the device, ``(B,)`` or a float (load-aware arbitrators only;
                see :meth:`load_feature`).
        """
        w_x, w_b, w_load, w_prev = self._split_weights()
        ax = F.linear(x_t, w_x, self.hidden.bias) + self._load_term(w_load, load, x_t)
        return self._logits(ax, backlog_ms, prev, w_b, w_prev)

    # -- whole utterance ----------------------------------------------------------------------

    def decide(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None,
        branch_cost_ms: torch.Tensor,
        base_cost_ms: float | torch.Tensor = 0.0,
        guard: float | None = None,
        frame_cost_ms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the arbitrator and the backlog recursion over a padded batch.

        Args:
            x: ``(B, T, F)`` input frames.
            lengths: ``(B,)`` valid frames, or ``None``.
            branch_cost_ms: ``(K,)`` cost of each branch on the simulated device (ms), or
                ``(B, K)``: a device per utterance (load-aware training over a range of devices).
            base_cost_ms: Cost paid on every frame whatever the choice (the arbitrator
                itself), a float or ``(B,)``.
            guard: Latency guard factor (``>= 1``) or ``None``: every frame's gates are
                restricted to the branches :func:`~lightning_amortized.functional.backlog.guard_mask`
                allows given the backlog before it (the others get gate 0, in training
                too; each sequence's last valid frame gets the cheapest branch), which
                bounds every utterance's end-of-utterance latency by ``guard`` x the floor
                (the cheapest whole frame: branch plus arbitrator, see ``frame_cost_ms``) on
                devices where that floor is within ``frame_ms``.
            frame_cost_ms: ``(K,)`` or ``(B, K)``: each branch's whole frame cost (arbitrator
                included) when the caller computes it from summed FLOPs, as streaming and the
                device runtime do (``cost_ms(arbitrator + branch FLOPs)``, bit-equal to theirs);
                ``None``: ``base_cost_ms + branch_cost_ms``. The load feature always reads
                ``branch_cost_ms``.

        Returns:
            ``logits (B, T, K)`` (the arbitrator's own, before the guard), ``gates (B, T, K)``
            (relaxed in training, one-hot in eval; after the guard), ``cost_ms (B, T)`` =
            ``gates @ frame costs`` (``frame_cost_ms``, else ``base_cost_ms + branch_cost_ms``)
            and ``backlog_ms (B, T)`` after every frame (frozen past the length); costs and
            backlog in float32 whatever the dtype of ``x`` (a bfloat16 model included).
        """
        B, T, _ = x.shape
        for name, value in (("branch_cost_ms", branch_cost_ms), ("frame_cost_ms", frame_cost_ms)):
            if value is not None and value.shape not in ((self.num_branches,), (B, self.num_branches)):
                raise ValueError(
                    f"Expected argument `{name}` to have shape ({self.num_branches},) or "
                    f"({B}, {self.num_branches}), but got {tuple(value.shape)}."
                )
        w_x, w_b, w_load, w_prev = self._split_weights()
        # costs and the backlog in float32 whatever the network's precision (bf16 rounds 41.3 ms to 41.25)
        f32 = {"device": x.device, "dtype": torch.float32}
        costs = branch_cost_ms.to(**f32)
        load = self.load_feature(costs) if self.load_aware else None
        ax = F.linear(x, w_x, self.hidden.bias) + self._load_term(w_load, load, x)  # (B, T, hidden), all frames
        valid = None
        if lengths is not None:
            valid = lengths_to_mask(lengths, T, device=x.device)
        b, prev = self.init_state(B)
        b, prev = b.to(**f32), prev.to(x)
        logits_l, gates_l, cost_l, back_l = [], [], [], []
        ax_t = ax.unbind(1)  # not ax[:, t]: the backward of T selects is O(T^2)
        last = None
        if frame_cost_ms is None:
            base = torch.as_tensor(base_cost_ms, **f32)
            frame_costs = costs + (base[:, None] if base.dim() else base)  # (K,) or (B, K), arbitrator included
        else:
            frame_costs = frame_cost_ms.to(**f32)
        if guard is not None and T > 0:  # each sequence's last valid frame (an empty one's frame 0: padding, frozen)
            last = last_valid_index(None if lengths is None else lengths.clamp_min(1), B, T, x.device)
        for t in range(T):
            logits = self._logits(ax_t[t], b, prev, w_b, w_prev)
            if guard is None:
                g = self.gates_from_logits(logits)
            else:  # disallowed branches out of the choice (and of the relaxation's softmax)
                allowed = guard_mask(b.detach(), frame_costs, self.frame_ms, guard, final=last == t)
                g = self.gates_from_logits(logits.masked_fill(~allowed, float("-inf")))
            cost = (g.float() * frame_costs).sum(-1)  # gates sum to 1: the arbitrator's cost on every frame
            b = backlog_step(b, cost, self.frame_ms, None if valid is None else valid[:, t])
            prev = g
            logits_l.append(logits)
            gates_l.append(g)
            cost_l.append(cost)
            back_l.append(b)
        if T == 0:
            z = x.new_zeros(B, 0, self.num_branches)
            return z, z, torch.zeros(B, 0, **f32), torch.zeros(B, 0, **f32)
        return torch.stack(logits_l, 1), torch.stack(gates_l, 1), torch.stack(cost_l, 1), torch.stack(back_l, 1)
