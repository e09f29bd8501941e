r"""
Latency monitor
===============

Measures, on every validation epoch, what an amortized (or plain) encoder costs on a
simulated device and in real single-thread streaming, and logs it under ``latency/*``.
A thin stateful class over :mod:`lightning_amortized.functional.latency` (the same
functions ``benchmarks/amnet.py`` calls): every validation batch is reduced by
:func:`~lightning_amortized.functional.latency.latency_update`, the epoch's statistics
(gathered over processes) by :func:`~lightning_amortized.functional.latency.latency_compute`.

"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_amortized.functional.backlog import DEFAULT_DEVICE_FLOPS_PER_S, SimulatedDevice, backlog, flops_to_ms
from lightning_amortized.functional.latency import LatencyStats, latency_compute, latency_update
from lightning_amortized.nn.amortized import AmortizedEncoder
from lightning_amortized.nn.streaming import stream

__all__ = ["LatencyMonitor", "find_encoder"]


def find_encoder(pl_module: nn.Module) -> nn.Module | None:
    """The encoder whose latency is reported.

    The outermost :class:`~lightning_amortized.nn.AmortizedEncoder` of the module if
    there is one, else ``pl_module.encoder`` if it has ``flops_per_frame()``, else the
    first submodule with ``flops_per_frame()`` and an ``input_size``.
    """
    for m in pl_module.modules():
        if isinstance(m, AmortizedEncoder):
            return m
    enc = getattr(pl_module, "encoder", None)
    if isinstance(enc, nn.Module) and callable(getattr(enc, "flops_per_frame", None)):
        return enc
    for m in pl_module.modules():
        if m is not pl_module and callable(getattr(m, "flops_per_frame", None)) and hasattr(m, "input_size"):
            return m
    return None


class LatencyMonitor(Callback):
    r"""Log compute and latency of the model's encoder on every validation epoch.

    During validation the encoder's inputs are captured with a forward hook and, for an
    ``AmortizedEncoder``, its hard routing (``last_routing``) is read at the end of every
    batch. A plain encoder costs ``encoder.flops_per_frame()`` on every frame. At the
    end of the epoch (gathered over all processes) it logs via ``pl_module.log``:

    * ``latency/flops_per_frame``: mean FLOPs per valid frame (arbitrator included);
    * ``latency/slow_share``: fraction of frames routed to the slow branch (1 for a
      plain encoder);
    * ``latency/rho``: load factor of the slow branch alone, ``slow cost / frame_ms``;
    * ``latency/eou_p50_ms``, ``latency/eou_p90_ms``, ``latency/eou_max_ms``: simulated
      end-of-utterance latency ``b_{L-1} + cost_L`` over the validation utterances
      (:func:`~lightning_amortized.functional.latency.latency_compute`);
    * ``latency/rtf``: real single-thread real-time factor of streaming inference on
      ``rtf_samples`` validation utterances (:func:`~lightning_amortized.nn.streaming.stream`),
      measured on the module's device;

    and saves a PNG of the backlog and decisions over one utterance to ``plot_dir``.
    Nothing is measured during the sanity check.

    Args:
        device_flops_per_s: Simulated device speed; ``None`` uses the
            ``AmortizedEncoder``'s own device, else 650 MFLOP/s. An ``AmortizedEncoder``
            is moved to this device for validation (``set_device``: its arbitrator routes
            for it) and back afterwards, so every validation metric (``val/wer`` too, and a
            ``ModelCheckpoint`` monitoring it) is that of this device.
        frame_ms: Audio per encoder *input* frame in ms; ``None`` uses the encoder's
            ``frame_ms`` or the module's ``frame_ms`` attribute. A plain encoder that declares
            ``time_downsampling = d > 1`` (e.g. a wrapped CRDNN with time pooling) is costed
            ``flops_per_frame()`` per *output* frame, each ``d * frame_ms`` of audio.
        plot_dir: Folder for ``latency_epoch{NNN}.png``; ``None`` uses
            ``trainer.log_dir`` (or ``trainer.default_root_dir``).
        rtf_samples: Number of utterances streamed for the RTF (0 disables it).
        plot: Whether to save plots.

    Raises:
        ValueError: If ``device_flops_per_s``/``frame_ms`` is not positive or
            ``rtf_samples`` < 0.
        MisconfigurationException: If no encoder or no ``frame_ms`` can be found.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_amortized.callbacks.latency_monitor import LatencyMonitor
        >>> trainer = Trainer(callbacks=[LatencyMonitor(frame_ms=30.0, plot_dir="plots")])

    """

    def __init__(
        self,
        device_flops_per_s: float | None = None,
        frame_ms: float | None = None,
        plot_dir: str | None = None,
        rtf_samples: int = 1,
        plot: bool = True,
    ) -> None:
        for name, value in (("device_flops_per_s", device_flops_per_s), ("frame_ms", frame_ms)):
            if value is not None and not value > 0:
                raise ValueError(f"Expected argument `{name}` to be positive or None, but got {value}.")
        if not isinstance(rtf_samples, int) or rtf_samples < 0:
            raise ValueError(f"Expected argument `rtf_samples` to be an integer >= 0, but got {rtf_samples}.")
        self.device_flops_per_s = device_flops_per_s
        self.frame_ms = frame_ms
        self.plot_dir = plot_dir
        self.rtf_samples = rtf_samples
        self.plot = plot
        self.last_metrics: dict[str, float] = {}
        self.last_plot_path: str | None = None
        self._encoder: nn.Module | None = None
        self._hook: Any = None
        self._own_speed: float | None = None  # the AmNet's device speed while validation runs on ours
        self._reset()

    def _reset(self) -> None:
        # (x, lengths, (output frames, output lengths) or None) of the last encoder call
        self._captured: tuple[torch.Tensor, torch.Tensor, tuple[int, torch.Tensor] | None] | None = None
        self._stats = LatencyStats()
        self._plot_data: dict[str, torch.Tensor] | None = None
        self._samples: list[torch.Tensor] = []

    # -- resolution of settings -----------------------------------------------------------------

    def _device_speed(self) -> float:
        if self.device_flops_per_s is not None:
            return float(self.device_flops_per_s)
        if isinstance(self._encoder, AmortizedEncoder):
            return self._encoder.device_flops_per_s
        return DEFAULT_DEVICE_FLOPS_PER_S

    def _downsampling(self) -> int:
        """Input frames per output frame: a plain encoder's declared ``time_downsampling``, 1 for an AmNet."""
        if isinstance(self._encoder, AmortizedEncoder):
            return 1
        return int(getattr(self._encoder, "time_downsampling", 1) or 1)

    def _frame(self, pl_module: pl.LightningModule) -> float:
        for value in (self.frame_ms, getattr(self._encoder, "frame_ms", None), getattr(pl_module, "frame_ms", None)):
            if value is not None:
                return float(value)
        raise MisconfigurationException(
            "LatencyMonitor needs the audio duration of an encoder frame: pass `frame_ms=` "
            "(or give the encoder or the LightningModule a `frame_ms` attribute)."
        )

    # -- hooks ----------------------------------------------------------------------------------

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self._remove_hook()
        if trainer.sanity_checking:
            return
        self._encoder = find_encoder(pl_module)
        if self._encoder is None:
            raise MisconfigurationException(
                "LatencyMonitor found no encoder in the LightningModule: expected an AmortizedEncoder, a "
                "`self.encoder` with `flops_per_frame()`, or a submodule with `flops_per_frame()` and `input_size`."
            )
        self._frame(pl_module)  # fail early
        enc = self._encoder
        if isinstance(enc, AmortizedEncoder) and self.device_flops_per_s is not None:
            self._own_speed = enc.device_flops_per_s
            enc.set_device(self.device_flops_per_s)  # routed for the monitored device, not priced for it afterwards

        def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            x = args[0] if args else kwargs.get("x")
            lengths = args[1] if len(args) >= 2 else kwargs.get("lengths")
            if not (isinstance(x, torch.Tensor) and isinstance(lengths, torch.Tensor)):
                return
            out = None  # an encoder that changes the frame rate is costed on its output frames
            if isinstance(output, (tuple, list)) and len(output) >= 2 and isinstance(output[1], torch.Tensor):
                out = (int(output[0].shape[1]), output[1].detach())
            self._captured = (x.detach(), lengths.detach(), out)

        self._hook = self._encoder.register_forward_hook(capture, with_kwargs=True)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._captured is None or self._encoder is None:
            return
        x, lengths, out = self._captured
        self._captured = None
        frame_ms = self._frame(pl_module)
        lengths = in_lengths = lengths.to(x.device).long()
        enc = self._encoder
        routing = enc.last_routing if isinstance(enc, AmortizedEncoder) else None
        if routing is not None:
            flops = routing.expected_flops.detach().float()
            decisions = routing.decisions
            routed, slow_index = decisions, routing.slow_index
        else:  # a plain encoder: the same cost on every (output) frame, every frame "slow"
            frames = x.shape[1]
            d = self._downsampling()  # declared, not guessed from padded shapes
            if d > 1 and out is not None:  # flops_per_frame is per output frame, of d input frames' audio
                frames, out_lengths = out
                frame_ms *= d
                lengths = out_lengths.to(x.device).long().clamp(1, max(frames, 1))  # a floor-rounded 0 still costs one
            flops = torch.full((x.shape[0], frames), float(enc.flops_per_frame()), device=x.device)
            decisions = torch.zeros(x.shape[0], frames, dtype=torch.long, device=x.device)
            routed, slow_index = None, 0
        costs = flops_to_ms(flops, self._device_speed())
        self._stats = self._stats + latency_update(costs, flops, lengths, frame_ms, routed, slow_index)
        if self._plot_data is None and x.shape[0] > 0:
            n = int(lengths[0])
            self._plot_data = {
                "backlog_ms": backlog(costs[:1], frame_ms, lengths[:1])[0, :n].cpu(),
                "cost_ms": costs[0, :n].cpu(),
                "decisions": decisions[0, :n].cpu(),
            }
        for i in range(x.shape[0]):
            if len(self._samples) >= self.rtf_samples:
                break
            self._samples.append(x[i, : int(in_lengths[i])].clone())

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        if trainer.sanity_checking or self._encoder is None:
            return
        enc = self._encoder
        frame_ms = self._frame(pl_module)  # per input frame (the streamed samples are input frames)
        cost_frame_ms = frame_ms * self._downsampling()  # per costed frame
        stats = self._gather(trainer, pl_module, self._stats)
        if stats.frames == 0 or stats.eou_ms.numel() == 0:
            rank_zero_warn("LatencyMonitor: the encoder saw no validation frames; nothing logged.")
            return
        result = latency_compute(stats)
        slow_flops = max(enc.branch_flops()) if isinstance(enc, AmortizedEncoder) else enc.flops_per_frame()
        metrics = {
            "latency/flops_per_frame": result["flops_per_frame"],
            "latency/slow_share": result["slow_share"],
            "latency/rho": SimulatedDevice(self._device_speed(), cost_frame_ms).load_factor(float(slow_flops)),
            "latency/eou_p50_ms": result["eou_ms"]["p50"],
            "latency/eou_p90_ms": result["eou_ms"]["p90"],
            "latency/eou_max_ms": result["eou_ms"]["max"],
        }
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True)
        # total compute over total audio (real_time_factor's definition), pooled over processes, not a mean of
        # ratios; every process takes part in the gather, also one that holds no sample
        runs = [stream(enc, x, frame_ms) for x in self._samples]
        compute_ms = sum(r.total_ms for r in runs)
        audio_ms = sum(r.wall_ms.numel() * r.frame_ms for r in runs)
        if trainer.world_size > 1 and self.rtf_samples > 0:
            totals = torch.tensor([compute_ms, audio_ms], dtype=torch.float64, device=pl_module.device)
            compute_ms, audio_ms = (float(v) for v in pl_module.all_gather(totals).reshape(-1, 2).sum(0))
        if audio_ms > 0:
            metrics["latency/rtf"] = compute_ms / audio_ms
            pl_module.log("latency/rtf", metrics["latency/rtf"], on_step=False, on_epoch=True)
        self.last_metrics = metrics
        if self.plot and trainer.is_global_zero and self._plot_data is not None:
            self.last_plot_path = self._save_plot(trainer, cost_frame_ms)
        rank_zero_info(
            "LatencyMonitor: "
            + ", ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items())
        )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        self._restore_device()
        self._samples = []

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hook()
        self._restore_device()

    def _restore_device(self) -> None:
        if self._own_speed is not None and isinstance(self._encoder, AmortizedEncoder):
            self._encoder.set_device(self._own_speed)
        self._own_speed = None

    # -- helpers --------------------------------------------------------------------------------

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _gather(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stats: LatencyStats) -> LatencyStats:
        """The statistics of all processes (the sums all-reduced, the latencies concatenated)."""
        if trainer.world_size <= 1:
            return stats
        device = pl_module.device
        totals = torch.tensor([stats.flops_sum, stats.frames, stats.slow_frames], dtype=torch.float64, device=device)
        totals = pl_module.all_gather(totals).reshape(-1, 3).sum(0)
        lat = self._gather_variable(pl_module, stats.eou_ms.to(device))
        return LatencyStats(float(totals[0]), int(totals[1]), int(totals[2]), lat.cpu())

    @staticmethod
    def _gather_variable(pl_module: pl.LightningModule, values: torch.Tensor) -> torch.Tensor:
        """All-gather 1-D tensors of different lengths (padded to the longest, then trimmed)."""
        n = torch.tensor([values.numel()], device=values.device)
        sizes = pl_module.all_gather(n).reshape(-1)
        longest = int(sizes.max())
        padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
        padded[: values.numel()] = values
        gathered = pl_module.all_gather(padded).reshape(len(sizes), longest)
        return torch.cat([gathered[i, : int(sizes[i])] for i in range(len(sizes))])

    def _save_plot(self, trainer: pl.Trainer, frame_ms: float) -> str:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        data = self._plot_data
        assert data is not None
        folder = self.plot_dir or trainer.log_dir or trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"latency_epoch{trainer.current_epoch:03d}.png")
        t = torch.arange(1, len(data["backlog_ms"]) + 1)
        fig = Figure(figsize=(8, 4.5))
        FigureCanvasAgg(fig)  # Agg canvas, no pyplot state
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        ax1.plot(t, data["backlog_ms"], label="backlog after frame (ms)")
        ax1.plot(t, data["cost_ms"], label="frame cost (ms)", alpha=0.6)
        ax1.axhline(frame_ms, color="gray", linestyle="--", linewidth=0.8, label=f"frame = {frame_ms:g} ms")
        ax1.set_ylabel("ms")
        ax1.legend(loc="upper left", fontsize=7)
        ax2.step(t, data["decisions"], where="mid")
        ax2.set_ylabel("branch")
        ax2.set_xlabel("frame")
        ax2.set_yticks(sorted({0, *data["decisions"].tolist()}))
        fig.suptitle(f"Backlog and routing over one validation utterance (epoch {trainer.current_epoch})")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_metrics": dict(self.last_metrics)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_metrics = dict(state_dict.get("last_metrics", {}))
