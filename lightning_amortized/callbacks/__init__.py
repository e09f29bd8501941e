"""Lightning callbacks: one per file."""

from lightning_amortized.callbacks.neural_diff import NeuralDiff

__all__ = ["NeuralDiff"]
