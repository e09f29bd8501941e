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


def test_bound_times_untrained_pairs_of_a_base_and_solves_for_the_slow_share(bench, tiny_corpus: Path,
                                                                            tmp_path: Path, monkeypatch) -> None:
    import json

    import torch

    from lightning_amortized.module import ASRModule
    from lightning_amortized.nn import RecurrentEncoder

    torch.manual_seed(0)
    model = ASRModule(RecurrentEncoder(240, 32, num_layers=2))
    (tmp_path / "key").mkdir()
    ckpt = tmp_path / "key" / "base.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    monkeypatch.setattr(bench, "EXPORTS", tmp_path / "exports")
    assert bench.main(["--bound", str(tmp_path / "none.ckpt"), "--ranks", "4"]) == 2  # not a file
    assert bench.main(["--bound", str(ckpt)]) == 2  # no ranks
    assert bench.main(["--bound", str(ckpt), "--ranks", "32"]) == 2  # not below the hidden size: no cheaper
    for bad in (["--ranks", "4"], ["--bound", str(ckpt), "--ranks", "4", "--target", "0"]):
        with pytest.raises(SystemExit):
            bench.main(bad)
    stem = tmp_path / "bound"
    assert bench.main(["--bound", str(ckpt), "--ranks", "4", "8", "--root", str(tiny_corpus), "--utterances", "2",
                       "--repeats", "1", "--target", "1.2", "--results", str(stem)]) == 0
    res = json.loads(stem.with_suffix(".json").read_text())
    reference = res["ranks"]["slow_only"]["reference_ms"]  # the faster of slow-only and the pairs' slow branches
    assert reference == min(res["ranks"]["slow_only"]["ms_per_frame"], res["ranks"]["rank_4"]["slow_ms"],
                            res["ranks"]["rank_8"]["slow_ms"])
    assert set(res["ranks"]) == {"slow_only", "rank_4", "rank_8"}
    for name in ("rank_4", "rank_8"):
        r = res["ranks"][name]
        assert r["fast_flops"] < r["slow_flops"] == res["ranks"]["slow_only"]["flops"]
        assert r["fast_every_frame_speedup"] == pytest.approx(reference / (r["fast_ms"] + r["arbitrator_ms"]))
        s = r["max_slow_share_for_target"]
        if s is not None and 0.0 < s < 1.0:  # the stream at that share is exactly the target speed-up
            t = s * r["slow_ms"] + (1 - s) * r["fast_ms"] + r["arbitrator_ms"]
            assert reference / t == pytest.approx(1.2)
    assert (tmp_path / "exports" / "bound-key" / "rank_8" / "manifest.json").is_file()
    assert "| 8 |" in stem.with_suffix(".md").read_text()


def test_the_largest_slow_share_is_solved_and_unreachable_targets_say_so(bench) -> None:
    # reference 0.3 ms, target 1.5x: 0.2 ms per frame, 0.18 after the arbitrator's 0.02
    assert bench.max_slow_share(0.3, 0.25, 0.08, 0.02, 1.5) == pytest.approx((0.18 - 0.08) / (0.25 - 0.08))
    assert bench.max_slow_share(0.3, 0.25, 0.19, 0.02, 1.5) is None  # not even every frame fast
    assert bench.max_slow_share(0.3, 0.15, 0.08, 0.02, 1.5) == 1.0  # every frame slow still fast enough
    assert bench.max_slow_share(0.3, 0.08, 0.10, 0.02, 1.5) == 1.0  # a "slow" branch no slower
