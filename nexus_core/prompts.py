"""Prompt templates an application publishes (the MCP channel lists and renders them).

::

    @app.prompt(title="Code review")
    def review(code: str, language: str = "python") -> str:
        "Ask for a careful code review."
        return f"Review this {language} code: {code}"

A prompt is a typed function: its parameters are the prompt's arguments (MCP
sends them as strings; they are converted to the annotated types, so
``count: int`` accepts ``"3"``), its docstring the description. It returns a
string (one user message), a :class:`PromptMessage`, a ``{"role", "content"}``
mapping, or a list of those. ``async def`` prompts are awaited.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

from .errors import FieldError, ValidationError, WorkflowDefinitionError
from .workflows.schema import convert, input_struct_from_signature, json_schema

__all__ = ["Prompt", "PromptArgument", "PromptMessage"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


class PromptArgument(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One argument of a prompt: its name, description and whether it is required."""

    name: str
    description: str | None = None
    required: bool = False


class PromptMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a rendered prompt."""

    role: Literal["user", "assistant"]
    content: str


class Prompt:
    """A registered prompt template: a typed function rendered into messages."""

    __slots__ = ("arguments", "description", "function", "input_type", "name", "title")

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
    ) -> None:
        self.function = function
        self.name: str = name or str(getattr(function, "__name__", ""))
        if not _NAME.match(self.name):
            raise WorkflowDefinitionError(
                f"prompt name {self.name!r} must start with a letter or '_' and contain only "
                "letters, digits, '_', '-' and '.'"
            )
        self.title = title
        self.description = (
            description if description is not None else inspect.cleandoc(function.__doc__ or "")
        )
        struct_name = "".join(p[:1].upper() + p[1:] for p in re.split(r"[_.\-]", self.name))
        self.input_type, injected, _ = input_struct_from_signature(
            function, f"{struct_name}PromptArguments"
        )
        if injected:
            raise WorkflowDefinitionError(
                f"prompt {self.name!r}: parameters {sorted(injected)} are injected by the host; "
                "prompts take only their arguments"
            )
        schema = json_schema(self.input_type)
        required = set(schema.get("required", ()))
        self.arguments = [
            PromptArgument(
                name=field,
                description=prop.get("description") or prop.get("title"),
                required=field in required,
            )
            for field, prop in schema.get("properties", {}).items()
        ]

    def __repr__(self) -> str:
        return f"<Prompt {self.name!r} arguments={[a.name for a in self.arguments]}>"

    async def render(self, arguments: Mapping[str, Any] | None = None) -> list[PromptMessage]:
        """Validate ``arguments`` and render the messages.

        Raises :class:`~nexus_core.errors.ValidationError` naming the argument.
        """
        values = convert(dict(arguments or {}), self.input_type)
        kwargs = {field: getattr(values, field) for field in self.input_type.__struct_fields__}
        result = self.function(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return _messages(self.name, result)


def _messages(name: str, result: Any) -> list[PromptMessage]:
    items = result if isinstance(result, list | tuple) else [result]
    messages = []
    for item in items:
        if isinstance(item, PromptMessage):
            messages.append(item)
        elif isinstance(item, str):
            messages.append(PromptMessage(role="user", content=item))
        elif isinstance(item, Mapping):
            try:
                messages.append(msgspec.convert(item, PromptMessage))
            except msgspec.ValidationError as exc:
                raise ValidationError(
                    [FieldError(path="", reason=f"prompt {name!r} returned a bad message: {exc}")]
                ) from None
        else:
            raise TypeError(
                f"prompt {name!r} returned {type(item).__name__}; expected str, "
                "PromptMessage, a {'role', 'content'} mapping, or a list of those"
            )
    return messages
