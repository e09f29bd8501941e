"""Neural diffs on the device: numpy apply equals PyTorch ``merge``, chains, and every refusal."""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from lightning_amortized.device import (
    BaseMismatchError,
    DiffError,
    DiffFormatError,
    DiffIntegrityError,
    ExportedModel,
    ManifestError,
    StreamingRecognizer,
    WeightsError,
    apply_chain,
    apply_diff,
)
from lightning_amortized.device import diffs as device_diffs
from lightning_amortized.device.cli import main as device_main
from lightning_amortized.device.hashing import hash_indices as np_hash_indices
from lightning_amortized.diffs import io
from lightning_amortized.diffs.attach import attach_diffs
from lightning_amortized.diffs.hashing import hash_indices
from lightning_amortized.diffs.lowrank import attach_lowrank, export_lowrank, merge_lowrank
from lightning_amortized.diffs.sparse import SparseDiff
from lightning_amortized.export import export_onnx
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder, SharedStateAmortizedEncoder

REPO = Path(__file__).resolve().parents[1]
N_MELS, STACK = 8, 2
TARGETS = ["encoder.core.encoder.rnn.rnn.weight_hh_l1", "encoder.core.fast.0.u", "head.weight", "head.bias"]


def tiny(hidden: int = 16) -> ASRModule:
    torch.manual_seed(0)
    enc = SharedStateAmortizedEncoder(RecurrentEncoder(N_MELS * STACK, hidden, 2), fast="lowrank", rank=4,
                                      frame_ms=20.0, device_flops_per_s=4e5)
    return ASRModule(enc, n_mels=N_MELS, stack=STACK).eval()


def make_diff(model: ASRModule, path: Path, method: str, seed: int, value_dtype: str = "fp32",
              names: list[str] = TARGETS) -> Path:
    """A diff with trained-looking values on a copy of ``model`` (what NeuralDiff leaves), exported."""
    work = copy.deepcopy(model)
    buckets = {n: max(1, work.get_parameter(n).numel() // 5) for n in names}
    diffs = attach_diffs(work, names, method, num_buckets=buckets, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for d in diffs.values():
            if isinstance(d, SparseDiff):
                d.delta.copy_(0.2 * torch.randn(d.delta.shape, generator=g))
                d.mask.copy_(torch.rand(d.mask.shape, generator=g) < 0.2)
                d.zero_pruned()
            else:
                d.buckets.copy_(0.2 * torch.randn(d.buckets.shape, generator=g))
    io.export_diff(work, path, value_dtype=value_dtype, seed=seed if method == "hashed" else None)
    return path


def weights(path: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(path / "weights.safetensors"))


def frames() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((50, N_MELS * STACK)).astype(np.float32)


def eager_logits(model: ASRModule, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    enc = model.encoder
    state, out, routes = enc.init_state(1), [], []
    with torch.no_grad():
        for t in range(x.shape[0]):
            y, state, c = enc.step_with_decision(torch.from_numpy(x[t : t + 1]), state)
            out.append(model.head(y)[0].numpy())
            routes.append(int(c[0]))
    return np.stack(out), routes


@pytest.fixture()
def exported(tmp_path: Path) -> tuple[ASRModule, Path]:
    model = tiny()
    export_onnx(model, tmp_path / "exp")
    return model, tmp_path / "exp"


def test_one_reader_of_the_format_for_both_sides() -> None:
    """The device runtime and the PyTorch side read files through lightning_amortized.diff_format:
    the same constants, the same error classes, the same value dtypes."""
    from lightning_amortized import diff_format

    for name in ("DiffError", "DiffFormatError", "DiffIntegrityError", "BaseMismatchError"):
        assert getattr(device_diffs, name) is getattr(io, name) is getattr(diff_format, name)
    assert io.FORMAT_NAME == diff_format.FORMAT_NAME and io.GAP_ESCAPE == diff_format.GAP_ESCAPE
    assert {k: np.dtype(v).name for k, v in device_diffs.VALUE_DTYPES.items()} == diff_format.VALUE_DTYPE_NAMES == {
        k: str(v).removeprefix("torch.") for k, v in io.VALUE_DTYPES.items()
    }


def test_numpy_hash_and_gap_decoder_equal_the_pytorch_ones() -> None:
    for name, numel, seed, k in (("w", 1000, 0, 7), ("encoder.x.weight", 4097, 2**40 + 3, 100), ("b", 1, 5, 1)):
        b_ref, s_ref = hash_indices(name, numel, seed, k)
        b, s = np_hash_indices(name, numel, seed, k)
        assert np.array_equal(b, b_ref.numpy()) and np.array_equal(s, s_ref.numpy())
    idx = torch.tensor([0, 1, 5, 1000, 1001, 70000])
    gaps, large = io.encode_gaps(idx, 80000)
    assert device_diffs.decode_gaps(gaps.numpy(), large.numpy(), 80000).tolist() == idx.tolist()
    with pytest.raises(DiffFormatError, match="escape byte"):
        device_diffs.decode_gaps(gaps.numpy(), large.numpy()[:0], 80000)


@pytest.mark.parametrize("method,value_dtype", [("sparse", "fp32"), ("sparse", "int8"), ("hashed", "fp16"),
                                                ("hashed", "fp32")])
def test_device_apply_equals_pytorch_merge_and_transcribes_the_same(exported, tmp_path: Path, method: str,
                                                                     value_dtype: str) -> None:
    model, path = exported
    diff = make_diff(model, tmp_path / "u1.safetensors", method, seed=1, value_dtype=value_dtype)
    ref = copy.deepcopy(model)
    io.merge(ref, diff)
    before = ExportedModel(path)  # opened before the update: its sessions hold the old weights
    info = apply_diff(path, diff)
    assert before.merged_spec is not None  # its merged graph, opened later, would read the new ones: refused
    with pytest.raises(ManifestError, match="changed since"):
        StreamingRecognizer(before)
    assert info.method == method and info.names == TARGETS
    state = ref.state_dict()
    new = weights(path)
    for name, a in new.items():
        assert np.array_equal(a, state[name].numpy()), name  # bit-exact
    assert any(not np.array_equal(new[n], model.state_dict()[n].numpy()) for n in TARGETS)
    # the updated runtime computes what PyTorch computes with the diff merged
    logits_ref, routes_ref = eager_logits(ref, frames())
    r = StreamingRecognizer(ExportedModel(path)).run_frames(frames())
    assert r.decisions == routes_ref and np.abs(r.logits - logits_ref).max() < 1e-5
    history = json.loads((path / "updates.json").read_text())
    assert history[-1]["result_sha256"] == info.result_sha256 and history[-1]["file"] == "u1.safetensors"


def test_chain_of_updates_in_order(exported, tmp_path: Path) -> None:
    model, path = exported
    ref = copy.deepcopy(model)
    files = []
    for k, method in enumerate(("sparse", "hashed", "sparse"), start=1):
        f = make_diff(ref, tmp_path / f"u{k}.safetensors", method, seed=k,
                      names=TARGETS[k - 1 :] if k < 3 else ["encoder.core.fast.1.v_ih"])
        io.merge(ref, f)
        files.append(f)
    before = (path / "weights.safetensors").read_bytes()
    with pytest.raises(BaseMismatchError, match="u2.safetensors' applies to a different base"):
        apply_chain(path, [files[1], files[0]])  # out of order: refused, nothing written
    assert (path / "weights.safetensors").read_bytes() == before
    apply_chain(path, files[:1])
    apply_chain(path, files[1:])  # 2..3 on top of 1
    state = ref.state_dict()
    assert all(np.array_equal(a, state[n].numpy()) for n, a in weights(path).items())
    assert [h["file"] for h in json.loads((path / "updates.json").read_text())] == ["u1.safetensors",
                                                                                    "u2.safetensors",
                                                                                    "u3.safetensors"]
    logits_ref, _ = eager_logits(ref, frames())
    assert np.abs(StreamingRecognizer(ExportedModel(path)).run_frames(frames()).logits - logits_ref).max() < 1e-5


def make_lowrank(model: ASRModule, path: Path, rank: int = 2, seed: int = 0) -> Path:
    """A LoRA update (the diffs' peer) with trained-looking factors on a copy of ``model``, exported."""
    work = copy.deepcopy(model).requires_grad_(False)
    deltas = attach_lowrank(work, TARGETS, rank=rank, alpha=2.0 * rank, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for d in deltas.values():
            for p in d.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    export_lowrank(work, path)
    return path


def test_lowrank_updates_apply_on_the_device_like_merge_lowrank(exported, tmp_path: Path) -> None:
    """The LoRA peer's files too: same arithmetic as PyTorch's merge_lowrank, chained with diffs, same refusals."""
    model, path = exported
    ref = copy.deepcopy(model)
    lora = make_lowrank(ref, tmp_path / "u1.safetensors", seed=1)
    merge_lowrank(ref, lora)
    diff = make_diff(ref, tmp_path / "u2.safetensors", "sparse", seed=2)  # a diff on top of the LoRA update
    io.merge(ref, diff)
    infos = apply_chain(path, [lora, diff])
    assert [i.method for i in infos] == ["lora", "sparse"] and infos[0].names == TARGETS
    assert infos[0].extra == {"rank": 2, "alpha": 4.0} and infos[0].file_bytes == lora.stat().st_size
    state = ref.state_dict()
    assert all(np.array_equal(a, state[n].numpy()) for n, a in weights(path).items())  # bit-exact
    logits_ref, routes_ref = eager_logits(ref, frames())
    r = StreamingRecognizer(ExportedModel(path)).run_frames(frames())
    assert r.decisions == routes_ref and np.abs(r.logits - logits_ref).max() < 1e-5
    before = (path / "weights.safetensors").read_bytes()
    with pytest.raises(BaseMismatchError, match="u1.safetensors' applies to a different base"):
        apply_diff(path, lora)  # already applied
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(lora.read_bytes()[:-20])
    with pytest.raises(DiffFormatError, match="truncated or corrupted"):
        apply_diff(path, truncated)
    assert (path / "weights.safetensors").read_bytes() == before


def _rewrite(src: Path, dst: Path, edit) -> Path:
    data = src.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + hlen :])
    return dst


def test_every_refusal_leaves_the_weights_untouched(exported, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model, path = exported
    good = make_diff(model, tmp_path / "good.safetensors", "sparse", seed=1)
    other = tiny()
    with torch.no_grad():
        other.head.bias.add_(1.0)
    wrong_base = make_diff(other, tmp_path / "wrong_base.safetensors", "sparse", seed=1)
    bigger = make_diff(tiny(hidden=20), tmp_path / "shape.safetensors", "sparse", seed=1)
    unknown = make_diff(ASRModule(RecurrentEncoder(N_MELS * STACK, 16, 1), n_mels=N_MELS, stack=STACK),
                        tmp_path / "names.safetensors", "sparse", seed=1, names=["encoder.rnn.rnn.weight_hh_l0"])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    edited = tmp_path / "edited.safetensors"
    blob = bytearray(good.read_bytes())
    blob[-2] ^= 0x01
    edited.write_bytes(bytes(blob))
    version = _rewrite(good, tmp_path / "v9.safetensors", lambda h: h["__metadata__"].update(format_version="9"))
    not_a_diff = _rewrite(good, tmp_path / "other.safetensors", lambda h: h["__metadata__"].update(format="x"))
    cases = [
        (wrong_base, BaseMismatchError, "applies to a different base"),
        (bigger, BaseMismatchError, "Shape or dtype mismatch"),
        (unknown, BaseMismatchError, "does not have"),
        (truncated, DiffFormatError, "not a readable safetensors file"),
        (edited, DiffIntegrityError, "failed its integrity check"),
        (version, DiffFormatError, "format version 9"),
        (not_a_diff, DiffFormatError, "not a lightning_amortized.diff file"),
        (tmp_path / "missing.safetensors", DiffFormatError, "Cannot read diff file"),
    ]
    before = (path / "weights.safetensors").read_bytes()
    for f, err, match in cases:
        with pytest.raises(err, match=match):
            apply_diff(path, f)
        with pytest.raises(err):
            apply_chain(path, [good, f])  # a bad link late in the chain: nothing written either
        assert (path / "weights.safetensors").read_bytes() == before, f.name
        assert not (path / "updates.json").exists()
        assert device_main(["apply", str(path), str(f)]) == 2
        line = capsys.readouterr().err
        assert line.startswith("lightning-amortized-device apply: error: ") and line.count("\n") == 1
    assert issubclass(BaseMismatchError, DiffError) and issubclass(DiffError, ValueError)
    # damaged exported weights are refused before any diff is read
    blob = bytearray(before)
    blob[-1] ^= 0xFF
    (path / "weights.safetensors").write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="integrity check"):
        apply_diff(path, good)
    (path / "weights.safetensors").write_bytes(before)
    assert device_main(["apply", str(path), str(good)]) == 0
    assert "applied" in capsys.readouterr().out


def test_apply_works_without_torch(exported, tmp_path: Path) -> None:
    from test_device import BLOCK_TORCH  # noqa: E402  (the same import block)

    model, path = exported
    diff = make_diff(model, tmp_path / "u1.safetensors", "hashed", seed=4, value_dtype="int8")
    ref = copy.deepcopy(model)
    io.merge(ref, diff)
    script = BLOCK_TORCH + textwrap.dedent(f"""
        from lightning_amortized.device import apply_diff
        info = apply_diff({str(path)!r}, {str(diff)!r})
        assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
        print(info.result_sha256)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == io.inspect_diff(diff).result_sha256
    state = ref.state_dict()
    assert all(np.array_equal(a, state[n].numpy()) for n, a in weights(path).items())


def test_a_damaged_history_refuses_before_the_weights_change(exported, tmp_path: Path, capsys) -> None:
    model, path = exported
    u1 = make_diff(model, tmp_path / "u1.safetensors", "sparse", seed=1)
    before = (path / "weights.safetensors").read_bytes()
    for damaged in ("[{\"file\": \"u0.safeten", "{}"):  # truncated JSON; JSON that is not a list
        (path / "updates.json").write_text(damaged)
        with pytest.raises(DiffError, match="update history .* is damaged"):
            apply_diff(path, u1)
        assert (path / "weights.safetensors").read_bytes() == before
        assert (path / "updates.json").read_text() == damaged  # its records are not dropped
        assert device_main(["apply", str(path), str(u1)]) == 2
        assert "is damaged" in capsys.readouterr().err
    (path / "updates.json").unlink()
    apply_diff(path, u1)
    after = (path / "weights.safetensors").read_bytes()
    with pytest.raises(BaseMismatchError, match="is already applied"):  # the same file twice
        apply_diff(path, u1)
    assert (path / "weights.safetensors").read_bytes() == after
    assert [h["file"] for h in device_diffs.read_history(path)] == ["u1.safetensors"]


def test_a_history_that_cannot_be_written_says_the_weights_changed(exported, tmp_path: Path, monkeypatch) -> None:
    model, path = exported
    u1 = make_diff(model, tmp_path / "u1.safetensors", "sparse", seed=1)
    (path / "updates.json").mkdir()  # a folder where the history belongs: unreadable, refused up front
    with pytest.raises(DiffError, match="is damaged"):
        apply_diff(path, u1)
    (path / "updates.json").rmdir()
    real = device_diffs.write_atomic

    def failing(target, data):  # noqa: ANN001 - the history write fails (disk full)
        if Path(target).name == "updates.json":
            raise OSError(28, "No space left on device")
        return real(target, data)

    monkeypatch.setattr(device_diffs, "write_atomic", failing)
    with pytest.raises(DiffError, match="were updated .* do not apply these files again"):
        apply_diff(path, u1)
    monkeypatch.undo()
    with pytest.raises(BaseMismatchError, match="is already applied"):
        apply_diff(path, u1)
