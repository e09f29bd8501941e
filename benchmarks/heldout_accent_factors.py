"""What makes the held-out accent ``en-029`` hard: its voice file taken apart, line group by line group.

``test_other_factors.py`` puts most of the voice cost of ``test-other`` on one accent,
``en-029`` (Caribbean English; 15-19 % CER on ``test`` texts, 2.5-9.9 % for the other
accents). Its voice file (``lang/gmw/en-029`` in the wheel's data) differs from the
training accents in five groups of lines: its own phoneme table (``phonemes en-wi``),
letter-to-sound rule conditions (``dictrules 8``), flat syllable durations
(``stressLength``), six phoneme replacements (``replace``) and two formant lines. This
benchmark re-renders the utterances of ``test`` (the ``tt`` cell of
``test_other_factors.py``: same texts, variants, rates, pitches, warps and noise draws)
with the language voice swapped for ``en-029``, once with the whole file, once with each
group removed, once with each replacement line removed, and once with the phoneme table
alone (its ``language`` lines kept), decodes every
rendering with each checkpoint (greedy CTC) and reports CER and WER (95 % bootstrap
interval over utterances). What a group costs is the CER with it minus the CER without it.

The edited voice files live in a private copy of the eSpeak NG data (the wheel's data is
never touched); each condition is rendered once under ``--work`` and reused.

Usage::

    python benchmarks/heldout_accent_factors.py --ckpt runs/base/<key>/base.ckpt [--ckpt ...] \\
        [--root data/synthetic] [--utterances 640] [--results docs/results/heldout_accent_factors]

Writes ``<results>.json`` (``meta``; ``rows``: one per checkpoint and condition with
``condition``, ``voice_file`` (the lines used), ``cer``, ``wer``, ``wer_ci95``) and ``<results>.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from lightning_amortized.experiment import percent as pct, shown_path, write_results  # noqa: E402

ACCENT = "en-029"
GROUPS = ("phonemes", "dictrules", "stressLength", "replace", "formant")
"""Keyword groups of the held-out accent's voice file, each removed in one condition."""


def conditions(voice_file: str) -> dict[str, str]:
    """Condition name -> voice-file text: the whole file, without each group, without each replacement, the table alone.

    ``"original voices"`` (empty text) keeps the ``test`` speakers' own accents.
    """
    lines = voice_file.splitlines()
    keep = [ln for ln in lines if ln.split()[:1] and ln.split()[0] not in GROUPS]
    out = {"original voices": "", f"{ACCENT}, whole file": voice_file}
    for group in GROUPS:
        out[f"{ACCENT} without {group}"] = "\n".join(ln for ln in lines if ln.split()[:1] != [group]) + "\n"
    for pair in [ln for ln in lines if ln.split()[:1] == ["replace"]]:  # each replacement apart
        out[f"{ACCENT} without `{' '.join(pair.split())}`"] = "\n".join(ln for ln in lines if ln != pair) + "\n"
    table = [ln for ln in lines if ln.split()[:1] == ["phonemes"]]
    out[f"{ACCENT}: {table[0].strip() if table else 'no table'} only"] = "\n".join(keep + table) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, help="checkpoint to score (repeatable)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--utterances", type=int, default=640, help="utterances of test per condition (default 640: all)")
    p.add_argument("--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--work", default=None, help="where conditions are rendered (default runs/heldout_accent/<corpus>)")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "heldout_accent_factors"))
    a = p.parse_args(argv)

    from error_breakdown import char_errors, decode_splits
    from test_other_factors import crossed_jobs, render

    from lightning_amortized.data.espeak import EspeakSynthesizer, _loader_paths
    from lightning_amortized.scoring import bootstrap_wer, utterance_errors

    root = Path(a.root)
    work = Path(a.work) if a.work else REPO / "runs" / "heldout_accent" / root.resolve().name
    # A private data copy whose en-029 file each condition rewrites; the synthesiser (one per
    # process, inherited by forked workers) reloads its data before every utterance.
    wheel_data = Path(_loader_paths()[1])
    data = Path(tempfile.mkdtemp(prefix="heldout-accent-espeak-"))
    try:
        shutil.copytree(wheel_data, data, dirs_exist_ok=True)
        accent_file = next(data.glob(f"lang/*/{ACCENT}"))
        original = accent_file.read_text()
        EspeakSynthesizer(data_path=data)
        if Path(EspeakSynthesizer().data_path) != data:
            print("heldout_accent_factors: error: the eSpeak synthesiser was created before the data copy.",
                  file=sys.stderr)
            return 2
        dirs: dict[str, tuple[str, Path]] = {}
        for name, text in conditions(original).items():
            key = hashlib.sha256(text.encode()).hexdigest()[:12] if text else "original"
            cond_work = work / key
            try:
                jobs, _ = crossed_jobs(root, cond_work, a.utterances)
            except FileNotFoundError as err:
                print(f"heldout_accent_factors: error: {err}", file=sys.stderr)
                return 2
            jobs = [j for j in jobs if j.split == "tt"]
            if text:
                accent_file.write_text(text)
                jobs = [dataclasses.replace(j, voice=ACCENT + j.voice[len(j.voice.partition("+")[0]):]) for j in jobs]
            print(f"{name}: rendering {len(jobs)} utterances into {cond_work}", file=sys.stderr)
            render(jobs, cond_work, a.workers)
            accent_file.write_text(original)
            dirs[name] = (text, cond_work)
    finally:
        shutil.rmtree(data, ignore_errors=True)

    rows: list[dict[str, Any]] = []
    for ckpt in a.ckpt:
        for name, (text, cond_work) in dirs.items():
            ids, refs, hyps = zip(*decode_splits(ckpt, str(cond_work), ["tt"])["tt"])
            w_err, words = utterance_errors(hyps, refs)
            c_err, chars = char_errors(hyps, refs)
            rows.append({
                "checkpoint": shown_path(ckpt, REPO), "condition": name, "voice_file": text.splitlines(),
                "utterances": len(ids), "cer": sum(c_err) / sum(chars), "wer": sum(w_err) / sum(words),
                "wer_ci95": list(bootstrap_wer(w_err, words)[1:]),
            })
    command = "python benchmarks/heldout_accent_factors.py " + " ".join(
        [f"--ckpt {shown_path(c, REPO)}" for c in a.ckpt] + [f"--root {shown_path(root, REPO)}"]
        + ([f"--utterances {a.utterances}"] if a.utterances != 640 else []))
    meta = {"command": command, "root": shown_path(root, REPO), "accent": ACCENT, "voice_file": original.splitlines()}
    lines = [
        f"# What makes the held-out accent `{ACCENT}` hard",
        "",
        f"Command: `{command}`  ",
        f"The utterances of `test` re-rendered with their language voice swapped for `{ACCENT}` (same variant, rate, "
        "pitch, warp and noise draw), its voice file whole, without one group of lines, or with its phoneme table "
        "alone. Greedy CTC.",
        "",
        "| checkpoint | condition | CER | WER (95 % CI) |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["wer_ci95"]
        lines.append(f"| `{r['checkpoint']}` | {r['condition']} | {pct(r['cer'])} | {pct(r['wer'])} "
                     f"({100 * lo:.1f}-{100 * hi:.1f}) |")
    lines += ["", f"The `{ACCENT}` voice file:", "", "```", *original.splitlines(), "```"]
    out_json, out_md = write_results(a.results, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")
    print(out_md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
