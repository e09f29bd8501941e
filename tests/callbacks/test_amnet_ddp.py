"""AmNet under DDP: 2 CPU processes (gloo) training an ASRModule with an AmortizedEncoder,
ArbitratorTemperature and LatencyMonitor, against 1 process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import DataLoader

    from lightning_amortized.callbacks import ArbitratorTemperature, LatencyMonitor
    from lightning_amortized.data import CharTokenizer, DurationBatchSampler, SpeechCollator
    from lightning_amortized.data.batching import tag_items
    from lightning_amortized.module import ASRModule
    from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder

    devices, out = int(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    seed_everything(0)
    N_MELS, T = 8, 45  # every utterance has 15 encoder frames: per-frame means agree across ranks
    words = ["A", "HI", "SET", "TIMER", "PLAY", "IT"]
    tok = CharTokenizer()
    g = torch.Generator().manual_seed(0)


    def utterances(n, prefix):
        items = []
        for i in range(n):
            text = " ".join(words[int(j)] for j in torch.randint(0, len(words), (2,), generator=g))
            items.append({"id": f"{prefix}{i}", "feats": torch.randn(T, N_MELS, generator=g),
                          "tokens": tok.encode(text), "text": text})
        return items


    train, val = utterances(16, "t"), utterances(8, "v")
    collate = SpeechCollator(None, None)
    per_rank = 4 // devices  # the same global batch of 4
    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(N_MELS * 3, 16, 1), fast="lowrank", rank=4, frame_ms=30.0)
    enc.arbitrator.gumbel_noise = False  # each process would draw its own noise: not comparable to 1 process
    model = ASRModule(enc, n_mels=N_MELS, lr=1e-2, lambda_cost=0.1, lambda_amr=1.0)
    # a device on which the slow branch takes 40 ms per 30 ms frame: routing decides the backlog
    monitor = LatencyMonitor(device_flops_per_s=max(enc.branch_flops()) * 1000.0 / 40.0, plot_dir=str(out / "plots"),
                             rtf_samples=0)


    class Report(Callback):
        temperatures = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.temperatures.append(pl_module.encoder.arbitrator.temperature)

        def on_fit_end(self, trainer, pl_module):
            rank = trainer.global_rank
            torch.save(pl_module.state_dict(), out / f"state_rank{rank}.pt")
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            (out / f"report_rank{rank}.json").write_text(json.dumps({
                "temperatures": self.temperatures, "metrics": metrics, "monitor": monitor.last_metrics,
                "plot": monitor.last_plot_path, "steps": trainer.global_step}))


    class Items(torch.utils.data.Dataset):  # a user's dataset: its __getitems__ passes the batch's tags on
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return dict(self.items[i])

        def __getitems__(self, indices):
            return tag_items([self[i] for i in indices], indices)


    def loader(items):
        # the recipes' sampler, which deals whole batches to the ranks (use_distributed_sampler=False):
        # rank r takes batches r, r + 2, ...: together the 1-process batch
        sampler = DurationBatchSampler([1.0] * len(items), 1e9, shuffle=False, max_batch_size=per_rank)
        return DataLoader(Items(items), batch_sampler=sampler, collate_fn=collate)


    if len(sys.argv) > 3:  # validate only, untrained: 5 batches of 2 on 2 ranks, so one rank gets a padding batch
        trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                          use_distributed_sampler=False, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[monitor])
        metrics = trainer.validate(model, loader(val + utterances(2, "w")), verbose=False)[0]
        (out / f"validate_rank{trainer.global_rank}.json").write_text(json.dumps(metrics))
        sys.exit(0)
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=3,
                      use_distributed_sampler=False, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=[ArbitratorTemperature(start=1.0, end=0.1, epochs=3), Report(),
                                                         monitor])
    trainer.fit(model, loader(train), loader(val))
    """
)


def _run(script: Path, devices: int, out: Path, *mode: str) -> None:
    out.mkdir()
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(devices), str(out), *mode], env=env, cwd=out,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path: Path) -> None:
    import json

    script = tmp_path / "amnet_ddp.py"
    script.write_text(SCRIPT)
    _run(script, 2, tmp_path / "ddp")
    _run(script, 1, tmp_path / "single")
    r0, r1 = (json.loads((tmp_path / "ddp" / f"report_rank{r}.json").read_text()) for r in (0, 1))
    one = json.loads((tmp_path / "single" / "report_rank0.json").read_text())
    # same temperature schedule on both ranks (and as in one process)
    assert r0["temperatures"] == r1["temperatures"] == one["temperatures"] == pytest.approx([1.0, 0.316228, 0.1])
    assert r0["steps"] == r1["steps"] == one["steps"] == 12
    # DDP keeps the ranks' weights identical; against one process they differ by the order of the
    # gradient sums only (all-reduce adds two half-batch means, one process one mean of four)
    s0, s1 = (torch.load(tmp_path / "ddp" / f"state_rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "state_rank0.pt")
    for name in s0:
        assert torch.equal(s0[name], s1[name]), name
        torch.testing.assert_close(s0[name], single[name], rtol=1e-5, atol=1e-6, msg=name)  # measured: 3e-7
    # latency metrics are reduced over both ranks' validation utterances: every rank logs the
    # same values, equal to those of one process that saw all utterances
    latency = [k for k in one["monitor"]]
    assert {"latency/flops_per_frame", "latency/slow_share", "latency/eou_p90_ms"} <= set(latency)
    for key in latency:
        assert r0["monitor"][key] == r1["monitor"][key] == pytest.approx(one["monitor"][key], rel=1e-6), key
        assert r0["metrics"][key] == r1["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-6), key
    for key in ("val/wer", "val/cer", "val/loss", "arbitrator/sharpness"):
        assert r0["metrics"][key] == r1["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-4), key
    # only rank 0 writes plots: one per validation epoch
    assert r0["plot"] and r1["plot"] is None
    assert len(list((tmp_path / "ddp" / "plots").glob("latency_epoch*.png"))) == 3


@pytest.mark.slow
def test_a_rank_with_a_padding_batch_validates_like_one_process(tmp_path: Path) -> None:
    """5 batches on 2 ranks: rank 1's third batch only repeats one to keep the ranks in step. It is scored once
    (WER, CER, loss and latency as in one process) and the ranks still meet in every reduction (no hang)."""
    import json

    script = tmp_path / "amnet_ddp.py"
    script.write_text(SCRIPT)
    _run(script, 2, tmp_path / "ddp", "validate")
    _run(script, 1, tmp_path / "single", "validate")
    r0, r1 = (json.loads((tmp_path / "ddp" / f"validate_rank{r}.json").read_text()) for r in (0, 1))
    one = json.loads((tmp_path / "single" / "validate_rank0.json").read_text())
    assert {"val/wer", "val/cer", "val/loss", "latency/flops_per_frame", "latency/eou_p90_ms"} <= set(one)
    for key, value in one.items():
        assert r0[key] == r1[key] == pytest.approx(value, rel=1e-5), key
