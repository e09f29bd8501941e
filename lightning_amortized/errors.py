"""One helper shared by every error message that quotes a third-party exception.

Framework-free (no torch), so the device runtime uses it too.

Example:
    >>> first_line(ValueError("bad header\\nat byte 12"))
    'bad header'
    >>> first_line(KeyError())
    'KeyError'
"""

from __future__ import annotations

__all__ = ["first_line"]


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of ``str(err)``, at most ``limit`` characters; the type name when it is empty.

    Args:
        err: The exception to quote (torch, safetensors and ONNX Runtime errors can run to
            many lines of C++ context).
        limit: Maximum length of the returned text.
    """
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]
