"""benchmarks/device_wallclock.py: its checks and its table (the timing itself needs trained runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_script(REPO / "benchmarks" / "device_wallclock.py", "bench_device_wallclock")


def test_arguments_are_checked_before_anything_runs(bench, tmp_path: Path, capsys) -> None:
    for args, message in ((["--variants", "amnet_factorized"], "must include slow_only"),
                          (["--variants", "slow_only"], "no run folder"),
                          (["--variants", "slow_only", "--utterances", "0"], "must be positive")):
        with pytest.raises(SystemExit):
            bench.main(["--work", str(tmp_path), *args])
        assert message in capsys.readouterr().err


def test_the_table_gives_speed_relative_to_slow_only(bench) -> None:
    summary = {"command": "c", "machine": "m", "load_average": [0.1, 0.2], "utterances": 2, "frames": 10,
               "repeats": 3, "variants": {
                   "slow_only": {"ms_per_frame": 0.2, "arbitrator_ms_per_frame": 0.0, "slow_share": None,
                                 "wer_runtime": 0.1},
                   "amnet": {"ms_per_frame": 0.08, "arbitrator_ms_per_frame": None, "slow_share": 0.25,
                             "wer_runtime": 0.12},
                   "amnet:two_calls": {"ms_per_frame": 0.1, "arbitrator_ms_per_frame": 0.02, "slow_share": 0.25,
                                       "wer_runtime": 0.12}}}
    rows = [r for r in bench.markdown(summary).splitlines() if r.startswith("| amnet")]
    assert rows == ["| amnet | 0.0800 | 2.50x | (in the graph) | 0.250 | 12.00 % |",
                    "| amnet:two_calls | 0.1000 | 2.00x | 0.0200 | 0.250 | 12.00 % |"]


def test_a_run_folder_without_a_checkpoint_is_one_error_line(bench, tmp_path: Path, capsys) -> None:
    (tmp_path / "slow_only").mkdir()
    assert bench.main(["--work", str(tmp_path), "--variants", "slow_only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"device_wallclock: error: No checkpoint under {tmp_path / 'slow_only'}: was the variant trained "
                   "in this --work folder?"]
