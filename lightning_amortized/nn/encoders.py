"""The encoder contract and thin adapters that make SpeechBrain encoders follow it.

**Contract.** An encoder is an ``nn.Module`` with

* ``input_size: int`` and ``output_size: int`` (feature sizes, per frame);
* ``forward(x, lengths) -> (y, out_lengths)`` on padded batches: ``x`` is
  ``(B, T, F)`` float, ``lengths`` is ``(B,)`` int64 with the number of valid frames
  (absolute counts, not SpeechBrain's relative lengths); ``y`` is ``(B, T', D)``;
* ``flops_per_frame() -> int``: counted FLOPs per output frame
  (see :mod:`lightning_amortized.functional.flops`).

A *streaming* encoder also has ``init_state(batch_size) -> state`` and
``step(x_t, state) -> (y_t, state)`` with ``x_t`` of shape ``(B, F)`` and ``y_t`` of
shape ``(B, D)``; running ``step`` over the frames gives the same outputs as
``forward`` (a test checks it).

Example:
    >>> enc = RecurrentEncoder(input_size=80, hidden_size=64, num_layers=2)
    >>> y, n = enc(torch.randn(3, 50, 80), torch.tensor([50, 40, 7]))
    >>> y.shape, n.tolist()
    (torch.Size([3, 50, 64]), [50, 40, 7])
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from lightning_amortized.functional.flops import attention_flops, conv1d_flops, gru_flops, linear_flops, lstm_flops
from lightning_amortized.functional.masks import lengths_to_mask
from lightning_amortized.nn.padding import ConvPaddingMask
from lightning_amortized.nn.stream_cache import StreamCaches

__all__ = [
    "Encoder",
    "StreamingEncoder",
    "RecurrentEncoder",
    "ConformerEncoderAdapter",
    "lengths_to_mask",
]


@runtime_checkable
class Encoder(Protocol):
    """Structural type of an encoder (see the module docstring)."""

    input_size: int
    output_size: int

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def flops_per_frame(self) -> int: ...


@runtime_checkable
class StreamingEncoder(Encoder, Protocol):
    """An encoder that can also run one frame at a time."""

    def init_state(self, batch_size: int) -> Any: ...

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


class RecurrentEncoder(StreamCaches, nn.Module):
    """Unidirectional LSTM/GRU stack (SpeechBrain's ``nnet.RNN`` layers) as a streaming encoder.

    Args:
        input_size: Features per input frame ``F``.
        hidden_size: Hidden units per layer ``H`` (output size unless ``projection``).
        num_layers: Number of stacked layers.
        rnn_type: ``"lstm"`` or ``"gru"``.
        dropout: Dropout between layers (training only).
        projection: Optional output projection size; ``None`` keeps ``H``.

    The wrapped SpeechBrain module is ``self.rnn`` (its ``torch.nn.LSTM``/``GRU`` is
    ``self.rnn.rnn``), so parameter names look like ``rnn.rnn.weight_ih_l0``.

    Example:
        >>> enc = RecurrentEncoder(80, 32, num_layers=1)
        >>> state = enc.init_state(2)
        >>> y_t, state = enc.step(torch.randn(2, 80), state)
        >>> y_t.shape
        torch.Size([2, 32])
    """

    _stream_caches = ("_stream_layers",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 3,
        rnn_type: str = "lstm",
        dropout: float = 0.0,
        projection: int | None = None,
    ) -> None:
        super().__init__()
        from speechbrain.nnet.RNN import GRU, LSTM

        if rnn_type not in ("lstm", "gru"):
            raise ValueError(f"Expected argument `rnn_type` to be 'lstm' or 'gru', but got {rnn_type!r}.")
        if input_size <= 0 or hidden_size <= 0 or num_layers <= 0:
            raise ValueError(
                "Expected positive `input_size`, `hidden_size` and `num_layers`, but got "
                f"{input_size}, {hidden_size}, {num_layers}."
            )
        cls = LSTM if rnn_type == "lstm" else GRU
        self.rnn_type = rnn_type
        self.rnn = cls(hidden_size=hidden_size, input_size=input_size, num_layers=num_layers, dropout=dropout)
        self.proj = nn.Linear(hidden_size, projection) if projection else None
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_size = projection or hidden_size

    @classmethod
    def from_speechbrain(cls, module: nn.Module) -> "RecurrentEncoder":
        """Adopt an existing SpeechBrain ``LSTM``/``GRU`` module (weights are shared, not copied).

        Raises:
            TypeError: if ``module`` is not a unidirectional SpeechBrain LSTM/GRU.
        """
        rnn = getattr(module, "rnn", None)
        if not isinstance(rnn, (nn.LSTM, nn.GRU)) or rnn.bidirectional or not rnn.batch_first:
            raise TypeError(
                "Expected a unidirectional speechbrain.nnet.RNN.LSTM/GRU (with a batch-first `.rnn`), "
                f"but got {type(module).__name__}."
            )
        enc = cls.__new__(cls)
        nn.Module.__init__(enc)
        enc.rnn_type = "lstm" if isinstance(rnn, nn.LSTM) else "gru"
        enc.rnn = module
        enc.proj = None
        enc.input_size, enc.hidden_size, enc.num_layers = rnn.input_size, rnn.hidden_size, rnn.num_layers
        enc.output_size = rnn.hidden_size
        return enc

    @property
    def torch_rnn(self) -> nn.LSTM | nn.GRU:
        """The underlying ``torch.nn.LSTM``/``nn.GRU``."""
        return self.rnn.rnn

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch ``(B, T, F)`` -> ``(B, T, D)``; lengths are unchanged."""
        # A unidirectional stack is causal: padding after an utterance cannot change its
        # valid outputs (equal to a packed sequence's up to float rounding), so the padded
        # batch runs as one dense tensor: on CPU about 3x faster forward + backward than a
        # packed sequence (benchmarks/convergence.py profiles it). The states past each
        # length are zeroed before the projection, as a packed sequence leaves them.
        y, _ = self.torch_rnn(x)
        y = y * lengths_to_mask(lengths, y.shape[1], device=y.device)[..., None].to(y.dtype)
        if self.proj is not None:
            y = self.proj(y)
        return y, lengths

    def init_state(self, batch_size: int) -> Any:
        """Zero state for ``batch_size`` streams."""
        rnn = self.torch_rnn
        p = next(rnn.parameters())
        h = p.new_zeros(self.num_layers, batch_size, self.hidden_size)
        return (h, h.clone()) if self.rnn_type == "lstm" else h

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Advance one frame: ``x_t`` ``(B, F)`` -> ``y_t`` ``(B, D)``.

        Outside training (or without dropout) each layer is one input product, one recurrent
        product and the cell, the same kernels as an amortized encoder's slow branch (a
        one-frame ``nn.LSTM`` call costs several times as much on CPU: 2.5x in
        ``benchmarks/amnet.py``'s side-by-side timing, more elsewhere); equal to ``forward`` up
        to float rounding.
        """
        rnn = self.torch_rnn
        if (self.training and rnn.dropout) or rnn.proj_size:  # between-layer dropout: nn.LSTM's own
            out, state = rnn(x_t[:, None, :], state)
            y = out[:, 0]
        else:
            from lightning_amortized.nn.amortized.fast import step_layers  # (that package imports this module)

            layers = getattr(self, "_stream_layers", None) or _slow_layers(rnn, self.rnn_type)
            y, state = step_layers(layers, self.rnn_type, x_t, state)
        if self.proj is not None:
            y = self.proj(y)
        return y, state

    def begin_streaming(self) -> None:
        """Cache each layer's per-frame kernels' weights until :meth:`end_streaming`, as an AmNet does.

        Optional: ``step`` is correct without it, only slower. :func:`~lightning_amortized.nn.streaming.stream`
        calls both.
        """
        # views of the weights (a weight loaded in place is seen); StreamCaches keeps them out of copies
        self._stream_layers = _slow_layers(self.torch_rnn, self.rnn_type)

    def end_streaming(self) -> None:
        """Drop the cache of :meth:`begin_streaming` (call after changing weights)."""
        self._stream_layers = None

    def flops_per_frame(self) -> int:
        """Counted FLOPs per frame (recurrent stack plus projection)."""
        count = (lstm_flops if self.rnn_type == "lstm" else gru_flops)(
            self.input_size, self.hidden_size, self.num_layers, False, self.torch_rnn.bias
        )
        if self.proj is not None:
            count += linear_flops(self.proj.in_features, self.proj.out_features)
        return count


class ConformerEncoderAdapter(ConvPaddingMask, nn.Module):
    """SpeechBrain ``ConformerEncoder`` behind the encoder contract (full context, not streaming).

    An input projection maps ``F`` to ``d_model``; relative positional encodings are
    computed internally, and padding is masked: in attention (SpeechBrain's key padding
    mask) and in every convolution module, whose depthwise convolution sees zeros past
    each utterance's end (SpeechBrain masks only after it, so the valid frames near the
    end would depend on how much padding the batch has).

    Args:
        input_size: Features per input frame.
        d_model: Model width.
        num_layers: Conformer blocks.
        nhead: Attention heads.
        d_ffn: Feed-forward hidden size.
        kernel_size: Depthwise convolution kernel.
        context_frames: Attention context used when *reporting* FLOPs/frame (attention
            cost grows with utterance length; pass your typical length in frames).

    Example:
        >>> enc = ConformerEncoderAdapter(80, d_model=32, num_layers=1, nhead=2, d_ffn=64)
        >>> y, n = enc(torch.randn(2, 20, 80), torch.tensor([20, 11]))
        >>> y.shape
        torch.Size([2, 20, 32])
    """

    def __init__(
        self,
        input_size: int,
        d_model: int = 144,
        num_layers: int = 4,
        nhead: int = 4,
        d_ffn: int = 576,
        kernel_size: int = 15,
        dropout: float = 0.1,
        context_frames: int = 300,
    ) -> None:
        super().__init__()
        from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
        from speechbrain.nnet.attention import RelPosEncXL

        self.input_proj = nn.Linear(input_size, d_model)
        self.pos = RelPosEncXL(d_model)
        self.encoder = ConformerEncoder(
            num_layers=num_layers, d_model=d_model, d_ffn=d_ffn, nhead=nhead, kernel_size=kernel_size, dropout=dropout
        )
        self.input_size, self.output_size = input_size, d_model
        self._shape = (d_model, num_layers, nhead, d_ffn, kernel_size)
        self.context_frames = context_frames
        self._mask_conv_padding(self.encoder)  # zero padded frames between pointwise and depthwise conv

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``(B, T, F)`` -> ``(B, T, d_model)``; valid frames do not depend on the padding."""
        h = self.input_proj(x)
        pad = ~lengths_to_mask(lengths, x.shape[1])
        with self.padding_masked(pad):
            y, _ = self.encoder(h, src_key_padding_mask=pad, pos_embs=self.pos(h))
        return y, lengths

    def flops_per_frame(self) -> int:
        """Counted FLOPs per frame at ``context_frames`` of attention context."""
        d, layers, heads, ffn, k = self._shape
        macaron = 2 * (linear_flops(d, ffn) + ffn + linear_flops(ffn, d))
        attn = attention_flops(d, heads, self.context_frames, relative_positions=True)  # RelPosMHAXL
        conv = conv1d_flops(d, 2 * d, 1) + conv1d_flops(d, d, k, groups=d) + conv1d_flops(d, d, 1)
        per_layer = macaron + attn + conv
        return linear_flops(self.input_size, d) + layers * per_layer


def _slow_layers(rnn: nn.LSTM | nn.GRU, rnn_type: str) -> list[tuple[Any, dict[str, Any]]]:
    """Each layer of ``rnn`` as an amortized core's slow branch, with its per-frame weights."""
    from lightning_amortized.nn.amortized.fast import SlowLayer  # (that package imports this module)

    layers = [SlowLayer(rnn, layer, rnn_type) for layer in range(rnn.num_layers)]
    return [(slow, slow.stream_weights()) for slow in layers]

