"""Export to ONNX: the exported step graphs equal eager ``step`` frame by frame, routes identical."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_amortized.cli import main
from lightning_amortized.device import ExportedModel, StreamingRecognizer, weights_sha256
from lightning_amortized.diffs.io import weights_sha256 as torch_weights_sha256
from lightning_amortized.export import ExportError, export_onnx, verify_export
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder, SharedStateAmortizedEncoder

N_MELS, STACK = 8, 2  # input_size 16, 20 ms frames
TOL = 1e-5


def tiny(kind: str, rnn_type: str = "lstm", seed: int = 0) -> ASRModule:
    """A tiny randomly initialised CTC model: ``single``, ``lowrank``/``sparse``/``small`` AmNet, ``independent``."""
    torch.manual_seed(seed)
    F_ = N_MELS * STACK
    if kind == "single":
        enc = RecurrentEncoder(F_, 16, num_layers=2, rnn_type=rnn_type)
    elif kind == "loadaware":  # the arbitrator also sees log(rho) of the device
        enc = SharedStateAmortizedEncoder(RecurrentEncoder(F_, 16, 2, rnn_type=rnn_type), fast="lowrank", rank=4,
                                          frame_ms=20.0, device_flops_per_s=4e5, load_aware=True)
    elif kind == "noprev":  # an arbitrator without the previous gate: the traced graphs lack that input
        enc = SharedStateAmortizedEncoder(RecurrentEncoder(F_, 16, 2, rnn_type=rnn_type), fast="lowrank", rank=4,
                                          frame_ms=20.0, device_flops_per_s=4e5, use_prev_decision=False)
    elif kind == "independent":
        enc = AmortizedEncoder(RecurrentEncoder(F_, 8, 1), RecurrentEncoder(F_, 16, 2), projection=12,
                               frame_ms=20.0, device_flops_per_s=1e6)
    else:
        # a slow device (rho > 1 for the slow branch) so that the backlog matters for the decisions
        enc = SharedStateAmortizedEncoder(RecurrentEncoder(F_, 16, 2, rnn_type=rnn_type), fast=kind, rank=4,
                                          density=0.3, frame_ms=20.0, device_flops_per_s=4e5)
    return ASRModule(enc, n_mels=N_MELS, stack=STACK).eval()


def eager(model: ASRModule, x: torch.Tensor, force_branch: int | None = None):
    """Eager PyTorch streaming: outputs ``(T, D)``, logits ``(T, V)``, decisions ``(T,)``."""
    enc = model.encoder
    state = enc.init_state(1)
    ys, decisions = [], []
    with torch.no_grad():
        for t in range(x.shape[0]):
            if hasattr(enc, "step_with_decision"):
                y, state, c = enc.step_with_decision(x[t : t + 1], state, force_branch)
                decisions.append(int(c[0]))
            else:
                y, state = enc.step(x[t : t + 1], state)
                decisions.append(0)
            ys.append(y[0])
        y = torch.stack(ys)
        return y.numpy(), model.head(y).numpy(), decisions


@pytest.mark.parametrize(
    "kind,rnn_type",
    [("single", "lstm"), ("single", "gru"), ("lowrank", "lstm"), ("sparse", "lstm"), ("small", "lstm"),
     ("lowrank", "gru"), ("independent", "lstm"), ("loadaware", "lstm"), ("noprev", "lstm")],
)
def test_exported_steps_equal_eager_steps_and_routes(tmp_path: Path, kind: str, rnn_type: str) -> None:
    model = tiny(kind, rnn_type)
    manifest = export_onnx(model, tmp_path)
    runtime = ExportedModel(tmp_path)
    x = torch.randn(60, N_MELS * STACK, generator=torch.Generator().manual_seed(1))
    y_ref, logits_ref, routes_ref = eager(model, x)
    # shared-state AmNets also run as one merged graph per frame (the default); both ways equal eager
    merged = kind not in ("single", "independent")
    assert (manifest["merged_step"] is not None) == merged == (runtime.merged is not None)
    if merged:  # the manifest lists the graph's real inputs
        assert set(manifest["merged_step"]["inputs"]) == {i.name for i in runtime.merged.get_inputs()}
        assert ("prev_gate" in manifest["merged_step"]["inputs"]) == (kind != "noprev")
    for one_call in (None, False):
        result = StreamingRecognizer(runtime, one_call=one_call).run_frames(x.numpy())
        assert result.decisions == routes_ref  # identical routes, frame by frame
        assert np.abs(result.logits - logits_ref).max() < TOL
        assert np.isnan(result.arbitrator_ms).all() == (merged and one_call is None)
    if not merged:
        with pytest.raises(ValueError, match="one_call=True"):
            StreamingRecognizer(runtime, one_call=True)
    if kind != "single":
        assert manifest["kind"] == "amnet" and set(routes_ref) == {0, 1}  # both branches were exercised
    # encoder outputs and states, graph by graph, following the eager routes
    states = runtime.init_states()
    for t, k in enumerate(routes_ref):
        y, _ = runtime.step(k, x[t].numpy(), states)
        assert np.abs(y - y_ref[t]).max() < TOL


def test_backlog_the_arbitrator_sees_is_the_eager_backlog(tmp_path: Path) -> None:
    model = tiny("lowrank")
    export_onnx(model, tmp_path)
    x = torch.randn(40, N_MELS * STACK, generator=torch.Generator().manual_seed(2))
    enc = model.encoder
    state, backlogs = enc.init_state(1), []
    with torch.no_grad():
        for t in range(40):
            _, state, _ = enc.step_with_decision(x[t : t + 1], state)
            backlogs.append(float(state[1][0]))
    result = StreamingRecognizer(ExportedModel(tmp_path)).run_frames(x.numpy())
    assert result.backlog_ms == backlogs  # bit-identical float32 recursion
    assert max(backlogs) > 0


def test_forced_branch_export_is_a_single_graph(tmp_path: Path) -> None:
    model = tiny("lowrank")
    amnet = export_onnx(model, tmp_path)  # an AmNet export first: its graphs are replaced, not left beside
    model.encoder.force_branch = 0
    manifest = export_onnx(model, tmp_path)
    before = {g["file"] for g in amnet["graphs"].values()} | {amnet["arbitrator"]["file"]}
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == sorted(g["file"] for g in manifest["graphs"].values())
    assert len(before) > 1
    assert manifest["kind"] == "single" and manifest["arbitrator"] is None
    assert manifest["graphs"]["step"]["flops_per_frame"] == model.encoder.branch_flops()[0]
    x = torch.randn(20, N_MELS * STACK)
    _, logits_ref, _ = eager(model, x, force_branch=0)
    result = StreamingRecognizer(ExportedModel(tmp_path)).run_frames(x.numpy())
    assert np.abs(result.logits - logits_ref).max() < TOL and set(result.decisions) == {0}
    for branch in (0, 1):  # the slow branch alone too: the runtime reports its one graph as branch 0
        model.encoder.force_branch = branch
        export_onnx(model, tmp_path)
        check = verify_export(model, tmp_path, frames=10)
        assert check["routes_identical"] and check["max_abs_logit_diff"] < TOL, (branch, check)


def test_manifest_and_weights_file(tmp_path: Path) -> None:
    model = tiny("sparse")
    m = export_onnx(model, tmp_path, source="unit-test")
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == m
    assert m["format"] == "lightning_amortized.device" and m["format_version"] == 1
    assert m["frame_ms"] == 20.0 and m["features"]["stack"] == STACK and m["features"]["n_mels"] == N_MELS
    assert m["vocabulary"][0] == "<blank>" and "".join(m["vocabulary"][1:]) == model.tokenizer.alphabet
    assert m["states"] == {"h": {"shape": [2, 1, 16], "dtype": "float32", "init": "zeros"},
                           "c": {"shape": [2, 1, 16], "dtype": "float32", "init": "zeros"}}
    assert m["device_model"]["flops_per_s"] == 4e5
    assert [m["graphs"][b]["flops_per_frame"] for b in m["branches"]] == model.encoder.branch_flops()
    assert m["arbitrator"]["flops_per_frame"] == model.encoder.arbitrator.flops_per_frame()
    # the weights hold the model's tensors under its own names, and the hash is the diff files' hash
    import safetensors.numpy

    arrays = safetensors.numpy.load_file(str(tmp_path / "weights.safetensors"))
    state = model.state_dict()
    assert "encoder.core.fast.0.mask_ih" in arrays and "head.weight" in arrays
    for name, a in arrays.items():
        assert np.array_equal(a, state[name].numpy())
    assert m["weights"]["sha256"] == weights_sha256(arrays, arrays) == torch_weights_sha256(state, arrays)
    # the graphs keep no copy of the weights: they point into weights.safetensors
    import onnx

    for n in ("fast", "slow", "arbitrator", "amnet_step"):
        graph = onnx.load(str(tmp_path / f"{n}.onnx"), load_external_data=False).graph
        weights_read = [i for i in graph.initializer if i.name in arrays]
        assert weights_read and all(i.data_location == onnx.TensorProto.EXTERNAL and not i.raw_data
                                    for i in weights_read), n
    graph_bytes = sum((tmp_path / f"{n}.onnx").stat().st_size for n in ("fast", "slow", "arbitrator"))
    assert graph_bytes < m["weights"]["bytes"]
    assert m["merged_step"]["file"] == "amnet_step.onnx" and m["merged_step"]["inputs"]["mask"] == [1, 2]
    assert m["merged_step"]["states"] == m["graphs"]["slow"]["states"]


def test_unsupported_models_are_refused_and_nothing_written(tmp_path: Path) -> None:
    from lightning_amortized.nn import ConformerEncoderAdapter

    with pytest.raises(ExportError, match="Cannot export encoder ConformerEncoderAdapter"):
        export_onnx(ASRModule(ConformerEncoderAdapter(240, d_model=16, num_layers=1, nhead=2, d_ffn=16)), tmp_path / "a")
    with pytest.raises(ExportError, match="Only CTC models"):
        export_onnx(ASRModule(RecurrentEncoder(240, 8, 1), loss="rnnt", rnnt_pred_size=8, rnnt_joint_size=8),
                    tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    for bad in (-5.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ExportError, match="`device_flops_per_s` to be None or a positive finite"):
            export_onnx(ASRModule(RecurrentEncoder(240, 8, 1)), tmp_path / "c", device_flops_per_s=bad)
    assert not (tmp_path / "c").exists()
    assert export_onnx(ASRModule(RecurrentEncoder(240, 8, 1)), tmp_path / "d",
                       device_flops_per_s=1e6)["device_model"]["flops_per_s"] == 1e6


def test_unreadable_checkpoints_are_refused_with_one_message(tmp_path: Path) -> None:
    from lightning_amortized.export import load_for_export

    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    data = _cli_checkpoint(tmp_path).read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    for name in ("text.ckpt", "cut.ckpt"):
        with pytest.raises(ExportError, match="Cannot load .* as an ASRModule checkpoint"):
            load_for_export(tmp_path / name)


def test_a_checkpoint_saved_with_a_neural_diff_attached_exports_its_folded_weights(tmp_path: Path) -> None:
    from lightning_amortized.diffs import attach_diffs, effective_tensor
    from lightning_amortized.export import load_for_export

    plain = torch.load(_cli_checkpoint(tmp_path), weights_only=True)
    model = ASRModule.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu", weights_only=True)
    d = attach_diffs(model, ["head.weight"], "sparse")
    with torch.no_grad():
        d["head.weight"].delta.fill_(0.25)
    torch.save({**plain, "state_dict": model.state_dict()}, tmp_path / "with_diff.ckpt")  # parametrizations.* keys
    loaded = load_for_export(tmp_path / "with_diff.ckpt")
    assert torch.equal(loaded.head.weight, effective_tensor(model, "head.weight"))
    assert not any(".parametrizations." in k for k in loaded.state_dict())


def _cli_checkpoint(tmp_path: Path, extra: tuple[str, ...] = ()) -> Path:
    from lightning_amortized.cli import ASRLightningCLI

    conf = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "conf" / "amnet_factorized.yaml"
    cli = ASRLightningCLI(
        args=["--config", str(conf), "--data.init_args.root", str(tmp_path / "corpus"),
              "--model.encoder.init_args.encoder.init_args.hidden_size", "16",
              "--model.encoder.init_args.encoder.init_args.num_layers", "2",
              "--model.encoder.init_args.rank", "4", "--trainer.default_root_dir", str(tmp_path), *extra],
        run=False,
    )
    path = tmp_path / "m.ckpt"
    container = {"state_dict": cli.model.state_dict(), "hyper_parameters": dict(cli.model.hparams),
                 "pytorch-lightning_version": pl.__version__}
    cli.model.on_save_checkpoint(container)  # what Trainer.save_checkpoint adds (the SentencePiece model)
    torch.save(container, path)
    return path


def test_a_checkpoint_whose_sentencepiece_model_moved_exports_with_the_copy_it_carries(tmp_path: Path) -> None:
    from lightning_amortized.data.tokenizer import train_sentencepiece
    from lightning_amortized.export import load_for_export

    sp = train_sentencepiece(["SET A TIMER", "SET AN ALARM", "CALL MOM", "PLAY SOME JAZZ"] * 20,
                             tmp_path / "units.model", vocab_size=30)
    ckpt = _cli_checkpoint(tmp_path, ("--model.tokenizer", str(sp), "--data.init_args.tokenizer", str(sp)))
    vocabulary = load_for_export(ckpt).tokenizer.vocabulary
    Path(sp).rename(tmp_path / "moved.model")
    assert load_for_export(ckpt).tokenizer.vocabulary == vocabulary
    assert main(["export", str(ckpt), "--out", str(tmp_path / "exp")]) == 0
    with pytest.raises(ExportError, match="is a folder; pass the checkpoint file"):
        load_for_export(tmp_path)


def test_export_command_on_a_lightningcli_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _cli_checkpoint(tmp_path)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "exp")]) == 0
    out = capsys.readouterr().out
    assert "amnet model" in out and "routes identical: True" in out
    m = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert m["routing"] == "shared_state" and m["device_model"]["flops_per_s"] == 69.54e6
    assert m["source"] == str(ckpt)
    # errors: one line, status 2
    assert main(["export", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("lightning-amortized export: error: Checkpoint")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": tiny("single").state_dict(), "hyper_parameters": {"n_mels": N_MELS},
                "pytorch-lightning_version": pl.__version__}, plain)
    assert main(["export", str(plain), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-amortized export: error: ") and "encoder" in err and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["lowrank", "loadaware"])
def test_another_device_speed_routes_like_set_device(tmp_path: Path, kind: str) -> None:
    model = tiny(kind)
    with torch.no_grad():  # make the backlog, load and previous-gate inputs dominate the frame's
        model.encoder.arbitrator.hidden.weight[:, N_MELS * STACK :] *= 50.0
    m = export_onnx(model, tmp_path)
    assert m["arbitrator"]["load_aware"] == (kind == "loadaware") and ("load" in m["arbitrator"]["inputs"]) == (
        kind == "loadaware")
    x = torch.randn(60, N_MELS * STACK, generator=torch.Generator().manual_seed(4))
    runtime = ExportedModel(tmp_path)
    routes = {}
    for dev in (4e5, 2e6):
        model.encoder.set_device(dev)
        _, logits_ref, routes_ref = eager(model, x)
        r = StreamingRecognizer(runtime, device_flops_per_s=dev).run_frames(x.numpy())
        assert r.decisions == routes_ref and np.abs(r.logits - logits_ref).max() < TOL
        routes[dev] = routes_ref
    if kind == "loadaware":
        assert routes[4e5] != routes[2e6]  # the arbitrator sees the device's load
    with pytest.raises(ValueError, match="`device_flops_per_s`"):
        StreamingRecognizer(runtime, device_flops_per_s=0.0)


def test_export_and_verify_keep_each_submodules_mode(tmp_path: Path) -> None:
    """Both put the model in eval and used to bring it back with model.train(was), flattening frozen submodules."""
    from lightning_amortized.export import verify_export

    model = tiny("lowrank").train()
    model.encoder.arbitrator.eval()  # frozen
    export_onnx(model, tmp_path)
    assert model.training and not model.encoder.arbitrator.training
    verify_export(model, tmp_path)
    assert model.training and not model.encoder.arbitrator.training


def test_verify_export_restores_the_mode_when_it_fails_early(tmp_path: Path) -> None:
    from lightning_amortized.export import verify_export

    model = tiny("lowrank").train()
    export_onnx(model, tmp_path)
    with pytest.raises(RuntimeError):
        verify_export(model, tmp_path, frames=-1)
    assert model.training
