"""The shared base model every benchmark starts from: trained once, cached, reused.

``python benchmarks/base.py`` (or ``make base``) trains ``recipes/synthetic/conf/base.yaml``
on the synthetic corpus (generated first if missing), tests the best checkpoint on the
config's test splits (``test``: speakers unseen in training; ``test-other``: voices and
sentence templates unseen in training) and stores it under a cache folder named by the
configuration and the corpus::

    runs/base/<sha256(resolved config + corpus fingerprint)[:16]>/
        base.ckpt    state_dict + hyper_parameters (ASRModule.load_from_checkpoint works)
        base.json    test_wer/test_cer, test_other_wer/test_other_cer (fractions), fit seconds,
                     epochs, device, config, fingerprint, sha256

A second call with the same configuration and corpus finds the folder and trains
nothing. A training that was interrupted (the process killed, the session ended) resumes
from the newest ``last*.ckpt`` under ``runs/base/<key>/run/`` on the next call, so a base
that takes hours on a CPU can be trained over several sittings (``--force`` starts over). The configuration is the resolved LightningCLI config (YAML plus overrides, with
defaults filled in and paths left out), so comments and spelling do not matter; library
code changes are not part of the key (``--force`` retrains). What a base is tested on
(``data.init_args.test_splits``) is not part of the key either: a cached base whose
``base.json`` lacks a test split of the config is tested on it (a test pass, no training)
and the scores are added to ``base.json``. ``benchmarks/amnet.py`` and ``benchmarks/diff_updates.py`` call
:func:`ensure_base` when no base is given. The numbers also go to
``docs/results/base.{json,md}``.

The corpus fingerprint is the SHA-256 of ``corpus.json`` (generator version, seed, sizes,
speakers) when the corpus has one, else of the manifests' fingerprints of the training and
validation splits.

Usage::

    python benchmarks/base.py                                  # train or reuse
    python benchmarks/base.py --print-path                     # only print the cached checkpoint path
    python benchmarks/base.py --extra --trainer.accelerator gpu    # any LightningCLI override (part of the key)
    python benchmarks/base.py --no-results --extra ...        # a variant: docs/results/base.* left alone
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "synthetic" / "conf" / "base.yaml"
DEFAULT_ROOT = REPO / "data" / "synthetic"
#: What each test split of the synthetic corpus holds out from training (shown in the results table).
HELD_OUT = {"test": "unseen speakers", "test-other": "unseen voices and sentence templates"}
CACHE = REPO / "runs" / "base"
RESULTS = REPO / "docs" / "results"


from lightning_amortized.atomic import write_atomic  # noqa: E402
from lightning_amortized.evaluation import split_fields, split_keys  # noqa: E402
from lightning_amortized.experiment import write_results  # noqa: E402
__all__ = ["corpus_fingerprint", "base_key", "ensure_base"]


def corpus_fingerprint(root: str | Path, splits: Sequence[str], manifest_dir: str | Path | None = None) -> str:
    """SHA-256 naming a corpus: of ``corpus.json`` when present, else of the splits' manifest fingerprints.

    Raises:
        FileNotFoundError: neither ``corpus.json`` nor the manifests' fingerprints exist
            (run ``prepare`` or let the DataModule prepare the corpus first).
    """
    root = Path(root)
    meta = root / "corpus.json"
    if meta.exists():
        return hashlib.sha256(meta.read_bytes()).hexdigest()
    mdir = Path(manifest_dir) if manifest_dir else root / "manifests"
    h = hashlib.sha256()
    for split in sorted(set(splits)):
        stamp = mdir / f"{split}.fingerprint"
        if not stamp.exists():
            raise FileNotFoundError(f"No corpus.json in {root} and no manifest fingerprint {stamp}; prepare the corpus first.")
        h.update(f"{split}:{stamp.read_text()}\n".encode())
    return h.hexdigest()


#: Bumped when what a base checkpoint holds changes (a cached base of another format is retrained).
BASE_FORMAT = "1"
#: Settings that say where things go, not what is trained: left out of the cache key.
_PLACE_KEYS = (("data", "init_args", "root"), ("data", "init_args", "manifest_dir"), ("trainer", "default_root_dir"))
#: Settings that say what a trained base is tested on, not what is trained. The key is computed as if
#: each held the value every cached base was keyed with before it was exempted, so changing one never
#: changes the key (and no cached base is orphaned by the exemption); scores for a test split a cached
#: base was not tested on are added by a test pass (see :func:`ensure_base`).
_EVAL_KEYS: dict[tuple[str, ...], object] = {
    ("data", "init_args", "test_splits"): ["test"],
}
#: Options added to the library after cached bases were trained, with the default that reproduces what
#: those bases were trained with. While an option holds that value it is left out of the key, so adding an
#: option does not orphan every cached base; any other value is part of the key as usual.
_ADDED_DEFAULTS: dict[tuple[str, ...], object] = {
    ("data", "init_args", "augment"): None,
    ("model", "amr_threshold_ms"): None,
    ("model", "amr_end_weight"): 1.0,
    ("model", "amr_slack_weight"): 1.0,
    ("model", "amr_eou_weight"): 0.0,
    ("model", "amr_eou_factor"): 2.0,
    ("model", "tokenizer"): None,
    ("data", "init_args", "tokenizer"): None,
    ("data", "init_args", "voices"): "core",
    ("data", "init_args", "train_utterances"): None,
    ("data", "init_args", "free_text"): 0.0,
}


def resolved_config(cli: Any) -> dict[str, Any]:
    """The parsed LightningCLI config (YAML + overrides, defaults filled in) without its paths, and with
    the test splits of every base (:data:`_EVAL_KEYS`)."""
    cfg = json.loads(cli.parser.dump(cli.config, format="json", skip_none=False))
    for path, value in _EVAL_KEYS.items():
        node = cfg
        for part in path[:-1]:
            node = node.get(part) or {}
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = value
    for path in (*_PLACE_KEYS, *_ADDED_DEFAULTS):
        node = cfg
        for part in path[:-1]:
            node = node.get(part) or {}
        if isinstance(node, dict) and path[-1] in node:
            if path in _ADDED_DEFAULTS and node[path[-1]] != _ADDED_DEFAULTS[path]:
                continue  # set to something else: part of the key
            node.pop(path[-1])
    return cfg


def base_key(config: dict[str, Any], fingerprint: str) -> str:
    """Cache key: SHA-256 of the resolved config (see :func:`resolved_config`), the corpus fingerprint
    and :data:`BASE_FORMAT`. Comments, key order and how an override is spelled do not change it;
    any trained-for value does. Changes to the library's code do not either: pass ``--force`` to
    retrain after one that changes what training produces."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    h.update(fingerprint.encode())
    h.update(BASE_FORMAT.encode())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _device_name(trainer: Any) -> str:
    import torch

    acc = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
    if acc == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _cli(config: Path, root: Path, overrides: Sequence[str], run_dir: Path | None) -> Any:
    """The recipe's LightningCLI; without ``run_dir`` (looking a base up) no Trainer is built, so a base
    trained on an accelerator this machine lacks (``--trainer.accelerator gpu``) is still found."""
    from lightning_amortized.cli import ASRLightningCLI

    args = ["--config", str(config), "--data.init_args.root", str(root)]
    if run_dir is not None:
        args += ["--trainer.default_root_dir", str(run_dir)]
    return ASRLightningCLI(args=[*args, *overrides], run=False, build_trainer=run_dir is not None)


def ensure_base(
    config: str | Path = DEFAULT_CONFIG,
    root: str | Path = DEFAULT_ROOT,
    overrides: Sequence[str] = (),
    train: bool = True,
    cache: str | Path = CACHE,
    results: str | Path | None = RESULTS / "base",
    force: bool = False,
) -> Path:
    """Path of the cached base checkpoint for ``config`` on the corpus at ``root``; trains it if missing.

    Concurrent callers (two benchmarks started together) wait on a lock file
    ``<cache>/<key>.lock``: one trains, the other then finds the result; the corpus is
    generated (or its manifests written) under a lock of its own,
    ``<cache>/corpus-<hash of its path>.prepare.lock``. With ``train=False`` (a lookup, ``--print-path``) the corpus is only read, never
    generated or regenerated. The corpus is the data module's (``--data.init_args.root`` in
    ``overrides`` wins over ``root``, as in training). A cached base whose
    ``base.json`` lacks scores for one of the config's test splits (say ``test-other``, added
    to the config after the base was trained) is tested on those splits and ``base.json`` (and
    ``results``) gain their fields; with ``train=False`` it is returned as it is.

    Args:
        config: LightningCLI YAML of the base recipe.
        root: Corpus root (the synthetic corpus is generated there if missing).
        overrides: Extra LightningCLI arguments (part of the cache key).
        train: When False, a missing base raises instead of training.
        cache: Folder holding one sub-folder per key.
        results: Stem for ``.json``/``.md`` results of a fresh training (``None``: don't write).
        force: Retrain even when a cached base exists (it is replaced), from the start.

    Returns:
        ``<cache>/<key>/base.ckpt``.

    Raises:
        FileNotFoundError: no cached base (or, with ``train=False``, no prepared corpus) and
            ``train=False``.
    """
    config, root, cache = Path(config), Path(root), Path(cache)
    cli = _cli(config, root, overrides, None)
    dm = cli.datamodule
    if train:  # generates the synthetic corpus if missing; writes manifests (one process at a time)
        # the lock lives in the cache (writable), not beside a corpus that may sit in a read-only folder
        corpus_id = hashlib.sha256(str(dm.root.resolve()).encode()).hexdigest()[:16]
        with _locked(cache / f"corpus-{corpus_id}.prepare.lock"):
            dm.prepare_data()
    # training and validation data only: what a base is tested on does not name it
    fingerprint = corpus_fingerprint(dm.root, dm.train_splits + dm.val_splits, dm.manifest_dir)
    key = base_key(resolved_config(cli), fingerprint)
    folder = cache / key
    ckpt = folder / "base.ckpt"

    def cached() -> bool:
        return not force and ckpt.exists() and (folder / "base.json").exists()

    def untested() -> list[str]:
        return _untested_splits(folder / "base.json", dm.test_splits)

    if cached() and (not train or not untested()):
        return ckpt
    if not train:
        raise FileNotFoundError(
            f"No cached base model at {ckpt} for config {config} on corpus {dm.root}; run `python benchmarks/base.py` first."
        )
    with _locked(cache / f"{key}.lock"):
        if cached():  # trained (or tested) by another process while we waited
            missing = untested()
            if missing:
                _test_cached(config, root, overrides, folder, missing, results)
            return ckpt
        return _train(config, root, overrides, folder, fingerprint, results, resume=not force)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created) for the block; released also if the process dies."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _untested_splits(base_json: Path, splits: Sequence[str]) -> list[str]:
    """The splits of ``splits`` without scores in ``base_json`` (older files name one ``test_split``)."""
    info = json.loads(base_json.read_text())
    tested = info.get("test_splits") or [info["test_split"]]
    return [s for s in splits if s not in tested]


def _markdown(info: dict[str, Any]) -> str:
    splits = info.get("test_splits") or [info["test_split"]]
    scores = "".join(
        f"| {split} {kind.upper()}{f' ({HELD_OUT[split]})' if split in HELD_OUT and kind == 'wer' else ''} "
        f"| {100 * info[f'{key}_{kind}']:.2f} % |\n"
        for split, key in zip(splits, split_keys(splits))
        for kind in ("wer", "cer")
    )
    added = info.get("tested_after_training")
    note = ""
    if added:
        note = f"Tested on {', '.join(f'`{s}`' for s in added)} later, on the cached checkpoint.\n\n"
    return (
        "# Shared base model\n\n"
        f"Command: `{info['command']}` (also `make base`).  \n"
        f"Config: `{info['config']}` {' '.join(info['overrides'])}; corpus `{Path(info['corpus_root']).name}` "
        f"(fingerprint `{info['corpus_fingerprint'][:16]}`).  \nTrained on {info['device']}.\n\n{note}"
        "| metric | value |\n|---|---|\n"
        f"{scores}"
        f"| epochs (best) | {info['epochs']} ({info['best_epoch']}) |\n"
        f"| fit time | {info['fit_seconds']:.0f} s"
        + (" (this process; resumed from an interrupted run)" if info.get("resumed_from") else "") + " |\n"
        f"| parameters | {info['params']:,} |\n"
        f"| checkpoint | `{info['checkpoint']}` (sha256 `{info['checkpoint_sha256'][:16]}`) |\n"
    )


def _test_cached(
    config: Path, root: Path, overrides: Sequence[str], folder: Path, splits: Sequence[str], results: str | Path | None
) -> None:
    """Test the cached ``<folder>/base.ckpt`` on ``splits`` and add their scores to ``base.json`` (and ``results``)."""
    import torch

    info = json.loads((folder / "base.json").read_text())
    tested = info.get("test_splits") or [info["test_split"]]
    keys = split_keys([*tested, *splits])[len(tested):]  # checked before the test pass
    cli = _cli(config, root, overrides, folder / "run")
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    dm.test_splits = list(splits)
    model.load_state_dict(torch.load(folder / "base.ckpt", map_location="cpu", weights_only=False)["state_dict"])
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    scores = split_fields(res, splits)  # headline first: rename to the keys of the added splits
    for split, key, old in zip(splits, keys, split_keys(splits)):
        for kind in ("wer", "cer"):
            info[f"{key}_{kind}"] = scores[f"{old}_{kind}"]
    info["test_splits"] = [*tested, *splits]
    info["tested_after_training"] = [*info.get("tested_after_training", []), *splits]
    write_atomic(folder / "base.json", json.dumps(info, indent=2) + "\n")
    if results is not None:
        write_results(results, info, _markdown(info))


def interrupted_run(run_dir: Path) -> Path | None:
    """The newest readable ``last*.ckpt`` that an interrupted training left under ``run_dir``, or None.

    The run folder belongs to one cache key (one configuration on one corpus), so the
    checkpoint is of the same training. A resumed run writes ``last-v1.ckpt`` beside the old
    one (``ModelCheckpoint``'s version counter), hence the newest. One that cannot be read
    (the process was killed while writing it) is reported and skipped.
    """
    import torch

    for path in sorted(run_dir.glob("**/last*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # readable? (Lightning loads it next)
        except Exception as err:  # truncated or damaged: torch raises several types
            print(f"base: skipping unreadable {path} ({type(err).__name__}: {err})", file=sys.stderr)
            continue
        return path
    return None


def _train(
    config: Path, root: Path, overrides: Sequence[str], folder: Path, fingerprint: str, results: str | Path | None,
    resume: bool = True,
) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    resume_from = interrupted_run(folder / "run") if resume else None
    cli = _cli(config, root, overrides, folder / "run")
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    from lightning_amortized.evaluation import fit_and_test

    if resume_from is not None:
        print(f"base: resuming the interrupted training from {resume_from}", file=sys.stderr)
    run = fit_and_test(trainer, model, dm, ckpt_path=str(resume_from) if resume_from else None)
    best, res, fit_s = run["best_checkpoint"], run["test"], run["fit_seconds"]
    if not best:
        raise RuntimeError("The base recipe saved no checkpoint; keep a ModelCheckpoint monitoring val/wer in its config.")
    splits = list(dm.test_splits)
    scores = split_fields(res, splits)  # test_wer, test_cer, test_other_wer, test_other_cer
    full = torch.load(best, map_location="cpu", weights_only=False)
    slim = {k: full[k] for k in ("state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step") if k in full}
    ckpt = folder / "base.ckpt"
    (folder / "base.json").unlink(missing_ok=True)  # --force: no old scores beside a new checkpoint if we die here
    buf = io.BytesIO()
    torch.save(slim, buf)
    write_atomic(ckpt, buf.getvalue())  # usual permissions, no temporary left behind
    info = {
        "test_split": splits[0],
        "test_splits": splits,
        **scores,
        "fit_seconds": fit_s,
        "epochs": int(trainer.current_epoch),
        "best_epoch": int(full.get("epoch", -1)),
        "device": _device_name(trainer),
        "config": str(config.relative_to(REPO) if config.is_relative_to(REPO) else config),
        "overrides": list(overrides),
        "corpus_root": str(dm.root),
        "corpus_fingerprint": fingerprint,
        "checkpoint": str(ckpt.relative_to(REPO) if ckpt.is_relative_to(REPO) else ckpt),
        "checkpoint_sha256": _sha256(ckpt),
        "params": sum(p.numel() for p in model.parameters()),
        "command": "python benchmarks/base.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "val_curve": run["val_curve"],
        # fit_seconds is this process's fit; val_curve's seconds run on from the interrupted one
        "resumed_from": str(resume_from) if resume_from else None,
    }
    write_atomic(folder / "base.json", json.dumps(info, indent=2) + "\n")  # written last: marks a finished base
    if results is not None:
        write_results(results, info, _markdown(info))
    return ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="corpus root (generated if missing)")
    p.add_argument("--print-path", action="store_true", help="print the cached checkpoint path; fail if not trained")
    p.add_argument("--force", action="store_true", help="retrain even if a cached base exists")
    p.add_argument("--no-results", action="store_true",
                   help="do not write docs/results/base.{json,md} (for variants that are not the shared base)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="LightningCLI overrides (part of the cache key)")
    a = p.parse_args(argv)
    results = None if a.no_results else RESULTS / "base"
    ckpt = ensure_base(a.config, a.root, a.extra, train=not a.print_path, force=a.force, results=results)
    if a.print_path:  # only the path on stdout, for $(python benchmarks/base.py --print-path)
        print(ckpt)
        return 0
    info = json.loads((ckpt.parent / "base.json").read_text())
    splits = info.get("test_splits") or [info["test_split"]]
    scores = "; ".join(f"{s} WER {100 * info[f'{k}_wer']:.2f} %, CER {100 * info[f'{k}_cer']:.2f} %"
                       for s, k in zip(splits, split_keys(splits)))
    print(f"base: {ckpt}\n{scores} ({info['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
