"""Scoring: per-utterance errors agree with torchmetrics, bootstrap intervals behave, entity accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from torchmetrics.text import WordErrorRate

from lightning_amortized.scoring import bootstrap_wer, bootstrap_wer_difference, entity_accuracy, utterance_errors


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


def test_entity_accuracy_needs_the_whole_name_in_order() -> None:
    hyps = ["FIND A HOTEL IN CHATEAUROUX", "SCORE OF THE DOLPHIN SQUAD GAME", "CALL ANNA MARIA", "PLAY JAZZ"]
    ents = [["CHATEAUROUX"], ["THE DOLPHIN SQUAD"], ["MARIA ANNA"], []]
    assert entity_accuracy(hyps, ents) == (2, 3)
    assert entity_accuracy(["CHATEAUROUXS"], [["CHATEAUROUX"]]) == (0, 1)  # whole words only
