"""Why ``test-other`` is hard: unseen voices or unseen sentence templates, measured apart.

``test-other`` differs from ``test`` in two ways at once: its speakers use voice variants
(and an accent) never heard in training, and its sentences come from templates never seen
in training. This benchmark re-renders the two splits' utterances crossed: the i-th
``test-other`` sentence spoken by the voice of the i-th ``test`` utterance (same eSpeak NG
voice, rate, pitch, warp and noise draw) and the other way round, so four cells share one
rendering path::

                       test voices        test-other voices
    test texts         tt (= test)        to
    test-other texts   ot                 oo (= test-other)

Then it decodes all four with each checkpoint (greedy CTC) and reports WER and CER per
cell, plus CER by accent in the cells with ``test-other`` voices. ``to`` - ``tt`` is what
the voices cost, ``ot`` - ``tt`` what the templates cost.

Usage::

    python benchmarks/test_other_factors.py --ckpt runs/base/<key>/base.ckpt [--ckpt ...] \\
        [--root data/synthetic] [--utterances 640] [--results docs/results/test_other_factors]

Writes ``<results>.json`` (``meta``; ``rows``: one per checkpoint and cell with ``wer``,
``cer``, ``wer_ci95`` and, for ``to``/``oo``, ``cer_by_accent``) and ``<results>.md``.
The rendered cells stay under ``--work`` (default ``runs/test_other_factors/<corpus>``) and
are reused when present.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # error_breakdown's decoding

from lightning_amortized.experiment import percent as pct, shown_path, write_results  # noqa: E402

CELLS = {"tt": ("test", "test"), "ot": ("test-other", "test"), "to": ("test", "test-other"), "oo": ("test-other", "test-other")}
"""Cell name -> (split whose texts are spoken, split whose voices speak them)."""


def crossed_jobs(root: Path, work: Path, utterances: int) -> tuple[list[Any], dict[str, str]]:
    """Rendering jobs of the four cells (first ``utterances`` of each split) and each cell speaker's accent.

    Raises:
        FileNotFoundError: ``root`` has no ``corpus.json`` (not a synthetic corpus).
    """
    from lightning_amortized.data.plan import _plan

    meta_path = root / "corpus.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} does not exist: pass --root of a synthetic corpus (make-corpus writes it).")
    meta = json.loads(meta_path.read_text())
    snr = tuple(meta["noise_snr_db"]) if meta.get("noise_snr_db") else None
    _, jobs, _ = _plan(work, meta["utterances"], meta["seed"], snr, meta.get("voices", "core"), meta.get("train_utterances"))
    by_split = {s: [j for j in jobs if j.split == s] for s in ("test", "test-other")}
    n = min(utterances, *(len(v) for v in by_split.values()))
    out = []
    for cell, (text_split, voice_split) in CELLS.items():
        for i in range(n):
            voice, text = by_split[voice_split][i], by_split[text_split][i]
            path = work / cell / Path(voice.path).relative_to(work / voice_split)
            out.append(dataclasses.replace(voice, split=cell, path=str(path), text=text.text))
    accents = {str(s): m["voice"] for s, m in meta["speakers"].items()}
    return out, accents


def render(jobs: Sequence[Any], work: Path, workers: int) -> None:
    """Write the cells' FLAC files and LibriSpeech transcripts under ``work`` (skipped when done)."""
    from tqdm.auto import tqdm

    from lightning_amortized.data.synthetic import _iter_rendered

    done = work / "rendered.json"
    stamp = json.dumps(sorted((j.split, j.id, j.text, j.voice) for j in jobs))
    if done.exists() and done.read_text() == stamp:
        return
    for _ in tqdm(_iter_rendered(jobs, workers), total=len(jobs), desc="render", unit="utt"):
        pass
    chapters: dict[Path, list[Any]] = defaultdict(list)
    for job in jobs:
        chapters[Path(job.path).parent].append(job)
    for folder, members in chapters.items():
        lines = "".join(f"{j.id} {j.text}\n" for j in sorted(members, key=lambda j: j.id))
        (folder / f"{folder.parent.name}-{folder.name}.trans.txt").write_text(lines)
    done.write_text(stamp)


def score_cells(ckpt: str, work: Path, accents: dict[str, str], train_counts: Any = None) -> list[dict[str, Any]]:
    """One row per cell: WER (with a 95 % bootstrap interval over utterances), CER, CER by accent.

    With ``train_counts`` (:func:`error_breakdown.training_words` of the corpus) each row also
    has ``recall_by_training_count``: how many reference words the transcripts contain, by
    how often each word occurs in training.
    """
    from error_breakdown import char_errors, decode_splits, recall_by_training_count

    from lightning_amortized.scoring import bootstrap_wer, utterance_errors

    rows = []
    for cell, rows_of in decode_splits(ckpt, str(work), list(CELLS)).items():
        ids, refs, hyps = zip(*rows_of)
        w_err, words = utterance_errors(hyps, refs)
        c_err, chars = char_errors(hyps, refs)
        row: dict[str, Any] = {
            "checkpoint": ckpt, "cell": cell, "texts": CELLS[cell][0], "voices": CELLS[cell][1], "utterances": len(ids),
            "wer": sum(w_err) / sum(words), "wer_ci95": list(bootstrap_wer(w_err, words)[1:]), "cer": sum(c_err) / sum(chars),
        }
        if train_counts is not None:
            row["recall_by_training_count"] = recall_by_training_count(hyps, refs, train_counts)
        if CELLS[cell][1] == "test-other":
            groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for utt, e, c in zip(ids, c_err, chars):
                g = groups[accents[utt.split("-")[0]]]
                g[0] += e
                g[1] += c
            row["cer_by_accent"] = {a: e / max(1, c) for a, (e, c) in sorted(groups.items())}
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Why test-other is hard: voices and sentence templates apart",
        "",
        f"Command: `{meta['command']}`  ",
        f"Corpus `{meta['root']}`: the first {meta['utterances']} utterances of `test` and `test-other`, re-rendered "
        "with texts and voices crossed (same voice, rate, pitch, warp and noise draw per position). Greedy CTC.",
        "`tt` equals `test`, `oo` equals `test-other`; `to` - `tt` is the cost of unseen voices, `ot` - `tt` of "
        "unseen sentence templates.",
        "",
        "| checkpoint | cell | texts | voices | WER (95 % CI) | CER | CER by accent |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        lo, hi = r["wer_ci95"]
        acc = ", ".join(f"{a} {100 * c:.1f} %" for a, c in r.get("cer_by_accent", {}).items()) or "–"
        lines.append(f"| `{shown_path(r['checkpoint'], REPO)}` | {r['cell']} | {r['texts']} | {r['voices']} "
                     f"| {pct(r['wer'])} ({100 * lo:.1f}-{100 * hi:.1f}) | {pct(r['cer'])} | {acc} |")
    banded = [r for r in rows if "recall_by_training_count" in r]
    if banded:
        bands = list(banded[0]["recall_by_training_count"])
        lines += [
            "",
            "## Words missed, by how often the word occurs in training",
            "",
            "Share of the reference words that the transcript does not contain (bag of words, blind to order), by the "
            "word's count in the `train` transcripts; the number of reference words in brackets.",
            "",
            "| checkpoint | cell | " + " | ".join(f"seen {b} times" for b in bands) + " |",
            "|---|---|" + "---:|" * len(bands),
        ]
        for r in banded:
            cells = [f"{100 * (1 - v['recall']):.1f} % ({v['words']})" if v["recall"] is not None else "–"
                     for v in r["recall_by_training_count"].values()]
            lines.append(f"| `{shown_path(r['checkpoint'], REPO)}` | {r['cell']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DEFAULT_RESULTS = REPO / "docs" / "results" / "test_other_factors"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, help="checkpoint to score (repeatable)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--utterances", type=int, default=640, help="utterances per cell (default 640: all of test)")
    p.add_argument("--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--work", default=None, help="where the cells are rendered (default runs/test_other_factors/<corpus>)")
    p.add_argument("--results", default=str(DEFAULT_RESULTS))
    a = p.parse_args(argv)
    root = Path(a.root)
    work = Path(a.work) if a.work else REPO / "runs" / "test_other_factors" / root.resolve().name
    try:
        jobs, accents = crossed_jobs(root, work, a.utterances)
    except FileNotFoundError as err:
        print(f"test_other_factors: error: {err}", file=sys.stderr)
        return 2
    render(jobs, work, a.workers)
    from error_breakdown import training_words

    counts = training_words(root)
    rows = [r for ckpt in a.ckpt for r in score_cells(ckpt, work, accents, counts if counts else None)]
    command = "python benchmarks/test_other_factors.py " + " ".join(
        [f"--ckpt {shown_path(c, REPO)}" for c in a.ckpt] + [f"--root {shown_path(root, REPO)}"]
        + ([f"--utterances {a.utterances}"] if a.utterances != 640 else [])
        + ([f"--results {shown_path(a.results, REPO)}"] if Path(a.results).resolve() != DEFAULT_RESULTS else []))
    meta = {"command": command, "root": shown_path(root, REPO), "utterances": len(jobs) // len(CELLS)}
    out_json, out_md = write_results(a.results, {"meta": meta, "rows": rows}, markdown(rows, meta))
    print(out_md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
