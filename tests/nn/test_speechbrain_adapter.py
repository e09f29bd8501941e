"""Existing SpeechBrain instances behind the encoder contract; chunk streaming; an AmNet of a CRDNN and a Conformer."""

from __future__ import annotations

import pytest
import torch
from speechbrain.lobes.models.CRDNN import CRDNN
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.nnet.attention import RelPosEncXL
from speechbrain.nnet.RNN import GRU, LSTM
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
from torch import nn

from lightning_amortized.nn import (
    AmortizedEncoder,
    ChunkStreamingEncoder,
    SpeechBrainEncoder,
    chunks_to_frames,
    frames_to_chunks,
    stream,
)

F_IN = 12


def tiny_crdnn(time_pooling: bool = False) -> CRDNN:
    return CRDNN(
        input_size=F_IN,
        cnn_blocks=1,
        cnn_channels=[4],
        cnn_kernelsize=(3, 3),
        inter_layer_pooling_size=[2],
        time_pooling=time_pooling,
        time_pooling_size=2,
        rnn_class=GRU,
        rnn_layers=1,
        rnn_neurons=8,
        rnn_bidirectional=False,
        dnn_blocks=1,
        dnn_neurons=8,
        dropout=0.0,
    )


def tiny_conformer(layers: int = 2, kernel_size: int = 5) -> ConformerEncoder:
    return ConformerEncoder(num_layers=layers, d_model=16, d_ffn=32, nhead=2, kernel_size=kernel_size)


def test_crdnn_absolute_lengths_become_relative_and_time_pooling_is_probed():
    torch.manual_seed(0)
    crdnn = tiny_crdnn(time_pooling=True).eval()
    enc = SpeechBrainEncoder(crdnn, input_size=F_IN).eval()
    assert (enc.input_size, enc.output_size, enc.time_downsampling) == (F_IN, 8, 2)
    x, lengths = torch.randn(2, 10, F_IN), torch.tensor([10, 7])
    y, out = enc(x, lengths)
    # CRDNN's time pooling drops a partial pair: floor(7 / 2) = 3 frames (was ceil: a 4th frame pooled padding,
    # one more than CTC found in y for an odd batch maximum)
    assert not enc._rounds_up and y.shape == (2, 5, 8) and out.tolist() == [5, 3]
    torch.testing.assert_close(y[0], crdnn(x)[0])  # the instance itself, weights untouched
    assert bool((y[1, 3:] == 0).all())  # past the output length
    y_odd, out_odd = enc(x[:, :9], torch.tensor([9, 7]))
    assert y_odd.shape[1] == 4 and out_odd.tolist() == [4, 3]  # every output length within y

    calls = []

    class TakesLengths(nn.Module):
        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            calls.append(lengths)
            return x[..., :3]

    enc = SpeechBrainEncoder(TakesLengths(), input_size=F_IN)
    calls.clear()
    enc(torch.randn(2, 8, F_IN), torch.tensor([8, 2]))
    torch.testing.assert_close(calls[0], torch.tensor([1.0, 0.25]))  # SpeechBrain's relative lengths
    calls.clear()
    enc(torch.randn(2, 22, F_IN), torch.tensor([22, 13]))  # 13 / 22 * 22 truncates to 12 in float32
    assert (calls[0] * 22).long().tolist() == [22, 13]
    assert enc.output_size == 3


def test_measured_flops_of_wrapped_recurrent_stacks_match_their_matrix_products():
    """FlopCounterMode counts matrix products only (2 FLOPs per MAC): 2 * G * H * (I + H) per layer.

    SpeechBrain's LSTM runs ``torch.nn.LSTM``, which PyTorch 2.11 does not count; the
    adapter adds its products from the shapes, so it is counted like the GRU.
    """
    I, H = F_IN, 10
    for cls, gates in ((GRU, 3), (LSTM, 4)):
        enc = SpeechBrainEncoder(cls(hidden_size=H, input_shape=(1, 5, I), num_layers=2), input_size=I, probe_frames=20)
        assert enc.flops_per_frame() == 2 * gates * H * (I + H) + 2 * gates * H * (H + H), cls.__name__
        assert enc.takes_lengths  # SpeechBrain RNNs take relative lengths


def test_conformer_chunk_step_equals_speechbrain_streaming_and_chunk_masked_forward():
    """Chunk 2 < convolution padding 3: the convolution's context spans two chunks."""
    torch.manual_seed(0)
    conf = tiny_conformer(layers=2, kernel_size=7).eval()
    C, L, N = 2, 2, 6
    enc = ChunkStreamingEncoder(conf, input_size=16, chunk_size=C, left_context_chunks=L).eval()
    assert enc.native_streaming and (enc.input_size, enc.output_size, enc.frames_per_chunk) == (32, 32, 2)
    x = torch.randn(1, N * C, 16)
    chunks, n = frames_to_chunks(x, torch.tensor([N * C]), C)

    # SpeechBrain's own streaming: forward_streaming with a mutable context
    cfg = DynChunkTrainConfig(C, L)
    ctx, pos, ref = conf.make_streaming_context(cfg), RelPosEncXL(16), []
    for i in range(N):
        c = x[:, i * C : (i + 1) * C]
        left = ctx.layers[0].mha_left_context
        dummy = c if left is None else torch.empty(1, C + left.shape[1], 16)
        ref.append(conf.forward_streaming(c, ctx, pos_embs=pos(dummy))[0])
    ref = torch.cat(ref, 1)
    # and SpeechBrain's training-time computation: chunk attention mask + Dynamic Chunk Convolution
    masked, _ = conf(x, src_mask=make_transformer_src_mask(x, dynchunktrain_config=cfg), pos_embs=pos(x),
                     dynchunktrain_config=cfg)
    torch.testing.assert_close(masked, ref, atol=1e-5, rtol=0)

    state, steps = enc.init_state(1), []
    for i in range(N):
        y_t, state = enc.step(chunks[:, i], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1).reshape(1, N * C, 16), ref, atol=1e-5, rtol=0)
    y, _ = enc(chunks, n)
    torch.testing.assert_close(y.reshape(1, N * C, 16), ref, atol=1e-5, rtol=0)
    assert state["valid"].tolist() == [[1.0] * (L * C)]
    assert [t.shape for t in state["conv"]] == [torch.Size([1, 3, 16])] * 2


def test_windowed_crdnn_chunks_equal_the_module_on_each_window():
    torch.manual_seed(0)
    crdnn = tiny_crdnn(time_pooling=True).eval()
    enc = ChunkStreamingEncoder(crdnn, F_IN, chunk_size=4, left_context_chunks=1, output_size=6, windowed=True).eval()
    assert enc.mode == "window" and (enc.frames_per_chunk, enc.input_size, enc.output_size) == (2, 48, 12)
    x = torch.randn(2, 11, F_IN)
    lengths = torch.tensor([11, 6])
    chunks, n = frames_to_chunks(x, lengths, 4)
    y, n_out = enc(chunks, n)
    assert y.shape == (2, 3, 12) and n_out.tolist() == [3, 2]
    state, steps = enc.init_state(2), []
    for i in range(3):
        y_t, state = enc.step(chunks[:, i], state)
        steps.append(y_t)
    steps = torch.stack(steps, 1) * (torch.arange(3)[None, :, None] < n[:, None, None])
    torch.testing.assert_close(steps, y, atol=1e-5, rtol=0)
    # chunk 2 of utterance 0 is the module on frames 4..11 (chunk 1 as context), last 2 output frames
    frames = chunks[0].reshape(12, F_IN)
    direct = enc.proj(crdnn(frames[None, 4:12])[:, -2:]).reshape(12)
    torch.testing.assert_close(y[0, 2], direct, atol=1e-5, rtol=0)
    f, fl = chunks_to_frames(y, lengths, frame_size=6, time_downsampling=2)
    assert f.shape == (2, 6, 6) and fl.tolist() == [6, 3]
    # FLOPs per chunk: the whole 8-frame window is encoded for every chunk
    assert enc.flops_per_frame() > SpeechBrainEncoder(crdnn, F_IN, output_size=6, probe_frames=8).flops_per_frame() * 2


def test_crdnn_streams_with_its_rnn_state_and_a_cnn_receptive_field_of_context():
    torch.manual_seed(0)
    crdnn = tiny_crdnn(time_pooling=True).eval()
    enc = ChunkStreamingEncoder(crdnn, input_size=F_IN, chunk_size=4).eval()
    assert enc.mode == "recurrent" and enc.cnn_context == 2  # two 3-frame convolutions: 1 + 1 frames
    x = torch.randn(2, 24, F_IN)
    chunks, n = frames_to_chunks(x, torch.tensor([24, 13]), 4)
    y, _ = enc(chunks, n)
    state, steps = enc.init_state(2), []
    for i in range(6):
        y_t, state = enc.step(chunks[:, i], state)
        steps.append(y_t)
    steps = torch.stack(steps, 1) * (torch.arange(6)[None, :, None] < n[:, None, None])
    torch.testing.assert_close(steps, y, atol=1e-5, rtol=0)
    assert [t.shape for t in [state["cnn"], state["rnn"]]] == [torch.Size([2, 2, F_IN]), torch.Size([1, 2, 8])]
    # the RNN remembers the first chunk five chunks later; a 1-chunk window forgets it
    changed = chunks.clone()
    changed[:, 0] += 1.0
    windowed = ChunkStreamingEncoder(crdnn, input_size=F_IN, chunk_size=4, windowed=True).eval()
    assert not torch.allclose(enc(changed, n)[0][0, 5], y[0, 5])
    torch.testing.assert_close(windowed(changed, n)[0][0, 5], windowed(chunks, n)[0][0, 5])
    # and costs one chunk plus 2 frames of CNN context, where the window costs two chunks
    assert enc.flops_per_frame() < windowed.flops_per_frame()


def test_adapter_errors_name_the_problem():
    crdnn = tiny_crdnn(time_pooling=True)
    with pytest.raises(ValueError, match="multiple of the module's time downsampling 2"):
        ChunkStreamingEncoder(crdnn, input_size=F_IN, chunk_size=3)
    with pytest.raises(ValueError, match="infinite left context"):
        ChunkStreamingEncoder(crdnn, input_size=F_IN, chunk_size=4, left_context_chunks=None)
    with pytest.raises(ValueError, match=r"dummy forward of CRDNN on \(1, 120, 13\) failed"):
        SpeechBrainEncoder(crdnn, input_size=F_IN + 1)
    causal = ConformerEncoder(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3, causal=True)
    with pytest.raises(ValueError, match="causal or dilated"):
        ChunkStreamingEncoder(causal, input_size=16, chunk_size=4)
    regular = ConformerEncoder(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3, attention_type="regularMHA")
    with pytest.raises(ValueError, match="attention_type='regularMHA'"):
        ChunkStreamingEncoder(regular, input_size=16, chunk_size=4)
    assert ChunkStreamingEncoder(regular, input_size=16, chunk_size=4, windowed=True).mode == "window"
    with pytest.raises(TypeError, match="torch.nn.Module"):
        SpeechBrainEncoder("crdnn", input_size=F_IN)  # type: ignore[arg-type]


def test_amnet_of_crdnn_and_chunk_conformer_trains_and_streams_per_chunk():
    """Fast: a CRDNN (windowed chunks); slow: a chunk-streaming Conformer; one AmNet frame = one 4-frame chunk."""
    torch.manual_seed(0)
    C = 4
    fast = ChunkStreamingEncoder(tiny_crdnn(), input_size=F_IN, chunk_size=C, left_context_chunks=1, output_size=16)
    slow = ChunkStreamingEncoder(tiny_conformer(), input_size=F_IN, chunk_size=C, left_context_chunks=2,
                                 input_module=nn.Linear(F_IN, 16))
    am = AmortizedEncoder(fast, slow, frame_ms=C * 10.0, device_flops_per_s=5e6)
    flops = am.branch_flops()
    assert flops[0] < flops[1] and am.slow_index == 1
    head = nn.Linear(16, 5)
    opt = torch.optim.SGD([*am.parameters(), *head.parameters()], lr=0.05)
    x, lengths = torch.randn(3, 22, F_IN), torch.tensor([22, 15, 9])
    chunks, n = frames_to_chunks(x, lengths, C)
    targets = torch.randint(1, 5, (3, 4))
    before = {k: v.clone() for k, v in am.state_dict().items()}
    am.train()
    for _ in range(3):
        y, n_out = am(chunks, n)
        frames, frame_lengths = chunks_to_frames(y, lengths, frame_size=16)
        logp = head(frames).log_softmax(-1).transpose(0, 1)
        ctc = nn.functional.ctc_loss(logp, targets, frame_lengths, torch.tensor([4, 3, 2]))
        routing = am.routing_losses(lambda_cost=0.1, lambda_amr=1.0)
        loss = ctc + routing["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert am.last_routing.gates.shape == (3, 6, 2) and n_out.tolist() == [6, 4, 3]
    changed = {
        ".".join(k.split(".")[2:4])
        for k, v in am.state_dict().items()
        if k.startswith("core.branches") and not torch.equal(v, before[k])
    }
    # both wrapped instances learned, and the CRDNN's projection and the Conformer's input layer
    assert {"0.module", "0.proj", "1.module", "1.input_module"} <= changed
    assert not torch.equal(am.arbitrator.hidden.weight, before["arbitrator.hidden.weight"])

    # streaming, chunk by chunk with hard decisions, gives what the eval forward gives
    am.eval()
    r = stream(am, chunks[1, : int(n[1])])
    y, _ = am(chunks[1:2, : int(n[1])], n[1:2])
    torch.testing.assert_close(r.outputs, y[0], atol=1e-5, rtol=0)
    assert torch.equal(r.decisions, am.last_routing.decisions[0]) and r.frame_ms == 40.0
    slow_only = stream(am, chunks[1, : int(n[1])], force_branch=1)
    ref, _ = slow(chunks[1:2, : int(n[1])], n[1:2])
    torch.testing.assert_close(slow_only.outputs, ref[0], atol=1e-5, rtol=0)


def test_docstring_examples_run():
    import doctest

    import importlib

    attempted = 0
    for name in ("", ".chunks", ".flops", ".streaming", ".wrapped"):
        mod = importlib.import_module(f"lightning_amortized.nn.speechbrain_encoders{name}")
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
        attempted += result.attempted
    assert attempted >= 8


def test_docs_example_runs(capsys, tmp_path):
    """The example of docs/amortized.md ("Wrapping your SpeechBrain encoders") runs as printed."""
    import runpy
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "amortized.md").read_text()
    section = text.split("## Wrapping your SpeechBrain encoders", 1)[1]
    script = tmp_path / "example.py"
    script.write_text(section.split("```python\n", 1)[1].split("```", 1)[0])
    torch.manual_seed(0)
    runpy.run_path(str(script))
    printed = capsys.readouterr().out.splitlines()
    fast, slow = (int(v) for v in printed[0].strip("[]").split(","))
    assert fast < slow and "RTF" in printed[1]


def test_conformer_adapter_outputs_do_not_depend_on_the_batch_padding():
    import copy

    from lightning_amortized.nn import ConformerEncoderAdapter

    torch.manual_seed(0)
    enc = ConformerEncoderAdapter(8, d_model=16, num_layers=2, nhead=2, d_ffn=32, kernel_size=3, dropout=0.0).eval()
    twin = copy.deepcopy(enc)  # the hooks of a copy mask the copy's own batches
    x = torch.randn(1, 10, 8)
    with torch.no_grad():
        ref, _ = enc(x, torch.tensor([10]))
        for model in (enc, twin):
            for pad in (1, 6):
                padded = torch.cat([x, torch.randn(1, pad, 8)], 1)  # whatever lies past the end
                y, _ = model(padded, torch.tensor([10]))
                assert torch.allclose(y[:, :10], ref, atol=1e-5), (pad, (y[:, :10] - ref).abs().max())
            batch = torch.cat([torch.cat([x, torch.zeros(1, 4, 8)], 1), torch.randn(1, 14, 8)])
            y, _ = model(batch, torch.tensor([10, 14]))
            assert torch.allclose(y[:1, :10], ref, atol=1e-5)


def test_a_wrapped_speechbrain_conformer_does_not_read_the_batch_padding():
    torch.manual_seed(0)
    enc = SpeechBrainEncoder(ConformerEncoder(num_layers=2, d_model=16, d_ffn=32, nhead=2, kernel_size=3, dropout=0.0),
                             input_size=16).eval()
    x = torch.randn(1, 10, 16)
    with torch.no_grad():
        ref, _ = enc(x, torch.tensor([10]))
        y, _ = enc(torch.cat([x, torch.randn(1, 6, 16)], 1), torch.tensor([10]))
    assert torch.allclose(y[:, :10], ref, atol=1e-5)

