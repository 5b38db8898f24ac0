"""The spoken grammar of a host's workflows: one tree, rendered as JSGF and parsed back.

:func:`build_grammar` turns the workflows a caller may run into a
:class:`Grammar`: each workflow's name and spoken aliases, then its inputs in
any order, each the way its JSON Schema allows it to be said:

- an enum: its values ("germany" for ``DE``, or a configured phrase);
- an integer or number: a spoken number ("two hundred and fifty"), after the
  input's name ("limit five") or before its unit ("two hundred grams" for
  ``weight_grams``);
- a boolean: its name for true ("express"), "not" and its name for false
  (only the form that differs from the default, when there is one);
- a string with a pattern: the phrases configured for it (``values``);
- free text: up to ``max_free_words`` words of the configured vocabulary;
- a list of enums: "tags office and gift";
- a list of objects with one phrase-valued string and a count: "two mugs and
  a pan" (``items``).

Besides workflows the grammar has the session's commands: "cancel it",
"repeat that", "what is the status of my last order" and "help".

A workflow is said by its name (underscores as spaces), its ``title``
(``@app.workflow(title=...)``) or an alias from the config.

The same tree renders the JSGF a recognizer is restricted to
(:meth:`Grammar.jsgf`) and parses a transcript back (:meth:`Grammar.parse`),
checking that the whole sentence matches: recognizers force out-of-grammar
speech onto the nearest phrase and may stop half-way, so a transcript that is
not a full sentence of the grammar is never run. What was heard is converted
to real values (``int``, ``float``, ``bool``, the enum's value) before the core
validates it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .config import VoiceConfig
from .numbers import ONES, TEENS, TENS, words_to_number

__all__ = [
    "COUNTRY_NAMES",
    "Grammar",
    "Intent",
    "build_grammar",
    "spoken_words",
]

#: How two-letter country codes are said when an enum holds them.
COUNTRY_NAMES: dict[str, list[str]] = {
    "DE": ["germany"],
    "FR": ["france"],
    "NL": ["the netherlands", "netherlands", "holland"],
    "US": ["the united states", "united states", "america"],
    "GB": ["the united kingdom", "united kingdom", "britain"],
    "IT": ["italy"],
    "ES": ["spain"],
    "BE": ["belgium"],
    "AT": ["austria"],
    "CH": ["switzerland"],
    "PL": ["poland"],
    "SE": ["sweden"],
    "CA": ["canada"],
    "JP": ["japan"],
}
#: Input-name endings that are units: ``weight_grams`` is said "two hundred grams".
UNITS = frozenset(
    {"grams", "kilograms", "kg", "cents", "days", "hours", "minutes", "seconds", "meters", "items"}
)

# -- the tree ------------------------------------------------------------------------


class _Node:
    __slots__ = ()


class Words(_Node):
    """Literal words."""

    __slots__ = ("words",)

    def __init__(self, words: Sequence[str]) -> None:
        self.words = tuple(words)


class Alt(_Node):
    """One of several."""

    __slots__ = ("options",)

    def __init__(self, options: Sequence[_Node]) -> None:
        self.options = tuple(options)


class Seq(_Node):
    """One after the other."""

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[_Node]) -> None:
        self.parts = tuple(parts)


class Opt(_Node):
    """Zero or one."""

    __slots__ = ("node",)

    def __init__(self, node: _Node) -> None:
        self.node = node


class Star(_Node):
    """Zero or more (``plus``: one or more)."""

    __slots__ = ("node", "plus")

    def __init__(self, node: _Node, *, plus: bool = False) -> None:
        self.node = node
        self.plus = plus


class Ref(_Node):
    """A named rule (rendered ``<name>``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Capture(_Node):
    """Record what ``node`` matched under ``key``, converted by ``convert(words)``."""

    __slots__ = ("convert", "key", "node")

    def __init__(self, key: str, node: _Node, convert: Callable[[list[str]], Any]) -> None:
        self.key = key
        self.node = node
        self.convert = convert


class Group(_Node):
    """Captures inside ``node`` collected into one dict, recorded under ``key``."""

    __slots__ = ("key", "node")

    def __init__(self, key: str, node: _Node) -> None:
        self.key = key
        self.node = node


def _const(value: Any) -> Callable[[list[str]], Any]:
    return lambda _words: value


def _phrases(phrases: Mapping[str, Any]) -> _Node:
    """Alternatives of phrases, each captured as its value (caller wraps in Capture)."""
    return Alt([Capture("", Words(p.split()), _const(v)) for p, v in phrases.items()])


# -- results -------------------------------------------------------------------------


class Intent:
    """What a transcript asks for: a workflow with inputs, or a session command.

    ``kind`` is ``"run"`` (``workflow`` and ``inputs`` set), ``"cancel"``,
    ``"repeat"``, ``"status"`` (``workflow`` may name the workflow asked
    about) or ``"help"``.
    """

    __slots__ = ("inputs", "kind", "transcript", "workflow")

    def __init__(
        self,
        kind: str,
        transcript: str,
        workflow: str | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.transcript = transcript
        self.workflow = workflow
        self.inputs = inputs or {}

    def __repr__(self) -> str:
        return f"Intent({self.kind!r}, {self.workflow!r}, {self.inputs!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Intent) and (self.kind, self.workflow, self.inputs) == (
            other.kind,
            other.workflow,
            other.inputs,
        )

    __hash__ = None  # type: ignore[assignment]


# -- building ------------------------------------------------------------------------


def spoken_words(text: str) -> list[str]:
    """``"add_to_cart"`` -> ``["add", "to", "cart"]``: lower-case words of a name or phrase."""
    return [w for w in re.split(r"[^a-z0-9']+", text.replace("_", " ").lower()) if w]


def _number_rules() -> dict[str, _Node]:
    digit = Alt([Words([w]) for w in ONES[1:]])
    teen = Alt([Words([w]) for w in TEENS])
    tens = Alt([Words([w]) for w in TENS if w])
    below100 = Alt([Seq([tens, Opt(Ref("digit"))]), teen, Ref("digit")])
    below1000 = Alt(
        [
            Seq(
                [Ref("digit"), Words(["hundred"]), Opt(Seq([Opt(Words(["and"])), Ref("below100")]))]
            ),
            Ref("below100"),
        ]
    )
    whole = Alt(
        [
            Words(["zero"]),
            Seq(
                [
                    Ref("below1000"),
                    Opt(
                        Seq(
                            [
                                Words(["thousand"]),
                                Opt(Seq([Opt(Words(["and"])), Ref("below1000")])),
                            ]
                        )
                    ),
                ]
            ),
        ]
    )
    decimal = Seq(
        [Ref("whole"), Words(["point"]), Star(Alt([Words([w]) for w in ONES]), plus=True)]
    )
    many = Alt([Seq([tens, Opt(Ref("digit"))]), teen, Alt([Words([w]) for w in ONES[2:]])])
    return {
        "many100": many,
        "digit": digit,
        "below100": below100,
        "below1000": below1000,
        "whole": whole,
        "decimal": Alt([decimal, Ref("whole")]),
    }


class _Builder:
    def __init__(self, config: VoiceConfig, known: Callable[[str], bool] | None) -> None:
        self.config = config
        self.known = known
        self.unspeakable: set[str] = set()
        self.rules: dict[str, _Node] = _number_rules()
        vocab: dict[str, str] = {}
        for written in config.vocabulary:
            words = spoken_words(written)
            if len(words) == 1 and self._ok(words):
                vocab[words[0]] = written
        self.vocabulary = vocab
        if vocab:
            self.rules["vocab"] = Alt(
                [Capture("", Words([s]), _const(w)) for s, w in sorted(vocab.items())]
            )

    def _ok(self, words: Sequence[str]) -> bool:
        if self.known is None:
            return True
        missing = [w for w in words if not self.known(w)]
        self.unspeakable.update(missing)
        return not missing

    def phrases(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The speakable phrases of ``values`` (phrase -> value)."""
        out: dict[str, Any] = {}
        for phrase, value in values.items():
            words = spoken_words(phrase)
            if words and self._ok(words):
                out[" ".join(words)] = value
        return out

    def enum_phrases(self, field: str, values: Sequence[Any]) -> dict[str, Any]:
        configured = self.config.values.get(field)
        if configured:
            return self.phrases(configured)
        phrases: dict[str, Any] = {}
        for value in values:
            if isinstance(value, str) and value in COUNTRY_NAMES:
                for name in COUNTRY_NAMES[value]:
                    phrases[name] = value
            elif isinstance(value, bool) or value is None:
                continue
            elif isinstance(value, int | float):
                continue  # numeric enums: said as numbers (below)
            else:
                phrases[" ".join(spoken_words(str(value)))] = value
        return self.phrases(phrases)

    def number(self, schema: Mapping[str, Any], *, plural: bool = False) -> _Node:
        kind = schema.get("type")
        rule = "decimal" if kind == "number" else "whole"
        top = schema.get("maximum")
        if kind == "integer" and isinstance(top, int) and schema.get("minimum", 0) >= 1:
            rule = "below100" if top <= 99 else "below1000" if top <= 999 else rule
        if plural and rule == "below100":
            rule = "many100"  # two to ninety-nine: "one" goes with a singular
        return Capture("", Ref(rule), lambda words: words_to_number(words))

    def free_text(self) -> _Node | None:
        if not self.vocabulary:
            return None
        more: _Node | None = None
        for _ in range(max(self.config.max_free_words, 1) - 1):
            more = Opt(Seq([Ref("vocab"), more]) if more is not None else Ref("vocab"))
        node = Seq([Ref("vocab"), more]) if more is not None else Ref("vocab")
        return Capture("", node, _join_free)

    def value_of(self, field: str, schema: Mapping[str, Any]) -> _Node | None:
        """How a value of ``field`` is said, captured under the empty key (or None)."""
        if "enum" in schema:
            phrases = self.enum_phrases(field, schema["enum"])
            if any(isinstance(v, int | float) and not isinstance(v, bool) for v in schema["enum"]):
                return self.number(schema)
            return _phrases(phrases) if phrases else None
        kind = schema.get("type")
        if kind in ("integer", "number"):
            return self.number(schema)
        if kind == "string":
            configured = self.config.values.get(field)
            if configured:
                phrases = self.phrases(configured)
                return _phrases(phrases) if phrases else None
            if "pattern" in schema or "format" in schema:
                return None
            return self.free_text()
        return None

    def slot(
        self, field: str, schema: Mapping[str, Any], defs: Mapping[str, Any], bare: bool
    ) -> list[_Node]:
        """The ways one input is said, each capturing under ``field``."""
        name = [w for w in spoken_words(field) if self._ok([w])]
        schema = _resolve(schema, defs)
        kind = schema.get("type")
        forms: list[_Node] = []
        if kind == "boolean":
            # Only the form that changes something: "express" when the default
            # is false, "not express" when it is true, both when there is none.
            # A recognizer slips a short "not" in or out easily; offering it
            # only where it means something keeps it from flipping a value.
            default = schema.get("default")
            if name and default is not True:
                forms.append(Capture(field, Words(name), _const(True)))
            if name and default is not False:
                forms.append(Capture(field, Words(["not", *name]), _const(False)))
            return forms
        if kind == "array":
            items = _resolve(schema.get("items", {}), defs)
            if "enum" in items:
                value = self.value_of(field, items)
                if value is None:
                    return []
                keys = {" ".join(name), " ".join(name).rstrip("s"), "tagged"} if name else set()
                keys = {k for k in keys if k and self._ok(k.split())}
                one = _recapture(f"{field}[]", value)
                lead = Alt([Words(k.split()) for k in sorted(keys)]) if keys else None
                listed = Seq([one, Star(Seq([Opt(Words(["and"])), one]))])
                return [Seq([lead, listed]) if lead is not None else listed]
            if items.get("type") == "object":
                item = self.item(field, items, defs)
                if item is None:
                    return []
                # Up to three items, joined by "and" (a longer order is typed, not said).
                most = min(int(schema.get("maxItems", 3)), 3)
                chain: _Node = item
                for _ in range(most - 1):
                    chain = Seq([item, Opt(Seq([Words(["and"]), chain]))])
                return [chain]
            return []
        if kind == "object":
            return []
        value = self.value_of(field, schema)
        if value is None:
            return []
        captured = _recapture(field, value)
        if name:
            forms.append(Seq([Words(name), Opt(Words(["is"])), captured]))
        unit = name[-1] if name and name[-1] in UNITS else None
        if unit is not None and kind in ("integer", "number"):
            forms.append(Seq([Opt(Words(name[:-1])), captured, Words([unit])]))
        if "enum" in schema:
            forms.append(Seq([Opt(Alt([Words([w]) for w in ("to", "in", "for")])), captured]))
        elif bare or field in self.config.values:
            forms.append(Seq([Opt(Words(["for"])), captured]))
        return forms

    def item(
        self, field: str | None, schema: Mapping[str, Any], defs: Mapping[str, Any]
    ) -> _Node | None:
        """An object said as "[count] phrase": one phrase-valued string, one count.

        With ``field`` the captures are grouped as one item of that list;
        without, they are the inputs themselves ("add to cart two mugs").
        """
        props: Mapping[str, Any] = schema.get("properties", {})
        label = count = None
        for key, prop in props.items():
            prop = _resolve(prop, defs)
            if prop.get("type") == "string" and (key in self.config.values or "enum" in prop):
                label = label or (key, prop)
            elif prop.get("type") == "integer":
                count = count or (key, prop)
        if label is None:
            return None
        value = self.value_of(label[0], label[1])
        if value is None:
            return None
        if count is None and field is None:
            return None
        if count is None:
            return Group(f"{field}[]", _recapture(label[0], value))
        # A count agrees with its phrase: "a mug", "one mug", "two mugs".
        phrases = self._label_phrases(label[0], label[1])
        singular = {p: v for p, v in phrases.items() if not _is_plural(p, phrases)}
        plural = {p: v for p, v in phrases.items() if not _is_singular(p, phrases)}
        one = Capture("", Alt([Words(["a"]), Words(["an"]), Words(["one"])]), _const(1))
        forms: list[_Node] = []
        if singular:
            forms.append(Seq([_recapture(count[0], one), _recapture(label[0], _phrases(singular))]))
        if plural:
            many = self.number(count[1], plural=True)
            forms.append(Seq([_recapture(count[0], many), _recapture(label[0], _phrases(plural))]))
        if field is not None:
            return Group(f"{field}[]", Alt(forms))
        return Alt([*forms, _recapture(label[0], value)])

    def _label_phrases(self, field: str, schema: Mapping[str, Any]) -> dict[str, Any]:
        configured = self.config.values.get(field)
        if configured:
            return self.phrases(configured)
        return self.enum_phrases(field, schema.get("enum", []))

    def workflow(self, name: str, schema: Mapping[str, Any], aliases: Sequence[str]) -> _Node:
        names = {" ".join(spoken_words(name))}
        names.update(" ".join(spoken_words(a)) for a in aliases)
        names = {n for n in names if n and self._ok(n.split())}
        defs = schema.get("$defs", {})
        props: Mapping[str, Any] = schema.get("properties", {})
        required = schema.get("required", [])
        first_text = next(
            (key for key in required if _resolve(props.get(key, {}), defs).get("type") == "string"),
            None,
        )
        # Inputs in the order of the schema (the function's signature): a
        # recognizer restricted to one order hears far better than one free
        # to take any order; each input may be left out (the core then names it).
        slots: list[_Node] = []
        pair = self.item(None, schema, defs)
        paired: set[str] = set()
        if pair is not None:
            paired = {k for k, p in props.items() if _resolve(p, defs).get("type") == "string"}
        for field, prop in props.items():
            forms = self.slot(field, prop, defs, bare=field == first_text)
            if pair is not None and field in paired:
                forms = [pair, *forms]
            if forms:
                slots.append(Opt(Alt(forms) if len(forms) > 1 else forms[0]))
        head = Seq(
            [
                Opt(Alt([Words(["please"]), Words(["run"]), Words(["please", "run"])])),
                Alt([Words(n.split()) for n in sorted(names)]),
            ]
        )
        if not slots:
            return Capture("workflow", head, _const(name))
        rule = f"wf_{len(self.rules)}"
        self.rules[rule] = Seq(slots)
        return Seq([Capture("workflow", head, _const(name)), Opt(Words(["with"])), Ref(rule)])


def _is_plural(phrase: str, phrases: Mapping[str, Any]) -> bool:
    return phrase.endswith("s") and phrase[:-1] in phrases


def _is_singular(phrase: str, phrases: Mapping[str, Any]) -> bool:
    return phrase + "s" in phrases


def _join_free(words: list[str]) -> str:
    return " ".join(words)


def _recapture(key: str, node: _Node) -> _Node:
    """Give the empty-keyed captures directly inside ``node`` the key ``key``."""
    if isinstance(node, Capture) and node.key == "":
        return Capture(key, node.node, node.convert)
    if isinstance(node, Alt):
        return Alt([_recapture(key, o) for o in node.options])
    return Capture(key, node, _first_value)


def _first_value(words: list[str]) -> Any:  # pragma: no cover - replaced when matched
    return " ".join(words)


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _resolve(defs.get(ref.removeprefix("#/$defs/"), {}), defs)
    options = schema.get("anyOf")
    if options:
        real = [o for o in options if o.get("type") != "null"]
        if len(real) == 1:
            return _resolve(real[0], defs)
    return schema


def _intents(workflow_names: Mapping[str, str]) -> _Node:
    last = Alt(
        [
            Words(["run"]),
            *(Capture("workflow", Words(s.split()), _const(n)) for s, n in workflow_names.items()),
        ]
    )
    my_last = Seq([Alt([Words(["my"]), Words(["the"])]), Words(["last"]), last])
    status = Seq(
        [
            Alt(
                [
                    Words(["what", "is", "the", "status"]),
                    Words(["what's", "the", "status"]),
                    Words(["status"]),
                ]
            ),
            Opt(Seq([Words(["of"]), my_last])),
        ]
    )
    cancel = Seq([Words(["cancel"]), Alt([Words(["it"]), Words(["that"]), my_last])])
    repeat = Alt([Words(["repeat", "that"]), Words(["say", "that", "again"]), Words(["repeat"])])
    help_ = Alt([Words(["help"]), Words(["what", "can", "i", "say"])])
    return Alt(
        [
            Capture("intent", status, _const("status")),
            Capture("intent", cancel, _const("cancel")),
            Capture("intent", repeat, _const("repeat")),
            Capture("intent", help_, _const("help")),
        ]
    )


# -- the grammar ---------------------------------------------------------------------


class Grammar:
    """The commands a caller may speak: JSGF for the recognizer, a parser for the transcript."""

    def __init__(
        self,
        root: _Node,
        rules: dict[str, _Node],
        workflows: Sequence[str],
        unspeakable: set[str],
    ) -> None:
        self.root = root
        self.rules = rules
        #: The workflows this grammar can run, by name.
        self.workflows = tuple(workflows)
        #: Words left out because the recognizer's dictionary lacks them.
        self.unspeakable = frozenset(unspeakable)
        self._jsgf: str | None = None

    # -- JSGF --------------------------------------------------------------------------

    def jsgf(self) -> str:
        """The grammar in JSGF, public rule ``<command>``."""
        if self._jsgf is None:
            lines = ["#JSGF V1.0;", "", "grammar nexus;", ""]
            for name, node in self.rules.items():
                lines.append(f"<{name}> = {_render(node)};")
            lines.append(f"public <command> = {_render(self.root)};")
            self._jsgf = "\n".join(lines) + "\n"
        return self._jsgf

    def words(self) -> set[str]:
        """Every word the grammar uses."""
        found: set[str] = set()

        def walk(node: _Node) -> None:
            if isinstance(node, Words):
                found.update(node.words)
            elif isinstance(node, Alt):
                for o in node.options:
                    walk(o)
            elif isinstance(node, Seq):
                for p in node.parts:
                    walk(p)
            elif isinstance(node, Opt | Star | Capture | Group):
                walk(node.node)

        walk(self.root)
        for node in self.rules.values():
            walk(node)
        return found

    # -- parsing -----------------------------------------------------------------------

    def parse(self, transcript: str) -> Intent | None:
        """The intent of a full sentence of this grammar, or None if it is not one."""
        tokens = spoken_words(transcript)
        if not tokens or len(tokens) > 60:
            return None
        for end, captures in self._match(self.root, tokens, 0):
            if end != len(tokens):
                continue
            intent = _intent(captures, " ".join(tokens))
            if intent is not None:
                return intent
        return None

    def _match(
        self, node: _Node, tokens: list[str], i: int
    ) -> Iterator[tuple[int, tuple[tuple[str, Any], ...]]]:
        if isinstance(node, Words):
            n = len(node.words)
            if tuple(tokens[i : i + n]) == node.words:
                yield i + n, ()
        elif isinstance(node, Ref):
            yield from self._match(self.rules[node.name], tokens, i)
        elif isinstance(node, Alt):
            for option in node.options:
                yield from self._match(option, tokens, i)
        elif isinstance(node, Seq):
            yield from self._seq(node.parts, 0, tokens, i)
        elif isinstance(node, Opt):
            yield from self._match(node.node, tokens, i)
            yield i, ()
        elif isinstance(node, Star):
            yield from self._star(node, tokens, i, not node.plus)
        elif isinstance(node, Capture):
            for end, inner in self._match(node.node, tokens, i):
                words = tokens[i:end]
                value = _inner_value(inner)
                if value is _NOTHING:
                    try:
                        value = node.convert(words)
                    except ValueError:
                        continue
                rest = tuple(c for c in inner if c[0] != "")
                yield end, ((node.key, value), *rest) if node.key else (("", value), *rest)
        elif isinstance(node, Group):
            for end, inner in self._match(node.node, tokens, i):
                yield end, ((node.key, {k: v for k, v in inner if k}),)

    def _seq(
        self, parts: tuple[_Node, ...], k: int, tokens: list[str], i: int
    ) -> Iterator[tuple[int, tuple[tuple[str, Any], ...]]]:
        if k == len(parts):
            yield i, ()
            return
        for mid, first in self._match(parts[k], tokens, i):
            for end, rest in self._seq(parts, k + 1, tokens, mid):
                yield end, first + rest

    def _star(
        self, node: Star, tokens: list[str], i: int, empty_ok: bool
    ) -> Iterator[tuple[int, tuple[tuple[str, Any], ...]]]:
        for mid, first in self._match(node.node, tokens, i):
            if mid == i:
                continue
            for end, rest in self._star(node, tokens, mid, True):
                yield end, first + rest
        if empty_ok:
            yield i, ()


_NOTHING = object()


def _inner_value(inner: tuple[tuple[str, Any], ...]) -> Any:
    for key, value in inner:
        if key == "":
            return value
    return _NOTHING


def _intent(captures: tuple[tuple[str, Any], ...], transcript: str) -> Intent | None:
    kind = "run"
    workflow: str | None = None
    inputs: dict[str, Any] = {}
    for key, value in captures:
        if key == "intent":
            kind = value
        elif key == "workflow":
            workflow = value
        elif key.endswith("[]"):
            inputs.setdefault(key[:-2], []).append(value)
        elif key:
            if key in inputs:
                return None  # the same input said twice: not this parse
            inputs[key] = value
    if kind == "run" and workflow is None:
        return None
    return Intent(kind, transcript, workflow, inputs if kind == "run" else None)


def _render(node: _Node) -> str:
    if isinstance(node, Words):
        return " ".join(node.words)
    if isinstance(node, Ref):
        return f"<{node.name}>"
    if isinstance(node, Alt):
        inner = " | ".join(_render(o) for o in node.options)
        return f"( {inner} )" if len(node.options) > 1 else inner
    if isinstance(node, Seq):
        return " ".join(_render(p) for p in node.parts if p is not None)
    if isinstance(node, Opt):
        return f"[ {_render(node.node)} ]"
    if isinstance(node, Star):
        return f"( {_render(node.node)} ){'+' if node.plus else '*'}"
    if isinstance(node, Capture | Group):
        return _render(node.node)
    raise TypeError(node)  # pragma: no cover


def build_grammar(
    workflows: Sequence[Any],
    config: VoiceConfig | None = None,
    *,
    known: Callable[[str], bool] | None = None,
) -> Grammar:
    """The grammar of ``workflows`` (objects with ``name`` and ``input_schema``).

    ``known(word)`` says whether the recognizer can hear a word; phrases with
    other words are left out (and listed in :attr:`Grammar.unspeakable`).
    """
    config = config or VoiceConfig()
    builder = _Builder(config, known)
    commands: list[_Node] = []
    names: dict[str, str] = {}
    included: list[str] = []
    for wf in sorted(workflows, key=lambda w: w.name):
        settings = config.workflow(wf.name)
        if settings.hidden:
            continue
        aliases = list(settings.aliases)
        title = getattr(getattr(wf, "meta", None), "title", None)
        if title:  # the workflow's own title is a way to say it ("price an order")
            aliases.append(title)
        commands.append(builder.workflow(wf.name, wf.input_schema, aliases))
        included.append(wf.name)
        spoken = " ".join(spoken_words(wf.name))
        if builder._ok(spoken.split()):
            names[spoken] = wf.name
    commands.append(_intents(names))
    return Grammar(Alt(commands), builder.rules, included, builder.unspeakable)
