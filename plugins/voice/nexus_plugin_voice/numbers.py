"""Numbers in words, both ways: ``250`` <-> ``"two hundred and fifty"``.

The grammar lets a caller say any whole number below a million (and decimals
as ``"three point five"``); :func:`words_to_number` turns what was heard into
a real ``int`` or ``float`` before the core validates it (validation is strict:
no string is coerced to a number). :func:`number_to_words` is the reverse, for
replies, so a reply reads the same whatever text-to-speech engine speaks it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ONES", "TEENS", "TENS", "number_to_words", "words_to_number"]

ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = (
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

_SMALL = {word: value for value, word in enumerate(ONES)}
_SMALL.update({word: 10 + value for value, word in enumerate(TEENS)})
_SMALL.update({word: 10 * value for value, word in enumerate(TENS) if word})
_SMALL.update({"a": 1, "an": 1})


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
        if rest:
            words.append("and")
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(TENS[tens])
        if ones:
            words.append(ONES[ones])
    elif rest >= 10:
        words.append(TEENS[rest - 10])
    elif rest or not hundreds:
        words.append(ONES[rest])
    return words


def number_to_words(value: float, *, places: int = 2) -> str:
    """``1250`` -> ``"one thousand two hundred and fifty"``; ``3.5`` -> ``"three point five"``.

    Whole numbers of any size are spelled in groups of thousands; a float is
    rounded to ``places`` decimals, each spoken as a digit.
    """
    if isinstance(value, float) and not value.is_integer():
        whole, _, fraction = f"{abs(value):.{places}f}".rstrip("0").partition(".")
        sign = "minus " if value < 0 else ""
        digits = " ".join(ONES[int(d)] for d in fraction)
        return f"{sign}{number_to_words(int(whole))} point {digits}"
    n = int(value)
    if n < 0:
        return "minus " + number_to_words(-n)
    if n == 0:
        return "zero"
    groups: list[str] = []
    for scale in ("", "thousand", "million", "billion", "trillion"):
        n, chunk = divmod(n, 1000)
        if chunk:
            words = _below_thousand(chunk)
            groups.insert(0, " ".join(words + ([scale] if scale else [])))
        if not n:
            break
    else:
        return str(value)  # beyond trillions: digits
    return " ".join(groups)


def words_to_number(words: Sequence[str]) -> int | float:
    """``["two", "hundred", "and", "fifty"]`` -> ``250``; ``["three", "point", "five"]`` -> ``3.5``.

    Accepts what the grammar's number rule produces (and a leading
    ``"minus"``); anything else is a :class:`ValueError` naming the word.
    """
    tokens = list(words)
    if not tokens:
        raise ValueError("no number was said")
    sign = 1
    if tokens[0] in ("minus", "negative"):
        sign, tokens = -1, tokens[1:]
    if "point" in tokens:
        at = tokens.index("point")
        whole = words_to_number(tokens[:at]) if at else 0
        digits = tokens[at + 1 :]
        if not digits or any(d not in ONES for d in digits):
            raise ValueError("after 'point' say digits, one at a time")
        fraction = float("0." + "".join(str(ONES.index(d)) for d in digits))
        return sign * (whole + fraction)
    total = current = 0
    seen = False
    for word in tokens:
        if word == "and":
            continue
        if word in _SMALL:
            current += _SMALL[word]
        elif word == "hundred":
            current = (current or 1) * 100
        elif word in ("thousand", "million"):
            total += (current or 1) * (1000 if word == "thousand" else 1_000_000)
            current = 0
        else:
            raise ValueError(f"{word!r} is not part of a number")
        seen = True
    if not seen:
        raise ValueError("no number was said")
    return sign * (total + current)
