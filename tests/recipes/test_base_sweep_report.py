"""benchmarks/base_sweep_report.py: bases told apart by their overrides, the CER ratio, time-guard cuts, bad folders."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "base_sweep_report.py"


def _base(folder: Path, overrides: list[str], epochs: int, test_cer: float, other_cer: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "base.json").write_text(json.dumps({
        "overrides": overrides, "epochs": epochs, "best_epoch": epochs - 1, "fit_seconds": 100.0,
        "device": "cuda: test", "params": 3_338_141, "command": "python benchmarks/base.py",
        "test_wer": 0.1, "test_cer": test_cer, "test_other_wer": 0.5, "test_other_cer": other_cer,
        "val_curve": {"value": [0.9, 0.5, 0.3][:epochs]},
    }))
    return folder


def test_rows_name_each_variant_and_mark_time_guard_cuts(tmp_path: Path) -> None:
    bench = load_script(SCRIPT, "bench_base_sweep_report")
    plain = _base(tmp_path / "a", ["--trainer.max_epochs", "3", "--data.init_args.free_text", "0.25"], 3, 0.02, 0.08)
    wide = _base(tmp_path / "b", ["--trainer.max_epochs=30", "--data.init_args.voices", "wide",
                                  "--model.encoder.init_args.hidden_size", "384",
                                  "--data.init_args.augment", "lightning_amortized.data.WaveAugment",
                                  "--trainer.max_time", "00:00:05:30"], 2, 0.04, 0.06)
    results = tmp_path / "out" / "sweep"
    assert bench.main([str(plain), str(wide), "--results", str(results)]) == 0
    rows = json.loads(results.with_suffix(".json").read_text())["rows"]
    assert (rows[0]["voices"], rows[0]["hidden_size"], rows[0]["augment"], rows[0]["planned_epochs"]) == ("core", 256, None, 3)
    assert (rows[1]["voices"], rows[1]["hidden_size"], rows[1]["augment"], rows[1]["planned_epochs"]) == (
        "wide", 384, "WaveAugment", 30)
    assert abs(rows[0]["cer_ratio"] - 4.0) < 1e-9 and abs(rows[1]["cer_ratio"] - 1.5) < 1e-9
    md = results.with_suffix(".md").read_text()
    assert "wide, 3x384 + WaveAugment" in md and md.count("(time guard)") == 1
    assert "core + 25% free text, 3x256" in md and rows[0]["free_text"] == 0.25 and rows[1]["free_text"] == 0.0
    assert results.with_suffix(".png").stat().st_size > 0
    # rerunning one base of a sweep must not replace the shared base's docs/results/base.*
    assert md.count("`python benchmarks/base.py --no-results`") == 2
    assert bench.rerun_command("python benchmarks/base.py --root r --extra --x 1") == (
        "python benchmarks/base.py --root r --no-results --extra --x 1")


def test_a_folder_without_base_json_or_test_other_is_refused(tmp_path: Path, capsys) -> None:
    bench = load_script(SCRIPT, "bench_base_sweep_report")
    (tmp_path / "empty").mkdir()
    assert bench.main([str(tmp_path / "empty"), "--results", str(tmp_path / "r")]) == 2
    assert "No base.json" in capsys.readouterr().err
    folder = _base(tmp_path / "old", [], 2, 0.02, 0.08)
    info = json.loads((folder / "base.json").read_text())
    del info["test_other_cer"]
    (folder / "base.json").write_text(json.dumps(info))
    assert bench.main([str(folder), "--results", str(tmp_path / "r")]) == 2
    assert "test_other_cer" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def test_a_base_trained_from_its_own_config_is_described_by_that_config(tmp_path: Path) -> None:
    """base384.yaml sets width, batches and epochs in the file, with no overrides: the row reads them there."""
    bench = load_script(SCRIPT, "bench_base_sweep_report")
    folder = _base(tmp_path / "b384", [], 3, 0.02, 0.17)
    info = json.loads((folder / "base.json").read_text())
    info["config"] = "recipes/synthetic/conf/base384.yaml"
    (folder / "base.json").write_text(json.dumps(info))
    row = bench.row_of(folder)
    assert (row["hidden_size"], row["max_batch_seconds"], row["planned_epochs"], row["voices"]) == (384, 100.0, 22, "core")
    assert bench.row_of(_base(tmp_path / "plain", ["--trainer.max_epochs", "5"], 3, 0.02, 0.17))["planned_epochs"] == 5
