"""Five chained model updates on the synthetic corpus: neural diffs versus full fine-tuning.

Starting from a trained base checkpoint (the `make demo` model), update ``k = 1..K``
fine-tunes on split ``update-k`` (new named entities) plus an equal number of replayed
``train`` utterances, and ships the result:

- ``sparse`` / ``hashed``: a :class:`~lightning_amortized.callbacks.neural_diff.NeuralDiff`
  on the encoder weights and the output layer, exported as ``diff-k.safetensors``; the
  shipped file (quantization included) is merged before update ``k + 1`` trains, so each
  diff names the hash of the weights devices hold after diffs ``1..k-1``;
- ``bias``: bias-only tuning, shipped as a dense diff of the biases (``sparse`` with budget 1);
- ``full``: full-parameter fine-tuning of the previous model; ships the whole model;
- ``lora``: a low-rank update ``W0 + B @ A * alpha / r`` on the diff targets
  (:mod:`lightning_amortized.diffs.lowrank`; 1-D targets such as ``head.bias`` get a dense
  delta), shipped as ``lora-k.safetensors`` with fp16 factors; ``r`` is the largest rank
  whose file fits ``budget`` (a fraction of the fp32 full checkpoint's bytes, or bytes), and
  the shipped (fp16) product is folded in before update ``k + 1`` trains;
- ``compressed`` (the published baseline): full fine-tuning of the previous shipped model,
  then the whole model compressed to ``budget`` (same units as ``lora``) and shipped whole:
  the targeted weights magnitude-pruned to the entries that fit, int8 values, written in the
  diff format against an all-zero base (``compressed-k.safetensors``), and every other
  parameter dense in fp16 (``compressed-k.dense.safetensors``, also in the diff format); the
  bytes of both files count. The device builds the model from zeros; update ``k + 1``
  fine-tunes that compressed model.

After each update the shipped model is evaluated (greedy CTC, WER/CER) on
``update-1-test .. update-k-test`` (unseen speakers), on the base ``test`` split and on
``test-other`` (voices and sentence templates unseen in training; ``test_other_split``). At
the end a fresh base gets ``apply_chain(diff-1 .. diff-K)`` (``lora``: ``apply_lowrank`` of
``lora-1 .. lora-K``; ``compressed``: each update's files applied to zeros) and is
compared with the shipped and the trained model (bit-exact for fp32 values; the max abs
error is reported for fp16/int8, the fp16 factors and the compression).

Usage (every option of :class:`UpdateConfig` from a YAML file or a flag; the configs of
``benchmarks/diff_updates.py`` are in ``recipes/synthetic/conf/updates/``)::

    python recipes/synthetic/updates.py --config recipes/synthetic/conf/updates/sparse10.yaml \\
        --base runs/synthetic/lstm_ctc/.../best.ckpt --out runs/synthetic/updates/sparse10
    python recipes/synthetic/updates.py --base BASE.ckpt --method full --epochs 8
    python recipes/synthetic/updates.py --help

Writes ``<out>/results.json`` (and the diff files / shipped models). Default peak learning
rates (picked by a check on update 1, see ``DEFAULT_LR``): ``3e-3`` for diffs, ``1e-3`` for
full fine-tuning (``lora`` and ``compressed`` take those of the diffs and of full
fine-tuning, unchecked).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import safetensors.torch
import torch
from lightning.pytorch import Trainer
from torchmetrics.text import CharErrorRate

from lightning_amortized.atomic import write_atomic
from lightning_amortized.callbacks.anchor import AnchorToStart
from lightning_amortized.callbacks.neural_diff import NeuralDiff
from lightning_amortized.data.datamodule import DurationBatchSampler, LibriSpeechDataModule, SpeechCollator, SpeechDataset
from lightning_amortized.data.prepare import CorpusError, Utterance, read_manifest
from lightning_amortized.errors import first_line
from lightning_amortized.diffs import (
    DiffError,
    apply_chain,
    apply_diff,
    apply_lowrank,
    apply_to_state_dict,
    attach_lowrank,
    base_tensor,
    effective_tensor,
    entries_for_bytes,
    estimate_diff_bytes,
    export_diff,
    export_diff_from_weights,
    export_lowrank,
    inspect_diff,
    merge,
    merge_lowrank,
    plain_parameters,
    rank_for_bytes,
    select_targets,
    weights_sha256,
)
from lightning_amortized.data.synthetic import read_slu
from lightning_amortized.module import load_asr_module
from lightning_amortized.scoring import bootstrap_wer, entity_accuracy, slot_values, utterance_errors

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

METHODS = ("sparse", "hashed", "bias", "full", "lora", "compressed")
DIFF_TARGETS = ("encoder.*weight*", "head.*")
BIAS_TARGETS = ("*bias*",)
# Peak learning rates, from a check on update 1 (3 epochs, 150 + 150 utterances, demo base at
# 56.6 % test WER): sparse 10 % 1e-3 -> 59.9 % / 3e-3 -> 59.5 % WER on update-1-test; full
# fine-tuning 3e-4 -> 60.9 % / 1e-3 -> 57.7 %. Bias-only, LoRA (the diffs' rate) and the compressed
# baseline (full fine-tuning's rate) were not checked.
DEFAULT_LR = {"sparse": 3e-3, "hashed": 3e-3, "bias": 3e-3, "full": 1e-3, "lora": 3e-3, "compressed": 1e-3}
# `extra` metadata of both files of the compressed baseline (entries_for_bytes sizes the header with it).
COMPRESSED_EXTRA = {"shipped": "compressed model, applied to zeros"}


# --------------------------------------------------------------------------- configuration


@dataclass
class UpdateConfig:
    """One run of ``updates`` consecutive updates.

    Attributes:
        base: base checkpoint (Lightning ``.ckpt`` of an ``ASRModule``, or a state dict).
        root: corpus root (LibriSpeech layout with ``update-k`` / ``update-k-test`` splits).
        out: output folder (diff files, shipped models, ``results.json``); ``None``:
            ``runs/synthetic/updates/<method>``.
        method: ``"sparse"``, ``"hashed"``, ``"bias"``, ``"full"``, ``"lora"`` or ``"compressed"``.
        budget: ``sparse`` / ``hashed``: the NeuralDiff budget, a fraction of the targeted
            entries (float) or bytes (int); ``lora`` / ``compressed``: a fraction of the fp32
            full checkpoint's bytes (float; ``floor(budget * bytes)``) or bytes (int), the
            whole shipped file(s) included.
        value_dtype: stored diff values: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        also_export: extra value dtypes exported from the same trained diff, for their sizes
            and errors only (the chain uses ``value_dtype``).
        targets: NeuralDiff target patterns (default: encoder weights and the output layer);
            also the LoRA targets and the pruned, int8 part of the compressed model.
        lora_alpha: LoRA scale numerator, ``scale = alpha / r`` (``None``: ``alpha = r``, scale 1).
        anchor: strength of the L2-SP penalty pulling the trainable parameters back to their
            values at the start of each update
            (:class:`~lightning_amortized.callbacks.AnchorToStart`; 0: off). Full fine-tuning
            and the compressed baseline: the weights; a sparse or hashed diff: its values ``D``
            (zero at the start, so an L2 penalty on the diff); LoRA: the factors' movement.
        mask_epochs: sparse diffs only: epochs of the pruning schedule
            (:class:`~lightning_amortized.callbacks.NeuralDiff`'s ``schedule_epochs``; ``None``:
            all ``epochs``, a cubic ramp to the budget at the last epoch). ``2``: one dense
            epoch, then the mask is fixed by magnitude and every later epoch trains at the
            budget; ``1``: dense training throughout, pruned to the budget only at the end.
        prune_score: sparse diffs only: what the pruning schedule ranks entries by,
            ``"magnitude"`` (``|D|``) or ``"fisher"`` (``F * D**2``; NeuralDiff's ``prune_score``).
        updates: number of consecutive updates (``update-1 .. update-K``).
        epochs: training epochs per update.
        lr: peak learning rate (warm-up + cosine over the update); ``None``: the method default.
        update_utterances: utterances sampled from ``update-k`` (``None``: all).
        replay_utterances: utterances sampled from ``replay_split`` per update.
        replay_split: base data replayed against forgetting.
        replay_earlier: utterances drawn from what the earlier updates trained on (the
            ``update-1 .. update-(k-1)`` utterances of their own draws, pooled; the same draw for
            every method) and replayed in update ``k`` besides ``replay_utterances``, so the names
            of earlier updates are rehearsed, as a server keeping every update's data would (0:
            none; update 1 has nothing earlier). Each epoch then holds ``update + replay +
            earlier`` utterances.
        test_split: the base test split.
        test_other_split: the base split of voices and sentence templates unseen in training,
            evaluated like ``test_split`` (``None``: not evaluated, e.g. on a corpus without it).
        test_utterances: cap on each base test split (first N by id; ``None``: all).
        max_batch_seconds: audio seconds per training batch (padded; as in ``conf/lstm_ctc.yaml``).
        max_batch_size: utterances per training batch.
        dropout: encoder dropout while fine-tuning.
        seed: seed of sampling, training and hashing.
        threads: ``torch.set_num_threads`` (``None`` leaves it).
        progress: Lightning progress bars.
    """

    base: str
    root: str = str(REPO / "data" / "synthetic")
    out: str | None = None
    method: Literal["sparse", "hashed", "bias", "full", "lora", "compressed"] = "sparse"
    budget: int | float = 0.1
    value_dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    also_export: tuple[str, ...] = ()
    targets: tuple[str, ...] | None = None
    lora_alpha: float | None = None
    anchor: float = 0.0
    mask_epochs: int | None = None
    prune_score: Literal["magnitude", "fisher"] = "magnitude"
    updates: int = 5
    epochs: int = 3
    lr: float | None = None
    update_utterances: int | None = 150
    replay_utterances: int = 150
    replay_split: str = "train"
    replay_earlier: int = 0
    test_split: str = "test"
    test_other_split: str | None = "test-other"
    test_utterances: int | None = None
    max_batch_seconds: float = 40.0
    max_batch_size: int = 24
    dropout: float = 0.1
    seed: int = 0
    threads: int | None = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = str(REPO / "runs" / "synthetic" / "updates" / self.method)
        if self.method not in METHODS:
            raise ValueError(f"Expected argument `method` to be one of {list(METHODS)}, but got {self.method!r}.")
        if self.updates < 1 or self.epochs < 1:
            raise ValueError(f"Expected `updates` and `epochs` >= 1, but got {self.updates} and {self.epochs}.")
        if self.value_dtype not in ("fp32", "fp16", "int8"):
            raise ValueError(f"Expected argument `value_dtype` to be fp32, fp16 or int8, but got {self.value_dtype!r}.")
        if isinstance(self.anchor, bool) or not isinstance(self.anchor, (int, float)) or not self.anchor >= 0:
            raise ValueError(f"Expected argument `anchor` to be a number >= 0, but got anchor={self.anchor!r}.")
        if isinstance(self.replay_earlier, bool) or not isinstance(self.replay_earlier, int) or self.replay_earlier < 0:
            raise ValueError(
                f"Expected argument `replay_earlier` to be an int >= 0, but got replay_earlier={self.replay_earlier!r}."
            )
        if self.mask_epochs is not None:
            if isinstance(self.mask_epochs, bool) or not isinstance(self.mask_epochs, int):
                raise ValueError(f"Expected argument `mask_epochs` to be None or an int, but got {self.mask_epochs!r}.")
            if not 1 <= self.mask_epochs <= self.epochs:
                raise ValueError(
                    f"Expected argument `mask_epochs` to be None or in [1, epochs={self.epochs}], "
                    f"but got {self.mask_epochs}."
                )
            if self.method != "sparse":
                raise ValueError(
                    f"Argument `mask_epochs` schedules a sparse diff's mask; method {self.method!r} has none "
                    "(leave it unset)."
                )
        if self.prune_score != "magnitude" and self.method != "sparse":
            raise ValueError(
                f"Argument `prune_score` ranks a sparse diff's entries; method {self.method!r} has none (leave it "
                "'magnitude')."
            )

    def budget_bytes(self, full_bytes: int) -> int:
        """The byte budget of one ``lora`` / ``compressed`` update: ``budget`` in bytes, or that fraction of ``full_bytes``."""
        if isinstance(self.budget, int):
            return self.budget
        return math.floor(float(self.budget) * full_bytes)

    @property
    def base_test_splits(self) -> list[str]:
        """The base test splits evaluated before and after every update: ``test`` (and ``test-other``)."""
        return [self.test_split] + ([self.test_other_split] if self.test_other_split else [])

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def target_patterns(self) -> tuple[str, ...]:
        if self.targets is not None:
            return tuple(self.targets)
        return BIAS_TARGETS if self.method == "bias" else DIFF_TARGETS


# --------------------------------------------------------------------------- model


def load_base(path: str | Path, dropout: float = 0.1) -> Any:
    """The base :class:`~lightning_amortized.module.ASRModule` (see :func:`~lightning_amortized.module.load_asr_module`)."""
    return load_asr_module(path, dropout=dropout)


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of the tensors in ``model.state_dict()`` (the fp32 'full checkpoint' payload)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{plain name: weight the forward pass uses}`` (``W0 + D`` where a diff is attached), cloned."""

    return {n: effective_tensor(model, n).clone() for n in plain_parameters(model)}


def max_abs_error(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Largest ``|a - b|`` over the common names (``inf`` if the name sets differ)."""
    if set(a) != set(b):
        return math.inf
    return max((float((a[n].double() - b[n].double()).abs().max()) for n in a if a[n].numel()), default=0.0)


def bit_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Same names, dtypes, shapes and bytes."""

    return set(a) == set(b) and weights_sha256(a, a) == weights_sha256(b, b)


# --------------------------------------------------------------------------- data


def update_sample_seed(cfg: UpdateConfig, k: int) -> int:
    """The seed of update ``k``'s data draws (and of its training): one formula for the update and its rehearsals."""
    return cfg.seed * 1000 + k


def sample_utterances(utts: Sequence[Any], n: int | None, seed: int) -> list[Any]:
    """``n`` utterances drawn without replacement (seeded; sorted by id), or all of them."""
    ordered = sorted(utts, key=lambda u: u.id)
    if n is None or n >= len(ordered):
        return ordered
    if n < 0:
        raise ValueError(f"Expected a non-negative number of utterances, but got {n}.")
    return sorted(random.Random(seed).sample(ordered, n), key=lambda u: u.id)


class UpdateDataModule(LibriSpeechDataModule):
    """Training data of one update: a sample of ``update_split`` plus replayed base utterances.

    Args:
        root: corpus root.
        update_split: the update's split (``update-k``).
        replay_split: base split replayed against forgetting.
        update_utterances: utterances drawn from ``update_split`` (``None``: all).
        replay_utterances: utterances drawn from ``replay_split`` (0: none).
        sample_seed: seed of the draws.
        earlier: the earlier updates to rehearse, ``(split, the sample_seed it was trained with)``
            each: their training utterances are ``update_utterances`` of ``split`` drawn with
            that seed, as their own ``UpdateDataModule`` drew them.
        earlier_utterances: utterances drawn from the earlier updates' training utterances
            pooled (0: none); they join the replayed ones.
        **kwargs: batching and feature options of ``LibriSpeechDataModule``.

    Example::

        dm = UpdateDataModule("data/synthetic", "update-2", update_utterances=150, replay_utterances=150,
                              sample_seed=2, earlier=[("update-1", 1)], earlier_utterances=100)
        dm.prepare_data()
        new, replayed, earlier = dm.draws()  # earlier: 100 of the 150 update-1 utterances update 1 trained on
    """

    def __init__(
        self,
        root: str,
        update_split: str,
        replay_split: str = "train",
        update_utterances: int | None = 150,
        replay_utterances: int = 150,
        sample_seed: int = 0,
        earlier: Sequence[tuple[str, int]] = (),
        earlier_utterances: int = 0,
        **kwargs: Any,
    ) -> None:
        earlier = list(earlier) if earlier_utterances else []
        splits = [update_split] + ([replay_split] if replay_utterances else []) + [split for split, _ in earlier]
        super().__init__(root, train_splits=splits, val_splits=[], test_splits=[], **kwargs)
        self.update_split, self.replay_split = update_split, replay_split
        self.update_utterances, self.replay_utterances = update_utterances, replay_utterances
        self.earlier, self.earlier_utterances = earlier, earlier_utterances
        self.sample_seed = sample_seed

    def draws(self) -> tuple[list[Utterance], list[Utterance], list[Utterance]]:
        """``(update, replayed base, rehearsed earlier-update)`` utterances of this update (run ``prepare_data`` first)."""
        new = sample_utterances(self._manifest(self.update_split), self.update_utterances, self.sample_seed)
        old: list[Utterance] = []
        if self.replay_utterances:
            old = sample_utterances(self._manifest(self.replay_split), self.replay_utterances, self.sample_seed + 7919)
        pool = [u for split, seed in self.earlier  # what each earlier update trained on
                for u in sample_utterances(self._manifest(split), self.update_utterances, seed)]
        return new, old, sample_utterances(pool, self.earlier_utterances, self.sample_seed + 104729) if pool else []

    def utterances(self) -> tuple[list[Utterance], list[Utterance]]:
        """``(update utterances, replayed utterances)``: the replayed base ones, then the rehearsed earlier-update ones."""
        new, old, earlier = self.draws()
        return new, old + earlier

    def _manifest(self, split: str) -> list[Utterance]:
        return read_manifest(self.manifest_dir / f"{split}.jsonl")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and "train" not in self.datasets:
            new, old = self.utterances()
            self.datasets["train"] = SpeechDataset(
                new + old, self.tokenizer, self.sample_rate, features=self.features, cache=self.cache_features
            )
            self.datasets["train"].precompute(desc=f"features {self.update_split}")


class EvalSets:
    """Feature batches of the evaluation splits, computed once and kept in memory.

    Args:
        root: corpus root.
        splits: split names.
        caps: optional ``{split: N}``: keep the first ``N`` utterances by id.
        max_batch_seconds: padded audio seconds per batch.
    """

    def __init__(
        self, root: str, splits: Sequence[str], caps: Mapping[str, int | None] | None = None, max_batch_seconds: float = 200.0
    ) -> None:

        dm = LibriSpeechDataModule(root, train_splits=[], val_splits=[], test_splits=list(splits))
        dm.prepare_data()
        collate = SpeechCollator(None, None)
        self.batches: dict[str, list[dict[str, Any]]] = {}
        self.sizes: dict[str, int] = {}
        self.labels: dict[str, dict[str, dict[str, Any]]] = {}
        for split in splits:
            utts = sorted(read_manifest(dm.manifest_dir / f"{split}.jsonl"), key=lambda u: u.id)
            cap = (caps or {}).get(split)
            if cap is not None:
                utts = utts[:cap]
            ds = SpeechDataset(utts, dm.tokenizer, dm.sample_rate, features=dm.features)
            sampler = DurationBatchSampler(ds.durations, max_batch_seconds, shuffle=False)
            self.batches[split] = [collate([ds[i] for i in b]) for b in sampler]
            self.sizes[split] = len(ds)
            try:
                labels = read_slu(root, split)
            except FileNotFoundError:
                labels = {}
            self.labels[split] = labels

    @torch.no_grad()
    def evaluate(self, model: Any, splits: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Greedy decoding scores per split (fractions, not %).

        ``{split: {"wer", "cer", "wer_ci95": [low, high], "words", "entity_accuracy",
        "new_entity_accuracy", "entity_mentions", "new_entity_mentions", "utterance_errors",
        "utterance_words"}}``: the interval is a bootstrap over utterances
        (:func:`~lightning_amortized.scoring.bootstrap_wer`); the per-utterance word errors and
        reference words (in a fixed utterance order, the same in every run on the corpus, whose ids
        the hash fingerprints) let a benchmark pool seeds and pair methods on the same utterances; entity
        accuracy is the share of slot values (``slu.jsonl``) transcribed word for word, over
        all requests and over those naming entities new in their update (``None`` when the
        split has none).
        """

        was_training = model.training
        model.eval()
        out = {}
        for split in splits if splits is not None else list(self.batches):
            cer = CharErrorRate()
            hyps, refs, ids = [], [], []
            for b in self.batches[split]:
                h = model.transcribe(b["feats"], b["feat_lengths"])
                cer.update(h, b["texts"])
                hyps += h
                refs += b["texts"]
                ids += b["ids"]
            errors, words = utterance_errors(hyps, refs)
            wer, low, high = bootstrap_wer(errors, words, seed=0)
            labels = self.labels.get(split, {})
            entities = [slot_values(labels[i]["slots"]) if i in labels else [] for i in ids]
            hits, mentions = entity_accuracy(hyps, entities)
            new = [e if labels.get(i, {}).get("entities_new") else [] for i, e in zip(ids, entities)]
            new_hits, new_mentions = entity_accuracy(hyps, new)
            out[split] = {
                "wer": wer,
                "cer": float(cer.compute()),
                "wer_ci95": [low, high],
                "words": int(sum(words)),
                "entity_accuracy": hits / mentions if mentions else None,
                "entity_mentions": mentions,
                "new_entity_accuracy": new_hits / new_mentions if new_mentions else None,
                "new_entity_mentions": new_mentions,
                "utterance_errors": [int(e) for e in errors],
                "utterance_words": [int(w) for w in words],
                "utterance_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            }
        model.train(was_training)
        return out


# --------------------------------------------------------------------------- one update


def _trainer(cfg: UpdateConfig, callbacks: list[Any]) -> Any:

    return Trainer(
        max_epochs=cfg.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.progress,
        use_distributed_sampler=False,
        gradient_clip_val=5.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=cfg.out,
        callbacks=callbacks,
    )


def _fine_tune_all(cfg: UpdateConfig, model: Any, dm: Any, rec: dict[str, Any], t0: float) -> dict[str, torch.Tensor]:
    """Full fine-tuning of every parameter (L2-SP anchored when ``cfg.anchor``); records ``fit_seconds``."""
    for p in model.parameters():
        p.requires_grad_(True)
    trainer = _trainer(cfg, _anchor(cfg))
    trainer.fit(model, datamodule=dm)
    rec["fit_seconds"] = round(time.perf_counter() - t0, 1)
    return plain_state(model)


def _anchor(cfg: UpdateConfig) -> list[Any]:
    """The L2-SP callback of an update (none when ``cfg.anchor`` is 0); after a diff's callback, which attaches ``D``."""
    return [AnchorToStart(cfg.anchor)] if cfg.anchor else []


def _diff_callback(cfg: UpdateConfig, path: Path) -> Any:

    if cfg.method == "bias":
        return NeuralDiff(method="sparse", budget=1.0, targets=list(cfg.target_patterns), seed=cfg.seed,
                          value_dtype=cfg.value_dtype, export_path=str(path))
    return NeuralDiff(method=cfg.method, budget=cfg.budget, targets=list(cfg.target_patterns), seed=cfg.seed,
                      value_dtype=cfg.value_dtype, export_path=str(path), schedule_epochs=cfg.mask_epochs,
                      prune_score=cfg.prune_score)


def run_update(cfg: UpdateConfig, model: Any, k: int) -> dict[str, Any]:
    """Train update ``k`` on ``model`` in place and ship it; returns the update's record.

    For diffs and ``lora``, ``model`` ends holding the shipped weights (the file merged in);
    for ``compressed``, the model rebuilt from its files. The trained (in-memory) weights are
    returned under ``"_trained"``.
    """


    out = Path(cfg.out)
    dm = UpdateDataModule(
        root=cfg.root,
        update_split=f"update-{k}",
        replay_split=cfg.replay_split,
        update_utterances=cfg.update_utterances,
        replay_utterances=cfg.replay_utterances,
        sample_seed=update_sample_seed(cfg, k),
        earlier=[(f"update-{j}", update_sample_seed(cfg, j)) for j in range(1, k)],
        earlier_utterances=cfg.replay_earlier,
        max_batch_seconds=cfg.max_batch_seconds,
        max_batch_size=cfg.max_batch_size,
        seed=cfg.seed + k,
    )
    dm.prepare_data()
    new, old, earlier = dm.draws()
    pl.seed_everything(update_sample_seed(cfg, k), workers=True, verbose=False)
    model.hparams.lr = cfg.learning_rate
    rec: dict[str, Any] = {"update": k, "train_update_utterances": len(new), "train_replay_utterances": len(old)}
    if dm.earlier:
        rec["train_earlier_utterances"] = len(earlier)  # rehearsed from what updates 1 .. k-1 trained on
    t0 = time.perf_counter()
    if cfg.method == "lora":
        return _lora_update(cfg, model, k, dm, rec, t0)
    if cfg.method == "compressed":
        return _compressed_update(cfg, model, k, dm, rec, t0)
    if cfg.method == "full":
        trained = _fine_tune_all(cfg, model, dm, rec, t0)
        path = out / f"model-{k}.safetensors"


        safetensors.torch.save_file({n: t.contiguous() for n, t in trained.items()}, str(path))
        rec.update(
            file=str(path),
            file_bytes=path.stat().st_size,
            payload_bytes=sum(t.numel() * t.element_size() for t in trained.values()),
            stored_entries=sum(t.numel() for t in trained.values()),
            result_sha256=weights_sha256(trained, trained),
        )
        rec["_trained"] = trained
        return rec

    path = out / f"diff-{k}.safetensors"
    callback = _diff_callback(cfg, path)
    trainer = _trainer(cfg, [callback, *_anchor(cfg)])
    trainer.fit(model, datamodule=dm)
    rec["fit_seconds"] = round(time.perf_counter() - t0, 1)
    trained = plain_state(model)
    extra = {}
    for dtype in cfg.also_export:
        extra_path = out / f"diff-{k}.{dtype}.safetensors"
        info = export_diff(model, extra_path, value_dtype=dtype, seed=cfg.seed)
        extra[dtype] = {"file": str(extra_path), "file_bytes": info.file_bytes,
                        "max_abs_error": float(info.extra.get("max_abs_error", 0.0))}
    info = inspect_diff(path)
    merge(model, path)  # ship: the model now holds exactly what devices hold after applying the file
    shipped = plain_state(model)
    rec.update(
        file=str(path),
        file_bytes=info.file_bytes,
        payload_bytes=info.payload_bytes,
        stored_entries=sum(t.stored for t in info.targets),
        target_entries=sum(t.numel for t in info.targets),
        targets=len(info.targets),
        base_sha256=info.base_sha256,
        result_sha256=info.result_sha256,
        max_abs_error=max_abs_error(shipped, trained),
        extra_exports=extra,
    )
    rec["_trained"] = trained
    return rec


def _lora_update(cfg: UpdateConfig, model: Any, k: int, dm: Any, rec: dict[str, Any], t0: float) -> dict[str, Any]:
    """Update ``k`` as a low-rank delta of the largest rank that fits the byte budget; ships ``lora-k.safetensors``.

    The rank: :func:`~lightning_amortized.diffs.rank_for_bytes` over the targets' shapes, i.e. the
    largest ``r`` with ``8 + header + 2 * (sum_j min(r, m_j, n_j) * (m_j + n_j) + sum of 1-D
    target sizes) <= budget`` bytes (fp16 factors; the header is computed exactly).
    """
    path = Path(cfg.out) / f"lora-{k}.safetensors"
    full_bytes = state_bytes(model)
    budget = cfg.budget_bytes(full_bytes)
    names = select_targets(model, list(cfg.target_patterns))
    shapes = {n: tuple(base_tensor(model, n).shape) for n in names}
    rank = rank_for_bytes(shapes, budget, cfg.lora_alpha)
    model.requires_grad_(False)
    attach_lowrank(model, names, rank, cfg.lora_alpha, seed=update_sample_seed(cfg, k))
    trainer = _trainer(cfg, _anchor(cfg))
    trainer.fit(model, datamodule=dm)
    rec["fit_seconds"] = round(time.perf_counter() - t0, 1)
    trained = plain_state(model)
    info = export_lowrank(model, path)
    merge_lowrank(model, path)  # ship: the model holds what devices hold (fp16 factors, their arithmetic)
    shipped = plain_state(model)
    rec.update(
        file=str(path),
        file_bytes=info.file_bytes,
        payload_bytes=info.payload_bytes,
        stored_entries=info.stored_entries,
        target_entries=sum(math.prod(s) for s in shapes.values()),
        targets=len(names),
        rank=rank,
        alpha=info.alpha,
        budget_bytes=budget,
        base_sha256=info.base_sha256,
        result_sha256=info.result_sha256,
        max_abs_error=max_abs_error(shipped, trained),
    )
    rec["_trained"] = trained
    return rec


def check_budget(cfg: UpdateConfig, model: Any) -> None:
    """Refuse a ``lora`` / ``compressed`` budget too small for the smallest update, before anything trains.

    ``lora``: rank 1 must fit; ``compressed``: the fp16 file of the untargeted parameters
    (projected by :func:`~lightning_amortized.diffs.estimate_diff_bytes`) plus one int8 entry.

    Raises:
        ValueError: naming the budget and what the smallest update takes.
    """
    if cfg.method not in ("lora", "compressed"):
        return
    budget = cfg.budget_bytes(state_bytes(model))
    names = select_targets(model, list(cfg.target_patterns))
    params = plain_parameters(model)
    if cfg.method == "lora":
        rank_for_bytes({n: tuple(params[n].shape) for n in names}, budget, cfg.lora_alpha)
        return
    others = {n: p.numel() for n, p in params.items() if n not in names}
    dense = estimate_diff_bytes("sparse", "fp16", {n: (k, k) for n, k in others.items()}, large_gaps=dict.fromkeys(others, 0),
                                extra=COMPRESSED_EXTRA) if others else 0
    if entries_for_bytes("sparse", "int8", {n: params[n].numel() for n in names}, budget - dense, extra=COMPRESSED_EXTRA) < 1:
        raise ValueError(
            f"The compressed model does not fit the budget of {budget:,} bytes (budget={cfg.budget!r}): the fp16 "
            f"untargeted parameters alone take about {dense:,} bytes. Raise `budget` or target more parameters."
        )


def dense_companion(path: str | Path) -> Path:
    """The fp16 file of the untargeted parameters next to a compressed model's ``compressed-k.safetensors``."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".dense.safetensors")


def load_compressed(model: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The weights a device builds from a compressed update: zeros, plus ``path`` and its dense companion.

    Both files are diffs against an all-zero base (:func:`~lightning_amortized.diffs.apply_to_state_dict`
    checks their base and result hashes). ``model`` only gives the names, shapes and dtypes; it
    is not modified.

    Returns:
        ``{plain name: tensor}`` of every parameter.
    """
    zeros = {n: torch.zeros_like(t) for n, t in plain_parameters(model).items()}
    files = [path] + ([dense_companion(path)] if dense_companion(path).exists() else [])
    state, _ = apply_to_state_dict(zeros, files)
    return {n: t.detach().clone() for n, t in state.items()}


def _compressed_update(cfg: UpdateConfig, model: Any, k: int, dm: Any, rec: dict[str, Any], t0: float) -> dict[str, Any]:
    """Update ``k`` as the published baseline: full fine-tuning, then the model compressed to the budget.

    ``compressed-k.dense.safetensors``: every untargeted parameter, all entries, fp16 (a diff
    against zeros). ``compressed-k.safetensors``: the targets' largest-magnitude weights, int8
    with one scale per tensor, as many as fit in ``budget - dense file bytes``
    (:func:`~lightning_amortized.diffs.entries_for_bytes`; re-exported with fewer entries while
    the real file is over). ``model`` ends holding the weights rebuilt from both files.
    """
    out = Path(cfg.out)
    path, dense_path = out / f"compressed-{k}.safetensors", dense_companion(out / f"compressed-{k}.safetensors")
    full_bytes = state_bytes(model)
    budget = cfg.budget_bytes(full_bytes)
    names = select_targets(model, list(cfg.target_patterns))
    trained = _fine_tune_all(cfg, model, dm, rec, t0)
    zeros = {n: torch.zeros_like(t) for n, t in trained.items()}
    others = [n for n in trained if n not in names]
    dense_bytes, dense_entries, dense_payload = 0, 0, 0
    if others:
        n_others = sum(trained[n].numel() for n in others)
        dense = export_diff_from_weights(zeros, trained, others, dense_path, keep=n_others, value_dtype="fp16",
                                         extra_metadata=COMPRESSED_EXTRA)
        dense_bytes, dense_entries, dense_payload = dense.file_bytes, dense.stored, dense.payload_bytes
    elif dense_path.exists():
        dense_path.unlink()
    numels = {n: trained[n].numel() for n in names}
    room = budget - dense_bytes
    keep = entries_for_bytes("sparse", "int8", numels, room, extra=COMPRESSED_EXTRA)
    if keep < 1:
        raise ValueError(
            f"The compressed model does not fit the budget of {budget:,} bytes: the fp16 untargeted parameters "
            f"alone take {dense_bytes:,} bytes. Raise `budget` or target more parameters."
        )
    info = export_diff_from_weights(zeros, trained, names, path, keep=keep, value_dtype="int8", extra_metadata=COMPRESSED_EXTRA)
    while info.file_bytes > room and keep > 1:  # more 4-byte index escapes than projected: keep fewer entries
        keep = max(1, keep - max(1, (info.file_bytes - room + 1) // 2))
        info = export_diff_from_weights(zeros, trained, names, path, keep=keep, value_dtype="int8",
                                        extra_metadata=COMPRESSED_EXTRA)
    if info.file_bytes > room:
        raise ValueError(f"The compressed model does not fit the budget of {budget:,} bytes, even with one entry kept.")
    shipped = load_compressed(model, path)
    with torch.no_grad():  # the device's model; update k + 1 fine-tunes it
        for n, t in shipped.items():
            base_tensor(model, n).copy_(t)
    rec.update(
        file=str(path),
        files=[str(path)] + ([str(dense_path)] if others else []),
        file_bytes=info.file_bytes + dense_bytes,
        payload_bytes=info.payload_bytes + dense_payload,
        stored_entries=info.stored + dense_entries,
        target_entries=sum(numels.values()),
        kept_fraction=info.stored / sum(numels.values()),
        dense_file_bytes=dense_bytes,
        targets=len(names),
        budget_bytes=budget,
        result_sha256=weights_sha256(shipped, shipped),
        max_abs_error=max_abs_error(shipped, trained),
    )
    rec["_trained"] = trained
    return rec


# --------------------------------------------------------------------------- chain


def wrong_base_refused(cfg: UpdateConfig, apply: Any, files: Sequence[str | Path]) -> bool | None:
    """Whether ``apply(model, files[-1])`` on a fresh base is refused and leaves the model untouched.

    ``None`` for a single file (its base is the fresh base).
    """
    if len(files) < 2:
        return None
    probe = load_base(cfg.base, dropout=cfg.dropout)
    before = plain_state(probe)
    try:
        apply(probe, files[-1])
    except DiffError:
        return bit_equal(plain_state(probe), before)
    return False


def _chain_record(
    infos: Sequence[Any],
    links_ok: bool,
    files_verified: bool,
    final: Mapping[str, torch.Tensor],
    shipped: Mapping[str, torch.Tensor],
    trained: Mapping[str, torch.Tensor],
    refused: bool | None,
    t0: float,
) -> dict[str, Any]:
    """The keys :func:`verify_chain` returns, from the applied files and the rebuilt weights ``final``."""
    return {
        "links": len(infos),
        "hash_links_ok": links_ok,
        "files_verified": files_verified,
        "equals_shipped": bit_equal(final, shipped),
        "bit_exact_vs_trained": bit_equal(final, trained),
        "max_abs_error_vs_trained": max_abs_error(final, trained),
        "wrong_base_refused": refused,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def verify_chain(
    cfg: UpdateConfig, files: Sequence[str | Path], shipped: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """Apply ``files`` to a fresh base with :func:`~lightning_amortized.diffs.apply_chain` and compare.

    Returns:
        ``links`` (diffs applied), ``hash_links_ok`` (each diff's base hash is the previous
        one's result hash), ``equals_shipped`` (bit-exact to the recipe's final model),
        ``bit_exact_vs_trained`` and ``max_abs_error_vs_trained`` (the in-memory model
        after the last update's training, before its file was quantized), and
        ``wrong_base_refused`` (diff ``K`` applied to the fresh base is refused, ``K > 1``).
        ``lora`` and ``compressed`` runs: see :func:`verify_lora_chain` and :func:`verify_compressed`.
    """
    if cfg.method == "lora":
        return verify_lora_chain(cfg, files, shipped, trained)
    if cfg.method == "compressed":
        return verify_compressed(cfg, files, shipped, trained)
    t0 = time.perf_counter()
    model = load_base(cfg.base, dropout=cfg.dropout)
    refused = wrong_base_refused(cfg, apply_diff, files)
    infos = apply_chain(model, list(files))
    final = plain_state(model)
    links_ok = all(
        b.base_sha256 == a.result_sha256 for a, b in zip(infos, infos[1:]) if sorted(a.names) == sorted(b.names)
    )
    return _chain_record(infos, links_ok, all(inspect_diff(f).payload_sha256 for f in files), final, shipped, trained,
                         refused, t0)


def verify_lora_chain(
    cfg: UpdateConfig, files: Sequence[str | Path], shipped: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """A fresh base gets :func:`~lightning_amortized.diffs.apply_lowrank` of ``lora-1 .. lora-K``, in order.

    Returns the keys of :func:`verify_chain`: ``links``, ``hash_links_ok`` (each file's base
    hash is the previous one's result hash), ``files_verified``, ``equals_shipped``,
    ``bit_exact_vs_trained``, ``max_abs_error_vs_trained`` (the fp16 rounding of the last
    factors), ``wrong_base_refused`` (file ``K`` on the fresh base, ``K > 1``), plus ``kind``.
    """
    t0 = time.perf_counter()
    refused = wrong_base_refused(cfg, apply_lowrank, files)
    model = load_base(cfg.base, dropout=cfg.dropout)
    infos = [apply_lowrank(model, f) for f in files]  # each file read, verified and hash-checked
    final = plain_state(model)
    links_ok = all(b.base_sha256 == a.result_sha256 for a, b in zip(infos, infos[1:]))
    return {"kind": "lora", **_chain_record(infos, links_ok, True, final, shipped, trained, refused, t0)}


def verify_compressed(
    cfg: UpdateConfig, files: Sequence[str | Path], shipped: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """Each update's files rebuild a model from zeros (:func:`load_compressed`); the last one must be the shipped model.

    Every update ships a whole model, so there is no chain of bases: ``links`` counts the
    updates whose files were read, verified and applied to zeros with their hash checks
    (``hash_links_ok``); ``equals_shipped`` compares the last one with the final evaluated
    model, ``max_abs_error_vs_trained`` with the fine-tuned model before compression;
    ``wrong_base_refused``: the last file applied to the real base (not zeros) is refused.
    """
    t0 = time.perf_counter()
    model = load_base(cfg.base, dropout=cfg.dropout)
    before = plain_state(model)
    try:
        apply_diff(model, files[-1])
        refused = False
    except DiffError:
        refused = bit_equal(plain_state(model), before)
    final: dict[str, torch.Tensor] = {}
    for f in files:
        final = load_compressed(model, f)
    return {
        "kind": "compressed",
        "links": len(files),
        "hash_links_ok": True,
        "files_verified": True,
        "equals_shipped": bit_equal(final, shipped),
        "bit_exact_vs_trained": bit_equal(final, trained),
        "max_abs_error_vs_trained": max_abs_error(final, trained),
        "wrong_base_refused": refused,
        "seconds": round(time.perf_counter() - t0, 2),
    }


# --------------------------------------------------------------------------- the run


def run(cfg: UpdateConfig, log: Any = print) -> dict[str, Any]:
    """Run ``cfg.updates`` chained updates; writes ``<out>/results.json`` and returns the results."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    progress_file = out / "progress.jsonl"
    progress_file.write_text("")
    model = load_base(cfg.base, dropout=cfg.dropout)
    full_bytes = state_bytes(model)
    check_budget(cfg, model)  # before the evaluation sets are built
    update_tests = [f"update-{k}-test" for k in range(1, cfg.updates + 1)]
    base_tests = cfg.base_test_splits
    for split in base_tests:  # before any training: a corpus from before test-other lacks it
        if not (Path(cfg.root) / split).is_dir():
            raise CorpusError(
                f"The corpus at {cfg.root} has no base test split {split!r} (no folder {Path(cfg.root) / split}). "
                "Synthetic corpora generated before `test-other` existed lack it: regenerate the corpus "
                f"(`lightning-amortized make-corpus {cfg.root} --utterances N --overwrite`), or pass "
                "`--test_other_split null` to evaluate without it."
            )
    evals = EvalSets(cfg.root, [*base_tests, *update_tests], caps=dict.fromkeys(base_tests, cfg.test_utterances))
    log(f"[{cfg.method}] base checkpoint {cfg.base}: {full_bytes:,} bytes of fp32 weights; eval sets {evals.sizes}")
    base_eval = evals.evaluate(model)
    log(f"[{cfg.method}] base: " + ", ".join(f"{s} WER {100 * m['wer']:.2f}%" for s, m in base_eval.items()))
    records = []
    trained: dict[str, torch.Tensor] = {}
    for k in range(1, cfg.updates + 1):
        rec = run_update(cfg, model, k)
        trained = rec.pop("_trained")
        rec["size_fraction"] = rec["file_bytes"] / full_bytes
        rec["size_reduction_pct"] = 100.0 * (1.0 - rec["file_bytes"] / full_bytes)
        splits = base_tests + [f"update-{j}-test" for j in range(1, k + 1)]
        rec["eval"] = evals.evaluate(model, splits)
        records.append(rec)
        wers = ", ".join(f"{s} {100 * m['wer']:.2f}%" for s, m in rec["eval"].items())
        log(f"[{cfg.method}] update {k}/{cfg.updates}: {rec['file_bytes']:,} bytes "
            f"({rec['size_reduction_pct']:.2f}% smaller), fit {rec['fit_seconds']} s; WER {wers}")
        with progress_file.open("a") as fh:
            fh.write(json.dumps({"update": k, "of": cfg.updates}) + "\n")
    final = plain_state(model)
    if cfg.method == "full":
        chain = {"links": 0, "note": "full fine-tuning ships the whole model; nothing to chain"}
    else:
        chain = verify_chain(cfg, [r["file"] for r in records], final, trained)
        log(f"[{cfg.method}] chain: {chain}")
    result = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "lr": cfg.learning_rate,
        "targets": list(cfg.target_patterns),
        "full_checkpoint_bytes": full_bytes,
        "eval_sizes": evals.sizes,
        "base_eval": base_eval,
        "updates": records,
        "chain": chain,
        "torch_threads": torch.get_num_threads(),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }
    write_atomic(out / "results.json", json.dumps(result, indent=2) + "\n")
    return result


def build_parser() -> Any:
    """The recipe's command line: every :class:`UpdateConfig` field, from YAML (``--config``) and flags."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog="recipes/synthetic/updates.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file of the options (recipes/synthetic/conf/updates/)")
    p.add_argument("--corpus_utterances", type=int, default=8000, help="corpus size if it must be generated")
    p.add_argument("--corpus_train_utterances", type=int, default=16000,
                   help="its train split, as the recipes' configs set it (0: what --corpus_utterances leaves)")
    p.add_class_arguments(UpdateConfig, fail_untyped=True, sub_configs=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe (``python recipes/synthetic/updates.py --config conf/updates/sparse10.yaml --base B.ckpt``)."""
    p = build_parser()
    a = p.parse_args(argv)
    try:  # everything checked before minutes of corpus generation
        cfg = UpdateConfig(**{f: getattr(a, f) for f in UpdateConfig.__dataclass_fields__})
        if not Path(cfg.base).is_file():
            raise ValueError(f"--base {cfg.base!r} does not exist or is not a file: pass the base checkpoint.")
        root = Path(a.root)
        if not (root / "corpus.json").exists():
            from lightning_amortized.data.synthetic import make_corpus

            make_corpus(root, utterances=a.corpus_utterances, seed=0,
                        train_utterances=a.corpus_train_utterances or None)
        result = run(cfg)
    except (ValueError, OSError, CorpusError) as err:
        print(f"recipes/synthetic/updates.py: error: {first_line(err)}", file=sys.stderr)
        return 2
    print(json.dumps({"out": cfg.out, "chain": result["chain"], "total_seconds": result["total_seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
