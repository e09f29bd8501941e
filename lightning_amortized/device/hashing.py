"""The seeded integer hash of hashed diffs in numpy (the device side of :mod:`lightning_amortized.diffs.hashing`).

Same definition (MurmurHash3 ``fmix32`` on 32-bit halves of the flat index, salted by
CRC-32 of the parameter name and the seed); ``uint64`` products wrap modulo ``2**64``, so
``(x * c) & 0xFFFFFFFF`` is exact. A test checks it against the PyTorch version.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["hash_indices", "name_salts"]

_M32 = 0xFFFFFFFF
_C1 = 0x85EBCA6B
_C2 = 0xC2B2AE35
_GOLDEN = 0x9E3779B9
_SIGN_SALT = 0x5BD1E995


def _fmix32_py(h: int) -> int:
    h &= _M32
    h ^= h >> 16
    h = (h * _C1) & _M32
    h ^= h >> 13
    h = (h * _C2) & _M32
    h ^= h >> 16
    return h


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(_C1)) & np.uint64(_M32)
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(_C2)) & np.uint64(_M32)
    return h ^ (h >> np.uint64(16))


def name_salts(name: str, seed: int) -> tuple[int, int]:
    """The two 32-bit salts of a parameter name and a non-negative seed."""
    if seed < 0:
        raise ValueError(f"Expected argument `seed` to be a non-negative integer, but got {seed}.")
    salt_a = _fmix32_py(zlib.crc32(name.encode("utf-8")) ^ (seed & _M32))
    salt_b = _fmix32_py(salt_a ^ _GOLDEN ^ ((seed >> 32) & _M32))
    return salt_a, salt_b


def hash_indices(name: str, numel: int, seed: int, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ``(numel,)`` int64 in ``[0, K)`` and sign ``(numel,)`` int8 ``±1`` of every flat entry.

    Raises:
        ValueError: if ``num_buckets < 1`` or ``seed < 0``.
    """
    if num_buckets < 1:
        raise ValueError(f"Expected argument `num_buckets` to be >= 1, but got {num_buckets}.")
    salt_a, salt_b = name_salts(name, seed)
    idx = np.arange(numel, dtype=np.uint64)
    lo = idx & np.uint64(_M32)
    hi = idx >> np.uint64(32)
    a = _fmix32(_fmix32(lo ^ np.uint64(salt_a)) ^ hi ^ np.uint64(salt_b))
    bit = (_fmix32(lo ^ np.uint64(salt_b ^ _SIGN_SALT)) >> np.uint64(31)) & np.uint64(1)
    return (a % np.uint64(num_buckets)).astype(np.int64), (1 - 2 * bit.astype(np.int64)).astype(np.int8)
