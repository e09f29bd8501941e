"""The chained-updates recipe (recipes/synthetic/updates.py) on the tiny corpus: data sampling,
diff chains (bit-exact fp32, bounded int8 error), refusal of a wrong base, full fine-tuning,
scores on test and test-other after every update (and in benchmarks/diff_updates.py)."""

from __future__ import annotations

from pathlib import Path

import json
import re
import shutil

import pytest
import torch

from lightning_amortized.data import CorpusError
from lightning_amortized.diffs import BaseMismatchError, apply_diff, inspect_diff, read_diff
from conftest import load_script, split_error_rates
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "synthetic" / "updates.py"


@pytest.fixture(scope="module")
def recipe():
    return load_script(RECIPE, "synthetic_updates")


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained LSTM-CTC model saved like a Lightning checkpoint."""
    torch.manual_seed(0)
    model = ASRModule(RecurrentEncoder(240, 16, num_layers=2), lr=1e-3)
    path = tmp_path_factory.mktemp("base") / "base.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def _cfg(recipe, base_ckpt: Path, corpus: Path, out: Path, **kw):
    defaults = dict(updates=2, epochs=2, update_utterances=None, replay_utterances=4, progress=False, lr=1e-2)
    defaults.update(kw)
    return recipe.UpdateConfig(base=str(base_ckpt), root=str(corpus), out=str(out), **defaults)


def test_load_base_reads_encoder_sizes_and_refuses_other_files(recipe, base_ckpt: Path, tmp_path: Path) -> None:
    model = recipe.load_base(base_ckpt)
    assert (model.encoder.input_size, model.encoder.hidden_size, model.encoder.num_layers) == (240, 16, 2)
    assert model.hparams.lr == 1e-3
    n = sum(p.numel() for p in model.parameters())
    assert recipe.state_bytes(model) == 4 * n  # fp32 weights, no buffers
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="RecurrentEncoder"):
        recipe.load_base(tmp_path / "other.pt")


def test_load_base_reads_a_lightningcli_checkpoint(recipe, tmp_path: Path) -> None:
    """Checkpoints written by `lightning-amortized fit` (and `make demo`, benchmarks/base.py) hold
    the encoder as a class_path config in their hyper-parameters; load_base must accept them."""
    from lightning_amortized.cli import ASRLightningCLI

    cli = ASRLightningCLI(
        args=[
            "--model.encoder", "lightning_amortized.nn.RecurrentEncoder",
            "--model.encoder.init_args.input_size", "240", "--model.encoder.init_args.hidden_size", "16",
            "--model.encoder.init_args.num_layers", "2", "--model.lr", "0.002",
            "--data", "lightning_amortized.data.LibriSpeechDataModule", "--data.init_args.root", str(tmp_path),
        ],
        run=False,
    )
    assert "encoder" in cli.model.hparams  # the case that used to fail with "multiple values for argument 'encoder'"
    path = tmp_path / "cli.ckpt"
    torch.save({"state_dict": cli.model.state_dict(), "hyper_parameters": dict(cli.model.hparams)}, path)
    model = recipe.load_base(path)
    assert (model.encoder.hidden_size, model.encoder.num_layers, model.hparams.lr) == (16, 2, 0.002)
    for name, t in cli.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name


def test_update_data_is_a_seeded_sample_plus_replay(recipe, tiny_corpus: Path) -> None:
    def draw(seed: int):
        dm = recipe.UpdateDataModule(str(tiny_corpus), "update-2", update_utterances=3, replay_utterances=5, sample_seed=seed)
        dm.prepare_data()
        return dm.utterances()

    new, old = draw(1)
    assert len(new) == 3 and len(old) == 5
    assert all("/update-2/" in u.path for u in new) and all("/train/" in u.path for u in old)
    assert [u.id for u in draw(1)[1]] == [u.id for u in old]  # reproducible
    assert [u.id for u in draw(2)[1]] != [u.id for u in old]  # seeded
    assert len(recipe.sample_utterances(new, None, 0)) == 3  # None keeps everything


def test_update_data_rehearses_earlier_updates(recipe, tiny_corpus: Path) -> None:
    """`replay_earlier`: a seeded draw from what the earlier updates trained on joins the replayed train utterances."""

    def dm(k: int, earlier: list, n: int, seed: int = 0, update_utterances: int = 3):
        d = recipe.UpdateDataModule(str(tiny_corpus), f"update-{k}", update_utterances=update_utterances,
                                    replay_utterances=5, sample_seed=seed * 1000 + k, earlier=earlier,
                                    earlier_utterances=n)
        d.prepare_data()
        return d

    trained = {j: {u.id for u in dm(j, [], 0).draws()[0]} for j in (1, 2)}  # what updates 1 and 2 trained on
    d = dm(3, [("update-1", 1), ("update-2", 2)], 4)
    new, old, earlier = d.draws()
    assert len(new) == 3 and len(old) == 5 and len(earlier) == 4
    assert [u.id for u in d.utterances()[1]] == [u.id for u in old + earlier]
    assert [u.id for u in old] == [u.id for u in dm(3, [], 0).draws()[1]]  # the train draw is unchanged
    assert {u.id for u in earlier} <= trained[1] | trained[2]  # only utterances those updates trained on
    assert all("/update-1/" in u.path or "/update-2/" in u.path for u in earlier)
    assert [u.id for u in dm(3, [("update-1", 1), ("update-2", 2)], 4).draws()[2]] == [u.id for u in earlier]
    other = dm(3, [("update-1", 1), ("update-2", 2)], 4, seed=1).draws()[2]
    assert [u.id for u in other] != [u.id for u in earlier]  # seeded
    assert len(dm(3, [("update-1", 1), ("update-2", 2)], 100).draws()[2]) == 6  # all there is: 3 + 3
    assert dm(3, [("update-1", 1)], 0).draws()[2] == [] and dm(3, [], 4).draws()[2] == []
    with pytest.raises(ValueError, match="replay_earlier"):
        _cfg(recipe, Path("b.ckpt"), tiny_corpus, tiny_corpus, replay_earlier=-1)


def test_sparse_chain_is_bit_exact_and_links_hashes(recipe, base_ckpt: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = _cfg(recipe, base_ckpt, tiny_corpus, tmp_path, method="sparse", budget=0.1, also_export=("int8",))
    res = recipe.run(cfg, log=lambda *_: None)
    recs = res["updates"]
    assert [r["update"] for r in recs] == [1, 2]
    n_targets = recs[0]["target_entries"]
    base = recipe.load_base(base_ckpt)
    expected = sum(p.numel() for name, p in base.named_parameters()
                   if (name.startswith("encoder.") and "weight" in name) or name.startswith("head."))
    assert n_targets == expected
    for r in recs:
        assert r["stored_entries"] == round(0.1 * n_targets)
        assert r["file_bytes"] == Path(r["file"]).stat().st_size
        assert r["size_reduction_pct"] == pytest.approx(100 * (1 - r["file_bytes"] / res["full_checkpoint_bytes"]))
        assert r["max_abs_error"] == 0.0
        assert r["extra_exports"]["int8"]["file_bytes"] < r["file_bytes"]
        assert set(r["eval"]) == {"test", "test-other"} | {f"update-{j}-test" for j in range(1, r["update"] + 1)}
        for split, m in r["eval"].items():  # WER with its interval, entity accuracy from slu.jsonl
            assert m["wer_ci95"][0] <= m["wer"] <= m["wer_ci95"][1] and m["words"] > 0
            if split.startswith("update-"):
                assert m["new_entity_mentions"] > 0 and 0.0 <= m["new_entity_accuracy"] <= 1.0
    assert set(res["base_eval"]) == {"test", "test-other", "update-1-test", "update-2-test"}
    assert res["eval_sizes"]["test-other"] > 0
    shipped = recipe.load_base(base_ckpt)  # the shipped model after update 2 scores as reported on test-other
    for f in (recs[0]["file"], recs[1]["file"]):
        apply_diff(shipped, f)
    wer, _ = split_error_rates(shipped, tiny_corpus, "test-other")
    assert recs[1]["eval"]["test-other"]["wer"] == pytest.approx(wer, abs=1e-6)
    # per-utterance errors (for seed means and paired intervals) add up to the split's WER
    ev = recs[1]["eval"]["test-other"]
    assert sum(ev["utterance_errors"]) / sum(ev["utterance_words"]) == pytest.approx(ev["wer"])
    assert sum(ev["utterance_words"]) == ev["words"] and len(ev["utterance_ids_sha256"]) == 64
    assert ev["utterance_ids_sha256"] == res["base_eval"]["test-other"]["utterance_ids_sha256"]  # same order
    # benchmarks/diff_updates.py reports it per update and after the last one
    bench = load_script(RECIPE.parents[2] / "benchmarks" / "diff_updates.py", "bench_diff_updates_other")
    summary = bench.summarize({"sparse-10": res})
    assert [r["test_other_wer"] for r in summary["rows"]] == [r["eval"]["test-other"]["wer"] for r in recs]
    final = summary["after_last_update"]["sparse-10"]
    assert (final["test_other_wer"], final["test_other_cer"]) == (recs[1]["eval"]["test-other"]["wer"],
                                                                  recs[1]["eval"]["test-other"]["cer"])
    meta = {"command": "c", "base": "b", "root": "r", "full_checkpoint_bytes": res["full_checkpoint_bytes"], "updates": 2,
            "epochs": 2, "update_utterances": 3, "replay_utterances": 4, "seconds": 1.0, "cpu_count": 2, "jobs": 1,
            "base_wer": {s: m["wer"] for s, m in res["base_eval"].items()}, "eval_sizes": res["eval_sizes"]}
    row = next(line for line in bench.markdown(summary, meta).splitlines() if line.startswith("| sparse 10 %, fp16 | 2 |"))
    ci = recs[1]["eval"]["test-other"]["wer_ci95"]
    assert f"| {bench._pct_ci(recs[1]['eval']['test-other']['wer'], ci)} |" in row
    info1, info2 = inspect_diff(recs[0]["file"]), inspect_diff(recs[1]["file"])
    assert info2.base_sha256 == info1.result_sha256 == recs[0]["result_sha256"]
    chain = res["chain"]
    assert chain["links"] == 2 and chain["hash_links_ok"] and chain["wrong_base_refused"]
    assert chain["equals_shipped"] and chain["bit_exact_vs_trained"] and chain["max_abs_error_vs_trained"] == 0.0
    # the second diff does not apply to the base, and the refused model is untouched
    fresh = recipe.load_base(base_ckpt)
    before = recipe.plain_state(fresh)
    with pytest.raises(BaseMismatchError, match="expected weights sha256"):
        apply_diff(fresh, recs[1]["file"])
    assert recipe.bit_equal(recipe.plain_state(fresh), before)
    # biases are not targets: diffs never change them
    apply_diff(fresh, recs[0]["file"])
    apply_diff(fresh, recs[1]["file"])
    after = recipe.plain_state(fresh)
    assert torch.equal(after["encoder.rnn.rnn.bias_ih_l0"], before["encoder.rnn.rnn.bias_ih_l0"])
    assert not torch.equal(after["encoder.rnn.rnn.weight_ih_l0"], before["encoder.rnn.rnn.weight_ih_l0"])


def test_int8_chain_error_is_bounded_by_the_last_quantization(
    recipe, base_ckpt: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    cfg = _cfg(recipe, base_ckpt, tiny_corpus, tmp_path, method="sparse", budget=0.02, value_dtype="int8")
    res = recipe.run(cfg, log=lambda *_: None)
    chain = res["chain"]
    assert chain["equals_shipped"]  # devices end with exactly what the training machine merged
    _, tensors = read_diff(res["updates"][-1]["file"])
    half_step = max(float(t) for name, t in tensors.items() if name.endswith("::scale")) / 2
    err = chain["max_abs_error_vs_trained"]
    assert 0.0 < err <= half_step * 1.01 + 1e-7  # only the last file's rounding remains
    assert err == pytest.approx(res["updates"][-1]["max_abs_error"])


def test_full_fine_tuning_ships_the_model(recipe, base_ckpt: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = _cfg(recipe, base_ckpt, tiny_corpus, tmp_path, method="full", updates=2, epochs=1, test_other_split=None,
               replay_earlier=2)
    res = recipe.run(cfg, log=lambda *_: None)
    first, rec = res["updates"]
    assert set(rec["eval"]) == {"test", "update-1-test", "update-2-test"}  # test_other_split None: not evaluated
    assert "train_earlier_utterances" not in first and rec["train_earlier_utterances"] == 2  # update 1 has no earlier
    assert rec["train_replay_utterances"] == first["train_replay_utterances"]  # the base replay, rehearsal apart
    assert rec["payload_bytes"] == res["full_checkpoint_bytes"]
    assert rec["file_bytes"] > res["full_checkpoint_bytes"]  # the safetensors header comes on top
    assert res["chain"]["links"] == 0
    assert res["lr"] == 1e-2 and recipe.UpdateConfig(base="b", root="r", out="o", method="full").learning_rate == 1e-3
    with pytest.raises(ValueError, match="`method`"):
        recipe.UpdateConfig(base="b", root="r", out="o", method="qlora")
    with pytest.raises(ValueError, match="`anchor`"):
        recipe.UpdateConfig(base="b", root="r", out="o", method="full", anchor=-1.0)
    with pytest.raises(ValueError, match="`anchor`"):
        recipe.UpdateConfig(base="b", root="r", out="o", method="sparse", anchor="strong")
    assert [type(c).__name__ for c in recipe._anchor(recipe.UpdateConfig(base="b", root="r", out="o", method="full",
                                                                          anchor=0.1))] == ["AnchorToStart"]


def test_an_anchor_on_a_diff_is_an_l2_penalty_on_its_values(recipe, base_ckpt: Path, tiny_corpus: Path,
                                                            tmp_path: Path) -> None:
    """AnchorToStart after the NeuralDiff callback pulls ``D`` (zero at the start) towards zero."""
    sizes = {}
    for anchor in (0.0, 100.0):
        cfg = _cfg(recipe, base_ckpt, tiny_corpus, tmp_path / str(anchor), method="sparse", budget=0.5, updates=1,
                   epochs=2, anchor=anchor, test_other_split=None)
        res = recipe.run(cfg, log=lambda *_: None)
        _, tensors = read_diff(res["updates"][0]["file"])
        sizes[anchor] = sum(float(t.float().pow(2).sum()) for n, t in tensors.items() if n.endswith("::values"))
    assert 0 < sizes[100.0] < 0.1 * sizes[0.0]  # squared L2 norm of the shipped values


def test_mask_epochs_is_the_sparse_diffs_pruning_schedule_and_is_checked(recipe, tmp_path: Path) -> None:
    """``mask_epochs`` becomes NeuralDiff's ``schedule_epochs`` (its schedule is tested with the callback);
    it must fit inside the update's epochs and is refused where there is no mask."""
    cfg = recipe.UpdateConfig(base="b", root="r", out="o", method="sparse", epochs=4, mask_epochs=2)
    assert recipe._diff_callback(cfg, tmp_path / "d.safetensors").schedule_epochs == 2
    default = recipe.UpdateConfig(base="b", root="r", out="o", method="sparse", epochs=4)
    assert recipe._diff_callback(default, tmp_path / "d.safetensors").schedule_epochs is None
    for bad in (0, 5, True, 2.0):
        with pytest.raises(ValueError, match="`mask_epochs`"):
            recipe.UpdateConfig(base="b", root="r", out="o", method="sparse", epochs=4, mask_epochs=bad)
    for method in ("hashed", "lora", "full"):
        with pytest.raises(ValueError, match="`mask_epochs` schedules a sparse diff's mask"):
            recipe.UpdateConfig(base="b", root="r", out="o", method=method, epochs=4, mask_epochs=2)


def test_prune_score_reaches_the_callback_and_is_checked(recipe, tmp_path: Path) -> None:
    cfg = recipe.UpdateConfig(base="b", root="r", out="o", method="sparse", prune_score="fisher")
    assert recipe._diff_callback(cfg, tmp_path / "d.safetensors").prune_score == "fisher"
    default = recipe.UpdateConfig(base="b", root="r", out="o", method="sparse")
    assert recipe._diff_callback(default, tmp_path / "d.safetensors").prune_score == "magnitude"
    for method in ("hashed", "lora", "full"):
        with pytest.raises(ValueError, match="`prune_score` ranks a sparse diff's entries"):
            recipe.UpdateConfig(base="b", root="r", out="o", method=method, prune_score="fisher")


def test_a_corpus_without_the_test_other_split_is_refused_before_training(
    recipe, base_ckpt: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    cfg = _cfg(recipe, base_ckpt, tiny_corpus, tmp_path / "out", method="full", test_other_split="test-gone")
    with pytest.raises(CorpusError, match=r"no base test split 'test-gone'.*make-corpus.*--test_other_split null"):
        recipe.run(cfg, log=lambda *_: None)
    assert not list((tmp_path / "out").glob("model-*"))  # nothing trained


def test_diff_updates_results_from_before_test_other_still_render(tmp_path: Path) -> None:
    bench = load_script(RECIPE.parents[2] / "benchmarks" / "diff_updates.py", "bench_diff_updates_old")
    old = tmp_path / "diff_updates.json"
    # the first release's results (meta and two of its runs), from before test-other, seeds and intervals
    shutil.copy(Path(__file__).parent / "fixtures" / "diff_updates_before_test_other.json", old)
    data = json.loads(old.read_text())
    summary = bench.summarize(data["runs"])  # runs without test_other_split in their config
    assert all(r["test_other_wer"] is None for r in summary["rows"])
    assert all(f["test_other_wer"] is None for f in summary["after_last_update"].values())
    assert bench.main(["--from-json", str(old)]) == 0
    rows = [line for line in old.with_suffix(".md").read_text().splitlines()
            if line.startswith("| sparse 10 %, fp16 |") and line.split(" | ")[1].isdigit()]  # the per-update rows
    assert rows and all(r.split(" | ")[5] == "–" for r in rows[: data["meta"]["updates"]])


def test_the_published_diff_updates_results_render_again(tmp_path: Path) -> None:
    bench = load_script(RECIPE.parents[2] / "benchmarks" / "diff_updates.py", "bench_diff_updates_published")
    path = tmp_path / "diff_updates.json"
    shutil.copy(RECIPE.parents[2] / "docs" / "results" / "diff_updates.json", path)
    data = json.loads(path.read_text())
    assert isinstance(data["meta"]["seeds"], list) and 0 < data["meta"]["base_wer"] < 1
    assert {"new_entity_wer_base", "new_entity_wer_full_after", "base_test_wer_full_after"} <= set(data["regime"])
    for entry in data["after_last_update"].values():
        assert {"bytes", "new_entity_wer", "base_test_wer", "ci95"} <= set(entry)
    assert bench.main(["--from-json", str(path)]) == 0
    assert "## Regime check" in path.with_suffix(".md").read_text()


def test_every_method_config_parses_and_the_benchmark_builds_valid_commands(recipe, base_ckpt: Path, tmp_path) -> None:
    """The recipe reads its options from YAML (conf/updates/*.yaml) like the other recipes, and
    benchmarks/diff_updates.py runs it with those files: every command it builds must parse."""
    bench = load_script(RECIPE.parents[2] / "benchmarks" / "diff_updates.py", "bench_diff_updates")
    parser = recipe.build_parser()
    fill = {"sparse10_bytes": "123456", **{f"bytes_{b}": str(1000 * b) for b in bench.PEER_BUDGETS}}
    seen = set()
    for name in bench.CONFIGS:
        cmd = bench.recipe_command(name, 1, ["--base", str(base_ckpt)], tmp_path, fill, {"sparse": 5e-4, "full": 2e-4})
        a = parser.parse_args(cmd[2:])
        cfg = recipe.UpdateConfig(**{f: getattr(a, f) for f in recipe.UpdateConfig.__dataclass_fields__})
        seen.add(cfg.method)
        assert cfg.method == bench.method_of(name) and cfg.seed == 1
        assert cfg.learning_rate == {"sparse": 5e-4, "full": 2e-4}.get(cfg.method, recipe.DEFAULT_LR[cfg.method])
        if name == "hashed":
            assert cfg.budget == 123456 and isinstance(cfg.budget, int)  # bytes stay an int
        if name == "sparse-10":
            assert (cfg.budget, cfg.value_dtype, cfg.also_export) == (0.1, "fp16", ("fp32", "int8"))
        if name in ("sparse-b5", "hashed-b5"):  # the peers at equal bytes: 5 % of the checkpoint, in bytes
            assert cfg.budget == 5000 and isinstance(cfg.budget, int)
        if name == "sparse-b5":
            assert (cfg.value_dtype, cfg.also_export) == ("fp16", ())
    # a common YAML of the options combines with every method's YAML
    common = RECIPE.parent / "conf" / "updates" / "common.yaml"
    a = parser.parse_args(["--config", str(common), "--config", str(bench.CONFIGS["lora-2"][1]), "--base", str(base_ckpt)])
    assert (a.method, a.epochs) == ("lora", 3)
    assert seen == set(recipe.METHODS)
    with pytest.raises(SystemExit):
        parser.parse_args(["--base", str(base_ckpt), "--method", "nope"])


def test_lora_updates_fit_the_byte_budget_and_chain_on_a_fresh_base(
    recipe, base_ckpt: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    from lightning_amortized.diffs import apply_lowrank, inspect_lowrank, lowrank_file_bytes, select_targets

    cfg = _cfg(recipe, base_ckpt, tiny_corpus, tmp_path, method="lora", budget=7000, updates=2, epochs=1,
               test_other_split=None)
    assert cfg.budget_bytes(76_724) == 7000 and cfg.learning_rate == 1e-2  # an int budget is bytes
    assert recipe.UpdateConfig(base="b", root="r", out="o", method="lora", budget=0.05).budget_bytes(76_724) == 3836
    res = recipe.run(cfg, log=lambda *_: None)
    base = recipe.load_base(base_ckpt)
    names = select_targets(base, list(recipe.DIFF_TARGETS))
    shapes = {n: tuple(base.get_parameter(n).shape) for n in names}
    for r in res["updates"]:
        # the real file is the predicted size, within the budget; one more rank would not fit
        assert r["file_bytes"] == Path(r["file"]).stat().st_size == lowrank_file_bytes(shapes, r["rank"]) <= 7000
        assert lowrank_file_bytes(shapes, r["rank"] + 1) > 7000 and r["budget_bytes"] == 7000
        # fp16 factors: r * (m + n) per matrix, plus the dense head.bias (29)
        assert r["stored_entries"] == sum(r["rank"] * (s[0] + s[1]) for s in shapes.values() if len(s) == 2) + 29
        assert 0 < r["max_abs_error"] < 1e-4  # the shipped model is the trained one up to the fp16 factors
    f1, f2 = (r["file"] for r in res["updates"])
    assert inspect_lowrank(f2).base_sha256 == inspect_lowrank(f1).result_sha256 == res["updates"][0]["result_sha256"]
    chain = res["chain"]
    assert chain["kind"] == "lora" and chain["links"] == 2 and chain["hash_links_ok"] and chain["wrong_base_refused"]
    assert chain["equals_shipped"] and not chain["bit_exact_vs_trained"]
    assert chain["max_abs_error_vs_trained"] == pytest.approx(res["updates"][-1]["max_abs_error"])
    fresh = recipe.load_base(base_ckpt)
    before = recipe.plain_state(fresh)
    with pytest.raises(BaseMismatchError, match="applies to a different base"):
        apply_lowrank(fresh, f2)
    assert recipe.bit_equal(recipe.plain_state(fresh), before)  # refused and untouched
    apply_lowrank(fresh, f1)
    apply_lowrank(fresh, f2)
    after = recipe.plain_state(fresh)
    assert torch.equal(after["encoder.rnn.rnn.bias_ih_l0"], before["encoder.rnn.rnn.bias_ih_l0"])  # not a target
    assert not torch.equal(after["head.bias"], before["head.bias"])  # a 1-D target: dense fp16 delta
    delta = after["encoder.rnn.rnn.weight_ih_l0"] - before["encoder.rnn.rnn.weight_ih_l0"]
    rank = res["updates"][0]["rank"]
    assert 0 < int(torch.linalg.matrix_rank(delta.double(), atol=1e-6)) <= 2 * rank  # two low-rank updates


@pytest.mark.parametrize("method", ["lora", "compressed"])
def test_peer_methods_run_from_the_command_line(
    recipe, base_ckpt: Path, tiny_corpus: Path, tmp_path: Path, method: str
) -> None:
    from lightning_amortized.diffs import apply_lowrank, inspect_diff, select_targets

    out = tmp_path / method
    conf = RECIPE.parent / "conf" / "updates" / f"{method}.yaml"
    assert recipe.main(["--config", str(conf), "--base", str(base_ckpt), "--root", str(tiny_corpus), "--out", str(out),
                        "--updates", "1", "--epochs", "1", "--replay_utterances", "4", "--lr", "0.01",
                        "--budget", "0.1", "--test_other_split", "null", "--progress", "false"]) == 0
    res = json.loads((out / "results.json").read_text())
    (rec,) = res["updates"]
    assert res["config"]["method"] == method and rec["budget_bytes"] == int(0.1 * res["full_checkpoint_bytes"])
    files = rec.get("files", [rec["file"]])
    assert rec["file_bytes"] == sum(Path(f).stat().st_size for f in files) <= rec["budget_bytes"]
    assert res["chain"]["links"] == 1 and res["chain"]["equals_shipped"] and res["chain"]["wrong_base_refused"] is not False
    fresh = recipe.load_base(base_ckpt)
    if method == "lora":
        apply_lowrank(fresh, rec["file"])
        assert rec["rank"] >= 1 and Path(rec["file"]).name == "lora-1.safetensors"
    else:
        assert [Path(f).name for f in files] == ["compressed-1.safetensors", "compressed-1.dense.safetensors"]
        main, dense = inspect_diff(files[0]), inspect_diff(files[1])
        assert (main.value_dtype, dense.value_dtype) == ("int8", "fp16")
        names = select_targets(fresh, list(recipe.DIFF_TARGETS))
        assert sorted(main.names) == sorted(names) and not set(dense.names) & set(names)
        assert main.stored == round(rec["kept_fraction"] * rec["target_entries"]) < rec["target_entries"] // 5
        assert dense.stored == sum(p.numel() for n, p in fresh.named_parameters() if n not in names)
        state = recipe.load_compressed(fresh, files[0])  # the device: zeros + the two files
        for n in names:  # pruned to the kept entries, int8 values (at most 255 levels per tensor)
            assert int((state[n] != 0).sum()) <= next(t.stored for t in main.targets if t.name == n)
            assert state[n].unique().numel() <= 255
        with torch.no_grad():
            for n, t in state.items():
                fresh.get_parameter(n).copy_(t)
        assert rec["result_sha256"] == recipe.weights_sha256(recipe.plain_state(fresh), state)
    # the reloaded model scores as reported (an independent count, one utterance at a time)
    wer, cer = split_error_rates(fresh, tiny_corpus, "update-1-test")
    assert rec["eval"]["update-1-test"]["wer"] == pytest.approx(wer, abs=1e-6)
    assert rec["eval"]["update-1-test"]["cer"] == pytest.approx(cer, abs=1e-6)
    # benchmarks/diff_updates.py: the row carries the real bytes and the budget, a target checks it
    bench = load_script(RECIPE.parents[2] / "benchmarks" / "diff_updates.py", f"bench_diff_updates_{method}")
    name = f"{method}-10"
    assert bench.CONFIGS[name][2] == ["--budget", "0.1"] and name not in bench.DEFAULT_METHODS
    summary = bench.summarize({name: res})
    (row,) = summary["rows"]
    assert (row["bytes"], row["budget_bytes"], row["files"]) == (rec["file_bytes"], rec["budget_bytes"], files)
    budget_target = next(t for t in summary["targets"] if "byte budget" in t["target"])
    assert budget_target["met"] and budget_target["value"] == pytest.approx(rec["file_bytes"] / rec["budget_bytes"])
    chain_target = next(t for t in summary["targets"] if "rebuild" in t["target"] or "apply_chain" in t["target"])
    assert chain_target["met"]
    meta = {"command": "c", "base": "b", "root": "r", "full_checkpoint_bytes": res["full_checkpoint_bytes"], "updates": 1,
            "epochs": 1, "update_utterances": 3, "replay_utterances": 4, "seconds": 1.0, "cpu_count": 2, "jobs": 1,
            "base_wer": {s: m["wer"] for s, m in res["base_eval"].items()}, "eval_sizes": res["eval_sizes"]}
    text = bench.markdown(summary, meta)
    assert f"| {bench.CONFIGS[name][0]} | 1 |" in text and f"{rec['file_bytes']:,}" in text
    assert "Peers at equal bytes" in text


@pytest.mark.parametrize(("method", "match"), [("lora", "rank-1 update .* over the budget of 767 bytes"),
                                               ("compressed", "does not fit the budget of 767 bytes")])
def test_a_peer_budget_too_small_for_any_update_is_refused_before_training(
    recipe, base_ckpt: Path, tiny_corpus: Path, tmp_path: Path, method: str, match: str
) -> None:
    cfg = _cfg(recipe, base_ckpt, tiny_corpus, tmp_path / "out", method=method, budget=0.01)  # 1 % of 76,724 bytes
    with pytest.raises(ValueError, match=match):
        recipe.run(cfg, log=lambda *_: None)
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_the_command_line_checks_everything_before_generating_a_corpus(recipe, tmp_path: Path, capsys) -> None:
    root = tmp_path / "new_corpus"
    for argv, match in ((["--base", str(tmp_path / "missing.ckpt")], "--base .*missing.ckpt' does not exist"),
                        (["--base", str(tmp_path), "--method", "hashed", "--mask_epochs", "1"], "`mask_epochs`")):
        assert recipe.main([*argv, "--root", str(root), "--out", str(tmp_path / "o"), "--corpus_utterances", "60"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("recipes/synthetic/updates.py: error: ") and err.count("\n") == 1
        assert re.search(match, err) and not root.exists()  # no corpus generated for a run that cannot start
