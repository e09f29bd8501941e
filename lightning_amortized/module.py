"""The ASR LightningModule used by the recipes (optional for users).

``features (B, T, 80) -> frame stacking (B, T/stack, 80*stack) -> encoder -> CTC head``
(or an RNN-T prediction/joint network), greedy decoding, WER/CER through torchmetrics.
Any encoder that follows the contract in :mod:`lightning_amortized.nn.encoders` works,
including :class:`~lightning_amortized.nn.amortized.AmortizedEncoder`, whose routing
losses (expected compute and amortization penalty) are added to the ASR loss.
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import CharErrorRate, WordErrorRate

from lightning_amortized.data.datamodule import test_split_name
from lightning_amortized.data.tokenizer import make_tokenizer
from lightning_amortized.functional.flops import linear_flops
from lightning_amortized.nn.modes import eval_mode

__all__ = ["ASRModule", "FrameStacker", "ctc_min_frames", "load_asr_module", "warmup_cosine"]


class FrameStacker(nn.Module):
    """Concatenate ``stack`` consecutive frames: ``(B, T, F) -> (B, ceil(T/stack), F*stack)``.

    A 10 ms feature hop becomes a ``10*stack`` ms encoder frame; the last group is
    zero-padded. Frames past each utterance's length are zeroed first, so whatever value
    a batch is padded with never reaches the last stacked frame of a shorter utterance
    (a batched utterance is encoded as it would be alone). Cost: no FLOPs (a reshape).

    Example:
        >>> y, n = FrameStacker(3)(torch.randn(2, 10, 80), torch.tensor([10, 4]))
        >>> y.shape, n.tolist()
        (torch.Size([2, 4, 240]), [4, 2])
    """

    def __init__(self, stack: int = 3) -> None:
        super().__init__()
        if stack < 1:
            raise ValueError(f"Expected argument `stack` to be >= 1, but got {stack}.")
        self.stack = stack

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stack == 1:
            return x, lengths
        B, T, Fd = x.shape
        if bool((lengths < T).any()):  # the batch's padding out of the stacked frames (NaN padding too)
            keep = torch.arange(T, device=x.device)[None, :] < lengths.to(x.device)[:, None]
            x = x.masked_fill(~keep[..., None], 0.0)
        pad = (-T) % self.stack
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        x = x.reshape(B, (T + pad) // self.stack, Fd * self.stack)
        return x, torch.div(lengths + self.stack - 1, self.stack, rounding_mode="floor")


def _config_given() -> bool:
    """Whether LightningCLI handed this module its init config (then hparams can rebuild it)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - other Lightning versions
        return False
    return _given_hyperparameters.get() is not None


def ctc_min_frames(tokens: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
    """Fewest encoder frames CTC needs per utterance: its length plus one blank per repeated symbol.

    Args:
        tokens: ``(B, L)`` padded token ids.
        token_lengths: ``(B,)`` valid lengths.

    Returns:
        ``(B,)`` int64 frame counts.

    Example:
        >>> ctc_min_frames(torch.tensor([[5, 5, 6, 0], [7, 8, 8, 8]]), torch.tensor([3, 4])).tolist()
        [4, 6]
    """
    if tokens.shape[1] < 2:
        return token_lengths.clone()
    pos = torch.arange(1, tokens.shape[1], device=tokens.device)[None, :]
    repeats = ((tokens[:, 1:] == tokens[:, :-1]) & (pos < token_lengths[:, None])).sum(1)
    return token_lengths + repeats


def warmup_cosine(step: int, total_steps: int, warmup: float = 0.05, floor: float = 0.05) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup * total_steps``, then cosine to ``floor``.

    Steps past ``total_steps`` (a resumed run with more epochs) stay at ``floor``.

    Example:
        >>> [round(warmup_cosine(s, 100), 3) for s in (0, 5, 100, 200)]
        [0.167, 1.0, 0.05, 0.05]
    """
    w = max(1, int(warmup * total_steps))
    if step < w:
        return (step + 1) / (w + 1)
    progress = min(1.0, (step - w) / max(1, total_steps - w))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ASRModule(pl.LightningModule):
    """Features -> encoder -> CTC (default) or RNN-T, with greedy decoding and WER/CER.

    Args:
        encoder: Any module following the encoder contract; its ``input_size`` must be
            ``n_mels * stack``.
        n_mels: Feature size per 10 ms frame.
        stack: Frames stacked per encoder frame (encoder frame = ``10 * stack`` ms).
        vocab_size: Output symbols including blank (29 for LibriSpeech characters). With
            ``tokenizer`` it is taken from the tokenizer; another value than 29 or the
            tokenizer's size is an error.
        loss: ``"ctc"`` or ``"rnnt"``.
        lr: Peak learning rate (warm-up then cosine decay over the whole fit, see :func:`warmup_cosine`).
        weight_decay: AdamW weight decay.
        lambda_cost: Weight of the expected-compute penalty (amortized encoders only).
        lambda_amr: Weight of the amortization penalty (amortized encoders only).
        amr_threshold_ms: Backlog (ms) below which a frame counts as idle in the penalty's
            "fast while idle" term; ``None``: one frame
            (:func:`~lightning_amortized.functional.losses.amortization_loss`).
        amr_end_weight: Weight of the end-of-utterance backlog term of the penalty.
        amr_slack_weight: Weight of the "fast while idle" term of the penalty.
        amr_eou_weight: Weight of the penalty's end-of-utterance latency term (``0``: off; a
            part of the penalty, so scaled by ``lambda_amr`` and inert when it is 0): it charges
            latency above ``amr_eou_factor`` times the physical floor (the cheapest branch plus
            the arbitrator on the utterance's device), which the end term cannot see on devices
            fast enough to finish a slow last frame within real time. The encoder's
            ``routing_losses`` must take ``eou_weight`` and ``eou_factor`` (the package's AmNets do).
        amr_eou_factor: Multiple of the floor that the end-of-utterance term allows.
        branch_loss_weight: Weight of every branch's own ASR loss (amortized encoders
            only): each training step also encodes the batch with every frame on one
            branch (``force_branch``), once per branch, and adds ``branch_loss_weight``
            times each of those losses (the "sandwich rule" of slimmable networks), so
            that each branch stays a recognizer on its own and the routed mixture is
            trained from both ends. Costs one more forward/backward per branch; ``0``
            (default) trains the routed model only.
        rnnt_pred_size: RNN-T prediction network size.
        rnnt_joint_size: RNN-T joint network size.
        tokenizer: Path of a SentencePiece model (subword output units, as SpeechBrain's
            LibriSpeech recipes use; train one with ``lightning-amortized
            train-tokenizer``), or ``None`` for characters. Give the DataModule the same
            path; a mismatch is refused when fitting starts. Checkpoints carry the model's
            bytes, so :func:`load_asr_module` works without the file.

    Example:
        >>> from lightning_amortized.nn import RecurrentEncoder
        >>> m = ASRModule(RecurrentEncoder(240, 32, num_layers=1))
        >>> m.transcribe(torch.randn(1, 30, 80), torch.tensor([30]))  # doctest: +SKIP
        ['...']
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_mels: int = 80,
        stack: int = 3,
        vocab_size: int = 29,
        loss: str = "ctc",
        lr: float = 2e-3,
        weight_decay: float = 1e-2,
        lambda_cost: float = 0.0,
        lambda_amr: float = 0.0,
        amr_threshold_ms: float | None = None,
        amr_end_weight: float = 1.0,
        amr_slack_weight: float = 1.0,
        amr_eou_weight: float = 0.0,
        amr_eou_factor: float = 2.0,
        branch_loss_weight: float = 0.0,
        rnnt_pred_size: int = 128,
        rnnt_joint_size: int = 192,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        if loss not in ("ctc", "rnnt"):
            raise ValueError(f"Expected argument `loss` to be 'ctc' or 'rnnt', but got {loss!r}.")
        for name, value in (("amr_end_weight", amr_end_weight), ("amr_slack_weight", amr_slack_weight),
                            ("amr_eou_weight", amr_eou_weight)):
            if not value >= 0:
                raise ValueError(f"Expected argument `{name}` to be >= 0, but got {value}.")
        if not branch_loss_weight >= 0:
            raise ValueError(f"Expected argument `branch_loss_weight` to be >= 0, but got {branch_loss_weight}.")
        if amr_threshold_ms is not None and not amr_threshold_ms > 0:
            raise ValueError(f"Expected argument `amr_threshold_ms` to be positive or None, but got {amr_threshold_ms}.")
        if not amr_eou_factor > 0:
            raise ValueError(f"Expected argument `amr_eou_factor` to be positive, but got {amr_eou_factor}.")
        in_size = getattr(encoder, "input_size", None)
        if in_size is not None and in_size != n_mels * stack:
            raise ValueError(
                f"Encoder input_size is {in_size} but features give n_mels * stack = {n_mels} * {stack} = "
                f"{n_mels * stack}; set the encoder's input_size to {n_mels * stack}."
            )
        # Under LightningCLI the encoder arrives as a class_path/init_args config: keep it, so
        # `ASRModule.load_from_checkpoint(path)` rebuilds the encoder. Built in Python, the
        # encoder is an object: leave it out (pass `encoder=` to `load_from_checkpoint`).
        self.save_hyperparameters(ignore=[] if _config_given() else ["encoder"])
        self.encoder = encoder
        self.stacker = FrameStacker(stack)
        self.tokenizer = make_tokenizer(tokenizer)
        if tokenizer is not None:
            if vocab_size not in (29, len(self.tokenizer)):
                raise ValueError(
                    f"Expected argument `vocab_size` to match the tokenizer {tokenizer!r} ({len(self.tokenizer)} "
                    f"symbols with blank), but got {vocab_size}; leave vocab_size out."
                )
            vocab_size = len(self.tokenizer)
        elif vocab_size != len(self.tokenizer):
            raise ValueError(
                f"Expected argument `vocab_size` to be {len(self.tokenizer)} (the character tokenizer's symbols with "
                f"blank), but got {vocab_size}; for another vocabulary pass `tokenizer` (a SentencePiece model)."
            )
        out = int(encoder.output_size)
        self.loss_kind = loss
        if loss == "ctc":
            self.head = nn.Linear(out, vocab_size)
        else:
            self.embed = nn.Embedding(vocab_size, rnnt_pred_size)
            self.pred = nn.LSTM(rnnt_pred_size, rnnt_pred_size, batch_first=True)
            self.joint_enc = nn.Linear(out, rnnt_joint_size)
            self.joint_pred = nn.Linear(rnnt_pred_size, rnnt_joint_size)
            self.head = nn.Linear(rnnt_joint_size, vocab_size)
        self.frame_ms = 10.0 * stack
        enc_frame = getattr(encoder, "frame_ms", None)
        if enc_frame is not None and abs(float(enc_frame) - self.frame_ms) > 1e-6:
            raise ValueError(
                f"The encoder's frame_ms ({float(enc_frame):g}) differs from the module's frames: stack={stack} "
                f"10 ms feature frames make {self.frame_ms:g} ms. Its backlog, routing and latencies would be priced "
                f"for other frames; build the encoder with frame_ms={self.frame_ms:g} (or change `stack`)."
            )
        self._ctc_infeasible, self._warned_infeasible = 0, False
        self.val_wer, self.val_cer = WordErrorRate(), CharErrorRate()
        # the mean loss per utterance over every rank's utterances (Lightning's sync_dist would average
        # the ranks' means, which differ in size when the last batches do not divide evenly)
        self.val_loss = MeanMetric()
        self.test_metrics = nn.ModuleDict()

    def on_fit_start(self) -> None:
        self._check_datamodule_tokenizer()

    def on_validation_start(self) -> None:
        self._check_datamodule_tokenizer()

    def on_test_start(self) -> None:
        self._check_datamodule_tokenizer()

    def on_predict_start(self) -> None:
        self._check_datamodule_tokenizer()

    def _check_datamodule_tokenizer(self) -> None:
        """Refuse a DataModule whose token ids are not this head's (its CTC loss would score other symbols)."""
        dm = getattr(self.trainer, "datamodule", None)
        theirs = getattr(dm, "tokenizer", None)
        if theirs is not None and list(theirs.vocabulary) != list(self.tokenizer.vocabulary):
            raise ValueError(
                f"The DataModule's tokenizer ({type(theirs).__name__}, {len(theirs)} symbols) differs from the "
                f"model's ({type(self.tokenizer).__name__}, {len(self.tokenizer)} symbols): give both the same "
                "`tokenizer` (in a LightningCLI config: data.init_args.tokenizer and model.init_args.tokenizer)."
            )

    @_restricted_classmethod  # like Lightning's: refused on an instance (its result would be dropped)
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "ASRModule":  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, with the checkpoint's own tokenizer and a clear missing-encoder error.

        A module built in Python keeps its encoder out of the hyper-parameters (an ``nn.Module``
        is not one): pass ``encoder=`` built as it was. Checkpoints written by LightningCLI
        rebuild it from the config; :func:`load_asr_module` reads any ``RecurrentEncoder``
        checkpoint. A SentencePiece model the checkpoint carries is used whatever the file at
        its recorded path now holds (a warning says when they differ).
        """
        if "tokenizer" not in kwargs and isinstance(checkpoint_path, (str, os.PathLike)) and os.path.isfile(checkpoint_path):
            try:  # the SentencePiece model it carries wins over a file that moved or was retrained since
                # memory-mapped: the hyper-parameters and tokenizer bytes are read, the weights are not
                peek = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # anything Lightning's own loading handles (or reports) better
                peek = None
            recorded = ((peek or {}).get("hyper_parameters") or {}).get("tokenizer") if isinstance(peek, dict) else None
            if recorded:
                kwargs["tokenizer"] = _carried_tokenizer(peek, recorded, checkpoint_path)
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except TypeError as err:
            if "encoder" in kwargs or "'encoder'" not in str(err):
                raise
            raise TypeError(
                f"{checkpoint_path!s} was saved from an ASRModule built in Python, whose encoder is not a "
                "hyper-parameter: pass it, built as it was, e.g. ASRModule.load_from_checkpoint(path, "
                "encoder=RecurrentEncoder(240, 256, 3)); or read a RecurrentEncoder checkpoint with "
                "lightning_amortized.module.load_asr_module(path)."
            ) from err

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        model_bytes = getattr(self.tokenizer, "model_bytes", None)
        if model_bytes is not None:
            checkpoint["tokenizer_model"] = model_bytes
        if callable(getattr(self.encoder, "routing_settings", None)):  # AmNets: device, guard, temperature, ...
            checkpoint["routing_settings"] = self.encoder.routing_settings()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore an AmNet's routing settings (not part of ``state_dict``; see ``AmortizedEncoder.routing_settings``)."""
        settings = checkpoint.get("routing_settings")
        if settings is not None and callable(getattr(self.encoder, "load_routing_settings", None)):
            self.encoder.load_routing_settings(settings)

    # ------------------------------------------------------------------ model
    def encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, n_mels)`` features and ``(B,)`` frame counts -> ``(B, T', D)`` encoder outputs and lengths.

        Raises:
            ValueError: ``feats`` is not ``(B, T, n_mels)`` with ``T >= 1`` floating values, or
                ``lengths`` is not ``(B,)`` integer counts.
        """
        self._check_input(feats, lengths)
        x, n = self.stacker(feats, lengths)
        return self.encoder(x, n)

    def _check_input(self, feats: torch.Tensor, lengths: torch.Tensor, *, values: bool = False) -> None:
        """Shapes and dtypes (no device sync); with ``values`` also ``1 <= lengths <= T``."""
        n_mels = self.hparams.get("n_mels", 80)
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3 or feats.shape[-1] != n_mels or feats.shape[1] < 1:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(
                f"Expected argument `feats` to have shape (B, T >= 1, {n_mels}) (this model's n_mels), but got {shape}."
            )
        if not feats.is_floating_point():
            raise ValueError(f"Expected argument `feats` to hold floating-point features, but got {feats.dtype}.")
        if (not isinstance(lengths, torch.Tensor) or lengths.shape != (feats.shape[0],) or lengths.is_floating_point()
                or lengths.dtype == torch.bool):
            got = f"{tuple(lengths.shape)} {lengths.dtype}" if isinstance(lengths, torch.Tensor) else type(lengths).__name__
            raise ValueError(
                f"Expected argument `lengths` to be a ({feats.shape[0]},) integer tensor of frame counts, but got {got}."
            )
        if values and not bool(((lengths >= 1) & (lengths <= feats.shape[1])).all()):
            raise ValueError(
                f"Expected argument `lengths` to be in [1, {feats.shape[1]}] (the padded frames), but got {lengths.tolist()}."
            )

    def flops_per_frame(self) -> int:
        """Encoder plus output-layer FLOPs per encoder frame.

        RNN-T: one joint evaluation per frame (encoder projection, the sum with the
        prediction side, ``tanh``, output layer); the prediction network and its joint
        projection run per emitted token and are left out.
        """
        enc = int(self.encoder.flops_per_frame())
        if self.loss_kind == "ctc":
            return enc + linear_flops(self.head.in_features, self.head.out_features)
        joint = self.joint_enc.out_features
        return (enc + linear_flops(self.joint_enc.in_features, joint) + 2 * joint
                + linear_flops(self.head.in_features, self.head.out_features))

    def _rnnt_logits(self, enc: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        blank = torch.zeros_like(tokens[:, :1])
        pred, _ = self.pred(self.embed(torch.cat([blank, tokens], dim=1)))
        return self.head(torch.tanh(self.joint_enc(enc)[:, :, None] + self.joint_pred(pred)[:, None]))

    def asr_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ASR loss (mean per utterance) plus encoder outputs and lengths."""
        enc, n = self.encode(batch["feats"], batch["feat_lengths"])
        return self._loss_of(enc, n, batch), enc, n

    def _loss_of(self, enc: torch.Tensor, n: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """ASR loss (mean per utterance) of encoder outputs ``(B, T, D)`` with lengths ``n``."""
        if self.loss_kind == "ctc":
            logp = self.head(enc).log_softmax(-1).transpose(0, 1)
            loss = F.ctc_loss(
                logp, batch["tokens"], n, batch["token_lengths"], blank=0, reduction="mean", zero_infinity=True
            )
        else:
            import torchaudio.functional as AF

            logits = self._rnnt_logits(enc, batch["tokens"])
            loss = AF.rnnt_loss(
                logits, batch["tokens"].int(), n.int(), batch["token_lengths"].int(), blank=0, reduction="mean"
            )
        return loss

    def _branch_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"branch_<k>": loss}``: the batch encoded with every frame on branch ``k``, per branch.

        Empty unless ``branch_loss_weight > 0`` and the encoder has branches
        (``force_branch``). The routed forward's ``last_routing`` is kept (the routing
        losses and callbacks read it).
        """
        enc = self.encoder
        w = self.hparams.get("branch_loss_weight", 0.0)
        if not w or not hasattr(enc, "force_branch") or enc.force_branch is not None:
            return {}
        routing, out = enc.last_routing, {}
        x, n = self.stacker(batch["feats"], batch["feat_lengths"])
        try:
            for k in range(enc.num_branches):
                enc.force_branch = k
                y, m = enc(x, n)
                out[f"branch_{k}"] = self._loss_of(y, m, batch)
        finally:
            enc.force_branch, enc.last_routing = None, routing
        return out

    @torch.no_grad()
    def decode(self, enc: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy decoding of encoder outputs ``(B, T, D)``."""
        if self.loss_kind == "ctc":
            best = self.head(enc).argmax(-1)
            return [self.tokenizer.ctc_greedy(best[b], int(lengths[b])) for b in range(enc.shape[0])]
        return [self._rnnt_greedy(enc[b, : int(lengths[b])]) for b in range(enc.shape[0])]

    def _rnnt_greedy(self, enc: torch.Tensor, max_symbols: int = 5) -> str:
        hyp: list[int] = []
        tok = torch.zeros(1, 1, dtype=torch.long, device=enc.device)
        pred, state = self.pred(self.embed(tok))
        je = self.joint_enc(enc)
        for t in range(enc.shape[0]):
            for _ in range(max_symbols):
                k = int(self.head(torch.tanh(je[t] + self.joint_pred(pred[0, -1]))).argmax())
                if k == 0:
                    break
                hyp.append(k)
                pred, state = self.pred(self.embed(torch.tensor([[k]], device=enc.device)), state)
        return " ".join(self.tokenizer.decode(hyp).split())

    @torch.no_grad()
    def transcribe(self, feats: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Features ``(B, T, n_mels)`` and their ``(B,)`` frame counts -> transcripts.

        Runs in eval mode (no dropout; an amortized encoder takes hard decisions) whatever
        mode the module is in, and restores that mode afterwards. Features of another float
        dtype are cast to the module's.

        Raises:
            ValueError: ``feats`` is not ``(B, T, n_mels)``, or ``lengths`` not ``(B,)``
                integer frame counts in ``[1, T]``.
        """
        self._check_input(feats, lengths, values=True)
        param = next(self.parameters(), None)
        if param is not None and feats.dtype != param.dtype:
            feats = feats.to(param.dtype)
        with eval_mode(self):
            enc, n = self.encode(feats, lengths)
            return self.decode(enc, n)

    # --------------------------------------------------------------- training
    def _routing_losses(self) -> dict[str, torch.Tensor]:
        fn = getattr(self.encoder, "routing_losses", None)
        if fn is None or (self.hparams.lambda_cost == 0 and self.hparams.lambda_amr == 0):
            return {}
        hp = self.hparams
        return fn(
            lambda_cost=hp.lambda_cost,
            lambda_amr=hp.lambda_amr,
            threshold_ms=hp.get("amr_threshold_ms"),
            end_weight=hp.get("amr_end_weight", 1.0),
            slack_weight=hp.get("amr_slack_weight", 1.0),
            # only when on: encoders of other libraries may lack these arguments
            **({"eou_weight": hp.amr_eou_weight, "eou_factor": hp.get("amr_eou_factor", 2.0)}
               if hp.get("amr_eou_weight", 0.0) > 0 else {}),
        )

    def _check_ctc_feasible(self, batch: dict[str, Any], frames: torch.Tensor) -> None:
        """Count utterances too short for their transcript (CTC gives them zero loss: nothing learned)."""
        too_short = frames < ctc_min_frames(batch["tokens"], batch["token_lengths"])
        short = int(too_short.sum())
        self._ctc_infeasible += short
        if short and not self._warned_infeasible:
            self._warned_infeasible = True
            first = batch["ids"][int(too_short.nonzero()[0])]
            rank_zero_warn(
                f"{short} utterance(s) in a training batch have fewer encoder frames than CTC needs for their "
                f"transcript (e.g. {first}); they get zero loss and teach nothing. Use a smaller `stack` (shorter "
                "frames), or drop them; `train/ctc_infeasible` counts them per epoch."
            )

    def on_train_epoch_start(self) -> None:
        self._ctc_infeasible = 0

    def on_train_epoch_end(self) -> None:
        if self.loss_kind == "ctc":
            self.log("train/ctc_infeasible", float(self._ctc_infeasible), sync_dist=True, reduce_fx="sum")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, n = self.asr_loss(batch)
        if self.loss_kind == "ctc":
            self._check_ctc_feasible(batch, n)
        total = loss
        bs = len(batch["ids"])
        routing = self._routing_losses()
        if routing:
            total = total + routing["total"]
            for name, value in routing.items():
                self.log(f"train/routing_{name}", value, batch_size=bs)
        for name, value in self._branch_losses(batch).items():
            total = total + self.hparams.branch_loss_weight * value
            self.log(f"train/{name}_loss", value, batch_size=bs)
        info = getattr(self.encoder, "last_routing", None)
        if info is not None:
            self.log("train/slow_share", info.slow_share(), batch_size=bs)
        self.log("train/asr_loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/loss", total, batch_size=bs)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        bs = 0  # a DDP rank's padding batch (scored on another rank) only takes part in the reductions
        if not batch.get("repeat"):
            loss, enc, n = self.asr_loss(batch)
            hyps = self.decode(enc, n)
            self.val_wer.update(hyps, batch["texts"])
            self.val_cer.update(hyps, batch["texts"])
            bs = len(batch["ids"])
            self.val_loss.update(loss.detach(), weight=bs)
        self.log("val/loss", self.val_loss, batch_size=max(bs, 1))
        self.log("val/wer", self.val_wer, prog_bar=True, batch_size=max(bs, 1))
        self.log("val/cer", self.val_cer, batch_size=max(bs, 1))

    def _test_split_name(self, dataloader_idx: int) -> str:
        return test_split_name(self.trainer, dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self._test_split_name(dataloader_idx)
        key = split.replace(".", "_")
        if f"{key}_wer" not in self.test_metrics:
            self.test_metrics[f"{key}_wer"] = WordErrorRate().to(self.device)
            self.test_metrics[f"{key}_cer"] = CharErrorRate().to(self.device)
        wer, cer = self.test_metrics[f"{key}_wer"], self.test_metrics[f"{key}_cer"]
        bs = 0  # a DDP rank's padding batch (scored on another rank) only takes part in the reductions
        if not batch.get("repeat"):
            enc, n = self.encode(batch["feats"], batch["feat_lengths"])
            hyps = self.decode(enc, n)
            wer.update(hyps, batch["texts"])
            cer.update(hyps, batch["texts"])
            bs = len(batch["ids"])
        for kind, metric in (("wer", wer), ("cer", cer)):
            self.log(
                f"test/{split}/{kind}",
                metric,
                batch_size=max(bs, 1),
                add_dataloader_idx=False,
                metric_attribute=f"test_metrics.{key}_{kind}",
            )

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, str]]:
        """Greedy transcripts of a batch: ``[{"id": utterance id, "text": transcript}, ...]``.

        ``Trainer.predict`` (and ``lightning-amortized predict --config ... --ckpt_path ...``)
        returns one such list per batch, over the data module's ``test_splits``.
        """
        if batch.get("repeat"):  # a DDP rank's padding batch: transcribed on another rank
            return []
        hyps = self.transcribe(batch["feats"], batch["feat_lengths"])
        return [{"id": utt, "text": hyp} for utt, hyp in zip(batch["ids"], hyps)]

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("No trainable parameters: every parameter has requires_grad=False.")
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(2, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1000
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_cosine, total_steps=total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _carried_tokenizer(container: dict[str, Any] | None, recorded: str, path: str | os.PathLike) -> str:
    """The SentencePiece model a checkpoint was trained with: a path to the exact bytes it carries.

    A checkpoint carries its model's bytes (``tokenizer_model``). They win over the file at the
    recorded path, which may have moved or, worse, been overwritten by another training of the
    tokenizer (same path, other pieces: every transcript would be wrong). The recorded path is
    returned when it holds the same bytes, else a cache file of the carried ones.

    Raises:
        FileNotFoundError: neither the carried bytes nor the recorded file (checkpoints written
            before they carried the model).
    """
    import hashlib
    import tempfile
    import warnings

    from lightning_amortized.atomic import write_atomic

    data = (container or {}).get("tokenizer_model")
    if not data:
        if os.path.isfile(recorded):
            return recorded
        raise FileNotFoundError(
            f"{str(path)!r} was trained with the SentencePiece model {recorded!r}, which does not exist here, "
            "and the checkpoint does not carry it (written before checkpoints did): copy the model file there."
        )
    if os.path.isfile(recorded):
        with open(recorded, "rb") as fh:
            if fh.read() == data:
                return recorded
        warnings.warn(
            f"The SentencePiece model at {recorded!r} is not the one {str(path)!r} was trained with (retrained or "
            "replaced since); using the copy the checkpoint carries.",
            stacklevel=3,
        )
    cached = os.path.join(tempfile.gettempdir(), f"lightning-amortized-sp-{hashlib.sha256(data).hexdigest()[:16]}.model")
    if not os.path.isfile(cached):
        write_atomic(cached, data)
    return cached


def load_asr_module(path: str | os.PathLike, dropout: float = 0.1, **overrides: Any) -> ASRModule:
    """An :class:`ASRModule` with a ``RecurrentEncoder`` from any checkpoint of one.

    The one loader of the benchmarks and the updates recipe. It reads checkpoints written
    by LightningCLI (``make demo``, ``make base``), by a ``Trainer`` around a module built
    in Python (whose hyper-parameters leave the encoder out), plain ``state_dict`` files and
    ``.safetensors``. The encoder's sizes (input, hidden, layers, LSTM/GRU, projection)
    are read from the weight shapes, so every kind loads the same way and ``dropout`` can
    be set for fine-tuning; the module's other hyper-parameters come from the Lightning
    checkpoint when there. Checkpoints saved while a diff was attached are folded into
    plain weights ``W0 + D``.

    Args:
        path: The checkpoint file.
        dropout: Dropout between the encoder's recurrent layers (fine-tuning setting).
        **overrides: ``ASRModule`` arguments that override the checkpoint's (a plain
            ``state_dict`` carries none: give e.g. ``n_mels=40, stack=3`` for a model not
            built with the defaults).

    Returns:
        The module in training mode, as built (``transcribe`` switches to eval mode by
        itself; call ``.eval()`` before other inference).

    Raises:
        ValueError: The file holds no ``ASRModule`` with a ``RecurrentEncoder``.
    """
    from lightning_amortized.diffs.checkpoints import load_checkpoint
    from lightning_amortized.nn.encoders import RecurrentEncoder


    state, container = load_checkpoint(path)
    prefix = "encoder.rnn.rnn."
    if f"{prefix}weight_ih_l0" not in state:
        raise ValueError(f"{str(path)!r} does not hold an ASRModule with a RecurrentEncoder (no {prefix}weight_ih_l0).")
    layers = sum(1 for k in state if k.startswith(f"{prefix}weight_ih_l") and not k.endswith("_reverse"))
    w_hh = state[f"{prefix}weight_hh_l0"]
    hidden = int(w_hh.shape[1])
    gates = int(w_hh.shape[0]) // hidden
    if gates not in (3, 4):
        raise ValueError(f"Cannot tell LSTM from GRU: weight_hh_l0 has shape {tuple(w_hh.shape)}.")
    proj = state.get("encoder.proj.weight")
    encoder = RecurrentEncoder(
        int(state[f"{prefix}weight_ih_l0"].shape[1]),
        hidden,
        num_layers=layers,
        rnn_type="lstm" if gates == 4 else "gru",
        dropout=dropout,
        projection=int(proj.shape[0]) if proj is not None else None,
    )
    hparams = dict((container or {}).get("hyper_parameters") or {})
    # LightningCLI checkpoints also hold the encoder's class_path config: the encoder is
    # rebuilt above from the weight shapes (with this recipe's dropout), so leave it out.
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_") and k != "encoder"}
    if kwargs.get("tokenizer"):
        kwargs["tokenizer"] = _carried_tokenizer(container, kwargs["tokenizer"], path)
    kwargs.update(overrides)
    try:
        model = ASRModule(encoder, **kwargs)
    except ValueError as err:
        if container is not None:
            raise
        raise ValueError(
            f"{err} ({str(path)!r} is a plain state dict without hyper-parameters: pass the module's own, e.g. "
            "load_asr_module(path, n_mels=..., stack=...).)"
        ) from err
    model.load_state_dict(state, strict=True)
    return model
