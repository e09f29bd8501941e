"""Scoring: per-utterance errors agree with torchmetrics, bootstrap intervals behave, entity accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from torchmetrics.text import WordErrorRate

from lightning_amortized.scoring import (
    bootstrap_wer,
    bootstrap_wer_difference,
    bootstrap_wer_relative,
    entity_accuracy,
    utterance_errors,
)


def test_corpus_wer_equals_torchmetrics() -> None:
    refs = ["SET A TIMER FOR TEN MINUTES", "PLAY MUSIC", "WHAT IS THE WEATHER IN PARIS", "CALL MOM"]
    hyps = ["SET A TIMER FOR TEN", "PLAY THE MUSIC", "WHAT IS WEATHER IN PARIS TODAY", ""]
    errors, words = utterance_errors(hyps, refs)
    assert errors == [1, 1, 2, 2] and words == [6, 2, 6, 2]
    wer, low, high = bootstrap_wer(errors, words, seed=0)
    assert wer == pytest.approx(float(WordErrorRate()(hyps, refs)))
    assert low <= wer <= high
    with pytest.raises(ValueError, match="as many"):
        utterance_errors(["A"], [])


def test_interval_narrows_with_more_utterances_and_covers_the_truth() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        words = rng.integers(3, 12, n)
        errors = rng.binomial(words, 0.1)
        wer, low, high = bootstrap_wer(errors, words, seed=1)
        assert low < 0.1 < high or abs(wer - 0.1) < 0.01
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # about 1 / sqrt(16) as wide


def test_paired_difference_resolves_a_small_consistent_gain() -> None:
    rng = np.random.default_rng(0)
    words = rng.integers(5, 10, 400)
    a = rng.binomial(words, 0.15)
    b = np.maximum(a - (rng.random(400) < 0.1), 0)  # B fixes an error in 10 % of the utterances
    diff, low, high = bootstrap_wer_difference(a, b, words, seed=0)
    assert diff > 0 and low > 0  # resolved although the per-system intervals overlap
    _, lo_a, hi_a = bootstrap_wer(a, words)
    _, lo_b, hi_b = bootstrap_wer(b, words)
    assert lo_a < hi_b


def test_relative_interval_carries_the_reference_uncertainty() -> None:
    """The ratio is bootstrapped per resample: wider than the difference interval divided by B's WER
    when the systems differ much, and it agrees with a direct computation on the same draws."""
    rng = np.random.default_rng(1)
    words = rng.integers(4, 12, 375)
    b = rng.binomial(words, 0.12)
    a = b + rng.binomial(words, 0.06)  # A about 50 % worse
    rel, low, high = bootstrap_wer_relative(a, b, words, seed=0)
    assert rel == pytest.approx(a.sum() / b.sum() - 1)
    _, dlow, dhigh = bootstrap_wer_difference(a, b, words, seed=0)
    ref = b.sum() / words.sum()
    assert high - low > 1.05 * (dhigh - dlow) / ref  # the rescaled difference interval is too narrow
    idx = np.random.default_rng(0).integers(0, len(words), size=(1000, len(words)))
    direct = a[idx].sum(1) / b[idx].sum(1) - 1
    assert (low, high) == pytest.approx((np.quantile(direct, 0.025), np.quantile(direct, 0.975)))
    assert all(np.isnan(bootstrap_wer_relative([1, 0], [0, 0], [3, 3])))  # B makes no error: undefined
    with pytest.raises(ValueError, match="one length"):
        bootstrap_wer_relative([1], [1, 2], [3, 3])


def test_entity_accuracy_needs_the_whole_name_in_order() -> None:
    hyps = ["FIND A HOTEL IN CHATEAUROUX", "SCORE OF THE DOLPHIN SQUAD GAME", "CALL ANNA MARIA", "PLAY JAZZ"]
    ents = [["CHATEAUROUX"], ["THE DOLPHIN SQUAD"], ["MARIA ANNA"], []]
    assert entity_accuracy(hyps, ents) == (2, 3)
    assert entity_accuracy(["CHATEAUROUXS"], [["CHATEAUROUX"]]) == (0, 1)  # whole words only


def test_bootstrap_arguments_are_checked_alike() -> None:
    args = ([1, 2], [1, 1], [5, 5])
    for call in (lambda **kw: bootstrap_wer([1], [2], **kw), lambda **kw: bootstrap_wer_difference(*args, **kw),
                 lambda **kw: bootstrap_wer_relative(*args, **kw)):
        with pytest.raises(ValueError, match="`resamples` to be an int >= 1"):
            call(resamples=0)
        with pytest.raises(ValueError, match=r"`level` in \(0, 1\)"):
            call(level=1.5)
    # B's only error in one utterance of 200: resamples may all miss it; the point estimate stands
    rel, low, high = bootstrap_wer_relative([1] * 200, [1] + [0] * 199, [5] * 200, resamples=1, seed=3)
    assert rel == 199.0 and (np.isnan(low) or low <= high)
