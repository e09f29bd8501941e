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


def test_audio_with_nan_samples_is_a_corpus_error(tmp_path: Path) -> None:
    from lightning_amortized.data.datamodule import load_audio

    wav = np.zeros(1600, dtype="float32")
    wav[3] = np.nan
    sf.write(tmp_path / "nan.wav", wav, 16000, subtype="FLOAT")
    with pytest.raises(CorpusError, match="nan.wav: it holds NaN or Inf samples"):
        load_audio(str(tmp_path / "nan.wav"))


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


@pytest.mark.parametrize("keep", [0.6, "header"])
def test_truncated_or_header_only_flac_refused_at_prepare(fake_layout: Path, keep) -> None:
    """Such files used to get a manifest entry (a header-only one a 5.8e14 s duration) and
    fail only mid-epoch; now prepare names them and writes no manifest."""
    bad = sorted((fake_layout / "train").rglob("*.flac"))[-1]  # the longest: several FLAC frames
    data = bad.read_bytes()
    bad.write_bytes(data[: int(len(data) * keep)] if keep != "header" else data[:200])
    with pytest.raises(CorpusError, match=rf"{bad.name} is truncated or corrupt"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    assert not (fake_layout / "m" / "train.jsonl").exists()


def test_two_processes_preparing_at_once_do_not_collide(fake_layout: Path, monkeypatch) -> None:
    """Both preparers reach the rename together (a barrier holds the first for up to 2 s):
    with one shared `<manifest>.tmp` name the second rename failed with FileNotFoundError."""
    import os
    import threading

    from lightning_amortized.data import prepare as prep

    barrier = threading.Barrier(2, timeout=2.0)
    real_replace = os.replace

    def slow_replace(src, dst):
        if str(dst).endswith(".jsonl"):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass  # the other thread is waiting on the lock: go on alone
        return real_replace(src, dst)

    monkeypatch.setattr(prep.os, "replace", slow_replace)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(read_manifest(fake_layout / "m" / "train.jsonl")) == 6
    assert not [p.name for p in (fake_layout / "m").iterdir() if p.name.endswith(".tmp")]


def test_manifest_mode_follows_umask(fake_layout: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        m = prepare_librispeech(fake_layout, ["train"], fake_layout / "m")["train"]
    finally:
        os.umask(old)
    assert m.stat().st_mode & 0o777 == 0o644


def test_duplicated_transcript_line_refused(fake_layout: Path) -> None:
    """The last of two lines for one utterance used to win silently."""
    trans = sorted((fake_layout / "train").rglob("*.trans.txt"))[0]
    first = trans.read_text().splitlines()[0]
    trans.write_text(trans.read_text() + first.split(" ", 1)[0] + " ANOTHER TEXT\n")
    with pytest.raises(CorpusError, match=rf"{first.split(' ', 1)[0]}' has two transcript lines.*{trans.name}:4"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")


def test_moved_corpus_is_prepared_again(fake_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Manifests hold absolute paths; a copy that keeps every name, size and mtime (mv, cp -a, rsync -a) re-prepares."""
    import shutil

    prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    stamp = (fake_layout / "m" / "train.fingerprint").read_text()
    moved = tmp_path_factory.mktemp("elsewhere") / "corpus"
    shutil.move(str(fake_layout), moved)
    utts = read_manifest(prepare_librispeech(moved, ["train"], moved / "m")["train"])
    assert all(Path(u.path).is_file() and Path(u.path).is_relative_to(moved.resolve()) for u in utts)
    # the content fingerprint (what benchmarks/base.py keys cached bases on) does not depend on the location
    assert (moved / "m" / "train.fingerprint").read_text() == stamp


def test_too_short_audio_is_refused_at_prepare(fake_layout: Path) -> None:
    bad = _first(fake_layout, "*.flac")
    sf.write(bad, np.zeros(100, np.float32), 16000)
    with pytest.raises(CorpusError, match=rf"{bad.name} is 100 samples \(6.2 ms\) long: too short"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")


def test_transcripts_with_a_bom_tabs_or_another_encoding(fake_layout: Path) -> None:
    trans = _first(fake_layout, "*.trans.txt")
    lines = trans.read_text().splitlines()
    first_id = lines[0].split()[0]
    lines[1] = lines[1].replace(" ", "\t", 1)  # id<TAB>words
    trans.write_bytes("\ufeff".encode() + ("\n".join(lines) + "\n").encode())  # a byte-order mark first
    utts = {u.id: u for u in read_manifest(prepare_librispeech(fake_layout, ["train"], fake_layout / "m")["train"])}
    assert first_id in utts and utts[lines[1].split()[0]].words == " ".join(lines[1].split()[1:])
    trans.write_bytes(("\n".join(lines) + "\n").replace(lines[0].split()[1], "CAF\u00c9", 1).encode("latin-1"))
    with pytest.raises(CorpusError, match=rf"Transcript file .*{trans.name} is not UTF-8"):
        prepare_librispeech(fake_layout, ["train"], fake_layout / "m")


def test_a_damaged_manifest_line_names_the_file_and_line(fake_layout: Path) -> None:
    out = prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    lines = out["train"].read_text().splitlines()
    for bad in (lines[1][:20], '{"id": "x"}'):  # truncated JSON; an entry without its fields
        out["train"].write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n")
        with pytest.raises(CorpusError, match=r"Line 2 of manifest .*train\.jsonl' is not a manifest entry"):
            read_manifest(out["train"])



def test_split_names_with_a_slash_or_a_path(fake_layout: Path) -> None:
    out = prepare_librispeech(fake_layout, ["train/"], fake_layout / "m")  # tab completion's slash
    assert out == {"train": fake_layout / "m" / "train.jsonl"} and len(read_manifest(out["train"])) == 6
    for bad in (str(fake_layout / "train"), "train/100", "..", ""):
        with pytest.raises(CorpusError, match="Expected split names: folder names under"):
            prepare_librispeech(fake_layout, [bad], fake_layout / "m2")
    assert not (fake_layout / "m2").exists()


def test_symlinked_speaker_folders_are_read(fake_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("other_disk")
    (fake_layout / "train" / "101").rename(elsewhere / "101")
    (fake_layout / "train" / "101").symlink_to(elsewhere / "101", target_is_directory=True)
    (fake_layout / "train" / "loop").symlink_to(fake_layout / "train", target_is_directory=True)  # walked once
    out = prepare_librispeech(fake_layout, ["train"], fake_layout / "m")
    assert sorted(u.id for u in read_manifest(out["train"])) == [f"{s}-10-000{i}" for s in (100, 101) for i in range(3)]
