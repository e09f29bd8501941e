"""Every recipe config in ``recipes/synthetic/conf`` parses with the LightningCLI parser, builds its model and
tests on ``test`` and ``test-other``.

The AmNet configs must carry the ``ArbitratorTemperature`` and ``LatencyMonitor`` callbacks
and a simulated device on which the slow branch runs at rho = 1.5; the single-encoder
configs must cost what their FLOP count says (``functional/flops.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_amortized.callbacks import ArbitratorTemperature, LatencyMonitor
from lightning_amortized.cli import ASRLightningCLI
from lightning_amortized.functional.flops import lowrank_rnn_flops, lstm_flops
from lightning_amortized.nn import RecurrentEncoder, SharedStateAmortizedEncoder

CONF = Path(__file__).resolve().parents[2] / "recipes" / "synthetic" / "conf"
CONFIGS = sorted(CONF.glob("*.yaml"))
SLOW = lstm_flops(240, 256, num_layers=3)


def _build(config: Path, tmp_path: Path):
    args = ["--config", str(config), "--data.init_args.root", str(tmp_path / "corpus"),
            "--trainer.default_root_dir", str(tmp_path / "run")]
    return ASRLightningCLI(args=args, run=False)


def test_all_amnet_configs_present():
    names = {c.stem for c in CONFIGS}
    expected = {"slow_only", "fast_only", "sparse_single", "factorized_single", "amnet_factorized", "amnet_sparse",
                "amnet_factorized_no_amr"}
    assert expected <= names, f"missing configs: {sorted(expected - names)}"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_and_builds_model(config, tmp_path):
    cli = _build(config, tmp_path)
    model, trainer = cli.model, cli.trainer
    enc = model.encoder
    assert enc.input_size == 240 and model.frame_ms == 30.0
    assert cli.datamodule.test_splits == ["test", "test-other"]  # every recipe reports both
    # a forward pass through the built model (features -> stacked frames -> encoder -> head)
    feats, lengths = torch.randn(2, 30, 80), torch.tensor([30, 17])
    out, n = model.encode(feats, lengths)
    assert out.shape == (2, 10, enc.output_size) and n.tolist() == [10, 6]
    callbacks = {type(cb) for cb in trainer.callbacks}
    if isinstance(enc, SharedStateAmortizedEncoder):
        slow = enc.branch_flops()[1]
        assert slow == SLOW
        # the device of the configs: the slow branch alone runs at rho = 1.5
        assert enc.device_model.load_factor(slow) == pytest.approx(1.5, rel=1e-3)
        if enc.force_branch is None:  # AmNet
            assert {ArbitratorTemperature, LatencyMonitor} <= callbacks
            assert enc.flops_per_frame() == slow + enc.arbitrator.flops_per_frame()
            assert model.hparams.lambda_cost > 0
            assert (model.hparams.lambda_amr > 0) == ("no_amr" not in config.stem)
            assert enc.last_routing is not None and enc.last_routing.gates.shape == (2, 10, 2)
        else:  # a single compressed encoder: only the forced branch is counted
            assert enc.flops_per_frame() == enc.branch_flops()[enc.force_branch] < slow
            assert model.hparams.lambda_cost == 0 and model.hparams.lambda_amr == 0
    else:
        assert isinstance(enc, RecurrentEncoder)  # the base configs: 3x256, or 3x384 (base384.yaml)
        assert enc.flops_per_frame() == lstm_flops(240, enc.hidden_size, num_layers=enc.num_layers)
        assert (enc.flops_per_frame() == SLOW) == (enc.hidden_size == 256)


def test_fast_only_is_the_factorized_amnet_fast_branch(tmp_path):
    fast = _build(CONF / "fast_only.yaml", tmp_path).model.encoder
    amnet = _build(CONF / "amnet_factorized.yaml", tmp_path).model.encoder
    assert fast.core.kind == amnet.core.kind == "lowrank" and fast.core.rank == amnet.core.rank
    expected = sum(lowrank_rnn_flops("lstm", i, 256, fast.core.rank) for i in (240, 256, 256))
    assert fast.flops_per_frame() == expected == amnet.branch_flops()[0]


def test_guard_config_builds_a_guarded_load_aware_amnet(tmp_path):
    cli = _build(CONF / "amnet_factorized_load_aware_guard.yaml", tmp_path)
    enc = cli.model.encoder
    assert enc.latency_guard == 3.0 and enc.arbitrator.load_aware and enc.train_rho_range == (0.4, 3.2)
    assert cli.model.hparams.branch_loss_weight == 0.5 and cli.model.hparams.amr_eou_weight == 4.0
