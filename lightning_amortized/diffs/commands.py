"""``lightning-amortized diff inspect|apply|export``: the diff operations on checkpoint files.

Checkpoints are read and written by :mod:`~lightning_amortized.diffs.checkpoints`
(Lightning ``.ckpt``, ``torch.save`` state dicts, ``.safetensors``); a byte budget becomes
entries through :func:`~lightning_amortized.diffs.budget.entries_for_bytes`.

Examples::

    lightning-amortized diff inspect update-1.safetensors
    lightning-amortized diff apply --base base.ckpt --diff update-1.safetensors --diff update-2.safetensors --out device.ckpt
    lightning-amortized diff export --base base.ckpt --finetuned tuned.ckpt --out u1.safetensors --budget 0.1 --dtype int8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from lightning_amortized.diffs.budget import entries_for_bytes, fewer_entries
from lightning_amortized.diffs.checkpoints import load_checkpoint, save_checkpoint
from lightning_amortized.diffs.io import (
    VALUE_DTYPES,
    DiffError,
    DiffInfo,
    apply_to_state_dict,
    export_diff_from_weights,
    inspect_diff,
)
from lightning_amortized.diffs.lowrank import read_update
from lightning_amortized.diffs.targets import select_names

__all__ = ["main"]


def _parse_budget(text: str) -> float | int:
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"budget must be a fraction or a byte count, got {text!r}") from err
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(f"a fractional budget must be in (0, 1], got {text!r}")
        return value
    if value < 1:
        raise argparse.ArgumentTypeError(f"a byte budget must be >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-amortized diff", description="Neural diff files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="verify a diff or low-rank (LoRA) update file and describe it")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p = sub.add_parser("apply", help="apply one or more diff or low-rank (LoRA) files (in order) to a base checkpoint")
    p.add_argument("--base", required=True)
    p.add_argument("--diff", required=True, action="append", dest="diffs", help="repeat for a chain")
    p.add_argument("--out", required=True)
    p.add_argument("--no-strict", action="store_true", help="skip the base/result hash checks")
    p = sub.add_parser("export", help="sparse diff keeping the largest |finetuned - base| entries")
    p.add_argument("--base", required=True)
    p.add_argument("--finetuned", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=_parse_budget, default=0.1, help="fraction of targeted entries, or bytes (int)")
    p.add_argument("--dtype", choices=list(VALUE_DTYPES), default="fp32")
    p.add_argument("--targets", nargs="+", default=["*"], help="glob or re: patterns")
    p.add_argument("--exclude", nargs="*", default=[])
    return parser


def _export_within_bytes(
    base: dict, tuned: dict, names: list[str], out: Path, keep: int, value_dtype: str, budget: int
) -> DiffInfo:
    """Export the ``keep`` largest changes, dropping entries until the real file fits ``budget`` bytes.

    The projection of :func:`entries_for_bytes` assumes evenly spread entries; the kept ones may
    need more 4-byte gap escapes. Trial files go to a temporary name beside ``out``, which is
    replaced only by a file within the budget.

    Raises:
        ValueError: not even one entry fits (nothing is written).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    trial = out.with_name(f".{out.name}.{os.getpid()}.trial")
    try:
        while True:
            info = export_diff_from_weights(base, tuned, names, trial, keep=keep, value_dtype=value_dtype,
                                            extra_metadata={"budget": budget})
            if info.file_bytes <= budget:
                break
            if info.stored <= 1:
                raise ValueError(f"A budget of {budget} bytes does not hold one entry with its header "
                                 f"({info.file_bytes} bytes); nothing was written.")
            keep = fewer_entries(info.stored, info.file_bytes, budget, value_dtype)
        os.replace(trial, out)
    finally:
        trial.unlink(missing_ok=True)
    return inspect_diff(out)


def main(argv: list[str] | None = None) -> int:
    """Run ``diff inspect|apply|export``; returns the process exit code (0 ok, 2 refused).

    Example::

        >>> main(["inspect", "update-1.safetensors"])  # doctest: +SKIP
        0
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "inspect":
            info = read_update(args.path)[0]
            print(json.dumps(asdict(info), indent=2) if args.json else info)
        elif args.command == "apply":
            state, container = load_checkpoint(args.base)
            new, infos = apply_to_state_dict(state, args.diffs, strict=not args.no_strict)
            save_checkpoint(args.out, new, container)
            for info in infos:
                print(f"applied {info.path} ({info.method}, {info.stored:,} stored) -> sha256:{info.result_sha256}")
            print(f"wrote {args.out}")
        else:
            base, _ = load_checkpoint(args.base)
            tuned, _ = load_checkpoint(args.finetuned)
            candidates = [k for k, v in base.items() if v.is_floating_point() and k in tuned]
            names = select_names(candidates, args.targets, args.exclude, owner=args.base)
            total = sum(base[n].numel() for n in names)
            if isinstance(args.budget, float):
                keep = min(total, max(1, round(args.budget * total)))
            else:
                numels = {n: base[n].numel() for n in names}
                keep = entries_for_bytes("sparse", args.dtype, numels, args.budget, extra={"budget": args.budget})
                if keep < 1:
                    raise ValueError(
                        f"A budget of {args.budget} bytes does not hold one entry with its header (an integer "
                        "--budget is bytes; a fraction of the targeted entries is written with a point, e.g. 1.0)."
                    )
            if isinstance(args.budget, float):
                info = export_diff_from_weights(base, tuned, names, args.out, keep=keep, value_dtype=args.dtype,
                                                extra_metadata={"budget": args.budget})
            else:
                info = _export_within_bytes(base, tuned, names, Path(args.out), keep, args.dtype, args.budget)
            print(info)
    except (DiffError, ValueError, OSError) as err:
        print(f"lightning-amortized diff: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
