"""One behaviour for every subcommand: one error line and exit status 2; a help that lists them all."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from lightning_amortized.cli import ASRLightningCLI, main


def test_prepare_failure_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # used to end in a 16-line traceback with status 1
    assert main(["prepare", str(tmp_path), "--splits", "train-clean-100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("lightning-amortized prepare: error: Split folder") and "train-clean-100" in err[0]


def test_every_subcommand_reports_errors_alike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("lightning-amortized diff: error: ")
    assert main(["make-corpus", str(tmp_path / "c"), "--utterances", "3"]) == 2
    assert capsys.readouterr().err.startswith("lightning-amortized make-corpus: error: ")
    assert main(["frobnicate"]) == 2  # not handed to LightningCLI, whose message lists only fit/validate/test/predict
    err = capsys.readouterr().err
    assert err.startswith("lightning-amortized: error: unknown command 'frobnicate'") and "make-corpus" in err
    assert main(["prepare", str(tmp_path / "nowhere"), "--splits", "train"]) == 2
    assert "Split folder" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()  # nothing created
    (tmp_path / "corpus" / "train" / "1" / "2").mkdir(parents=True)
    (tmp_path / "corpus" / "train" / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000 HELLO WORLD\n")
    (tmp_path / "out").mkdir()
    assert main(["train-tokenizer", str(tmp_path / "corpus"), "--out", str(tmp_path / "out")]) == 2  # a folder
    assert capsys.readouterr().err.startswith("lightning-amortized train-tokenizer: error: ")


def test_fit_on_a_missing_corpus_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # used to end in a 30-line traceback from inside Lightning's prepare_data hook
    status = main(["fit", "--config", str(Path(__file__).parents[1] / "recipes/librispeech/conf/lstm_ctc_train100.yaml"),
                   "--data.init_args.root", str(tmp_path / "missing"), "--trainer.fast_dev_run", "true",
                   "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.logger", "false"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightning-amortized fit: error: Split folder") and "missing" in err[-1]
    assert "raise CorpusError" not in "\n".join(err)  # (Lightning may log through pytest's closed streams)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "make-corpus", "prepare", "diff inspect|apply|export"):
        assert command in out
    assert main([]) == 2  # nothing asked: the usage, on stderr
    assert "make-corpus" in capsys.readouterr().err


def test_cli_with_args_ignores_the_scripts_own_argv(tmp_path: Path, monkeypatch) -> None:
    """Scripts (run.py, benchmarks) pass `args` while sys.argv holds their own options; LightningCLI
    used to warn about both on every call."""
    monkeypatch.setattr(sys, "argv", ["run.py", "--max-minutes", "3"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ASRLightningCLI(
            args=["--model.encoder", "lightning_amortized.nn.RecurrentEncoder",
                  "--model.encoder.init_args.input_size", "240", "--model.encoder.init_args.hidden_size", "8",
                  "--data", "lightning_amortized.data.LibriSpeechDataModule", "--data.init_args.root", str(tmp_path),
                  "--trainer.logger", "false"],
            run=False,
        )
    assert not [w for w in caught if "args" in str(w.message) and "command line" in str(w.message)]
    assert sys.argv == ["run.py", "--max-minutes", "3"]  # restored


def test_a_config_for_an_absent_accelerator_can_be_read_without_a_trainer(tmp_path: Path) -> None:
    """benchmarks/base.py looks up bases trained on a GPU from machines without one (issue 13)."""
    args = ["--model.encoder", "lightning_amortized.nn.RecurrentEncoder",
            "--model.encoder.init_args.input_size", "240", "--model.encoder.init_args.hidden_size", "8",
            "--data", "lightning_amortized.data.LibriSpeechDataModule", "--data.init_args.root", str(tmp_path),
            "--trainer.logger", "false", "--trainer.accelerator", "gpu"]
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="gpu"):
            ASRLightningCLI(args=args, run=False)
    cli = ASRLightningCLI(args=args, run=False, build_trainer=False)
    assert cli.trainer is None and cli.model.encoder.hidden_size == 8
    assert cli.config["trainer"]["accelerator"] == "gpu"
    with pytest.raises(ValueError, match="run=False"):
        ASRLightningCLI(args=["fit", *args], build_trainer=False)


def test_a_bad_transcript_or_a_missing_tokenizer_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both ended in 49- and 81-line tracebacks (a ValueError, and jsonargparse wrapping a FileNotFoundError)."""
    from tests.conftest import write_fake_layout

    conf = str(Path(__file__).parents[1] / "recipes/librispeech/conf/lstm_ctc_train100.yaml")
    common = ["--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "runs"),
              "--trainer.logger", "false", "--data.init_args.num_workers", "0"]
    root = tmp_path / "corpus"
    for split in ("train-clean-100", "dev-clean", "test-clean", "test-other"):
        write_fake_layout(root, split, speakers=1, utts=2)
    trans = next((root / "dev-clean").rglob("*.trans.txt"))
    trans.write_text(trans.read_text().replace("HELLO", "HELLO 5", 1))
    assert main(["validate", "--config", conf, "--data.init_args.root", str(root), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightning-amortized validate: error: Transcript in ") and "['5']" in err[-1]
    missing = str(tmp_path / "nope.model")
    assert main(["fit", "--config", conf, "--data.init_args.root", str(root), "--model.tokenizer", missing, *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightning-amortized fit: error: SentencePiece model") and missing in err[-1]


def test_predict_writes_the_transcripts(tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lightning-amortized predict` exited 0 and threw Trainer.predict's transcripts away."""
    import json

    from tests.conftest import tiny_recipe_yaml

    conf = tmp_path / "tiny.yaml"
    conf.write_text(tiny_recipe_yaml(8, accelerator="cpu", test_splits="[test]"))
    assert main(["predict", "--config", str(conf), "--data.init_args.root", str(tiny_corpus),
                 "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    out = tmp_path / "runs" / "predictions.jsonl"
    assert f"transcripts: {out}" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = {line.split()[0] for t in (tiny_corpus / "test").rglob("*.trans.txt") for line in t.read_text().splitlines()}
    assert {r["id"] for r in rows} == ids and len(rows) == len(ids)
    assert {r["split"] for r in rows} == {"test"} and all(set(r) == {"split", "id", "text"} for r in rows)
