"""The entities the synthetic requests mention: the base lists and each update's new ones.

An update's entities never occur in the base lists nor in another update, so an update
really teaches new names (the property the neural-diff benchmarks rely on).
"""

from __future__ import annotations

from typing import Mapping

from types import MappingProxyType

from lightning_amortized.data.lexicon import lexicon

#: Number of model updates with their own new entities.
NUM_UPDATES = 5

__all__ = ["BASE_ENTITIES", "NUM_UPDATES", "UPDATE_ENTITIES", "UPDATE_THEMES", "base_entities", "update_entities"]

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


def _with_library_lists(base: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Add the names, places and companies drawn from libraries (see :mod:`.lexicon`).

    Contacts gain 220 given names and 70 full names, athletes 90 full names (pairs of
    a given and a family name in a fixed order), cities 130 places from eleven locales,
    and a new ``company`` slot holds 90 company names.
    """
    lex = lexicon()
    first, last = lex.first_names, lex.last_names
    full = tuple(f"{first[(7 * i) % len(first)]} {last[(3 * i) % len(last)]}" for i in range(160))
    out = dict(base)
    out["contact"] = base["contact"] + first + full[:70]
    out["athlete"] = base["athlete"] + full[70:]
    out["city"] = base["city"] + lex.cities
    out["company"] = lex.companies
    return {slot: tuple(dict.fromkeys(values)) for slot, values in out.items()}


def _freeze(d: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({k: tuple(v) for k, v in d.items()})


#: Base entities by slot type (read-only).
BASE_ENTITIES: Mapping[str, tuple[str, ...]] = _freeze(_with_library_lists(_BASE))
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
