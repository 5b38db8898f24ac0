"""The remote backend: a running gateway's REST API (the API plugin), through httpx.

=========================================  ==========================================
command                                    request
=========================================  ==========================================
workflows / workflows show NAME            ``GET /workflows``, ``GET /workflows/{name}``
run NAME                                   ``POST /workflows/{name}/runs`` (JSON inputs)
run NAME --no-wait, progress               the same with ``Prefer: respond-async`` (202)
runs / runs show / cancel / resume         ``GET /runs``, ``GET /runs/{id}``, ``DELETE /runs/{id}``
session new / show                         ``POST /sessions``, ``GET /sessions/{id}``
events                                     ``GET /events?types=...`` (SSE, ``Last-Event-ID``)
plugins                                    ``GET /plugins``
login --api-key / logout                   ``POST /auth/cli-tokens``,
                                           ``DELETE /auth/cli-tokens/current``
config show / config check                 ``GET /config``, ``GET /config/check``
=========================================  ==========================================

Errors are RFC 9457 problems carrying the core's error fields, rebuilt here
into the same :class:`~nexus_plugin_cli.errors.Problem` the local backend
reports. The token (``--token``, ``NEXUS_TOKEN`` or ``nexus login``) goes in
``Authorization: Bearer``; the session in ``X-Nexus-Session``.
"""

from __future__ import annotations

import http.cookiejar
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from . import __version__, tokens
from .backends import (
    HIDDEN,
    TERMINAL,
    Backend,
    EventCallback,
    Target,
    event_view,
    nexus_command,
    run_summary,
    run_view,
    session_view,
)
from .errors import CliError, Problem

__all__ = ["RemoteBackend", "problem_from_response"]

_POLL = 0.25  # seconds between polls of a run when the event stream is not available
_RECONNECTS = 5


def problem_from_response(response: httpx.Response) -> Problem:
    """The :class:`Problem` of an error response (problem+json, or any body)."""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if not isinstance(body, dict):
        text = " ".join(response.text.split())[:200] if response.text else ""
        return Problem(
            code=_CODES.get(status, "http_error"),
            message=f"the gateway answered {status} {response.reason_phrase}"
            + (f": {text}" if text else ""),
            status=status,
        )
    errors = [
        (str(e.get("path", "")), str(e.get("reason", "")))
        for e in body.get("errors") or ()
        if isinstance(e, dict)
    ]
    message = body.get("detail") or body.get("message") or body.get("title") or f"HTTP {status}"
    problem = Problem(
        code=str(body.get("code") or _CODES.get(status, "http_error")),
        message=str(message),
        errors=errors,
        node=body.get("node"),
        suggestion=body.get("suggestion"),
        retry_after=body.get("retry_after"),
        status=status,
    )
    if status == 401:
        problem.hint = f"log in with: {nexus_command('login')} (or pass --token / NEXUS_TOKEN)"
    return problem


_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "gateway_error",
    503: "unavailable",
}


class RemoteBackend(Backend):
    """A gateway at ``target.url``."""

    def __init__(self, target: Target, *, transport: httpx.AsyncBaseTransport | None = None):
        assert target.url is not None
        self.target = target
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def headers(self) -> dict[str, str]:
        """Headers of every request: the user agent and the bearer token, if any."""
        headers = {"User-Agent": f"nexus-cli/{__version__}", "Accept": "application/json"}
        token = self.target.token or tokens.saved(self.target)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def __aenter__(self) -> RemoteBackend:
        self._client = httpx.AsyncClient(
            base_url=self.target.url or "",
            headers=self.headers(),
            timeout=httpx.Timeout(30.0, connect=5.0),
            transport=self._transport,
            follow_redirects=True,
            # Sessions are explicit (X-Nexus-Session): never join one through a
            # cookie the gateway set on an earlier run of this process.
            cookies=http.cookiejar.CookieJar(
                http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
            ),
        )
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        """The open HTTP client."""
        if self._client is None:
            raise RuntimeError("use 'async with RemoteBackend(...)'")
        return self._client

    async def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        response = await self.client.request(method, path, **options)
        if response.status_code >= 400:
            raise CliError(problem_from_response(response))
        return response

    async def _json(self, method: str, path: str, **options: Any) -> Any:
        response = await self._request(method, path, **options)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise CliError(
                Problem(
                    code="gateway_error",
                    message=f"{method} {path}: the gateway answered something other than JSON",
                    hint="is --url the address of a Nexus gateway (nexus serve)?",
                )
            ) from None

    # -- workflows ----------------------------------------------------------------------

    async def workflows(self) -> list[dict[str, Any]]:
        """``GET /workflows``."""
        body = await self._json("GET", "/workflows")
        items = _items(body, "workflows")
        return sorted((_workflow(item) for item in items), key=lambda wf: wf["name"])

    async def workflow(self, name: str) -> dict[str, Any]:
        """``GET /workflows/{name}``."""
        return _workflow(await self._json("GET", f"/workflows/{quote(name, safe='')}"))

    async def refusal(self, name: str) -> Problem | None:
        """Why ``GET /workflows/{name}`` did not show ``name``: refused, hidden, or unknown.

        ``GET /workflows/{name}`` answers 404 for a workflow the caller may not
        run. The run endpoint tells them apart: it is asked with inputs that
        can never run (a JSON array, refused by validation), so nothing runs;
        the attempt is audited on the gateway as the refused invocation it is.
        A 403 is the refusal every channel gives; a 404 means unknown (None);
        any other answer (the core validates before it authorizes) means the
        workflow exists but is not shown: :data:`HIDDEN`, and ``nexus run``
        then sends the inputs as given for the gateway to decide.
        """
        response = await self.client.post(
            f"/workflows/{quote(name, safe='')}/runs",
            content=b"[]",
            headers={"Content-Type": "application/json"},
        )
        if response.status_code == 403:
            return problem_from_response(response)
        if response.status_code in (404, 405) or response.status_code >= 500:
            return None
        return Problem(
            code=HIDDEN,
            message=f"the gateway does not show workflow {name!r} to this caller",
            status=response.status_code,
        )

    # -- runs ---------------------------------------------------------------------------

    async def invoke(
        self,
        name: str,
        inputs: dict[str, Any],
        *,
        session: str | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
        on_event: EventCallback | None = None,
    ) -> dict[str, Any]:
        """``POST /workflows/{name}/runs``; asynchronously, then followed, with progress."""
        headers: dict[str, str] = {}
        if session:
            headers["X-Nexus-Session"] = session
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        path = f"/workflows/{quote(name, safe='')}/runs"
        if wait and on_event is None:
            response = await self._request(
                "POST", path, json=inputs, headers=headers, timeout=httpx.Timeout(30.0, read=None)
            )
            run = response.json() if response.content else {}
            if response.status_code == 202 or run.get("status") not in TERMINAL:
                return await self._wait(_run_id(run, response), None)
            return run_view(run)
        headers["Prefer"] = "respond-async"
        if not wait:
            response = await self._request("POST", path, json=inputs, headers=headers)
            run = response.json() if response.content else {}
            return run_view({**run, "run_id": _run_id(run, response)})
        return await self._invoke_following(path, inputs, headers, on_event)

    async def _invoke_following(
        self,
        path: str,
        inputs: dict[str, Any],
        headers: dict[str, str],
        on_event: EventCallback | None,
    ) -> dict[str, Any]:
        response = await self._request("POST", path, json=inputs, headers=headers)
        run = response.json() if response.content else {}
        run_id = _run_id(run, response)
        if run.get("status") in TERMINAL:
            # Answered at once (an ephemeral workflow's run has nothing to poll).
            await _report(run_view({**run, "run_id": run_id}), {}, on_event)
            return run_view(run)
        return await self._follow(run_id, on_event)

    async def _follow(self, run_id: str, on_event: EventCallback | None) -> dict[str, Any]:
        """Stream ``GET /runs/{id}/events`` to the run's end, then read the run.

        That stream starts with the run's past events and ends with it; a
        gateway without it is polled instead.
        """
        try:
            async for event in self._sse_at(f"/runs/{quote(run_id, safe='')}/events", {}, None):
                if on_event is not None:
                    await _call(on_event, event)
                if event.get("type") in ("run.completed", "run.failed", "run.cancelled"):
                    break
        except CliError as exc:
            if exc.problem.status not in (404, 405):
                raise
            return await self._wait(run_id, on_event)
        except httpx.TransportError:
            return await self._wait(run_id, None)  # the stream broke: the result still counts
        result = await self.run(run_id)
        if result["status"] not in TERMINAL:
            result = await self._wait(run_id, None)
        return result

    async def _wait(self, run_id: str, on_event: EventCallback | None) -> dict[str, Any]:
        """Poll ``GET /runs/{id}`` until the run ends, reporting nodes as they finish."""
        seen: dict[str, str] = {}
        delay = _POLL / 2
        while True:
            run = await self.run(run_id)
            if await _report(run, seen, on_event):
                return run
            await anyio.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    async def run(self, run_id: str) -> dict[str, Any]:
        """``GET /runs/{id}``."""
        return run_view(await self._json("GET", f"/runs/{quote(run_id, safe='')}"))

    async def output_chunks(self, run_id: str) -> AsyncIterator[bytes]:
        """``GET /runs/{id}/result``, streamed."""
        path = f"/runs/{quote(run_id, safe='')}/result"
        async with self.client.stream("GET", path) as response:
            if response.status_code >= 400:
                await response.aread()
                raise CliError(problem_from_response(response))
            async for chunk in response.aiter_bytes():
                yield chunk

    async def runs(
        self, *, workflow: str | None = None, status: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """``GET /runs?workflow=&status=&limit=``."""
        params: dict[str, Any] = {"limit": limit}
        if workflow:
            params["workflow"] = workflow
        if status:
            params["status"] = status
        body = await self._json("GET", "/runs", params=params)
        return [run_summary(item) for item in _items(body, "runs")]

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """``DELETE /runs/{id}``."""
        before = await self.run(run_id)
        if before["status"] in TERMINAL:
            return {"run_id": run_id, "cancelled": False, "status": before["status"]}
        body = await self._json("DELETE", f"/runs/{quote(run_id, safe='')}")
        body = body if isinstance(body, dict) else {}
        status = body.get("status") or "cancelled"
        cancelled = body.get("cancelled")
        if cancelled is None:  # the API answers with the run: cancelled, or still stopping
            cancelled = status == "cancelled" or status not in TERMINAL
        return {"run_id": run_id, "cancelled": bool(cancelled), "status": status}

    async def resume(self, run_id: str, *, on_event: EventCallback | None = None) -> dict[str, Any]:
        """Follow a run on the gateway to its end (the gateway resumes interrupted runs itself)."""
        run = await self.run(run_id)
        if run["status"] in TERMINAL:
            return run
        return await self._follow(run_id, on_event)

    # -- sessions -----------------------------------------------------------------------

    async def create_session(self) -> dict[str, Any]:
        """``POST /sessions``."""
        return session_view(await self._json("POST", "/sessions", json={}))

    async def session(self, session_id: str) -> dict[str, Any]:
        """``GET /sessions/{id}``."""
        return session_view(await self._json("GET", f"/sessions/{quote(session_id, safe='')}"))

    # -- events -------------------------------------------------------------------------

    async def events(
        self, patterns: Sequence[str], *, since: str | None = None, follow: bool = True
    ) -> AsyncGenerator[dict[str, Any], None]:
        """``GET /events`` as Server-Sent Events; reconnects with ``Last-Event-ID``."""
        return self._events(patterns, since, follow)

    async def _events(
        self, patterns: Sequence[str], since: str | None, follow: bool
    ) -> AsyncGenerator[dict[str, Any], None]:
        last = since
        failures = 0
        while True:
            try:
                async for event in self._sse(patterns, last, None):
                    failures = 0
                    last = event.get("id") or last
                    yield event
            except httpx.TransportError:
                failures += 1
                if failures > _RECONNECTS:
                    raise
            if not follow:
                return
            await anyio.sleep(min(0.5 * 2**failures, 5.0))

    def _sse(
        self, patterns: Sequence[str], last_event_id: str | None, connected: anyio.Event | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        params = {"types": ",".join(patterns) or "*"}
        return self._sse_at("/events", params, last_event_id, connected)

    async def _sse_at(
        self,
        path: str,
        params: dict[str, str],
        last_event_id: str | None,
        connected: anyio.Event | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(30.0, read=None)
        async with self.client.stream(
            "GET", path, params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise CliError(problem_from_response(response))
            if connected is not None:
                connected.set()
            fields: dict[str, str] = {}
            data: list[str] = []
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        event = _sse_event(fields, "\n".join(data))
                        if event is not None:
                            yield event
                    fields, data = {}, []
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value

    # -- login and configuration ------------------------------------------------------------

    async def issue_cli_token(self, api_key: str, *, label: str) -> dict[str, Any]:
        """``POST /auth/cli-tokens`` with ``X-API-Key``: a CLI token for the key's principal.

        Returns ``{"token", "id", "expires_at", "principal", "tenant"}``. The
        bearer token of this backend (if any) is not sent: the key alone says who.
        """
        request = self.client.build_request(
            "POST", "/auth/cli-tokens", json={"label": label}, headers={"X-API-Key": api_key}
        )
        request.headers.pop("Authorization", None)
        response = await self.client.send(request)
        if response.status_code in (404, 405):
            raise CliError(
                Problem(
                    code="unsupported",
                    message=f"the gateway at {self.target.url} cannot exchange an API key for "
                    "a CLI token (it has no POST /auth/cli-tokens)",
                    hint="store a token you were given: "
                    f"{nexus_command('login', target=self.target)} --token TOKEN",
                    status=response.status_code,
                )
            )
        if response.status_code >= 400:
            problem = problem_from_response(response)
            if problem.code in ("unauthenticated", "forbidden"):
                problem.message = f"the gateway at {self.target.url} refused: {problem.message}"
                problem.hint = None
            raise CliError(problem)
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise CliError(
                Problem(code="gateway_error", message="the gateway answered without a token")
            )
        return body

    async def revoke_current_token(self, token: str) -> bool:
        """``DELETE /auth/cli-tokens/current`` with ``token``: whether the gateway revoked it.

        A token the gateway no longer accepts (revoked, expired) is not an error.
        """
        response = await self.client.delete(
            "/auth/cli-tokens/current", headers={"Authorization": f"Bearer {token}"}
        )  # the token being revoked, whatever --token / NEXUS_TOKEN say
        if response.status_code in (401, 404, 405):
            return False
        if response.status_code >= 400:
            raise CliError(problem_from_response(response))
        body = response.json() if response.content else {}
        return bool(isinstance(body, dict) and body.get("revoked"))

    async def config(self) -> dict[str, Any]:
        """``GET /config``: ``{"config", "sources", "path"}``, secrets masked by the gateway."""
        return dict(await self._json("GET", "/config"))

    async def config_check(self) -> dict[str, Any]:
        """``GET /config/check``: ``{"ok": true, ...}`` or ``{"ok": false, "errors": [...]}``."""
        return dict(await self._json("GET", "/config/check"))

    # -- plugins ------------------------------------------------------------------------

    async def plugins(self) -> dict[str, Any]:
        """``GET /plugins``."""
        body = await self._json("GET", "/plugins")
        if isinstance(body, list):
            return {"plugins": body, "errors": []}
        plugins = body.get("plugins") or body.get("items") or []
        return {"plugins": list(plugins), "errors": list(body.get("errors") or [])}


def _sse_event(fields: dict[str, str], data: str) -> dict[str, Any] | None:
    try:
        body = json.loads(data)
    except ValueError:
        body = {"data": {"text": data}}
    if not isinstance(body, dict):
        body = {"data": {"value": body}}
    if "type" not in body and fields.get("event"):
        body["type"] = fields["event"]
    if "id" not in body and fields.get("id"):
        body["id"] = fields["id"]
    if not body.get("type"):
        return None
    return event_view(body)


async def _call(callback: EventCallback, event: dict[str, Any]) -> None:
    result = callback(event)
    if result is not None:
        await result


def _items(body: Any, key: str) -> list[dict[str, Any]]:
    if isinstance(body, dict):
        body = body.get(key) or body.get("items") or body.get("data") or []
    return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else []


def _workflow(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": item.get("name"),
        "description": item.get("description") or "",
        "input_schema": item.get("input_schema") or item.get("inputSchema") or {},
        "output_schema": item.get("output_schema") or item.get("outputSchema") or {},
    }


def _run_id(run: dict[str, Any], response: httpx.Response) -> str:
    run_id = run.get("run_id") or run.get("id")
    if not run_id:
        location = response.headers.get("Location", "")
        run_id = location.rstrip("/").rsplit("/", 1)[-1] if location else None
    if not run_id:
        raise CliError(
            Problem(code="gateway_error", message="the gateway accepted the run but sent no run id")
        )
    return str(run_id)


async def _report(
    run: dict[str, Any], seen: dict[str, str], on_event: EventCallback | None
) -> bool:
    """Report a polled run's node changes (and its end) to ``on_event``; whether it ended."""
    run_id = run["run_id"]
    if on_event is not None:
        for node_id, node in run["nodes"].items():
            status = node.get("status") or ""
            if seen.get(node_id) != status:
                seen[node_id] = status
                kind = "node.failed" if status == "failed" else "node.finished"
                await _call(
                    on_event,
                    {
                        "type": kind,
                        "run_id": run_id,
                        "data": {
                            "node": node_id,
                            "status": status,
                            "duration_ms": node.get("duration_ms"),
                            "error": node.get("error"),
                        },
                    },
                )
    if run["status"] in TERMINAL:
        if on_event is not None:
            await _call(on_event, {"type": f"run.{run['status']}", "run_id": run_id})
        return True
    return False
