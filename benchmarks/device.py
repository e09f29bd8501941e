"""On the device: eager PyTorch ``step`` versus the exported ONNX runtime, single-threaded.

Models, all from the shared base of ``benchmarks/base.py`` (3x256 LSTM, CTC, test WER 5.59 %):

==============  ===================================================================
``slow_only``   the base itself (one ``step`` graph)
``fast_only``   ``amnet``'s rank-48 fast branch alone (``force_branch=0``, one graph)
``amnet``       a short warm-started factorized AmNet (``recipes/synthetic/conf/amnet_factorized.yaml``:
                fast branch by truncated SVD of the base, arbitrator trained for the recipe's
                device, on which slow-only runs at rho = 1.5), arbitrator + two branch graphs
``amnet_lc1``   the same with the recipe's second operating point (``lambda_cost 1``, ``lambda_amr 0.5``)
==============  ===================================================================

The AmNets are *not* converged (6 epochs on 3000 training utterances at lr 1e-3, about 9
minutes each on one thread; affordable on 2 shared CPU cores); their WERs are reported as
measured. This benchmark is about the device: per-frame speed of eager ``step`` versus ONNX
Runtime, the runtime's agreement with PyTorch (WER and transcripts), peak resident memory
and cold start of the device process, and a neural diff applied on the device.

Per model: ``ms_per_frame_torch`` (eager ``step`` + CTC layer, 1 thread),
``ms_per_frame_runtime`` (``lightning_amortized.device``, ONNX Runtime, 1 intra-op thread,
arbitrator + chosen branch + CTC layer per encoder frame, features excluded), both the
fastest of ``--repeats`` runs per utterance; ``rtf_runtime`` ((compute + features) / audio),
``wer_torch`` (``ASRModule.transcribe``), ``wer_runtime`` (device runtime, whole-utterance
feature statistics as in training), ``peak_rss_mb`` (``VmHWM`` of the device process) and
``cold_start_s`` (launch of a fresh device process, which blocks ``import torch``, to its
first transcript). ``diff_apply``: a diff made by the ``NeuralDiff`` callback on the base
(one update of ``recipes/synthetic/updates.py``, made if missing) applied to the exported
slow-only model with numpy + safetensors, transcripts compared with PyTorch after ``merge``;
then the same file again (its base is gone: refused) and on the AmNet export (another model:
refused).

Usage::

    python benchmarks/device.py                 # train the AmNets if missing, export, measure
    python benchmarks/device.py --quick         # smoke run (12 utterances), results under runs/device/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
WORK = REPO / "runs" / "device"
CONF = REPO / "recipes" / "synthetic" / "conf"
DEVICE_FLOPS = 69.54e6  # the recipe's device: slow-only at rho = 1.5


# AmNet variants: name -> (label, LightningCLI overrides of amnet_factorized.yaml)
AMNETS: dict[str, tuple[str, list[str]]] = {
    "amnet": ("factorized AmNet (recipe: lambda_cost 2, lambda_amr 1)", []),
    "amnet_lc1": ("factorized AmNet, lambda_cost 1, lambda_amr 0.5 (the recipe's second operating point)",
                  ["--model.lambda_cost", "1.0", "--model.lambda_amr", "0.5"]),
}


def train_amnet(a: argparse.Namespace, name: str = "amnet") -> Path:
    """Warm-start a factorized AmNet from the base and fine-tune briefly; returns its checkpoint."""
    out = WORK / f"{name}.ckpt"
    if out.exists() and not a.retrain:
        return out
    import torch

    torch.set_num_threads(1)
    import lightning.pytorch as pl

    sys.path.insert(0, str(REPO / "benchmarks"))
    from amnet import _warm_start  # noqa: E402

    from lightning_amortized.callbacks import ArbitratorTemperature
    from lightning_amortized.cli import ASRLightningCLI

    args = [
        "--config", str(CONF / "amnet_factorized.yaml"),
        "--data.init_args.root", str(a.root),
        "--data.init_args.max_train_utterances", str(a.train_utts),
        "--trainer.max_epochs", str(a.epochs),
        "--trainer.default_root_dir", str(WORK / f"{name}_run"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "4",
        "--model.lr", "0.001",
        *AMNETS[name][1],
    ]
    pl.seed_everything(0, workers=True)
    cli = ASRLightningCLI(args=args, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    for cb in trainer.callbacks:
        if isinstance(cb, ArbitratorTemperature):
            cb.epochs = a.epochs
    _warm_start(model, str(a.base_ckpt), DEVICE_FLOPS)
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    WORK.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(out)
    (WORK / f"{name}_train.json").write_text(
        json.dumps({"fit_seconds": round(time.time() - t0, 1), "epochs": a.epochs, "train_utterances": a.train_utts,
                    "lr": 0.001, "config": "recipes/synthetic/conf/amnet_factorized.yaml",
                    "overrides": AMNETS[name][1]}, indent=2)
    )
    return out



# -- the device process (no torch) ------------------------------------------------------------------

BLOCKED = ("torch", "lightning", "torchaudio", "torchmetrics", "speechbrain")


def _block_torch() -> None:
    """Make ``import torch`` (and Lightning, torchaudio, ...) fail in this process, as on a device."""

    class _Block:
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not available on the device")
            return None

    sys.meta_path.insert(0, _Block())


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: ``VmHWM`` (``ru_maxrss`` would include the parent's
    peak, since Linux keeps it across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(a: argparse.Namespace) -> int:
    """Transcribe ``a.files`` with each exported model of ``a.model`` (``NAME=DIR``) in the device runtime.

    Models are interleaved per utterance (and their order rotated per repeat), so that a busy
    CPU slows them alike; per utterance and model the fastest of ``a.repeats`` runs is kept.
    Writes hypotheses, routes and timings to ``a.out``.
    """
    _block_torch()
    import numpy as np

    from lightning_amortized.device import ExportedModel, StreamingRecognizer, read_audio

    t_import = time.time()
    items = json.loads(Path(a.files).read_text())
    specs = dict(m.split("=", 1) for m in a.model)
    models = {n: ExportedModel(d, num_threads=1) for n, d in specs.items()}
    # two calls per AmNet frame (arbitrator, then the branch), so the arbitrator's time is measured apart;
    # the runtime's default merged graph is timed by device_wallclock.py
    recs = {n: StreamingRecognizer(m, normalize=a.normalize, backlog="simulated", one_call=False)
            for n, m in models.items()}
    names = list(models)
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    first_done = None
    for item in items:
        wav = read_audio(item["path"], 16000)
        best: dict[str, Any] = {}
        for rep in range(a.repeats):
            for n in names[rep % len(names):] + names[: rep % len(names)]:
                r = recs[n].transcribe(wav, chunk_ms=a.chunk_ms)
                if first_done is None:
                    first_done = time.time()
                old = best.get(n)
                if old is not None:
                    assert r.text == old.text and r.decisions == old.decisions
                if old is None or sum(r.frame_compute_ms) + r.feature_ms < sum(old.frame_compute_ms) + old.feature_ms:
                    best[n] = r
        for n, r in best.items():
            slow = int(models[n].manifest.get("slow_index", 0))
            rows[n].append({"id": item["id"], "text": r.text, "frames": len(r.decisions),
                            "routes": "".join(str(d) for d in r.decisions),
                            "compute_ms": float(np.sum(r.frame_compute_ms)), "feature_ms": r.feature_ms,
                            "audio_ms": r.audio_ms, "eou_ms": r.eou_ms, "finish_ms": r.finish_ms,
                            "slow_frames": int(sum(d == slow for d in r.decisions)),
                            "arbitrator_ms": float(np.sum(r.arbitrator_ms))})
    out = {
        "rows": rows,
        "first_result_time": first_done,
        "import_done_time": t_import,
        "load_seconds": {n: m.load_seconds for n, m in models.items()},
        "peak_rss_mb": _peak_rss_mb(),
        "torch_imported": any(m.split(".")[0] in BLOCKED for m in sys.modules),
    }
    Path(a.out).write_text(json.dumps(out))
    return 0


def run_device(
    exports: dict[str, Path], items: list[dict[str, Any]], out: Path, normalize: str = "utterance", repeats: int = 1
) -> dict[str, Any]:
    """Run :func:`worker` in a fresh process; adds ``cold_start_s`` (launch to first transcript) and ``wall_s``."""
    files = out.with_suffix(".files.json")
    files.write_text(json.dumps(items))
    t0 = time.time()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                    "--model", *[f"{n}={d}" for n, d in exports.items()],
                    "--files", str(files), "--out", str(out), "--normalize", normalize, "--repeats", str(repeats)],
                   check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    res = json.loads(out.read_text())
    res["cold_start_s"] = res["first_result_time"] - t0
    res["wall_s"] = time.time() - t0
    return res


# -- the PyTorch side -------------------------------------------------------------------------------


def _wer(hyps: list[str], refs: list[str]) -> float:
    from torchmetrics.text import WordErrorRate

    return float(WordErrorRate()(hyps, refs))


def load_test_split(root: str, limit: int | None = None) -> tuple[list[Any], list[dict[str, str]], list[str], list[Any]]:
    """The ``test`` manifest's utterances, device items ``{id, path}``, references and features ``(1, T, 80)``."""
    import torch

    from lightning_amortized.data.datamodule import load_audio
    from lightning_amortized.data.features import LogMelFilterbank
    from lightning_amortized.data.prepare import read_manifest

    utts = read_manifest(Path(root) / "manifests" / "test.jsonl")[:limit]
    fb = LogMelFilterbank()
    feats = []
    for u in utts:
        wav = load_audio(u.path)
        feats.append(fb(wav[None], torch.tensor([wav.shape[0]]))[0])
    return utts, [{"id": u.id, "path": u.path} for u in utts], [u.words for u in utts], feats


def torch_transcribe(model: Any, feats: list[Any]) -> list[str]:
    """``ASRModule.transcribe`` of each utterance (features ``(1, T, 80)``)."""
    import torch

    model.eval()
    with torch.no_grad():
        return [model.transcribe(f, torch.tensor([f.shape[1]]))[0] for f in feats]


def torch_speed(entries: dict[str, tuple[Any, int | None]], feats: list[Any], repeats: int) -> dict[str, Any]:
    """Eager single-frame ``step`` + CTC layer per frame, the models interleaved per utterance.

    Per utterance and model the fastest of ``repeats`` runs is kept (order rotated per repeat).

    Returns:
        ``{name: {"ms_per_frame", "frame_p50_ms", "frames", "routes"}}``.
    """
    import statistics

    import torch

    names = list(entries)
    out: dict[str, Any] = {n: {"times": [], "routes": []} for n in names}
    for n in names:
        entries[n][0].eval()
        begin = getattr(entries[n][0].encoder, "begin_streaming", None)
        if callable(begin):
            begin()
    try:
        with torch.no_grad():
            for f in feats:
                best: dict[str, tuple[list[float], list[int]]] = {}
                for rep in range(repeats):
                    for n in names[rep % len(names):] + names[: rep % len(names)]:
                        model, force = entries[n]
                        enc = model.encoder
                        amortized = callable(getattr(enc, "step_with_decision", None))
                        x, m = model.stacker(f, torch.tensor([f.shape[1]]))
                        state, times, routes = enc.init_state(1), [], []
                        for t in range(int(m[0])):
                            x_t = x[0, t : t + 1]
                            t0 = time.perf_counter()
                            if amortized:
                                y, state, c = enc.step_with_decision(x_t, state, force,
                                                                     final=t == int(m[0]) - 1)
                            else:
                                y, state = enc.step(x_t, state)
                            model.head(y).argmax(-1)
                            times.append((time.perf_counter() - t0) * 1000.0)
                            routes.append(int(c[0]) if amortized else 0)
                        if n not in best or sum(times) < sum(best[n][0]):
                            best[n] = (times, routes)
                for n, (times, routes) in best.items():
                    out[n]["times"] += times
                    out[n]["routes"].append("".join(str(r) for r in routes))
    finally:
        for n in names:
            end = getattr(entries[n][0].encoder, "end_streaming", None)
            if callable(end):
                end()
    return {n: {"ms_per_frame": sum(v["times"]) / max(1, len(v["times"])),
                "frame_p50_ms": statistics.median(v["times"]) if v["times"] else None,
                "frames": len(v["times"]), "routes": v["routes"]} for n, v in out.items()}


def measure(a: argparse.Namespace, ckpts: dict[str, Path]) -> int:
    import shutil

    import torch

    torch.set_num_threads(1)
    from lightning_amortized.device.diffs import DiffError, apply_diff
    from lightning_amortized.diffs.io import merge
    from lightning_amortized.export import export_onnx, load_for_export

    t_start = time.time()
    load_start = os.getloadavg()
    utts, items, refs, feats = load_test_split(a.root, 12 if a.quick else None)
    audio_s = sum(u.duration for u in utts)
    timing_utts = min(len(utts), a.timing_utts)

    exports = WORK / "export"
    base = load_for_export(a.base_ckpt)
    amnet_ckpt = ckpts["amnet"]
    fast = load_for_export(amnet_ckpt)
    fast.encoder.force_branch = 0
    specs = {"slow_only": (base, str(a.base_ckpt), None), "fast_only": (fast, f"{amnet_ckpt} (force_branch=0)", 0)}
    for name, ckpt in ckpts.items():
        specs[name] = (load_for_export(ckpt), str(ckpt), None)

    # 1. export; WER, transcripts, peak memory and cold start: one fresh device process per model
    results: dict[str, Any] = {}
    manifests: dict[str, Any] = {}
    acc: dict[str, Any] = {}
    for name, (model, source, force) in specs.items():
        d = exports / name
        if d.exists():
            shutil.rmtree(d)
        t0 = time.time()
        manifests[name] = export_onnx(model, d, source=source)
        export_s = time.time() - t0
        hyps_torch = torch_transcribe(model, feats)
        dev = run_device({name: d}, items, WORK / f"{name}.device.json")
        rows = dev["rows"][name]
        hyps_rt = [r["text"] for r in rows]
        acc[name] = rows
        results[name] = {
            "wer_torch": _wer(hyps_torch, refs),
            "wer_runtime": _wer(hyps_rt, refs),
            "peak_rss_mb": dev["peak_rss_mb"],
            "cold_start_s": dev["cold_start_s"],
            "same_transcripts": sum(x == y for x, y in zip(hyps_rt, hyps_torch)),
            "utterances": len(rows),
            "export_seconds": round(export_s, 2),
            "device_load_seconds": dev["load_seconds"][name],
            "torch_imported_on_device": dev["torch_imported"],
            "kind": manifests[name]["kind"],
            "source": source,
            "flops_per_frame_branches": [manifests[name]["graphs"][b]["flops_per_frame"]
                                         for b in manifests[name]["branches"]],
            "arbitrator_flops": (manifests[name]["arbitrator"] or {}).get("flops_per_frame", 0),
        }
        if name != "fast_only" and not a.quick:  # causal feature statistics: true streaming
            run = run_device({name: d}, items, WORK / f"{name}.running.json", normalize="running")
            results[name]["wer_runtime_running_norm"] = _wer([r["text"] for r in run["rows"][name]], refs)
        print(f"[{name}] exported in {export_s:.1f} s; WER torch {results[name]['wer_torch']:.4f}, runtime "
              f"{results[name]['wer_runtime']:.4f}; {results[name]['same_transcripts']}/{len(rows)} identical",
              flush=True)

    # 2. speed: all models interleaved, fastest of `repeats` per utterance, on both sides
    entries = {n: (m, f) for n, (m, _, f) in specs.items()}
    entries["amnet_forced_slow"] = (specs["amnet"][0], 1)  # the slow branch through the AmNet's eager code path
    ts = torch_speed(entries, feats[:timing_utts], a.repeats)
    speed = run_device({n: exports / n for n in specs}, items[:timing_utts], WORK / "speed.device.json",
                       repeats=a.repeats)
    for name in specs:
        rt = speed["rows"][name]
        frames = sum(r["frames"] for r in rt)
        compute = sum(r["compute_ms"] for r in rt)
        eou = sorted(r["eou_ms"] for r in rt)
        fin = sorted(r["finish_ms"] for r in rt)
        routes_torch = ts[name]["routes"]
        routes_rt = [r["routes"] for r in acc[name][:timing_utts]]
        same_frames = sum(sum(p == q for p, q in zip(x, y)) for x, y in zip(routes_torch, routes_rt))
        amnet = manifests[name]["kind"] == "amnet"
        results[name].update({
            "ms_per_frame_torch": ts[name]["ms_per_frame"],
            "ms_per_frame_runtime": compute / frames,
            "rtf_runtime": (compute + sum(r["feature_ms"] for r in rt)) / sum(r["audio_ms"] for r in rt),
            "rtf_torch_encoder": ts[name]["ms_per_frame"] / manifests[name]["frame_ms"],
            "frame_p50_ms_torch": ts[name]["frame_p50_ms"],
            "arbitrator_ms_per_frame_runtime": sum(r["arbitrator_ms"] for r in rt) / frames,
            "timed_frames": frames,
            "slow_share_runtime": sum(r["slow_frames"] for r in rt) / frames if amnet else None,
            "routes_identical_frames": same_frames if amnet else None,
            "routes_compared_frames": sum(len(x) for x in routes_torch) if amnet else None,
            "eou_ms_runtime_p50": eou[len(eou) // 2],
            "eou_ms_runtime_p90": eou[int(0.9 * (len(eou) - 1))],
            "finish_ms_runtime_p50": fin[len(fin) // 2],
            "finish_ms_runtime_p90": fin[int(0.9 * (len(fin) - 1))],
        })
        if name == "amnet":
            results[name]["ms_per_frame_torch_forced_slow_branch"] = ts["amnet_forced_slow"]["ms_per_frame"]
        print(f"[{name}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in results[name].items() if k != "source"), flush=True)

    # -- a diff made by the NeuralDiff callback, applied on the device --------------------------------
    diff_file = Path(a.diff)
    if not diff_file.exists():  # one update of the chained-updates recipe: NeuralDiff, sparse 10 %, fp32
        subprocess.run([sys.executable, str(REPO / "recipes" / "synthetic" / "updates.py"), "--base", str(a.base_ckpt),
                        "--root", str(a.root), "--method", "sparse", "--budget", "0.1", "--value-dtype", "fp32",
                        "--updates", "1", "--epochs", "1", "--out", str(diff_file.parent), "--threads", "1",
                        "--test-utterances", "40", "--no-progress"], check=True, cwd=REPO)
    shown = diff_file.relative_to(REPO) if diff_file.is_relative_to(REPO) else diff_file
    diff_rec: dict[str, Any] = {"file": str(shown)}
    d = exports / "slow_only_updated"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(exports / "slow_only", d)
    t0 = time.time()
    info = apply_diff(d, diff_file)
    diff_rec["apply_seconds"] = round(time.time() - t0, 3)
    merged = load_for_export(a.base_ckpt)
    merge(merged, diff_file)
    hyps_torch = torch_transcribe(merged, feats)
    dev = run_device({"updated": d}, items, WORK / "slow_only_updated.device.json")
    hyps_rt = [r["text"] for r in dev["rows"]["updated"]]
    before = (d / "weights.safetensors").read_bytes()
    try:
        apply_diff(d, diff_file)  # the same update again: its base is no longer what the device holds
        refused = False
    except DiffError as err:
        refused = True
        diff_rec["refusal_message"] = str(err)
    diff_rec.update({
        "bytes": info.file_bytes,
        "same_transcripts": hyps_rt == hyps_torch,
        "identical_transcripts": sum(x == y for x, y in zip(hyps_rt, hyps_torch)),
        "utterances": len(hyps_rt),
        "wer_torch_merged": _wer(hyps_torch, refs),
        "wer_runtime_updated": _wer(hyps_rt, refs),
        "weights_bytes": sum(p.numel() * 4 for p in base.parameters()),
        "wrong_base_refused": refused,
        "weights_untouched_after_refusal": (d / "weights.safetensors").read_bytes() == before,
        "method": info.method,
        "targets": len(info.targets),
        "made_by": "NeuralDiff callback (recipes/synthetic/updates.py --method sparse --budget 0.1 --updates 1 "
                   "--epochs 1)",
    })
    try:
        apply_diff(exports / "amnet", diff_file)  # a diff for another model
        diff_rec["other_model_refused"] = False
    except DiffError:
        diff_rec["other_model_refused"] = True
    print(f"[diff_apply] {diff_rec}", flush=True)

    train_info = {n: json.loads((WORK / f"{n}_train.json").read_text()) for n in ckpts
                  if (WORK / f"{n}_train.json").exists()}
    import onnxruntime

    summary = {
        "benchmark": "device",
        "command": "python benchmarks/device.py" + (" --quick" if a.quick else ""),
        "slow_only": results["slow_only"],
        "fast_only": results["fast_only"],
        **{n: results[n] for n in ckpts},
        "amnet_labels": {n: AMNETS[n][0] for n in ckpts},
        "amnet_speedup_vs_slow_only_runtime": results["slow_only"]["ms_per_frame_runtime"]
        / results["amnet"]["ms_per_frame_runtime"],
        "amnet_speedup_vs_slow_only_torch": results["slow_only"]["ms_per_frame_torch"]
        / results["amnet"]["ms_per_frame_torch"],
        **{f"{n}_speedup_vs_slow_only_runtime": results["slow_only"]["ms_per_frame_runtime"]
           / results[n]["ms_per_frame_runtime"] for n in ckpts if n != "amnet"},
        "diff_apply": diff_rec,
        "amnet_training": train_info,
        "test_utterances": len(utts),
        "test_audio_seconds": round(audio_s, 1),
        "timing_utterances": timing_utts,
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "threads": 1,
        "timing": f"all models interleaved per utterance, the fastest of {a.repeats} runs per utterance and model "
                  "(torch and runtime alike)",
        "chunk_ms": 100.0,
        "normalize": "utterance",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "note": "2 CPU cores shared with another engineer's jobs"},
        "wall_minutes": round((time.time() - t_start) / 60.0, 1),
    }
    stem = WORK / "device_quick" if a.quick else RESULTS / "device"  # smoke runs stay out of docs/
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(summary))
    print(f"wrote {stem}.json and .md", flush=True)
    return 0


def check_checkpoint(a: argparse.Namespace) -> int:
    """The whole path from a ``make demo`` checkpoint: ``lightning-amortized export``, then the test split in the
    device runtime (torch blocked) versus ``ASRModule.transcribe``; recorded as ``demo_checkpoint`` in the results."""
    import torch

    torch.set_num_threads(1)
    from lightning_amortized.export import load_for_export

    out_dir = WORK / "export" / "demo"
    cmd = [sys.executable, "-m", "lightning_amortized.cli", "export", str(a.demo_ckpt), "--out", str(out_dir)]
    subprocess.run(cmd, check=True, cwd=REPO)
    utts, items, refs, feats = load_test_split(a.root)
    hyps_torch = torch_transcribe(load_for_export(a.demo_ckpt), feats)
    dev = run_device({"demo": out_dir}, items, WORK / "demo.device.json")
    hyps_rt = [r["text"] for r in dev["rows"]["demo"]]
    ckpt = Path(a.demo_ckpt)
    rec = {
        "checkpoint": str(ckpt.relative_to(REPO) if ckpt.is_relative_to(REPO) else ckpt),
        "made_by": a.demo_note,
        "export_command": "lightning-amortized export CKPT --out DIR",
        "utterances": len(utts),
        "wer_asrmodule": _wer(hyps_torch, refs),
        "wer_runtime": _wer(hyps_rt, refs),
        "identical_transcripts": sum(x == y for x, y in zip(hyps_rt, hyps_torch)),
        "torch_imported_on_device": dev["torch_imported"],
    }
    print(f"[demo_checkpoint] {rec}", flush=True)
    path = RESULTS / "device.json"
    summary = json.loads(path.read_text())
    summary["demo_checkpoint"] = rec
    path.write_text(json.dumps(summary, indent=2) + "\n")
    path.with_suffix(".md").write_text(render_markdown(summary))
    return 0


def render_markdown(s: dict[str, Any]) -> str:
    rows = [("slow_only", "slow-only (base 3x256 LSTM)"), ("fast_only", "fast-only (rank-48 branch of `amnet`)")]
    rows += [(n, f"`{n}`: {label}") for n, label in s["amnet_labels"].items()]
    out = [
        "# On the device: eager PyTorch `step` vs the exported ONNX runtime",
        "",
        f"`{s['command']}`; test split, {s['test_utterances']} utterances ({s['test_audio_seconds']} s of audio); "
        f"one thread on both sides; {s['machine']['cores']} shared CPU cores ({s['machine']['cpu']}), torch "
        f"{s['machine']['torch']}, onnxruntime {s['machine']['onnxruntime']}. Per encoder frame (30 ms of audio): "
        "arbitrator (AmNet) + chosen branch + CTC layer. The device runtime runs in its own process with "
        f"`import torch` blocked. Timing: {s['timing']}, over {s['timing_utterances']} utterances; load average "
        f"at start and end {s['load_average_start_end']} (other jobs shared the 2 cores).",
        "",
        "| model | ms/frame torch | ms/frame runtime | RTF runtime | WER torch | WER runtime | identical transcripts "
        "| slow share | routes as torch | peak RSS MB | cold start s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in rows:
        r = s[key]
        share = "" if r["slow_share_runtime"] is None else f"{100 * r['slow_share_runtime']:.1f}%"
        routes = "" if r["routes_compared_frames"] is None else \
            f"{r['routes_identical_frames']}/{r['routes_compared_frames']} frames"
        out.append(
            f"| {label} | {r['ms_per_frame_torch']:.3f} | {r['ms_per_frame_runtime']:.3f} | {r['rtf_runtime']:.4f} | "
            f"{100 * r['wer_torch']:.2f}% | {100 * r['wer_runtime']:.2f}% | {r['same_transcripts']}/{r['utterances']} | "
            f"{share} | {routes} | {r['peak_rss_mb']:.0f} | {r['cold_start_s']:.2f} |"
        )
    out += [
        "",
        "End-of-utterance latency on this machine (ms, p50 / p90 over the test utterances): `eou` is the backlog "
        "rule of training run over the measured per-frame compute times (the latency when frames are encoded "
        "as the audio arrives, i.e. with causal features); `finish` is measured from the last audio chunk to the "
        "final transcript with whole-utterance feature normalisation (every frame waits for the end of the audio).",
        "",
        "| model | eou p50 | eou p90 | finish p50 | finish p90 | WER runtime, causal running normalisation |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in rows:
        r = s[key]
        run = f"{100 * r['wer_runtime_running_norm']:.2f}%" if "wer_runtime_running_norm" in r else "not measured"
        out.append(f"| {label} | {r['eou_ms_runtime_p50']:.3f} | {r['eou_ms_runtime_p90']:.3f} | "
                   f"{r['finish_ms_runtime_p50']:.1f} | {r['finish_ms_runtime_p90']:.1f} | {run} |")
    d = s["diff_apply"]
    out += [
        "",
        f"Measured per-frame speedup of `amnet` over slow-only: **{s['amnet_speedup_vs_slow_only_runtime']:.2f}x** "
        f"in the device runtime (ONNX Runtime), {s['amnet_speedup_vs_slow_only_torch']:.2f}x in eager PyTorch"
        + "".join(f"; `{n}`: {s[f'{n}_speedup_vs_slow_only_runtime']:.2f}x in the runtime" for n in s["amnet_labels"]
                  if n != "amnet")
        + ". Of the runtime's time per AmNet frame, the arbitrator graph takes "
        + ", ".join(f"{s[n]['arbitrator_ms_per_frame_runtime']:.3f} ms (`{n}`)" for n in s["amnet_labels"]) + ".",
        "",
        "Eager PyTorch `step` of slow-only goes through `nn.LSTM` (one call per frame, "
        f"{s['slow_only']['ms_per_frame_torch']:.3f} ms/frame); the AmNet's `step` computes its cells with "
        "`addmm`, and its slow branch forced on every frame through that same code path takes "
        f"{s['amnet'].get('ms_per_frame_torch_forced_slow_branch', float('nan')):.3f} ms/frame: the fairer eager "
        "baseline for the speedup.",
        "",
        f"Diff on the device: `{d['file']}` ({d['bytes']:,} bytes, {d['method']}, {d['targets']} targets; "
        f"{d['made_by']}) applied to the exported slow-only weights in {d['apply_seconds']} s with numpy + "
        f"safetensors: transcripts identical to PyTorch with the diff merged: **{d['same_transcripts']}** "
        f"({d['identical_transcripts']}/{d['utterances']}; WER {100 * d['wer_torch_merged']:.2f}% torch, "
        f"{100 * d['wer_runtime_updated']:.2f}% runtime). Applying it a second time (wrong base) refused: "
        f"{d['wrong_base_refused']}, weights untouched: {d['weights_untouched_after_refusal']}; applying it to the "
        f"AmNet export (another model) refused: {d['other_model_refused']}.",
        "",
    ]
    out += ["The models were trained with whole-utterance feature statistics; the causal running statistics "
            "(`--normalize running`, true streaming) are a train/test mismatch, which the last column measures.", ""]
    demo = s.get("demo_checkpoint")
    if demo:
        out += [f"From a `make demo` checkpoint (`{demo['checkpoint']}`, {demo['made_by']}): "
                f"`{demo['export_command']}`, then the {demo['utterances']} test utterances in the device runtime "
                f"(torch imported: {demo['torch_imported_on_device']}): WER {100 * demo['wer_runtime']:.2f}% versus "
                f"{100 * demo['wer_asrmodule']:.2f}% with `ASRModule.transcribe`; "
                f"{demo['identical_transcripts']}/{demo['utterances']} transcripts identical "
                "(`python benchmarks/device.py --demo-ckpt CKPT`).", ""]
    for n, t in (s.get("amnet_training") or {}).items():
        out += [f"`{n}` is not converged: warm-started from the base (fast branch by truncated SVD), "
                f"{t.get('epochs')} epochs on {t.get('train_utterances')} training utterances, lr {t.get('lr')} "
                f"({t.get('fit_seconds')} s, one thread), `{t.get('config')}` {' '.join(t.get('overrides', []))}.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-ckpt", default=None,
                   help="slow-only checkpoint (default: the shared base of benchmarks/base.py; `make base` trains it)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--train-utts", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--phase", choices=["train", "all"], default="all")
    p.add_argument("--timing-utts", type=int, default=360, help="utterances timed frame by frame in eager PyTorch")
    p.add_argument("--diff", default=str(WORK / "update" / "diff-1.safetensors"),
                   help="a NeuralDiff file made on the base (recipes/synthetic/updates.py --updates 1)")
    p.add_argument("--quick", action="store_true")
    # the device worker (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--normalize", default="utterance", help=argparse.SUPPRESS)
    p.add_argument("--chunk-ms", type=float, default=100.0, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per utterance; the fastest is kept")
    p.add_argument("--demo-ckpt", default=None,
                   help="only check a `make demo` checkpoint end to end and add it to docs/results/device.*")
    p.add_argument("--demo-note", default="recipes/synthetic/run.py", help="how the demo checkpoint was made")
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    if a.demo_ckpt:
        return check_checkpoint(a)
    if a.base_ckpt is None:  # the shared base of the current corpus and config, never trained here
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from base import ensure_base

        a.base_ckpt = str(ensure_base(root=a.root, train=False))
    names = ["amnet"] if a.quick else list(AMNETS)
    ckpts = {n: train_amnet(a, n) for n in names}
    print(f"AmNet checkpoints: {ckpts}", flush=True)
    if a.phase == "train":
        return 0
    return measure(a, ckpts)


if __name__ == "__main__":
    sys.exit(main())
