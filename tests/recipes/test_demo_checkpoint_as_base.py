"""The checkpoint `make demo` writes (LightningCLI, encoder as a class_path config) serves as the base
of both benchmarks and of the updates recipe."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import load_script
from lightning_amortized.cli import ASRLightningCLI

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "recipes" / "synthetic" / "conf"


def _cli(config: str, tmp_path: Path) -> ASRLightningCLI:
    return ASRLightningCLI(args=["--config", str(CONF / config), "--data.init_args.root", str(tmp_path / "corpus"),
                                 "--trainer.default_root_dir", str(tmp_path / "run")], run=False)


def test_demo_checkpoint_is_a_base_for_amnet_diffs_and_updates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    demo = _cli("lstm_ctc.yaml", tmp_path).model
    ckpt = tmp_path / "best.ckpt"  # what ModelCheckpoint keeps of a LightningCLI run: weights and hyper-parameters
    torch.save({"state_dict": demo.state_dict(), "hyper_parameters": dict(demo.hparams)}, ckpt)
    assert "encoder" in demo.hparams  # the LightningCLI case

    amnet = load_script(REPO / "benchmarks" / "amnet.py", "bench_amnet_base")
    model = _cli("amnet_factorized.yaml", tmp_path).model
    amnet._warm_start(model, str(ckpt), 69.54e6)
    slow = model.encoder.core.encoder  # the AmNet's slow branch now holds the demo's weights
    for name, t in demo.encoder.state_dict().items():
        assert torch.equal(slow.state_dict()[name], t), name
    assert torch.equal(model.head.weight, demo.head.weight)

    diffs = load_script(REPO / "benchmarks" / "diff_updates.py", "bench_diffs_base")
    assert 0.05 * 4 * 1.5e6 < diffs.sparse10_bytes(ckpt) < 0.15 * 5 * 1.6e6  # ~10 % of 1.56 M weights, ~3 B each (fp16, gap index)

    recipe = load_script(REPO / "recipes" / "synthetic" / "updates.py", "updates_base")
    loaded = recipe.load_base(ckpt)
    for name, t in demo.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
