"""Encoders (contract and SpeechBrain adapters), arbitrator and amortized encoder."""

from lightning_amortized.nn.encoders import (
    ConformerEncoderAdapter,
    Encoder,
    RecurrentEncoder,
    StreamingEncoder,
    lengths_to_mask,
)

__all__ = ["ConformerEncoderAdapter", "Encoder", "RecurrentEncoder", "StreamingEncoder", "lengths_to_mask"]
