"""LibriSpeech-layout data: manifests, datamodule, features, augmentation, tokenizer, synthetic corpus."""

from lightning_amortized.data.augment import WaveAugment
from lightning_amortized.data.datamodule import (
    DurationBatchSampler,
    LibriSpeechDataModule,
    ResumableDataLoader,
    SeededBatch,
    SpeechCollator,
    SpeechDataset,
    SyntheticDataModule,
    load_audio,
)
from lightning_amortized.data.features import LogMelFilterbank, SpecAugment
from lightning_amortized.data.prepare import CorpusError, Utterance, prepare_librispeech, read_manifest
from lightning_amortized.data.tokenizer import CharTokenizer

__all__ = [
    "CharTokenizer",
    "CorpusError",
    "DurationBatchSampler",
    "LibriSpeechDataModule",
    "LogMelFilterbank",
    "ResumableDataLoader",
    "SeededBatch",
    "SpecAugment",
    "SpeechCollator",
    "SpeechDataset",
    "SyntheticDataModule",
    "Utterance",
    "WaveAugment",
    "load_audio",
    "prepare_librispeech",
    "read_manifest",
]
