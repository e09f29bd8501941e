"""Tokenizers: characters of LibriSpeech's alphabet, or SentencePiece subword units."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

import torch

from lightning_amortized.atomic import write_atomic

__all__ = ["CharTokenizer", "LIBRISPEECH_ALPHABET", "SentencePieceTokenizer", "make_tokenizer", "train_sentencepiece"]

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
        self._upper = not any(c.islower() for c in alphabet)  # a lower-case alphabet keeps the text's case

    def __len__(self) -> int:
        return len(self.alphabet) + 1

    def normalize(self, text: str) -> str:
        """Upper-case (unless the alphabet has lower-case letters) and collapse whitespace, as LibriSpeech writes."""
        return " ".join((text.upper() if getattr(self, "_upper", True) else text).split())

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
        return _ctc_collapse(self, best_path, length)

    @property
    def vocabulary(self) -> list[str]:
        """Text of every non-blank id, in id order."""
        return list(self.alphabet)


class SentencePieceTokenizer:
    """Subword units from a SentencePiece model; id 0 is the CTC/RNN-T blank.

    SpeechBrain's LibriSpeech recipes predict SentencePiece units (unigram, a few hundred
    to 5,000 of them). Units span several characters, so at 30 ms frames more frames
    carry no new output (blank) than with characters: what an amortized encoder can skip.
    Piece ``k`` of the SentencePiece model has id ``k + 1`` here; the word-boundary mark
    ``"▁"`` reads as a space in :attr:`vocabulary`, so the device runtime's
    ``"".join(...)`` decoding works unchanged.

    Args:
        model: Path to a ``.model`` file written by :func:`train_sentencepiece` (or by
            ``spm_train`` with ``--unk_id=0 --bos_id=-1 --eos_id=-1``).

    Raises:
        FileNotFoundError: ``model`` does not exist.
        ValueError: the model reserves BOS/EOS/pad ids, has byte-fallback pieces, or is not a
            SentencePiece model.

    Example::

        >>> import tempfile, os
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "sp.model")
        >>> _ = train_sentencepiece(["SET A TIMER", "SET AN ALARM", "CALL MOM"] * 20, path, vocab_size=30)
        >>> tok = SentencePieceTokenizer(path)
        >>> tok.decode(tok.encode("SET A TIMER"))
        'SET A TIMER'
        >>> len(tok) <= 31  # pieces + blank; on tiny texts fewer pieces than vocab_size
        True
        >>> tmp.cleanup()
    """

    blank_id: int = 0

    def __init__(self, model: str | os.PathLike) -> None:
        import sentencepiece as spm

        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(
                f"SentencePiece model {str(path)!r} does not exist. Train one with "
                "`lightning-amortized train-tokenizer ROOT --out PATH` (or pass tokenizer=None for characters)."
            )
        self.path = str(path)
        self.model_bytes = path.read_bytes()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.model_bytes)
        except Exception as err:  # sentencepiece raises RuntimeError/OSError with C++ messages
            raise ValueError(f"{str(path)!r} is not a SentencePiece model ({err}).") from None
        if self._sp.bos_id() >= 0 or self._sp.eos_id() >= 0 or self._sp.pad_id() >= 0:
            raise ValueError(
                f"SentencePiece model {str(path)!r} reserves BOS/EOS/pad ids; CTC needs none. "
                "Train it with train_sentencepiece (unk 0, no bos/eos/pad)."
            )
        pieces = [self._sp.IdToPiece(i) for i in range(self._sp.GetPieceSize())]
        if any(self._sp.IsByte(i) for i in range(len(pieces))):
            raise ValueError(
                f"SentencePiece model {str(path)!r} was trained with byte fallback (pieces such as "
                f"{next(p for i, p in enumerate(pieces) if self._sp.IsByte(i))!r}): they would reach transcripts and "
                "the device vocabulary as literal '<0xNN>' text, and unseen characters would pass unnoticed. "
                "Retrain it without --byte_fallback (train_sentencepiece does)."
            )
        #: Text of every non-blank id, in id order (``"▁"`` as a space; the unknown piece, which no
        #: training transcript contains, reads as nothing, so a decoded hypothesis never holds ``<unk>``).
        self.vocabulary: list[str] = ["" if i == self._sp.unk_id() else p.replace("\u2581", " ")
                                      for i, p in enumerate(pieces)]

    def __len__(self) -> int:
        return self._sp.GetPieceSize() + 1

    def normalize(self, text: str) -> str:
        """Upper-case and collapse whitespace, the way LibriSpeech transcripts are written."""
        return " ".join(text.upper().split())

    def encode(self, text: str, where: str = "") -> list[int]:
        """Text -> ids (piece ids + 1).

        Raises:
            ValueError: the text needs the unknown piece (characters never seen when the
                model was trained; ``where`` names the source).
        """
        ids = self._sp.EncodeAsIds(self.normalize(text))
        if self._sp.unk_id() in ids:
            loc = f" in {where}" if where else ""
            raise ValueError(
                f"Transcript{loc} {text!r} has characters the SentencePiece model {self.path!r} never saw. "
                "Normalise the text (spell out numbers, drop punctuation) or retrain the tokenizer."
            )
        return [i + 1 for i in ids]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids -> text (blank and unknown-piece ids dropped, no CTC collapsing)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return " ".join("".join(self.vocabulary[i - 1] for i in ids if i != self.blank_id).split())

    def ctc_greedy(self, best_path: torch.Tensor, length: int | None = None) -> str:
        """Collapse a frame-level argmax path ``(T,)``: merge repeats, drop blanks."""
        return _ctc_collapse(self, best_path, length)


def _ctc_collapse(tokenizer: CharTokenizer | SentencePieceTokenizer, best_path: torch.Tensor, length: int | None) -> str:
    path = best_path[:length] if length is not None else best_path
    keep = torch.ones_like(path, dtype=torch.bool)
    if path.numel() > 1:
        keep[1:] = path[1:] != path[:-1]
    keep &= path != tokenizer.blank_id
    return " ".join(tokenizer.decode(path[keep]).split())


def train_sentencepiece(
    texts: Iterable[str],
    out: str | os.PathLike,
    vocab_size: int = 256,
    model_type: str = "unigram",
) -> Path:
    """Train a SentencePiece model for CTC on ``texts`` (deterministic: one thread, no sampling).

    Args:
        texts: training transcripts (normalised: upper case, LibriSpeech alphabet).
        out: path of the ``.model`` file to write (its folder is created).
        vocab_size: number of pieces (the model then predicts ``vocab_size + 1`` classes
            with the blank); an upper bound when ``texts`` are too few to fill it. Must be
            at least the number of distinct characters + 2.
        model_type: ``"unigram"`` (SpeechBrain's LibriSpeech default) or ``"bpe"``.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``texts`` is empty, or ``vocab_size``/``model_type`` is invalid.
    """
    import sentencepiece as spm

    lines = [" ".join(t.upper().split()) for t in texts]
    lines = [t for t in lines if t]
    if not lines:
        raise ValueError("Expected argument `texts` to hold at least one non-empty transcript, but got none.")
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"Expected argument `model_type` to be 'unigram' or 'bpe', but got {model_type!r}.")
    chars = len(set("".join(lines)) - {" "}) + 1  # + the word-boundary piece
    if not isinstance(vocab_size, int) or vocab_size < chars + 1:
        raise ValueError(
            f"Expected argument `vocab_size` to be an int of at least {chars + 1} (the {chars - 1} characters, "
            f"the word boundary and the unknown piece), but got {vocab_size!r}."
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=1,
        shuffle_input_sentence=False, input_sentence_size=0, hard_vocab_limit=False, minloglevel=2,
    )
    write_atomic(out, model.getvalue())
    return out


def make_tokenizer(model: str | os.PathLike | None = None) -> CharTokenizer | SentencePieceTokenizer:
    """The tokenizer a module or DataModule option names: characters for ``None``, else
    the SentencePiece model at that path."""
    return CharTokenizer() if model is None else SentencePieceTokenizer(model)
