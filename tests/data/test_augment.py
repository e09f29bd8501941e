"""Waveform augmentation: each step does what it says, draws are seeded per batch, training only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_amortized.data import LibriSpeechDataModule, SpeechCollator, WaveAugment
from lightning_amortized.data.augment import simulated_rir

OFF = dict(p_speed=0.0, p_reverb=0.0, p_noise=0.0, p_telephone=0.0)


def _tone(seconds: float = 1.0, hz: float = 440.0, sr: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return 0.1 * torch.sin(2 * torch.pi * hz * t)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_everything_off_is_the_identity_and_padding_stays_zero() -> None:
    x = torch.stack([_tone(), torch.cat([_tone(0.5), torch.zeros(8000)])])
    y, n = WaveAugment(**OFF)(x, torch.tensor([16000, 8000]), _gen())
    assert torch.equal(y, x) and n.tolist() == [16000, 8000]


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_changes_length_and_pitch(speed: float) -> None:
    aug = WaveAugment(**{**OFF, "p_speed": 1.0}, speeds=(speed,))
    y, n = aug(_tone()[None], torch.tensor([16000]), _gen())
    assert int(n[0]) == pytest.approx(16000 / speed, abs=2)
    spectrum = torch.fft.rfft(y[0, : int(n[0])]).abs()
    peak_hz = float(spectrum.argmax()) * 16000 / int(n[0])
    assert peak_hz == pytest.approx(440 * speed, rel=0.01)  # Kaldi-style: tempo and pitch together


def test_noise_reaches_the_drawn_snr_and_babble_uses_the_other_utterances() -> None:
    x = torch.stack([_tone(), _tone(hz=1000.0)])
    for kind in ("white", "brown", "babble"):
        aug = WaveAugment(**{**OFF, "p_noise": 1.0}, snr_db=(10.0, 10.0), noise_kinds={kind: 1.0})
        y, _ = aug(x, torch.tensor([16000, 16000]), _gen())
        noise = y[0] - x[0]
        snr = 10 * torch.log10(x[0].pow(2).mean() / noise.pow(2).mean())
        assert float(snr) == pytest.approx(10.0, abs=0.01), kind
    spectrum = torch.fft.rfft(noise).abs()  # the babble of utterance 0 is utterance 1: a 1 kHz tone
    assert float(spectrum.argmax()) == pytest.approx(1000.0, abs=1.0)


def test_reverb_keeps_the_level_and_the_telephone_band_cuts_lows_and_highs() -> None:
    h = simulated_rir(0.5, generator=_gen())
    assert h.numel() == 8000 and float(h[0]) == 1.0 and float(h[1:40].abs().max()) == 0.0
    x = _tone()[None]
    y, _ = WaveAugment(**{**OFF, "p_reverb": 1.0})(x, torch.tensor([16000]), _gen())
    assert float(y.pow(2).mean()) == pytest.approx(float(x.pow(2).mean()), rel=1e-3)
    tele = WaveAugment(**{**OFF, "p_telephone": 1.0})
    for hz, passes in ((100.0, False), (1000.0, True), (7000.0, False)):
        y, _ = tele(_tone(hz=hz)[None], torch.tensor([16000]), _gen())
        ratio = float(y[0, 4000:].pow(2).mean() / _tone(hz=hz)[4000:].pow(2).mean())
        assert (ratio > 0.5) == passes, hz


def test_draws_follow_the_generator() -> None:
    aug = WaveAugment(p_reverb=0.5, p_noise=0.5, p_telephone=0.5)
    x, n = torch.randn(4, 16000) * 0.1, torch.full((4,), 16000)
    a, b, c = (aug(x, n, _gen(s)) for s in (1, 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].tolist() != c[1].tolist() or not torch.equal(a[0], c[0])  # another seed, other draws


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="p_noise"):
        WaveAugment(p_noise=1.5)
    with pytest.raises(ValueError, match="speeds"):
        WaveAugment(speeds=())
    with pytest.raises(ValueError, match="noise_kinds"):
        WaveAugment(noise_kinds={"pink": 1.0})
    with pytest.raises(ValueError, match="snr_db"):
        WaveAugment(snr_db=(20.0, 5.0))
    with pytest.raises(ValueError, match=r"`speeds` to hold factors in \[0.5, 2\]"):
        WaveAugment(speeds=(0.001, 1.0))
    for bad in (0, -2, True, 2.5):
        with pytest.raises(ValueError, match="`babble_talkers` to be an int >= 1"):
            WaveAugment(babble_talkers=bad)
    with pytest.raises(ValueError, match="`sample_rate`"):
        WaveAugment(sample_rate=16.0)


def test_datamodule_augments_training_batches_only(tmp_path: Path) -> None:
    from tests.conftest import write_fake_layout

    write_fake_layout(tmp_path, speakers=2, utts=4)
    write_fake_layout(tmp_path, split="dev", speakers=1, utts=2)
    dm = LibriSpeechDataModule(str(tmp_path), ["train"], ["dev"], [], max_batch_seconds=3.0, spec_augment=False,
                               cache_features=True, augment=WaveAugment(speeds=(1.1,)))
    dm.prepare_data()
    dm.setup("fit")
    assert "wav" in dm.datasets["train"][0] and "feats" in dm.datasets["val"][0]
    one, two = list(dm.train_dataloader()), list(dm.train_dataloader())
    for a, b in zip(one, two):  # seeded per batch: the same draws in every pass over epoch 0
        assert a["ids"] == b["ids"] and torch.equal(a["feats"], b["feats"])
    plain = LibriSpeechDataModule(str(tmp_path), ["train"], ["dev"], [], max_batch_seconds=3.0, spec_augment=False)
    plain.setup("fit")
    base = {tuple(b["ids"]): b for b in plain.train_dataloader()}
    for b in one:  # 10 % faster speech: about 10 % fewer feature frames
        ref = base[tuple(b["ids"])]
        assert (b["feat_lengths"].float() / ref["feat_lengths"].float() - 1 / 1.1).abs().max() < 0.02
    val = next(iter(dm.val_dataloader()))
    ref_val = next(iter(plain.val_dataloader()))
    assert torch.equal(val["feats"], ref_val["feats"])  # validation untouched
    with pytest.raises(ValueError, match="needs waveforms"):
        SpeechCollator(dm.features, augment=WaveAugment())([dm.datasets["val"][0]])


def test_speed_perturbation_keeps_batches_under_the_cap(tmp_path: Path) -> None:
    """Batches were cut on the manifest durations; at speed 0.9 they held up to 11 % more audio than the cap."""
    from tests.conftest import write_fake_layout

    write_fake_layout(tmp_path, speakers=3, utts=4)
    cap = 3.0
    dm = LibriSpeechDataModule(str(tmp_path), ["train"], [], [], max_batch_seconds=cap, spec_augment=False,
                               augment=WaveAugment(speeds=(0.9,), p_speed=1.0, p_reverb=0, p_noise=0, p_telephone=0))
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["ids"]) for b in batches) == 12
    for b in batches:
        if len(b["ids"]) > 1:  # padded seconds after the slow-down (10 ms feature hop)
            assert len(b["ids"]) * (int(b["feat_lengths"].max()) - 1) * 0.01 <= cap


def test_the_telephone_band_does_not_clip_and_needs_its_band_below_nyquist() -> None:
    """lfilter clamped at +-1 (only this step clipped); at 6 kHz audio its 3.4 kHz low-pass returned NaN."""
    t = torch.arange(16000) / 16000
    loud = 1.5 * torch.sin(2 * torch.pi * 1000 * t)
    out = WaveAugment(p_telephone=1.0)._telephone(loud)
    assert out.abs().max() > 1.4 and int((out.abs() == 1.0).sum()) == 0
    with pytest.raises(ValueError, match="above the Nyquist frequency of 6000 Hz"):
        WaveAugment(sample_rate=6000)
    assert WaveAugment(sample_rate=6000, p_telephone=0.0).sample_rate == 6000
