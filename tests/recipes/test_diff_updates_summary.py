"""benchmarks/diff_updates.py on made-up recipe results: seeds pooled utterance by utterance, the
regime check of issue 10, paired intervals against full fine-tuning, equal-bytes targets, reuse
of finished runs, and the results file kept small."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "diff_updates.py"
WORDS = {"test": [5, 5, 10], "update-1-test": [4, 6], "update-2-test": [5, 5]}


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "bench_diff_updates_summary")


def _eval(errors: dict[str, list[int]]) -> dict[str, dict]:
    out = {}
    for split, errs in errors.items():
        words = WORDS[split]
        out[split] = {"wer": sum(errs) / sum(words), "cer": 0.5 * sum(errs) / sum(words), "wer_ci95": [0.0, 1.0],
                      "words": sum(words), "utterance_errors": errs, "utterance_words": words}
    return out


def _result(method: str, seed: int, after: list[dict[str, list[int]]], budget=0.1, file_bytes=(100, 120)) -> dict:
    base = {"test": [1, 1, 2], "update-1-test": [2, 4], "update-2-test": [3, 3]}  # 40 %, 60 %, 60 % WER
    return {
        "config": {"method": method, "seed": seed, "budget": budget, "test_split": "test", "test_other_split": None},
        "lr": 1e-3, "full_checkpoint_bytes": 1000, "total_seconds": 10.0,
        "base_eval": _eval(base),
        "updates": [{"update": k + 1, "eval": _eval(ev), "file_bytes": file_bytes[k], "stored_entries": 10,
                     "fit_seconds": 1.0} for k, ev in enumerate(after)],
        "chain": {"links": 2, "bit_exact_vs_trained": True, "max_abs_error_vs_trained": 0.0, "equals_shipped": True,
                  "hash_links_ok": True},
    }


def _runs() -> dict[str, list[dict]]:
    # full fine-tuning: update 1 takes its split from 60 % to 20 %, update 2 from 60 % to 30 %; test 40 -> 40 %
    full = [_result("full", s, [{"test": [1, 1, 2], "update-1-test": [1, 1], "update-2-test": [3, 3]},
                                {"test": [1, 1, 2], "update-1-test": [1, 1], "update-2-test": [1, 2]}],
                    budget=0.1, file_bytes=(1000, 1000)) for s in (0, 1)]
    # the sparse diff: seed 0 one error more than full on utterance 0 of update-1-test, seed 1 the same as full
    sparse = [_result("sparse", s, [{"test": [1, 1, 2], "update-1-test": [1, 1], "update-2-test": [3, 3]},
                                    {"test": [1, 1, 2], "update-1-test": [1 + (s == 0), 1], "update-2-test": [1, 2]}],
                      budget=50, file_bytes=(48, 50)) for s in (0, 1)]
    lora = [_result("lora", 0, [{"test": [1, 1, 2], "update-1-test": [1, 1], "update-2-test": [3, 3]},
                                {"test": [2, 1, 2], "update-1-test": [3, 3], "update-2-test": [3, 3]}])]
    lora[0]["updates"][-1]["budget_bytes"] = lora[0]["updates"][0]["budget_bytes"] = 50
    return {"full": full, "sparse-b10": sparse, "lora-10": lora}


def test_seeds_are_pooled_and_compared_with_full_fine_tuning_on_the_same_utterances(bench) -> None:
    summary = bench.summarize(_runs())
    final = summary["after_last_update"]
    # new-entity WER: both update-k-test splits together (20 words), seed mean of per-utterance errors
    assert final["full"]["new_entity_wer"] == pytest.approx(5 / 20)
    assert final["sparse-b10"]["new_entity_wer"] == pytest.approx(5.5 / 20)
    assert final["sparse-b10"]["base_test_wer"] == pytest.approx(0.2)
    assert final["sparse-b10"]["seeds"] == [0, 1] and final["sparse-b10"]["bytes"] == pytest.approx(49)
    low, high = final["sparse-b10"]["ci95"]["new_entity_wer"]
    assert low <= 5.5 / 20 <= high
    rel = final["sparse-b10"]["rel_vs_full"]
    assert rel["new_entity_wer"]["value"] == pytest.approx(0.1)  # 0.5 more errors in 5
    assert rel["base_test_wer"]["value"] == 0 and rel["base_test_wer"]["ci95"] == [0, 0]
    lo, hi = rel["new_entity_wer"]["ci95"]
    assert 0 <= lo <= 0.1 <= hi  # never below 0: sparse is nowhere better on any utterance
    # the interval is the paired ratio bootstrap of the seed means (errors averaged utterance by utterance)
    from lightning_amortized.scoring import bootstrap_wer, bootstrap_wer_relative

    words = WORDS["update-1-test"] + WORDS["update-2-test"]
    mine, full = [1.5, 1, 1, 2], [1, 1, 1, 2]
    assert [lo, hi] == pytest.approx(list(bootstrap_wer_relative(mine, full, words, seed=0)[1:]))
    assert final["sparse-b10"]["ci95"]["new_entity_wer"] == pytest.approx(list(bootstrap_wer(mine, words, seed=0)[1:]))
    assert "rel_vs_full" not in final["full"]
    # rows keep every seed
    assert sorted({(r["method"], r["seed"]) for r in summary["rows"]}) == [
        ("full", 0), ("full", 1), ("lora-10", 0), ("sparse-b10", 0), ("sparse-b10", 1)]


def test_regime_and_targets(bench) -> None:
    summary = bench.summarize(_runs())
    reg = summary["regime"]
    assert reg["new_entity_wer_base"] == pytest.approx(0.6)
    assert reg["new_entity_wer_full_after"] == pytest.approx((0.2 + 0.3) / 2)
    assert [u["ratio"] for u in reg["per_update"]] == pytest.approx([1 / 3, 0.5])
    assert reg["halves_every_update"] and reg["forgetting_rel"] == 0 and reg["met"]
    by = {t["target"]: t for t in summary["targets"]}
    assert by[next(k for k in by if k.startswith("regime"))]["met"]
    assert not by["sparse-b10: new-entity WER (update-k-test splits) after the last update within 1% relative of full FT"][
        "met"]
    assert by["sparse-b10: base test WER after the last update within 1% relative of full FT"]["met"]
    better = by["sparse diff better than lora-10 at 10% of the checkpoint's bytes after the last update (means over "
                "seeds; paired 95 % intervals of the sparse diff's WER relative to the peer's)"]
    assert better["met"]
    vs = summary["after_last_update"]["sparse-b10"]["rel_vs_peers"]["lora-10"]
    assert vs["new_entity_wer"]["value"] == pytest.approx(5.5 / 12 - 1)  # 5.5 errors against 12 on the same words
    assert vs["base_test_wer"]["value"] == pytest.approx(4 / 5 - 1)
    lo, hi = vs["new_entity_wer"]["ci95"]
    assert lo <= 5.5 / 12 - 1 <= hi < 0  # fewer errors on every utterance: resolved
    assert f"({100 * (5.5 / 12 - 1):+.1f}% [" in better["measured"]
    assert by["sparse-b10: every update's shipped file(s) within the byte budget"]["met"]  # 50 of 50 bytes
    # a full run that does not halve an update's own split fails the regime
    runs = _runs()
    for res in runs["full"]:
        res["updates"][1]["eval"]["update-2-test"] = _eval({"update-2-test": [2, 2]})["update-2-test"]
    assert not bench.summarize(runs)["regime"]["met"]


def test_report_and_results_file(bench, tmp_path: Path) -> None:
    runs = _runs()
    summary = bench.summarize(runs)
    meta = {"command": "c", "base": "b", "root": "r", "full_checkpoint_bytes": 1000, "updates": 2, "epochs": 1,
            "update_utterances": None, "replay_utterances": 4, "seconds": 1.0, "cpu_count": 2, "jobs": 1,
            "seeds": [0, 1], "base_wer": 0.4, "base_wer_by_split": {"test": 0.4, "update-1-test": 0.6,
                                                                    "update-2-test": 0.6},
            "test_split": "test", "eval_sizes": {"test": 3}, "lr": {"sparse": 1e-3}}
    md = bench.markdown(summary, meta)
    assert "## Regime check" in md and "Regime met: yes" in md
    assert "| sparse diff 10 % of the checkpoint, fp16 | 0.001 | 49 | 4.90 | 27.50 [" in md
    bench.plot(summary, meta, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    slim = bench._slim(runs)
    assert "utterance_errors" not in json.dumps(slim) and len(slim["full"]) == 2
    # a results file written from slim runs renders again without re-summarizing
    data = {"meta": meta, **summary, "runs": slim}
    (tmp_path / "d.json").write_text(json.dumps(data, default=lambda x: x.tolist() if isinstance(x, np.ndarray) else x))
    assert bench.main(["--from-json", str(tmp_path / "d.json")]) == 0
    assert "Regime met: yes" in (tmp_path / "d.md").read_text()


def test_runs_scored_on_other_utterances_are_refused(bench) -> None:
    runs = _runs()
    ev = runs["sparse-b10"][1]["updates"][-1]["eval"]["test"]
    ev["utterance_words"] = [5, 10, 5]  # same total, other utterances
    with pytest.raises(ValueError, match="same utterances"):
        bench.summarize(runs)
    runs = _runs()
    runs["lora-10"][0]["updates"][-1]["eval"]["test"]["utterance_words"] = [5, 10, 5]
    with pytest.raises(ValueError, match="same utterances"):
        bench.summarize(runs)
    # the same word counts but other utterance ids (runs that record them)
    runs = _runs()
    for name, h in (("full", "a"), ("lora-10", "b")):
        for res in runs[name]:
            res["updates"][-1]["eval"]["test"]["utterance_ids_sha256"] = h
    with pytest.raises(ValueError, match="same utterances"):
        bench.summarize(runs)
    runs["lora-10"][0]["updates"][-1]["eval"]["test"]["utterance_ids_sha256"] = "a"
    bench.summarize(runs)  # sparse-b10 predates the hashes: compared on word counts


def test_learning_rates_and_reuse(bench, tmp_path: Path) -> None:
    assert bench.parse_per_method(["full=5e-4", "sparse=0.001"]) == {"full": 5e-4, "sparse": 1e-3}
    for bad in ("full", "nope=1e-3", "full=-1", "full=x", "full=0", "full=inf"):
        with pytest.raises(ValueError, match="METHOD=VALUE"):
            bench.parse_per_method([bad])
    with pytest.raises(ValueError, match="twice"):
        bench.parse_per_method(["full=1e-3", "full=2e-3"])
    for argv in (["--seeds", "0", "0"], ["--methods", "full", "full"]):
        with pytest.raises(SystemExit):
            bench.main([*argv, "--base", "b.ckpt"])
    assert bench.parse_per_method(["sparse=0"], zero_ok=True) == {"sparse": 0.0}  # an anchor of 0 is off
    cmd = bench.recipe_command("hashed-b5", 0, [], Path("o"), {"bytes_5": "5"}, {}, {"hashed": 3e-4, "sparse": 1.0})
    assert cmd[cmd.index("--anchor") + 1] == "0.0003" and "--lr" not in cmd
    with pytest.raises(SystemExit):
        bench.main(["--lr", "full", "--from-json", "x.json"])
    # a finished run is reused only when it ran with the same options
    recipe = bench._recipe()
    cmd = bench.recipe_command("sparse-b2", 0, ["--base", "b.ckpt", "--epochs", "4"], tmp_path, {"bytes_2": "2000"},
                               {"sparse": 1e-3})
    a = recipe.build_parser().parse_args(cmd[2:])
    import dataclasses

    cfg = recipe.UpdateConfig(**{f: getattr(a, f) for f in recipe.UpdateConfig.__dataclass_fields__})
    res = {"config": json.loads(json.dumps(dataclasses.asdict(cfg))), "chain": {},
           "updates": [{"eval": {"test": {"wer": 0.1, "utterance_errors": [1], "utterance_words": [10]}}}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert bench.reusable(cmd, path) == res
    for seed, lrs in ((1, {"sparse": 1e-3}), (0, {"sparse": 2e-3}), (0, {})):  # another seed or learning rate
        other = bench.recipe_command("sparse-b2", seed, ["--base", "b.ckpt", "--epochs", "4"], tmp_path,
                                     {"bytes_2": "2000"}, lrs)
        assert bench.reusable(other, path) is None
    # a run made before an option existed had that option's default: still reused, unless the option is set
    older = json.loads(json.dumps(res))
    del older["config"]["replay_earlier"]
    path.write_text(json.dumps(older))
    assert bench.reusable(cmd, path) == older
    assert bench.reusable([*cmd, "--replay_earlier", "100"], path) is None
    assert bench.changed_options([*cmd, "--replay_earlier", "100"], older) == {"replay_earlier": (0, 100)}
    del older["config"]["test_other_split"]  # a run from before test-other was scored: its default would lie
    assert bench.changed_options(cmd, older) == {"test_other_split": (None, "test-other")}
    path.write_text(json.dumps(res))
    assert bench.reusable(cmd, tmp_path / "missing.json") is None
    (tmp_path / "cut.json").write_text(json.dumps(res)[:50])  # killed while writing
    assert bench.reusable(cmd, tmp_path / "cut.json") is None
    old = json.loads(json.dumps(res))
    del old["updates"][0]["eval"]["test"]["utterance_errors"]  # an older recipe: no intervals possible
    path.write_text(json.dumps(old))
    assert bench.reusable(cmd, path) is None
    path.write_text(json.dumps({k: v for k, v in res.items() if k != "chain"}))  # unfinished
    assert bench.reusable(cmd, path) is None


def test_every_configuration_given_a_byte_budget_is_checked_against_it(bench) -> None:
    """sparse-fisher-bB got --budget {bytes_B} but no budget check (it is not one of the peer families)."""
    assert bench._sized_in_bytes("sparse-fisher-b10") and bench._sized_in_bytes("sparse-b10")
    assert bench._sized_in_bytes("lora-5") and not bench._sized_in_bytes("hashed") and not bench._sized_in_bytes("full")


def test_int8_sparse_diffs_at_equal_bytes_are_a_family_of_their_own(bench) -> None:
    label, conf, args = bench.CONFIGS["sparse-int8-b10"]
    assert bench.method_of("sparse-int8-b10") == "sparse" and args[args.index("--value_dtype") + 1] == "int8"
    assert bench._family("sparse-int8-b10") == "sparse-int8-b" and bench._family("sparse-b10") == "sparse-b"
    assert bench._sized_in_bytes("sparse-int8-b10")
    final = dict.fromkeys(["sparse-b10", "sparse-int8-b10", "lora-10", "sparse-int8-b2"])
    assert bench.peer_pairs(final) == [(10, "sparse-b10", "lora-10"), (10, "sparse-int8-b10", "lora-10")]


def test_a_finished_chain_is_not_replaced_by_a_run_with_other_options(bench, tmp_path: Path, monkeypatch) -> None:
    """A mistyped invocation on a --work folder must not destroy a finished chain of 40 minutes."""
    import dataclasses

    import lightning_amortized.experiment as experiment

    started = []
    def run_jobs(runs, *args, done=None, **kwargs):  # runs what is not done, as experiment.run_jobs does
        fresh = [r for r in runs if r.name not in (done or {})]
        started.extend(fresh)
        return {**{r.name: {"rerun": True} for r in fresh}, **(done or {})}

    monkeypatch.setattr(experiment, "run_jobs", run_jobs)
    common = ["--base", "b.ckpt", "--updates", "5", "--epochs", "16"]
    out = tmp_path / "full" / "seed-0"
    cmd = bench.recipe_command("full", 0, common, out, {}, {"full": 5e-4})
    recipe = bench._recipe()
    a = recipe.build_parser().parse_args(cmd[2:])
    cfg = recipe.UpdateConfig(**{f: getattr(a, f) for f in recipe.UpdateConfig.__dataclass_fields__})
    res = {"config": json.loads(json.dumps(dataclasses.asdict(cfg))), "chain": {},
           "updates": [{"eval": {"test": {"wer": 0.1, "utterance_errors": [1], "utterance_words": [10]}}}]}
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(res))
    other = ["--base", "other.ckpt", "--updates", "5", "--epochs", "3"]
    for kwargs, why in (({"reuse": True}, "base 'b.ckpt' -> 'other.ckpt', epochs 16 -> 3"),
                        ({}, "base 'b.ckpt' -> 'other.ckpt'")):
        with pytest.raises(FileExistsError, match=why):
            bench.launch(["full"], other, tmp_path, 1, {}, show_progress=False, lrs={"full": 5e-4}, **kwargs)
    with pytest.raises(FileExistsError, match="pass --reuse to keep it"):  # the same options, without --reuse
        bench.launch(["full"], common, tmp_path, 1, {}, show_progress=False, lrs={"full": 5e-4})
    assert started == [] and json.loads((out / "results.json").read_text()) == res  # nothing ran, nothing lost
    assert bench.launch(["full"], common, tmp_path, 1, {}, show_progress=False, lrs={"full": 5e-4},
                        reuse=True) == {"full": [res]}  # kept
    assert bench.launch(["full"], other, tmp_path, 1, {}, show_progress=False, lrs={"full": 5e-4},
                        overwrite=True) == {"full": [{"rerun": True}]} and len(started) == 1
