"""NeuralDiff callback: real Trainer.fit runs on a tiny model (CPU, seconds)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_amortized.callbacks.neural_diff import NeuralDiff
from lightning_amortized.diffs import SparseDiff, apply_diff, diff_modules, effective_tensor, inspect_diff


class TinyModule(LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Linear(6, 16)
        self.rnn = nn.GRU(16, 12, batch_first=True)
        self.head = nn.Linear(12, 3)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(torch.tanh(self.emb(x)))
        return self.head(h[:, -1])

    def training_step(self, batch, batch_idx):  # noqa: ANN001, D102
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loader(n: int = 32, seed: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def trainer(tmp_path: Path, cb: NeuralDiff, max_epochs: int, **kw) -> Trainer:
    return Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=[cb, *kw.pop("callbacks", [])],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        **kw,
    )


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: d.mask.clone() for n, d in diff_modules(model).items() if isinstance(d, SparseDiff)}


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="`method`"):
        NeuralDiff(method="lora")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`budget`.*\(0, 1\]"):
        NeuralDiff(budget=1.5)
    with pytest.raises(ValueError, match="`budget`"):
        NeuralDiff(budget=True)
    with pytest.raises(ValueError, match="`value_dtype`"):
        NeuralDiff(value_dtype="bf16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`seed`"):
        NeuralDiff(seed=-1)


def test_sparse_fit_meets_budget_and_exports(tmp_path: Path) -> None:
    model = TinyModule()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    cb = NeuralDiff(method="sparse", budget=0.05, targets=["*weight*"], exclude=["head.*"],
                    export_path=tmp_path / "u1.safetensors")
    fit = trainer(tmp_path, cb, max_epochs=3)
    fit.fit(model, loader())
    n_targets = sum(base[n].numel() for n in cb.target_names)
    assert cb.target_names == ["emb.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    assert cb.final_count == round(0.05 * n_targets)
    # budget met exactly at the end of fit; pruned entries are exactly zero
    nnz = sum(int(m.sum()) for m in masks(model).values())
    assert nnz == cb.final_count
    for d in diff_modules(model).values():
        assert bool((d.delta[~d.mask] == 0).all())
    # only the diff tensors were trainable; bases untouched
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n.rpartition('.')[0]}.parametrizations.{n.rpartition('.')[2]}.0.delta".lstrip(".") for n in cb.target_names
    }
    for n, d in diff_modules(model).items():
        assert torch.equal(model.get_parameter(
            n.replace(n.rpartition(".")[2], f"parametrizations.{n.rpartition('.')[2]}.original")), base[n])
    assert fit.callback_metrics["neural_diff/nonzeros"] > 0
    assert fit.callback_metrics["neural_diff/projected_bytes"] > 0
    # the exported file holds exactly the kept entries and reproduces the trained weights bit-exactly
    info = inspect_diff(tmp_path / "u1.safetensors")
    assert info.stored == cb.final_count and info.extra["max_abs_error"] == 0.0
    fresh = TinyModule()
    apply_diff(fresh, tmp_path / "u1.safetensors")
    for n in cb.target_names:
        assert torch.equal(fresh.get_parameter(n), effective_tensor(model, n))
    x = torch.randn(4, 5, 6)
    assert torch.equal(fresh(x), model(x))


def test_schedule_prunes_gradually(tmp_path: Path) -> None:
    model = TinyModule()
    seen: list[int] = []

    class Spy(NeuralDiff):
        def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001, D102
            super().on_train_epoch_end(trainer, pl_module)
            seen.append(self._nnz(pl_module))

    cb = Spy(method="sparse", budget=0.1, targets="*.weight*")
    trainer(tmp_path, cb, max_epochs=4).fit(model, loader(16))
    n = cb.target_numel
    expected = [n] + [max(cb.final_count, round(d * n)) for d in (0.1 + 0.9 * (1 - e / 3) ** 3 for e in (1, 2, 3))]
    assert seen == expected


@pytest.mark.parametrize("max_epochs", [1, -1])
def test_single_epoch_or_unbounded_run_prunes_after_training_not_before(tmp_path: Path, max_epochs: int) -> None:
    """With max_epochs=1 (or -1) the mask used to be pruned to the budget at the start of epoch 0,
    when every delta is zero: the surviving entries were arbitrary."""
    model = TinyModule()
    dense_at_start: list[bool] = []

    class Spy(NeuralDiff):
        def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001, D102
            super().on_train_epoch_start(trainer, pl_module)
            dense_at_start.append(all(bool(m.all()) for m in masks(pl_module).values()))

    cb = Spy(method="sparse", budget=0.05, targets=["*weight*"], exclude=["head.*"])
    kw = {"max_steps": 4} if max_epochs < 0 else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(tmp_path, cb, max_epochs=max_epochs, **kw).fit(model, loader())
    assert dense_at_start and all(dense_at_start)
    kept = masks(model)
    assert sum(int(m.sum()) for m in kept.values()) == cb.final_count  # the budget, met at the end
    # and the kept entries are the largest trained deltas (within the per-matrix cap)
    for name, d in diff_modules(model).items():
        if isinstance(d, SparseDiff) and bool(d.mask.any()) and not bool(d.mask.all()):
            assert float(d.delta[d.mask].abs().min()) > 0.0


def test_masks_and_schedule_survive_resume(tmp_path: Path) -> None:
    # a 4-epoch schedule interrupted after epoch 2 (fit stops at max_epochs=2; its checkpoint
    # of epoch index 1 is taken before the end-of-fit budget enforcement)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)

    def make() -> NeuralDiff:
        return NeuralDiff(method="sparse", budget=0.1, targets=["*.weight*"], schedule_epochs=4)

    trainer(tmp_path, make(), max_epochs=2, callbacks=[ckpt_cb], enable_checkpointing=True).fit(
        TinyModule(), loader()
    )
    ckpt = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("NeuralDiff"))
    assert state["last_pruned_epoch"] == 1 and 0.1 < state["density"] < 1.0
    saved_masks = {k.replace(".parametrizations.", ".").replace(".0.mask", ""): v
                   for k, v in saved["state_dict"].items() if k.endswith(".0.mask")}
    assert len(saved_masks) == 4

    restored: dict[str, torch.Tensor] = {}
    position: list[float] = []

    class Probe(NeuralDiff):
        def on_train_start(self, trainer, pl_module):  # noqa: ANN001, D102
            restored.update(masks(pl_module))
            position.extend([self.last_pruned_epoch, self.density])

    model2 = TinyModule()
    cb2 = Probe(method="sparse", budget=0.1, targets=["*.weight*"], schedule_epochs=4)
    trainer(tmp_path, cb2, max_epochs=4).fit(model2, loader(), ckpt_path=ckpt)
    assert position == [1, state["density"]]
    assert restored.keys() == saved_masks.keys()
    assert all(torch.equal(restored[k], saved_masks[k]) for k in saved_masks)
    final = masks(model2)
    assert sum(int(m.sum()) for m in final.values()) == cb2.final_count
    assert all(bool((final[k] <= saved_masks[k]).all()) for k in final)  # masks only shrink

    # an uninterrupted 4-epoch run ends with the same masks and weights
    model3 = TinyModule()
    trainer(tmp_path, make(), max_epochs=4).fit(model3, loader())
    assert all(torch.equal(final[k], masks(model3)[k]) for k in final)
    for n in cb2.target_names:
        assert torch.equal(effective_tensor(model2, n), effective_tensor(model3, n))


def test_hashed_fit_uses_bucket_budget(tmp_path: Path) -> None:
    model = TinyModule()
    cb = NeuralDiff(method="hashed", budget=2_000, targets=["rnn.*"], value_dtype="fp16",
                    export_path=tmp_path / "h.safetensors")  # the file, header included, in 2,000 bytes
    x = torch.randn(4, 5, 6)
    before = model(x).detach()
    trainer(tmp_path, cb, max_epochs=2).fit(model, loader())
    buckets = sum(cb.bucket_counts.values())
    assert 100 < buckets < 1_000 // 2  # the header takes its share of the 2,000 bytes
    assert sum(d.buckets.numel() for d in diff_modules(model).values()) == buckets
    assert not torch.equal(model(x), before)
    info = inspect_diff(tmp_path / "h.safetensors")
    assert info.method == "hashed" and info.stored == buckets and info.value_dtype == "fp16"
    assert 0.99 * 2_000 <= info.file_bytes <= 2_000  # hashed sizes are known exactly


def test_dry_run_lists_targets_and_trains_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = TinyModule()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, NeuralDiff(targets=["rnn.weight_*"], dry_run=True), max_epochs=2).fit(model, loader())
    assert "rnn.weight_ih_l0  (36, 16)  576" in caplog.text and "rnn.bias" not in caplog.text
    assert not diff_modules(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_unmatched_pattern_fails_setup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'encoder\.\*' matches no parameter"):
        trainer(tmp_path, NeuralDiff(targets=["encoder.*"]), max_epochs=1).fit(TinyModule(), loader())


def test_a_failed_setup_leaves_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_amortized.diffs import hashed

    model = TinyModule()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cb = NeuralDiff(method="hashed", budget=0.5, targets=["*weight*"])
    calls = []
    real = hashed.HashedDiff.__init__

    def fail_second(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - the second target fails to attach
        calls.append(args[1])
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        real(self, *args, **kwargs)

    monkeypatch.setattr(hashed.HashedDiff, "__init__", fail_second)
    with pytest.raises(RuntimeError, match="out of memory"):
        cb.setup(None, model, "fit")
    assert len(calls) == 2 and not diff_modules(model)  # the first target's diff is removed again
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and cb.target_names == []
    with pytest.raises(ValueError, match=r"`seed` to be an int in \[0, 2\*\*63\)"):
        NeuralDiff(method="hashed", budget=0.5, seed=2**63)


def test_non_finite_loss_or_diff_gradient_stops_training(tmp_path: Path) -> None:
    from lightning_amortized.callbacks.finite import NonFiniteError

    class NanAtStep2(TinyModule):
        def training_step(self, batch, batch_idx):  # noqa: ANN001, D102
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.trainer.global_step == 2 else loss

    model = NanAtStep2()
    cb = NeuralDiff(method="sparse", budget=0.1, targets=["emb.weight"])
    with pytest.raises(NonFiniteError, match="the loss is nan at step 2"):
        trainer(tmp_path, cb, max_epochs=2).fit(model, loader())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())

    model = TinyModule()

    class Poison(NeuralDiff):
        def on_train_start(self, trainer, pl_module):  # noqa: ANN001, D102
            super().on_train_start(trainer, pl_module)
            for d in diff_modules(pl_module).values():
                for p in d.parameters():
                    p.register_hook(lambda g: g * float("inf"))
    cb = Poison(method="hashed", budget=0.1, targets=["emb.weight"])
    with pytest.raises(NonFiniteError, match=r"gradient of `emb.weight \(diff\)` has \d+ NaN and \d+ Inf .* at step 0"):
        trainer(tmp_path, cb, max_epochs=1).fit(model, loader())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("budget_bytes", [2_000, 2_600, 4_000])  # 10 % to 80 % of the 1,104 entries
def test_byte_budget_buys_entries_for_the_real_encoding(tmp_path: Path, budget_bytes: int) -> None:
    """A byte budget counts ~1 index byte per kept entry (gap-u8), not 4: the fp16 file lands
    within 5 % under the requested size (before, about half the budget went unused)."""
    from lightning_amortized.diffs.budget import entries_for_bytes

    model = TinyModule()
    cb = NeuralDiff(method="sparse", budget=budget_bytes, value_dtype="fp16", targets=["*weight*"],
                    exclude=["head.*"], export_path=tmp_path / "u1.safetensors")
    trainer(tmp_path, cb, max_epochs=2).fit(model, loader())
    info = inspect_diff(tmp_path / "u1.safetensors")
    assert 0.95 * budget_bytes <= info.file_bytes <= budget_bytes
    numels = {n: cb_size for n, cb_size in zip(cb.target_names, (96, 576, 432))}
    int32 = entries_for_bytes("sparse", "fp16", numels, budget_bytes, index_encoding="int32", extra=cb._export_extra())
    assert info.stored > int32  # more entries than 4-byte indices would allow


def test_entries_for_bytes_matches_the_projection_and_the_cli(tmp_path: Path) -> None:
    from lightning_amortized.diffs.budget import entries_for_bytes, estimate_diff_bytes, split_stored

    numels = {"a": 70_000, "b": 30_000}
    for dtype in ("fp32", "fp16", "int8"):
        n = entries_for_bytes("sparse", dtype, numels, 40_000)
        size = lambda k: estimate_diff_bytes(  # noqa: E731
            "sparse", dtype, {name: (numels[name], s) for name, s in split_stored(numels, k).items()})
        assert size(n) <= 40_000 < size(n + 1)
    assert entries_for_bytes("hashed", "fp32", numels, 4_000) < 1_000
    assert entries_for_bytes("sparse", "fp32", numels, 10) == 0  # not even the header fits
    with pytest.raises(ValueError, match="total"):
        split_stored(numels, 100_001)


def test_fisher_prune_score_keeps_the_largest_f_times_d_squared(tmp_path: Path) -> None:
    """prune_score="fisher": F is the sum of squared gradients of D since the last pruning, entries ranked by F * D**2."""
    from lightning.pytorch.callbacks import Callback

    from lightning_amortized.diffs.sparse import magnitude_keep_masks

    with pytest.raises(ValueError, match="`prune_score` to be one of"):
        NeuralDiff(prune_score="movement")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method 'hashed' has none"):
        NeuralDiff(method="hashed", prune_score="fisher")
    grads2: dict[str, torch.Tensor] = {}
    checked: list[int] = []

    class Recorder(Callback):  # after NeuralDiff: sums grad**2 of every diff itself
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # noqa: ANN001, D102
            for n, d in diff_modules(pl_module).items():
                g = d.delta.grad
                grads2[n] = grads2.get(n, torch.zeros_like(g)) + g * g

    class Spy(NeuralDiff):
        def _prune(self, trainer, pl_module, density, keep=None):  # noqa: ANN001, D102
            named = diff_modules(pl_module)
            for n in named:  # the callback's F is exactly the recorded sum since the last pruning
                assert torch.allclose(self._fisher[n], grads2[n], rtol=1e-6, atol=0)
            deltas = [d.delta.detach().clone() for d in named.values()]
            before = [d.mask.clone() for d in named.values()]
            k = keep if keep is not None else max(self.final_count, round(density * self.target_numel))
            by_fisher = magnitude_keep_masks([grads2[n] * d * d for n, d in zip(named, deltas)], before, k, 1000.0)
            by_size = magnitude_keep_masks(deltas, before, k, 1000.0)
            super()._prune(trainer, pl_module, density, keep)
            got = [d.mask for d in named.values()]
            assert all(torch.equal(a, b) for a, b in zip(got, by_fisher))
            checked.append(sum(int((a != b).sum()) for a, b in zip(by_fisher, by_size)))

        def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001, D102
            pruned = len(checked)
            super().on_train_epoch_start(trainer, pl_module)
            if len(checked) > pruned:  # a scheduled pruning: F restarts from zero, as the recorder does
                assert all(float(f.abs().sum()) == 0.0 for f in self._fisher.values())
                grads2.clear()

    cb = Spy(method="sparse", budget=0.1, targets="*.weight*", density_cap_factor=1000.0, prune_score="fisher")
    trainer(tmp_path, cb, max_epochs=3, callbacks=[Recorder()]).fit(TinyModule(), loader(16))
    assert len(checked) >= 2 and max(checked) > 0  # pruned twice or more, and not as magnitude would have
    state = cb.state_dict()
    assert state["prune_score"] == "fisher" and set(state["fisher"]) == set(cb.target_names)
    again = NeuralDiff(method="sparse", budget=0.1, targets="*.weight*", prune_score="fisher")
    again.load_state_dict(state)  # the accumulators resume with the checkpoint
    assert all(torch.equal(again._fisher[n], state["fisher"][n]) for n in cb.target_names)
    magnitude = NeuralDiff(method="sparse", budget=0.1, targets="*.weight*")
    magnitude.target_names, magnitude.final_count = cb.target_names, cb.final_count  # as after setup()
    with pytest.raises(ValueError, match="prune_score='fisher' but this callback is configured with 'magnitude'"):
        magnitude.load_state_dict(state)
    # before any gradient is seen (a fresh or just-resumed run) the ranking is by |D|
    fresh = NeuralDiff(method="sparse", budget=0.1, targets="*.weight*", prune_score="fisher")
    model = TinyModule()
    fresh.setup(trainer(tmp_path, fresh, max_epochs=1), model, "fit")
    named = {n: d for n, d in diff_modules(model).items()}
    with torch.no_grad():
        for d in named.values():
            d.delta.normal_()
    assert all(s is d.delta for s, d in zip(fresh._scores(named), named.values()))


def test_a_byte_budget_survives_a_yaml_config() -> None:
    """`budget: 20000` in a LightningCLI config is a byte budget (the annotation used to turn it into 20000.0, refused)."""
    from jsonargparse import ArgumentParser

    p = ArgumentParser()
    p.add_class_arguments(NeuralDiff, "diff")
    assert p.parse_string("diff: {budget: 20000}").diff.budget == 20000
    assert isinstance(p.parse_string("diff: {budget: 20000}").diff.budget, int)
    assert p.parse_string("diff: {budget: 0.1}").diff.budget == 0.1


def test_a_resume_from_an_epochs_last_step_prunes_the_next_epoch(tmp_path: Path) -> None:
    """A step checkpoint at an epoch's last batch resumes into the next epoch without its epoch-start hook."""

    def make() -> NeuralDiff:
        return NeuralDiff(method="sparse", budget=0.1, targets=["*.weight*"], schedule_epochs=4)

    straight = TinyModule()
    trainer(tmp_path, make(), max_epochs=4).fit(straight, loader())
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=8, save_top_k=-1, filename="{step}")
    trainer(tmp_path, make(), max_epochs=4, max_steps=8, callbacks=[ckpt_cb], enable_checkpointing=True).fit(
        TinyModule(), loader()
    )  # 4 batches per epoch: step 8 is epoch 1's last
    resumed, cb = TinyModule(), make()
    trainer(tmp_path, cb, max_epochs=4).fit(resumed, loader(), ckpt_path=tmp_path / "ckpt" / "step=8.ckpt")
    assert all(torch.equal(masks(resumed)[k], m) for k, m in masks(straight).items())
    for n in cb.target_names:
        assert torch.equal(effective_tensor(resumed, n), effective_tensor(straight, n))


def test_one_callback_trains_two_updates_each_with_its_schedule(tmp_path: Path) -> None:
    cb = NeuralDiff(method="sparse", budget=0.1, targets=["*.weight*"], schedule_epochs=4)
    counts = []
    for _ in range(2):
        model = TinyModule()
        nnz: list[int] = []

        class Count(Callback):
            def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001, D102
                nnz.append(sum(int(m.sum()) for m in masks(pl_module).values()))

        trainer(tmp_path, cb, max_epochs=4, callbacks=[Count()]).fit(model, loader())
        counts.append(nnz)
        cb.remove(model)
    assert counts[0] == counts[1] and counts[0][0] > counts[0][1] > counts[0][-1]  # pruned gradually both times


def test_fp16_loss_scaling_overflow_steps_are_left_to_the_scaler(tmp_path: Path) -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lightning_amortized.callbacks.finite import loss_scaling

    class Loud(TinyModule):
        def training_step(self, batch, batch_idx):  # noqa: ANN001, D102
            return super().training_step(batch, batch_idx) * 1e4  # overflows fp16 grads at the first scales

    plugin = MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    cb = NeuralDiff(method="sparse", budget=0.5, targets=["head.weight"], schedule_epochs=2)
    t = trainer(tmp_path, cb, max_epochs=2, plugins=[plugin])
    t.fit(Loud(), loader())  # used to stop with NonFiniteError at step 0
    assert loss_scaling(t) and plugin.scaler.get_scale() < 65536.0  # the scaler did skip overflow steps
    assert not loss_scaling(trainer(tmp_path, cb, max_epochs=1))


def test_fisher_scores_read_fused_fp16_gradients_in_unscaled_units() -> None:
    """A fused optimizer unscales in its step: the hook's gradients carry the loss scale, Fisher divides it out."""
    from types import SimpleNamespace

    from lightning_amortized.callbacks.finite import grad_scale

    p = nn.Parameter(torch.ones(2))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fp16 = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    fused, plain = torch.optim.AdamW([p], fused=True), torch.optim.AdamW([p])
    assert grad_scale(fp16, fused) == 1024.0 and grad_scale(fp16, plain) == 1.0
    assert grad_scale(SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None)), fused) == 1.0
    cb = NeuralDiff(method="sparse", budget=0.5, targets=["head.weight"], prune_score="fisher")
    d = SimpleNamespace(delta=nn.Parameter(torch.zeros(3)))
    d.delta.grad = torch.tensor([1.0, -2.0, 0.0]) * 1024.0
    cb._sparse = {"head.weight": d}
    cb._accumulate_fisher(1024.0)
    assert cb._fisher["head.weight"].tolist() == [1.0, 4.0, 0.0]


class LazyHead(TinyModule):
    """Builds its head in configure_model (Lightning calls it after the callbacks' setup)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = None

    def configure_model(self) -> None:
        if self.head is None:  # idempotent, as Lightning asks
            torch.manual_seed(1)
            self.head = nn.Linear(12, 3)


def test_layers_built_in_configure_model_are_frozen_and_targeted(tmp_path: Path) -> None:
    cb = NeuralDiff(method="sparse", budget=0.5, targets=["head.*"], value_dtype="fp32",
                    export_path=tmp_path / "u.safetensors")
    model = LazyHead()
    trainer(tmp_path, cb, max_epochs=2).fit(model, loader())
    diffs = {id(p) for p in cb_params(model)}
    assert sorted(cb.target_names) == ["head.bias", "head.weight"]
    assert not any(p.requires_grad for p in model.parameters() if id(p) not in diffs)
    base = LazyHead()
    base.configure_model()
    apply_diff(base, cb.export_path)
    assert torch.equal(base.head.weight, effective_tensor(model.head, "weight"))  # the whole change is in the file


def cb_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for d in diff_modules(model).values() for p in d.parameters()]


class UnfreezesEmbBias(TinyModule):
    def configure_optimizers(self):  # noqa: D102 - e.g. what BackboneFinetuning does to a backbone
        self.emb.bias.requires_grad_(True)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class HeadOnlyOptimizer(TinyModule):
    def configure_optimizers(self):  # noqa: D102
        return torch.optim.Adam(self.head.parameters(), lr=self.lr)


def test_an_optimizer_that_trains_more_or_less_than_the_diffs_is_caught(tmp_path: Path) -> None:
    """Base weights in the optimizer would make the file miss part of the change: refused at the first step.
    Diff tensors in no optimizer stay zero and waste the budget: warned."""
    model = UnfreezesEmbBias()
    before = model.emb.bias.detach().clone()
    with pytest.raises(RuntimeError, match=r"would also update \['emb.bias'\]"):
        trainer(tmp_path, NeuralDiff(targets=["*.weight*"]), max_epochs=1).fit(model, loader())
    assert torch.equal(model.emb.bias, before)  # refused before the step
    with pytest.warns(UserWarning, match=r"no optimizer holds the diff tensor\(s\) \['emb.weight"):
        trainer(tmp_path, NeuralDiff(targets=["*.weight*"]), max_epochs=1).fit(HeadOnlyOptimizer(), loader())


class WithWideLayer(TinyModule):
    """A target of 18,000 entries beside small ones: offsets of 4 and 5 digits in the file's header."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.Linear(6, 3000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.0 * self.wide(x[:, -1]).sum()


@pytest.mark.parametrize(("method", "value_dtype", "budget_bytes"),
                         [("hashed", "fp16", 5_000), ("hashed", "int8", 7_000), ("sparse", "fp32", 5_000),
                          ("sparse", "fp16", 9_000)])
def test_a_byte_budget_bounds_the_real_file_header_included(tmp_path: Path, method: str, value_dtype: str,
                                                            budget_bytes: int) -> None:
    """The projection lays the header out as safetensors writes it (tensors by dtype, then name; real shapes),
    so the file never exceeds the budget (was: 7-16 bytes over where the offsets' digits came out longer)."""
    cb = NeuralDiff(method=method, budget=budget_bytes, value_dtype=value_dtype, targets=["*.weight*"],
                    export_path=tmp_path / "u.safetensors")
    model = WithWideLayer()
    trainer(tmp_path, cb, max_epochs=2).fit(model, loader())
    info = inspect_diff(tmp_path / "u.safetensors")
    assert budget_bytes - 64 <= info.file_bytes <= budget_bytes
    # never below the real size; above by a shorter max_abs_error only (0.0: 20 characters, padded to 8 bytes)
    assert info.file_bytes <= cb.stats(model)["projected_bytes"] <= info.file_bytes + 24


@pytest.mark.parametrize("method", ["sparse", "hashed"])
def test_a_checkpoint_saved_during_diff_training_loads_as_the_trained_model(tmp_path: Path, method: str) -> None:
    """Lightning checkpoints taken while the diffs are attached hold W0 and D apart; `load_module` folds them,
    so the plain module computes what the trained one did (load_from_checkpoint alone refuses the keys)."""
    from lightning_amortized.diffs import load_module

    cb = NeuralDiff(method=method, budget=0.3, targets=["*.weight*"])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model = TinyModule()
    trainer(tmp_path, cb, max_epochs=2, callbacks=[ckpt], enable_checkpointing=True).fit(model, loader())
    with pytest.raises(RuntimeError, match="parametrizations"):
        TinyModule.load_from_checkpoint(ckpt.last_model_path)
    loaded = load_module(TinyModule, ckpt.last_model_path)
    x = torch.randn(4, 5, 6)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert not diff_modules(loaded)
    with pytest.raises(ValueError, match="plain weights"):
        torch.save(model.state_dict(), tmp_path / "plain.pt")
        load_module(TinyModule, tmp_path / "plain.pt")


def test_weight_norm_tensors_are_named_when_skipped_and_their_flags_come_back(tmp_path: Path) -> None:
    """weight_norm splits a weight into original0/original1: no diff goes on top of it. A pattern naming it
    warns (or says why it matches nothing), and remove() gives those tensors their requires_grad back."""
    model = _weight_normed()
    cb = NeuralDiff(method="sparse", budget=0.5, targets=["*"])
    with pytest.warns(UserWarning, match=r"also name \['emb.weight'\].*weight_norm"):
        trainer(tmp_path, cb, max_epochs=1).fit(model, loader())
    assert "emb.weight" not in cb.target_names and "emb.bias" in cb.target_names
    cb.remove(model)
    assert all(p.requires_grad for p in model.parameters())  # original0/original1 included
    with pytest.raises(ValueError, match=r"matches no parameter.*parametrized by another parametrization"), \
            pytest.warns(UserWarning):
        trainer(tmp_path, NeuralDiff(targets=["emb.weight"]), max_epochs=1).fit(_weight_normed(), loader())


def _weight_normed() -> TinyModule:
    from torch.nn.utils.parametrizations import weight_norm

    model = TinyModule()
    weight_norm(model.emb)
    return model
