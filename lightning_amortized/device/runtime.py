"""The device runtime: an exported model in ONNX Runtime and a streaming recognizer around it.

No PyTorch, no Lightning: numpy, onnxruntime, safetensors (and soundfile for files).

:class:`ExportedModel` loads ``manifest.json``, checks ``weights.safetensors`` and opens
one ONNX Runtime session per graph (single-threaded by default, like the simulated device).
:class:`StreamingRecognizer` takes audio in chunks, computes log-mel features
(:mod:`~lightning_amortized.device.features`), stacks frames, and per encoder frame

1. asks the arbitrator (AmNet only) with the frame, the backlog before the frame and the
   previous gate, and takes the ``argmax`` branch;
2. runs only that branch's step graph on the state it owns (shared-state AmNet: the one
   ``h``/``c`` both branches update; independent branches: the chosen branch's own state,
   the other's stays as it was);
3. advances the backlog with :func:`lightning_amortized.backlog_rule.next_backlog`, the
   same rule as training, on either the simulated cost (``backlog="simulated"``:
   ``(arbitrator + branch FLOPs) / device FLOP/s``, float32, exactly as the PyTorch
   ``step``; routes are identical to PyTorch) or the compute time measured on this
   machine (``backlog="measured"``: what a real device would feed its arbitrator);
4. keeps the CTC logits for greedy decoding (partial transcripts at any time).

Example::

    >>> model = ExportedModel("exported/")  # doctest: +SKIP
    >>> rec = StreamingRecognizer(model)  # doctest: +SKIP
    >>> for chunk in chunks:  # doctest: +SKIP
    ...     partial = rec.accept(chunk)
    >>> result = rec.finish()  # doctest: +SKIP
    >>> result.text, result.ms_per_frame, result.eou_ms  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_amortized.backlog_rule import allowed_branches, check_guard, eou_latency_ms, next_backlog
from lightning_amortized.device.features import FeatureStream, LogMel, normalize_utterance
from lightning_amortized.device.weights import read_weights
from lightning_amortized.errors import first_line

__all__ = ["EXPORT_FORMAT", "ExportedModel", "ManifestError", "StreamingRecognizer", "Transcript", "ctc_greedy"]

EXPORT_FORMAT = "lightning_amortized.device"
#: Manifest versions this runtime reads: 2 adds ``arbitrator.latency_guard`` (a version-1 reader would ignore it).
SUPPORTED_EXPORT_VERSIONS = (1, 2)
NORMALIZE_MODES = ("utterance", "running")
BACKLOG_MODES = ("simulated", "measured")


class ManifestError(ValueError):
    """The export folder is missing files or its manifest is not one this runtime reads."""


def ctc_greedy(best_path: np.ndarray, vocabulary: list[str], blank: int = 0) -> str:
    """Collapse a frame-level argmax path ``(T,)``: merge repeats, drop blanks, collapse spaces.

    Example:
        >>> ctc_greedy(np.array([0, 8, 8, 0, 8, 9, 0]), ["<blank>", " ", "'", "A", "B", "C", "D", "E", "F", "G"])
        'FFG'
    """
    path = np.asarray(best_path).reshape(-1)
    keep = np.ones(path.shape, dtype=bool)
    if path.size > 1:
        keep[1:] = path[1:] != path[:-1]
    keep &= path != blank
    text = "".join(vocabulary[int(i)] for i in path[keep])
    return " ".join(text.split())


def _file_stamp(path: Path) -> tuple[int, ...] | None:
    """``(inode, size, mtime_ns, ctime_ns)`` of a file, ``None`` if it is gone: whether it was rewritten or replaced
    since (an atomic replace gives a new inode; a write in place moves ``ctime``, which no tool can set back)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def session_options(num_threads: int = 1) -> Any:
    """The ONNX Runtime settings of every graph session: ``num_threads`` intra-op threads, sequential, all
    graph optimisations, warnings off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(num_threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


class ExportedModel:
    """An export folder opened in ONNX Runtime.

    Args:
        path: Folder written by ``lightning-amortized export``.
        num_threads: ONNX Runtime intra-op threads per session (1: a single-threaded device).
        verify: Hash ``weights.safetensors`` and compare with its recorded hash.

    Attributes:
        manifest: The parsed ``manifest.json``.
        weights_sha256: SHA-256 of the weights in use (changes when diffs are applied).
        load_seconds: Wall time of opening the folder and its sessions (the merged step graph opens later, on first use).

    Raises:
        ManifestError: missing or unknown manifest, missing or damaged graph files (the merged step
            graph ``amnet_step.onnx`` only when it is first used, see :attr:`merged`).
        lightning_amortized.device.weights.WeightsError: damaged weights.
    """

    def __init__(self, path: str | Path, num_threads: int = 1, verify: bool = True) -> None:
        import onnxruntime as ort

        t0 = time.perf_counter()
        self.path = Path(path)
        try:
            manifest = json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            raise ManifestError(
                f"{str(self.path)!r} has no readable manifest.json ({err}); export the model with "
                "`lightning-amortized export CKPT --out DIR`."
            ) from err
        if manifest.get("format") != EXPORT_FORMAT or manifest.get("format_version") not in SUPPORTED_EXPORT_VERSIONS:
            raise ManifestError(
                f"{str(self.path)!r}: manifest format {manifest.get('format')!r} version "
                f"{manifest.get('format_version')!r} is not {EXPORT_FORMAT!r} version "
                f"{list(SUPPORTED_EXPORT_VERSIONS)}."
            )
        self.manifest = manifest
        weights = self.path / manifest["weights"]["file"]
        _, meta = read_weights(weights, verify=verify)
        self._weights_stat = _file_stamp(weights)
        self.weights_sha256 = meta.get("weights_sha256")
        opts = session_options(num_threads)

        def session(spec: dict[str, Any]) -> Any:
            f = self.path / spec["file"]
            if not f.is_file():
                raise ManifestError(f"{str(self.path)!r}: graph file {spec['file']!r} is missing.")
            try:
                return ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
                first = first_line(err)
                raise ManifestError(
                    f"{str(self.path)!r}: ONNX Runtime cannot load graph file {spec['file']!r} ({first}); "
                    "the file is damaged or truncated: export the model again."
                ) from err

        self.branch_names: list[str] = list(manifest["branches"])
        self.branches = [session(manifest["graphs"][n]) for n in self.branch_names]
        self.branch_specs = [manifest["graphs"][n] for n in self.branch_names]
        arb = manifest.get("arbitrator")
        self.arbitrator = session(arb) if arb else None
        self._arb_inputs = {i.name for i in self.arbitrator.get_inputs()} if self.arbitrator else set()
        self.merged_spec: dict[str, Any] | None = manifest.get("merged_step")
        self._session = session
        self._merged: Any = None  # opened on first use: a damaged merged graph leaves the two-call path working
        self._merged_inputs: set[str] = set()
        self.frame_ms = float(manifest["frame_ms"])
        dev = manifest["device_model"]
        self.device_flops_per_s = float(dev["flops_per_s"])
        if not (np.isfinite(self.device_flops_per_s) and self.device_flops_per_s > 0):
            raise ManifestError(
                f"{str(self.path)!r}: manifest device_model.flops_per_s is {dev['flops_per_s']!r}, not a positive "
                "finite FLOP/s; export the model again."
            )
        self.branch_flops = [int(s["flops_per_frame"]) for s in self.branch_specs]
        self.arbitrator_flops = int(arb["flops_per_frame"]) if arb else 0
        self.load_aware = bool(arb.get("load_aware", False)) if arb else False
        self.latency_guard = check_guard(arb.get("latency_guard")) if arb else None
        self.vocabulary: list[str] = list(manifest["vocabulary"])
        self.blank = int(manifest.get("blank", 0))
        self.features = LogMel(manifest["features"])
        self.stack = int(manifest["features"]["stack"])
        self.load_seconds = time.perf_counter() - t0

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def init_states(self) -> dict[str, np.ndarray]:
        """Zero recurrent states ``{name: (L, 1, H) float32}`` for a new utterance."""
        return {n: np.zeros(s["shape"], dtype=np.float32) for n, s in self.manifest["states"].items()}

    def arbitrate(
        self, x: np.ndarray, backlog_ms: np.float32, prev_gate: np.ndarray, load: np.float32 | None = None
    ) -> np.ndarray:
        """Arbitrator logits ``(K,)`` of frame ``x`` ``(F,)``, the backlog before it (ms), previous gate ``(K,)``.

        ``load`` is ``log rho`` of the device (load-aware arbitrators; see :meth:`load_feature`).
        """
        feed = self._arbitrator_feed(x, backlog_ms, prev_gate, load)
        return self.arbitrator.run(None, {k: v for k, v in feed.items() if k in self._arb_inputs})[0][0]

    def _arbitrator_feed(
        self, x: np.ndarray, backlog_ms: np.float32, prev_gate: np.ndarray, load: np.float32 | None
    ) -> dict[str, np.ndarray]:
        """The arbitrator's inputs (of the arbitrator graph and of the merged graph), before dropping those a
        traced graph lacks."""
        feed = {"x": x.reshape(1, -1), "backlog_ms": np.asarray([backlog_ms], dtype=np.float32),
                "prev_gate": prev_gate.reshape(1, -1)}
        if self.load_aware:
            feed["load"] = np.asarray([load], dtype=np.float32)
        return feed

    @staticmethod
    def _run_with_states(session: Any, spec: dict[str, Any], feed: dict[str, np.ndarray],
                         states: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run a step graph with the states ``spec`` names fed from ``states``, and replace them with its outputs
        (``y``, ``logits``, then the states in the same order)."""
        for name, io in spec["states"].items():
            feed[io["input"]] = states[name]
        out = session.run(None, feed)
        for k, name in enumerate(spec["states"]):
            states[name] = out[2 + k]
        return out

    @property
    def merged(self) -> Any:
        """The merged step graph's session (``amnet_step.onnx``), opened on first use; ``None`` without one.

        Raises:
            ManifestError: the graph file is missing or damaged.
        """
        if self._merged is None and self.merged_spec:
            weights = self.path / self.manifest["weights"]["file"]
            if _file_stamp(weights) != self._weights_stat:  # the other sessions hold the weights as opened
                raise ManifestError(
                    f"{str(weights)!r} changed since {str(self.path)!r} was opened (a diff applied?): open the folder "
                    "again with ExportedModel, so every graph runs the same weights."
                )
            self._merged = self._session(self.merged_spec)
            self._merged_inputs = {i.name for i in self._merged.get_inputs()}
        return self._merged

    def merged_step(
        self, x: np.ndarray, backlog_ms: np.float32, prev_gate: np.ndarray, mask: np.ndarray,
        states: dict[str, np.ndarray], load: np.float32 | None = None,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Arbitrate and run the chosen branch in one call of the merged graph (shared-state AmNets).

        Args:
            x: The encoder frame ``(F,)``.
            backlog_ms: The backlog before the frame, ms.
            prev_gate: The previous one-hot decision ``(2,)``.
            mask: ``(2,)`` added to the arbitrator's logits: ``0`` for an allowed branch, ``-inf``
                for one the latency guard forbids.
            states: The shared recurrent states, updated in place.
            load: ``log rho`` of the device (load-aware arbitrators; see :meth:`load_feature`).

        Returns:
            ``(choice, y (D,), logits (V,))``, as :meth:`arbitrate` and :meth:`step` give them.
        """
        feed = self._arbitrator_feed(x, backlog_ms, prev_gate, load)
        session = self.merged
        if session is None:
            raise ValueError(f"{str(self.path)!r} has no merged step graph: call arbitrate and step instead.")
        feed = {k: v for k, v in feed.items() if k in self._merged_inputs} | {"mask": mask.reshape(1, -1)}
        out = self._run_with_states(session, self.merged_spec, feed, states)
        return int(out[-1][0]), out[0][0], out[1][0]

    def load_feature(self, device_flops_per_s: float) -> np.float32:
        """``log(rho)``: the slow branch's cost on a device of ``device_flops_per_s`` over ``frame_ms`` (float32,
        as :meth:`Arbitrator.load_feature` computes it)."""
        cost = np.float32(max(self.branch_flops)) * np.float32(1000.0 / device_flops_per_s)
        return np.log(cost / np.float32(self.frame_ms))

    def step(self, branch: int, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run branch ``branch`` on frame ``x`` ``(F,)``: ``(y (D,), logits (V,))``; updates ``states`` in place.

        Only the states the branch owns are read and replaced.
        """
        out = self._run_with_states(self.branches[branch], self.branch_specs[branch], {"x": x.reshape(1, -1)}, states)
        return out[0][0], out[1][0]


@dataclass
class Transcript:
    """Result of one utterance.

    Attributes:
        text: Final greedy CTC transcript.
        decisions: Branch index per encoder frame (0 for single encoders).
        frame_compute_ms: Measured compute per encoder frame (arbitrator + branch + CTC layer), ms.
        feature_ms: Measured time of feature extraction for the whole utterance, ms.
        backlog_ms: Backlog after each frame (simulated or measured), ms: what the arbitrator sees at the next frame.
        audio_ms: Audio duration in ms.
        frame_ms: Audio per encoder frame in ms.
        finish_ms: Wall time of :meth:`StreamingRecognizer.finish` (from the last chunk to the final text).
        logits: ``(T, V)`` CTC logits per encoder frame.
        arbitrator_ms: The part of ``frame_compute_ms`` spent in the arbitrator graph, ms (``nan`` per frame
            when the merged graph ran the arbitrator and the branch in one call; ``0`` without an arbitrator).
    """

    text: str
    decisions: list[int]
    frame_compute_ms: list[float]
    feature_ms: float
    backlog_ms: list[float]
    audio_ms: float
    frame_ms: float
    finish_ms: float
    logits: np.ndarray = field(repr=False)
    arbitrator_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def ms_per_frame(self) -> float:
        """Mean measured compute per encoder frame (ms)."""
        return float(np.mean(self.frame_compute_ms)) if self.frame_compute_ms else 0.0

    @property
    def rtf(self) -> float:
        """Real-time factor: (encoder compute + features) / audio duration."""
        return (float(np.sum(self.frame_compute_ms)) + self.feature_ms) / self.audio_ms if self.audio_ms else 0.0

    @property
    def eou_ms(self) -> float:
        """End-of-utterance latency on this machine when frames are encoded as the audio arrives in real time
        (``normalize="running"``): ``b_{L-1} + cost_L`` over the measured per-frame compute (the backlog rule
        of ``functional``). With ``normalize="utterance"`` every frame waits for the end of the audio, and the
        latency actually measured is :attr:`finish_ms`."""
        return eou_latency_ms(self.frame_compute_ms, self.frame_ms) if self.frame_compute_ms else 0.0

    def slow_share(self, slow_index: int) -> float:
        """Fraction of frames routed to branch ``slow_index``."""
        return float(np.mean([d == slow_index for d in self.decisions])) if self.decisions else 0.0


class StreamingRecognizer:
    """Chunks of 16 kHz audio in, partial and final greedy CTC transcripts out.

    Args:
        model: The exported model.
        normalize: ``"utterance"`` (the training features exactly; the encoder runs when
            the utterance ends) or ``"running"`` (causal statistics; frames are encoded as
            they arrive). See ``docs/device.md``.
        backlog: ``"simulated"`` (the device of the manifest, routes identical to
            PyTorch) or ``"measured"`` (compute time measured here).
        force_branch: Route every frame to this branch (no arbitrator): single-branch baselines.
        device_flops_per_s: Speed of the simulated device in FLOP/s (default: the manifest's, the
            device the arbitrator was trained for). It sets the simulated costs and, for a
            load-aware arbitrator, its load input ``log rho``; like ``AmortizedEncoder.set_device``.
        latency_guard: The latency guard factor (``AmortizedEncoder.latency_guard``): ``"model"``
            (default) takes the exported model's, ``None`` turns it off, a number ``>= 1`` sets
            it. The guard judges each branch by its simulated cost on this device (also in
            ``backlog="measured"`` mode, where the backlog itself is measured).
        one_call: AmNets: ``None`` (default) runs the export's merged graph (``amnet_step.onnx``,
            shared-state AmNets) when it has one, one ONNX Runtime call per frame; ``False`` calls the
            arbitrator and then the chosen branch (two calls, the arbitrator's time measured apart in
            :attr:`Transcript.arbitrator_ms`); ``True`` requires the merged graph. Routes and logits
            are the same either way.

    Raises:
        ValueError: for an unknown mode or branch, a non-positive device speed, a
            latency guard below 1, ``one_call=True`` on an export without a merged graph or
            with ``force_branch``.
        ManifestError: the merged graph to be used is missing or damaged (``one_call=False`` runs without it).
    """

    def __init__(
        self,
        model: ExportedModel,
        normalize: str = "utterance",
        backlog: str = "simulated",
        force_branch: int | None = None,
        device_flops_per_s: float | None = None,
        latency_guard: float | str | None = "model",
        one_call: bool | None = None,
    ) -> None:
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"Expected argument `normalize` to be one of {NORMALIZE_MODES}, but got {normalize!r}.")
        if backlog not in BACKLOG_MODES:
            raise ValueError(f"Expected argument `backlog` to be one of {BACKLOG_MODES}, but got {backlog!r}.")
        if force_branch is not None and not 0 <= force_branch < model.num_branches:
            raise ValueError(
                f"Expected argument `force_branch` to be None or in [0, {model.num_branches}), but got {force_branch}."
            )
        dev = model.device_flops_per_s if device_flops_per_s is None else float(device_flops_per_s)
        if not dev > 0:
            raise ValueError(f"Expected argument `device_flops_per_s` to be positive, but got {device_flops_per_s}.")
        if one_call and model.merged_spec is None:
            raise ValueError(
                f"Argument `one_call=True` needs an export with a merged graph ({str(model.path)!r} has none: only "
                "shared-state AmNets get one; export the model again with this version, or pass one_call=None)."
            )
        if one_call and force_branch is not None:
            raise ValueError(
                f"Arguments `one_call=True` and `force_branch={force_branch}` conflict: the merged graph runs the "
                "arbitrator, a forced branch skips it; pass one_call=None (or False) with force_branch."
            )
        self.model, self.normalize, self.backlog_mode, self.force_branch = model, normalize, backlog, force_branch
        self.one_call = model.merged_spec is not None and one_call is not False and force_branch is None
        if self.one_call:
            model.merged  # noqa: B018  (open it now: a damaged graph fails here, not in the first frame)
        self.device_flops_per_s = dev
        self._ms_per_flop = np.float32(1000.0 / dev)
        self._load = model.load_feature(dev) if model.load_aware else None
        self.latency_guard = model.latency_guard if latency_guard == "model" else check_guard(latency_guard)
        # each branch's frame cost on this device (arbitrator included), float32 as in _encode
        self._frame_costs = [np.float32(m_flops + model.arbitrator_flops) * self._ms_per_flop
                             for m_flops in model.branch_flops]
        self._zero_mask = np.zeros(model.num_branches, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Start a new utterance."""
        m = self.model
        self._features = FeatureStream(m.features)
        self._raw: list[np.ndarray] = []  # unnormalised frames ("utterance" mode)
        self._pending: list[np.ndarray] = []  # normalised frames not yet stacked
        self._count, self._sum, self._sumsq = 0, None, None
        self._states = m.init_states()
        self._backlog = np.float32(0.0)
        self._prev = np.zeros(m.num_branches, dtype=np.float32)
        self._best: list[int] = []
        self._logits: list[np.ndarray] = []
        self._decisions: list[int] = []
        self._compute: list[float] = []
        self._arb_ms: list[float] = []
        self._backlogs: list[float] = []
        self._feature_ms = 0.0

    # -- encoder frames ---------------------------------------------------------------------------

    def _encode(self, x: np.ndarray, final: bool = False) -> None:
        m = self.model
        t0 = t_arb = time.perf_counter()
        if self.force_branch is not None or m.arbitrator is None:
            choice = self.force_branch or 0
            flops = m.branch_flops[choice]
            _, out = m.step(choice, x, self._states)
        else:
            mask = self._zero_mask
            if self.latency_guard is not None:  # the rule of AmortizedEncoder's guard (backlog_rule)
                allowed = allowed_branches(self._backlog, self._frame_costs, np.float32(m.frame_ms),
                                           self.latency_guard, final)
                mask = np.where(allowed, mask, np.float32(-np.inf))
            if self.one_call:  # arbitrator and branch in one graph: no time of the arbitrator's own
                choice, _, out = m.merged_step(x, self._backlog, self._prev, mask, self._states, self._load)
            else:
                choice = int(np.argmax(m.arbitrate(x, self._backlog, self._prev, self._load) + mask))
                t_arb = time.perf_counter()
                _, out = m.step(choice, x, self._states)
            flops = m.arbitrator_flops + m.branch_flops[choice]
        spent = (time.perf_counter() - t0) * 1000.0
        if self.backlog_mode == "simulated":  # float32, as PyTorch's step computes it
            cost = np.float32(flops) * self._ms_per_flop
        else:
            cost = np.float32(spent)
        self._backlog = next_backlog(self._backlog, cost, np.float32(m.frame_ms))
        self._prev = np.zeros(m.num_branches, dtype=np.float32)
        self._prev[choice] = 1.0
        self._decisions.append(choice)
        self._compute.append(spent)
        self._arb_ms.append((t_arb - t0) * 1000.0 if not self.one_call else float("nan"))
        self._backlogs.append(float(self._backlog))
        self._logits.append(out)
        self._best.append(int(np.argmax(out)))

    def _push_normalized(self, frames: np.ndarray, final: bool = False) -> None:
        """Stack normalised 10 ms frames into encoder frames and encode the complete ones.

        With ``final`` (the audio has ended) the rest is padded into a last encoder frame, and
        the last frame encoded here is the utterance's final one (the latency guard gives it
        the cheapest branch).
        """
        self._pending.extend(frames.astype(np.float32))
        s = self.model.stack
        groups = []
        while len(self._pending) >= s:
            group, self._pending = self._pending[:s], self._pending[s:]
            groups.append(group)
        if final and self._pending:
            groups.append(self._pending + [np.zeros_like(self._pending[0])] * (s - len(self._pending)))
            self._pending = []
        for i, group in enumerate(groups):
            self._encode(np.concatenate(group), final=final and i == len(groups) - 1)

    def _running(self, frames: np.ndarray) -> np.ndarray:
        out = np.empty_like(frames)
        eps = self.model.features.norm_eps
        for i, f in enumerate(frames):
            self._count += 1
            self._sum = f.copy() if self._sum is None else self._sum + f
            self._sumsq = f * f if self._sumsq is None else self._sumsq + f * f
            mean = self._sum / self._count
            var = np.maximum(self._sumsq / self._count - mean * mean, 0.0)
            out[i] = (f - mean) / (np.sqrt(var) + eps)
        return out

    # -- public -----------------------------------------------------------------------------------

    def accept(self, samples: np.ndarray) -> str:
        """Feed a chunk of audio ``(n,)`` (float, at the manifest's sample rate); returns the partial transcript.

        Raises:
            ValueError: ``samples`` is not a 1-D array of finite numbers (mix channels down first).
        """
        check_samples(samples, "accept(samples)")
        t0 = time.perf_counter()
        frames = self._features.accept(samples)
        if self.normalize == "running" and len(frames):
            frames = self._running(frames)
        self._feature_ms += (time.perf_counter() - t0) * 1000.0
        if self.normalize == "running":
            self._push_normalized(frames)
        elif len(frames):
            self._raw.append(frames)
        return self.partial()

    def partial(self) -> str:
        """Greedy transcript of the frames encoded so far."""
        return ctc_greedy(np.asarray(self._best, dtype=np.int64), self.model.vocabulary, self.model.blank)

    def finish(self) -> Transcript:
        """End of the utterance: encode the remaining frames; returns the :class:`Transcript` and resets."""
        start = time.perf_counter()
        frames = self._features.finish()
        if self.normalize == "running":
            frames = self._running(frames) if len(frames) else frames
            self._feature_ms += (time.perf_counter() - start) * 1000.0
            self._push_normalized(frames, final=True)
        else:
            allf = np.concatenate(self._raw + [frames]) if self._raw else frames
            feats = normalize_utterance(allf, self.model.features.norm_eps)
            self._feature_ms += (time.perf_counter() - start) * 1000.0
            self._push_normalized(feats, final=True)
        m = self.model
        result = Transcript(
            text=self.partial(),
            decisions=list(self._decisions),
            frame_compute_ms=list(self._compute),
            feature_ms=self._feature_ms,
            backlog_ms=list(self._backlogs),
            audio_ms=1000.0 * self._features.num_samples / m.features.sample_rate,
            frame_ms=m.frame_ms,
            finish_ms=(time.perf_counter() - start) * 1000.0,
            logits=np.stack(self._logits) if self._logits else np.zeros((0, len(m.vocabulary)), np.float32),
            arbitrator_ms=list(self._arb_ms),
        )
        self.reset()
        return result

    def run_frames(self, frames: np.ndarray) -> Transcript:
        """Encode ready encoder input frames ``(T, F)`` (normalised, stacked features) as one utterance.

        Skips feature extraction: for comparing with PyTorch's ``step`` frame by frame and
        for timing the encoder alone. Resets before and after.
        """
        self.reset()
        x = np.asarray(frames, dtype=np.float32)
        for t in range(x.shape[0]):
            self._encode(np.ascontiguousarray(x[t]), final=t == x.shape[0] - 1)
        m = self.model
        result = Transcript(
            text=self.partial(), decisions=list(self._decisions), frame_compute_ms=list(self._compute),
            feature_ms=0.0, backlog_ms=list(self._backlogs), audio_ms=x.shape[0] * m.frame_ms, frame_ms=m.frame_ms,
            finish_ms=0.0,
            logits=np.stack(self._logits) if self._logits else np.zeros((0, len(m.vocabulary)), np.float32),
            arbitrator_ms=list(self._arb_ms),
        )
        self.reset()
        return result

    def transcribe(self, wav: np.ndarray, chunk_ms: float = 100.0) -> Transcript:
        """Stream a whole waveform ``(S,)`` in chunks of ``chunk_ms`` and return its :class:`Transcript`.

        Raises:
            ValueError: ``chunk_ms`` is not a positive finite number, or ``wav`` is not a 1-D
                array of finite numbers (mix channels down first).
        """
        if not (isinstance(chunk_ms, (int, float)) and np.isfinite(chunk_ms) and chunk_ms > 0):
            raise ValueError(f"Expected argument `chunk_ms` to be a positive finite number of ms, but got {chunk_ms!r}.")
        check_samples(wav, "transcribe(wav)")
        step = max(1, int(round(chunk_ms * self.model.features.sample_rate / 1000.0)))
        self.reset()
        for i in range(0, len(wav), step):
            self.accept(wav[i : i + step])
        return self.finish()


def check_samples(samples: Any, where: str) -> None:
    """Refuse audio that is not a 1-D array of finite numbers (``where`` names the caller in the message).

    Raises:
        ValueError: a 2-D (multi-channel) or 0-D array, integer or non-numeric samples, NaN or Inf.
    """
    a = np.asarray(samples)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(
            f"{where}: expected mono audio, a 1-D array of float samples in [-1, 1], but got shape {a.shape} dtype "
            f"{a.dtype}; mix channels down first (e.g. wav.mean(axis=1)) and scale integer PCM (int16: / 32768)."
        )
    if not np.isfinite(a).all():
        bad = int(np.size(a) - np.isfinite(a).sum())
        raise ValueError(f"{where}: {bad} of {a.size} samples are NaN or Inf; the audio is corrupt.")


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of an audio file (FLAC, WAV, ...) at ``sample_rate``.

    Raises:
        ValueError: the file's rate differs (resample it first), it cannot be read, or it
            holds NaN or Inf samples.
    """
    import soundfile as sf

    try:
        wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises its own error types
        raise ValueError(f"Cannot read audio file {str(path)!r}: {err}.") from err
    if rate != sample_rate:
        raise ValueError(
            f"{str(path)!r} is sampled at {rate} Hz; the model expects {sample_rate} Hz. Resample it first."
        )
    wav = wav.mean(axis=1)
    check_samples(wav, f"audio file {str(path)!r}")
    return wav
