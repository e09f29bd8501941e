"""Command line: ``lightning-amortized {fit,validate,test,predict,make-corpus,prepare,train-tokenizer,diff,export} ...``.

* ``fit``/``validate``/``test``/``predict``: LightningCLI over :class:`ASRModule` and any
  LibriSpeech-layout datamodule (``--config recipes/synthetic/conf/lstm_ctc.yaml``).
* ``make-corpus ROOT --utterances N --seed S``: generate the synthetic corpus.
* ``prepare ROOT --splits train-clean-100 dev-clean --manifests DIR``: write manifests.
* ``train-tokenizer ROOT --splits train --vocab-size 256 --out M``: a SentencePiece model
  for subword output units (``tokenizer: M`` in the model and data config).
* ``diff inspect|apply|export``: neural diff files.
* ``export CKPT --out DIR``: ONNX step graphs + manifest for the device runtime
  (``lightning-amortized-device``, see ``docs/device.md``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["main", "ASRLightningCLI"]


def _prepare_main(argv: list[str]) -> int:
    from lightning_amortized.data.prepare import CorpusError, prepare_librispeech

    p = argparse.ArgumentParser(prog="lightning-amortized prepare", description="Write LibriSpeech-layout manifests.")
    p.add_argument("root", help="corpus root with one folder per split")
    p.add_argument("--splits", nargs="+", required=True, help="split folder names, e.g. train-clean-100 dev-clean")
    p.add_argument("--manifests", default=None, help="manifest folder (default ROOT/manifests)")
    p.add_argument("--on-wrong-rate", choices=["error", "resample"], default="error")
    p.add_argument("--force", action="store_true", help="rewrite manifests even when up to date")
    a = p.parse_args(argv)
    try:
        out = prepare_librispeech(
            a.root, a.splits, a.manifests or f"{a.root}/manifests", on_wrong_rate=a.on_wrong_rate, force=a.force
        )
    except (CorpusError, ValueError, OSError) as err:
        return _fail("prepare", err)
    for split, path in out.items():
        print(f"{split}: {path}")
    return 0


def _export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lightning-amortized export",
        description="Export a checkpoint as ONNX step graphs + manifest for the device runtime (docs/device.md).",
    )
    p.add_argument("checkpoint", help="LightningCLI checkpoint of an ASRModule (CTC, LSTM/GRU or AmNet encoder)")
    p.add_argument("--out", required=True, help="folder to write (manifest.json, *.onnx, weights.safetensors)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="graph format (ONNX Runtime)")
    p.add_argument("--device-flops", type=float, default=None,
                   help="simulated device FLOP/s for single encoders (AmNets keep the device they were trained for)")
    a = p.parse_args(argv)
    from lightning_amortized.export import ExportError, export_onnx, load_for_export, verify_export

    try:
        model = load_for_export(a.checkpoint)
        manifest = export_onnx(model, a.out, device_flops_per_s=a.device_flops, source=str(a.checkpoint))
    except (ExportError, OSError) as err:
        return _fail("export", err)
    graphs = list(manifest["graphs"]) + (["arbitrator"] if manifest["arbitrator"] else [])
    print(f"{a.out}: {manifest['kind']} model, graphs {graphs}, weights sha256:{manifest['weights']['sha256']}")
    check = verify_export(model, a.out)
    print(f"verified on {check['frames']} random frames: max |logit difference| {check['max_abs_logit_diff']:.2e} "
          f"(ONNX Runtime vs eager step), routes identical: {check['routes_identical']}")
    if check["max_abs_logit_diff"] > 1e-4 or not check["routes_identical"]:
        return _fail("export", ExportError(
            f"the exported graphs in {a.out!r} do not reproduce eager step (see above); please report this"))
    return 0


def _train_tokenizer_main(argv: list[str]) -> int:
    from pathlib import Path

    from lightning_amortized.data.prepare import CorpusError, _read_transcripts, _split_files
    from lightning_amortized.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

    p = argparse.ArgumentParser(
        prog="lightning-amortized train-tokenizer",
        description="Train a SentencePiece model (subword units) on the transcripts of LibriSpeech-layout splits.",
    )
    p.add_argument("root", help="corpus root with one folder per split")
    p.add_argument("--splits", nargs="+", default=["train"], help="splits whose transcripts to learn from (default: train)")
    p.add_argument("--vocab-size", type=int, default=256, help="number of pieces (default 256)")
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    p.add_argument("--out", required=True, help="the .model file to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    a = p.parse_args(argv)
    try:
        if Path(a.out).is_dir():
            raise ValueError(f"--out {a.out!r} is a folder; pass the .model file to write, e.g. {a.out.rstrip('/')}/units.model.")
        if Path(a.out).exists() and not a.force:
            raise ValueError(
                f"--out {a.out!r} exists; models and DataModules that name it would read the new pieces. Pass "
                "another --out, or --force to replace it (checkpoints carry their own copy of the model they "
                "were trained with)."
            )
        texts = []
        for split in a.splits:
            folder = Path(a.root) / split
            if not folder.is_dir():
                raise CorpusError(f"Split folder {str(folder)!r} does not exist; pass --splits with folders of {a.root!r}.")
            texts += [t for t, _ in _read_transcripts(_split_files(folder)[1]).values()]
        if not texts:
            raise CorpusError(f"No transcripts (*.trans.txt) under {a.root!r} for splits {a.splits}.")
        out = train_sentencepiece(texts, a.out, vocab_size=a.vocab_size, model_type=a.model_type)
    except (CorpusError, ValueError, OSError) as err:  # OSError: --out is a folder, or not writable
        return _fail("train-tokenizer", err)
    tok = SentencePieceTokenizer(out)
    pieces = sum(len(tok.encode(t)) for t in texts)
    chars = sum(len(t) for t in texts)
    print(f"{out}: {len(tok) - 1} pieces from {len(texts)} transcripts; {chars / pieces:.2f} characters per piece")
    return 0


def _fail(command: str, err: BaseException) -> int:
    """The one way every subcommand reports bad input: one line on stderr, exit status 2."""
    print(f"lightning-amortized {command}: error: {err}", file=sys.stderr)
    return 2


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
USAGE = """usage: lightning-amortized COMMAND [options]

commands:
  fit | validate | test | predict   LightningCLI over ASRModule (--config recipes/.../*.yaml; --help for its options)
  make-corpus ROOT                  generate the synthetic LibriSpeech-layout corpus
  prepare ROOT --splits ...         write manifests of a LibriSpeech-layout corpus
  train-tokenizer ROOT --out M      train a SentencePiece model (subword output units) on its transcripts
  diff inspect|apply|export         neural diff files
  export CKPT --out DIR             ONNX step graphs + manifest for lightning-amortized-device

Each command takes --help. Errors in the input print one line and exit with status 2.
"""


def ASRLightningCLI(  # noqa: N802 - mirrors LightningCLI
    args: list[str] | None = None, run: bool = True, build_trainer: bool = True, **kwargs
):
    """LightningCLI over :class:`~lightning_amortized.module.ASRModule` and any LightningDataModule.

    Args:
        args: Command-line arguments (``None`` reads ``sys.argv``).
        run: Run the subcommand (``fit``, ``test``...) as LightningCLI does.
        build_trainer: With ``False`` (only with ``run=False``) the model and datamodule are
            built but no Trainer (``cli.trainer`` is ``None``): a config that names an
            accelerator this machine lacks (``--trainer.accelerator gpu``) can still be read.
        **kwargs: Passed to ``LightningCLI``.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from lightning_amortized.module import ASRModule

    class _ASRCLI(LightningCLI):
        def before_predict(self) -> None:
            """``predict`` writes its transcripts (a config without a prediction writer of its own gets one)."""
            from lightning.pytorch.callbacks import BasePredictionWriter

            from lightning_amortized.callbacks import TranscriptWriter

            if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
                self.trainer.callbacks.append(TranscriptWriter())

        def after_predict(self) -> None:
            from lightning_amortized.callbacks import TranscriptWriter

            for cb in self.trainer.callbacks:
                if isinstance(cb, TranscriptWriter) and cb.written is not None:
                    print(f"{cb.lines} transcripts: {cb.written}")

    LightningCLI = _ASRCLI  # noqa: N806

    if not build_trainer:
        if run:
            raise ValueError("Expected `run=False` with `build_trainer=False`: a subcommand needs a Trainer.")

        class _NoTrainerCLI(LightningCLI):
            def instantiate_trainer(self, **_: Any) -> Any:  # type: ignore[override]
                return None

        LightningCLI = _NoTrainerCLI  # noqa: N806

    # With `args` given, the script's own command line (sys.argv) is not LightningCLI's: hide
    # it for the duration of the call, or LightningCLI warns that both were given.
    argv = sys.argv
    if args is not None:
        sys.argv = argv[:1]
    try:
        return LightningCLI(
            ASRModule,
            pl.LightningDataModule,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )
    finally:
        sys.argv = argv


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lightning-amortized`` command."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv and argv[0] == "make-corpus":
        from lightning_amortized.data.synthetic import main as corpus_main

        return int(corpus_main(argv[1:]) or 0)
    if argv and argv[0] == "prepare":
        return _prepare_main(argv[1:])
    if argv and argv[0] == "train-tokenizer":
        return _train_tokenizer_main(argv[1:])
    if argv and argv[0] == "diff":
        from lightning_amortized.diffs.commands import main as diff_main

        return int(diff_main(argv[1:]) or 0)
    if argv and argv[0] == "export":
        return _export_main(argv[1:])
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
        print(f"lightning-amortized: error: unknown command {argv[0]!r}.\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        ASRLightningCLI(args=None if from_command_line else argv)  # None: LightningCLI reads sys.argv itself
    except Exception as err:  # noqa: BLE001 - only the user's input is reported in one line; the rest re-raised
        cause = _user_error(err)
        if cause is None:
            raise
        return _fail(next((a for a in argv if a in LIGHTNING_COMMANDS), argv[0]), cause)
    return 0


def _user_error(err: BaseException) -> BaseException | None:
    """The user's-input error behind ``err`` (a bad corpus, a file that is not there), else ``None``.

    jsonargparse wraps what a class raises while it is built from the config (``raise ... from``);
    the cause is found along ``__cause__`` only, so an error raised while *handling* a missing
    file (a bug) keeps its traceback.
    """
    from lightning_amortized.data.prepare import CorpusError

    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, (CorpusError, FileNotFoundError)):
            return e
        seen.add(id(e))
        e = e.__cause__
    return None


if __name__ == "__main__":
    sys.exit(main())
