"""State dict keys of every AmNet kind are frozen: checkpoints written before the split of
``nn/amortized.py`` into a subpackage must still load.

``amnet_state_dict_keys.json`` was captured from the code *before* the split (commit
4546113): same constructors, same seeds. Keys and their order must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder, SharedStateAmortizedEncoder

EXPECTED = json.loads((Path(__file__).parent / "amnet_state_dict_keys.json").read_text())


def _build(name: str) -> AmortizedEncoder:
    torch.manual_seed(0)
    if name == "independent-proj":
        return AmortizedEncoder(RecurrentEncoder(8, 6, 1), RecurrentEncoder(8, 12, 2, rnn_type="gru"), projection=10)
    if name == "independent-noproj":
        return AmortizedEncoder(RecurrentEncoder(8, 12, 1), RecurrentEncoder(8, 12, 2), use_prev_decision=False)
    _, rnn, proj, fast = name.split("-")
    enc = RecurrentEncoder(8, 12, num_layers=2, rnn_type=rnn, projection=None if proj == "None" else int(proj))
    return AmortizedEncoder.from_recurrent(enc, fast=fast, rank=3, density=0.3)


def test_every_kind_is_covered():
    kinds = {name.split("-")[-1] for name in EXPECTED if name.startswith("shared")}
    assert kinds == {"lowrank", "sparse", "small"}
    assert {"independent-proj", "independent-noproj"} <= set(EXPECTED)
    assert len(EXPECTED) == 14  # 2 rnn types x 2 projections x 3 kinds + 2 independent


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_state_dict_keys_unchanged(name):
    enc = _build(name)
    assert list(enc.state_dict().keys()) == EXPECTED[name]
    assert isinstance(enc, SharedStateAmortizedEncoder) == name.startswith("shared")


def test_old_checkpoint_layout_loads_strictly():
    """A state dict with the old keys loads with ``strict=True`` and reproduces the outputs."""
    a = _build("shared-lstm-6-sparse").eval()
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    assert list(sd) == EXPECTED["shared-lstm-6-sparse"]
    torch.manual_seed(5)
    b = AmortizedEncoder.from_recurrent(RecurrentEncoder(8, 12, 2, projection=6), fast="sparse", rank=3, density=0.3)
    b.load_state_dict(sd, strict=True)
    b.eval()
    x, n = torch.randn(2, 7, 8), torch.tensor([7, 4])
    assert torch.equal(a(x, n)[0], b(x, n)[0])
