"""``lightning-amortized-device {transcribe,apply,info}``: the device runtime on the command line (no PyTorch).

* ``transcribe DIR FILE...``: stream each audio file through the exported model in
  chunks and print ``FILE<TAB>TRANSCRIPT``; ``--stats`` adds per-file measured ms/frame,
  real-time factor, end-of-utterance latency (``eou_ms``: the backlog rule over the
  measured frame times, as when frames are encoded while audio arrives; ``finish_ms``:
  measured from the last chunk to the final text) and slow-branch share; ``--json``
  prints one JSON object per file instead.
* ``apply DIR DIFF...``: apply neural diff files in order (all or nothing).
* ``info DIR``: the manifest summary and the weights hash in use.

Errors in the input print one ``lightning-amortized-device <cmd>: error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

__all__ = ["main"]

PROG = "lightning-amortized-device"


def _fail(command: str, err: BaseException) -> int:
    print(f"{PROG} {command}: error: {err}", file=sys.stderr)
    return 2


def _guard_arg(text: str) -> float | str | None:
    """``--latency-guard``: ``model``, ``off`` or a factor >= 1."""
    if text in ("model", "off"):
        return None if text == "off" else text
    try:
        factor = float(text)
    except ValueError:
        factor = float("nan")
    if not factor >= 1.0 or factor == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 1, 'off' or 'model', got {text!r}")
    return factor


def _transcribe(argv: list[str]) -> int:
    from lightning_amortized.device.runtime import ExportedModel, StreamingRecognizer, read_audio

    p = argparse.ArgumentParser(prog=f"{PROG} transcribe", description="Transcribe audio files with an exported model.")
    p.add_argument("model", help="export folder (lightning-amortized export CKPT --out DIR)")
    p.add_argument("files", nargs="+", help="audio files (FLAC/WAV, mono, the model's sample rate)")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per chunk fed to the recognizer (ms)")
    p.add_argument("--normalize", choices=["utterance", "running"], default="utterance",
                   help="feature normalisation: as in training (default) or causal running statistics")
    p.add_argument("--backlog", choices=["simulated", "measured"], default="simulated",
                   help="backlog the arbitrator sees: the manifest's device (default) or measured compute time")
    p.add_argument("--device-flops", type=float, default=None,
                   help="simulated device speed in FLOP/s (default: the manifest's device; load-aware arbitrators adapt)")
    p.add_argument("--latency-guard", type=_guard_arg, default="model",
                   help="latency guard factor (>= 1: end-of-utterance latency at most this times the floor), "
                        "'off', or 'model' (the exported model's; default)")
    p.add_argument("--two-calls", action="store_true",
                   help="AmNets: call the arbitrator and then the chosen branch (default: the export's merged "
                        "graph, one call per frame, where it has one)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--stats", action="store_true", help="add measured timing columns")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    a = p.parse_args(argv)
    if not (math.isfinite(a.chunk_ms) and a.chunk_ms > 0):
        return _fail("transcribe", ValueError(f"--chunk-ms must be a positive finite number of ms, got {a.chunk_ms}"))
    try:
        model = ExportedModel(a.model, num_threads=a.threads)
        rec = StreamingRecognizer(model, normalize=a.normalize, backlog=a.backlog, device_flops_per_s=a.device_flops,
                                  latency_guard=a.latency_guard, one_call=False if a.two_calls else None)
        wavs = [read_audio(f, model.features.sample_rate) for f in a.files]
    except (ValueError, OSError) as err:
        return _fail("transcribe", err)
    slow = int(model.manifest.get("slow_index", 0))
    for path, wav in zip(a.files, wavs):
        try:
            r = rec.transcribe(wav, chunk_ms=a.chunk_ms)
        except ValueError as err:
            return _fail("transcribe", ValueError(f"{path}: {err}"))
        stats = {"ms_per_frame": round(r.ms_per_frame, 4), "rtf": round(r.rtf, 5), "eou_ms": round(r.eou_ms, 3),
                 "finish_ms": round(r.finish_ms, 3),
                 "slow_share": round(r.slow_share(slow), 4), "frames": len(r.decisions)}
        if a.json:
            print(json.dumps({"file": path, "text": r.text, **stats}))
        elif a.stats:
            print(f"{path}\t{r.text}\t" + "\t".join(f"{k}={v}" for k, v in stats.items()))
        else:
            print(f"{path}\t{r.text}")
    return 0


def _apply(argv: list[str]) -> int:
    from lightning_amortized.device.diffs import DiffError, apply_chain
    from lightning_amortized.device.weights import WeightsError

    p = argparse.ArgumentParser(prog=f"{PROG} apply", description="Apply neural diff files (or LoRA update files) to an exported model.")
    p.add_argument("model", help="export folder")
    p.add_argument("diffs", nargs="+", help="diff or LoRA files, oldest first")
    a = p.parse_args(argv)
    try:
        infos = apply_chain(a.model, a.diffs)
    except (DiffError, WeightsError, OSError) as err:
        return _fail("apply", err)
    for info in infos:
        print(f"applied {info.path}: {info.method}, {len(info.targets)} target(s), result sha256:{info.result_sha256}")
    return 0


def _info(argv: list[str]) -> int:
    from lightning_amortized.device.runtime import ManifestError
    from lightning_amortized.device.weights import WeightsError, read_weights

    p = argparse.ArgumentParser(prog=f"{PROG} info", description="Describe an exported model.")
    p.add_argument("model", help="export folder")
    a = p.parse_args(argv)
    from pathlib import Path

    try:
        m = json.loads((Path(a.model) / "manifest.json").read_text())
        _, meta = read_weights(Path(a.model) / m["weights"]["file"])
    except (OSError, ValueError, KeyError, ManifestError, WeightsError) as err:
        return _fail("info", err)
    print(f"{m['format']} v{m['format_version']}: {m['kind']}" + (f" ({m['routing']})" if m.get("routing") else ""))
    print(f"  frame {m['frame_ms']} ms, branches {m['branches']}, FLOPs/frame "
          f"{[m['graphs'][b]['flops_per_frame'] for b in m['branches']]}"
          + (f", arbitrator {m['arbitrator']['flops_per_frame']}" if m.get("arbitrator") else "")
          + (f"; one call per frame ({m['merged_step']['file']})" if m.get("merged_step") else ""))
    print(f"  device model {m['device_model']['flops_per_s']:.4g} FLOP/s; states "
          + ", ".join(f"{k} {v['shape']}" for k, v in m["states"].items()))
    w = m["weights"]
    print(f"  weights sha256:{meta['weights_sha256']} ({w['tensors']} tensors, {w['bytes']:,} bytes)"
          + ("" if meta["weights_sha256"] == m["weights"]["sha256"] else " (updated since export)"))
    return 0


USAGE = f"""usage: {PROG} COMMAND [options]

commands:
  transcribe DIR FILE...   stream audio files through an exported model
  apply DIR DIFF...        apply neural diff files (in order) to an exported model
  info DIR                 describe an exported model

Each command takes --help. Errors in the input print one line and exit with status 2.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lightning-amortized-device``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    commands = {"transcribe": _transcribe, "apply": _apply, "info": _info}
    if argv[0] not in commands:
        print(f"{PROG}: error: unknown command {argv[0]!r}; choose from {sorted(commands)}", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
