"""Character tokenizer for LibriSpeech's alphabet (upper-case letters, apostrophe, space)."""

from __future__ import annotations

import torch

__all__ = ["CharTokenizer", "LIBRISPEECH_ALPHABET"]

LIBRISPEECH_ALPHABET: str = " 'ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class CharTokenizer:
    """Maps transcripts to character ids; id 0 is the CTC/RNN-T blank.

    Args:
        alphabet: Characters other than blank, in id order starting at 1.

    Example:
        >>> tok = CharTokenizer()
        >>> tok.encode("HI THERE")
        [10, 11, 1, 22, 10, 7, 20, 7]
        >>> tok.decode([10, 11, 1, 22, 10, 7, 20, 7])
        'HI THERE'
        >>> len(tok)
        29
    """

    blank_id: int = 0

    def __init__(self, alphabet: str = LIBRISPEECH_ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"Expected argument `alphabet` to have unique characters, but got {alphabet!r}.")
        self.alphabet = alphabet
        self._index = {c: i + 1 for i, c in enumerate(alphabet)}

    def __len__(self) -> int:
        return len(self.alphabet) + 1

    def normalize(self, text: str) -> str:
        """Upper-case and collapse whitespace, the way LibriSpeech transcripts are written."""
        return " ".join(text.upper().split())

    def encode(self, text: str, where: str = "") -> list[int]:
        """Text -> ids.

        Raises:
            ValueError: on characters outside the alphabet (``where`` names the source).
        """
        text = self.normalize(text)
        bad = sorted({c for c in text if c not in self._index})
        if bad:
            loc = f" in {where}" if where else ""
            raise ValueError(
                f"Transcript{loc} has characters outside the alphabet {self.alphabet!r}: {bad}. "
                "Normalise the text (spell out numbers, drop punctuation) before training."
            )
        return [self._index[c] for c in text]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids -> text (blank ids are dropped, no CTC collapsing)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.alphabet[i - 1] for i in ids if i != self.blank_id).strip()

    def ctc_greedy(self, best_path: torch.Tensor, length: int | None = None) -> str:
        """Collapse a frame-level argmax path ``(T,)``: merge repeats, drop blanks.

        Example:
            >>> CharTokenizer().ctc_greedy(torch.tensor([0, 10, 10, 0, 10, 11, 0]))
            'HHI'
        """
        path = best_path[:length] if length is not None else best_path
        keep = torch.ones_like(path, dtype=torch.bool)
        if path.numel() > 1:
            keep[1:] = path[1:] != path[:-1]
        keep &= path != self.blank_id
        return " ".join(self.decode(path[keep]).split())
