"""Encoders (contract and SpeechBrain adapters), arbitrator and amortized encoder."""

from lightning_amortized.nn.amortized import AmortizedEncoder, RoutingInfo, SharedStateAmortizedEncoder
from lightning_amortized.nn.arbitrator import Arbitrator
from lightning_amortized.nn.encoders import (
    ConformerEncoderAdapter,
    Encoder,
    RecurrentEncoder,
    StreamingEncoder,
    lengths_to_mask,
)
from lightning_amortized.nn.speechbrain_encoders import (
    ChunkStreamingEncoder,
    SpeechBrainEncoder,
    chunks_to_frames,
    frames_to_chunks,
    measured_flops,
)
from lightning_amortized.nn.streaming import StreamResult, compare_wall_clock, stream

__all__ = [
    "AmortizedEncoder",
    "Arbitrator",
    "RoutingInfo",
    "SharedStateAmortizedEncoder",
    "StreamResult",
    "compare_wall_clock",
    "stream",
    "ConformerEncoderAdapter",
    "Encoder",
    "RecurrentEncoder",
    "StreamingEncoder",
    "lengths_to_mask",
    "ChunkStreamingEncoder",
    "SpeechBrainEncoder",
    "chunks_to_frames",
    "frames_to_chunks",
    "measured_flops",
]
