"""Scan a LibriSpeech-layout corpus into JSON-lines manifests.

Layout (real LibriSpeech and our synthetic corpus alike)::

    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

Each manifest line is ``{"id", "path", "duration", "words", "sample_rate", "speaker"}``
(duration in seconds). Preparation is idempotent: a split is skipped when its
manifest's fingerprint (relative paths, sizes and modification times of all audio and
transcript files) is unchanged. Manifests and fingerprints are written through unique
temporary files and renamed, under a lock file in the manifest folder, so two processes
preparing the same corpus (benchmark jobs) do not collide: the second finds the work done.

Bad input is refused with a :class:`CorpusError` that names the file: unreadable or
empty audio, audio whose last sample cannot be decoded (a truncated or header-only FLAC:
one seek to the end per file, no full decode), a missing, empty or duplicated transcript line, a transcript line without audio, or
a sample rate other than the expected one (unless ``on_wrong_rate="resample"``, in
which case the manifest keeps the file's own rate and the dataset resamples with
``torchaudio.functional.resample`` when it loads the file).

Example:
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = pathlib.Path(tmp.name)
    >>> (root / "dev").mkdir()
    >>> prepare_librispeech(root, ["dev"], root / "manifests")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_amortized.data.prepare.CorpusError: No '*.flac' files under .../dev ...
    >>> tmp.cleanup()
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import soundfile as sf

from lightning_amortized.atomic import write_atomic
from lightning_amortized.errors import first_line

IN_PROGRESS_MARKER = ".make-corpus-in-progress"
"""File ``make-corpus`` keeps in a corpus root while it writes (and leaves there if interrupted)."""

__all__ = ["CorpusError", "Utterance", "prepare_librispeech", "read_manifest"]

MANIFEST_VERSION = 2  # 2: audio files are checked to decode up to their last sample
#: Shortest audio accepted, in samples at the expected rate: one 400-sample analysis window of the features
#: (the centred STFT cannot even pad anything below 257 samples).
MIN_SAMPLES = 400


class CorpusError(ValueError):
    """Bad corpus input; the message names the offending file and what to do."""


@dataclass(frozen=True)
class Utterance:
    """One manifest entry (duration in seconds, sample rate in Hz)."""

    id: str
    path: str
    duration: float
    words: str
    sample_rate: int
    speaker: str


def _split_files(split_dir: Path) -> tuple[list[Path], list[Path]]:
    audio, trans = [], []
    seen: set[str] = set()
    for dirpath, dirnames, files in os.walk(split_dir, followlinks=True):  # speaker folders may be symlinks
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree: walked once
            dirnames[:] = []
            continue
        seen.add(real)
        for name in files:
            if name.endswith(".flac"):
                audio.append(Path(dirpath) / name)
            elif name.endswith(".trans.txt"):
                trans.append(Path(dirpath) / name)
    return sorted(audio), sorted(trans)


def _fingerprint(split_dir: Path, files: Iterable[Path], expected_rate: int, on_wrong_rate: str) -> str:
    """The content of a split (relative paths, sizes, mtimes, settings), wherever it lies: cache keys hash it."""
    h = hashlib.sha256(f"v{MANIFEST_VERSION}:{expected_rate}:{on_wrong_rate}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(split_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_transcripts(trans_files: list[Path]) -> dict[str, tuple[str, Path]]:
    texts: dict[str, tuple[str, Path]] = {}
    for tf in trans_files:
        try:  # utf-8-sig: a byte-order mark would otherwise stick to the first utterance id
            text = tf.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise CorpusError(
                f"Transcript file {tf} is not UTF-8 ({err.reason} at byte {err.start}). Convert it, e.g. "
                f"`iconv -f latin1 -t utf-8`."
            ) from err
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)  # the id, then the words (spaces or tabs between)
            if len(parts) < 2 or not parts[1].strip():
                raise CorpusError(
                    f"Empty transcript for utterance {parts[0]!r} at {tf}:{lineno}. "
                    "Every utterance needs a non-empty transcript; fix or remove the line and its audio file."
                )
            if parts[0] in texts:
                raise CorpusError(
                    f"Utterance {parts[0]!r} has two transcript lines: {texts[parts[0]][1]} and {tf}:{lineno}. "
                    "Keep one of them."
                )
            texts[parts[0]] = (" ".join(parts[1].split()), tf)
    return texts


def _scan_split(split_dir: Path, expected_rate: int, on_wrong_rate: str) -> list[Utterance]:
    audio, trans = _split_files(split_dir)
    if not audio:
        raise CorpusError(
            f"No '*.flac' files under {split_dir} (expected <split>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac)."
        )
    texts = _read_transcripts(trans)
    utts = []
    seen = set()
    for path in audio:
        uid = path.name[: -len(".flac")]
        if uid not in texts:
            raise CorpusError(
                f"No transcript line for {path}: expected a line starting with {uid!r} in "
                f"{path.parent / (path.parent.parent.name + '-' + path.parent.name + '.trans.txt')}."
            )
        if path.stat().st_size == 0:
            raise CorpusError(f"Empty audio file {path} (0 bytes). Re-extract or delete it and its transcript line.")
        try:
            info = sf.info(str(path))
        except Exception as err:  # soundfile raises RuntimeError/LibsndfileError subclasses
            raise CorpusError(f"Unreadable audio file {path}: {err}. Re-extract or delete it.") from err
        if info.frames <= 0:
            raise CorpusError(f"Empty audio file {path} (0 samples). Re-extract or delete it and its transcript line.")
        try:  # the header's length is only a promise: a truncated file fails to seek to its last sample
            with sf.SoundFile(str(path)) as fh:
                fh.seek(info.frames - 1)
                if len(fh.read(1)) != 1:
                    raise RuntimeError("no sample there")
        except Exception as err:
            raise CorpusError(
                f"Audio file {path} is truncated or corrupt: its header promises {info.frames} samples "
                f"({info.frames / max(1, info.samplerate):.1f} s) but the last one cannot be decoded ({err}). "
                "Re-extract or delete it and its transcript line."
            ) from err
        if info.frames * expected_rate < MIN_SAMPLES * info.samplerate:
            raise CorpusError(
                f"Audio file {path} is {info.frames} samples ({1000 * info.frames / info.samplerate:.1f} ms) long: "
                f"too short for one feature frame (at least {MIN_SAMPLES} samples at {expected_rate} Hz). Delete it "
                "and its transcript line."
            )
        if info.samplerate != expected_rate and on_wrong_rate == "error":
            raise CorpusError(
                f"Audio file {path} has sample rate {info.samplerate} Hz, expected {expected_rate} Hz. "
                "Resample the corpus, or pass on_wrong_rate='resample' to resample when loading."
            )
        seen.add(uid)
        utts.append(
            Utterance(
                id=uid,
                path=str(path.resolve()),
                duration=info.frames / info.samplerate,
                words=texts[uid][0],
                sample_rate=int(info.samplerate),
                speaker=uid.split("-")[0],
            )
        )
    orphans = sorted(set(texts) - seen)
    if orphans:
        raise CorpusError(
            f"Transcript line {orphans[0]!r} in {texts[orphans[0]][1]} has no audio file "
            f"({len(orphans)} such lines in {split_dir}). Restore the audio or remove the lines."
        )
    return utts


def prepare_librispeech(
    root: str | Path,
    splits: Iterable[str],
    manifest_dir: str | Path,
    *,
    sample_rate: int = 16000,
    on_wrong_rate: Literal["error", "resample"] = "error",
    force: bool = False,
) -> dict[str, Path]:
    """Write ``<manifest_dir>/<split>.jsonl`` for each split of a LibriSpeech-layout corpus.

    Args:
        root: Corpus root holding one folder per split (``train-clean-100``, ``dev``...).
        splits: Split folder names to prepare.
        manifest_dir: Where manifests are written (created if missing).
        sample_rate: Expected sample rate in Hz.
        on_wrong_rate: ``"error"`` refuses files at another rate; ``"resample"``
            accepts them and the dataset resamples at load time.
        force: Rewrite manifests even when up to date.

    Returns:
        Split name -> manifest path.

    Raises:
        CorpusError: a missing split folder, or bad audio/transcripts (names the file).
    """
    if on_wrong_rate not in ("error", "resample"):
        raise ValueError(f"Expected argument `on_wrong_rate` to be 'error' or 'resample', but got {on_wrong_rate!r}.")
    root, manifest_dir = Path(root), Path(manifest_dir)
    splits = [str(s).rstrip("/") for s in splits]  # tab completion adds a slash: "dev-clean/"
    for split in splits:
        if not split or Path(split).is_absolute() or Path(split).name != split or split in (".", ".."):
            raise CorpusError(
                f"Expected split names: folder names under {root}, e.g. 'dev-clean', but got {split!r}; pass the "
                "corpus folder as the root and the split folders by name."
            )
    if (root / IN_PROGRESS_MARKER).exists():
        raise CorpusError(
            f"{root} is an unfinished synthetic corpus (make-corpus was interrupted: {IN_PROGRESS_MARKER} is "
            f"there); run `lightning-amortized make-corpus {root} ...` again with the same arguments to finish it."
        )
    out: dict[str, Path] = {}
    for split in splits:  # every split folder first: a wrong root must not leave a manifest folder behind
        split_dir = root / split
        if not split_dir.is_dir():
            hint = ""
            if (root / "corpus.json").is_file():  # a synthetic corpus of an older generator lacks newer splits
                hint = (
                    f" {root} is a synthetic corpus without that split (corpora generated before `test-other` "
                    f"existed lack it): regenerate it (`lightning-amortized make-corpus {root} --utterances N "
                    f"--overwrite`) or leave {split!r} out of the splits you ask for (e.g. "
                    "`--data.init_args.test_splits '[test]'`)."
                )
            raise CorpusError(f"Split folder {split_dir} does not exist (root={root}, split={split!r}).{hint}")
    manifest_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        split_dir = root / split
        audio, trans = _split_files(split_dir)
        fp = _fingerprint(split_dir, audio + trans, sample_rate, on_wrong_rate)
        manifest = manifest_dir / f"{split}.jsonl"
        stamp = manifest_dir / f"{split}.fingerprint"
        # where the split lay when its manifest was written: manifests hold absolute paths, and a moved copy
        # (mv, cp -a, rsync -a) keeps every relative path, size and mtime, so the fingerprint cannot tell
        where, here = manifest_dir / f"{split}.location", str(split_dir.resolve())
        out[split] = manifest

        def done() -> bool:
            return (not force and manifest.exists() and stamp.exists() and stamp.read_text() == fp
                    and where.exists() and where.read_text() == here)

        if done():
            continue
        with open(manifest_dir / ".prepare.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, also when the process dies
            if done():  # another process prepared it while we waited
                continue
            utts = _scan_split(split_dir, sample_rate, on_wrong_rate)
            write_atomic(manifest, "".join(json.dumps(u.__dict__) + "\n" for u in utts))
            write_atomic(where, here)
            write_atomic(stamp, fp)  # last: a manifest without its stamp is redone
    return out


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a manifest written by :func:`prepare_librispeech`.

    Raises:
        CorpusError: a line that is not a manifest entry (the message names the file and line).
    """
    out = []
    number = 0
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    out.append(Utterance(**json.loads(line)))
    except (ValueError, TypeError) as err:  # UnicodeDecodeError is a ValueError too
        raise CorpusError(
            f"Line {number + isinstance(err, UnicodeDecodeError)} of manifest {str(path)!r} is not a manifest "
            f"entry ({first_line(err)}); the file is damaged or hand-edited: delete it and run prepare again."
        ) from err
    return out
