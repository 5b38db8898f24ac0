"""Reply text worth hearing: templates, readable renderings, numbers and units in words.

A workflow's reply comes from its ``reply`` template when one is configured
(``str.format`` over the output: ``{output}`` or the output's fields), else
from a readable rendering of the output. Numbers are written as words
("two hundred and fifty grams", "twelve euros and fifty cents"), so every
text-to-speech engine says them the same way. A reply longer than
``max_reply_words`` is cut and ends with "the rest is in the run" and its id.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

import msgspec

from .config import VoiceConfig
from .grammar import UNITS, spoken_words
from .numbers import number_to_words

__all__ = ["render_reply", "spoken_value", "summarise"]


def _money(cents: int, currency: str) -> str:
    whole, rest = divmod(abs(int(cents)), 100)
    unit = currency if whole != 1 else currency.rstrip("s")
    text = f"{number_to_words(whole)} {unit}"
    if rest:
        text += f" and {number_to_words(rest)} cent{'s' if rest != 1 else ''}"
    return ("minus " if cents < 0 else "") + text


def spoken_value(value: Any, key: str | None = None, *, currency: str = "euros") -> str:
    """``value`` as words; ``key`` gives units (``*_cents`` as money, ``*_grams`` as grams)."""
    words = spoken_words(key) if key else []
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if words and words[-1] == "cents" and float(value).is_integer():
            return _money(int(value), currency)
        text = number_to_words(value)
        if words and words[-1] in UNITS:
            unit = words[-1]
            text += f" {unit if value != 1 else unit.rstrip('s')}"
        return text
    if isinstance(value, str):
        return value
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, list | tuple):
        if not value:
            return "none"
        parts = [spoken_value(v, key, currency=currency) for v in value]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if isinstance(value, Mapping):
        parts = []
        for k, v in value.items():
            label = " ".join(w for w in spoken_words(str(k)) if w not in ("cents", "grams"))
            parts.append(f"{label} {spoken_value(v, str(k), currency=currency)}".strip())
        return ", ".join(parts)
    return str(value)


class _Spoken(Mapping[str, Any]):
    """The template's namespace: ``output`` and the output's fields, spoken."""

    def __init__(self, output: Any, currency: str) -> None:
        self.output = msgspec.to_builtins(output) if output is not None else None
        self.currency = currency

    def __getitem__(self, key: str) -> str:
        if key == "output":
            return spoken_value(self.output, currency=self.currency)
        if isinstance(self.output, Mapping) and key in self.output:
            return spoken_value(self.output[key], key, currency=self.currency)
        raise KeyError(key)

    def __iter__(self) -> Any:
        keys = ["output"]
        if isinstance(self.output, Mapping):
            keys += list(self.output)
        return iter(keys)

    def __len__(self) -> int:
        return len(list(iter(self)))


def summarise(text: str, run_id: str | None, max_words: int) -> str:
    """``text`` cut to ``max_words`` words, pointing at the run for the rest."""
    words = text.split()
    if len(words) <= max_words:
        return text
    cut = " ".join(words[:max_words]).rstrip(",;:")
    where = f" {run_id}" if run_id else ""
    return f"{cut}. The rest is in the run{where}."


def render_reply(workflow: str, output: Any, config: VoiceConfig, run_id: str | None = None) -> str:
    """What to say about ``workflow``'s ``output``: its template, else a readable rendering."""
    template = config.workflow(workflow).reply
    namespace = _Spoken(output, config.currency)
    text: str | None = None
    if template:
        try:
            text = string.Formatter().vformat(template, (), namespace)
        except (KeyError, IndexError, ValueError, AttributeError):
            text = None  # a template naming a field the output lacks: fall back
    if text is None:
        name = " ".join(spoken_words(workflow))
        body = namespace["output"]
        text = f"{name}: {body}" if body else f"{name} is done."
    return summarise(text, run_id, config.max_reply_words)
