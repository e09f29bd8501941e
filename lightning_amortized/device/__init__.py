"""The device side: run an exported model and apply neural diffs without PyTorch or Lightning.

Imports numpy, onnxruntime, safetensors and soundfile only (a test runs it with
``import torch`` blocked). Export a checkpoint with ``lightning-amortized export CKPT
--out DIR`` (:mod:`lightning_amortized.export`), then:

* :class:`ExportedModel` and :class:`StreamingRecognizer`: stream audio, get partial and
  final greedy CTC transcripts, routed frame by frame with the backlog rule of training;
* :func:`apply_diff` / :func:`apply_chain`: neural diff files onto the exported weights;
* ``lightning-amortized-device transcribe|apply|info`` on the command line.

See ``docs/device.md`` for the export layout.
"""

from lightning_amortized.device.diffs import (
    BaseMismatchError,
    DeviceDiffInfo,
    DiffError,
    DiffFormatError,
    DiffIntegrityError,
    apply_chain,
    apply_diff,
    read_diff,
)
from lightning_amortized.device.features import FeatureStream, LogMel
from lightning_amortized.device.runtime import (
    ExportedModel,
    ManifestError,
    StreamingRecognizer,
    Transcript,
    ctc_greedy,
    read_audio,
)
from lightning_amortized.device.weights import WeightsError, weights_sha256

__all__ = [
    "BaseMismatchError",
    "DeviceDiffInfo",
    "DiffError",
    "DiffFormatError",
    "DiffIntegrityError",
    "ExportedModel",
    "FeatureStream",
    "LogMel",
    "ManifestError",
    "StreamingRecognizer",
    "Transcript",
    "WeightsError",
    "apply_chain",
    "apply_diff",
    "ctc_greedy",
    "read_audio",
    "read_diff",
    "weights_sha256",
]
