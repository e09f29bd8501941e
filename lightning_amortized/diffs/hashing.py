"""Seeded, platform-independent integer hash used by hashed diffs.

Every entry ``i`` (flat, row-major index) of a targeted parameter named ``name`` is
mapped to a bucket ``b(i)`` in ``[0, K)`` and a sign ``s(i)`` in ``{-1, +1}``::

    salt_a = fmix32(crc32(name) ^ lo32(seed))
    salt_b = fmix32(salt_a ^ 0x9E3779B9 ^ hi32(seed))
    a(i)   = fmix32(fmix32(lo32(i) ^ salt_a) ^ hi32(i) ^ salt_b)
    b(i)   = a(i) mod K
    s(i)   = +1 if bit 31 of fmix32(lo32(i) ^ salt_b ^ 0x5BD1E995) is 0 else -1

``fmix32`` is the MurmurHash3 32-bit finalizer. All arithmetic is done on non-negative
``int64`` tensors holding 32-bit values; the 32x32-bit products are split into 16-bit
halves so nothing ever overflows a signed 64-bit integer. The result is therefore the
same on every platform, device and PyTorch version (no floating point, no undefined
overflow). :func:`hash_indices_reference` is a pure-Python version used by the tests.
"""

from __future__ import annotations

import zlib

import torch

__all__ = ["hash_flat_indices", "hash_indices", "hash_indices_reference", "name_salts"]

_M32 = 0xFFFFFFFF
_C1 = 0x85EBCA6B
_C2 = 0xC2B2AE35
_GOLDEN = 0x9E3779B9
_SIGN_SALT = 0x5BD1E995
_CHUNK = 1 << 22


def _fmix32_py(h: int) -> int:
    h &= _M32
    h ^= h >> 16
    h = (h * _C1) & _M32
    h ^= h >> 13
    h = (h * _C2) & _M32
    h ^= h >> 16
    return h


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for ``x`` in ``[0, 2**32)`` without int64 overflow."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, _C1)
    h = h ^ (h >> 13)
    h = _mul32(h, _C2)
    return h ^ (h >> 16)


def name_salts(name: str, seed: int) -> tuple[int, int]:
    """The two 32-bit salts derived from a parameter name and a seed.

    Args:
        name: parameter name as in ``named_parameters()`` (e.g. ``"rnn.weight_ih_l0"``).
        seed: non-negative integer seed (up to 64 bits are used).

    Returns:
        ``(salt_a, salt_b)``, each in ``[0, 2**32)``.
    """
    if seed < 0:
        raise ValueError(f"Expected argument `seed` to be a non-negative integer, but got {seed}.")
    salt_a = _fmix32_py(zlib.crc32(name.encode("utf-8")) ^ (seed & _M32))
    salt_b = _fmix32_py(salt_a ^ _GOLDEN ^ ((seed >> 32) & _M32))
    return salt_a, salt_b


def hash_indices(
    name: str, numel: int, seed: int, num_buckets: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket index and sign of every flat entry of a parameter.

    Args:
        name: parameter name (part of the hash key).
        numel: number of entries of the parameter.
        seed: non-negative integer seed.
        num_buckets: ``K``, number of buckets (``>= 1``).
        device: where to build the result.

    Returns:
        ``(buckets, signs)``: ``buckets`` has shape ``(numel,)`` and dtype ``int64`` with
        values in ``[0, K)``; ``signs`` has shape ``(numel,)``, dtype ``int8``, values ``±1``.

    Example::

        >>> b, s = hash_indices("layer.weight", 6, seed=0, num_buckets=3)
        >>> b.shape, s.dtype
        (torch.Size([6]), torch.int8)
        >>> bool(((b >= 0) & (b < 3)).all()), sorted(set(s.tolist())) in ([-1, 1], [-1], [1])
        (True, True)
    """
    buckets = torch.empty(numel, dtype=torch.int64, device=device)
    signs = torch.empty(numel, dtype=torch.int8, device=device)
    for start in range(0, numel, _CHUNK):
        idx = torch.arange(start, min(numel, start + _CHUNK), dtype=torch.int64, device=device)
        buckets[start : start + idx.numel()], signs[start : start + idx.numel()] = hash_flat_indices(
            idx, name, seed, num_buckets
        )
    return buckets, signs


def hash_flat_indices(
    indices: torch.Tensor, name: str, seed: int, num_buckets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket (int64) and sign (int8, ``±1``) of the given non-negative int64 flat indices.

    Example::

        >>> b, s = hash_flat_indices(torch.tensor([0, 2**40]), "w", seed=3, num_buckets=10)
        >>> b.tolist() == [hash_indices_reference("w", i, 3, 10)[0] for i in (0, 2**40)]
        True
    """
    if num_buckets < 1:
        raise ValueError(f"Expected argument `num_buckets` to be >= 1, but got {num_buckets}.")
    salt_a, salt_b = name_salts(name, seed)
    idx = indices.to(torch.int64)
    lo = idx & _M32
    hi = idx >> 32
    a = _fmix32(_fmix32(lo ^ salt_a) ^ hi ^ salt_b)
    bit = (_fmix32(lo ^ (salt_b ^ _SIGN_SALT)) >> 31) & 1
    return a % num_buckets, (1 - 2 * bit).to(torch.int8)


def hash_indices_reference(name: str, index: int, seed: int, num_buckets: int) -> tuple[int, int]:
    """Pure-Python reference of :func:`hash_indices` for a single index: ``(bucket, sign)``."""
    salt_a, salt_b = name_salts(name, seed)
    a = _fmix32_py(_fmix32_py((index & _M32) ^ salt_a) ^ (index >> 32) ^ salt_b)
    bit = (_fmix32_py((index & _M32) ^ salt_b ^ _SIGN_SALT) >> 31) & 1
    return a % num_buckets, 1 - 2 * bit
