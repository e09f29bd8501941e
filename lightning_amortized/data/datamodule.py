"""The LightningDataModules: a LibriSpeech-layout corpus (real or synthetic) for training and test.

The same code reads real LibriSpeech and the synthetic corpus (both use the
LibriSpeech layout). The pieces it assembles live in :mod:`~lightning_amortized.data.dataset`
(items) and :mod:`~lightning_amortized.data.batching` (batches); they are importable from
here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lightning_amortized.data.augment import WaveAugment
from lightning_amortized.data.batching import DurationBatchSampler, ResumableDataLoader, SeededBatch, SpeechCollator
from lightning_amortized.data.dataset import SpeechDataset, load_audio
from lightning_amortized.data.features import LogMelFilterbank, SpecAugment
from lightning_amortized.data.prepare import Utterance, prepare_librispeech, read_manifest
from lightning_amortized.data.tokenizer import make_tokenizer

__all__ = [
    "DurationBatchSampler",
    "LibriSpeechDataModule",
    "ResumableDataLoader",
    "SeededBatch",
    "SpeechCollator",
    "SpeechDataset",
    "SyntheticDataModule",
    "load_audio",
    "test_split_name",
]


def test_split_name(trainer: Any, dataloader_idx: int) -> str:
    """The name of test/predict loader ``dataloader_idx``: the data module's ``test_splits`` entry, else the index."""
    splits = getattr(getattr(trainer, "datamodule", None), "test_splits", None)
    return splits[dataloader_idx] if splits and dataloader_idx < len(splits) else str(dataloader_idx)


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
        seed: Seed for the batch order, SpecAugment and waveform augmentation.
        sortagrad_epochs: Training epochs that visit batches shortest first before shuffling.
        max_train_utterances: Optional cap (first N after sorting ids) for quick runs.
        cache_features: Compute each utterance's log-mel features once, in :meth:`setup`
            (with a progress bar), and keep them in memory; SpecAugment still draws new
            masks every epoch. Costs 115 MB per hour of audio at 80 mels; worth it for
            corpora of a few hours trained for many epochs (the synthetic recipes). With
            ``augment``, the training split keeps its decoded audio instead (16-bit, the
            same 115 MB per hour) and its features are computed per batch, after the
            augmentation; validation and test keep cached features.
        augment: Waveform augmentation of training batches
            (:class:`~lightning_amortized.data.augment.WaveAugment`: speed, reverberation,
            noise including babble, telephone band), seeded per batch; ``None``: off. In a
            LightningCLI config: ``augment: {class_path: lightning_amortized.data.WaveAugment}``.
        tokenizer: Path of a SentencePiece model for subword targets (give the
            ``ASRModule`` the same path), or ``None`` for characters.

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
        augment: WaveAugment | None = None,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        if augment is not None and getattr(augment, "sample_rate", sample_rate) != sample_rate:
            raise ValueError(
                f"Expected the waveform augmentation's sample_rate ({augment.sample_rate} Hz) to be the data's "
                f"({sample_rate} Hz): its filters and impulse responses are built for that rate. Pass "
                f"WaveAugment(sample_rate={sample_rate})."
            )
        self.cache_features = cache_features
        self.augment = augment
        self.sortagrad_epochs = sortagrad_epochs
        self.root = Path(root)
        # "dev-clean/" (tab completion) is the split dev-clean, as prepare_librispeech reads it
        self.train_splits, self.val_splits, self.test_splits = (
            [str(s).rstrip("/") for s in splits] for splits in (train_splits, val_splits, test_splits)
        )
        self.manifest_dir = Path(manifest_dir) if manifest_dir else self.root / "manifests"
        self.max_batch_seconds, self.max_batch_size = max_batch_seconds, max_batch_size
        self.num_workers, self.use_spec_augment = num_workers, spec_augment
        self.sample_rate, self.on_wrong_rate, self.seed = sample_rate, on_wrong_rate, seed
        self.max_train_utterances = max_train_utterances
        self.tokenizer = make_tokenizer(tokenizer)
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

    def _dataset(self, splits: list[str], cap: int | None = None, waveforms: bool = False) -> SpeechDataset:
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
        features = None if waveforms else self.features  # augmentation happens before the features
        ds = SpeechDataset(utts, self.tokenizer, self.sample_rate, features=features, cache=self.cache_features)
        ds.precompute(desc=f"{'audio' if waveforms else 'features'} {'+'.join(splits)}")
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets needed for ``stage``."""
        if stage in (None, "fit") and "train" not in self.datasets:
            self.datasets["train"] = self._dataset(
                self.train_splits, self.max_train_utterances, waveforms=self.augment is not None
            )
        if stage in (None, "fit", "validate") and "val" not in self.datasets and self.val_splits:
            self.datasets["val"] = self._dataset(self.val_splits)
        if stage in (None, "test", "predict"):
            for split in self.test_splits:
                self.datasets.setdefault(f"test:{split}", self._dataset([split]))

    def _loader(self, ds: SpeechDataset, train: bool) -> DataLoader:
        sampler = DurationBatchSampler(
            ds.durations,
            self.max_batch_seconds,
            max_stretch=self.augment.max_stretch if (train and self.augment is not None) else 1.0,  # cap after it
            shuffle=train,
            seed=self.seed,
            max_batch_size=self.max_batch_size,
            sortagrad_epochs=self.sortagrad_epochs if train else 0,
        )
        # features only serve datasets holding waveforms (a subclass's own SpeechDataset)
        collate = SpeechCollator(
            self.features,
            SpecAugment() if (train and self.use_spec_augment) else None,
            augment=self.augment if train else None,
        )
        # only training needs a resumable place in the epoch; evaluation loaders stay plain, so
        # that Lightning may wrap their batch sampler (Trainer.predict records batch indices)
        loader = ResumableDataLoader if train else DataLoader
        return loader(
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

    def predict_dataloader(self) -> list[DataLoader]:
        """The ``test_splits``' batches, for ``Trainer.predict`` (transcripts without scoring)."""
        return self.test_dataloader()


class SyntheticDataModule(LibriSpeechDataModule):
    """The synthetic eSpeak corpus: generated into ``root`` on first use, then read like LibriSpeech.

    Args:
        root: Where the corpus is (or will be) generated.
        utterances: Corpus size passed to :func:`~lightning_amortized.data.synthetic.make_corpus`.
        corpus_seed: Generation seed.
        voices: Voice set of train/dev/test speakers, ``"core"``, ``"core-accents"``,
            ``"core-formants"`` or ``"wide"`` (see
            :data:`~lightning_amortized.data.plan.VOICE_SETS`).
        train_utterances: Size of the ``train`` split, ``None`` for what ``utterances``
            leaves (see :func:`~lightning_amortized.data.plan.split_sizes`).
        free_text: Share of ``train`` utterances speaking template-free word sequences
            (see :func:`~lightning_amortized.data.synthetic.make_corpus`).
        **kwargs: Everything else goes to :class:`LibriSpeechDataModule`; ``test_splits``
            defaults to ``["test", "test-other"]`` here.
    """

    def __init__(
        self,
        root: str,
        utterances: int = 8000,
        corpus_seed: int = 0,
        voices: str = "core",
        train_utterances: int | None = None,
        free_text: float = 0.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("test_splits", ("test", "test-other"))
        super().__init__(root, **kwargs)
        self.utterances, self.corpus_seed, self.voices = utterances, corpus_seed, voices
        self.train_utterances, self.free_text = train_utterances, free_text

    def prepare_data(self) -> None:
        from lightning_amortized.data.synthetic import make_corpus

        make_corpus(
            self.root,
            utterances=self.utterances,
            seed=self.corpus_seed,
            voices=self.voices,
            train_utterances=self.train_utterances,
            free_text=self.free_text,
        )
        super().prepare_data()
