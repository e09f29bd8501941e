"""What training an update costs: one step of diff (and LoRA, bias-only) training against plain fine-tuning.

Times, for a base's architecture (default the shared base's, 3x256 LSTM + character CTC head, 30 ms frames)
and a batch like the update recipe's (``--batch`` utterances of ``--seconds`` seconds), the
fastest of ``--repeats`` optimizer steps (forward, CTC loss, backward, AdamW) of:

==============  ================================================================================
``full``        plain fine-tuning: every parameter trainable (the reference)
``sparse-10``   a sparse diff on the diff targets (``encoder.*weight*``, ``head.*``), 10 % kept
``hashed-10``   a hashed diff with buckets for 10 % of the targeted entries
``lora-10``     LoRA on the same targets, the largest rank whose file fits 10 % of the checkpoint
``bias``        bias-only tuning (a dense diff of the biases)
==============  ================================================================================

The methods are timed in interleaved rounds in one process, one thread, so a change of load
hits all of them alike. Memory: each method runs ``--memory-steps`` steps in a fresh
subprocess, which resets its peak resident set once the model and batch are built
(``/proc/self/clear_refs``, Linux) and reports how far the steps raise it (``VmHWM``):
activations, gradients, optimizer state and the diffs' own tensors.
Writes ``docs/results/diff_training_cost.{json,md}``; the issue's target is a diff training
step of at most 1.3x a plain fine-tuning step.

Usage::

    python benchmarks/diff_training_cost.py                 # about two minutes on one core
    python benchmarks/diff_training_cost.py --base runs/base/<key>/base.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from lightning_amortized.experiment import write_results  # noqa: E402

METHODS = ("full", "sparse-10", "hashed-10", "lora-10", "bias")
TARGET_RATIO = 1.3


def architecture(base: str | None) -> str:
    """``"3x384 LSTM + CTC head, base B.ckpt"``: what was timed (read from the base; default the random 3x256)."""
    if not base:
        return "3x256 LSTM + CTC head, random weights"
    from lightning_amortized.module import load_asr_module

    enc = load_asr_module(base).encoder
    shape = f"{enc.num_layers}x{enc.hidden_size} LSTM" if hasattr(enc, "hidden_size") else type(enc).__name__
    return f"{shape} + CTC head, base {base}"


def build(method: str, base: str | None, batch: int, seconds: float, seed: int = 0) -> tuple[Any, dict, Callable[[], None]]:
    """The model with ``method`` attached, a batch, and one training step as a closure."""
    from diff_updates import DIFF_TARGETS

    from lightning_amortized.diffs import attach_diffs, attach_lowrank, rank_for_bytes, select_targets
    from lightning_amortized.diffs.hashed import allocate_buckets
    from lightning_amortized.module import ASRModule, load_asr_module
    from lightning_amortized.nn import RecurrentEncoder

    torch.manual_seed(seed)
    model = load_asr_module(base) if base else ASRModule(RecurrentEncoder(240, 256, num_layers=3, dropout=0.1))
    model.train()
    full_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if method != "full":
        model.requires_grad_(False)
        names = select_targets(model, ["*bias*"] if method == "bias" else list(DIFF_TARGETS))
        params = dict(model.named_parameters())
        if method in ("sparse-10", "bias"):
            diffs = attach_diffs(model, names, "sparse")
            if method == "sparse-10":  # the last epochs of a sparse run train at the budget
                g = torch.Generator().manual_seed(seed)
                for d in diffs.values():
                    d.mask.copy_(torch.rand(d.mask.shape, generator=g) < 0.1)
        elif method == "hashed-10":
            sizes = [params[n].numel() for n in names]
            buckets = allocate_buckets(sizes, round(0.1 * sum(sizes)))
            attach_diffs(model, names, "hashed", num_buckets=dict(zip(names, buckets)), seed=seed)
        elif method == "lora-10":
            shapes = {n: tuple(params[n].shape) for n in names}
            attach_lowrank(model, names, rank_for_bytes(shapes, int(0.1 * full_bytes)), seed=seed)
        else:
            raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    frames = int(seconds * 100)  # 10 ms feature hop
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 29, (batch, frames // 10), generator=g)  # ~one character per 100 ms
    data = {
        "feats": torch.randn(batch, frames, 80, generator=g),
        "feat_lengths": torch.full((batch,), frames, dtype=torch.long),
        "tokens": tokens,
        "token_lengths": torch.full((batch,), tokens.shape[1], dtype=torch.long),
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model.asr_loss(data)[0]
        loss.backward()
        opt.step()

    return model, {"trainable": sum(p.numel() for p in trainable)}, step


def time_steps(methods: list[str], base: str | None, batch: int, seconds: float, repeats: int) -> dict[str, dict]:
    """Fastest step per method over ``repeats`` interleaved rounds (one warm-up step each)."""
    built = {m: build(m, base, batch, seconds) for m in methods}
    for _, _, step in built.values():
        step()
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeats):
        for m in methods:
            t0 = time.perf_counter()
            built[m][2]()
            best[m] = min(best[m], time.perf_counter() - t0)
    return {m: {"step_ms": 1000 * best[m], **built[m][1]} for m in methods}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(method: str, base: str | None, batch: int, seconds: float, steps: int) -> int:
    torch.set_num_threads(1)
    _, _, step = build(method, base, batch, seconds)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status_mb("VmRSS")
    for _ in range(steps):
        step()
    print(json.dumps({"rss_before_mb": before, "peak_mb": _status_mb("VmHWM")}))
    return 0


def peak_memory(method: str, a: argparse.Namespace) -> float:
    """MB by which ``a.memory_steps`` steps of ``method`` raise the peak RSS of a fresh process above its
    RSS once the model and batch are built (Linux: ``/proc/self/clear_refs``, ``VmHWM``)."""
    cmd = [sys.executable, __file__, "--child", method, "--batch", str(a.batch), "--seconds", str(a.seconds),
           "--memory-steps", str(a.memory_steps)] + (["--base", a.base] if a.base else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    return float(rec["peak_mb"] - rec["rss_before_mb"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=None, help="base checkpoint (default: the architecture, randomly initialised)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds of audio per utterance")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "diff_training_cost"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return _child(a.child, a.base, a.batch, a.seconds, a.memory_steps)
    torch.set_num_threads(1)
    methods = ["full"] + [m for m in a.methods if m != "full"]
    load = os.getloadavg()
    rows = time_steps(methods, a.base, a.batch, a.seconds, a.repeats)
    for m in methods:
        rows[m]["ratio_vs_full"] = rows[m]["step_ms"] / rows["full"]["step_ms"]
        rows[m]["step_peak_mb"] = None if a.no_memory else peak_memory(m, a)
    load_after = os.getloadavg()
    diffs = [m for m in methods if m in ("sparse-10", "hashed-10")]
    worst = max((rows[m]["ratio_vs_full"] for m in diffs), default=None)
    summary = {
        "meta": {"batch": a.batch, "seconds_per_utterance": a.seconds, "repeats": a.repeats, "threads": 1,
                 "base": a.base, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "load_before": [round(x, 2) for x in load[:2]], "load_after": [round(x, 2) for x in load_after[:2]],
                 "memory_steps": a.memory_steps},
        "methods": rows,
        "target": {"max_ratio": TARGET_RATIO, "worst_diff_ratio": worst, "met": None if worst is None else worst <= TARGET_RATIO},
    }
    summary["meta"]["architecture"] = architecture(a.base)
    command = "python benchmarks/diff_training_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Training cost of an update: diffs, LoRA and bias-only against plain fine-tuning",
        "",
        f"Command: `{command.strip()}`; one thread, {a.batch} utterances of {a.seconds:g} s "
        f"({summary['meta']['architecture']}), fastest of {a.repeats} interleaved optimizer steps "
        f"(forward, CTC loss, backward, AdamW). Load average before/after: {summary['meta']['load_before']} / "
        f"{summary['meta']['load_after']}. Step memory: how far {a.memory_steps} steps raise the peak resident set "
        "of a fresh process above its size once the model and batch are built (activations, gradients, optimizer state).",
        "",
        "| method | trainable parameters | step (ms) | x full fine-tuning | step memory (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in methods:
        r = rows[m]
        lines.append(f"| {m} | {r['trainable']:,} | {r['step_ms']:.1f} | {r['ratio_vs_full']:.2f} | "
                     f"{'–' if r['step_peak_mb'] is None else format(r['step_peak_mb'], '.0f')} |")
    if worst is not None:
        lines += ["", f"Target: a diff training step at most {TARGET_RATIO}x a plain fine-tuning step: "
                      f"{'met' if worst <= TARGET_RATIO else 'missed'} (worst diff {worst:.2f}x)."]
    text = "\n".join(lines) + "\n"
    write_results(a.results, summary, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
