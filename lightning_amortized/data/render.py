"""Rendering one utterance of the synthetic corpus (runs in worker processes).

eSpeak NG at 22,050 Hz -> polyphase resampling to 16 kHz -> leading and trailing silence,
a random peak level and, optionally, white or brownish noise at a random SNR -> 16-bit FLAC.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from lightning_amortized.data.espeak import ESPEAK_SAMPLE_RATE, EspeakSynthesizer
from lightning_amortized.data.plan import SAMPLE_RATE, _Job

_TTS: EspeakSynthesizer | None = None
_GCD = math.gcd(SAMPLE_RATE, ESPEAK_SAMPLE_RATE)
_UP, _DOWN = SAMPLE_RATE // _GCD, ESPEAK_SAMPLE_RATE // _GCD  # 320 / 441


@functools.lru_cache(maxsize=1)
def _resampling_filter() -> np.ndarray:
    """scipy's default ``resample_poly`` low-pass (Kaiser, beta 5), designed once."""
    from scipy.signal import firwin

    half_len = 10 * max(_UP, _DOWN)
    return firwin(2 * half_len + 1, 1.0 / max(_UP, _DOWN), window=("kaiser", 5.0))


def _init_worker() -> None:
    global _TTS  # noqa: PLW0603 - one synthesiser per worker process, by design
    _TTS = EspeakSynthesizer()


def _render(job: _Job) -> tuple[str, str, float]:
    """Synthesise, post-process and write one utterance; returns (split, id, seconds)."""
    import soundfile as sf
    from scipy.signal import lfilter, resample_poly

    tts = _TTS if _TTS is not None else EspeakSynthesizer()
    rng = np.random.default_rng([job.seed, 1])
    # Lower case: eSpeak NG spells short upper-case words as acronyms ("US" -> "U S").
    speech = tts.synthesize(
        job.text.lower(), job.voice, rate=job.rate, pitch=job.pitch, pitch_range=job.pitch_range,
        seed=job.seed,
    ).astype(np.float64)
    speech = resample_poly(speech, _UP, _DOWN, window=_resampling_filter())
    lead = int(rng.uniform(0.05, 0.35) * SAMPLE_RATE)
    trail = int(rng.uniform(0.05, 0.35) * SAMPLE_RATE)
    speech = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    peak = float(np.max(np.abs(speech)))
    if peak > 0:
        speech *= 10 ** (rng.uniform(-10.0, -2.0) / 20) / peak  # peak at -10..-2 dBFS
    if job.snr_db is not None:
        active = speech[np.abs(speech) > 1e-4]
        power = float(np.mean(active**2)) if active.size else 1e-8
        snr = rng.uniform(*job.snr_db)
        noise = rng.standard_normal(speech.shape[0])
        if rng.random() < 0.5:  # brownish (leaky-integrated) noise half of the time
            noise = lfilter([1.0], [1.0, -0.98], noise)
        noise *= np.sqrt(power / 10 ** (snr / 10) / max(float(np.mean(noise**2)), 1e-12))
        speech = speech + noise
    pcm = np.clip(np.round(speech * 32767.0), -32768, 32767).astype(np.int16)
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return job.split, job.id, pcm.shape[0] / SAMPLE_RATE
