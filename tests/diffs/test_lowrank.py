"""Low-rank (LoRA) updates: parametrization on Linear and nn.LSTM, rank from a byte budget, the file, chains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_amortized.diffs import (
    BaseMismatchError,
    DenseDelta,
    DiffFormatError,
    DiffIntegrityError,
    LowRankDelta,
    apply_lowrank,
    attach_diffs,
    attach_lowrank,
    export_diff,
    export_lowrank,
    inspect_lowrank,
    lowrank_file_bytes,
    lowrank_modules,
    merge_lowrank,
    rank_for_bytes,
    select_targets,
    weights_sha256,
)


class Tiny(nn.Module):
    """An LSTM and a linear head: the shapes of the recipe's targets, small."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(6, 5, num_layers=2, batch_first=True)
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


TARGETS = ["rnn.weight*", "head.*"]


def _model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _effective(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for n in names:
        prefix, _, attr = n.rpartition(".")
        with torch.no_grad():
            out[n] = getattr(model.get_submodule(prefix), attr).detach().clone()
    return out


def _randomize(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lowrank_modules(model).values():
            for t in p.parameters():
                t.copy_(0.1 * torch.randn(t.shape, generator=g))


def test_starts_at_w0_trains_only_the_factors_and_the_lstm_uses_w0_plus_ba() -> None:
    model = _model()
    x = torch.randn(3, 7, 6)
    y0 = model(x).detach()
    names = select_targets(model, TARGETS)
    originals = {n: model.get_parameter(n) for n in names}
    w0 = _state(model)
    model.requires_grad_(False)
    mods = attach_lowrank(model, names, rank=2, alpha=4.0, seed=0)
    assert {n: type(p).__name__ for n, p in mods.items()} == {
        **{n: "LowRankDelta" for n in names if n != "head.bias"}, "head.bias": "DenseDelta"}
    assert mods["rnn.weight_ih_l0"].B.shape == (20, 2) and mods["rnn.weight_ih_l0"].A.shape == (2, 6)
    assert mods["head.weight"].scale == 2.0
    for n in names:  # the base is the same object, and the forward pass starts at W0 exactly (B = 0)
        assert model.get_submodule(n.rpartition(".")[0]).parametrizations[n.rpartition(".")[2]].original is originals[n]
    assert torch.equal(model(x), y0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B", ".delta")) for n in trainable)
    assert len(trainable) == 2 * (len(names) - 1) + 1
    # one optimizer step: only the factors move, the base stays bit for bit
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x).square().mean().backward()
    assert mods["rnn.weight_hh_l1"].B.grad is not None and mods["rnn.weight_hh_l1"].B.grad.abs().sum() > 0
    opt.step()
    for n in names:
        assert torch.equal(originals[n], w0[n])
    # the parametrized LSTM computes what a plain LSTM holding W0 + B @ A * scale computes
    _randomize(model, 1)
    plain = _model()
    with torch.no_grad():
        for n in names:
            p = mods[n]
            delta = p.delta if isinstance(p, DenseDelta) else (p.B @ p.A) * p.scale
            plain.get_parameter(n).copy_(w0[n] + delta)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=1e-6)


def test_attach_refuses_bad_rank_and_double_parametrization() -> None:
    model = _model()
    with pytest.raises(ValueError, match="`rank` to be >= 1"):
        attach_lowrank(model, ["head.weight"], rank=0)
    attach_lowrank(model, ["head.weight"], rank=9)  # capped at min(m, n) = 4
    assert lowrank_modules(model)["head.weight"].rank == 4 and lowrank_modules(model)["head.weight"].scale == 1.0
    with pytest.raises(ValueError, match="already carries a parametrization"):
        attach_lowrank(model, ["head.weight"], rank=1)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        LowRankDelta(torch.zeros(3), rank=1, alpha=1.0)


def test_file_size_is_predicted_exactly_and_the_rank_fits_the_budget(tmp_path: Path) -> None:
    names = select_targets(_model(), TARGETS)
    shapes = {n: tuple(p.shape) for n, p in _model().named_parameters() if n in names}
    # per rank: 2 bytes per factor entry, r * (m + n) per matrix
    per_rank = 2 * sum(s[0] + s[1] for n, s in shapes.items() if len(s) == 2)
    assert lowrank_file_bytes(shapes, 3) - lowrank_file_bytes(shapes, 2) == per_rank
    for budget in (2100, 2500, 2700):
        r = rank_for_bytes(shapes, budget)
        model = _model()
        model.requires_grad_(False)
        attach_lowrank(model, names, rank=r, seed=0)
        _randomize(model, 0)
        info = export_lowrank(model, tmp_path / f"lora-{budget}.safetensors")
        assert info.file_bytes == (tmp_path / f"lora-{budget}.safetensors").stat().st_size  # the real size
        assert info.file_bytes == lowrank_file_bytes(shapes, r) <= budget
        assert lowrank_file_bytes(shapes, r + 1) > budget  # the largest rank that fits
        assert info.rank == r and info.payload_bytes == r * per_rank + 2 * 4  # + the fp16 head bias
    with pytest.raises(ValueError, match="rank-1 update .* over the budget of 100 bytes"):
        rank_for_bytes(shapes, 100)


def test_wrong_base_and_edited_files_are_refused_and_the_model_is_untouched(tmp_path: Path) -> None:
    model = _model()
    names = select_targets(model, TARGETS)
    model.requires_grad_(False)
    attach_lowrank(model, names, rank=2, seed=0)
    _randomize(model, 0)
    path = tmp_path / "lora-1.safetensors"
    info = export_lowrank(model, path)
    assert info.base_sha256 == weights_sha256(_model(), names)
    other = _model(seed=1)
    before = _state(other)
    with pytest.raises(BaseMismatchError, match="applies to a different base: expected weights sha256"):
        apply_lowrank(other, path)
    assert all(torch.equal(before[n], t) for n, t in _state(other).items())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(bytes(data))
    with pytest.raises(DiffIntegrityError, match="integrity check"):
        apply_lowrank(_model(), edited)
    edited.write_bytes(bytes(data[:100]))
    with pytest.raises(DiffFormatError, match="not a readable safetensors file"):
        inspect_lowrank(edited)
    with pytest.raises(BaseMismatchError, match="Shape mismatch"):
        apply_lowrank(_Wide(), path)
    with pytest.raises(BaseMismatchError, match=r"changes parameters the model does not have: \['head.weight', 'head.bias'\]"):
        apply_lowrank(_NoHead(), path)
    sparse = nn.Linear(2, 2)
    attach_diffs(sparse, ["weight"], "sparse")
    export_diff(sparse, tmp_path / "diff-1.safetensors")
    with pytest.raises(DiffFormatError, match="not a lightning_amortized.lowrank file"):
        apply_lowrank(sparse, tmp_path / "diff-1.safetensors")  # a sparse diff is not a low-rank file


class _NoHead(Tiny):
    def __init__(self) -> None:
        super().__init__()
        del self.head


class _Wide(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 7)


def test_two_chained_updates_on_a_fresh_base_reproduce_the_shipped_model(tmp_path: Path) -> None:
    model = _model()
    names = select_targets(model, TARGETS)
    model.requires_grad_(False)
    files = []
    for k in (1, 2):
        attach_lowrank(model, names, rank=2, alpha=4.0, seed=k)
        _randomize(model, k)
        trained = _effective(model, names)
        files.append(tmp_path / f"lora-{k}.safetensors")
        info = export_lowrank(model, files[-1])
        merge_lowrank(model, files[-1])  # fold in what was shipped (fp16 factors)
        assert not lowrank_modules(model)
        shipped = _state(model)
        assert info.result_sha256 == weights_sha256(shipped, names)
        err = max(float((shipped[n] - trained[n]).abs().max()) for n in names)
        assert 0 < err < 1e-3  # the fp16 rounding of the factors, nothing more
    assert weights_sha256(model, names) == info.result_sha256
    assert inspect_lowrank(files[1]).base_sha256 == inspect_lowrank(files[0]).result_sha256
    fresh = _model()
    with pytest.raises(BaseMismatchError):  # update 2 needs update 1 first
        apply_lowrank(fresh, files[1])
    for f in files:
        apply_lowrank(fresh, f)
    final = _state(fresh)
    assert all(torch.equal(final[n], shipped[n]) for n in shipped)  # bit for bit


def test_the_diff_cli_inspects_and_applies_lora_files_in_a_chain_with_diffs(tmp_path: Path, capsys) -> None:
    """``lightning-amortized diff apply`` takes a LoRA file like a diff (told apart by its header)."""
    import json

    import safetensors.torch

    from lightning_amortized.diff_format import file_format
    from lightning_amortized.diffs.checkpoints import load_checkpoint
    from lightning_amortized.diffs.commands import main

    model = _model()
    names = select_targets(model, TARGETS)
    model.requires_grad_(False)
    safetensors.torch.save_file(_state(model), str(tmp_path / "base.safetensors"))
    attach_lowrank(model, names, rank=2, alpha=4.0, seed=1)  # update 1: LoRA
    _randomize(model, 1)
    lora = tmp_path / "lora-1.safetensors"
    export_lowrank(model, lora)
    merge_lowrank(model, lora)
    attach_diffs(model, names, "sparse")  # update 2: a sparse diff on top
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.01)
    diff = tmp_path / "diff-2.safetensors"
    export_diff(model, diff)
    assert file_format(lora) == "lightning_amortized.lowrank" and file_format(diff) == "lightning_amortized.diff"
    assert file_format(tmp_path / "missing.safetensors") is None

    assert main(["inspect", str(lora), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rank"] == 2
    assert main(["inspect", str(lora)]) == 0
    assert "LoRA update, rank 2" in capsys.readouterr().out
    out = tmp_path / "device.safetensors"
    assert main(["apply", "--base", str(tmp_path / "base.safetensors"), "--diff", str(lora), "--diff", str(diff),
                 "--out", str(out)]) == 0
    assert "(lora, " in capsys.readouterr().out
    state, _ = load_checkpoint(out)
    assert weights_sha256(state, names) == weights_sha256(_effective(model, names), names)
    # out of order: the diff names the weights after the LoRA update as its base
    assert main(["apply", "--base", str(tmp_path / "base.safetensors"), "--diff", str(diff), "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "different base" in capsys.readouterr().err
    assert main(["apply", "--base", str(out), "--diff", str(lora), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert "lora-1.safetensors' applies to a different base" in capsys.readouterr().err  # the LoRA file refused
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
