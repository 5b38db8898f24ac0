"""The OpenAPI 3.1 document, built from the host's workflows at request time.

Workflows are registered at run time, so the document is ours rather than
Litestar's: the fixed routes are described once, and every workflow gets its
own ``POST /workflows/{name}/runs`` operation whose request body is the core's
input JSON Schema and whose ``200`` response carries the core's output JSON
Schema, unchanged except that nested types move from ``$defs`` into
``#/components/schemas`` (a ``$ref`` to ``#/$defs/X`` would resolve against the
document root, where there is no ``$defs``). Two workflows with different
types of the same name get components prefixed with the workflow's name.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import msgspec
import nexus_core

from .models import (
    BlobReference,
    CliToken,
    CliTokenRequest,
    CliTokenRevoked,
    ConfigCheck,
    ConfigView,
    HealthReport,
    PluginList,
    RunList,
    RunResult,
    SessionBody,
    WorkflowInfo,
    WorkflowList,
)
from .problems import PROBLEM_JSON, Problem

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nexus_core import Nexus, Workflow

__all__ = ["build_openapi", "lift_defs"]

_REF = "#/components/schemas/"
_STATIC_TYPES = (
    BlobReference,
    WorkflowList,
    WorkflowInfo,
    RunResult,
    RunList,
    SessionBody,
    HealthReport,
    PluginList,
    Problem,
    CliTokenRequest,
    CliToken,
    CliTokenRevoked,
    ConfigView,
    ConfigCheck,
)
_PROBLEMS = {
    400: "The request is malformed (for example, the body is not JSON).",
    401: "Credentials are missing or invalid.",
    403: "The caller may not do this.",
    404: "No such workflow, run or session (or not visible to the caller).",
    405: "Method not allowed.",
    409: "The Idempotency-Key was used with other inputs, or the run cannot be cancelled here.",
    413: "The request body is over the size limit.",
    422: "The inputs do not match the workflow's schema; `errors` names each field.",
    429: "Too many requests; wait for `Retry-After` seconds.",
}


def _static_components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(_STATIC_TYPES, ref_template=_REF + "{name}")
    return components


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value in mapping:
                out[key] = mapping[value]
            else:
                out[key] = _rewrite(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite(item, mapping) for item in node]
    return node


def lift_defs(
    schema: dict[str, Any], components: dict[str, Any], owner: str, seen: dict[str, Any]
) -> dict[str, Any]:
    """Move ``schema``'s ``$defs`` into ``components``; return the schema with rewritten refs.

    ``seen`` maps a component name to the raw definition that claimed it, so
    the same type used by two workflows is one component, and different types
    that share a name get ``"{owner}.{name}"``.
    """
    schema = copy.deepcopy(schema)
    defs: dict[str, Any] = schema.pop("$defs", None) or {}
    mapping: dict[str, str] = {}
    for name, raw in defs.items():
        target = name
        if target in components and seen.get(target) != raw:
            target = f"{owner}.{name}"
        mapping[f"#/$defs/{name}"] = _REF + target
    for name, raw in defs.items():
        target = mapping[f"#/$defs/{name}"].removeprefix(_REF)
        if target not in components:
            components[target] = _rewrite(raw, mapping)
            seen[target] = raw
    return _rewrite(schema, mapping)  # type: ignore[no-any-return]


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": _PROBLEMS[status],
            "content": {PROBLEM_JSON: {"schema": _ref("Problem")}},
        }
        for status in statuses
    }


def _header(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


_SESSION_PARAM = {
    "name": "X-Nexus-Session",
    "in": "header",
    "required": False,
    "description": "A session token (from POST /sessions or an earlier run); "
    "the session cookie works too.",
    "schema": {"type": "string"},
}


def _run_operation(
    wf: Workflow, components: dict[str, Any], seen: dict[str, Any], by_reference: bool = False
) -> dict[str, Any]:
    input_schema = lift_defs(wf.input_schema, components, wf.name, seen)
    output_schema = lift_defs(wf.output_schema, components, wf.name, seen)
    if by_reference:  # a large output comes as a reference (GET /runs/{id}/result reads it)
        output_schema = {"anyOf": [output_schema, _ref("BlobReference")]}
    run_schema = {
        "allOf": [_ref("RunResult"), {"type": "object", "properties": {"output": output_schema}}]
    }
    location = {"Location": _header("Location", "The run: GET it for status and result.")}
    summary = wf.meta.title or (wf.description.splitlines()[0] if wf.description else wf.name)
    operation: dict[str, Any] = {
        "operationId": f"run_{wf.name}",
        "summary": summary,
        "description": (wf.description or f"Run the workflow {wf.name!r}.")
        + "\n\nWaits for the run and returns it (a failed run is a 200 whose `status` is "
        "`failed`). With `Prefer: respond-async` it answers 202 at once with the run id "
        "and a `Location` to poll.",
        "tags": ["workflows", *wf.meta.tags],
        "parameters": [
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "`respond-async` to start the run and return at once (202).",
                "schema": {"type": "string"},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Retries with the same key return the same run "
                "(409 if the inputs differ).",
                "schema": {"type": "string"},
            },
            _SESSION_PARAM,
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": input_schema}},
        },
        "responses": {
            "200": _json(run_schema, "The finished run with its output.", headers=location),
            "202": _json(
                _ref("RunResult"),
                "The run was started (`Prefer: respond-async`).",
                headers=location,
            ),
            **_problems(400, 401, 403, 404, 409, 413, 422, 429),
        },
    }
    if wf.meta.read_only or wf.meta.idempotent or wf.meta.destructive:
        operation["x-nexus-annotations"] = {
            "read_only": wf.meta.read_only,
            "idempotent": wf.meta.idempotent,
            "destructive": wf.meta.destructive,
        }
    return operation


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_EVENT_STREAM = {
    "text/event-stream": {
        "schema": {"type": "string"},
    }
}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume after this event id: every matching event since is replayed first.",
    "schema": {"type": "string"},
}
_PUBLIC: list[dict[str, list[str]]] = []
#: Routes that always need credentials, even with authentication off.
_CREDENTIALS: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]


def _static_paths() -> dict[str, Any]:
    run_id = _path_param("run_id", "The run id.")
    return {
        "/workflows": {
            "get": {
                "operationId": "list_workflows",
                "summary": "List workflows with their input and output JSON Schemas.",
                "tags": ["workflows"],
                "responses": {
                    "200": _json(_ref("WorkflowList"), "The workflows."),
                    **_problems(401, 403),
                },
            }
        },
        "/workflows/{name}": {
            "get": {
                "operationId": "get_workflow",
                "summary": "One workflow with its schemas.",
                "tags": ["workflows"],
                "parameters": [_path_param("name", "The workflow's name.")],
                "responses": {
                    "200": _json(_ref("WorkflowInfo"), "The workflow."),
                    **_problems(401, 403, 404),
                },
            }
        },
        "/runs": {
            "get": {
                "operationId": "list_runs",
                "summary": "List runs, newest first, filtered and paginated.",
                "tags": ["runs"],
                "parameters": [
                    _query("workflow", "Only runs of this workflow.", {"type": "string"}),
                    _query(
                        "status",
                        "Only runs in this status.",
                        {"enum": ["pending", "running", "completed", "failed", "cancelled"]},
                    ),
                    _query("session_id", "Only runs in this session.", {"type": "string"}),
                    _query(
                        "limit",
                        "At most this many runs (1 to 200, default 50).",
                        {"type": "integer", "minimum": 1, "maximum": 200},
                    ),
                    _query(
                        "before",
                        "The page after this run id (the `next` of the previous page).",
                        {"type": "string"},
                    ),
                ],
                "responses": {
                    "200": _json(_ref("RunList"), "The runs."),
                    **_problems(401, 403, 422),
                },
            }
        },
        "/runs/{run_id}": {
            "get": {
                "operationId": "get_run",
                "summary": "A run's status, output and per-node detail.",
                "tags": ["runs"],
                "parameters": [run_id],
                "responses": {
                    "200": _json(_ref("RunResult"), "The run."),
                    **_problems(401, 403, 404),
                },
            },
            "delete": {
                "operationId": "cancel_run",
                "summary": "Cancel a run.",
                "description": "200 with the run once it has ended (also when it had already "
                "ended); 202 when it is still stopping.",
                "tags": ["runs"],
                "parameters": [run_id],
                "responses": {
                    "200": _json(_ref("RunResult"), "The run, ended."),
                    "202": _json(_ref("RunResult"), "Cancellation requested; still stopping."),
                    **_problems(401, 403, 404, 409),
                },
            },
        },
        "/runs/{run_id}/result": {
            "get": {
                "operationId": "get_run_result",
                "summary": "A completed run's output as JSON, streamed.",
                "description": "An output over `services.runs.inline_limit` is stored by "
                'reference (the run shows `{"$blob": ...}`) and streamed from the blob store '
                "here; `Content-Length` and `X-Content-SHA256` (hex) describe it then. 404 until "
                "the run has completed.",
                "tags": ["runs"],
                "parameters": [run_id],
                "responses": {
                    "200": _json({}, "The run's output."),
                    **_problems(401, 403, 404),
                },
            }
        },
        "/runs/{run_id}/events": {
            "get": {
                "operationId": "run_events",
                "summary": "Server-Sent Events of one run, from its start; ends with the run.",
                "tags": ["events"],
                "parameters": [run_id, _LAST_EVENT_ID],
                "responses": {
                    "200": {"description": "An event stream.", "content": _EVENT_STREAM},
                    **_problems(401, 403, 404),
                },
            }
        },
        "/events": {
            "get": {
                "operationId": "events",
                "summary": "Server-Sent Events of the host, filtered by type.",
                "description": "Each event is `id`, `event` (its type) and `data` (the event as "
                "JSON). Reconnect with `Last-Event-ID` to receive what was missed.",
                "tags": ["events"],
                "parameters": [
                    _query(
                        "types",
                        "Comma-separated type patterns, e.g. `run.*,node.finished` (default `*`).",
                        {"type": "string"},
                    ),
                    _LAST_EVENT_ID,
                ],
                "responses": {
                    "200": {"description": "An event stream.", "content": _EVENT_STREAM},
                    **_problems(401, 403),
                },
            }
        },
        "/sessions": {
            "post": {
                "operationId": "create_session",
                "summary": "Start a session usable from every channel.",
                "tags": ["sessions"],
                "responses": {
                    "201": _json(
                        _ref("SessionBody"),
                        "The session; its token is also in `X-Nexus-Session` and the cookie.",
                    ),
                    **_problems(401, 403),
                },
            }
        },
        "/sessions/{session_id}": {
            "get": {
                "operationId": "get_session",
                "summary": "A live session.",
                "tags": ["sessions"],
                "parameters": [_path_param("session_id", "The session token.")],
                "responses": {
                    "200": _json(_ref("SessionBody"), "The session."),
                    **_problems(401, 403, 404),
                },
            }
        },
        "/auth/cli-tokens": {
            "post": {
                "operationId": "issue_cli_token",
                "summary": "Exchange an API key (or a bearer token) for a CLI token.",
                "description": "Issues a CLI token to the principal the credentials prove, with "
                "its tenant, roles and scopes (what `nexus login --url URL --api-key KEY` "
                "does). The token is derived from the credential: it expires no later than "
                "it and is revoked with it. The token is shown only in this answer. Needs "
                "the `cli_token` auth provider enabled and the permission `tokens:issue`; "
                "limited per client address.",
                "tags": ["auth"],
                "security": _CREDENTIALS,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("CliTokenRequest")}},
                },
                "responses": {
                    "201": _json(_ref("CliToken"), "The new CLI token."),
                    **_problems(400, 401, 403, 413, 422, 429),
                },
            }
        },
        "/auth/cli-tokens/current": {
            "delete": {
                "operationId": "revoke_cli_token",
                "summary": "Revoke the CLI token this request presents (`nexus logout`).",
                "description": "`revoked` is false when the credential presented is not a CLI "
                "token: API keys and JWTs are never revoked here.",
                "tags": ["auth"],
                "security": [{"bearerAuth": []}],
                "responses": {
                    "200": _json(_ref("CliTokenRevoked"), "Whether the token was revoked."),
                    **_problems(401),
                },
            }
        },
        "/config": {
            "get": {
                "operationId": "get_config",
                "summary": "The effective configuration, secrets masked, with each value's source.",
                "description": "Needs the `admin` permission when authentication is on.",
                "tags": ["operations"],
                "responses": {
                    "200": _json(_ref("ConfigView"), "The configuration."),
                    **_problems(401, 403),
                },
            }
        },
        "/config/check": {
            "get": {
                "operationId": "check_config",
                "summary": "Re-read the configuration file and check it as at start-up.",
                "description": "200 either way: `ok` false lists the errors. Needs the `admin` "
                "permission when authentication is on.",
                "tags": ["operations"],
                "responses": {
                    "200": _json(_ref("ConfigCheck"), "The result of the check."),
                    **_problems(401, 403),
                },
            }
        },
        "/health/live": {
            "get": {
                "operationId": "health_live",
                "summary": "Liveness: the server's event loop turns.",
                "tags": ["operations"],
                "security": _PUBLIC,
                "responses": {"200": _json(_ref("HealthReport"), "Alive.")},
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "health_ready",
                "summary": "Readiness: storage and every channel answer.",
                "tags": ["operations"],
                "security": _PUBLIC,
                "responses": {
                    "200": _json(_ref("HealthReport"), "Ready."),
                    "503": _json(_ref("HealthReport"), "Not ready; the failing checks say why."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of the host.",
                "tags": ["operations"],
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/plugins": {
            "get": {
                "operationId": "plugins",
                "summary": "Loaded plugins (name, version, hooks), load errors and channels.",
                "tags": ["operations"],
                "security": _PUBLIC,
                "responses": {"200": _json(_ref("PluginList"), "The plugins.")},
            }
        },
    }


_DESCRIPTION = """Every workflow registered on this host, over HTTP.

* `POST /workflows/{name}/runs` runs a workflow with the JSON body as its inputs.
* Errors are RFC 9457 `application/problem+json`; validation errors list each field's path.
* `GET /events` streams events (Server-Sent Events); `/ws` is a WebSocket speaking a small
  JSON protocol (client: `run`, `subscribe`, `unsubscribe`, `cancel`; server: `event`,
  `result`, `error`).
* Send credentials as `Authorization: Bearer ...` or `X-API-Key`; a session as
  `X-Nexus-Session` or the session cookie.
"""


def build_openapi(
    app: Nexus, *, root_path: str = "", workflows: Iterable[Workflow] | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``workflows`` (default: all of ``app``'s) and the fixed routes.

    The API passes the workflows the caller may run, so the document shows
    nobody a workflow or a schema it could not use.
    """
    components = _static_components()
    seen: dict[str, Any] = {}
    paths = _static_paths()
    by_reference = app.config.nexus.services.runs.inline_limit is not None
    chosen = {wf.name: wf for wf in (app.workflows.values() if workflows is None else workflows)}
    for name in sorted(chosen):
        operation = _run_operation(chosen[name], components, seen, by_reference)
        paths[f"/workflows/{name}/runs"] = {"post": operation}
    security: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
    if not app.config.nexus.auth_required:
        security.insert(0, {})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": app.title,
            "version": nexus_core.__version__,
            "description": _DESCRIPTION,
        },
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": security,
        "tags": [
            {"name": "workflows", "description": "Workflows and their runs."},
            {"name": "runs", "description": "Runs: status, results, cancellation."},
            {"name": "sessions", "description": "Sessions shared by every channel."},
            {"name": "events", "description": "Server-Sent Events."},
            {"name": "auth", "description": "CLI tokens for `nexus login`."},
            {"name": "operations", "description": "Health, metrics, plugins, configuration."},
        ],
    }
