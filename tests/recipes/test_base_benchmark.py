"""benchmarks/base.py: the shared base is trained once per (config, corpus) and then reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import load_script, split_error_rates, tiny_recipe_yaml
from lightning_amortized.module import ASRModule

BASE = Path(__file__).resolve().parents[2] / "benchmarks" / "base.py"

TINY = tiny_recipe_yaml(hidden_size=8)


@pytest.fixture(scope="module")
def base():
    return load_script(BASE, "bench_base")


def test_trains_once_then_reuses_and_keys_on_config_and_corpus(base, tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    kw = dict(root=tiny_corpus, cache=tmp_path / "cache", results=tmp_path / "results" / "base")
    ckpt = base.ensure_base(config, **kw)
    info = json.loads((ckpt.parent / "base.json").read_text())
    for key in ("test_wer", "test_cer", "fit_seconds", "epochs", "device", "config", "corpus_fingerprint",
                "checkpoint_sha256", "command"):
        assert key in info, key
    assert info["corpus_fingerprint"] == base.corpus_fingerprint(tiny_corpus, ["train", "dev", "test"])
    assert len(ckpt.parent.name) == 16
    assert base.base_key({"a": 1}, "fp") != base.base_key({"a": 1}, "other corpus") != base.base_key({"a": 2}, "fp")
    assert json.loads((tmp_path / "results" / "base.json").read_text()) == info
    model = ASRModule.load_from_checkpoint(ckpt, map_location="cpu")  # a LightningCLI checkpoint, slimmed
    assert model.encoder.hidden_size == 8
    assert set(torch.load(ckpt, weights_only=False)) <= {"state_dict", "hyper_parameters", "pytorch-lightning_version",
                                                         "epoch", "global_step"}

    import os

    umask = os.umask(0)
    os.umask(umask)
    assert ckpt.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert not list(ckpt.parent.glob(".*.tmp"))

    monkeypatch.setattr(base, "_train", lambda *a, **k: pytest.fail("retrained a cached base"))
    assert base.ensure_base(config, **kw) == ckpt  # found, not retrained
    from lightning_amortized.data.datamodule import LibriSpeechDataModule

    with monkeypatch.context() as m:  # a lookup (--print-path) reads the corpus, never (re)generates it
        m.setattr(LibriSpeechDataModule, "prepare_data", lambda self: pytest.fail("a lookup prepared the corpus"))
        assert base.ensure_base(config, train=False, **kw) == ckpt
        with pytest.raises(FileNotFoundError, match="prepare the corpus first"):
            base.ensure_base(config, train=False, **dict(kw, root=tmp_path / "no-corpus"))
        elsewhere = ["--data.init_args.root", str(tmp_path / "no-corpus")]  # the data module's root is the corpus
        with pytest.raises(FileNotFoundError, match="no-corpus"):
            base.ensure_base(config, overrides=elsewhere, train=False, **kw)
    config.write_text("# a comment changes nothing\n" + TINY)
    assert base.ensure_base(config, overrides=["--model.lr=0.002"], **kw) == ckpt  # the default lr, spelled out
    with pytest.raises(FileNotFoundError, match="benchmarks/base.py"):  # another config is another key
        base.ensure_base(config, overrides=["--model.lr", "0.01"], train=False, **kw)
    config.write_text(TINY.replace("hidden_size: 8", "hidden_size: 9"))
    with pytest.raises(FileNotFoundError, match="No cached base"):
        base.ensure_base(config, train=False, **kw)


def test_fingerprint_without_corpus_json_uses_manifests(base, fake_layout: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare the corpus"):
        base.corpus_fingerprint(fake_layout, ["train"])
    from lightning_amortized.data import prepare_librispeech

    prepare_librispeech(fake_layout, ["train"], fake_layout / "manifests")
    a = base.corpus_fingerprint(fake_layout, ["train"])
    assert a == base.corpus_fingerprint(fake_layout, ["train"]) and len(a) == 64


def test_options_added_later_do_not_orphan_cached_bases(base, tmp_path: Path) -> None:
    """An option added to the library after a base was trained (e.g. `augment`, the penalty's
    weights) stays out of the key while it holds the value that reproduces the old training."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    key = lambda *over: base.resolved_config(base._cli(config, tmp_path, list(over), None))  # noqa: E731
    plain = key()
    assert "augment" not in plain["data"]["init_args"] and "amr_end_weight" not in plain["model"]
    assert "amr_eou_weight" not in plain["model"] and "amr_eou_factor" not in plain["model"]
    assert key("--model.amr_end_weight", "1.0") == plain  # the default, spelled out
    assert key("--model.amr_end_weight", "2.0")["model"]["amr_end_weight"] == 2.0  # anything else counts
    augmented = key("--data.init_args.augment", "lightning_amortized.data.WaveAugment")
    assert augmented["data"]["init_args"]["augment"]["class_path"].endswith("WaveAugment")


def test_test_splits_are_not_in_the_key_and_a_cached_base_is_tested_on_new_ones(
    base, tiny_corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    """Adding `test-other` to the config's test splits reuses the cached base (no training) and adds
    `test_other_wer`/`test_other_cer` to base.json and the results, scored on the cached checkpoint."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("    cache_features: true\n", "    cache_features: true\n    test_splits: [test]\n"))
    both = ["--data.init_args.test_splits", "[test, test-other]"]
    key = lambda *over: base.resolved_config(base._cli(config, tmp_path, list(over), None))  # noqa: E731
    assert key(*both) == key() and key()["data"]["init_args"]["test_splits"] == ["test"]  # the key of older bases
    kw = dict(root=tiny_corpus, cache=tmp_path / "cache", results=tmp_path / "results" / "base")
    ckpt = base.ensure_base(config, **kw)  # trained and tested on `test` only
    first = json.loads((ckpt.parent / "base.json").read_text())
    assert first["test_splits"] == ["test"] and "test_other_wer" not in first

    assert base.ensure_base(config, overrides=both, train=False, **kw) == ckpt  # --print-path: no test pass
    assert "test_other_wer" not in json.loads((ckpt.parent / "base.json").read_text())
    monkeypatch.setattr(base, "_train", lambda *a, **k: pytest.fail("retrained a cached base"))
    assert base.ensure_base(config, overrides=both, **kw) == ckpt
    info = json.loads((ckpt.parent / "base.json").read_text())
    assert info["test_splits"] == ["test", "test-other"] and info["tested_after_training"] == ["test-other"]
    first.pop("test_splits")
    assert {k: info[k] for k in first} == first  # everything else stays, the checkpoint's hash included
    assert info["checkpoint_sha256"] == base._sha256(ckpt)
    wer, cer = split_error_rates(ASRModule.load_from_checkpoint(ckpt, map_location="cpu"), tiny_corpus, "test-other")
    assert info["test_other_wer"] == pytest.approx(wer, abs=1e-6) and info["test_other_cer"] == pytest.approx(cer, abs=1e-6)
    assert json.loads((tmp_path / "results" / "base.json").read_text()) == info
    md = (tmp_path / "results" / "base.md").read_text()
    assert f"| test-other WER (unseen voices and sentence templates) | {100 * wer:.2f} % |" in md
    assert base.ensure_base(config, overrides=both, **kw) == ckpt  # nothing left to test
    assert json.loads((ckpt.parent / "base.json").read_text()) == info

    monkeypatch.undo()
    fresh = base.ensure_base(config, overrides=both, force=True, **kw)  # trained and tested on both at once
    again = json.loads((fresh.parent / "base.json").read_text())
    assert fresh == ckpt and again["test_splits"] == ["test", "test-other"] and "tested_after_training" not in again
    wer, cer = split_error_rates(ASRModule.load_from_checkpoint(fresh, map_location="cpu"), tiny_corpus, "test-other")
    assert again["test_other_wer"] == pytest.approx(wer, abs=1e-6) and again["test_other_cer"] == pytest.approx(cer, abs=1e-6)


def test_an_interrupted_training_resumes_from_its_last_checkpoint(base, tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """A base training killed after its first epoch leaves no base.json; the next call resumes from the
    run's `last.ckpt` (the first epoch is not trained again) and `--force` starts over."""
    import lightning.pytorch as pl

    from lightning_amortized import evaluation

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("max_epochs: 1", "max_epochs: 2").replace('filename: "best-{epoch}"',
                                                                            'filename: "best-{epoch}", save_last: true'))
    kw = dict(root=tiny_corpus, cache=tmp_path / "cache", results=None)
    real = evaluation.fit_and_test
    seen: list[str | None] = []

    class Killed(RuntimeError):
        pass

    class KillAtSecondEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                raise Killed("the process was killed")

    def interrupted(trainer, *a, **k):
        trainer.callbacks.append(KillAtSecondEpoch())
        return real(trainer, *a, **k)

    monkeypatch.setattr(evaluation, "fit_and_test", interrupted)
    with pytest.raises(Killed):
        base.ensure_base(config, **kw)
    folder = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert not (folder / "base.json").exists()
    last = base.interrupted_run(folder / "run")
    assert last is not None and torch.load(last, weights_only=False)["epoch"] == 0

    def spy(trainer, *a, ckpt_path=None, **k):
        seen.append(ckpt_path)
        return real(trainer, *a, ckpt_path=ckpt_path, **k)

    monkeypatch.setattr(evaluation, "fit_and_test", spy)
    ckpt = base.ensure_base(config, **kw)
    info = json.loads((ckpt.parent / "base.json").read_text())
    assert seen == [str(last)] and info["resumed_from"] == str(last) and info["epochs"] == 2
    assert info["val_curve"]["epoch"] == pytest.approx([1.0, 2.0])  # the first epoch's row came back, not retrained
    base.ensure_base(config, force=True, **kw)
    assert seen[-1] is None  # --force: from the start

    newest = base.interrupted_run(folder / "run")  # the most recently written, e.g. the forced run's last-v1.ckpt
    assert newest == max((folder / "run").glob("**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    newest.write_bytes(newest.read_bytes()[:100])  # killed while writing it: skipped, not fatal
    assert base.interrupted_run(folder / "run") not in (newest, None)
