"""How much can per-frame routing buy? A trained shared-state AmNet under imposed routings.

The learned arbitrator of a shared-state AmNet decides, frame by frame, whether the slow
or the fast branch advances the shared LSTM state. This benchmark takes one trained
AmNet and replaces its arbitrator by fixed routing policies at a range of slow shares,
then scores each on the test split; FLOPs-matched single encoders trained the same way
are placed on the same WER-versus-FLOPs plane:

=======================  ===========================================================
``random``               each frame slow with probability ``s`` (seeded)
``periodic``             every ``1/s``-th frame slow (evenly spaced)
``oracle_emission``      slow on the frames where the slow branch alone emits a
                         non-blank symbol, widened by ``k`` frames either side
                         (the frames CTC reads; an upper bound no causal arbitrator has)
``oracle_disagreement``  slow where the fast branch alone and the slow branch alone
                         disagree on the best symbol, widened by ``k`` frames
``oracle_blank``         the complement of ``oracle_emission`` at ``k = 0`` (control)
``learned``              the AmNet's own arbitrator on the device it was trained for
                         (``rho = 1.5`` exactly, as in ``benchmarks/amnet.py``)
``branch``               every frame on one branch (``fast``, ``slow``): the ends of the curve
=======================  ===========================================================

If even the oracles, which know where the symbols are, stay above the single encoders'
curve at equal mean FLOPs, then no arbitrator can make this AmNet beat a single encoder
on WER at equal compute: what is left to it is latency (spending slack, amortizing).
Encoder FLOPs/frame come from the one counter (``branch_flops``); the policies' mean
excludes the arbitrator (they have none), the learned row includes it.

Writes ``<results>.{json,md}`` and ``<results>.png``.

Usage::

    python benchmarks/amnet_routing.py --amnet runs/benchmarks/amnet_r128/amnet_factorized/.../last.ckpt \\
        --single "factorized single=...ckpt" --single "slow-only=...ckpt" --root data/synthetic
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/amnet.py: test loader, devices
SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
WIDEN = (0, 1, 2, 3)


def _widen(mask: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, T)`` bool mask dilated by ``k`` frames either side."""
    if k == 0:
        return mask
    m = mask.float()[:, None]
    return torch.nn.functional.max_pool1d(m, 2 * k + 1, stride=1, padding=k)[:, 0] > 0


def _gates(slow: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool (True = slow) -> one-hot gates ``(B, T, 2)`` (branch 1 = slow)."""
    g = torch.zeros(*slow.shape, 2)
    g[..., 1] = slow.float()
    g[..., 0] = 1.0 - g[..., 1]
    return g


def test_batches(root: str, limit: int | None) -> list[dict[str, Any]]:
    """The ``test`` split as padded batches (features computed once)."""
    from amnet import corpus_test_split

    _, loader = corpus_test_split(root)
    batches = list(loader)
    if limit:
        batches = batches[:limit]
    return batches


def evaluate(model: Any, batches: list[dict[str, Any]], policies: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Score every policy: ``{name: {"wer", "cer", "slow_share"}}``.

    ``policies[name]`` maps ``(x, n, info)`` to a ``(B, T)`` bool mask of slow frames, or
    ``None`` for the AmNet's own arbitrator; ``info`` holds the single-branch best paths.
    """
    from torchmetrics.text import CharErrorRate, WordErrorRate

    from lightning_amortized.functional import lengths_to_mask

    enc = model.encoder
    blank = model.tokenizer.blank_id
    scores = {name: (WordErrorRate(), CharErrorRate(), [0, 0]) for name in policies}
    with torch.no_grad():
        for batch in batches:
            x, n = model.stacker(batch["feats"], batch["feat_lengths"])
            valid = lengths_to_mask(n, x.shape[1])
            B, T, _ = x.shape
            info = {}
            for k, key in ((0, "fast"), (1, "slow")):
                y = enc.core.forward_gated(x, n, _gates(torch.full((B, T), bool(k))), only=k)
                info[key] = model.head(y).argmax(-1)
            info["emission"] = (info["slow"] != blank) & valid
            info["disagree"] = (info["slow"] != info["fast"]) & valid
            for name, policy in policies.items():
                if policy is None:
                    y, _ = enc(x, n)
                    slow = enc.last_routing.decisions == enc.slow_index
                else:
                    slow = policy(x, n, info) & valid
                    y = enc.core.forward_gated(x, n, _gates(slow))
                hyps = model.decode(y, n)
                wer, cer, count = scores[name]
                wer.update(hyps, batch["texts"])
                cer.update(hyps, batch["texts"])
                count[0] += int((slow & valid).sum())
                count[1] += int(valid.sum())
    return {name: {"wer": float(w.compute()), "cer": float(c.compute()), "slow_share": k[0] / max(1, k[1])}
            for name, (w, c, k) in scores.items()}


def policies_for(seed: int) -> dict[str, Any]:
    """Policy name -> mask function (see the module docstring)."""
    out: dict[str, Any] = {"learned": None,
                           "branch@fast": lambda x, n, info: torch.zeros(x.shape[:2], dtype=torch.bool),
                           "branch@slow": lambda x, n, info: torch.ones(x.shape[:2], dtype=torch.bool)}
    for s in SHARES:
        def rnd(x: torch.Tensor, n: torch.Tensor, info: dict[str, torch.Tensor], s: float = s) -> torch.Tensor:
            g = torch.Generator().manual_seed(seed)
            return torch.rand(x.shape[:2], generator=g) < s

        def per(x: torch.Tensor, n: torch.Tensor, info: dict[str, torch.Tensor], s: float = s) -> torch.Tensor:
            t = torch.arange(x.shape[1], dtype=torch.float64)
            return (torch.floor((t + 1) * s) > torch.floor(t * s)).expand(x.shape[0], -1)

        out[f"random@{s:g}"] = rnd
        out[f"periodic@{s:g}"] = per
    for k in WIDEN:
        out[f"oracle_emission@{k}"] = lambda x, n, info, k=k: _widen(info["emission"], k)
        out[f"oracle_disagreement@{k}"] = lambda x, n, info, k=k: _widen(info["disagree"], k)
    out["oracle_blank@0"] = lambda x, n, info: ~info["emission"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--amnet", required=True, help="checkpoint of a trained shared-state AmNet")
    p.add_argument("--single", action="append", default=[], metavar="LABEL=CKPT",
                   help="a single encoder to place on the plane (repeatable)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--limit-batches", type=int, default=None, help="smoke runs: score only the first batches")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "amnet_routing"))
    a = p.parse_args(argv)

    singles_spec = [spec.partition("=") for spec in a.single]
    for label, sep, ckpt in singles_spec:  # refused before any work
        if not (sep and label and ckpt):
            p.error(f"--single expects LABEL=CHECKPOINT, got {label + sep + ckpt!r}.")

    from lightning_amortized.experiment import result_file, write_results
    from lightning_amortized.module import ASRModule
    from lightning_amortized.nn import SharedStateAmortizedEncoder

    torch.set_num_threads(1)
    t0 = time.time()
    model = ASRModule.load_from_checkpoint(a.amnet, map_location="cpu").eval()  # LightningCLI checkpoints
    if not isinstance(model.encoder, SharedStateAmortizedEncoder):
        p.error(f"--amnet {a.amnet} holds a {type(model.encoder).__name__}, not a shared-state AmNet "
                "(SharedStateAmortizedEncoder); pass the checkpoint of an AmNet run.")
    batches = test_batches(a.root, a.limit_batches)
    fast_flops, slow_flops = model.encoder.branch_flops()
    from amnet import RHO_TRAIN, device_for  # the device benchmarks/amnet.py scores the learned routing on

    model.encoder.set_device(device_for(RHO_TRAIN, slow_flops))
    arb_flops = model.encoder.arbitrator.flops_per_frame()
    rows = evaluate(model, batches, policies_for(a.seed))
    for name, r in rows.items():
        r["policy"], _, r["param"] = name.partition("@")
        r["flops_per_frame"] = r["slow_share"] * slow_flops + (1 - r["slow_share"]) * fast_flops
        if name == "learned":
            r["flops_per_frame"] += arb_flops
        print(f"{name}: WER {100 * r['wer']:.2f} %, slow share {r['slow_share']:.3f}", flush=True)
    singles = {}
    for label, _, ckpt in singles_spec:
        m = ASRModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
        from torchmetrics.text import CharErrorRate, WordErrorRate

        w, c = WordErrorRate(), CharErrorRate()
        with torch.no_grad():
            for batch in batches:
                x, n = m.stacker(batch["feats"], batch["feat_lengths"])
                hyps = m.decode(m.encoder(x, n)[0], n)
                w.update(hyps, batch["texts"])
                c.update(hyps, batch["texts"])
        singles[label] = {"wer": float(w.compute()), "cer": float(c.compute()),
                          "flops_per_frame": int(m.encoder.flops_per_frame()), "checkpoint": ckpt}
        print(f"{label}: WER {100 * singles[label]['wer']:.2f} %", flush=True)
    summary = {
        "benchmark": "benchmarks/amnet_routing.py",
        "command": " ".join(["python", "benchmarks/amnet_routing.py", *sys.argv[1:]]),
        "amnet_checkpoint": a.amnet,
        "rank": model.encoder.core.rank,
        "branch_flops": [fast_flops, slow_flops],
        "arbitrator_flops": arb_flops,
        "test_batches": len(batches),
        "test_utterances": sum(len(b["texts"]) for b in batches),
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        "minutes": round((time.time() - t0) / 60, 1),
        "policies": rows,
        "singles": singles,
    }
    out = Path(a.results)
    write_results(out, summary, render(summary))
    plot(summary, result_file(out, ".png"))
    print(render(summary))
    return 0


def render(s: dict[str, Any]) -> str:
    fast, slow = s["branch_flops"]
    lines = [
        "# Per-frame routing under imposed policies (one trained shared-state AmNet)",
        "",
        f"Command: `{s['command']}` ({s['machine']}, {s['minutes']} min). Test split `test`, "
        f"{s['test_utterances']} utterances. AmNet: rank-{s['rank']} fast branch ({fast / 1e6:.3f} MFLOPs/frame), "
        f"slow branch {slow / 1e6:.3f} MFLOPs/frame; its weights are fixed, only the routing changes "
        "(policies in `benchmarks/amnet_routing.py`). FLOPs/frame: mean over valid test frames (arbitrator only "
        "on the learned row).",
        "",
        "| policy | parameter | slow share | FLOPs/frame | test WER | CER |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(s["policies"].values(), key=lambda r: (r["policy"], r["slow_share"])):
        lines.append(f"| {r['policy']} | {r['param'] or '-'} | {r['slow_share']:.3f} | "
                     f"{r['flops_per_frame'] / 1e6:.3f} M | {100 * r['wer']:.2f} % | {100 * r['cer']:.2f} % |")
    if s["singles"]:
        lines += ["", "| single encoder | FLOPs/frame | test WER | CER |", "|---|---:|---:|---:|"]
        for label, r in s["singles"].items():
            lines.append(f"| {label} | {r['flops_per_frame'] / 1e6:.3f} M | {100 * r['wer']:.2f} % | "
                         f"{100 * r['cer']:.2f} % |")
    return "\n".join(lines) + "\n"


def plot(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for r in s["policies"].values():
        by_policy.setdefault(r["policy"], []).append(r)
    for policy, rs in sorted(by_policy.items()):
        rs = sorted(rs, key=lambda r: r["flops_per_frame"])
        style = {"marker": "*", "markersize": 14, "linestyle": "none"} if policy == "learned" else {"marker": "o"}
        ax.plot([r["flops_per_frame"] / 1e6 for r in rs], [100 * r["wer"] for r in rs], label=policy, **style)
    for label, r in s["singles"].items():
        ax.plot(r["flops_per_frame"] / 1e6, 100 * r["wer"], "ks", markersize=8)
        ax.annotate(label, (r["flops_per_frame"] / 1e6, 100 * r["wer"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set_xlabel("encoder MFLOPs per frame (mean over test frames)")
    ax.set_ylabel("test WER (%)")
    ax.set_title(f"Routing policies on one AmNet (rank-{s['rank']} fast branch) vs single encoders")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
