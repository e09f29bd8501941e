"""Measured FLOPs of wrapped modules (``torch.utils.flop_counter``), with what the counter misses filled in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["measured_flops"]


def _lstm_matmul_flops(lstm: nn.LSTM) -> int:
    """Matrix-product FLOPs per frame of a ``torch.nn.LSTM`` (``2 * 4H * (I_l + H)`` per layer and direction)."""
    dirs = 2 if lstm.bidirectional else 1
    total, layer_in = 0, lstm.input_size
    for _ in range(lstm.num_layers):
        total += dirs * 2 * 4 * lstm.hidden_size * (layer_in + lstm.hidden_size)
        layer_in = lstm.hidden_size * dirs
    return total


def measured_flops(fn: Callable[[], Any], module: nn.Module | None = None) -> int:
    """FLOPs of one call of ``fn()``, measured with :class:`torch.utils.flop_counter.FlopCounterMode`.

    Counts matrix products and convolutions (``2 * M * N * K``: 2 FLOPs per
    multiply-accumulate); PyTorch does not count bias additions, normalisations or
    element-wise ops. PyTorch 2.11 does not count the fused ``torch.nn.LSTM`` operator
    on a padded tensor (it does count a packed sequence, which runs decomposed): every
    ``nn.LSTM`` call inside ``module`` for which the counter saw no FLOPs gets its
    matrix products added from its shapes (per frame it processed), so an LSTM is
    counted like a GRU, whose products PyTorch does count. PyTorch's fused attention
    "fast path" (``nn.MultiheadAttention`` / ``nn.TransformerEncoder`` at inference) is
    not counted either, so it is switched off while measuring (the decomposed path does
    the same products), and ``scaled_dot_product_attention`` runs its math backend
    (the fused CPU kernels are not counted either).

    Args:
        fn: A call to measure (run under ``torch.no_grad()``).
        module: The module ``fn`` runs, searched for ``nn.LSTM`` layers.

    Returns:
        FLOPs of the call (all sequences of the batch together).

    Raises:
        ValueError: ``module`` has parameters but the call measured no FLOPs (an operator
            the counter cannot see; an AmNet would take such a branch for free).

    Example:
        >>> measured_flops(lambda: nn.Linear(8, 4)(torch.randn(3, 8)))  # 3 frames * 2 * 8 * 4
        192
    """
    counter = FlopCounterMode(display=False)
    extra, seen = [0], []
    handles = []

    def pre(_mod: nn.LSTM, _args: tuple[Any, ...]) -> None:
        seen.append(counter.get_total_flops())

    def post(mod: nn.LSTM, args: tuple[Any, ...], _out: Any) -> None:
        if counter.get_total_flops() > seen.pop():
            return  # counted by PyTorch
        x = args[0]
        if isinstance(x, nn.utils.rnn.PackedSequence):
            frames = int(x.data.shape[0])
        else:
            frames = int(x.shape[0] * x.shape[1]) if x.dim() == 3 else int(x.shape[0])
        extra[0] += frames * _lstm_matmul_flops(mod)

    for m in module.modules() if module is not None else ():
        if isinstance(m, nn.LSTM):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:  # the math attention backend runs as counted matrix products (the fused CPU kernels are not counted)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()
    total = int(counter.get_total_flops()) + extra[0]
    if total == 0 and module is not None and any(p.numel() for p in module.parameters()):
        raise ValueError(
            f"{type(module).__name__} measured 0 FLOPs with torch.utils.flop_counter although it has parameters: it "
            "runs an operator the counter does not see. Give the encoder a `flops_per_frame()` of its own."
        )
    return total
