"""Measure how fast the synthetic corpus is generated.

Generates ``--utterances`` utterances (default 2,000) into a temporary directory and
writes ``docs/results/corpus_speed.json`` and ``docs/results/corpus_speed.md`` with
utterances per minute, hours of audio, wall-clock seconds, worker and CPU counts.

Usage::

    python benchmarks/corpus_speed.py --utterances 2000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from lightning_amortized.data.synthetic import GENERATOR_VERSION, make_corpus

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children, in seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(utterances: int = 2000, seed: int = 0, workers: int | None = None) -> dict:
    """Generate a corpus in a temporary directory and time it.

    Args:
        utterances: number of utterances to generate.
        seed: corpus seed.
        workers: worker processes (``None``: the generator's default).

    Returns:
        The measurements: ``utterances_per_minute``, ``audio_hours``, ``seconds``
        (wall clock), ``workers``, ``cpu_count``, ``cpu_ms_per_utterance`` (CPU time
        of the generator and its workers, which does not depend on other load) and
        context such as the 1-minute ``load_average_before``.
    """
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        info = make_corpus(tmp, utterances, seed, num_workers=workers, show_progress=True)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
    return {
        "utterances": utterances,
        "seed": seed,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "seconds": round(seconds, 2),
        "utterances_per_minute": round(utterances / seconds * 60.0, 1),
        "audio_hours": round(info["hours"], 4),
        "audio_seconds_per_wall_second": round(info["hours"] * 3600.0 / seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_utterance": round(cpu / utterances * 1000.0, 1),
        "load_average_before": round(load_before, 2),
        "generator_version": GENERATOR_VERSION,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write(result: dict, out_dir: Path = RESULTS) -> None:
    """Write ``corpus_speed.json`` and ``corpus_speed.md`` into ``out_dir``."""
    md = [
        "# Synthetic corpus generation speed",
        "",
        "Produced by `python benchmarks/corpus_speed.py` (CPU only). The machine may be",
        "shared with other jobs (see the load average): wall-clock rates are then a lower",
        "bound, while CPU ms per utterance does not depend on other load.",
        "",
        "| utterances | workers | CPUs | load before | seconds | utterances/min | audio hours "
        "| audio s per wall s | CPU ms per utterance |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result['utterances']} | {result['workers']} | {result['cpu_count']} | "
        f"{result['load_average_before']} | {result['seconds']} | "
        f"{result['utterances_per_minute']} | {result['audio_hours']} | "
        f"{result['audio_seconds_per_wall_second']} | {result['cpu_ms_per_utterance']} |",
        "",
    ]
    from lightning_amortized.experiment import write_results

    write_results(Path(out_dir) / "corpus_speed", result, "\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.utterances, args.seed, args.workers)
    write(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
