"""FLOP counts per output frame for the layers our encoders are built from.

One convention everywhere in the package (modules, callbacks, benchmarks): a
multiply-accumulate counts as **2 FLOPs**, an addition, a multiplication or a
pointwise non-linearity (sigmoid, tanh, ReLU) as **1 FLOP**. Counts are per output
frame of one sequence (batch size 1) and are exact integers, computed from layer
shapes, never measured.

Example:
    >>> linear_flops(80, 256)
    41216
    >>> lstm_flops(80, 256)  # one layer, one direction
    693504
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "linear_flops",
    "lowrank_linear_flops",
    "sparse_linear_flops",
    "lstm_flops",
    "gru_flops",
    "rnn_pointwise_flops",
    "lowrank_rnn_flops",
    "sparse_rnn_flops",
    "hidden_lowrank_rnn_flops",
    "conv1d_flops",
    "attention_flops",
    "module_flops_per_frame",
]


def _check_positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if int(value) <= 0:
            raise ValueError(f"Expected argument `{name}` to be a positive integer, but got {value}.")


def linear_flops(in_features: int, out_features: int, bias: bool = True) -> int:
    """FLOPs of ``y = W x + b`` for one frame.

    Args:
        in_features: Input size ``I``.
        out_features: Output size ``O``.
        bias: Whether a bias is added (``O`` additions).

    Returns:
        ``2 * I * O (+ O)`` FLOPs.
    """
    _check_positive(in_features=in_features, out_features=out_features)
    return 2 * in_features * out_features + (out_features if bias else 0)


def lowrank_linear_flops(in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
    """FLOPs of a factorized linear map ``y = U (V x) + b`` with ``V: r x I``, ``U: O x r``.

    Returns:
        ``2 * r * (I + O) (+ O)`` FLOPs.
    """
    _check_positive(in_features=in_features, out_features=out_features, rank=rank)
    return 2 * rank * (in_features + out_features) + (out_features if bias else 0)


def sparse_linear_flops(nonzeros: int | torch.Tensor, out_features: int, bias: bool = True) -> int:
    """FLOPs of a sparse matrix-vector product counting only stored non-zeros.

    Args:
        nonzeros: Number of non-zero weights, or the weight tensor itself (its
            non-zeros are counted).
        out_features: Output size ``O`` (for the bias).
        bias: Whether a bias is added.

    Returns:
        ``2 * nnz (+ O)`` FLOPs.
    """
    nnz = int(torch.count_nonzero(nonzeros)) if isinstance(nonzeros, torch.Tensor) else int(nonzeros)
    if nnz < 0:
        raise ValueError(f"Expected argument `nonzeros` to be >= 0, but got {nnz}.")
    return 2 * nnz + (out_features if bias else 0)


def _rnn_cell_flops(input_size: int, hidden_size: int, gates: int, bias: bool, pointwise: int) -> int:
    # input and recurrent matrix products, two bias vectors (PyTorch keeps b_ih and b_hh),
    # the sum of the two products, gate non-linearities and the state update.
    matmul = 2 * gates * hidden_size * (input_size + hidden_size)
    add = gates * hidden_size
    biases = 2 * gates * hidden_size if bias else 0
    return matmul + add + biases + pointwise * hidden_size


def lstm_flops(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    bias: bool = True,
) -> int:
    """FLOPs per frame of a PyTorch ``nn.LSTM`` (any number of layers/directions).

    Per layer and direction with input ``I`` and hidden ``H``: ``2*4H*(I+H)`` for the
    two matrix products, ``4H`` to add them, ``8H`` for the two bias vectors, ``4H``
    gate non-linearities, ``3H`` for ``c = f*c + i*g``, ``2H`` for ``h = o*tanh(c)``.

    Example:
        >>> lstm_flops(80, 256) == 2 * 4 * 256 * (80 + 256) + 4 * 256 + 8 * 256 + 9 * 256
        True
    """
    _check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
    dirs = 2 if bidirectional else 1
    total = 0
    layer_in = input_size
    for _ in range(num_layers):
        total += dirs * _rnn_cell_flops(layer_in, hidden_size, 4, bias, pointwise=4 + 3 + 2)
        layer_in = hidden_size * dirs
    return total


def gru_flops(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    bias: bool = True,
) -> int:
    """FLOPs per frame of a PyTorch ``nn.GRU``.

    Per layer and direction: ``2*3H*(I+H)`` matrix products, ``2H`` to add the r/z
    pre-activations (the candidate keeps them apart), ``6H`` biases, ``3H``
    non-linearities, ``2H`` for ``r * (W_hn h + b_hn)`` and its sum, ``3H`` for
    ``h = (1-z)*n + z*h``.
    """
    _check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
    dirs = 2 if bidirectional else 1
    total = 0
    layer_in = input_size
    for _ in range(num_layers):
        matmul = 2 * 3 * hidden_size * (layer_in + hidden_size)
        per = matmul + 2 * hidden_size + (6 * hidden_size if bias else 0) + 3 * hidden_size + 2 * hidden_size + 3 * hidden_size
        total += dirs * per
        layer_in = hidden_size * dirs
    return total


def _check_rnn_type(rnn_type: str) -> int:
    if rnn_type not in ("lstm", "gru"):
        raise ValueError(f"Expected argument `rnn_type` to be 'lstm' or 'gru', but got {rnn_type!r}.")
    return 4 if rnn_type == "lstm" else 3


def rnn_pointwise_flops(rnn_type: str, hidden_size: int) -> int:
    """Element-wise FLOPs of one LSTM/GRU cell once the gate pre-activations exist.

    LSTM: ``4H`` non-linearities, ``3H`` for ``c = f*c + i*g``, ``2H`` for
    ``h = o*tanh(c)`` (``9H``). GRU: ``2H`` to add the r/z input and hidden parts,
    ``3H`` non-linearities, ``2H`` for ``r * gh_n`` and its sum, ``3H`` for
    ``h = (1-z)*n + z*h`` (``10H``). These are the terms of :func:`lstm_flops` and
    :func:`gru_flops` that do not depend on how the gate matrices are stored.

    Example:
        >>> lstm_flops(80, 256) == linear_flops(80 + 256, 4 * 256) + 4 * 256 + 4 * 256 + rnn_pointwise_flops("lstm", 256)
        True
    """
    gates = _check_rnn_type(rnn_type)
    _check_positive(hidden_size=hidden_size)
    return (9 if gates == 4 else 10) * hidden_size


def lowrank_rnn_flops(rnn_type: str, input_size: int, hidden_size: int, rank: int, bias: bool = True) -> int:
    """FLOPs per frame of one LSTM/GRU layer whose gate matrices are factorized to rank ``r``.

    LSTM: the stacked ``4H x (I+H)`` matrix ``[W_ih W_hh]`` is ``U V`` (``U: 4H x r``,
    ``V: r x (I+H)``), one merged bias. GRU: ``W_ih`` and ``W_hh`` are factorized
    separately (the candidate gate needs the two products apart), each with its bias.

    Example:
        >>> lowrank_rnn_flops("lstm", 80, 256, 32) == 2 * 32 * (80 + 256) + 2 * 4 * 256 * 32 + 4 * 256 + 9 * 256
        True
    """
    gates = _check_rnn_type(rnn_type)
    _check_positive(input_size=input_size, hidden_size=hidden_size, rank=rank)
    G = gates * hidden_size
    if gates == 4:
        products = lowrank_linear_flops(input_size + hidden_size, G, rank, bias)
    else:
        products = lowrank_linear_flops(input_size, G, rank, bias) + lowrank_linear_flops(hidden_size, G, rank, bias)
    return products + rnn_pointwise_flops(rnn_type, hidden_size)


def sparse_rnn_flops(rnn_type: str, nonzeros: int, hidden_size: int, bias: bool = True) -> int:
    """FLOPs per frame of one LSTM/GRU layer with ``nonzeros`` stored weights in ``W_ih`` and ``W_hh`` together.

    The same terms as :func:`lstm_flops`/:func:`gru_flops` with the dense matrix
    products replaced by ``2 * nonzeros``; at full density the two agree.

    Example:
        >>> sparse_rnn_flops("lstm", 4 * 256 * (80 + 256), 256) == lstm_flops(80, 256)
        True
        >>> sparse_rnn_flops("gru", 3 * 64 * (32 + 64), 64) == gru_flops(32, 64)
        True
    """
    gates = _check_rnn_type(rnn_type)
    _check_positive(hidden_size=hidden_size)
    if int(nonzeros) < 0:
        raise ValueError(f"Expected argument `nonzeros` to be >= 0, but got {nonzeros}.")
    G = gates * hidden_size
    add = G if gates == 4 else 0  # the GRU's r/z sums are part of its pointwise count
    return 2 * int(nonzeros) + add + (2 * G if bias else 0) + rnn_pointwise_flops(rnn_type, hidden_size)


def hidden_lowrank_rnn_flops(rnn_type: str, input_size: int, hidden_size: int, rank: int, bias: bool = True) -> int:
    """FLOPs per frame of one LSTM/GRU layer with a dense ``W_ih`` and a rank-``r`` ``W_hh = U V``.

    Example:
        >>> hidden_lowrank_rnn_flops("lstm", 80, 256, 32) == (
        ...     linear_flops(80, 1024) + lowrank_linear_flops(256, 1024, 32) + 1024 + rnn_pointwise_flops("lstm", 256))
        True
    """
    gates = _check_rnn_type(rnn_type)
    _check_positive(input_size=input_size, hidden_size=hidden_size, rank=rank)
    G = gates * hidden_size
    add = G if gates == 4 else 0
    return (
        linear_flops(input_size, G, bias)
        + lowrank_linear_flops(hidden_size, G, rank, bias)
        + add
        + rnn_pointwise_flops(rnn_type, hidden_size)
    )


def conv1d_flops(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    groups: int = 1,
    bias: bool = True,
) -> int:
    """FLOPs per output frame of ``nn.Conv1d``: ``2 * (C_in/groups) * K * C_out (+ C_out)``."""
    _check_positive(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, groups=groups)
    return 2 * (in_channels // groups) * kernel_size * out_channels + (out_channels if bias else 0)


def attention_flops(
    d_model: int, num_heads: int, context: int, d_ffn: int | None = None, relative_positions: bool = False
) -> int:
    """FLOPs per frame of one self-attention block (plus its feed-forward when given).

    Counts the Q/K/V/output projections (``4 * 2 d^2 + 4d``), scores and weighted sum
    over ``context`` frames (``2 * 2 * context * d``), a softmax (``3 * heads * context``)
    and, if ``d_ffn`` is set, a two-layer feed-forward network. With
    ``relative_positions`` (Transformer-XL style, SpeechBrain's ``RelPosMHAXL`` of the
    Conformer) it adds the projection of the ``2 context - 1`` relative position
    embeddings and the position scores, ``2 d (2 context - 1) (d + context)`` per
    utterance of ``context`` frames, shared out over its frames.

    Args:
        d_model: Model width ``d``.
        num_heads: Attention heads.
        context: Number of frames each query attends to (utterance length for full
            context, chunk size for chunked attention).
        d_ffn: Feed-forward hidden size, or ``None`` to leave it out.
        relative_positions: Count the relative-position terms.

    Example::

        >>> attention_flops(64, 4, 100)
        59824
        >>> attention_flops(64, 4, 100, relative_positions=True)  # + 41,774 per frame
        101598
    """
    _check_positive(d_model=d_model, num_heads=num_heads, context=context)
    proj = 4 * linear_flops(d_model, d_model)
    scores = 2 * context * d_model  # q . k for all heads
    weighted = 2 * context * d_model  # sum of v weighted by probabilities
    softmax = 3 * num_heads * context
    ffn = 0
    if d_ffn is not None:
        ffn = linear_flops(d_model, d_ffn) + d_ffn + linear_flops(d_ffn, d_model)
    positions = 0
    if relative_positions:  # pos embeddings projected (no bias), then scored against every query
        positions = round(2 * d_model * (2 * context - 1) * (d_model + context) / context)
    return proj + scores + weighted + softmax + ffn + positions


def module_flops_per_frame(module: nn.Module, **kwargs: Any) -> int:
    """FLOPs per frame of a module, summed over the leaf layers this file knows.

    Modules that define ``flops_per_frame()`` (our encoders, the arbitrator) answer for
    themselves; ``nn.Linear``, ``nn.LSTM``, ``nn.GRU`` and ``nn.Conv1d`` are counted
    from their shapes; containers recurse. Parameter-free layers (norms, dropout,
    activations) count 0; use this for cost ranking, not cycle-exact timing.

    Raises:
        TypeError: if a layer with parameters of its own is of a kind that cannot be counted
            (e.g. ``nn.MultiheadAttention``, an ``nn.LSTM`` with ``proj_size``): give it a
            ``flops_per_frame()`` method.
    """
    own = getattr(module, "flops_per_frame", None)
    if callable(own) and module is not kwargs.get("_root"):
        return int(own())
    if isinstance(module, nn.Linear):
        return linear_flops(module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.LSTM) and not module.proj_size:
        return lstm_flops(module.input_size, module.hidden_size, module.num_layers, module.bidirectional, module.bias)
    if isinstance(module, nn.GRU):
        return gru_flops(module.input_size, module.hidden_size, module.num_layers, module.bidirectional, module.bias)
    if isinstance(module, nn.Conv1d):
        return conv1d_flops(
            module.in_channels, module.out_channels, module.kernel_size[0], module.groups, module.bias is not None
        )
    # a layer whose own parameters are not counted here (a leaf, or a container such as
    # nn.MultiheadAttention whose in-projection is a bare parameter) would be counted short
    if any(True for _ in module.parameters(recurse=False)) and not isinstance(
        module, (nn.LayerNorm, nn.BatchNorm1d, nn.Embedding)
    ):
        raise TypeError(f"Cannot count FLOPs of layer {type(module).__name__}: give it a `flops_per_frame()` method.")
    return sum(module_flops_per_frame(child) for child in module.children())
