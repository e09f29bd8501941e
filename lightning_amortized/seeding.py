"""Seeds derived from a run seed and a position, so that randomness depends on *where* a run is.

A run resumed from a checkpoint taken at any step must draw the same random numbers
(SpecAugment masks, Gumbel noise, dropout) as the run that was never interrupted. Saving
and restoring generator states cannot do that exactly: data-loading workers own
their generators, and a checkpoint is written while the next batch may already be
prefetched. Instead, each consumer reseeds from :func:`derive_seed` of the run seed and
its position (epoch, batch, step, rank), which a resumed run knows as well.

Example:
    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    True
    >>> derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    True
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["derive_seed"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (order matters; any key may be negative or large).

    Args:
        *keys: Integers, e.g. ``(run_seed, epoch, batch_index, rank)``.

    Returns:
        An integer in ``[0, 2**63)`` for ``torch.manual_seed`` or ``torch.Generator.manual_seed``.
    """
    ints = [int(k) for k in keys]
    if all(0 <= k < 1 << 63 for k in ints):  # the encoding every seed so far was derived with
        payload, person = b"".join(struct.pack("<q", k) for k in ints), b"la-seed"
    else:  # each key whole, with its length: -1 and 2**63 - 1 no longer meet (they did modulo 2**63)
        parts = [k.to_bytes((k.bit_length() + 8) // 8, "little", signed=True) for k in ints]
        payload, person = b"".join(struct.pack("<I", len(p)) + p for p in parts), b"la-seed-any"
    digest = hashlib.blake2b(payload, digest_size=8, person=person).digest()
    return int.from_bytes(digest, "little") >> 1
