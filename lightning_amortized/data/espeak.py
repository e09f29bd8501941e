"""A small ctypes wrapper over the eSpeak NG library shipped by ``espeakng-loader``.

The ``espeakng-loader`` wheel contains ``libespeak-ng.so`` and its ``espeak-ng-data``
directory, so no system package is needed. This module loads the library once per
process, synthesises text synchronously into memory and returns float32 audio at
:data:`ESPEAK_SAMPLE_RATE` (22,050 Hz).

eSpeak NG keeps all of its state (current voice, parameters, output buffer) in C
globals. :class:`EspeakSynthesizer` is therefore a per-process singleton guarded by a
lock: concurrent calls from several threads are serialised, never interleaved. It is
**not** a way to synthesise in parallel; use one process per worker for that (each
process initialises its own copy of the library).

eSpeak NG also keeps synthesis state (pitch-flutter and wave phase) in C statics that
survive ``espeak_Initialize``, so the same request would give slightly different
samples depending on what was spoken before. To make :meth:`EspeakSynthesizer.synthesize`
a pure function of its arguments (bit-identical across runs, call orders and worker
processes), the synthesiser loads a private copy of the library and reloads it before
every utterance (about 3 ms).

Example::

    >>> from lightning_amortized.data.espeak import EspeakSynthesizer
    >>> tts = EspeakSynthesizer()
    >>> audio = tts.synthesize("HELLO WORLD", voice="en-us+f3", rate=170, pitch=60)
    >>> audio.dtype, tts.sample_rate
    (dtype('float32'), 22050)
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import functools
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ESPEAK_SAMPLE_RATE",
    "EspeakError",
    "EspeakSynthesizer",
    "available_variants",
    "available_voices",
]

#: Sample rate of eSpeak NG output, in Hz.
ESPEAK_SAMPLE_RATE = 22050

# Constants from espeak-ng/speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_ENDPAUSE = 0x1000
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """Raised when the eSpeak NG library cannot be loaded or refuses a request."""


def _loader_paths() -> tuple[str, str]:
    """Return ``(library_path, data_path)`` from the ``espeakng-loader`` wheel."""
    try:
        import espeakng_loader
    except ImportError as err:  # pragma: no cover - dependency is declared
        raise EspeakError(
            "The `espeakng-loader` package is not installed; install it with "
            "`pip install espeakng-loader` (it ships libespeak-ng and its data)."
        ) from err
    try:
        data_path = espeakng_loader.get_data_path()
    except RuntimeError as err:
        raise EspeakError(f"eSpeak NG data directory is missing: {err}") from err
    return espeakng_loader.get_library_path(), data_path


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    """The process's C library (for ``srand``)."""
    return ctypes.CDLL(None)


def _private_copy(lib_path: Path) -> str:
    """Copy the library to a path no other loader uses; returns the path to dlopen.

    On Linux the copy is an anonymous in-memory file (``memfd``) opened through
    ``/proc/self/fd``, which disappears with the process (forked workers included, which
    skip ``atexit``). Elsewhere it is a temporary file removed at exit.
    """
    data = lib_path.read_bytes()
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("lightning_amortized_espeak")  # kept open for the process
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return f"/proc/self/fd/{fd}"
    tmpdir = tempfile.mkdtemp(prefix="lightning_amortized_espeak_")
    atexit.register(shutil.rmtree, tmpdir, True)
    private = Path(tmpdir) / lib_path.name
    private.write_bytes(data)
    return str(private)


def available_voices(data_path: str | Path | None = None) -> list[str]:
    """List the English voice identifiers shipped with the eSpeak NG data.

    Args:
        data_path: ``espeak-ng-data`` directory; defaults to the one of ``espeakng-loader``.

    Returns:
        Lower-case voice identifiers such as ``"en-us"`` or ``"en-gb-scotland"``.
    """
    data = Path(data_path) if data_path is not None else Path(_loader_paths()[1])
    return sorted(p.name.lower() for p in (data / "lang" / "gmw").glob("en*"))


def available_variants(data_path: str | Path | None = None) -> list[str]:
    """List the voice variant names (``m1``, ``f3``, ``klatt`` ...) shipped with eSpeak NG.

    Args:
        data_path: ``espeak-ng-data`` directory; defaults to the one of ``espeakng-loader``.

    Returns:
        Variant file names, usable as ``"<voice>+<variant>"``.
    """
    data = Path(data_path) if data_path is not None else Path(_loader_paths()[1])
    return sorted(p.name for p in (data / "voices" / "!v").iterdir() if p.is_file())


class EspeakSynthesizer:
    """Synthesise text into a float32 waveform with eSpeak NG, in memory.

    One instance exists per process (the constructor returns the same object every
    time) because eSpeak NG holds its state in C globals. Calls are serialised by a
    lock, so the object may be shared by threads, but it is **not thread-parallel**:
    use separate processes to synthesise concurrently. Each :meth:`synthesize` call
    starts from freshly loaded library state, so its output depends only on its
    arguments.

    Args:
        library_path: path to ``libespeak-ng.so``; defaults to ``espeakng-loader``'s.
            Only honoured by the first construction in a process.
        data_path: path to ``espeak-ng-data``; defaults to ``espeakng-loader``'s.

    Raises:
        EspeakError: if the library cannot be loaded or initialised.

    Example::

        >>> tts = EspeakSynthesizer()
        >>> x = tts.synthesize("SET A TIMER", voice="en+m3")
        >>> x.ndim, bool(x.size > 0.3 * tts.sample_rate)
        (1, True)
    """

    _instance: EspeakSynthesizer | None = None
    _instance_lock = threading.Lock()

    def __new__(
        cls, library_path: str | Path | None = None, data_path: str | Path | None = None
    ) -> EspeakSynthesizer:
        with cls._instance_lock:
            if cls._instance is None:
                obj = super().__new__(cls)
                obj._setup(library_path, data_path)
                cls._instance = obj
            return cls._instance

    def __init__(
        self, library_path: str | Path | None = None, data_path: str | Path | None = None
    ) -> None:
        # All work is done once in ``_setup``; nothing to do on repeated construction.
        pass

    def _setup(self, library_path: str | Path | None, data_path: str | Path | None) -> None:
        default_lib, default_data = (None, None)
        if library_path is None or data_path is None:
            default_lib, default_data = _loader_paths()
        lib_path = Path(library_path if library_path is not None else default_lib)
        data = str(data_path if data_path is not None else default_data)
        if not lib_path.is_file():
            raise EspeakError(
                f"The eSpeak NG library {str(lib_path)!r} does not exist. Reinstall "
                "`espeakng-loader` or pass `library_path`."
            )
        # eSpeak NG keeps synthesis state (pitch flutter phase, wave phase ...) in C
        # statics that survive espeak_Initialize, so the same call gives different
        # samples depending on what was spoken before. To make every call a pure
        # function of its arguments we load a *private copy* of the library (no other
        # module in the process can share it) and reload it before each utterance.
        self.library_path = str(lib_path)
        self._private_path = _private_copy(lib_path)
        self._data_path = data
        self._own_data: str | None = None  # private data copy holding custom variants (voice_lines)
        self._custom: dict[tuple[str, tuple[str, ...]], str] = {}  # (voice, lines) -> custom voice name
        self._chunks: list[np.ndarray] = []

        def _collect(wav, numsamples, events):  # noqa: ANN001 - ctypes callback
            if numsamples > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
            return 0

        self._callback = _SYNTH_CALLBACK(_collect)  # keep a reference: C holds a pointer
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._voices = set(available_voices(data))
        self._variants = set(available_variants(data))
        self._load()

    def _load(self) -> ctypes.CDLL:
        """(Re)load the private library copy and initialise it; returns the handle."""
        self._unload()
        try:
            lib = ctypes.CDLL(self._private_path, mode=ctypes.RTLD_LOCAL)
        except OSError as err:
            raise EspeakError(
                f"Could not load the eSpeak NG library copied from {self.library_path!r}: "
                f"{err}. Reinstall `espeakng-loader` or pass `library_path`."
            ) from err
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path.encode(), _ESPEAK_INITIALIZE_DONT_EXIT
        )
        if rate != ESPEAK_SAMPLE_RATE:
            raise EspeakError(
                f"espeak_Initialize with data {self._data_path!r} returned {rate}, expected "
                f"the sample rate {ESPEAK_SAMPLE_RATE}; the data directory is unusable."
            )
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        return lib

    def _unload(self) -> None:
        if self._lib is None:
            return
        lib, self._lib = self._lib, None
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)  # refcount reaches 0: statics reset on next load

    def custom_variant(self, voice: str, voice_lines: Sequence[str]) -> str:
        """The voice name that speaks ``voice`` with ``voice_lines`` added to its variant file.

        The combined variant file is written on first use, named by its content, into a
        private copy of the data directory (made once per process tree: worker processes
        forked after it use and extend the same copy; only the process that made it
        removes it, at exit). Call it in the parent before forking workers and they write
        nothing.

        Args:
            voice: eSpeak NG voice, optionally with a variant, e.g. ``"en-us+m3"``.
            voice_lines: voice-file lines, e.g. ``["replace 00 T f"]``.

        Returns:
            ``"<voice>+la-<content hash>"``, usable as :meth:`synthesize`'s ``voice``.

        Raises:
            ValueError: ``voice_lines`` is a string, empty, or holds an empty, multi-line or
                non-ASCII line.
            EspeakError: unknown voice or variant.
        """
        if isinstance(voice_lines, str):
            raise ValueError(
                f"Expected argument `voice_lines` to be a sequence of lines, but got the string {voice_lines!r}."
            )
        lines = tuple(voice_lines)
        if not lines:
            raise ValueError("Expected argument `voice_lines` to hold at least one line, but got none.")
        for line in lines:
            if not isinstance(line, str) or not line.strip() or "\n" in line or "\r" in line or not line.isascii():
                raise ValueError(
                    "Expected argument `voice_lines` to hold non-empty single-line ASCII voice-file "
                    f"lines, but got {line!r}."
                )
        known = self._custom.get((voice, lines))
        if known is not None:  # every utterance of a speaker asks again: no file read, no hash
            return known
        base, _, variant = voice.partition("+")
        self._check_voice(base, variant, voice)
        with self._lock:
            folder = Path(self._data_path) / "voices" / "!v"
            content = (folder / variant).read_bytes() if variant else b""
            content += ("\n" + "\n".join(lines) + "\n").encode("ascii")
            name = "la-" + hashlib.sha256(content).hexdigest()[:16]
            if not (folder / name).is_file():
                if self._own_data is None:  # custom variants go into a private copy, never the wheel's data
                    own = tempfile.mkdtemp(prefix="lightning-amortized-espeak-data-")
                    shutil.copytree(self._data_path, own, dirs_exist_ok=True)
                    owner = os.getpid()
                    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(own, ignore_errors=True))
                    self._own_data = self._data_path = own
                    folder = Path(own) / "voices" / "!v"
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")  # unique: workers may race
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.replace(tmp, folder / name)  # same content from every writer: last rename wins, harmlessly
            self._variants.add(name)
            self._custom[(voice, lines)] = f"{base}+{name}"
        return f"{base}+{name}"

    def _check_voice(self, base: str, variant: str, voice: str) -> None:
        if base.lower() not in self._voices:
            raise EspeakError(
                f"Unknown eSpeak NG voice {base!r} in {voice!r}; English voices available: "
                f"{sorted(self._voices)}."
            )
        if variant and variant not in self._variants:
            raise EspeakError(
                f"Unknown eSpeak NG variant {variant!r} in {voice!r}; see "
                "`available_variants()` (e.g. m1..m8, f1..f5)."
            )

    @property
    def data_path(self) -> str:
        """The ``espeak-ng-data`` directory in use (the private copy once :meth:`custom_variant` made one)."""
        return self._data_path

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (always 22,050)."""
        return ESPEAK_SAMPLE_RATE

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        *,
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        seed: int = 0,
        voice_lines: Sequence[str] = (),
    ) -> np.ndarray:
        """Speak ``text`` and return the waveform.

        Args:
            text: text to speak (UTF-8; upper case is read as words, not spelled).
            voice: eSpeak NG voice, optionally with a variant, e.g. ``"en-us+f3"``.
            rate: speaking rate in words per minute (80-450).
            pitch: base pitch, 0-100 (50 is the voice default).
            pitch_range: pitch range, 0-100 (0 is monotone, 50 the default).
            seed: seed of eSpeak NG's internal random generator (breath/roughness
                noise of some variants), making the output bit-exact.
            voice_lines: extra voice-file lines appended to the variant's own (e.g.
                ``"replace 00 T f"``, a phoneme replacement: one accent feature; see
                eSpeak NG's voice file format); see :meth:`custom_variant`.

        Returns:
            float32 array of shape ``(samples,)`` in ``[-1, 1]`` at 22,050 Hz.

        Raises:
            ValueError: if ``text`` is empty or a parameter is out of range.
            EspeakError: if the voice or variant does not exist or synthesis fails.
        """
        if not text or not text.strip():
            raise ValueError("Expected argument `text` to be a non-empty string, but got "
                             f"{text!r}.")
        for name, value, lo, hi in (
            ("rate", rate, 80, 450),
            ("pitch", pitch, 0, 100),
            ("pitch_range", pitch_range, 0, 100),
        ):
            if not lo <= int(value) <= hi:
                raise ValueError(
                    f"Expected argument `{name}` to be in [{lo}, {hi}], but got {value!r}."
                )
        lines = voice_lines if isinstance(voice_lines, str) else tuple(voice_lines)
        if isinstance(lines, str) or lines:  # a string is refused by custom_variant
            voice = self.custom_variant(voice, lines)
        base, _, variant = voice.partition("+")
        self._check_voice(base, variant, voice)
        with self._lock:
            lib = self._load()
            status = lib.espeak_SetVoiceByName(voice.encode())
            if status != _EE_OK:
                raise EspeakError(f"espeak_SetVoiceByName({voice!r}) failed with status {status}.")
            lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
            lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
            lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
            lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            # The Klatt synthesiser's breath noise ("klatt 6" with "breath", e.g. the
            # Reed and caleb variants) draws from the C library's rand(), not from
            # eSpeak's own generator: seed it too, or those voices differ run to run.
            _libc().srand(int(seed) & 0x7FFFFFFF)
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data, len(data))
            self._chunks = []
            status = lib.espeak_Synth(
                buf, len(data), 0, _POS_CHARACTER, 0,
                _ESPEAK_CHARS_UTF8 | _ESPEAK_ENDPAUSE, None, None,
            )
            chunks, self._chunks = self._chunks, []
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with status {status} for text {text!r}.")
        if not chunks:
            raise EspeakError(f"eSpeak NG produced no audio for {text!r} with voice {voice!r}.")
        audio = np.concatenate(chunks).astype(np.float32)
        audio /= 32768.0
        return audio
