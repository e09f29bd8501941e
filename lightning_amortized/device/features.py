"""Log-mel features in numpy, matching :class:`lightning_amortized.data.features.LogMelFilterbank`.

The training features are ``log(mel(|STFT|^2) + 1e-6)`` with torchaudio's defaults
(512-point FFT, 400-sample periodic Hann window centred in the FFT frame, 160-sample hop,
``center=True`` with reflect padding of 256 samples, 80 HTK-mel triangles without
normalisation), then per-utterance mean/variance normalisation. This module computes
the same in float64 and returns float32 (a test bounds the difference).

:class:`FeatureStream` produces the same frames from audio arriving in chunks: frame
``t`` covers padded samples ``[160 t, 160 t + 512)``, so it is ready once
``160 t + 256`` samples have arrived; the last frames wait for the end (reflect padding
of the tail), which is exactly the offline result.

Normalisation: ``"utterance"`` uses the statistics of the whole utterance, as in
training (exact, but the encoder can only start at the end of the audio);
``"running"`` is causal: frame ``t`` uses the mean and deviation of frames ``0..t``
(true streaming, but not the features the model was trained on, see ``docs/device.md``).

Example:
    >>> import numpy as np
    >>> fb = LogMel()
    >>> fb(np.zeros(16000, np.float32) + 0.01).shape
    (101, 80)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["LogMel", "FeatureStream", "mel_filterbank", "normalize_utterance"]

DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000, "n_mels": 80, "n_fft": 512, "win_length": 400, "hop_length": 160,
    "f_min": 0.0, "f_max": None, "log_offset": 1e-6, "norm_eps": 1e-5,
}


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> np.ndarray:
    """HTK-mel triangular filters ``(n_freqs, n_mels)`` as ``torchaudio.functional.melscale_fbanks(norm=None)``."""
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_min, m_max = 2595.0 * np.log10(1.0 + f_min / 700.0), 2595.0 * np.log10(1.0 + f_max / 700.0)
    f_pts = 700.0 * (10 ** (np.linspace(m_min, m_max, n_mels + 2) / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def normalize_utterance(feats: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """``(feats - mean) / (std + eps)`` over the frames of one utterance ``(T, M)`` (population std)."""
    mean = feats.mean(0, keepdims=True)
    std = np.sqrt(((feats - mean) ** 2).mean(0, keepdims=True))
    return (feats - mean) / (std + eps)


class LogMel:
    """Unnormalised log-mel frames from padded audio, and whole-utterance features.

    Args:
        settings: The manifest's ``features`` (missing keys take the training defaults).
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        s = {**DEFAULTS, **(settings or {})}
        self.sample_rate, self.n_mels = int(s["sample_rate"]), int(s["n_mels"])
        self.n_fft, self.win, self.hop = int(s["n_fft"]), int(s["win_length"]), int(s["hop_length"])
        self.log_offset, self.norm_eps = float(s["log_offset"]), float(s["norm_eps"])
        f_max = s["f_max"] if s["f_max"] is not None else self.sample_rate / 2
        n = np.arange(self.win)
        hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.win)  # periodic, like torch.hann_window
        left = (self.n_fft - self.win) // 2
        self.window = np.zeros(self.n_fft)
        self.window[left : left + self.win] = hann
        self.fbank = mel_filterbank(self.n_fft // 2 + 1, float(s["f_min"]), float(f_max), self.n_mels, self.sample_rate)
        self.pad = self.n_fft // 2
        if self.pad < self.hop:  # then FeatureStream.finish() always has a frame left (see there)
            raise ValueError(
                f"Expected `n_fft // 2` ({self.pad}) to be at least `hop_length` ({self.hop}): the streaming "
                "runtime relies on the last frame of every utterance waiting for the end of the audio."
            )

    def frames(self, padded: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Log-mel frames ``start..stop-1`` ``(stop - start, n_mels)`` float64 of reflect-padded audio."""
        if stop <= start:
            return np.zeros((0, self.n_mels))
        idx = (np.arange(start, stop) * self.hop)[:, None] + np.arange(self.n_fft)[None, :]
        spec = np.fft.rfft(padded[idx] * self.window, axis=-1)
        power = spec.real**2 + spec.imag**2
        return np.log(power @ self.fbank + self.log_offset)

    def num_frames(self, num_samples: int) -> int:
        """Frames of ``num_samples`` samples: ``n // hop + 1``."""
        return num_samples // self.hop + 1

    def __call__(self, wav: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Features ``(T, n_mels)`` float32 of a whole utterance ``(S,)`` (``S > n_fft // 2``)."""
        x = np.asarray(wav, dtype=np.float64).reshape(-1)
        if x.shape[0] <= self.pad:
            raise ValueError(f"Expected at least {self.pad + 1} samples of audio, but got {x.shape[0]}.")
        padded = np.pad(x, self.pad, mode="reflect")
        feats = self.frames(padded, 0, self.num_frames(x.shape[0]))
        return (normalize_utterance(feats, self.norm_eps) if normalize else feats).astype(np.float32)


class FeatureStream:
    """Log-mel frames of audio arriving in chunks; the frames equal :class:`LogMel` on the whole audio.

    Args:
        logmel: The feature extractor.
    """

    def __init__(self, logmel: LogMel) -> None:
        self.logmel = logmel
        self.reset()

    def reset(self) -> None:
        """Forget the audio of the previous utterance."""
        self._chunks: list[np.ndarray] = []
        self._audio = np.zeros(0)
        self.emitted = 0

    @property
    def num_samples(self) -> int:
        return int(self._audio.shape[0])

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Add samples; returns the unnormalised frames ``(n, n_mels)`` float64 that became complete."""
        self._audio = np.concatenate([self._audio, np.asarray(samples, dtype=np.float64).reshape(-1)])
        n, pad, hop = self.num_samples, self.logmel.pad, self.logmel.hop
        if n <= pad:
            return np.zeros((0, self.logmel.n_mels))
        ready = (n - pad) // hop + 1  # frame t needs samples up to 160 t + 255
        start = self.emitted
        if ready <= start:
            return np.zeros((0, self.logmel.n_mels))
        head = np.concatenate([self._audio[1 : pad + 1][::-1], self._audio])  # reflect pad at the start only
        self.emitted = ready
        return self.logmel.frames(head, start, ready)

    def finish(self) -> np.ndarray:
        """The remaining frames (reflect padding at the end of the utterance): always at least one.

        The last frame (``n // hop``) needs samples up to ``hop * (n // hop) + n_fft // 2 > n - hop + pad``,
        past the end whenever ``pad >= hop`` (checked by :class:`LogMel`), so :meth:`accept`
        never emits it. The device runtime relies on this: the utterance's last encoder frame
        is always encoded in ``finish()``, where the latency guard knows it is the last.
        """
        n, pad = self.num_samples, self.logmel.pad
        if n <= pad:
            raise ValueError(f"Expected at least {pad + 1} samples of audio, but got {n}.")
        total = self.logmel.num_frames(n)
        start = self.emitted
        self.emitted = total
        return self.logmel.frames(np.pad(self._audio, pad, mode="reflect"), start, total)
