"""Errors every channel knows how to render.

Each :class:`NexusError` has a stable ``code`` and a :meth:`~NexusError.detail`
Struct, so the API turns it into ``application/problem+json``, the CLI into a
message and an exit code, and MCP into a tool error, all from the same data.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import msgspec

__all__ = [
    "AuthenticationError",
    "ErrorDetail",
    "FieldError",
    "IdempotencyConflict",
    "InputLimitExceeded",
    "NexusError",
    "NotFound",
    "PermissionDenied",
    "PluginConflictError",
    "PluginFailed",
    "PluginLoadFailed",
    "RateLimited",
    "RunNotFound",
    "ServiceUnavailable",
    "SessionNotFound",
    "ValidationError",
    "WorkflowDefinitionError",
    "WorkflowNotFound",
]


class FieldError(msgspec.Struct, frozen=True):
    """One invalid field: its path (``"address.zip"``, ``"items[2]"``) and why."""

    path: str
    reason: str


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The channel-neutral body of an error."""

    code: str
    message: str
    errors: list[FieldError] = []
    node: str | None = None
    suggestion: str | None = None
    retry_after: float | None = None


class NexusError(Exception):
    """Base of every error Nexus reports to a user."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def detail(self) -> ErrorDetail:
        """The structured form channels render."""
        return ErrorDetail(code=self.code, message=self.message)


class PluginFailed(NexusError):
    """A plugin failed: to register, to build what it registered, to start.

    The message names the plugin, its distribution and version, and says how
    to disable it; ``plugin``, ``distribution`` and ``version`` carry the same.
    The original exception is the ``__cause__``.
    """

    code = "plugin_failed"

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.distribution = distribution
        self.version = version


class PluginLoadFailed(PluginFailed):
    """A plugin could not be loaded and ``NEXUS_STRICT_PLUGINS`` is set (or it is built in)."""

    code = "plugin_load_failed"


class PluginConflictError(NexusError):
    """Two plugins registered the same name; the message names both."""

    code = "plugin_conflict"


class WorkflowDefinitionError(NexusError):
    """A workflow definition is wrong: names the node and field at fault."""

    code = "workflow_definition"

    def __init__(self, message: str, *, node: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.field = field

    def detail(self) -> ErrorDetail:
        """Include the node at fault."""
        return ErrorDetail(code=self.code, message=self.message, node=self.node)


class ValidationError(NexusError):
    """Inputs did not match the workflow's schema; ``errors`` names each field and reason."""

    code = "validation_error"

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__(
            "; ".join(f"{e.path or '(root)'}: {e.reason}" for e in self.errors) or "invalid input"
        )

    def detail(self) -> ErrorDetail:
        """Include every field error."""
        return ErrorDetail(code=self.code, message=self.message, errors=self.errors)


class InputLimitExceeded(ValidationError):
    """The payload broke a size, depth or length limit before validation even ran."""

    code = "input_limit"
    #: Which limit (``max_payload_bytes``, ...): the API answers 413 for the payload size.
    limit: str | None = None


class NotFound(NexusError):
    """Something asked for by name or id does not exist (or is not visible to the caller)."""

    code = "not_found"


class WorkflowNotFound(NotFound):
    """No workflow of that name; suggests the closest registered name."""

    code = "workflow_not_found"

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        matches = difflib.get_close_matches(name, list(known), n=1)
        self.name = name
        self.suggestion = matches[0] if matches else None
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else ""
        super().__init__(f"unknown workflow {name!r}{hint}")

    def detail(self) -> ErrorDetail:
        """Include the suggestion."""
        return ErrorDetail(code=self.code, message=self.message, suggestion=self.suggestion)


class RunNotFound(NotFound):
    """No run with that id is visible to the caller."""

    code = "run_not_found"


class SessionNotFound(NotFound):
    """No live session with that id or token (unknown, expired or of another tenant)."""

    code = "session_not_found"


class IdempotencyConflict(NexusError):
    """An idempotency key was reused with different inputs or another workflow."""

    code = "idempotency_conflict"


class AuthenticationError(NexusError):
    """Credentials are missing or invalid."""

    code = "unauthenticated"


class PermissionDenied(NexusError):
    """The principal is authenticated but may not do this."""

    code = "forbidden"


class ServiceUnavailable(NexusError):
    """A service the host depends on (a storage backend, a broker) cannot be reached now.

    Nothing was done; the same request may succeed later. The message names
    the service and what failed (never a password). HTTP renders it as 503.

    .. versionadded:: 0.1
    """

    code = "unavailable"


class RateLimited(NexusError):
    """Too many requests; ``retry_after`` says how many seconds to wait."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def detail(self) -> ErrorDetail:
        """Include the wait."""
        return ErrorDetail(code=self.code, message=self.message, retry_after=self.retry_after)
