"""Prompt templates an application publishes (the MCP channel lists and renders them).

::

    @app.prompt
    def review(code: str, language: str = "python") -> str:
        "Ask for a code review."
        return f"Review this {language} code: {code}"

A prompt function returns a string (one user message) or a list of
:class:`PromptMessage`; it may be async. Its parameters are the prompt's
arguments; every argument is a string, as MCP requires.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from .errors import FieldError, ValidationError, WorkflowDefinitionError

__all__ = ["Prompt", "PromptArgument", "PromptMessage"]


class PromptArgument(msgspec.Struct, frozen=True, kw_only=True):
    """One argument of a prompt."""

    name: str
    description: str | None = None
    required: bool = True


class PromptMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a rendered prompt."""

    role: Literal["user", "assistant"] = "user"
    content: str


class Prompt:
    """A registered prompt template: name, description, arguments and the function behind it."""

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.function = function
        self.name = name or function.__name__
        self.description = (
            description if description is not None else inspect.cleandoc(function.__doc__ or "")
        )
        arguments = []
        for param in inspect.signature(function).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise WorkflowDefinitionError(
                    f"prompt {self.name!r}: *{param.name} cannot be an argument; name each one"
                )
            arguments.append(
                PromptArgument(name=param.name, required=param.default is inspect.Parameter.empty)
            )
        self.arguments = tuple(arguments)

    def __repr__(self) -> str:
        return f"<Prompt {self.name!r}>"

    async def render(self, arguments: dict[str, str] | None = None) -> list[PromptMessage]:
        """Fill the template; a missing required or unknown argument is a ValidationError."""
        arguments = dict(arguments or {})
        known = {a.name for a in self.arguments}
        errors = [
            FieldError(path=k, reason="unknown argument") for k in arguments if k not in known
        ]
        errors += [
            FieldError(path=a.name, reason="missing required argument")
            for a in self.arguments
            if a.required and a.name not in arguments
        ]
        if errors:
            raise ValidationError(errors)
        value = self.function(**arguments)
        if inspect.isawaitable(value):
            value = await value
        if isinstance(value, str):
            return [PromptMessage(content=value)]
        return [
            m if isinstance(m, PromptMessage) else msgspec.convert(m, PromptMessage) for m in value
        ]
