"""Chunk streaming of a wrapped SpeechBrain module: ``step`` computes one chunk, as ``forward`` does."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_amortized.functional.masks import lengths_to_mask
from lightning_amortized.nn.modes import eval_mode
from lightning_amortized.nn.speechbrain_encoders.chunks import _tree_zeros, _windows
from lightning_amortized.nn.speechbrain_encoders.flops import measured_flops
from lightning_amortized.nn.speechbrain_encoders.wrapped import _device_of, _is_conformer, _WrappedSpeechBrain

__all__ = ["ChunkStreamingEncoder"]

_CRDNN_PARTS = ("CNN", "time_pooling", "projection", "RNN", "DNN")


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
        >>> from lightning_amortized.nn.speechbrain_encoders import frames_to_chunks
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
        if (left_context_chunks is None or isinstance(left_context_chunks, bool)
                or int(left_context_chunks) != left_context_chunks or left_context_chunks < 0):
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
        elif _streams_recurrently(module) and not windowed and self._cnn_keeps_frame_rate():
            self.mode = "recurrent"
        self.cnn_context = _cnn_left_context(module) if self.mode == "recurrent" else 0
        self.frames_per_chunk = self.chunk_size // d
        self.input_size = self.chunk_size * self.feature_size
        self.output_size = self.frames_per_chunk * self.frame_output_size
        self._flops: int | None = None
        self._rnn_state_template: tuple[Any, Any] | None = None  # ((batch, device, dtype), zero RNN state)

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
            h = frames
            if self.input_module is not None:  # per chunk, as step() sees it (a front end may mix frames)
                h = self.input_module(x.reshape(B * N, C, self.feature_size))
                h = h.reshape(B, N * C, h.shape[-1])
            y = self._encode_module(h, lengths * C, src_mask, cfg)
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

    @torch.no_grad()
    def _cnn_keeps_frame_rate(self, frames: int = 24) -> bool:
        """Whether the CRDNN's input module and CNN map ``frames`` frames to as many (a CNN that pools time cannot
        stream chunk by chunk with a left context of its receptive field)."""
        with eval_mode(self):
            p = next(self.parameters())
            return int(self._cnn(p.new_zeros(1, frames, self.input_size), 0).shape[1]) == frames

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
            key = (batch_size, p.device, p.dtype)
            template = getattr(self, "_rnn_state_template", None)  # None also for an adapter pickled before it existed
            if template is None or template[0] != key:
                # in eval mode: a training-mode probe would move BatchNorm statistics (LiGRU's, the CNN's)
                with torch.no_grad(), eval_mode(self):
                    probe = self._after_cnn(self._cnn(p.new_zeros(batch_size, self.chunk_size, self.feature_size), 0))
                    _, hidden = self.module.RNN(probe[:, :1])
                self._rnn_state_template = (key, _tree_zeros(hidden))
            zero = _tree_zeros(self._rnn_state_template[1])
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
        pos = self.pos(h.new_empty(1, W + C, 0)).to(h.dtype)
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
            with eval_mode(self):
                state = self.init_state(1)
                self._flops = measured_flops(lambda: self.step(x, state), self)
        return self._flops


def _streams_recurrently(module: nn.Module) -> bool:
    """A ``CRDNN`` whose one RNN is unidirectional (not ``use_rnnp``); whether its CNN keeps the frame rate is probed
    by ``ChunkStreamingEncoder._cnn_keeps_frame_rate``."""
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
    return not bidirectional


def _cnn_left_context(module: nn.Module) -> int:
    """Left receptive field in frames of a CRDNN's CNN: ``sum ceil((k_t - 1) * dilation_t / 2)`` over its convolutions.

    SpeechBrain's ``Conv2d`` runs its ``torch.nn.Conv2d`` on ``(B, C, F, T)`` (time last; first
    with ``swap=True``), so ``k_t`` is the last entry of the torch kernel size. A bare
    ``torch.nn.Conv2d`` elsewhere in the CNN counts with its larger span (too much context
    costs compute, never correctness).
    """
    from speechbrain.nnet.CNN import Conv2d as SBConv2d

    cnn = module._modules.get("CNN")
    total, inner = 0, set()
    for m in cnn.modules() if cnn is not None else ():
        if isinstance(m, SBConv2d):
            axis = 0 if getattr(m, "swap", False) else -1
            conv = m.conv
            inner.add(conv)
            total += ((conv.kernel_size[axis] - 1) * conv.dilation[axis] + 1) // 2
        elif isinstance(m, nn.Conv2d) and m not in inner:
            total += max(((k - 1) * d + 1) // 2 for k, d in zip(m.kernel_size, m.dilation))
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
