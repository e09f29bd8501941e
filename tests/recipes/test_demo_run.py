"""recipes/synthetic/run.py (`make demo`): the results name every test split, test and test-other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script, split_error_rates, tiny_recipe_yaml
from lightning_amortized.module import ASRModule

RUN = Path(__file__).resolve().parents[2] / "recipes" / "synthetic" / "run.py"

TINY = tiny_recipe_yaml(hidden_size=16, accelerator="cpu", lr=0.003, test_splits="[test, test-other]")


def test_demo_reports_test_and_test_other(tiny_corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run = load_script(RUN, "synthetic_run")
    stem = tmp_path / "results" / "demo"
    assert run.main(["--config", str(config), "--root", str(tiny_corpus), "--results", str(stem),
                     "--run-dir", str(tmp_path / "run"), "--rtf-utterances", "1", "--model.lr=0.002"]) == 0
    info = json.loads(stem.with_suffix(".json").read_text())
    assert info["overrides"] == ["--model.lr=0.002"]
    assert info["test_split"] == "test" and info["test_splits"] == ["test", "test-other"]
    assert (info["wer"], info["cer"]) == (info["test_wer"], info["test_cer"])  # older readers keep their fields
    model = ASRModule.load_from_checkpoint(info["checkpoint"], map_location="cpu")
    assert model.hparams.lr == 0.002  # the LightningCLI override reached the model
    for split, key in (("test", "test"), ("test-other", "test_other")):
        wer, cer = split_error_rates(model, tiny_corpus, split)
        assert info[f"{key}_wer"] == pytest.approx(wer, abs=1e-6)
        assert info[f"{key}_cer"] == pytest.approx(cer, abs=1e-6)
    md = stem.with_suffix(".md").read_text()
    assert f"| test-other WER (%) | {100 * info['test_other_wer']:.2f} |" in md
    assert f"| test-other CER (%) | {100 * info['test_other_cer']:.2f} |" in md
    assert "`test-other` (voices and sentence templates unseen in training)" in md


def test_demo_refuses_an_unknown_option_before_training(tmp_path: Path) -> None:
    run = load_script(RUN, "synthetic_run")
    with pytest.raises(SystemExit):
        run.main(["--root", str(tmp_path / "none"), "--lr", "3e-3"])  # not --model.lr: refused, nothing generated
    assert not (tmp_path / "none").exists()
