"""On the device: eager PyTorch ``step`` versus the exported ONNX runtime, single-threaded.

Three models, all from the shared base of ``benchmarks/base.py`` (3x256 LSTM, CTC):

=============  ====================================================================
``slow_only``  the base itself (one ``step`` graph)
``fast_only``  the AmNet's rank-48 fast branch alone (``force_branch=0``, one graph)
``amnet``      a short warm-started factorized AmNet (``recipes/synthetic/conf/amnet_factorized.yaml``,
               fast branch by truncated SVD of the base, arbitrator trained for a device
               where slow-only runs at rho = 1.5), arbitrator and two branch graphs
=============  ====================================================================

The AmNet is *not* converged (a few epochs on a subset of the training split, affordable
on 2 shared CPU cores); its WER is reported as measured. This benchmark is about the
device: per-frame speed of eager ``step`` versus ONNX Runtime, the runtime's agreement
with PyTorch (WER and transcripts), peak resident memory and cold start of the device
process, and applying a neural diff on the device.

Per model: ``ms_per_frame_torch`` (eager ``step`` via ``nn.streaming.stream``, 1 thread),
``ms_per_frame_runtime`` (``lightning_amortized.device``, ONNX Runtime, 1 intra-op thread,
arbitrator + chosen branch + CTC head per encoder frame, features excluded), ``rtf_runtime``
(compute incl. features / audio duration), ``wer_torch`` (``ASRModule.transcribe``),
``wer_runtime`` (device runtime), ``peak_rss_mb`` and ``cold_start_s`` (a fresh device
process that blocks ``import torch``: import, load the export, first transcript).

Usage::

    python benchmarks/device.py                 # train the AmNet if missing, export, measure
    python benchmarks/device.py --quick         # small smoke run (few utterances)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
WORK = REPO / "runs" / "device"
CONF = REPO / "recipes" / "synthetic" / "conf"
BASE_CKPT = REPO / "runs" / "base" / "9ef2e920fd3a222d" / "base.ckpt"
DEVICE_FLOPS = 69.54e6  # the recipe's device: slow-only at rho = 1.5


def train_amnet(a: argparse.Namespace) -> Path:
    """Warm-start the factorized AmNet from the base and fine-tune briefly; returns its checkpoint."""
    out = WORK / "amnet.ckpt"
    if out.exists() and not a.retrain:
        return out
    import torch

    torch.set_num_threads(1)
    import lightning.pytorch as pl

    sys.path.insert(0, str(REPO / "benchmarks"))
    from amnet import _warm_start  # noqa: E402

    from lightning_amortized.callbacks import ArbitratorTemperature
    from lightning_amortized.cli import ASRLightningCLI

    args = [
        "--config", str(CONF / "amnet_factorized.yaml"),
        "--data.init_args.root", str(a.root),
        "--data.init_args.max_train_utterances", str(a.train_utts),
        "--trainer.max_epochs", str(a.epochs),
        "--trainer.default_root_dir", str(WORK / "amnet_run"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "4",
        "--model.lr", "0.001",
    ]
    pl.seed_everything(0, workers=True)
    cli = ASRLightningCLI(args=args, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    for cb in trainer.callbacks:
        if isinstance(cb, ArbitratorTemperature):
            cb.epochs = a.epochs
    _warm_start(model, str(a.base_ckpt), DEVICE_FLOPS)
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    WORK.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(out)
    (WORK / "amnet_train.json").write_text(
        json.dumps({"fit_seconds": round(time.time() - t0, 1), "epochs": a.epochs, "train_utterances": a.train_utts,
                    "lr": 0.001, "config": "recipes/synthetic/conf/amnet_factorized.yaml"}, indent=2)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-ckpt", default=str(BASE_CKPT))
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"))
    p.add_argument("--train-utts", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--phase", choices=["train", "all"], default="all")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    ckpt = train_amnet(a)
    print(f"AmNet checkpoint: {ckpt}", flush=True)
    if a.phase == "train":
        return 0
    return measure(a, ckpt)


def measure(a: argparse.Namespace, amnet_ckpt: Path) -> int:  # filled in below
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(main())
