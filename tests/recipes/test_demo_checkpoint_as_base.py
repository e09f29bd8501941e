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


def test_a_base_of_another_size_gives_every_variant_its_shape(tmp_path: Path) -> None:
    """amnet.py's configs name a 3x256 LSTM; a base of another size (the 3x384 of base384.yaml) sets the slow encoder
    of every variant, its FLOPs and the device rho is counted on."""
    from lightning_amortized.module import ASRModule
    from lightning_amortized.nn import RecurrentEncoder, SharedStateAmortizedEncoder

    amnet = load_script(REPO / "benchmarks" / "amnet.py", "bench_amnet_shape")
    torch.manual_seed(0)
    base = ASRModule(RecurrentEncoder(240, 24, num_layers=2))
    ckpt = tmp_path / "base.ckpt"
    torch.save({"state_dict": base.state_dict(), "hyper_parameters": dict(base.hparams)}, ckpt)
    shape = amnet.encoder_shape(str(ckpt))
    assert shape == (240, 24, 2) and amnet.encoder_shape(None) == amnet.CONFIG_SHAPE == (240, 256, 3)
    assert amnet.slow_encoder_flops(shape) == RecurrentEncoder(240, 24, num_layers=2).flops_per_frame()
    assert amnet.shape_overrides("slow_only.yaml", amnet.CONFIG_SHAPE) == []  # the configs' own: commands unchanged
    dev = amnet.device_for(amnet.RHO_TRAIN, amnet.slow_encoder_flops(shape))
    for config in ("slow_only.yaml", "amnet_factorized.yaml", "factorized_single.yaml", "amnet_sparse.yaml"):
        cli = ASRLightningCLI(args=["--config", str(CONF / config), "--data.init_args.root", str(tmp_path / "corpus"),
                                    "--trainer.default_root_dir", str(tmp_path / "run"),
                                    *amnet.shape_overrides(config, shape),
                                    *(["--model.encoder.init_args.rank", "8"] if "factorized" in config else [])],
                             run=False)
        model = cli.model
        amnet._warm_start(model, str(ckpt), dev)  # the base's weights fit: same shape
        enc = model.encoder
        slow = enc.core.encoder if isinstance(enc, SharedStateAmortizedEncoder) else enc
        assert (slow.hidden_size, slow.num_layers) == (24, 2), config
        assert torch.equal(slow.state_dict()["rnn.rnn.weight_hh_l1"], base.encoder.state_dict()["rnn.rnn.weight_hh_l1"])
    flops = amnet.slow_encoder_flops(shape)  # ranks of this shape (up to its hidden size), not of 3x256
    assert 1 <= amnet.matched_rank(flops / 8, *shape) < amnet.matched_rank(flops / 4, *shape) < 24


def test_a_base_of_another_size_is_checked_before_any_job(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import pytest

    from lightning_amortized.module import ASRModule
    from lightning_amortized.nn import RecurrentEncoder

    amnet = load_script(REPO / "benchmarks" / "amnet.py", "bench_amnet_shape_check")
    shape = (240, 64, 2)
    a = SimpleNamespace(fast_rank=None)
    amnet.check_shape(a, ["amnet_factorized"], amnet.CONFIG_SHAPE, set())  # the configs' own shape: nothing to add
    with pytest.raises(SystemExit, match="pass --fast-rank"):
        amnet.check_shape(a, ["slow_only", "amnet_factorized"], shape, set())
    with pytest.raises(SystemExit, match=r"must be in \[1, 64\)"):
        amnet.check_shape(SimpleNamespace(fast_rank=64), ["amnet_factorized"], shape, set())
    with pytest.raises(SystemExit, match="factorized_single match the FLOPs of amnet_factorized"):
        amnet.check_shape(SimpleNamespace(fast_rank=16), ["factorized_single"], shape, set())
    amnet.check_shape(SimpleNamespace(fast_rank=16), ["factorized_single"], shape, {"amnet_factorized"})  # reused
    amnet.check_shape(SimpleNamespace(fast_rank=16), ["amnet_factorized", "factorized_single"], shape, set())
    gru = ASRModule(RecurrentEncoder(240, 32, num_layers=2, rnn_type="gru"))
    torch.save({"state_dict": gru.state_dict(), "hyper_parameters": dict(gru.hparams)}, tmp_path / "gru.ckpt")
    with pytest.raises(SystemExit, match="its encoder is a GRU"):
        amnet.encoder_shape(str(tmp_path / "gru.ckpt"))
