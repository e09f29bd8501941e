"""How many CTC frames carry no new output: the share an amortized encoder could skip.

For each checkpoint, runs the model over a test split and counts the encoder frames (30 ms)
whose most likely output is the blank, and those with blank probability above 0.99.
Characters leave fewer such frames than subword units (each unit spans several characters),
which bounds what an AmNet's fast branch can take over without hurting accuracy.

Usage::

    python benchmarks/blank_share.py --ckpt characters=runs/base/<key>/base.ckpt \\
        --ckpt sp256=runs/base/<key2>/base.ckpt [--split test] [--results docs/results/blank_share]

Writes ``<results>.json`` and ``<results>.md``: per checkpoint ``blank_argmax_share``,
``blank_p99_share`` (fractions of frames), ``frames``, ``utterances``, ``symbols`` (output
classes with blank) and the split's ``wer`` (greedy decoding).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_amortized.experiment import write_results  # noqa: E402


def blank_share(ckpt: str, root: str, split: str, max_utterances: int | None = None) -> dict:
    """Blank-frame shares and greedy WER of the checkpoint ``ckpt`` on ``root/split``."""
    from torchmetrics.functional.text import word_error_rate
    from tqdm.auto import tqdm

    from lightning_amortized.data import LibriSpeechDataModule
    from lightning_amortized.module import load_asr_module

    model = load_asr_module(ckpt).eval()
    tokenizer = getattr(model.tokenizer, "path", None)  # SentencePiece model, or None for characters
    dm = LibriSpeechDataModule(root, train_splits=[], val_splits=[], test_splits=[split], tokenizer=tokenizer)
    dm.prepare_data()
    dm.setup("test")
    ds = dm.datasets[f"test:{split}"]
    n = len(ds) if max_utterances is None else min(len(ds), max_utterances)
    frames = argmax_blank = p99_blank = 0
    refs, hyps = [], []
    with torch.no_grad():
        for i in tqdm(range(n), desc=Path(ckpt).parent.name, unit="utt"):
            item = ds[i]
            feats = item["feats"][None]
            enc, lengths = model.encode(feats, torch.tensor([feats.shape[1]]))
            probs = model.head(enc[0, : int(lengths[0])]).softmax(-1)
            frames += probs.shape[0]
            argmax_blank += int((probs.argmax(-1) == 0).sum())
            p99_blank += int((probs[:, 0] > 0.99).sum())
            refs.append(item["text"])
            hyps.append(model.decode(enc, lengths)[0])
    return {
        "checkpoint": ckpt,
        "split": split,
        "utterances": n,
        "frames": frames,
        "symbols": int(model.head.out_features),
        "blank_argmax_share": argmax_blank / frames,
        "blank_p99_share": p99_blank / frames,
        "wer": float(word_error_rate(hyps, refs)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, help="NAME=PATH of a CTC checkpoint (repeat)")
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--split", default="test")
    p.add_argument("--max-utterances", type=int, default=None)
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "blank_share"))
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    rows = {}
    for spec in a.ckpt:
        name, sep, path = spec.partition("=")
        if not sep:
            p.error(f"--ckpt takes NAME=PATH, got {spec!r}")
        rows[name] = blank_share(path, a.root, a.split, a.max_utterances)
    lines = [
        "# Blank frames: what an amortized encoder could skip",
        "",
        f"Command: `python benchmarks/blank_share.py {' '.join(sys.argv[1:]) if argv is None else ' '.join(argv)}`.",
        f"Split `{a.split}`; a frame is 30 ms of audio (greedy CTC decoding).",
        "",
        "| model | output symbols | WER | frames with blank most likely | frames with p(blank) > 0.99 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['symbols']} | {100 * r['wer']:.2f} % | {100 * r['blank_argmax_share']:.1f} % "
                     f"| {100 * r['blank_p99_share']:.1f} % |")
    write_results(a.results, {"split": a.split, "models": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
