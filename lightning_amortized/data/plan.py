"""What the synthetic corpus holds: split sizes, speakers, and one rendering job per utterance.

Everything here is a pure function of ``(utterances, seed)``; the audio is rendered from
the jobs by :mod:`~lightning_amortized.data.render`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_amortized.data import templates

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
