"""The device runtime: features, the backlog rule, streaming, the CLI, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lightning_amortized.backlog_rule import eou_latency_ms, next_backlog
from lightning_amortized.data.features import LogMelFilterbank
from lightning_amortized.device import (
    ExportedModel,
    FeatureStream,
    LogMel,
    ManifestError,
    StreamingRecognizer,
    WeightsError,
    ctc_greedy,
)
from lightning_amortized.device import runtime as runtime_module
from lightning_amortized.device.cli import main as device_main
from lightning_amortized.export import export_onnx
from lightning_amortized.functional.backlog import backlog, eou_latency
from lightning_amortized.module import ASRModule
from lightning_amortized.nn import RecurrentEncoder, SharedStateAmortizedEncoder

REPO = Path(__file__).resolve().parents[1]
N_MELS, STACK = 8, 2


def wavs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) * np.exp(-t) + 0.01 * rng.standard_normal(t.size)
    return [(0.1 * rng.standard_normal(16000)).astype(np.float32), chirp.astype(np.float32),
            (0.05 * rng.standard_normal(9123)).astype(np.float32)]


@pytest.fixture(scope="module")
def amnet_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[ASRModule, Path]:
    torch.manual_seed(3)
    enc = SharedStateAmortizedEncoder(RecurrentEncoder(N_MELS * STACK, 16, 2), fast="lowrank", rank=4,
                                      frame_ms=20.0, device_flops_per_s=4e5)
    model = ASRModule(enc, n_mels=N_MELS, stack=STACK).eval()
    out = tmp_path_factory.mktemp("amnet")
    export_onnx(model, out)
    return model, out


# -- features ------------------------------------------------------------------------------------


def test_numpy_logmel_matches_training_features() -> None:
    import torchaudio

    from lightning_amortized.device.features import mel_filterbank

    ref_fb = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 80, 16000, None, "htk").numpy()
    assert np.abs(mel_filterbank(257, 0.0, 8000.0, 80, 16000) - ref_fb).max() < 1e-5
    for wav in wavs():
        ref, n = LogMelFilterbank()(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        got = LogMel()(wav)
        assert got.shape == tuple(ref[0].shape) and got.shape[0] == int(n[0]) == len(wav) // 160 + 1
        diff = np.abs(got - ref[0].numpy())
        # torch computes the STFT in float32, we in float64: differences are float32 rounding
        assert diff.max() < 2e-3 and diff.mean() < 2e-5


@pytest.mark.parametrize("chunk", [1, 160, 1600, 4801])
def test_chunked_features_equal_offline_features(chunk: int) -> None:
    wav = wavs()[1]
    fb = LogMel()
    stream = FeatureStream(fb)
    parts = [stream.accept(wav[i : i + chunk]) for i in range(0, len(wav), chunk)]
    ready_before_end = sum(len(p) for p in parts)
    frames = np.concatenate(parts + [stream.finish()])
    offline = fb(wav, normalize=False)
    assert frames.shape == offline.shape
    assert np.array_equal(frames.astype(np.float32), offline)
    assert ready_before_end == (len(wav) - 256) // 160 + 1  # every frame whose window is complete


def test_the_last_frame_always_waits_for_finish() -> None:
    """What the runtime's last-frame rule (latency guard) relies on, for every audio length."""
    fb = LogMel()
    rng = np.random.default_rng(0)
    for n in range(257, 257 + 3 * 160):
        stream = FeatureStream(fb)
        stream.accept(rng.standard_normal(n))
        assert len(stream.finish()) >= 1, n
    with pytest.raises(ValueError, match=r"`n_fft // 2` \(100\) to be at least `hop_length` \(160\)"):
        LogMel({"n_fft": 200, "win_length": 200})


# -- the backlog rule ----------------------------------------------------------------------------


def test_backlog_rule_by_hand_and_equal_to_functional() -> None:
    b, out = 0.0, []
    for c in (40.0, 40.0, 10.0, 50.0, 20.0):
        b = next_backlog(b, c, 30.0)
        out.append(b)
    assert out == [10.0, 20.0, 0.0, 20.0, 10.0]
    assert eou_latency_ms([40.0, 40.0, 10.0, 50.0, 20.0], 30.0) == 40.0
    costs = torch.rand(1, 200) * 60.0
    ref = backlog(costs, 30.0)[0].tolist()
    b, mine = np.float32(0.0), []
    for c in costs[0].numpy():
        b = next_backlog(b, c, np.float32(30.0))
        mine.append(float(b))
    assert mine == ref  # float32 on both sides: bit-identical
    assert eou_latency_ms(costs[0].tolist(), 30.0) == pytest.approx(float(eou_latency(costs, 30.0)[0]), rel=1e-6)
    with pytest.raises(ValueError, match="at least one frame"):
        eou_latency_ms([], 30.0)


# -- the recognizer ------------------------------------------------------------------------------


def test_streamed_audio_transcribes_like_asrmodule(amnet_dir) -> None:
    model, path = amnet_dir
    runtime = ExportedModel(path)
    rec = StreamingRecognizer(runtime)
    fb = LogMelFilterbank(n_mels=N_MELS)
    for wav in wavs():
        feats, n = fb(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        with torch.no_grad():
            x, _ = model.stacker(feats, n)
            y, _ = model.encoder(x, torch.tensor([x.shape[1]]))
            ref_logits = model.head(y)[0].numpy()
            ref_routes = model.encoder.last_routing.decisions[0].tolist()
        for chunk_ms in (10.0, 100.0):
            r = rec.transcribe(wav, chunk_ms=chunk_ms)
            assert r.text == model.transcribe(feats, n)[0]
            assert r.decisions == ref_routes
            assert np.abs(r.logits - ref_logits).max() < 1e-3  # float32 vs float64 features
            assert len(r.frame_compute_ms) == x.shape[1] and r.ms_per_frame > 0 and r.rtf > 0
            assert r.audio_ms == pytest.approx(1000.0 * len(wav) / 16000)
            assert r.eou_ms >= r.frame_compute_ms[-1]


def test_running_normalisation_gives_partials_before_the_end(amnet_dir) -> None:
    _, path = amnet_dir
    rec = StreamingRecognizer(ExportedModel(path), normalize="running")
    wav = wavs()[1]
    for i in range(0, len(wav), 1600):
        rec.accept(wav[i : i + 1600])
    frames_before_end = len(rec._decisions)
    r = rec.finish()
    assert frames_before_end >= len(r.decisions) - 2  # all but the last frames ran while audio arrived
    assert r.finish_ms >= 0 and len(r.decisions) == (len(wav) // 160 + 1 + STACK - 1) // STACK
    # "utterance" mode waits for the end
    rec = StreamingRecognizer(ExportedModel(path))
    rec.accept(wav)
    assert rec.partial() == "" and len(rec._decisions) == 0


def test_measured_backlog_and_forced_branches(amnet_dir) -> None:
    _, path = amnet_dir
    runtime = ExportedModel(path)
    x = np.random.default_rng(0).standard_normal((30, N_MELS * STACK)).astype(np.float32)
    for k in (0, 1):
        r = StreamingRecognizer(runtime, force_branch=k).run_frames(x)
        assert set(r.decisions) == {k}
    r = StreamingRecognizer(runtime, backlog="measured").run_frames(x)
    # the backlog follows the compute time measured per frame (not the simulated device), whatever the machine's load
    b, expected = np.float32(0.0), []
    for spent in r.frame_compute_ms:
        b = next_backlog(b, np.float32(spent), np.float32(runtime.frame_ms))
        expected.append(float(b))
    assert r.backlog_ms == expected and len(r.decisions) == 30
    with pytest.raises(ValueError, match="`normalize`"):
        StreamingRecognizer(runtime, normalize="global")
    with pytest.raises(ValueError, match="`force_branch`"):
        StreamingRecognizer(runtime, force_branch=2)


@pytest.mark.parametrize("normalize", ["utterance", "running"])
def test_latency_guard_routes_like_pytorch_and_bounds_every_utterance(
    normalize: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(4)
    enc = SharedStateAmortizedEncoder(RecurrentEncoder(N_MELS * STACK, 16, 2), fast="lowrank", rank=4,
                                      frame_ms=20.0, device_flops_per_s=4e5, latency_guard=3.0)
    with torch.no_grad():
        enc.arbitrator.out.bias.copy_(torch.tensor([-5.0, 5.0]))  # an arbitrator that wants the slow branch
    model = ASRModule(enc, n_mels=N_MELS, stack=STACK).eval()
    export_onnx(model, tmp_path / "guarded")  # verifies the runtime's routes against PyTorch's step
    runtime = ExportedModel(tmp_path / "guarded")
    assert runtime.latency_guard == 3.0
    manifest = json.loads((tmp_path / "guarded" / "manifest.json").read_text())
    assert manifest["format_version"] == 2  # a runtime that knows only version 1 refuses it, not ignores the guard
    monkeypatch.setattr(runtime_module, "SUPPORTED_EXPORT_VERSIONS", (1,))
    with pytest.raises(ManifestError, match="version 2"):
        ExportedModel(tmp_path / "guarded")
    monkeypatch.undo()
    dev = 4e5
    costs = [(runtime.arbitrator_flops + f) * 1000.0 / dev for f in runtime.branch_flops]
    floor = min(costs)
    assert floor <= 20.0 and 0.0 < costs[1] - 20.0 <= 2.0 * floor  # a slow frame fits the cap from no backlog
    x = np.random.default_rng(1).standard_normal((25, N_MELS * STACK)).astype(np.float32)
    frames = StreamingRecognizer(runtime).run_frames(x)  # the merged graph, the guard's verdict as its mask input
    assert runtime.merged is not None
    with torch.no_grad():
        model.encoder(torch.from_numpy(x)[None], torch.tensor([25]))
    assert frames.decisions == model.encoder.last_routing.decisions[0].tolist()
    assert StreamingRecognizer(runtime, one_call=False).run_frames(x).decisions == frames.decisions
    with pytest.raises(ValueError, match="conflict"):  # the merged graph always runs the arbitrator
        StreamingRecognizer(runtime, one_call=True, force_branch=0)
    assert not StreamingRecognizer(runtime, force_branch=0).one_call
    # a damaged merged graph: the folder still opens and the two-call path still runs; the one-call path refuses
    import shutil

    shutil.copytree(tmp_path / "guarded", tmp_path / "cut")
    step = tmp_path / "cut" / "amnet_step.onnx"
    step.write_bytes(step.read_bytes()[: step.stat().st_size // 2])
    cut = ExportedModel(tmp_path / "cut")
    assert StreamingRecognizer(cut, one_call=False).run_frames(x).decisions == frames.decisions
    with pytest.raises(ManifestError, match="amnet_step.onnx"):
        StreamingRecognizer(cut)
    fb = LogMelFilterbank(n_mels=N_MELS)
    slow_frames = 0
    for wav in wavs():
        feats, n = fb(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        with torch.no_grad():
            x, _ = model.stacker(feats, n)
            model.encoder(x, torch.tensor([x.shape[1]]))
        ref_routes = model.encoder.last_routing.decisions[0].tolist()
        for guard in ("model", None):
            r = StreamingRecognizer(runtime, normalize=normalize, latency_guard=guard).transcribe(wav, chunk_ms=100.0)
            eou = eou_latency_ms([costs[d] for d in r.decisions], 20.0)
            if guard == "model":
                assert r.decisions[-1] == 0 and eou <= 3.0 * floor * (1 + 1e-5)
                if normalize == "utterance":  # the training features: the same routes as PyTorch's forward
                    assert r.decisions == ref_routes
                slow_frames += sum(r.decisions)
            else:  # unguarded, the same arbitrator ends utterances far later
                assert eou > 3.0 * floor
    assert slow_frames > 0  # the guard let slow frames through where the cap allowed them
    with pytest.raises(ValueError, match="latency guard"):
        StreamingRecognizer(runtime, latency_guard=0.5)


def test_ctc_greedy() -> None:
    vocab = ["<blank>", " ", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    assert ctc_greedy(np.array([0, 10, 10, 0, 10, 11, 0, 1, 1, 0, 3]), vocab) == "HHI A"
    assert ctc_greedy(np.array([1, 1, 0]), vocab) == ""


def test_bad_exports_are_refused(amnet_dir, tmp_path: Path) -> None:
    import shutil

    _, path = amnet_dir
    with pytest.raises(ManifestError, match="no readable manifest.json"):
        ExportedModel(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "slow.onnx").unlink()
    with pytest.raises(ManifestError, match="graph file 'slow.onnx' is missing"):
        ExportedModel(broken)
    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    blob = bytearray((damaged / "weights.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (damaged / "weights.safetensors").write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="failed its integrity check"):
        ExportedModel(damaged)
    m = json.loads((path / "manifest.json").read_text())
    assert m["format_version"] == 1  # nothing in it that a version-1 runtime would ignore
    m["format_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="version 99"):
        ExportedModel(broken)


# -- command line --------------------------------------------------------------------------------


def test_transcribe_command(amnet_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, path = amnet_dir
    files = []
    for i, wav in enumerate(wavs()):
        f = tmp_path / f"u{i}.flac"
        sf.write(f, wav, 16000, subtype="PCM_16")
        files.append(str(f))
    assert device_main(["transcribe", str(path), *files, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == files
    assert device_main(["transcribe", str(path), *files, "--json", "--two-calls"]) == 0  # arbitrator, then branch
    two_calls = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rec = StreamingRecognizer(ExportedModel(path))
    for f, row, row2 in zip(files, rows, two_calls):
        wav, _ = sf.read(f, dtype="float32")
        assert row["text"] == rec.transcribe(wav).text and row["ms_per_frame"] > 0 and 0 <= row["slow_share"] <= 1
        assert (row2["text"], row2["slow_share"]) == (row["text"], row["slow_share"])
    assert device_main(["info", str(path)]) == 0
    info = capsys.readouterr().out
    assert "amnet (shared_state)" in info and "one call per frame (amnet_step.onnx)" in info
    # errors: one line, exit status 2
    sf.write(tmp_path / "8k.wav", np.zeros(8000, np.float32), 8000)
    for argv in (["transcribe", str(path), str(tmp_path / "8k.wav")], ["transcribe", str(tmp_path), files[0]],
                 ["transcribe", str(path), str(tmp_path / "missing.flac")]):
        assert device_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("lightning-amortized-device transcribe: error: ") and err.count("\n") == 1
    assert device_main(["transcribe", str(path), str(tmp_path / "8k.wav")]) == 2
    assert "sampled at 8000 Hz; the model expects 16000 Hz" in capsys.readouterr().err
    corrupt = wavs()[0].copy()
    corrupt[100] = np.nan
    sf.write(tmp_path / "nan.wav", corrupt, 16000, subtype="FLOAT")
    assert device_main(["transcribe", str(path), str(tmp_path / "nan.wav")]) == 2
    assert "nan.wav': 1 of" in capsys.readouterr().err
    assert device_main(["frobnicate"]) == 2
    assert device_main(["transcribe", str(path), files[0], "--chunk-ms", "inf"]) == 2
    assert "--chunk-ms must be a positive finite number" in capsys.readouterr().err
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    graph = damaged / "slow.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    assert device_main(["transcribe", str(damaged), files[0]]) == 2
    err = capsys.readouterr().err
    assert "ONNX Runtime cannot load graph file 'slow.onnx'" in err and err.count("\n") == 1
    # the latency guard from the command line: a factor, "off", or the model's (default; this model has none)
    wav1 = sf.read(files[1], dtype="float32")[0]
    unguarded = rec.transcribe(wav1)
    guarded = StreamingRecognizer(ExportedModel(path), latency_guard=1.0).transcribe(wav1)
    assert guarded.decisions != unguarded.decisions
    for flag, ref in (("1", guarded), ("off", unguarded), ("model", unguarded)):
        assert device_main(["transcribe", str(path), files[1], "--json", "--latency-guard", flag]) == 0
        row = json.loads(capsys.readouterr().out)
        assert row["slow_share"] == round(ref.slow_share(1), 4), flag
    with pytest.raises(SystemExit):
        device_main(["transcribe", str(path), files[1], "--latency-guard", "0.5"])
    assert "expected a number >= 1" in capsys.readouterr().err


# -- no torch on the device ----------------------------------------------------------------------

BLOCK_TORCH = """
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "lightning", "torchaudio", "torchmetrics", "speechbrain"):
            raise ImportError(f"{name} is not available on the device")
        return None

sys.meta_path.insert(0, _Block())
"""


def test_device_runtime_runs_with_torch_blocked(amnet_dir, tmp_path: Path) -> None:
    _, path = amnet_dir
    wav = tmp_path / "u.flac"
    sf.write(wav, wavs()[0], 16000, subtype="PCM_16")
    script = BLOCK_TORCH + textwrap.dedent(f"""
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the block did not work")
        import json, shutil
        from lightning_amortized.device import ExportedModel, StreamingRecognizer, apply_chain, read_audio
        from lightning_amortized.device.cli import main
        rec = StreamingRecognizer(ExportedModel({str(path)!r}))
        r = rec.transcribe(read_audio({str(wav)!r}, 16000))
        assert main(["transcribe", {str(path)!r}, {str(wav)!r}]) == 0
        assert main(["info", {str(path)!r}]) == 0
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "lightning")]
        print(json.dumps({{"text": r.text, "frames": len(r.decisions)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = StreamingRecognizer(ExportedModel(path)).transcribe(wavs()[0])
    assert out == {"text": ref.text, "frames": len(ref.decisions)}


def test_audio_that_is_not_mono_finite_samples_is_refused(amnet_dir) -> None:
    _, path = amnet_dir
    rec = StreamingRecognizer(ExportedModel(path))
    wav = wavs()[0]
    corrupt = wav.copy()
    corrupt[5] = np.inf
    for bad, match in ((np.stack([wav, wav], 1), r"transcribe\(wav\): expected mono audio.*shape \(\d+, 2\)"),
                       ((wav * 32767).astype(np.int16), r"dtype int16; .*scale integer PCM"),
                       (corrupt, r"transcribe\(wav\): 1 of \d+ samples are NaN or Inf"),
                       (np.array(0.5), "expected mono audio")):
        with pytest.raises(ValueError, match=match):
            rec.transcribe(bad)
    rec.reset()
    with pytest.raises(ValueError, match=r"accept\(samples\): expected mono audio"):
        rec.accept(np.stack([wav[:160], wav[:160]], 1))
    assert rec.transcribe(wav).text == StreamingRecognizer(ExportedModel(path)).transcribe(wav).text  # still usable

