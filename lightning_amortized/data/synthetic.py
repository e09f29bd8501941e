"""Generate a synthetic speech corpus in LibriSpeech's directory layout.

Assistant-style requests and general sentences (:mod:`~lightning_amortized.data.templates`)
are spoken by eSpeak NG voice variants (:mod:`~lightning_amortized.data.espeak`), resampled
to 16 kHz, given light noise, gain and silence, and written as::

    <root>/corpus.json
    <root>/<split>/slu.jsonl
    <root>/<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt
    <root>/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt:04d>.flac

Splits are ``train``, ``dev``, ``test`` (three disjoint speaker sets), ``test-other``
(voices, accents and sentence templates never heard in training), ``update-1`` ...
``update-5`` (train speakers; about 60 % requests with that update's NEW entities, 40 %
replayed base requests) and ``update-1-test`` ... ``update-5-test`` (test speakers, same
mixture). Every random choice comes from a generator seeded by ``(seed, split, index)``,
so files are bit-identical for a given seed whatever the number of workers.

Example::

    >>> from lightning_amortized.data.synthetic import make_corpus
    >>> info = make_corpus("/tmp/corpus", utterances=60, seed=0, show_progress=False)
    >>> info["splits"]["update-1"]["utterances"] >= 3
    True
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lightning_amortized.data import templates
from lightning_amortized.data.espeak import EspeakError, EspeakSynthesizer
from lightning_amortized.data.prepare import IN_PROGRESS_MARKER, CorpusError
from lightning_amortized.data.plan import (
    ACCENTS_VERSION,
    MIN_UTTERANCES,
    OTHER_VARIANTS,
    OTHER_VOICES,
    SAMPLE_RATE,
    SPLITS,
    VOICE_SETS,
    _Job,
    _plan,
    split_sizes,
    voice_set,
)
from lightning_amortized.data.render import _init_worker, _render

__all__ = [
    "FORMAT_VERSION",
    "GENERATOR_VERSION",
    "MIN_UTTERANCES",
    "SAMPLE_RATE",
    "SPLITS",
    "main",
    "make_corpus",
    "read_slu",
    "split_sizes",
]

#: Version of the ``corpus.json`` / directory format.
FORMAT_VERSION = 1
#: Version of the generator; a change means different audio or texts for the same seed.
GENERATOR_VERSION = "2.2.0"

_IN_PROGRESS = IN_PROGRESS_MARKER  # lets a rerun clean up after an interruption

# ---------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------
def _check_args(
    utterances: int,
    seed: int,
    num_workers: int | None,
    noise_snr_db: Any,
    train_utterances: int | None = None,
    free_text: float = 0.0,
) -> tuple[int, tuple[float, float] | None]:
    split_sizes(utterances, train_utterances)  # validates `utterances` and `train_utterances`
    if isinstance(free_text, bool) or not isinstance(free_text, (int, float)) or not 0.0 <= free_text <= 1.0:
        raise ValueError(f"Expected argument `free_text` to be a probability in [0, 1], but got {free_text!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected argument `seed` to be a non-negative int, but got {seed!r}.")
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(
            f"Expected argument `num_workers` to be a positive int or None, but got {num_workers!r}."
        )
    snr: tuple[float, float] | None = None
    if noise_snr_db is not None:
        try:
            lo, hi = (float(v) for v in noise_snr_db)
        except (TypeError, ValueError):
            raise ValueError(
                "Expected argument `noise_snr_db` to be None or a (low, high) pair of SNRs in "
                f"dB, but got {noise_snr_db!r}."
            ) from None
        if not lo <= hi:
            raise ValueError(
                f"Expected argument `noise_snr_db` to satisfy low <= high, but got {noise_snr_db!r}."
            )
        snr = (lo, hi)
    return num_workers, snr


def _requested(
    utterances: int,
    seed: int,
    snr: tuple[float, float] | None,
    voices: str,
    train_utterances: int | None,
    free_text: float,
) -> dict[str, Any]:
    """The ``corpus.json`` fields that name a corpus, as requested (compared by :func:`_differing`)."""
    return {
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "utterances": utterances,
        "noise_snr_db": list(snr) if snr is not None else None,
        "voices": voices,
        "train_utterances": train_utterances,
        "free_text": free_text,
        # what the accent processes were (plan.ACCENTS_VERSION), for voice sets that use them
        **({"accents_version": ACCENTS_VERSION} if _voice_lines_used(voices) else {}),
    }


def _voice_lines_used(voices: str) -> bool:
    """Whether the voice set adds voice-file lines (accents, formant shifts) to some speakers."""
    v = voice_set(voices)
    return v.accent_share > 0 or v.formant_spread > 0


#: Values of naming fields that ``corpus.json`` files leave out (older ones; and version 1 of
#: the accent processes, the first, is not written, so those manifests stay as they were).
_ABSENT = {"free_text": 0.0, "accents_version": 1}


def _differing(info: dict, requested: dict[str, Any]) -> set[str]:
    """The keys of ``corpus.json`` (``info``) that differ from the :func:`_requested` corpus (a corpus.json
    without ``free_text`` was made without free sentences)."""
    return {key for key, value in requested.items() if info.get(key, _ABSENT.get(key)) != value}


def _existing(root: Path, requested: dict[str, Any]) -> dict | None:
    """The manifest of a finished identical corpus under ``root``, else ``None``."""
    manifest = root / "corpus.json"
    if not manifest.is_file():
        return None
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise CorpusError(
            f"{manifest} is not valid JSON ({err}); it describes a different corpus or a "
            "damaged one. Use another root or pass `overwrite=True` (`--overwrite`)."
        ) from None
    if _differing(info, requested):
        names = [k for k in requested if k != "format_version"]
        found = ", ".join(f"{k}={info.get(k, _ABSENT.get(k))}" for k in names)
        wanted = ", ".join(f"{k}={requested[k]}" for k in names)
        raise CorpusError(
            f"{manifest} describes a different corpus ({found}) than requested ({wanted}). "
            "Use another root or pass `overwrite=True` (`--overwrite`)."
        )
    return info


def _replaceable(root: Path, requested: dict[str, Any]) -> bool:
    """Whether ``root`` holds a corpus of an older version of this generator, or one that
    differs from the request only in the size of its train split.

    Such a corpus is replaced without ``overwrite`` (with a warning): it is generated
    data the recipes' configs can no longer use, not someone's own files (the recipes'
    configs moved to a larger train split in one release, and an older checkout's corpus
    must not stop ``make demo``).
    """
    try:
        info = json.loads((root / "corpus.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("generator") != "lightning_amortized.data.synthetic":
        return False
    if info.get("generator_version") != GENERATOR_VERSION:
        warnings.warn(
            f"{root} holds a corpus of generator version {info.get('generator_version')}; "
            f"replacing it with version {GENERATOR_VERSION} (texts, voices and splits changed; "
            "see docs/corpus.md).",
            stacklevel=3,
        )
        return True
    if _differing(info, requested) == {"train_utterances"}:
        warnings.warn(
            f"{root} holds this generator's corpus with train_utterances={info.get('train_utterances')}; "
            f"regenerating it with train_utterances={requested['train_utterances']} (the other splits stay the same).",
            stacklevel=3,
        )
        return True
    return False


def _write_text_files(root: Path, jobs: Sequence[_Job], labels: dict[str, dict[str, Any]]) -> None:
    chapters: dict[Path, list[str]] = {}
    per_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for job in jobs:
        chapters.setdefault(Path(job.path).parent, []).append(job.id)
        per_split[job.split].append(job.id)
    for folder, ids in chapters.items():
        spk, chapter = folder.parent.name, folder.name
        lines = [f"{i} {labels[i]['text']}\n" for i in sorted(ids)]
        (folder / f"{spk}-{chapter}.trans.txt").write_text("".join(lines))
    for split, ids in per_split.items():
        lines = [json.dumps(labels[i], sort_keys=True) + "\n" for i in sorted(ids)]
        (root / split / "slu.jsonl").write_text("".join(lines))


def read_slu(root: str | Path, split: str) -> dict[str, dict[str, Any]]:
    """The ``slu.jsonl`` labels of a split: ``{utterance id: {"intent", "slots", "entities_new", "text"}}``.

    Raises:
        FileNotFoundError: the split has no ``slu.jsonl`` (not a synthetic corpus).
    """
    path = Path(root) / split / "slu.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: SLU labels come with the synthetic corpus (make-corpus).")
    labels = {}
    for line in path.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            labels[item["id"]] = item
    return labels


def _iter_rendered(
    jobs: Sequence[_Job], num_workers: int
) -> Iterable[tuple[str, str, float]]:
    # Custom (accent) variants are written here, before any fork: workers share this
    # process's private eSpeak data copy and write nothing (forked workers skip atexit, so
    # copies of their own would be left behind).
    custom = sorted({(j.voice, j.voice_lines) for j in jobs if j.voice_lines})
    data_path = None
    if custom:
        tts = EspeakSynthesizer()
        for voice, lines in custom:
            tts.custom_variant(voice, lines)
        data_path = tts.data_path
    if num_workers == 1:
        _init_worker()
        yield from map(_render, jobs)
        return
    # Fork where available: spawned workers would re-import the package (and with it
    # torch and Lightning, seconds per worker). Workers only use numpy, scipy,
    # soundfile and their own eSpeak NG, none of which shares state with the parent.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(data_path,)) as pool:
        yield from pool.imap_unordered(_render, jobs, chunksize=16)


def make_corpus(
    root: str | Path,
    utterances: int = 8000,
    seed: int = 0,
    *,
    num_workers: int | None = None,
    noise_snr_db: tuple[float, float] | None = (20.0, 40.0),
    show_progress: bool = True,
    overwrite: bool = False,
    voices: str = "core",
    train_utterances: int | None = None,
    free_text: float = 0.0,
) -> dict:
    """Generate (or reuse) a synthetic LibriSpeech-layout corpus under ``root``.

    Idempotent: if ``root/corpus.json`` describes the same corpus (seed, utterances,
    noise, generator version) and every file is present, nothing is written and the
    manifest is returned.

    Args:
        root: output directory (created if missing).
        utterances: total number of utterances over all splits (at least
            :data:`MIN_UTTERANCES`; see :func:`split_sizes`).
        seed: non-negative seed; equal seeds give bit-identical corpora.
        num_workers: worker processes, each with its own eSpeak NG; ``None`` means
            ``min(2, os.cpu_count())``. The output does not depend on it.
        noise_snr_db: ``(low, high)`` range of the additive-noise signal-to-noise
            ratio in dB, drawn uniformly per utterance; ``None`` for no noise.
        show_progress: show a tqdm progress bar.
        overwrite: replace a different corpus found in ``root`` instead of raising.
        voices: the :data:`~lightning_amortized.data.plan.VOICE_SETS` entry train, dev and
            test speakers come from: ``"core"`` (16 variants, learnable by the recipes'
            models on CPU), ``"core-accents"`` (``core`` with a synthetic accent for half of
            the training speakers), ``"core-formants"`` (training speakers' formants 1-3
            scaled apart by up to 10 %) or ``"wide"`` (67 variants, wider prosody and warp).
        train_utterances: size of the ``train`` split, ``None`` for what ``utterances``
            leaves (47.5 %). Dev, test, test-other and the update splits are sized from
            ``utterances`` either way, and a larger train split starts with the utterances
            of the default one (same texts, speakers and audio).
        free_text: probability that a ``train`` utterance speaks a free sentence (words
            drawn uniformly from the base vocabulary, no template:
            :func:`~lightning_amortized.data.templates.free_sentence`) instead of its
            request; 0 (the default) leaves every text as it was. Other splits never change.

    Returns:
        The manifest written to ``root/corpus.json``: ``format_version``, ``seed``,
        ``utterances``, ``train_utterances``, ``sample_rate`` (Hz), ``splits`` (per split ``utterances``,
        ``speakers`` ids, ``hours`` of audio, ``new_entity_utterances``), ``speakers``
        (per id ``voice``, ``variant``, ``pitch``, ``rate`` in words/min,
        ``pitch_range``, ``warp_rate`` in Hz, ``split``), ``entities`` (``base`` and
        ``update-k`` lists by slot type), ``held_out`` (what only ``test-other`` hears:
        ``voices``, ``variants``, ``templates``), ``vocabulary_size`` and
        ``generator_version``.

    Raises:
        ValueError: on bad arguments, or if ``root`` holds a different corpus (or
            split folders this function did not write) and ``overwrite`` is false.
        EspeakError: if eSpeak NG cannot be loaded.
    """
    num_workers, snr = _check_args(utterances, seed, num_workers, noise_snr_db, train_utterances, free_text)
    free_text = float(free_text)
    voice_set(voices)  # validates `voices`
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file, not a folder: pass the folder the corpus goes in (it is created).")
    utterances, seed = int(utterances), int(seed)
    train_utterances = None if train_utterances is None else int(train_utterances)
    manifest_path = root / "corpus.json"
    speakers, jobs, labels = _plan(root, utterances, seed, snr, voices, train_utterances, free_text)
    requested = _requested(utterances, seed, snr, voices, train_utterances, free_text)
    try:
        info = _existing(root, requested)
    except ValueError:
        if not overwrite and not _replaceable(root, requested):
            raise
        info = None
    if info is not None and all(Path(j.path).is_file() for j in jobs):
        (root / _IN_PROGRESS).unlink(missing_ok=True)  # a run stopped after writing corpus.json: it is complete
        return info
    marker = root / _IN_PROGRESS
    foreign = [s for s in SPLITS if (root / s).exists()]
    if foreign and info is None and not manifest_path.exists() and not marker.exists():
        if not overwrite:
            raise ValueError(
                f"{root} already holds split folders {foreign} that make_corpus did not "
                "write (no corpus.json); refusing to delete them. Use another root or pass "
                "`overwrite=True` (`--overwrite`)."
            )
    root.mkdir(parents=True, exist_ok=True)
    marker.touch()
    if manifest_path.exists():
        manifest_path.unlink()
    for split in foreign:  # stale files from an interrupted, incomplete or replaced run
        shutil.rmtree(root / split)

    from tqdm.auto import tqdm

    seconds: dict[str, float] = {}
    with tqdm(total=len(jobs), desc="make-corpus", unit="utt", disable=not show_progress) as bar:
        for _split, utt_id, duration in _iter_rendered(jobs, num_workers):
            seconds[utt_id] = duration
            bar.update(1)
    _write_text_files(root, jobs, labels)

    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        split_jobs = [j for j in jobs if j.split == split]
        splits[split] = {
            "utterances": len(split_jobs),
            "speakers": sorted({int(j.id.split("-")[0]) for j in split_jobs}),
            "hours": round(sum(seconds[j.id] for j in split_jobs) / 3600.0, 6),
            "new_entity_utterances": sum(labels[j.id]["entities_new"] for j in split_jobs),
        }
    entities = {"base": templates.base_entities()}
    for k in range(1, templates.NUM_UPDATES + 1):
        entities[f"update-{k}"] = templates.update_entities(k)
    info = {
        "format_version": FORMAT_VERSION,
        "generator": "lightning_amortized.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "utterances": utterances,
        "sample_rate": SAMPLE_RATE,
        "noise_snr_db": list(snr) if snr is not None else None,
        "voices": voices,
        "train_utterances": train_utterances,
        **({"free_text": free_text} if free_text else {}),  # absent: none (older corpora read the same)
        **({"accents_version": ACCENTS_VERSION}
           if _voice_lines_used(voices) and ACCENTS_VERSION != _ABSENT["accents_version"] else {}),
        "hours": round(sum(seconds.values()) / 3600.0, 6),
        "splits": splits,
        "speakers": {
            # voice-line fields only where used: a core corpus's manifest (and fingerprint) stays as it was
            str(s.id): {k: v for k, v in asdict(s).items() if k != "id" and (k not in ("accent", "formants") or v)}
            for group in speakers.values()
            for s in group
        },
        "entities": entities,
        "update_themes": {
            f"update-{k + 1}": theme for k, theme in enumerate(templates.UPDATE_THEMES)
        },
        "held_out": {
            "voices": list(OTHER_VOICES),
            "variants": list(OTHER_VARIANTS),
            "templates": [t.pattern for t in templates.OTHER_TEMPLATES],
        },
        "vocabulary_size": len(templates.vocabulary()),
    }
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(manifest_path)  # written last: its presence means "finished"
    marker.unlink()
    return info


def main(argv: list[str] | None = None) -> int:
    """Command line: ``make-corpus ROOT --utterances N --seed S [--workers W]``.

    Args:
        argv: arguments without the program name (a leading ``"make-corpus"`` is
            accepted); ``None`` reads ``sys.argv[1:]``.

    Returns:
        Exit status: 0 on success, 2 on bad arguments.
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["make-corpus"]:
        args_in = args_in[1:]
    parser = argparse.ArgumentParser(
        prog="lightning-amortized make-corpus",
        description="Generate a synthetic LibriSpeech-layout speech corpus with eSpeak NG.",
    )
    parser.add_argument("root", type=Path, help="output directory")
    parser.add_argument("--utterances", type=int, default=8000, help="total utterances (default 8000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default min(2, CPU count))")
    parser.add_argument("--no-noise", action="store_true", help="do not add background noise")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different corpus already in ROOT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--voices", choices=sorted(VOICE_SETS), default="core",
                        help="voice set of train/dev/test speakers (default core; see docs/corpus.md)")
    parser.add_argument("--train-utterances", type=int, default=None,
                        help="size of the train split (default: what --utterances leaves, 47.5 %%)")
    parser.add_argument("--free-text", type=float, default=0.0,
                        help="share of train utterances speaking template-free word sequences (default 0)")
    args = parser.parse_args(args_in)
    try:
        info = make_corpus(
            args.root,
            args.utterances,
            args.seed,
            num_workers=args.workers,
            noise_snr_db=None if args.no_noise else (20.0, 40.0),
            show_progress=not args.quiet,
            overwrite=args.overwrite,
            voices=args.voices,
            train_utterances=args.train_utterances,
            free_text=args.free_text,
        )
    except (ValueError, OSError, EspeakError) as err:  # OSError: an unwritable root or a full disk
        print(f"lightning-amortized make-corpus: error: {err}", file=sys.stderr)
        return 2
    total = sum(split["utterances"] for split in info["splits"].values())
    print(
        f"{total} utterances, {info['hours']:.2f} h of audio in "
        f"{len(info['splits'])} splits under {args.root}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
