"""Where a recognizer fails on the synthetic corpus: by voice variant, by accent, on words unseen in training.

Decodes each test split with a checkpoint (greedy CTC) and groups the character errors by
who speaks (the speaker's eSpeak NG variant and accent, from ``corpus.json``), marking the
variants and accents never heard in training. It also counts the reference words that never
occur in the training transcripts and how many of them, and of the other words, the
transcript contains (word recall per utterance), which separates "unknown voice" from
"unknown word".

Usage::

    python benchmarks/error_breakdown.py --ckpt runs/base/<key>/base.ckpt [--root data/synthetic] \\
        [--splits test test-other] [--results docs/results/error_breakdown]

Writes ``<results>.json`` (per split: ``wer``, ``cer``, ``unseen_word_share``,
``recall_seen_words``, ``recall_unseen_words``, and ``by_variant`` / ``by_accent`` rows
with ``utterances``, ``cer`` and ``in_training``) and ``<results>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_amortized.experiment import percent, shown_path, write_results  # noqa: E402
from lightning_amortized.scoring import utterance_errors  # noqa: E402


def char_errors(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[int], list[int]]:
    """Character errors and reference characters per utterance (spaces count as characters)."""

    def spell(text: str) -> str:
        return " ".join(text.replace(" ", "|"))

    return utterance_errors([spell(h) for h in hypotheses], [spell(r) for r in references])


def training_words(root: Path, splits: Iterable[str] = ("train",)) -> Counter[str]:
    """How often each word occurs in the transcripts of ``splits`` under ``root`` (LibriSpeech layout)."""
    words: Counter[str] = Counter()
    for split in splits:
        for trans in (root / split).glob("*/*/*.trans.txt"):
            for line in trans.read_text().splitlines():
                words.update(line.split()[1:])
    return words


COUNT_EDGES = (1, 10, 100, 1000)
"""Lower edges of the training-count bands of :func:`recall_by_training_count` (0 below the first)."""


def recall_by_training_count(hypotheses: Sequence[str], references: Sequence[str], counts: Counter[str],
                             edges: Sequence[int] = COUNT_EDGES) -> dict[str, dict[str, Any]]:
    """Bag-of-words recall of the reference words, by how often each occurs in training.

    Bands ``"0"``, ``"1-9"``, ``"10-99"``, ``"100-999"``, ``"1000+"`` (for the default
    ``edges``), each ``{"words": n, "recall": share recalled or None}``; a word counts as
    recalled as in :func:`word_recall`.
    """
    bounds = [0, *edges]
    names = [f"{lo}-{hi - 1}" if hi - 1 > lo else str(lo) for lo, hi in zip(bounds[:-1], bounds[1:])] + [f"{edges[-1]}+"]
    names[0] = "0"
    hits, total = Counter(), Counter()
    for hyp, ref in zip(hypotheses, references):
        have = Counter(hyp.split())
        for word, n in Counter(ref.split()).items():
            band = names[sum(counts[word] >= e for e in edges)]
            total[band] += n
            hits[band] += min(n, have[word])
    return {b: {"words": total[b], "recall": hits[b] / total[b] if total[b] else None} for b in names}


def word_recall(hypotheses: Sequence[str], references: Sequence[str], seen: set[str]) -> dict[str, Any]:
    """Share of reference words unseen in training and the recall of seen and unseen words.

    A reference word counts as recalled if the transcript of its utterance contains it (as
    many times as the reference does): a bag-of-words match, blind to order.
    """
    hits = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for hyp, ref in zip(hypotheses, references):
        have = Counter(hyp.split())
        for word, n in Counter(ref.split()).items():
            known = word in seen
            total[known] += n
            hits[known] += min(n, have[word])
    words = total[True] + total[False]
    return {
        "words": words,
        "unseen_word_share": total[False] / words if words else 0.0,
        "recall_seen_words": hits[True] / total[True] if total[True] else None,
        "recall_unseen_words": hits[False] / total[False] if total[False] else None,
    }


def decode_splits(ckpt: str, root: str, splits: Sequence[str]) -> dict[str, list[tuple[str, str, str]]]:
    """``{split: [(utterance id, reference, greedy transcript), ...]}`` for a checkpoint."""
    from tqdm.auto import tqdm

    from lightning_amortized.data import LibriSpeechDataModule
    from lightning_amortized.module import load_asr_module

    model = load_asr_module(ckpt).eval()
    tokenizer = getattr(model.tokenizer, "path", None)
    dm = LibriSpeechDataModule(root, train_splits=[], val_splits=[], test_splits=list(splits), tokenizer=tokenizer,
                               max_batch_size=16)
    dm.prepare_data()
    dm.setup("test")
    out: dict[str, list[tuple[str, str, str]]] = {}
    with torch.no_grad():
        for split, loader in zip(splits, dm.test_dataloader()):
            rows = []
            for batch in tqdm(loader, desc=split, unit="batch"):
                hyps = model.transcribe(batch["feats"], batch["feat_lengths"])
                rows += list(zip(batch["ids"], batch["texts"], hyps))
            out[split] = rows
    return out


def _grouped(rows: Sequence[tuple[str, str, str]], key_of: dict[str, str], known: set[str]) -> list[dict[str, Any]]:
    groups: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for row in rows:
        groups[key_of[row[0].split("-")[0]]].append(row)
    out = []
    for key, members in groups.items():
        errors, chars = char_errors([h for _, _, h in members], [r for _, r, _ in members])
        out.append({"name": key, "utterances": len(members), "cer": sum(errors) / max(1, sum(chars)),
                    "in_training": key in known})
    return sorted(out, key=lambda r: -r["cer"])


def breakdown(ckpt: str, root: str, splits: Sequence[str]) -> dict[str, Any]:
    """Scores of ``ckpt`` on ``splits`` of the synthetic corpus at ``root``, grouped as the module says."""
    manifest = Path(root) / "corpus.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} does not exist: the breakdown needs the speakers of a synthetic corpus "
            "(make-corpus writes corpus.json). Pass --root of such a corpus."
        )
    corpus = json.loads(manifest.read_text())
    speakers = corpus["speakers"]
    variant_of = {sid: s["variant"] for sid, s in speakers.items()}
    accent_of = {sid: s["voice"] for sid, s in speakers.items()}
    train_ids = set(map(str, corpus["splits"]["train"]["speakers"]))
    train_variants = {variant_of[s] for s in train_ids}
    train_accents = {accent_of[s] for s in train_ids}
    seen = training_words(Path(root))
    result: dict[str, Any] = {"checkpoint": ckpt, "root": str(root), "training_vocabulary": len(seen), "splits": {}}
    for split, rows in decode_splits(ckpt, root, splits).items():
        ids, refs, hyps = zip(*rows)
        w_err, words = utterance_errors(hyps, refs)
        c_err, chars = char_errors(hyps, refs)
        result["splits"][split] = {
            "utterances": len(rows),
            "wer": sum(w_err) / sum(words),
            "cer": sum(c_err) / sum(chars),
            **word_recall(hyps, refs, seen),
            "by_variant": _grouped(rows, variant_of, train_variants),
            "by_accent": _grouped(rows, accent_of, train_accents),
        }
    return result


def _pct(x: float | None, digits: int = 1) -> str:
    return percent(x, digits)



def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Where the recognizer fails: voices and unseen words",
        "",
        f"Command: `{command}`  ",
        f"Checkpoint `{shown_path(result['checkpoint'], REPO)}`; corpus `{shown_path(result['root'], REPO)}` (training vocabulary "
        f"{result['training_vocabulary']:,} words). Greedy CTC decoding. Word recall: share of reference "
        "words the transcript of the same utterance contains.",
        "",
        "| split | utterances | WER | CER | words unseen in training | recall, seen words | recall, unseen words |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split, r in result["splits"].items():
        lines.append(f"| {split} | {r['utterances']} | {_pct(r['wer'])} | {_pct(r['cer'])} | "
                     f"{_pct(r['unseen_word_share'], 2)} | {_pct(r['recall_seen_words'])} | "
                     f"{_pct(r['recall_unseen_words'])} |")
    for split, r in result["splits"].items():
        for group in ("by_variant", "by_accent"):
            lines += ["", f"## {split}: CER {group.replace('_', ' ')}", "",
                      "| name | heard in training | utterances | CER |", "|---|---|---:|---:|"]
            for row in r[group]:
                lines.append(f"| {row['name']} | {'yes' if row['in_training'] else 'no'} | {row['utterances']} "
                             f"| {_pct(row['cer'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint of an ASRModule (e.g. the shared base)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"), help="synthetic corpus (with corpus.json)")
    p.add_argument("--splits", nargs="+", default=["test", "test-other"])
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "error_breakdown"))
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    try:
        result = breakdown(a.ckpt, a.root, a.splits)
    except FileNotFoundError as err:
        print(f"error_breakdown: error: {err}", file=sys.stderr)
        return 2
    command = "python benchmarks/error_breakdown.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(result, command)
    write_results(a.results, result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
