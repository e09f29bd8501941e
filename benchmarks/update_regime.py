"""Does an update teach? Full fine-tuning on one update split, over a grid of learning rates, epochs and replay.

Issue 10 asks for an update regime in which full fine-tuning clearly learns each update:
WER on ``update-k-test`` (60 % of its requests name entities new in update ``k``) at least
halved relative to the base, while the base ``test`` WER rises by at most 10 % relative
(after all five updates; this script checks one update, a necessary condition). It runs
``recipes/synthetic/updates.py --method full --updates 1`` once per grid point (worker
processes, one thread each) from the shared base and tabulates, per point: WER on
``update-1-test`` before and after with its 95 % bootstrap interval, the new-entity
accuracy (share of new entity mentions transcribed word for word, from ``slu.jsonl``), and
the base ``test`` WER before and after.

Usage::

    python benchmarks/update_regime.py                               # the shared base, the default grid
    python benchmarks/update_regime.py --grid 0.001:16:480 0.002:12:720 --jobs 2
    python benchmarks/update_regime.py --chain runs/chain/results.json --results docs/results/X  # a finished chain

A grid point is ``LR:EPOCHS:REPLAY[:ANCHOR]`` (peak learning rate, epochs, replayed
``train`` utterances, and the strength of an L2-SP penalty towards the base weights,
:class:`~lightning_amortized.callbacks.AnchorToStart`, 0 when left out; every ``update-1``
utterance is used). Writes
``docs/results/update_regime.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from lightning_amortized.experiment import Job, percent as pct, run_jobs, shown_path, write_results  # noqa: E402
from diff_updates import REGIME_FORGETS as FORGET, REGIME_HALVES as LEARN, finished_runs, regime_of  # noqa: E402

RECIPE = REPO / "recipes" / "synthetic" / "updates.py"
DEFAULT_GRID = (
    "0.001:8:240", "0.003:8:240", "0.001:16:480", "0.002:12:720", "0.0005:16:720", "0.001:16:960",
    "0.002:12:720:0.0001", "0.002:12:720:0.0003", "0.002:12:720:0.001", "0.002:12:720:0.01", "0.002:12:720:0.1",
    "0.002:12:720:1", "0.003:16:720:0.0003", "0.003:16:720:0.001",
)
# LEARN: update-k-test WER at most this share of the base's; FORGET: base test WER at most this much
# (relative) above the base's; one definition with benchmarks/diff_updates.py's regime check


def parse_point(text: str) -> tuple[float, int, int, float]:
    """``"LR:EPOCHS:REPLAY[:ANCHOR]"`` -> ``(lr, epochs, replay, anchor)`` (``anchor`` 0 when left out)."""
    try:
        lr, epochs, replay, *rest = text.split(":")
        if len(rest) > 1:
            raise ValueError
        return float(lr), int(epochs), int(replay), float(rest[0]) if rest else 0.0
    except ValueError:
        raise ValueError(
            f"Expected a grid point LR:EPOCHS:REPLAY[:ANCHOR] such as 0.001:16:480 or 0.002:12:720:0.01, but got {text!r}."
        ) from None


def summarize(results: dict[str, dict[str, Any]], update: int) -> list[dict[str, Any]]:
    """One row per grid point from the recipe's ``results.json`` files."""
    split = f"update-{update}-test"
    rows = []
    for name, res in results.items():
        before, after = res["base_eval"], res["updates"][0]["eval"]
        row = {
            "point": name,
            "lr": res["lr"],
            "epochs": res["config"]["epochs"],
            "replay_utterances": res["config"]["replay_utterances"],
            "anchor": res["config"].get("anchor", 0.0),
            "update_utterances": res["updates"][0]["train_update_utterances"],
            "update_test_wer_before": before[split]["wer"],
            "update_test_wer_after": after[split]["wer"],
            "update_test_wer_after_ci95": after[split]["wer_ci95"],
            "new_entity_accuracy_before": before[split]["new_entity_accuracy"],
            "new_entity_accuracy_after": after[split]["new_entity_accuracy"],
            "test_wer_before": before["test"]["wer"],
            "test_wer_after": after["test"]["wer"],
            "test_wer_after_ci95": after["test"]["wer_ci95"],
            "fit_seconds": res["updates"][0]["fit_seconds"],
        }
        row["update_test_wer_rel"] = row["update_test_wer_after"] / row["update_test_wer_before"] - 1
        row["test_wer_rel"] = row["test_wer_after"] / row["test_wer_before"] - 1
        row["learns"] = row["update_test_wer_after"] <= LEARN * row["update_test_wer_before"]
        row["forgets_at_most_10pct"] = row["test_wer_rel"] <= FORGET
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Update regime: full fine-tuning on `update-{meta['update']}`",
        "",
        f"Command: `{meta['command']}`  ",
        f"Base `{shown_path(meta['base'], REPO)}` (test WER {pct(rows[0]['test_wer_before'])}); corpus "
        f"`{shown_path(meta['root'], REPO)}`. Each point "
        f"fine-tunes every parameter on all {rows[0]['update_utterances']} `update-{meta['update']}` utterances plus "
        "the replayed `train` utterances, warm-up + cosine learning rate, one thread. Targets of issue 10: "
        f"`update-{meta['update']}-test` WER at most half the base's; base `test` WER at most 10 % relative higher.",
        "",
        f"| lr | epochs | replayed | L2-SP anchor | update-{meta['update']}-test WER (95 % CI) | change | "
        "new-entity accuracy | test WER (95 % CI) | change | learns | forgets ≤ 10 % | fit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        lo, hi = r["update_test_wer_after_ci95"]
        tlo, thi = r["test_wer_after_ci95"]
        lines.append(
            f"| {r['lr']:g} | {r['epochs']} | {r['replay_utterances']} | {r['anchor']:g} | {pct(r['update_test_wer_before'])} → "
            f"{pct(r['update_test_wer_after'])} ({100 * lo:.1f}-{100 * hi:.1f}) | {100 * r['update_test_wer_rel']:+.0f} % | "
            f"{r['new_entity_accuracy_before']:.2f} → {r['new_entity_accuracy_after']:.2f} | "
            f"{pct(r['test_wer_after'])} ({100 * tlo:.1f}-{100 * thi:.1f}) | {100 * r['test_wer_rel']:+.1f} % | "
            f"{'yes' if r['learns'] else 'no'} | {'yes' if r['forgets_at_most_10pct'] else 'no'} | {r['fit_seconds']:.0f} s |"
        )
    both = [r for r in rows if r["learns"] and r["forgets_at_most_10pct"]]
    lines += ["", "Points meeting both targets on this update: "
              + (", ".join(f"lr {r['lr']:g}, {r['epochs']} epochs, {r['replay_utterances']} replayed"
                            + (f", anchor {r['anchor']:g}" if r["anchor"] else "") for r in both)
                 if both else "none.")]
    return "\n".join(lines) + "\n"


def chain_rows(result: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The regime over a whole chain, from one ``results.json`` of ``recipes/synthetic/updates.py``.

    Returns:
        One row per update ``k`` (``update_test_wer_before``/``_after`` on its own
        ``update-k-test`` right after it, their relative change, new-entity accuracy before
        and after, base ``test`` WER after it) and the verdict: ``learns_every_update``
        (each update at least halves its own split's WER) and ``test_wer_rel_after_last``
        with ``forgets_at_most_10pct``.
    """
    reg = regime_of([result])
    rows = [{
        "update": u["update"],
        "update_test_wer_before": u["before"],
        "update_test_wer_after": u["after"],
        "update_test_wer_after_ci95": u["after_ci95"],
        "new_entity_accuracy_before": u["new_entity_accuracy_before"],
        "new_entity_accuracy_after": u["new_entity_accuracy_after"],
        "test_wer_after": u["test_wer_after"],
        "update_test_wer_rel": u["ratio"] - 1,
        "learns": u["ratio"] <= LEARN,
    } for u in reg["per_update"]]
    verdict = {"test_wer_before": reg["base_test_wer_base"], "test_wer_rel_after_last": reg["forgetting_rel"],
               "learns_every_update": reg["halves_every_update"], "forgets_at_most_10pct": reg["forgetting_rel"] <= FORGET}
    return rows, verdict


def chain_markdown(rows: list[dict[str, Any]], verdict: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"# Update regime over {len(rows)} chained updates: {meta['method']}",
        "",
        f"Recipe run: `{meta['run']}`  ",
        f"Table: `{meta['command']}`  ",
        f"Base `{meta['base']}` (test WER {pct(verdict['test_wer_before'])}); lr {meta['lr']:g}, {meta['epochs']} epochs, "
        f"{meta['replay_utterances']} replayed `train` utterances per update"
        + (f" + {meta['replay_earlier']} of the earlier updates'" if meta.get("replay_earlier") else "")
        + ". Targets of issue 10: each update at least "
        "halves the WER of its own `update-k-test`; base `test` WER at most 10 % relative higher after the last.",
        "",
        "| update | own `update-k-test` WER: base → after (95 % CI) | change | new-entity accuracy | test WER after |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ci = r["update_test_wer_after_ci95"]
        ci_text = f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else ""
        acc_b, acc_a = r["new_entity_accuracy_before"], r["new_entity_accuracy_after"]
        acc = f"{acc_b:.2f} → {acc_a:.2f}" if acc_b is not None and acc_a is not None else "–"
        lines.append(f"| {r['update']} | {pct(r['update_test_wer_before'])} → {pct(r['update_test_wer_after'])}{ci_text} "
                     f"| {100 * r['update_test_wer_rel']:+.0f} % | {acc} | {pct(r['test_wer_after'])} |")
    lines += ["", f"Every update halves its own split: {'yes' if verdict['learns_every_update'] else 'no'}. "
              f"Base `test` after the last update: {100 * verdict['test_wer_rel_after_last']:+.1f} % relative "
              f"({'within' if verdict['forgets_at_most_10pct'] else 'above'} the 10 % bound)."]
    return "\n".join(lines) + "\n"


def main_chain(argv: list[str]) -> int:
    """``--chain RESULTS.json``: the regime table of a finished chain (no training)."""
    p = argparse.ArgumentParser(prog="update_regime.py --chain")
    p.add_argument("--chain", required=True, help="results.json of recipes/synthetic/updates.py")
    p.add_argument("--results", required=True, help="stem of the .json/.md to write")
    a = p.parse_args(argv)
    path = Path(a.chain)
    if not path.is_file():
        print(f"update_regime: error: {path} does not exist: pass the results.json of a finished "
              "recipes/synthetic/updates.py run.", file=sys.stderr)
        return 2
    try:
        result = json.loads(path.read_text())
        rows, verdict = chain_rows(result)
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as err:
        print(f"update_regime: error: {path} is not the results.json of a finished recipes/synthetic/updates.py run "
              f"({type(err).__name__}: {err}); rerun the recipe (an interrupted run leaves no results.json).",
              file=sys.stderr)
        return 2
    cfg = result["config"]
    run = ("python recipes/synthetic/updates.py " + " ".join(
        f"--{k} {'null' if v is None else v}" for k, v in cfg.items()
        if k in ("base", "root", "method", "updates", "epochs", "lr", "update_utterances", "replay_utterances",
                 "anchor", "seed", "out", "test_other_split") or (k == "budget" and cfg["method"] != "full")
        or (k == "replay_earlier" and v)))
    meta = {"method": cfg["method"], "base": shown_path(cfg["base"], REPO), "lr": result["lr"],
            "epochs": cfg["epochs"], "replay_utterances": cfg["replay_utterances"],
            "replay_earlier": cfg.get("replay_earlier", 0), "run": run,
            "command": "python benchmarks/update_regime.py " + " ".join(argv)}
    text = chain_markdown(rows, verdict, meta)
    write_results(a.results, {"meta": meta, "rows": rows, "verdict": verdict}, text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--chain" or arg.startswith("--chain=") for arg in argv):
        return main_chain(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=None, help="base checkpoint (default: the shared base of benchmarks/base.py)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--grid", nargs="+", default=list(DEFAULT_GRID), help="points LR:EPOCHS:REPLAY")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(REPO / "runs" / "update_regime"))
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "update_regime"))
    p.add_argument("--reuse", action="store_true",
                   help="take the results of points already run in --work with the same options instead of running "
                        "them again")
    p.add_argument("--overwrite", action="store_true",
                   help="replace finished points in --work (another base, seed or option; default: refuse, nothing runs)")
    a = p.parse_args(argv)
    points = [parse_point(g) for g in a.grid]
    if a.base is None:
        from diff_updates import find_base

        a.base = str(find_base(a.root, train=False))
    work = Path(a.work)
    jobs = []
    for lr, epochs, replay, anchor in points:
        name = f"lr{lr:g}-ep{epochs}-replay{replay}" + (f"-anchor{anchor:g}" if anchor else "")
        out = work / name
        cmd = [sys.executable, str(RECIPE), "--base", a.base, "--root", a.root, "--method", "full",
               "--updates", "1", "--epochs", str(epochs), "--lr", str(lr), "--update_utterances", "null",
               "--replay_utterances", str(replay), "--test_other_split", "null", "--seed", str(a.seed),
               "--anchor", str(anchor), "--out", str(out), "--progress", "false", "--threads", "1"]
        jobs.append(Job(name, cmd, out / "results.json"))
    try:  # a finished point is kept only with the same options (base, seed, corpus included), never replaced silently
        done = finished_runs(jobs, a.reuse, a.overwrite)
    except FileExistsError as err:
        print(f"update_regime: error: {err}", file=sys.stderr)
        return 2
    results = run_jobs(jobs, a.jobs, work, cwd=REPO, desc="regime", done=done)
    rows = summarize(results, 1)
    meta = {"base": a.base, "root": a.root, "update": 1, "seed": a.seed,
            "command": " ".join(["python benchmarks/update_regime.py", *(sys.argv[1:] if argv is None else argv)]),
            "targets": {"update_test_wer_at_most": LEARN, "test_wer_rel_at_most": FORGET}}
    text = markdown(rows, meta)
    write_results(a.results, {"meta": meta, "rows": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
