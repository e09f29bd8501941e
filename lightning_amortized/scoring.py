"""Scoring transcripts: word errors per utterance, bootstrap confidence intervals, entity accuracy.

A corpus WER is ``sum(errors) / sum(reference words)`` over utterances. Its uncertainty
comes from which utterances were drawn: :func:`bootstrap_wer` resamples utterances with
replacement (Bisani and Ney, 2004) and reports a percentile interval, so two systems
evaluated on the same few hundred utterances can be told apart only when their intervals
(or, better, the interval of their paired difference, :func:`bootstrap_wer_difference`, or
of their ratio, :func:`bootstrap_wer_relative`) say so. :func:`entity_accuracy` counts the named entities of a request (the slot values of
the synthetic corpus's ``slu.jsonl``) that a transcript contains word for word.

Example:
    >>> errors, words = utterance_errors(["SET A TIMER", "PLAY MUSIC"], ["SET THE TIMER", "PLAY MUSIC"])
    >>> errors, words
    ([1, 0], [3, 2])
    >>> wer, low, high = bootstrap_wer(errors, words, resamples=200, seed=0)
    >>> wer, 0.0 <= low <= wer <= high <= 1.0
    (0.2, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import jiwer
import numpy as np

__all__ = ["bootstrap_wer", "bootstrap_wer_difference", "bootstrap_wer_relative", "entity_accuracy", "utterance_errors"]


def utterance_errors(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[int], list[int]]:
    """Word errors (substitutions + deletions + insertions) and reference words, per utterance.

    Args:
        hypotheses: Transcripts, one per utterance.
        references: Reference transcripts, same order (an empty reference counts 0 words).

    Returns:
        ``(errors, words)``, two lists of ``len(references)`` integers.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"Expected as many hypotheses as references, but got {len(hypotheses)} and {len(references)}.")
    errors, words = [], []
    for hyp, ref in zip(hypotheses, references):
        ref_words, hyp_words = ref.split(), hyp.split()
        if not ref_words:
            errors.append(len(hyp_words))
        elif not hyp_words:
            errors.append(len(ref_words))
        else:
            out = jiwer.process_words(ref, hyp)
            errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(len(ref_words))
    return errors, words


def _check_bootstrap(resamples: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"Expected argument `resamples` to be an int >= 1, but got {resamples!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"Expected argument `level` in (0, 1), but got {level}.")


def _resample_rates(errors: np.ndarray, words: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(words), size=(resamples, len(words)))
    return idx, errors[idx].sum(1) / np.maximum(words[idx].sum(1), 1)


def bootstrap_wer(
    errors: Sequence[int], words: Sequence[int], resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Corpus WER and its bootstrap percentile interval over utterances.

    Args:
        errors: Word errors per utterance (:func:`utterance_errors`).
        words: Reference words per utterance.
        resamples: Bootstrap resamples (1,000 resolves a 95 % interval to about 0.1 WER points).
        level: Coverage of the interval.
        seed: Seed of the resampling.

    Returns:
        ``(wer, low, high)`` as fractions.

    Raises:
        ValueError: empty input, lengths that differ, or ``level`` outside ``(0, 1)``.
    """
    e, w = np.asarray(errors, dtype=np.float64), np.asarray(words, dtype=np.float64)
    if e.shape != w.shape or e.size == 0:
        raise ValueError(f"Expected non-empty `errors` and `words` of one length, but got {e.size} and {w.size}.")
    _check_bootstrap(resamples, level)
    _, rates = _resample_rates(e, w, resamples, seed)
    tail = (1.0 - level) / 2
    return float(e.sum() / max(w.sum(), 1.0)), float(np.quantile(rates, tail)), float(np.quantile(rates, 1 - tail))


def _paired_rates(
    errors_a: Sequence[float], errors_b: Sequence[float], words: Sequence[int], resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both systems' errors, the words, and their WERs on the same ``resamples`` draws of utterances."""
    a, b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    w = np.asarray(words, dtype=np.float64)
    if not (a.shape == b.shape == w.shape) or a.size == 0:
        raise ValueError(f"Expected non-empty errors and words of one length, but got {a.size}, {b.size}, {w.size}.")
    idx, rates_a = _resample_rates(a, w, resamples, seed)
    rates_b = b[idx].sum(1) / np.maximum(w[idx].sum(1), 1)
    return a, b, rates_a, rates_b


def bootstrap_wer_difference(
    errors_a: Sequence[float],
    errors_b: Sequence[float],
    words: Sequence[int],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """WER of system A minus WER of system B on the same utterances, with a paired bootstrap interval.

    Both systems are scored on the same resampled utterances, so the interval reflects
    their difference and not the difficulty of the draw. An interval that excludes 0 means
    the difference is resolved at ``level``.

    Returns:
        ``(difference, low, high)`` as fractions.

    Raises:
        ValueError: empty input, lengths that differ, ``resamples < 1`` or ``level`` outside ``(0, 1)``.
    """
    _check_bootstrap(resamples, level)
    a, b, rates_a, rates_b = _paired_rates(errors_a, errors_b, words, resamples, seed)
    diff = rates_a - rates_b
    tail = (1.0 - level) / 2
    point = float((a.sum() - b.sum()) / max(float(np.sum(words)), 1.0))
    return point, float(np.quantile(diff, tail)), float(np.quantile(diff, 1 - tail))


def bootstrap_wer_relative(
    errors_a: Sequence[float],
    errors_b: Sequence[float],
    words: Sequence[int],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """WER of system A relative to system B, ``WER_A / WER_B - 1``, with a paired bootstrap interval.

    The ratio is taken on each resample, so the interval carries the uncertainty of B's WER
    as well (dividing the interval of the difference by B's WER would leave it out and come
    out too narrow when the systems differ much). Resamples where B makes no error are
    left out.

    Returns:
        ``(relative, low, high)`` as fractions (``0.05``: A has 5 % more word errors); ``nan``
        when B makes no error at all (bounds ``nan`` when no resample holds one of B's errors).

    Raises:
        ValueError: empty input, lengths that differ, ``resamples < 1`` or ``level`` outside ``(0, 1)``.

    Example:
        >>> rel, low, high = bootstrap_wer_relative([2, 1, 0, 1], [1, 1, 0, 1], [5, 4, 3, 4], resamples=200)
        >>> round(rel, 6), low <= rel <= high
        (0.333333, True)
    """
    _check_bootstrap(resamples, level)
    a, b, rates_a, rates_b = _paired_rates(errors_a, errors_b, words, resamples, seed)
    if b.sum() == 0:
        return math.nan, math.nan, math.nan
    ok = rates_b > 0
    point = float(a.sum() / b.sum() - 1.0)
    if not ok.any():  # B's few errors missed by every resample: no interval to give
        return point, math.nan, math.nan
    rel = rates_a[ok] / rates_b[ok] - 1.0
    tail = (1.0 - level) / 2
    return point, float(np.quantile(rel, tail)), float(np.quantile(rel, 1 - tail))


def entity_accuracy(hypotheses: Sequence[str], entities: Sequence[Iterable[str]]) -> tuple[int, int]:
    """Entity mentions that a transcript contains word for word, and all mentions.

    A mention (e.g. ``"THE DOLPHIN SQUAD"``) counts as transcribed when its words occur
    consecutively in the hypothesis (case-insensitive).

    Args:
        hypotheses: Transcripts, one per utterance.
        entities: Per utterance, its entity strings (slot values).

    Returns:
        ``(hits, mentions)``.

    Example:
        >>> entity_accuracy(["FIND A HOTEL IN CHATEAUROUX", "PLAY DOLPHIN SQUAD"],
        ...                 [["CHATEAUROUX"], ["THE DOLPHIN SQUAD"]])
        (1, 2)
    """
    if len(hypotheses) != len(entities):
        raise ValueError(f"Expected one entity list per hypothesis, but got {len(entities)} and {len(hypotheses)}.")
    hits = mentions = 0
    for hyp, values in zip(hypotheses, entities):
        padded = f" {' '.join(hyp.upper().split())} "
        for value in values:
            mentions += 1
            hits += f" {' '.join(value.upper().split())} " in padded
    return hits, mentions


def slot_values(slots: Mapping[str, str]) -> list[str]:
    """The entity strings of one request's slots (``{"city": "CHATEAUROUX"}`` -> ``["CHATEAUROUX"]``)."""
    return [v for v in slots.values() if isinstance(v, str) and v.strip()]
