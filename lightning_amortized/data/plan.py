"""What the synthetic corpus holds: split sizes, speakers, and one rendering job per utterance.

Everything here is a pure function of ``(utterances, seed)``; the audio is rendered from
the jobs by :mod:`~lightning_amortized.data.render`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
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
SPLITS: tuple[str, ...] = ("train", "dev", "test", "test-other", *_UPDATE_SPLITS, *_UPDATE_TEST_SPLITS)

# Fractions of ``utterances``: dev, test, test-other, and each update's training and test
# part; the rest goes to train. With 8,000 utterances: train 3,800, dev 320, test and
# test-other 640 each, and per update 240 training + 280 test utterances (about 1,850
# words per update test split).
_DEV_FRACTION = 0.04
_TEST_FRACTION = 0.08
_TEST_OTHER_FRACTION = 0.08
_UPDATE_TRAIN_FRACTION = 0.03
_UPDATE_TEST_FRACTION = 0.035
_NEW_ENTITY_PATTERN = (True, True, False, True, False)  # 60 % new-entity requests

#: eSpeak NG English voices (accents) of train, dev and test speakers.
VOICES: tuple[str, ...] = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
#: Accents heard only in ``test-other`` (with the :data:`VOICES` there too).
OTHER_VOICES: tuple[str, ...] = ("en-029",)
#: Variants (timbres) heard only in ``test-other``: three of the six Klatt-synthesiser
#: variants and a dozen named ones. Every other human-sounding variant of the wheel's data
#: is in the train/dev/test pool.
OTHER_VARIANTS: tuple[str, ...] = (
    "klatt4", "klatt5", "klatt6", "Andrea", "Gene2", "aunty", "belinda", "edward2", "iven4",
    "linda", "mike2", "norbert", "shelby", "steph3", "zac",
)
#: Effect variants left out of every split: robotic, whispering, croaking, demonic and
#: pitch-shifted timbres. With them (generator 2.0.0) the base recipe's 3x256 LSTM stood
#: at 37.5 % dev WER / 14.6 % CER after 41 of its 60 epochs (5.6 % test WER on the corpus
#: before), the effect speakers worst (RicishayMax3 35 % CER, robosoft4 20 %).
EFFECT_VARIANTS: tuple[str, ...] = (
    "AnxiousAndy", "Demonic", "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "Tweaky",
    "UniRobot", "anikaRobot", "croak", "kaukovalta", "robosoft", "robosoft2", "robosoft3",
    "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "whisper", "whisperf",
)


@dataclass(frozen=True)
class VoiceSet:
    """Who speaks train, dev and test: variants, prosody ranges, frequency warps, speaker counts.

    Attributes:
        name: ``"core"`` or ``"wide"``.
        variants: ``None`` for every human-sounding variant (:func:`variant_pool`), else
            these (never any of :data:`OTHER_VARIANTS`).
        pitch, pitch_range, rate: inclusive ranges of the per-speaker base pitch (0-100),
            pitch range (0-100) and speaking rate (words/min).
        warp_rates: per-speaker frequency warp: the 22,050 Hz synthesis is resampled to
            16 kHz as if recorded at one of these rates, which scales every frequency
            (formants and pitch) by rate / 22,050 (vocal-tract length); the speaking rate
            is corrected so the tempo stays.
        speakers_per: utterances per train, dev, test and test-other speaker (before the caps).
        max_speakers: caps on the four speaker counts.
        accent_share: share of the ``train`` speakers given a synthetic accent (two to four
            of :data:`ACCENT_PROCESSES`); dev, test and test-other speakers never have one.
        formant_spread: every ``train`` speaker's formants 1-3 are scaled by independent
            factors drawn from ``1 +- formant_spread`` (vowel qualities move against each
            other, unlike the warp, which scales every frequency alike); 0: none.
    """

    name: str
    variants: tuple[str, ...] | None
    pitch: tuple[int, int]
    pitch_range: tuple[int, int]
    rate: tuple[int, int]
    warp_rates: tuple[int, ...]
    speakers_per: tuple[int, int, int, int]
    max_speakers: tuple[int, int, int, int]
    accent_share: float = 0.0
    formant_spread: float = 0.0


#: Synthetic accents: phonological processes common in varieties of English, each as eSpeak
#: NG voice-file phoneme replacements (``replace FLAGS FROM TO``; flags ``00`` everywhere,
#: ``01`` at the end of a word only). ``name: (slot, lines)``: processes of one slot are
#: alternatives for the same phonemes, and a speaker has at most one per slot. None of the
#: held-out accent's own replacement pairs (``en-029``: D->d, T->t[, U@->o@, @->a#, 3->a#,
#: N->n) is added by this pool (``tests/data`` checks it against the wheel's
#: ``lang/gmw/en-029``); three of them are heard in training anyway, from eSpeak's own
#: accents (``en-gb-x-rp``: @->a#, 3->a#; ``en-gb-x-gbclan``: N->n), and ``en-029`` has
#: its own phoneme table. Changing a process changes the corpus: record it in
#: :data:`ACCENTS_VERSION`.
ACCENT_PROCESSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "th-fronting": ("th", ("replace 00 T f", "replace 00 D v")),
    "th-alveolar": ("th", ("replace 00 T s", "replace 00 D z")),
    "h-dropping": ("h", ("replace 00 h NULL",)),
    "kit-fleece": ("kit", ("replace 00 I i:",)),
    "kit-dress": ("kit", ("replace 00 I e",)),
    "fleece-kit": ("kit", ("replace 00 i: I",)),
    "foot-goose": ("foot", ("replace 00 U u:",)),
    "trap-dress": ("trap", ("replace 00 a E",)),
    "trap-central": ("trap", ("replace 00 a a#",)),
    "strut-foot": ("strut", ("replace 00 V U",)),
    "face-monophthong": ("face", ("replace 00 eI e",)),
    "goat-monophthong": ("goat", ("replace 00 oU O:",)),
    "goat-close": ("goat", ("replace 00 oU o@",)),
    "price-monophthong": ("price", ("replace 00 aI A:",)),
    "price-rounded": ("price", ("replace 00 aI OI",)),
    "v-to-w": ("vw", ("replace 00 v w",)),
    "w-to-v": ("vw", ("replace 00 w v",)),
    "z-devoicing": ("z", ("replace 00 z s",)),
    "final-devoicing": ("final", ("replace 01 d t", "replace 01 b p", "replace 01 g k")),
    "l-vocalisation": ("l", ("replace 01 l w",)),
}


#: Version of :data:`ACCENT_PROCESSES`, part of the requested fields of a corpus with accents
#: (``corpus.json`` ``accents_version``): bump it when a process changes.
ACCENTS_VERSION = 1


def accent_lines(accent: tuple[str, ...]) -> tuple[str, ...]:
    """The voice-file lines of the :data:`ACCENT_PROCESSES` named in ``accent``, in order.

    Example:
        >>> accent_lines(("h-dropping", "z-devoicing"))
        ('replace 00 h NULL', 'replace 00 z s')
    """
    unknown = [a for a in accent if a not in ACCENT_PROCESSES]
    if unknown:
        raise ValueError(f"Unknown accent processes {unknown}; known: {sorted(ACCENT_PROCESSES)}.")
    return tuple(line for a in accent for line in ACCENT_PROCESSES[a][1])


def formant_lines(variant: str, percent: tuple[int, ...]) -> tuple[str, ...]:
    """Voice-file lines scaling formants ``1..len(percent)`` of ``variant`` by ``percent`` / 100.

    The variant's own ``formant`` line (frequency, height, width in percent of the voice's)
    is kept but for its frequency, which is multiplied; a variant without one starts at 100.

    Example:
        >>> formant_lines("m1", (110, 90))
        ('formant 1 107 100 100', 'formant 2 87 95 100')
    """
    from lightning_amortized.data.espeak import _loader_paths

    own: dict[int, list[str]] = {}
    if variant:
        text = (Path(_loader_paths()[1]) / "voices" / "!v" / variant).read_text(encoding="latin-1")
        for line in text.splitlines():
            tokens = line.split("//")[0].split()
            if len(tokens) >= 3 and tokens[0] == "formant":
                own[int(tokens[1])] = tokens[2:]
    lines = []
    for k, pct in enumerate(percent, start=1):
        rest = own.get(k, ["100", "100", "100"])
        lines.append(" ".join(["formant", str(k), str(round(int(rest[0]) * pct / 100)), *rest[1:]]))
    return tuple(lines)


def _draw_accent(rng: np.random.Generator) -> tuple[str, ...]:
    """Two to four processes from distinct slots of :data:`ACCENT_PROCESSES`, sorted."""
    slots = sorted({slot for slot, _ in ACCENT_PROCESSES.values()})
    chosen = rng.choice(len(slots), size=int(rng.integers(2, 5)), replace=False)
    picks = []
    for j in sorted(chosen):
        options = [name for name, (slot, _) in ACCENT_PROCESSES.items() if slot == slots[j]]
        picks.append(options[int(rng.integers(len(options)))])
    return tuple(sorted(picks))


#: The voice sets a corpus can be generated with. ``core`` (the recipes' default): the 13
#: numbered variants and the three first Klatt ones over seven accents, the prosody ranges
#: of generator 1.0.0 and a +-2.5 % warp; a 1.6 M-parameter LSTM learns it within the base
#: recipe's 45 CPU-minutes. ``wide``: all 67 human-sounding variants, wider prosody and a
#: +-7 % warp, for models that can take it (the base recipe's stood at 36 % dev WER after
#: 28 of 60 epochs). Both keep :data:`OTHER_VARIANTS` and :data:`OTHER_VOICES` for
#: ``test-other``.
VOICE_SETS: dict[str, VoiceSet] = {
    "core": VoiceSet(
        "core", tuple(f"m{i}" for i in range(1, 9)) + tuple(f"f{i}" for i in range(1, 6)) + ("klatt", "klatt2", "klatt3"),
        pitch=(30, 70), pitch_range=(25, 80), rate=(140, 195), warp_rates=(21500, 22050, 22500),
        speakers_per=(100, 800, 500, 500), max_speakers=(80, 10, 16, 16),
    ),
    "wide": VoiceSet(
        "wide", None, pitch=(20, 80), pitch_range=(15, 85), rate=(135, 210),
        warp_rates=(20500, 21000, 21500, 22050, 22500, 23000, 23500),
        speakers_per=(40, 400, 250, 250), max_speakers=(200, 20, 32, 32),
    ),
}
#: ``core-accents``: ``core`` with a synthetic accent for half of the training speakers, who
#: also speak the ``update-k`` training splits; dev, test, test-other and ``update-k-test``
#: speakers, and every other draw, as in ``core``.
VOICE_SETS["core-accents"] = replace(VOICE_SETS["core"], name="core-accents", accent_share=0.5)
#: ``core-formants``: ``core`` with every training speaker's formants 1-3 scaled apart by up
#: to +-10 % (vowel-quality variation); every other split and draw as in ``core``.
VOICE_SETS["core-formants"] = replace(VOICE_SETS["core"], name="core-formants", formant_spread=0.1)


def voice_set(name: str) -> VoiceSet:
    """The :class:`VoiceSet` called ``name``.

    Raises:
        ValueError: ``name`` is not a key of :data:`VOICE_SETS`.
    """
    if name not in VOICE_SETS:
        raise ValueError(f"Expected argument `voices` to be one of {sorted(VOICE_SETS)}, but got {name!r}.")
    return VOICE_SETS[name]

@dataclass(frozen=True)
class _Speaker:
    id: int
    voice: str
    variant: str
    pitch: int
    rate: int
    pitch_range: int
    warp_rate: int
    split: str
    accent: tuple[str, ...] = ()
    formants: tuple[int, ...] = ()


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
    warp_rate: int = 22050
    voice_lines: tuple[str, ...] = ()


def split_sizes(utterances: int, train_utterances: int | None = None) -> dict[str, int]:
    """Number of utterances per split for a corpus of ``utterances`` utterances.

    Dev gets 4 %, test and test-other 8 % each, each update 3 % in ``update-k`` and
    3.5 % in ``update-k-test`` (at least 3 and 2) and train the rest (47.5 %), or
    ``train_utterances`` where given: a larger training set with the same evaluation and
    update splits (its first utterances are those of the default-sized train split).

    Args:
        utterances: total number of utterances, at least :data:`MIN_UTTERANCES`.
        train_utterances: size of ``train`` instead of the remainder (at least 10), or
            ``None``.

    Returns:
        ``{split: count}`` over :data:`SPLITS`, summing to ``utterances`` (to
        ``utterances`` minus the remainder plus ``train_utterances`` where that is given).

    Raises:
        ValueError: if ``utterances`` is not an integer of at least :data:`MIN_UTTERANCES`,
            or ``train_utterances`` is neither ``None`` nor an integer of at least 10.

    Example::

        >>> sizes = split_sizes(8000)
        >>> sizes["train"], sizes["dev"], sizes["test"], sizes["test-other"], sizes["update-1"], sizes["update-1-test"]
        (3800, 320, 640, 640, 240, 280)
    """
    if isinstance(utterances, bool) or not isinstance(utterances, (int, np.integer)):
        raise ValueError(f"Expected argument `utterances` to be an int, but got {utterances!r}.")
    if utterances < MIN_UTTERANCES:
        raise ValueError(
            f"Expected argument `utterances` to be at least {MIN_UTTERANCES} (every one of the "
            f"{len(SPLITS)} splits needs a few utterances), but got {utterances}."
        )
    n = int(utterances)
    sizes = {
        "dev": max(2, round(_DEV_FRACTION * n)),
        "test": max(2, round(_TEST_FRACTION * n)),
        "test-other": max(2, round(_TEST_OTHER_FRACTION * n)),
    }
    upd_train = max(3, round(_UPDATE_TRAIN_FRACTION * n))
    upd_test = max(2, round(_UPDATE_TEST_FRACTION * n))
    for train_split, test_split in zip(_UPDATE_SPLITS, _UPDATE_TEST_SPLITS):
        sizes[train_split] = upd_train
        sizes[test_split] = upd_test
    sizes["train"] = n - sum(sizes.values())
    assert sizes["train"] >= 10, sizes
    if train_utterances is not None:
        if (
            isinstance(train_utterances, bool)
            or not isinstance(train_utterances, (int, np.integer))
            or train_utterances < 10
        ):
            raise ValueError(
                f"Expected argument `train_utterances` to be None or an int of at least 10, but got "
                f"{train_utterances!r}."
            )
        sizes["train"] = int(train_utterances)
    return {s: sizes[s] for s in SPLITS}


def _speaker_counts(utterances: int, voices: VoiceSet) -> dict[str, int]:
    homes = ("train", "dev", "test", "test-other")
    lows = (4, 2, 2, 2)
    return {
        h: int(np.clip(round(utterances / per), low, cap))
        for h, per, low, cap in zip(homes, voices.speakers_per, lows, voices.max_speakers)
    }


def variant_pool(held_out: bool) -> tuple[str, ...]:
    """The eSpeak NG variants of train/dev/test speakers, or of ``test-other`` speakers.

    Args:
        held_out: ``True`` for :data:`OTHER_VARIANTS`, ``False`` for every other
            human-sounding variant shipped in ``espeakng-loader``'s data (67:
            ``m1``..``m8``, ``f1``..``f5``, ``klatt``..``klatt3`` and named ones; not the
            :data:`EFFECT_VARIANTS`).

    Returns:
        Variant names, sorted.
    """
    from lightning_amortized.data.espeak import available_variants

    if held_out:
        return tuple(sorted(OTHER_VARIANTS))
    skip = set(OTHER_VARIANTS) | set(EFFECT_VARIANTS)
    return tuple(v for v in sorted(available_variants()) if v not in skip and " " not in v)


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("ascii"))


def _make_speakers(utterances: int, seed: int, voices: VoiceSet) -> dict[str, list[_Speaker]]:
    """Speakers per home split; every speaker has its own (voice, variant) pair.

    Train, dev and test draw disjoint pairs from :data:`VOICES` x the voice set's
    variants; test-other from (:data:`VOICES` + :data:`OTHER_VOICES`) x
    :data:`OTHER_VARIANTS`, so none of its variants (and not its extra accent) is heard in
    training.
    """
    rng = np.random.default_rng([seed, _split_code("speakers")])
    counts = _speaker_counts(utterances, voices)
    pool = voices.variants if voices.variants is not None else variant_pool(False)
    combos = [(v, var) for v in VOICES for var in pool]
    other_combos = [(v, var) for v in VOICES + OTHER_VOICES for var in variant_pool(True)]
    order = rng.permutation(len(combos))
    other_order = rng.permutation(len(other_combos))
    total = sum(counts.values())
    assert total - counts["test-other"] <= len(combos) and counts["test-other"] <= len(other_combos)
    ids = np.sort(rng.choice(np.arange(10, 10000), size=total, replace=False))
    ids = ids[rng.permutation(total)]
    speakers: dict[str, list[_Speaker]] = {}
    k = 0
    for split in ("train", "dev", "test", "test-other"):
        group = []
        for j in range(counts[split]):
            if split == "test-other":
                voice, variant = other_combos[other_order[j]]
            else:
                voice, variant = combos[order[k]]
            group.append(
                _Speaker(
                    id=int(ids[k]),
                    voice=voice,
                    variant=variant,
                    pitch=int(rng.integers(voices.pitch[0], voices.pitch[1] + 1)),
                    rate=int(rng.integers(voices.rate[0], voices.rate[1] + 1)),
                    pitch_range=int(rng.integers(voices.pitch_range[0], voices.pitch_range[1] + 1)),
                    warp_rate=int(rng.choice(voices.warp_rates)),
                    split=split,
                )
            )
            k += 1
        speakers[split] = sorted(group, key=lambda s: s.id)
    if voices.accent_share > 0:  # own stream: every other draw is the same as without accents
        accent_rng = np.random.default_rng([seed, _split_code("accents")])
        train = speakers["train"]
        count = int(voices.accent_share * len(train) + 0.5)
        picked = set(accent_rng.choice(len(train), size=count, replace=False).tolist())
        speakers["train"] = [replace(s, accent=_draw_accent(accent_rng)) if i in picked else s
                             for i, s in enumerate(train)]
    if voices.formant_spread > 0:  # own stream too
        formant_rng = np.random.default_rng([seed, _split_code("formants")])
        lo, hi = 1 - voices.formant_spread, 1 + voices.formant_spread
        speakers["train"] = [replace(s, formants=tuple(int(round(100 * formant_rng.uniform(lo, hi))) for _ in range(3)))
                             for s in speakers["train"]]
    return speakers


def _plan(
    root: Path,
    utterances: int,
    seed: int,
    snr_db: tuple[float, float] | None,
    voices: str = "core",
    train_utterances: int | None = None,
    free_text: float = 0.0,
) -> tuple[dict[str, list[_Speaker]], list[_Job], dict[str, dict[str, Any]]]:
    """Texts, speakers and paths of every utterance (cheap; no audio).

    ``free_text`` is the probability that a ``train`` utterance speaks a
    :func:`~lightning_amortized.data.templates.free_sentence` instead of its request; the
    draw has its own random stream, so every other utterance is the same for any value.
    """
    speakers = _make_speakers(utterances, seed, voice_set(voices))
    # once per speaker, not per utterance (formant_lines reads the variant's file)
    voice_lines = {s.id: accent_lines(s.accent) + (formant_lines(s.variant, s.formants) if s.formants else ())
                   for group in speakers.values() for s in group}
    sizes = split_sizes(utterances, train_utterances)
    homes = {s: "train" if s == "train" or s in _UPDATE_SPLITS else s for s in SPLITS}  # test-other: its own
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
            request = templates.sample_request(
                rng, update if is_new else None, held_out=split == "test-other"
            )
            if free_text and split == "train":
                free_rng = np.random.default_rng([seed, code, index, 1])
                if free_rng.random() < free_text:
                    request = templates.Request("general", templates.free_sentence(free_rng), {}, False)
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
                    # the warp changes the duration by 22,050 / warp_rate: compensated here
                    rate=int(np.clip(round(spk.rate * jitter * 22050 / spk.warp_rate), 80, 450)),
                    pitch=int(np.clip(spk.pitch + rng.integers(-3, 4), 0, 100)),
                    pitch_range=spk.pitch_range,
                    seed=int(rng.integers(2**31 - 1)),
                    snr_db=snr_db,
                    warp_rate=spk.warp_rate,
                    voice_lines=voice_lines[spk.id],
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
