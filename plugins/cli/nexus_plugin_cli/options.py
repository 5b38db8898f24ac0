"""Command-line options generated from a workflow's input JSON Schema.

The same schema every channel reads (``workflow.input_schema`` in process,
``GET /workflows/{name}`` remotely) becomes the options of ``nexus run NAME``:

=====================  ==========================  ===============================
schema of the field    option                      value
=====================  ==========================  ===============================
``boolean``            ``--excited / --no-excited``  a flag; ``--excited=false`` too
``string`` / enum      ``--name Ada``              the text as typed
``array``              ``--tag a --tag b``         repeat it, or one JSON array
anything else          ``--count 3``               JSON (``3``, ``[1, 2]``, ``{...}``,
                                                   ``null``); text where a string fits
=====================  ==========================  ===============================

A field ``first_name`` is ``--first-name`` (``--first_name`` works too).
The schema picks how a value is read, not whether it is valid: a value no
reading fits goes on as read (JSON if it parses, else the text) and the core
refuses it with the ``validation_error`` every channel gives, naming the field.
``--json '{...}'`` (or ``--json -`` for stdin) gives inputs as one object; the
options override its keys. :func:`format_run_args` is the inverse of
:func:`parse_run_args`, so any valid inputs can be written as options.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "RUN_FLAGS",
    "RUN_OPTIONS",
    "InputOption",
    "ParsedRun",
    "RunUsageError",
    "admits",
    "check_required",
    "describe",
    "flag_names",
    "format_run_args",
    "input_options",
    "merge_json",
    "options_help",
    "parse_inputs",
    "parse_json",
    "parse_run_args",
    "parse_unknown_inputs",
    "split_run_args",
]

Kind = Literal["flag", "text", "list", "value"]

#: Options of ``nexus run`` itself that take a value (global ones included).
RUN_OPTIONS: frozenset[str] = frozenset(
    {
        "--json",
        "--session",
        "--idempotency-key",
        "--app",
        "--url",
        "--token",
        "--output",
        "-o",
        "--output-file",
    }
)
#: Options of ``nexus run`` itself that take no value.
RUN_FLAGS: frozenset[str] = frozenset(
    {"--no-wait", "--no-session", "--quiet", "-q", "--help", "-h", "--run-help"}
)


class RunUsageError(Exception):
    """A bad or missing option: the message names it; the command exits with code 2."""

    def __init__(self, message: str, *, option: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.option = option
        self.hint = hint


@dataclass(frozen=True)
class InputOption:
    """One workflow input as a command-line option."""

    field: str
    flag: str
    kind: Kind
    schema: Mapping[str, Any]
    required: bool
    description: str = ""
    default: Any = None
    has_default: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def negative(self) -> str:
        """``--no-NAME`` (flags only)."""
        return "--no-" + self.flag[2:]


@dataclass
class ParsedRun:
    """What ``nexus run`` was asked: the workflow, its inputs and the run options."""

    workflow: str | None
    inputs: dict[str, Any] = field(default_factory=dict)
    json_text: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    help: bool = False


# -- schema helpers --------------------------------------------------------------


def _resolve(schema: Any, defs: Mapping[str, Any], depth: int = 0) -> Mapping[str, Any]:
    """Follow ``$ref`` into ``$defs`` (keeping sibling keys such as ``default``)."""
    if not isinstance(schema, Mapping):
        return {} if schema is True or schema is None else {"not": {}}
    ref = schema.get("$ref")
    if isinstance(ref, str) and depth < 32:
        name = ref.rsplit("/", 1)[-1]
        target = defs.get(name)
        if isinstance(target, Mapping):
            merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            return _resolve(merged, defs, depth + 1)
    return schema


def _branches(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The non-null alternatives of a (possibly nullable) schema."""
    schema = _resolve(schema, defs)
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        out: list[Mapping[str, Any]] = []
        for option in options:
            out.extend(_branches(option, defs))
        return out
    if schema.get("type") == "null":
        return []
    types = schema.get("type")
    if isinstance(types, list):
        return [{**schema, "type": t} for t in types if t != "null"]
    return [schema]


def _nullable(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> bool:
    return admits(schema, None, defs)


def _kind(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Kind:
    branches = _branches(schema, defs)
    if len(branches) != 1:
        return "value"
    only = branches[0]
    kind = only.get("type")
    if kind == "boolean":
        return "flag"
    if kind == "string":
        return "text"
    if kind is None and "enum" in only and all(isinstance(v, str) for v in only["enum"]):
        return "text"
    if kind is None and isinstance(only.get("const"), str):
        return "text"
    if kind == "array" and isinstance(only.get("items"), Mapping) and "prefixItems" not in only:
        return "list"
    return "value"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``True`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": _is_int,
    "number": lambda v: _number(v) and not (isinstance(v, float) and not math.isfinite(v)),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def admits(schema: Any, value: Any, defs: Mapping[str, Any] | None = None) -> bool:
    """Whether ``value`` (JSON builtins) has a type ``schema`` allows.

    Deliberately lenient: it checks types, enums, array items and object
    property types, and leaves formats and bounds to the core's validation.
    It is used to pick between the JSON and the text reading of a value.
    """
    defs = defs or {}
    if schema is False:
        return False
    schema = _resolve(schema, defs)
    if not schema:
        return True
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and not any(admits(o, value, defs) for o in options):
            return False
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and not all(admits(o, value, defs) for o in all_of):
        return False
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        return False
    if "const" in schema and not _same(value, schema["const"]):
        return False
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_TYPE_CHECKS.get(name, lambda _v: True)(value) for name in names):
            return False
    if isinstance(value, list):
        return _admits_array(schema, value, defs)
    if isinstance(value, dict):
        return _admits_object(schema, value, defs)
    return True


def _admits_array(schema: Mapping[str, Any], value: list[Any], defs: Mapping[str, Any]) -> bool:
    prefix = schema.get("prefixItems")
    rest = schema.get("items", True)
    start = 0
    if isinstance(prefix, list):
        for item_schema, item in zip(prefix, value, strict=False):
            if not admits(item_schema, item, defs):
                return False
        start = len(prefix)
        if len(value) < int(schema.get("minItems", 0)):
            return False
    if rest is False:
        return len(value) <= start
    if isinstance(rest, Mapping):
        return all(admits(rest, item, defs) for item in value[start:])
    return True


def _admits_object(
    schema: Mapping[str, Any], value: dict[str, Any], defs: Mapping[str, Any]
) -> bool:
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        for key, item in value.items():
            if key in properties and not admits(properties[key], item, defs):
                return False
        required = schema.get("required")
        if isinstance(required, list) and not all(key in value for key in required):
            return False
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        known = properties if isinstance(properties, Mapping) else {}
        if not all(admits(extra, item, defs) for key, item in value.items() if key not in known):
            return False
    return True


def describe(schema: Any, defs: Mapping[str, Any] | None = None, depth: int = 0) -> str:
    """A short human name for the values a schema takes ("integer", "one of 'a', 'b'"...)."""
    defs = defs or {}
    schema = _resolve(schema, defs)
    if depth > 3:
        return "JSON"
    parts = []
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        parts = [describe(option, defs, depth + 1) for option in options]
    elif "enum" in schema:
        parts = ["one of " + ", ".join(json.dumps(v) for v in schema["enum"])]
    elif "const" in schema:
        parts = [json.dumps(schema["const"])]
    else:
        types = schema.get("type")
        names = types if isinstance(types, list) else [types] if types else []
        for name in names:
            if name == "array":
                items = schema.get("items")
                inner = describe(items, defs, depth + 1) if isinstance(items, Mapping) else ""
                parts.append(f"JSON array of {inner}" if inner else "JSON array")
            elif name == "object":
                parts.append("JSON object")
            elif name == "boolean":
                parts.append("true/false")
            else:
                parts.append(str(name))
    parts = [p for p in dict.fromkeys(parts) if p]
    return " or ".join(parts) if parts else "JSON"


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def input_options(schema: Mapping[str, Any]) -> list[InputOption]:
    """The options of a workflow whose input schema is ``schema`` (an object schema)."""
    defs = schema.get("$defs") or {}
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    taken: set[str] = set()
    out = []
    names = list(properties)
    preferred = {name: _flag_name(name) for name in names}
    for name in names:
        flag = preferred[name]
        if flag in taken:
            flag = "--" + name
        if flag in taken:
            continue  # settable through --json only
        taken.add(flag)
        aliases = tuple(a for a in ("--" + name,) if a != flag and a not in preferred.values())
        prop = properties[name]
        resolved = _resolve(prop, defs)
        out.append(
            InputOption(
                field=name,
                flag=flag,
                kind=_kind(prop, defs),
                schema=prop,
                required=name in required,
                description=str(resolved.get("description") or resolved.get("title") or ""),
                default=resolved.get("default"),
                has_default="default" in resolved,
                aliases=aliases,
            )
        )
    return out


# -- parsing -------------------------------------------------------------------------


def split_run_args(tokens: Sequence[str]) -> tuple[ParsedRun, list[str]]:
    """Read ``nexus run``'s own options up to the workflow name; return the rest.

    Everything after the workflow name is read by :func:`parse_inputs` once
    the workflow's schema is known.
    """
    parsed = ParsedRun(workflow=None)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--":
            index += 1
            if index < len(tokens):
                parsed.workflow = tokens[index]
                index += 1
            break
        if not token.startswith("-") or token == "-":
            parsed.workflow = token
            index += 1
            break
        index = _run_option(parsed, tokens, index, None)
    return parsed, list(tokens[index:])


def _run_option(parsed: ParsedRun, tokens: Sequence[str], index: int, workflow: str | None) -> int:
    """Apply the run option at ``tokens[index]``; return the index after it."""
    token = tokens[index]
    name, eq, inline = token.partition("=")
    if name in RUN_FLAGS and not eq:
        if name in ("--help", "-h", "--run-help"):
            parsed.help = True
        else:
            key = "quiet" if name == "-q" else name.lstrip("-").replace("-", "_")
            parsed.options[key] = True
        return index + 1
    if name in RUN_OPTIONS:
        if eq:
            value = inline
        elif index + 1 < len(tokens):
            value = tokens[index + 1]
            index += 1
        else:
            raise RunUsageError(f"option {name} needs a value", option=name)
        if name == "--json":
            parsed.json_text = value
        else:
            key = "output" if name == "-o" else name.lstrip("-").replace("-", "_")
            parsed.options[key] = value
        return index + 1
    where = f" for workflow {workflow!r}" if workflow else ""
    raise RunUsageError(f"unknown option {name}{where}", option=name)


def parse_inputs(
    schema: Mapping[str, Any], tokens: Sequence[str], parsed: ParsedRun | None = None
) -> ParsedRun:
    """Read the options after the workflow name into ``parsed.inputs`` (and run options).

    Raises :class:`RunUsageError` naming the option for an unknown option or
    a missing value. A value of the wrong type is kept as read (JSON, else
    the text) for the core's validation to refuse, naming the field. Required
    inputs are checked by :func:`check_required` once ``--json`` has been merged.
    """
    parsed = parsed or ParsedRun(workflow=None)
    defs = schema.get("$defs") or {}
    options = input_options(schema)
    by_flag: dict[str, InputOption] = {}
    for option in options:
        by_flag[option.flag] = option
        for alias in option.aliases:
            by_flag.setdefault(alias, option)
    negatives = {o.negative: o for o in options if o.kind == "flag"}
    inputs = parsed.inputs
    index = 0
    while index < len(tokens):
        token = tokens[index]
        name, eq, inline = token.partition("=")
        found = by_flag.get(name)
        if found is None and name in negatives and not eq:
            inputs[negatives[name].field] = False
            index += 1
            continue
        if found is None:
            if name in RUN_OPTIONS or name in RUN_FLAGS:
                index = _run_option(parsed, tokens, index, parsed.workflow)
                continue
            if not token.startswith("-") or token == "-":
                raise RunUsageError(
                    f"unexpected argument {token!r}: workflow inputs are options "
                    f"(for example {options[0].flag if options else '--json'} VALUE)",
                    option=token,
                )
            raise _unknown(name, options, parsed.workflow)
        option = found
        if option.kind == "flag" and not eq:
            inputs[option.field] = True
            index += 1
            continue
        if eq:
            text = inline
        elif index + 1 < len(tokens):
            text = tokens[index + 1]
            index += 1
        else:
            raise RunUsageError(
                f"option {option.flag} needs a value ({describe(option.schema, defs)})",
                option=option.flag,
            )
        index += 1
        value = _read_value(option, text, defs)
        if option.kind == "list":
            current = inputs.get(option.field)
            inputs[option.field] = [*(current if isinstance(current, list) else ()), *value]
        else:
            inputs[option.field] = value
    return parsed


def parse_unknown_inputs(tokens: Sequence[str], parsed: ParsedRun | None = None) -> ParsedRun:
    """Read options of a workflow whose schema is not known (a gateway does not show it).

    ``--field-name VALUE`` (or ``--field-name=VALUE``) is the input
    ``field_name``, its value read as JSON when it parses, else as text;
    ``--flag`` alone (last, or before another option) is ``true``. Run options
    (``--json``, ``--session``...) are read as always.
    """
    parsed = parsed or ParsedRun(workflow=None)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        name, eq, inline = token.partition("=")
        if name in RUN_OPTIONS or name in RUN_FLAGS:
            index = _run_option(parsed, tokens, index, parsed.workflow)
            continue
        if not name.startswith("--") or name == "--":
            raise RunUsageError(
                f"unexpected argument {token!r}: workflow inputs are options (--NAME VALUE)",
                option=token,
            )
        field = name[2:].replace("-", "_")
        if eq:
            text: str | None = inline
        elif index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
            text = tokens[index + 1]
            index += 1
        else:
            text = None
        index += 1
        value = True if text is None else _json(text)
        parsed.inputs[field] = text if value is _NOTHING else value
    return parsed


def _unknown(name: str, options: list[InputOption], workflow: str | None) -> RunUsageError:
    import difflib

    known = [o.flag for o in options] + [o.negative for o in options if o.kind == "flag"]
    known += ["--json", "--session", "--idempotency-key", "--no-wait"]
    match = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {match[0]}?" if match else ""
    where = f" for workflow {workflow!r}" if workflow else ""
    return RunUsageError(
        f"unknown option {name}{where}{hint}",
        option=name,
        hint=f"nexus run {workflow} --help lists its options" if workflow else None,
    )


def _read_value(option: InputOption, text: str, defs: Mapping[str, Any]) -> Any:
    """The value of ``option`` given as ``text``: the reading the schema admits.

    A value no reading fits is not refused here but passed on as read (JSON
    if it parses, else the text), so the core's validation says what is wrong
    with it, naming the field, as it does on every other channel.
    """
    return _reading(option, text, defs)[0]


def _reading(option: InputOption, text: str, defs: Mapping[str, Any]) -> tuple[Any, bool]:
    """``(value, admitted)``: the reading of ``text`` and whether the schema admits it."""
    schema = option.schema
    if option.kind == "flag":
        lowered = text.strip().lower()
        table = {"true": True, "false": False, "null": None, "1": True, "0": False}
        table.update({"yes": True, "no": False, "on": True, "off": False})
        if lowered in table:
            return table[lowered], admits(schema, table[lowered], defs)
        return text, False
    if option.kind == "text":
        return text, admits(schema, text, defs)
    if option.kind == "list":
        branch = _branches(schema, defs)[0]
        items = branch.get("items") or {}
        whole = _json(text)
        if isinstance(whole, list) and admits(branch, whole, defs):
            return whole, True
        item_option = InputOption(
            field=option.field,
            flag=option.flag,
            kind=_kind(items, defs) if _kind(items, defs) != "list" else "value",
            schema=items,
            required=False,
        )
        item, admitted = _reading(item_option, text, defs)
        if not admitted and isinstance(whole, list):
            return whole, False  # a JSON array of wrong items: the core names the item
        return [item], admitted
    value = _json(text)
    if value is not _NOTHING and admits(schema, value, defs):
        return value, True
    if admits(schema, text, defs):
        return text, True
    return (text if value is _NOTHING else value), False


_NOTHING = object()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (JSON numbers are finite)")


def parse_json(text: str) -> Any:
    """``text`` parsed as standard JSON: ``NaN`` and ``Infinity`` are refused (``ValueError``).

    Python's :func:`json.loads` reads them as floats; no other channel can
    send them (they are not JSON), so neither does the command line.
    """
    return json.loads(text, parse_constant=_no_constant)


def _json(text: str) -> Any:
    """``text`` parsed as JSON, or ``_NOTHING`` (``Infinity`` stays text, as on the wire)."""
    try:
        return parse_json(text)
    except ValueError:
        return _NOTHING


def merge_json(parsed: ParsedRun, read_stdin: Callable[[], str]) -> None:
    """Put the object given with ``--json`` under the options (which win)."""
    if parsed.json_text is None:
        return
    text = read_stdin() if parsed.json_text == "-" else parsed.json_text
    try:
        base = parse_json(text)
    except ValueError as exc:
        where = "standard input" if parsed.json_text == "-" else "--json"
        raise RunUsageError(f"{where} is not valid JSON: {exc}", option="--json") from None
    if not isinstance(base, dict):
        raise RunUsageError(
            f"--json must be a JSON object of inputs, got {type(base).__name__}", option="--json"
        )
    parsed.inputs = {**base, **parsed.inputs}


def check_required(schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Raise :class:`RunUsageError` naming the first required option not given."""
    missing = [o for o in input_options(schema) if o.required and o.field not in inputs]
    if missing:
        names = ", ".join(o.flag for o in missing)
        plural = "options" if len(missing) > 1 else "option"
        raise RunUsageError(f"missing required {plural} {names}", option=missing[0].flag)


def parse_run_args(
    schema_for: Callable[[str], Mapping[str, Any]],
    tokens: Sequence[str],
    read_stdin: Callable[[], str] = lambda: "",
) -> ParsedRun:
    """Parse everything after ``nexus run``: run options, the workflow, its inputs.

    ``schema_for(name)`` returns the input schema of a workflow (and raises
    for an unknown one). ``--help`` stops before the required inputs are checked.
    """
    parsed, rest = split_run_args(tokens)
    if parsed.workflow is None:
        if parsed.help:
            return parsed
        raise RunUsageError("missing the workflow name: nexus run WORKFLOW [OPTIONS]")
    schema = schema_for(parsed.workflow)
    parse_inputs(schema, rest, parsed)
    if parsed.help:
        return parsed
    merge_json(parsed, read_stdin)
    check_required(schema, parsed.inputs)
    return parsed


# -- the inverse ---------------------------------------------------------------------


def format_run_args(
    workflow: str, schema: Mapping[str, Any], inputs: Mapping[str, Any]
) -> list[str]:
    """Write ``inputs`` as ``nexus run`` arguments: ``[..., workflow, --opt, value, ...]``.

    The inverse of :func:`parse_run_args`: parsing the result gives ``inputs``
    back. Values no option can carry (``null`` for a text option, a key with
    no option) go into one ``--json`` object before the workflow name.
    """
    options = {o.field: o for o in input_options(schema)}
    flags = {o.flag for o in options.values()}
    escaped: dict[str, Any] = {}
    after: list[str] = []
    for key, value in inputs.items():
        option = options.get(key)
        if option is None:
            escaped[key] = value
            continue
        if option.kind == "flag":
            if value is True:
                after.append(option.flag)
            elif value is False and option.negative not in flags:
                after.append(option.negative)
            else:
                after.append(f"{option.flag}={json.dumps(value)}")
        elif option.kind == "text":
            if isinstance(value, str):
                after += [option.flag, value]
            else:
                escaped[key] = value
        elif option.kind == "list" and not isinstance(value, list):
            escaped[key] = value
        else:
            after += [option.flag, json.dumps(value)]
    before = ["--json", json.dumps(escaped)] if escaped else []
    return [*before, workflow, *after]


# -- help ------------------------------------------------------------------------------


def options_help(schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(usage, description)`` pairs for the options of a workflow, for ``--help``."""
    defs = schema.get("$defs") or {}
    rows = []
    for option in input_options(schema):
        kind = describe(option.schema, defs)
        if option.kind == "flag":
            usage = f"{option.flag} / {option.negative}"
        elif option.kind == "list":
            branch = _branches(option.schema, defs)[0]
            usage = f"{option.flag} {describe(branch.get('items'), defs).upper()}  (repeatable)"
        elif option.kind == "text":
            choice = "enum" in _resolve(option.schema, defs)
            usage = f"{option.flag} {'CHOICE' if choice else 'TEXT'}"
        else:
            usage = f"{option.flag} {_metavar(option.schema, defs)}"
        notes = [option.description] if option.description else []
        if option.kind != "flag" and kind != "string":
            notes.append(kind)
        if option.required:
            notes.append("required")
        elif option.has_default:
            notes.append(f"default: {json.dumps(option.default)}")
        rows.append((usage, "; ".join(n for n in notes if n)))
    return rows


def _metavar(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    branches = _branches(schema, defs)
    if len(branches) == 1 and branches[0].get("type") in ("integer", "number"):
        return str(branches[0]["type"]).upper()
    return "JSON"


def flag_names(schema: Mapping[str, Any]) -> Iterable[str]:
    """Every option a workflow accepts (for completion in ``nexus shell``)."""
    for option in input_options(schema):
        yield option.flag
        if option.kind == "flag":
            yield option.negative
