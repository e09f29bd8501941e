"""Amortized encoders (AmNet) versus single encoders, side by side on one trained base model.

Every variant is built from its LightningCLI config in ``recipes/synthetic/conf/``, warm
started from the same trained slow-only checkpoint (the fast branches are initialised
from its weights: truncated SVD for "lowrank", magnitude pruning for "sparse"), then
fine-tuned with the same recipe (same train subset, epochs, learning rate) and
evaluated on the test split (speakers unseen in training):

=============================  =======================================================
``slow_only``                  the base LSTM, training continued (fairness)
``fast_only``                  the factorized AmNet's fast branch alone (``force_branch=0``)
``factorized_single``          rank-``r`` factorized LSTM, ``r`` so FLOPs/frame match the
                               factorized AmNet's measured average
``sparse_single``              pruned LSTM, density so FLOPs/frame match the sparse AmNet
``amnet_factorized``           shared-state AmNet, low-rank fast branch
``amnet_sparse``               shared-state AmNet, sparse fast branch
``amnet_factorized_no_amr``    the factorized AmNet with ``lambda_amr = 0`` (ablation)
``amnet_factorized_lc1``       a second operating point: ``lambda_cost = 1``, ``lambda_amr = 0.5``
``amnet_factorized_lc1_no_amr``  the same with ``lambda_amr = 0`` (second ablation pair)
``amnet_factorized_load_aware``  one model for every device: trained over rho 0.5-2.5, the
                               arbitrator sees ``log(rho)``
``amnet_factorized_load_aware_eou``  the same with the penalty's end-of-utterance latency term
                               (``amr_eou_weight 1``: latency above twice the floor is charged)
``amnet_factorized_load_aware_eou15``  the same, charging latency above 1.5x the floor
``amnet_factorized_load_aware_eou_wide``  ``..._eou`` trained over rho 0.4-3.2 (the scored devices inside the range)
``amnet_factorized_load_aware_eou4_wide``  the same with ``amr_eou_weight 4``
``amnet_factorized_load_aware_eou4_wide_bl``  the same with branch losses (``branch_loss_weight 0.5``)
``amnet_factorized_load_aware_eou4_wide_bl_tguard3``  the same trained with the latency guard at 3x the floor
``<variant>_guard2``, ``_guard3``  a trained load-aware variant's weights scored with the latency guard at 2x / 3x
                               the floor (``GUARDED``; no training: needs the variant's ``final.ckpt`` in ``--work``)
``amnet_factorized_bl``        the factorized AmNet with branch losses (each branch also
                               trained alone, ``ASRModule(branch_loss_weight=0.5)``)
``factorized_single_bl``       factorized single matched to ``amnet_factorized_bl``'s FLOPs
=============================  =======================================================

``--fast-rank`` sets the rank of every low-rank fast branch (and of fast-only), ``--fast-density``
the density of every sparse fast branch, ``--seed``
the training seed of every variant.

The AmNets are trained for a simulated device on which the slow-only model runs at
``rho = slow FLOPs per frame / (device FLOP/s * frame_s) = 1.5`` (it falls behind real
time). Every model is then evaluated on devices with ``rho`` in ``{0.5, 1, 1.5, 2, 2.5}``
(for AmNets the device is swapped with ``set_device``, so the arbitrator sees the new
backlog). Per variant: test WER/CER, encoder FLOPs/frame (mean over valid test frames,
as routed), reduction versus slow-only, slow share, simulated end-of-utterance latency
p50/p90/max, real single-thread streaming RTF (``nn.streaming.stream``), decision
sharpness; and, once per variant on the device it was trained for (``rho = 1.5``), WER/CER
on every further test split of its config (``test-other``: voices and sentence templates
unseen in training) as ``test_other_wer``/``test_other_cer`` (results of older runs lack
them). All costs, backlogs and latencies come from ``lightning_amortized.functional`` (FLOPs per
frame, slow share and latency quantiles from ``functional.latency``, as in ``LatencyMonitor``).

Writes ``docs/results/amnet.{json,md}``, ``amnet_trace.png`` (backlog and decisions over
one test utterance) and ``amnet_latency_vs_rho.png``.

Usage::

    python benchmarks/amnet.py                      # shared base of benchmarks/base.py (trained if missing)
    python benchmarks/amnet.py --base-ckpt BASE.ckpt --root /tmp/corp/s8000 --workers 2
    python benchmarks/amnet.py --base-ckpt none --root /tmp/corp/s8000 --quick   # smoke run (random base)
    # a base of another size: every variant's slow encoder takes the base's shape (read from the checkpoint), and
    # the devices are set by its FLOPs (rho = 1.5 for that LSTM); ranks and densities are matched in its sizes
    python benchmarks/amnet.py --base-ckpt runs/base/5ba2f7c3d7ff27bb/base.ckpt --fast-rank 96 ...

The configs name the 3x256 LSTM of the shared base; ``encoder_shape`` (input size, hidden size,
layers) is read from ``--base-ckpt`` and recorded per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "recipes" / "synthetic" / "conf"
RESULTS = REPO / "docs" / "results"


def _eou(weight: float, factor: float = 2.0, rho: str | None = None) -> list[str]:
    """CLI overrides of a load-aware variant with the end-of-utterance latency term (and its training rho range)."""
    over = ["--model.amr_eou_weight", str(weight), "--model.amr_eou_factor", str(factor)]
    return over + (["--model.encoder.init_args.train_rho_range", rho] if rho else [])


# name -> (label, config file, variant whose measured FLOPs/frame this one matches, CLI overrides)
VARIANTS: dict[str, tuple[str, str, str | None, list[str]]] = {
    "slow_only": ("slow-only (3x256 LSTM)", "slow_only.yaml", None, []),
    "fast_only": ("fast-only (the factorized AmNet's fast branch)", "fast_only.yaml", None, []),
    "factorized_single": ("factorized single", "factorized_single.yaml", "amnet_factorized", []),
    "sparse_single": ("sparse single", "sparse_single.yaml", "amnet_sparse", []),
    "amnet_factorized": ("factorized AmNet", "amnet_factorized.yaml", None, []),
    "amnet_sparse": ("sparse AmNet", "amnet_sparse.yaml", None, []),
    "amnet_factorized_no_amr": ("factorized AmNet, no amortization penalty", "amnet_factorized_no_amr.yaml", None, []),
    # a second operating point: half the cost weight (the penalty's slack term then matters more)
    "amnet_factorized_lc1": ("factorized AmNet, lambda_cost 1, lambda_amr 0.5", "amnet_factorized.yaml", None,
                             ["--model.lambda_cost", "1.0", "--model.lambda_amr", "0.5"]),
    "amnet_factorized_lc1_no_amr": ("factorized AmNet, lambda_cost 1, no amortization penalty",
                                    "amnet_factorized_no_amr.yaml", None, ["--model.lambda_cost", "1.0"]),
    # one model for every device: trained over rho in 0.5-2.5, the arbitrator sees log(rho)
    "amnet_factorized_load_aware": ("factorized AmNet, load-aware (trained over rho 0.5-2.5)",
                                    "amnet_factorized_load_aware.yaml", None, []),
    # the same, its penalty also charging end-of-utterance latency above twice the floor on every device
    "amnet_factorized_load_aware_eou": ("factorized AmNet, load-aware, end-of-utterance latency term",
                                        "amnet_factorized_load_aware.yaml", None, _eou(1.0)),
    # ... charging latency above 1.5x the floor: a margin below the 2x bound, which at rho 2.5 leaves almost no slack
    "amnet_factorized_load_aware_eou15": ("factorized AmNet, load-aware, end-of-utterance latency term above 1.5x "
                                          "floor", "amnet_factorized_load_aware.yaml", None, _eou(1.0, factor=1.5)),
    # ... trained over rho 0.4-3.2, so that the devices it is scored on (0.5-2.5) lie inside the range, not at its edge
    "amnet_factorized_load_aware_eou_wide": ("factorized AmNet, load-aware over rho 0.4-3.2, end-of-utterance "
                                             "latency term", "amnet_factorized_load_aware.yaml", None,
                                             _eou(1.0, rho="[0.4, 3.2]")),
    # ... with four times the weight: on fast devices the term's pull on the last frame (a fraction of a frame of
    # latency) is no stronger than the slack term's pull towards the slow branch on the trailing silence
    "amnet_factorized_load_aware_eou4_wide": ("factorized AmNet, load-aware over rho 0.4-3.2, end-of-utterance "
                                              "latency term x4", "amnet_factorized_load_aware.yaml", None,
                                              _eou(4.0, rho="[0.4, 3.2]")),
    # ... and branch losses: the branches, the fast one above all, stay recognizers on their own
    "amnet_factorized_load_aware_eou4_wide_bl": ("factorized AmNet, load-aware over rho 0.4-3.2, end-of-utterance "
                                                 "latency term x4, branch losses 0.5",
                                                 "amnet_factorized_load_aware.yaml", None,
                                                 _eou(4.0, rho="[0.4, 3.2]") + ["--model.branch_loss_weight", "0.5"]),
    # ... trained with the latency guard on (3x the floor): the arbitrator learns the routes the guard lets through
    "amnet_factorized_load_aware_eou4_wide_bl_tguard3": ("factorized AmNet, load-aware over rho 0.4-3.2, "
                                                         "end-of-utterance latency term x4, branch losses 0.5, "
                                                         "trained with latency guard 3x floor",
                                                         "amnet_factorized_load_aware.yaml", None,
                                                         _eou(4.0, rho="[0.4, 3.2]")
                                                         + ["--model.branch_loss_weight", "0.5",
                                                            "--model.encoder.init_args.latency_guard", "3.0"]),
    # the ablation at about the penalty-on model's slow share: a larger cost weight instead of the penalty
    "amnet_factorized_no_amr_lc06": ("factorized AmNet, no amortization penalty, lambda_cost 0.6",
                                     "amnet_factorized_no_amr.yaml", None, ["--model.lambda_cost", "0.6"]),
    # each branch also trained alone beside the routed model (ASRModule.branch_loss_weight)
    "amnet_factorized_bl": ("factorized AmNet, branch losses 0.5", "amnet_factorized_branch_losses.yaml", None, []),
    "factorized_single_bl": ("factorized single (FLOPs of the branch-loss AmNet)", "factorized_single.yaml",
                             "amnet_factorized_bl", []),
}
# trained variants evaluated again with the latency guard (AmortizedEncoder.latency_guard): no training, the source's
# final weights; name -> (source variant, guard factor). The guard bounds every utterance's end-of-utterance latency
# by factor x the floor on each device where one fast frame runs in real time.
GUARDED: dict[str, tuple[str, float]] = {
    "amnet_factorized_load_aware_eou_guard2": ("amnet_factorized_load_aware_eou", 2.0),
    "amnet_factorized_load_aware_eou4_wide_guard2": ("amnet_factorized_load_aware_eou4_wide", 2.0),
    "amnet_factorized_load_aware_eou4_wide_bl_guard2": ("amnet_factorized_load_aware_eou4_wide_bl", 2.0),
    # a looser guard: every utterance within 3x the floor, more room for slow frames on middle devices
    "amnet_factorized_load_aware_eou_guard3": ("amnet_factorized_load_aware_eou", 3.0),
    "amnet_factorized_load_aware_eou4_wide_guard3": ("amnet_factorized_load_aware_eou4_wide", 3.0),
    "amnet_factorized_load_aware_eou4_wide_bl_guard3": ("amnet_factorized_load_aware_eou4_wide_bl", 3.0),
}
for _name, (_src, _factor) in GUARDED.items():
    _label, _config, _, _over = VARIANTS[_src]
    VARIANTS[_name] = (f"{_label}, latency guard {_factor:g}x floor (its weights, not retrained)", _config, None,
                       _over + ["--model.encoder.init_args.latency_guard", str(_factor)])
# start order: the matched single encoders wait for their AmNet
ORDER = ["amnet_factorized", "amnet_sparse", "amnet_factorized_no_amr", "slow_only", "fast_only",
         "factorized_single", "sparse_single", "amnet_factorized_lc1", "amnet_factorized_lc1_no_amr",
         "amnet_factorized_load_aware", "amnet_factorized_load_aware_eou", "amnet_factorized_load_aware_eou15",
         "amnet_factorized_load_aware_eou_wide", "amnet_factorized_load_aware_eou4_wide",
         "amnet_factorized_load_aware_eou4_wide_bl", "amnet_factorized_bl", "factorized_single_bl",
         "amnet_factorized_no_amr_lc06", "amnet_factorized_load_aware_eou4_wide_bl_tguard3", *GUARDED]
# variants whose fast branch is the low-rank factorization (``--fast-rank`` sets its rank)
LOWRANK_FAST = tuple(n for n, (_, config, _, _) in VARIANTS.items()
                     if n == "fast_only" or config.startswith("amnet_factorized"))
# variants whose fast branch is a pruned copy of the slow weights (``--fast-density`` sets its density)
SPARSE_FAST = tuple(n for n, (_, config, _, _) in VARIANTS.items() if config.startswith("amnet_sparse"))
ABLATIONS = [("amnet_factorized", "amnet_factorized_no_amr"), ("amnet_factorized_lc1", "amnet_factorized_lc1_no_amr"),
             ("amnet_factorized", "amnet_factorized_no_amr_lc06")]
RHOS = (0.5, 1.0, 1.5, 2.0, 2.5)
RHO_TRAIN = 1.5
FRAME_MS = 30.0
TARGET_REDUCTION = 0.45  # >= 45 % fewer encoder FLOPs/frame than slow-only
TARGET_WER_REL = 0.02  # WER within 2 % relative of slow-only
TARGET_P90_MS = 10.0  # p90 EOU latency with the penalty, where slow-only lags by more than LAG_MS
LAG_MS = 1000.0
TARGET_SINGLE_WER_REL = 0.02  # dominance: WER at most 2 % relative above the FLOPs-matched single encoder
TARGET_ABLATION_SHARE = 0.20  # the penalty-off model still sends >= 20 % of frames to the slow branch ...
TARGET_ABLATION_RATIO = 3.0  # ... and its p90 EOU latency is >= 3x the penalty-on model's
TARGET_FLOOR_RATIO = 2.0  # load-aware: p90 EOU within 2x the floor (one fast frame + arbitrator) at every rho
TARGET_SPEEDUP = 1.6  # single-thread wall-clock speedup of the best AmNet over slow-only


# -- shared helpers --------------------------------------------------------------------------------


def device_for(rho: float, slow_flops: int, frame_ms: float = FRAME_MS) -> float:
    """Device FLOP/s on which ``slow_flops`` per frame is a load factor ``rho``."""
    return slow_flops / (rho * frame_ms / 1000.0)


CONFIG_SHAPE = (240, 256, 3)  # the encoder of the variants' configs: input size, hidden size, layers


def encoder_shape(base: str | None) -> tuple[int, int, int]:
    """``(input size, hidden size, layers)`` of the base's LSTM (the configs' own without a base): every variant's
    slow encoder takes it, so a base of any size (e.g. the 3x384 ``recipes/synthetic/conf/base384.yaml``) works."""
    if base in (None, "none"):
        return CONFIG_SHAPE
    from lightning_amortized.module import load_asr_module

    enc = load_asr_module(base).encoder
    if enc.rnn_type != "lstm" or enc.proj is not None or enc.input_size != CONFIG_SHAPE[0]:
        raise SystemExit(
            f"--base-ckpt {base}: its encoder is a {enc.rnn_type.upper()} with input size {enc.input_size}"
            + (" and an output projection" if enc.proj is not None else "") + f"; the variants' configs take an LSTM "
            f"without projection on {CONFIG_SHAPE[0]} inputs (80 mel bands stacked 3x), of any hidden size and depth."
        )
    return int(enc.input_size), int(enc.hidden_size), int(enc.num_layers)


def check_shape(a: argparse.Namespace, names: list[str], shape: tuple[int, int, int], resumable: set[str]) -> None:
    """Refuse, before any job, what the configs' 3x256 numbers would get wrong on a base of another shape.

    Raises:
        SystemExit: a low-rank variant without ``--fast-rank`` (the configs' ranks are for 3x256), a rank not
            below the hidden size, or a FLOPs-matched single encoder whose AmNet is neither run nor reused here.
    """
    if tuple(shape) == CONFIG_SHAPE:
        return
    hidden = shape[1]
    lowrank = [n for n in names if n in LOWRANK_FAST]
    if lowrank and a.fast_rank is None:
        raise SystemExit(f"The base is {shape[2]}x{hidden}, the configs' fast ranks are for 3x256: pass --fast-rank "
                         f"(below {hidden}) for {', '.join(lowrank)}.")
    if lowrank and not 1 <= a.fast_rank < hidden:
        raise SystemExit(f"--fast-rank {a.fast_rank} must be in [1, {hidden}) for this {shape[2]}x{hidden} base.")
    orphans = [n for n in names if VARIANTS[n][2] is not None and VARIANTS[n][2] not in set(names) | resumable]
    if orphans:
        raise SystemExit(f"{', '.join(orphans)} match the FLOPs of {', '.join(VARIANTS[n][2] for n in orphans)}, "
                         "which this run neither trains nor reuses: add them to --variants (their configs' numbers "
                         "are for 3x256).")


def slow_encoder_flops(shape: tuple[int, int, int] = CONFIG_SHAPE) -> int:
    """FLOPs/frame of the slow-only encoder of this shape (the one FLOP counter)."""
    from lightning_amortized.nn import RecurrentEncoder

    input_size, hidden, layers = shape
    return RecurrentEncoder(input_size, hidden, num_layers=layers).flops_per_frame()


def shape_overrides(config: str, shape: tuple[int, int, int]) -> list[str]:
    """CLI overrides giving the slow encoder of ``config`` (the LSTM, or the one an AmNet wraps) this shape."""
    import yaml

    if tuple(shape) == CONFIG_SHAPE:
        return []
    enc = yaml.safe_load((CONF / config).read_text())["model"]["encoder"]
    key = "--model.encoder.init_args." + ("" if enc["class_path"].endswith(".RecurrentEncoder") else "encoder.init_args.")
    return [arg for k, v in zip(("input_size", "hidden_size", "num_layers"), shape) for arg in (key + k, str(v))]


def matched_rank(target_flops: float, input_size: int = 240, hidden: int = 256, layers: int = 3) -> int:
    """Rank whose factorized LSTM (``functional.flops.lowrank_rnn_flops``) is closest to ``target_flops``."""
    from lightning_amortized.functional.flops import lowrank_rnn_flops

    def cost(r: int) -> int:
        return sum(lowrank_rnn_flops("lstm", input_size if i == 0 else hidden, hidden, r) for i in range(layers))

    return min(range(1, hidden + 1), key=lambda r: abs(cost(r) - target_flops))


def matched_density(target_flops: float, input_size: int = 240, hidden: int = 256, layers: int = 3) -> float:
    """Density whose pruned LSTM (``functional.flops.sparse_rnn_flops``) costs ``target_flops``."""
    from lightning_amortized.functional.flops import sparse_rnn_flops

    sizes = [4 * hidden * ((input_size if i == 0 else hidden) + hidden) for i in range(layers)]

    def cost(d: float) -> float:
        return sum(sparse_rnn_flops("lstm", int(round(d * n)), hidden) for n in sizes)

    lo, hi = cost(0.0), cost(1.0)  # linear in the density
    return float(min(1.0, max(0.01, round((target_flops - lo) / (hi - lo), 4))))


# -- one variant (runs in its own process) ---------------------------------------------------------


def _warm_start(model: Any, base_ckpt: str | None, device_flops: float) -> None:
    """Load the slow-only weights into ``model`` and rebuild the fast branches from them."""
    import torch

    from lightning_amortized.nn import AmortizedEncoder, RecurrentEncoder, SharedStateAmortizedEncoder

    enc = model.encoder
    inner = enc.core.encoder if isinstance(enc, SharedStateAmortizedEncoder) else enc
    if not isinstance(inner, RecurrentEncoder):
        raise TypeError(f"Expected a RecurrentEncoder or a SharedStateAmortizedEncoder, got {type(enc).__name__}.")
    if base_ckpt:
        sd = torch.load(base_ckpt, map_location="cpu", weights_only=False)["state_dict"]
        inner.load_state_dict({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")})
        model.head.load_state_dict({k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")})
    if isinstance(enc, SharedStateAmortizedEncoder):  # fast weights by SVD / pruning of the loaded weights
        core, arb = enc.core, enc.arbitrator
        model.encoder = SharedStateAmortizedEncoder(
            inner, fast=core.kind, rank=core.rank, density=core.density, frame_ms=enc.frame_ms,
            device_flops_per_s=device_flops, arbitrator_hidden=arb.hidden_size, temperature=arb.temperature,
            use_prev_decision=arb.use_prev_decision, force_branch=enc.force_branch,
            load_aware=arb.load_aware, train_rho_range=enc.train_rho_range, latency_guard=enc.latency_guard,
        )
    elif isinstance(enc, AmortizedEncoder):
        enc.set_device(device_flops)


def _test_loader(dm: Any, quick: bool, split: str | None = None) -> Any:
    """``(dataset, loader)`` of test split ``split`` (default: the first of ``dm.test_splits``)."""
    from torch.utils.data import DataLoader

    from lightning_amortized.data import DurationBatchSampler, SpeechCollator, SpeechDataset

    dm.setup("test")
    ds = dm.datasets[f"test:{split or dm.test_splits[0]}"]
    if quick:  # the same kind of dataset (features per utterance), fewer utterances
        ds = SpeechDataset(ds.utterances[:24], ds.tokenizer, ds.sample_rate, features=dm.features)
    sampler = DurationBatchSampler(ds.durations, 40.0, shuffle=False, seed=0, max_batch_size=24)
    return ds, DataLoader(ds, batch_sampler=sampler, collate_fn=SpeechCollator(dm.features, None))


def corpus_test_split(root: str) -> Any:
    """``(dataset, loader)`` of ``root``'s ``test`` split, read as a LibriSpeech-layout corpus (no config needed)."""
    from lightning_amortized.data import LibriSpeechDataModule

    dm = LibriSpeechDataModule(root, train_splits=[], val_splits=[], test_splits=["test"])
    dm.prepare_data()
    return _test_loader(dm, quick=False)


def score_other_splits(model: Any, dm: Any, quick: bool) -> dict[str, float | int]:
    """WER/CER of ``model`` on every test split of ``dm`` after the first, as its encoder is set now.

    One pass per split (not one per rho: the test split's sweep answers the latency questions);
    an AmortizedEncoder routes for the device it was last given (``set_device``).

    Returns:
        ``{"<key>_wer", "<key>_cer" (fractions), "<key>_utterances"}`` per split, ``<key>`` as in
        :func:`lightning_amortized.evaluation.split_keys` (``test-other`` -> ``test_other``); ``{}``
        when ``dm`` has one test split.
    """
    import torch
    from torchmetrics.text import CharErrorRate, WordErrorRate

    from lightning_amortized.evaluation import split_keys

    model.eval()
    out: dict[str, float | int] = {}
    with torch.no_grad():
        for split, key in list(zip(dm.test_splits, split_keys(dm.test_splits)))[1:]:
            ds, loader = _test_loader(dm, quick, split)
            wer, cer = WordErrorRate(), CharErrorRate()
            for batch in loader:
                x, n = model.stacker(batch["feats"], batch["feat_lengths"])
                hyps = model.decode(model.encoder(x, n)[0], n)
                wer.update(hyps, batch["texts"])
                cer.update(hyps, batch["texts"])
            out.update({f"{key}_wer": float(wer.compute()), f"{key}_cer": float(cer.compute()),
                        f"{key}_utterances": len(ds)})
    return out


def run_variant(a: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and evaluate one variant; returns the JSON-able record."""
    import torch

    torch.set_num_threads(1)
    import lightning.pytorch as pl
    from torchmetrics.text import CharErrorRate, WordErrorRate

    from lightning_amortized.callbacks import ArbitratorTemperature, LatencyMonitor
    from lightning_amortized.cli import ASRLightningCLI
    from lightning_amortized.functional import SimulatedDevice, backlog, lengths_to_mask
    from lightning_amortized.functional.latency import LatencyStats, latency_compute, latency_update
    from lightning_amortized.nn import AmortizedEncoder, stream
    from lightning_amortized.scoring import utterance_errors

    name = a.job
    label, config, _, overrides = VARIANTS[name]
    base_ckpt = None if a.base_ckpt in (None, "none") else a.base_ckpt
    shape = encoder_shape(base_ckpt)
    label = label.replace("3x256", f"{shape[2]}x{shape[1]}")
    slow_flops = slow_encoder_flops(shape)
    dev_train = device_for(RHO_TRAIN, slow_flops)
    run_dir = Path(a.work) / name
    args = [
        "--config", str(CONF / config),
        "--data.init_args.root", a.root,
        "--data.init_args.max_train_utterances", str(a.train_utts),
        "--trainer.max_epochs", str(a.epochs),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--model.lr", str(a.lr),
    ]
    args += shape_overrides(config, shape) + overrides
    if a.quick:
        args += ["--trainer.limit_val_batches", "2"]
    if a.rank is not None:
        args += ["--model.encoder.init_args.rank", str(a.rank)]
    if a.density is not None:
        args += ["--model.encoder.init_args.density", str(a.density)]
    if a.lambda_cost is not None and name.startswith("amnet") and "--model.lambda_cost" not in overrides:
        args += ["--model.lambda_cost", str(a.lambda_cost)]
    if (a.lambda_amr is not None and name.startswith("amnet") and "no_amr" not in name
            and "--model.lambda_amr" not in overrides):
        args += ["--model.lambda_amr", str(a.lambda_amr)]
    if a.branch_loss_weight is not None and name.startswith("amnet") and "--model.branch_loss_weight" not in overrides:
        args += ["--model.branch_loss_weight", str(a.branch_loss_weight)]
    if a.fast_density is not None and name in SPARSE_FAST:
        args += ["--model.encoder.init_args.density", str(a.fast_density)]
    if a.fast_rank is not None and name in LOWRANK_FAST:
        args += ["--model.encoder.init_args.rank", str(a.fast_rank)]
    args += ["--seed_everything", str(a.seed), "--data.init_args.seed", str(a.seed)]
    pl.seed_everything(a.seed, workers=True)
    cli = ASRLightningCLI(args=args, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    for cb in trainer.callbacks:  # the temperature schedule spans this run's epochs
        if isinstance(cb, ArbitratorTemperature):
            cb.epochs = a.epochs
        if isinstance(cb, LatencyMonitor) and shape != CONFIG_SHAPE:  # the configs' device: rho 1.5 for 3x256
            cb.device_flops_per_s = dev_train
    _warm_start(model, base_ckpt, dev_train)
    enc = model.encoder
    amortized = isinstance(enc, AmortizedEncoder)
    routed = amortized and enc.force_branch is None

    epoch_log: list[dict[str, float]] = []

    class _EpochPrinter(pl.Callback):
        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            keys = ("val/wer", "latency/flops_per_frame", "latency/slow_share", "latency/eou_p90_ms",
                    "arbitrator/sharpness", "arbitrator/temperature", "train/slow_share")
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k in keys}
            m["epoch"] = trainer.current_epoch
            epoch_log.append(m)
            print(f"[{name}] epoch {trainer.current_epoch + 1}/{a.epochs}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in m.items() if k != "epoch"), flush=True)

    trainer.callbacks.append(_EpochPrinter())
    source = GUARDED.get(name)
    if source is None:
        t0 = time.time()
        trainer.fit(model, datamodule=dm)
        fit_s = time.time() - t0
        # the weights scored below, under a name of their own (runs from before PeriodicCheckpoint left last.ckpt stale)
        trainer.save_checkpoint(run_dir / "final.ckpt")
        train_sharpness = float(trainer.callback_metrics.get("arbitrator/sharpness", float("nan")))
    else:  # the source variant's trained weights, evaluated with the guard on
        src_json, src_ckpt = Path(a.work) / f"{source[0]}.json", Path(a.work) / source[0] / "final.ckpt"
        if not (src_json.exists() and src_ckpt.exists()):
            raise SystemExit(f"{name} scores the weights of {source[0]}, but {src_ckpt} or {src_json} is missing: "
                             f"run --variants {source[0]} with the same --work first.")
        src_rec = json.loads(src_json.read_text())
        model.load_state_dict(torch.load(src_ckpt, map_location="cpu", weights_only=False)["state_dict"])
        epoch_log, fit_s, train_sharpness = src_rec["epochs"], 0.0, float(src_rec["train_sharpness"])

    # -- evaluation: test split, every device ------------------------------------------------------
    model.eval()
    enc = model.encoder
    ds, loader = _test_loader(dm, a.quick)
    trace_id = max(ds.utterances, key=lambda u: u.duration).id  # longest test utterance
    enc_flops = int(enc.flops_per_frame())
    per_rho: dict[str, Any] = {}
    metrics = {rho: (WordErrorRate(), CharErrorRate()) for rho in RHOS}
    stats = {rho: LatencyStats() for rho in RHOS}  # FLOPs, slow frames, EOU latencies (functional.latency)
    confidence = {rho: 0.0 for rho in RHOS}
    overridden = {rho: 0 for rho in RHOS}  # frames where the latency guard changed the arbitrator's choice
    utt_errors: dict[float, list[int]] = {rho: [] for rho in RHOS}  # per test utterance, for paired intervals
    utt_words: list[int] = []
    utt_ids: list[str] = []
    frames = 0
    trace: dict[str, Any] = {}
    t1 = time.time()
    with torch.no_grad():
        for batch in loader:
            x, n = model.stacker(batch["feats"], batch["feat_lengths"])
            mask = lengths_to_mask(n, x.shape[1])
            frames += int(n.sum())
            y_fixed = None
            for rho in RHOS:
                dev = device_for(rho, slow_flops)
                if amortized:
                    enc.set_device(dev)
                    y, _ = enc(x, n)
                    r = enc.last_routing
                    batch_stats = latency_update(r.cost_ms, r.expected_flops, n, FRAME_MS, r.decisions, r.slow_index)
                    # the arbitrator's probability of the branch taken (its max, unless the guard overrode it)
                    confidence[rho] += float(r.probs.gather(-1, r.decisions[..., None])[..., 0][mask].sum())
                    overridden[rho] += int((r.logits.argmax(-1) != r.decisions)[mask].sum())
                    cost, back, dec = r.cost_ms, r.backlog_ms, r.decisions
                else:  # a plain encoder: the same cost on every frame, every frame "slow"
                    if y_fixed is None:
                        y_fixed, _ = enc(x, n)
                    y = y_fixed
                    flops = torch.full(x.shape[:2], float(enc_flops))
                    cost = SimulatedDevice(dev, FRAME_MS).cost_ms(flops)
                    batch_stats = latency_update(cost, flops.double(), n, FRAME_MS)  # float64: exact FLOP sums
                    back = backlog(cost, FRAME_MS, n)
                    dec = torch.ones(x.shape[:2], dtype=torch.long)
                    confidence[rho] += float(n.sum())
                stats[rho] = stats[rho] + batch_stats
                lat = batch_stats.eou_ms
                hyps = model.decode(y, n)
                metrics[rho][0].update(hyps, batch["texts"])
                metrics[rho][1].update(hyps, batch["texts"])
                errors, words = utterance_errors(hyps, batch["texts"])
                utt_errors[rho] += errors
                if rho == RHOS[0]:
                    utt_words += words
                    utt_ids += batch["ids"]
                if trace_id in batch["ids"]:
                    i = batch["ids"].index(trace_id)
                    L = int(n[i])
                    trace[str(rho)] = {
                        "backlog_ms": [round(float(v), 3) for v in back[i, :L]],
                        "cost_ms": [round(float(v), 3) for v in cost[i, :L]],
                        "decisions": [int(v) for v in dec[i, :L]],
                        "eou_ms": float(lat[i]),
                    }
    if amortized:
        enc.set_device(dev_train)
    others = score_other_splits(model, dm, a.quick)  # test-other, once, on the device the model was trained for
    for rho in RHOS:
        lat_metrics = latency_compute(stats[rho])
        per_rho[str(rho)] = {
            "device_flops_per_s": device_for(rho, slow_flops),
            "wer": float(metrics[rho][0].compute()),
            "cer": float(metrics[rho][1].compute()),
            "flops_per_frame": lat_metrics["flops_per_frame"],
            "slow_share": lat_metrics["slow_share"],
            "utt_errors": utt_errors[rho],
            "decision_confidence": confidence[rho] / frames,
            "guard_overridden_share": overridden[rho] / frames,
            "eou_ms": lat_metrics["eou_ms"],
        }
    eval_s = time.time() - t1

    # -- real single-thread streaming RTF on the first test utterances (trained device) -------------
    rtfs, rtf_ms = [], []
    for i in range(min(a.rtf_utts, len(ds))):
        item = ds[i]
        f, fl = item["feats"][None], torch.tensor([item["feats"].shape[0]])
        x, n = model.stacker(f, fl)
        best = min((stream(enc, x[0, : int(n[0])], frame_ms=FRAME_MS) for _ in range(2)), key=lambda s: s.total_ms)
        rtfs.append(best.rtf)
        rtf_ms.append(best.total_ms / len(best.wall_ms))
    train_info = {}
    if routed:
        train_info = {k: v for k, v in epoch_log[-1].items()} if epoch_log else {}
    rec = {
        "name": name,
        "label": label,
        "config": f"recipes/synthetic/conf/{config}",
        "encoder": type(enc).__name__,
        "fast": getattr(getattr(enc, "core", None), "kind", None),
        "rank": getattr(getattr(enc, "core", None), "rank", None) if getattr(enc, "core", None) is not None
        and enc.core.kind in ("lowrank", "small") else None,
        "density": enc.core.density if getattr(enc, "core", None) is not None and enc.core.kind == "sparse" else None,
        "force_branch": getattr(enc, "force_branch", None),
        "routed": routed,
        "branch_flops": enc.branch_flops() if amortized else [enc_flops],
        "arbitrator_flops": enc.arbitrator.flops_per_frame() if routed else 0,
        "load_aware": bool(routed and enc.arbitrator.load_aware),
        "latency_guard": getattr(enc, "latency_guard", None) if routed else None,
        "evaluates": source[0] if source else None,  # evaluation-only: the trained variant whose weights it scores
        "source_checkpoint_mtime": (Path(a.work) / source[0] / "final.ckpt").stat().st_mtime if source else None,
        # the physical floor of end-of-utterance latency: one fast-branch frame plus the arbitrator
        "floor_ms": {
            str(rho): 1000.0 * (enc.floor_flops() if amortized else enc_flops) / device_for(rho, slow_flops)
            for rho in RHOS
        },
        "worst_case_flops_per_frame": enc_flops,
        "lambda_cost": float(model.hparams.lambda_cost),
        "lambda_amr": float(model.hparams.lambda_amr),
        "train_device_flops_per_s": dev_train,
        "encoder_shape": list(shape),
        "train_sharpness": train_sharpness if routed else 1.0,
        "epochs": epoch_log,
        "final_epoch": train_info,
        "per_rho": per_rho,
        "rtf": sum(rtfs) / max(1, len(rtfs)),
        "ms_per_frame_streaming": sum(rtf_ms) / max(1, len(rtf_ms)),
        "streaming_code": STREAMING_CODE,
        "rtf_utterances": len(rtfs),
        "trace_utterance": trace_id,
        "trace": trace,
        "test_utterances": len(ds),
        **others,  # test_other_wer, test_other_cer (at rho_train), test_other_utterances
        "utt_ids": utt_ids,
        "utt_words": utt_words,
        "test_frames": frames,
        "fit_seconds": round(fit_s, 1),
        "eval_seconds": round(eval_s, 1),
    }
    return rec


# -- driver ----------------------------------------------------------------------------------------


def _resolve_base(a: argparse.Namespace) -> str | None:
    if a.base_ckpt:
        return None if a.base_ckpt == "none" else a.base_ckpt
    if a.base_json is None:  # the shared base (benchmarks/base.py): trained once, then reused
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from base import ensure_base

        return str(ensure_base(root=a.root, train=not a.quick))  # a smoke run never trains the 30-minute base
    path = Path(a.base_json)
    deadline = time.time() + a.wait_minutes * 60
    while not path.exists():
        if time.time() > deadline:
            raise SystemExit(f"{path} did not appear within {a.wait_minutes} min; pass --base-ckpt.")
        time.sleep(10)
    info = json.loads(path.read_text())
    return info["checkpoint"]


JOB_OPTIONS = ("root", "train_utts", "epochs", "lr", "rtf_utts", "quick", "lambda_cost", "lambda_amr", "fast_rank",
               "fast_density", "branch_loss_weight", "seed")


# options a variant's training never reads, so a finished run of it is reusable whatever they are (slow-only has no
# fast branch and no routing losses; every other variant is checked on all options: a FLOPs-matched single encoder
# follows its AmNet, which reads them all)
UNUSED_OPTIONS: dict[str, set[str]] = {
    "slow_only": {"lambda_cost", "lambda_amr", "fast_rank", "fast_density", "branch_loss_weight"},
}


# 2: every encoder streams through the same per-frame kernels (RecurrentEncoder.step = the AmNet's slow branch);
# timings made before (no "streaming_code") set slow-only's one-frame nn.LSTM call against faster AmNet kernels
STREAMING_CODE = 2


def job_options(a: argparse.Namespace, base: str | None) -> dict[str, Any]:
    """What a variant's result depends on besides its name (the FLOPs-matched rank or density follows from these)."""
    opts = {k: getattr(a, k) for k in JOB_OPTIONS}
    opts["root"] = str(Path(opts["root"]).resolve())
    opts["base_ckpt"] = None if base in (None, "none") else str(Path(base).resolve())
    return opts


def check_reusable(name: str, had: dict[str, Any] | None, wanted: dict[str, Any], path: Path) -> None:
    """Refuse to reuse a finished variant made with other options than ``wanted`` (those it reads, see ``UNUSED_OPTIONS``).

    Raises:
        SystemExit: naming each differing option, before and now, and what to do.
    """
    if had is None:
        print(f"{name}: reused from {path}, made before runs recorded their options (not checked against these)")
        return
    differ = sorted(k for k in set(had) | set(wanted) if k not in UNUSED_OPTIONS.get(name, set())
                    and had.get(k) != wanted.get(k))
    if differ:
        raise SystemExit(
            f"{path} was made with other options ({', '.join(f'{k}={had.get(k)!r}' for k in differ)}; now "
            f"{', '.join(f'{k}={wanted.get(k)!r}' for k in differ)}). Pass the same options, another --work, "
            "or pass --overwrite instead of --resume to train it again."
        )


def _job_cmd(a: argparse.Namespace, name: str, base: str | None, extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", name, "--work", a.work, "--root", a.root,
           "--base-ckpt", base or "none", "--train-utts", str(a.train_utts), "--epochs", str(a.epochs),
           "--lr", str(a.lr), "--rtf-utts", str(a.rtf_utts)]
    if a.quick:
        cmd.append("--quick")
    if a.lambda_cost is not None:
        cmd += ["--lambda-cost", str(a.lambda_cost)]
    if a.fast_rank is not None:
        cmd += ["--fast-rank", str(a.fast_rank)]
    if a.fast_density is not None:
        cmd += ["--fast-density", str(a.fast_density)]
    if a.branch_loss_weight is not None:
        cmd += ["--branch-loss-weight", str(a.branch_loss_weight)]
    cmd += ["--seed", str(a.seed)]
    if a.lambda_amr is not None:
        cmd += ["--lambda-amr", str(a.lambda_amr)]
    return cmd + extra


def drive(a: argparse.Namespace) -> int:
    from lightning_amortized.atomic import write_atomic
    from lightning_amortized.experiment import Job, JobFailed, result_file, run_jobs, write_results

    work = Path(a.work)
    names = [n for n in ORDER if n in a.variants]
    finished = [n for n in names if (work / f"{n}.json").exists()]
    if finished and not (a.resume or a.overwrite):  # hours of training must not go by a forgotten flag
        raise SystemExit(  # before the base is resolved (which may train it)
            f"{work} holds finished variants ({', '.join(finished)}): pass --resume to reuse them (checked against "
            "these options), --overwrite to train them again, or another --work."
        )
    base = _resolve_base(a)
    shape = encoder_shape(base)
    check_shape(a, names, shape, {n for n in finished if a.resume})
    work.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    wanted = job_options(a, base)
    for n in names:  # resume: keep finished variants of an identical earlier run
        f = work / f"{n}.json"
        if a.resume and f.exists():
            rec = json.loads(f.read_text())
            src = work / rec["evaluates"] / "final.ckpt" if rec.get("evaluates") else None
            if src is not None and (not src.exists() or src.stat().st_mtime != rec.get("source_checkpoint_mtime")):
                continue  # a guarded evaluation of weights that have changed since: score them again
            check_reusable(n, rec.get("options"), wanted, f)
            if not a.wallclock_side_by_side:
                rec.pop("wallclock", None)  # timed side by side only in the run that did so
            done[n] = rec
    ran = [n for n in names if n not in done and n not in GUARDED]  # trained here (evaluations take a minute)

    def command(name: str) -> Any:
        dep = VARIANTS[name][2]

        def build(finished: dict[str, dict[str, Any]]) -> list[str]:
            extra: list[str] = []
            if dep is not None and dep in finished:  # FLOPs-matched to the variant it depends on
                target = finished[dep]["per_rho"][str(RHO_TRAIN)]["flops_per_frame"]
                if VARIANTS[dep][1].startswith("amnet_sparse"):
                    extra = ["--density", str(matched_density(target, *shape))]
                else:
                    extra = ["--rank", str(matched_rank(target, *shape))]
            return _job_cmd(a, name, base, extra)

        return build

    def report(name: str, result: dict[str, Any], seconds: float) -> str:
        r = result["per_rho"][str(RHO_TRAIN)]
        other = f" (test-other {_fmt_wer(result.get('test_other_wer'))})"
        return (f"{name}: WER {100 * r['wer']:.2f}%{other}, {r['flops_per_frame'] / 1e6:.3f} MFLOPs/frame, "
                f"slow share {r['slow_share']:.3f}, EOU p90 {r['eou_ms']['p90']:.1f} ms at rho={RHO_TRAIN} "
                f"({seconds:.0f} s)")

    def after(name: str) -> tuple[str, ...]:
        """Jobs ``name`` waits for: the AmNet it is FLOPs-matched to, the variant whose weights it evaluates."""
        return tuple(d for d in (VARIANTS[name][2], GUARDED.get(name, (None,))[0]) if d in names)

    jobs = [Job(n, command(n), work / f"{n}.json", after=after(n)) for n in names]
    t0 = time.time()
    try:
        done = run_jobs(jobs, a.workers, work, cwd=REPO, env={"PYTHONWARNINGS": "ignore"}, done=done,
                        on_finish=report, desc="variants")
    except JobFailed as err:
        print(err)
        return 1
    wall = time.time() - t0
    runs_file = work / "runs.json"  # every driver run that trained something, for the total run time
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    if wall > 60 and ran:
        runs.append({"variants": ran, "wall_minutes": round(wall / 60, 1),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))})
        runs_file.write_text(json.dumps(runs, indent=2) + "\n")
    if a.wallclock_side_by_side:
        side_by_side_wallclock(done, work, a.root, a.rtf_utts, shape=shape)
    summary = summarize(done, base, a, wall, runs)
    out = Path(a.results) if a.results else (work / "amnet" if a.quick else RESULTS / "amnet")
    if out.resolve() != (work / "amnet").resolve():  # what --seed-work of another run reads: this run's seed
        write_atomic(work / "amnet.json", json.dumps({"seed": a.seed, "results": str(result_file(out, ".json"))}) + "\n")
    summary["seeds"] = seed_table(summary, [Path(w) for w in a.seed_work])
    md = render_markdown(summary, out.name)
    out_json, _ = write_results(out, summary, md)
    plot(summary, out.parent / f"{out.name}_trace.png", out.parent / f"{out.name}_latency_vs_rho.png")
    print("\n" + md)
    print(f"results: {out_json}  ({wall / 60:.1f} min)")
    return 0


def seed_table(summary: dict[str, Any], other_work: list[Path]) -> dict[str, Any]:
    """Per variant, test WER at ``rho_train`` for this run's seed and for the runs in ``other_work``.

    Each folder in ``other_work`` is the ``--work`` of the same benchmark with another ``--seed``
    (its driver's ``amnet.json`` names the seed). Returns ``{"seeds": [...], "variants": {name:
    {"wer": {seed: wer}, "reduction": {seed: r}, "wer_rel_vs_single": {seed: x}}}}``; the
    last only for AmNets with their FLOPs-matched single encoder in the same run.
    """
    key = str(summary["rho_train"])
    runs = {str(summary["seed"]): summary["variants"]}
    for work in other_work:
        if not (work / "amnet.json").exists():
            raise FileNotFoundError(f"--seed-work {work} has no amnet.json: pass the --work folder of a finished "
                                    "benchmarks/amnet.py run (its driver writes amnet.json there).")
        info = json.loads((work / "amnet.json").read_text())
        if str(info["seed"]) in runs:
            raise ValueError(f"{work} repeats seed {info['seed']}; give folders of runs with other --seed values.")
        runs[str(info["seed"])] = {n: json.loads((work / f"{n}.json").read_text())
                                   for n in summary["variants"] if (work / f"{n}.json").exists()}
    slow_flops = summary["slow_flops_per_frame"]
    out: dict[str, Any] = {}
    for name in summary["variants"]:
        row: dict[str, Any] = {"wer": {}, "reduction": {}, "wer_rel_vs_single": {}}
        for seed, variants in runs.items():
            if name not in variants:
                continue
            p = variants[name]["per_rho"][key]
            row["wer"][seed] = p["wer"]
            row["reduction"][seed] = 1.0 - p["flops_per_frame"] / slow_flops
            single = matched_singles(variants).get(name)
            if single is not None:
                row["wer_rel_vs_single"][seed] = p["wer"] / variants[single]["per_rho"][key]["wer"] - 1.0
        out[name] = row
    return {"seeds": list(runs), "variants": out}


def final_checkpoint(run_dir: Path) -> Path:
    """The weights a job evaluated: ``run_dir/final.ckpt``, else the checkpoint with the most training steps.

    (Runs from before ``final.ckpt`` was written: their ``last*.ckpt`` may be a few steps before the end.)
    """
    import torch

    if (run_dir / "final.ckpt").exists():
        return run_dir / "final.ckpt"
    ckpts = list(run_dir.rglob("*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"No checkpoint under {run_dir}: was the variant trained in this --work folder?")
    return max(ckpts, key=lambda c: torch.load(c, map_location="cpu", weights_only=False)["global_step"])


def stacked_test_inputs(root: str, utterances: int, stacker: Any) -> tuple[list[Any], list[str]]:
    """Encoder inputs ``(T, F)`` (features stacked by ``stacker``) and reference texts of the first test utterances."""
    import torch

    ds, _ = corpus_test_split(root)
    inputs, texts = [], []
    with torch.no_grad():
        for i in range(min(utterances, len(ds))):
            f = ds[i]["feats"][None]
            x, n = stacker(f, torch.tensor([f.shape[1]]))
            inputs.append(x[0, : int(n[0])])
            texts.append(ds[i]["text"])
    return inputs, texts


def side_by_side_wallclock(done: dict[str, dict[str, Any]], work: Path, root: str, utterances: int,
                           repeats: int = 3, shape: tuple[int, int, int] = CONFIG_SHAPE) -> None:
    """Single-thread streaming ms/frame of every variant, measured in this process with the models taken in turn.

    Each variant's final checkpoint (``work/<name>``) streams the first ``utterances`` test
    utterances, ``repeats`` rounds over all variants; the fastest round per utterance counts.
    Overwrites ``ms_per_frame_streaming`` and ``rtf`` and sets ``wallclock`` to ``"side by side"``.
    """

    from lightning_amortized.module import ASRModule
    from lightning_amortized.nn import AmortizedEncoder, stream

    models = {}
    device = device_for(RHO_TRAIN, slow_encoder_flops(shape))
    for name in done:
        source, guard = GUARDED.get(name, (name, None))  # a guarded variant streams its source's weights, guarded
        m = ASRModule.load_from_checkpoint(final_checkpoint(work / source), map_location="cpu").eval()
        if isinstance(m.encoder, AmortizedEncoder):
            m.encoder.set_device(device)
            if guard is not None:
                m.encoder.latency_guard = guard
        models[name] = m
    inputs, _ = stacked_test_inputs(root, utterances, models[next(iter(models))].stacker)
    best: dict[str, list[float]] = {name: [float("inf")] * len(inputs) for name in models}
    for _ in range(repeats):
        for name, m in models.items():
            for i, x in enumerate(inputs):
                r = stream(m.encoder, x, frame_ms=FRAME_MS)
                best[name][i] = min(best[name][i], r.total_ms / len(r.wall_ms))
    for name, ms in best.items():
        done[name]["ms_per_frame_streaming"] = sum(ms) / len(ms)
        done[name]["rtf"] = done[name]["ms_per_frame_streaming"] / FRAME_MS
        done[name]["rtf_utterances"] = len(inputs)
        done[name]["wallclock"] = "side by side"
        done[name]["streaming_code"] = STREAMING_CODE


def _paired_intervals(r: dict[str, Any], slow: dict[str, Any] | None) -> None:
    """95 % paired-bootstrap interval of the WER relative to slow-only, per rho (``ci95_wer_rel``).

    Both are scored on the same resampled test utterances, the ratio taken per resample
    (:func:`lightning_amortized.scoring.bootstrap_wer_relative`); left out when either run lacks
    per-utterance errors (results of older runs).
    """
    from lightning_amortized.scoring import bootstrap_wer_relative

    if not slow or r.get("utt_ids") is None or r.get("utt_ids") != slow.get("utt_ids"):
        return
    words = r["utt_words"]
    for rho, p in r["per_rho"].items():
        ref = slow["per_rho"][rho]
        if "utt_errors" not in p or "utt_errors" not in ref or not ref["wer"] > 0:
            continue
        _, low, high = bootstrap_wer_relative(p["utt_errors"], ref["utt_errors"], words, seed=0)
        p["ci95_wer_rel"] = [low, high]
    r["ci95_wer_rel"] = r["per_rho"][str(RHO_TRAIN)].get("ci95_wer_rel")


def matched_singles(present: Any) -> dict[str, str]:
    """``{amnet: single}`` for every FLOPs-matched single encoder in ``present`` whose AmNet is there too."""
    return {dep: single for single, (_, _, dep, _) in VARIANTS.items()
            if dep is not None and dep in present and single in present}


def _matched_single_intervals(done: dict[str, dict[str, Any]]) -> None:
    """Per AmNet with a FLOPs-matched single encoder in ``done``: WER relative to it, with intervals.

    Sets ``matched_single`` on the AmNet and ``wer_rel_vs_single`` plus ``ci95_wer_rel_vs_single``
    (paired bootstrap over test utterances, :func:`lightning_amortized.scoring.bootstrap_wer_relative`)
    in every ``per_rho`` entry of it.
    """
    from lightning_amortized.scoring import bootstrap_wer_relative

    for dep, single in matched_singles(done).items():
        amnet, ref = done[dep], done[single]
        amnet["matched_single"] = single
        same = amnet.get("utt_ids") is not None and amnet.get("utt_ids") == ref.get("utt_ids")
        for rho, p in amnet["per_rho"].items():
            q = ref["per_rho"][rho]
            p["wer_rel_vs_single"] = p["wer"] / q["wer"] - 1.0 if q["wer"] > 0 else float("nan")
            if same and "utt_errors" in p and "utt_errors" in q and q["wer"] > 0:
                _, low, high = bootstrap_wer_relative(p["utt_errors"], q["utt_errors"], amnet["utt_words"], seed=0)
                p["ci95_wer_rel_vs_single"] = [low, high]


def _targets(done: dict[str, dict[str, Any]], slow: dict[str, Any] | None) -> dict[str, Any]:
    """The AmNet issue's acceptance checks, each with the measured numbers and ``met``."""
    key = str(RHO_TRAIN)
    targets: dict[str, Any] = {}
    amnets = [n for n in done if n.startswith("amnet") and "no_amr" not in n]
    if not (slow and amnets):
        return targets
    ok = {n: done[n]["reduction_vs_slow"] >= TARGET_REDUCTION and done[n]["wer_rel_vs_slow"] <= TARGET_WER_REL
          for n in amnets}
    targets["flops_and_wer"] = {
        "target": f">= {100 * TARGET_REDUCTION:.0f}% fewer FLOPs/frame than slow-only, "
        f"WER within {100 * TARGET_WER_REL:.0f}% rel. of it (at rho = {RHO_TRAIN})",
        "per_variant": {n: {"reduction": done[n]["reduction_vs_slow"], "wer_rel": done[n]["wer_rel_vs_slow"],
                            "ci95_wer_rel": done[n].get("ci95_wer_rel"), "met": ok[n]} for n in amnets},
        "met": any(ok.values()),
    }
    behind = [str(r) for r in RHOS if slow["per_rho"][str(r)]["eou_ms"]["p90"] > LAG_MS]
    if behind:
        lat = {n: {r: done[n]["per_rho"][r]["eou_ms"]["p90"] for r in behind} for n in amnets}
        targets["latency"] = {
            "target": f"p90 EOU <= {TARGET_P90_MS:.0f} ms where slow-only lags by more than {LAG_MS / 1000:g} s",
            "p90_ms": lat,
            "slow_only_p90_ms": {r: slow["per_rho"][r]["eou_ms"]["p90"] for r in behind},
            "met": {n: all(v <= TARGET_P90_MS for v in lat[n].values()) for n in amnets},
        }
    dominance = {}
    for n in amnets:
        single = done[n].get("matched_single")
        if single is None:
            continue
        per = {}
        for rho in (str(r) for r in RHOS):
            p, q = done[n]["per_rho"][rho], done[single]["per_rho"][rho]
            per[rho] = {"wer_rel": p["wer_rel_vs_single"], "ci95": p.get("ci95_wer_rel_vs_single"),
                        "p90_ms": p["eou_ms"]["p90"], "single_p90_ms": q["eou_ms"]["p90"],
                        "met": p["wer_rel_vs_single"] <= TARGET_SINGLE_WER_REL
                        and p["eou_ms"]["p90"] <= q["eou_ms"]["p90"]}
        # a user picks the best single encoder of the same cost: every other single encoder of the run
        # within 1 % of the AmNet's FLOPs/frame must be dominated too (a pruned one next to a factorized one)
        f = done[n]["per_rho"][key]["flops_per_frame"]
        rivals = {}
        for other in done:
            if other == single or other.startswith("amnet") or VARIANTS.get(other, ("", "", None))[2] is None:
                continue
            if abs(done[other]["per_rho"][key]["flops_per_frame"] / f - 1.0) > 0.01:
                continue
            rivals[other] = {}
            for rho in (str(r) for r in RHOS):
                p, q = done[n]["per_rho"][rho], done[other]["per_rho"][rho]
                rel = p["wer"] / q["wer"] - 1.0 if q["wer"] > 0 else float("nan")
                rivals[other][rho] = {"wer_rel": rel, "p90_ms": p["eou_ms"]["p90"], "single_p90_ms": q["eou_ms"]["p90"],
                                      "met": rel <= TARGET_SINGLE_WER_REL and p["eou_ms"]["p90"] <= q["eou_ms"]["p90"]}
        met = all(x["met"] for x in per.values()) and all(y["met"] for r in rivals.values() for y in r.values())
        dominance[n] = {"single": single, "per_rho": per, "rivals": rivals, "met": met}
    if dominance:
        targets["dominance"] = {
            "target": f"at every rho, p90 EOU no higher than every single encoder's of the same FLOPs/frame (its "
            f"FLOPs-matched one and any other of the run within 1 %) and WER at most "
            f"{100 * TARGET_SINGLE_WER_REL:.0f}% rel. above it",
            "per_variant": dominance,
            "met": any(d["met"] for d in dominance.values()),
        }
    pairs = [(on, off) for on, off in ABLATIONS if on in done and off in done]
    if pairs:
        per_pair = {}
        for on_name, off_name in pairs:
            on = {str(r): done[on_name]["per_rho"][str(r)]["eou_ms"]["p90"] for r in RHOS}
            off = {str(r): done[off_name]["per_rho"][str(r)]["eou_ms"]["p90"] for r in RHOS}
            share = done[off_name]["per_rho"][key]["slow_share"]
            per_pair[off_name] = {  # keyed by the ablation: one AmNet may have several
                "on": on_name, "off": off_name, "penalty_on_p90_ms": on, "penalty_off_p90_ms": off,
                "penalty_on_slow_share": done[on_name]["per_rho"][key]["slow_share"], "penalty_off_slow_share": share,
                "met": share >= TARGET_ABLATION_SHARE and off[key] >= TARGET_ABLATION_RATIO * on[key],
            }
        targets["ablation"] = {
            "target": f"penalty off, still >= {100 * TARGET_ABLATION_SHARE:.0f}% slow frames, at least "
            f"{TARGET_ABLATION_RATIO:g}x the p90 EOU of the penalty-on model (rho = {RHO_TRAIN})",
            "pairs": per_pair,
            "met": any(p["met"] for p in per_pair.values()),
        }
    aware = [n for n in amnets if done[n].get("load_aware")]
    if aware:
        per_la = {}
        for n in aware:
            r = done[n]
            ratio = {str(x): r["per_rho"][str(x)]["eou_ms"]["p90"] / r["floor_ms"][str(x)] for x in RHOS}
            lo, hi = r["per_rho"][str(min(RHOS))]["wer"], r["per_rho"][str(max(RHOS))]["wer"]
            per_la[n] = {"p90_over_floor": ratio, "wer_lowest_rho": lo, "wer_highest_rho": hi,
                         "met": all(v <= TARGET_FLOOR_RATIO for v in ratio.values()) and lo < hi}
        targets["load_aware"] = {
            "target": f"one set of weights: p90 EOU within {TARGET_FLOOR_RATIO:g}x the floor at every rho, "
            f"and lower WER at rho = {min(RHOS):g} than at {max(RHOS):g}",
            "per_variant": per_la,
            "met": any(p["met"] for p in per_la.values()),
        }
    speed = {n: done[n]["wallclock_speedup_vs_slow"] for n in amnets}
    how = ("timed side by side in one process, models taken in turn"
           if all(r.get("wallclock") == "side by side" for r in done.values())
           else "each variant timed at the end of its own training job, other jobs running")
    comparable = all(r.get("streaming_code", 1) >= STREAMING_CODE for r in done.values())
    if not comparable:
        how += ("; NOT COMPARABLE: timed before 2026-11-27, when slow-only streamed through a one-frame nn.LSTM "
                "call several times slower than the per-frame kernels the other variants used; rerun with "
                "--resume --wallclock-side-by-side")
    targets["wallclock"] = {
        "target": f"single-thread streaming wall clock of an AmNet >= {TARGET_SPEEDUP:g}x faster than slow-only "
        f"({how})",
        "speedup": speed,
        "met": any(v >= TARGET_SPEEDUP for v in speed.values()) if comparable else None,
    }
    return targets


def summarize(
    done: dict[str, dict[str, Any]], base: str | None, a: argparse.Namespace, wall: float, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    slow = done.get("slow_only")
    key = str(RHO_TRAIN)
    # the slow encoder's shape as the variants recorded it (records from before it was recorded: all 3x256)
    shape = next((tuple(r["encoder_shape"]) for r in done.values() if r.get("encoder_shape")), CONFIG_SHAPE)
    slow_flops = slow["per_rho"][key]["flops_per_frame"] if slow else float(slow_encoder_flops(shape))
    slow_wer = slow["per_rho"][key]["wer"] if slow else float("nan")
    for r in done.values():
        p = r["per_rho"][key]
        r["reduction_vs_slow"] = 1.0 - p["flops_per_frame"] / slow_flops
        r["wer_rel_vs_slow"] = p["wer"] / slow_wer - 1.0 if slow_wer == slow_wer and slow_wer > 0 else float("nan")
        # single-thread streaming wall clock, measured in the same run as slow-only
        r["wallclock_speedup_vs_slow"] = (
            slow["ms_per_frame_streaming"] / r["ms_per_frame_streaming"]
            if slow and r.get("ms_per_frame_streaming") else float("nan")
        )
        _paired_intervals(r, slow)
    for on, off in ABLATIONS:
        if off in done:
            done[off]["ablation_of"] = on
    _matched_single_intervals(done)
    targets = _targets(done, slow)
    import torch

    return {
        "benchmark": "benchmarks/amnet.py",
        "command": " ".join(["python", "benchmarks/amnet.py", *(x for x in sys.argv[1:] if x not in ("--resume", "--overwrite"))]),
        "base_checkpoint": base,
        "rho_train": RHO_TRAIN,
        "rhos": list(RHOS),
        "frame_ms": FRAME_MS,
        "slow_flops_per_frame": slow_flops,
        "train_device_flops_per_s": device_for(RHO_TRAIN, int(slow_encoder_flops(shape))),
        "encoder_shape": list(shape),
        "train_utterances": a.train_utts,
        "epochs": a.epochs,
        "lr": a.lr,
        "seed": a.seed,
        "fast_rank": a.fast_rank,
        "fast_density": getattr(a, "fast_density", None),
        "branch_loss_weight": a.branch_loss_weight,
        "quick": a.quick,
        "workers": a.workers,
        "wall_minutes": round(wall / 60, 1),  # this invocation; the training runs behind the results are in "runs"
        "runs": runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), torch {torch.__version__}, "
        "1 thread per variant",
        "targets": targets,
        "variants": {n: done[n] for n in ORDER if n in done},
    }


def rescore(path: Path) -> int:
    """Recompute the statistics of an earlier results file (``--rescore``) and rewrite it and its ``.md``.

    The paired intervals (against slow-only and against the FLOPs-matched single encoder)
    and the targets are computed again from the stored per-utterance errors, the way
    :func:`summarize` computes them now; measurements (WER, FLOPs, latency, wall clock)
    are kept as they are. For results published before an interval method changed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a ``.json`` results file of this benchmark.
    """
    from lightning_amortized.atomic import write_atomic

    if path.suffix != ".json":
        raise ValueError(f"--rescore takes a results .json of benchmarks/amnet.py, got {path} (the .md beside it "
                         "is rewritten from it).")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err}); pass a results .json of benchmarks/amnet.py.") from None
    if not isinstance(summary, dict) or summary.get("benchmark") != "benchmarks/amnet.py" or "variants" not in summary:
        raise ValueError(f"{path} is not a results file of benchmarks/amnet.py (no 'benchmark' and 'variants' keys).")
    done = summary["variants"]
    slow = done.get("slow_only")
    for r in done.values():  # computed afresh, or left out where the errors do not allow it
        r.pop("ci95_wer_rel", None)
        for p in r.get("per_rho", {}).values():
            for key in ("ci95_wer_rel", "ci95_wer_rel_vs_single"):
                p.pop(key, None)
        _paired_intervals(r, slow)
    _matched_single_intervals(done)
    summary["targets"] = _targets(done, slow)
    summary["rescored"] = f"python benchmarks/amnet.py --rescore {_repo_relative(path)}"
    write_atomic(path, json.dumps(summary, indent=2) + "\n")
    write_atomic(path.with_suffix(".md"), render_markdown(summary, path.with_suffix("").name).rstrip("\n") + "\n")
    print(f"rescored: {path} and {path.with_suffix('.md')}")
    return 0


def _repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (for commands printed in results), else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _fmt_ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{_fmt_pct(ci[0])}, {_fmt_pct(ci[1])}]"


def _fmt_pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}%"


def _fmt_wer(x: float | None) -> str:
    """A WER or CER in % (``n/a`` for results of runs before ``test-other``)."""
    return "n/a" if x is None else f"{100 * x:.2f}%"


def render_markdown(s: dict[str, Any], stem: str = "amnet") -> str:
    """The report of a results file named ``stem`` (``.json``/``.md``; its plots ``<stem>_trace.png``, ...)."""
    key = str(s["rho_train"])
    v = s["variants"]
    lines = [
        "# Amortized encoders vs single encoders (synthetic corpus)",
        "",
        f"Command: `{s['command']}` ({s['machine']}). Run time: "
        + ("; ".join(f"{r['wall_minutes']} min wall from {r['started']} ({len(r['variants'])} variants)"
                     for r in s.get("runs", [])) or f"{s['wall_minutes']} min wall") + "."
        + (f" Intervals and targets recomputed from the stored per-utterance errors by `{s['rescored']}`."
           if s.get("rescored") else ""),
        f"Every variant warm-started from the same slow-only checkpoint and fine-tuned "
        f"{s['epochs']} epochs on {s['train_utterances']} training utterances (lr {s['lr']:g}); test split "
        "`test` (speakers unseen in training); `test-other` (voices and sentence templates unseen in training) "
        f"is scored once per variant, at rho = {s['rho_train']} (n/a: a run from before it existed). "
        "Encoder FLOPs/frame are counted by "
        "`lightning_amortized/functional/flops.py` and averaged over the valid test frames as routed "
        "(arbitrator included). AmNets trained for a device on which slow-only runs at "
        f"rho = {s['rho_train']} ({s['train_device_flops_per_s'] / 1e6:.1f} MFLOP/s, frame {s['frame_ms']:.0f} ms). "
        f"Table at rho = {s['rho_train']}; EOU = simulated end-of-utterance latency (ms)."
        + (" Variants with a latency guard \"(its weights, not retrained)\" are not trained: they score the final "
           "weights of the variant they name with the guard on (fit time 0, the same epochs)."
           if any(r.get("evaluates") for r in v.values()) else ""),
        "",
        "| variant | test WER | CER | WER vs slow | test-other WER / CER | FLOPs/frame | reduction | slow share | "
        "EOU p50 / p90 / max (ms) | RTF (1 thread) | sharpness (train / eval conf.) | lambda_cost / lambda_amr |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in v.items():
        p = r["per_rho"][key]
        e = p["eou_ms"]
        extra = ""
        if r.get("rank") and not r["routed"] and "rank" not in r["label"]:
            extra = f" (rank {r['rank']})"
        elif r.get("density") and not r["routed"]:
            extra = f" (density {r['density']:.3f})"
        sharp = f"{r['train_sharpness']:.3f} / {p['decision_confidence']:.3f}" if r["routed"] else "-"
        lam = f"{r['lambda_cost']:g} / {r['lambda_amr']:g}" if r["routed"] else "-"
        lines.append(
            f"| {r['label']}{extra} | {100 * p['wer']:.2f}% | {100 * p['cer']:.2f}% | {_fmt_pct(r['wer_rel_vs_slow'])}"
            f"{_fmt_ci(r.get('ci95_wer_rel'))} "
            f"| {_fmt_wer(r.get('test_other_wer'))} / {_fmt_wer(r.get('test_other_cer'))} "
            f"| {p['flops_per_frame'] / 1e6:.3f} M | {100 * r['reduction_vs_slow']:.1f}% | {p['slow_share']:.3f} "
            f"| {e['p50']:.1f} / {e['p90']:.1f} / {e['max']:.1f} | {r['rtf']:.4f} | {sharp} | {lam} |"
        )
    speeds = [s["slow_flops_per_frame"] / (rho * s["frame_ms"] / 1e3) / 1e6 for rho in s["rhos"]]
    lines += ["", "## End-of-utterance latency vs device load (p90, ms; WER in brackets)", "",
              "| variant | " + " | ".join(f"rho = {rho:g} ({mf:.1f} MFLOP/s)" for rho, mf in zip(s["rhos"], speeds)) + " |",
              "|---|" + "---|" * len(s["rhos"])]
    for n, r in v.items():
        cells = []
        for rho in s["rhos"]:
            p = r["per_rho"][str(rho)]
            share = f", slow {p['slow_share']:.2f}" if r["routed"] else ""
            cells.append(f"{p['eou_ms']['p90']:.1f} ({100 * p['wer']:.2f}%{share})")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    pairs = [(n, r["matched_single"]) for n, r in v.items() if r.get("matched_single") in v]
    if pairs:
        lines += ["", "## AmNet against the single encoder of the same mean FLOPs/frame (at rho = "
                  f"{s['rho_train']}), on every device", "",
                  "WER relative to the single encoder [95 % paired-bootstrap interval over test utterances]; "
                  "p90 EOU latency (ms), AmNet / single.", "",
                  "| AmNet (single) | " + " | ".join(f"rho = {rho:g}" for rho in s["rhos"]) + " |",
                  "|---|" + "---|" * len(s["rhos"])]
        for n, single in pairs:
            cells = []
            for rho in s["rhos"]:
                p, q = v[n]["per_rho"][str(rho)], v[single]["per_rho"][str(rho)]
                cells.append(f"{_fmt_pct(p['wer_rel_vs_single'])}{_fmt_ci(p.get('ci95_wer_rel_vs_single'))}; "
                             f"{p['eou_ms']['p90']:.1f} / {q['eou_ms']['p90']:.1f}")
            lines.append(f"| {v[n]['label']} ({v[single]['label']}) | " + " | ".join(cells) + " |")
    guarded = [n for n, r in v.items() if r.get("evaluates") in v]
    if guarded:
        lines += ["", "## Latency guard (the same weights, guard off / on)", "",
                  "`AmortizedEncoder(latency_guard=g)`: a frame takes the slow branch only if the backlog after it "
                  "stays within (g - 1) x the floor, and each utterance's last frame takes the fast branch, so no "
                  "utterance ends later than g x the floor on a device where one fast frame runs in real time. "
                  "Per rho: WER; p90 / max end-of-utterance latency over the floor; share of frames whose branch "
                  "the guard changed.", "",
                  "| variant | guard | " + " | ".join(f"rho = {rho:g}" for rho in s["rhos"]) + " |",
                  "|---|---|" + "---|" * len(s["rhos"])]
        sources = list(dict.fromkeys(v[n]["evaluates"] for n in guarded))
        for src in sources:
            for name in [src] + [n for n in guarded if v[n]["evaluates"] == src]:
                r = v[name]
                cells = []
                for rho in s["rhos"]:
                    p, floor = r["per_rho"][str(rho)], r["floor_ms"][str(rho)]
                    cells.append(f"{100 * p['wer']:.2f}%; {p['eou_ms']['p90'] / floor:.2f} / "
                                 f"{p['eou_ms']['max'] / floor:.2f}; {100 * p.get('guard_overridden_share', 0.0):.1f}%")
                g = r.get("latency_guard")
                lines.append(f"| {v[src]['label']} | {'off' if g is None else f'{g:g}x'} | "
                             + " | ".join(cells) + " |")
    seeds = s.get("seeds") or {}
    if len(seeds.get("seeds", [])) > 1:
        cols = seeds["seeds"]
        lines += ["", f"## Seeds (test WER at rho = {s['rho_train']}; WER relative to the FLOPs-matched single "
                  "encoder of the same seed in brackets)", "",
                  "| variant | " + " | ".join(f"seed {c}" for c in cols) + " | mean |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for n, row in seeds["variants"].items():
            cells = []
            for c in cols:
                if c not in row["wer"]:
                    cells.append("-")
                    continue
                rel = row["wer_rel_vs_single"].get(c)
                cells.append(f"{100 * row['wer'][c]:.2f}%" + (f" ({_fmt_pct(rel)})" if rel is not None else ""))
            mean = sum(row["wer"].values()) / len(row["wer"])
            lines.append(f"| {v[n]['label']} | " + " | ".join(cells) + f" | {100 * mean:.2f}% |")
    lines += _render_targets(s.get("targets", {}))
    lines += ["", f"Plots: `{stem}_trace.png` (backlog and decisions over the longest test utterance at "
              f"rho = {s['rho_train']}), `{stem}_latency_vs_rho.png` (p90 latency, WER and slow share against rho).", ""]
    return "\n".join(lines)


def _render_targets(t: dict[str, Any]) -> list[str]:
    """Markdown lines of the acceptance checks of :func:`_targets` (each with its numbers)."""
    if not t:
        return []

    def verdict(ok: bool | None) -> str:
        return "not comparable" if ok is None else ("met" if ok else "missed")

    lines = ["", "## Targets (AmNet issue)", ""]
    if "flops_and_wer" in t:
        f = t["flops_and_wer"]
        per = "; ".join(f"{n}: {100 * x['reduction']:.1f}% fewer FLOPs, WER {_fmt_pct(x['wer_rel'])}"
                        f"{_fmt_ci(x.get('ci95_wer_rel'))} ({verdict(x['met'])})" for n, x in f["per_variant"].items())
        lines.append(f"- {f['target']}: **{verdict(f['met'])}** ({per}).")
    if "latency" in t:
        lt = t["latency"]
        per = "; ".join(f"{n}: " + ", ".join(f"rho {k}: {x:.1f} ms" for k, x in d.items())
                        + f" ({verdict(lt['met'][n])})" for n, d in lt["p90_ms"].items())
        so = ", ".join(f"rho {k}: {x:.0f} ms" for k, x in lt["slow_only_p90_ms"].items())
        lines.append(f"- {lt['target']}: **{verdict(any(lt['met'].values()))}** ({per}). Slow-only: {so}.")
    if "dominance" in t:
        d = t["dominance"]
        per = []
        for n, x in d["per_variant"].items():
            bad = [f"rho {r}: WER {_fmt_pct(y['wer_rel'])}, p90 {y['p90_ms']:.1f} vs {y['single_p90_ms']:.1f} ms"
                   for r, y in x["per_rho"].items() if not y["met"]]
            bad += [f"vs {o} at rho {r}: WER {_fmt_pct(y['wer_rel'])}, p90 {y['p90_ms']:.1f} vs {y['single_p90_ms']:.1f} ms"
                    for o, rows in x.get("rivals", {}).items() for r, y in rows.items() if not y["met"]]
            names = ", ".join([x["single"], *x.get("rivals", {})])
            per.append(f"{n} vs {names}: {verdict(x['met'])}" + (f" ({'; '.join(bad)})" if bad else ""))
        lines.append(f"- {d['target']}: **{verdict(d['met'])}** ({'; '.join(per)}).")
    if "ablation" in t:
        ab = t["ablation"]
        per = [f"{p['on']} vs {p['off']}: slow share {p['penalty_on_slow_share']:.2f} / {p['penalty_off_slow_share']:.2f}, "
               f"p90 {p['penalty_on_p90_ms'][str(RHO_TRAIN)]:.1f} / {p['penalty_off_p90_ms'][str(RHO_TRAIN)]:.1f} ms "
               f"({verdict(p['met'])})" for p in ab["pairs"].values()]
        lines.append(f"- {ab['target']}: **{verdict(ab['met'])}** ({'; '.join(per)}).")
    if "load_aware" in t:
        la = t["load_aware"]
        per = [f"{n}: p90 / floor " + ", ".join(f"rho {k}: {x:.2f}" for k, x in p["p90_over_floor"].items())
               + f"; WER {100 * p['wer_lowest_rho']:.2f}% vs {100 * p['wer_highest_rho']:.2f}% ({verdict(p['met'])})"
               for n, p in la["per_variant"].items()]
        lines.append(f"- {la['target']}: **{verdict(la['met'])}** ({'; '.join(per)}).")
    if "wallclock" in t:
        w = t["wallclock"]
        per = ", ".join(f"{n}: {x:.2f}x" for n, x in w["speedup"].items())
        lines.append(f"- {w['target']}: **{verdict(w['met'])}** ({per}).")
    return lines


def plot(s: dict[str, Any], trace_png: Path, rho_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = s["variants"]
    key = str(s["rho_train"])
    shown = [n for n in ("slow_only", *(x for pair in ABLATIONS for x in pair)) if n in v]
    if shown:
        fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.3 * len(shown)), sharex=True, squeeze=False)
        for ax, n in zip(axes[:, 0], shown):
            tr = v[n]["trace"].get(key)
            if not tr:
                continue
            t = [(i + 1) * s["frame_ms"] / 1000 for i in range(len(tr["backlog_ms"]))]
            ax.plot(t, tr["backlog_ms"], color="C3", label="backlog (ms)")
            ax.set_ylabel("backlog (ms)")
            ax2 = ax.twinx()
            ax2.step(t, tr["decisions"], where="post", color="C0", alpha=0.6, label="decision (1 = slow)")
            ax2.set_ylim(-0.1, 1.4)
            ax2.set_yticks([0, 1])
            ax2.set_yticklabels(["fast", "slow"])
            ax.set_title(f"{v[n]['label']}: EOU {tr['eou_ms']:.1f} ms, slow share "
                         f"{sum(tr['decisions']) / len(tr['decisions']):.2f}", fontsize=9)
        axes[-1, 0].set_xlabel(f"time (s), utterance {v[shown[0]]['trace_utterance']}, rho = {key}")
        fig.tight_layout()
        fig.savefig(trace_png, dpi=110)
        plt.close(fig)
    fig, (ax, ax_wer, ax_slow) = plt.subplots(1, 3, figsize=(15, 4.4))
    for i, (n, r) in enumerate(v.items()):
        style = {"marker": "o", "color": f"C{i}", "linestyle": "-" if r["routed"] else "--"}
        per = [r["per_rho"][str(rho)] for rho in s["rhos"]]
        ax.plot(s["rhos"], [max(p["eou_ms"]["p90"], 0.1) for p in per], label=r["label"], **style)
        ax_wer.plot(s["rhos"], [100 * p["wer"] for p in per], **style)
        ax_slow.plot(s["rhos"], [p["slow_share"] for p in per], **style)
    ax.axhline(TARGET_P90_MS, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_ylabel("p90 end-of-utterance latency (ms)")
    ax_wer.set_ylabel("test WER (%)")
    ax_slow.set_ylabel("share of frames on the slow branch")
    for a in (ax, ax_wer, ax_slow):
        a.set_xlabel("rho (slow-only load factor on the device)")
        a.set_xticks(list(s["rhos"]))
        a.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(rho_png, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"), help="synthetic corpus folder")
    p.add_argument("--base-ckpt", default=None, help="trained slow-only checkpoint ('none': random init, smoke only)")
    p.add_argument("--base-json", default=None,
                   help="results JSON whose 'checkpoint' is the base (default: the shared base of benchmarks/base.py)")
    p.add_argument("--wait-minutes", type=float, default=0.0, help="wait this long for --base-json to appear")
    p.add_argument("--train-utts", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lambda-cost", type=float, default=None, help="override the AmNet configs' lambda_cost")
    p.add_argument("--lambda-amr", type=float, default=None, help="override the AmNet configs' lambda_amr")
    p.add_argument("--fast-rank", type=int, default=None,
                   help="rank of the low-rank fast branch of every factorized AmNet and of fast-only (configs: 48)")
    p.add_argument("--fast-density", type=float, default=None,
                   help="density of the sparse fast branch of every sparse AmNet (configs: 0.15); "
                        "`matched_density(F)` gives the density of a fast branch of F FLOPs/frame")
    p.add_argument("--branch-loss-weight", type=float, default=None,
                   help="every AmNet also trains each branch alone with this weight (ASRModule.branch_loss_weight)")
    p.add_argument("--seed", type=int, default=0, help="seed of every variant's training (shuffling, dropout, noise)")
    p.add_argument("--rtf-utts", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="variants trained in parallel (one thread each)")
    p.add_argument("--variants", nargs="+", default=ORDER, choices=ORDER)
    p.add_argument("--work", default="/tmp/amnet_bench", help="run folders, logs, per-variant JSON")
    p.add_argument("--results", default=None, help="results path stem (default docs/results/amnet)")
    p.add_argument("--resume", action="store_true", help="reuse finished variants found in --work")
    p.add_argument("--overwrite", action="store_true",
                   help="without --resume: train again and replace finished variants found in --work (default: refuse)")
    p.add_argument("--quick", action="store_true", help="smoke run: 48 utterances, 2 epochs, 24 test utterances")
    p.add_argument("--seed-work", action="append", default=[], metavar="DIR",
                   help="--work folder of the same benchmark run with another --seed (repeatable): the results gain "
                   "a per-seed table of every variant found there")
    p.add_argument("--wallclock-side-by-side", action="store_true",
                   help="re-time every variant's final checkpoint in this process, taken in turn (single thread), "
                   "instead of the timings each training job took alone")
    p.add_argument("--from-json", default=None, help="only redraw the plots of an earlier results .json (beside it)")
    p.add_argument("--rescore", default=None, metavar="JSON",
                   help="recompute the intervals and targets of an earlier results .json from its per-utterance "
                   "errors and rewrite it with its .md (no training, no timing)")
    # internal: one variant in this process
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--density", type=float, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.fast_density is not None and not 0.0 < a.fast_density <= 1.0:  # refused here, not by a job an hour in
        p.error(f"--fast-density must be in (0, 1] (a fraction of the slow branch's weights kept), got {a.fast_density}")
    if a.fast_rank is not None and a.fast_rank < 1:
        p.error(f"--fast-rank must be a positive integer, got {a.fast_rank}")
    if a.from_json:
        stem = Path(a.from_json).with_suffix("")
        plot(json.loads(Path(a.from_json).read_text()), stem.parent / f"{stem.name}_trace.png",
             stem.parent / f"{stem.name}_latency_vs_rho.png")
        return 0
    if a.rescore:
        return rescore(Path(a.rescore))
    if a.quick:
        a.train_utts, a.epochs, a.rtf_utts = min(a.train_utts, 48), min(a.epochs, 2), min(a.rtf_utts, 1)
    if a.job:
        rec = run_variant(a)
        rec["options"] = job_options(a, a.base_ckpt)
        from lightning_amortized.atomic import write_atomic

        write_atomic(Path(a.work) / f"{a.job}.json", json.dumps(rec, indent=2) + "\n")
        return 0
    return drive(a)


if __name__ == "__main__":
    sys.exit(main())
