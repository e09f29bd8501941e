"""Whole runs killed with SIGKILL mid-epoch and resumed from their last checkpoint end bit for bit
like runs that were never interrupted: a NeuralDiff update (weights, masks, exported file) and an
AmNet (weights, arbitrator temperature), on the real data pipeline with SpecAugment and Gumbel noise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import argparse, sys, time
    from pathlib import Path

    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_amortized.callbacks import ArbitratorTemperature, NeuralDiff, StepSeed
    from lightning_amortized.data import LibriSpeechDataModule
    from lightning_amortized.module import ASRModule
    from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder

    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["diff", "amnet"])
    p.add_argument("corpus")
    p.add_argument("out")
    p.add_argument("--kill-in-epoch", type=int, default=-1)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    seed_everything(0)


    class Hang(Callback):
        # a crash stand-in: tells the parent where it is, then waits for its SIGKILL
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == args.kill_in_epoch and batch_idx == trainer.num_training_batches // 2:
                (out / "hanging").write_text(str(trainer.global_step))
                time.sleep(600)


    torch.manual_seed(0)
    encoder = RecurrentEncoder(240, 24, 1)
    callbacks = [StepSeed()]
    if args.mode == "amnet":
        encoder = AmortizedEncoder.from_recurrent(encoder, fast="lowrank", rank=4, frame_ms=30.0)
        model = ASRModule(encoder, lr=1e-2, lambda_cost=0.1, lambda_amr=1.0)
        callbacks.append(ArbitratorTemperature(start=1.0, end=0.1, epochs=3))
    else:
        model = ASRModule(encoder, lr=1e-2)
        callbacks.append(NeuralDiff(method="sparse", budget=0.2, targets=["encoder.*"], schedule_epochs=3,
                                    export_path=out / "update.safetensors"))
    if args.kill_in_epoch >= 0:
        callbacks.append(Hang())
    callbacks.append(ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=0))
    dm = LibriSpeechDataModule(args.corpus, ["train"], [], [], max_batch_seconds=10.0, max_train_utterances=60,
                               cache_features=True, sortagrad_epochs=1)
    trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False, callbacks=callbacks)
    trainer.fit(model, datamodule=dm, ckpt_path=out / "ckpt" / "last.ckpt" if args.resume else None)
    result = {"state": model.state_dict(), "global_step": trainer.global_step}
    if args.mode == "amnet":
        result["temperature"] = model.encoder.arbitrator.temperature
        result["straight_through"] = model.encoder.arbitrator.straight_through
    torch.save(result, out / "result.pt")
    """
)


def _run(script: Path, *args: str, hang: bool = False) -> subprocess.CompletedProcess | None:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), *args]
    if not hang:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    out = Path(args[2])
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 300
        while not (out / "hanging").exists():
            assert proc.poll() is None, f"exited before the kill point: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "never reached the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    return None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["diff", "amnet"])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tiny_corpus: Path, tmp_path: Path, mode: str) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    whole.mkdir()
    crashed.mkdir()
    _run(script, mode, str(tiny_corpus), str(whole))
    _run(script, mode, str(tiny_corpus), str(crashed), "--kill-in-epoch", "1", hang=True)
    killed_at = int((crashed / "hanging").read_text())
    resumed_from = torch.load(crashed / "ckpt" / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < killed_at - resumed_from < 2  # mid-epoch, and the kill lost less than the checkpoint interval
    assert not (crashed / "result.pt").exists() and not (crashed / "update.safetensors").exists()
    _run(script, mode, str(tiny_corpus), str(crashed), "--resume")

    a = torch.load(whole / "result.pt", weights_only=False)
    b = torch.load(crashed / "result.pt", weights_only=False)
    assert a["global_step"] == b["global_step"] > killed_at
    assert a["state"].keys() == b["state"].keys()
    for name in a["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name
    if mode == "diff":
        assert any(name.endswith("mask") for name in a["state"])  # the masks were compared too
        assert (whole / "update.safetensors").read_bytes() == (crashed / "update.safetensors").read_bytes()
    else:
        assert (a["temperature"], a["straight_through"]) == (b["temperature"], b["straight_through"])
        assert a["temperature"] == pytest.approx(0.1) and a["straight_through"]
