"""A SpeechBrain module instance behind the encoder contract (whole utterances)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from lightning_amortized.functional.masks import lengths_to_mask
from lightning_amortized.nn.modes import eval_mode
from lightning_amortized.nn.padding import ConvPaddingMask
from lightning_amortized.nn.speechbrain_encoders.flops import measured_flops

__all__ = ["SpeechBrainEncoder"]


_LENGTH_ARGS = ("lengths", "lens", "wav_lens", "length")


def _is_conformer(module: nn.Module) -> bool:
    from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder

    return isinstance(module, ConformerEncoder)


def _takes(module: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


class _WrappedSpeechBrain(ConvPaddingMask, nn.Module):
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
        self._mask_conv_padding(module)  # a Conformer's convolutions would read the batch's padding
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
        self._module_output_size, self.time_downsampling, self._rounds_up = self._probe()
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
        if h.shape[1] != x.shape[1]:
            raise ValueError(
                f"`input_module` {type(self.input_module).__name__} maps {x.shape[1]} frames to {h.shape[1]}; it must "
                "work per frame (downsample inside `module`, or before the features reach this encoder)."
            )
        return self._encode_module(h, lengths, src_mask, dynchunktrain_config)

    def _encode_module(
        self,
        h: torch.Tensor,
        lengths: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        dynchunktrain_config: Any = None,
    ) -> torch.Tensor:
        """The wrapped module alone on ``(B, T, F')`` (after ``input_module``)."""
        T = h.shape[1]
        if self.transformer_style:
            pad = ~lengths_to_mask(lengths, T, device=h.device)
            kwargs: dict[str, Any] = {"src_key_padding_mask": pad}
            if src_mask is not None:
                kwargs["src_mask"] = src_mask
            if dynchunktrain_config is not None:
                kwargs["dynchunktrain_config"] = dynchunktrain_config
            if self.pos is not None:  # RelPosEncXL makes float32 tables whatever the model's dtype
                kwargs["pos_embs"] = self.pos(h).to(h.dtype)
            with self.padding_masked(pad):
                y = self.module(h, **kwargs)
        elif self.takes_lengths:
            rel = relative_lengths(lengths, T)
            y = self.module(h, **{self._lengths_arg: rel}) if self._lengths_arg else self.module(h, rel)
        else:
            y = self.module(h)
        if isinstance(y, (tuple, list)):  # (output, hidden) / (output, attention) conventions
            y = y[0]
        if y.dim() > 3:  # e.g. a CNN block's (B, T', C, F')
            y = y.reshape(y.shape[0], y.shape[1], -1)
        return y

    @torch.no_grad()
    def _probe(self, frames: int = 120) -> tuple[int, int, bool]:
        """Output size, time downsampling ``d`` and whether a partial group of ``d`` frames makes an output frame.

        Dummy forwards of ``frames`` to ``frames + d - 1`` frames, every submodule in eval mode
        for them and then back in its own mode; a module that rounds partial groups both ways
        (a ceil front end before a floor pooling) is refused.
        """

        def run(n: int) -> torch.Tensor:
            dev = _device_of(self)
            try:
                return self._encode(torch.zeros(1, n, self.input_size, device=dev), torch.tensor([n], device=dev))
            except Exception as err:  # a user-facing explanation of a mismatched wrapper
                raise ValueError(
                    f"A dummy forward of {type(self.module).__name__} on (1, {n}, {self.input_size}) failed "
                    f"({type(err).__name__}: {err}); check `input_size` (and `input_module` if the module expects "
                    "another width)."
                ) from err

        with eval_mode(self):
            y = run(frames)
            out_frames = int(y.shape[1])
            if out_frames <= 0 or frames % out_frames:
                raise ValueError(
                    f"{type(self.module).__name__} maps {frames} frames to {out_frames}: only an integer time "
                    "downsampling is supported."
                )
            d = frames // out_frames
            partial = [int(run(frames + r).shape[1]) - out_frames for r in range(1, d)]  # 0: floor, 1: ceil
        if partial and len(set(partial)) > 1 or any(p not in (0, 1) for p in partial):
            raise ValueError(
                f"{type(self.module).__name__} rounds a partial group of its {d}-frame downsampling neither always "
                f"down nor always up ({frames} + 1..{d - 1} frames give {[out_frames + p for p in partial]} outputs); "
                "its output lengths cannot be computed from input lengths. Pad the features to a multiple of "
                f"{d} frames before this encoder, or make the module round one way."
            )
        return int(y.shape[-1]), d, bool(partial) and partial[0] == 1

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        return self.proj(y) if self.proj is not None else y

    def _out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames of ``lengths`` input frames: ``ceil`` or ``floor(lengths / d)``, as the module rounds (probed)."""
        d = self.time_downsampling
        up = getattr(self, "_rounds_up", True)  # an adapter pickled whole before the probe existed rounded up
        return torch.div(lengths + (d - 1 if up else 0), d, rounding_mode="floor")


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
        """Encode ``(B, T, F)`` with absolute ``lengths`` ``(B,)`` -> ``(B, T', D)``, output lengths ``(B,)``.

        ``d`` is :attr:`time_downsampling`; ``T'`` and the output lengths are ``T / d`` and
        ``lengths / d`` rounded the way the module rounds (``ceil``, or ``floor`` for a
        pooling that drops a partial group, e.g. a ``CRDNN``'s ``time_pooling``). Outputs
        past each utterance's length are zero, also where the module stopped at the
        batch's longest utterance (SpeechBrain's packed RNNs).
        """
        y = self._project(self._encode(x, lengths))
        out = self._out_lengths(lengths)
        T_out = int(self._out_lengths(torch.tensor(x.shape[1])))
        if y.shape[1] < T_out:  # packed RNNs unpack to the longest length of the batch only
            y = torch.nn.functional.pad(y, (0, 0, 0, T_out - y.shape[1]))
        y = y[:, :T_out] * lengths_to_mask(out, T_out, device=y.device)[..., None].to(y.dtype)
        return y, out

    def flops_per_frame(self) -> int:
        """Measured FLOPs per *output* frame on one ``probe_frames``-frame utterance (see :func:`measured_flops`).

        Attention cost grows with the utterance length; set ``probe_frames`` to your
        typical length in frames. Measured once, then cached.
        """
        if self._flops is None:
            T = self.probe_frames
            if T < self.time_downsampling:
                raise ValueError(
                    f"`probe_frames` {T} is fewer than the module's time downsampling {self.time_downsampling}: "
                    "the probe would have no output frame. Pass a typical utterance length in frames."
                )
            x = torch.zeros(1, T, self.input_size, device=_device_of(self))
            with eval_mode(self):
                total = measured_flops(lambda: self(x, torch.tensor([T], device=x.device)), self)
            self._flops = round(total / (T // self.time_downsampling))
        return self._flops


def relative_lengths(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """SpeechBrain's relative lengths ``lengths / frames`` (float32), each rounded up to the next float where needed so
    that ``int(rel * frames)`` (how SpeechBrain packs and masks) gives back ``lengths`` exactly.

    Example:
        >>> rel = relative_lengths(torch.tensor([13, 22]), 22)
        >>> (rel * 22).long().tolist()
        [13, 22]
    """
    rel = lengths.to(torch.float32) / max(int(frames), 1)
    short = (rel * frames).long() < lengths
    return torch.where(short, torch.nextafter(rel, torch.ones_like(rel)), rel)


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
