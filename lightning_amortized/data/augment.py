"""Waveform augmentation for training: speed, reverberation, noise (including babble), telephone band.

Applied by :class:`~lightning_amortized.data.batching.SpeechCollator` to a training batch's
padded waveforms before the log-mel features, with a generator seeded from the batch's
place in the epoch (:class:`~lightning_amortized.data.batching.SeededBatch`), so a run
draws the same augmentation in the main process or a worker, and again after a resume.
Validation and test batches are never augmented.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torchaudio.functional as AF

__all__ = ["WaveAugment", "simulated_rir"]


#: Upper edge of the telephone band (Hz); audio must be sampled above twice this to use it.
TELEPHONE_HIGH_HZ = 3400.0


def _biquad(kind: str, sample_rate: int, cutoff: float, q: float = 0.707) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b, a)`` of torchaudio's ``highpass_biquad``/``lowpass_biquad`` (``kind`` "high"/"low"), float32."""
    w0 = 2 * math.pi * torch.tensor(cutoff, dtype=torch.float32) / sample_rate  # float32 steps, as torchaudio's
    alpha, cos = torch.sin(w0) / 2.0 / torch.tensor(q, dtype=torch.float32), torch.cos(w0)
    b0 = (1 + cos) / 2 if kind == "high" else (1 - cos) / 2
    b1 = -1 - cos if kind == "high" else 1 - cos
    return torch.stack([b0, b1, b0]), torch.stack([1 + alpha, -2 * cos, 1 - alpha])


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def simulated_rir(rt60_s: float, sample_rate: int = 16000, generator: torch.Generator | None = None) -> torch.Tensor:
    """A room impulse response: a direct path, then Gaussian noise decaying 60 dB in ``rt60_s``.

    The tail starts 2.5 ms after the direct path (early reflections) and lasts ``rt60_s``;
    its energy relative to the direct path grows with ``rt60_s`` as in real rooms
    (direct-to-reverberant ratio about +5 dB at 0.2 s, -5 dB at 0.8 s).

    Args:
        rt60_s: Reverberation time in seconds (> 0).
        sample_rate: Sample rate in Hz.
        generator: Random generator for the tail.

    Returns:
        ``(N,)`` float32 impulse response with ``N = rt60_s * sample_rate`` samples, peak 1.

    Example:
        >>> h = simulated_rir(0.3, generator=torch.Generator().manual_seed(0))
        >>> h.shape, float(h[0])
        (torch.Size([4800]), 1.0)
    """
    if not rt60_s > 0:
        raise ValueError(f"Expected argument `rt60_s` to be positive, but got {rt60_s}.")
    n = max(2, int(rt60_s * sample_rate))
    t = torch.arange(n, dtype=torch.float32) / sample_rate
    tail = torch.randn(n, generator=generator) * torch.exp(-6.9078 * t / rt60_s)  # -60 dB at rt60
    tail[: int(0.0025 * sample_rate)] = 0.0
    drr_db = 5.0 - 10.0 * (rt60_s - 0.2) / 0.6
    tail *= math.sqrt(10 ** (-drr_db / 10) / max(float((tail**2).sum()), 1e-12))
    tail[0] = 1.0
    return tail / tail.abs().max()


class WaveAugment:
    """Random training augmentation of padded waveforms, one independent draw per utterance.

    In this order, each with its own probability per utterance:

    1. **speed** (``p_speed``): resample so the utterance plays ``factor`` times faster
       (tempo and pitch change together, as Kaldi's speed perturbation), ``factor``
       drawn uniformly from ``speeds``; the length changes by ``1 / factor``;
    2. **reverberation** (``p_reverb``): convolution with :func:`simulated_rir`, RT60
       uniform in ``rt60_s``, level restored to the dry signal's RMS;
    3. **noise** (``p_noise``): white, brown (leaky-integrated white) or babble (the sum of
       ``babble_talkers`` other utterances of the batch, shifted at random), drawn with the
       probabilities in ``noise_kinds``, at an SNR uniform in ``snr_db`` over the speech's
       RMS;
    4. **telephone band** (``p_telephone``): 300-3,400 Hz band-pass (biquads).

    Padding stays zero. Defaults: ``speeds=(0.9, 1.0, 1.1)``, ``p_speed=1``,
    ``p_reverb=0.3``, ``p_noise=0.5`` at 5-25 dB, ``p_telephone=0.1``.

    Args:
        speeds: Speed factors drawn from uniformly.
        p_speed: Probability of speed perturbation.
        p_reverb: Probability of reverberation.
        rt60_s: ``(low, high)`` reverberation time in seconds.
        p_noise: Probability of added noise.
        snr_db: ``(low, high)`` signal-to-noise ratio in dB.
        noise_kinds: ``{"white" | "brown" | "babble": weight}``.
        babble_talkers: Other utterances summed into babble (fewer if the batch is smaller;
            an utterance alone in its batch gets white noise instead).
        p_telephone: Probability of the telephone band.
        sample_rate: Sample rate in Hz.

    Raises:
        ValueError: a probability outside ``[0, 1]``, empty ``speeds`` or a factor outside
            ``[0.5, 2]``, ``babble_talkers < 1``, a non-integer ``sample_rate``, an unknown noise
            kind, or a range with ``low > high``.

    Example:
        >>> aug = WaveAugment(p_reverb=1.0, p_noise=1.0)
        >>> wavs, n = aug(torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000]),
        ...               generator=torch.Generator().manual_seed(0))
        >>> wavs.shape[0], bool((n >= 10909).all() and (n <= 17778).all())
        (2, True)
    """

    def __init__(
        self,
        speeds: Sequence[float] = (0.9, 1.0, 1.1),
        p_speed: float = 1.0,
        p_reverb: float = 0.3,
        rt60_s: tuple[float, float] = (0.2, 0.8),
        p_noise: float = 0.5,
        snr_db: tuple[float, float] = (5.0, 25.0),
        noise_kinds: Mapping[str, float] | None = None,
        babble_talkers: int = 4,
        p_telephone: float = 0.1,
        sample_rate: int = 16000,
    ) -> None:
        for name, p in (("p_speed", p_speed), ("p_reverb", p_reverb), ("p_noise", p_noise), ("p_telephone", p_telephone)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"Expected argument `{name}` to be a probability in [0, 1], but got {p}.")
        if not speeds or any(not 0.5 <= s <= 2.0 for s in speeds):  # a factor far from 1 resamples from ~0 Hz
            raise ValueError(f"Expected argument `speeds` to hold factors in [0.5, 2], but got {speeds!r}.")
        if isinstance(babble_talkers, bool) or not isinstance(babble_talkers, int) or babble_talkers < 1:
            raise ValueError(f"Expected argument `babble_talkers` to be an int >= 1, but got {babble_talkers!r}.")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1000:
            raise ValueError(f"Expected argument `sample_rate` to be an int in Hz (>= 1000), but got {sample_rate!r}.")
        if p_telephone > 0 and sample_rate <= 2 * TELEPHONE_HIGH_HZ:
            raise ValueError(
                f"The telephone band ends at {TELEPHONE_HIGH_HZ:g} Hz, above the Nyquist frequency of {sample_rate} Hz "
                f"audio (its filter would return NaN): set p_telephone=0 or use audio above {2 * TELEPHONE_HIGH_HZ:g} Hz."
            )
        for name, (low, high) in (("rt60_s", rt60_s), ("snr_db", snr_db)):
            if low > high:
                raise ValueError(f"Expected argument `{name}` to be (low, high) with low <= high, but got {(low, high)}.")
        if not rt60_s[0] > 0:
            raise ValueError(f"Expected argument `rt60_s` to be positive, but got {rt60_s}.")
        kinds = dict(noise_kinds) if noise_kinds is not None else {"white": 0.3, "brown": 0.3, "babble": 0.4}
        unknown = set(kinds) - {"white", "brown", "babble"}
        if unknown or not kinds or sum(kinds.values()) <= 0 or min(kinds.values()) < 0:
            raise ValueError(
                f"Expected argument `noise_kinds` to weight 'white', 'brown' and/or 'babble', but got {kinds!r}."
            )
        self.speeds = tuple(float(s) for s in speeds)
        self.p_speed, self.p_reverb, self.p_noise, self.p_telephone = p_speed, p_reverb, p_noise, p_telephone
        self.rt60_s, self.snr_db = (float(rt60_s[0]), float(rt60_s[1])), (float(snr_db[0]), float(snr_db[1]))
        self.noise_kinds = kinds
        self.babble_talkers = babble_talkers
        self.sample_rate = sample_rate

    def __repr__(self) -> str:
        return (
            f"WaveAugment(speeds={self.speeds}, p_speed={self.p_speed}, p_reverb={self.p_reverb}, "
            f"rt60_s={self.rt60_s}, p_noise={self.p_noise}, snr_db={self.snr_db}, noise_kinds={self.noise_kinds}, "
            f"p_telephone={self.p_telephone})"
        )

    # -- the four steps, on one utterance (S,) ------------------------------------------------

    def _speed(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        factor = self.speeds[int(torch.randint(len(self.speeds), (), generator=g))]
        if factor == 1.0:
            return x
        # play `factor` times faster: read as if recorded at sr * factor, resample to sr
        orig = int(round(self.sample_rate * factor / 100)) * 100
        return AF.resample(x[None], orig, self.sample_rate)[0]

    def _reverb(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        h = simulated_rir(_uniform(g, *self.rt60_s), self.sample_rate, g)
        n = x.numel() + h.numel() - 1
        size = 1 << (n - 1).bit_length()
        wet = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(h, size), size)[: x.numel()]
        return wet * (x.pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp_min(1e-8))

    def _noise(self, x: torch.Tensor, others: list[torch.Tensor], g: torch.Generator | None) -> torch.Tensor:
        names = list(self.noise_kinds)
        weights = torch.tensor([self.noise_kinds[k] for k in names], dtype=torch.float64)
        kind = names[int(torch.multinomial(weights, 1, generator=g))]
        if kind == "babble" and not others:
            kind = "white"
        if kind == "babble":
            pick = torch.randperm(len(others), generator=g)[: self.babble_talkers].tolist()
            noise = torch.zeros_like(x)
            for i in pick:
                o = others[i]
                o = o.repeat(math.ceil(x.numel() / max(o.numel(), 1)))[: x.numel()] if o.numel() else torch.zeros_like(x)
                noise += torch.roll(o, int(torch.randint(max(x.numel(), 1), (), generator=g)))
        else:
            noise = torch.randn(x.numel(), generator=g)
            if kind == "brown":
                noise = AF.lfilter(noise[None], torch.tensor([1.0, -0.98]), torch.tensor([1.0, 0.0]), clamp=False)[0]
        speech_power = x.pow(2).mean().clamp_min(1e-10)
        noise_power = noise.pow(2).mean().clamp_min(1e-10)
        snr = _uniform(g, *self.snr_db)
        return x + noise * (speech_power / (noise_power * 10 ** (snr / 10))).sqrt()

    @property
    def max_stretch(self) -> float:
        """How much longer augmentation can make an utterance: ``1 / min(speeds)`` when speed perturbation is on
        and slows down, else 1 (what a duration-capped batch sampler must allow for)."""
        return max(1.0, 1.0 / min(self.speeds)) if self.p_speed > 0 else 1.0

    def _telephone(self, x: torch.Tensor) -> torch.Tensor:
        """300-3,400 Hz band (the biquads of ``highpass_biquad``/``lowpass_biquad``, without their clipping at +-1:
        no other step clips, and louder recordings would be flattened here only)."""
        y = x[None]
        for kind, cutoff in (("high", 300.0), ("low", TELEPHONE_HIGH_HZ)):
            b, a = _biquad(kind, self.sample_rate, cutoff)
            y = AF.lfilter(y, a, b, clamp=False)
        return y[0]

    # -- the batch -----------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self, wavs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``(B, S)`` padded waveforms with ``(B,)`` valid lengths; returns the new padded batch and lengths."""
        g = generator
        clean = [wavs[b, : int(lengths[b])].float() for b in range(wavs.shape[0])]
        out = []
        for b, x in enumerate(clean):
            if torch.rand((), generator=g) < self.p_speed:
                x = self._speed(x, g)
            if torch.rand((), generator=g) < self.p_reverb:
                x = self._reverb(x, g)
            if torch.rand((), generator=g) < self.p_noise:
                x = self._noise(x, [o for i, o in enumerate(clean) if i != b], g)
            if torch.rand((), generator=g) < self.p_telephone:
                x = self._telephone(x)
            out.append(x)
        new_lengths = torch.tensor([x.numel() for x in out], dtype=lengths.dtype)
        padded = torch.zeros(len(out), int(new_lengths.max()) if out else 0, dtype=wavs.dtype)
        for b, x in enumerate(out):
            padded[b, : x.numel()] = x.to(wavs.dtype)
        return padded, new_lengths
