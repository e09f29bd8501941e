"""recipes/synthetic/run.py (`make demo`): the results name every test split, test and test-other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script, split_error_rates
from lightning_amortized.module import ASRModule

RUN = Path(__file__).resolve().parents[2] / "recipes" / "synthetic" / "run.py"

TINY = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  use_distributed_sampler: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/wer, mode: min, filename: "best-{epoch}"}
model:
  encoder:
    class_path: lightning_amortized.nn.RecurrentEncoder
    init_args: {input_size: 240, hidden_size: 16, num_layers: 1}
  lr: 0.003
data:
  class_path: lightning_amortized.data.SyntheticDataModule
  init_args:
    root: unused
    utterances: 120
    corpus_seed: 0
    train_splits: [train]
    val_splits: [dev]
    test_splits: [test, test-other]
    max_batch_seconds: 20.0
    max_train_utterances: 16
    cache_features: true
"""


def test_demo_reports_test_and_test_other(tiny_corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run = load_script(RUN, "synthetic_run")
    stem = tmp_path / "results" / "demo"
    assert run.main(["--config", str(config), "--root", str(tiny_corpus), "--results", str(stem),
                     "--run-dir", str(tmp_path / "run"), "--rtf-utterances", "1"]) == 0
    info = json.loads(stem.with_suffix(".json").read_text())
    assert info["test_split"] == "test" and info["test_splits"] == ["test", "test-other"]
    assert (info["wer"], info["cer"]) == (info["test_wer"], info["test_cer"])  # older readers keep their fields
    model = ASRModule.load_from_checkpoint(info["checkpoint"], map_location="cpu")
    for split, key in (("test", "test"), ("test-other", "test_other")):
        wer, cer = split_error_rates(model, tiny_corpus, split)
        assert info[f"{key}_wer"] == pytest.approx(wer, abs=1e-6)
        assert info[f"{key}_cer"] == pytest.approx(cer, abs=1e-6)
    md = stem.with_suffix(".md").read_text()
    assert f"| test-other WER (%) | {100 * info['test_other_wer']:.2f} |" in md
    assert f"| test-other CER (%) | {100 * info['test_other_cer']:.2f} |" in md
    assert "`test-other` (voices and sentence templates unseen in training)" in md
