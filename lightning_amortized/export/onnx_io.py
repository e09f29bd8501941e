"""ONNX plumbing: tracing, collecting initializers, pointing them into ``weights.safetensors``."""

from __future__ import annotations

import io
import json
import struct
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn


from lightning_amortized.export.steps import _PREFIX, ExportError

OPSET = 17
WEIGHTS_FILE = "weights.safetensors"


def _trace(module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str]) -> Any:
    """ONNX ``ModelProto`` of ``module`` traced on ``args`` (TorchScript exporter, no constant folding)."""
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():  # TracerWarnings (int(choice)), the exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buf,
            input_names=inputs,
            output_names=outputs,
            opset_version=OPSET,
            do_constant_folding=False,
            dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())


def _collect(proto: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Initializers of ``proto`` that are the model's tensors: ``{model name: numpy array}``."""
    from onnx import numpy_helper

    found = {}
    for init in proto.graph.initializer:
        if not init.name.startswith(_PREFIX):
            continue
        name = init.name[len(_PREFIX):]
        if name not in state:
            continue
        arr = numpy_helper.to_array(init)
        ref = np.ascontiguousarray(state[name].detach().cpu().numpy())
        if arr.shape != ref.shape or arr.dtype != ref.dtype or arr.tobytes() != ref.tobytes():
            raise ExportError(f"Initializer {init.name!r} of the traced graph differs from parameter {name!r}.")
        found[name] = ref
    return found


def _externalize(proto: Any, offsets: dict[str, tuple[int, int]]) -> None:
    """Point the model-tensor initializers of ``proto`` into ``weights.safetensors`` (ONNX external data)."""
    import onnx

    for init in proto.graph.initializer:
        name = init.name[len(_PREFIX):] if init.name.startswith(_PREFIX) else None
        if name not in offsets:
            continue
        start, length = offsets[name]
        init.name = name  # graph nodes refer to it by this name from now on
        init.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data"):
            init.ClearField(field)
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", WEIGHTS_FILE), ("offset", str(start)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
    renamed = {_PREFIX + n: n for n in offsets}
    for node in proto.graph.node:
        for i, inp in enumerate(node.input):
            if inp in renamed:
                node.input[i] = renamed[inp]


def _safetensors_layout(blob: bytes) -> dict[str, tuple[int, int]]:
    """``{name: (absolute offset, length)}`` of each tensor's bytes in a safetensors file."""
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + hlen])
    return {k: (8 + hlen + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
            for k, v in header.items() if k != "__metadata__"}
