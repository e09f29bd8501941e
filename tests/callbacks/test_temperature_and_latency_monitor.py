"""ArbitratorTemperature and LatencyMonitor, including a real tiny Trainer.fit."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_amortized.callbacks.latency_monitor import LatencyMonitor
from lightning_amortized.callbacks.temperature import ArbitratorTemperature
from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder

FEATS, VOCAB = 12, 5


def test_temperature_schedules():
    exp = ArbitratorTemperature(start=1.0, end=0.05, schedule="exponential", epochs=4)
    # 1.0 * 0.05 ** (e / 3)
    assert [round(exp.temperature_at(e), 4) for e in range(6)] == [1.0, 0.3684, 0.1357, 0.05, 0.05, 0.05]
    assert [exp.straight_through_at(e) for e in range(5)] == [False, False, False, True, True]
    lin = ArbitratorTemperature(start=2.0, end=0.5, schedule="linear", epochs=4)
    assert [lin.temperature_at(e) for e in range(5)] == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.5])
    assert ArbitratorTemperature(start=0.7, schedule="constant").temperature_at(9) == 0.7
    assert ArbitratorTemperature(start=1.0, end=0.1, epochs=1).temperature_at(0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"`start`.*0"):
        ArbitratorTemperature(start=0)
    with pytest.raises(ValueError, match=r"`end`.*-1"):
        ArbitratorTemperature(end=-1)
    with pytest.raises(MisconfigurationException, match=r"`schedule`.*'cosine'"):
        ArbitratorTemperature(schedule="cosine")
    with pytest.raises(ValueError, match=r"`epochs`.*0"):
        ArbitratorTemperature(epochs=0)
    exp.current_temperature = 0.3
    fresh = ArbitratorTemperature()
    fresh.load_state_dict(exp.state_dict())
    assert fresh.current_temperature == 0.3


def test_latency_monitor_validates_arguments():
    with pytest.raises(ValueError, match=r"`frame_ms`.*0"):
        LatencyMonitor(frame_ms=0)
    with pytest.raises(ValueError, match=r"`rtf_samples`.*-1"):
        LatencyMonitor(rtf_samples=-1)


class _Utterances(Dataset):
    def __init__(self, n: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            T = int(torch.randint(8, 14, (1,), generator=g))
            self.items.append((torch.randn(T, FEATS, generator=g), torch.randint(1, VOCAB, (3,), generator=g)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _collate(items):
    xs, ys = zip(*items)
    lengths = torch.tensor([len(x) for x in xs])
    x = nn.utils.rnn.pad_sequence(list(xs), batch_first=True)
    return x, lengths, torch.stack(ys)


class _CTCModule(LightningModule):
    """features -> encoder -> linear -> CTC (+ routing losses when amortized)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.output_size, VOCAB)
        self.frame_ms = 30.0

    def _loss(self, batch):
        x, lengths, targets = batch
        y, out_lengths = self.encoder(x, lengths)
        logp = self.head(y).log_softmax(-1).transpose(0, 1)
        target_lengths = torch.full((x.shape[0],), targets.shape[1], dtype=torch.long)
        loss = nn.functional.ctc_loss(logp, targets, out_lengths, target_lengths, zero_infinity=True)
        if isinstance(self.encoder, AmortizedEncoder):
            loss = loss + self.encoder.routing_losses(lambda_cost=0.1, lambda_amr=1.0)["total"]
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), batch_size=batch[0].shape[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _fit(module, callbacks, tmp_path, epochs=2):
    loader = DataLoader(_Utterances(), batch_size=4, collate_fn=_collate)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
    )
    trainer.fit(module, loader, loader)
    return trainer


def test_fit_with_amortized_encoder_logs_and_plots(tmp_path):
    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(FEATS, 16, 1), fast="lowrank", rank=4, frame_ms=30.0)
    temp = ArbitratorTemperature(start=1.0, end=0.05, epochs=2)
    monitor = LatencyMonitor(plot_dir=str(tmp_path / "plots"), rtf_samples=1)
    trainer = _fit(_CTCModule(enc), [temp, monitor], tmp_path)
    m = trainer.callback_metrics
    for key in (
        "latency/flops_per_frame",
        "latency/slow_share",
        "latency/rho",
        "latency/eou_p50_ms",
        "latency/eou_p90_ms",
        "latency/eou_max_ms",
        "latency/rtf",
        "arbitrator/temperature",
        "arbitrator/sharpness",
    ):
        assert key in m, key
    # last epoch (index 1 of a 2-epoch schedule): end temperature, straight-through hard gates
    assert float(m["arbitrator/temperature"]) == pytest.approx(0.05)
    assert float(m["arbitrator/sharpness"]) == 1.0
    assert enc.arbitrator.temperature == pytest.approx(0.05) and enc.arbitrator.straight_through
    fast, slow = enc.branch_flops()
    arb = enc.arbitrator.flops_per_frame()
    assert fast + arb <= float(m["latency/flops_per_frame"]) <= slow + arb
    assert 0.0 <= float(m["latency/slow_share"]) <= 1.0
    assert float(m["latency/eou_p50_ms"]) <= float(m["latency/eou_p90_ms"]) <= float(m["latency/eou_max_ms"])
    assert float(m["latency/rtf"]) > 0
    pngs = sorted((tmp_path / "plots").glob("latency_epoch*.png"))
    assert [p.name for p in pngs] == ["latency_epoch000.png", "latency_epoch001.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_with_plain_encoder_uses_constant_cost(tmp_path):
    torch.manual_seed(0)
    enc = RecurrentEncoder(FEATS, 16, 1)
    flops = enc.flops_per_frame()
    # a device on which one frame costs exactly 20 ms (< 30 ms frame): no backlog, EOU = 20 ms
    monitor = LatencyMonitor(device_flops_per_s=flops * 1000.0 / 20.0, rtf_samples=1)
    trainer = _fit(_CTCModule(enc), [monitor], tmp_path, epochs=1)
    m = trainer.callback_metrics
    assert float(m["latency/flops_per_frame"]) == pytest.approx(flops)
    assert float(m["latency/slow_share"]) == 1.0
    assert float(m["latency/rho"]) == pytest.approx(20.0 / 30.0)
    for key in ("latency/eou_p50_ms", "latency/eou_p90_ms", "latency/eou_max_ms"):
        assert float(m[key]) == pytest.approx(20.0)
    # default plot folder: the trainer's log_dir
    assert list((tmp_path / "logs").glob("version_*/latency_epoch000.png"))
    assert monitor.state_dict()["last_metrics"]["latency/eou_max_ms"] == pytest.approx(20.0)


class _Lengths(Dataset):
    """Utterances of fixed lengths (index 1 is the longest: on the second DDP process)."""

    def __init__(self, lengths=(6, 20, 8, 10)) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = [(torch.randn(T, FEATS, generator=g), torch.randint(1, VOCAB, (3,), generator=g)) for T in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.slow
def test_latency_monitor_gathers_over_ddp_processes(tmp_path):
    enc = RecurrentEncoder(FEATS, 8, 1)
    # 40 ms per 30 ms frame: b_{L-1} = 10 (L - 1), EOU = 10 (L - 1) + 40 = 10 L + 30
    monitor = LatencyMonitor(device_flops_per_s=enc.flops_per_frame() * 1000.0 / 40.0, rtf_samples=1, plot=False)
    loader = DataLoader(_Lengths(), batch_size=1, collate_fn=_collate)
    trainer = Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(_CTCModule(enc), loader, loader)
    m = trainer.callback_metrics
    # all four utterances (6, 8, 10, 20 frames) although each process saw two
    assert float(m["latency/eou_max_ms"]) == pytest.approx(230.0)
    assert float(m["latency/eou_p50_ms"]) == pytest.approx(120.0)  # median of 90, 110, 130, 230
    assert 0.0 < float(m["latency/rtf"]) < float("inf")  # one streamed utterance per process, pooled


def test_a_process_without_streamed_samples_still_joins_the_rtf_gather(tmp_path):
    """Under DDP every process must enter the same collectives: one that streamed no sample (here the state after
    validation, samples cleared) still gathers its zero compute and audio time, and logs the pooled RTF."""
    from types import SimpleNamespace

    enc = RecurrentEncoder(FEATS, 8, 1)
    monitor = LatencyMonitor(device_flops_per_s=enc.flops_per_frame() * 1000.0 / 20.0, rtf_samples=1, plot=False)
    module = _CTCModule(enc)
    _fit(module, [monitor], tmp_path, epochs=1)
    assert monitor._samples == []
    gathered, logged = [], {}

    def all_gather(t):  # this process's totals and another process's (3 ms of compute over 30 ms of audio)
        gathered.append(t.clone())
        return torch.stack([t, torch.tensor([3.0, 30.0], dtype=t.dtype)])

    module.all_gather = all_gather
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    monitor._gather = lambda trainer, pl_module, stats: stats  # the latency statistics: already gathered here
    monitor.on_validation_epoch_end(SimpleNamespace(world_size=2, sanity_checking=False, is_global_zero=True), module)
    assert [t.tolist() for t in gathered] == [[0.0, 0.0]]
    assert logged["latency/rtf"] == pytest.approx(0.1)


def test_non_finite_arbitrator_gradient_stops_before_the_step(tmp_path):
    from lightning_amortized.callbacks.finite import NonFiniteError

    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(FEATS, 16, 1), fast="lowrank", rank=4, frame_ms=30.0)
    weight = enc.arbitrator.out.weight
    backwards = []

    def poison_second(g):
        backwards.append(1)
        return g * float("nan") if len(backwards) == 2 else g

    weight.register_hook(poison_second)
    before: list[torch.Tensor] = []

    class Keep(ArbitratorTemperature):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # noqa: ANN001
            before.append(weight.detach().clone())
            super().on_before_optimizer_step(trainer, pl_module, optimizer)

    with pytest.raises(NonFiniteError, match=r"gradient of `encoder.arbitrator.out.weight` has \d+ NaN .* at step 1"):
        _fit(_CTCModule(enc), [Keep(epochs=2)], tmp_path)
    assert torch.equal(weight.detach(), before[-1])  # the bad update was never applied


def test_latency_monitor_routes_for_its_own_device_and_restores_the_encoders():
    import lightning.pytorch as pl

    from lightning_amortized.module import ASRModule

    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(240, 64, 2), rank=4, latency_guard=1.5)
    with torch.no_grad():
        enc.arbitrator.out.bias[:] = torch.tensor([0.0, 50.0])  # it would always pick the slow branch
    model = ASRModule(enc)
    batch = {"feats": torch.randn(2, 300, 80), "feat_lengths": torch.tensor([300, 200]),
             "tokens": torch.tensor([[3, 4]] * 2), "token_lengths": torch.tensor([2, 2]), "ids": ["a", "b"],
             "texts": ["AB", "AB"]}
    own, slow = enc.device_flops_per_s, 4.0e6
    results = []
    for speed in (slow, None):  # the monitor's device, then the encoder moved there by hand
        if speed is None:
            enc.set_device(slow)
        mon = LatencyMonitor(device_flops_per_s=speed, rtf_samples=0, plot=False)
        trainer = pl.Trainer(callbacks=[mon], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0)
        trainer.validate(model, dataloaders=torch.utils.data.DataLoader([batch], batch_size=None), verbose=False)
        results.append(mon.last_metrics)
        if speed is not None:
            assert enc.device_flops_per_s == own  # put back after validation
    assert results[0] == results[1]
    floor_ms = enc.floor_flops() / slow * 1000.0
    assert results[0]["latency/eou_max_ms"] <= 1.5 * floor_ms + 1e-6  # the guard holds on the monitored device


def test_temperatures_may_be_numpy_or_tensor_scalars():
    import numpy as np

    from lightning_amortized.nn.arbitrator import Arbitrator

    arb = Arbitrator(4)
    arb.temperature = np.float32(0.5)
    assert arb.temperature == 0.5
    arb.temperature = torch.tensor(0.25)
    assert arb.temperature == 0.25
    assert ArbitratorTemperature(start=np.float32(1.0), end=torch.tensor(0.1)).start == 1.0
    for bad in (True, np.True_, torch.tensor(True), torch.tensor([0.3]), "1.0", float("nan"), 0):
        with pytest.raises(ValueError, match="`temperature` to be a positive finite number"):
            arb.temperature = bad
