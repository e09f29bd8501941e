"""Five chained updates: neural diffs, their peers at equal bytes and full fine-tuning, on one base model.

Runs ``recipes/synthetic/updates.py`` once per configuration (in parallel worker processes,
one thread each) on the same base checkpoint and corpus:

=================  ==========================================================================
``sparse-10``      sparse diff, 10 % of the targeted entries, fp16 values (the chain); the
                   same trained diffs are also exported with fp32 and int8 values, for their size
``sparse-2-int8``  sparse diff, 2 % of the targeted entries, int8 values (the chain)
``hashed``         hashed diff with as many stored bytes as ``sparse-10`` (fp32 buckets)
``bias``           bias-only tuning (optional: ``--methods ... bias``)
``full``           full-parameter fine-tuning; each update ships the whole model
``lora-B``         LoRA ``W0 + B @ A * alpha / r`` on the diff targets, fp16 factors; ``r`` the
                   largest rank whose file fits B % of the fp32 checkpoint's bytes (B = 1, 2,
                   5, 10; optional: ``--methods ... lora-5``)
``compressed-B``   the published baseline: full fine-tuning, then the whole model compressed
                   to B % of the checkpoint's bytes (targets magnitude-pruned, int8; other
                   parameters fp16; both files in the diff format) and shipped whole (optional)
``sparse-bB``      sparse diff, fp16 values, its file at most B % of the checkpoint's bytes
``sparse-int8-bB``  the same with int8 values (one scale per target): more entries for the bytes
``hashed-bB``      hashed diff, fp32 buckets, its file at most B % of the checkpoint's bytes
``sparse-fisher-bB``  ``sparse-bB`` whose pruning ranks entries by ``F * D**2`` (``prune_score: fisher``)
=================  ==========================================================================

The byte budgets of ``lora-B``, ``compressed-B``, ``sparse-bB``, ``sparse-int8-bB`` and ``hashed-bB`` cover the whole
shipped file(s), header included; each row reports the real file bytes (``bytes``; ``compressed``: both files) next to
its budget (``budget_bytes``), and a target checks that every update honoured it.

Per update it reports WER on ``update-k-test``, on the base ``test`` split and on ``test-other``
(voices and sentence templates unseen in training: ``test_other_wer`` per update and after the
last one; results of older runs lack it), the update's
file size in bytes next to the fp32 size of the model's ``state_dict`` (the "full
checkpoint"), the size reduction, and, at the end, whether ``apply_chain`` of the five
files on a fresh base reproduces the shipped model. Writes
``docs/results/diff_updates.{json,md,png}``.

With ``--seeds 0 1`` every configuration runs once per seed: the results after the last update
are means over seeds, with 95 % bootstrap intervals over utterances of the seed mean and, against
full fine-tuning, paired intervals of the relative difference (the recipe records per-utterance
errors). ``regime`` checks that full fine-tuning really teaches each update (its own
``update-k-test`` WER at least halved) while keeping the base (``test`` at most 10 % relative worse).

Usage::

    python benchmarks/diff_updates.py                       # the shared base of benchmarks/base.py
    python benchmarks/diff_updates.py --base BASE.ckpt --root /tmp/corp/s8000 --jobs 2
    python benchmarks/diff_updates.py --base BASE.ckpt --quick     # smoke run, results under --work
    # issue 10's regime and peers at equal bytes, two seeds (long: about 35 min per run of 5 updates on one core)
    python benchmarks/diff_updates.py --base runs/base/d2f5edc2b51d0dfc/base.ckpt --epochs 16 \
        --update-utterances all --replay-utterances 720 --lr full=5e-4 sparse=1e-3 [--anchor sparse=3e-4] \
        --seeds 0 1 --reuse --methods full sparse-b10 sparse-2-int8 sparse-b1 sparse-b2 sparse-b5 hashed-b10 \
        lora-10 compressed-10 bias
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_amortized.atomic import write_atomic
from lightning_amortized.experiment import result_file, write_results

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "diff_updates"
RECIPE = REPO / "recipes" / "synthetic" / "updates.py"
DIFF_TARGETS = ("encoder.*weight*", "head.*")

CONF = REPO / "recipes" / "synthetic" / "conf" / "updates"
# name -> (label, recipe config, extra arguments); "{sparse10_bytes}" and "{bytes_B}" (B % of the fp32
# full checkpoint's bytes) are filled in from the base model
CONFIGS: dict[str, tuple[str, Path, list[str]]] = {
    "sparse-10": ("sparse 10 %, fp16", CONF / "sparse10.yaml", []),
    "sparse-2-int8": ("sparse 2 %, int8", CONF / "sparse2_int8.yaml", []),
    "hashed": ("hashed, fp32 (bytes of sparse 10 %)", CONF / "hashed.yaml", ["--budget", "{sparse10_bytes}"]),
    "bias": ("bias only, fp32", CONF / "bias.yaml", []),
    "full": ("full fine-tuning", CONF / "full.yaml", []),
}
PEER_BUDGETS = (1, 2, 5, 10)  # % of the fp32 full checkpoint's bytes
# The peers at equal bytes, one family per method: B % of the checkpoint's bytes for the whole shipped file.
FAMILIES = {"sparse-b": "sparse diff, fp16", "sparse-int8-b": "sparse diff, int8", "hashed-b": "hashed diff, fp32",
            "lora-": "LoRA, fp16 factors", "compressed-": "compressed model (pruned, int8)"}
CONFIGS.update({f"sparse-b{b}": (f"sparse diff {b} % of the checkpoint, fp16", CONF / "sparse10.yaml",
                                 ["--budget", f"{{bytes_{b}}}", "--also_export", "[]"]) for b in PEER_BUDGETS})
# int8 values (one scale per target) instead of fp16: about 2 bytes per kept entry instead of 3, so half as many
# entries again for the same bytes
CONFIGS.update({f"sparse-int8-b{b}": (f"sparse diff {b} % of the checkpoint, int8", CONF / "sparse10.yaml",
                                      ["--budget", f"{{bytes_{b}}}", "--also_export", "[]", "--value_dtype", "int8"])
                for b in PEER_BUDGETS})
# the same sparse diffs with the pruning schedule ranking entries by F * D**2 (NeuralDiff(prune_score="fisher"))
CONFIGS.update({f"sparse-fisher-b{b}": (f"sparse diff {b} % of the checkpoint, fp16, Fisher-ranked pruning",
                                        CONF / "sparse10.yaml",
                                        ["--budget", f"{{bytes_{b}}}", "--also_export", "[]", "--prune_score", "fisher"])
                for b in PEER_BUDGETS})
CONFIGS.update({f"hashed-b{b}": (f"hashed diff {b} % of the checkpoint, fp32", CONF / "hashed.yaml",
                                 ["--budget", f"{{bytes_{b}}}"]) for b in PEER_BUDGETS})
CONFIGS.update({f"lora-{b}": (f"LoRA {b} % of the checkpoint, fp16 factors", CONF / "lora.yaml", ["--budget", str(b / 100)])
                for b in PEER_BUDGETS})
CONFIGS.update({f"compressed-{b}": (f"compressed model {b} % (pruned, int8)", CONF / "compressed.yaml",
                                    ["--budget", str(b / 100)]) for b in PEER_BUDGETS})
DEFAULT_METHODS = ("sparse-10", "sparse-2-int8", "hashed", "full")
TARGET_REL = 0.01  # WER within 1 % relative of full fine-tuning
INT8_REL = 0.02  # the int8 sparse diff: within 2 % relative
REGIME_HALVES = 0.5  # full fine-tuning: each update at least halves the WER of its own update-k-test
REGIME_FORGETS = 0.10  # ... while base test WER rises by at most 10 % relative after the last update


def find_base(root: str | Path, train: bool = True) -> Path:
    """The shared base of ``benchmarks/base.py`` for the corpus at ``root`` (trained if missing and ``train``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from base import ensure_base

    return ensure_base(root=root, train=train)


def _recipe() -> Any:
    """The recipe module (``recipes/synthetic/updates.py``): one definition of the model's bytes and loading."""
    import importlib.util

    if "synthetic_updates_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("synthetic_updates_recipe", RECIPE)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["synthetic_updates_recipe"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["synthetic_updates_recipe"]


def budget_fill(base: Path) -> dict[str, str]:
    """The placeholders of ``CONFIGS``: ``sparse10_bytes`` and ``bytes_B`` for every peer budget B."""
    recipe = _recipe()
    model = recipe.load_base(base)
    full = recipe.state_bytes(model)
    return {"sparse10_bytes": str(sparse10_bytes(model)), **{f"bytes_{b}": str(math.floor(b / 100 * full))
                                                             for b in PEER_BUDGETS}}


def sparse10_bytes(base: Path | Any) -> int:
    """Projected file size in bytes of a sparse fp16 diff keeping 10 % of the targets (gap-u8 indices): what
    ``sparse-10`` ships, and the size ``hashed`` is given (an fp32 projection gave it 1.66x the bytes).

    ``base``: a checkpoint path, or the model already loaded from it.
    """
    from lightning_amortized.diffs import select_targets
    from lightning_amortized.diffs.budget import estimate_diff_bytes, split_stored
    from lightning_amortized.module import load_asr_module

    model = load_asr_module(base) if isinstance(base, (str, Path)) else base
    params = dict(model.named_parameters())
    numels = {name: params[name].numel() for name in select_targets(model, list(DIFF_TARGETS))}
    kept = split_stored(numels, round(0.1 * sum(numels.values())))
    return estimate_diff_bytes("sparse", "fp16", {name: (numels[name], kept[name]) for name in numels})


def parse_per_method(items: Sequence[str], zero_ok: bool = False) -> dict[str, float]:
    """``["full=5e-4", "sparse=1e-3"]`` -> ``{"full": 5e-4, "sparse": 1e-3}`` (recipe methods: every config of that method).

    Args:
        items: ``METHOD=VALUE`` strings (``--lr``, ``--anchor``).
        zero_ok: accept 0 (an anchor of 0 is off; a learning rate must be positive).

    Raises:
        ValueError: an item without ``=``, an unknown method, a method given twice, or a value that is not
            a finite (positive) number.
    """
    methods = ("sparse", "hashed", "bias", "full", "lora", "compressed")
    out: dict[str, float] = {}
    for item in items:
        method, sep, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or method not in methods or not math.isfinite(value) or not (value >= 0 if zero_ok else value > 0):
            raise ValueError(f"Expected items METHOD=VALUE with METHOD one of {list(methods)} and a finite VALUE "
                             f"{'>= 0' if zero_ok else '> 0'}, but got {item!r}.")
        if method in out:
            raise ValueError(f"Expected each method once, but got {method!r} twice ({item!r}).")
        out[method] = value
    return out


@functools.lru_cache(maxsize=None)
def method_of(name: str) -> str:
    """The recipe method of a configuration, read from its YAML (``sparse``, ``hashed``, ``lora``, ...)."""
    import yaml

    return yaml.safe_load(CONFIGS[name][1].read_text())["method"]


# --------------------------------------------------------------------------- running


def job_name(name: str, seed: int) -> str:
    """The job (and log file) name of one configuration and seed."""
    return f"{name}.seed{seed}"


def recipe_command(name: str, seed: int, common: list[str], out: Path, fill: Mapping[str, str],
                   lrs: Mapping[str, float], anchors: Mapping[str, float] | None = None) -> list[str]:
    """The recipe command line of configuration ``name`` with ``seed``.

    ``lrs`` / ``anchors``: peak learning rates and L2-SP strengths by recipe method (left to the
    recipe's defaults where a method is missing).
    """
    _, config, extra = CONFIGS[name]
    method = method_of(name)
    lr, anchor = lrs.get(method), (anchors or {}).get(method)
    return [sys.executable, str(RECIPE), "--config", str(config), *common, *[a.format(**fill) for a in extra],
            *(["--lr", repr(lr)] if lr is not None else []), *(["--anchor", repr(anchor)] if anchor is not None else []),
            "--seed", str(seed),
            "--out", str(out), "--progress", "false", "--threads", "1"]


IGNORED_OPTIONS = ("out", "progress", "threads")  # recipe options that do not change a run's results
# What a recipe option added later meant for the runs made before it, when that is certain (it did not
# exist, so the run did without it). Not every later option is here: runs from before `test_other_split`
# never scored test-other, which its default would claim, so they stay different.
ABSENT_MEANS: dict[str, Any] = {"replay_earlier": 0}


def _read_finished(result: Path) -> dict[str, Any] | None:
    """A finished run's ``results.json`` (``None``: missing, unreadable or unfinished)."""
    try:
        res = json.loads(result.read_text())
    except (OSError, json.JSONDecodeError):  # missing, or a run killed while writing
        return None
    return res if isinstance(res, dict) and "chain" in res else None


def changed_options(command: list[str], res: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{option: (the run's value, the command's value)}`` where a finished run's options differ from ``command``'s
    (compared through the recipe's own parser, so defaults count)."""
    import dataclasses

    recipe = _recipe()
    a = recipe.build_parser().parse_args([str(c) for c in command[2:]])
    cfg = recipe.UpdateConfig(**{f: getattr(a, f) for f in recipe.UpdateConfig.__dataclass_fields__})
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))
    have = {**ABSENT_MEANS, **res.get("config", {})}  # an option added after the run was made: what the run did
    return {k: (have.get(k), v) for k, v in want.items() if k not in IGNORED_OPTIONS and have.get(k) != v}


def reusable(command: list[str], result: Path) -> dict[str, Any] | None:
    """The results at ``result`` if a finished run with the options of ``command`` wrote them, else ``None``.

    Not reused: a missing or unreadable file, other options (compared through the recipe's own
    parser, so defaults count), or results without per-utterance errors (older recipe runs).
    """
    res = _read_finished(result)
    return res if res is not None and _reuses(command, res) else None


def _reuses(command: list[str], res: Mapping[str, Any]) -> bool:
    """Whether a finished run's results stand for ``command``: the same options and per-utterance errors."""
    if changed_options(command, res):
        return False
    try:  # runs from before per-utterance errors cannot give intervals: run them again
        return "utterance_errors" in res["updates"][-1]["eval"][res["config"]["test_split"]]
    except (KeyError, IndexError, TypeError):
        return False


def launch(
    names: Sequence[str],
    common: list[str],
    work: Path,
    jobs: int,
    fill: Mapping[str, str],
    show_progress: bool = True,
    seeds: Sequence[int] = (0,),
    lrs: Mapping[str, float] | None = None,
    reuse: bool = False,
    anchors: Mapping[str, float] | None = None,
    overwrite: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Run one recipe process per configuration and seed, ``jobs`` at a time (one thread each).

    Returns ``{name: [results of each seed]}``; with ``reuse``, a seed whose ``results.json`` came
    from the same options is not run again (runs end to end are long on a CPU).

    Raises:
        FileExistsError: a finished run in ``work`` would be replaced (another option, or the same
            options without ``reuse``) and ``overwrite`` is off; nothing is started.
    """
    from lightning_amortized.experiment import Job, run_jobs

    updates = int(common[common.index("--updates") + 1])
    runs = []
    for name in names:
        for seed in seeds:
            out = work / name / f"seed-{seed}"
            cmd = recipe_command(name, seed, common, out, fill, lrs or {}, anchors)
            runs.append(Job(job_name(name, seed), cmd, out / "results.json", progress=out / "progress.jsonl",
                            units=updates))
    done = finished_runs(runs, reuse, overwrite)
    results = run_jobs(runs, jobs, work, cwd=REPO, desc="updates", show_progress=show_progress, done=done)
    return {name: [results[job_name(name, seed)] for seed in seeds] for name in names}


def finished_runs(runs: Sequence[Any], reuse: bool, overwrite: bool) -> dict[str, dict[str, Any]]:
    """``{job name: results}`` of the recipe jobs (``Job``: ``name``, ``command``, ``result``) whose finished run is kept.

    With ``reuse``, a finished run made with the same options (and per-utterance errors) is kept.
    Any other finished run would be replaced: refused unless ``overwrite``.

    Raises:
        FileExistsError: naming each finished run that would be replaced and the options that differ;
            nothing has been started.
    """
    done, kept = {}, []
    for job in runs:  # recipe jobs have list commands (not functions of finished results)
        old = _read_finished(job.result)
        if old is None:
            continue
        if reuse and _reuses(job.command, old):
            done[job.name] = old
        elif not overwrite:
            changed = changed_options(job.command, old)
            why = (", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()) if changed
                   else "no per-utterance errors (an older recipe)" if reuse
                   else "the same options (pass --reuse to keep it)")
            kept.append(f"{job.result.parent} ({why})")
    if kept:
        raise FileExistsError(
            "These finished runs would be replaced: " + "; ".join(kept)
            + ". Pass another --work, or --overwrite to replace them."
        )
    return done


def eval_words(root: Path, sizes: Mapping[str, int]) -> dict[str, int]:
    """Reference words per evaluation split (first ``sizes[split]`` utterances by id, as evaluated)."""
    from lightning_amortized.data.prepare import read_manifest

    out = {}
    for split, n in sizes.items():
        utts = sorted(read_manifest(root / "manifests" / f"{split}.jsonl"), key=lambda u: u.id)[:n]
        out[split] = sum(len(u.words.split()) for u in utts)
    return out


# --------------------------------------------------------------------------- summarising


def _seeds(group: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs of one configuration: a list over seeds (one results dict: one seed)."""
    return [group] if isinstance(group, Mapping) else list(group)


def _pooled(evals: Sequence[Mapping[str, Any]], splits: Sequence[str]) -> tuple[float, list[float] | None, Any]:
    """WER over ``splits`` together (errors / words), mean over seeds, with a bootstrap interval over utterances.

    ``evals``: one ``eval`` dict per seed. With per-utterance errors (``utterance_errors``) the
    seeds' errors are averaged utterance by utterance and resampled together, so the interval
    is that of the seed mean; returns ``(wer, [low, high], (errors, words, ids))`` (``ids``: the
    splits' utterance-id hashes, ``None`` where a run predates them). Runs from before
    per-utterance errors: the mean of the seeds' pooled WERs, the recipe's own interval when
    there is one seed and one split, and ``None`` for the per-utterance arrays.
    """
    import numpy as np

    from lightning_amortized.scoring import bootstrap_wer

    if all("utterance_errors" in ev[s] for ev in evals for s in splits):
        words = np.concatenate([evals[0][s]["utterance_words"] for s in splits])
        ids = [[ev[s].get("utterance_ids_sha256") for s in splits] for ev in evals]
        if any(not np.array_equal(np.concatenate([ev[s]["utterance_words"] for s in splits]), words) for ev in evals) \
                or len({tuple(i) for i in ids if None not in i}) > 1:
            raise ValueError(f"Expected every seed scored on the same utterances of {list(splits)}, but their reference "
                             "words per utterance differ: were the seeds run on other corpora or test caps?")
        errors = np.mean([np.concatenate([ev[s]["utterance_errors"] for s in splits]) for ev in evals], axis=0)
        wer, low, high = bootstrap_wer(errors, words, seed=0)
        return wer, [low, high], (errors, words, ids[0])
    if all("words" in ev[s] for ev in evals for s in splits):
        wers = [sum(ev[s]["wer"] * ev[s]["words"] for s in splits) / sum(ev[s]["words"] for s in splits) for ev in evals]
    else:  # older results without word counts: the mean over splits
        wers = [_mean([ev[s]["wer"] for s in splits]) for ev in evals]
    ci = evals[0][splits[0]].get("wer_ci95") if len(evals) == 1 and len(splits) == 1 else None
    return _mean(wers), ci, None


def _rel_ci(mine: Any, ref: Any) -> tuple[float, list[float] | None] | None:
    """``WER_mine / WER_ref - 1`` of two pooled results on the same utterances, with a paired bootstrap interval.

    ``None`` when either lacks per-utterance errors or the reference makes no error.

    Raises:
        ValueError: the two were not scored on the same utterances (other reference word counts or
            utterance ids).
    """
    import numpy as np

    from lightning_amortized.scoring import bootstrap_wer_relative

    if mine is None or ref is None:
        return None
    other_ids = None not in mine[2] and None not in ref[2] and mine[2] != ref[2]
    if len(mine[1]) != len(ref[1]) or not np.array_equal(mine[1], ref[1]) or other_ids:
        raise ValueError("Expected both runs scored on the same utterances (the same reference words per utterance), "
                         f"but got {len(mine[1])} and {len(ref[1])} utterances that differ: were they run on other "
                         "corpora or with other --test-utterances?")
    rel, low, high = bootstrap_wer_relative(mine[0], ref[0], ref[1], seed=0)
    return None if math.isnan(rel) else (rel, [low, high])


def _budget_bytes(res: Mapping[str, Any]) -> int | None:
    """The byte budget of every update of a run: LoRA / compressed record it; diffs given bytes (an int budget)."""
    last = res["updates"][-1]
    if last.get("budget_bytes") is not None:
        return int(last["budget_bytes"])
    budget = res["config"].get("budget")
    return budget if isinstance(budget, int) and res["config"].get("method") in ("sparse", "hashed") else None


def _sized_in_bytes(name: str) -> bool:
    """Whether configuration ``name`` promises a byte budget: the peers at equal bytes, and every configuration given
    ``--budget {bytes_B}`` (the Fisher-ranked sparse diffs); ``hashed`` only matches a size."""
    return _family(name) is not None or any("{bytes_" in arg for arg in CONFIGS.get(name, ("", None, []))[2])


def summarize(runs: Mapping[str, Any]) -> dict[str, Any]:
    """Per-update rows, the state after the last update (means over seeds), the regime check and the targets.

    Args:
        runs: ``{name: results}`` or ``{name: [results of each seed]}`` (recipe ``results.json``).
    """
    rows = []
    for name, group in runs.items():
        for res in _seeds(group):
            full = res["full_checkpoint_bytes"]
            test = res["config"]["test_split"]
            other = res["config"].get("test_other_split")  # None: not evaluated, or a run from before test-other
            for rec in res["updates"]:
                k = rec["update"]
                row = {
                    "method": name,
                    "label": CONFIGS[name][0],
                    "seed": res["config"].get("seed", 0),
                    "update": k,
                    "wer_update_test": rec["eval"][f"update-{k}-test"]["wer"],
                    "wer_update_test_ci95": rec["eval"][f"update-{k}-test"].get("wer_ci95"),
                    "new_entity_accuracy_update_test": rec["eval"][f"update-{k}-test"].get("new_entity_accuracy"),
                    "wer_base_test": rec["eval"][test]["wer"],
                    "wer_base_test_ci95": rec["eval"][test].get("wer_ci95"),
                    "test_other_wer": rec["eval"][other]["wer"] if other else None,
                    "test_other_wer_ci95": rec["eval"][other].get("wer_ci95") if other else None,
                    "wer_earlier_update_tests": {s: m["wer"] for s, m in rec["eval"].items() if s.startswith("update-")},
                    "bytes": rec["file_bytes"],
                    "full_checkpoint_bytes": full,
                    "size_fraction": rec["file_bytes"] / full,
                    "size_reduction_pct": 100.0 * (1 - rec["file_bytes"] / full),
                    "stored_entries": rec["stored_entries"],
                    "fit_seconds": rec["fit_seconds"],
                    "max_abs_error_vs_trained": rec.get("max_abs_error"),
                    "budget_bytes": _budget_bytes(res),  # the whole file(s) must fit
                    "rank": rec.get("rank"),  # lora
                    "files": rec.get("files", [rec.get("file")]),
                }
                for dtype, ex in (rec.get("extra_exports") or {}).items():
                    row[f"bytes_{dtype}"] = ex["file_bytes"]
                    row[f"size_reduction_pct_{dtype}"] = 100.0 * (1 - ex["file_bytes"] / full)
                    row[f"max_abs_error_{dtype}"] = ex["max_abs_error"]
                rows.append(row)
    final, pooled = {}, {}
    for name, group in runs.items():
        group = _seeds(group)
        lasts = [res["updates"][-1]["eval"] for res in group]
        test, other = group[0]["config"]["test_split"], group[0]["config"].get("test_other_split")
        updates = sorted((s for s in lasts[0] if s.startswith("update-")), key=lambda s: int(s.split("-")[1]))
        new_wer, new_ci, new_utts = _pooled(lasts, updates)
        test_wer, test_ci, test_utts = _pooled(lasts, [test])
        pooled[name] = {"new_entity_wer": new_utts, "base_test_wer": test_utts}
        sizes = [r["file_bytes"] for res in group for r in res["updates"]]
        final[name] = {
            "seeds": [res["config"].get("seed", 0) for res in group],
            "bytes": _mean(sizes),
            "new_entity_wer": new_wer,
            "base_test_wer": test_wer,
            "ci95": {"new_entity_wer": new_ci, "base_test_wer": test_ci},
            "wer": {s: _mean([ev[s]["wer"] for ev in lasts]) for s in lasts[0]},
            "cer": {s: _mean([ev[s]["cer"] for ev in lasts]) for s in lasts[0]},
            "test_other_wer": _mean([ev[other]["wer"] for ev in lasts]) if other else None,
            "test_other_cer": _mean([ev[other]["cer"] for ev in lasts]) if other else None,
            "mean_bytes_per_update": _mean(sizes),
            "max_bytes_per_update": max(sizes),
            "budget_bytes": _budget_bytes(group[0]),
            "chain": group[0]["chain"],
            "chains": [res["chain"] for res in group],
            "lr": group[0]["lr"],
            "seconds": sum(res["total_seconds"] for res in group),
        }
    def paired(name: str, ref: str) -> dict[str, dict[str, Any]]:
        """WER of ``name`` relative to ``ref`` with a paired interval (the point estimate only without errors)."""
        out = {}
        for key in ("new_entity_wer", "base_test_wer"):
            rel = _rel_ci(pooled[name][key], pooled[ref][key])
            out[key] = ({"value": rel[0], "ci95": rel[1]} if rel is not None
                        else {"value": _rel(final[name][key], final[ref][key]), "ci95": None})
        return out

    if "full" in final:
        for name, f in final.items():
            if name != "full":
                f["rel_vs_full"] = paired(name, "full")
    for _, mine, peer in peer_pairs(final):  # the sparse diff against each peer of its byte budget
        final[mine].setdefault("rel_vs_peers", {})[peer] = paired(mine, peer)
    reg = regime(runs)
    return {"rows": rows, "after_last_update": final, "regime": reg, "targets": targets(runs, final, reg)}


def peer_pairs(final: Mapping[str, Any]) -> list[tuple[int, str, str]]:
    """``(B, sparse diff, peer)`` for every equal-bytes peer of a sparse diff (``sparse-bB``, ``sparse-int8-bB``) in
    ``final``."""
    return [(b, mine, peer) for b in PEER_BUDGETS for mine in (f"sparse-b{b}", f"sparse-int8-b{b}") if mine in final
            for peer in (f"lora-{b}", f"hashed-b{b}", f"compressed-{b}") if peer in final]


def regime(runs: Mapping[str, Any]) -> dict[str, Any] | None:
    """Whether full fine-tuning learns each update and keeps the base (:func:`regime_of` its runs; ``None`` without)."""
    return regime_of(_seeds(runs["full"])) if "full" in runs else None


def regime_of(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Issue 10's regime check of one configuration's chains (one per seed): does each update teach, is the base kept?

    Fractions, means over seeds: ``new_entity_wer_base`` (the base model on ``update-k-test``,
    mean over k), ``new_entity_wer_full_after`` (after update k on its own ``update-k-test``, mean
    over k), ``base_test_wer_base`` and ``base_test_wer_full_after`` (base ``test`` after the last
    update); per update (``per_update``) its own split ``before`` / ``after`` and their ``ratio``,
    new-entity accuracy before / after and ``test`` WER after it; ``halves_every_update``
    (every ratio at most ``REGIME_HALVES``), ``forgetting_rel`` and ``met`` (both bounds).
    ``benchmarks/update_regime.py --chain`` reports the same check for one finished chain.
    """
    test = group[0]["config"].get("test_split", "test")
    per_update = []
    for i, rec in enumerate(group[0]["updates"]):
        k = rec.get("update", i + 1)
        split = f"update-{k}-test"
        before = _mean([res["base_eval"][split]["wer"] for res in group])
        after = _mean([res["updates"][i]["eval"][split]["wer"] for res in group])
        acc_before = [res["base_eval"][split].get("new_entity_accuracy") for res in group]
        acc_after = [res["updates"][i]["eval"][split].get("new_entity_accuracy") for res in group]
        per_update.append({
            "update": k, "before": before, "after": after, "ratio": after / before if before else math.inf,
            "after_ci95": rec["eval"][split].get("wer_ci95") if len(group) == 1 else None,
            "new_entity_accuracy_before": None if None in acc_before else _mean(acc_before),
            "new_entity_accuracy_after": None if None in acc_after else _mean(acc_after),
            "test_wer_after": _mean([res["updates"][i]["eval"][test]["wer"] for res in group]),
        })
    base_test = _mean([res["base_eval"][test]["wer"] for res in group])
    forgetting = _rel(per_update[-1]["test_wer_after"], base_test)
    halves = all(u["ratio"] <= REGIME_HALVES for u in per_update)
    return {
        "new_entity_wer_base": _mean([u["before"] for u in per_update]),
        "new_entity_wer_full_after": _mean([u["after"] for u in per_update]),
        "base_test_wer_base": base_test,
        "base_test_wer_full_after": per_update[-1]["test_wer_after"],
        "per_update": per_update,
        "halves_every_update": halves,
        "forgetting_rel": forgetting,
        "met": halves and forgetting <= REGIME_FORGETS,
        "seeds": [res["config"].get("seed", 0) for res in group],
    }


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _rel(a: float, b: float) -> float:
    """Relative difference ``(a - b) / b`` (``0`` when both are 0, ``inf`` when only ``b`` is)."""
    if b == 0:
        return 0.0 if a == 0 else math.inf
    return (a - b) / b


def _rel_text(rel: Mapping[str, Any]) -> str:
    ci = rel.get("ci95")
    return f"{100 * rel['value']:+.1f}%" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")


def targets(runs: Mapping[str, Any], final: Mapping[str, dict[str, Any]],
            reg: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and ``met``, on means over seeds."""
    out = []

    def size_target(name: str, key: str, what: str, threshold: float) -> None:
        if name not in runs:
            return
        group = _seeds(runs[name])
        full = group[0]["full_checkpoint_bytes"]
        sizes = [r["file_bytes"] if key == "file" else r["extra_exports"][key]["file_bytes"]
                 for res in group for r in res["updates"]]
        worst = 100.0 * (1 - max(sizes) / full)
        out.append({"target": f"{what} >= {threshold:g}% smaller than the fp32 full checkpoint",
                    "measured": f"{worst:.2f}% smaller (largest of {len(sizes)} updates: {max(sizes):,} of {full:,} bytes)",
                    "value": worst, "met": worst >= threshold})

    if reg is not None:
        worst = max(u["ratio"] for u in reg["per_update"])
        out.append({"target": "regime: full fine-tuning at least halves the WER of each update's own update-k-test, "
                    "and base test WER rises by at most 10% relative after the last update",
                    "measured": f"update-k-test {_pct(reg['new_entity_wer_base'])}% -> "
                    f"{_pct(reg['new_entity_wer_full_after'])}% (mean over updates; worst update x{worst:.2f}); "
                    f"base test {_pct(reg['base_test_wer_base'])}% -> {_pct(reg['base_test_wer_full_after'])}% "
                    f"({100 * reg['forgetting_rel']:+.1f}% relative)", "value": reg["forgetting_rel"], "met": reg["met"]})
    size_target("sparse-10", "file", "sparse diff, 10 % budget, fp16 values,", 90.0)
    first = _seeds(runs["sparse-10"])[0] if "sparse-10" in runs else None
    for dtype in ("fp32", "int8"):
        if first is not None and dtype in (first["updates"][0].get("extra_exports") or {}):
            size_target("sparse-10", dtype, f"sparse diff, 10 % budget, {dtype} values,", 90.0)
    size_target("sparse-2-int8", "file", "sparse diff, 2 % budget, int8 values,", 98.0)
    if "full" in final:
        for name, bound in (("sparse-10", TARGET_REL), ("sparse-b10", TARGET_REL), ("sparse-int8-b10", TARGET_REL),
                            ("sparse-fisher-b10", TARGET_REL), ("sparse-2-int8", INT8_REL)):
            if name not in final:
                continue
            for key, what in (("new_entity_wer", "new-entity WER (update-k-test splits)"), ("base_test_wer", "base test WER")):
                rel = final[name]["rel_vs_full"][key]
                out.append({"target": f"{name}: {what} after the last update within {100 * bound:g}% relative of full FT",
                            "measured": f"{_pct(final[name][key])}% vs {_pct(final['full'][key])}% ({_rel_text(rel)} "
                            "relative)", "value": rel["value"], "met": rel["value"] <= bound})
    for b, name, peer in peer_pairs(final):
        mine, theirs = final[name], final[peer]
        better = all(mine[k] <= theirs[k] for k in ("new_entity_wer", "base_test_wer"))
        vs = (mine.get("rel_vs_peers") or {}).get(peer, {})
        rel = {k: f" ({_rel_text(vs[k])} relative)" if k in vs else "" for k in ("new_entity_wer", "base_test_wer")}
        what = "sparse diff" if name.startswith("sparse-b") else name
        out.append({"target": f"{what} better than {peer} at {b}% of the checkpoint's bytes after the last update "
                    "(means over seeds; paired 95 % intervals of the sparse diff's WER relative to the peer's)",
                    "measured": f"new entities {_pct(mine['new_entity_wer'])}% vs {_pct(theirs['new_entity_wer'])}%"
                    f"{rel['new_entity_wer']}, base test {_pct(mine['base_test_wer'])}% vs "
                    f"{_pct(theirs['base_test_wer'])}%{rel['base_test_wer']}",
                    "value": mine["new_entity_wer"] - theirs["new_entity_wer"], "met": better})
    for name, group in runs.items():
        budgets = [(r["file_bytes"], budget) for res in _seeds(group) if _sized_in_bytes(name)
                   for budget in [_budget_bytes(res)] if budget is not None for r in res["updates"]]
        if budgets:
            worst = max(b / budget for b, budget in budgets)
            out.append({"target": f"{name}: every update's shipped file(s) within the byte budget",
                        "measured": f"largest {max(b for b, _ in budgets):,} bytes, {100 * worst:.1f}% of its budget "
                        f"({budgets[0][1]:,} bytes)", "value": worst, "met": worst <= 1.0})
    for name, f in final.items():
        chains = f.get("chains", [f["chain"]])
        chain = chains[0]
        if chain.get("kind") == "compressed":
            err = max(c["max_abs_error_vs_trained"] for c in chains)
            out.append({"target": f"{name}: the files of each of {chain['links']} updates, applied to zeros, rebuild "
                        "the evaluated model",
                        "measured": f"equals the shipped model: {all(c['equals_shipped'] for c in chains)}; max abs "
                        f"error vs the fine-tuned model {err:.3g} (the compression)",
                        "value": err, "met": all(bool(c["equals_shipped"]) for c in chains)})
        elif chain.get("links"):
            exact = all(c["bit_exact_vs_trained"] for c in chains)
            err = max(c["max_abs_error_vs_trained"] for c in chains)
            what = "lora files" if chain.get("kind") == "lora" else "diffs"
            out.append({"target": f"{name}: apply_chain of {chain['links']} {what} on a fresh base reproduces the "
                        "shipped (evaluated) model",
                        "measured": ("bit-exact" if exact else f"max abs error {err:.3g}")
                        + f"; equals the shipped model: {all(c['equals_shipped'] for c in chains)}; links ok: "
                        f"{all(c['hash_links_ok'] for c in chains)}",
                        "value": err, "met": all(bool(c["equals_shipped"] and c["hash_links_ok"]) for c in chains)})
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _pct_ci(x: float, ci: Sequence[float] | None) -> str:
    return _pct(x) if not ci else f"{_pct(x)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def _base_by_split(meta: Mapping[str, Any]) -> dict[str, float]:
    """The base model's WER per split (``meta.base_wer`` was that dict in results from before seeds)."""
    by = meta.get("base_wer_by_split", meta.get("base_wer"))
    return by if isinstance(by, Mapping) else {meta.get("test_split", "test"): by}


def markdown(summary: Mapping[str, Any], meta: Mapping[str, Any], png: str = "diff_updates.png") -> str:
    rows, final = summary["rows"], summary["after_last_update"]
    seeds = meta.get("seeds", [0])
    many = len(seeds) > 1
    lrs = ", ".join(f"{m} {r:g}" for m, r in (meta.get("lr") or {}).items())
    anchors = ", ".join(f"{m} {v:g}" for m, v in (meta.get("anchor") or {}).items() if v)
    lines = [
        "# Chained updates: neural diffs vs their peers at equal bytes and full fine-tuning",
        "",
        f"Command: `{meta['command']}`  ",
        f"Base: `{meta['base']}` ({meta['full_checkpoint_bytes']:,} bytes of fp32 weights); corpus `{meta['root']}`; "
        f"{meta['updates']} updates, {meta['epochs']} epochs each on {meta['update_utterances'] or 'all'} `update-k` + "
        f"{meta['replay_utterances']} replayed `train` utterances"
        + (f" + {meta['replay_earlier']} from the earlier updates' splits" if meta.get("replay_earlier") else "")
        + f"; diff targets {', '.join(f'`{t}`' for t in DIFF_TARGETS)}; "
        f"seeds {', '.join(map(str, seeds))}" + (f"; peak learning rates {lrs}" if lrs else "")
        + (f"; L2-SP anchor {anchors}" if anchors else "") + ". "
        f"Wall time of this invocation {meta['seconds'] / 60:.1f} min on {meta['cpu_count']} shared CPU cores "
        f"({meta['jobs']} worker processes, 1 thread each); the chains took "
        f"{sum(f['seconds'] for f in final.values()) / 3600:.1f} h of one core in all "
        f"(runs kept from earlier invocations with `--reuse` included).",
        "",
        "Base model WER: " + ", ".join(f"`{s}` {_pct(w)}%" for s, w in _base_by_split(meta).items()) + ". "
        "Evaluation sets (unseen speakers): " + ", ".join(
            f"`{s}` {n} utterances / {meta.get('eval_words', {}).get(s, '?')} words" for s, n in meta["eval_sizes"].items()
        ) + ".",
    ]
    reg = summary.get("regime")
    if reg:
        lines += [
            "",
            "## Regime check: does full fine-tuning learn each update?",
            "",
            f"Issue 10's bounds: every update at least halves the WER of its own `update-k-test` (ratio at most "
            f"{REGIME_HALVES:g}), "
            f"and base `test` WER rises by at most {100 * REGIME_FORGETS:g} % relative after the last update.",
            "",
            "| update | `update-k-test` WER: base -> full FT | ratio |",
            "|---:|---:|---:|",
            *[f"| {u['update']} | {_pct(u['before'])} % -> {_pct(u['after'])} % | x{u['ratio']:.2f} |"
              for u in reg["per_update"]],
            "",
            f"Base `test`: {_pct(reg['base_test_wer_base'])} % -> {_pct(reg['base_test_wer_full_after'])} % after the "
            f"last update ({100 * reg['forgetting_rel']:+.1f} % relative). Regime met: "
            f"{'yes' if reg['met'] else '**no**'}.",
        ]
    lines += [
        "",
        "## After the last update",
        "",
        f"Means over seeds. New-entity WER: all {meta['updates']} `update-k-test` splits together (the entities of "
        "every update, after the last one); intervals: 95 % bootstrap over utterances of the seed mean (the seeds "
        "count as fixed: variation between training seeds is not in them); versus full fine-tuning: WER ratio - 1, "
        "with a paired bootstrap interval on the same utterances. Bytes: the shipped file(s) per update, mean.",
        "",
        "| method | lr | bytes / update | % of full | new-entity WER | vs full | base test WER | vs full | "
        "test-other WER | chain (fresh base + files 1..K) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, f in final.items():
        chain = f["chain"]
        if chain.get("kind") == "compressed":
            c = f"ships the model: files -> zeros = shipped: {'yes' if chain['equals_shipped'] else '**no**'}; " \
                f"max abs err vs fine-tuned {chain['max_abs_error_vs_trained']:.2g}"
        elif chain.get("links"):
            c = "bit-exact" if chain["bit_exact_vs_trained"] else f"max abs err {chain['max_abs_error_vs_trained']:.2g}"
            c += "; = shipped" if chain["equals_shipped"] else "; differs from shipped"
            c += "; wrong base refused" if chain.get("wrong_base_refused") else ""
        else:
            c = "n/a (ships the model)"
        rel = f.get("rel_vs_full", {})
        ci = f.get("ci95", {})
        lines.append(
            f"| {CONFIGS[name][0]} | {f['lr']:g} | {f['bytes']:,.0f} | {100 * f['bytes'] / meta['full_checkpoint_bytes']:.2f} | "
            f"{_pct_ci(f['new_entity_wer'], ci.get('new_entity_wer'))} | "
            f"{_rel_text(rel['new_entity_wer']) if rel else '–'} | "
            f"{_pct_ci(f['base_test_wer'], ci.get('base_test_wer'))} | {_rel_text(rel['base_test_wer']) if rel else '–'} | "
            f"{'–' if f.get('test_other_wer') is None else _pct(f['test_other_wer'])} | {c} |"
        )
    lines += ["", "## Targets (issue 10)", "", "| target | measured | met |", "|---|---|---|"]
    for t in summary["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    lines += [
        "",
        "## Per update",
        "",
        "WER in % with its 95 % bootstrap interval over utterances; new entities: share of the entity mentions of "
        "`update-k-test` requests naming entities new in update k that the transcript holds word for word. Size: the "
        "shipped update file in bytes; reduction versus the fp32 full checkpoint.",
        "",
        "| method | " + ("seed | " if many else "") + "update | WER update-k-test | new entities | WER test | "
        "WER test-other | bytes | % of full | reduction % | fit s |",
        "|---|" + ("---:|" if many else "") + "---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = f"{r['bytes']:,}"
        red = f"{r['size_reduction_pct']:.2f}"
        if "bytes_int8" in r:
            size += f" (int8: {r['bytes_int8']:,})"
            red += f" (int8: {r['size_reduction_pct_int8']:.2f})"
        entities = r.get("new_entity_accuracy_update_test")
        other = r.get("test_other_wer")  # None: not evaluated, or a run from before test-other
        lines.append(
            f"| {r['label']} | " + (f"{r.get('seed', 0)} | " if many else "") + f"{r['update']} | "
            f"{_pct_ci(r['wer_update_test'], r.get('wer_update_test_ci95'))} | "
            f"{'–' if entities is None else _pct(entities)} | {_pct_ci(r['wer_base_test'], r.get('wer_base_test_ci95'))} | "
            f"{'–' if other is None else _pct_ci(other, r.get('test_other_wer_ci95'))} | "
            f"{size} | {100 * r['size_fraction']:.2f} | {red} | {r['fit_seconds']:.0f} |"
        )
    words = [w for sp, w in meta.get("eval_words", {}).items() if sp.startswith("update-")]
    ref = final.get("full", {}).get("new_entity_wer")
    lines += [
        "",
        "## Notes",
        "",
        "- Size: a sparse diff stores, per kept entry, one byte of gap-coded index (format version 2, "
        "`gap-u8`; gaps of 255 or more cost 4 more bytes) plus the value (4 bytes fp32, 2 fp16, 1 int8) where the "
        "checkpoint stores 4 bytes per weight, so a budget of a fraction *b* of the targeted entries costs about "
        "1.25*b* (fp32), 0.75*b* (fp16) or 0.5*b* (int8) of the targeted bytes, plus a header of about 1 kB per "
        "diff. With fp32 values a 10 % diff cannot be 90 % smaller: the values alone are 10 %. `sparse-10`, "
        "`sparse-2-int8` and `hashed` are sized in entries (10 % / 2 % of the targeted weights); the peers at equal "
        "bytes (`sparse-bB`, `sparse-int8-bB`, `hashed-bB`, `lora-B`, `compressed-B`) in B % of the fp32 checkpoint's bytes.",
    ]
    peers = {r["method"]: r for r in rows if r.get("budget_bytes") is not None and r.get("rank") is not None}
    if any(r["method"].startswith(("lora-", "compressed-")) for r in rows):
        lines.append(
            "- Peers at equal bytes: the budget covers the whole shipped file(s), header included. LoRA ships fp16 "
            "factors `B` (m x r) and `A` (r x n) per targeted matrix plus the fp16 `head.bias`, with r the largest "
            "rank that fits (" + ", ".join(f"`{m}` r = {r['rank']}" for m, r in peers.items())
            + "); the compressed model ships the targeted weights pruned to the entries that fit, int8 values with "
            "gap-u8 indices, plus every other parameter in fp16 (two files in the diff format, applied to zeros)."
        )
    if words and ref:
        step = 1 / min(words)
        lines.append(
            f"- Resolution: one word error on an `update-k-test` split ({min(words)}-{max(words)} words) moves its WER "
            f"by {100 * step:.2f} points, {100 * step / ref:.1f} % relative at the {_pct(ref)} % of full "
            f"fine-tuning. Seeds per configuration: {len(seeds)}."
        )
    lines.append(
        f"- Learning rates: peak, warm-up + cosine per update; the recipe's `DEFAULT_LR` unless `--lr` set them. "
        f"Load average before / after the run: {meta.get('load_average_before')} / {meta.get('load_average_after')} "
        "(the machine was shared)."
    )
    lines += ["", f"![WER over updates and WER vs update bytes]({png})", ""]
    return "\n".join(lines)


def _family(name: str) -> str | None:
    """The equal-bytes family of a configuration name (``sparse-b5`` -> ``sparse-b``), or ``None``."""
    for prefix in FAMILIES:
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest.isdigit():
            return prefix
    return None


def plot(summary: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 5))
    by: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in summary["rows"]:
        by.setdefault(r["method"], {}).setdefault(r["update"], []).append(r)
    colors: dict[str, Any] = {}
    a.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # one colour per method, up to 20 (tab10 repeats after 10)
    for name, per in by.items():
        ks = sorted(per)
        label = CONFIGS[name][0]
        line = a.plot(ks, [100 * _mean([r["wer_update_test"] for r in per[k]]) for k in ks], marker="o", label=label)[0]
        colors[name] = line.get_color()
        b.plot(ks, [100 * _mean([r["wer_base_test"] for r in per[k]]) for k in ks], marker="o", color=colors[name])
    base = _base_by_split(meta)
    ks = list(range(1, meta["updates"] + 1))
    a.plot(ks, [100 * base.get(f"update-{k}-test", math.nan) for k in ks], color="grey", ls=":", marker=".", lw=1,
           label="base model")
    b.axhline(100 * base[meta["test_split"]], color="grey", ls=":", lw=1)
    final = summary["after_last_update"]
    families: dict[str, list[str]] = {}
    for name in final:
        families.setdefault(_family(name) or name, []).append(name)
    for i, (fam, names) in enumerate(families.items()):
        names = sorted(names, key=lambda n: final[n]["bytes"])
        xs = [final[n]["bytes"] for n in names]
        color = f"C{i % 10}"  # one colour per family (the left panels' colours are per method)
        label = FAMILIES.get(fam, CONFIGS[names[0]][0])
        for key, style in (("new_entity_wer", "-"), ("base_test_wer", "--")):
            ys = [100 * final[n][key] for n in names]
            err = [[100 * (final[n][key] - (final[n]["ci95"].get(key) or [final[n][key]] * 2)[0]) for n in names],
                   [100 * ((final[n]["ci95"].get(key) or [final[n][key]] * 2)[1] - final[n][key]) for n in names]]
            c.errorbar(xs, ys, yerr=err, marker="o" if key == "new_entity_wer" else "x", ls=style, capsize=2,
                       color=color, label=label if key == "new_entity_wer" else None)
    a.set(xlabel="update k", ylabel="WER % on update-k-test (right after update k)", title="New entities, right after")
    b.set(xlabel="update k", ylabel="WER % on base test", title="Base test (forgetting)")
    c.set(xscale="log", xlabel="bytes per update (log)", ylabel="WER % after the last update",
          title="After the last update: o/solid new entities, x/dashed base test")
    c.axvline(meta["full_checkpoint_bytes"], color="grey", ls=":", lw=1)
    for ax in (a, b):
        ax.set_xticks(ks)
    c.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    c.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _slim(runs: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs without their per-utterance arrays (kept in the work folder; the results file stays small)."""

    def strip(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {k: strip(v) for k, v in x.items() if k not in ("utterance_errors", "utterance_words")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return {name: [strip(res) for res in _seeds(group)] for name, group in runs.items()}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=None, help="base checkpoint (default: the shared base of benchmarks/base.py)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"), help="corpus (generated if missing)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every configuration (means over them)")
    p.add_argument("--lr", nargs="+", default=[], metavar="METHOD=RATE",
                   help="peak learning rate per recipe method, e.g. full=5e-4 sparse=1e-3 (default: the recipe's)")
    p.add_argument("--anchor", nargs="+", default=[], metavar="METHOD=STRENGTH",
                   help="L2-SP strength per recipe method, e.g. sparse=3e-4 (default: 0, off)")
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--update-utterances", default="150", help="utterances of each update-k split ('all': every one)")
    p.add_argument("--replay-utterances", type=int, default=150)
    p.add_argument("--replay-earlier", type=int, default=0,
                   help="utterances of what the earlier updates trained on, replayed in each update besides "
                        "--replay-utterances (--quick: at most 30)")
    p.add_argument("--test-utterances", type=int, default=None, help="cap on each base test split")
    p.add_argument("--test-other-split", default="test-other",
                   help="base split of unseen voices and sentence templates ('none': not evaluated)")
    p.add_argument("--jobs", type=int, default=2, help="recipe processes at a time (1 thread each)")
    p.add_argument("--work", default=str(REPO / "runs" / "benchmarks" / "diff_updates"), help="diff files and logs")
    p.add_argument("--reuse", action="store_true", help="keep the results of runs with the same options in --work")
    p.add_argument("--overwrite", action="store_true",
                   help="replace finished runs in --work whose options differ (default: refuse, nothing runs)")
    p.add_argument("--results", default=None, help="output stem (default docs/results/diff_updates; --quick: <work>/quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 updates, 1 epoch, 30+30 utterances, 60 test")
    p.add_argument("--from-json", default=None, help="only rewrite the .md and .png from an earlier .json")
    a = p.parse_args(argv)
    try:
        lrs = parse_per_method(a.lr)
        anchors = parse_per_method(a.anchor, zero_ok=True)
    except ValueError as err:
        p.error(str(err))
    for what, values in (("--seeds", a.seeds), ("--methods", a.methods)):
        if len(set(values)) != len(values):
            p.error(f"Expected {what} without repeats, but got {values}.")
    if a.replay_earlier < 0:
        p.error(f"Expected --replay-earlier to be a count >= 0, but got {a.replay_earlier}.")
    if a.update_utterances != "all" and not a.update_utterances.isdigit():
        p.error(f"Expected --update-utterances to be a count or 'all', but got {a.update_utterances!r}.")
    if a.from_json:
        data = json.loads(Path(a.from_json).read_text())
        stem = Path(a.results) if a.results else Path(a.from_json).with_suffix("")
        summary = data if "regime" in data else summarize(data["runs"])  # results from before seeds: summarized anew
        write_atomic(result_file(stem, ".md"), markdown(summary, data["meta"], result_file(stem, ".png").name))
        plot(summary, data["meta"], result_file(stem, ".png"))
        return 0
    if a.quick:
        a.updates, a.epochs, a.update_utterances, a.replay_utterances = 2, 1, "30", 30
        a.replay_earlier = min(a.replay_earlier, 30)
        a.test_utterances = a.test_utterances or 60
    t0 = time.perf_counter()
    base = Path(a.base) if a.base else find_base(a.root, train=not a.quick)
    root = Path(a.root)
    if not (root / "corpus.json").exists():
        from lightning_amortized.data.synthetic import make_corpus

        make_corpus(root, utterances=8000, seed=0)
    work = Path(a.work) / ("quick" if a.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    stem = Path(a.results) if a.results else (work / "diff_updates" if a.quick else RESULTS)
    common = ["--base", str(base), "--root", str(root), "--updates", str(a.updates), "--epochs", str(a.epochs),
              "--update_utterances", "null" if a.update_utterances == "all" else a.update_utterances,
              "--replay_utterances", str(a.replay_utterances)]
    if a.replay_earlier:
        common += ["--replay_earlier", str(a.replay_earlier)]
    if a.test_utterances:
        common += ["--test_utterances", str(a.test_utterances)]
    common += ["--test_other_split", "null" if a.test_other_split.lower() == "none" else a.test_other_split]
    load0 = os.getloadavg()[0]
    try:
        runs = launch(a.methods, common, work, a.jobs, budget_fill(base), seeds=a.seeds, lrs=lrs, reuse=a.reuse,
                      anchors=anchors, overwrite=a.overwrite)
    except FileExistsError as err:
        print(f"diff_updates: error: {err}", file=sys.stderr)
        return 2
    summary = summarize(runs)
    first = runs[a.methods[0]][0]
    base_wer = {s: m["wer"] for s, m in first["base_eval"].items()}
    meta = {
        "command": "python benchmarks/diff_updates.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "base": str(base),
        "root": str(root),
        "methods": a.methods,
        "seeds": a.seeds,
        "lr": {m: _seeds(runs[n])[0]["lr"] for n in a.methods for m in [method_of(n)]},
        "anchor": {m: _seeds(runs[n])[0]["config"].get("anchor", 0.0) for n in a.methods for m in [method_of(n)]},
        "updates": a.updates,
        "epochs": a.epochs,
        "update_utterances": None if a.update_utterances == "all" else int(a.update_utterances),
        "replay_utterances": a.replay_utterances,
        "replay_earlier": a.replay_earlier,
        "test_split": first["config"]["test_split"],
        "test_other_split": first["config"].get("test_other_split"),
        "eval_sizes": first["eval_sizes"],
        "eval_words": eval_words(root, first["eval_sizes"]),
        "full_checkpoint_bytes": first["full_checkpoint_bytes"],
        "base_wer": base_wer[first["config"]["test_split"]],
        "base_wer_by_split": base_wer,
        "jobs": a.jobs,
        "cpu_count": os.cpu_count(),
        "load_average_before": round(load0, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    png = result_file(stem, ".png")
    write_results(stem, {"meta": meta, **summary, "runs": _slim(runs)}, markdown(summary, meta, png.name))
    plot(summary, meta, png)
    print(markdown(summary, meta, png.name))
    print(f"\nwrote {result_file(stem, '.json')}, .md, .png in {meta['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
