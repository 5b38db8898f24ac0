"""Types in, JSON Schema and validation out: the one place msgspec types become contracts.

Every channel reads the same schemas from here (OpenAPI, MCP tool schemas, CLI
options, voice slots), and inputs are validated once, here, with errors that
name the field path and the reason.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import inspect
import math
import re
import types
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import msgspec

from ..errors import FieldError, ValidationError

__all__ = [
    "Injectable",
    "convert",
    "fields_of",
    "input_struct_from_signature",
    "is_assignable",
    "json_schema",
    "strip_unset",
    "validate_inputs",
]


class Injectable:
    """Marker base for parameters the host injects instead of reading them from input.

    A workflow function parameter annotated with a subclass (``Session``) is left
    out of the input schema and filled in by the host for each run: the value
    the run's state holds for that type, else what :meth:`inject` builds.
    """

    @classmethod
    def inject(cls, context: Any) -> Any:
        """The value for a parameter of this type in the run of ``context`` (a ``NodeContext``).

        Called when the run's state holds none. A plugin's injectable type
        (the S3 plugin's client) builds it from ``context.state``, where a host
        run has its :class:`~nexus_core.security.Principal` and its
        :class:`~nexus_core.app.Nexus` under those types. None by default.

        .. versionadded:: 0.2
        """
        return None


# msgspec says "Expected `int`, got `str` - at `$.items[2].qty`"; names may hold backticks.
_MSGSPEC_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>.*)`)?$", re.DOTALL)
_FIELD_NAME = re.compile(r"(?:missing required field|unknown field) `(.*)`", re.DOTALL)


def _field_error(exc: msgspec.ValidationError) -> FieldError:
    match = _MSGSPEC_AT.match(str(exc))
    assert match is not None  # the pattern matches any string
    reason = match.group("reason")
    path = (match.group("path") or "").lstrip(".")
    named = _FIELD_NAME.search(reason)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
        reason = "unknown field" if "unknown" in reason else "missing required field"
    reason = reason.replace("`", "'")
    if reason.startswith("Object "):
        reason = reason[len("Object ") :]
    return FieldError(path=path, reason=reason[:1].lower() + reason[1:])


def convert(data: Any, type_: Any, *, strict: bool = False) -> Any:
    """Validate ``data`` (builtins: dicts, lists, str...) against ``type_`` and return it typed.

    Raises :class:`~nexus_core.errors.ValidationError` naming the field path
    (``"items[2].name"`` style, dotted) and the reason. ``strict=False``
    accepts the string forms a query string produces (``"3"`` for an int);
    workflow inputs are always validated strictly (:func:`validate_inputs`).
    """
    try:
        return msgspec.convert(data, type_, strict=strict)
    except msgspec.ValidationError as exc:
        raise ValidationError([_field_error(exc)]) from None


_S = typing.TypeVar("_S", bound=msgspec.Struct)

# Kept as they are by the plain-value round trip: strict conversion accepts them.
_KEEP_TYPES = (
    bytes,
    bytearray,
    memoryview,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
)


def validate_inputs(data: Any, struct: type[_S]) -> _S:
    """Validate workflow inputs strictly into ``struct``; every channel's inputs come here.

    Strict: no text is read as a number or a boolean (``"900"``, ``"9e5"``,
    ``"Infinity"`` and ``"true"`` are refused where a number or a boolean is
    expected), and no number may be NaN or infinite (JSON has neither, and a
    policy cannot compare them). Structs and dataclasses inside ``data`` are
    checked like the plain values they stand for. Raises
    :class:`~nexus_core.errors.ValidationError` naming every bad top-level
    field (path and reason) at once.
    """
    # Nested Structs are not re-checked by msgspec.convert: make them plain first
    # (an object only an ``Any`` field can take stays as it is: convert decides).
    try:  # noqa: SIM105 - suppress() costs a context manager per call on the hot path
        data = _plain(data, builtin_types=_KEEP_TYPES)
    except (TypeError, ValueError):
        pass
    bad = list(_non_finite(data, "")) if not _finite(data) else []
    try:
        values = _convert(data, struct, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationError(_every_error(data, struct, bad) or [_field_error(exc)]) from None
    if bad:
        raise ValidationError(bad)
    return values


_plain = msgspec.to_builtins
_convert = msgspec.convert
_isfinite = math.isfinite


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (the fast check; :func:`_non_finite` names them)."""
    kind = type(value)
    if kind is float:
        return _isfinite(value)
    if kind is dict:
        value = value.values()
    elif kind is not list and kind is not tuple:
        return True
    for item in value:
        kind = type(item)
        if kind is float:
            if not _isfinite(item):
                return False
        elif (kind is dict or kind is list or kind is tuple) and not _finite(item):
            return False
    return True


def _non_finite(value: Any, path: str) -> Iterator[FieldError]:
    if isinstance(value, float):
        if not math.isfinite(value):
            yield FieldError(path=path, reason=f"expected a finite number, got {value!r}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{path}[{index}]")


def _every_error(
    data: Any, struct: type[msgspec.Struct], bad: list[FieldError]
) -> list[FieldError]:
    """Each top-level field checked on its own, so one answer names every bad field."""
    if not isinstance(data, dict):
        return []
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    flagged = {e.path.partition(".")[0].partition("[")[0] for e in bad}
    errors: list[FieldError] = []
    for name, field in fields.items():
        if name not in data:
            if field.required:
                errors.append(FieldError(path=name, reason="missing required field"))
            continue
        if name in flagged:
            errors.extend(e for e in bad if e.path.partition(".")[0].partition("[")[0] == name)
            continue
        try:
            msgspec.convert(data[name], field.type, strict=True)
        except msgspec.ValidationError as exc:
            inner = _field_error(exc)
            path = inner.path
            path = (
                f"{name}[{path[1:]}"
                if path.startswith("[")
                else ".".join(p for p in (name, path) if p)
            )
            errors.append(FieldError(path=path, reason=inner.reason))
    if struct.__struct_config__.forbid_unknown_fields:
        errors.extend(
            FieldError(path=str(key), reason="unknown field") for key in data if key not in fields
        )
    return errors


def decode_json(data: bytes | str, type_: Any) -> Any:
    """Decode and validate a JSON document in one pass (the fast path for HTTP bodies)."""
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise ValidationError([_field_error(exc)]) from None
    except msgspec.DecodeError as exc:
        raise ValidationError([FieldError(path="", reason=f"invalid JSON: {exc}")]) from None


def json_schema(type_: Any) -> dict[str, Any]:
    """Return the JSON Schema of ``type_`` with the top-level reference inlined.

    ``msgspec.json.schema`` puts a Struct behind ``$ref``; tool and operation
    schemas must be objects at the top, so the referenced component is lifted
    up and the other components stay under ``$defs``.
    """
    schema = msgspec.json.schema(type_)
    ref = schema.get("$ref")
    defs: dict[str, Any] = dict(schema.get("$defs", {}))
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        top = dict(defs.pop(name))
        if _refers_to(top, ref) or any(_refers_to(d, ref) for d in defs.values()):
            # Recursive type: keep the component so the $ref still resolves.
            defs[name] = dict(top)
        schema = top
    if defs:
        schema["$defs"] = defs
    return schema


def _refers_to(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_refers_to(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_refers_to(v, ref) for v in node)
    return False


def strip_unset(type_: Any) -> Any:
    """``T | UnsetType`` -> ``T`` (UNSET marks a branch a node did not take)."""
    if get_origin(type_) in (Union, types.UnionType):
        args = tuple(a for a in get_args(type_) if a is not msgspec.UnsetType)
        if len(args) == 1:
            return args[0]
        if len(args) != len(get_args(type_)):
            return Union[args]  # noqa: UP007 - building a Union from a tuple at run time
    return type_


def fields_of(type_: Any) -> dict[str, tuple[Any, bool]] | None:
    """Field name -> (type, required) for Structs, dataclasses and TypedDicts; else None.

    Cached per type: building a large workflow asks about the same types often,
    and resolving string annotations is slow. Treat the result as read-only.
    """
    try:
        return _fields_cached(type_)
    except TypeError:  # an unhashable annotation
        return _fields_of(type_)


@functools.lru_cache(maxsize=4096)
def _fields_cached(type_: Any) -> dict[str, tuple[Any, bool]] | None:
    return _fields_of(type_)


def _fields_of(type_: Any) -> dict[str, tuple[Any, bool]] | None:
    if type_ is None:
        return None
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        return {f.name: (f.type, f.required) for f in msgspec.structs.fields(type_)}
    if dataclasses.is_dataclass(type_) and isinstance(type_, type):
        hints = get_type_hints(type_, include_extras=True)
        return {
            f.name: (
                hints.get(f.name, Any),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(type_)
        }
    if typing.is_typeddict(type_):
        hints = get_type_hints(type_, include_extras=True)
        required = getattr(type_, "__required_keys__", frozenset(hints))
        return {name: (hint, name in required) for name, hint in hints.items()}
    return None


def _unwrap(type_: Any) -> Any:
    while get_origin(type_) is Annotated:
        type_ = get_args(type_)[0]
    if isinstance(type_, typing.NewType):
        return _unwrap(type_.__supertype__)
    return type_


def is_assignable(source: Any, target: Any) -> bool:
    """Whether a value of type ``source`` may feed a field of type ``target``.

    Deliberately lenient where Python is (``int`` into ``float``, anything into
    ``Any``, ``Any`` into anything: those connections are checked at run time).
    """
    source, target = _unwrap(strip_unset(source)), _unwrap(strip_unset(target))
    if source is Any or target is Any or target is object or source == target:
        return True
    target_origin, source_origin = get_origin(target), get_origin(source)
    if target_origin in (Union, types.UnionType):
        if source_origin in (Union, types.UnionType):
            return all(is_assignable(s, target) for s in get_args(source))
        return any(is_assignable(source, t) for t in get_args(target))
    if source_origin in (Union, types.UnionType):
        return all(is_assignable(s, target) for s in get_args(source))
    if source is type(None) or target is type(None):
        return source is target
    if target is float and source is int:
        return True
    if source_origin is typing.Literal:
        return all(is_assignable(type(v), target) for v in get_args(source))
    if target_origin is typing.Literal:
        return False
    s_base, t_base = source_origin or source, target_origin or target
    if isinstance(s_base, type) and isinstance(t_base, type):
        if issubclass(s_base, enum.Enum) and t_base in (str, int):
            return issubclass(s_base, t_base)
        if not issubclass(s_base, t_base) and not _protocol_match(s_base, t_base):
            return False
        s_args, t_args = get_args(source), get_args(target)
        if s_args and t_args and len(s_args) == len(t_args):
            return all(is_assignable(s, t) for s, t in zip(s_args, t_args, strict=True))
        return True
    return True  # TypeVars and exotic forms: leave it to the run-time check


def _protocol_match(source: type, target: type) -> bool:
    # list -> Sequence, dict -> Mapping and the like.
    import collections.abc as abc

    return (target in (abc.Sequence, abc.Iterable, abc.Collection) and source in (list, tuple)) or (
        target in (abc.Mapping,) and source is dict
    )


def input_struct_from_signature(
    fn: Callable[..., Any], struct_name: str
) -> tuple[type[msgspec.Struct], dict[str, type[Injectable]], Any]:
    """Build the input Struct of a workflow function from its signature.

    Returns the Struct (unknown fields forbidden), the parameters the host
    injects (name -> Injectable type) and the return annotation (``Any`` when
    absent). ``*args`` and ``**kwargs`` are rejected: a schema needs names.
    """
    from ..errors import WorkflowDefinitionError

    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise WorkflowDefinitionError(
            f"cannot resolve the type hints of {fn.__qualname__}: {exc}"
        ) from exc
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    injected: dict[str, type[Injectable]] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise WorkflowDefinitionError(
                f"{fn.__qualname__}: *{param.name} cannot be described by a schema; "
                "name every parameter",
                field=param.name,
            )
        hint = hints.get(param.name, Any)
        bare = _unwrap(hint)
        if isinstance(bare, type) and issubclass(bare, Injectable):
            injected[param.name] = bare
            continue
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, hint))
        else:
            fields.append((param.name, hint, param.default))
    struct = msgspec.defstruct(
        struct_name, fields, kw_only=True, forbid_unknown_fields=True, module=fn.__module__
    )
    try:
        msgspec.json.schema(struct)
    except (TypeError, ValueError) as exc:
        raise WorkflowDefinitionError(
            f"{fn.__qualname__}: an input type is not supported: {exc}"
        ) from exc
    return struct, injected, hints.get("return", Any)


def to_builtins(value: Any) -> Any:
    """Structs, dataclasses, enums and datetimes -> JSON-ready builtins."""
    return msgspec.to_builtins(value)


def ensure_mapping(value: Any) -> Mapping[str, Any]:
    """Accept a dict or any msgspec-convertible object as a mapping of inputs."""
    if isinstance(value, Mapping):
        return value
    built = msgspec.to_builtins(value)
    if not isinstance(built, dict):
        raise ValidationError([FieldError(path="", reason="inputs must be an object")])
    return built
