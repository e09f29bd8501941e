"""WER against encoder FLOPs for pruned single encoders, and where an AmNet of the same branches sits.

An AmNet mixes two recurrences frame by frame. With routing that knows nothing about the
content, its WER would be about the frame-share-weighted mean of its branches' WERs (the
*chord* between them on the WER-FLOPs curve); a single encoder of the AmNet's mean FLOPs
sits on the curve itself. Where the curve is convex (flat near the full model, steep at low
density) the chord lies above it, and the AmNet must win that *convexity gap* back by routing
on content. This benchmark measures the curve for magnitude-pruned single encoders (the same
training as ``benchmarks/amnet.py``'s ``sparse_single``, at densities you choose), and for each
AmNet of an ``amnet.py`` results file whose fast branch is pruned at one of those densities:

* ``chord_wer``: ``s * WER(slow-only) + (1 - s) * WER(single at the fast branch's density)``,
  ``s`` the AmNet's slow share, with a paired bootstrap interval of the AmNet against it
  (``routing_gain``: how much better than content-blind mixing the arbitrator routes);
* ``convexity_gap``: ``chord_wer - WER(single of the AmNet's FLOPs)``, what routing must beat.

Usage::

    python benchmarks/pruning_curve.py --amnet-results docs/results/amnet_shared_base.json \\
        --densities 0.3758 0.25 [--work runs/benchmarks] [--workers 2] [--results docs/results/pruning_curve]

Each density trains one ``sparse_single`` job with the results file's own settings (base,
corpus, epochs, utterances, learning rate, seed) in ``<work>/amnet_density_<d>/``; a finished
job is reused. Writes ``<results>.json``, ``.md`` and ``.png`` (WER against MFLOPs/frame at the
AmNet's training device, ``rho = 1.5``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_amortized.experiment import Job, JobFailed, result_file, run_jobs, write_results  # noqa: E402

AMNET = REPO / "benchmarks" / "amnet.py"


def job_command(meta: dict[str, Any], density: float, work: Path) -> list[str]:
    """``amnet.py --job sparse_single`` at ``density`` with the settings of the AmNet results ``meta``."""
    return [sys.executable, str(AMNET), "--job", "sparse_single", "--density", str(density), "--work", str(work),
            "--root", str(meta["root"]), "--base-ckpt", str(meta["base_checkpoint"]),
            "--train-utts", str(meta["train_utterances"]), "--epochs", str(meta["epochs"]), "--lr", str(meta["lr"]),
            "--rtf-utts", "5", "--seed", str(meta["seed"])]


def _root(meta: dict[str, Any]) -> str:
    """The corpus of an amnet.py results file (its command line names it with ``--root``)."""
    words = meta["command"].split()
    return words[words.index("--root") + 1] if "--root" in words else str(REPO / "data" / "synthetic")


def _point(name: str, record: dict[str, Any], rho: str, density: float) -> dict[str, Any]:
    r = record["per_rho"][rho]
    return {"name": name, "density": density, "flops_per_frame": float(r["flops_per_frame"]), "wer": float(r["wer"]),
            "utt_errors": list(r["utt_errors"]), "utt_ids": list(record["utt_ids"]), "utt_words": list(record["utt_words"])}


def analyse(amnet: dict[str, Any], singles: dict[float, dict[str, Any]]) -> dict[str, Any]:
    """The curve (slow-only, the run's FLOPs-matched single, ``singles``) and each sparse AmNet against its chord.

    Args:
        amnet: An ``amnet.py`` results file (``variants`` with per-utterance errors).
        singles: ``{density: sparse_single job record}`` of this benchmark.

    Returns:
        ``{"rho", "curve": [points by FLOPs], "amnets": {name: {...}}}``; WERs as fractions.
    """
    from lightning_amortized.scoring import bootstrap_wer_difference

    rho = str(amnet["rho_train"])
    variants = amnet["variants"]
    curve = [_point("slow_only", variants["slow_only"], rho, 1.0)]
    if "sparse_single" in variants:
        curve.append(_point("sparse_single", variants["sparse_single"], rho, float(variants["sparse_single"]["density"])))
    curve += [_point(f"sparse_single_d{d:g}", rec, rho, d) for d, rec in sorted(singles.items(), reverse=True)]
    ids = curve[0]["utt_ids"]
    for p in curve:
        if p["utt_ids"] != ids:
            raise ValueError(f"{p['name']} was scored on other utterances than slow-only; rerun it on the same split.")
    curve.sort(key=lambda p: p["flops_per_frame"], reverse=True)
    out: dict[str, Any] = {}
    for name, v in variants.items():
        if not v.get("routed") or v.get("fast") != "sparse":
            continue
        fast = next((p for p in curve if abs(p["density"] - float(v["density"])) < 1e-9), None)
        if fast is None:
            continue
        am = _point(name, v, rho, float("nan"))
        if am["utt_ids"] != ids:
            raise ValueError(f"{name} was scored on other utterances than slow-only.")
        s = float(v["per_rho"][rho]["slow_share"])
        slow = curve[0]
        chord_errors = [s * a + (1 - s) * b for a, b in zip(slow["utt_errors"], fast["utt_errors"])]
        diff, lo, hi = bootstrap_wer_difference(am["utt_errors"], chord_errors, am["utt_words"])
        chord = s * slow["wer"] + (1 - s) * fast["wer"]
        at_mean = interpolate(curve, am["flops_per_frame"])
        out[name] = {"slow_share": s, "flops_per_frame": am["flops_per_frame"], "wer": am["wer"],
                     "fast_density": fast["density"], "fast_single_wer": fast["wer"], "chord_wer": chord,
                     "routing_gain": -diff, "routing_gain_ci95": [-hi, -lo],
                     "single_wer_at_mean_flops": at_mean, "convexity_gap": chord - at_mean}
    slim = [{k: p[k] for k in ("name", "density", "flops_per_frame", "wer")} for p in curve]
    return {"rho": float(rho), "curve": slim, "amnets": out}


def interpolate(curve: list[dict[str, Any]], flops: float) -> float:
    """WER of the pruned single encoders at ``flops``, linear between the two measured points around it."""
    pts = sorted((p["flops_per_frame"], p["wer"]) for p in curve)
    if not pts[0][0] <= flops <= pts[-1][0]:
        raise ValueError(f"{flops:.0f} FLOPs/frame is outside the measured curve ({pts[0][0]:.0f}-{pts[-1][0]:.0f}).")
    for (f0, w0), (f1, w1) in zip(pts, pts[1:]):
        if f0 <= flops <= f1:
            return w0 if f1 == f0 else w0 + (w1 - w0) * (flops - f0) / (f1 - f0)
    return pts[-1][1]


def markdown(summary: dict[str, Any], command: str, png: str) -> str:
    pct = lambda x: f"{100 * x:.2f} %"  # noqa: E731
    lines = [
        "# Pruned single encoders: WER against FLOPs, and the AmNets on that curve", "",
        f"Command: `{command}`. AmNet results: `{summary['amnet_results']}` (slow-only, the base fine-tuned like "
        f"every variant: {pct(summary['curve'][0]['wer'])} test WER); every single encoder trained as that run's `sparse_single` "
        f"(magnitude-pruned LSTM weights, fine-tuned the same epochs). FLOPs and WER at `rho = {summary['rho']:g}`.",
        "", "| pruned single encoder | density | MFLOPs/frame | test WER |", "|---|---:|---:|---:|",
    ]
    for p in summary["curve"]:
        lines.append(f"| {p['name']} | {p['density']:.4f} | {p['flops_per_frame'] / 1e6:.3f} | {pct(p['wer'])} |")
    lines += ["", "| AmNet | slow share | MFLOPs/frame | WER | chord (content-blind mix) | routing gain [95 % CI] "
              "| single at its FLOPs | convexity gap |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, a in summary["amnets"].items():
        lo, hi = a["routing_gain_ci95"]
        lines.append(f"| {name} | {a['slow_share']:.3f} | {a['flops_per_frame'] / 1e6:.3f} | {pct(a['wer'])} | "
                     f"{pct(a['chord_wer'])} | {100 * a['routing_gain']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] points | "
                     f"{pct(a['single_wer_at_mean_flops'])} | {100 * a['convexity_gap']:.2f} points |")
    lines += ["", "Chord: `s * WER(slow-only) + (1 - s) * WER(single at the fast branch's density)`, what mixing the "
              "two recurrences without regard to content would give. Routing gain: chord minus AmNet (paired "
              "bootstrap over test utterances). Convexity gap: chord minus the single encoder of the AmNet's mean "
              "FLOPs (linear between measured points). The AmNet beats that single encoder only if its routing gain "
              "exceeds the convexity gap.", "", f"![WER against FLOPs]({png})", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve = sorted(summary["curve"], key=lambda p: p["flops_per_frame"])
    ax.plot([p["flops_per_frame"] / 1e6 for p in curve], [100 * p["wer"] for p in curve], "o-",
            label="pruned single encoders")
    for name, a in summary["amnets"].items():
        slow = summary["curve"][0] if summary["curve"][0]["name"] == "slow_only" else curve[-1]
        fast = next(p for p in curve if abs(p["density"] - a["fast_density"]) < 1e-9)
        ax.plot([fast["flops_per_frame"] / 1e6, slow["flops_per_frame"] / 1e6],
                [100 * fast["wer"], 100 * slow["wer"]], "--", color="grey", label=f"chord of {name}'s branches")
        ax.plot([a["flops_per_frame"] / 1e6], [100 * a["wer"]], "s", label=name)
    ax.set_xlabel("encoder MFLOPs per frame (mean, as routed)")
    ax.set_ylabel("test WER (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--amnet-results", required=True, help="an amnet.py results .json with slow_only and a sparse AmNet")
    p.add_argument("--densities", type=float, nargs="+", required=True, help="densities of the pruned single encoders")
    p.add_argument("--work", default=str(REPO / "runs" / "benchmarks"), help="folder of the amnet_density_<d> runs")
    p.add_argument("--workers", type=int, default=2, help="jobs in parallel (one thread each)")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "pruning_curve"), help="results path stem")
    a = p.parse_args(argv)
    bad = [d for d in a.densities if not 0.0 < d < 1.0]
    if bad:
        p.error(f"--densities must be in (0, 1), got {bad}")
    amnet = json.loads(Path(a.amnet_results).read_text())
    meta = {**amnet, "root": _root(amnet)}
    work = Path(a.work)
    jobs, done = [], {}
    for d in a.densities:
        folder = work / f"amnet_density_{d:g}"
        folder.mkdir(parents=True, exist_ok=True)
        result = folder / "sparse_single.json"
        name = f"d{d:g}"
        if result.exists():
            rec = json.loads(result.read_text())
            if abs(float(rec["density"]) - d) > 1e-9:
                p.error(f"{result} holds density {rec['density']}, not {d}; remove it")
            done[name] = rec
        jobs.append(Job(name, job_command(meta, d, folder), result))
    t0 = time.time()
    try:
        results = run_jobs(jobs, a.workers, work, cwd=REPO, env={"PYTHONWARNINGS": "ignore"}, done=done,
                           desc="pruned singles")
    except JobFailed as err:
        print(err)
        return 1
    singles = {d: results[f"d{d:g}"] for d in a.densities}
    summary = {"amnet_results": a.amnet_results, **analyse(amnet, singles),
               "command": "python benchmarks/pruning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "minutes": round((time.time() - t0) / 60, 1)}
    stem = Path(a.results)
    png = result_file(stem, ".png")
    write_results(stem, summary, markdown(summary, summary["command"], png.name))
    plot(summary, png)
    print(markdown(summary, summary["command"], png.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
