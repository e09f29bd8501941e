"""Word and entity lists drawn from libraries instead of hand-written lists: the shipped copy.

The synthetic corpus's names, cities and companies come from `Faker
<https://faker.readthedocs.io>`_'s locale providers, and the words of the generated
read-speech sentences from `wonderwords <https://pypi.org/project/wonderwords/>`_'s
lists (how: :mod:`~lightning_amortized.data.lexicon_draw`). The lists are drawn once and
shipped as ``lexicon.json``; :func:`lexicon` reads them, so the corpus needs neither
library at run time and stays the same if a library's lists change in a later release.

Every list is a pure function of :data:`LEXICON_SEED` and the pinned package versions:
the same on every machine. Words that occur in an update's new entities
(:data:`~lightning_amortized.data.entities.UPDATE_ENTITIES`) are left out, so updates
keep teaching words the base data never contains.

Example::

    >>> lex = lexicon()
    >>> len(lex.first_names), len(lex.cities) > 100, lex.first_names == lexicon().first_names
    (220, True, True)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

__all__ = ["LEXICON_FILE", "LEXICON_SEED", "Lexicon", "lexicon"]

#: Seed of every draw from the source libraries (part of the generator's identity).
LEXICON_SEED = 20261126
#: The shipped lists, beside this module.
LEXICON_FILE = "lexicon.json"


@dataclass(frozen=True)
class Lexicon:
    """Deterministic word and entity lists (upper case, LibriSpeech alphabet).

    Attributes:
        first_names: given names from :data:`~lightning_amortized.data.lexicon_draw.NAME_LOCALES`, one word each.
        last_names: family names from :data:`~lightning_amortized.data.lexicon_draw.NAME_LOCALES`, one word each.
        cities: place names from :data:`~lightning_amortized.data.lexicon_draw.CITY_LOCALES`, one to three words.
        companies: company names (Faker's formats), one to three words.
        nouns: singular nouns for generated sentences.
        adjectives: adjectives for generated sentences.
        verbs: verbs in their base form for generated sentences.
    """

    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    cities: tuple[str, ...]
    companies: tuple[str, ...]
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """The corpus's library-drawn lists, read from ``lexicon.json`` beside this module.

    The file is what :func:`~lightning_amortized.data.lexicon_draw.draw_lexicon` returns
    with the pinned libraries (a test checks it).

    Returns:
        The :class:`Lexicon` (cached; the same object on every call).
    """
    data = json.loads((resources.files("lightning_amortized.data") / LEXICON_FILE).read_text())
    return Lexicon(**{name: tuple(data[name]) for name in Lexicon.__dataclass_fields__})
