"""``lightning-amortized diff inspect|apply|export``: the diff operations on checkpoint files.

Checkpoints may be Lightning ``.ckpt`` files (weights under ``"state_dict"``), plain
``state_dict`` files saved with ``torch.save`` (``.pt``/``.pth``) or ``.safetensors`` files.
A checkpoint written while ``NeuralDiff`` was training (keys such as
``rnn.parametrizations.weight_ih_l0.original``) is folded into plain weights ``W0 + D``
when read.

Examples::

    lightning-amortized diff inspect update-1.safetensors
    lightning-amortized diff apply --base base.ckpt --diff update-1.safetensors --diff update-2.safetensors --out device.ckpt
    lightning-amortized diff export --base base.ckpt --finetuned tuned.ckpt --out u1.safetensors --budget 0.1 --dtype int8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from lightning_amortized.diffs.hashed import hashed_delta
from lightning_amortized.atomic import write_atomic
from lightning_amortized.diffs.io import (
    VALUE_DTYPES,
    DiffError,
    apply_to_state_dict,
    export_diff_from_weights,
    inspect_diff,
)
from lightning_amortized.diffs.targets import select_names

__all__ = ["fold_parametrized", "load_checkpoint", "main", "save_checkpoint"]

_ORIGINAL = re.compile(r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<attr>[^.]+)\.original$")


def fold_parametrized(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a state dict of a model with diffs attached into plain weights ``W0 + D``.

    Sparse diffs (``.0.delta`` + ``.0.mask``) give ``where(mask, W0 + delta, W0)``; hashed
    diffs (``.0.buckets`` + ``.0.hash_seed``) give ``W0 + sign * buckets[h]``, exactly as in
    the forward pass. Other entries are passed through.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _ORIGINAL.match(key)
        if m is None:
            if ".parametrizations." not in f".{key}":
                out[key] = value
            continue
        name = m.group("prefix") + m.group("attr")
        stem = key[: -len("original")] + "0."
        if stem + "mask" in state:
            mask, delta = state[stem + "mask"], state[stem + "delta"]
            out[name] = torch.where(mask, value + delta, value)
        elif stem + "buckets" in state:
            seed = int(state[stem + "hash_seed"])
            out[name] = value + hashed_delta(name, tuple(value.shape), seed, state[stem + "buckets"])
        else:
            raise ValueError(f"Unknown parametrization on {name!r}; cannot fold {key!r}.")
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read weights from a checkpoint.

    Returns:
        ``(state_dict, container)``: plain (folded) weights on CPU, and the full Lightning
        checkpoint dict (``None`` for plain state dicts and safetensors files).
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        return fold_parametrized(safetensors.torch.load_file(p)), None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # Lightning checkpoints may pickle hyper-parameter objects
        obj = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return fold_parametrized(obj["state_dict"]), obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return fold_parametrized(obj), None
    raise ValueError(f"{str(p)!r} holds neither a Lightning checkpoint nor a state dict of tensors.")


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, torch.Tensor], container: dict[str, Any] | None) -> None:
    """Write weights atomically, as a Lightning checkpoint (when ``container`` is given),
    a ``.safetensors`` file or a ``torch.save`` state dict, chosen by ``container``/suffix."""
    p = Path(path)
    if p.suffix == ".safetensors":
        data = safetensors.torch.save({k: v.contiguous() for k, v in state.items()})
    else:
        buf = io.BytesIO()
        torch.save({**container, "state_dict": dict(state)} if container is not None else dict(state), buf)
        data = buf.getvalue()
    write_atomic(p, data)


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
    p = sub.add_parser("inspect", help="verify a diff file and describe it")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p = sub.add_parser("apply", help="apply one or more diffs (in order) to a base checkpoint")
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


def main(argv: list[str] | None = None) -> int:
    """Run ``diff inspect|apply|export``; returns the process exit code (0 ok, 2 refused).

    Example::

        >>> main(["inspect", "update-1.safetensors"])  # doctest: +SKIP
        0
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "inspect":
            info = inspect_diff(args.path)
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
                keep = max(1, round(args.budget * total))
            else:
                keep = args.budget // (4 + VALUE_DTYPES[args.dtype].itemsize)
            keep = min(keep, total)
            info = export_diff_from_weights(
                base, tuned, names, args.out, keep=keep, value_dtype=args.dtype, extra_metadata={"budget": args.budget}
            )
            print(info)
    except (DiffError, ValueError, OSError) as err:
        print(f"lightning-amortized diff: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
