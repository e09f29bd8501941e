"""Diff files: round trip, refusals (model untouched), chains, quantization error, merge/unmerge."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from lightning_amortized.diffs import (
    BaseMismatchError,
    DiffError,
    DiffFormatError,
    DiffIntegrityError,
    SparseDiff,
    apply_chain,
    apply_diff,
    attach_diffs,
    detach_diffs,
    diff_modules,
    effective_tensor,
    export_diff,
    inspect_diff,
    merge,
    select_targets,
    unmerge,
    weights_sha256,
)


class Net(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 6)
        self.rnn = nn.LSTM(6, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


TOKENS = torch.tensor([[1, 4, 2, 9, 10], [0, 3, 3, 7, 5]])


def fake_training(model: nn.Module, method: str, patterns, seed: int, density: float = 0.2) -> list[str]:
    """Attach a diff and give it trained-looking values (what NeuralDiff leaves behind)."""
    names = select_targets(model, patterns)
    buckets = {n: max(1, int(density * model.get_parameter(n).numel())) for n in names}
    diffs = attach_diffs(model, names, method, num_buckets=buckets, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for d in diffs.values():
            if isinstance(d, SparseDiff):
                d.delta.copy_(0.05 * torch.randn(d.delta.shape, generator=g))
                d.mask.copy_(torch.rand(d.mask.shape, generator=g) < density)
                d.zero_pruned()
            else:
                d.buckets.copy_(0.05 * torch.randn(d.buckets.shape, generator=g))
    return names


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("method", ["sparse", "hashed"])
def test_round_trip_is_bit_exact_for_fp32(tmp_path: Path, method: str) -> None:
    trained = Net()
    names = fake_training(trained, method, ["rnn.weight_*", "head.weight", "embed.weight"], seed=1)
    info = export_diff(trained, tmp_path / "u1.safetensors", seed=1)
    assert info.method == method and info.value_dtype == "fp32" and info.extra["max_abs_error"] == 0.0
    assert sorted(info.names) == sorted(names)
    if method == "sparse":
        assert info.stored == sum(d.nnz for d in diff_modules(trained).values())
    device = Net()  # a fresh copy of the base, without any parametrization
    params = {n: device.get_parameter(n) for n in names}
    assert apply_diff(device, tmp_path / "u1.safetensors").result_sha256 == info.result_sha256
    for n in names:
        assert device.get_parameter(n) is params[n]  # updated in place
        assert torch.equal(params[n], effective_tensor(trained, n))
    assert torch.equal(device(TOKENS), trained(TOKENS))
    assert weights_sha256(device, names) == info.result_sha256
    # inspect: readable summary
    text = str(inspect_diff(tmp_path / "u1.safetensors"))
    assert f"{method} diff, fp32 values" in text and "rnn.weight_hh_l0_reverse" in text


def test_export_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    trained = Net()
    fake_training(trained, "sparse", "head.weight", seed=0)
    out = tmp_path / "sub" / "u.safetensors"
    export_diff(trained, out)
    export_diff(trained, out)  # overwrite via rename
    assert [p.name for p in out.parent.iterdir()] == ["u.safetensors"]


@pytest.fixture()
def shipped(tmp_path: Path) -> Path:
    trained = Net()
    fake_training(trained, "sparse", ["rnn.*", "head.weight"], seed=2)
    path = tmp_path / "u1.safetensors"
    export_diff(trained, path)
    return path


def test_wrong_base_is_refused(shipped: Path) -> None:
    other = Net()
    with torch.no_grad():
        other.rnn.weight_hh_l0[0, 0] += 1e-3
    before = snapshot(other)
    expected = inspect_diff(shipped).base_sha256
    found = weights_sha256(other, inspect_diff(shipped).names)
    with pytest.raises(BaseMismatchError, match=f"expected weights sha256 {expected}, found {found}"):
        apply_diff(other, shipped)
    assert_unchanged(other, before)
    apply_diff(other, shipped, strict=False)  # explicit opt-out applies anyway
    assert not torch.equal(other.head.weight, before["head.weight"])


def test_truncated_file_is_refused_and_model_unchanged(shipped: Path, tmp_path: Path) -> None:
    data = shipped.read_bytes()
    for cut in (len(data) - 7, len(data) // 2, 5):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        model = Net()
        before = snapshot(model)
        with pytest.raises(DiffFormatError, match="truncated or corrupted"):
            apply_diff(model, bad)
        assert_unchanged(model, before)


def test_edited_file_is_refused(shipped: Path, tmp_path: Path) -> None:
    data = bytearray(shipped.read_bytes())
    model = Net()
    before = snapshot(model)
    flipped = tmp_path / "flipped.safetensors"  # one bit in the tensor data
    data2 = bytearray(data)
    data2[-3] ^= 0x01
    flipped.write_bytes(bytes(data2))
    with pytest.raises(DiffIntegrityError, match="payload sha256 expected"):
        apply_diff(model, flipped)
    # an edited metadata value of the same length (seed 0 -> 9)
    (hlen,) = struct.unpack("<Q", bytes(data[:8]))
    header = bytes(data[8 : 8 + hlen]).replace(b'"seed":"0"', b'"seed":"9"')
    assert len(header) == hlen
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(bytes(data[:8]) + header + bytes(data[8 + hlen :]))
    with pytest.raises(DiffIntegrityError):
        apply_diff(model, edited)
    assert_unchanged(model, before)


def test_unknown_format_version_is_refused(shipped: Path, tmp_path: Path) -> None:
    tensors = safetensors.torch.load_file(shipped)
    with open(shipped, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(hlen))["__metadata__"]
    meta["format_version"] = "99"
    future = tmp_path / "future.safetensors"
    safetensors.torch.save_file(tensors, future, metadata=meta)
    model = Net()
    before = snapshot(model)
    with pytest.raises(DiffFormatError, match=r"format version 99; this lightning_amortized reads version\(s\) \[1\]"):
        apply_diff(model, future)
    assert_unchanged(model, before)


def test_shape_mismatch_and_missing_names_are_refused(shipped: Path) -> None:
    wider = Net(hidden=9)
    before = snapshot(wider)
    with pytest.raises(BaseMismatchError, match=r"Shape mismatch for 'rnn\.weight_ih_l0': the diff expects \(32, 6\)"):
        apply_diff(wider, shipped)
    assert_unchanged(wider, before)
    partial = Net()
    del partial.head
    partial.head2 = nn.Linear(16, 5)
    with pytest.raises(BaseMismatchError, match=r"does not have: \['head\.weight'\]"):
        apply_diff(partial, shipped)
    with pytest.raises(DiffError, match="carries a diff"):
        m = Net()
        attach_diffs(m, ["head.weight"], "sparse")
        apply_diff(m, shipped)


@pytest.mark.parametrize("method", ["sparse", "hashed"])
def test_chain_of_three_updates_reproduces_the_model(tmp_path: Path, method: str) -> None:
    training = Net()
    plans = [["rnn.weight_*", "head.weight"], ["embed.weight", "rnn.weight_hh_*"], ["head.*", "rnn.bias_*"]]
    paths = []
    for k, patterns in enumerate(plans):  # each update selects other entries (and other tensors)
        fake_training(training, method, patterns, seed=10 + k)
        paths.append(tmp_path / f"u{k + 1}.safetensors")
        export_diff(training, paths[-1])
        merge(training)  # the base of update k+1 is the result of update k
    infos = [inspect_diff(p) for p in paths]
    device = Net()
    before = snapshot(device)
    # a missing link is refused and nothing is written (u2 changes tensors u1 changed)
    with pytest.raises(BaseMismatchError, match="u2.safetensors"):
        apply_chain(device, [paths[1], paths[2]])
    with pytest.raises(BaseMismatchError, match="u3.safetensors"):
        apply_chain(device, [paths[0], paths[1], paths[2], paths[2]])
    assert_unchanged(device, before)
    assert [i.path for i in apply_chain(device, paths)] == [i.path for i in infos]
    for n, w in training.state_dict().items():
        assert torch.equal(device.state_dict()[n], w), n
    assert torch.equal(device(TOKENS), training(TOKENS))
    # one by one gives the same
    one_by_one = Net()
    for p in paths:
        apply_diff(one_by_one, p)
    assert all(torch.equal(one_by_one.state_dict()[k], v) for k, v in training.state_dict().items())


@pytest.mark.parametrize("method", ["sparse", "hashed"])
@pytest.mark.parametrize("value_dtype", ["fp16", "int8"])
def test_quantized_values_stay_within_error_bounds(tmp_path: Path, method: str, value_dtype: str) -> None:
    trained = Net()
    names = fake_training(trained, method, ["rnn.weight_*", "head.weight"], seed=5)
    fp32 = export_diff(trained, tmp_path / "fp32.safetensors")
    info = export_diff(trained, tmp_path / "q.safetensors", value_dtype=value_dtype)
    assert info.payload_bytes < fp32.payload_bytes
    device = Net()
    apply_diff(device, tmp_path / "q.safetensors")  # result hash of the quantized diff checks out
    errors = []
    for n in names:
        d = diff_modules(trained)[n]
        values = d.kept()[1] if isinstance(d, SparseDiff) else d.buckets.detach()
        vmax = float(values.abs().max())
        # quantization step (+ one rounding of the addition)
        bound = vmax / 127 / 2 if value_dtype == "int8" else vmax * 2.0**-11
        err = float((device.get_parameter(n).detach() - effective_tensor(trained, n)).abs().max())
        assert err <= bound + 1e-6, (n, err, bound)
        errors.append(err)
    assert info.extra["max_abs_error"] == pytest.approx(max(errors))
    assert 0 < max(errors) < (4e-3 if value_dtype == "int8" else 1e-4)


def test_merge_with_file_makes_training_base_equal_device(tmp_path: Path) -> None:
    trained = Net()
    fake_training(trained, "sparse", ["rnn.weight_*"], seed=3)
    export_diff(trained, tmp_path / "q.safetensors", value_dtype="int8")
    w0 = trained.rnn.parametrizations.weight_ih_l0.original
    merge(trained, tmp_path / "q.safetensors")
    assert not diff_modules(trained) and trained.rnn.weight_ih_l0 is w0
    device = Net()
    apply_diff(device, tmp_path / "q.safetensors")
    assert all(torch.equal(device.state_dict()[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize("method", ["sparse", "hashed"])
def test_unmerge_of_reversible_diff_restores_base_exactly(tmp_path: Path, method: str) -> None:
    trained = Net()
    fake_training(trained, method, ["head.weight", "rnn.weight_hh_l0"], seed=4)
    info = export_diff(trained, tmp_path / "u.safetensors", reversible=True)
    assert info.extra["undo_entries"] > 0  # some entries do not subtract back exactly
    plain = export_diff(trained, tmp_path / "plain.safetensors")
    assert info.payload_bytes > plain.payload_bytes
    model = Net()
    base = snapshot(model)
    apply_diff(model, tmp_path / "u.safetensors")
    assert torch.equal(model(TOKENS), trained(TOKENS))
    unmerge(model, tmp_path / "u.safetensors")
    assert_unchanged(model, base)
    with pytest.raises(BaseMismatchError, match="different result"):
        unmerge(model, tmp_path / "u.safetensors")  # not holding the result any more
    # without undo data the subtraction rounds differently somewhere: refused, model unchanged
    apply_diff(model, tmp_path / "plain.safetensors")
    held = snapshot(model)
    with pytest.raises(DiffError, match="does not restore the base bit-exactly"):
        unmerge(model, tmp_path / "plain.safetensors")
    assert_unchanged(model, held)


def test_sparse_fp32_values_subtract_back_when_delta_is_small(tmp_path: Path) -> None:
    lin = nn.Linear(50, 40)
    d = attach_diffs(lin, ["weight"], "sparse")["weight"]
    with torch.no_grad():  # |D| <= |W0| everywhere: the exported values unmerge exactly
        d.delta.copy_(lin.parametrizations.weight.original * 0.37)
    export_diff(lin, tmp_path / "small.safetensors")
    base = nn.Linear(50, 40)
    with torch.no_grad():
        base.weight.copy_(lin.parametrizations.weight.original)
        base.bias.copy_(lin.bias)
    before = snapshot(base)
    apply_diff(base, tmp_path / "small.safetensors")
    assert torch.equal(base.weight, lin.weight)
    unmerge(base, tmp_path / "small.safetensors")
    assert_unchanged(base, before)
