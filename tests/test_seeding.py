"""derive_seed: stable for the keys every run so far used, distinct for any other keys."""

from __future__ import annotations

import hashlib
import struct

from lightning_amortized.seeding import derive_seed


def _old(*keys: int) -> int:
    payload = b"".join(struct.pack("<q", k) for k in keys)
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8, person=b"la-seed").digest(), "little") >> 1


def test_seeds_of_non_negative_63_bit_keys_are_unchanged():
    for keys in [(0,), (0, 1, 2), (7, 3, 12345, 1), ((1 << 63) - 1, 0)]:
        assert derive_seed(*keys) == _old(*keys)
        assert 0 <= derive_seed(*keys) < 1 << 63


def test_keys_that_meet_modulo_2_to_the_63_give_different_seeds():
    assert derive_seed(-1) != derive_seed((1 << 63) - 1)
    assert derive_seed(1 << 63) != derive_seed(0)
    assert derive_seed(-3, 4) == derive_seed(-3, 4) and derive_seed(-3, 4) != derive_seed(4, -3)
    assert len({derive_seed(k) for k in range(-50, 50)}) == 100
