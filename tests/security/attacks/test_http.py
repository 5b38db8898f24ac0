"""HTTP attacks on the secured gateway: oversized and slow requests, exposure, stale streams.

Each test attacks the real gateway (``python -m nexus_plugin_api``, see
conftest.py) from outside and asserts the status, the reason and that the
gateway is still healthy afterwards:

=======================================  =============================================
8 concurrent 64 MiB headers              431 each; peak RSS stays under 150 MB
a header over ``max_header_bytes``       431 naming ``max_header_bytes``
too many header fields                   431 naming ``max_header_count``
a long request line                      414 naming ``max_request_line``
a body over ``max_body_bytes``           413 (declared, or counted while chunked)
headers / body sent too slowly           408 naming ``header_timeout`` / ``body_timeout``
``/openapi.json``, ``/docs``, ``/plugins``  401 for anonymous callers; the document
                                         lists only what the caller may run
``/metrics``                             401 anonymous, 403 without ``metrics:read``
a forged ``Host``                        never reflected in a challenge or body
WS / SSE after revocation or expiry      closed (1008 / ``event: error``) with the reason
=======================================  =============================================
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

pytest.importorskip("nexus_plugin_api", reason="the HTTP attacks need nexus-plugin-api")
websockets_client = pytest.importorskip("websockets.asyncio.client")
websockets_exceptions = pytest.importorskip("websockets.exceptions")
httpx_sse = pytest.importorskip("httpx_sse")

pytestmark = pytest.mark.anyio

RECHECK = 0.5
TIMEOUT = 1.0
MIB = 1 << 20


@pytest.fixture(scope="module")
def secured_overrides() -> dict[str, Any]:
    # Default size limits (the memory test is about the defaults); short timeouts
    # and re-checks so the slow-client and revocation tests finish quickly.
    return {
        "nexus": {
            "channels": {"api": {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT}},
            "services": {"security": {"recheck_interval": RECHECK}},
        }
    }


# -- raw HTTP --------------------------------------------------------------------------


class Answer:
    """A raw HTTP answer."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == "application/problem+json", self.headers
        body: dict[str, Any] = json.loads(self.body)
        return body


def _address(url: str) -> tuple[str, int]:
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    return where.hostname, where.port


async def _raw(url: str, *parts: bytes) -> Answer:
    """Send ``parts`` on a fresh connection, read the answer until the server closes."""
    host, port = _address(url)
    async with await anyio.connect_tcp(host, port) as stream:
        for part in parts:
            try:
                await stream.send(part)
            except (anyio.BrokenResourceError, OSError):
                break
        received = b""
        with anyio.fail_after(30):
            while True:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
    return Answer(received)


def _refused(answer: Answer, status: int, limit: str) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:300])
    problem = answer.problem()
    assert problem["status"] == status
    assert problem["limit"] == f"nexus.channels.api.{limit}"
    assert problem["detail"] and problem["errors"][0]["reason"] == problem["detail"]
    return problem


# -- sizes and slow clients ------------------------------------------------------------------


def _rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _flood(host: str, port: int, answers: list[bytes]) -> None:
    """Send a request with a 64 MiB header (as far as the server reads it); keep the answer."""
    chunk = b"a" * MIB
    received = b""
    with socket.create_connection((host, port), timeout=60) as sock:
        try:
            sock.sendall(b"GET /workflows HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(64):
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # refused and closed mid-way: the point
        try:
            while data := sock.recv(65536):
                received += data
        except OSError:
            pass
    answers.append(received)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_eight_concurrent_64_mib_headers_leave_rss_under_150_mb(secured: Any) -> None:
    host, port = _address(secured.url)
    answers: list[bytes] = []
    threads = [threading.Thread(target=_flood, args=(host, port, answers)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    peak = _rss(secured.gateway.process.pid, "VmHWM")  # the high-water mark, not a sample
    assert peak < 150 * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    assert len(answers) == 8
    for answer in answers:
        _refused(Answer(answer), 431, "max_header_bytes")
    secured.assert_healthy()


async def test_a_header_over_the_size_limit_is_431(secured: Any) -> None:
    big = b"GET /workflows HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MIB + b"\r\n\r\n"
    problem = _refused(await _raw(secured.url, big), 431, "max_header_bytes")
    assert "32 KiB" in problem["detail"]
    secured.assert_healthy()


async def test_too_many_header_fields_are_431(secured: Any) -> None:
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(500))
    request = b"GET /workflows HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    _refused(await _raw(secured.url, request), 431, "max_header_count")
    secured.assert_healthy()


async def test_a_long_request_line_is_414(secured: Any) -> None:
    request = b"GET /" + b"w" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    _refused(await _raw(secured.url, request), 414, "max_request_line")
    secured.assert_healthy()


async def test_a_declared_body_over_the_limit_is_413_before_it_is_read(secured: Any) -> None:
    request = (
        b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + secured.key("operator").encode() + b"\r\n"
        b"Content-Length: 1073741824\r\n\r\n"
    )
    _refused(await _raw(secured.url, request), 413, "max_body_bytes")
    secured.assert_healthy()


async def test_a_chunked_body_over_the_limit_is_413(secured: Any) -> None:
    head = b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"100000\r\n" + b" " * MIB + b"\r\n"
    _refused(await _raw(secured.url, head, chunk, chunk), 413, "max_body_bytes")
    secured.assert_healthy()


async def test_headers_sent_too_slowly_are_408(secured: Any) -> None:
    answer = await _raw(secured.url, b"GET /workflows HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    _refused(answer, 408, "header_timeout")
    secured.assert_healthy()


async def test_a_body_sent_too_slowly_is_408(secured: Any) -> None:
    head = (
        b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    _refused(await _raw(secured.url, head, b'{"name": '), 408, "body_timeout")
    secured.assert_healthy()


# -- exposure --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/plugins", "/metrics"])
async def test_anonymous_callers_see_no_schema_plugin_or_metric(secured: Any, path: str) -> None:
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as http:
        answer = await http.get(path)
    assert answer.status_code == 401, answer.text[:300]
    assert answer.json()["code"] == "unauthenticated"
    assert "refund" not in answer.text and "nexus-plugin" not in answer.text
    secured.assert_healthy()


async def test_openapi_lists_only_what_the_caller_may_run(secured: Any) -> None:
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as http:
        guest = await http.get("/openapi.json", headers={"X-API-Key": secured.key("guest")})
        operator = await http.get("/openapi.json", headers={"X-API-Key": secured.key("operator")})
    assert guest.status_code == operator.status_code == 200

    def runnable(document: dict[str, Any]) -> set[str]:
        return {p.split("/")[2] for p in document["paths"] if p.startswith("/workflows/")} - {
            "{name}"
        }

    assert runnable(guest.json()) == {"greet"}
    assert runnable(operator.json()) == {"greet", "refund", "nap"}
    assert "refund" not in guest.text
    secured.assert_healthy()


async def test_metrics_need_the_metrics_permission(secured: Any) -> None:
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as http:
        guest = await http.get("/metrics", headers={"X-API-Key": secured.key("guest")})
        plugins = await http.get("/plugins", headers={"X-API-Key": secured.key("guest")})
    assert guest.status_code == 403 and guest.json()["code"] == "forbidden"
    assert plugins.status_code == 200
    secured.assert_healthy()


@pytest.mark.parametrize("path", ["/workflows", "/openapi.json", "/metrics", "/runs"])
async def test_a_forged_host_is_never_reflected(secured: Any, path: str) -> None:
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as http:
        answer = await http.get(path, headers={"Host": "evil.example"})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "evil" not in answer.headers["www-authenticate"] and "evil" not in answer.text
    secured.assert_healthy()


# -- long-lived connections ------------------------------------------------------------------


async def _ws_closes_with(
    secured: Any, headers: dict[str, str], end: Any, word: str, *, leeway: bool = False
) -> None:
    """Open a WebSocket, run once, call ``end()``; it must close with 1008 and ``word``."""
    connect = websockets_client.connect
    async with connect(secured.ws_url + "/ws", additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "run", "workflow": "greet", "inputs": {"name": "a"}}))
        with anyio.fail_after(30):
            assert json.loads(await ws.recv())["run"]["output"] == "Hello, a."
        end()
        with anyio.fail_after(RECHECK + 10):
            error = json.loads(await ws.recv())
            with pytest.raises(websockets_exceptions.ConnectionClosed):
                await ws.recv()
    assert error["type"] == "error" and error["error"]["status"] == 401
    assert word in error["error"]["detail"]
    assert ws.close_code == 1008 and ws.close_reason and word in ws.close_reason
    # Connecting again is refused (a revoked key), or closed at once (a JWT still
    # within the provider's clock-skew leeway, but past its exp).
    try:
        async with connect(secured.ws_url + "/ws", additional_headers=headers) as again:
            assert leeway, "a revoked credential opened a WebSocket"
            with anyio.fail_after(RECHECK + 10):
                late = json.loads(await again.recv())
                with pytest.raises(websockets_exceptions.ConnectionClosed):
                    await again.recv()
        assert late["error"]["status"] == 401 and again.close_code == 1008
    except websockets_exceptions.InvalidStatus as refused:
        status = refused.response.status_code
        assert status == 401, status


async def _sse_ends_with(secured: Any, headers: dict[str, str], end: Any, word: str) -> None:
    """Open ``/events``, call ``end()``; the stream must end with ``event: error`` and ``word``."""
    async with (
        httpx.AsyncClient(base_url=secured.url, timeout=30) as http,
        httpx_sse.aconnect_sse(http, "GET", "/events", headers=headers) as source,
    ):
        assert source.response.status_code == 200
        stream = source.aiter_sse()
        with anyio.fail_after(30):
            assert (await stream.__anext__()).retry == 3000
        end()
        with anyio.fail_after(RECHECK + 10):
            rest = [event async for event in stream]
    assert rest and rest[-1].event == "error"
    problem = rest[-1].json()
    assert problem["status"] == 401 and word in problem["detail"]


async def test_a_websocket_closes_when_its_api_key_is_revoked(secured: Any) -> None:
    issued = secured.issue("ws-revoked", roles=["operator"])
    headers = {"X-API-Key": issued.token}
    await _ws_closes_with(secured, headers, lambda: secured.revoke(issued.id), "revoked")
    secured.assert_healthy()


async def test_an_sse_stream_ends_when_its_api_key_is_revoked(secured: Any) -> None:
    issued = secured.issue("sse-revoked", roles=["operator"])
    headers = {"X-API-Key": issued.token}
    await _sse_ends_with(secured, headers, lambda: secured.revoke(issued.id), "revoked")
    secured.assert_healthy()


async def test_a_websocket_closes_when_its_jwt_expires(secured: Any) -> None:
    token = secured.jwt("ws-expiring", roles=["operator"], ttl=3)
    bearer = {"Authorization": f"Bearer {token}"}
    await _ws_closes_with(secured, bearer, lambda: None, "expired", leeway=True)
    secured.assert_healthy()


async def test_an_sse_stream_ends_when_its_jwt_expires(secured: Any) -> None:
    token = secured.jwt("sse-expiring", roles=["operator"], ttl=3)
    await _sse_ends_with(secured, {"Authorization": f"Bearer {token}"}, lambda: None, "expired")
    secured.assert_healthy()
