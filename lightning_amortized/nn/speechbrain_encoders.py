"""Existing SpeechBrain module instances behind the encoder contract, per frame or per chunk.

A team that already has a SpeechBrain ``CRDNN``, ``ConformerEncoder``,
``TransformerEncoder``, LSTM/GRU stack or any module taking ``x`` (and optionally
SpeechBrain's *relative* lengths) wraps the instance it has, weights and all:

* :class:`SpeechBrainEncoder`: the plain (whole-utterance) contract,
  ``forward(x (B, T, F), lengths (B,) absolute int64) -> (y (B, T', D), out_lengths)``.
  Absolute lengths become SpeechBrain's relative lengths (or a key padding mask for
  transformer encoders); the output size ``D`` and the time downsampling ``T / T'``
  (a ``CRDNN`` with ``time_pooling`` pools time) are probed with a dummy forward.
  It has no ``step``: an :class:`~lightning_amortized.nn.amortized.AmortizedEncoder`
  mixes such branches on whole-utterance outputs.
* :class:`ChunkStreamingEncoder`: the streaming contract where **one contract frame is
  one chunk** of ``chunk_size`` feature frames, so an AmNet routes chunk by chunk.
  A ``ConformerEncoder`` streams the SpeechBrain way (Dynamic Chunk Training: chunked
  attention with ``left_context_chunks`` chunks of cached left context, Dynamic Chunk
  Convolution); a ``CRDNN`` with a unidirectional RNN carries its RNN state and gives
  its CNN its receptive field of left context; any other module streams by *windowed
  recomputation* (each chunk is encoded together with the ``left_context_chunks``
  chunks of input before it). In every case ``forward`` computes exactly what ``step``
  computes chunk after chunk, so what is trained is what streams.

**FLOPs.** These modules have no analytic count in
:mod:`lightning_amortized.functional.flops`, so ``flops_per_frame()`` is *measured*
with :class:`torch.utils.flop_counter.FlopCounterMode` on a batch of one (see
:func:`measured_flops`): matrix products and convolutions at 2 FLOPs per
multiply-accumulate. Bias additions, normalisations, non-linearities and softmax are
not counted by PyTorch, so a measured count is a lower bound, a few percent under what
the analytic counters give for the same layers (``tests/functional/test_flop_counter_agreement.py``
checks the two against each other). ``torch.nn.LSTM`` on a padded tensor runs as one
fused operator that PyTorch 2.11 does not count; its matrix products are then added
from its shapes.

**What SpeechBrain 1.1.2 streams.** ``ConformerEncoder.forward_streaming`` with
``make_streaming_context(DynChunkTrainConfig(chunk_size, left_context_size))``; an
infinite left context (``left_context_size=None``) fails there (``None > 0``), and its
context object is mutated in place and starts empty, which a per-frame gated state
cannot blend. :class:`ChunkStreamingEncoder` therefore runs the same layer computation
(the test checks it against ``forward_streaming`` and against the chunk-masked
``forward``) on fixed-size tensor state: the cached attention inputs with a validity
mask, and the convolution's left context after its pointwise bottleneck (zeros stand
for "no context", exactly the zero padding SpeechBrain uses). Only ``RelPosMHAXL``
attention (SpeechBrain's default and what its streaming recipes use) is supported;
``CRDNN``, ``TransformerEncoder`` and recurrent stacks have no streaming in
SpeechBrain 1.1.2: a ``CRDNN`` whose RNN is unidirectional is streamed here part by
part (CNN windows, carried RNN state, per-frame DNN); the others by windowed
recomputation (exact for the window, but a recurrent layer inside forgets everything
older than the window, and a bidirectional one sees no further than the chunk end).

Example:
    >>> from speechbrain.lobes.models.CRDNN import CRDNN
    >>> crdnn = CRDNN(input_size=20, cnn_blocks=1, cnn_channels=[4], inter_layer_pooling_size=[2],
    ...               time_pooling=True, time_pooling_size=2, rnn_layers=1, rnn_neurons=8,
    ...               rnn_bidirectional=False, dnn_blocks=1, dnn_neurons=8)
    >>> enc = SpeechBrainEncoder(crdnn, input_size=20)
    >>> y, n = enc(torch.randn(2, 12, 20), torch.tensor([12, 7]))
    >>> y.shape, n.tolist(), enc.time_downsampling
    (torch.Size([2, 6, 8]), [6, 4], 2)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_amortized.functional.masks import lengths_to_mask

__all__ = [
    "ChunkStreamingEncoder",
    "SpeechBrainEncoder",
    "chunks_to_frames",
    "frames_to_chunks",
    "measured_flops",
]

_LENGTH_ARGS = ("lengths", "lens", "wav_lens", "length")


# -- FLOP measurement ---------------------------------------------------------------------------


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
    counted like a GRU, whose products PyTorch does count.

    Args:
        fn: A call to measure (run under ``torch.no_grad()``).
        module: The module ``fn`` runs, searched for ``nn.LSTM`` layers.

    Returns:
        FLOPs of the call (all sequences of the batch together).

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
    try:
        with torch.no_grad(), counter:
            fn()
    finally:
        for h in handles:
            h.remove()
    return int(counter.get_total_flops()) + extra[0]


# -- chunk helpers --------------------------------------------------------------------------------


def frames_to_chunks(x: torch.Tensor, lengths: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group feature frames into chunks: ``(B, T, F)`` -> ``(B, N, chunk_size * F)``, ``N = ceil(T / chunk_size)``.

    The last chunk of an utterance is zero-padded (as in SpeechBrain's chunked
    streaming, where the last chunk is padded to full size).

    Args:
        x: Padded features ``(B, T, F)``.
        lengths: Valid frames per utterance ``(B,)`` int64.
        chunk_size: Frames per chunk ``C``.

    Returns:
        ``(chunks (B, N, C * F), num_chunks (B,) int64 = ceil(lengths / C))``.

    Example:
        >>> c, n = frames_to_chunks(torch.randn(2, 10, 3), torch.tensor([10, 5]), 4)
        >>> c.shape, n.tolist()
        (torch.Size([2, 3, 12]), [3, 2])
    """
    if chunk_size <= 0:
        raise ValueError(f"Expected argument `chunk_size` to be a positive integer, but got {chunk_size}.")
    B, T, Fdim = x.shape
    N = -(-T // chunk_size)
    x = x * lengths_to_mask(lengths, T, device=x.device)[..., None].to(x.dtype)
    x = F.pad(x, (0, 0, 0, N * chunk_size - T))
    return x.reshape(B, N, chunk_size * Fdim), torch.div(lengths + chunk_size - 1, chunk_size, rounding_mode="floor")


def chunks_to_frames(
    y: torch.Tensor, lengths: torch.Tensor, frame_size: int, time_downsampling: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ungroup chunk outputs: ``(B, N, C' * D)`` -> ``(B, N * C', D)`` with output-frame lengths.

    Args:
        y: Chunk outputs ``(B, N, C' * D)``.
        lengths: Valid *input* feature frames per utterance ``(B,)`` (not chunks).
        frame_size: Output size per frame ``D``.
        time_downsampling: Input frames per output frame.

    Returns:
        ``(frames (B, N * C', D), out_lengths (B,) = ceil(lengths / time_downsampling))``.

    Example:
        >>> f, n = chunks_to_frames(torch.randn(2, 3, 8), torch.tensor([10, 5]), frame_size=4, time_downsampling=2)
        >>> f.shape, n.tolist()
        (torch.Size([2, 6, 4]), [5, 3])
    """
    B, N, size = y.shape
    if size % frame_size:
        raise ValueError(f"Expected `frame_size` to divide the chunk output size {size}, but got {frame_size}.")
    out = torch.div(lengths + time_downsampling - 1, time_downsampling, rounding_mode="floor")
    return y.reshape(B, N * (size // frame_size), frame_size), out


# -- the wrapped module ---------------------------------------------------------------------------


def _is_conformer(module: nn.Module) -> bool:
    from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder

    return isinstance(module, ConformerEncoder)


def _takes(module: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


class _WrappedSpeechBrain(nn.Module):
    """Shared part of the adapters: how the wrapped module is called, and the probe of its output."""

    def __init__(
        self,
        module: nn.Module,
        input_size: int,
        input_module: nn.Module | None,
        output_size: int | None,
        takes_lengths: bool | None,
    ) -> None:
        super().__init__()
        from speechbrain.nnet.attention import RelPosEncXL, RelPosMHAXL

        if not isinstance(module, nn.Module):
            raise TypeError(f"Expected argument `module` to be a torch.nn.Module, but got {type(module).__name__}.")
        if int(input_size) <= 0:
            raise ValueError(f"Expected argument `input_size` to be a positive integer, but got {input_size}.")
        self.module = module
        self.input_module = input_module
        self.input_size = int(input_size)
        # transformer-style encoders (ConformerEncoder, TransformerEncoder) take a padding mask
        self.transformer_style = _takes(module, "src_key_padding_mask")
        rel = [m for m in module.modules() if isinstance(m, RelPosMHAXL)]
        self.pos = RelPosEncXL(rel[0].embed_dim) if rel else None
        names = [n for n in _LENGTH_ARGS if _takes(module, n)]
        self._lengths_arg = names[0] if names else None  # passed by keyword (SpeechBrain RNNs: `hx` comes first)
        if takes_lengths is None:
            takes_lengths = bool(names)
        self.takes_lengths = bool(takes_lengths) and not self.transformer_style
        self._module_output_size, self.time_downsampling = self._probe()
        self.proj = nn.Linear(self._module_output_size, output_size) if output_size else None
        self.frame_output_size = int(output_size or self._module_output_size)

    def _encode(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        dynchunktrain_config: Any = None,
    ) -> torch.Tensor:
        """Run the wrapped module on ``(B, T, F)`` with absolute ``lengths`` -> ``(B, T', D_module)``."""
        h = self.input_module(x) if self.input_module is not None else x
        T = h.shape[1]
        if self.transformer_style:
            kwargs: dict[str, Any] = {"src_key_padding_mask": ~lengths_to_mask(lengths, T, device=h.device)}
            if src_mask is not None:
                kwargs["src_mask"] = src_mask
            if dynchunktrain_config is not None:
                kwargs["dynchunktrain_config"] = dynchunktrain_config
            if self.pos is not None:
                kwargs["pos_embs"] = self.pos(h)
            y = self.module(h, **kwargs)
        elif self.takes_lengths:
            rel = lengths.to(h.dtype) / max(T, 1)  # SpeechBrain's relative lengths
            y = self.module(h, **{self._lengths_arg: rel}) if self._lengths_arg else self.module(h, rel)
        else:
            y = self.module(h)
        if isinstance(y, (tuple, list)):  # (output, hidden) / (output, attention) conventions
            y = y[0]
        if y.dim() > 3:  # e.g. a CNN block's (B, T', C, F')
            y = y.reshape(y.shape[0], y.shape[1], -1)
        return y

    @torch.no_grad()
    def _probe(self, frames: int = 120) -> tuple[int, int]:
        """Output size and time downsampling from a dummy forward (module put in eval mode for it)."""
        was = self.training
        self.eval()
        try:
            dev = _device_of(self)
            y = self._encode(torch.zeros(1, frames, self.input_size, device=dev), torch.tensor([frames], device=dev))
        except Exception as err:  # a user-facing explanation of a mismatched wrapper
            raise ValueError(
                f"A dummy forward of {type(self.module).__name__} on (1, {frames}, {self.input_size}) failed "
                f"({type(err).__name__}: {err}); check `input_size` (and `input_module` if the module expects "
                "another width)."
            ) from err
        finally:
            self.train(was)
        out_frames = int(y.shape[1])
        if out_frames <= 0 or frames % out_frames:
            raise ValueError(
                f"{type(self.module).__name__} maps {frames} frames to {out_frames}: only an integer time "
                "downsampling is supported."
            )
        return int(y.shape[-1]), frames // out_frames

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        return self.proj(y) if self.proj is not None else y

    def _out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        d = self.time_downsampling
        return torch.div(lengths + d - 1, d, rounding_mode="floor")


class SpeechBrainEncoder(_WrappedSpeechBrain):
    """An existing SpeechBrain module instance behind the (non-streaming) encoder contract.

    The instance is used as is (its parameters are this adapter's ``module.*``), so a
    trained or pretrained module keeps its weights.

    Args:
        module: The SpeechBrain module (``CRDNN``, ``ConformerEncoder``,
            ``TransformerEncoder``, ``nnet.RNN.LSTM``, a ``Sequential``, ...). It is
            called as ``module(x)``, ``module(x, lengths=relative_lengths)`` (when its
            ``forward`` takes ``lengths``/``lens``/``wav_lens``), or, for transformer encoders,
            ``module(x, src_key_padding_mask=..., pos_embs=...)`` with relative
            positional encodings (``RelPosEncXL``) made here when it uses ``RelPosMHAXL``.
            Tuple outputs keep their first element; ``(B, T', C, F')`` outputs are flattened.
        input_size: Features per input frame ``F``.
        input_module: Optional per-frame module run first (e.g. ``nn.Linear(F, d_model)``
            in front of a ``ConformerEncoder``, as ``TransformerASR``'s ``custom_src_module``).
        output_size: Optional output size; a ``Linear`` per output frame maps to it.
        takes_lengths: Force whether relative lengths are passed (default: from the
            module's ``forward`` signature).
        probe_frames: Input frames of the dummy utterance ``flops_per_frame`` measures.

    Attributes:
        output_size: ``D`` per output frame (probed, or ``output_size``).
        time_downsampling: Input frames per output frame (probed; e.g. a ``CRDNN``'s
            ``time_pooling_size``).

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if the dummy forward fails or the time downsampling is not an integer.

    Example:
        >>> from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
        >>> conf = ConformerEncoder(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3)
        >>> enc = SpeechBrainEncoder(conf, input_size=20, input_module=nn.Linear(20, 16))
        >>> y, n = enc(torch.randn(2, 9, 20), torch.tensor([9, 4]))
        >>> y.shape, enc.flops_per_frame() > 0
        (torch.Size([2, 9, 16]), True)
    """

    def __init__(
        self,
        module: nn.Module,
        input_size: int,
        input_module: nn.Module | None = None,
        output_size: int | None = None,
        takes_lengths: bool | None = None,
        probe_frames: int = 96,
    ) -> None:
        super().__init__(module, input_size, input_module, output_size, takes_lengths)
        self.output_size = self.frame_output_size
        self.probe_frames = int(probe_frames)
        self._flops: int | None = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``(B, T, F)`` with absolute ``lengths`` ``(B,)`` -> ``(B, ceil(T / d), D)``, ``ceil(lengths / d)``.

        ``d`` is :attr:`time_downsampling`; outputs past each utterance's length are zero.
        """
        y = self._project(self._encode(x, lengths))
        out = self._out_lengths(lengths)
        y = y * lengths_to_mask(out, y.shape[1], device=y.device)[..., None].to(y.dtype)
        return y, out

    def flops_per_frame(self) -> int:
        """Measured FLOPs per *output* frame on one ``probe_frames``-frame utterance (see :func:`measured_flops`).

        Attention cost grows with the utterance length; set ``probe_frames`` to your
        typical length in frames. Measured once, then cached.
        """
        if self._flops is None:
            T = self.probe_frames
            x = torch.zeros(1, T, self.input_size, device=_device_of(self))
            was = self.training
            self.eval()
            try:
                total = measured_flops(lambda: self(x, torch.tensor([T], device=x.device)), self)
            finally:
                self.train(was)
            self._flops = round(total / (T // self.time_downsampling))
        return self._flops


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class ChunkStreamingEncoder(_WrappedSpeechBrain):
    """An existing SpeechBrain module streamed chunk by chunk; **one contract frame is one chunk**.

    Inputs are chunks of ``C = chunk_size`` feature frames flattened to ``C * F``
    values (:func:`frames_to_chunks`), outputs are the chunk's ``C' = C / d`` output
    frames flattened to ``C' * D`` (:func:`chunks_to_frames` undoes it). An
    :class:`~lightning_amortized.nn.amortized.AmortizedEncoder` over such branches
    routes chunk by chunk: give it ``frame_ms = chunk_size * feature frame ms``. Its
    backlog then counts from the end of each chunk, so the end-of-utterance latency
    does not include the up to ``chunk_size`` frames of audio a chunk waits for.

    *ConformerEncoder* (``RelPosMHAXL`` attention, non-causal convolution): SpeechBrain's
    Dynamic Chunk Training semantics with
    ``DynChunkTrainConfig(chunk_size, left_context_chunks)``: ``forward`` is
    ``ConformerEncoder.forward`` with the chunk attention mask
    (``make_transformer_src_mask``) and Dynamic Chunk Convolution; ``step`` is the
    layer computation of ``ConformerEncoder.forward_streaming`` on tensor state.
    *CRDNN with a unidirectional RNN* (``mode == "recurrent"``): the CNN blocks see the
    chunk plus their receptive field of left context (``R`` cached input frames; the
    chunk's right edge is padded, as Dynamic Chunk Convolution does), the RNN carries
    its state from chunk to chunk (its memory is the whole past), the DNN is per frame.
    ``forward`` runs the CNN on every chunk's window and the RNN over the whole
    sequence, which is the same computation. ``left_context_chunks`` is not used.
    *Any other module* (``mode == "window"``, or ``windowed=True``): ``step`` encodes the
    window of the last ``left_context_chunks`` chunks of input plus the new chunk and
    keeps the new chunk's outputs; ``forward`` encodes every such window of the
    utterance at once (zeros before the first chunk, in both). The cost is the whole
    window's, per chunk, and a recurrent layer inside forgets what is older than it.

    The state is a dict of tensors, so a gated AmNet can blend it:
    ``{"window": (B, W, F)}``; for a CRDNN ``{"cnn": (B, R, F), "rnn": the RNN's hidden
    state}``; for a Conformer ``{"mha": [(B, W, d)] * layers, "conv": [(B, P, d)] * layers,
    "valid": (B, W)}`` with ``W = left_context_chunks * C`` frames and ``P`` the
    convolution's left padding. With soft gates in training the validity mask is
    blended like the rest; a cached frame counts as seen where it is at least 0.5.

    Args:
        module: The SpeechBrain module (see :class:`SpeechBrainEncoder`).
        input_size: Features per *feature frame* ``F`` (the contract's ``input_size``
            is ``C * F``).
        chunk_size: Feature frames per chunk ``C`` (a multiple of the module's time
            downsampling).
        left_context_chunks: Chunks of left context (``>= 0``; finite: SpeechBrain 1.1.2
            cannot stream an infinite left context).
        input_module: Optional per-frame module run first (e.g. ``nn.Linear(F, d_model)``).
        output_size: Optional output size per output frame (a ``Linear``).
        takes_lengths: As in :class:`SpeechBrainEncoder` (windows are always full).
        windowed: Use windowed recomputation even where the module streams another way.

    Attributes:
        input_size: ``C * F``.
        output_size: ``C' * D``.
        frame_output_size: ``D``, per output frame.
        frames_per_chunk: ``C'``, output frames per chunk.
        mode: ``"dynamic_chunk"`` (``ConformerEncoder``), ``"recurrent"`` (``CRDNN`` with a
            unidirectional RNN) or ``"window"``.

    Raises:
        ValueError: for a bad ``chunk_size`` or ``left_context_chunks``, a chunk size
            that the time downsampling does not divide, or a Conformer that cannot be
            chunk-streamed (causal or dilated convolution, attention other than
            ``RelPosMHAXL``).

    Example:
        >>> from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
        >>> conf = ConformerEncoder(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3).eval()
        >>> enc = ChunkStreamingEncoder(conf, input_size=20, chunk_size=4, input_module=nn.Linear(20, 16))
        >>> x, n = frames_to_chunks(torch.randn(1, 12, 20), torch.tensor([12]), 4)
        >>> y, _ = enc(x, n)
        >>> state = enc.init_state(1)
        >>> steps = []
        >>> for t in range(3):
        ...     y_t, state = enc.step(x[:, t], state)
        ...     steps.append(y_t)
        >>> y.shape, torch.allclose(torch.stack(steps, 1), y, atol=1e-5)
        (torch.Size([1, 3, 64]), True)
    """

    def __init__(
        self,
        module: nn.Module,
        input_size: int,
        chunk_size: int,
        left_context_chunks: int = 1,
        input_module: nn.Module | None = None,
        output_size: int | None = None,
        takes_lengths: bool | None = None,
        windowed: bool = False,
    ) -> None:
        if int(chunk_size) <= 0:
            raise ValueError(f"Expected argument `chunk_size` to be a positive integer, but got {chunk_size}.")
        if left_context_chunks is None or int(left_context_chunks) < 0:
            raise ValueError(
                "Expected argument `left_context_chunks` to be an integer >= 0 (SpeechBrain 1.1.2 cannot stream "
                f"an infinite left context), but got {left_context_chunks}."
            )
        super().__init__(module, input_size, input_module, output_size, takes_lengths)
        self.chunk_size = int(chunk_size)
        self.left_context_chunks = int(left_context_chunks)
        self.feature_size = int(input_size)
        d = self.time_downsampling
        if self.chunk_size % d:
            raise ValueError(
                f"Expected argument `chunk_size` to be a multiple of the module's time downsampling {d}, "
                f"but got {chunk_size}."
            )
        self.mode = "window"
        if _is_conformer(module) and not windowed:
            self.mode = "dynamic_chunk"
            if d != 1:
                raise ValueError(
                    f"A chunk-streamed ConformerEncoder needs a per-frame `input_module`, but this one changes the "
                    f"frame rate by {d}; downsample the features before chunking them."
                )
            self._check_conformer()
        elif _streams_recurrently(module) and not windowed:
            self.mode = "recurrent"
        self.cnn_context = _cnn_left_context(module) if self.mode == "recurrent" else 0
        self.frames_per_chunk = self.chunk_size // d
        self.input_size = self.chunk_size * self.feature_size
        self.output_size = self.frames_per_chunk * self.frame_output_size
        self._flops: int | None = None

    def _check_conformer(self) -> None:
        attention = getattr(self.module, "attention_type", None)
        if attention != "RelPosMHAXL":
            raise ValueError(
                f"This ConformerEncoder uses attention_type={attention!r}; chunked streaming here supports "
                "'RelPosMHAXL' only (SpeechBrain's streaming Conformer)."
            )
        for i, layer in enumerate(self.module.layers):
            conv = layer.convolution_module
            if conv.causal or conv.dilation != 1:
                raise ValueError(
                    f"ConformerEncoder layer {i} has a causal or dilated convolution; chunked streaming "
                    "(Dynamic Chunk Convolution) needs `causal=False` and dilation 1, as in SpeechBrain."
                )

    @property
    def native_streaming(self) -> bool:
        """Whether the module streams with its own state (Conformer or CRDNN), not by windowed recomputation."""
        return self.mode != "window"

    @property
    def left_frames(self) -> int:
        """Feature frames of left context ``W = left_context_chunks * chunk_size``."""
        return self.left_context_chunks * self.chunk_size

    @property
    def dynchunktrain_config(self) -> Any:
        """The equivalent ``speechbrain.utils.dynamic_chunk_training.DynChunkTrainConfig``."""
        from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

        return DynChunkTrainConfig(chunk_size=self.chunk_size, left_context_size=self.left_context_chunks)

    # -- whole utterances -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode chunks ``(B, N, C * F)`` with ``lengths`` ``(B,)`` in chunks -> ``(B, N, C' * D)``, ``lengths``.

        Equal to running :meth:`step` over the chunks (outputs past each length are zero).
        """
        B, N, _ = x.shape
        C, W = self.chunk_size, self.left_frames
        frames = x.reshape(B, N * C, self.feature_size)
        if self.mode == "dynamic_chunk":
            from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask

            cfg = self.dynchunktrain_config
            src_mask = make_transformer_src_mask(frames, dynchunktrain_config=cfg)  # (N*C, N*C) from shapes only
            y = self._encode(frames, lengths * C, src_mask, cfg)
        elif self.mode == "recurrent":  # the CNN on every chunk's window, the RNN over the whole sequence
            R = self.cnn_context
            h = self._cnn(_windows(frames, R, C), R)
            h, _ = self.module.RNN(self._after_cnn(h.reshape(B, N * C, *h.shape[2:])))
            y = self._after_rnn(h)
        else:  # every window of W + C frames ending at a chunk boundary, encoded as one batch
            windows = _windows(frames, W, C)
            full = torch.full((B * N,), W + C, dtype=torch.long, device=x.device)
            y = self._encode(windows, full)[:, -self.frames_per_chunk :]
        y = self._project(y).reshape(B, N, self.output_size)
        return y * lengths_to_mask(lengths, N, device=y.device)[..., None].to(y.dtype), lengths

    def _cnn(self, windows: torch.Tensor, context: int) -> torch.Tensor:
        """CRDNN's input module and CNN on windows ``(M, R + C, F)`` -> the chunk frames' outputs ``(M, C, ...)``."""
        h = windows if self.input_module is None else self.input_module(windows)
        if "CNN" in self.module._modules:
            h = self.module.CNN(h)
        return h[:, context:]

    def _after_cnn(self, h: torch.Tensor) -> torch.Tensor:
        for name in ("time_pooling", "projection"):
            if name in self.module._modules:
                h = self.module._modules[name](h)
        return h

    def _after_rnn(self, h: torch.Tensor) -> torch.Tensor:
        if "DNN" in self.module._modules:
            h = self.module.DNN(h)
        return h

    # -- streaming --------------------------------------------------------------------------------

    def init_state(self, batch_size: int) -> dict[str, Any]:
        """Empty left context for ``batch_size`` streams (a dict of zero tensors, batch first)."""
        p = next(self.parameters())
        W = self.left_frames
        if self.mode == "window":
            return {"window": p.new_zeros(batch_size, W, self.feature_size)}
        if self.mode == "recurrent":  # the RNN's own zero state, shaped by one frame through it
            with torch.no_grad():
                probe = self._after_cnn(self._cnn(p.new_zeros(batch_size, self.chunk_size, self.feature_size), 0))
                _, hidden = self.module.RNN(probe[:, :1])
            zero = _tree_zeros(hidden)
            return {"cnn": p.new_zeros(batch_size, self.cnn_context, self.feature_size), "rnn": zero}
        d = self.pos.emb_dim
        return {
            "mha": [p.new_zeros(batch_size, W, d) for _ in self.module.layers],
            "conv": [p.new_zeros(batch_size, layer.convolution_module.padding, d) for layer in self.module.layers],
            "valid": p.new_zeros(batch_size, W),
        }

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Advance one chunk: ``x_t`` ``(B, C * F)`` -> ``y_t`` ``(B, C' * D)`` and the new state."""
        B = x_t.shape[0]
        chunk = x_t.reshape(B, self.chunk_size, self.feature_size)
        if self.mode == "recurrent":
            window = torch.cat([state["cnn"], chunk], 1)
            h, hidden = self.module.RNN(self._after_cnn(self._cnn(window, self.cnn_context)), hx=state["rnn"])
            y = self._after_rnn(h)
            new_state = {"cnn": window[:, window.shape[1] - self.cnn_context :], "rnn": hidden}
        elif self.mode == "window":
            window = torch.cat([state["window"], chunk], 1)
            full = torch.full((B,), window.shape[1], dtype=torch.long, device=x_t.device)
            y = self._encode(window, full)[:, -self.frames_per_chunk :]
            new_state = {"window": window[:, window.shape[1] - self.left_frames :]}
        else:
            y, new_state = self._conformer_step(chunk, state)
        return self._project(y).reshape(B, self.output_size), new_state

    def _conformer_step(self, chunk: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``ConformerEncoder.forward_streaming`` on fixed-size tensor state (masked where no context exists yet)."""
        h = chunk if self.input_module is None else self.input_module(chunk)
        B, C, _ = h.shape
        W = self.left_frames
        valid = state["valid"]
        key_pad = torch.cat([valid < 0.5, torch.zeros(B, C, dtype=torch.bool, device=h.device)], 1)
        pos = self.pos(h.new_empty(1, W + C, 0))
        mha, conv = [], []
        for layer, m_ctx, c_ctx in zip(self.module.layers, state["mha"], state["conv"]):
            h, m_new, c_new = _conformer_layer_step(layer, h, m_ctx, c_ctx, key_pad, pos)
            mha.append(m_new)
            conv.append(c_new)
        y = self.module.norm(h)
        new_valid = torch.cat([valid, valid.new_ones(B, C)], 1)[:, C:] if W else valid
        return y, {"mha": mha, "conv": conv, "valid": new_valid}

    def flops_per_frame(self) -> int:
        """Measured FLOPs per contract frame, i.e. **per chunk**, of one :meth:`step` (batch of one).

        Every step costs the same (the state has a fixed size), so one step from
        :meth:`init_state` is measured (see :func:`measured_flops`); cached.
        Divide by ``frames_per_chunk`` for FLOPs per output frame.
        """
        if self._flops is None:
            x = torch.zeros(1, self.input_size, device=_device_of(self))
            was = self.training
            self.eval()
            try:
                state = self.init_state(1)
                self._flops = measured_flops(lambda: self.step(x, state), self)
            finally:
                self.train(was)
        return self._flops


def _windows(frames: torch.Tensor, context: int, chunk_size: int) -> torch.Tensor:
    """``(B, N * C, F)`` -> ``(B * N, context + C, F)``: each chunk with the ``context`` frames before it (zeros first)."""
    Fdim = frames.shape[-1]
    padded = F.pad(frames, (0, 0, context, 0))
    return padded.unfold(1, context + chunk_size, chunk_size).permute(0, 1, 3, 2).reshape(-1, context + chunk_size, Fdim)


def _tree_zeros(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return torch.zeros_like(tree)
    return type(tree)(_tree_zeros(t) for t in tree)


_CRDNN_PARTS = ("CNN", "time_pooling", "projection", "RNN", "DNN")


def _streams_recurrently(module: nn.Module) -> bool:
    """A ``CRDNN`` whose one RNN is unidirectional (not ``use_rnnp``) and whose CNN keeps the frame rate."""
    from speechbrain.lobes.models.CRDNN import CRDNN
    from speechbrain.nnet.containers import Sequential

    if not isinstance(module, CRDNN):
        return False
    names = list(module._modules)
    if "RNN" not in names or names != [n for n in _CRDNN_PARTS if n in names]:
        return False
    rnn = module.RNN
    if isinstance(rnn, Sequential):  # use_rnnp: RNN layers interleaved with linear layers
        return False
    bidirectional = getattr(rnn, "bidirectional", None)
    if bidirectional is None:
        bidirectional = getattr(getattr(rnn, "rnn", None), "bidirectional", True)
    if bidirectional:
        return False
    cnn = module._modules.get("CNN")
    pools_time = any(
        isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and _pair(m.kernel_size)[0] > 1 for m in (cnn.modules() if cnn else ())
    )
    return not pools_time


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _cnn_left_context(module: nn.Module) -> int:
    """Left receptive field in frames of a CRDNN's CNN: ``sum ceil((k_t - 1) * dilation_t / 2)`` over its convolutions."""
    cnn = module._modules.get("CNN")
    total = 0
    for m in cnn.modules() if cnn is not None else ():
        if isinstance(m, nn.Conv2d):
            span = (m.kernel_size[0] - 1) * m.dilation[0]
            total += (span + 1) // 2
    return total


def _conformer_layer_step(
    layer: nn.Module,
    x: torch.Tensor,
    mha_ctx: torch.Tensor,
    conv_ctx: torch.Tensor,
    key_pad: torch.Tensor,
    pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ``ConformerEncoderLayer`` on a chunk ``(B, C, d)``; mirrors its ``forward_streaming``.

    ``mha_ctx`` ``(B, W, d)``: the attention inputs of the last ``W`` frames (masked by
    ``key_pad`` where not yet seen); ``conv_ctx`` ``(B, P, d)``: the depthwise
    convolution's input (after layer norm, pointwise conv and GLU) of the last ``P``
    frames, zero before the first chunk. The chunk's right side is zero-padded, as in
    Dynamic Chunk Convolution.
    """
    C, W = x.shape[1], mha_ctx.shape[1]
    x = x + 0.5 * layer.ffn_module1(x)
    xx = torch.cat([mha_ctx, x], 1)
    skip = xx
    a = layer.norm1(xx)
    a, _ = layer.mha_layer(a, a, a, attn_mask=None, key_padding_mask=key_pad, pos_embs=pos)
    x = (a + skip)[:, -C:]
    cm = layer.convolution_module
    u = cm.bottleneck(cm.layer_norm(x).transpose(1, 2))  # (B, d, C)
    P = cm.padding
    uu = torch.cat([conv_ctx.transpose(1, 2), u], 2)  # (B, d, P + C)
    out = F.conv1d(F.pad(uu, (0, P)), cm.conv.weight, cm.conv.bias, padding=0, groups=cm.conv.groups)
    x = x + cm.after_conv(out.transpose(1, 2))
    x = layer.norm2(x + 0.5 * layer.ffn_module2(x))
    return x, xx[:, xx.shape[1] - W :], uu[..., uu.shape[2] - P :].transpose(1, 2)
