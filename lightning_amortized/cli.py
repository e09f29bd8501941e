"""Command line: ``lightning-amortized {fit,validate,test,make-corpus,prepare,diff} ...``.

* ``fit``/``validate``/``test``/``predict``: LightningCLI over :class:`ASRModule` and any
  LibriSpeech-layout datamodule (``--config recipes/synthetic/conf/lstm_ctc.yaml``).
* ``make-corpus ROOT --utterances N --seed S``: generate the synthetic corpus.
* ``prepare ROOT --splits train-clean-100 dev-clean --manifests DIR``: write manifests.
* ``diff inspect|apply|export``: neural diff files.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "ASRLightningCLI"]


def _prepare_main(argv: list[str]) -> int:
    from lightning_amortized.data.prepare import prepare_librispeech

    p = argparse.ArgumentParser(prog="lightning-amortized prepare", description="Write LibriSpeech-layout manifests.")
    p.add_argument("root", help="corpus root with one folder per split")
    p.add_argument("--splits", nargs="+", required=True, help="split folder names, e.g. train-clean-100 dev-clean")
    p.add_argument("--manifests", default=None, help="manifest folder (default ROOT/manifests)")
    p.add_argument("--on-wrong-rate", choices=["error", "resample"], default="error")
    p.add_argument("--force", action="store_true", help="rewrite manifests even when up to date")
    a = p.parse_args(argv)
    out = prepare_librispeech(
        a.root, a.splits, a.manifests or f"{a.root}/manifests", on_wrong_rate=a.on_wrong_rate, force=a.force
    )
    for split, path in out.items():
        print(f"{split}: {path}")
    return 0


def ASRLightningCLI(args: list[str] | None = None, run: bool = True, **kwargs):  # noqa: N802 - mirrors LightningCLI
    """LightningCLI over :class:`~lightning_amortized.module.ASRModule` and any LightningDataModule."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from lightning_amortized.module import ASRModule

    return LightningCLI(
        ASRModule,
        pl.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lightning-amortized`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "make-corpus":
        from lightning_amortized.data.synthetic import main as corpus_main

        return int(corpus_main(argv[1:]) or 0)
    if argv and argv[0] == "prepare":
        return _prepare_main(argv[1:])
    if argv and argv[0] == "diff":
        from lightning_amortized.diffs.commands import main as diff_main

        return int(diff_main(argv[1:]) or 0)
    ASRLightningCLI(args=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
