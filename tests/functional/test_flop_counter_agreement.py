"""The analytic FLOP counters against PyTorch's own count (``torch.utils.flop_counter.FlopCounterMode``).

What PyTorch 2.11 counts, and so what is compared like for like:

* matrix products and convolutions (``mm``, ``addmm``, ``bmm``, ``convolution``) at
  ``2 * M * N * K``, i.e. 2 FLOPs per multiply-accumulate, as our counters do;
* *not* the bias of ``addmm``/``convolution``, element-wise ops (gate
  non-linearities, ``c = f*c + i*g``, the sum of the two gate products), softmax or
  normalisations, which our counters include (1 FLOP each);
* *not* ``torch.nn.LSTM`` on a padded tensor at all (one fused operator, 0 FLOPs),
  while ``nn.LSTMCell``, ``nn.GRU`` and a packed LSTM run decomposed into ``addmm`` and
  are counted. :func:`~lightning_amortized.nn.speechbrain_encoders.measured_flops`
  adds the fused LSTM's products from its shapes.

So each test removes from the analytic count exactly the terms PyTorch leaves out
(biases, element-wise terms) and then requires **exact** equality: no tolerance is
needed for these layers. The last test states how far apart the two full counts are
for layers of realistic size (PyTorch's count is a lower bound, within 3 %).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_amortized.functional.flops import (
    attention_flops,
    conv1d_flops,
    gru_flops,
    linear_flops,
    lstm_flops,
    rnn_pointwise_flops,
)
from lightning_amortized.nn.speechbrain_encoders import measured_flops


def counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@pytest.mark.parametrize(("I", "O", "T"), [(8, 16, 10), (80, 256, 3)])
def test_linear_matches_flop_counter(I: int, O: int, T: int):
    lin = nn.Linear(I, O)
    per_frame = counted(lambda: lin(torch.randn(1, T, I))) / T
    assert per_frame == linear_flops(I, O, bias=False) == 2 * I * O
    assert linear_flops(I, O) - per_frame == O  # the bias: ours counts it, PyTorch does not


@pytest.mark.parametrize(("cin", "cout", "k", "groups"), [(8, 16, 3, 1), (16, 16, 5, 16), (6, 4, 1, 2)])
def test_conv1d_matches_flop_counter(cin: int, cout: int, k: int, groups: int):
    conv = nn.Conv1d(cin, cout, k, padding=k // 2, groups=groups)
    T = 12
    per_frame = counted(lambda: conv(torch.randn(1, cin, T))) / T
    assert per_frame == conv1d_flops(cin, cout, k, groups=groups, bias=False)
    assert conv1d_flops(cin, cout, k, groups=groups) - per_frame == cout


@pytest.mark.parametrize(("I", "H", "layers"), [(8, 16, 1), (12, 10, 2)])
def test_gru_matches_flop_counter(I: int, H: int, layers: int):
    """nn.GRU runs decomposed (``addmm`` per gate product) and is counted; the element-wise ``10H`` is not."""
    gru = nn.GRU(I, H, num_layers=layers, batch_first=True)
    T = 7
    per_frame = counted(lambda: gru(torch.randn(1, T, I))) / T
    assert per_frame == gru_flops(I, H, layers, bias=False) - layers * rnn_pointwise_flops("gru", H)


@pytest.mark.parametrize(("I", "H", "layers"), [(8, 16, 1), (12, 10, 2)])
def test_lstm_matches_flop_counter(I: int, H: int, layers: int):
    """The LSTM's products, ``lstm_flops`` less its ``4H`` product sum and ``9H`` element-wise terms.

    Checked on ``nn.LSTMCell`` and a packed ``nn.LSTM`` (both counted by PyTorch); the
    fused ``nn.LSTM`` on a padded tensor counts 0 in PyTorch 2.11 (asserted, so a
    PyTorch that starts counting it shows up here), and ``measured_flops`` fills it in.
    """
    products = lstm_flops(I, H, layers, bias=False) - layers * (4 * H + rnn_pointwise_flops("lstm", H))
    if layers == 1:
        cell = nn.LSTMCell(I, H)
        assert counted(lambda: cell(torch.randn(1, I))) == products
    lstm = nn.LSTM(I, H, num_layers=layers, batch_first=True)
    T = 9
    x = torch.randn(1, T, I)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([T]), batch_first=True)
    assert counted(lambda: lstm(packed)) == T * products
    assert counted(lambda: lstm(x)) in (0, T * products)  # 0 in PyTorch 2.11
    assert measured_flops(lambda: lstm(x), lstm) == T * products
    assert measured_flops(lambda: lstm(packed), lstm) == T * products  # not added twice


@pytest.mark.parametrize(("d", "heads", "T"), [(16, 2, 10), (32, 4, 25)])
def test_attention_matches_flop_counter(d: int, heads: int, T: int):
    """Self-attention over ``T`` frames, per frame: ``attention_flops(d, heads, context=T)``.

    PyTorch counts the four projections (without biases, ``4d``) and the two
    ``bmm`` (scores and weighted sum) but not the softmax (``3 * heads * T``).
    ``need_weights=True`` keeps ``nn.MultiheadAttention`` on its ``bmm`` path; the fused
    kernel of ``need_weights=False`` is not counted by PyTorch 2.11.
    """
    mha = nn.MultiheadAttention(d, heads, batch_first=True)
    x = torch.randn(1, T, d)
    per_frame = counted(lambda: mha(x, x, x, need_weights=True)) / T
    assert per_frame == attention_flops(d, heads, T) - 4 * d - 3 * heads * T


def test_full_counts_are_within_three_percent_at_realistic_sizes():
    """Ours (with biases and element-wise ops) >= PyTorch's, and at most 3 % above it.

    The gap is the ``O(H)`` terms against the ``O(H * (I + H))`` products (torch 2.11):
    0.48 % for a 240 -> 320 GRU, 0.47 % for the LSTM, 0.21 % for the Linear, 0.39 % for
    a 144-wide, 4-head attention over 8 frames and 1.2 % over 300 frames (the softmax
    grows with the context). 3 % leaves room for other shapes, not for a missing product.
    """
    cases = [
        (lambda: nn.GRU(240, 320, batch_first=True), gru_flops(240, 320)),
        (lambda: nn.LSTM(240, 320, batch_first=True), lstm_flops(240, 320)),
        (lambda: nn.Linear(240, 320), linear_flops(240, 320)),
    ]
    x = torch.randn(1, 4, 240)
    for make, ours in cases:
        mod = make()
        theirs = measured_flops(lambda mod=mod: mod(x), mod) / 4
        assert theirs <= ours <= 1.03 * theirs, (mod, ours, theirs)
    mha = nn.MultiheadAttention(144, 4, batch_first=True)
    x = torch.randn(1, 8, 144)
    theirs = counted(lambda: mha(x, x, x, need_weights=True)) / 8
    ours = attention_flops(144, 4, 8)
    assert theirs <= ours <= 1.03 * theirs


@pytest.mark.parametrize(("d", "heads", "T"), [(32, 2, 37), (64, 4, 100)])
def test_relative_position_attention_and_the_conformer_adapter_match_the_flop_counter(d: int, heads: int, T: int):
    """SpeechBrain's ``RelPosMHAXL``: the products of ``attention_flops(..., relative_positions=True)`` exactly;
    the Conformer adapter within 3 % above PyTorch's count (biases, norms and element-wise ops on top)."""
    from speechbrain.nnet.attention import RelPosEncXL, RelPosMHAXL

    from lightning_amortized.nn import ConformerEncoderAdapter

    mha = RelPosMHAXL(d, heads).eval()
    x = torch.randn(1, T, d)
    pos = RelPosEncXL(d)(x)
    products = measured_flops(lambda: mha(x, x, x, pos_embs=pos), mha)
    no_bias_softmax = (attention_flops(d, heads, T, relative_positions=True) - 4 * d - 3 * heads * T) * T
    assert abs(products - no_bias_softmax) <= T  # the per-frame share of the position terms is rounded
    enc = ConformerEncoderAdapter(80, d_model=d, num_layers=2, nhead=heads, d_ffn=4 * d, context_frames=T).eval()
    theirs = measured_flops(lambda: enc(torch.zeros(1, T, 80), torch.tensor([T])), enc) / T
    assert theirs <= enc.flops_per_frame() <= 1.03 * theirs


def test_module_flops_refuse_layers_whose_own_weights_they_cannot_count():
    from lightning_amortized.functional.flops import module_flops_per_frame

    assert module_flops_per_frame(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.LSTM(4, 8))) == (
        linear_flops(4, 4) + lstm_flops(4, 8))
    for layer in (nn.LSTM(80, 256, proj_size=64), nn.MultiheadAttention(64, 4), nn.TransformerEncoderLayer(64, 4)):
        with pytest.raises(TypeError, match="give it a `flops_per_frame\\(\\)` method"):
            module_flops_per_frame(layer)  # were counted short (the projection, the in-projection left out)
