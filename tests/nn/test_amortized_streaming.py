"""Streaming inference: only the chosen branch computes, timing, thread settings restored."""

from __future__ import annotations

import pytest
import torch

from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder, compare_wall_clock, stream


def test_stream_matches_forward_and_restores_threads():
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 16, 2), fast="sparse", density=0.3, frame_ms=25.0)
    am.train()
    x = torch.randn(15, 12)
    old = torch.get_num_threads()
    am.arbitrator.eval()  # a submodule kept in eval (frozen) stays so: stream() used to flatten the modes
    r = stream(am, x)
    assert torch.get_num_threads() == old and am.training and not am.arbitrator.training  # all restored
    am.eval()
    y, _ = am(x[None], torch.tensor([15]))
    torch.testing.assert_close(r.outputs, y[0], atol=1e-5, rtol=0)
    assert torch.equal(r.decisions, am.last_routing.decisions[0])
    assert r.wall_ms.shape == (15,) and bool((r.wall_ms > 0).all())
    assert r.rtf == pytest.approx(r.total_ms / (15 * 25.0))
    forced = stream(am, x, force_branch=1)
    assert forced.decisions.tolist() == [1] * 15
    with pytest.raises(ValueError, match="frame_ms"):
        stream(RecurrentEncoder(12, 16, 1), x)


@pytest.mark.slow
def test_fast_branch_takes_less_wall_clock_than_slow():
    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(80, 512, 2), fast="lowrank", rank=32)
    result = compare_wall_clock(am, torch.randn(30, 80), repeats=3)
    # rank 32 vs dense 512: about 8x fewer FLOPs; a relaxed bound against timing noise
    assert result["fast_over_slow"] < 0.9, result
    assert 0.0 <= result["routed_slow_share"] <= 1.0


def test_the_batched_backlog_is_bit_equal_to_the_streaming_one():
    """Both price a frame as cost_ms(arbitrator + branch FLOPs), as the device runtime does (it used to add ms)."""
    from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder

    torch.manual_seed(0)
    enc = AmortizedEncoder.from_recurrent(RecurrentEncoder(8, 16, num_layers=1), fast="lowrank", rank=2).eval()
    flops, arb = enc.branch_flops(), enc.arbitrator.flops_per_frame()
    x = torch.randn(1, 40, 8)
    with torch.no_grad():
        enc.arbitrator.out.bias.copy_(torch.tensor([-50.0, 50.0]))  # always the slow branch: a growing backlog
        for cached in (False, True):  # begin_streaming looks the frame costs up (per device) instead
            if cached:
                enc.begin_streaming()
            for slowdown in (1.37, 1.9, 2.3):
                enc.set_device((max(flops) + arb) / 0.03 / slowdown)
                enc(x, torch.tensor([40]))
                batched = enc.last_routing.backlog_ms[0]
                state, streamed = enc.init_state(1), []
                for t in range(40):
                    _, state, _ = enc.step_with_decision(x[:, t], state)
                    streamed.append(state[1][0])
                assert torch.equal(batched, torch.stack(streamed)) and batched[-1] > 0


def test_a_streaming_sparse_amnet_can_be_copied_and_pickled():
    """Its CSR cache cannot be copied: the copy builds its own and streams the same frames."""
    import copy
    import io

    torch.manual_seed(0)
    am = AmortizedEncoder.from_recurrent(RecurrentEncoder(12, 16, 2), fast="sparse", density=0.3, frame_ms=25.0).eval()
    am.begin_streaming()
    buf = io.BytesIO()
    torch.save(am, buf)
    buf.seek(0)
    for twin in (copy.deepcopy(am), torch.load(buf, weights_only=False)):
        assert twin.core._stream_cache is not None and twin.core._stream_cache[0]["csr"]
        x, s1, s2 = torch.randn(1, 12), am.init_state(1), twin.init_state(1)
        for _ in range(3):
            y1, s1, _ = am.step_with_decision(x, s1)
            y2, s2, _ = twin.step_with_decision(x, s2)
            assert torch.equal(y1, y2)
    am.end_streaming()
    assert copy.deepcopy(am).core._stream_cache is None


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_recurrent_step_equals_forward_with_the_slow_branch_kernels(rnn_type: str) -> None:
    """RecurrentEncoder.step runs the amortized slow branch's per-frame kernels: slow-only is timed on equal terms."""
    torch.manual_seed(0)
    enc = RecurrentEncoder(10, 12, num_layers=2, rnn_type=rnn_type, projection=7).eval()
    amn = AmortizedEncoder.from_recurrent(RecurrentEncoder(10, 12, num_layers=2, rnn_type=rnn_type, projection=7),
                                          fast="lowrank", rank=2, frame_ms=30.0).eval()
    amn.core.encoder.load_state_dict(enc.state_dict())
    x = torch.randn(1, 9, 10)
    with torch.no_grad():
        y, _ = enc(x, torch.tensor([9]))
        state, amn_state, outs = enc.init_state(1), amn.core.init_state(1), []
        for t in range(9):
            o, state = enc.step(x[:, t], state)
            slow, amn_state = amn.core.step(x[:, t], amn_state, torch.tensor([1]))
            torch.testing.assert_close(o, slow, atol=0, rtol=0)  # the same kernels, bit for bit
            outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), y, atol=1e-5, rtol=0)
    import copy

    enc.begin_streaming()  # with autograd on: the cached views must not block a copy
    twin = copy.deepcopy(enc)
    assert twin._stream_layers is not None and torch.equal(twin.step(x[:, 0], twin.init_state(1))[0], outs[0])
    enc.end_streaming()
    cached = stream(enc, x[0], frame_ms=30.0)  # begin_streaming caches the layers' weights: the same outputs
    assert torch.equal(cached.outputs, torch.stack(outs, 1)[0]) and getattr(enc, "_stream_layers", None) is None
    dropout = RecurrentEncoder(10, 12, num_layers=2, rnn_type=rnn_type, dropout=0.5).train()
    assert dropout.step(x[:, 0], dropout.init_state(1))[0].shape == (1, 12)  # nn.LSTM's own dropout path


def test_weights_loaded_while_streaming_are_used_with_autograd_on() -> None:
    """The caches hold views of the weights: a load_state_dict in between is seen, in grad mode too."""
    torch.manual_seed(0)
    enc, other = RecurrentEncoder(6, 8, num_layers=2).eval(), RecurrentEncoder(6, 8, num_layers=2).eval()
    amn = AmortizedEncoder.from_recurrent(RecurrentEncoder(6, 8, num_layers=2), fast="lowrank", rank=2,
                                          frame_ms=30.0).eval()
    x = torch.randn(1, 6)
    enc.begin_streaming()
    amn.begin_streaming()
    enc.load_state_dict(other.state_dict())
    amn.core.encoder.load_state_dict(other.state_dict())
    want = other.step(x, other.init_state(1))[0]
    torch.testing.assert_close(enc.step(x, enc.init_state(1))[0], want, atol=1e-6, rtol=0)
    forced = amn.step_with_decision(x, amn.init_state(1), force_branch=1)[0]
    torch.testing.assert_close(forced, want, atol=1e-6, rtol=0)


def test_stream_restores_the_modes_when_it_fails_before_streaming() -> None:
    enc = RecurrentEncoder(6, 8, num_layers=1).train()
    with pytest.raises(RuntimeError):
        stream(enc, torch.randn(4, 6), frame_ms=30.0, num_threads=0)
    assert enc.training


def test_stream_waits_for_the_accelerator_before_reading_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU a frame's time must cover its kernels, not only their launch (CPU: nothing to wait for)."""
    from lightning_amortized.nn import streaming

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(f"cuda:{device}"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    streaming._synchronize(torch.device("cpu"))
    assert calls == []
    streaming._synchronize(torch.device("cuda", 1))
    streaming._synchronize(torch.device("mps"))
    assert calls == ["cuda:cuda:1", "mps"]
    # stream() waits once before the first frame and after every frame, and builds no autograd graph
    waits: list[torch.device] = []
    monkeypatch.setattr(streaming, "_synchronize", waits.append)
    enc = RecurrentEncoder(8, 4, 1)
    r = stream(enc, torch.randn(5, 8), frame_ms=30.0)
    assert len(waits) == 5 + 1 and not r.outputs.requires_grad
    assert enc.rnn.rnn.weight_ih_l0.requires_grad  # the weights stay trainable
