"""Limits enforced as bytes arrive: request line, header size and count, body, slow clients.

Raw sockets against a real server, since an HTTP client library refuses to
send most of these requests.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from api_apps import build
from api_support import serving, subprocess_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nexus_core.config import ConfigError

from nexus_plugin_api.config import ApiConfig, check_config

pytestmark = pytest.mark.anyio

LIMITS = {
    "max_request_line": 1024,
    "max_header_bytes": 4096,
    "max_header_count": 20,
    "max_body_bytes": 2048,
    "header_timeout": 1.0,
    "body_timeout": 1.0,
}


class Answer:
    """A raw HTTP answer: status, headers, body."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and lines[0] else 0
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> Any:
        return json.loads(self.body)


async def raw(url: str, *parts: bytes, pause: float = 0.0) -> Answer:
    """Send ``parts`` on a new connection (``pause`` apart); read the answer."""
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    async with await anyio.connect_tcp(where.hostname, where.port) as stream:
        for index, part in enumerate(parts):
            if index and pause:
                await anyio.sleep(pause)
            try:
                await stream.send(part)
            except (anyio.BrokenResourceError, OSError):
                break
        received = b""
        with anyio.fail_after(20):
            while True:
                try:
                    chunk = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
                received += chunk
                if _complete(received):
                    break
    return Answer(received)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@pytest.fixture
async def limited() -> Any:
    app = build(api=LIMITS)
    async with serving(app) as url:
        yield url


async def _healthy(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/health/ready")).status_code == 200
        ok = await http.post("/workflows/greet/runs", json={"name": "Ada"})
        assert ok.status_code == 200, ok.text


def _refused(answer: Answer, status: int, limit: str) -> None:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status
    assert problem["limit"] == f"nexus.channels.api.{limit}"
    assert problem["detail"]


async def test_headers_over_the_size_limit_are_431(limited: str) -> None:
    big = b"GET /workflows HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = await raw(limited, big)
    _refused(answer, 431, "max_header_bytes")
    assert "4 KiB" in answer.json()["detail"]
    await _healthy(limited)


async def test_headers_sent_in_pieces_are_counted_together(limited: str) -> None:
    head = b"GET /workflows HTTP/1.1\r\nHost: x\r\n"
    pieces = [head] + [b"X-H%d: %s\r\n" % (i, b"b" * 900) for i in range(6)] + [b"\r\n"]
    _refused(await raw(limited, *pieces, pause=0.01), 431, "max_header_bytes")
    await _healthy(limited)


async def test_too_many_header_fields_are_431(limited: str) -> None:
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(30))
    answer = await raw(limited, b"GET /workflows HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    _refused(answer, 431, "max_header_count")
    await _healthy(limited)


async def test_a_long_request_line_is_414(limited: str) -> None:
    answer = await raw(limited, b"GET /" + b"w" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    _refused(answer, 414, "max_request_line")
    await _healthy(limited)


async def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(limited: str) -> None:
    head = (
        b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    _refused(await raw(limited, head), 413, "max_body_bytes")
    await _healthy(limited)


async def test_a_chunked_body_over_the_limit_is_413(limited: str) -> None:
    head = b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    _refused(await raw(limited, head, chunk, chunk, chunk, chunk), 413, "max_body_bytes")
    await _healthy(limited)


async def test_headers_not_complete_in_time_are_408(limited: str) -> None:
    started = time.monotonic()
    answer = await raw(limited, b"GET /workflows HTTP/1.1\r\nHost: x\r\n")
    _refused(answer, 408, "header_timeout")
    assert time.monotonic() - started < 15
    await _healthy(limited)


async def test_a_connection_that_never_sends_is_closed_quietly(limited: str) -> None:
    started = time.monotonic()
    answer = await raw(limited)  # connect, send nothing, read until the server closes
    assert answer.status == 0 and answer.body == b""
    assert LIMITS["header_timeout"] <= time.monotonic() - started + 0.1 < 15
    await _healthy(limited)


async def test_a_body_not_sent_in_time_is_408(limited: str) -> None:
    head = (
        b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    _refused(await raw(limited, head, b'{"name": '), 408, "body_timeout")
    await _healthy(limited)


async def _after_one_request(url: str, then: bytes) -> tuple[Answer, Answer]:
    """A whole request and its answer on a connection, then ``then`` on it; both answers."""
    body = b'{"name": "Ada"}'
    whole = (
        b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    async with await anyio.connect_tcp(where.hostname, where.port) as stream:
        await stream.send(whole)  # arrives whole: no timer is armed for it
        received = b""
        with anyio.fail_after(20):
            while not _complete(received):
                received += await stream.receive()
        first = Answer(received)
        await stream.send(then)
        received = b""
        with anyio.fail_after(20):
            while not _complete(received):
                received += await stream.receive()
    return first, Answer(received)


@pytest.mark.parametrize(
    ("then", "status", "limit"),
    [
        (b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\n", 408, "header_timeout"),
        (
            b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
            408,
            "body_timeout",
        ),
    ],
)
async def test_the_timeouts_hold_for_the_next_request_on_a_kept_connection(
    limited: str, then: bytes, status: int, limit: str
) -> None:
    first, second = await _after_one_request(limited, then)
    assert first.status == 200 and first.json()["output"] == "Hello, Ada."
    _refused(second, status, limit)
    await _healthy(limited)


async def test_a_request_within_the_limits_is_served_and_keeps_the_connection(
    limited: str,
) -> None:
    body = b'{"name": "Ada"}'
    one = (
        b"POST /workflows/greet/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with httpx.AsyncClient(base_url=limited, timeout=10) as http:
        for _ in range(3):  # one keep-alive connection, three requests
            assert (await http.post("/workflows/greet/runs", json={"name": "Ada"})).is_success
    answer = await raw(limited, one)
    assert answer.status == 200 and answer.json()["output"] == "Hello, Ada."


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.integers(min_value=0, max_value=8000))
async def test_the_header_limit_is_exact(limited: str, size: int) -> None:
    start = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: "
    head = start + b"p" * size + b"\r\n\r\n"
    then = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await raw(limited, head + then)
    if len(head) <= LIMITS["max_header_bytes"]:
        assert answer.status == 200
    else:
        _refused(answer, 431, "max_header_bytes")


def test_limits_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="max_header_bytes"):
        check_config(ApiConfig(max_header_bytes=0), environment="development")
    with pytest.raises(ConfigError, match="header_timeout"):
        check_config(ApiConfig(header_timeout=0), environment="development")
    with pytest.raises(ConfigError, match="max_request_line"):
        check_config(
            ApiConfig(max_request_line=10_000, max_header_bytes=5_000), environment="development"
        )


# -- memory: the attack of eight 64 MiB headers ---------------------------------------


def _rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _flood(host: str, port: int, size: int, answers: list[bytes]) -> None:
    chunk = b"a" * (1 << 20)
    sent = 0
    received = b""
    with socket.create_connection((host, port), timeout=30) as sock:
        try:
            sock.sendall(b"GET /workflows HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    answers.append(received)


@pytest.mark.slow
def test_eight_64_mib_headers_leave_the_server_small_and_healthy(tmp_path: Path) -> None:
    with subprocess_server(tmp_path) as server:
        where = urlsplit(server.url)
        assert where.hostname is not None and where.port is not None
        pid = server.process.pid
        assert httpx.get(server.url + "/health/ready", timeout=10).status_code == 200
        answers: list[bytes] = []
        threads = [
            threading.Thread(target=_flood, args=(where.hostname, where.port, 64 << 20, answers))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        peak = _rss(pid, "VmHWM")
        assert peak < 150 * 1024 * 1024, f"peak RSS {peak / 2**20:.0f} MiB"
        assert len(answers) == 8
        assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), [a[:40] for a in answers]
        assert httpx.get(server.url + "/health/ready", timeout=10).status_code == 200
