"""NeuralDiff under DDP: 2 CPU processes with gloo; masks identical on all ranks, export on rank 0 only."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from lightning.pytorch import Callback, LightningModule, Trainer
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_amortized.callbacks.neural_diff import NeuralDiff
    from lightning_amortized.diffs import diff_modules

    out = Path(sys.argv[1])
    torch.set_num_threads(1)


    class Tiny(LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(8, 16)
            self.rnn = nn.LSTM(16, 8, batch_first=True)
            self.b = nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            h, _ = self.rnn(torch.relu(self.a(x)))
            return nn.functional.cross_entropy(self.b(h[:, -1]), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)


    class RankNoise(Callback):
        # makes the ranks' deltas differ right before pruning: only the broadcast keeps masks equal
        def _noise(self, trainer, pl_module):
            g = torch.Generator().manual_seed(1000 + trainer.global_rank)
            with torch.no_grad():
                for d in diff_modules(pl_module).values():
                    d.delta.add_(0.01 * torch.randn(d.delta.shape, generator=g))

        on_train_epoch_start = _noise
        on_train_end = _noise


    class Report(Callback):
        def on_fit_end(self, trainer, pl_module):
            masks = {n: d.mask.clone() for n, d in diff_modules(pl_module).items()}
            torch.save(masks, out / f"masks_rank{trainer.global_rank}.pt")


    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, 8, generator=g), torch.randint(0, 2, (32,), generator=g))
    diff = NeuralDiff(method="sparse", budget=0.1, targets=["a.weight", "rnn.weight_*"],
                      export_path=out / "update.safetensors", schedule_epochs=5)  # end-of-fit prune decides
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[RankNoise(), diff, Report()])
    trainer.fit(Tiny(), DataLoader(data, batch_size=4))
    """
)


def test_masks_identical_across_ranks_and_single_export(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m0 = torch.load(tmp_path / "masks_rank0.pt")
    m1 = torch.load(tmp_path / "masks_rank1.pt")
    assert m0.keys() == m1.keys() and len(m0) == 3
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    total = sum(m.numel() for m in m0.values())
    assert sum(int(m.sum()) for m in m0.values()) == round(0.1 * total)
    exported = [p.name for p in tmp_path.glob("*.safetensors")]
    assert exported == ["update.safetensors"]
    assert proc.stderr.count("NeuralDiff: exported") == 1
