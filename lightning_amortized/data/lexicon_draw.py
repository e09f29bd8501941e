"""Draw the corpus's word and entity lists from the source libraries (and rewrite ``lexicon.json``).

Names, cities and companies come from `Faker <https://faker.readthedocs.io>`_'s locale
providers (English, Irish, Indian, German, French, Spanish, Italian, Dutch, Swedish,
Finnish, Czech, Danish, Romanian and other locales, transliterated to ``A``-``Z`` with
`Unidecode`), and the words of the generated read-speech sentences from `wonderwords
<https://pypi.org/project/wonderwords/>`_'s noun, adjective and verb lists (its profanity
list excluded). Both packages are pinned in ``pyproject.toml`` and ship their data in the
wheel, so nothing is downloaded. The corpus itself reads the shipped copy
(:func:`~lightning_amortized.data.lexicon.lexicon`); ``python -m
lightning_amortized.data.lexicon_draw`` rewrites it after a change to the draw, and a test
checks that the pinned libraries still give exactly the shipped lists.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from lightning_amortized.data.entities import UPDATE_ENTITIES
from lightning_amortized.data.lexicon import LEXICON_FILE, LEXICON_SEED, Lexicon

__all__ = ["CITY_LOCALES", "NAME_LOCALES", "clean_phrase", "draw_lexicon", "main"]

#: Locales whose person names are drawn.
NAME_LOCALES = (
    "en_US", "en_GB", "en_IE", "en_IN", "en_NZ", "de_DE", "fr_FR", "es_ES", "it_IT",
    "nl_NL", "sv_SE", "fi_FI", "cs_CZ", "da_DK", "ro_RO", "hu_HU", "pt_BR",
)
#: Locales whose providers hold lists of real place names.
CITY_LOCALES = (
    "en_IN", "de_DE", "it_IT", "nl_NL", "cs_CZ", "da_DK", "fi_FI", "ro_RO", "pl_PL",
    "sv_SE", "pt_PT",
)
# List sizes: large enough for a vocabulary several times the 883 words of the first
# corpus, small enough that most words of a test utterance occur in training.
_SIZES = {"first_names": 220, "last_names": 220, "cities": 130, "companies": 90,
          "nouns": 420, "adjectives": 170, "verbs": 170}
_WORD = re.compile(r"^[A-Z]+(?:'[A-Z]+)?$")


def clean_phrase(text: str, max_words: int = 3) -> str | None:
    """Transliterate ``text`` to LibriSpeech's alphabet, or ``None`` if it does not fit.

    Args:
        text: a name or phrase in any script Unidecode knows (``"Malmö"``, ``"O'Brien"``).
        max_words: longest accepted phrase, in words.

    Returns:
        Upper-case words of ``A``-``Z`` and inner apostrophes separated by single spaces
        (hyphens become spaces; ``"Sullivan-Bowers"`` -> ``"SULLIVAN BOWERS"``), or
        ``None`` when a word has other characters or is a single letter, or there are
        more than ``max_words`` words.

    Example::

        >>> clean_phrase("Malmö"), clean_phrase("Sullivan-Bowers"), clean_phrase("3M")
        ('MALMO', 'SULLIVAN BOWERS', None)
    """
    from unidecode import unidecode

    words = unidecode(text).upper().replace("-", " ").split()
    if not words or len(words) > max_words:
        return None
    if any(len(w) < 2 or not _WORD.match(w) for w in words):
        return None
    return " ".join(words)


def _draw_unique(draw: Callable[[], str], n: int, banned: set[str], max_words: int, tries: int) -> list[str]:
    seen: dict[str, None] = {}
    for _ in range(tries):
        value = clean_phrase(draw(), max_words)
        if value is None or value in seen or banned.intersection(value.split()):
            continue
        seen[value] = None
        if len(seen) == n:
            break
    return list(seen)


def _interleave(per_locale: list[list[str]], n: int) -> tuple[str, ...]:
    """The first ``n`` distinct values taking one from each locale in turn."""
    out: dict[str, None] = {}
    for rank in range(max(map(len, per_locale))):
        for values in per_locale:
            if rank < len(values):
                out.setdefault(values[rank], None)
    assert len(out) >= n, len(out)
    return tuple(list(out)[:n])


def _from_locales(locales: Iterable[str], method: str, n: int, banned: set[str], max_words: int) -> tuple[str, ...]:
    """``n`` distinct values of ``Faker(locale).<method>()``, round-robin over locales."""
    from faker import Faker

    locales = tuple(locales)
    quota = 2 * -(-n // len(locales))  # twice a fair share, so thin locales cannot starve the list
    per_locale = []
    for i, locale in enumerate(locales):
        fake = Faker(locale)
        fake.seed_instance(LEXICON_SEED + i)
        per_locale.append(_draw_unique(getattr(fake, method), quota, banned, max_words, tries=8 * quota))
    return _interleave(per_locale, n)


def _cities(n: int, banned: set[str]) -> tuple[str, ...]:
    """``n`` place names from the address providers' city lists of :data:`CITY_LOCALES`.

    Drawn from each sorted list with our own generator: some providers' ``city()`` depends
    on set order, which changes with Python's hash seed from run to run.
    """
    import importlib

    quota = 2 * -(-n // len(CITY_LOCALES))
    per_locale = []
    for i, locale in enumerate(CITY_LOCALES):
        names = sorted(set(importlib.import_module(f"faker.providers.address.{locale}").Provider.cities))
        rng = np.random.default_rng([LEXICON_SEED, 100 + i])
        order = iter(rng.permutation(len(names)))
        per_locale.append(_draw_unique(lambda: names[next(order)], quota, banned, 3, tries=min(8 * quota, len(names))))
    return _interleave(per_locale, n)


def _word_list(name: str, n: int, banned: set[str], seed: int) -> tuple[str, ...]:
    assets = resources.files("wonderwords") / "assets"
    profane = {w.strip().upper() for w in (assets / "profanitylist.txt").read_text().split("\n")}
    words = sorted(
        {
            w.strip().upper()
            for w in (assets / name).read_text().split("\n")
            if re.fullmatch(r"[a-z]{3,10}", w.strip())
            and not (name == "verblist.txt" and w.strip().endswith(("ed", "ing")))
        }
        - profane
        - banned
    )
    rng = np.random.default_rng([LEXICON_SEED, seed])
    return tuple(sorted(words[i] for i in rng.choice(len(words), size=n, replace=False)))


_COMPANY_KINDS = (
    "SYSTEMS", "GROUP", "AND SONS", "ENERGY", "LOGISTICS", "BANK", "TELECOM", "AIRLINES",
    "INSURANCE", "FOODS", "MOTORS", "PHARMA", "BROTHERS", "AND PARTNERS", "HOLDINGS",
)


def _companies(n: int, banned: set[str]) -> tuple[str, ...]:
    """Company names: a family name from other locales than the persons' and a kind."""
    names = _from_locales(("en_AU", "en_CA", "de_AT", "fr_CA", "es_MX", "nl_BE"), "last_name", n, banned, 1)
    rng = np.random.default_rng([LEXICON_SEED, 4])
    return tuple(f"{name} {_COMPANY_KINDS[int(k)]}" for name, k in zip(names, rng.integers(len(_COMPANY_KINDS), size=n)))


def draw_lexicon() -> Lexicon:
    """Draw the lists from the source libraries (about 1 s; needs ``faker``,
    ``wonderwords`` and ``unidecode``).

    :func:`~lightning_amortized.data.lexicon.lexicon` reads the same lists from the file
    shipped with the package, which :func:`main` rewrites from this function.

    Returns:
        The freshly drawn :class:`Lexicon`.
    """
    banned = {w for update in UPDATE_ENTITIES for values in update.values() for v in values for w in v.split()}
    banned -= {"THE", "A", "AN", "AND", "OF", "FC", "SAINT", "CITY", "NEW", "CLUB", "SQUAD"}
    s = _SIZES
    return Lexicon(
        first_names=_from_locales(NAME_LOCALES, "first_name", s["first_names"], banned, 1),
        last_names=_from_locales(NAME_LOCALES, "last_name", s["last_names"], banned, 1),
        cities=_cities(s["cities"], banned),
        companies=_companies(s["companies"], banned),
        nouns=_word_list("nounlist.txt", s["nouns"], banned, 1),
        adjectives=_word_list("adjectivelist.txt", s["adjectives"], banned, 2),
        verbs=_word_list("verblist.txt", s["verbs"], banned, 3),
    )


def main(argv: list[str] | None = None) -> None:
    """Rewrite ``lexicon.json`` from the libraries (run after changing the draw)."""
    del argv
    lex = draw_lexicon()
    path = Path(__file__).with_name(LEXICON_FILE)
    body = {name: list(getattr(lex, name)) for name in Lexicon.__dataclass_fields__}
    path.write_text(json.dumps({"seed": LEXICON_SEED, **body}, indent=0) + "\n")
    print(f"wrote {path}: " + ", ".join(f"{k} {len(v)}" for k, v in body.items()))


if __name__ == "__main__":
    main()
