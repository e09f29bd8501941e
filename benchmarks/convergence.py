"""Convergence study: validation WER against wall-clock seconds and steps, per recipe variant.

Every variant is the demo recipe (``recipes/synthetic/conf/lstm_ctc.yaml``) with a few
LightningCLI overrides, trained on the same corpus on this machine for the same
wall-clock budget (``--minutes``), validated on ``dev`` every ``--val-every`` of an
epoch. Before the runs, one training epoch of the *old* recipe's pipeline is profiled
part by part (audio decode, log-mel, SpecAugment, collation, forward, backward,
optimizer step) and the DataLoader's throughput is measured with 0, 1 and 2 workers.

Variants (``VARIANTS``; each one's ``max_epochs`` lets its learning-rate schedule finish
within about 10 minutes on 2 cores, the demo's training budget):

==================  =====================================================================
``old``             the recipe before this study: packed LSTM, features recomputed from
                    audio every epoch, 40 s / 24-utterance batches, lr 3e-3, 8 epochs
``padded_cached``   the same model; the causal LSTM runs on the padded batch (no packed
                    sequence), features are computed once and cached; 20 epochs
``small_batches``   + 20 s / 12-utterance batches (twice the updates per second)
``lr1.5e-3``        + peak learning rate 1.5e-3: ``lstm_ctc.yaml`` as committed (``recipe``)
``lr5e-3``          small batches with a higher peak learning rate
``stack4``          small batches with 40 ms encoder frames (a quarter fewer LSTM steps)
==================  =====================================================================

Two protocols (``--protocol``, a heading in the results): *screening* runs, one torch
thread each and two at a time, all on a 12-epoch schedule cut at 5 minutes (the early
phase, where the old recipe lost its time), and *full* runs, 2 threads, one at a time,
each variant's own schedule to its end.

Writes ``docs/results/convergence.{json,md,png}``. The JSON has ``variants``: a list of
``{name, label, overrides, steps, seconds, val_wer, epochs}`` (equal-length lists) and
``profile`` (seconds per part of one profiled epoch).

Usage::

    python benchmarks/convergence.py                          # profile + default variants, ~55 min
    python benchmarks/convergence.py --no-profile --variants lr1.5e-3   # add one variant to the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "recipes" / "synthetic" / "conf"
RESULTS = REPO / "docs" / "results"
sys.path.insert(0, str(REPO))

from lightning_amortized.atomic import write_atomic  # noqa: E402
from lightning_amortized.experiment import max_time, result_file  # noqa: E402
from lightning_amortized.nn.encoders import RecurrentEncoder  # noqa: E402


class PackedRecurrentEncoder(RecurrentEncoder):
    """The encoder as it ran before this study: a packed sequence through ``nn.LSTM``.

    Same weights and the same valid outputs as :class:`RecurrentEncoder`; kept here only
    so the ``old`` variant measures the old cost.
    """

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.torch_rnn(packed)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return (self.proj(y) if self.proj is not None else y), lengths


_OLD_BATCHES = ["--data.init_args.max_batch_seconds", "40", "--data.init_args.max_batch_size", "24"]
_OLD = [
    "--model.encoder.class_path", f"{__name__}.PackedRecurrentEncoder", "--model.lr", "0.003",
    "--data.init_args.cache_features", "false", *_OLD_BATCHES, "--trainer.max_epochs", "8",
]

# name -> (label, LightningCLI overrides on lstm_ctc.yaml). Learning rates are explicit, so a
# variant means the same run whatever lstm_ctc.yaml says today. Each variant's max_epochs makes
# its own learning-rate schedule (warm-up + cosine) end within about 10 minutes on 2 cores.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "old": ("old recipe: packed LSTM, features every epoch, 40 s / 24-utt batches, lr 3e-3, 8 epochs", _OLD),
    "padded_cached": ("+ padded causal LSTM, cached features (20 epochs)", [*_OLD_BATCHES, "--model.lr", "0.003"]),
    "small_batches": ("+ 20 s / 12-utt batches", ["--model.lr", "0.003"]),
    "lr1.5e-3": ("+ lr 1.5e-3 (= the recipe)", ["--model.lr", "0.0015"]),
    "lr5e-3": ("small batches with lr 5e-3", ["--model.lr", "0.005"]),
    "stack4": ("small batches, lr 3e-3, 40 ms frames (stack 4, 24 epochs)",
               ["--model.lr", "0.003", "--model.stack", "4", "--model.encoder.init_args.input_size", "320",
                "--trainer.max_epochs", "24"]),
    "recipe": ("lstm_ctc.yaml as committed (make demo)", []),
}
DEFAULT_VARIANTS = ("old", "padded_cached", "small_batches", "recipe")


def profile_epoch(root: str, utterances: int, batches: int | None) -> dict[str, Any]:
    """Time each part of the old recipe's training step over one epoch (or ``batches`` batches)."""
    from lightning_amortized.data import LogMelFilterbank, SpecAugment, SyntheticDataModule
    from lightning_amortized.data.datamodule import SpeechCollator, SpeechDataset, load_audio
    from lightning_amortized.module import ASRModule

    dm = SyntheticDataModule(root, utterances=utterances, max_batch_seconds=40.0, max_batch_size=24, seed=0,
                             cache_features=True)
    dm.prepare_data()
    t_cache = time.perf_counter()
    dm.setup("fit")  # decodes the audio and computes the features of train and dev once
    t_cache = time.perf_counter() - t_cache
    cached = dm.datasets["train"]
    ds = SpeechDataset(cached.utterances, cached.tokenizer)  # the old pipeline: audio in, features per batch
    sampler = dm.train_dataloader().batch_sampler
    features, spec = LogMelFilterbank(), SpecAugment()
    collate = SpeechCollator(None, None)
    torch.manual_seed(0)
    parts = dict.fromkeys(("audio_decode", "log_mel", "spec_augment", "collation", "forward", "backward", "optimizer"), 0.0)
    res = {}
    for kind, cls in (("packed", PackedRecurrentEncoder), ("padded", RecurrentEncoder)):
        model = ASRModule(cls(240, 256, num_layers=3, dropout=0.1), lr=3e-3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        fwd = bwd = 0.0
        for k, idx in enumerate(sampler):
            if batches is not None and k >= batches:
                break
            t0 = time.perf_counter()
            wavs = [load_audio(ds.utterances[i].path) for i in idx]
            t1 = time.perf_counter()
            lens = torch.tensor([len(w) for w in wavs])
            pad = torch.zeros(len(wavs), int(lens.max()))
            for i, w in enumerate(wavs):
                pad[i, : len(w)] = w
            feats, flen = features(pad, lens)
            t2 = time.perf_counter()
            feats = spec(feats, flen)
            t3 = time.perf_counter()
            items = [{"id": "", "feats": feats[i, : int(flen[i])], "tokens": ds.tokens[j], "text": ""} for i, j in enumerate(idx)]
            batch = collate(items)
            t4 = time.perf_counter()
            loss, _, _ = model.asr_loss(batch)
            t5 = time.perf_counter()
            opt.zero_grad()
            loss.backward()
            t6 = time.perf_counter()
            opt.step()
            t7 = time.perf_counter()
            fwd, bwd = fwd + t5 - t4, bwd + t6 - t5
            if kind == "packed":
                for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
                    parts[name] += dt
        res[kind] = {"forward": round(fwd, 2), "backward": round(bwd, 2)}
    loader = {}
    for workers in (0, 1, 2):
        dl = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=SpeechCollator(features, spec))
        t0 = time.perf_counter()
        for k, _ in enumerate(dl):
            if batches is not None and k + 1 >= batches:
                break
        loader[f"num_workers={workers}"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    cached_dl = dm.train_dataloader()
    for k, _ in enumerate(cached_dl):
        if batches is not None and k + 1 >= batches:
            break
    loader["cached features"] = round(time.perf_counter() - t0, 2)
    return {
        "batches": batches or len(sampler),
        "parts_seconds": {k: round(v, 2) for k, v in parts.items()},
        "encoder_packed_vs_padded": res,
        "input_pipeline_seconds": loader,
        "feature_cache_build_seconds": round(t_cache, 2),
        "torch_threads": torch.get_num_threads(),
    }


def _command() -> str:
    """This invocation as a shell line (with ``OMP_NUM_THREADS`` when it was set)."""
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return env + shlex.join(["python", "benchmarks/convergence.py", *sys.argv[1:]])


def run_variant(
    name: str, root: str, utterances: int, minutes: float, val_every: float, seed: int, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """Train variant ``name`` (validation every ``val_every`` epochs, at most ``minutes``); its curve."""
    from lightning_amortized.cli import ASRLightningCLI
    from lightning_amortized.evaluation import fit_and_test

    label, overrides = VARIANTS[name]
    args = [
        "--config", str(CONF / "lstm_ctc.yaml"),
        "--data.init_args.root", root,
        "--data.init_args.utterances", str(utterances),
        "--trainer.default_root_dir", str(REPO / "runs" / "convergence" / name),
        "--trainer.max_time", max_time(minutes),
        "--trainer.val_check_interval", str(val_every),
        "--trainer.enable_checkpointing", "false",
        "--trainer.callbacks", "lightning.pytorch.callbacks.LearningRateMonitor",
        "--seed_everything", str(seed),
        *overrides,
        *extra,
    ]
    cli = ASRLightningCLI(args=args, run=False)
    run = fit_and_test(cli.trainer, cli.model, cli.datamodule, test=False)
    curve = run["val_curve"]
    return {
        "name": name,
        "label": label,
        "overrides": overrides + list(extra),
        "max_epochs": cli.trainer.max_epochs,
        "seconds": curve["seconds"],
        "steps": curve["step"],
        "epochs": curve["epoch"],
        "val_wer": curve["value"],
        "torch_threads": torch.get_num_threads(),
        "command": _command(),
        "fit_seconds": run["fit_seconds"],
    }


def _at(v: dict[str, Any], sec: float) -> str:
    """Best validation WER (%) reached within ``sec`` seconds; "–" when the run was shorter."""
    w = [x for t, x in zip(v["seconds"], v["val_wer"]) if t <= sec]
    return f"{100 * min(w):.1f}" if w and v["seconds"][-1] >= 0.95 * sec else "–"


def write(results: dict[str, Any], out: Path) -> None:
    """Write ``<out>.json``, ``<out>.md`` and ``<out>.png`` (each replaced atomically)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(result_file(out, ".json"), json.dumps(results, indent=2) + "\n")
    lines = [
        "# Convergence study: validation WER against wall-clock time and steps",
        "",
        f"Machine: {results['machine']}; corpus: {results['utterances']} utterances (seed 0), validation on `dev`.",
        "Every run below was made by `benchmarks/convergence.py` (its command is in the JSON, per run).",
        "",
    ]
    prof = results.get("profile")
    if prof:
        parts = prof["parts_seconds"]
        total = sum(parts.values())
        lines += [
            f"## Where one epoch of the old recipe goes ({prof['batches']} batches, {prof['torch_threads']} threads)",
            "",
            "| part | seconds | share |",
            "|---|---|---|",
            *[f"| {k} | {v:.2f} | {100 * v / total:.1f} % |" for k, v in parts.items()],
            f"| total | {total:.2f} | 100 % |",
            "",
            "Same batches, forward / backward of the model with a packed sequence (old) and on the padded batch (new): "
            + ", ".join(f"{k}: {v['forward']:.1f} s / {v['backward']:.1f} s" for k, v in prof["encoder_packed_vs_padded"].items()),
            "",
            "Input pipeline alone over the same batches (decode + log-mel + SpecAugment + collation): "
            + ", ".join(f"{k}: {v:.1f} s" for k, v in prof["input_pipeline_seconds"].items())
            + f"; building the feature cache (train + dev, once per run): {prof.get('feature_cache_build_seconds', 0):.1f} s.",
            "",
        ]
    protocols = list(dict.fromkeys(v.get("protocol", "") for v in results["variants"]))
    for proto in protocols:
        runs = [v for v in results["variants"] if v.get("protocol", "") == proto]
        lines += [f"## {proto or 'Runs'}", "", "| run | overrides | epochs | steps | val WER at 2 / 5 / 10 min | best val WER (at s) |",
                  "|---|---|---|---|---|---|"]
        for v in runs:
            best = min(range(len(v["val_wer"])), key=v["val_wer"].__getitem__) if v["val_wer"] else None
            best_s = f"{100 * v['val_wer'][best]:.1f} % ({v['seconds'][best]:.0f} s)" if best is not None else "–"
            lines.append(
                f"| {v['name']}: {v['label']} | `{' '.join(v['overrides']) or '(none)'}` | "
                f"{v['epochs'][-1] if v['epochs'] else 0} | {v['steps'][-1] if v['steps'] else 0} | "
                f"{_at(v, 120)} / {_at(v, 300)} / {_at(v, 600)} | {best_s} |"
            )
        cmds = sorted({v.get("command", "") for v in runs})
        lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in cmds if c), ""]
    if results.get("notes"):
        lines += ["## Reading", "", results["notes"], ""]
    write_atomic(result_file(out, ".md"), "\n".join(lines) + f"\n![validation WER vs time and steps]({result_file(out, '.png').name})\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(protocols), 2, figsize=(12, 4 * len(protocols)), squeeze=False)
    for row, proto in zip(axes, protocols):
        for v in (v for v in results["variants"] if v.get("protocol", "") == proto):
            row[0].plot(v["seconds"], [100 * w for w in v["val_wer"]], marker="o", ms=3, label=v["name"])
            row[1].plot(v["steps"], [100 * w for w in v["val_wer"]], marker="o", ms=3, label=v["name"])
        for ax, xl in zip(row, ("wall-clock seconds since fit start (validation included)", "optimizer steps")):
            ax.set_xlabel(xl)
            ax.set_ylabel("validation WER (%)")
            ax.set_ylim(0, 100)
            ax.axhline(15, color="grey", ls=":", lw=1)
            ax.grid(alpha=0.3)
            ax.set_title(proto[:70], fontsize=9)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{result_file(out, '').name}.{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, result_file(out, ".png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--utterances", type=int, default=8000)
    p.add_argument("--minutes", type=float, default=11.0, help="wall-clock cap per variant")
    p.add_argument("--val-every", type=float, default=1.0, help="validate every this fraction of an epoch")
    p.add_argument("--protocol", default="Full schedules, 2 threads, one run at a time",
                   help="heading the runs are grouped under (runs are replaced by name within a protocol)")
    p.add_argument("--profile-batches", type=int, default=None, help="profile only this many batches (default: one epoch)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "convergence"))
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more LightningCLI overrides for every variant")
    a = p.parse_args(argv)
    out = Path(a.out)
    old = json.loads(result_file(out, ".json").read_text()) if result_file(out, ".json").exists() else {}
    keep = [v for v in old.get("variants", []) if not (v.get("protocol") == a.protocol and v["name"] in a.variants)]
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "utterances": a.utterances,
        "profile": old.get("profile"),
        "notes": old.get("notes", ""),
        "variants": keep,
    }
    if not a.no_profile:
        results["profile"] = profile_epoch(a.root, a.utterances, a.profile_batches)
        results["profile"]["command"] = _command()
        write(results, out)
    order = list(VARIANTS)
    mine: list[dict[str, Any]] = []
    for name in a.variants:
        run = run_variant(name, a.root, a.utterances, a.minutes, a.val_every, a.seed, a.extra)
        run["protocol"] = a.protocol
        mine.append(run)
        # merge with what is on disk now, under a lock: a second process (screening runs go two
        # at a time) may be writing the same file
        import fcntl

        path = result_file(out, ".json")
        (REPO / "runs").mkdir(exist_ok=True)
        with open(REPO / "runs" / f".{out.stem}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = json.loads(path.read_text()) if path.exists() else results
            ours = {(v["protocol"], v["name"]) for v in mine}
            others = [v for v in current.get("variants", []) if (v.get("protocol"), v["name"]) not in ours]
            results["variants"] = sorted(
                others + mine, key=lambda v: (v.get("protocol", ""), order.index(v["name"]) if v["name"] in order else 99)
            )
            results["profile"] = results["profile"] if not a.no_profile else current.get("profile")
            results["notes"] = current.get("notes", "")
            write(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
