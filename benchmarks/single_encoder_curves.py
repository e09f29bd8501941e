"""WER against encoder FLOPs for compressed single encoders, and where an AmNet of the same branches sits.

An AmNet mixes two recurrences frame by frame. With routing that knows nothing about the
content, its WER would be about the frame-share-weighted mean of its branches' WERs (the
*chord* between them on the WER-FLOPs curve); a single encoder of the AmNet's mean FLOPs
sits on the curve itself. Where the curve is convex (flat near the full model, steep when
compressed hard) the chord lies above it, and the AmNet must win that *convexity gap* back by
routing on content. This benchmark measures two curves, each with the training of
``benchmarks/amnet.py``'s single encoders: magnitude-pruned LSTMs (``sparse_single`` at the
densities you choose) and truncated-SVD LSTMs (``factorized_single`` at the ranks you choose).
For each AmNet of an ``amnet.py`` results file whose fast branch is one of those points (the
same density, or the same rank) it reports:

* ``chord_wer``: ``s * WER(slow-only) + (1 - s) * WER(single encoder like the fast branch)``,
  ``s`` the AmNet's slow share at its training device;
* ``routing_gain``: ``chord_wer - WER(AmNet)``, with a paired bootstrap interval over the test
  utterances: how much better than content-blind mixing the arbitrator routes;
* ``convexity_gap``: ``chord_wer - WER(single encoder of the AmNet's mean FLOPs)`` on the same
  curve (linear between measured points): what routing must beat.

Usage::

    python benchmarks/single_encoder_curves.py --amnet-results docs/results/amnet_shared_base.json \\
        --densities 0.3758 0.25 --ranks 128 [--work runs/benchmarks] [--workers 2] \\
        [--results docs/results/single_encoder_curves]

Each density or rank trains one job with the results file's own settings (base, corpus,
epochs, utterances, learning rate, seed) in ``<work>/amnet_density_<d>/`` or
``<work>/amnet_rank_<r>/``; a finished job is reused. Writes ``<results>.json``, ``.md`` and
``.png`` (WER against MFLOPs/frame at the AmNets' training device).
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
# compression kind (an AmNet's ``fast``) -> the amnet.py single-encoder job, its size option and record key
KINDS = {"sparse": ("sparse_single", "--density", "density"), "lowrank": ("factorized_single", "--rank", "rank")}


def job_command(meta: dict[str, Any], kind: str, size: float, work: Path) -> list[str]:
    """The ``amnet.py`` job training the ``kind`` single encoder of ``size`` with the settings of ``meta``."""
    job, option, _ = KINDS[kind]
    cmd = [sys.executable, str(AMNET), "--job", job, option, f"{size:g}", "--work", str(work),
           "--root", _in_repo(meta["root"]), "--base-ckpt", _in_repo(meta["base_checkpoint"]) or "none",
           "--train-utts", str(meta["train_utterances"]), "--epochs", str(meta["epochs"]), "--lr", str(meta["lr"]),
           "--rtf-utts", "5", "--seed", str(meta["seed"])]
    return cmd + (["--quick"] if meta.get("quick") else [])


def _in_repo(path: str | None) -> str | None:
    """``path`` absolute, a relative one taken from the repository (where amnet.py ran and the jobs run)."""
    if path in (None, "none"):
        return None
    p = Path(path)
    return str(p if p.is_absolute() else (REPO / p).resolve())


def expected_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The options (as ``amnet.py`` records them in a job's ``options``) a reusable single encoder must have."""
    return {"root": _in_repo(meta["root"]), "base_ckpt": _in_repo(meta["base_checkpoint"]),
            "train_utts": meta["train_utterances"], "epochs": meta["epochs"], "lr": meta["lr"], "seed": meta["seed"],
            "quick": bool(meta.get("quick", False))}


def reuse_problem(record: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """Why a finished job's ``record`` cannot stand for a single encoder of ``meta``'s run, or ``None``.

    A record from before jobs recorded their options is reused (with a note printed by the caller).
    """
    had = record.get("options")
    if had is None:
        return None
    want = expected_options(meta)
    differ = sorted(k for k in want if had.get(k) != want[k])
    if not differ:
        return None
    return ", ".join(f"{k}={had.get(k)!r} (wanted {want[k]!r})" for k in differ)


def _root(meta: dict[str, Any]) -> str:
    """The corpus of an amnet.py results file (its command line names it with ``--root``)."""
    words = meta["command"].split()
    for i, w in enumerate(words):
        if w == "--root" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--root="):
            return w.split("=", 1)[1]
    return str(REPO / "data" / "synthetic")


def _point(name: str, record: dict[str, Any], rho: str, size: float | None) -> dict[str, Any]:
    r = record["per_rho"][rho]
    return {"name": name, "size": size, "flops_per_frame": float(r["flops_per_frame"]), "wer": float(r["wer"]),
            "utt_errors": list(r["utt_errors"]), "utt_ids": list(record["utt_ids"]), "utt_words": list(record["utt_words"])}


def _size(record: dict[str, Any], kind: str) -> float:
    return float(record[KINDS[kind][2]])


def analyse(amnet: dict[str, Any], singles: dict[str, dict[float, dict[str, Any]]]) -> dict[str, Any]:
    """Both curves (slow-only, the run's FLOPs-matched singles, ``singles``) and each AmNet against its chord.

    Args:
        amnet: An ``amnet.py`` results file (``variants`` with per-utterance errors).
        singles: ``{kind: {size: single-encoder job record}}`` (``kind`` ``"sparse"``: sizes are
            densities; ``"lowrank"``: ranks).

    Returns:
        ``{"rho", "curves": {kind: [points, most FLOPs first]}, "amnets": {name: {...}}}``; WERs as fractions.
    """
    from lightning_amortized.scoring import bootstrap_wer_difference

    rho = str(amnet["rho_train"])
    variants = amnet["variants"]
    slow = _point("slow_only", variants["slow_only"], rho, None)
    ids = slow["utt_ids"]
    curves: dict[str, list[dict[str, Any]]] = {}
    for kind, (job, _, _) in KINDS.items():
        points = [slow]
        if job in variants:
            points.append(_point(job, variants[job], rho, _size(variants[job], kind)))
        points += [_point(f"{job}_{size:g}", rec, rho, size) for size, rec in singles.get(kind, {}).items()]
        for p in points:
            if p["utt_ids"] != ids:
                raise ValueError(f"{p['name']} was scored on other utterances than slow-only; rerun it on the same split.")
        curves[kind] = sorted(points, key=lambda p: p["flops_per_frame"], reverse=True)
    out: dict[str, Any] = {}
    for name, v in variants.items():
        kind = v.get("fast")
        if not v.get("routed") or kind not in KINDS:
            continue
        fast = next((p for p in curves[kind][1:] if abs(p["size"] - _size(v, kind)) < 1e-9), None)
        if fast is None:
            continue
        am = _point(name, v, rho, None)
        if am["utt_ids"] != ids:
            raise ValueError(f"{name} was scored on other utterances than slow-only.")
        s = float(v["per_rho"][rho]["slow_share"])
        chord_errors = [s * a + (1 - s) * b for a, b in zip(slow["utt_errors"], fast["utt_errors"])]
        diff, lo, hi = bootstrap_wer_difference(am["utt_errors"], chord_errors, am["utt_words"])
        chord = s * slow["wer"] + (1 - s) * fast["wer"]
        at_mean = interpolate(curves[kind], am["flops_per_frame"])
        # the same interpolation per utterance, for a paired interval of the gap
        at_mean_errors = interpolate_errors(curves[kind], am["flops_per_frame"])
        _, gap_lo, gap_hi = bootstrap_wer_difference(chord_errors, at_mean_errors, am["utt_words"])
        out[name] = {"kind": kind, "slow_share": s, "flops_per_frame": am["flops_per_frame"], "wer": am["wer"],
                     "fast_size": fast["size"], "fast_single_wer": fast["wer"], "chord_wer": chord,
                     "routing_gain": -diff, "routing_gain_ci95": [-hi, -lo],
                     "single_wer_at_mean_flops": at_mean, "convexity_gap": chord - at_mean,
                     "convexity_gap_ci95": [gap_lo, gap_hi]}
    slim = {k: [{f: p[f] for f in ("name", "size", "flops_per_frame", "wer")} for p in c] for k, c in curves.items()}
    return {"rho": float(rho), "curves": slim, "amnets": out}


def interpolate(curve: list[dict[str, Any]], flops: float) -> float:
    """WER on ``curve`` at ``flops``, linear between the two measured points around it."""
    p0, p1, w = _bracket(curve, flops)
    return (1 - w) * p0["wer"] + w * p1["wer"]


def _bracket(curve: list[dict[str, Any]], flops: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The two measured points around ``flops`` and the weight of the second (points sorted by FLOPs only, so
    :func:`interpolate` and :func:`interpolate_errors` pick the same ones)."""
    pts = sorted(curve, key=lambda p: p["flops_per_frame"])
    lo_f, hi_f = pts[0]["flops_per_frame"], pts[-1]["flops_per_frame"]
    if not lo_f <= flops <= hi_f:
        raise ValueError(f"{flops:.0f} FLOPs/frame is outside the measured curve ({lo_f:.0f}-{hi_f:.0f}).")
    for p0, p1 in zip(pts, pts[1:]):
        f0, f1 = p0["flops_per_frame"], p1["flops_per_frame"]
        if f0 <= flops <= f1:
            return p0, p1, 0.0 if f1 == f0 else (flops - f0) / (f1 - f0)
    return pts[-1], pts[-1], 0.0


def interpolate_errors(curve: list[dict[str, Any]], flops: float) -> list[float]:
    """Per-utterance errors on ``curve`` at ``flops``, with the weights of :func:`interpolate`."""
    p0, p1, w = _bracket(curve, flops)
    return [(1 - w) * a + w * b for a, b in zip(p0["utt_errors"], p1["utt_errors"])]


LABELS = {"sparse": ("pruned", "density"), "lowrank": ("truncated-SVD", "rank")}


def markdown(summary: dict[str, Any], png: str) -> str:
    pct = lambda x: f"{100 * x:.2f} %"  # noqa: E731
    slow = summary["curves"]["sparse"][0]
    lines = [
        "# Single encoders: WER against FLOPs, and the AmNets between their branches", "",
        f"Command: `{summary['command']}`. AmNet results: `{summary['amnet_results']}` (slow-only, the base "
        f"fine-tuned like every variant: {pct(slow['wer'])} test WER). Every single encoder trained as that run's "
        f"single encoders (the base's weights pruned by magnitude, or truncated by SVD, then fine-tuned the same "
        f"epochs). FLOPs and WER at `rho = {summary['rho']:g}`.", "",
        "| single encoder | kind | density / rank | MFLOPs/frame | test WER |", "|---|---|---:|---:|---:|",
    ]
    for kind, curve in summary["curves"].items():
        for p in curve[1:]:
            size = f"{p['size']:.4f}" if kind == "sparse" else f"{p['size']:.0f}"
            lines.append(f"| {p['name']} | {LABELS[kind][0]} | {size} | {p['flops_per_frame'] / 1e6:.3f} | "
                         f"{pct(p['wer'])} |")
    lines.append(f"| slow_only | full | - | {slow['flops_per_frame'] / 1e6:.3f} | {pct(slow['wer'])} |")
    lines += ["", "| AmNet | fast branch | slow share | MFLOPs/frame | WER | chord (content-blind mix) | "
              "routing gain [95 % CI] | single at its FLOPs | convexity gap [95 % CI] |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, a in summary["amnets"].items():
        lo, hi = a["routing_gain_ci95"]
        fast = f"{LABELS[a['kind']][1]} {a['fast_size']:g} ({pct(a['fast_single_wer'])} alone)"
        lines.append(f"| {name} | {fast} | {a['slow_share']:.3f} | {a['flops_per_frame'] / 1e6:.3f} | {pct(a['wer'])} | "
                     f"{pct(a['chord_wer'])} | {100 * a['routing_gain']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] points | "
                     f"{pct(a['single_wer_at_mean_flops'])} | {100 * a['convexity_gap']:.2f} "
                     f"[{100 * a['convexity_gap_ci95'][0]:.2f}, {100 * a['convexity_gap_ci95'][1]:.2f}] points |")
    lines += ["", "Chord: `s * WER(slow-only) + (1 - s) * WER(single encoder like the fast branch)`, what mixing the "
              "two recurrences without regard to content would give. Routing gain: chord minus AmNet (paired "
              "bootstrap over test utterances). Convexity gap: chord minus the single encoder of the AmNet's mean "
              "FLOPs on the same curve (linear between measured points). An AmNet beats the single encoder of its "
              "kind and cost when its routing gain exceeds the convexity gap.", "", f"![WER against FLOPs]({png})", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    colors = {"sparse": "tab:blue", "lowrank": "tab:green"}
    for kind, curve in summary["curves"].items():
        pts = sorted(curve, key=lambda p: p["flops_per_frame"])
        ax.plot([p["flops_per_frame"] / 1e6 for p in pts], [100 * p["wer"] for p in pts], "o-", color=colors[kind],
                label=f"{LABELS[kind][0]} single encoders")
    for name, a in summary["amnets"].items():
        curve = summary["curves"][a["kind"]]
        slow = curve[0]
        fast = next(p for p in curve[1:] if abs(p["size"] - a["fast_size"]) < 1e-9)
        ax.plot([fast["flops_per_frame"] / 1e6, slow["flops_per_frame"] / 1e6], [100 * fast["wer"], 100 * slow["wer"]],
                ":", color=colors[a["kind"]])
        ax.plot([a["flops_per_frame"] / 1e6], [100 * a["wer"]], "s", color=colors[a["kind"]], markersize=8,
                markeredgecolor="black", label=f"{name} (dotted: chord of its branches)")
    ax.set_xlabel("encoder MFLOPs per frame (mean, as routed)")
    ax.set_ylabel("test WER (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--amnet-results", required=True, help="an amnet.py results .json with slow_only and AmNets")
    p.add_argument("--densities", type=float, nargs="*", default=[], help="densities of pruned single encoders")
    p.add_argument("--ranks", type=int, nargs="*", default=[], help="ranks of truncated-SVD single encoders")
    p.add_argument("--work", default=str(REPO / "runs" / "benchmarks"), help="folder of the single encoders' runs")
    p.add_argument("--workers", type=int, default=2, help="jobs in parallel (one thread each)")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "single_encoder_curves"),
                   help="results path stem")
    a = p.parse_args(argv)
    bad = [d for d in a.densities if not 0.0 < d < 1.0] + [r for r in a.ranks if r < 1]
    if bad:
        p.error(f"--densities must be in (0, 1) and --ranks positive, got {bad}")
    if not a.densities and not a.ranks:
        p.error("give --densities, --ranks or both")
    try:
        amnet = json.loads(Path(a.amnet_results).read_text())
    except (OSError, json.JSONDecodeError) as err:
        p.error(f"cannot read --amnet-results {a.amnet_results!r}: {err}")
    missing = [k for k in ("variants", "rho_train", "base_checkpoint", "train_utterances", "epochs", "lr", "seed")
               if k not in amnet] or (["variants.slow_only"] if "slow_only" not in amnet["variants"] else [])
    if missing:
        p.error(f"{a.amnet_results!r} is not a benchmarks/amnet.py results file with slow_only (lacks {missing})")
    meta = {**amnet, "root": _root(amnet)}
    work = Path(a.work)
    jobs, done, wanted = [], {}, []
    for kind, sizes, folder_name in (("sparse", a.densities, "amnet_density_{:g}"), ("lowrank", a.ranks, "amnet_rank_{:g}")):
        job_name = KINDS[kind][0]
        for size in sizes:
            folder = work / folder_name.format(size)
            folder.mkdir(parents=True, exist_ok=True)
            result = folder / f"{job_name}.json"
            name = f"{kind}-{size:g}"
            if result.exists():
                rec = json.loads(result.read_text())
                if abs(_size(rec, kind) - size) > 1e-9:
                    p.error(f"{result} holds {KINDS[kind][2]} {_size(rec, kind)}, not {size:g}; remove it")
                problem = reuse_problem(rec, meta)
                if problem:
                    p.error(f"{result} was trained with other settings than {a.amnet_results}: {problem}. "
                            "Pass another --work or remove it.")
                if "options" not in rec:
                    print(f"{result}: reused, made before jobs recorded their options (not checked)")
                done[name] = rec
            jobs.append(Job(name, job_command(meta, kind, size, folder), result))
            wanted.append((kind, size, name))
    t0 = time.time()
    try:
        results = run_jobs(jobs, a.workers, work, cwd=REPO, env={"PYTHONWARNINGS": "ignore"}, done=done,
                           desc="single encoders")
    except JobFailed as err:
        print(err)
        return 1
    singles: dict[str, dict[float, dict[str, Any]]] = {}
    for kind, size, name in wanted:
        singles.setdefault(kind, {})[size] = results[name]
    summary = {"amnet_results": a.amnet_results, **analyse(amnet, singles),
               "command": "python benchmarks/single_encoder_curves.py "
               + " ".join(argv if argv is not None else sys.argv[1:]),
               "minutes": round((time.time() - t0) / 60, 1)}
    stem = Path(a.results)
    png = result_file(stem, ".png")
    write_results(stem, summary, markdown(summary, png.name))
    plot(summary, png)
    print(markdown(summary, png.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
