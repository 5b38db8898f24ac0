"""Options generated from input schemas: random msgspec signatures parse back to the same inputs."""

from __future__ import annotations

import copy
import enum
import functools
import keyword
import string
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nexus_core.workflows.schema import json_schema

from nexus_plugin_cli.options import (
    RunUsageError,
    admits,
    describe,
    format_run_args,
    input_options,
    options_help,
    parse_run_args,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(msgspec.Struct):
    x: int
    y: float = 0.0


def parse(schema: dict[str, Any], *tokens: str, stdin: str = "") -> dict[str, Any]:
    return parse_run_args(lambda _name: schema, ["wf", *tokens], lambda: stdin).inputs


def schema_of(*fields: tuple[Any, ...]) -> dict[str, Any]:
    return json_schema(msgspec.defstruct("In", list(fields), kw_only=True))


# -- examples ------------------------------------------------------------------------------


def test_kinds_of_options() -> None:
    schema = schema_of(
        ("name", str),
        ("excited", bool, False),
        ("count", int, 1),
        ("ratio", float, 0.5),
        ("tags", list[str], []),
        ("color", Color, Color.RED),
        ("mode", Literal["a", "b"], "a"),
        ("point", Point | None, None),
        ("first_name", str | None, None),
    )
    kinds = {o.field: (o.flag, o.kind) for o in input_options(schema)}
    assert kinds == {
        "name": ("--name", "text"),
        "excited": ("--excited", "flag"),
        "count": ("--count", "value"),
        "ratio": ("--ratio", "value"),
        "tags": ("--tags", "list"),
        "color": ("--color", "text"),
        "mode": ("--mode", "text"),
        "point": ("--point", "value"),
        "first_name": ("--first-name", "text"),
    }
    assert parse(
        schema,
        "--name",
        "Ada",
        "--excited",
        "--count=3",
        "--ratio",
        "2",
        "--tags",
        "a",
        "--tags",
        "b",
        "--color",
        "blue",
        "--point",
        '{"x": 1}',
        "--first_name",
        "-dash-",
    ) == {
        "name": "Ada",
        "excited": True,
        "count": 3,
        "ratio": 2,
        "tags": ["a", "b"],
        "color": "blue",
        "point": {"x": 1},
        "first_name": "-dash-",
    }
    assert parse(schema, "--name", "x", "--no-excited", "--point", "null") == {
        "name": "x",
        "excited": False,
        "point": None,
    }


def test_errors_name_the_option() -> None:
    schema = schema_of(("name", str), ("count", int, 1), ("mode", Literal["a", "b"], "a"))
    with pytest.raises(RunUsageError, match="missing required option --name"):
        parse(schema)
    with pytest.raises(RunUsageError, match="option --count needs a value"):
        parse(schema, "--name", "x", "--count")
    with pytest.raises(RunUsageError, match="unknown option --cont.*did you mean --count"):
        parse(schema, "--name", "x", "--cont", "2")
    with pytest.raises(RunUsageError, match="unexpected argument 'x'"):
        parse(schema, "x")


def test_values_of_the_wrong_type_are_left_to_the_core() -> None:
    # Read as typed (JSON if it parses, else the text): the core's validation names the field.
    schema = schema_of(
        ("count", int, 1),
        ("mode", Literal["a", "b"], "a"),
        ("excited", bool, False),
        ("ids", list[int], []),
        ("ratio", float | None, None),
    )
    assert parse(schema, "--count", "many", "--mode", "c", "--excited=maybe") == {
        "count": "many",
        "mode": "c",
        "excited": "maybe",
    }
    assert parse(schema, "--count", "1.5", "--excited=null", "--ratio", "[1]") == {
        "count": 1.5,
        "excited": None,
        "ratio": [1],
    }
    assert parse(schema, "--ids", "x", "--ids", "2") == {"ids": ["x", 2]}
    assert parse(schema, "--ids", '[1, "a"]') == {"ids": [1, "a"]}


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN"])
def test_option_text_becomes_the_typed_value_and_non_json_numbers_stay_text(text: str) -> None:
    # The core validates strictly (text is never a number): the command line turns option
    # text into the value the schema asks for, as JSON reads it, and nothing else. Python
    # reads Infinity and NaN as floats, JSON does not: they stay text for the core to refuse
    # naming the field, as it does for "Infinity" sent by any other channel.
    schema = schema_of(("amount", float), ("count", int, 1), ("ok", bool, False))
    assert parse(schema, "--amount", "900", "--count", "3", "--ok=true") == {
        "amount": 900,
        "count": 3,
        "ok": True,
    }
    assert parse(schema, "--amount", "9e5") == {"amount": 900000.0}
    assert parse(schema, "--amount", text, "--count", text) == {"amount": text, "count": text}


def test_json_inputs_are_sent_as_they_are() -> None:
    # --json is JSON: a number written as text stays text (the core refuses it for a number
    # field), and Infinity / NaN, which JSON has not, are a usage error here.
    schema = schema_of(("amount", float))
    assert parse(schema, "--json", '{"amount": "900"}') == {"amount": "900"}
    for bad in ('{"amount": Infinity}', '{"amount": NaN}', '{"amount": -Infinity}'):
        with pytest.raises(RunUsageError, match="--json is not valid JSON"):
            parse(schema, "--json", bad)


def test_json_merges_under_options() -> None:
    schema = schema_of(("name", str), ("count", int, 1))
    assert parse(schema, "--json", '{"name": "a", "count": 2}', "--count", "5") == {
        "name": "a",
        "count": 5,
    }
    assert parse(schema, "--json", "-", stdin='{"name": "b"}') == {"name": "b"}
    with pytest.raises(RunUsageError, match="must be a JSON object"):
        parse(schema, "--json", "[1]")


def test_inputs_shadow_run_options_after_the_workflow_name() -> None:
    schema = schema_of(("json", str), ("url", str, ""))
    run = parse_run_args(
        lambda _n: schema, ["--json", '{"url": "u"}', "wf", "--json", "text"], lambda: ""
    )
    assert run.inputs == {"json": "text", "url": "u"}


def test_admits_and_describe() -> None:
    schema = schema_of(("n", int | None, None), ("u", str | int, 1))
    props = schema["properties"]
    assert admits(props["n"], None) and admits(props["n"], 3) and not admits(props["n"], "3")
    assert not admits(props["n"], True)  # JSON: true is not 1
    assert admits(props["u"], "x") and admits(props["u"], 3)
    assert describe(props["n"]) == "integer or null"
    rows = dict(options_help(schema))
    assert rows["--n INTEGER"] == "integer or null; default: null"


# -- the property ------------------------------------------------------------------------

_NAMES = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
    lambda n: n.isidentifier() and not keyword.iskeyword(n) and not n.startswith("__")
)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)
_INTS = st.integers(min_value=-(2**53), max_value=2**53)

# (type, strategy of JSON-ready values) pairs; nested ones are built from these.
_SCALARS: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (str, _TEXT),
    (int, _INTS),
    (float, _FLOATS),
    (bool, st.booleans()),
    (Literal["a", "b-c", "--x"], st.sampled_from(["a", "b-c", "--x"])),
    (Color, st.sampled_from(["red", "blue"])),
]


@st.composite
def field_types(draw: st.DrawFn, depth: int = 0) -> tuple[Any, st.SearchStrategy[Any]]:
    choice = draw(st.integers(min_value=0, max_value=5 if depth < 2 else 0))
    if choice <= 1:
        return draw(st.sampled_from(_SCALARS))
    inner, values = draw(field_types(depth + 1))
    if choice == 2:
        return inner | None, st.none() | values
    if choice == 3:
        return list[inner], st.lists(values, max_size=3)  # type: ignore[valid-type]
    if choice == 4:
        return dict[str, inner], st.dictionaries(_TEXT, values, max_size=2)  # type: ignore[valid-type]
    return str | int, st.one_of(_TEXT, _INTS)


@st.composite
def signatures(draw: st.DrawFn) -> tuple[type[msgspec.Struct], dict[str, Any]]:
    names = draw(st.lists(_NAMES, min_size=1, max_size=5, unique=True))
    fields: list[tuple[Any, ...]] = []
    values: dict[str, Any] = {}
    for name in names:
        tp, strategy = draw(field_types())
        required = draw(st.booleans())
        if required:
            fields.append((name, tp))
            values[name] = draw(strategy)
        else:
            default = msgspec.convert(draw(strategy), tp, strict=False)
            if isinstance(default, list | dict):  # msgspec wants a factory for these
                default = msgspec.field(default_factory=functools.partial(copy.deepcopy, default))
            fields.append((name, tp, default))
            if draw(st.booleans()):
                values[name] = draw(strategy)
    return msgspec.defstruct("Random", fields, kw_only=True, forbid_unknown_fields=True), values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signatures())
def test_generated_options_parse_back_to_the_same_inputs(
    case: tuple[type[msgspec.Struct], dict[str, Any]],
) -> None:
    struct, inputs = case
    schema = json_schema(struct)
    tokens = format_run_args("wf", schema, inputs)
    parsed = parse_run_args(lambda _name: schema, tokens, lambda: "")
    assert parsed.workflow == "wf"
    assert parsed.inputs == inputs
    # And the core accepts exactly those inputs.
    assert msgspec.convert(parsed.inputs, struct) == msgspec.convert(inputs, struct)


def test_batch_lines_are_standard_json() -> None:
    from nexus_plugin_cli.commands.batch import read_lines

    lines = '{"workflow": "w", "inputs": {"amount": Infinity}}\n{"workflow": "w"}\n'
    (first, second) = list(read_lines(lines))
    assert first[0] == 1 and isinstance(first[1], str) and first[1].startswith("invalid JSON")
    assert second[0] == 2 and isinstance(second[1], dict)


def test_inputs_of_a_workflow_the_gateway_does_not_show() -> None:
    # No schema to read them by: JSON when it parses, else text; a lone flag is true. The
    # gateway then decides on exactly these inputs, as it would for any other channel.
    from nexus_plugin_cli.options import ParsedRun, parse_unknown_inputs

    parsed = parse_unknown_inputs(
        ["--items", '[{"sku": "A"}]', "--country=DE", "--express", "--amount", "900",
         "--note", "Infinity", "--session", "s1", "--dry-run"],
        ParsedRun(workflow="order"),
    )  # fmt: skip
    assert parsed.inputs == {
        "items": [{"sku": "A"}],
        "country": "DE",
        "express": True,
        "amount": 900,
        "note": "Infinity",
        "dry_run": True,
    }
    assert parsed.options == {"session": "s1"}
    with pytest.raises(RunUsageError, match="unexpected argument 'x'"):
        parse_unknown_inputs(["x"], ParsedRun(workflow="order"))
