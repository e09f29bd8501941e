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
BASE_CKPT = REPO / "runs" / "base" / "9ef2e920fd3a222d" / "base.ckpt"
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
    """Transcribe the files of ``a.files`` with the device runtime; write hypotheses and timings to ``a.out``."""
    _block_torch()
    import numpy as np

    from lightning_amortized.device import ExportedModel, StreamingRecognizer, read_audio

    items = json.loads(Path(a.files).read_text())
    model = ExportedModel(a.model, num_threads=1)
    rec = StreamingRecognizer(model, normalize=a.normalize, backlog="simulated")
    slow = int(model.manifest.get("slow_index", 0))
    rows, first_done = [], None
    for item in items:
        wav = read_audio(item["path"], model.features.sample_rate)
        r = rec.transcribe(wav, chunk_ms=a.chunk_ms)
        if first_done is None:
            first_done = time.time()
        for _ in range(a.repeats - 1):  # keep the least disturbed run (the CPU is shared)
            again = rec.transcribe(wav, chunk_ms=a.chunk_ms)
            assert again.text == r.text and again.decisions == r.decisions
            if sum(again.frame_compute_ms) + again.feature_ms < sum(r.frame_compute_ms) + r.feature_ms:
                r = again
        rows.append({"id": item["id"], "text": r.text, "frames": len(r.decisions),
                     "compute_ms": float(np.sum(r.frame_compute_ms)), "feature_ms": r.feature_ms,
                     "audio_ms": r.audio_ms, "eou_ms": r.eou_ms, "finish_ms": r.finish_ms,
                     "slow_frames": int(sum(d == slow for d in r.decisions)),
                     "frame_p50_ms": float(np.median(r.frame_compute_ms)),
                     "arbitrator_ms": float(np.sum(r.arbitrator_ms))})
    out = {
        "rows": rows,
        "first_result_time": first_done,
        "load_seconds": model.load_seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "torch_imported": any(m.split(".")[0] in BLOCKED for m in sys.modules),
        "weights_sha256": model.weights_sha256,
    }
    Path(a.out).write_text(json.dumps(out))
    return 0


def run_device(
    export_dir: Path, items: list[dict[str, Any]], out: Path, normalize: str = "utterance", repeats: int = 1
) -> dict[str, Any]:
    """Run :func:`worker` in a fresh process; adds ``cold_start_s`` (launch to first transcript) and ``wall_s``."""
    files = out.with_suffix(".files.json")
    files.write_text(json.dumps(items))
    t0 = time.time()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--model", str(export_dir),
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


def torch_side(
    model: Any, feats: list[Any], timing_utts: int, force_branch: int | None = None, transcribe: bool = True,
    repeats: int = 1,
) -> dict[str, Any]:
    """``ASRModule.transcribe`` per utterance (WER), and eager single-frame ``step`` + CTC layer timing."""
    import torch

    torch.set_num_threads(1)
    model.eval()
    hyps = []
    with torch.no_grad():
        for f in feats if transcribe else []:
            hyps.append(model.transcribe(f, torch.tensor([f.shape[1]]))[0])
    enc = model.encoder
    amortized = callable(getattr(enc, "step_with_decision", None))
    begin, end = getattr(enc, "begin_streaming", None), getattr(enc, "end_streaming", None)
    if callable(begin):
        begin()
    frame_ms, frames, slow_frames = [], 0, 0
    try:
        with torch.no_grad():
            for f in feats[:timing_utts]:
                x, n = model.stacker(f, torch.tensor([f.shape[1]]))
                best: list[float] | None = None
                for _ in range(repeats):  # keep the least disturbed run (the CPU is shared)
                    state, times, slow = enc.init_state(1), [], 0
                    for t in range(int(n[0])):
                        x_t = x[0, t : t + 1]
                        t0 = time.perf_counter()
                        if amortized:
                            y, state, c = enc.step_with_decision(x_t, state, force_branch)
                        else:
                            y, state = enc.step(x_t, state)
                        model.head(y).argmax(-1)
                        times.append((time.perf_counter() - t0) * 1000.0)
                        if amortized:
                            slow += int(int(c[0]) == 1)
                    if best is None or sum(times) < sum(best):
                        best = times
                frame_ms += best
                frames += int(n[0])
                slow_frames += slow
    finally:
        if callable(end):
            end()
    import statistics

    return {"hyps": hyps, "ms_per_frame": sum(frame_ms) / max(1, frames), "frame_p50_ms": statistics.median(frame_ms) if frame_ms else None,
            "timed_frames": frames, "slow_share_eager": slow_frames / max(1, frames)}


def measure(a: argparse.Namespace, ckpts: dict[str, Path]) -> int:
    import shutil

    import torch

    torch.set_num_threads(1)
    from lightning_amortized.data.datamodule import load_audio
    from lightning_amortized.data.features import LogMelFilterbank
    from lightning_amortized.data.prepare import read_manifest
    from lightning_amortized.device.diffs import DiffError, apply_diff
    from lightning_amortized.diffs.io import merge
    from lightning_amortized.export import export_onnx, load_for_export

    t_start = time.time()
    utts = read_manifest(Path(a.root) / "manifests" / "test.jsonl")
    if a.quick:
        utts = utts[:12]
    items = [{"id": u.id, "path": u.path} for u in utts]
    refs = [u.words for u in utts]
    fb = LogMelFilterbank()
    feats = []
    for u in utts:
        wav = load_audio(u.path)
        f, _ = fb(wav[None], torch.tensor([wav.shape[0]]))
        feats.append(f)
    audio_s = sum(u.duration for u in utts)
    timing_utts = min(len(utts), a.timing_utts)

    exports = WORK / "export"
    models: dict[str, Any] = {}
    base = load_for_export(a.base_ckpt)
    amnet_ckpt = ckpts["amnet"]
    fast = load_for_export(amnet_ckpt)
    fast.encoder.force_branch = 0
    specs = {"slow_only": (base, str(a.base_ckpt), None), "fast_only": (fast, f"{amnet_ckpt} (force_branch=0)", 0)}
    for name, ckpt in ckpts.items():
        specs[name] = (load_for_export(ckpt), str(ckpt), None)
    results: dict[str, Any] = {}
    for name, (model, source, force) in specs.items():
        d = exports / name
        if d.exists():
            shutil.rmtree(d)
        t0 = time.time()
        manifest = export_onnx(model, d, source=source)
        export_s = time.time() - t0
        print(f"[{name}] exported to {d} in {export_s:.1f} s", flush=True)
        ts = torch_side(model, feats, timing_utts, force_branch=force, repeats=a.repeats)
        dev = run_device(d, items, WORK / f"{name}.device.json", repeats=a.repeats)
        rt = dev["rows"]
        frames = sum(r["frames"] for r in rt)
        compute = sum(r["compute_ms"] for r in rt)
        hyps_rt = [r["text"] for r in rt]
        same = sum(h1 == h2 for h1, h2 in zip(hyps_rt, ts["hyps"]))
        eou = sorted(r["eou_ms"] for r in rt)
        rec: dict[str, Any] = {
            "ms_per_frame_torch": ts["ms_per_frame"],
            "ms_per_frame_runtime": compute / frames,
            "rtf_runtime": (compute + sum(r["feature_ms"] for r in rt)) / sum(r["audio_ms"] for r in rt),
            "wer_torch": _wer(ts["hyps"], refs),
            "wer_runtime": _wer(hyps_rt, refs),
            "peak_rss_mb": dev["peak_rss_mb"],
            "cold_start_s": dev["cold_start_s"],
            "frame_p50_ms_torch": ts["frame_p50_ms"],
            "frame_p50_ms_runtime": sorted(r["frame_p50_ms"] for r in rt)[len(rt) // 2],
            "rtf_torch_encoder": ts["ms_per_frame"] / manifest["frame_ms"],
            "arbitrator_ms_per_frame_runtime": sum(r["arbitrator_ms"] for r in rt) / frames,
            "same_transcripts": same,
            "utterances": len(rt),
            "runtime_frames": frames,
            "torch_timed_frames": ts["timed_frames"],
            "slow_share_runtime": sum(r["slow_frames"] for r in rt) / frames if manifest["kind"] == "amnet" else None,
            "slow_share_torch_step": ts["slow_share_eager"] if manifest["kind"] == "amnet" else None,
            "flops_per_frame_branches": [manifest["graphs"][b]["flops_per_frame"] for b in manifest["branches"]],
            "arbitrator_flops": (manifest["arbitrator"] or {}).get("flops_per_frame", 0),
            "eou_ms_runtime_p50": eou[len(eou) // 2],
            "eou_ms_runtime_p90": eou[int(0.9 * (len(eou) - 1))],
            "finish_ms_runtime_p50": sorted(r["finish_ms"] for r in rt)[len(rt) // 2],
            "finish_ms_runtime_p90": sorted(r["finish_ms"] for r in rt)[int(0.9 * (len(rt) - 1))],
            "export_seconds": round(export_s, 2),
            "device_load_seconds": dev["load_seconds"],
            "torch_imported_on_device": dev["torch_imported"],
            "kind": manifest["kind"],
            "source": source,
        }
        if name.startswith("amnet"):  # the slow branch alone through the same eager code path (addmm, not nn.LSTM)
            rec["ms_per_frame_torch_forced_slow_branch"] = torch_side(
                model, feats, timing_utts, force_branch=1, transcribe=False, repeats=a.repeats)["ms_per_frame"]
        if name != "fast_only" and not a.quick:  # causal feature statistics: true streaming
            run = run_device(d, items, WORK / f"{name}.running.json", normalize="running")
            rec["wer_runtime_running_norm"] = _wer([r["text"] for r in run["rows"]], refs)
        results[name] = rec
        print(f"[{name}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in rec.items() if k not in ("source",)), flush=True)

    # -- a diff made by the NeuralDiff callback, applied on the device --------------------------------
    diff_file = Path(a.diff)
    if not diff_file.exists():  # one update of the chained-updates recipe: NeuralDiff, sparse 10 %, fp32
        subprocess.run([sys.executable, str(REPO / "recipes" / "synthetic" / "updates.py"), "--base", str(a.base_ckpt),
                        "--root", str(a.root), "--method", "sparse", "--budget", "0.1", "--value-dtype", "fp32",
                        "--updates", "1", "--epochs", "1", "--out", str(diff_file.parent), "--threads", "1",
                        "--test-utterances", "40", "--no-progress"], check=True, cwd=REPO)
    diff_rec: dict[str, Any] = {"file": str(diff_file.relative_to(REPO)) if diff_file.is_relative_to(REPO) else str(diff_file)}
    d = exports / "slow_only_updated"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(exports / "slow_only", d)
    t0 = time.time()
    info = apply_diff(d, diff_file)
    diff_rec["apply_seconds"] = round(time.time() - t0, 3)
    merged = load_for_export(a.base_ckpt)
    merge(merged, diff_file)
    hyps_torch = torch_side(merged, feats, 0)["hyps"]
    dev = run_device(d, items, WORK / "slow_only_updated.device.json")
    hyps_rt = [r["text"] for r in dev["rows"]]
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
        "made_by": "NeuralDiff callback (recipes/synthetic/updates.py --method sparse --budget 0.1 --updates 1 --epochs 1)",
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
        "timing_utterances_torch": timing_utts,
        "threads": 1,
        "timing": f"per utterance, the fastest of {a.repeats} runs (torch and runtime alike)",
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
        f"`import torch` blocked. Timing: {s['timing']}.",
        "",
        "| model | ms/frame torch | ms/frame runtime | RTF runtime | WER torch | WER runtime | identical transcripts "
        "| slow share | peak RSS MB | cold start s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in rows:
        r = s[key]
        share = "" if r["slow_share_runtime"] is None else f"{100 * r['slow_share_runtime']:.1f}%"
        out.append(
            f"| {label} | {r['ms_per_frame_torch']:.3f} | {r['ms_per_frame_runtime']:.3f} | {r['rtf_runtime']:.4f} | "
            f"{100 * r['wer_torch']:.2f}% | {100 * r['wer_runtime']:.2f}% | {r['same_transcripts']}/{r['utterances']} | "
            f"{share} | {r['peak_rss_mb']:.0f} | {r['cold_start_s']:.2f} |"
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
    for n, t in (s.get("amnet_training") or {}).items():
        out += [f"`{n}` is not converged: warm-started from the base (fast branch by truncated SVD), "
                f"{t.get('epochs')} epochs on {t.get('train_utterances')} training utterances, lr {t.get('lr')} "
                f"({t.get('fit_seconds')} s, one thread), `{t.get('config')}` {' '.join(t.get('overrides', []))}.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-ckpt", default=str(BASE_CKPT))
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
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--normalize", default="utterance", help=argparse.SUPPRESS)
    p.add_argument("--chunk-ms", type=float, default=100.0, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per utterance; the fastest is kept")
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    names = ["amnet"] if a.quick else list(AMNETS)
    ckpts = {n: train_amnet(a, n) for n in names}
    print(f"AmNet checkpoints: {ckpts}", flush=True)
    if a.phase == "train":
        return 0
    return measure(a, ckpts)


if __name__ == "__main__":
    sys.exit(main())
