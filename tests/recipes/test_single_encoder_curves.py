"""benchmarks/single_encoder_curves.py: the chord of an AmNet's branches, its routing gain and the convexity gap."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_script(REPO / "benchmarks" / "single_encoder_curves.py", "bench_single_encoder_curves")


def _record(errors: list[int], flops: float, fast: str | None = None, density: float | None = None,
            rank: int | None = None, routed: bool = False, slow_share: float = 0.0) -> dict:
    return {"utt_ids": ["a", "b", "c", "d"], "utt_words": [10, 10, 10, 10], "density": density, "rank": rank,
            "routed": routed, "fast": fast,
            "per_rho": {"1.5": {"flops_per_frame": flops, "wer": sum(errors) / 40, "utt_errors": errors,
                                "slow_share": slow_share}}}


def test_chord_routing_gain_and_convexity_gap_on_both_curves(bench) -> None:
    amnet = {"rho_train": 1.5, "variants": {
        "slow_only": _record([1, 1, 1, 1], 100.0),  # 10 %
        "sparse_single": _record([1, 1, 1, 2], 60.0, "sparse", density=0.6),  # 12.5 % at the AmNet's FLOPs
        "amnet_sparse": _record([1, 2, 2, 1], 60.0, "sparse", density=0.4, routed=True, slow_share=1 / 3),  # 15 %
        "factorized_single": _record([2, 2, 1, 2], 60.0, "lowrank", rank=20),  # 17.5 %
        "amnet_factorized": _record([1, 2, 1, 2], 60.0, "lowrank", rank=10, routed=True, slow_share=1 / 3),  # 15 %
    }}
    singles = {"sparse": {0.4: _record([2, 2, 2, 2], 40.0, "sparse", density=0.4)},  # 20 %: the fast branch
               "lowrank": {10: _record([2, 2, 2, 2], 40.0, "lowrank", rank=10)}}
    out = bench.analyse(amnet, singles)
    assert [p["name"] for p in out["curves"]["sparse"]] == ["slow_only", "sparse_single", "sparse_single_0.4"]
    assert [p["name"] for p in out["curves"]["lowrank"]] == ["slow_only", "factorized_single", "factorized_single_10"]
    chord = 0.1 / 3 + 0.2 * 2 / 3  # 16.67 %
    for name, at_mean in (("amnet_sparse", 0.125), ("amnet_factorized", 0.175)):
        a = out["amnets"][name]
        assert a["chord_wer"] == pytest.approx(chord)
        assert a["routing_gain"] == pytest.approx(chord - 0.15)
        assert a["single_wer_at_mean_flops"] == pytest.approx(at_mean)
        assert a["convexity_gap"] == pytest.approx(chord - at_mean)  # < 0 for the factorized one: a concave curve
        lo, hi = a["routing_gain_ci95"]
        assert lo <= a["routing_gain"] <= hi
        lo, hi = a["convexity_gap_ci95"]
        assert lo <= a["convexity_gap"] <= hi
    assert bench.interpolate(out["curves"]["sparse"], 50.0) == pytest.approx((0.2 + 0.125) / 2)
    with pytest.raises(ValueError, match="outside the measured curve"):
        bench.interpolate(out["curves"]["sparse"], 20.0)
    singles["sparse"][0.4]["utt_ids"] = ["a", "b", "c", "e"]
    with pytest.raises(ValueError, match="other utterances"):
        bench.analyse(amnet, singles)


@pytest.mark.parametrize("args", [["--densities", "1.0"], ["--ranks", "0"], []])
def test_bad_or_missing_sizes_are_refused(bench, capsys, args: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--amnet-results", "x.json", *args])
    assert "--densities" in capsys.readouterr().err


def test_a_single_encoder_trained_with_other_settings_is_not_reused(bench) -> None:
    meta = {"root": "data/synthetic", "base_checkpoint": "runs/base/x/base.ckpt", "train_utterances": 4000,
            "epochs": 8, "lr": 1e-3, "seed": 1, "quick": False}
    same = {"options": {**bench.expected_options(meta), "fast_rank": None}}
    assert bench.reuse_problem(same, meta) is None and bench.reuse_problem({}, meta) is None  # old records: reused
    other = {"options": {**bench.expected_options(meta), "seed": 0, "epochs": 3}}
    assert bench.reuse_problem(other, meta) == "epochs=3 (wanted 8), seed=0 (wanted 1)"


def test_jobs_read_paths_from_the_repository_and_a_run_without_a_base(bench) -> None:
    meta = {"root": "data/synthetic", "base_checkpoint": None, "train_utterances": 10, "epochs": 1, "lr": 1e-3,
            "seed": 0, "quick": True}
    cmd = bench.job_command(meta, "sparse", 0.5, Path("/tmp/w"))
    assert cmd[cmd.index("--base-ckpt") + 1] == "none" and cmd[-1] == "--quick"
    assert cmd[cmd.index("--root") + 1] == str(REPO / "data" / "synthetic")
    assert bench.expected_options(meta)["root"] == str(REPO / "data" / "synthetic")
    assert bench._root({"command": "python benchmarks/amnet.py --root=/data/x --epochs 1"}) == "/data/x"


def test_a_requested_size_equal_to_the_matched_single_interpolates_one_way(bench) -> None:
    curve = [{"flops_per_frame": 60.0, "wer": 0.125, "utt_errors": [1, 1, 1, 2]},
             {"flops_per_frame": 60.0, "wer": 0.1, "utt_errors": [1, 1, 1, 1]},
             {"flops_per_frame": 100.0, "wer": 0.1, "utt_errors": [1, 1, 1, 1]}]
    assert bench.interpolate(curve, 60.0) == pytest.approx(sum(bench.interpolate_errors(curve, 60.0)) / 40)


def test_a_missing_or_foreign_results_file_is_named(bench, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"variants": {}}')
    for path, message in ((tmp_path / "none.json", "cannot read --amnet-results"),
                          (other, "not a benchmarks/amnet.py results file")):
        with pytest.raises(SystemExit):
            bench.main(["--amnet-results", str(path), "--densities", "0.5"])
        assert message in capsys.readouterr().err
