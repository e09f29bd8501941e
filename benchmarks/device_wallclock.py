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

Two more rows per AmNet, the bounds of what its routing could reach on this runtime:
``<name>:fast_every_frame``, the same export with every frame on the fast branch (no
arbitrator call: the fastest any routing of these branches can stream), and, with
``--if-graph``, ``<name>:one_graph``, the arbitrator and both branches merged into one
graph per frame (an ONNX ``If`` node runs the chosen branch; built here from the
exported files, not a format of the package), replaying the routes of the normal run.

Usage::

    python benchmarks/device_wallclock.py --work runs/benchmarks/amnet_sparse_bl \\
        --variants slow_only amnet_factorized factorized_single amnet_sparse sparse_single \\
        [--utterances 40] [--repeats 3] [--if-graph] [--results docs/results/device_wallclock]

Writes ``<results>.json`` and ``.md``; the exports go to ``runs/device_wallclock/<variant>``.
"""

from __future__ import annotations

import argparse
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
    if not manifest.exists() or manifest.stat().st_mtime < Path(ckpt).stat().st_mtime:
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


def one_graph(export_dir: Path) -> Path:
    """Merge ``arbitrator.onnx`` and the branch graphs of a shared-state AmNet into ``one_graph.onnx``.

    Inputs: the arbitrator's and the branches' (``x``, ``backlog_ms``, ``prev_gate``, the states) and
    ``mask (1, K)``, added to the arbitrator's logits (``-inf`` where the host's latency guard forbids a
    branch); outputs: the branch outputs plus ``choice (1,)``. The initializers keep their external data
    in ``weights.safetensors``, so the graph reads the same weights.
    """
    import json

    import onnx
    from onnx import TensorProto, helper

    manifest = json.loads((export_dir / "manifest.json").read_text())
    if manifest.get("routing") != "shared_state" or len(manifest["branches"]) != 2:
        raise ValueError(f"{export_dir}: --if-graph handles shared-state AmNets with two branches")
    arb = onnx.load(str(export_dir / "arbitrator.onnx"), load_external_data=False)
    fast, slow = (onnx.load(str(export_dir / manifest["graphs"][n]["file"]), load_external_data=False)
                  for n in ("fast", "slow"))
    outer = {i.name for g in (arb, fast, slow) for i in g.graph.input} | {"mask"}
    inits = {i.name: i for g in (arb, fast, slow) for i in g.graph.initializer}
    keep = outer | set(inits)

    def renamed(graph: Any, prefix: str) -> tuple[list[Any], Any]:
        name = lambda n: n if n == "" or n in keep else prefix + n  # noqa: E731
        nodes = []
        for node in graph.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.input[:] = [name(i) for i in node.input]
            new.output[:] = [name(o) for o in node.output]
            new.name = prefix + node.name
            nodes.append(new)
        return nodes, name

    def body(graph: Any, prefix: str) -> Any:
        nodes, name = renamed(graph, prefix)
        outs = []
        for o in graph.output:
            nodes.append(helper.make_node("Identity", [name(o.name)], [f"{prefix}out.{o.name}"]))
            outs.append(helper.make_tensor_value_info(f"{prefix}out.{o.name}", TensorProto.FLOAT, None))
        return helper.make_graph(nodes, prefix.rstrip("/"), [], outs)

    nodes, arb_name = renamed(arb.graph, "arbitrator/")
    nodes += [
        helper.make_node("Add", [arb_name(arb.graph.output[0].name), "mask"], ["masked_logits"]),
        helper.make_node("ArgMax", ["masked_logits"], ["choice"], axis=1, keepdims=0),
        helper.make_node("Squeeze", ["choice"], ["choice_scalar"]),
        helper.make_node("Constant", [], ["slow_index"],
                         value=helper.make_tensor("slow_index_value", TensorProto.INT64, [], [manifest["slow_index"]])),
        helper.make_node("Equal", ["choice_scalar", "slow_index"], ["is_slow"]),
        helper.make_node("If", ["is_slow"], [o.name for o in slow.graph.output],
                         then_branch=body(slow.graph, "slow/"), else_branch=body(fast.graph, "fast/")),
    ]
    inputs = list(arb.graph.input) + [i for i in slow.graph.input if i.name != "x"]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 2]))
    outputs = list(slow.graph.output) + [helper.make_tensor_value_info("choice", TensorProto.INT64, [1])]
    graph = helper.make_graph(nodes, "one_graph", inputs, outputs, initializer=list(inits.values()))
    model = helper.make_model(graph, opset_imports=arb.opset_import)
    model.ir_version = arb.ir_version
    out = export_dir / "one_graph.onnx"
    onnx.save(model, str(out))
    return out


def measure_one_graph(export_dir: Path, frames: list[Any], routes: list[list[int]], repeats: int) -> dict[str, Any]:
    """Fastest time per frame of :func:`one_graph` over ``repeats`` rounds, each frame forced to its recorded route.

    Per frame the host builds the feed (the mask forcing the route, as a guard would) and makes one
    ``run``; the arbitrator still runs inside the graph. Checks that the graph took every recorded route.
    """
    import time

    import numpy as np
    import onnxruntime as ort

    from lightning_amortized.device.runtime import ExportedModel, session_options

    model = ExportedModel(export_dir, num_threads=1)
    sess = ort.InferenceSession(str(one_graph(export_dir)), session_options(1), providers=["CPUExecutionProvider"])
    masks = [np.array([[0.0, -np.inf]], np.float32), np.array([[-np.inf, 0.0]], np.float32)]
    best = [float("inf")] * len(frames)
    for _ in range(repeats):
        for i, (x, route) in enumerate(zip(frames, routes)):
            states, prev = model.init_states(), np.zeros((1, 2), np.float32)
            spent = 0.0
            for t, choice in enumerate(route):
                t0 = time.perf_counter()
                out = sess.run(None, {"x": x[t].reshape(1, -1), "backlog_ms": np.zeros(1, np.float32), "prev_gate": prev,
                                      "state.h": states["h"], "state.c": states["c"], "mask": masks[choice]})
                spent += time.perf_counter() - t0
                if int(out[-1][0]) != choice:
                    raise RuntimeError(f"{export_dir}: the merged graph took branch {int(out[-1][0])}, not {choice}")
                states["h"], states["c"] = out[2], out[3]
                prev = np.zeros((1, 2), np.float32)
                prev[0, choice] = 1.0
            best[i] = min(best[i], spent * 1000.0)
    return {"ms_per_frame": sum(best) / sum(len(r) for r in routes)}


def measure(exports: dict[str, Path], frames: list[Any], texts: list[str], repeats: int) -> dict[str, dict[str, Any]]:
    """Per variant: fastest compute per frame over ``repeats`` rounds (models in turn), routes, WER.

    Each AmNet also runs with every frame on its fast branch (``<name>:fast_every_frame``).
    """
    from torchmetrics.functional.text import word_error_rate

    from lightning_amortized.device.runtime import ExportedModel, StreamingRecognizer

    recognizers = {}
    for n, p in exports.items():
        model = ExportedModel(p, num_threads=1)
        recognizers[n] = StreamingRecognizer(model)
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
            "arbitrator_ms_per_frame": sum(arb[name]) / n_frames,
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
        arb = f"{v['arbitrator_ms_per_frame']:.4f}" if "arbitrator_ms_per_frame" in v else "(in the graph)"
        wer = f"{100 * v['wer_runtime']:.2f} %" if "wer_runtime" in v else "(routes of the row above)"
        lines.append(f"| {name} | {v['ms_per_frame']:.4f} | {slow / v['ms_per_frame']:.2f}x | {arb} | {share} | {wer} |")
    lines += ["", "`:fast_every_frame`: the AmNet's export with every frame forced to its fast branch (no arbitrator "
              "call), the fastest any routing of its branches can stream here. `:one_graph` (`--if-graph`): the "
              "arbitrator and both branches merged into one ONNX graph whose `If` node runs the chosen branch, one "
              "`run` per frame, each frame forced to the route of the normal run."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="an amnet.py --work folder with the variants' runs")
    p.add_argument("--variants", nargs="+", required=True, help="variant names; must include slow_only")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"), help="the corpus of the amnet.py run")
    p.add_argument("--utterances", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--if-graph", action="store_true",
                   help="also time each shared-state AmNet as one merged graph per frame (ONNX If)")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "device_wallclock"))
    a = p.parse_args(argv)
    if "slow_only" not in a.variants:
        p.error("--variants must include slow_only (the speed-ups are relative to it)")
    if a.utterances < 1 or a.repeats < 1:
        p.error("--utterances and --repeats must be positive")
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
    if a.if_graph:
        for name in [n for n in a.variants if variants[n]["slow_share"] is not None]:
            row = measure_one_graph(exports[name], frames, variants[name]["routes"], a.repeats)
            row["slow_share"] = variants[name]["slow_share"]
            variants[f"{name}:one_graph"] = row
    for v in variants.values():
        v.pop("routes", None)
    import onnxruntime

    summary = {
        "command": "python benchmarks/device_wallclock.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, onnxruntime {onnxruntime.__version__}",
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "utterances": len(frames), "frames": int(sum(x.shape[0] for x in frames)), "repeats": a.repeats,
        "variants": variants,
    }
    for v in variants.values():
        v["speedup_vs_slow"] = variants["slow_only"]["ms_per_frame"] / v["ms_per_frame"]
    md = markdown(summary)
    write_results(a.results, summary, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
