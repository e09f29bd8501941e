from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lightning_amortized.data.prepare import CorpusError, prepare_librispeech, read_manifest


def _first(root: Path, pattern: str) -> Path:
    return sorted((root / "train").rglob(pattern))[0]


def test_manifest_contents(fake_layout: Path) -> None:
    out = prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    utts = read_manifest(out["train"])
    assert len(utts) == 6
    u = [x for x in utts if x.id == "100-10-0001"][0]
    assert u.duration == pytest.approx(0.75)
    assert u.sample_rate == 16000 and u.speaker == "100"
    assert u.words.split()[0].isupper()


def test_idempotent_skip_and_rewrite_on_change(fake_layout: Path) -> None:
    m = prepare_librispeech(fake_layout, ["train"], fake_layout / "m")["train"]
    mtime = m.stat().st_mtime_ns
    prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    assert m.stat().st_mtime_ns == mtime  # skipped: nothing changed
    trans = _first(fake_layout, "*.trans.txt")
    trans.write_text(trans.read_text().replace("\n", " EXTRA\n", 1))
    prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    assert any(u.words.endswith("EXTRA") for u in read_manifest(m))


def test_unreadable_audio_named(fake_layout: Path) -> None:
    bad = _first(fake_layout, "*.flac")
    bad.write_bytes(b"not a flac file at all")
    with pytest.raises(CorpusError, match=f"Unreadable audio file .*{bad.name}"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")


def test_empty_audio_named(fake_layout: Path) -> None:
    bad = _first(fake_layout, "*.flac")
    bad.write_bytes(b"")
    with pytest.raises(CorpusError, match=f"Empty audio file .*{bad.name}"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")


def test_missing_transcript_line_named(fake_layout: Path) -> None:
    trans = _first(fake_layout, "*.trans.txt")
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join(lines[1:]) + "\n")
    missing = lines[0].split()[0]
    with pytest.raises(CorpusError, match=f"No transcript line for .*{missing}.flac"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")


def test_empty_transcript_named(fake_layout: Path) -> None:
    trans = _first(fake_layout, "*.trans.txt")
    lines = trans.read_text().splitlines()
    lines[0] = lines[0].split()[0] + "   "
    trans.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=f"Empty transcript .*{trans.name}:1"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")


def test_wrong_sample_rate_refused_or_resampled(fake_layout: Path) -> None:
    bad = _first(fake_layout, "*.flac")
    sf.write(bad, np.zeros(8000, dtype="float32") + 0.01, 8000, subtype="PCM_16")
    with pytest.raises(CorpusError, match=f"{bad.name} has sample rate 8000 Hz, expected 16000"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    out = prepare_librispeech(fake_layout, ["train"], fake_layout / "m2", on_wrong_rate="resample")
    u = [x for x in read_manifest(out["train"]) if x.path.endswith(bad.name)][0]
    assert u.sample_rate == 8000 and u.duration == pytest.approx(1.0)
    from lightning_amortized.data.datamodule import load_audio

    assert load_audio(u.path, 16000).shape[0] == 16000


def test_orphan_transcript_and_missing_split(fake_layout: Path) -> None:
    bad = _first(fake_layout, "*.flac")
    bad.unlink()
    with pytest.raises(CorpusError, match="has no audio file"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_librispeech(fake_layout, ["nope"], fake_layout / "m")


def test_manifest_is_jsonl(fake_layout: Path) -> None:
    out = prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    for line in out["train"].read_text().splitlines():
        assert set(json.loads(line)) == {"id", "path", "duration", "words", "sample_rate", "speaker"}
