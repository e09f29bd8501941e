"""benchmarks/amnet.py: test-other is scored once per variant, and results from before it still render."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import load_script, split_error_rates
from lightning_amortized.data import SyntheticDataModule
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder

REPO = Path(__file__).resolve().parents[2]
OLD_RESULTS = [REPO / "docs" / "results" / "amnet.json", REPO / "docs" / "results" / "amnet_load_aware.json"]


@pytest.fixture(scope="module")
def amnet():
    return load_script(REPO / "benchmarks" / "amnet.py", "bench_amnet_results")


def test_further_test_splits_are_scored_once(amnet, tiny_corpus: Path) -> None:
    torch.manual_seed(0)
    model = ASRModule(RecurrentEncoder(240, 16, num_layers=1))
    dm = SyntheticDataModule(str(tiny_corpus), utterances=120, test_splits=["test", "test-other"])
    scores = amnet.score_other_splits(model, dm, quick=False)
    wer, cer = split_error_rates(model, tiny_corpus, "test-other")
    assert set(scores) == {"test_other_wer", "test_other_cer", "test_other_utterances"}
    assert scores["test_other_wer"] == pytest.approx(wer, abs=1e-6)
    assert scores["test_other_cer"] == pytest.approx(cer, abs=1e-6)
    assert scores["test_other_utterances"] == len(dm.datasets["test:test-other"])
    dm.test_splits = ["test"]
    assert amnet.score_other_splits(model, dm, quick=False) == {}


@pytest.mark.parametrize("path", OLD_RESULTS, ids=[p.stem for p in OLD_RESULTS])
def test_results_without_test_other_still_redraw_and_render(amnet, path: Path, tmp_path: Path) -> None:
    old = tmp_path / path.name
    shutil.copy(path, old)
    summary = json.loads(old.read_text())
    assert not any("test_other_wer" in v for v in summary["variants"].values())  # written before test-other
    assert amnet.main(["--from-json", str(old)]) == 0
    assert (tmp_path / f"{old.stem}_trace.png").stat().st_size > 0
    assert (tmp_path / f"{old.stem}_latency_vs_rho.png").stat().st_size > 0
    lines = amnet.render_markdown(summary).splitlines()
    head = next(i for i, line in enumerate(lines) if "| test-other WER / CER |" in line)
    rows = lines[head + 2 : head + 2 + len(summary["variants"])]  # the main table, one row per variant
    assert all(r.split(" | ")[4] == "n/a / n/a" for r in rows), rows
    name = next(iter(summary["variants"]))
    summary["variants"][name].update(test_other_wer=0.1234, test_other_cer=0.05)
    assert "| 12.34% / 5.00% |" in amnet.render_markdown(summary)
