"""benchmarks/update_regime.py: grid points parsed, targets judged from the recipe's results."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "update_regime.py"


def _result(lr: float, upd_before: float, upd_after: float, test_before: float, test_after: float) -> dict:
    def scores(wer: float, acc: float) -> dict:
        return {"wer": wer, "wer_ci95": [wer - 0.01, wer + 0.01], "new_entity_accuracy": acc}

    return {
        "lr": lr,
        "config": {"epochs": 8, "replay_utterances": 240, "anchor": 0.0},
        "base_eval": {"update-1-test": scores(upd_before, 0.2), "test": scores(test_before, None)},
        "updates": [{"train_update_utterances": 240, "fit_seconds": 50.0,
                     "eval": {"update-1-test": scores(upd_after, 0.6), "test": scores(test_after, None)}}],
    }


def test_parse_point_and_bad_point() -> None:
    bench = load_script(SCRIPT, "bench_update_regime")
    assert bench.parse_point("0.001:16:480") == (0.001, 16, 480, 0.0)
    assert bench.parse_point("0.002:12:720:0.01") == (0.002, 12, 720, 0.01)
    with pytest.raises(ValueError, match="LR:EPOCHS:REPLAY"):
        bench.parse_point("0.001-16")


def test_targets_are_judged_per_point() -> None:
    bench = load_script(SCRIPT, "bench_update_regime")
    rows = bench.summarize({
        "teaches": _result(1e-3, 0.30, 0.15, 0.10, 0.109),  # halved, +9 % forgetting
        "forgets": _result(3e-3, 0.30, 0.12, 0.10, 0.12),  # learns, +20 %
        "lazy": _result(1e-4, 0.30, 0.20, 0.10, 0.10),  # does not halve
    }, 1)
    got = {r["point"]: (r["learns"], r["forgets_at_most_10pct"]) for r in rows}
    assert got == {"teaches": (True, True), "forgets": (True, False), "lazy": (False, True)}
    assert rows[0]["update_test_wer_rel"] == pytest.approx(-0.5) and rows[1]["test_wer_rel"] == pytest.approx(0.2)
    text = bench.markdown(rows, {"command": "python benchmarks/update_regime.py", "base": "b.ckpt", "root": "r", "update": 1})
    assert text.rstrip().endswith("lr 0.001, 8 epochs, 240 replayed")
