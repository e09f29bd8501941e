"""Evaluation mode for a block of code, with every submodule's own mode put back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``module.eval()``; restore each submodule's ``training`` flag as it was.

    ``module.train(was)`` would flatten the modes (a submodule frozen in eval would come
    back in training mode); this keeps them.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
        >>> net[1].eval()
        Dropout(p=0.5, inplace=False)
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training, net[1].training
        (True, False)
    """
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes.items():
            m.training = mode
