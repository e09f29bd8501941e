"""Five chained updates: neural diffs, their peers at equal bytes and full fine-tuning, on one base model.

Runs ``recipes/synthetic/updates.py`` once per configuration (in parallel worker processes,
one thread each) on the same base checkpoint and corpus:

=================  ==========================================================================
``sparse-10``      sparse diff, 10 % of the targeted entries, fp32 values (the chain); the
                   same trained diffs are also exported with int8 values, for their size
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
=================  ==========================================================================

The byte budgets of ``lora-B`` and ``compressed-B`` cover the whole shipped file(s), header
included; each row reports the real file bytes (``bytes``; ``compressed``: both files) next to
its budget (``budget_bytes``), and a target checks that every update honoured it.

Per update it reports WER on ``update-k-test``, on the base ``test`` split and on ``test-other``
(voices and sentence templates unseen in training: ``test_other_wer`` per update and after the
last one; results of older runs lack it), the update's
file size in bytes next to the fp32 size of the model's ``state_dict`` (the "full
checkpoint"), the size reduction, and, at the end, whether ``apply_chain`` of the five
files on a fresh base reproduces the trained model. Writes
``docs/results/diff_updates.{json,md,png}``.

Usage::

    python benchmarks/diff_updates.py                       # the shared base of benchmarks/base.py
    python benchmarks/diff_updates.py --base BASE.ckpt --root /tmp/corp/s8000 --jobs 2
    python benchmarks/diff_updates.py --base BASE.ckpt --quick     # smoke run, results under --work
    python benchmarks/diff_updates.py --methods sparse-10 full lora-1 lora-2 lora-5 lora-10 \
        compressed-1 compressed-2 compressed-5 compressed-10         # the peers at equal bytes
"""

from __future__ import annotations

import argparse
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
from lightning_amortized.experiment import write_results

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "diff_updates"
RECIPE = REPO / "recipes" / "synthetic" / "updates.py"
DIFF_TARGETS = ("encoder.*weight*", "head.*")

CONF = REPO / "recipes" / "synthetic" / "conf" / "updates"
# name -> (label, recipe config, extra arguments); "{sparse10_bytes}" is filled in from the base model
CONFIGS: dict[str, tuple[str, Path, list[str]]] = {
    "sparse-10": ("sparse 10 %, fp16", CONF / "sparse10.yaml", []),
    "sparse-2-int8": ("sparse 2 %, int8", CONF / "sparse2_int8.yaml", []),
    "hashed": ("hashed, fp32 (bytes of sparse 10 %)", CONF / "hashed.yaml", ["--budget", "{sparse10_bytes}"]),
    "bias": ("bias only, fp32", CONF / "bias.yaml", []),
    "full": ("full fine-tuning", CONF / "full.yaml", []),
}
PEER_BUDGETS = (1, 2, 5, 10)  # % of the fp32 full checkpoint's bytes
CONFIGS.update({f"lora-{b}": (f"LoRA {b} % of the checkpoint, fp16 factors", CONF / "lora.yaml", ["--budget", str(b / 100)])
                for b in PEER_BUDGETS})
CONFIGS.update({f"compressed-{b}": (f"compressed model {b} % (pruned, int8)", CONF / "compressed.yaml",
                                    ["--budget", str(b / 100)]) for b in PEER_BUDGETS})
DEFAULT_METHODS = ("sparse-10", "sparse-2-int8", "hashed", "full")
TARGET_REL = 0.01  # WER within 1 % relative of full fine-tuning


def find_base(root: str | Path, train: bool = True) -> Path:
    """The shared base of ``benchmarks/base.py`` for the corpus at ``root`` (trained if missing and ``train``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from base import ensure_base

    return ensure_base(root=root, train=train)


def sparse10_bytes(base: Path) -> int:
    """Projected file size in bytes of a sparse fp32 diff keeping 10 % of the targets (gap-u8 indices)."""
    from lightning_amortized.diffs import select_targets
    from lightning_amortized.diffs.budget import estimate_diff_bytes, split_stored
    from lightning_amortized.module import load_asr_module

    model = load_asr_module(base)
    params = dict(model.named_parameters())
    numels = {name: params[name].numel() for name in select_targets(model, list(DIFF_TARGETS))}
    kept = split_stored(numels, round(0.1 * sum(numels.values())))
    return estimate_diff_bytes("sparse", "fp32", {name: (numels[name], kept[name]) for name in numels})


# --------------------------------------------------------------------------- running


def launch(
    names: Sequence[str], common: list[str], work: Path, jobs: int, fill: Mapping[str, str], show_progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Run one recipe process per configuration, ``jobs`` at a time (one thread each); returns ``{name: results}``."""
    from lightning_amortized.experiment import Job, run_jobs

    updates = int(common[common.index("--updates") + 1])
    runs = []
    for name in names:
        _, config, extra = CONFIGS[name]
        out = work / name
        cmd = [sys.executable, str(RECIPE), "--config", str(config), *common, *[a.format(**fill) for a in extra],
               "--out", str(out), "--progress", "false", "--threads", "1"]
        runs.append(Job(name, cmd, out / "results.json", progress=out / "progress.jsonl", units=updates))
    return run_jobs(runs, jobs, work, cwd=REPO, desc="updates", show_progress=show_progress)


def eval_words(root: Path, sizes: Mapping[str, int]) -> dict[str, int]:
    """Reference words per evaluation split (first ``sizes[split]`` utterances by id, as evaluated)."""
    from lightning_amortized.data.prepare import read_manifest

    out = {}
    for split, n in sizes.items():
        utts = sorted(read_manifest(root / "manifests" / f"{split}.jsonl"), key=lambda u: u.id)[:n]
        out[split] = sum(len(u.words.split()) for u in utts)
    return out


# --------------------------------------------------------------------------- summarising


def summarize(runs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-update rows, the state after the last update, and the targets of the issue."""
    rows = []
    for name, res in runs.items():
        full = res["full_checkpoint_bytes"]
        test = res["config"]["test_split"]
        other = res["config"].get("test_other_split")  # None: not evaluated, or a run from before test-other
        for rec in res["updates"]:
            k = rec["update"]
            row = {
                "method": name,
                "label": CONFIGS[name][0],
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
                "budget_bytes": rec.get("budget_bytes"),  # lora / compressed: the whole file(s) must fit
                "rank": rec.get("rank"),  # lora
                "files": rec.get("files", [rec.get("file")]),
            }
            for dtype, ex in (rec.get("extra_exports") or {}).items():
                row[f"bytes_{dtype}"] = ex["file_bytes"]
                row[f"size_reduction_pct_{dtype}"] = 100.0 * (1 - ex["file_bytes"] / full)
                row[f"max_abs_error_{dtype}"] = ex["max_abs_error"]
            rows.append(row)
    final = {}
    for name, res in runs.items():
        last = res["updates"][-1]
        other = res["config"].get("test_other_split")
        final[name] = {
            "wer": {s: m["wer"] for s, m in last["eval"].items()},
            "cer": {s: m["cer"] for s, m in last["eval"].items()},
            "test_other_wer": last["eval"][other]["wer"] if other else None,
            "test_other_cer": last["eval"][other]["cer"] if other else None,
            "mean_update_test_wer": _mean([m["wer"] for s, m in last["eval"].items() if s.startswith("update-")]),
            "mean_bytes_per_update": _mean([r["file_bytes"] for r in res["updates"]]),
            "max_bytes_per_update": max(r["file_bytes"] for r in res["updates"]),
            "budget_bytes": res["updates"][-1].get("budget_bytes"),
            "chain": res["chain"],
            "lr": res["lr"],
            "seconds": res["total_seconds"],
        }
    return {"rows": rows, "after_last_update": final, "targets": targets(runs, final)}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _rel(a: float, b: float) -> float:
    """Relative difference ``(a - b) / b`` (``0`` when both are 0, ``inf`` when only ``b`` is)."""
    if b == 0:
        return 0.0 if a == 0 else math.inf
    return (a - b) / b


def targets(runs: Mapping[str, dict[str, Any]], final: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and ``met`` (``None`` if not measured)."""
    out = []

    def size_target(name: str, key: str, what: str, threshold: float) -> None:
        if name not in runs:
            return
        full = runs[name]["full_checkpoint_bytes"]
        sizes = [r["file_bytes"] if key == "file" else r["extra_exports"][key]["file_bytes"] for r in runs[name]["updates"]]
        worst = 100.0 * (1 - max(sizes) / full)
        out.append({"target": f"{what} >= {threshold:g}% smaller than the fp32 full checkpoint",
                    "measured": f"{worst:.2f}% smaller (largest of {len(sizes)} updates: {max(sizes):,} of {full:,} bytes)",
                    "value": worst, "met": worst >= threshold})

    size_target("sparse-10", "file", "sparse diff, 10 % budget, fp16 values,", 90.0)
    for dtype in ("fp32", "int8"):
        if "sparse-10" in runs and dtype in (runs["sparse-10"]["updates"][0].get("extra_exports") or {}):
            size_target("sparse-10", dtype, f"sparse diff, 10 % budget, {dtype} values,", 90.0)
    size_target("sparse-2-int8", "file", "sparse diff, 2 % budget, int8 values,", 98.0)
    if "full" in final:
        ref = final["full"]["wer"]
        for name in ("sparse-10", "sparse-2-int8"):
            if name not in final:
                continue
            for split, wer in final[name]["wer"].items():
                rel = _rel(wer, ref[split])
                out.append({"target": f"{name}: WER on {split} after the last update within 1% relative of full FT",
                            "measured": f"{100 * wer:.2f}% vs {100 * ref[split]:.2f}% ({100 * rel:+.1f}% relative)",
                            "value": rel, "met": rel <= TARGET_REL})
    for name, res in runs.items():
        budgets = [(r["file_bytes"], r["budget_bytes"]) for r in res["updates"] if r.get("budget_bytes") is not None]
        if budgets:
            worst = max(b / budget for b, budget in budgets)
            out.append({"target": f"{name}: every update's shipped file(s) within the byte budget",
                        "measured": f"largest {max(b for b, _ in budgets):,} bytes, {100 * worst:.1f}% of its budget "
                        f"({budgets[0][1]:,} bytes)", "value": worst, "met": worst <= 1.0})
    for name, f in final.items():
        chain = f["chain"]
        if chain.get("kind") == "compressed":
            out.append({"target": f"{name}: the files of each of {chain['links']} updates, applied to zeros, rebuild "
                        "the evaluated model",
                        "measured": f"equals the shipped model: {chain['equals_shipped']}; max abs error vs the fine-tuned "
                        f"model {chain['max_abs_error_vs_trained']:.3g} (the compression)",
                        "value": chain["max_abs_error_vs_trained"], "met": bool(chain["equals_shipped"])})
        elif chain.get("links"):
            exact = chain["bit_exact_vs_trained"]
            what = "lora files" if chain.get("kind") == "lora" else "diffs"
            out.append({"target": f"{name}: apply_chain of {chain['links']} {what} on a fresh base reproduces the trained model",
                        "measured": ("bit-exact" if exact else f"max abs error {chain['max_abs_error_vs_trained']:.3g}")
                        + f"; equals the shipped model: {chain['equals_shipped']}; links ok: {chain['hash_links_ok']}",
                        "value": chain["max_abs_error_vs_trained"], "met": bool(chain["equals_shipped"] and chain["hash_links_ok"])})
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _pct_ci(x: float, ci: Sequence[float] | None) -> str:
    return _pct(x) if not ci else f"{_pct(x)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def markdown(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    rows, final = summary["rows"], summary["after_last_update"]
    lines = [
        "# Chained updates: neural diffs vs full fine-tuning",
        "",
        f"Command: `{meta['command']}`  ",
        f"Base: `{meta['base']}` ({meta['full_checkpoint_bytes']:,} bytes of fp32 weights); corpus `{meta['root']}`; "
        f"{meta['updates']} updates, {meta['epochs']} epochs each on {meta['update_utterances']} `update-k` + "
        f"{meta['replay_utterances']} replayed `train` utterances; diff targets {', '.join(f'`{t}`' for t in DIFF_TARGETS)}. "
        f"Wall time {meta['seconds'] / 60:.1f} min on {meta['cpu_count']} shared CPU cores ({meta['jobs']} worker "
        f"processes, 1 thread each).",
        "",
        "Base model WER: " + ", ".join(f"`{s}` {_pct(w)}%" for s, w in meta["base_wer"].items()) + ". "
        "Evaluation sets (unseen speakers): " + ", ".join(
            f"`{s}` {n} utterances / {meta.get('eval_words', {}).get(s, '?')} words" for s, n in meta["eval_sizes"].items()
        ) + ".",
        "",
        "## Per update",
        "",
        "WER in % with its 95 % bootstrap interval over utterances; new entities: share of the entity mentions of "
        "`update-k-test` requests naming entities new in update k that the transcript holds word for word. Size: the "
        "shipped update file in bytes; reduction versus the fp32 full checkpoint.",
        "",
        "| method | update | WER update-k-test | new entities | WER test | WER test-other | bytes | % of full | "
        "reduction % | fit s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
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
            f"| {r['label']} | {r['update']} | {_pct_ci(r['wer_update_test'], r.get('wer_update_test_ci95'))} | "
            f"{'–' if entities is None else _pct(entities)} | {_pct_ci(r['wer_base_test'], r.get('wer_base_test_ci95'))} | "
            f"{'–' if other is None else _pct_ci(other, r.get('test_other_wer_ci95'))} | "
            f"{size} | {100 * r['size_fraction']:.2f} | {red} | {r['fit_seconds']:.0f} |"
        )
    splits = list(next(iter(final.values()))["wer"])
    lines += [
        "",
        "## After the last update",
        "",
        "| method | lr | " + " | ".join(f"WER {s}" for s in splits) + " | mean update-k-test | chain (fresh base + diffs 1..K) |",
        "|---|---:|" + "---:|" * len(splits) + "---:|---|",
    ]
    for name, f in final.items():
        chain = f["chain"]
        if chain.get("kind") == "compressed":
            c = f"ships the model: files -> zeros = shipped: {'yes' if chain['equals_shipped'] else '**no**'}; " \
                f"max abs err vs fine-tuned {chain['max_abs_error_vs_trained']:.2g}"
            c += "; wrong base refused" if chain.get("wrong_base_refused") else ""
        elif chain.get("links"):
            c = "bit-exact" if chain["bit_exact_vs_trained"] else f"max abs err {chain['max_abs_error_vs_trained']:.2g}"
            c += "; = shipped" if chain["equals_shipped"] else "; differs from shipped"
            c += "; wrong base refused" if chain.get("wrong_base_refused") else ""
        else:
            c = "n/a (ships the model)"
        lines.append(
            f"| {CONFIGS[name][0]} | {f['lr']:g} | " + " | ".join(_pct(f["wer"][s]) for s in splits)
            + f" | {_pct(f['mean_update_test_wer'])} | {c} |"
        )
    lines += ["", "## Targets (issue #5)", "", "| target | measured | met |", "|---|---|---|"]
    for t in summary["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    words = [w for sp, w in meta.get("eval_words", {}).items() if sp.startswith("update-")]
    ref = final.get("full", {}).get("mean_update_test_wer")
    lines += [
        "",
        "## Notes",
        "",
        "- Size: a sparse diff stores, per kept entry, one byte of gap-coded index (format version 2, "
        "`gap-u8`; gaps of 255 or more cost 4 more bytes) plus the value (4 bytes fp32, 2 fp16, 1 int8) where the "
        "checkpoint stores 4 bytes per weight, so a budget of a fraction *b* of the targeted entries costs about "
        "1.25*b* (fp32), 0.75*b* (fp16) or 0.5*b* (int8) of the targeted bytes, plus a header of about 1 kB per "
        "diff. With fp32 values a 10 % diff cannot be 90 % smaller: the values alone are 10 %.",
    ]
    peers = {r["method"]: r for r in rows if r.get("budget_bytes") is not None}
    if peers:
        lines.append(
            "- Peers at equal bytes (`lora-B`, `compressed-B`): the budget is B % of the fp32 checkpoint's bytes and covers "
            "the whole shipped file(s), header included. LoRA ships fp16 factors `B` (m x r) and `A` (r x n) per targeted "
            "matrix plus the fp16 `head.bias`, with r the largest rank that fits ("
            + ", ".join(f"`{m}` r = {r['rank']}" for m, r in peers.items() if r.get("rank") is not None)
            + "); the compressed model ships the targeted weights pruned to the entries that fit, int8 values with gap-u8 "
            "indices, plus every other parameter in fp16 (two files in the diff format, applied to zeros)."
        )
    if words and ref:
        step = 1 / min(words)
        lines.append(
            f"- Resolution: one word error on an `update-k-test` split ({min(words)}-{max(words)} words) moves its WER "
            f"by {100 * step:.2f} points, {100 * step / ref:.1f} % relative at the {_pct(ref)} % of full "
            "fine-tuning; the 1 %-relative target is about two words per split. Each configuration ran once (one seed)."
        )
    lines.append(
        f"- Learning rates (peak, warm-up + cosine per update) as in the recipe's `DEFAULT_LR`, picked on update 1. "
        f"Load average before / after the run: {meta.get('load_average_before')} / {meta.get('load_average_after')} "
        "(the machine was shared)."
    )
    lines += ["", "![WER over updates and WER vs update size](diff_updates.png)", ""]
    return "\n".join(lines)


def plot(summary: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.6))
    by: dict[str, list[dict[str, Any]]] = {}
    for r in summary["rows"]:
        by.setdefault(r["method"], []).append(r)
    for name, rs in by.items():
        ks = [r["update"] for r in rs]
        line = a.plot(ks, [100 * r["wer_update_test"] for r in rs], marker="o", label=CONFIGS[name][0])[0]
        b.plot(ks, [100 * r["wer_base_test"] for r in rs], marker="o", color=line.get_color(), label=CONFIGS[name][0])
        if all(r.get("test_other_wer") is not None for r in rs):
            b.plot(ks, [100 * r["test_other_wer"] for r in rs], marker="s", ls="--", color=line.get_color())
        f = summary["after_last_update"][name]
        c.scatter([f["mean_bytes_per_update"]], [100 * f["mean_update_test_wer"]], color=line.get_color(), s=60, marker="o")
        c.scatter([f["mean_bytes_per_update"]], [100 * f["wer"][meta["test_split"]]], color=line.get_color(), s=60, marker="x")
        c.annotate(CONFIGS[name][0], (f["mean_bytes_per_update"], 100 * f["mean_update_test_wer"]), fontsize=7,
                   xytext=(4, 4), textcoords="offset points")
    ks = list(range(1, meta["updates"] + 1))
    a.plot(ks, [100 * meta["base_wer"].get(f"update-{k}-test", math.nan) for k in ks], color="grey", ls=":", marker=".",
           lw=1, label="base model")
    b.axhline(100 * meta["base_wer"][meta["test_split"]], color="grey", ls=":", lw=1, label="base")
    a.set(xlabel="update k", ylabel="WER % on update-k-test (right after update k)", title="New data (unseen speakers)")
    b.set(xlabel="update k", ylabel="WER % on base test (dashed: test-other)", title="Base test (forgetting)")
    c.set(xscale="log", xlabel="bytes per update (log)", ylabel="WER % after the last update",
          title="WER vs update size (o: mean update tests, x: base test)")
    c.axvline(meta["full_checkpoint_bytes"], color="grey", ls=":", lw=1)
    for ax in (a, b):
        ax.set_xticks(ks)
    c.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=None, help="base checkpoint (default: the shared base of benchmarks/base.py)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"), help="corpus (generated if missing)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(CONFIGS))
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--update-utterances", type=int, default=150)
    p.add_argument("--replay-utterances", type=int, default=150)
    p.add_argument("--test-utterances", type=int, default=None, help="cap on each base test split")
    p.add_argument("--test-other-split", default="test-other",
                   help="base split of unseen voices and sentence templates ('none': not evaluated)")
    p.add_argument("--jobs", type=int, default=2, help="recipe processes at a time (1 thread each)")
    p.add_argument("--work", default=str(REPO / "runs" / "benchmarks" / "diff_updates"), help="diff files and logs")
    p.add_argument("--results", default=None, help="output stem (default docs/results/diff_updates; --quick: <work>/quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 updates, 1 epoch, 30+30 utterances, 60 test")
    p.add_argument("--from-json", default=None, help="only rewrite the .md and .png from an earlier .json")
    a = p.parse_args(argv)
    if a.from_json:
        data = json.loads(Path(a.from_json).read_text())
        stem = Path(a.results) if a.results else Path(a.from_json).with_suffix("")
        write_atomic(stem.with_suffix(".md"), markdown(data, data["meta"]))
        plot(data, data["meta"], stem.with_suffix(".png"))
        return 0
    if a.quick:
        a.updates, a.epochs, a.update_utterances, a.replay_utterances = 2, 1, 30, 30
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
              "--update_utterances", str(a.update_utterances), "--replay_utterances", str(a.replay_utterances)]
    if a.test_utterances:
        common += ["--test_utterances", str(a.test_utterances)]
    common += ["--test_other_split", "null" if a.test_other_split.lower() == "none" else a.test_other_split]
    load0 = os.getloadavg()[0]
    runs = launch(a.methods, common, work, a.jobs, {"sparse10_bytes": str(sparse10_bytes(base))})
    summary = summarize(runs)
    first = next(iter(runs.values()))
    meta = {
        "command": "python benchmarks/diff_updates.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "base": str(base),
        "root": str(root),
        "methods": a.methods,
        "updates": a.updates,
        "epochs": a.epochs,
        "update_utterances": a.update_utterances,
        "replay_utterances": a.replay_utterances,
        "test_split": first["config"]["test_split"],
        "test_other_split": first["config"].get("test_other_split"),
        "eval_sizes": first["eval_sizes"],
        "eval_words": eval_words(root, first["eval_sizes"]),
        "full_checkpoint_bytes": first["full_checkpoint_bytes"],
        "base_wer": {s: m["wer"] for s, m in first["base_eval"].items()},
        "jobs": a.jobs,
        "cpu_count": os.cpu_count(),
        "load_average_before": round(load0, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_results(stem, {"meta": meta, **summary, "runs": runs}, markdown(summary, meta))
    plot(summary, meta, stem.with_suffix(".png"))
    print(markdown(summary, meta))
    print(f"\nwrote {stem.with_suffix('.json')}, .md, .png in {meta['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
