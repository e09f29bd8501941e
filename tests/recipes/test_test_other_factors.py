"""benchmarks/test_other_factors.py: texts and voices crossed; the diagonal cells are the corpus's own files."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import load_script
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "test_other_factors.py"


def _texts(root: Path, split: str) -> dict[str, str]:
    out = {}
    for trans in sorted((root / split).rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            out[utt] = text
    return out


def test_cells_cross_texts_and_voices_and_score(tiny_corpus: Path, tmp_path: Path) -> None:
    bench = load_script(SCRIPT, "bench_test_other_factors")
    work = tmp_path / "cells"
    jobs, accents = bench.crossed_jobs(tiny_corpus, work, 3)
    assert len(jobs) == 12 and {j.split for j in jobs} == set(bench.CELLS)
    bench.render(jobs, work, 1)
    test, other = _texts(tiny_corpus, "test"), _texts(tiny_corpus, "test-other")
    for cell, (text_split, voice_split) in bench.CELLS.items():
        texts = _texts(work, cell)
        assert len(texts) == 3
        # the utterance (and its folder) is the voice's; the words are the text split's
        assert set(texts) <= set(test if voice_split == "test" else other)
        assert set(texts.values()) <= set((test if text_split == "test" else other).values())
    for cell, split in (("tt", "test"), ("oo", "test-other")):  # the corpus's own audio, bit for bit
        for flac in (work / cell).rglob("*.flac"):
            assert flac.read_bytes() == (tiny_corpus / split / flac.relative_to(work / cell)).read_bytes()
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    torch.save(ASRModule(RecurrentEncoder(240, 16, num_layers=1)).state_dict(), ckpt)
    results = tmp_path / "res"
    assert bench.main(["--ckpt", str(ckpt), "--root", str(tiny_corpus), "--utterances", "3", "--work", str(work),
                       "--results", str(results), "--workers", "1"]) == 0
    rows = json.loads(results.with_suffix(".json").read_text())["rows"]
    assert [r["cell"] for r in rows] == list(bench.CELLS)
    for r in rows:
        assert r["utterances"] == 3 and 0.0 <= r["cer"] and r["wer_ci95"][0] <= r["wer"] <= r["wer_ci95"][1]
        assert ("cer_by_accent" in r) == (r["voices"] == "test-other")
        assert set(r.get("cer_by_accent", {})) <= set(accents.values())
        bands = r["recall_by_training_count"]  # every reference word in one band of its training count
        cell_words = sum(len(t.split()) for t in _texts(work, r["cell"]).values())
        assert list(bands) == ["0", "1-9", "10-99", "100-999", "1000+"] and sum(b["words"] for b in bands.values()) == cell_words
        assert all(b["recall"] is None or 0.0 <= b["recall"] <= 1.0 for b in bands.values())


def test_a_root_without_corpus_json_is_refused(tmp_path: Path, capsys) -> None:
    bench = load_script(SCRIPT, "bench_test_other_factors")
    assert bench.main(["--ckpt", "x.ckpt", "--root", str(tmp_path), "--results", str(tmp_path / "r")]) == 2
    assert "corpus.json" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
