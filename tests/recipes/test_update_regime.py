"""benchmarks/update_regime.py: grid points parsed, targets judged from the recipe's results."""

from __future__ import annotations

import json
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


def test_chain_regime_judges_every_update_and_forgetting_after_the_last(tmp_path: Path, capsys) -> None:
    bench = load_script(SCRIPT, "bench_update_regime")

    def scores(wer: float, acc: float | None = 0.2) -> dict:
        return {"wer": wer, "wer_ci95": [wer - 0.01, wer + 0.01], "new_entity_accuracy": acc}

    result = {
        "lr": 5e-4,
        "config": {"base": "b.ckpt", "root": "data/synthetic", "method": "full", "updates": 2, "epochs": 16,
                   "lr": 5e-4, "update_utterances": None, "replay_utterances": 720, "anchor": 0.0, "seed": 0,
                   "out": "runs/x", "test_other_split": None, "budget": 0.1},
        "base_eval": {"test": scores(0.10, None), "update-1-test": scores(0.30), "update-2-test": scores(0.20)},
        "updates": [
            {"eval": {"test": scores(0.104, None), "update-1-test": scores(0.14, 0.6)}},
            {"eval": {"test": scores(0.112, None), "update-1-test": scores(0.18, 0.5), "update-2-test": scores(0.11, 0.7)}},
        ],
    }
    rows, verdict = bench.chain_rows(result)
    assert [r["learns"] for r in rows] == [True, False]  # 0.11 > 0.5 x 0.20
    assert abs(rows[1]["update_test_wer_rel"] - (0.11 / 0.20 - 1)) < 1e-12
    assert not verdict["learns_every_update"] and not verdict["forgets_at_most_10pct"]  # +12 %
    assert abs(verdict["test_wer_rel_after_last"] - 0.12) < 1e-9
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result))
    assert bench.main(["--chain", str(path), "--results", str(tmp_path / "chain")]) == 0
    md = (tmp_path / "chain.md").read_text()
    assert "| 2 | 20.00 % → 11.00 %" in md and "halves its own split: no" in md and "+12.0 %" in md
    assert "--test_other_split null" in md and "--budget" not in md and "replay_earlier" not in md
    result["config"]["replay_earlier"] = 240  # a rehearsing chain: its command and its prose say so
    path.write_text(json.dumps(result))
    assert bench.main(["--chain", str(path), "--results", str(tmp_path / "chain")]) == 0
    md = (tmp_path / "chain.md").read_text()
    assert "--replay_earlier 240" in md and "720 replayed `train` utterances per update + 240 of the earlier" in md
    assert bench.main(["--chain", str(tmp_path / "missing.json"), "--results", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "cut.json").write_text(path.read_text()[:200])  # an interrupted write
    assert bench.main(["--chain", str(tmp_path / "cut.json"), "--results", str(tmp_path / "c")]) == 2
    assert "is not the results.json of a finished" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"config": {}}))  # some other JSON
    assert bench.main(["--chain", str(tmp_path / "other.json"), "--results", str(tmp_path / "o")]) == 2
    assert "KeyError" in capsys.readouterr().err


def test_a_finished_point_is_kept_only_with_its_own_options(tmp_path: Path, monkeypatch, capsys) -> None:
    """--reuse keyed points by lr/epochs/replay only: another base or seed reused them silently, and without
    --reuse a finished point was replaced silently."""
    import dataclasses

    bench = load_script(SCRIPT, "bench_update_regime")
    recipe = bench.finished_runs.__globals__["_recipe"]()
    ran = []

    def run_jobs(jobs, *args, done=None, **kwargs):  # "runs" a job: results made with its own options
        out = {}
        for job in jobs:
            if job.name in (done or {}):
                out[job.name] = done[job.name]
                continue
            ran.append(job.name)
            a = recipe.build_parser().parse_args([str(c) for c in job.command[2:]])
            cfg = recipe.UpdateConfig(**{f: getattr(a, f) for f in recipe.UpdateConfig.__dataclass_fields__})
            res = _result(cfg.lr, 0.3, 0.15, 0.1, 0.105)
            res["config"] = json.loads(json.dumps(dataclasses.asdict(cfg)))
            res["chain"] = {}
            res["updates"][0]["eval"]["test"].update(utterance_errors=[1], utterance_words=[10])
            job.result.parent.mkdir(parents=True, exist_ok=True)
            job.result.write_text(json.dumps(res))
            out[job.name] = res
        return out

    monkeypatch.setattr(bench, "run_jobs", run_jobs)
    argv = ["--base", "b.ckpt", "--grid", "0.001:16:480", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    assert bench.main(argv) == 0 and len(ran) == 1
    assert bench.main([*argv, "--reuse"]) == 0 and len(ran) == 1  # the same options: kept
    for other, why in ((["--seed", "1", "--reuse"], "seed 0 -> 1"), (["--reuse", "--base", "c.ckpt"], "base"),
                       ([], "pass --reuse to keep it")):
        assert bench.main([*argv, *other]) == 2 and len(ran) == 1  # refused, nothing ran
        assert why in capsys.readouterr().err
    assert bench.main([*argv, "--seed", "1", "--overwrite"]) == 0 and len(ran) == 2
