"""Sparse and hashed parametrizations on Linear, Conv, Embedding, LSTM/GRU and SpeechBrain RNNs."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from lightning_amortized.diffs import (
    HashedDiff,
    SparseDiff,
    allocate_buckets,
    attach_diffs,
    detach_diffs,
    diff_modules,
    magnitude_keep_masks,
    scheduled_density,
    select_targets,
)


def _randomize(diffs: dict, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for d in diffs.values():
            if isinstance(d, SparseDiff):
                d.delta.copy_(0.1 * torch.randn(d.delta.shape, generator=g))
                d.mask.copy_(torch.rand(d.mask.shape, generator=g) < 0.5)
            else:
                d.buckets.copy_(0.1 * torch.randn(d.buckets.shape, generator=g))


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain-name -> weight the forward pass sees."""
    out = {}
    for name in select_targets(model, "*"):
        prefix, _, attr = name.rpartition(".")
        mod = model.get_submodule(prefix) if prefix else model
        out[name] = getattr(mod, attr).detach().clone()
    return out


def _plain_copy(make, weights: dict[str, torch.Tensor]) -> nn.Module:
    ref = make()
    with torch.no_grad():
        for name, w in weights.items():
            ref.get_parameter(name).copy_(w)
    return ref


CASES = {
    "linear": (lambda: nn.Linear(5, 4), lambda: torch.randn(3, 5)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), lambda: torch.randn(2, 3, 9)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3), lambda: torch.randn(2, 2, 6, 6)),
    "embedding": (lambda: nn.Embedding(10, 4), lambda: torch.tensor([[1, 2, 9], [0, 3, 3]])),
    "lstm_bidir_2layer": (
        lambda: nn.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True),
        lambda: torch.randn(2, 5, 4),
    ),
    "gru": (lambda: nn.GRU(4, 3, batch_first=True), lambda: torch.randn(2, 5, 4)),
}


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = model(x)
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("method", ["sparse", "hashed"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_uses_w0_plus_d(case: str, method: str) -> None:
    make, inputs = CASES[case]
    torch.manual_seed(0)
    model = make()
    x = inputs()
    y0 = _out(model, x).detach()
    names = select_targets(model, "*")  # every weight and bias, incl. *_reverse and layer 1 of RNNs
    originals = {n: model.get_parameter(n) for n in names}
    buckets = {n: max(1, originals[n].numel() // 3) for n in names}
    diffs = attach_diffs(model, names, method, num_buckets=buckets, seed=7)
    for n in names:  # the base stays the very same Parameter object
        prefix, _, attr = n.rpartition(".")
        mod = model.get_submodule(prefix) if prefix else model
        assert mod.parametrizations[attr].original is originals[n]
    assert torch.equal(_out(model, x), y0)  # D = 0 at start
    _randomize(diffs)
    y1 = _out(model, x)
    assert not torch.allclose(y1, y0)
    # a plain model holding W0 + D gives the same output, bit for bit
    ref = _plain_copy(make, _effective(model))
    assert torch.equal(_out(ref, x), y1)
    # gradients reach D only
    for p in originals.values():
        p.requires_grad_(False)
    y1.square().sum().backward()
    for d in diffs.values():
        g = d.delta.grad if isinstance(d, SparseDiff) else d.buckets.grad
        assert g is not None and g.abs().sum() > 0
        if isinstance(d, SparseDiff):
            assert bool((g[~d.mask] == 0).all())


def test_speechbrain_lstm_targets_affect_outputs() -> None:
    from speechbrain.nnet.RNN import GRU as SBGRU
    from speechbrain.nnet.RNN import LSTM as SBLSTM

    torch.manual_seed(0)
    for cls in (SBLSTM, SBGRU):
        model = cls(hidden_size=6, input_shape=[2, 7, 5], num_layers=2, bidirectional=True)
        x = torch.randn(2, 7, 5)
        y0 = model(x)[0].detach()
        names = select_targets(model, ["rnn.weight_*", "rnn.bias_ih_l1_reverse"])
        assert "rnn.weight_hh_l1_reverse" in names and len(names) == 9
        diffs = attach_diffs(model, names, "sparse")
        _randomize(diffs, seed=3)
        y1 = model(x)[0]
        assert (y1 - y0).abs().max() > 1e-3
        ref = cls(hidden_size=6, input_shape=[2, 7, 5], num_layers=2, bidirectional=True)
        ref.load_state_dict({k: v for k, v in model.state_dict().items() if "parametrizations" not in k}, strict=False)
        with torch.no_grad():
            for n, w in _effective(model).items():
                ref.get_parameter(n).copy_(w)
        assert torch.equal(ref(x)[0], y1)


def test_lstm_parametrized_forward_cost_is_measured() -> None:
    """The RNN path re-reads parametrized weights each forward; it must stay cheap on CPU."""
    torch.manual_seed(0)
    lstm = nn.LSTM(32, 32, num_layers=2, batch_first=True)
    x = torch.randn(2, 20, 32)

    def bench(m: nn.Module) -> float:
        times = []
        with torch.no_grad():
            m(x)
            for _ in range(7):
                t = time.perf_counter()
                m(x)
                times.append(time.perf_counter() - t)
        return min(times)  # min: robust against other jobs on a shared machine

    plain = bench(lstm)
    attach_diffs(lstm, select_targets(lstm, "weight_*"), "sparse")
    wrapped = bench(lstm)
    assert wrapped < 3 * plain + 0.02, (plain, wrapped)


def test_detach_merge_and_discard_keep_parameter_objects() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 2)
    w0 = lstm.weight_ih_l0
    before = w0.detach().clone()
    diffs = attach_diffs(lstm, ["weight_ih_l0", "bias_hh_l0"], "sparse")
    _randomize(diffs)
    x = torch.randn(4, 1, 3)
    trained = lstm(x)[0].detach()
    effective = lstm.weight_ih_l0.detach().clone()
    detach_diffs(lstm, merge=True)
    assert lstm.weight_ih_l0 is w0 and not diff_modules(lstm)
    assert torch.equal(w0, effective) and torch.equal(lstm(x)[0], trained)

    diffs = attach_diffs(lstm, ["weight_ih_l0"], "hashed", num_buckets={"weight_ih_l0": 5}, seed=1)
    _randomize(diffs)
    detach_diffs(lstm, merge=False)
    assert lstm.weight_ih_l0 is w0 and torch.equal(w0, effective) and not torch.equal(w0, before)


def test_hashed_diff_uses_exactly_the_buckets_asked_for() -> None:
    w0 = torch.zeros(7, 11)
    d = HashedDiff(w0, "enc.weight", num_buckets=13, seed=0)
    assert d.buckets.shape == (13,)
    assert sorted(d.bucket_index.unique().tolist()) == list(range(13))  # every bucket is used
    assert [n for n, _ in d.named_parameters()] == ["buckets"]
    assert set(d.state_dict()) == {"buckets", "hash_seed"}  # indices are recomputed, not stored
    assert allocate_buckets([100, 50, 10], 16) == [10, 5, 1]
    assert sum(allocate_buckets([1000, 3, 7, 500], 37)) == 37
    with pytest.raises(ValueError, match="between 2"):
        allocate_buckets([5, 5], 1)


def test_pruning_rule_and_schedule() -> None:
    assert scheduled_density(0, 5, 0.1) == 1.0 and scheduled_density(4, 5, 0.1) == pytest.approx(0.1)
    assert scheduled_density(0, 1, 0.2) == 1.0  # one epoch: dense, pruned at the end of training
    # matrix A is dense and large-valued; the cap prunes it first so B keeps its share
    a = torch.arange(1.0, 101.0)  # 100 entries, values 1..100
    b = torch.full((100,), 0.5)
    m = [torch.ones(100, dtype=torch.bool), torch.ones(100, dtype=torch.bool)]
    uncapped = magnitude_keep_masks([a, b], m, keep=20, cap_factor=10.0)
    assert [int(x.sum()) for x in uncapped] == [20, 0]
    capped = magnitude_keep_masks([a, b], m, keep=20, cap_factor=1.0)  # at most 10% per matrix
    assert [int(x.sum()) for x in capped] == [10, 10]
    assert capped[0][90:].all()  # A keeps its 10 largest
    # masks only shrink: a pruned entry never comes back even with a large score
    m2 = [torch.tensor([False, True, True, True])]
    assert magnitude_keep_masks([torch.tensor([9.0, 1.0, 2.0, 3.0])], m2, keep=2)[0].tolist() == [False, False, True, True]


def test_a_target_named_twice_is_refused_before_anything_is_attached() -> None:
    from lightning_amortized.diffs import attach_diffs, diff_modules
    from lightning_amortized.diffs.lowrank import attach_lowrank

    lin = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"\['weight'\] repeat"):
        attach_diffs(lin, ["weight", "bias", "weight"], "sparse")
    with pytest.raises(ValueError, match=r"\['weight'\] repeat"):
        attach_lowrank(lin, ["weight", "weight"], rank=1)
    assert not diff_modules(lin) and not torch.nn.utils.parametrize.is_parametrized(lin)
