"""Caches built by ``begin_streaming`` that copies and pickles leave out: :class:`StreamCaches`."""

from __future__ import annotations

from typing import Any

__all__ = ["StreamCaches"]


class StreamCaches:
    """Mixin for an ``nn.Module`` whose ``begin_streaming`` builds per-frame caches.

    The caches (attributes named in ``_stream_caches``) hold CSR tensors or views of the
    weights, which ``copy.deepcopy`` and pickling cannot or should not carry. A copy or
    unpickled module of a streaming one builds its own by calling ``begin_streaming`` on its
    own weights; one that was not streaming stays so.

    Example:
        >>> import copy
        >>> from lightning_amortized.nn import RecurrentEncoder
        >>> enc = RecurrentEncoder(4, 3, num_layers=1)
        >>> enc.begin_streaming()
        >>> copy.deepcopy(enc)._stream_layers is not None
        True
    """

    _stream_caches: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_was_streaming"] = any(state.get(name) is not None for name in self._stream_caches)
        for name in self._stream_caches:
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        streaming = bool(state.pop("_was_streaming", False))
        super().__setstate__(state)  # type: ignore[misc]
        if streaming:
            self.begin_streaming()  # type: ignore[attr-defined]
