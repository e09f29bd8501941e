"""Rendering one utterance of the synthetic corpus (runs in worker processes).

eSpeak NG at 22,050 Hz, read as the speaker's warp rate (19-25 kHz) -> polyphase
resampling to 16 kHz -> leading and trailing silence,
a random peak level and, optionally, white or brownish noise at a random SNR -> 16-bit FLAC.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from lightning_amortized.data.espeak import EspeakSynthesizer
from lightning_amortized.data.plan import SAMPLE_RATE, _Job

_TTS: EspeakSynthesizer | None = None


@functools.lru_cache(maxsize=32)
def _resampling(source_rate: int) -> tuple[int, int, np.ndarray]:
    """``(up, down, filter)`` taking ``source_rate`` to 16 kHz: scipy's default
    ``resample_poly`` low-pass (Kaiser, beta 5), designed once per rate."""
    from scipy.signal import firwin

    gcd = math.gcd(SAMPLE_RATE, source_rate)
    up, down = SAMPLE_RATE // gcd, source_rate // gcd
    half_len = 10 * max(up, down)
    return up, down, firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0))


def _init_worker(data_path: str | None = None) -> None:
    global _TTS  # noqa: PLW0603 - one synthesiser per worker process, by design
    _TTS = EspeakSynthesizer(data_path=data_path)


def _render(job: _Job) -> tuple[str, str, float]:
    """Synthesise, post-process and write one utterance; returns (split, id, seconds)."""
    import soundfile as sf
    from scipy.signal import lfilter, resample_poly

    tts = _TTS if _TTS is not None else EspeakSynthesizer()
    rng = np.random.default_rng([job.seed, 1])
    # Lower case: eSpeak NG spells short upper-case words as acronyms ("US" -> "U S").
    speech = tts.synthesize(
        job.text.lower(), job.voice, rate=job.rate, pitch=job.pitch, pitch_range=job.pitch_range,
        seed=job.seed, voice_lines=job.voice_lines,
    ).astype(np.float64)
    # Read eSpeak's 22,050 Hz samples as if recorded at the speaker's warp rate: every
    # frequency (formants, pitch) scales by warp_rate / 22,050 (vocal-tract length).
    up, down, window = _resampling(job.warp_rate)
    speech = resample_poly(speech, up, down, window=window)
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
