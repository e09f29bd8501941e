"""AnchorToStart: the L2-SP penalty's gradient, added before each optimizer step, equals adding the penalty to the loss."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_amortized.callbacks import AnchorToStart


class _Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 2)
        self.lin.bias.requires_grad_(False)  # frozen parameters are not anchored

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):  # noqa: ANN201
        g = torch.Generator().manual_seed(1)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3, generator=g)), batch_size=4)


def _fit(callbacks: list, **kw) -> _Linear:
    model = _Linear()
    Trainer(max_epochs=2, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", **kw).fit(model)
    return model


def test_gradient_equals_penalty_in_the_loss() -> None:
    strength = 0.5
    anchored = _fit([AnchorToStart(strength)])
    # the same SGD steps by hand, with the penalty inside the loss
    ref = _Linear()
    w0 = ref.lin.weight.detach().clone()
    opt = torch.optim.SGD([ref.lin.weight], lr=0.1)
    for _ in range(2):
        for (x,) in ref.train_dataloader():
            opt.zero_grad()
            loss = ref.lin(x).pow(2).mean() + strength * (ref.lin.weight - w0).pow(2).sum()
            loss.backward()
            opt.step()
    torch.testing.assert_close(anchored.lin.weight, ref.lin.weight)
    plain = _fit([])
    assert not torch.allclose(plain.lin.weight, anchored.lin.weight)
    # pulled towards the start: closer to w0 than without the anchor
    assert (anchored.lin.weight - w0).norm() < (plain.lin.weight - w0).norm()


def test_zero_strength_is_plain_training_and_bad_strength_raises() -> None:
    torch.testing.assert_close(_fit([AnchorToStart(0.0)]).lin.weight, _fit([]).lin.weight)
    for bad in (-1.0, "strong", True):
        with pytest.raises(ValueError, match="`strength`"):
            AnchorToStart(bad)  # type: ignore[arg-type]


def test_state_dict_keeps_the_anchor() -> None:
    cb = AnchorToStart(0.1)
    model = _fit([cb])
    state = cb.state_dict()
    again = AnchorToStart(0.0)
    again.load_state_dict(state)
    assert again.strength == 0.1 and set(again._start) == {"lin.weight"}
    assert again.penalty(model) == pytest.approx(cb.penalty(model)) and cb.penalty(model) > 0


def test_the_penalty_counts_once_per_step_with_accumulation_and_fp16_scaling() -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    strength = 0.5
    ref = _Linear()  # 2 micro-batches of 4 accumulated into one step per epoch, the penalty once per step
    w0 = ref.lin.weight.detach().clone()
    opt = torch.optim.SGD([ref.lin.weight], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        for (x,) in ref.train_dataloader():
            (ref.lin(x).pow(2).mean() / 2).backward()
        (strength * (ref.lin.weight - w0).pow(2).sum()).backward()
        opt.step()
    accumulated = _fit([AnchorToStart(strength)], accumulate_grad_batches=2)
    torch.testing.assert_close(accumulated.lin.weight, ref.lin.weight)
    # under fp16 loss scaling the anchor pulls about as hard as in fp32 (it was divided by the scale)
    def fp16() -> list:
        return [MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))]

    pull = (_fit([]).lin.weight - _fit([AnchorToStart(strength)]).lin.weight).norm()
    pull_fp16 = (_fit([], plugins=fp16()).lin.weight - _fit([AnchorToStart(strength)], plugins=fp16()).lin.weight).norm()
    assert 0.5 * pull < pull_fp16 < 2 * pull


def test_each_optimizer_step_anchors_its_own_parameters() -> None:
    strength = 0.5

    class TwoOptimizers(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            o1, o2 = self.optimizers()
            o1.zero_grad()
            o2.zero_grad()
            self.manual_backward(self.b(self.a(batch[0])).pow(2).mean())
            o1.step()
            o2.step()

        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)

    model = TwoOptimizers()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(max_epochs=2, callbacks=[AnchorToStart(strength)], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(
        model, _Linear().train_dataloader())
    ref = TwoOptimizers()  # the penalty inside the loss, once
    opts = [torch.optim.SGD(ref.a.parameters(), lr=0.1), torch.optim.SGD(ref.b.parameters(), lr=0.1)]
    for _ in range(2):
        for (x,) in _Linear().train_dataloader():
            for o in opts:
                o.zero_grad()
            penalty = sum((p - w0[n]).pow(2).sum() for n, p in ref.named_parameters())
            (ref.b(ref.a(x)).pow(2).mean() + strength * penalty).backward()
            for o in opts:
                o.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, msg=n)



def test_a_fused_optimizer_under_fp16_gets_the_penalty_in_its_scaled_units() -> None:
    """Fused AdamW unscales inside its step, so the gradients the hook sees still carry the loss scale."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    class _Fused(_Linear):
        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.AdamW(self.parameters(), lr=0.05, fused=True)

    def fit(callbacks: list, fp16: bool) -> torch.Tensor:
        model = _Fused()
        plugins = [MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))] if fp16 else []
        Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, accelerator="cpu", plugins=plugins).fit(model)
        return model.lin.weight.detach()

    strength = 5.0
    pull = (fit([], False) - fit([AnchorToStart(strength)], False)).norm()
    pull_fp16 = (fit([], True) - fit([AnchorToStart(strength)], True)).norm()
    assert pull > 0 and 0.5 * pull < pull_fp16 < 2 * pull, (float(pull), float(pull_fp16))
