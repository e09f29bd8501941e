"""Numbers, times, durations and other generated slot values, spelled out as words."""

from __future__ import annotations

import operator
from types import MappingProxyType

import numpy as np

__all__ = ["spell_number"]

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
        ValueError: if ``n`` is not an integer (a float or a bool) or is out of range.

    Example::

        >>> spell_number(42)
        'FORTY TWO'
    """
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)  # ints and numpy integers; not floats
    except TypeError:
        raise ValueError(f"Expected argument `n` to be an int, but got {n!r} ({type(n).__name__}).") from None
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


_MONTHS = ("JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST",
           "SEPTEMBER", "OCTOBER", "NOVEMBER", "DECEMBER")


def _words(text: str) -> str:
    """num2words output in the transcript alphabet (``"twenty-first"`` -> ``"TWENTY FIRST"``)."""
    return " ".join(text.replace("-", " ").replace(",", " ").upper().split())


def _date(rng: np.random.Generator) -> str:
    """A calendar date, ``"THE TWENTY FIRST OF MARCH"`` or ``"MARCH TWENTY FIRST"``."""
    from num2words import num2words

    day = _words(num2words(int(rng.integers(1, 29)), to="ordinal"))
    month = _choice(rng, _MONTHS)
    return f"THE {day} OF {month}" if rng.random() < 0.5 else f"{month} {day}"


def _year(rng: np.random.Generator) -> str:
    """A year from 1950 to 2029 read as years are (``"NINETEEN EIGHTY FOUR"``, ``"TWENTY TWENTY"``)."""
    from num2words import num2words

    return _words(num2words(int(rng.integers(1950, 2030)), to="year"))


_GENERATED = MappingProxyType(
    {
        "duration": _duration,
        "time": _clock_time,
        "temperature": _temperature,
        "volume": _volume,
        "count": _count,
        "date": _date,
        "year": _year,
    }
)
