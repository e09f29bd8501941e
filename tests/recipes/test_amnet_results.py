"""benchmarks/amnet.py: test-other scored once per variant, old results still render, the issue's checks."""

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
OLD_RESULTS = [REPO / "docs" / "results" / "amnet_load_aware.json"]  # a run from before test-other


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
    # the report names the plots of its own results file
    assert "`amnet_eou_trace.png`" in amnet.render_markdown(summary, "amnet_eou")


RHOS = ("0.5", "1.0", "1.5", "2.0", "2.5")


def _record(name: str, errors: list[int], p90: list[float], share: float, flops: float, ms: float,
            **extra) -> dict:
    words = [10] * len(errors)
    wer = sum(errors) / sum(words)
    per_rho = {rho: {"wer": wer, "cer": wer / 3, "flops_per_frame": flops, "slow_share": share,
                     "utt_errors": list(errors), "decision_confidence": 1.0,
                     "eou_ms": {"p50": v, "p90": v, "max": v}} for rho, v in zip(RHOS, p90)}
    return {"name": name, "label": name, "routed": name.startswith("amnet"), "per_rho": per_rho,
            "utt_ids": [f"u{i}" for i in range(len(errors))], "utt_words": words, "ms_per_frame_streaming": ms,
            "rtf": ms / 30, "train_sharpness": 1.0, "lambda_cost": 0.3, "lambda_amr": 1.0, "rank": None,
            "density": None, "trace": {}, "trace_utterance": "u0", "streaming_code": 2, **extra}


def _done() -> dict:
    slow = [1] * 20
    return {
        "slow_only": _record("slow_only", slow, [15, 30, 1700, 3400, 5100], 1.0, 3e6, 1.0),
        "amnet_factorized": _record("amnet_factorized", [1] * 18 + [2, 2], [6, 11, 17, 420, 900], 0.35, 1.8e6,
                                    0.4, load_aware=False),
        "factorized_single": _record("factorized_single", [2] * 20, [9, 18, 27, 700, 1700], 0.0, 1.8e6, 0.5),
        "amnet_factorized_no_amr": _record("amnet_factorized_no_amr", [1] * 20, [6, 11, 500, 900, 1400], 0.5,
                                           2.2e6, 0.45),
    }


def _summary(amnet, done: dict) -> dict:
    from types import SimpleNamespace

    a = SimpleNamespace(train_utts=4000, epochs=8, lr=1e-3, seed=0, fast_rank=128, fast_density=None, branch_loss_weight=None,
                        quick=False, workers=2)
    return amnet.summarize(done, "base.ckpt", a, 0.0, [])


def test_amnet_is_checked_against_its_flops_matched_single_on_every_device(amnet) -> None:
    s = _summary(amnet, _done())
    net = s["variants"]["amnet_factorized"]
    assert net["matched_single"] == "factorized_single"
    for rho in RHOS:
        p = net["per_rho"][rho]
        assert p["wer_rel_vs_single"] == pytest.approx(0.11 / 0.2 - 1.0)
        low, high = p["ci95_wer_rel_vs_single"]
        assert low <= p["wer_rel_vs_single"] <= high < 0  # resolved: fewer errors on every utterance but two
    t = s["targets"]
    assert t["dominance"]["met"] and t["dominance"]["per_variant"]["amnet_factorized"]["single"] == "factorized_single"
    assert t["ablation"]["met"]  # 50 % slow frames, p90 500 ms against 17 ms with the penalty
    assert set(t["latency"]["p90_ms"]["amnet_factorized"]) == {"1.5", "2.0", "2.5"}  # where slow-only lags > 1 s
    assert not t["latency"]["met"]["amnet_factorized"]  # 17 ms at rho = 1.5
    assert t["wallclock"]["speedup"]["amnet_factorized"] == pytest.approx(2.5) and t["wallclock"]["met"]
    # timings from before every encoder streamed through the same kernels are not set against each other
    stale = _done()
    del stale["slow_only"]["streaming_code"]
    w = _summary(amnet, stale)["targets"]["wallclock"]
    assert w["met"] is None and "NOT COMPARABLE" in w["target"]
    assert "**not comparable**" in amnet.render_markdown(_summary(amnet, stale), "x")
    assert "each variant timed at the end of its own training job" in t["wallclock"]["target"]
    md = amnet.render_markdown(s)
    assert "## AmNet against the single encoder of the same mean FLOPs/frame" in md
    assert "-45.0% [" in md and "; 420.0 / 700.0 |" in md

    done = _done()  # slower than the single encoder at rho = 2: not dominant, and the row says where
    done["amnet_factorized"]["per_rho"]["2.0"]["eou_ms"]["p90"] = 800.0
    done["amnet_factorized_no_amr"]["per_rho"]["1.5"]["slow_share"] = 0.1  # the ablation must keep 20 % slow
    t = _summary(amnet, done)["targets"]
    assert not t["dominance"]["met"] and not t["ablation"]["met"]
    assert "rho 2.0: WER -45.0%, p90 800.0 vs 700.0 ms" in amnet.render_markdown(_summary(amnet, done))


def test_load_aware_check_uses_the_floor_and_the_wer_ordering(amnet) -> None:
    done = _done()
    la = _record("amnet_factorized_load_aware", [1] * 20, [2.2, 4.4, 6.6, 8.8, 11.0], 0.4, 1.6e6, 0.4,
                 load_aware=True, floor_ms={rho: 2.2 * float(rho) / 0.5 for rho in RHOS})
    la["per_rho"]["0.5"]["wer"], la["per_rho"]["2.5"]["wer"] = 0.05, 0.09
    done["amnet_factorized_load_aware"] = la
    t = _summary(amnet, done)["targets"]["load_aware"]
    assert t["met"] and t["per_variant"]["amnet_factorized_load_aware"]["p90_over_floor"]["2.5"] == pytest.approx(1.0)
    la["per_rho"]["2.5"]["eou_ms"]["p90"] = 30.0  # 2.7x the floor
    assert not _summary(amnet, done)["targets"]["load_aware"]["met"]


def test_final_checkpoint_is_the_one_with_most_steps(amnet, tmp_path: Path) -> None:
    d = tmp_path / "v" / "checkpoints"
    d.mkdir(parents=True)
    for name, step in (("last.ckpt", 2200), ("last-v1.ckpt", 2304), ("best-epoch=6.ckpt", 2016)):
        torch.save({"global_step": step}, d / name)
    assert amnet.final_checkpoint(tmp_path / "v").name == "last-v1.ckpt"
    torch.save({"global_step": 2310}, tmp_path / "v" / "final.ckpt")  # written after fit: the weights scored
    assert amnet.final_checkpoint(tmp_path / "v") == tmp_path / "v" / "final.ckpt"
    with pytest.raises(FileNotFoundError, match="this --work folder"):
        amnet.final_checkpoint(tmp_path / "missing")


def test_seed_table_gathers_the_same_variants_from_other_seeds(amnet, tmp_path: Path) -> None:
    s = _summary(amnet, _done())
    other = _done()  # seed 1: the AmNet one error worse on two utterances
    other["amnet_factorized"]["per_rho"]["1.5"]["wer"] = 0.12
    (tmp_path / "amnet.json").write_text(json.dumps({"seed": 1}))
    for name in ("amnet_factorized", "factorized_single", "slow_only"):
        (tmp_path / f"{name}.json").write_text(json.dumps(other[name]))
    t = amnet.seed_table(s, [tmp_path])
    assert t["seeds"] == ["0", "1"]
    row = t["variants"]["amnet_factorized"]
    assert row["wer"] == {"0": pytest.approx(0.11), "1": pytest.approx(0.12)}
    assert row["wer_rel_vs_single"]["1"] == pytest.approx(0.12 / 0.2 - 1)
    assert t["variants"]["amnet_factorized_no_amr"]["wer"].keys() == {"0"}  # not run with seed 1
    s["seeds"] = t
    md = amnet.render_markdown(s)
    assert "| amnet_factorized | 11.00% (-45.0%) | 12.00% (-40.0%) | 11.50% |" in md
    with pytest.raises(ValueError, match="repeats seed 0"):
        (tmp_path / "amnet.json").write_text(json.dumps({"seed": 0}))
        amnet.seed_table(s, [tmp_path])


def test_seed_work_without_a_finished_run_is_explained(amnet, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no amnet.json: pass the --work folder"):
        amnet.seed_table(_summary(amnet, _done()), [tmp_path])


def test_rescore_recomputes_the_intervals_of_a_results_file_and_refuses_others(amnet, tmp_path: Path) -> None:
    """``--rescore`` rewrites the intervals and targets from the per-utterance errors; measurements stay."""
    summary = _summary(amnet, _done())
    summary["seeds"] = {"seeds": [], "variants": {}}
    done = summary["variants"]
    stale = [-0.5, 0.5]  # what an older interval method might have left
    done["amnet_factorized"]["ci95_wer_rel"] = stale
    done["amnet_factorized"]["per_rho"]["1.5"]["ci95_wer_rel"] = stale
    done["amnet_factorized"]["per_rho"]["1.5"]["ci95_wer_rel_vs_single"] = stale
    done["fast_only_without_errors"] = json.loads(json.dumps(done["factorized_single"]))
    del done["fast_only_without_errors"]["per_rho"]["1.5"]["utt_errors"]  # no errors: no interval, not the old one
    done["fast_only_without_errors"]["per_rho"]["1.5"]["ci95_wer_rel"] = stale
    summary["targets"] = {}
    path = tmp_path / "amnet.seed1.json"  # a dotted name: the file itself is rewritten, not amnet.json
    path.write_text(json.dumps(summary))
    assert amnet.main(["--rescore", str(path)]) == 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["amnet.seed1.json", "amnet.seed1.md"]
    after = json.loads(path.read_text())
    net = after["variants"]["amnet_factorized"]
    assert net["ci95_wer_rel"] != stale and net["ci95_wer_rel"][0] <= 0.1 <= net["ci95_wer_rel"][1]  # 22 vs 20 errors
    assert net["per_rho"]["1.5"]["wer"] == done["amnet_factorized"]["per_rho"]["1.5"]["wer"]
    low, high = net["per_rho"]["1.5"]["ci95_wer_rel_vs_single"]
    assert [low, high] != stale and low <= net["per_rho"]["1.5"]["wer_rel_vs_single"] <= high
    assert "ci95_wer_rel" not in after["variants"]["fast_only_without_errors"]["per_rho"]["1.5"]
    assert after["targets"]["dominance"]["met"]  # recomputed, not the emptied ones
    assert after["rescored"].endswith(str(path)) and "recomputed" in (tmp_path / "amnet.seed1.md").read_text()
    with pytest.raises(ValueError, match="results .json"):
        amnet.main(["--rescore", str(tmp_path / "amnet.seed1.md")])
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"benchmark": "benchmarks/diff_updates.py"}))
    with pytest.raises(ValueError, match="not a results file of benchmarks/amnet.py"):
        amnet.main(["--rescore", str(bad)])
    bad.write_text("{trunc")
    with pytest.raises(ValueError, match="not JSON"):
        amnet.main(["--rescore", str(bad)])


GUARD_RESULTS = sorted((REPO / "docs" / "results").glob("amnet_guard*.json"))


@pytest.mark.parametrize("path", GUARD_RESULTS, ids=[p.stem for p in GUARD_RESULTS])
def test_published_guarded_variants_keep_every_utterance_within_the_guard(path: Path) -> None:
    """The latency guard's guarantee, on the published runs: max EOU <= factor x floor where the floor is real time."""
    summary = json.loads(path.read_text())
    guarded = {n: r for n, r in summary["variants"].items() if r.get("latency_guard")}
    assert guarded
    for name, r in guarded.items():
        assert r["evaluates"] in summary["variants"] or r.get("evaluates") is None, name
        for rho, p in r["per_rho"].items():
            floor = r["floor_ms"][rho]
            if floor <= summary["frame_ms"]:
                assert p["eou_ms"]["max"] <= r["latency_guard"] * floor * (1 + 1e-5), (name, rho)


def test_guard_table_sets_each_guarded_variant_beside_its_source(amnet) -> None:
    done = _done()
    floors = {rho: 2.2 * float(rho) / 0.5 for rho in RHOS}
    src = "amnet_factorized_load_aware_eou"
    done[src] = _record(src, [1] * 20, [2.2, 4.4, 6.6, 30.0, 40.0], 0.4, 1.6e6, 0.4, load_aware=True,
                        floor_ms=floors)
    g = _record(f"{src}_guard3", [1] * 18 + [2, 2], [2.2, 4.4, 6.6, 8.8, 11.0], 0.3, 1.5e6,
                0.4, load_aware=True, floor_ms=floors, latency_guard=3.0, evaluates=src)
    for p in g["per_rho"].values():
        p["guard_overridden_share"] = 0.025
    done[f"{src}_guard3"] = g
    md = amnet.render_markdown(_summary(amnet, done))
    assert "## Latency guard (the same weights, guard off / on)" in md
    assert "are not trained: they score the final weights of the variant they name" in md
    table = md.split("## Latency guard")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith(f"| {src} |")]
    assert [r.split(" | ")[1] for r in rows] == ["off", "3x"]
    # 20 errors in 200 words; p90 / max over the floor (30 ms over 8.8 ms at rho 2)
    assert rows[0].endswith("| 10.00%; 1.00 / 1.00; 0.0% | 10.00%; 3.41 / 3.41; 0.0% | 10.00%; 3.64 / 3.64; 0.0% |")
    assert rows[1].endswith("| 11.00%; 1.00 / 1.00; 2.5% | 11.00%; 1.00 / 1.00; 2.5% |")


@pytest.mark.parametrize("args", [["--fast-density", "0"], ["--fast-density", "1.5"], ["--fast-rank", "0"]])
def test_bad_fast_branch_settings_are_refused_before_any_job(amnet, args: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        amnet.main([*args, "--base-ckpt", "none", "--work", "/nonexistent/never-created"])
    assert "must be" in capsys.readouterr().err


def test_resume_refuses_a_variant_made_with_other_options(amnet, tmp_path: Path, capsys) -> None:
    """--resume reused any finished variant of the work folder, whatever seed, epochs or rank it was made with."""
    args = ["--base-ckpt", "none", "--work", str(tmp_path), "--variants", "slow_only", "--resume", "--seed", "7",
            "--epochs", "1", "--train-utts", "10", "--root", str(tmp_path / "corpus")]
    record = {"name": "slow_only", "options": dict(amnet.job_options(amnet.build_parser().parse_args(args), None),
                                                   seed=0, epochs=8)}
    (tmp_path / "slow_only.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match=r"other options \(epochs=8, seed=0; now epochs=1, seed=7\)"):
        amnet.main(args)
    # without --resume a finished variant is not trained again and replaced unless --overwrite says so
    args.remove("--resume")
    with pytest.raises(SystemExit, match=r"holds finished variants \(slow_only\).*--overwrite"):
        amnet.main(args)
    assert json.loads((tmp_path / "slow_only.json").read_text()) == record  # nothing lost


def test_resume_reuses_slow_only_whatever_the_fast_branch_options(amnet, tmp_path: Path) -> None:
    """Slow-only reads no fast-branch or routing option; an AmNet with another fast density is refused."""
    args = ["--base-ckpt", "none", "--work", str(tmp_path), "--fast-density", "0.6", "--lambda-cost", "0.3"]
    wanted = amnet.job_options(amnet.build_parser().parse_args(args), None)
    had = dict(wanted, fast_density=0.3758, lambda_cost=None)
    amnet.check_reusable("slow_only", had, wanted, tmp_path / "slow_only.json")  # no error
    with pytest.raises(SystemExit, match=r"fast_density=0.3758, lambda_cost=None; now fast_density=0.6"):
        amnet.check_reusable("amnet_sparse", had, wanted, tmp_path / "amnet_sparse.json")
    with pytest.raises(SystemExit, match=r"seed=1; now seed=0"):
        amnet.check_reusable("slow_only", dict(had, seed=1), wanted, tmp_path / "slow_only.json")
