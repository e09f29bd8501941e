"""benchmarks/error_breakdown.py: errors grouped by voice and unseen-word recall, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.text import char_error_rate

from conftest import load_script
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "error_breakdown.py"


def test_word_recall_and_char_errors_by_hand() -> None:
    bench = load_script(SCRIPT, "bench_error_breakdown")
    seen = {"SET", "A", "TIMER"}
    r = bench.word_recall(["SET A TIMER", "SET THE ALARM ALARM"], ["SET A TIMER", "SET AN ALARM ALARM"], seen)
    # seen tokens SET A TIMER + SET: all recalled; unseen AN, ALARM, ALARM: both ALARMs recalled
    assert r == {"words": 7, "unseen_word_share": 3 / 7, "recall_seen_words": 1.0, "recall_unseen_words": 2 / 3}
    errors, chars = bench.char_errors(["SET A TIMER", "AB"], ["SET A TIMOR", "ABC"])
    assert (errors, chars) == ([1, 1], [11, 3])


def test_breakdown_on_a_tiny_corpus(tiny_corpus: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ASRModule(RecurrentEncoder(240, 16, num_layers=1))
    ckpt = tmp_path / "m.pt"
    torch.save(model.state_dict(), ckpt)
    bench = load_script(SCRIPT, "bench_error_breakdown")
    assert bench.main(["--ckpt", str(ckpt), "--root", str(tiny_corpus), "--results", str(tmp_path / "eb")]) == 0
    result = json.loads((tmp_path / "eb.json").read_text())
    corpus = json.loads((tiny_corpus / "corpus.json").read_text())
    decoded = bench.decode_splits(str(ckpt), str(tiny_corpus), ["test", "test-other"])
    for split in ("test", "test-other"):
        row = result["splits"][split]
        refs = [r for _, r, _ in decoded[split]]
        hyps = [h for _, _, h in decoded[split]]
        assert row["utterances"] == corpus["splits"][split]["utterances"] == len(refs)
        assert row["cer"] == pytest.approx(float(char_error_rate(hyps, refs)), abs=1e-6)
        assert sum(g["utterances"] for g in row["by_variant"]) == row["utterances"]
        assert sum(g["utterances"] for g in row["by_accent"]) == row["utterances"]
        assert 0.0 <= row["unseen_word_share"] <= 1.0
    # test speakers' variants are heard in training; test-other's never are
    assert all(not g["in_training"] for g in result["splits"]["test-other"]["by_variant"])
    assert (tmp_path / "eb.md").read_text().startswith("# Where the recognizer fails")


def test_a_root_without_corpus_json_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script(SCRIPT, "bench_error_breakdown")
    assert bench.main(["--ckpt", str(tmp_path / "m.pt"), "--root", str(tmp_path), "--results", str(tmp_path / "eb")]) == 2
    assert "corpus.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "eb.json").exists()
