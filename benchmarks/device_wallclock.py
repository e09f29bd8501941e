"""The variants of an ``amnet.py`` run on the device runtime: ONNX graphs, one thread, side by side.

``amnet.py --wallclock-side-by-side`` times eager PyTorch ``step`` at batch 1, where a frame
costs a few dozen small operator calls and counted FLOPs barely show. This benchmark exports
each variant's final checkpoint (``lightning-amortized export``: ONNX step graphs, the
arbitrator a graph of its own) and runs it in ``lightning_amortized.device``'s
``StreamingRecognizer`` (ONNX Runtime, one intra-op thread, the simulated device of the
AmNet's training, routes identical to PyTorch) on the same test utterances, the models taken in
turn, the fastest of ``--repeats`` rounds per utterance. Per variant: compute per encoder frame
(arbitrator + chosen branch + CTC layer, features excluded), the arbitrator's share of it, the
slow share of frames, the speed-up over slow-only, and the runtime's WER on those utterances
(a check that the graphs are the trained model, not a score).

Shared-state AmNets run as the runtime runs them by default: one merged graph per frame (the
arbitrator and both branches, an ONNX ``If`` node running the chosen branch; ``amnet_step.onnx``
of the export). Two more rows per AmNet: ``<name>:two_calls``, the arbitrator and then the chosen
branch as two calls (``StreamingRecognizer(one_call=False)``; the arbitrator's own time is
measured there), and ``<name>:fast_every_frame``, the same export with every frame on the fast
branch (no arbitrator call: the fastest any routing of these branches can stream).

Usage::

    python benchmarks/device_wallclock.py --work runs/benchmarks/amnet_sparse_bl \\
        --variants slow_only amnet_factorized factorized_single amnet_sparse sparse_single \\
        [--utterances 40] [--repeats 3] [--results docs/results/device_wallclock]

Writes ``<results>.json`` and ``.md``; the exports go to ``runs/device_wallclock/<variant>``.

**What a pair could reach, before training it** (``--bound BASE.ckpt --ranks R ...``): for each
rank, the base's LSTM with a rank-``R`` fast branch (its SVD truncation, as ``amnet.py`` starts
every factorized AmNet) and an untrained arbitrator is exported and timed with every frame forced
to the slow branch, every frame forced to the fast one, and the arbitrator's own call; the base
alone is slow-only. Routing does not change what a frame costs, so these give the speed-up over
slow-only of any AmNet of that pair at slow share ``s``, ``slow_only / (s * slow + (1 - s) * fast
+ arbitrator)`` (two calls per frame; the merged graph saves a little more), and the largest slow
share that still reaches ``--target`` (default 1.6x)::

    python benchmarks/device_wallclock.py --bound runs/base/5ba2f7c3d7ff27bb/base.ckpt --ranks 64 96 128 \
        [--results docs/results/device_wallclock_bound_<base key>]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from lightning_amortized.experiment import write_results  # noqa: E402

EXPORTS = REPO / "runs" / "device_wallclock"


def export(name: str, work: Path) -> Path:
    """Export ``work/name``'s final checkpoint (re-export only when the checkpoint is newer)."""
    from amnet import final_checkpoint

    from lightning_amortized.export import export_onnx, load_for_export, verify_export

    ckpt = final_checkpoint(work / name)
    out = EXPORTS / work.name / name
    manifest = out / "manifest.json"
    if (not manifest.exists() or manifest.stat().st_mtime < Path(ckpt).stat().st_mtime
            or "merged_step" not in json.loads(manifest.read_text())):  # exported before merged graphs
        model = load_for_export(ckpt)
        export_onnx(model, out, source=str(ckpt))
        check = verify_export(model, out)
        if check["max_abs_logit_diff"] > 1e-4 or not check["routes_identical"]:
            raise SystemExit(f"{out}: the exported graphs do not reproduce eager step ({check}).")
    return out


def encoder_frames(root: str, utterances: int, stack_from: Path) -> tuple[list[Any], list[str]]:
    """Encoder input frames (normalised, stacked features, numpy) and reference texts of the first test utterances."""
    from amnet import stacked_test_inputs

    from lightning_amortized.module import load_asr_module

    inputs, texts = stacked_test_inputs(root, utterances, load_asr_module(stack_from).stacker)
    return [x.numpy() for x in inputs], texts


def measure(exports: dict[str, Path], frames: list[Any], texts: list[str], repeats: int) -> dict[str, dict[str, Any]]:
    """Per variant: fastest compute per frame over ``repeats`` rounds (models in turn), routes, WER.

    Each AmNet also runs as two calls per frame (``<name>:two_calls``, if its export has a merged graph)
    and with every frame on its fast branch (``<name>:fast_every_frame``).
    """
    from torchmetrics.functional.text import word_error_rate

    from lightning_amortized.device.runtime import ExportedModel, StreamingRecognizer

    recognizers = {}
    for n, p in exports.items():
        model = ExportedModel(p, num_threads=1)
        recognizers[n] = StreamingRecognizer(model)
        if model.merged_spec is not None:
            recognizers[f"{n}:two_calls"] = StreamingRecognizer(model, one_call=False)
        if model.num_branches > 1:
            fast = min(range(model.num_branches), key=lambda k: model.branch_flops[k])
            recognizers[f"{n}:fast_every_frame"] = StreamingRecognizer(model, force_branch=fast)
    exports = dict.fromkeys(recognizers)
    best = {n: [float("inf")] * len(frames) for n in exports}
    arb = {n: [0.0] * len(frames) for n in exports}
    last: dict[str, list[Any]] = {n: [None] * len(frames) for n in exports}
    for _ in range(repeats):
        for name, rec in recognizers.items():
            for i, x in enumerate(frames):
                t = rec.run_frames(x)
                total = float(sum(t.frame_compute_ms))
                if total < best[name][i]:
                    best[name][i], arb[name][i] = total, float(sum(t.arbitrator_ms))
                last[name][i] = t
    n_frames = sum(x.shape[0] for x in frames)
    out = {}
    for name, rec in recognizers.items():
        ts = last[name]
        slow = max(range(rec.model.num_branches), key=lambda k: rec.model.branch_flops[k])
        out[name] = {
            "ms_per_frame": sum(best[name]) / n_frames,
            # None: the arbitrator ran inside the merged graph, its time not apart
            "arbitrator_ms_per_frame": None if rec.one_call else sum(arb[name]) / n_frames,
            "slow_share": sum(sum(d == slow for d in t.decisions) for t in ts) / n_frames
            if rec.model.num_branches > 1 else None,
            "branch_flops": list(rec.model.branch_flops),
            "wer_runtime": float(word_error_rate([t.text for t in ts], texts)),
            "routes": [list(t.decisions) for t in ts],
        }
    return out


def markdown(summary: dict[str, Any]) -> str:
    slow = summary["variants"]["slow_only"]["ms_per_frame"]
    lines = [
        "# The variants on the device runtime (ONNX Runtime, one thread)", "",
        f"Command: `{summary['command']}` ({summary['machine']}; load average {summary['load_average'][0]:.2f} before, "
        f"{summary['load_average'][1]:.2f} after). {summary['utterances']} `test` utterances, {summary['frames']} "
        f"encoder frames of 30 ms, fastest of {summary['repeats']} rounds per utterance, models taken in turn; "
        "compute per frame = arbitrator + chosen branch + CTC layer (features excluded). AmNets route for the "
        "device they were trained for (simulated backlog), as in PyTorch.", "",
        "| variant | ms / frame | speed vs slow-only | arbitrator ms / frame | slow share | WER (runtime, these utterances) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, v in summary["variants"].items():
        share = "-" if v.get("slow_share") is None else f"{v['slow_share']:.3f}"
        arb = "(in the graph)" if v.get("arbitrator_ms_per_frame") is None else f"{v['arbitrator_ms_per_frame']:.4f}"
        wer = f"{100 * v['wer_runtime']:.2f} %"
        lines.append(f"| {name} | {v['ms_per_frame']:.4f} | {slow / v['ms_per_frame']:.2f}x | {arb} | {share} | {wer} |")
    lines += ["", "An AmNet's own row runs its export as the runtime does by default: shared-state AmNets as one "
              "merged graph per frame (arbitrator and both branches, an ONNX `If` node running the chosen branch). "
              "`:two_calls`: the arbitrator, then the chosen branch, as two calls (the arbitrator's time measured "
              "apart). `:fast_every_frame`: every frame forced to the fast branch (no arbitrator call), the fastest "
              "any routing of its branches can stream here."]
    return "\n".join(lines) + "\n"


def run_header(argv: list[str] | None, load0: float, frames: list[Any], repeats: int) -> dict[str, Any]:
    """The command, machine, load average (at the start and now) and workload of a timing run, for its results."""
    import onnxruntime

    return {
        "command": "python benchmarks/device_wallclock.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, onnxruntime {onnxruntime.__version__}",
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "utterances": len(frames), "frames": int(sum(x.shape[0] for x in frames)), "repeats": repeats,
    }


def bound_exports(base: Path, ranks: list[int]) -> dict[str, Path]:
    """Export ``base`` (``slow_only``) and, per rank, the base with a rank-``R`` fast branch and an untrained arbitrator."""
    import copy

    import torch

    from lightning_amortized.export import export_onnx
    from lightning_amortized.module import load_asr_module
    from lightning_amortized.nn import SharedStateAmortizedEncoder

    torch.manual_seed(0)
    model = load_asr_module(base).eval()
    folder = EXPORTS / f"bound-{base.parent.name}"
    out = {"slow_only": folder / "slow_only"}
    export_onnx(model, out["slow_only"], source=str(base))
    for r in ranks:
        pair = copy.deepcopy(model)
        pair.encoder = SharedStateAmortizedEncoder(pair.encoder, fast="lowrank", rank=r)
        out[f"rank_{r}"] = folder / f"rank_{r}"
        export_onnx(pair.eval(), out[f"rank_{r}"], source=f"{base} + rank-{r} fast branch, untrained arbitrator")
    return out


def bound(exports: dict[str, Path], frames: list[Any], repeats: int, target: float) -> dict[str, dict[str, Any]]:
    """Per rank: ms per frame of the slow and the fast branch forced on every frame, of the arbitrator's call, and the
    largest slow share at which an AmNet of the pair streams ``target`` times faster than slow-only (two calls)."""
    from lightning_amortized.device.runtime import ExportedModel, StreamingRecognizer

    recognizers = {"slow_only": StreamingRecognizer(ExportedModel(exports["slow_only"], num_threads=1))}
    for name, path in exports.items():
        if name != "slow_only":
            model = ExportedModel(path, num_threads=1)
            for branch, label in ((1, "slow"), (0, "fast")):
                recognizers[f"{name}:{label}"] = StreamingRecognizer(model, force_branch=branch)
            recognizers[f"{name}:arbitrator"] = StreamingRecognizer(model, one_call=False)
    best = {n: [float("inf")] * len(frames) for n in recognizers}
    names = list(recognizers)
    for round_ in range(repeats):  # the order rotates each round: no graph always runs first
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            for i, x in enumerate(frames):
                t = recognizers[name].run_frames(x)
                ms = t.arbitrator_ms if name.endswith(":arbitrator") else t.frame_compute_ms
                best[name][i] = min(best[name][i], float(sum(ms)))
    n_frames = sum(x.shape[0] for x in frames)
    ms = {n: sum(v) / n_frames for n, v in best.items()}
    # the reference: the base's own export or, if faster, the same arithmetic as a pair's slow branch (the same
    # graph but for a bias sum): never a slow-only slowed by where it ran
    reference = min([ms["slow_only"], *(v for n, v in ms.items() if n.endswith(":slow"))])
    out = {"slow_only": {"ms_per_frame": ms["slow_only"], "reference_ms": reference,
                         "flops": ExportedModel(exports["slow_only"]).branch_flops[0]}}
    for name, path in exports.items():
        if name == "slow_only":
            continue
        slow, fast, arb = ms[f"{name}:slow"], ms[f"{name}:fast"], ms[f"{name}:arbitrator"]
        flops = ExportedModel(path).branch_flops
        out[name] = {
            "rank": int(name.split("_")[1]), "fast_flops": flops[0], "slow_flops": flops[1],
            "slow_ms": slow, "fast_ms": fast, "arbitrator_ms": arb,
            "fast_every_frame_speedup": reference / (fast + arb),
            "max_slow_share_for_target": max_slow_share(reference, slow, fast, arb, target),
        }
    return out


def max_slow_share(reference: float, slow: float, fast: float, arbitrator: float, target: float) -> float | None:
    """Largest share ``s`` of slow frames with ``reference / (s * slow + (1 - s) * fast + arbitrator) >= target``;
    ``None`` when not even every frame fast reaches it.

    Example:
        >>> max_slow_share(0.3, 0.25, 0.08, 0.02, 1.5), max_slow_share(0.3, 0.25, 0.2, 0.02, 1.6)
        (0.5882352941176471, None)
    """
    budget = reference / target - arbitrator  # what a frame may cost on average, the arbitrator's call apart
    if fast > budget:
        return None
    if slow <= fast or slow <= budget:
        return 1.0
    return (budget - fast) / (slow - fast)


def bound_markdown(summary: dict[str, Any]) -> str:
    rows = summary["ranks"]
    slow_only = rows["slow_only"]
    lines = [
        "# What a factorized pair could stream at, before training it (ONNX Runtime, one thread)", "",
        f"Command: `{summary['command']}` ({summary['machine']}; load average {summary['load_average'][0]:.2f} before, "
        f"{summary['load_average'][1]:.2f} after). Base `{summary['base']}`, {summary['utterances']} `test` utterances, "
        f"{summary['frames']} encoder frames, fastest of {summary['repeats']} rounds per utterance, graphs taken in turn. "
        f"Slow-only (the base alone): {slow_only['ms_per_frame']:.4f} ms per frame ({slow_only['flops'] / 1e6:.2f} "
        f"MFLOPs); reference, the faster of it and the pairs' slow branches (the same arithmetic): "
        f"**{slow_only['reference_ms']:.4f} ms**." + (
            " **The machine was not quiet** (load average above 1.5; this benchmark itself counts about 1): rerun "
            "with other work paused." if summary["load_average"][1] > 1.5 else ""), "",
        f"| fast rank | fast MFLOPs | slow branch ms | fast branch ms | arbitrator ms | all fast + arbitrator vs slow-only "
        f"| largest slow share for {summary['target']:g}x |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        if name != "slow_only":
            lines.append(f"| {r['rank']} | {r['fast_flops'] / 1e6:.3f} | {r['slow_ms']:.4f} | {r['fast_ms']:.4f} | "
                         f"{r['arbitrator_ms']:.4f} | {r['fast_every_frame_speedup']:.2f}x | "
                         + ("not reached" if r["max_slow_share_for_target"] is None
                            else f"{r['max_slow_share_for_target']:.2f}") + " |")
    lines += ["", "Each frame of a pair costs its arbitrator call plus the branch it runs, whatever the routing, so an "
              f"AmNet of the pair with slow share `s` streams at `reference / (s * slow + (1 - s) * fast + arbitrator)` "
              "(two calls per frame; the merged one-call graph saves a few percent more). The last column solves it "
              f"for {summary['target']:g}x. The fast branch is the base's SVD truncation and the arbitrator untrained: "
              "timings only, no accuracy."]
    return "\n".join(lines) + "\n"


def main_bound(a: argparse.Namespace, argv: list[str] | None) -> int:
    base = Path(a.bound)
    if not base.is_file():
        print(f"device_wallclock: error: --bound {str(base)!r} is not a checkpoint file", file=sys.stderr)
        return 2
    if not a.ranks or min(a.ranks) < 1:
        print("device_wallclock: error: --bound needs --ranks with positive ranks", file=sys.stderr)
        return 2
    from lightning_amortized.module import load_asr_module

    hidden = load_asr_module(base).encoder.hidden_size
    if max(a.ranks) >= hidden:
        print(f"device_wallclock: error: --ranks must be below the base's hidden size {hidden} (a fast branch of "
              f"rank {max(a.ranks)} is no cheaper)", file=sys.stderr)
        return 2
    if a.results is None:
        a.results = str(REPO / "docs" / "results" / f"device_wallclock_bound_{base.parent.name}")
    load0 = os.getloadavg()[0]
    exports = bound_exports(base, a.ranks)
    frames, _ = encoder_frames(a.root, a.utterances, base)
    ranks = bound(exports, frames, a.repeats, a.target)
    summary = {**run_header(argv, load0, frames, a.repeats), "base": str(base), "target": a.target, "ranks": ranks}
    md = bound_markdown(summary)
    write_results(a.results, summary, md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="an amnet.py --work folder with the variants' runs")
    p.add_argument("--variants", nargs="+", help="variant names; must include slow_only")
    p.add_argument("--bound", default=None, metavar="BASE.ckpt",
                   help="time what factorized pairs of this base could stream at (with --ranks), no trained AmNet")
    p.add_argument("--ranks", nargs="+", type=int, default=[], help="--bound: fast-branch ranks")
    p.add_argument("--target", type=float, default=1.6, help="--bound: the speed-up over slow-only to solve for")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"), help="the corpus of the amnet.py run")
    p.add_argument("--utterances", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", default=None,
                   help="output stem (default docs/results/device_wallclock; --bound: device_wallclock_bound_<base key>)")
    a = p.parse_args(argv)
    if a.utterances < 1 or a.repeats < 1:
        p.error("--utterances and --repeats must be positive")
    if not a.target > 0:
        p.error("--target must be a positive speed-up")
    if a.ranks and not a.bound:
        p.error("--ranks goes with --bound BASE.ckpt")
    if a.bound:
        return main_bound(a, argv)
    a.results = a.results or str(REPO / "docs" / "results" / "device_wallclock")
    if not a.work or not a.variants:
        p.error("--work and --variants are required (or --bound BASE.ckpt --ranks R ...)")
    if "slow_only" not in a.variants:
        p.error("--variants must include slow_only (the speed-ups are relative to it)")
    work = Path(a.work)
    missing = [n for n in a.variants if not (work / n).is_dir()]
    if missing:
        p.error(f"no run folder for {missing} in {work}")
    load0 = os.getloadavg()[0]
    from lightning_amortized.export import ExportError

    try:
        exports = {n: export(n, work) for n in a.variants}
    except (FileNotFoundError, ExportError) as err:  # a run without a checkpoint, a model the export refuses
        print(f"device_wallclock: error: {err}", file=sys.stderr)
        return 2
    from amnet import final_checkpoint

    frames, texts = encoder_frames(a.root, a.utterances, final_checkpoint(work / "slow_only"))
    variants = measure(exports, frames, texts, a.repeats)
    for v in variants.values():
        v.pop("routes", None)
    summary = {**run_header(argv, load0, frames, a.repeats), "variants": variants}
    for v in variants.values():
        v["speedup_vs_slow"] = variants["slow_only"]["ms_per_frame"] / v["ms_per_frame"]
    md = markdown(summary)
    write_results(a.results, summary, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
