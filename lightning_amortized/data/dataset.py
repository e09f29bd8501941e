"""Utterances from a manifest as a ``Dataset``: audio (or log-mel features) and tokens per item."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from lightning_amortized.data.batching import tag_items
from lightning_amortized.data.features import LogMelFilterbank
from lightning_amortized.data.prepare import CorpusError, Utterance
from lightning_amortized.data.tokenizer import CharTokenizer

__all__ = ["SpeechDataset", "load_audio"]


def load_audio(path: str, sample_rate: int = 16000) -> torch.Tensor:
    """Read a mono file as float32 ``(S,)`` at ``sample_rate`` Hz (resampling if needed).

    Raises:
        CorpusError: unreadable or empty audio, or NaN/Inf samples (the message names the file).
    """
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:
        raise CorpusError(f"Unreadable audio file {path}: {err}. Re-extract or delete it.") from err
    if wav.shape[0] == 0:
        raise CorpusError(f"Empty audio file {path} (0 samples).")
    if not np.isfinite(wav).all():
        raise CorpusError(f"Corrupt audio file {path}: it holds NaN or Inf samples. Re-extract or delete it.")
    x = torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1)))
    if sr != sample_rate:
        import torchaudio.functional as AF

        x = AF.resample(x, sr, sample_rate)
    return x


class SpeechDataset(Dataset):
    """Utterances from a manifest.

    Items are ``{"id", "wav" (S,), "tokens", "text"}``; with ``features`` given they carry
    ``"feats"`` ``(T, n_mels)`` (computed per utterance, so independent of batching)
    instead of the waveform. With ``cache=True`` what the items hold is computed once and
    kept in memory: the features (``4 * n_mels`` bytes per 10 ms frame: 115 MB per hour
    of audio at 80 mels), or, without ``features``, the waveform as 16-bit samples (also
    115 MB per hour at 16 kHz; what a training set with waveform augmentation needs) where
    that is exact (16-bit files at ``sample_rate``), else as float32 (twice that). Call
    :meth:`precompute` before a DataLoader starts its workers, or each worker builds (and
    keeps) its own copy. Cached feature tensors are returned as they are: do not modify
    them in place.

    Args:
        utterances: Manifest entries.
        tokenizer: Maps transcripts to ids.
        sample_rate: Expected sample rate in Hz.
        features: Optional feature extractor applied per utterance.
        cache: Keep the features (or, without ``features``, the decoded audio) in memory.

    Example:
        >>> import tempfile, soundfile as sf, numpy as np
        >>> from lightning_amortized.data import LogMelFilterbank, Utterance, CharTokenizer
        >>> path = tempfile.mktemp(suffix=".flac")
        >>> sf.write(path, np.zeros(16000, dtype="float32"), 16000)
        >>> ds = SpeechDataset([Utterance("1-1-0000", path, 1.0, "HI", 16000, "1")], CharTokenizer(),
        ...                    features=LogMelFilterbank(), cache=True)
        >>> ds[0]["feats"].shape
        torch.Size([101, 80])
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: CharTokenizer,
        sample_rate: int = 16000,
        features: LogMelFilterbank | None = None,
        cache: bool = False,
    ) -> None:
        if not utterances:
            raise CorpusError("Expected at least one utterance in the manifest, but got none.")
        self.utterances = list(utterances)
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.features = features
        self.cache = cache
        self._feats: list[torch.Tensor | None] = [None] * len(self.utterances)  # features, or int16/float32 audio
        try:
            self.tokens = [tokenizer.encode(u.words, where=u.path) for u in self.utterances]
        except CorpusError:
            raise
        except ValueError as err:  # a transcript the tokenizer cannot spell: the corpus's fault, named by file
            raise CorpusError(str(err)) from err

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations(self) -> list[float]:
        """Durations in seconds, in dataset order."""
        return [u.duration for u in self.utterances]

    def _audio(self, i: int) -> torch.Tensor:
        cached = self._feats[i]
        if cached is not None:
            return cached.float() / 32768.0 if cached.dtype == torch.int16 else cached
        wav = load_audio(self.utterances[i].path, self.sample_rate)
        if self.cache:
            # 16-bit PCM at the target rate decodes to k / 32768: kept in 2 bytes per sample, exactly.
            # Anything else (resampled, 24-bit, float files) is kept as float32, so that every access
            # returns what the first one did.
            pcm = (wav * 32768.0).round().clamp(-32768, 32767).to(torch.int16)
            self._feats[i] = pcm if torch.equal(pcm.float() / 32768.0, wav) else wav
        return wav

    def _features(self, i: int) -> torch.Tensor:
        cached = self._feats[i]
        if cached is not None:
            return cached
        wav = load_audio(self.utterances[i].path, self.sample_rate)
        assert self.features is not None
        feats, n = self.features(wav[None], torch.tensor([len(wav)]))
        out = feats[0, : int(n[0])].contiguous()
        if self.cache:
            self._feats[i] = out
        return out

    def precompute(self, show_progress: bool = True, desc: str = "features") -> None:
        """Compute and cache every utterance's features (or audio) now (no-op without ``cache``).

        Args:
            show_progress: Show a tqdm progress bar.
            desc: The progress bar's label.
        """
        if not self.cache:
            return
        from tqdm.auto import tqdm

        for i in tqdm(range(len(self)), desc=desc, unit="utt", disable=not show_progress, leave=False):
            self._features(i) if self.features is not None else self._audio(i)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items of a batch; a :class:`SeededBatch` passes on its seed (``"batch_seed"``) and repeat flag."""
        return tag_items([self[i] for i in indices], indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        u = self.utterances[i]
        # the reference text as the tokens spell it (upper case, single spaces): what hypotheses are scored against
        item: dict[str, Any] = {"id": u.id, "tokens": self.tokens[i], "text": self.tokenizer.normalize(u.words)}
        if self.features is None:
            item["wav"] = self._audio(i)
        else:
            item["feats"] = self._features(i)
        return item
