"""Compare cached bases side by side: test/test-other accuracy, epochs, fit time, validation curves.

Reads the ``base.json`` of each given base folder (``runs/base/<key>/``, written by
``benchmarks/base.py``; ``benchmarks/base_sweep.sh`` trains five on one GPU) and writes one
row per base with what distinguishes it (voice set, LSTM width, waveform augmentation,
batches, planned epochs, accelerator), its ``test``/``test-other`` WER and CER, the
test-other/test CER ratio (issue 13's target: at most 2), how many epochs it trained (a
``--trainer.max_time`` guard can stop it before the planned ones), fit time and device.

Usage::

    python benchmarks/base_sweep_report.py runs/base/KEY1 runs/base/KEY2 ... \\
        [--results docs/results/base_sweep] [--command "how the bases were trained"]

Writes ``<results>.json`` (``meta``, ``rows``), ``<results>.md`` and ``<results>.png``
(validation WER by epoch, one line per base).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_amortized.experiment import percent as pct, result_file, shown_path, write_results  # noqa: E402

#: Overrides that name a base's variant, with the short label each value gets in the table.
_DEFAULTS = {"voices": "core", "hidden_size": "256", "augment": None, "max_batch_seconds": "20",
             "max_epochs": "16", "accelerator": "auto", "free_text": "0"}


def _override(overrides: Sequence[str], key: str) -> str | None:
    """Value of the last ``--...<key> VALUE`` (or ``--...<key>=VALUE``) in ``overrides``."""
    value = None
    for i, arg in enumerate(overrides):
        name, _, inline = arg.partition("=")
        if name.startswith("--") and name.rsplit(".", 1)[-1] == key:
            value = inline if inline else (overrides[i + 1] if i + 1 < len(overrides) else None)
    return value


def _from_config(config: str | None, key: str) -> str | None:
    """Value of the last ``key`` anywhere in the base's LightningCLI YAML (``None``: no file, or not set there)."""
    path = REPO / config if config else None
    if path is None or not path.is_file():
        return None
    import yaml

    found: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == key and not isinstance(v, (dict, list)):
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(path.read_text()))
    return None if not found or found[-1] is None else str(found[-1])


def describe(info: dict[str, Any]) -> dict[str, Any]:
    """What distinguishes a base: its overrides, else its config file, else the base recipe's defaults."""
    ov = info.get("overrides", [])
    got = {k: _override(ov, k) or _from_config(info.get("config"), k) or d for k, d in _DEFAULTS.items()}
    aug = got["augment"]
    return {
        "voices": got["voices"],
        "free_text": float(got["free_text"]),
        "hidden_size": int(got["hidden_size"]),
        "augment": aug.rsplit(".", 1)[-1] if aug and aug.lower() not in ("null", "none") else None,
        "max_batch_seconds": float(got["max_batch_seconds"]),
        "planned_epochs": int(got["max_epochs"]),
        "max_time": _override(ov, "max_time"),
    }


def row_of(folder: str | Path) -> dict[str, Any]:
    """One table row from ``<folder>/base.json``.

    Raises:
        FileNotFoundError: ``folder`` holds no ``base.json`` (not a base folder of ``benchmarks/base.py``).
        KeyError: the base was not tested on both ``test`` and ``test-other``.
    """
    folder = Path(folder)
    meta = folder / "base.json"
    if not meta.exists():
        raise FileNotFoundError(f"No base.json in {folder}: pass folders of benchmarks/base.py's cache (runs/base/<key>).")
    info = json.loads(meta.read_text())
    for key in ("test_wer", "test_cer", "test_other_wer", "test_other_cer"):
        if key not in info:
            raise KeyError(f"{meta} has no {key!r}: test the base on `test` and `test-other` (python benchmarks/base.py).")
    curve = info.get("val_curve") or {}
    return {
        "key": folder.name,
        **describe(info),
        "params": info.get("params"),
        "epochs": info["epochs"],
        "best_epoch": info.get("best_epoch"),
        "fit_seconds": info["fit_seconds"],
        "device": info["device"],
        "test_wer": info["test_wer"],
        "test_cer": info["test_cer"],
        "test_other_wer": info["test_other_wer"],
        "test_other_cer": info["test_other_cer"],
        "cer_ratio": info["test_other_cer"] / info["test_cer"],
        "val_wer_by_epoch": curve.get("value", []),
        "command": info.get("command"),
    }


def label(row: dict[str, Any]) -> str:
    aug = f" + {row['augment']}" if row["augment"] else ""
    free = f" + {row['free_text']:.0%} free text" if row.get("free_text") else ""
    return f"{row['voices']}{free}, 3x{row['hidden_size']}{aug}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Base recipe variants side by side",
        "",
        f"Trained by: `{meta['command']}`. Report: `{meta['report_command']}`.",
        "Every base: 3-layer LSTM-CTC on characters, 30 ms frames, the recipe's corpus size (16,000 training "
        "utterances); `test` holds unseen speakers of the training voices, `test-other` unseen voice variants, an "
        "unseen accent and unseen sentence templates. Issue 13's targets: `test` WER at most 8 %, `test-other` CER "
        "at most 2x `test` CER.",
        "",
        "| base | params | batch | epochs (best) / planned | fit | test WER / CER | test-other WER / CER | CER ratio | device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cut = " (time guard)" if r["epochs"] < r["planned_epochs"] else ""
        lines.append(
            f"| {label(r)} (`{r['key']}`) | {r['params'] / 1e6:.2f} M | {r['max_batch_seconds']:g} s "
            f"| {r['epochs']} ({r['best_epoch']}) / {r['planned_epochs']}{cut} | {r['fit_seconds']:.0f} s "
            f"| {pct(r['test_wer'])} / {pct(r['test_cer'])} | {pct(r['test_other_wer'])} / {pct(r['test_other_cer'])} "
            f"| {r['cer_ratio']:.1f}x | {r['device']} |"
        )
    lines += ["", f"Validation WER by epoch: `{meta.get('plot', 'base_sweep.png')}`. Each base alone: `python benchmarks/base.py "
              "--root ROOT --no-results --extra OVERRIDES` with the overrides in its `runs/base/<key>/base.json` "
              "(`--no-results`: a variant must not replace the shared base's `docs/results/base.*`). The key is that "
              "of the code that trained the base: options added to the library since then can give the same "
              "command another key today (`python benchmarks/base.py --print-path ...` prints it), which trains the "
              "base again.", ""]
    for r in rows:
        lines.append(f"- `{r['key']}`: `{rerun_command(r['command'])}`")
    return "\n".join(lines) + "\n"


def rerun_command(command: str) -> str:
    """``command`` (a ``benchmarks/base.py`` call) with ``--no-results`` before ``--extra``, where it lacks it.

    Example::

        >>> rerun_command("python benchmarks/base.py --root data/x --extra --trainer.max_epochs 3")
        'python benchmarks/base.py --root data/x --no-results --extra --trainer.max_epochs 3'
    """
    if "--no-results" in command.split():
        return command
    head, sep, tail = command.partition(" --extra")
    return f"{head} --no-results{sep}{tail}"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        curve = [100 * v for v in r["val_wer_by_epoch"]]
        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=f"{label(r)} ({r['device'].split(':')[0]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev WER (%)")
    ax.set_ylim(0, 60)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Base recipe variants: validation WER")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="base folders (runs/base/<key>)")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "base_sweep"))
    p.add_argument("--command", default="bash benchmarks/base_sweep.sh", help="how the bases were trained")
    a = p.parse_args(argv)
    try:
        rows = [row_of(f) for f in a.folders]
    except (FileNotFoundError, KeyError) as err:
        print(f"base_sweep_report: error: {err}", file=sys.stderr)
        return 2
    report = shlex.join(["python", "benchmarks/base_sweep_report.py", *(shown_path(f, REPO) for f in a.folders),
                         "--results", shown_path(a.results, REPO), "--command", a.command])
    meta = {"command": a.command, "report_command": report, "plot": result_file(a.results, ".png").name}
    out_json, out_md = write_results(a.results, {"meta": meta, "rows": rows}, markdown(rows, meta))
    plot(rows, result_file(a.results, ".png"))
    print(out_md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
