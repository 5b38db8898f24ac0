"""Helpers shared by the standard nodes: config errors that name the node, dotted paths."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgspec

from nexus_core.errors import WorkflowDefinitionError

__all__ = ["MISSING", "ConfigError", "NamedConfigErrors", "resolve_path", "split_path"]


class _Missing:
    """The type of :data:`MISSING`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What :func:`resolve_path` returns when a path leads nowhere.
MISSING: Any = _Missing()


class ConfigError(ValueError):
    """A node's config is wrong; ``key`` is the config key at fault.

    Raised from a node's ``__init__`` (where the node id is not known yet);
    :class:`NamedConfigErrors` turns it into a
    :class:`~nexus_core.errors.WorkflowDefinitionError` naming node and key.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


class NamedConfigErrors:
    """Mixin for ``Node`` subclasses: a :class:`ConfigError` at build names node and key.

    Put it before the ``Node`` base: ``class MyNode(NamedConfigErrors, Node)``.
    """

    type_name: ClassVar[str]

    @classmethod
    def from_parameters(cls, node_id: str, parameters: Mapping[str, Any]) -> Any:
        """Build the node as ``Node.from_parameters`` does, naming the key of a config error."""
        try:
            return super().from_parameters(node_id, parameters)  # type: ignore[misc]
        except ConfigError as exc:
            raise WorkflowDefinitionError(
                f"node {node_id!r} ({cls.type_name}): config {exc.key!r}: {exc.reason}",
                node=node_id,
                field=exc.key,
            ) from None


def split_path(path: str, key: str) -> tuple[str, ...]:
    """Split a dotted path (``"user.address.city"``), rejecting empty or private parts.

    ``key`` is the config key the path came from, for the error.
    """
    parts = tuple(path.split("."))
    for part in parts:
        if not part:
            raise ConfigError(key, f"path {path!r} has an empty part")
        if part.startswith("__"):
            raise ConfigError(key, f"path {path!r}: {part!r} is not allowed (dunder name)")
    return parts


def resolve_path(value: Any, parts: Sequence[str]) -> Any:
    """Follow ``parts`` into ``value``; return :data:`MISSING` when a step does not exist.

    A step reads a mapping key, a list or tuple index (``"items.0.name"``), a
    field of a msgspec Struct or dataclass, or an instance attribute of a plain
    object; never a method, a property or a private name.
    """
    for part in parts:
        if isinstance(value, Mapping):
            if part not in value:
                return MISSING
            value = value[part]
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                return MISSING
        elif part.startswith("_"):
            return MISSING
        elif isinstance(value, msgspec.Struct):
            if part not in value.__struct_fields__:
                return MISSING
            value = getattr(value, part)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            if part not in {f.name for f in dataclasses.fields(value)}:
                return MISSING
            value = getattr(value, part)
        else:
            # Plain objects (SimpleNamespace...): instance attributes only, never
            # methods or properties of builtins.
            attrs = getattr(value, "__dict__", None)
            if not isinstance(attrs, Mapping) or part not in attrs:
                return MISSING
            value = attrs[part]
    return value
