"""Existing SpeechBrain module instances behind the encoder contract, per frame or per chunk.

A team that already has a SpeechBrain ``CRDNN``, ``ConformerEncoder``,
``TransformerEncoder``, LSTM/GRU stack or any module taking ``x`` (and optionally
SpeechBrain's *relative* lengths) wraps the instance it has, weights and all:

* :class:`SpeechBrainEncoder`: the plain (whole-utterance) contract,
  ``forward(x (B, T, F), lengths (B,) absolute int64) -> (y (B, T', D), out_lengths)``.
  Absolute lengths become SpeechBrain's relative lengths (or a key padding mask for
  transformer encoders); the output size ``D`` and the time downsampling ``T / T'``
  (a ``CRDNN`` with ``time_pooling`` pools time) are probed with a dummy forward.
  It has no ``step``: an :class:`~lightning_amortized.nn.amortized.AmortizedEncoder`
  mixes such branches on whole-utterance outputs.
* :class:`ChunkStreamingEncoder`: the streaming contract where **one contract frame is
  one chunk** of ``chunk_size`` feature frames, so an AmNet routes chunk by chunk.
  A ``ConformerEncoder`` streams the SpeechBrain way (Dynamic Chunk Training: chunked
  attention with ``left_context_chunks`` chunks of cached left context, Dynamic Chunk
  Convolution); a ``CRDNN`` with a unidirectional RNN carries its RNN state and gives
  its CNN its receptive field of left context; any other module streams by *windowed
  recomputation* (each chunk is encoded together with the ``left_context_chunks``
  chunks of input before it). In every case ``forward`` computes exactly what ``step``
  computes chunk after chunk, so what is trained is what streams.

**FLOPs.** These modules have no analytic count in
:mod:`lightning_amortized.functional.flops`, so ``flops_per_frame()`` is *measured*
with :class:`torch.utils.flop_counter.FlopCounterMode` on a batch of one (see
:func:`measured_flops`): matrix products and convolutions at 2 FLOPs per
multiply-accumulate. Bias additions, normalisations, non-linearities and softmax are
not counted by PyTorch, so a measured count is a lower bound, a few percent under what
the analytic counters give for the same layers (``tests/functional/test_flop_counter_agreement.py``
checks the two against each other). ``torch.nn.LSTM`` on a padded tensor runs as one
fused operator that PyTorch 2.11 does not count; its matrix products are then added
from its shapes.

**What SpeechBrain 1.1.2 streams.** ``ConformerEncoder.forward_streaming`` with
``make_streaming_context(DynChunkTrainConfig(chunk_size, left_context_size))``; an
infinite left context (``left_context_size=None``) fails there (``None > 0``), and its
context object is mutated in place and starts empty, which a per-frame gated state
cannot blend. :class:`ChunkStreamingEncoder` therefore runs the same layer computation
(the test checks it against ``forward_streaming`` and against the chunk-masked
``forward``) on fixed-size tensor state: the cached attention inputs with a validity
mask, and the convolution's left context after its pointwise bottleneck (zeros stand
for "no context", exactly the zero padding SpeechBrain uses). Only ``RelPosMHAXL``
attention (SpeechBrain's default and what its streaming recipes use) is supported;
``CRDNN``, ``TransformerEncoder`` and recurrent stacks have no streaming in
SpeechBrain 1.1.2: a ``CRDNN`` whose RNN is unidirectional is streamed here part by
part (CNN windows, carried RNN state, per-frame DNN); the others by windowed
recomputation (exact for the window, but a recurrent layer inside forgets everything
older than the window, and a bidirectional one sees no further than the chunk end).

Example:
    >>> import torch
    >>> from speechbrain.lobes.models.CRDNN import CRDNN
    >>> crdnn = CRDNN(input_size=20, cnn_blocks=1, cnn_channels=[4], inter_layer_pooling_size=[2],
    ...               time_pooling=True, time_pooling_size=2, rnn_layers=1, rnn_neurons=8,
    ...               rnn_bidirectional=False, dnn_blocks=1, dnn_neurons=8)
    >>> enc = SpeechBrainEncoder(crdnn, input_size=20)
    >>> y, n = enc(torch.randn(2, 12, 20), torch.tensor([12, 7]))
    >>> y.shape, n.tolist(), enc.time_downsampling
    (torch.Size([2, 6, 8]), [6, 3], 2)"""

from lightning_amortized.nn.speechbrain_encoders.chunks import chunks_to_frames, frames_to_chunks
from lightning_amortized.nn.speechbrain_encoders.flops import measured_flops
from lightning_amortized.nn.speechbrain_encoders.streaming import ChunkStreamingEncoder
from lightning_amortized.nn.speechbrain_encoders.wrapped import SpeechBrainEncoder

__all__ = [
    "ChunkStreamingEncoder",
    "SpeechBrainEncoder",
    "chunks_to_frames",
    "frames_to_chunks",
    "measured_flops",
]
