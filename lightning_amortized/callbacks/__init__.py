"""Lightning callbacks: one per file."""

from lightning_amortized.callbacks.anchor import AnchorToStart
from lightning_amortized.callbacks.latency_monitor import LatencyMonitor
from lightning_amortized.callbacks.neural_diff import NeuralDiff
from lightning_amortized.callbacks.periodic_checkpoint import PeriodicCheckpoint
from lightning_amortized.callbacks.step_seed import StepSeed
from lightning_amortized.callbacks.temperature import ArbitratorTemperature
from lightning_amortized.callbacks.transcript_writer import TranscriptWriter
from lightning_amortized.callbacks.validation_clock import ValidationClock

__all__ = ["AnchorToStart", "ArbitratorTemperature", "LatencyMonitor", "NeuralDiff", "PeriodicCheckpoint", "StepSeed", "TranscriptWriter",
           "ValidationClock"]
