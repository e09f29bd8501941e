"""Export a trained :class:`~lightning_amortized.module.ASRModule` for a device: ONNX step graphs + manifest.

What is written to ``out_dir`` (layout and state conventions in ``docs/device.md``):

* ``manifest.json``: feature settings, frame length, vocabulary, state names and
  shapes, every graph's inputs and outputs, FLOPs per frame of each branch and of the
  arbitrator, the simulated device the arbitrator was trained for, the SHA-256 of the
  weights and the export format.
* one ONNX graph per single-frame step, with the recurrent state as explicit inputs and
  outputs: for a single encoder ``step.onnx``; for an AmNet ``arbitrator.onnx``,
  ``fast.onnx`` and ``slow.onnx``. Each branch graph includes the CTC output layer:
  ``(x (1, F), state...) -> (y (1, D), logits (1, V), state_out...)``. The arbitrator graph
  is ``(x (1, F), backlog_ms (1,), prev_gate (1, K)[, load (1,)]) -> logits (1, K)`` (``load``:
  ``log rho`` of the device, load-aware arbitrators only); the backlog lives on the host,
  which runs the same rule as :mod:`lightning_amortized.functional`.
* shared-state AmNets also get ``amnet_step.onnx`` (manifest ``merged_step``): the arbitrator
  and both branches in one graph whose ``If`` node runs the chosen branch, with the host's
  latency-guard verdict as an extra input ``mask (1, 2)`` and ``choice (1,)`` as an extra
  output (:mod:`lightning_amortized.export.merged`): one runtime call per frame instead of two.
* ``weights.safetensors``: every trained tensor the graphs read, under its
  ``ASRModule`` parameter name (``encoder.rnn.rnn.weight_ih_l0``, ``head.weight``, ...).
  The graphs hold no copy: their initializers are ONNX *external data* pointing into this
  file, so a neural diff applied to it (``lightning_amortized.device.apply_diff``) is what
  the graphs compute with. The names are those the diff files use.

The graphs are traced with the TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``; it still works in torch 2.11 and keeps parameter names as initializer
names when constant folding is off), opset 17. The recurrent cells are written out as
matrix products and pointwise ops rather than ONNX ``LSTM`` nodes, so that every weight
keeps its PyTorch layout and name.

Example::

    >>> from lightning_amortized.module import ASRModule  # doctest: +SKIP
    >>> model = ASRModule.load_from_checkpoint("best.ckpt")  # doctest: +SKIP
    >>> manifest = export_onnx(model, "exported/")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_amortized.atomic import write_atomic
from lightning_amortized.errors import first_line
from lightning_amortized.nn.modes import eval_mode
from lightning_amortized.export.merged import MERGED_FILE, merge_shared_state_step
from lightning_amortized.export.onnx_io import OPSET, WEIGHTS_FILE, _collect, _externalize, _safetensors_layout, _trace
from lightning_amortized.export.steps import ExportError, _ArbitratorStep, _BranchStep, _plan, _state_shape

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "WEIGHTS_FILE",
    "ExportError",
    "export_onnx",
    "load_for_export",
    "manifest_version",
    "verify_export",
]

EXPORT_FORMAT = "lightning_amortized.device"
#: The newest manifest version this package writes. A manifest carries the lowest version whose
#: readers apply everything in it: 1, or 2 when the arbitrator has a latency guard (a runtime
#: that only knows version 1 would route without it, so it refuses the model instead).
EXPORT_FORMAT_VERSION = 2
WEIGHTS_FORMAT = "lightning_amortized.device.weights"


def export_onnx(
    model: nn.Module,
    out_dir: str | Path,
    *,
    sample_rate: int = 16000,
    device_flops_per_s: float | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Write the streaming model as ONNX step graphs, ``weights.safetensors`` and ``manifest.json``.

    Args:
        model: A CTC :class:`~lightning_amortized.module.ASRModule` whose encoder is a
            ``RecurrentEncoder``, a ``SharedStateAmortizedEncoder`` or an ``AmortizedEncoder``
            over ``RecurrentEncoder`` branches (``force_branch`` set: exported as one graph).
        out_dir: Folder to write (created; existing export files are replaced atomically).
        sample_rate: Audio rate in Hz the features expect.
        device_flops_per_s: Simulated device speed for single encoders (FLOP/s); AmNets
            record the device their arbitrator was trained for. Default 650 MFLOP/s.
        source: Where the weights came from (e.g. the checkpoint path), recorded in the manifest.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        ExportError: unsupported encoder or loss, or a device speed that is not a positive
            finite number; nothing is written.
    """
    import math

    import safetensors.numpy

    from lightning_amortized.device.weights import weights_sha256
    from lightning_amortized.functional.backlog import DEFAULT_DEVICE_FLOPS_PER_S

    if device_flops_per_s is not None and not (
        isinstance(device_flops_per_s, (int, float)) and math.isfinite(device_flops_per_s) and device_flops_per_s > 0
    ):
        raise ExportError(
            f"Expected argument `device_flops_per_s` to be None or a positive finite FLOP/s, but got "
            f"{device_flops_per_s!r}."
        )
    plan = _plan(model)
    out = Path(out_dir)
    modes = ExitStack()  # every submodule's own mode comes back
    modes.enter_context(eval_mode(model))
    try:
        state = dict(model.state_dict(keep_vars=False))
        in_size = int(model.encoder.input_size)
        vocab = int(model.head.out_features)
        x = torch.zeros(1, in_size)
        graphs: dict[str, Any] = {}
        protos: dict[str, Any] = {}
        weights: dict[str, Any] = {}
        state_shapes: dict[str, list[int]] = {}
        for b in plan["branches"]:
            shape = _state_shape(b["encoder"])
            for s in b["states"]:
                state_shapes[s] = shape
            s_in = [f"state.{s}" for s in b["states"]]
            s_out = [f"state_out.{s}" for s in b["states"]]
            wrapper = _BranchStep(model, b["mode"], b["index"])
            args = (x, *[torch.zeros(shape) for _ in b["states"]])
            proto = _trace(wrapper, args, ["x", *s_in], ["y", "logits", *s_out])
            weights.update(_collect(proto, state))
            protos[b["name"]] = proto
            graphs[b["name"]] = {
                "file": f"{b['name']}.onnx",
                "inputs": {"x": [1, in_size], **{i: shape for i in s_in}},
                "outputs": {"y": [1, int(model.encoder.output_size)], "logits": [1, vocab],
                            **{o: shape for o in s_out}},
                "states": {s: {"input": i, "output": o} for s, i, o in zip(b["states"], s_in, s_out)},
                "flops_per_frame": b["flops"],
                "branch_index": b["index"],
            }
        arbitrator = None
        if plan["kind"] == "amnet":
            arb = model.encoder.arbitrator
            K = len(plan["branches"])
            load_aware = bool(getattr(arb, "load_aware", False))
            args = (x, torch.zeros(1), torch.zeros(1, K)) + ((torch.zeros(1),) if load_aware else ())
            names = ["x", "backlog_ms", "prev_gate"] + (["load"] if load_aware else [])
            proto = _trace(_ArbitratorStep(model), args, names, ["logits"])
            weights.update(_collect(proto, state))
            protos["arbitrator"] = proto
            arbitrator = {
                "file": "arbitrator.onnx",
                "inputs": {"x": [1, in_size], "backlog_ms": [1], "prev_gate": [1, K],
                           **({"load": [1]} if load_aware else {})},
                "outputs": {"logits": [1, K]},
                "flops_per_frame": int(arb.flops_per_frame()),
                "uses_prev_gate": bool(arb.use_prev_decision),
                "load_aware": load_aware,
                "latency_guard": model.encoder.latency_guard,  # None: off
            }
        sha = weights_sha256(weights, weights)
        meta = {"format": WEIGHTS_FORMAT, "format_version": "1", "weights_sha256": sha}
        blob = safetensors.numpy.save(weights, metadata=meta)
        layout = _safetensors_layout(blob)
        files = {WEIGHTS_FILE: blob}
        for name, proto in protos.items():
            _externalize(proto, layout)
            files[f"{name}.onnx"] = proto.SerializeToString()
        slow_index = max(range(len(plan["branches"])), key=lambda k: plan["branches"][k]["flops"])
        merged = None
        if plan["routing"] == "shared_state":  # one call per frame instead of two (export/merged.py)
            slow, fast = plan["branches"][slow_index]["name"], plan["branches"][1 - slow_index]["name"]
            proto = merge_shared_state_step(protos["arbitrator"], protos[fast], protos[slow], slow_index, set(layout))
            files[MERGED_FILE] = proto.SerializeToString()
            shapes = {**arbitrator["inputs"], **graphs[slow]["inputs"], "mask": [1, 2]}
            merged = {
                "file": MERGED_FILE,
                "inputs": {i.name: shapes[i.name] for i in proto.graph.input},  # the tracer drops unused ones
                "outputs": {**graphs[slow]["outputs"], "choice": [1]},
                "states": graphs[slow]["states"],
            }
        frame_ms = 10.0 * float(model.stacker.stack)
        dev = next((d for d in (plan["device_flops_per_s"], device_flops_per_s) if d is not None),
                   DEFAULT_DEVICE_FLOPS_PER_S)
        manifest: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "format_version": manifest_version(arbitrator),
            "kind": plan["kind"],
            "routing": plan["routing"],
            "features": {
                "sample_rate": sample_rate, "n_mels": int(model.hparams.get("n_mels", 80)), "n_fft": 512,
                "win_length": 400, "hop_length": 160, "window": "hann_periodic", "center": True,
                "pad_mode": "reflect", "power": 2.0, "mel_scale": "htk", "f_min": 0.0, "f_max": sample_rate / 2,
                "log_offset": 1e-6, "normalize": "utterance", "norm_eps": 1e-5, "stack": int(model.stacker.stack),
            },
            "frame_ms": frame_ms,
            "vocabulary": ["<blank>", *model.tokenizer.vocabulary],
            "blank": 0,
            "states": {s: {"shape": shp, "dtype": "float32", "init": "zeros"} for s, shp in state_shapes.items()},
            "branches": [b["name"] for b in plan["branches"]],
            "slow_index": slow_index,
            "graphs": graphs,
            "arbitrator": arbitrator,
            "merged_step": merged,
            "device_model": {"flops_per_s": float(dev), "frame_ms": frame_ms},
            "weights": {"file": WEIGHTS_FILE, "sha256": sha, "tensors": len(weights),
                        "bytes": sum(int(w.nbytes) for w in weights.values())},
            "opset": OPSET,
            "exported_with": {"torch": torch.__version__, "exporter": "torch.onnx.export(dynamo=False)"},
            "source": source,
        }
        out.mkdir(parents=True, exist_ok=True)
        stale = _graph_files(out / "manifest.json") - set(files)  # an earlier export's graphs this one lacks
        for name, data in files.items():
            write_atomic(out / name, data)
        for name in stale:
            (out / name).unlink(missing_ok=True)
        (out / "updates.json").unlink(missing_ok=True)  # the history of an earlier export's weights
        write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        return manifest
    finally:
        modes.close()


def _graph_files(manifest: Path) -> set[str]:
    """The graph files an existing export's manifest names (none if there is no readable manifest)."""
    try:
        old = json.loads(manifest.read_text())
        names = {g["file"] for g in (old.get("graphs") or {}).values()}
        for key in ("arbitrator", "merged_step"):
            if old.get(key):
                names.add(old[key]["file"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str) and Path(n).name == n and n.endswith(".onnx")}


def manifest_version(arbitrator: dict[str, Any] | None) -> int:
    """The manifest version an export needs: 2 with a latency guard (older runtimes must refuse it), else 1.

    Example:
        >>> manifest_version(None), manifest_version({"latency_guard": None}), manifest_version({"latency_guard": 3.0})
        (1, 1, 2)
    """
    return 2 if arbitrator is not None and arbitrator.get("latency_guard") is not None else 1


def load_for_export(checkpoint: str | Path) -> nn.Module:
    """Load an :class:`ASRModule` from a LightningCLI checkpoint (the encoder config is in its hparams).

    A checkpoint saved while a ``NeuralDiff`` was attached is folded into plain weights ``W0 + D``.

    Raises:
        ExportError: the file is missing, or the checkpoint has no encoder config (built
            in Python: load it yourself and call :func:`export_onnx`).
    """
    from lightning_amortized.diffs.checkpoints import load_checkpoint
    from lightning_amortized.module import ASRModule, _carried_tokenizer

    path = Path(checkpoint)
    if path.is_dir():
        raise ExportError(f"Checkpoint {str(path)!r} is a folder; pass the checkpoint file in it (e.g. .../last.ckpt).")
    if not path.is_file():
        raise ExportError(f"Checkpoint {str(path)!r} does not exist.")
    try:  # the one safe reader (weights_only); it folds a NeuralDiff's W0 + D into plain weights
        state, container = load_checkpoint(path)
    except ValueError as err:
        raise ExportError(f"Cannot load {str(path)!r} as an ASRModule checkpoint: {err}") from err
    if container is None:
        raise ExportError(
            f"Cannot load {str(path)!r} as an ASRModule checkpoint: it holds bare weights, without the model's "
            "hyper-parameters. Pass a checkpoint written by `lightning-amortized fit`."
        )
    hparams = dict(container.get("hyper_parameters") or {})
    tokenizer = hparams.get("tokenizer")
    if tokenizer:  # the SentencePiece model the checkpoint carries, wherever the recorded file went
        try:
            hparams["tokenizer"] = _carried_tokenizer(container, tokenizer, path)
        except FileNotFoundError as err:
            raise ExportError(str(err)) from err
        container = {**container, "hyper_parameters": hparams}
    buf = io.BytesIO()
    torch.save({**container, "state_dict": state}, buf)
    buf.seek(0)
    try:
        model = ASRModule.load_from_checkpoint(buf, map_location="cpu", weights_only=True)
    except TypeError as err:
        raise ExportError(
            f"{str(path)!r} does not hold the encoder's config ({err}); it was built in Python, not by "
            "LightningCLI. Load it with ASRModule.load_from_checkpoint(path, encoder=...) and call "
            "lightning_amortized.export.export_onnx(model, out_dir)."
        ) from err
    except Exception as err:  # weights of another model, hyper-parameters of another class
        first = first_line(err)
        raise ExportError(
            f"Cannot load {str(path)!r} as an ASRModule checkpoint ({type(err).__name__}: {first}). Pass a "
            "checkpoint written by `lightning-amortized fit`."
        ) from err
    return model


@torch.no_grad()
def verify_export(model: nn.Module, out_dir: str | Path, frames: int = 50, seed: int = 0) -> dict[str, Any]:
    """Run ``frames`` random input frames through eager ``step`` and the exported graphs; compare.

    An export with a merged graph (``amnet_step.onnx``) is run both ways, one call and two calls per
    frame; the result holds the larger logit difference, and routes must match in both.

    Args:
        model: The exported model (eval mode is set for the check and restored).
        out_dir: Its export folder.
        frames: Encoder frames to compare.
        seed: Seed of the random frames.

    Returns:
        ``{"frames", "max_abs_logit_diff", "routes_identical"}``.
    """
    from lightning_amortized.device.runtime import ExportedModel, StreamingRecognizer

    modes = ExitStack()  # every submodule's own mode comes back
    enc = model.encoder
    try:
        modes.enter_context(eval_mode(model))
        x = torch.randn(frames, int(enc.input_size), generator=torch.Generator().manual_seed(seed))
        state, logits, routes = enc.init_state(1), [], []
        for t in range(frames):
            if callable(getattr(enc, "step_with_decision", None)):
                y, state, c = enc.step_with_decision(x[t : t + 1], state, final=t == frames - 1)
                # a forced branch exports as a single graph, which the runtime reports as branch 0
                routes.append(0 if getattr(enc, "force_branch", None) is not None else int(c[0]))
            else:
                y, state = enc.step(x[t : t + 1], state)
                routes.append(0)
            logits.append(model.head(y)[0])
    finally:
        modes.close()
    runtime = ExportedModel(out_dir)
    ref = torch.stack(logits).numpy()
    results = [StreamingRecognizer(runtime, one_call=one_call).run_frames(x.numpy())
               for one_call in ((False, True) if runtime.merged_spec is not None else (False,))]
    return {
        "frames": frames,
        "max_abs_logit_diff": max(float(np.abs(r.logits - ref).max()) for r in results) if frames else 0.0,
        "routes_identical": all(r.decisions == routes for r in results),
    }
