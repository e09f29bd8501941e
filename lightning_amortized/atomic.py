"""Atomic file writes: the one way this package replaces a file (manifests, diff files).

A write goes to a unique temporary file beside the target (``.NAME.<pid>.XXXX.tmp``),
is flushed to disk and renamed over the target, so a reader sees the old file or the new
one, never half of one. The result gets the usual permissions (``0o666`` minus the
umask; ``mkstemp`` alone would leave ``0o600``). Temporary files left by a writer that
was killed (its process no longer exists) are removed by the next write of the same
target.

Example:
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> p = pathlib.Path(tmp.name) / "out.txt"
    >>> write_atomic(p, "hello\\n")
    >>> p.read_text()
    'hello\\n'
    >>> tmp.cleanup()
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.NAME.<pid>.*.tmp`` beside ``path`` whose writer process is gone."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        # exactly "<pid>.<random>" after the name (mkstemp's random part has no dots): the temporary of
        # "r.9" (".r.9.<pid>.<random>.tmp") is not one of "r"'s, whose pid 9 would read as gone
        parts = tmp.name[len(path.name) + 2 : -len(".tmp")].split(".")
        if len(parts) == 2 and parts[0].isdigit() and not _alive(int(parts[0])):
            tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring).

    Args:
        path: Target file; its folder is created if needed.
        data: Bytes, or text encoded with ``encoding``.
        encoding: Text encoding for ``str`` data.

    Raises:
        OSError: the folder is not writable or the disk is full (the target is untouched,
            the temporary file removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    payload = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename durable (best effort; not possible on every OS)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
