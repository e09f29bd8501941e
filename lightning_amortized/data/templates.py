"""Assistant-style request templates, entity lists and general sentences.

The synthetic corpus (:mod:`lightning_amortized.data.synthetic`) speaks the texts made
here. Every text uses LibriSpeech's alphabet only: upper-case ``A``-``Z``, the
apostrophe and single spaces; numbers and times are spelled out as words
(``"SET A TIMER FOR TWENTY FIVE MINUTES"``).

There are three kinds of text:

* **requests**: a :class:`Template` (an ``intent`` and a pattern with typed slots such
  as ``{city}`` or ``{duration}``) filled with entities or spelled-out numbers;
* **general sentences**: short read-speech sentences (intent ``"general"``, no slots);
* **update requests**: requests whose entity slots are filled with the NEW entities of
  one of :data:`NUM_UPDATES` updates (new athletes, places, products, artists, teams),
  which never occur in the base data, the way a news event brings new names.

Names, places, companies and the words of generated sentences are drawn from libraries
(:mod:`~lightning_amortized.data.lexicon`); with them the vocabulary is 2,237 words,
while most words of a test utterance still occur in training. :data:`OTHER_TEMPLATES`
and a second set of sentence patterns are heard only in the ``test-other`` split.

Example::

    >>> import numpy as np
    >>> from lightning_amortized.data.templates import sample_request
    >>> req = sample_request(np.random.default_rng(0), update=2)
    >>> req.entities_new, is_valid_transcript(req.text)
    (True, True)
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from lightning_amortized.data.entities import (
    BASE_ENTITIES,
    NUM_UPDATES,
    UPDATE_ENTITIES,
    UPDATE_THEMES,
    _check_update,
    base_entities,
    update_entities,
)
from lightning_amortized.data.lexicon import lexicon
from lightning_amortized.data.numbers import _GENERATED, _MONTHS, _ONES, _TENS, _choice, spell_number

__all__ = [
    "BASE_ENTITIES",
    "GENERAL_SENTENCES",
    "NUM_UPDATES",
    "OTHER_TEMPLATES",
    "TEMPLATES",
    "UPDATE_ENTITIES",
    "free_sentence",
    "free_text_words",
    "UPDATE_THEMES",
    "Request",
    "Template",
    "base_entities",
    "is_valid_transcript",
    "sample_request",
    "spell_number",
    "update_entities",
    "vocabulary",
]


_VALID = re.compile(r"^[A-Z']+( [A-Z']+)*$")
_SLOT = re.compile(r"\{([a-z_]+)\}")


def is_valid_transcript(text: str) -> bool:
    """Whether ``text`` uses LibriSpeech's alphabet: ``A``-``Z``, ``'`` and single spaces.

    Args:
        text: candidate transcript.

    Returns:
        ``True`` for a non-empty upper-case transcript without leading, trailing or
        double spaces.
    """
    return bool(_VALID.match(text))


# ---------------------------------------------------------------------------------
# Templates.
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """One request pattern.

    Args:
        intent: intent label, e.g. ``"set_timer"``.
        pattern: upper-case text with lower-case slots, e.g. ``"SET A TIMER FOR {duration}"``.
            Slot names are slot types: keys of :data:`BASE_ENTITIES` or generated
            values (``duration``, ``time``, ``temperature``, ``volume``, ``count``).
    """

    intent: str
    pattern: str
    slots: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        slots = tuple(_SLOT.findall(self.pattern))
        if len(set(slots)) != len(slots):
            raise ValueError(f"Template {self.pattern!r} repeats a slot.")
        for slot in slots:
            if slot not in BASE_ENTITIES and slot not in _GENERATED:
                raise ValueError(f"Template {self.pattern!r} uses unknown slot {slot!r}.")
        object.__setattr__(self, "slots", slots)

    def fill(self, values: Mapping[str, str]) -> str:
        """Substitute slot values into the pattern.

        Args:
            values: one upper-case value per slot of this template.

        Returns:
            The transcript.
        """
        text = _SLOT.sub(lambda m: values[m.group(1)], self.pattern)
        # "THE {team} GAME" with team "THE DATA DRAGONS" reads "THE DATA DRAGONS GAME".
        return re.sub(r"\bTHE THE\b", "THE", text)


def _t(intent: str, *patterns: str) -> list[Template]:
    return [Template(intent, p) for p in patterns]


#: All request templates.
TEMPLATES: tuple[Template, ...] = tuple(
    _t("set_timer", "SET A TIMER FOR {duration}", "START A {duration} TIMER",
       "TIMER FOR {duration} PLEASE", "COUNT DOWN {duration}")
    + _t("cancel_timer", "CANCEL THE TIMER", "HOW MUCH TIME IS LEFT ON MY TIMER")
    + _t("set_alarm", "WAKE ME UP AT {time}", "SET AN ALARM FOR {time}",
         "SET AN ALARM FOR {time} ON {day}", "CHANGE MY ALARM TO {time}")
    + _t("weather", "WHAT'S THE WEATHER IN {city}", "WHAT'S THE WEATHER LIKE IN {city} {day}",
         "WILL IT RAIN IN {city} {day}", "HOW COLD IS IT IN {city}",
         "DO I NEED AN UMBRELLA {day}", "WHAT'S THE FORECAST FOR {day}")
    + _t("play_music", "PLAY SOME {genre}", "PLAY SOMETHING BY {artist}",
         "PUT ON THE LATEST ALBUM BY {artist}", "I WANT TO LISTEN TO {artist}",
         "PLAY {genre} IN {room}")
    + _t("music_control", "SKIP THIS SONG", "TURN THE VOLUME UP", "PAUSE THE MUSIC",
         "SET THE VOLUME TO {volume}", "WHO SINGS THIS SONG")
    + _t("call", "CALL {contact}", "PLEASE CALL {contact} ON SPEAKER", "VIDEO CALL {contact}")
    + _t("message", "SEND A MESSAGE TO {contact} SAYING {message}",
         "TEXT {contact} {message}", "READ MY LAST MESSAGE FROM {contact}")
    + _t("sports", "WHAT WAS THE SCORE OF THE {team} GAME",
         "WHEN DO {team} PLAY NEXT", "DID {team} WIN {day}",
         "HOW DID {athlete} DO IN {event}", "WHEN DOES {athlete} COMPETE NEXT",
         "SHOW ME THE RESULTS OF {event}", "IS {athlete} RACING {day}")
    + _t("shopping_list", "ADD {item} TO MY SHOPPING LIST", "PUT {count} PACKS OF {item} ON THE LIST",
         "REMOVE {item} FROM MY SHOPPING LIST", "WHAT'S ON MY SHOPPING LIST",
         "DO WE NEED {item}")
    + _t("order", "ORDER {product}", "HOW MUCH DOES {product} COST",
         "FIND ME {product} ONLINE", "TRACK MY ORDER OF {product}",
         "ADD {product} TO MY CART")
    + _t("reminder", "REMIND ME TO {task} AT {time}", "REMIND ME TO {task} {day}",
         "REMIND ME IN {duration} TO {task}", "WHAT ARE MY REMINDERS FOR {day}")
    + _t("calendar", "WHAT'S ON MY CALENDAR {day}", "AM I FREE {day} AT {time}",
         "SCHEDULE A MEETING WITH {contact} {day}")
    + _t("navigation", "NAVIGATE TO {place}", "HOW LONG DOES IT TAKE TO DRIVE TO {city}",
         "GET ME DIRECTIONS TO {place}", "HOW FAR IS {city} FROM HERE",
         "BOOK A TRAIN TO {city} {day}", "FIND A HOTEL IN {city}")
    + _t("smart_home", "TURN ON THE {device} IN {room}", "TURN OFF THE {device}",
         "SET THE THERMOSTAT TO {temperature}", "DIM THE LIGHTS IN {room}",
         "IS THE {device} STILL ON", "LOCK THE FRONT DOOR")
    + _t("news", "WHAT'S THE LATEST NEWS ABOUT {topic}", "READ ME THE HEADLINES",
         "ANY NEWS ABOUT {athlete}", "WHAT'S HAPPENING IN {city} TODAY",
         "GIVE ME THE {topic} NEWS")
    + _t("general_query", "WHAT TIME IS IT", "WHAT'S THE DATE TODAY", "TELL ME A JOKE",
         "HOW DO YOU SPELL {city}", "WHAT TIME IS IT IN {city}", "CONVERT {count} MILES TO KILOMETRES",
         "WHAT DAY OF THE WEEK IS {date}", "WHAT HAPPENED IN {year}", "HOW MANY DAYS UNTIL {date}")
    + _t("business", "WHAT'S THE SHARE PRICE OF {company}", "CALL {company} CUSTOMER SERVICE",
         "WHEN DOES {company} OPEN {day}", "FIND THE NEAREST {company} OFFICE",
         "HOW DID {company} DO IN {year}")
    + _t("calendar", "BOOK A DENTIST APPOINTMENT ON {date}", "WHAT DID I DO ON {date}")
    + _t("reminder", "REMIND ME ON {date} TO {task}")
    + _t("sports", "WHO WON THE CHAMPIONSHIP IN {year}")
    + _t("play_music", "PLAY THE BIGGEST HITS OF {year}")
)

#: Request templates that only the ``test-other`` split uses: other wordings of the same
#: intents and slots, never heard in training (LibriSpeech's ``test-other`` spirit).
OTHER_TEMPLATES: tuple[Template, ...] = tuple(
    _t("set_timer", "COULD YOU SET A TIMER FOR {duration}", "I NEED A TIMER FOR {duration}")
    + _t("set_alarm", "PLEASE WAKE ME AT {time} ON {day}", "AT {time} PLEASE WAKE ME UP")
    + _t("weather", "WILL IT BE COLD IN {city} {day}", "TELL ME THE WEATHER IN {city}")
    + _t("play_music", "PUT ON SOME {genre}", "CAN YOU PLAY SOMETHING BY {artist} IN {room}")
    + _t("call", "GIVE {contact} A CALL", "CAN YOU CALL {contact}")
    + _t("message", "SEND {contact} A MESSAGE SAYING {message}")
    + _t("sports", "WHAT WAS THE {team} SCORE {day}", "WHAT WERE THE RESULTS FOR {athlete} IN {event}")
    + _t("shopping_list", "WE ARE OUT OF {item}", "PLEASE ADD {item} TO THE LIST")
    + _t("order", "I WANT TO BUY {product}", "FIND {product} FOR ME")
    + _t("reminder", "{day} REMIND ME TO {task}")
    + _t("calendar", "WHAT IS ON MY CALENDAR FOR {date}")
    + _t("navigation", "HOW LONG IS THE DRIVE TO {place}", "HOW DO I GET TO {city}")
    + _t("smart_home", "TURN THE {device} OFF IN {room}", "IS IT COLD IN {room}")
    + _t("news", "ANY {topic} NEWS {day}")
    + _t("business", "IS {company} OPEN ON {day}")
    + _t("general_query", "WHAT DAY WAS {date} IN {year}")
)

# Generated read-speech sentences: patterns over the library-drawn nouns, adjectives and
# verbs (:mod:`.lexicon`), given names, cities and days. ``{a_adj}`` is the adjective with
# its article ("A CALM" / "AN ABSURD"). The second set is heard only in ``test-other``.
_SENTENCE_PATTERNS = (
    "THE {adj} {noun} CAN {verb} THE {other_noun}",
    "I WANT TO {verb} {a_adj} {noun}",
    "THEY {verb} THE {noun} BEFORE THE {other_noun}",
    "{first} WILL {verb} THE {adj} {noun} {day}",
    "DID YOU {verb} THE {noun} IN {city}",
    "MY {noun} IS VERY {adj}",
    "PLEASE DON'T {verb} THE {adj} {noun}",
    "WE FOUND {a_adj} {noun} NEAR THE {other_noun}",
)
_OTHER_SENTENCE_PATTERNS = (
    "CAN ANYONE {verb} {a_adj} {noun}",
    "THE {noun} WAS {adj} SAID {first}",
    "NOBODY CAN {verb} THE {noun} AND THE {other_noun}",
    "IT IS {adj} TO {verb} THE {noun} {day}",
)


def _article(word: str) -> str:
    return "AN" if word[0] in "AEIOU" else "A"


def _generated_sentence(rng: np.random.Generator, patterns: tuple[str, ...]) -> str:
    lex = lexicon()
    adj = _choice(rng, lex.adjectives)
    values = {
        "adj": adj,
        "a_adj": f"{_article(adj)} {adj}",
        "noun": _choice(rng, lex.nouns),
        "other_noun": _choice(rng, lex.nouns),
        "verb": _choice(rng, lex.verbs),
        "first": _choice(rng, lex.first_names),
        "city": _choice(rng, BASE_ENTITIES["city"]),
        "day": _choice(rng, BASE_ENTITIES["day"]),
    }
    return _choice(rng, patterns).format(**values)

#: Read-speech sentences spoken as they are (intent ``"general"``).
GENERAL_SENTENCES: tuple[str, ...] = (
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "SHE OPENED THE WINDOW AND LOOKED OUT AT THE GARDEN",
    "THE TRAIN WAS LATE BECAUSE OF THE SNOW",
    "HE READ THE LETTER TWICE BEFORE HE UNDERSTOOD IT",
    "WE WALKED ALONG THE RIVER UNTIL THE SUN WENT DOWN",
    "THE CHILDREN WERE PLAYING IN THE PARK ALL AFTERNOON",
    "IT WAS A COLD AND QUIET NIGHT IN THE VILLAGE",
    "THE OLD MAN SAT BY THE FIRE AND TOLD US A STORY",
    "MY SISTER BOUGHT A NEW BICYCLE LAST WEEK",
    "THE SHOP ON THE CORNER SELLS FRESH BREAD EVERY MORNING",
    "THEY DECIDED TO TAKE THE LONG ROAD HOME",
    "THE MEETING STARTS AT NINE AND ENDS AT NOON",
    "A SMALL BOAT WAS DRIFTING SLOWLY ACROSS THE LAKE",
    "HER VOICE WAS SOFT BUT EVERYONE HEARD HER",
    "THE DOCTOR SAID I SHOULD DRINK MORE WATER",
    "I LEFT MY KEYS ON THE KITCHEN TABLE AGAIN",
    "THE LIBRARY IS CLOSED ON SUNDAYS",
    "WE HAVE BEEN WAITING FOR THE BUS FOR TWENTY MINUTES",
    "THE CAT SLEPT ON THE WARM STONES IN THE SUN",
    "HE PROMISED TO CALL AS SOON AS HE ARRIVED",
    "THE MOUNTAINS WERE COVERED IN A THIN LAYER OF SNOW",
    "SHE PLAYS THE PIANO BETTER THAN ANYONE I KNOW",
    "THE RESTAURANT WAS FULL SO WE ATE AT HOME",
    "PLEASE CLOSE THE DOOR WHEN YOU LEAVE",
    "THE PRICE OF COFFEE WENT UP AGAIN THIS YEAR",
    "A LOUD NOISE WOKE THE WHOLE HOUSE",
    "THE TEACHER ASKED US TO READ THE FIRST CHAPTER",
    "WE SHOULD PLANT MORE TREES IN THE SPRING",
    "HIS FATHER WORKED AT THE HARBOUR FOR FORTY YEARS",
    "THE ROAD TO THE COAST WAS CLOSED FOR REPAIRS",
    "I DON'T THINK IT WILL RAIN BEFORE THE EVENING",
    "THE MUSEUM HAS A NEW EXHIBITION ABOUT SHIPS",
    "EVERY MORNING SHE RUNS FIVE KILOMETRES BEFORE BREAKFAST",
    "THE GARDEN WAS FULL OF ROSES AND TALL GRASS",
    "WE COULD HEAR THE SEA FROM OUR ROOM",
    "THE CAPTAIN ORDERED THE CREW TO RAISE THE SAILS",
    "IT TOOK THEM THREE DAYS TO CROSS THE DESERT",
    "THE BAKER WAS UP LONG BEFORE THE SUN",
    "YOU CAN'T JUDGE A BOOK BY ITS COVER",
    "THE LIGHTS OF THE CITY SHONE ACROSS THE WATER",
    "HE FORGOT HIS UMBRELLA AND GOT WET ON THE WAY HOME",
    "THE PHONE RANG JUST AS WE SAT DOWN TO DINNER",
    "THEIR HOUSE IS AT THE END OF A NARROW STREET",
    "THE STUDENTS FINISHED THE EXAM EARLY",
    "A GOOD NIGHT'S SLEEP MAKES A BIG DIFFERENCE",
    "THE WIND BLEW THE LEAVES ACROSS THE YARD",
    "SHE KEPT HER GRANDMOTHER'S LETTERS IN A WOODEN BOX",
    "THE FARMER WAS WORRIED ABOUT THE DRY SUMMER",
    "WE MET AT A SMALL CAFE NEAR THE STATION",
    "THE BRIDGE WAS BUILT MORE THAN A HUNDRED YEARS AGO",
    "THE BIRDS BEGAN TO SING AS THE SKY GREW LIGHT",
    "HE COOKED A SIMPLE MEAL OF RICE AND BEANS",
    "THE ANSWER WAS WRITTEN AT THE BOTTOM OF THE PAGE",
    "NOBODY KNEW WHERE THE OLD MAP HAD COME FROM",
    "THE CROWD CHEERED WHEN THE BAND CAME ON STAGE",
    "IT IS HARDER TO CLIMB DOWN THAN TO CLIMB UP",
    "THE NURSE BROUGHT HIM A GLASS OF WATER",
    "THEY PAINTED THE FENCE WHITE LAST SUMMER",
    "THE CLOCK IN THE HALL STOPPED AT MIDNIGHT",
    "WE SPENT THE WHOLE DAY ON THE BEACH",
)


@dataclass(frozen=True)
class Request:
    """One sampled utterance text with its SLU labels.

    Attributes:
        intent: intent label (``"general"`` for general sentences).
        text: transcript in LibriSpeech's alphabet.
        slots: slot type -> value (empty for general sentences).
        entities_new: whether an entity slot holds an update's NEW entity.
    """

    intent: str
    text: str
    slots: dict[str, str]
    entities_new: bool


def sample_request(
    rng: np.random.Generator,
    update: int | None = None,
    *,
    general_fraction: float = 0.25,
    held_out: bool = False,
) -> Request:
    """Sample one utterance text.

    Args:
        rng: random generator (the only source of randomness).
        update: ``None`` for base data (a request, or with probability
            ``general_fraction`` a general sentence: 40 % of them from
            :data:`GENERAL_SENTENCES`, 60 % generated from library word lists);
            ``1``..``5`` for a request whose entity slots (athlete, city, product,
            artist, team) hold that update's NEW entities, at least one per request.
        general_fraction: probability of a general sentence for base data, in ``[0, 1]``.
        held_out: draw from the ``test-other`` texts instead: :data:`OTHER_TEMPLATES`
            and generated sentences of patterns training never uses (base entities).

    Returns:
        The :class:`Request`.

    Raises:
        ValueError: if ``update`` or ``general_fraction`` is out of range, or
            ``held_out`` is combined with an update.
    """
    if not 0.0 <= general_fraction <= 1.0:
        raise ValueError(
            f"Expected argument `general_fraction` to be in [0, 1], but got {general_fraction!r}."
        )
    if held_out and update is not None:
        raise ValueError(
            f"Expected argument `update` to be None with `held_out=True` (test-other texts use "
            f"base entities only), but got {update!r}."
        )
    if update is None:
        if rng.random() < general_fraction:
            if held_out:
                return Request("general", _generated_sentence(rng, _OTHER_SENTENCE_PATTERNS), {}, False)
            if rng.random() < 0.4:
                return Request("general", _choice(rng, GENERAL_SENTENCES), {}, False)
            return Request("general", _generated_sentence(rng, _SENTENCE_PATTERNS), {}, False)
        pool = OTHER_TEMPLATES if held_out else TEMPLATES
        template = pool[int(rng.integers(len(pool)))]
        new: Mapping[str, tuple[str, ...]] = {}
    else:
        _check_update(update)
        new = UPDATE_ENTITIES[update - 1]
        # Pick the entity type first so that every kind of new entity is well covered.
        kind = _choice(rng, sorted(new))
        candidates = tuple(t for t in TEMPLATES if kind in t.slots)
        template = candidates[int(rng.integers(len(candidates)))]
    values: dict[str, str] = {}
    is_new = False
    for slot in template.slots:
        if slot in new:
            values[slot] = _choice(rng, new[slot])
            is_new = True
        elif slot in _GENERATED:
            values[slot] = _GENERATED[slot](rng)
        else:
            values[slot] = _choice(rng, BASE_ENTITIES[slot])
    text = template.fill(values)
    assert is_valid_transcript(text), text
    return Request(template.intent, text, values, is_new)


def free_sentence(rng: np.random.Generator, min_words: int = 3, max_words: int = 10) -> str:
    """A sequence of words drawn uniformly from :func:`free_text_words` (no grammar, no template).

    Training on some of these keeps a recognizer from leaning on the templates' word order
    (``make_corpus(free_text=...)``): the words must be heard, not guessed.

    Args:
        rng: random generator (the only source of randomness).
        min_words, max_words: inclusive range of the number of words.

    Returns:
        The transcript, e.g. ``"TIMER CALM OSLO FIFTEEN"``.

    Example:
        >>> is_valid_transcript(free_sentence(np.random.default_rng(0)))
        True
    """
    words = free_text_words()
    while True:
        n = int(rng.integers(min_words, max_words + 1))
        text = " ".join(words[int(i)] for i in rng.integers(len(words), size=n))
        padded = f" {text} "
        # words of the base vocabulary can still line up into an update's new multi-word name
        if not any(phrase in padded for phrase in _update_phrases()):
            return text


@functools.lru_cache(maxsize=1)
def free_text_words() -> tuple[str, ...]:
    """The words free sentences draw from: the base vocabulary (no update's new entity words), sorted."""
    return tuple(sorted(vocabulary(updates=False)))


@functools.lru_cache(maxsize=1)
def _update_phrases() -> tuple[str, ...]:
    """Every update's new entity names, padded with spaces for whole-word matching."""
    return tuple(f" {v} " for ents in UPDATE_ENTITIES for values in ents.values() for v in values)


def vocabulary(updates: bool = True) -> set[str]:
    """Every word that sampled texts can contain (base, general and, with ``updates``, all updates).

    Args:
        updates: include the words of the updates' new entities.

    Returns:
        Set of upper-case words.
    """
    words: set[str] = set()
    lex = lexicon()
    texts = [t.pattern for t in TEMPLATES + OTHER_TEMPLATES] + list(GENERAL_SENTENCES)
    texts += list(_SENTENCE_PATTERNS + _OTHER_SENTENCE_PATTERNS)
    texts += list(lex.nouns + lex.adjectives + lex.verbs + lex.first_names)
    words.update(("AN", "A"))
    for ents in (BASE_ENTITIES, *(UPDATE_ENTITIES if updates else ())):
        for values in ents.values():
            texts.extend(values)
    for text in texts:
        words.update(w for w in _SLOT.sub(" ", text).split())
    words.update(_ONES)
    words.update(w for w in _TENS if w != "_")
    words.update(("HUNDRED", "THOUSAND", "MINUTE", "MINUTES", "SECONDS", "HOUR", "HOURS",
                  "HALF", "AN", "AND", "A", "QUARTER", "OF", "O'CLOCK", "PAST", "TO", "OH",
                  "NOON", "MIDNIGHT", "SUNRISE", "IN", "THE", "MORNING", "EVENING",
                  "TONIGHT", "AFTERNOON", "DEGREES", "PERCENT"))
    words.update(_MONTHS)
    words.update(("FIRST", "SECOND", "THIRD", "FIFTH", "EIGHTH", "NINTH", "TWELFTH"))
    words.update(w + "TH" for w in ("FOUR", "SIX", "SEVEN", "TEN", "ELEVEN", "THIRTEEN", "FOURTEEN",
                                     "FIFTEEN", "SIXTEEN", "SEVENTEEN", "EIGHTEEN", "NINETEEN"))
    words.update(("TWENTIETH", "THIRTIETH"))
    assert all(set(w) <= set(string.ascii_uppercase + "'") for w in words)
    return words
