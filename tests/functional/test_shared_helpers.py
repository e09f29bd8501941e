"""The helpers that exist once in ``functional/``: length masks, top-k masks, SVD factors."""

from __future__ import annotations

import pytest
import torch

from lightning_amortized.functional.lowrank import svd_factors
from lightning_amortized.functional.masks import lengths_to_mask
from lightning_amortized.functional.selection import topk_mask
from lightning_amortized.nn import RecurrentEncoder, SharedStateAmortizedEncoder

# -- lengths_to_mask -------------------------------------------------------------------------------


def test_lengths_to_mask_by_hand():
    m = lengths_to_mask(torch.tensor([3, 0, 1]), max_len=4)
    assert m.dtype == torch.bool
    assert m.int().tolist() == [[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert lengths_to_mask(torch.tensor([2, 1])).shape == (2, 2)  # T = max length
    assert lengths_to_mask(torch.zeros(0, dtype=torch.long)).shape == (0, 0)


def test_lengths_to_mask_device_and_errors():
    m = lengths_to_mask(torch.tensor([1, 2]), 3, device="cpu")
    assert m.device.type == "cpu" and m.sum() == 3
    with pytest.raises(ValueError, match="`lengths` to have shape"):
        lengths_to_mask(torch.tensor([[1, 2]]), 3)


def test_every_copy_uses_the_one_mask():
    """The old re-export names still work and are the same function."""
    from lightning_amortized.nn import lengths_to_mask as from_nn
    from lightning_amortized.nn.encoders import lengths_to_mask as from_encoders

    assert from_nn is lengths_to_mask and from_encoders is lengths_to_mask


# -- topk_mask -------------------------------------------------------------------------------------


def test_topk_mask_by_hand():
    s = torch.tensor([[0.5, 3.0, -1.0], [2.0, 0.1, 4.0]])
    assert topk_mask(s, 3).int().tolist() == [[0, 1, 0], [1, 0, 1]]
    assert topk_mask(s, 0).sum() == 0 and topk_mask(s, 6).all()
    assert topk_mask(s, 2).shape == s.shape


def test_topk_mask_keeps_exactly_k_on_ties():
    s = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0])
    m = topk_mask(s, 2)
    assert int(m.sum()) == 2 and not m[0] and not m[4]


def test_topk_mask_errors():
    with pytest.raises(ValueError, match=r"`k` to be in \[0, 3\]"):
        topk_mask(torch.ones(3), 4)
    with pytest.raises(ValueError, match="`k`"):
        topk_mask(torch.ones(3), -1)


def test_topk_mask_equals_the_former_kthvalue_threshold_on_distinct_magnitudes():
    """The sparse fast branch used ``|w| >= kthvalue``; for distinct magnitudes it is the same set."""
    w = torch.randn(64, 40, generator=torch.Generator().manual_seed(0))
    both = w.abs()
    keep = round(0.3 * both.numel())
    old = both >= both.flatten().kthvalue(both.numel() - keep + 1).values
    assert torch.equal(topk_mask(both, keep), old)


def test_sparse_fast_branch_keeps_density_of_weights():
    torch.manual_seed(0)
    am = SharedStateAmortizedEncoder(RecurrentEncoder(10, 8, 2), fast="sparse", density=0.25)
    for layer, n_in in zip(am.core.fast, (10, 8)):
        n = 4 * 8 * (n_in + 8)
        assert layer.nonzeros() == round(0.25 * n)


# -- svd_factors -----------------------------------------------------------------------------------


def test_svd_factors_are_the_best_rank_r_approximation():
    w = torch.randn(12, 7, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(w)
    for r in (1, 3, 7):
        u, v = svd_factors(w, r)
        assert u.shape == (12, r) and v.shape == (r, 7)
        err = torch.linalg.matrix_norm(w - u @ v) ** 2  # Eckart-Young: the discarded energy
        torch.testing.assert_close(err, (s[r:] ** 2).sum(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(u.norm(dim=0), v.norm(dim=1))  # singular values split evenly


def test_svd_factors_errors():
    with pytest.raises(ValueError, match="`rank` to be >= 1"):
        svd_factors(torch.ones(3, 3), 0)
    with pytest.raises(ValueError, match="matrix"):
        svd_factors(torch.ones(3), 1)
