"""Log-mel filterbank features and SpecAugment, batched on padded waveforms."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from lightning_amortized.functional.masks import lengths_to_mask

__all__ = ["LogMelFilterbank", "SpecAugment", "frame_count"]


def frame_count(num_samples: torch.Tensor | int, hop_length: int = 160) -> torch.Tensor | int:
    """Feature frames for ``num_samples`` samples with a centred STFT: ``n // hop + 1``."""
    return num_samples // hop_length + 1


class LogMelFilterbank(nn.Module):
    """80-dim log-mel filterbanks (25 ms window, 10 ms hop at 16 kHz) with per-utterance normalisation.

    Args:
        sample_rate: Input rate in Hz.
        n_mels: Mel bands.
        win_length: Window in samples (400 = 25 ms at 16 kHz).
        hop_length: Hop in samples (160 = 10 ms at 16 kHz).
        normalize: Subtract the mean and divide by the std of each utterance's valid frames.

    Example:
        >>> fb = LogMelFilterbank()
        >>> feats, n = fb(torch.randn(2, 16000), torch.tensor([16000, 8000]))
        >>> feats.shape, n.tolist()
        (torch.Size([2, 101, 80]), [101, 51])
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_length: int = 400,
        hop_length: int = 160,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        # centred frames, but each utterance reflect-padded at its own ends (not at the batch's): an
        # utterance's features do not depend on what it is batched with
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=512, win_length=win_length, hop_length=hop_length, n_mels=n_mels,
            center=False,
        )
        self.n_fft = 512
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.normalize = normalize

    def _centre(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """``(B, S + n_fft)``: each utterance reflect-padded by ``n_fft // 2`` at its own start and end, as a
        centred STFT of it alone would be; zeros after."""
        pad = self.n_fft // 2
        out = wavs.new_zeros(wavs.shape[0], wavs.shape[1] + 2 * pad)
        for b, n in enumerate(wav_lengths.tolist()):
            out[b, : n + 2 * pad] = _reflect_pad(wavs[b, :n], pad)
        return out

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` samples and ``(B,)`` sample counts -> ``(B, T, n_mels)`` and ``(B,)`` frame counts.

        Raises:
            ValueError: ``wavs`` is not ``(B, S)``, or ``wav_lengths`` is not ``(B,)`` integer
                sample counts in ``[1, S]`` (SpeechBrain's relative lengths must be multiplied by
                ``S`` and rounded first).
        """
        if wavs.dim() != 2:
            raise ValueError(f"Expected argument `wavs` to have shape (B, S), but got {tuple(wavs.shape)}.")
        if wav_lengths.shape != (wavs.shape[0],) or wav_lengths.is_floating_point() or wav_lengths.is_complex():
            raise ValueError(
                f"Expected argument `wav_lengths` to be ({wavs.shape[0]},) integer sample counts, but got shape "
                f"{tuple(wav_lengths.shape)} dtype {wav_lengths.dtype}. SpeechBrain's relative lengths in [0, 1] "
                "must be turned into counts first: (rel * wavs.shape[1]).round().long()."
            )
        if wav_lengths.numel() and not bool(((wav_lengths >= 1) & (wav_lengths <= wavs.shape[1])).all()):
            raise ValueError(
                f"Expected argument `wav_lengths` to be in [1, {wavs.shape[1]}] (the padded length), but got "
                f"{wav_lengths.tolist()}."
            )
        feats = torch.log(self.mel(self._centre(wavs, wav_lengths)) + 1e-6).transpose(1, 2)  # (B, T, M)
        lengths = frame_count(wav_lengths, self.hop_length).clamp(max=feats.shape[1])
        if self.normalize:
            mask = lengths_to_mask(lengths, feats.shape[1], device=feats.device).unsqueeze(-1).to(feats)
            n = mask.sum(1, keepdim=True).clamp(min=1)
            mean = (feats * mask).sum(1, keepdim=True) / n
            var = (((feats - mean) * mask) ** 2).sum(1, keepdim=True) / n
            feats = (feats - mean) / (var.sqrt() + 1e-5) * mask
        return feats, lengths


def _reflect_pad(w: torch.Tensor, pad: int) -> torch.Tensor:
    """``w`` ``(S,)`` with ``pad`` samples reflected at both ends (zeros where it is too short to reflect)."""
    if w.shape[0] > pad:
        return torch.nn.functional.pad(w[None, None], (pad, pad), mode="reflect")[0, 0]
    return torch.nn.functional.pad(w, (pad, pad))


class SpecAugment(nn.Module):
    """Frequency and time masking (no time warping), applied per utterance.

    A mask starts at a uniform position in ``[0, F - w)`` (``[0, T - w)`` in time), so the last
    bin and the last frame are never masked. Known and kept: ``[0, F - w]`` would change every
    draw, and with them every published model trained with SpecAugment (the shared base).

    Args:
        freq_masks: Number of frequency masks.
        freq_width: Maximum width of each frequency mask (bins).
        time_masks: Number of time masks.
        time_width: Maximum width of each time mask as a fraction of the utterance.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: float = 0.05) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masks ``(B, T, F)`` features in place of a copy; padding is untouched."""
        out = feats.clone()
        B, _, F = out.shape
        for b in range(B):
            T = int(lengths[b])
            for _ in range(self.freq_masks):
                w = int(torch.randint(0, self.freq_width + 1, (1,), generator=generator))
                f0 = int(torch.randint(0, max(1, F - w), (1,), generator=generator))
                out[b, :T, f0 : f0 + w] = 0.0
            max_t = max(1, int(self.time_width * T))
            for _ in range(self.time_masks):
                w = int(torch.randint(0, max_t + 1, (1,), generator=generator))
                t0 = int(torch.randint(0, max(1, T - w), (1,), generator=generator))
                out[b, t0 : t0 + w, :] = 0.0
        return out
