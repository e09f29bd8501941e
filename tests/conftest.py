"""Shared fixtures: tiny corpora made on the fly (nothing large is committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch



def load_script(path: Path, name: str):
    """Import a script that is not in a package (a recipe or a benchmark) as module ``name``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def split_error_rates(model, root: Path, split: str) -> tuple[float, float]:
    """WER and CER of ``model.transcribe`` over every utterance of ``split``, one utterance at a time,
    counted by jiwer: an independent count of the scores the recipes and benchmarks report."""
    import jiwer

    from lightning_amortized.data import LibriSpeechDataModule

    dm = LibriSpeechDataModule(str(root), train_splits=[], val_splits=[], test_splits=[split])
    dm.prepare_data()
    dm.setup("test")
    ds = dm.datasets[f"test:{split}"]
    model.eval()
    refs, hyps = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            hyps += model.transcribe(item["feats"][None], torch.tensor([item["feats"].shape[0]]))
            refs.append(item["text"])
    return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test: tiny tensors only lose to thread contention on 2 shared cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def write_fake_layout(root: Path, split: str = "train", speakers: int = 2, utts: int = 3, sr: int = 16000) -> Path:
    """Write a LibriSpeech-layout split with noise audio and simple transcripts; returns the split dir."""
    rng = np.random.default_rng(0)
    words = ["HELLO", "WORLD", "SET", "A", "TIMER", "PLAY", "MUSIC", "IT'S"]
    for s in range(speakers):
        spk, chap = 100 + s, 10
        d = root / split / str(spk) / str(chap)
        d.mkdir(parents=True, exist_ok=True)
        lines = []
        for u in range(utts):
            uid = f"{spk}-{chap}-{u:04d}"
            n = int(sr * (0.5 + 0.25 * u))
            sf.write(d / f"{uid}.flac", (0.1 * rng.standard_normal(n)).astype("float32"), sr, subtype="PCM_16")
            lines.append(f"{uid} {' '.join(rng.choice(words, size=2 + u))}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root / split


@pytest.fixture()
def fake_layout(tmp_path: Path) -> Path:
    """A tiny LibriSpeech-layout root with a `train` split (noise audio)."""
    write_fake_layout(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic eSpeak corpus (generated once per test session)."""
    from lightning_amortized.data.synthetic import make_corpus

    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, utterances=120, seed=0, show_progress=False)
    return root


def tiny_recipe_yaml(hidden_size: int, accelerator: str = "auto", lr: float | None = None,
                     test_splits: str | None = None) -> str:
    """A one-epoch LightningCLI recipe on a tiny synthetic corpus (`root` is set by the caller)."""
    lr_line = f"  lr: {lr}\n" if lr is not None else ""
    splits_line = f"    test_splits: {test_splits}\n" if test_splits is not None else ""
    return f"""
seed_everything: 0
trainer:
  accelerator: {accelerator}
  max_epochs: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  use_distributed_sampler: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{monitor: val/wer, mode: min, filename: "best-{{epoch}}"}}
model:
  encoder:
    class_path: lightning_amortized.nn.RecurrentEncoder
    init_args: {{input_size: 240, hidden_size: {hidden_size}, num_layers: 1}}
{lr_line}data:
  class_path: lightning_amortized.data.SyntheticDataModule
  init_args:
    root: unused
    utterances: 120
    corpus_seed: 0
    train_splits: [train]
    val_splits: [dev]
{splits_line}    max_batch_seconds: 20.0
    max_train_utterances: 16
    cache_features: true
"""
