"""The `make demo` job: synthetic corpus -> LSTM-CTC training -> test -> summary table.

Usage:
    python recipes/synthetic/run.py [--config recipes/synthetic/conf/lstm_ctc.yaml]
        [--root data/synthetic] [--utterances 8000] [--train-utterances N] [--max-epochs N] [--max-minutes M]
        [LightningCLI overrides, e.g. --model.lr 3e-3 --model.encoder.init_args.hidden_size 320]

Any further ``--section.key value`` (or ``--section.key=value``) is passed to LightningCLI after the config, as
``lightning-amortized fit`` takes it (``--model.lr 3e-3``, ``--data.init_args.spec_augment true``);
the results record them under ``overrides``.

``--utterances N`` sizes the corpus as ``make-corpus --utterances N`` does (train 47.5 %),
replacing the config's ``train_utterances``, unless ``--train-utterances`` is given too.

Writes the checkpoint and logs under the config's ``trainer.default_root_dir`` and the
numbers to ``docs/results/demo_synthetic.{json,md}``: WER and CER of every test split of the
config (``test``: speakers unseen in training -> ``test_wer``, ``test_cer``; ``test-other``:
voices and sentence templates unseen in training -> ``test_other_wer``, ``test_other_cer``;
fractions), with ``wer``/``cer`` kept as the ``test`` numbers for older readers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
#: What each test split of the synthetic corpus holds out from training (shown in the results table).
HELD_OUT = {"test": "speakers unseen in training", "test-other": "voices and sentence templates unseen in training"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(HERE / "conf" / "lstm_ctc.yaml"))
    p.add_argument("--root", default=str(REPO / "data" / "synthetic"), help="corpus folder (generated if missing)")
    p.add_argument("--utterances", type=int, default=None, help="corpus size (default: the config's)")
    p.add_argument("--train-utterances", type=int, default=None,
                   help="train split size (default: the config's; with --utterances alone: 47.5 %% of it)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=12.0, help="training wall-clock cap (safety net)")
    p.add_argument("--rtf-utterances", type=int, default=10)
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "demo_synthetic"))
    p.add_argument("--run-dir", default=str(REPO / "runs" / "synthetic" / "lstm_ctc"))
    a, overrides = p.parse_known_args(argv)
    if not (a.max_minutes > 0 and a.max_minutes < float("inf")):
        p.error(f"--max-minutes must be a positive number of minutes, got {a.max_minutes}")
    if overrides and not overrides[0].startswith("--"):  # LightningCLI checks the rest before anything runs
        p.error(f"unrecognized arguments: {' '.join(overrides)} (LightningCLI overrides are --section.key value "
                "or --section.key=value, e.g. --model.lr 3e-3)")

    import torch

    from lightning_amortized.cli import ASRLightningCLI
    from lightning_amortized.evaluation import (
        count_parameters,
        fit_and_test,
        realtime_factor,
        split_fields,
        split_keys,
    )
    from lightning_amortized.experiment import max_time, write_results

    t_start = time.time()
    args = [
        "--config", a.config,
        "--data.init_args.root", a.root,
        "--trainer.default_root_dir", a.run_dir,
        "--trainer.max_time", max_time(a.max_minutes),
    ]
    if a.utterances is not None:
        args += ["--data.init_args.utterances", str(a.utterances)]
        if a.train_utterances is None:
            args += ["--data.init_args.train_utterances", "null"]
    if a.train_utterances is not None:
        args += ["--data.init_args.train_utterances", str(a.train_utterances)]
    if a.max_epochs is not None:
        args += ["--trainer.max_epochs", str(a.max_epochs)]
    args += overrides  # last: the user's word wins
    cli = ASRLightningCLI(args=args, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    run = fit_and_test(trainer, model, dm)
    ckpt, results, fit_s = run["best_checkpoint"], run["test"], run["fit_seconds"]
    splits = list(dm.test_splits)
    split = splits[0]
    scores = split_fields(results, splits)  # test_wer, test_cer, test_other_wer, test_other_cer
    ds = dm.datasets[f"test:{split}"]
    feats = []
    for i in range(min(a.rtf_utterances, len(ds))):
        feats.append(ds[i]["feats"])
    rtf = realtime_factor(model, feats, model.frame_ms)
    summary = {
        "test_split": split,
        "test_splits": splits,
        "wer": scores["test_wer"],  # the first test split, as before there were several
        "cer": scores["test_cer"],
        **scores,
        "params": count_parameters(model),
        "encoder_flops_per_frame": int(model.encoder.flops_per_frame()),
        "flops_per_frame": int(model.flops_per_frame()),
        "frame_ms": model.frame_ms,
        "rtf_single_thread": rtf["rtf"],
        "ms_per_frame": rtf["ms_per_frame"],
        "epochs_trained": int(trainer.current_epoch),
        "fit_seconds": fit_s,
        "total_seconds": round(time.time() - t_start, 1),
        "checkpoint": ckpt,
        "log_dir": trainer.log_dir,
        "config": a.config,
        "overrides": overrides,
        "val_curve": run["val_curve"],
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(a.results)
    rows = [
        (f"{s} {kind.upper()} (%)", f"{100 * scores[f'{key}_{kind}']:.2f}")
        for s, key in zip(splits, split_keys(splits))
        for kind in ("wer", "cer")
    ]
    rows += [
        ("parameters", f"{summary['params']:,}"),
        ("FLOPs/frame (encoder+head)", f"{summary['flops_per_frame']:,} per {summary['frame_ms']:.0f} ms frame"),
        ("real-time factor (1 thread, streaming)", f"{summary['rtf_single_thread']:.4f}"),
        ("epochs / fit time", f"{summary['epochs_trained']} / {summary['fit_seconds']:.0f} s"),
    ]
    table = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
    md = (
        f"# Demo: synthetic corpus, LSTM-CTC\n\nCommand: `python recipes/synthetic/run.py {' '.join(argv or sys.argv[1:])}`"
        f" (`make demo` runs it without arguments).\n"
        "Test splits: " + ", ".join(f"`{s}` ({HELD_OUT.get(s, 'held out')})" for s in splits) + f".\n\n{table}"
    )
    out_json, _ = write_results(out, summary, md)
    print("\n" + table)
    print(f"checkpoint: {ckpt}\nlogs:       {trainer.log_dir}\nresults:    {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
