"""Test helpers: the machine's Redis (``NEXUS_REDIS_URL``), per-test key prefixes, own servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """The machine's Redis URL; skip (or fail with NEXUS_REQUIRE_SERVICES=1) when it is down."""
    url = os.environ.get("NEXUS_REDIS_URL", DEFAULT_URL)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0)
        client.ping()
        client.close()
    except (redis.RedisError, OSError) as exc:
        reason = f"Redis at {url} is not reachable ({exc}); set NEXUS_REDIS_URL"
        if os.environ.get("NEXUS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def with_prefix(url: str, prefix: str, **settings: str) -> str:
    """``url`` with ``prefix`` (and any other plugin settings) in its query."""
    query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **settings}.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key of ``prefix`` (one per role hash tag); how many went."""
    client = redis.Redis.from_url(url.partition("?")[0])
    try:
        gone = 0
        for key in client.scan_iter(match=f"{{{prefix}:*", count=500):
            gone += int(client.delete(key))
        return gone
    finally:
        client.close()


def free_port() -> int:
    """A TCP port free now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own on an ephemeral port (stop/start it at will)."""

    def __init__(self, directory: Path, *args: str, tls: bool = False) -> None:
        server = shutil.which("redis-server")
        if server is None:
            reason = "redis-server is not installed"
            if os.environ.get("NEXUS_REQUIRE_SERVICES") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        self.server = server
        self.directory = directory
        self.port = free_port()
        self.args = args
        self.tls = tls
        scheme = "rediss" if tls else "redis"
        self.url = f"{scheme}://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (same port) and wait until it answers."""
        self.process = subprocess.Popen(
            [
                self.server,
                *(("--port", "0", "--tls-port", str(self.port)) if self.tls else ()),
                *(() if self.tls else ("--port", str(self.port))),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop it (the process this test started, by its pid)."""
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            process.wait(timeout=10)


@contextmanager
def own_redis(directory: Path) -> Iterator[OwnRedis]:
    """An :class:`OwnRedis`, started, stopped afterwards."""
    server = OwnRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def host_port(url: str) -> tuple[str, int]:
    """The host and port of a redis URL."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379
