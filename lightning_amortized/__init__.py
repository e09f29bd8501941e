"""lightning-amortized: amortized encoders and neural diffs for on-device ASR with PyTorch Lightning."""

__version__ = "0.1.0"
