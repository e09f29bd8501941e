"""Dataset, duration-bucketed dynamic batching and the LightningDataModule.

The same code reads real LibriSpeech and the synthetic corpus (both use the
LibriSpeech layout). Batches are dictionaries::

    {"feats": (B, T, 80) float, "feat_lengths": (B,) int64,
     "tokens": (B, L) int64 (0-padded), "token_lengths": (B,) int64,
     "ids": list[str], "texts": list[str]}
"""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_amortized.data.features import LogMelFilterbank, SpecAugment
from lightning_amortized.data.prepare import CorpusError, Utterance, prepare_librispeech, read_manifest
from lightning_amortized.data.tokenizer import CharTokenizer
from lightning_amortized.seeding import derive_seed

__all__ = [
    "DurationBatchSampler",
    "LibriSpeechDataModule",
    "ResumableDataLoader",
    "SeededBatch",
    "SpeechCollator",
    "SpeechDataset",
    "SyntheticDataModule",
]


def load_audio(path: str, sample_rate: int = 16000) -> torch.Tensor:
    """Read a mono file as float32 ``(S,)`` at ``sample_rate`` Hz (resampling if needed).

    Raises:
        CorpusError: unreadable or empty audio (the message names the file).
    """
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:
        raise CorpusError(f"Unreadable audio file {path}: {err}. Re-extract or delete it.") from err
    if wav.shape[0] == 0:
        raise CorpusError(f"Empty audio file {path} (0 samples).")
    x = torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1)))
    if sr != sample_rate:
        import torchaudio.functional as AF

        x = AF.resample(x, sr, sample_rate)
    return x


class SpeechDataset(Dataset):
    """Utterances from a manifest.

    Items are ``{"id", "wav" (S,), "tokens", "text"}``; with ``features`` given they carry
    ``"feats"`` ``(T, n_mels)`` (computed per utterance, so independent of batching)
    instead of the waveform. With ``cache=True`` each utterance's features are computed
    once and kept in memory (``4 * n_mels`` bytes per 10 ms frame: 115 MB per hour of
    audio at 80 mels); call :meth:`precompute` before a DataLoader starts its workers, or
    each worker builds (and keeps) its own copy. Cached tensors are returned as they are:
    do not modify them in place.

    Args:
        utterances: Manifest entries.
        tokenizer: Maps transcripts to ids.
        sample_rate: Expected sample rate in Hz.
        features: Optional feature extractor applied per utterance.
        cache: Keep computed features in memory (needs ``features``).

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
        if cache and features is None:
            raise ValueError("Expected argument `features` when `cache=True` (only features are cached), but got None.")
        self.utterances = list(utterances)
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.features = features
        self.cache = cache
        self._feats: list[torch.Tensor | None] = [None] * len(self.utterances)
        self.tokens = [tokenizer.encode(u.words, where=u.path) for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations(self) -> list[float]:
        """Durations in seconds, in dataset order."""
        return [u.duration for u in self.utterances]

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
        """Compute and cache every utterance's features now (no-op without ``cache``).

        Args:
            show_progress: Show a tqdm progress bar.
            desc: The progress bar's label.
        """
        if not self.cache:
            return
        from tqdm.auto import tqdm

        for i in tqdm(range(len(self)), desc=desc, unit="utt", disable=not show_progress, leave=False):
            self._features(i)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items of a batch; a :class:`SeededBatch` passes its seed on as ``"batch_seed"``."""
        items = [self[i] for i in indices]
        seed = getattr(indices, "seed", None)
        if seed is not None:
            for item in items:
                item["batch_seed"] = seed
        return items

    def __getitem__(self, i: int) -> dict[str, Any]:
        u = self.utterances[i]
        item: dict[str, Any] = {"id": u.id, "tokens": self.tokens[i], "text": u.words}
        if self.features is None:
            item["wav"] = load_audio(u.path, self.sample_rate)
        else:
            item["feats"] = self._features(i)
        return item


class DurationBatchSampler(Sampler[list[int]]):
    """Dynamic batches of similar-length utterances holding at most ``max_seconds`` of audio.

    Utterances are sorted by duration, cut into batches whose padded size
    (``len(batch) * longest``) stays under ``max_seconds``, and the batch order is
    shuffled per epoch from ``seed + epoch`` (Lightning calls :meth:`set_epoch`; call it
    yourself in a plain PyTorch loop). With
    ``sortagrad_epochs=n`` the first ``n`` epochs visit batches shortest first
    (SortaGrad, Amodei et al. 2016), which gets CTC training past its initial
    all-blank plateau sooner. Under
    ``torch.distributed`` each rank takes every ``world_size``-th batch (the batch
    count is padded to a multiple of the world size so ranks stay in step). An utterance
    longer than ``max_seconds`` forms a batch of its own (a warning counts them). Each
    batch is a :class:`SeededBatch` whose ``seed`` follows from ``seed``, the epoch, the
    batch's position and the rank.

    Example:
        >>> s = DurationBatchSampler([1.0, 2.0, 1.5, 4.0], max_seconds=4.0, shuffle=False)
        >>> list(s)
        [[0, 2], [1], [3]]
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_seconds: float,
        shuffle: bool = True,
        seed: int = 0,
        max_batch_size: int | None = None,
        sortagrad_epochs: int = 0,
    ) -> None:
        if max_seconds <= 0:
            raise ValueError(f"Expected argument `max_seconds` to be > 0, but got {max_seconds}.")
        self.max_seconds, self.shuffle, self.seed, self.epoch = max_seconds, shuffle, seed, 0
        self.sortagrad_epochs = sortagrad_epochs
        self._skip = 0
        order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            longest = durations[i]  # ascending order: the new item is the longest
            full = max_batch_size is not None and len(cur) >= max_batch_size
            if cur and ((len(cur) + 1) * longest > max_seconds or full):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        self.batches = batches
        too_long = [d for d in durations if d > max_seconds]
        if too_long:
            warnings.warn(
                f"{len(too_long)} utterance(s) are longer than max_seconds={max_seconds:g} (the longest "
                f"{max(too_long):.1f} s); each forms a batch of its own, over the cap. Raise `max_batch_seconds` "
                "or drop them from the manifest if memory is tight.",
                stacklevel=2,
            )

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the batch order for ``epoch`` (Lightning calls it through :attr:`sampler`)."""
        self.epoch = epoch

    @property
    def sampler(self) -> DurationBatchSampler:
        """This sampler itself.

        Lightning calls ``set_epoch`` on ``dataloader.sampler`` and on
        ``dataloader.batch_sampler.sampler``, never on the batch sampler; this alias is
        how a batch sampler that shuffles by epoch receives the epoch.
        """
        return self

    def skip_next(self, batches: int) -> None:
        """Make the next iteration start after its first ``batches`` batches (resuming mid-epoch)."""
        if batches < 0:
            raise ValueError(f"Expected argument `batches` to be >= 0, but got {batches}.")
        self._skip = batches

    def _rank(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the order is drawn at the first batch, after Lightning's `set_epoch`
        skip, self._skip = self._skip, 0
        order = list(range(len(self.batches)))
        if self.shuffle and self.epoch >= self.sortagrad_epochs:
            random.Random(self.seed + self.epoch).shuffle(order)
        rank, world = self._rank()
        if world > 1:
            total = math.ceil(len(order) / world) * world
            order = (order + order[: total - len(order)])[rank::world]
        for position in range(skip, len(order)):
            # the seed of the batch's augmentation depends on where the batch is, not on what ran before
            yield SeededBatch(self.batches[order[position]], derive_seed(self.seed, self.epoch, position, rank))

    def __len__(self) -> int:
        _, world = self._rank()
        return math.ceil(len(self.batches) / world)


class SeededBatch(list):
    """A batch of dataset indices carrying the seed of its augmentation (``.seed``).

    :meth:`SpeechDataset.__getitems__` passes the seed to the items and
    :class:`SpeechCollator` draws the batch's SpecAugment masks from it, in the main
    process or in a worker alike, so a resumed epoch draws the same masks.
    """

    def __init__(self, indices: Sequence[int], seed: int) -> None:
        super().__init__(indices)
        self.seed = seed


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`DurationBatchSampler` whose place in the epoch is checkpointed.

    Lightning saves ``state_dict()`` of every training loader that has one into the
    checkpoint (``loops.fit_loop.state_dict.combined_loader``) and calls
    ``load_state_dict`` before the loader's first iteration after a mid-epoch resume. The
    state is the epoch and the number of batches already handed out; the resumed
    iteration starts right after them, without loading the skipped batches. Iteration
    starts lazily, at the first batch, so that the sampler has received its epoch from
    Lightning before the order is drawn (also with workers).

    Example:
        >>> sampler = DurationBatchSampler([1.0, 2.0, 1.5, 4.0], max_seconds=4.0, shuffle=False)
        >>> dl = ResumableDataLoader(list(range(4)), batch_sampler=sampler)
        >>> it = iter(dl); _ = next(it); dl.state_dict()
        {'epoch': 0, 'batches': 1}
        >>> dl2 = ResumableDataLoader(list(range(4)), batch_sampler=sampler)
        >>> dl2.load_state_dict(dl.state_dict()); [b.tolist() for b in dl2]
        [[1], [3]]

    Lightning (2.5, 2.6) drops loader states when ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (Lightning-AI/pytorch-lightning#20550), as
    :class:`~lightning_amortized.module.ASRModule` does for its schedule;
    :class:`LibriSpeechDataModule` therefore also saves this state in its own
    ``state_dict`` and hands it to the loader it built.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, DurationBatchSampler):
            raise TypeError(
                "ResumableDataLoader needs `batch_sampler=DurationBatchSampler(...)`, "
                f"but got {type(self.batch_sampler).__name__}."
            )
        self._yielded = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._from_resume_point()

    def _from_resume_point(self) -> Iterator[Any]:
        # the resume point is read at the first batch: a state loaded after `iter()` still counts
        start, self._resume_at = self._resume_at, 0
        self._yielded = start
        self.batch_sampler.skip_next(start)
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the sampler's epoch and the batches handed out in it."""
        return {"epoch": int(self.batch_sampler.epoch), "batches": int(self._yielded)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume the next iteration at ``state_dict["batches"]`` of epoch ``state_dict["epoch"]``.

        A state taken at the end of an epoch resumes at the start of the next one.
        """
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.batch_sampler.set_epoch(epoch)
        self._resume_at = batches


class SpeechCollator:
    """Pads features (or computes log-mel features from padded waveforms), applies
    SpecAugment when training, and pads tokens.

    Items holding ``"feats"`` ``(T, n_mels)`` are padded as they are; items holding
    ``"wav"`` get features from ``features`` computed on the padded batch. SpecAugment
    draws from the batch's ``"batch_seed"`` (set by :class:`SeededBatch`) when the items
    carry one, else from torch's global generator.
    """

    def __init__(self, features: LogMelFilterbank | None = None, spec_augment: SpecAugment | None = None) -> None:
        self.features = features
        self.spec_augment = spec_augment

    def _features(self, items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        if "feats" in items[0]:
            feat_lengths = torch.tensor([it["feats"].shape[0] for it in items])
            feats = torch.zeros(len(items), int(feat_lengths.max()), items[0]["feats"].shape[1])
            for i, it in enumerate(items):
                feats[i, : it["feats"].shape[0]] = it["feats"]
            return feats, feat_lengths
        if self.features is None:
            raise ValueError("Items hold waveforms but the collator has no `features` to compute them with.")
        wav_lengths = torch.tensor([len(it["wav"]) for it in items])
        wavs = torch.zeros(len(items), int(wav_lengths.max()))
        for i, it in enumerate(items):
            wavs[i, : len(it["wav"])] = it["wav"]
        return self.features(wavs, wav_lengths)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        feats, feat_lengths = self._features(items)
        if self.spec_augment is not None:
            seed = items[0].get("batch_seed")
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            feats = self.spec_augment(feats, feat_lengths, generator=generator)
        token_lengths = torch.tensor([len(it["tokens"]) for it in items])
        tokens = torch.zeros(len(items), max(1, int(token_lengths.max())), dtype=torch.long)
        for i, it in enumerate(items):
            tokens[i, : len(it["tokens"])] = torch.tensor(it["tokens"], dtype=torch.long)
        return {
            "feats": feats,
            "feat_lengths": feat_lengths,
            "tokens": tokens,
            "token_lengths": token_lengths,
            "ids": [it["id"] for it in items],
            "texts": [it["text"] for it in items],
        }


class LibriSpeechDataModule(pl.LightningDataModule):
    """LibriSpeech-layout corpus as a LightningDataModule (real LibriSpeech or the synthetic corpus).

    Args:
        root: Corpus root (folders per split).
        train_splits: Split folders used for training (concatenated).
        val_splits: Split folders for validation (concatenated).
        test_splits: Split folders for testing; one test dataloader per split.
        manifest_dir: Where manifests go (default ``<root>/manifests``).
        max_batch_seconds: Audio seconds per dynamic batch (padded size).
        max_batch_size: Upper bound on utterances per batch.
        num_workers: DataLoader workers.
        spec_augment: Apply SpecAugment to training batches.
        n_mels: Mel bands.
        sample_rate: Expected sample rate in Hz.
        on_wrong_rate: ``"error"`` or ``"resample"`` (see :func:`prepare_librispeech`).
        seed: Seed for the batch order and SpecAugment.
        sortagrad_epochs: Training epochs that visit batches shortest first before shuffling.
        max_train_utterances: Optional cap (first N after sorting ids) for quick runs.
        cache_features: Compute each utterance's log-mel features once, in :meth:`setup`
            (with a progress bar), and keep them in memory; SpecAugment still draws new
            masks every epoch. Costs 115 MB per hour of audio at 80 mels; worth it for
            corpora of a few hours trained for many epochs (the synthetic recipes).

    Example::

        dm = LibriSpeechDataModule("/data/LibriSpeech", ["train-clean-100"], ["dev-clean"], ["test-clean"])
        trainer.fit(model, datamodule=dm)
    """

    def __init__(
        self,
        root: str,
        train_splits: Sequence[str] = ("train",),
        val_splits: Sequence[str] = ("dev",),
        test_splits: Sequence[str] = ("test",),
        manifest_dir: str | None = None,
        max_batch_seconds: float = 160.0,
        max_batch_size: int | None = 64,
        num_workers: int = 0,
        spec_augment: bool = True,
        n_mels: int = 80,
        sample_rate: int = 16000,
        on_wrong_rate: str = "error",
        seed: int = 0,
        sortagrad_epochs: int = 1,
        max_train_utterances: int | None = None,
        cache_features: bool = False,
    ) -> None:
        super().__init__()
        self.cache_features = cache_features
        self.sortagrad_epochs = sortagrad_epochs
        self.root = Path(root)
        self.train_splits, self.val_splits, self.test_splits = list(train_splits), list(val_splits), list(test_splits)
        self.manifest_dir = Path(manifest_dir) if manifest_dir else self.root / "manifests"
        self.max_batch_seconds, self.max_batch_size = max_batch_seconds, max_batch_size
        self.num_workers, self.use_spec_augment = num_workers, spec_augment
        self.sample_rate, self.on_wrong_rate, self.seed = sample_rate, on_wrong_rate, seed
        self.max_train_utterances = max_train_utterances
        self.tokenizer = CharTokenizer()
        self.features = LogMelFilterbank(sample_rate=sample_rate, n_mels=n_mels)
        self.n_mels = n_mels
        self.datasets: dict[str, SpeechDataset] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_state: dict[str, int] | None = None

    @property
    def all_splits(self) -> list[str]:
        """Every split this module reads, without duplicates."""
        return list(dict.fromkeys(self.train_splits + self.val_splits + self.test_splits))

    def prepare_data(self) -> None:
        """Write manifests (idempotent; runs on one process)."""
        prepare_librispeech(
            self.root, self.all_splits, self.manifest_dir, sample_rate=self.sample_rate, on_wrong_rate=self.on_wrong_rate
        )

    def _dataset(self, splits: list[str], cap: int | None = None) -> SpeechDataset:
        utts: list[Utterance] = []
        for split in splits:
            manifest = self.manifest_dir / f"{split}.jsonl"
            if not manifest.exists():
                prepare_librispeech(
                    self.root, [split], self.manifest_dir, sample_rate=self.sample_rate, on_wrong_rate=self.on_wrong_rate
                )
            utts.extend(read_manifest(manifest))
        if cap is not None:
            utts = sorted(utts, key=lambda u: u.id)[:cap]
        ds = SpeechDataset(utts, self.tokenizer, self.sample_rate, features=self.features, cache=self.cache_features)
        ds.precompute(desc=f"features {'+'.join(splits)}")
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets needed for ``stage``."""
        if stage in (None, "fit") and "train" not in self.datasets:
            self.datasets["train"] = self._dataset(self.train_splits, self.max_train_utterances)
        if stage in (None, "fit", "validate") and "val" not in self.datasets and self.val_splits:
            self.datasets["val"] = self._dataset(self.val_splits)
        if stage in (None, "test", "predict"):
            for split in self.test_splits:
                self.datasets.setdefault(f"test:{split}", self._dataset([split]))

    def _loader(self, ds: SpeechDataset, train: bool) -> DataLoader:
        sampler = DurationBatchSampler(
            ds.durations,
            self.max_batch_seconds,
            shuffle=train,
            seed=self.seed,
            max_batch_size=self.max_batch_size,
            sortagrad_epochs=self.sortagrad_epochs if train else 0,
        )
        # features only serve datasets holding waveforms (a subclass's own SpeechDataset)
        collate = SpeechCollator(self.features, SpecAugment() if (train and self.use_spec_augment) else None)
        return ResumableDataLoader(
            ds,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.datasets["train"], train=True)
        if self._train_state is not None:
            loader.load_state_dict(self._train_state)
            self._train_state = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's place in its epoch (see :class:`ResumableDataLoader`), once one exists."""
        return {} if self._train_loader is None else {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training loader (built already, or built later by :meth:`train_dataloader`)."""
        state = state_dict.get("train_loader")
        if state is None:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state)
        else:
            self._train_state = dict(state)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches; an empty list (no validation) when ``val_splits`` is empty."""
        if "val" not in self.datasets:
            return []
        return self._loader(self.datasets["val"], train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets[f"test:{s}"], train=False) for s in self.test_splits]


class SyntheticDataModule(LibriSpeechDataModule):
    """The synthetic eSpeak corpus: generated into ``root`` on first use, then read like LibriSpeech.

    Args:
        root: Where the corpus is (or will be) generated.
        utterances: Corpus size passed to :func:`~lightning_amortized.data.synthetic.make_corpus`.
        corpus_seed: Generation seed.
        **kwargs: Everything else goes to :class:`LibriSpeechDataModule`.
    """

    def __init__(self, root: str, utterances: int = 4000, corpus_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.utterances, self.corpus_seed = utterances, corpus_seed

    def prepare_data(self) -> None:
        from lightning_amortized.data.synthetic import make_corpus

        make_corpus(self.root, utterances=self.utterances, seed=self.corpus_seed)
        super().prepare_data()
