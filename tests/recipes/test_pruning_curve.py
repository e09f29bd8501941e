"""benchmarks/pruning_curve.py: the chord of an AmNet's branches, its routing gain and the convexity gap, by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_script(REPO / "benchmarks" / "pruning_curve.py", "bench_pruning_curve")


def _record(errors: list[int], flops: float, density: float, routed: bool = False, slow_share: float = 0.0) -> dict:
    return {"utt_ids": ["a", "b", "c", "d"], "utt_words": [10, 10, 10, 10], "density": density, "routed": routed,
            "fast": "sparse" if routed else None,
            "per_rho": {"1.5": {"flops_per_frame": flops, "wer": sum(errors) / 40, "utt_errors": errors,
                                "slow_share": slow_share}}}


def test_chord_routing_gain_and_convexity_gap(bench) -> None:
    amnet = {"rho_train": 1.5, "variants": {
        "slow_only": _record([1, 1, 1, 1], 100.0, 1.0),  # 10 %
        "sparse_single": _record([1, 1, 1, 2], 60.0, 0.6),  # 12.5 % at the AmNet's FLOPs
        "amnet_sparse": _record([1, 2, 2, 1], 60.0, 0.4, routed=True, slow_share=1 / 3),  # 15 %
    }}
    singles = {0.4: _record([2, 2, 2, 2], 40.0, 0.4)}  # 20 %: the fast branch's density
    out = bench.analyse(amnet, singles)
    assert [p["name"] for p in out["curve"]] == ["slow_only", "sparse_single", "sparse_single_d0.4"]
    a = out["amnets"]["amnet_sparse"]
    chord = 0.1 / 3 + 0.2 * 2 / 3  # 16.67 %
    assert a["chord_wer"] == pytest.approx(chord)
    assert a["routing_gain"] == pytest.approx(chord - 0.15)
    assert a["single_wer_at_mean_flops"] == pytest.approx(0.125)
    assert a["convexity_gap"] == pytest.approx(chord - 0.125)
    lo, hi = a["routing_gain_ci95"]
    assert lo <= a["routing_gain"] <= hi
    assert bench.interpolate(out["curve"], 50.0) == pytest.approx((0.2 + 0.125) / 2)
    with pytest.raises(ValueError, match="outside the measured curve"):
        bench.interpolate(out["curve"], 20.0)
    singles[0.4]["utt_ids"] = ["a", "b", "c", "e"]
    with pytest.raises(ValueError, match="other utterances"):
        bench.analyse(amnet, singles)


def test_densities_outside_zero_one_are_refused(bench, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--amnet-results", "x.json", "--densities", "1.0"])
    assert "--densities must be in (0, 1)" in capsys.readouterr().err
