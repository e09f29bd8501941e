"""Target selection by pattern and the platform-independent bucket hash."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from torch import nn

from lightning_amortized.diffs import attach_diffs, describe_targets, hash_indices, select_targets
from lightning_amortized.diffs.hashing import hash_flat_indices, hash_indices_reference


def model() -> nn.Module:
    m = nn.Module()
    m.encoder = nn.LSTM(4, 3, bidirectional=True)
    m.proj = nn.Linear(6, 2)
    m.embed = nn.Embedding(5, 4)
    return m


def test_glob_regex_and_exclude() -> None:
    m = model()
    assert select_targets(m, "encoder.weight_*_l0") == ["encoder.weight_ih_l0", "encoder.weight_hh_l0"]
    assert select_targets(m, "re:encoder\\.weight_.*", exclude="*_reverse") == [
        "encoder.weight_ih_l0",
        "encoder.weight_hh_l0",
    ]
    assert select_targets(m, ["proj.*", "embed.weight"]) == ["proj.weight", "proj.bias", "embed.weight"]
    # names are plain even after diffs are attached
    attach_diffs(m, ["proj.weight"], "sparse")
    assert sorted(select_targets(m, "proj.*")) == ["proj.bias", "proj.weight"]


def test_unmatched_pattern_names_the_pattern_and_suggests() -> None:
    with pytest.raises(ValueError, match=r"'encoder\.weight_ih_l3' matches no parameter.*encoder\.weight_ih_l0"):
        select_targets(model(), ["proj.*", "encoder.weight_ih_l3"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select_targets(model(), "re:(")
    with pytest.raises(ValueError, match="removed by exclude"):
        select_targets(model(), "proj.*", exclude="*")


def test_tied_parameters_are_refused() -> None:
    m = nn.Module()
    m.a = nn.Linear(3, 3)
    m.b = nn.Linear(3, 3)
    m.b.weight = m.a.weight
    with pytest.raises(ValueError, match="shared"):
        select_targets(m, "a.weight")
    # named directly, under either name: two deltas would stack on the one weight
    from lightning_amortized.diffs import attach_diffs
    from lightning_amortized.diffs.lowrank import attach_lowrank

    for names in (["a.weight"], ["b.weight"], ["a.weight", "b.weight"]):
        with pytest.raises(ValueError, match="shared"):
            attach_diffs(m, names, "sparse")
        with pytest.raises(ValueError, match="shared"):
            attach_lowrank(m, names, rank=1)
    assert attach_diffs(m, ["a.bias", "b.bias"], "sparse").keys() == {"a.bias", "b.bias"}  # not tied


def test_describe_targets_lists_shapes_and_sizes() -> None:
    text = describe_targets(model(), "proj.*")
    assert text.splitlines() == [
        "target       shape   entries  bytes",
        "proj.weight  (2, 6)  12       48",
        "proj.bias    (2,)    2        8",
        "2 target(s): 14 of 250 parameters (5.60%), 56 bytes",
    ]


def _numpy_hash(name: str, n: int, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent implementation with wrapping uint32 arithmetic."""
    m = np.uint32

    def fmix(h: np.ndarray) -> np.ndarray:
        h = h ^ (h >> m(16))
        h = h * m(0x85EBCA6B)
        h = h ^ (h >> m(13))
        h = h * m(0xC2B2AE35)
        return h ^ (h >> m(16))

    def fmix_int(v: int) -> int:
        return int(fmix(np.array([v], dtype=np.uint32))[0])

    salt_a = fmix_int((zlib.crc32(name.encode()) ^ seed) & 0xFFFFFFFF)
    salt_b = fmix_int(salt_a ^ 0x9E3779B9)
    idx = np.arange(n, dtype=np.uint32)
    a = fmix(fmix(idx ^ m(salt_a)) ^ m(salt_b))
    bit = fmix(idx ^ m(salt_b ^ 0x5BD1E995)) >> m(31)
    return (a % m(k)).astype(np.int64), 1 - 2 * bit.astype(np.int64)


def test_hash_matches_independent_implementations_and_golden_values() -> None:
    with np.errstate(over="ignore"):
        b_np, s_np = _numpy_hash("encoder.rnn.weight_hh_l0", 5000, seed=1234, k=97)
    b, s = hash_indices("encoder.rnn.weight_hh_l0", 5000, seed=1234, num_buckets=97)
    assert np.array_equal(b.numpy(), b_np) and np.array_equal(s.numpy().astype(np.int64), s_np)
    for i in (0, 1, 4999):
        assert hash_indices_reference("encoder.rnn.weight_hh_l0", i, 1234, 97) == (int(b[i]), int(s[i]))
    # golden values pin the function across versions and platforms
    b, s = hash_indices("w", 6, seed=0, num_buckets=10)
    assert b.tolist() == GOLDEN_BUCKETS and s.tolist() == GOLDEN_SIGNS
    # indices beyond 2**32 hash without overflow and match the reference
    big = [2**32 + 5, 2**40 + 17, 2**62]
    b, s = hash_flat_indices(torch.tensor(big), "w", seed=2**40 + 3, num_buckets=10)
    assert [(int(x), int(y)) for x, y in zip(b, s)] == [hash_indices_reference("w", i, 2**40 + 3, 10) for i in big]


GOLDEN_BUCKETS = [3, 9, 5, 4, 2, 2]
GOLDEN_SIGNS = [-1, 1, 1, -1, -1, -1]


def test_hash_is_balanced_and_seed_and_name_dependent() -> None:
    b, s = hash_indices("layer.weight", 100_000, seed=0, num_buckets=10)
    counts = torch.bincount(b, minlength=10)
    assert counts.min() > 9_500 and counts.max() < 10_500
    assert abs(int(s.sum())) < 1_500
    b2, _ = hash_indices("layer.weight", 100_000, seed=1, num_buckets=10)
    b3, _ = hash_indices("layer.bias", 100_000, seed=0, num_buckets=10)
    assert (b != b2).float().mean() > 0.8 and (b != b3).float().mean() > 0.8
    assert hash_indices("x", 10, seed=0, num_buckets=3)[0].dtype == torch.int64
