"""Function workflows, schemas, validation and the builder's checks."""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Annotated, Any, Literal, TypedDict

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_core import Nexus, Node, ValidationError, WorkflowBuilder, WorkflowDefinitionError
from nexus_core.workflows import workflow_from_function
from nexus_core.workflows.schema import is_assignable


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(msgspec.Struct):
    street: str
    zip: Annotated[str, msgspec.Meta(pattern=r"^\d{5}$")]


class Pet(TypedDict):
    name: str
    legs: int


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


def test_function_workflow_name_description_and_schemas() -> None:
    app = Nexus(autoload=False)

    @app.workflow
    def greet(name: str, excited: bool = False) -> str:
        """Greet someone.

        Longer text.
        """
        return name

    wf = app.workflows["greet"]
    assert wf.name == "greet"
    assert wf.description.startswith("Greet someone.")
    assert wf.input_schema["type"] == "object"
    assert wf.input_schema["required"] == ["name"]
    assert wf.input_schema["properties"]["excited"] == {"type": "boolean", "default": False}
    assert wf.input_schema["additionalProperties"] is False
    assert wf.output_schema == {"type": "string"}


def test_rich_annotations_make_rich_schemas() -> None:
    def ship(
        address: Address,
        pets: list[Pet],
        where: Point,
        color: Color = Color.RED,
        note: str | None = None,
        qty: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1,
        mode: Literal["fast", "slow"] = "fast",
    ) -> Address:
        return address

    wf = workflow_from_function(ship)
    schema = wf.input_schema
    props = schema["properties"]
    assert props["qty"]["minimum"] == 1 and props["qty"]["maximum"] == 10
    assert props["mode"]["enum"] == ["fast", "slow"]
    assert props["note"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert schema["$defs"]["Address"]["properties"]["zip"]["pattern"] == r"^\d{5}$"
    assert set(schema["$defs"]) >= {"Address", "Pet", "Point", "Color"}
    assert wf.output_schema["properties"]["street"] == {"type": "string"}

    with pytest.raises(ValidationError) as err:
        wf.validate({"address": {"street": "x", "zip": "12"}, "pets": [], "where": {"x": 1}})
    [error] = err.value.errors
    assert error.path == "address.zip"
    assert "regex" in error.reason

    with pytest.raises(ValidationError) as err:
        wf.validate(
            {
                "address": {"street": "x", "zip": "12345"},
                "pets": [{"name": "rex", "legs": 4}, {"name": "tweety"}],
                "where": {"x": 1},
            }
        )
    assert err.value.errors[0].path == "pets[1].legs"
    assert err.value.errors[0].reason == "missing required field"

    with pytest.raises(ValidationError) as err:
        wf.validate(
            {"address": {"street": "x", "zip": "12345"}, "pets": [], "where": {"x": 1}, "qty": 11}
        )
    assert err.value.errors[0].path == "qty"
    assert "<= 10" in err.value.errors[0].reason


def test_missing_and_unknown_fields_are_named() -> None:
    wf = workflow_from_function(lambda name, count=1: None, name="f")
    with pytest.raises(ValidationError) as err:
        wf.validate({})
    assert err.value.errors[0].path == "name"
    with pytest.raises(ValidationError) as err:
        wf.validate({"name": "x", "colour": 1})
    assert (err.value.errors[0].path, err.value.errors[0].reason) == ("colour", "unknown field")
    with pytest.raises(ValidationError) as err:
        wf.validate([1, 2])
    assert "object" in err.value.errors[0].reason
    with pytest.raises(ValidationError) as err:
        wf.validate(b'{"name": ')
    assert "invalid JSON" in err.value.errors[0].reason
    assert wf.validate(b'{"name": "x"}').name == "x"


def test_varargs_and_bad_names_are_rejected() -> None:
    def bad(*args: int) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match=r"\*args"):
        workflow_from_function(bad)
    with pytest.raises(WorkflowDefinitionError, match="workflow name"):
        workflow_from_function(lambda: None, name="no spaces please")


def test_duplicate_registration_is_an_error() -> None:
    app = Nexus(autoload=False)

    @app.workflow
    def twice() -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="already registered"):
        app.workflow(twice)


def test_unknown_workflow_suggests_the_closest_name() -> None:
    app = Nexus(autoload=False)

    @app.workflow
    def greet() -> None: ...

    with pytest.raises(Exception, match="did you mean 'greet'") as err:
        app.get_workflow("gret")
    assert err.value.detail().suggestion == "greet"


# -- schema round trips over many annotation types --------------------------------

ROUND_TRIP_TYPES: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (int, st.integers()),
    (float, st.floats(allow_nan=False, allow_infinity=False)),
    (str, st.text()),
    (bool, st.booleans()),
    (list[int], st.lists(st.integers())),
    (
        dict[str, float],
        st.dictionaries(st.text(), st.floats(allow_nan=False, allow_infinity=False)),
    ),
    (int | None, st.none() | st.integers()),
    (Color, st.sampled_from(Color)),
    (Literal["a", "b"], st.sampled_from(["a", "b"])),
    (Address, st.builds(Address, street=st.text(), zip=st.from_regex(r"^\d{5}$", fullmatch=True))),
    (
        Point,
        st.builds(
            Point,
            x=st.floats(allow_nan=False, allow_infinity=False),
            y=st.floats(allow_nan=False, allow_infinity=False),
        ),
    ),
    (Pet, st.fixed_dictionaries({"name": st.text(), "legs": st.integers(0, 8)})),
    (tuple[int, str], st.tuples(st.integers(), st.text())),
]


@pytest.mark.parametrize(
    ("annotation", "values"), ROUND_TRIP_TYPES, ids=[repr(t) for t, _ in ROUND_TRIP_TYPES]
)
def test_schema_round_trip(annotation: Any, values: st.SearchStrategy[Any]) -> None:
    import jsonschema

    def fn(value: annotation) -> annotation:  # type: ignore[valid-type]
        return value

    fn.__annotations__ = {"value": annotation, "return": annotation}
    wf = workflow_from_function(fn, name="echo")
    jsonschema.Draft202012Validator.check_schema(wf.input_schema)
    validator = jsonschema.Draft202012Validator(wf.input_schema)

    @settings(max_examples=40, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        wire = msgspec.json.decode(msgspec.json.encode({"value": value}))
        assert not list(validator.iter_errors(wire))  # our schema accepts what we produce
        typed = wf.validate(wire)  # and our validator reads it back
        assert msgspec.json.decode(msgspec.json.encode(typed.value)) == wire["value"]

    check()


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(), max_size=4))
def test_bad_input_always_names_a_field(data: dict[str, Any]) -> None:
    wf = workflow_from_function(lambda name, count=1: None, name="f")
    errors = []
    try:
        typed = wf.validate(data)
    except ValidationError as exc:
        errors = exc.errors
    if errors:
        # Every bad field at once: the missing one and each unknown key, by name.
        expected = {key for key in data if key not in ("name", "count")}
        if "name" not in data:
            expected.add("name")
        assert sorted(e.path for e in errors) == sorted(expected)
        assert all(e.reason for e in errors)
    else:
        assert isinstance(typed.name, str) if "name" in data else False


# -- strict validation --------------------------------------------------------------


def _ship_workflow() -> Any:
    def ship(
        address: Address,
        where: Point,
        qty: int = 1,
        price: float = 1.0,
        gift: bool = False,
        tags: list[float] = [],  # noqa: B006 - a schema default, never mutated
    ) -> None:
        return None

    return workflow_from_function(ship)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("qty", "3", "expected 'int', got 'str'"),
        ("price", "900", "expected 'float', got 'str'"),
        ("price", "9e5", "expected 'float', got 'str'"),
        ("price", "Infinity", "expected 'float', got 'str'"),
        ("price", True, "expected 'float', got 'bool'"),
        ("qty", 3.0, "expected 'int', got 'float'"),
        ("gift", "true", "expected 'bool', got 'str'"),
        ("gift", 1, "expected 'bool', got 'int'"),
        ("price", float("inf"), "expected a finite number, got inf"),
        ("price", float("nan"), "expected a finite number, got nan"),
    ],
)
def test_validation_is_strict(field: str, value: Any, reason: str) -> None:
    wf = _ship_workflow()
    good = {"address": {"street": "x", "zip": "12345"}, "where": {"x": 1}}
    with pytest.raises(ValidationError) as err:
        wf.validate({**good, field: value})
    assert [(e.path, e.reason) for e in err.value.errors] == [(field, reason)]
    typed = wf.validate({**good, "price": 3})  # an int where a float is expected is fine
    assert typed.price == 3.0 and isinstance(typed.price, float)


def test_every_bad_field_is_named_at_once_nested_too() -> None:
    wf = _ship_workflow()
    with pytest.raises(ValidationError) as err:
        wf.validate(
            {
                "address": {"street": "x", "zip": "1"},
                "where": {"x": "1"},
                "qty": "2",
                "tags": [1.0, float("nan"), "3"],
                "color": "red",
            }
        )
    assert [(e.path, e.reason.split(" matching ")[0]) for e in err.value.errors] == [
        ("address.zip", "expected 'str'"),
        ("where.x", "expected 'float', got 'str'"),
        ("qty", "expected 'int', got 'str'"),
        ("tags[1]", "expected a finite number, got nan"),
        ("color", "unknown field"),
    ]
    # The same from JSON bytes, where "3" in tags is the first error msgspec meets.
    raw = b'{"address": {"street": "x", "zip": "12345"}, "where": {"x": 1}, "qty": "2", "gift": 0}'
    with pytest.raises(ValidationError) as err:
        wf.validate(raw)
    assert [e.path for e in err.value.errors] == ["qty", "gift"]
    with pytest.raises(ValidationError) as err:
        wf.validate(b'{"qty": 1')
    assert err.value.errors[0].path == "" and "invalid JSON" in err.value.errors[0].reason


def test_structs_given_in_process_are_checked_like_plain_values() -> None:
    wf = _ship_workflow()
    # msgspec does not check a Struct's fields when it is built: validation must.
    sneaky = Address(street="x", zip="1")
    with pytest.raises(ValidationError) as err:
        wf.validate({"address": sneaky, "where": Point(x=1)})
    assert [e.path for e in err.value.errors] == ["address.zip"]
    whole = wf.input_type(address=Address(street="x", zip="12345"), where=Point(x="9e5"))
    with pytest.raises(ValidationError) as err:
        wf.validate(whole)
    assert [e.path for e in err.value.errors] == ["where.x"]
    ok = wf.validate({"address": Address(street="x", zip="12345"), "where": Point(x=2)})
    assert ok.address == Address(street="x", zip="12345") and ok.where == Point(x=2.0)


# -- the builder's checks ----------------------------------------------------------


class Num(Node):
    blocking = False

    class Inputs(msgspec.Struct):
        value: int

    class Outputs(msgspec.Struct):
        value: int

    def run(self, inputs: Inputs) -> Outputs:
        return self.Outputs(value=inputs.value + 1)


class Text(Node):
    blocking = False

    class Inputs(msgspec.Struct):
        text: str

    class Outputs(msgspec.Struct):
        text: str
        length: int

    def run(self, inputs: Inputs) -> Outputs:
        return self.Outputs(text=inputs.text, length=len(inputs.text))


REGISTRY = {"Num": Num, "Text": Text}


def test_unknown_node_type_is_named_with_a_suggestion() -> None:
    wb = WorkflowBuilder("w")
    wb.add_node("Nun", "first")
    with pytest.raises(WorkflowDefinitionError, match="'first': unknown node type 'Nun'.*'Num'"):
        wb.build(REGISTRY)


def test_missing_required_input_is_named() -> None:
    wb = WorkflowBuilder("w")
    wb.add_node("Num", "a")
    with pytest.raises(WorkflowDefinitionError, match="'a'.*required input 'value'") as err:
        wb.build(REGISTRY)
    assert (err.value.node, err.value.field) == ("a", "value")


def test_unknown_parameter_is_named() -> None:
    wb = WorkflowBuilder("w")
    wb.add_node("Num", "a", {"value": 1, "valeu": 2})
    with pytest.raises(WorkflowDefinitionError, match="'a'.*no parameter 'valeu'"):
        wb.build(REGISTRY)


def test_cycle_is_named() -> None:
    wb = WorkflowBuilder("w")
    for n in "abc":
        wb.add_node("Num", n)
    wb.add_workflow_inputs("a", {"v": "value"})
    wb.add_connection("a", "value", "b", "value")
    wb.add_connection("b", "value", "c", "value")
    wb.add_connection("c", "value", "b", "value")
    with pytest.raises(WorkflowDefinitionError, match=r"cycle: (b -> c -> b|c -> b -> c)"):
        wb.build(REGISTRY)


def test_incompatible_connection_is_named() -> None:
    wb = WorkflowBuilder("w")
    wb.add_node("Text", "t", {"text": "hi"})
    wb.add_node("Num", "n")
    wb.add_connection("t", "text", "n", "value")
    with pytest.raises(WorkflowDefinitionError) as err:
        wb.build(REGISTRY)
    message = str(err.value)
    assert "t.text (str)" in message and "n.value (int)" in message
    assert (err.value.node, err.value.field) == ("n", "value")


def test_unknown_output_and_input_fields_are_named() -> None:
    wb = WorkflowBuilder("w")
    wb.add_node("Text", "t", {"text": "hi"})
    wb.add_node("Num", "n")
    wb.add_connection("t", "size", "n", "value")
    with pytest.raises(WorkflowDefinitionError, match="'t' has no output 'size'.*length"):
        wb.build(REGISTRY)
    wb = WorkflowBuilder("w")
    wb.add_node("Text", "t", {"text": "hi"})
    wb.add_node("Num", "n", {"value": 1})
    wb.add_connection("t", "length", "n", "amount")
    with pytest.raises(WorkflowDefinitionError, match="'n' has no input 'amount'"):
        wb.build(REGISTRY)
    wb = WorkflowBuilder("w")
    wb.add_node("Num", "n", {"value": 1})
    wb.add_connection("n", "value", "ghost", "value")
    with pytest.raises(WorkflowDefinitionError, match="no node 'ghost'"):
        wb.build(REGISTRY)


def test_compatible_connection_builds_with_workflow_io() -> None:
    wb = WorkflowBuilder("count_chars")
    wb.add_node("Text", "t")
    wb.add_node("Num", "n")
    wb.add_connection("t", "length", "n", "value")
    wb.add_workflow_inputs("t", {"text": "text"})
    wb.add_workflow_outputs("n", {"chars_plus_one": "value"})
    wf = wb.build(REGISTRY)
    assert wf.input_schema["required"] == ["text"]
    assert "chars_plus_one" in wf.output_schema["properties"]


def test_assignability_rules() -> None:
    assert is_assignable(int, float)
    assert not is_assignable(float, int)
    assert is_assignable(int, int | None)
    assert not is_assignable(int | None, int)
    assert is_assignable(list[int], list[float])
    assert not is_assignable(list[str], list[int])
    assert is_assignable(Any, int) and is_assignable(int, Any)
    assert is_assignable(Literal["a"], str)
    assert is_assignable(bool, int)
    assert is_assignable(typing.Annotated[int, msgspec.Meta(ge=0)], int)
    assert is_assignable(Address, Address) and not is_assignable(Address, Point)


async def _render(app: Nexus, name: str, args: dict[str, str]) -> Any:
    return await app.prompts[name].render(args)


def test_prompts_register_list_and_render() -> None:
    import anyio

    app = Nexus(autoload=False)

    @app.prompt
    def review(code: str, language: str = "python") -> str:
        """Ask for a code review."""
        return f"Review this {language} code: {code}"

    @app.prompt(name="chat")
    async def conversation(topic: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": topic}, {"role": "assistant", "content": "Sure."}]

    assert set(app.prompts) == {"review", "chat"}
    prompt = app.prompts["review"]
    assert prompt.description == "Ask for a code review."
    assert [(a.name, a.required) for a in prompt.arguments] == [("code", True), ("language", False)]
    [message] = anyio.run(_render, app, "review", {"code": "x = 1"})
    assert (message.role, message.content) == ("user", "Review this python code: x = 1")
    messages = anyio.run(_render, app, "chat", {"topic": "bees"})
    assert [m.role for m in messages] == ["user", "assistant"]
    with pytest.raises(ValidationError) as err:
        anyio.run(_render, app, "review", {"lang": "go"})
    assert err.value.errors[0].path in {"lang", "code"}
    with pytest.raises(WorkflowDefinitionError, match="already exists"):
        app.prompt(review)
