"""The bodies the API answers with, as msgspec Structs (their JSON Schemas go into OpenAPI).

Run bodies are the core's :class:`~nexus_core.workflows.runtime.RunResult`
itself, so a run looks the same over REST, in Python and to the CLI.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nexus_core.health import HealthReport
from nexus_core.plugins import PluginInfo, PluginLoadError
from nexus_core.workflows.runtime import RunResult, RunStatus

__all__ = [
    "ChannelInfo",
    "HealthReport",
    "PluginList",
    "RunList",
    "RunResult",
    "RunSummary",
    "SessionBody",
    "WorkflowInfo",
    "WorkflowList",
]


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
