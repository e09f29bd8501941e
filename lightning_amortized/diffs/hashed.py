"""Hashed diffs: every entry of ``D`` shares one of ``K`` trainable bucket values.

``D.flat[i] = s(i) * buckets[b(i)]`` with the seeded integer hash of
:mod:`lightning_amortized.diffs.hashing`; the effective weight is ``W0 + D``. Only the
bucket values and the seed are shipped; indices are recomputed from the parameter name.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import nn

from lightning_amortized.diffs.hashing import hash_indices

__all__ = ["HashedDiff", "allocate_buckets", "hashed_delta"]


class HashedDiff(nn.Module):
    """Parametrization ``W0 -> W0 + sign * buckets[bucket_index]``.

    Args:
        base: the frozen base tensor ``W0`` (any shape).
        name: the plain parameter name (part of the hash key, so it must be the name the
            device model uses too).
        num_buckets: ``K``, the number of trainable values.
        seed: hash seed in ``[0, 2**63)``.

    Attributes:
        buckets: trainable ``(K,)`` parameter in ``W0``'s dtype, initialised to zero.
        bucket_index: ``(numel,)`` int32/int64 buffer (not saved; recomputed from the hash).
        sign: ``(numel,)`` int8 buffer of ``±1`` (not saved).
        hash_seed: 0-d int64 buffer holding ``seed`` (saved, so checkpoints can be folded).

    Example::

        >>> w0 = torch.zeros(4, 5)
        >>> p = HashedDiff(w0, "layer.weight", num_buckets=3, seed=0)
        >>> p.buckets.shape
        torch.Size([3])
        >>> with torch.no_grad():
        ...     _ = p.buckets.fill_(1.0)
        >>> bool((p(w0).abs() == 1).all())
        True
    """

    def __init__(self, base: torch.Tensor, name: str, num_buckets: int, seed: int) -> None:
        super().__init__()
        try:
            ok = 0 <= operator.index(seed) < 2**63  # the hash takes 64 bits, the saved buffer is int64
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"Expected argument `seed` to be an int in [0, 2**63), but got {seed!r}.")
        seed = operator.index(seed)
        self.name = name
        self.shape = tuple(base.shape)
        self.buckets = nn.Parameter(torch.zeros(num_buckets, dtype=base.dtype, device=base.device))
        idx, sign = hash_indices(name, base.numel(), seed, num_buckets, device=base.device)
        if num_buckets < 2**31:
            idx = idx.to(torch.int32)
        self.register_buffer("bucket_index", idx, persistent=False)
        self.register_buffer("sign", sign, persistent=False)
        self.register_buffer("hash_seed", torch.tensor(seed, dtype=torch.int64, device=base.device))

    @property
    def num_buckets(self) -> int:
        return self.buckets.numel()

    def delta(self) -> torch.Tensor:
        """``D`` with the shape of ``W0``."""
        values = self.buckets.index_select(0, self.bucket_index)
        return (self.sign.to(values.dtype) * values).view(self.shape)

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return base + self.delta()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, shape={self.shape}, num_buckets={self.num_buckets}"


def hashed_delta(name: str, shape: Sequence[int], seed: int, buckets: torch.Tensor) -> torch.Tensor:
    """``D`` for parameter ``name`` of ``shape`` from bucket values (the device path).

    Bit-identical to ``HashedDiff.delta()`` for the same ``buckets``.

    Args:
        name: plain parameter name.
        shape: shape of ``W0``.
        seed: hash seed.
        buckets: ``(K,)`` bucket values.

    Returns:
        Tensor of ``shape`` in ``buckets.dtype`` on ``buckets.device``.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    idx, sign = hash_indices(name, numel, seed, buckets.numel(), device=buckets.device)
    values = buckets.index_select(0, idx)
    return (sign.to(values.dtype) * values).view(tuple(shape))


def allocate_buckets(sizes: Sequence[int], total: int) -> list[int]:
    """Split ``total`` buckets over tensors proportionally to their sizes (largest remainder).

    Every tensor gets at least one bucket and at most its own size; the result sums to
    exactly ``total``.

    Raises:
        ValueError: if ``total`` is smaller than the number of tensors or larger than
            ``sum(sizes)``.

    Example::

        >>> allocate_buckets([100, 50, 10], 16)
        [10, 5, 1]
    """
    n = sum(sizes)
    if not len(sizes) <= total <= n:
        raise ValueError(
            f"Expected the bucket budget to be between {len(sizes)} (one per target) and {n} "
            f"(one per entry), but got {total}."
        )
    alloc = [max(1, min(s, (total * s) // n)) for s in sizes]
    remainders = sorted(range(len(sizes)), key=lambda j: (-((total * sizes[j]) % n), j))
    while sum(alloc) < total:
        for j in remainders:
            if sum(alloc) < total and alloc[j] < sizes[j]:
                alloc[j] += 1
    while sum(alloc) > total:
        for j in reversed(remainders):
            if sum(alloc) > total and alloc[j] > 1:
                alloc[j] -= 1
    return alloc
