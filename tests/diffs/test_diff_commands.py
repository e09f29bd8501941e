"""`diff inspect|apply|export` command functions on real checkpoint files."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from lightning_amortized.diffs import attach_diffs, effective_tensor, export_diff, inspect_diff, merge
from lightning_amortized.diffs.checkpoints import fold_parametrized, load_checkpoint
from lightning_amortized.diffs.commands import main


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_apply_chain_to_lightning_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = net()
    torch.save({"epoch": 3, "state_dict": base.state_dict()}, tmp_path / "base.ckpt")
    trained = net()
    paths = []
    for k, names in enumerate([["0.weight"], ["2.weight", "2.bias"]]):
        d = attach_diffs(trained, names, "sparse")
        with torch.no_grad():
            for p in d.values():
                p.delta.normal_(0, 0.1)
        paths.append(tmp_path / f"u{k}.safetensors")
        export_diff(trained, paths[-1])
        merge(trained)
    argv = ["apply", "--base", str(tmp_path / "base.ckpt"), "--out", str(tmp_path / "dev.ckpt")]
    assert main(argv + ["--diff", str(paths[0]), "--diff", str(paths[1])]) == 0
    out = torch.load(tmp_path / "dev.ckpt", weights_only=True)
    assert out["epoch"] == 3
    assert all(torch.equal(out["state_dict"][k], v) for k, v in trained.state_dict().items())
    # applying update 0 again on top of the result: refused with exit code 2, nothing written
    assert main(["apply", "--base", str(tmp_path / "dev.ckpt"), "--out", str(tmp_path / "x.pt"), "--diff", str(paths[0])]) == 2
    assert "is already applied" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_export_from_two_checkpoints_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, tuned = net(), net()
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    safetensors.torch.save_file(base.state_dict(), tmp_path / "base.safetensors")
    torch.save(tuned.state_dict(), tmp_path / "tuned.pt")
    code = main([
        "export", "--base", str(tmp_path / "base.safetensors"), "--finetuned", str(tmp_path / "tuned.pt"),
        "--out", str(tmp_path / "u.safetensors"), "--budget", "0.25", "--dtype", "int8", "--targets", "*.weight",
    ])
    assert code == 0
    info = inspect_diff(tmp_path / "u.safetensors")
    n = 6 * 8 + 8 * 3
    assert info.stored == round(0.25 * n) and info.value_dtype == "int8"
    assert sorted(info.names) == ["0.weight", "2.weight"]
    # the kept entries are the largest |tuned - base|
    delta = torch.cat([(tuned.get_parameter(k) - base.get_parameter(k)).abs().reshape(-1) for k in ("0.weight", "2.weight")])
    threshold = delta.topk(info.stored).values.min()
    state, _ = load_checkpoint(tmp_path / "base.safetensors")
    assert main(["apply", "--base", str(tmp_path / "base.safetensors"), "--diff", str(tmp_path / "u.safetensors"),
                 "--out", str(tmp_path / "dev.safetensors")]) == 0
    dev, _ = load_checkpoint(tmp_path / "dev.safetensors")
    changed = sum(int((dev[k] != state[k]).sum()) for k in ("0.weight", "2.weight"))
    assert changed <= info.stored and threshold > 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "u.safetensors")]) == 0
    assert "sparse diff, int8 values" in capsys.readouterr().out
    assert main(["export", "--base", str(tmp_path / "base.safetensors"), "--finetuned", str(tmp_path / "tuned.pt"),
                 "--out", str(tmp_path / "v.safetensors"), "--targets", "nope.*"]) == 2
    assert "'nope.*' matches no parameter" in capsys.readouterr().err


def test_fold_parametrized_checkpoint_equals_forward_weights() -> None:
    for method in ("sparse", "hashed"):
        model = net()
        d = attach_diffs(model, ["0.weight", "2.bias"], method, num_buckets={"0.weight": 5, "2.bias": 2}, seed=9)
        with torch.no_grad():
            for p in d.values():
                (p.delta if method == "sparse" else p.buckets).normal_(0, 0.1)
                if method == "sparse":
                    p.mask.bernoulli_(0.5)
        folded = fold_parametrized(model.state_dict())
        assert sorted(folded) == ["0.bias", "0.weight", "2.bias", "2.weight"]
        for k in ("0.weight", "2.bias"):
            assert torch.equal(folded[k], effective_tensor(model, k))


class _RunsCode:
    """An object whose unpickling would create a file (what a malicious checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_checkpoints_are_read_without_unpickling_objects(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = net()
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": base.state_dict(), "hyper_parameters": {"x": _RunsCode(marker)}}, tmp_path / "evil.ckpt")
    assert not marker.exists()
    with pytest.raises(ValueError, match="holds pickled objects"):
        load_checkpoint(tmp_path / "evil.ckpt")
    export_diff(_with_diff(), tmp_path / "u.safetensors")
    argv = ["apply", "--base", str(tmp_path / "evil.ckpt"), "--diff", str(tmp_path / "u.safetensors"),
            "--out", str(tmp_path / "o.ckpt")]
    assert main(argv) == 2 and not marker.exists() and not (tmp_path / "o.ckpt").exists()
    assert "Cannot read checkpoint" in capsys.readouterr().err
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    data = (tmp_path / "evil.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    for bad in ("text.ckpt", "cut.ckpt", "missing.ckpt"):
        with pytest.raises(ValueError, match="Cannot read checkpoint|does not exist"):
            load_checkpoint(tmp_path / bad)
    safetensors.torch.save_file(base.state_dict(), tmp_path / "w.safetensors")
    state, container = load_checkpoint(tmp_path / "w.safetensors")  # plain tensors still read
    assert container is None and all(torch.equal(state[k], v) for k, v in base.state_dict().items())


def _with_diff() -> nn.Module:
    model = net()
    d = attach_diffs(model, ["0.weight"], "sparse")
    with torch.no_grad():
        d["0.weight"].delta.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_export_honours_a_byte_budget_when_the_kept_entries_are_far_apart(tmp_path: Path, dtype: str) -> None:
    from lightning_amortized.diffs.budget import entries_for_bytes

    torch.manual_seed(0)
    base = {"w": torch.randn(100, 300)}
    tuned = {"w": base["w"] + 1e-3 * torch.randn(100, 300)}
    tuned["w"].view(-1)[::300] += 1.0  # the largest changes 300 entries apart: every kept gap needs an escape
    torch.save(base, tmp_path / "base.pt")
    torch.save(tuned, tmp_path / "tuned.pt")
    budget = 1200  # 54-88 entries by the projection, fewer than the 100 far-apart ones
    out = tmp_path / "u.safetensors"
    assert main(["export", "--base", str(tmp_path / "base.pt"), "--finetuned", str(tmp_path / "tuned.pt"),
                 "--out", str(out), "--budget", str(budget), "--dtype", dtype]) == 0
    info = inspect_diff(out)
    assert out.stat().st_size == info.file_bytes <= budget
    projected = entries_for_bytes("sparse", dtype, {"w": 30_000}, budget, extra={"budget": budget})
    assert 1 <= info.stored < projected  # the first file was over: entries were dropped until it fit


def test_apply_to_safetensors_with_tied_weights(tmp_path: Path) -> None:
    from lightning_amortized.diffs import export_diff_from_weights

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mid, self.out = nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    torch.manual_seed(0)
    base = Tied().state_dict()
    torch.save(base, tmp_path / "base.pt")
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["mid.weight"] = tuned["mid.weight"] + 0.1
    export_diff_from_weights(base, tuned, ["mid.weight"], tmp_path / "u.safetensors", keep=4)
    assert main(["apply", "--base", str(tmp_path / "base.pt"), "--diff", str(tmp_path / "u.safetensors"),
                 "--out", str(tmp_path / "dev.safetensors")]) == 0
    dev = safetensors.torch.load_file(tmp_path / "dev.safetensors")
    assert torch.equal(dev["emb.weight"], base["emb.weight"]) and torch.equal(dev["out.weight"], base["out.weight"])
    assert int((dev["mid.weight"] != base["mid.weight"]).sum()) == 4


def test_an_integer_budget_too_small_for_one_entry_explains_bytes_and_fractions(tmp_path: Path, capsys) -> None:
    base, tuned = net(), net()
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    torch.save(tuned.state_dict(), tmp_path / "tuned.pt")
    assert main(["export", "--base", str(tmp_path / "base.pt"), "--finetuned", str(tmp_path / "tuned.pt"),
                 "--out", str(tmp_path / "u.safetensors"), "--budget", "1"]) == 2
    assert "an integer --budget is bytes" in capsys.readouterr().err and not (tmp_path / "u.safetensors").exists()
