"""The bodies the API answers with, as msgspec Structs (their JSON Schemas go into OpenAPI).

Run bodies are the core's :class:`~nexus_core.workflows.runtime.RunResult`
itself, so a run looks the same over REST, in Python and to the CLI.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from nexus_core.plugin import (
    BlobRef,
    HealthReport,
    PluginInfo,
    PluginLoadError,
    RunResult,
    RunStatus,
)

__all__ = [
    "BlobReference",
    "ChannelInfo",
    "CliToken",
    "CliTokenRequest",
    "CliTokenRevoked",
    "ConfigCheck",
    "ConfigIssue",
    "ConfigView",
    "HealthReport",
    "PluginList",
    "RunList",
    "RunResult",
    "RunSummary",
    "SessionBody",
    "WorkflowInfo",
    "WorkflowList",
]


class BlobReference(msgspec.Struct, kw_only=True):
    """A run value stored by reference (over ``services.runs.inline_limit``).

    ``GET /runs/{id}/result`` streams a run output given this way.
    """

    blob: BlobRef = msgspec.field(name="$blob")


class WorkflowInfo(msgspec.Struct, kw_only=True):
    """A workflow as the API lists it: its schemas and where to run it.

    ``input_schema`` and ``output_schema`` are the core's JSON Schemas, each
    self-contained (nested types under ``$defs``).
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    runs_url: str
    title: str | None = None
    tags: list[str] = []
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False


class WorkflowList(msgspec.Struct, kw_only=True):
    """``GET /workflows``."""

    items: list[WorkflowInfo]


class RunSummary(msgspec.Struct, kw_only=True):
    """One run in a listing (``GET /runs``): no inputs, outputs or node detail."""

    run_id: str
    workflow: str
    status: RunStatus
    created_at: float
    channel: str | None = None
    session_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


class RunList(msgspec.Struct, kw_only=True):
    """``GET /runs``: newest first; ``next`` is the ``before`` value of the next page (or null)."""

    items: list[RunSummary]
    next: str | None = None


class SessionBody(msgspec.Struct, kw_only=True):
    """A session: its token, the channels that used it, its expiry and its state."""

    session_id: str
    channels: list[str]
    created_at: float
    expires_at: float
    state: dict[str, Any] = {}


class ChannelInfo(msgspec.Struct, kw_only=True):
    """A running channel and what it can do."""

    name: str
    invoke: bool = True
    stream_events: bool = False
    sessions: bool = True
    interactive: bool = False


class PluginList(msgspec.Struct, kw_only=True):
    """``GET /plugins``: loaded plugins, plugins that failed to load, running channels."""

    items: list[PluginInfo]
    errors: list[PluginLoadError] = []
    channels: list[ChannelInfo] = []


class CliTokenRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /auth/cli-tokens`` (optional body): a label to recognise the token by later."""

    label: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class CliToken(msgspec.Struct, kw_only=True):
    """A new CLI token: the secret (shown only here), its record's id, expiry and owner."""

    token: str
    id: str
    expires_at: float | None
    principal: str
    tenant: str


class CliTokenRevoked(msgspec.Struct, kw_only=True):
    """``DELETE /auth/cli-tokens/current``: whether the presented CLI token was revoked.

    ``revoked`` is false when the credential presented is not a CLI token (an
    API key or a JWT is never revoked here).
    """

    revoked: bool
    principal: str


class ConfigView(msgspec.Struct, kw_only=True):
    """``GET /config``: the effective configuration, secrets masked, and each value's source.

    ``config`` is laid out as in a file (under ``nexus``); ``sources`` maps each
    leaf's dotted key to ``"default"``, the file name, ``"code"`` or
    ``"env NEXUS_..."``; ``path`` is the file read, if any.
    """

    config: dict[str, Any]
    sources: dict[str, str]
    path: str | None = None


class ConfigIssue(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One configuration error: what is wrong, the key at fault and where it came from."""

    message: str
    key: str | None = None
    source: str | None = None
    suggestion: str | None = None


class ConfigCheck(msgspec.Struct, kw_only=True):
    """``GET /config/check``: the configuration file as it is now, checked as at start-up.

    ``ok`` false lists the ``errors``; the other fields describe what was checked.
    """

    ok: bool
    errors: list[ConfigIssue] = []
    file: str | None = None
    environment: str | None = None
    storage: str | None = None
