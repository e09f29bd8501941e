"""Generate a synthetic speech corpus in LibriSpeech's directory layout.

Assistant-style requests and general sentences (:mod:`~lightning_amortized.data.templates`)
are spoken by eSpeak NG voice variants (:mod:`~lightning_amortized.data.espeak`), resampled
to 16 kHz, given light noise, gain and silence, and written as::

    <root>/corpus.json
    <root>/<split>/slu.jsonl
    <root>/<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt
    <root>/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt:04d>.flac

Splits are ``train``, ``dev``, ``test`` (three disjoint speaker sets), ``update-1`` ...
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
import functools
import json
import math
import multiprocessing
import os
import shutil
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lightning_amortized.data import templates
from lightning_amortized.data.espeak import ESPEAK_SAMPLE_RATE, EspeakSynthesizer

__all__ = [
    "FORMAT_VERSION",
    "GENERATOR_VERSION",
    "MIN_UTTERANCES",
    "SAMPLE_RATE",
    "SPLITS",
    "main",
    "make_corpus",
    "split_sizes",
]

#: Version of the ``corpus.json`` / directory format.
FORMAT_VERSION = 1
#: Version of the generator; a change means different audio or texts for the same seed.
GENERATOR_VERSION = "1.0.0"
#: Sample rate of the written FLAC files, in Hz.
SAMPLE_RATE = 16000
#: Smallest accepted ``utterances`` (each update split still gets a handful).
MIN_UTTERANCES = 50

_UPDATE_SPLITS = tuple(f"update-{k}" for k in range(1, templates.NUM_UPDATES + 1))
_UPDATE_TEST_SPLITS = tuple(f"{s}-test" for s in _UPDATE_SPLITS)
#: All split names, in generation order.
SPLITS: tuple[str, ...] = ("train", "dev", "test", *_UPDATE_SPLITS, *_UPDATE_TEST_SPLITS)

# Fractions of ``utterances``: dev, test, and each update (train + test part); the rest
# goes to train. With 4,000 utterances: train 2,560, dev 200, test 240 and per update
# 150 training + 50 test utterances.
_DEV_FRACTION = 0.05
_TEST_FRACTION = 0.06
_UPDATE_FRACTION = 0.05
_UPDATE_TRAIN_SHARE = 0.75
_NEW_ENTITY_PATTERN = (True, True, False, True, False)  # 60 % new-entity requests

_IN_PROGRESS = ".make-corpus-in-progress"  # lets a rerun clean up after an interruption

_VOICES = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
_VARIANTS = tuple(f"m{i}" for i in range(1, 9)) + tuple(f"f{i}" for i in range(1, 6))


@dataclass(frozen=True)
class _Speaker:
    id: int
    voice: str
    variant: str
    pitch: int
    rate: int
    pitch_range: int
    split: str


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to render one utterance (picklable)."""

    id: str
    split: str
    index: int
    path: str
    text: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    seed: int
    snr_db: tuple[float, float] | None


def split_sizes(utterances: int) -> dict[str, int]:
    """Number of utterances per split for a corpus of ``utterances`` utterances.

    Dev gets about 5 %, test about 6 %, each update about 5 % (three quarters in
    ``update-k``, one quarter in ``update-k-test``, at least 3 and 2) and train the rest.

    Args:
        utterances: total number of utterances, at least :data:`MIN_UTTERANCES`.

    Returns:
        ``{split: count}`` over :data:`SPLITS`, summing to ``utterances``.

    Raises:
        ValueError: if ``utterances`` is not an integer of at least :data:`MIN_UTTERANCES`.

    Example::

        >>> sizes = split_sizes(4000)
        >>> sizes["train"], sizes["dev"], sizes["test"], sizes["update-1"], sizes["update-1-test"]
        (2560, 200, 240, 150, 50)
    """
    if isinstance(utterances, bool) or not isinstance(utterances, (int, np.integer)):
        raise ValueError(f"Expected argument `utterances` to be an int, but got {utterances!r}.")
    if utterances < MIN_UTTERANCES:
        raise ValueError(
            f"Expected argument `utterances` to be at least {MIN_UTTERANCES} (every one of the "
            f"{len(SPLITS)} splits needs a few utterances), but got {utterances}."
        )
    n = int(utterances)
    sizes = {"dev": max(2, round(_DEV_FRACTION * n)), "test": max(2, round(_TEST_FRACTION * n))}
    per_update = max(5, round(_UPDATE_FRACTION * n))
    upd_train = max(3, round(_UPDATE_TRAIN_SHARE * per_update))
    upd_test = max(2, per_update - upd_train)
    for train_split, test_split in zip(_UPDATE_SPLITS, _UPDATE_TEST_SPLITS):
        sizes[train_split] = upd_train
        sizes[test_split] = upd_test
    sizes["train"] = n - sum(sizes.values())
    assert sizes["train"] >= 10, sizes
    return {s: sizes[s] for s in SPLITS}


def _speaker_counts(utterances: int) -> dict[str, int]:
    return {
        "train": int(np.clip(round(utterances / 80), 4, 80)),
        "dev": int(np.clip(round(utterances / 600), 2, 10)),
        "test": int(np.clip(round(utterances / 500), 2, 12)),
    }


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("ascii"))


def _make_speakers(utterances: int, seed: int) -> dict[str, list[_Speaker]]:
    """Speakers per home split; every speaker has its own (voice, variant) pair."""
    rng = np.random.default_rng([seed, _split_code("speakers")])
    counts = _speaker_counts(utterances)
    combos = [(v, var) for v in _VOICES for var in _VARIANTS]
    order = rng.permutation(len(combos))
    total = sum(counts.values())
    assert total <= len(combos)
    ids = np.sort(rng.choice(np.arange(10, 10000), size=total, replace=False))
    ids = ids[rng.permutation(total)]
    speakers: dict[str, list[_Speaker]] = {}
    k = 0
    for split in ("train", "dev", "test"):
        group = []
        for _ in range(counts[split]):
            voice, variant = combos[order[k]]
            group.append(
                _Speaker(
                    id=int(ids[k]),
                    voice=voice,
                    variant=variant,
                    pitch=int(rng.integers(30, 71)),
                    rate=int(rng.integers(140, 196)),
                    pitch_range=int(rng.integers(25, 81)),
                    split=split,
                )
            )
            k += 1
        speakers[split] = sorted(group, key=lambda s: s.id)
    return speakers


def _plan(
    root: Path, utterances: int, seed: int, snr_db: tuple[float, float] | None
) -> tuple[dict[str, list[_Speaker]], list[_Job], dict[str, dict[str, Any]]]:
    """Texts, speakers and paths of every utterance (cheap; no audio)."""
    speakers = _make_speakers(utterances, seed)
    sizes = split_sizes(utterances)
    homes = {s: "train" if s == "train" or s in _UPDATE_SPLITS else s for s in SPLITS}
    homes.update({s: "test" for s in _UPDATE_TEST_SPLITS})
    # One chapter per (speaker, split), unique over the corpus so ids never collide.
    n_chapters = sum(len(speakers[homes[s]]) for s in SPLITS)
    chapter_rng = np.random.default_rng([seed, _split_code("chapters")])
    all_chapters = chapter_rng.choice(np.arange(1000, 300000), size=n_chapters, replace=False)
    jobs: list[_Job] = []
    labels: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        group = speakers[homes[split]]
        chapters, all_chapters = all_chapters[: len(group)], all_chapters[len(group) :]
        update = None
        if split.startswith("update-"):
            update = int(split.split("-")[1])
        code = _split_code(split)
        next_utt = [0] * len(group)
        for index in range(sizes[split]):
            rng = np.random.default_rng([seed, code, index, 0])
            is_new = update is not None and _NEW_ENTITY_PATTERN[index % 5]
            request = templates.sample_request(rng, update if is_new else None)
            g = index % len(group)
            spk, chapter = group[g], int(chapters[g])
            utt_id = f"{spk.id}-{chapter}-{next_utt[g]:04d}"
            next_utt[g] += 1
            path = root / split / str(spk.id) / str(chapter) / f"{utt_id}.flac"
            jitter = rng.uniform(0.92, 1.08)
            jobs.append(
                _Job(
                    id=utt_id,
                    split=split,
                    index=index,
                    path=str(path),
                    text=request.text,
                    voice=f"{spk.voice}+{spk.variant}",
                    rate=int(np.clip(round(spk.rate * jitter), 80, 450)),
                    pitch=int(np.clip(spk.pitch + rng.integers(-3, 4), 0, 100)),
                    pitch_range=spk.pitch_range,
                    seed=int(rng.integers(2**31 - 1)),
                    snr_db=snr_db,
                )
            )
            labels[utt_id] = {
                "id": utt_id,
                "intent": request.intent,
                "slots": dict(request.slots),
                "text": request.text,
                "entities_new": bool(request.entities_new),
            }
    return speakers, jobs, labels


# ---------------------------------------------------------------------------------
# Audio rendering (runs in worker processes).
# ---------------------------------------------------------------------------------
_TTS: EspeakSynthesizer | None = None
_GCD = math.gcd(SAMPLE_RATE, ESPEAK_SAMPLE_RATE)
_UP, _DOWN = SAMPLE_RATE // _GCD, ESPEAK_SAMPLE_RATE // _GCD  # 320 / 441


@functools.lru_cache(maxsize=1)
def _resampling_filter() -> np.ndarray:
    """scipy's default ``resample_poly`` low-pass (Kaiser, beta 5), designed once."""
    from scipy.signal import firwin

    half_len = 10 * max(_UP, _DOWN)
    return firwin(2 * half_len + 1, 1.0 / max(_UP, _DOWN), window=("kaiser", 5.0))


def _init_worker() -> None:
    global _TTS  # noqa: PLW0603 - one synthesiser per worker process, by design
    _TTS = EspeakSynthesizer()


def _render(job: _Job) -> tuple[str, str, float]:
    """Synthesise, post-process and write one utterance; returns (split, id, seconds)."""
    import soundfile as sf
    from scipy.signal import lfilter, resample_poly

    tts = _TTS if _TTS is not None else EspeakSynthesizer()
    rng = np.random.default_rng([job.seed, 1])
    # Lower case: eSpeak NG spells short upper-case words as acronyms ("US" -> "U S").
    speech = tts.synthesize(
        job.text.lower(), job.voice, rate=job.rate, pitch=job.pitch, pitch_range=job.pitch_range,
        seed=job.seed,
    ).astype(np.float64)
    speech = resample_poly(speech, _UP, _DOWN, window=_resampling_filter())
    lead = int(rng.uniform(0.05, 0.35) * SAMPLE_RATE)
    trail = int(rng.uniform(0.05, 0.35) * SAMPLE_RATE)
    speech = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    peak = float(np.max(np.abs(speech)))
    if peak > 0:
        speech *= 10 ** (rng.uniform(-10.0, -2.0) / 20) / peak  # peak at -10..-2 dBFS
    if job.snr_db is not None:
        active = speech[np.abs(speech) > 1e-4]
        power = float(np.mean(active**2)) if active.size else 1e-8
        snr = rng.uniform(*job.snr_db)
        noise = rng.standard_normal(speech.shape[0])
        if rng.random() < 0.5:  # brownish (leaky-integrated) noise half of the time
            noise = lfilter([1.0], [1.0, -0.98], noise)
        noise *= np.sqrt(power / 10 ** (snr / 10) / max(float(np.mean(noise**2)), 1e-12))
        speech = speech + noise
    pcm = np.clip(np.round(speech * 32767.0), -32768, 32767).astype(np.int16)
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return job.split, job.id, pcm.shape[0] / SAMPLE_RATE


# ---------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------
def _check_args(
    utterances: int, seed: int, num_workers: int | None, noise_snr_db: Any
) -> tuple[int, tuple[float, float] | None]:
    split_sizes(utterances)  # validates `utterances`
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


def _existing(root: Path, utterances: int, seed: int, snr: tuple[float, float] | None) -> dict | None:
    """The manifest of a finished identical corpus under ``root``, else ``None``."""
    manifest = root / "corpus.json"
    if not manifest.is_file():
        return None
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{manifest} is not valid JSON ({err}); it describes a different corpus or a "
            "damaged one. Use another root or pass `overwrite=True` (`--overwrite`)."
        ) from None
    same = (
        info.get("format_version") == FORMAT_VERSION
        and info.get("generator_version") == GENERATOR_VERSION
        and info.get("seed") == seed
        and info.get("utterances") == utterances
        and info.get("noise_snr_db") == (list(snr) if snr is not None else None)
    )
    if not same:
        raise ValueError(
            f"{manifest} describes a different corpus (seed={info.get('seed')}, "
            f"utterances={info.get('utterances')}, noise_snr_db={info.get('noise_snr_db')}, "
            f"generator_version={info.get('generator_version')}) than requested (seed={seed}, "
            f"utterances={utterances}, noise_snr_db={list(snr) if snr else None}, generator_version="
            f"{GENERATOR_VERSION}). Use another root or pass `overwrite=True` (`--overwrite`)."
        )
    return info


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


def _iter_rendered(
    jobs: Sequence[_Job], num_workers: int
) -> Iterable[tuple[str, str, float]]:
    if num_workers == 1:
        _init_worker()
        yield from map(_render, jobs)
        return
    # Fork where available: spawned workers would re-import the package (and with it
    # torch and Lightning, seconds per worker). Workers only use numpy, scipy,
    # soundfile and their own eSpeak NG, none of which shares state with the parent.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(num_workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_render, jobs, chunksize=16)


def make_corpus(
    root: str | Path,
    utterances: int = 4000,
    seed: int = 0,
    *,
    num_workers: int | None = None,
    noise_snr_db: tuple[float, float] | None = (20.0, 40.0),
    show_progress: bool = True,
    overwrite: bool = False,
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

    Returns:
        The manifest written to ``root/corpus.json``: ``format_version``, ``seed``,
        ``utterances``, ``sample_rate`` (Hz), ``splits`` (per split ``utterances``,
        ``speakers`` ids, ``hours`` of audio, ``new_entity_utterances``), ``speakers``
        (per id ``voice``, ``variant``, ``pitch``, ``rate`` in words/min,
        ``pitch_range``, ``split``), ``entities`` (``base`` and ``update-k`` lists by
        slot type) and ``generator_version``.

    Raises:
        ValueError: on bad arguments, or if ``root`` holds a different corpus (or
            split folders this function did not write) and ``overwrite`` is false.
        EspeakError: if eSpeak NG cannot be loaded.
    """
    num_workers, snr = _check_args(utterances, seed, num_workers, noise_snr_db)
    root = Path(root)
    utterances, seed = int(utterances), int(seed)
    manifest_path = root / "corpus.json"
    speakers, jobs, labels = _plan(root, utterances, seed, snr)
    try:
        info = _existing(root, utterances, seed, snr)
    except ValueError:
        if not overwrite:
            raise
        info = None
    if info is not None and all(Path(j.path).is_file() for j in jobs):
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
        "hours": round(sum(seconds.values()) / 3600.0, 6),
        "splits": splits,
        "speakers": {
            str(s.id): {k: v for k, v in asdict(s).items() if k != "id"}
            for group in speakers.values()
            for s in group
        },
        "entities": entities,
        "update_themes": {
            f"update-{k + 1}": theme for k, theme in enumerate(templates.UPDATE_THEMES)
        },
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
    parser.add_argument("--utterances", type=int, default=4000, help="total utterances (default 4000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default min(2, CPU count))")
    parser.add_argument("--no-noise", action="store_true", help="do not add background noise")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different corpus already in ROOT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
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
        )
    except ValueError as err:
        print(f"lightning-amortized make-corpus: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{info['utterances']} utterances, {info['hours']:.2f} h of audio in "
        f"{len(info['splits'])} splits under {args.root}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
