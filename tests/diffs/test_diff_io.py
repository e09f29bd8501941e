"""Diff files: round trip, refusals (model untouched), chains, quantization error, merge/unmerge."""

from __future__ import annotations

import base64
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
    DiffInfo,
    DiffIntegrityError,
    SparseDiff,
    apply_chain,
    apply_diff,
    apply_to_state_dict,
    attach_diffs,
    diff_modules,
    effective_tensor,
    export_diff,
    inspect_diff,
    merge,
    select_targets,
    unmerge,
    weights_sha256,
)
from lightning_amortized.callbacks.neural_diff import NeuralDiff
from lightning_amortized.diffs.checksum import _payload_sha256
from lightning_amortized.diffs.io import count_large_gaps, decode_gaps, encode_gaps, read_diff
from lightning_amortized.diffs.sparse import magnitude_keep_masks


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


def test_export_mode_follows_umask_and_cleans_up_after_a_killed_export(tmp_path: Path) -> None:
    """Diff files used to be written 0600 whatever the umask, and the temporary file of an
    export killed midway stayed forever."""
    import os
    import subprocess
    import sys

    trained = Net()
    fake_training(trained, "sparse", "head.weight", seed=0)
    out = tmp_path / "u.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".u.safetensors.{int(dead.stdout)}.abc123.tmp"  # as a killed writer leaves it
    leftover.write_bytes(b"half a file")
    mine = tmp_path / f".u.safetensors.{os.getpid()}.zzz.tmp"  # a live writer's: kept
    mine.write_bytes(b"in progress")
    old = os.umask(0o027)
    try:
        export_diff(trained, out)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o640
    assert not leftover.exists() and mine.exists()


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


def test_a_diff_applied_twice_is_named_as_such(shipped: Path) -> None:
    model = Net()
    apply_diff(model, shipped)
    before = snapshot(model)
    with pytest.raises(BaseMismatchError, match="is already applied"):
        apply_diff(model, shipped)
    assert_unchanged(model, before)


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
    with pytest.raises(DiffFormatError, match=r"format version 99; this lightning_amortized reads version\(s\) \[1, 2\]"):
        apply_diff(model, future)
    assert_unchanged(model, before)


def test_shape_mismatch_and_missing_names_are_refused(shipped: Path) -> None:
    wider = Net(hidden=9)
    before = snapshot(wider)
    with pytest.raises(BaseMismatchError, match=r"Shape or dtype mismatch for 'rnn\.weight_ih_l0': the diff expects \(32, 6\)"):
        apply_diff(wider, shipped)
    assert_unchanged(wider, before)
    half = Net().half()  # a converted model: refused by name, also without the hash checks
    before = snapshot(half)
    for strict in (True, False):
        with pytest.raises(BaseMismatchError, match=r"expects \(32, 6\) float32, the model has \(32, 6\) float16"):
            apply_diff(half, shipped, strict=strict)
    assert_unchanged(half, before)
    with pytest.raises(BaseMismatchError, match="float32, the state dict has .* float16"):
        apply_to_state_dict(half.state_dict(), [shipped])
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
    with pytest.raises(BaseMismatchError, match="is already undone"):
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


# --------------------------------------------------------------------------- compact (gap-u8) indices


def seeded_linear(rows: int, cols: int) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(cols, rows, bias=False)


def sparse_on(lin: nn.Linear, kept: torch.Tensor, seed: int = 0) -> SparseDiff:
    """A sparse diff on ``lin.weight`` keeping the flat ``kept`` entries, random values."""
    d = attach_diffs(lin, ["weight"], "sparse")["weight"]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        d.mask.zero_()
        d.mask.view(-1)[kept] = True
        d.delta.copy_(0.01 * torch.randn(d.delta.shape, generator=g))
        d.zero_pruned()
    return d


def rewrite(dst: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Save edited tensors/metadata with a *valid* payload hash (what a buggy writer could produce)."""
    meta = {**meta, "payload_sha256": _payload_sha256(tensors, meta)}
    safetensors.torch.save_file(tensors, dst, metadata=meta)
    return dst


def metadata(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + hlen])["__metadata__"]


def test_gap_codec_edges() -> None:
    # skips: 0 (index 0), 0 (adjacent), 254 (largest inline), 255 (first escaped), 65535, 65536, 2**20
    idx = [0, 1, 256, 512, 512 + 65536, 512 + 65536 + 65537, 512 + 65536 + 65537 + 2**20 + 1]
    numel = idx[-1] + 1  # the last index is the last entry
    gaps, large = encode_gaps(torch.tensor(idx), numel)
    assert gaps.dtype == torch.uint8 and large.dtype == torch.int32
    assert gaps.tolist() == [0, 0, 254, 255, 255, 255, 255]
    assert large.tolist() == [255, 65535, 65536, 2**20]
    assert decode_gaps(gaps, large, numel).tolist() == idx
    assert count_large_gaps(torch.tensor(idx)) == 4
    empty_gaps, empty_large = encode_gaps(torch.zeros(0, dtype=torch.int64), 10)
    assert decode_gaps(empty_gaps, empty_large, 10).tolist() == []
    assert encode_gaps(torch.tensor([2**31 + 5]), 2**31 + 6)[1].dtype == torch.int64  # wide tensors
    with pytest.raises(ValueError, match="strictly ascending"):
        encode_gaps(torch.tensor([3, 3]), 10)
    with pytest.raises(DiffFormatError, match="outside"):
        decode_gaps(gaps, large, numel - 1)


def test_gap_encoded_round_trip_is_bit_exact(tmp_path: Path) -> None:
    rows, cols = 600, 300  # 180,000 entries
    numel = rows * cols
    g = torch.Generator().manual_seed(3)
    random_part = torch.randperm(numel - 140_000, generator=g)[:2000] + 140_000
    fixed = torch.tensor([0, 1, 2, 257, 513, 513 + 65537, 513 + 65537 + 70_000, numel - 1])  # skips 254, 255, 65536, 69999
    kept = torch.unique(torch.cat([fixed, random_part]))
    trained = seeded_linear(rows, cols)
    sparse_on(trained, kept)
    info = export_diff(trained, tmp_path / "gap.safetensors")
    assert (info.format_version, info.index_encoding) == (2, "gap-u8")
    _, tensors = read_diff(tmp_path / "gap.safetensors")
    assert "weight::indices" not in tensors and tensors["weight::gaps"].dtype == torch.uint8
    large = tensors["weight::large_gaps"].tolist()
    assert large[:3] == [255, 65536, 69999] and all(x >= 255 for x in large)
    assert torch.equal(decode_gaps(tensors["weight::gaps"], tensors["weight::large_gaps"], numel), kept)
    assert info.index_bytes == kept.numel() + 4 * len(large) and info.value_bytes == 4 * kept.numel()
    device = seeded_linear(rows, cols)
    apply_diff(device, tmp_path / "gap.safetensors")
    assert torch.equal(device.weight, effective_tensor(trained, "weight"))
    assert device.weight.view(-1)[0] != trained.parametrizations.weight.original.view(-1)[0]  # index 0 applied
    assert device.weight.view(-1)[-1] != trained.parametrizations.weight.original.view(-1)[-1]  # last index applied
    # the int32 encoding (version 1) describes the same diff with 4 bytes per index
    old = export_diff(trained, tmp_path / "int32.safetensors", index_encoding="int32")
    assert (old.format_version, old.index_encoding, old.index_bytes) == (1, "int32", 4 * kept.numel())
    assert old.result_sha256 == info.result_sha256 and old.file_bytes > info.file_bytes
    text = str(info)
    assert f"indices {info.index_bytes:,} (gap-u8), values {info.value_bytes:,} (fp32)" in text


# written by lightning_amortized before the gap encoding (format version 1, int32 indices):
# nn.Linear(4, 3) with weight arange(12) / 4, a sparse fp32 diff +0.5 at 0, -1.0 at 5, +2.0 at 11
LEGACY_V1_FILE = (
    "kAIAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJwYXlsb2FkX3NoYTI1NiI6IjNjZjVkYjJiNzI3YTU0NmE3OGUzODE2OTJlNTZj"
    "NzhlOWE1OTI1NjQ0YzAxMDZjZTYxNmM3YWZkMDgzZWNjNmEiLCJzZWVkIjoiNyIsImZvcm1hdCI6ImxpZ2h0bmluZ19hbW9y"
    "dGl6ZWQuZGlmZiIsInZhbHVlX2R0eXBlIjoiZnAzMiIsImV4dHJhIjoie1wibWF4X2Fic19lcnJvclwiOiAwLjB9IiwidGFy"
    "Z2V0cyI6Ilt7XCJuYW1lXCI6IFwid2VpZ2h0XCIsIFwic2hhcGVcIjogWzMsIDRdLCBcImR0eXBlXCI6IFwiZmxvYXQzMlwi"
    "LCBcIm51bWVsXCI6IDEyLCBcInN0b3JlZFwiOiAzfV0iLCJtZXRob2QiOiJzcGFyc2UiLCJmb3JtYXRfdmVyc2lvbiI6IjEi"
    "LCJiYXNlX3NoYTI1NiI6ImUxMjdmODdjNzVlNDM2ZGY4OTY2NTQ5ZmY0N2M3ODFkNGU0NmMzZDUzMGU0NjZjYTQ5NjQzYmEx"
    "YmY1MjkzNTQiLCJyZXN1bHRfc2hhMjU2IjoiY2EyZGI4ZDc5MGRlZmYzNzNiYzhkZTE2MjI1MmIxOTc1ODVhNGZkMTNiMWIw"
    "MWQ3ZTczMmYwNTkwODg4ZDExNiJ9LCJ3ZWlnaHQ6OnZhbHVlcyI6eyJkdHlwZSI6IkYzMiIsInNoYXBlIjpbM10sImRhdGFf"
    "b2Zmc2V0cyI6WzAsMTJdfSwid2VpZ2h0OjppbmRpY2VzIjp7ImR0eXBlIjoiSTMyIiwic2hhcGUiOlszXSwiZGF0YV9vZmZz"
    "ZXRzIjpbMTIsMjRdfX0gIAAAAD8AAIC/AAAAQAAAAAAFAAAACwAAAA=="
)


def test_file_written_before_the_gap_encoding_still_applies(tmp_path: Path) -> None:
    path = tmp_path / "legacy.safetensors"
    path.write_bytes(base64.b64decode(LEGACY_V1_FILE))
    assert "index_encoding" not in metadata(path)
    info = inspect_diff(path)
    assert (info.format_version, info.index_encoding, info.index_bytes, info.value_bytes) == (1, "int32", 12, 12)
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.25)
    expected = lin.weight.detach().clone().view(-1)
    expected[torch.tensor([0, 5, 11])] += torch.tensor([0.5, -1.0, 2.0])
    apply_diff(lin, path)
    assert torch.equal(lin.weight.view(-1), expected)
    unmerge(lin, path)
    assert torch.equal(lin.weight.view(-1), torch.arange(12, dtype=torch.float32) * 0.25)


@pytest.fixture()
def gap_file(tmp_path: Path) -> Path:
    trained = seeded_linear(40, 30)
    sparse_on(trained, torch.tensor([0, 3, 300, 700, 1199]))  # skips 0, 2, 296, 399, 498: three escapes
    path = tmp_path / "gap.safetensors"
    export_diff(trained, path)
    return path


CORRUPTIONS = [  # (edit, error, message)
    ("extra_escape", DiffFormatError, r"4 escape byte\(s\) \(255\) but 3 large gap"),
    ("past_the_end", DiffFormatError, r"decodes to index 1200, outside \[0, 1200\)"),
    ("small_large_gap", DiffFormatError, r"Large gaps must lie in \[255, 1200\)"),
    ("huge_large_gap", DiffFormatError, r"Large gaps must lie in \[255, 1200\)"),
    ("short_stream", DiffFormatError, r"gap-u8 indices of 'weight' missing or malformed"),
    ("int64_large", DiffFormatError, r"missing or malformed .* ::large_gaps int32"),
    ("both_encodings", DiffFormatError, r"stores indices in two encodings \(gap-u8 expected\)"),
    ("gaps_in_v1", DiffFormatError, r"index encoding 'gap-u8' is unknown or not allowed in format version 1"),
    ("flipped_byte", DiffIntegrityError, r"payload sha256 expected"),
]


@pytest.mark.parametrize(("edit", "error", "match"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupted_gap_stream_is_refused_and_model_unchanged(
    gap_file: Path, tmp_path: Path, edit: str, error: type, match: str
) -> None:
    tensors = safetensors.torch.load_file(gap_file)
    meta = metadata(gap_file)
    gaps, large = tensors["weight::gaps"].clone(), tensors["weight::large_gaps"].clone()
    assert gaps.tolist() == [0, 2, 255, 255, 255] and large.tolist() == [296, 399, 498]
    bad = tmp_path / "bad.safetensors"
    if edit == "flipped_byte":  # damage without a new hash
        data = bytearray(gap_file.read_bytes())
        data[-1] ^= 0x01  # the last tensor in the file
        bad.write_bytes(bytes(data))
    else:
        if edit == "extra_escape":
            gaps[1] = 255
        elif edit == "past_the_end":
            gaps[1] = 3
        elif edit == "small_large_gap":
            large[0] = 254
        elif edit == "huge_large_gap":
            large[0] = 1200
        elif edit == "short_stream":
            gaps = gaps[:4]
        elif edit == "int64_large":
            large = large.to(torch.int64)
        elif edit == "gaps_in_v1":
            meta["format_version"] = "1"
        edited = {**tensors, "weight::gaps": gaps, "weight::large_gaps": large}
        if edit == "both_encodings":
            edited["weight::indices"] = torch.tensor([0, 3, 300, 700, 1], dtype=torch.int32)
        rewrite(bad, edited, meta)
    model = seeded_linear(40, 30)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        apply_diff(model, bad)
    with pytest.raises(error, match=match):
        inspect_diff(bad)
    assert_unchanged(model, before)


def compact_diff(tmp_path: Path, density: float, value_dtype: str) -> tuple[int, DiffInfo]:
    """A ``density`` sparse diff of a 1000 x 1000 fp32 matrix (4,000,000 bytes): fp32 bytes, file info."""
    lin = seeded_linear(1000, 1000)
    kept = torch.randperm(lin.weight.numel(), generator=torch.Generator().manual_seed(1))[: round(density * 10**6)]
    sparse_on(lin, torch.sort(kept).values)
    info = export_diff(lin, tmp_path / f"{density}-{value_dtype}.safetensors", value_dtype=value_dtype)
    return lin.parametrizations.weight.original.numel() * 4, info


def test_compact_index_sizes_meet_the_size_targets(tmp_path: Path) -> None:
    fp32_bytes, info = compact_diff(tmp_path, 0.10, "fp16")  # 100,000 entries: 1 + 2 bytes each
    assert info.index_bytes == 100_000 and info.value_bytes == 200_000  # no skip >= 255 at 10 % density
    assert info.file_bytes < 0.10 * fp32_bytes  # >= 90 % smaller (7.5 % + header)
    assert info.file_bytes < 0.0755 * fp32_bytes
    fp32_bytes, info = compact_diff(tmp_path, 0.02, "int8")  # 20,000 entries: 1 + 1 bytes each + escapes
    escapes = (info.index_bytes - 20_000) // 4
    assert 0 < escapes < 0.01 * 20_000  # expected (1 - 0.02) ** 255 = 0.58 % of the entries
    assert info.value_bytes == 20_000 + 4
    assert info.file_bytes < 0.02 * fp32_bytes  # >= 98 % smaller
    assert info.file_bytes < 0.0105 * fp32_bytes


def test_projected_bytes_match_the_exported_file(tmp_path: Path) -> None:
    model = Net(hidden=64)
    cb = NeuralDiff(method="sparse", budget=0.1, targets=["rnn.weight_*", "head.weight"], value_dtype="fp16")
    cb.setup(None, model, "fit")  # freezes the model and attaches the diffs, as in Trainer.fit
    projected = cb.projected_bytes(model)
    diffs = [d for d in diff_modules(model).values() if isinstance(d, SparseDiff)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for d in diffs:
            d.delta.copy_(torch.randn(d.delta.shape, generator=g))
        for d, m in zip(diffs, magnitude_keep_masks([d.delta for d in diffs], [d.mask for d in diffs], cb.final_count)):
            d.mask.copy_(m)
            d.zero_pruned()
    stats = cb.stats(model)
    info = cb.export(tmp_path / "u.safetensors", model)
    assert info is not None and info.stored == cb.final_count == stats["nonzeros"]
    assert abs(stats["projected_bytes"] - info.file_bytes) <= 0.01 * info.file_bytes  # counted on the actual masks
    assert abs(projected - info.file_bytes) <= 0.03 * info.file_bytes  # before training, at the budget


def test_merge_leaves_requires_grad_flags_and_remove_restores_them(tmp_path: Path) -> None:
    def trained_model() -> tuple[Net, NeuralDiff]:
        model = Net()
        model.embed.weight.requires_grad_(False)  # a deliberate freeze by the user
        cb = NeuralDiff(method="sparse", budget=0.5, targets=["head.weight"], value_dtype="int8")
        cb.setup(None, model, "fit")
        d = diff_modules(model)["head.weight"]
        with torch.no_grad():
            d.delta.copy_(0.1 * torch.arange(d.delta.numel(), dtype=torch.float32).reshape(d.delta.shape))
            d.mask.view(-1)[cb.final_count :] = False
            d.zero_pruned()
        return model, cb

    model, cb = trained_model()
    path = tmp_path / "u.safetensors"
    cb.export(path, model)
    merge(model, path)  # documented: flags are left as the callback left them (all frozen)
    assert not diff_modules(model)
    assert not any(p.requires_grad for p in model.parameters())
    other, cb2 = trained_model()
    cb2.remove(other, merge=False)  # restores the flags from before the callback ...
    merge(other, path)  # ... and then the file's (int8) diff is merged
    frozen = {n for n, p in other.named_parameters() if not p.requires_grad}
    assert frozen == {"embed.weight"}
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["sparse", "hashed"])
def test_non_finite_updates_are_neither_written_nor_applied(tmp_path: Path, method: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A diverged run's NaN must not reach a device: export refuses it, and so does every reader of a file that has one."""
    from lightning_amortized.device.diffs import read_diff as device_read_diff
    from lightning_amortized.diffs import export as export_module
    from lightning_amortized.diffs.lowrank import attach_lowrank, export_lowrank, read_lowrank

    model = Net()
    fake_training(model, method, ["head.*"], seed=1)
    d = diff_modules(model)["head.weight"]
    with torch.no_grad():
        (d.delta if method == "sparse" else d.buckets).view(-1)[0] = float("nan")
    for value_dtype in ("fp32", "fp16", "int8"):  # int8 used to quantize a NaN to zeros with a scale of 1
        with pytest.raises(ValueError, match=r"Refusing to encode the update of 'head.weight': its values hold NaN"):
            export_diff(model, tmp_path / "nan.safetensors", value_dtype=value_dtype)
    assert not (tmp_path / "nan.safetensors").exists()
    from lightning_amortized.diffs import codec

    monkeypatch.setattr(codec, "non_finite_tensors", lambda tensors: [])  # an exporter without the checks
    monkeypatch.setattr(export_module.math, "isfinite", lambda x: True)
    with pytest.raises(DiffFormatError, match="stores NaN or Inf"):  # written, then refused by its own read-back
        export_diff(model, tmp_path / "nan.safetensors")
    assert (tmp_path / "nan.safetensors").exists()
    fresh = Net()
    before = snapshot(fresh)
    for read in (lambda p: apply_diff(fresh, p), device_read_diff):
        with pytest.raises(DiffFormatError, match=r"stores NaN or Inf values in \['head.weight::"):
            read(tmp_path / "nan.safetensors")
    assert_unchanged(fresh, before)
    monkeypatch.undo()  # the exporters check again
    lora = Net().requires_grad_(False)
    factors = attach_lowrank(lora, ["head.weight"], rank=2)
    with torch.no_grad():
        factors["head.weight"].B.fill_(1e6)  # overflows fp16
    with pytest.raises(ValueError, match=r"\['head.weight::B'\] hold NaN or Inf"):
        export_lowrank(lora, tmp_path / "lora.safetensors")
    with pytest.raises(DiffFormatError):
        read_lowrank(tmp_path / "lora.safetensors")  # nothing was written


def test_diff_from_weights_stores_only_changed_entries_and_reports_the_true_error(tmp_path: Path) -> None:
    from lightning_amortized.diffs.export import export_diff_from_weights

    base = snapshot(Net())
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["head.bias"] += 1.0  # 5 changed entries
    tuned["rnn.weight_hh_l0"] += 0.5  # every entry changed by 0.5, below the bias's 1.0
    names = ["head.bias", "head.weight", "rnn.weight_hh_l0"]
    info = export_diff_from_weights(base, tuned, names, tmp_path / "a.safetensors", keep=5)
    assert info.stored == 5 and info.names == ["head.bias"]
    assert info.extra["max_abs_error"] == pytest.approx(0.5)  # weight_hh kept nothing: off by its whole delta
    only_bias = {k: v.clone() for k, v in base.items()}
    only_bias["head.bias"] += 1.0
    info = export_diff_from_weights(base, only_bias, names, tmp_path / "b.safetensors", keep=300)
    assert info.stored == 5 and info.extra["max_abs_error"] == 0.0  # no unchanged entry fills the budget
    with pytest.raises(ValueError, match="equal the base on all 3 target"):
        export_diff_from_weights(base, base, names, tmp_path / "c.safetensors", keep=10)
    nan = {k: v.clone() for k, v in only_bias.items()}
    nan["head.weight"][0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"fine-tuned weights of \['head.weight'\] hold NaN or Inf"):
        export_diff_from_weights(base, nan, names, tmp_path / "d.safetensors", keep=10)


def test_reversible_export_of_bfloat16_weights_is_refused_before_writing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).to(torch.bfloat16)
    d = attach_diffs(lin, ["weight"], "sparse")
    with torch.no_grad():
        d["weight"].delta.normal_(0, 0.01)
    with pytest.raises(ValueError, match=r"bfloat16 \(\['weight'\]\) is not readable"):
        export_diff(lin, tmp_path / "u.safetensors", reversible=True)
    assert not (tmp_path / "u.safetensors").exists()
    export_diff(lin, tmp_path / "u.safetensors")  # without undo data it works
    torch.manual_seed(0)
    apply_diff(nn.Linear(4, 3).to(torch.bfloat16), tmp_path / "u.safetensors")
