"""Cost of waveform augmentation in the data pipeline: one epoch of training batches, with and without.

Builds the synthetic recipe's training loader twice (20 s / 12-utterance batches, one
thread, no worker): with cached log-mel features (no augmentation), and with
``WaveAugment()`` defaults (cached 16-bit audio, augmentation and features per batch).
Writes ``docs/results/augment_cost.{json,md}``.

Usage::

    python benchmarks/augment_cost.py        # about 40 s on one core
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lightning_amortized.data import SyntheticDataModule, WaveAugment  # noqa: E402
from lightning_amortized.experiment import write_results  # noqa: E402


def measure(root: str, augment: WaveAugment | None) -> dict[str, float]:
    dm = SyntheticDataModule(root, utterances=8000, max_batch_seconds=20.0, max_batch_size=12,
                             cache_features=True, augment=augment)
    t0 = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches = sum(1 for _ in dm.train_dataloader())
    return {"setup_s": round(setup_s, 1), "epoch_s": round(time.perf_counter() - t0, 1), "batches": batches,
            "train_utterances": len(dm.datasets["train"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "augment_cost"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    cached, augmented = measure(a.root, None), measure(a.root, WaveAugment())
    result = {"command": "python benchmarks/augment_cost.py", "threads": 1, "num_workers": 0,
              "load_average_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
              "cached_features": cached, "augment": augmented}
    md = ("# Cost of waveform augmentation\n\n"
          f"Command: `{result['command']}`; one thread, no DataLoader worker, {cached['train_utterances']:,} training "
          f"utterances in {cached['batches']} batches. Load average before/after: {result['load_average_before_after']}.\n\n"
          "| pipeline | setup (s) | one epoch of batches (s) |\n|---|---:|---:|\n"
          f"| cached features, no augmentation | {cached['setup_s']} | {cached['epoch_s']} |\n"
          f"| `WaveAugment()` (cached audio, features per batch) | {augmented['setup_s']} | {augmented['epoch_s']} |\n")
    write_results(a.results, result, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
