"""The SpeechBrain adapters on the modules users have: packed RNNs, odd kernels, BatchNorm, fused attention."""

from __future__ import annotations

import pytest
import torch
from speechbrain.lobes.models.CRDNN import CRDNN
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.nnet.RNN import GRU, LiGRU
from torch import nn

from lightning_amortized.nn import AmortizedEncoder, ChunkStreamingEncoder, SpeechBrainEncoder, frames_to_chunks
from lightning_amortized.nn.speechbrain_encoders import measured_flops

F_IN = 12


def crdnn(kernel=(3, 3), rnn_class=GRU, time_pooling: bool = False) -> CRDNN:
    torch.manual_seed(0)
    return CRDNN(input_size=F_IN, cnn_blocks=1, cnn_channels=[4], cnn_kernelsize=kernel, inter_layer_pooling_size=[2],
                 time_pooling=time_pooling, time_pooling_size=2, rnn_class=rnn_class, rnn_layers=1, rnn_neurons=8,
                 rnn_bidirectional=False, dnn_blocks=1, dnn_neurons=8, dropout=0.0)


def test_a_packed_rnn_that_stops_at_the_longest_utterance_is_padded_to_the_batch() -> None:
    """SpeechBrain's RNNs unpack to the longest length: y had 8 frames for a batch padded to 10."""
    torch.manual_seed(0)
    enc = SpeechBrainEncoder(GRU(hidden_size=8, input_shape=(1, 5, 6), num_layers=1), input_size=6)
    x, n = torch.randn(2, 10, 6), torch.tensor([8, 6])
    y, out = enc(x, n)
    assert y.shape == (2, 10, 8) and out.tolist() == [8, 6]
    assert bool((y[0, 8:] == 0).all()) and bool((y[1, 6:] == 0).all())
    alone, _ = enc(x[1:, :6], n[1:])
    torch.testing.assert_close(y[1, :6], alone[0])


def test_an_input_module_that_changes_the_frame_rate_is_refused() -> None:
    """Its masks and relative lengths were built on the input frame rate: padding changed the outputs."""

    class Down2(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, ::2]

    conf = ConformerEncoder(num_layers=1, d_model=F_IN, d_ffn=16, nhead=2, kernel_size=3)
    with pytest.raises(ValueError, match="maps 120 frames to 60; it must work per frame"):
        SpeechBrainEncoder(conf, input_size=F_IN, input_module=Down2())


def test_wrapping_and_measuring_keep_every_submodule_mode() -> None:
    """A pretrained module kept in eval came back in training mode (its BatchNorm then moved)."""
    net = crdnn().eval()
    enc = SpeechBrainEncoder(net, input_size=F_IN)
    ChunkStreamingEncoder(net, input_size=F_IN, chunk_size=4)
    assert not any(m.training for m in net.modules())
    enc.train()
    net.DNN.eval()
    enc.flops_per_frame()
    assert net.training and not any(m.training for m in net.DNN.modules())


@pytest.mark.parametrize(("kernel", "context"), [((3, 7), 6), ((7, 3), 2)])
def test_the_crdnn_left_context_follows_the_time_axis_of_its_kernels(kernel: tuple[int, int], context: int) -> None:
    """SpeechBrain's Conv2d runs on (B, C, F, T): the time kernel is the last entry (was: the first)."""
    net = crdnn(kernel).eval()
    enc = ChunkStreamingEncoder(net, input_size=F_IN, chunk_size=4).eval()
    assert enc.mode == "recurrent" and enc.cnn_context == context  # two convolutions of ceil((k_t - 1) / 2)
    x = torch.randn(1, 12, F_IN)
    with torch.no_grad():  # the first frame of chunk 2 sees all it would see with the whole past
        torch.testing.assert_close(enc._cnn(x[:, 8 - context :], context)[:, 0], net.CNN(x)[:, 8])


def test_the_zero_state_of_a_crdnn_with_batchnorm_leaves_its_statistics_alone() -> None:
    """init_state ran the CRDNN on zeros in training mode: LiGRU's BatchNorm moved towards them."""
    enc = ChunkStreamingEncoder(crdnn(rnn_class=LiGRU), input_size=F_IN, chunk_size=4).train()
    assert enc.mode == "recurrent"
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    state = enc.init_state(2)
    assert enc.init_state(3)["rnn"].shape[1] == 3 and bool((state["rnn"] == 0).all())
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    assert enc.training


def test_a_frame_mixing_front_end_streams_as_it_is_trained() -> None:
    """forward ran the input module over the whole utterance, step per chunk: they differed by 1.3."""

    class ConvFront(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv1d(10, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x.transpose(1, 2)).transpose(1, 2)

    torch.manual_seed(0)
    conf = ConformerEncoder(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3, dropout=0.0)
    enc = ChunkStreamingEncoder(conf, input_size=10, chunk_size=4, input_module=ConvFront()).eval()
    ch, n = frames_to_chunks(torch.randn(1, 12, 10), torch.tensor([12]), 4)
    with torch.no_grad():
        y, _ = enc(ch, n)
        state, outs = enc.init_state(1), []
        for i in range(3):
            o, state = enc.step(ch[:, i], state)
            outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), y, atol=1e-5, rtol=1e-5)


def test_fused_attention_is_measured_and_an_uncounted_module_refused() -> None:
    """nn.TransformerEncoder at inference measured 4096 FLOPs per frame of its 10240 (the CPU attention kernels)."""
    d, T = 16, 96
    layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
    enc = SpeechBrainEncoder(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), input_size=d,
                             probe_frames=T).eval()
    assert enc.flops_per_frame() == 2 * (2 * d * 32) + 4 * 2 * d * d + 2 * 2 * T * d  # FFN, projections, attention
    mha = nn.MultiheadAttention(d, 2, batch_first=True).eval()
    x = torch.randn(1, T, d)
    assert measured_flops(lambda: mha(x, x, x, need_weights=False)) == measured_flops(lambda: mha(x, x, x)) > 0
    assert torch.backends.mha.get_fastpath_enabled()  # put back

    class Hidden(nn.Module):  # an operator the counter cannot see
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w.sum()

    with pytest.raises(ValueError, match="measured 0 FLOPs"):
        SpeechBrainEncoder(Hidden(), input_size=3).flops_per_frame()
    with pytest.raises(ValueError, match="fewer than the module's time downsampling 2"):
        SpeechBrainEncoder(crdnn(time_pooling=True), input_size=F_IN, probe_frames=1).flops_per_frame()


def test_a_forced_branch_that_changes_the_frame_rate_is_named() -> None:
    """force_branch=1 failed with a broadcast error where the routed path names the branch."""
    fast = SpeechBrainEncoder(crdnn(time_pooling=True), F_IN)
    slow = SpeechBrainEncoder(crdnn(time_pooling=True), F_IN, output_size=8)
    x, n = torch.randn(2, 10, F_IN), torch.tensor([10, 7])
    for forced in (None, 1):
        with pytest.raises(ValueError, match="changes the frame rate"):
            AmortizedEncoder(fast, slow, force_branch=forced)(x, n)


@pytest.mark.parametrize("left", [1.5, -1, True])
def test_a_fractional_left_context_is_refused(left: object) -> None:
    conf = ConformerEncoder(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3)
    with pytest.raises(ValueError, match="left_context_chunks"):
        ChunkStreamingEncoder(conf, input_size=16, chunk_size=4, left_context_chunks=left)


def test_a_module_that_rounds_partial_groups_both_ways_is_refused() -> None:
    """A ceil front end before a floor pooling: one probe at 121 frames read it as floor; 123 frames lost a frame."""

    class CeilThenFloor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)[:, ::2]  # ceil(T / 2)
            return torch.nn.functional.avg_pool1d(h.transpose(1, 2), 2).transpose(1, 2)  # floor

    with pytest.raises(ValueError, match="neither always down nor always up"):
        SpeechBrainEncoder(CeilThenFloor(), input_size=4, takes_lengths=False)
