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

The vocabulary is kept to roughly a thousand words so that a small character CTC model
can learn it in minutes.

Example::

    >>> import numpy as np
    >>> from lightning_amortized.data.templates import sample_request
    >>> req = sample_request(np.random.default_rng(0), update=2)
    >>> req.entities_new, is_valid_transcript(req.text)
    (True, True)
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

__all__ = [
    "BASE_ENTITIES",
    "GENERAL_SENTENCES",
    "NUM_UPDATES",
    "TEMPLATES",
    "UPDATE_ENTITIES",
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

#: Number of model updates with their own new entities.
NUM_UPDATES = 5

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
# Numbers, times and durations spelled out as words.
# ---------------------------------------------------------------------------------
_ONES = (
    "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN "
    "FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN"
).split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()


def spell_number(n: int) -> str:
    """Spell a non-negative integer below one million in upper-case words.

    Args:
        n: integer in ``[0, 999999]``.

    Returns:
        The words, e.g. ``spell_number(125) == "ONE HUNDRED TWENTY FIVE"``.

    Raises:
        ValueError: if ``n`` is out of range.

    Example::

        >>> spell_number(42)
        'FORTY TWO'
    """
    if not 0 <= n < 1_000_000:
        raise ValueError(f"Expected argument `n` to be in [0, 999999], but got {n!r}.")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " HUNDRED" + ("" if rest == 0 else " " + spell_number(rest))
    thousands, rest = divmod(n, 1000)
    return spell_number(thousands) + " THOUSAND" + ("" if rest == 0 else " " + spell_number(rest))


def _choice(rng: np.random.Generator, values: tuple[str, ...] | list[str]) -> str:
    return values[int(rng.integers(len(values)))]


def _duration(rng: np.random.Generator) -> str:
    kind = int(rng.integers(6))
    if kind <= 2:
        n = int(rng.integers(1, 60))
        return "ONE MINUTE" if n == 1 else f"{spell_number(n)} MINUTES"
    if kind == 3:
        n = _choice(rng, (10, 15, 20, 30, 40, 45, 90))
        return f"{spell_number(int(n))} SECONDS"
    if kind == 4:
        n = int(rng.integers(1, 13))
        return "ONE HOUR" if n == 1 else f"{spell_number(n)} HOURS"
    return _choice(rng, ("HALF AN HOUR", "AN HOUR AND A HALF", "A QUARTER OF AN HOUR",
                         "ONE HOUR AND TEN MINUTES", "TWO HOURS AND THIRTY MINUTES"))


def _clock_time(rng: np.random.Generator) -> str:
    hour = spell_number(int(rng.integers(1, 13)))
    kind = int(rng.integers(7))
    if kind == 0:
        text = f"{hour} O'CLOCK"
    elif kind == 1:
        text = f"HALF PAST {hour}"
    elif kind == 2:
        text = f"QUARTER {_choice(rng, ('PAST', 'TO'))} {hour}"
    elif kind == 3:
        minute = int(rng.integers(1, 10))
        text = f"{hour} OH {spell_number(minute)}"
    elif kind == 4:
        return _choice(rng, ("NOON", "MIDNIGHT", "SUNRISE"))
    else:
        text = f"{hour} {spell_number(int(rng.choice([10, 15, 20, 25, 30, 40, 45, 50])))}"
    suffix = _choice(rng, ("", "", " IN THE MORNING", " IN THE EVENING", " TONIGHT",
                           " IN THE AFTERNOON"))
    return text + suffix


def _temperature(rng: np.random.Generator) -> str:
    return f"{spell_number(int(rng.integers(16, 29)))} DEGREES"


def _volume(rng: np.random.Generator) -> str:
    return f"{spell_number(int(rng.integers(1, 11)) * 10)} PERCENT"


def _count(rng: np.random.Generator) -> str:
    return spell_number(int(rng.integers(2, 13)))


_GENERATED = MappingProxyType(
    {
        "duration": _duration,
        "time": _clock_time,
        "temperature": _temperature,
        "volume": _volume,
        "count": _count,
    }
)

# ---------------------------------------------------------------------------------
# Entities.
# ---------------------------------------------------------------------------------
_BASE: dict[str, tuple[str, ...]] = {
    "city": (
        "LONDON", "PARIS", "BERLIN", "MADRID", "ROME", "DUBLIN", "BOSTON", "CHICAGO",
        "SEATTLE", "DENVER", "AUSTIN", "TORONTO", "SYDNEY", "TOKYO", "CAIRO", "LISBON",
        "VIENNA", "PRAGUE", "OSLO", "ATHENS", "MIAMI", "PHOENIX", "NEW YORK",
        "SAN FRANCISCO", "LOS ANGELES", "EDINBURGH", "MANCHESTER", "AMSTERDAM",
        "BRUSSELS", "WARSAW",
    ),
    "place": (
        "THE AIRPORT", "THE TRAIN STATION", "THE OFFICE", "HOME", "THE NEAREST PHARMACY",
        "THE SUPERMARKET", "THE GYM", "THE LIBRARY", "THE HOSPITAL", "THE BEACH",
        "THE CITY CENTRE", "THE MUSEUM", "MY PARENTS' HOUSE", "THE STADIUM",
    ),
    "artist": (
        "THE BEATLES", "ADELE", "TAYLOR SWIFT", "MILES DAVIS", "QUEEN", "COLDPLAY",
        "BOB MARLEY", "NINA SIMONE", "DAVID BOWIE", "THE ROLLING STONES", "ELTON JOHN",
        "ARETHA FRANKLIN", "PRINCE", "MADONNA", "FRANK SINATRA", "JOHNNY CASH",
        "ELLA FITZGERALD", "STEVIE WONDER", "THE KILLERS", "NORAH JONES",
    ),
    "genre": (
        "JAZZ", "CLASSICAL MUSIC", "ROCK", "POP MUSIC", "HIP HOP", "COUNTRY MUSIC",
        "THE BLUES", "REGGAE", "FOLK MUSIC", "SOMETHING RELAXING", "DANCE MUSIC",
    ),
    "contact": (
        "MOM", "DAD", "GRANDMA", "ANNA", "JAMES", "SARAH", "MICHAEL", "EMMA", "DAVID",
        "OLIVIA", "PETER", "LUCY", "THOMAS", "SOPHIE", "DANIEL", "RACHEL", "BEN", "KATE",
        "MY BROTHER", "MY SISTER", "THE DOCTOR", "MY BOSS",
    ),
    "team": (
        "THE LAKERS", "THE YANKEES", "ARSENAL", "LIVERPOOL", "CHELSEA", "REAL MADRID",
        "BARCELONA", "THE CELTICS", "THE RED SOX", "THE PATRIOTS", "MANCHESTER UNITED",
        "THE BULLS", "THE GIANTS", "THE DODGERS", "JUVENTUS", "THE WARRIORS",
    ),
    "athlete": (
        "SERENA WILLIAMS", "USAIN BOLT", "MICHAEL PHELPS", "LIONEL MESSI", "ROGER FEDERER",
        "SIMONE BILES", "TIGER WOODS", "LEBRON JAMES", "RAFAEL NADAL", "CRISTIANO RONALDO",
        "NOVAK DJOKOVIC", "LEWIS HAMILTON", "KATIE LEDECKY", "TOM BRADY", "MO FARAH",
        "ANDY MURRAY",
    ),
    "item": (
        "MILK", "BREAD", "EGGS", "BUTTER", "CHEESE", "APPLES", "BANANAS", "ORANGES",
        "COFFEE", "TEA", "RICE", "PASTA", "TOMATOES", "POTATOES", "ONIONS", "CARROTS",
        "CHICKEN", "YOGURT", "ORANGE JUICE", "OLIVE OIL", "TOILET PAPER", "DISH SOAP",
        "TOOTHPASTE", "SHAMPOO", "BATTERIES", "CEREAL", "FLOUR", "SUGAR", "HONEY",
        "PEANUT BUTTER", "LETTUCE", "GRAPES", "STRAWBERRIES", "SALMON", "BEANS",
    ),
    "product": (
        "A PHONE CHARGER", "NEW HEADPHONES", "A COFFEE MACHINE", "RUNNING SHOES",
        "A BIRTHDAY CARD", "A WATER BOTTLE", "A DESK LAMP", "PRINTER INK",
        "A YOGA MAT", "A TENNIS RACKET", "AN UMBRELLA", "A WINTER COAT",
    ),
    "room": (
        "THE KITCHEN", "THE LIVING ROOM", "THE BEDROOM", "THE BATHROOM", "THE HALLWAY",
        "THE GARAGE", "THE OFFICE", "THE GARDEN", "THE DINING ROOM",
    ),
    "device": (
        "LIGHTS", "HEATING", "FAN", "TELEVISION", "RADIO", "AIR CONDITIONING",
        "COFFEE MACHINE", "DISHWASHER", "WASHING MACHINE", "ALARM SYSTEM",
    ),
    "day": (
        "TODAY", "TOMORROW", "MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY",
        "SATURDAY", "SUNDAY", "THIS WEEKEND", "NEXT WEEK", "TONIGHT",
    ),
    "topic": (
        "POLITICS", "SPORTS", "TECHNOLOGY", "SCIENCE", "THE ECONOMY", "HEALTH",
        "THE WEATHER", "BUSINESS", "ENTERTAINMENT", "TRAVEL", "LOCAL NEWS",
    ),
    "event": (
        "THE FINAL", "THE SEMI FINAL", "THE HUNDRED METRES", "THE MARATHON", "THE RELAY",
        "THE OPENING ROUND", "THE QUALIFIERS", "THE CHAMPIONSHIP",
    ),
    "task": (
        "CALL THE BANK", "WATER THE PLANTS", "TAKE MY MEDICINE", "PAY THE RENT",
        "BUY A PRESENT", "FEED THE CAT", "WALK THE DOG", "PICK UP THE KIDS",
        "BOOK A TABLE", "SEND THE REPORT", "CHECK THE OVEN", "CLEAN THE KITCHEN",
    ),
    "message": (
        "I'M RUNNING LATE", "I'LL BE HOME SOON", "SEE YOU TONIGHT", "CALL ME BACK",
        "HAPPY BIRTHDAY", "THE MEETING IS CANCELLED", "I'M ON MY WAY", "THANK YOU",
        "DON'T FORGET THE KEYS", "LET'S MEET AT THE CAFE",
    ),
}

#: Short names of the events behind each update (for documentation and corpus.json).
UPDATE_THEMES: tuple[str, ...] = (
    "summer games swimming",
    "winter games and a city marathon",
    "a gadget launch season",
    "a music festival line up",
    "a new football season",
)

# New entities per update: never in the base lists nor in another update, several with
# unusual spellings the model has never seen (the way Olympic swimmers' names appear).
_UPDATES: tuple[dict[str, tuple[str, ...]], ...] = (
    {  # update 1
        "athlete": (
            "XANTHE ABARAVICIUS", "TJORVEN HALLGRIMSSON", "SIOBHAN MCQUAID",
            "KYRILLOS PAPADAKIS", "AOIFE RINGROSE", "DMYTRO ZHELEZNYAK",
            "MAKOA KEALOHA", "HIROKI TSUCHIYAMA",
        ),
        "city": ("SAINT DENIS", "NANTERRE", "MARSEILLE", "CHATEAUROUX"),
        "product": ("AQUASPRINT GOGGLES", "A HYDROFLEX SWIM CAP", "A POOLSIDE TOWEL"),
        "artist": ("LUMIERE ORCHESTRA", "JOSEPHINE DUBREUIL"),
        "team": ("THE DOLPHIN SQUAD", "THE TRICOLOUR SWIM CLUB"),
    },
    {  # update 2
        "athlete": (
            "EIRIK VAAGE", "NJERI WAMBUGU", "SVETLANA ZHUKOVSKAYA", "TADHG O'SULLIVAN",
            "YOHANNES GEBREMARIAM", "CAOIMHE FITZGIBBON", "MIKAELA SHIFFRINSKY",
            "OSKARI LEHTONEN",
        ),
        "city": ("TROMSO", "REYKJAVIK", "ULAANBAATAR", "TBILISI"),
        "product": ("A THERMOWEAVE JACKET", "SNOWGRIP BOOTS", "A GLACIER THERMOS"),
        "artist": ("THE FJORD LANTERNS", "INGRID SKAARSGARD"),
        "team": ("THE NORDHAVN HUSKIES", "THE ALPINE WOLVES"),
    },
    {  # update 3
        "athlete": (
            "PRIYANKA VENKATARAMAN", "JOAQUIN ECHEVERRIA", "KWABENA MENSAH",
            "LJUBICA PAVLOVIC", "TAKUMI NAKAGAWARA", "ZOLTAN SZEKERES",
        ),
        "city": ("SHENZHEN", "BANGALORE", "TALLINN", "EINDHOVEN"),
        "product": (
            "A PIXELLA FOLD", "NOVAPAD ZED", "QUIXOTIQ EARBUDS", "A LUMIWATT BULB",
            "THE ZYNTHOS SPEAKER",
        ),
        "artist": ("SYNTHIA KOVALENKO", "THE CIRCUIT BREAKERZ"),
        "team": ("THE SILICON FALCONS", "THE DATA DRAGONS"),
    },
    {  # update 4
        "athlete": (
            "NGOZI ADEYEMI", "RHYDIAN PRYTHERCH", "BEATRIZ HAMMERSCHMIDT",
            "AKSEL TVEITEN", "MARGAUX DELACROIX", "SEAMUS MACGIOLLA",
        ),
        "city": ("GLASTONBURY", "ROSKILDE", "COACHELLA", "WERCHTER"),
        "product": ("A FESTIVAL WRISTBAND", "A CAMPING HAMMOCK", "RAINPROOF PONCHOS"),
        "artist": (
            "THE MARIGOLD PHANTOMS", "ZYLOPHIA", "KWESI ASANTEWAA", "NIAMH AND THE NIGHTJARS",
            "VELVETEEN ECHO", "DJ QUASARIUS",
        ),
        "team": ("THE FESTIVAL FOXES", "THE MUDLARK UNITED"),
    },
    {  # update 5
        "athlete": (
            "ILKAY BOZKURT", "WOJCIECH SZCZESNIAK", "THIAGO ALCANTRIZ", "DJIBRIL KOUYATE",
            "SOREN KJAERGAARD", "EDERSON PAIXAO", "CHIDERA OKAFOR",
        ),
        "city": ("KILMARNOCK", "WREXHAM", "GELSENKIRCHEN", "PORTO ALEGRE"),
        "product": ("A REPLICA JERSEY", "A STADIUM SCARF", "A SEASON TICKET"),
        "artist": ("THE TERRACE CHOIR", "MARCUS OYELARAN"),
        "team": (
            "PORTHAVEN ROVERS", "KILMARNAGH ATHLETIC", "FC VALDORIA", "BRAXTON WANDERERS",
            "SAINT AUBYN HOTSPUR",
        ),
    },
)


def _freeze(d: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({k: tuple(v) for k, v in d.items()})


#: Base entities by slot type (read-only).
BASE_ENTITIES: Mapping[str, tuple[str, ...]] = _freeze(_BASE)
#: New entities of updates 1..5 (index 0 is update 1), by slot type (read-only).
UPDATE_ENTITIES: tuple[Mapping[str, tuple[str, ...]], ...] = tuple(_freeze(u) for u in _UPDATES)


def base_entities() -> dict[str, list[str]]:
    """Return a copy of the base entity lists, by slot type.

    Returns:
        ``{slot_type: [entity, ...]}`` (upper-case phrases).
    """
    return {k: list(v) for k, v in BASE_ENTITIES.items()}


def update_entities(update: int) -> dict[str, list[str]]:
    """Return a copy of the NEW entities introduced by one update, by slot type.

    Args:
        update: update number, 1 to :data:`NUM_UPDATES`.

    Returns:
        ``{slot_type: [entity, ...]}``; none of them occurs in the base data.

    Raises:
        ValueError: if ``update`` is out of range.
    """
    _check_update(update)
    return {k: list(v) for k, v in UPDATE_ENTITIES[update - 1].items()}


def _check_update(update: int) -> None:
    if not isinstance(update, int) or not 1 <= update <= NUM_UPDATES:
        raise ValueError(
            f"Expected argument `update` to be an integer in [1, {NUM_UPDATES}], "
            f"but got {update!r}."
        )


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
            if slot not in _BASE and slot not in _GENERATED:
                raise ValueError(f"Template {self.pattern!r} uses unknown slot {slot!r}.")
        object.__setattr__(self, "slots", slots)

    def fill(self, values: Mapping[str, str]) -> str:
        """Substitute slot values into the pattern.

        Args:
            values: one upper-case value per slot of this template.

        Returns:
            The transcript.
        """
        return _SLOT.sub(lambda m: values[m.group(1)], self.pattern)


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
         "HOW DO YOU SPELL {city}", "WHAT TIME IS IT IN {city}", "CONVERT {count} MILES TO KILOMETRES")
)

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
    general_fraction: float = 0.2,
) -> Request:
    """Sample one utterance text.

    Args:
        rng: random generator (the only source of randomness).
        update: ``None`` for base data (a request, or with probability
            ``general_fraction`` a general sentence); ``1``..``5`` for a request whose
            entity slots (athlete, city, product, artist, team) hold that update's NEW
            entities, at least one per request.
        general_fraction: probability of a general sentence for base data, in ``[0, 1]``.

    Returns:
        The :class:`Request`.

    Raises:
        ValueError: if ``update`` or ``general_fraction`` is out of range.
    """
    if not 0.0 <= general_fraction <= 1.0:
        raise ValueError(
            f"Expected argument `general_fraction` to be in [0, 1], but got {general_fraction!r}."
        )
    if update is None:
        if rng.random() < general_fraction:
            return Request("general", _choice(rng, GENERAL_SENTENCES), {}, False)
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
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


def vocabulary() -> set[str]:
    """Every word that sampled texts can contain (base, general and all updates).

    Returns:
        Set of upper-case words.
    """
    words: set[str] = set()
    texts = [t.pattern for t in TEMPLATES] + list(GENERAL_SENTENCES)
    for ents in (BASE_ENTITIES, *UPDATE_ENTITIES):
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
    assert all(set(w) <= set(string.ascii_uppercase + "'") for w in words)
    return words
