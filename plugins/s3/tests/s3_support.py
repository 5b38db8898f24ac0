"""A real S3 API for the tests: ``moto_server`` on 127.0.0.1 and an ephemeral port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["MotoServer", "moto_server", "new_bucket"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _executable() -> str | None:
    here = Path(sys.executable).parent / "moto_server"
    return str(here) if here.exists() else shutil.which("moto_server")


class MotoServer:
    """A running moto server: its endpoint, and start/stop to simulate an outage."""

    def __init__(self, port: int | None = None) -> None:
        exe = _executable()
        if exe is None:
            message = "moto_server is not installed (pip install 'moto[server]')"
            if os.environ.get("NEXUS_REQUIRE_SERVICES") == "1":
                pytest.fail(message + " and NEXUS_REQUIRE_SERVICES=1")
            pytest.skip(message)
        self.exe = exe
        self.port = port or _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline: float = 30.0) -> None:
        """Start the server and wait (polling, with a deadline) until it answers."""
        self.proc = subprocess.Popen(
            [self.exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} in {deadline}s")

    def stop(self) -> None:
        """Stop the server (its data goes with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def create_bucket(self, name: str) -> None:
        """Create a bucket (moto accepts unsigned requests)."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()

    def multipart_uploads(self, bucket: str) -> str:
        """The bucket's ListMultipartUploads answer (XML text)."""
        with urllib.request.urlopen(f"{self.endpoint}/{bucket}?uploads", timeout=10) as r:
            return str(r.read().decode())

    def url(self, bucket: str, prefix: str = "", *, timeout: float = 10) -> str:
        """An ``s3://`` URL for ``bucket`` on this server (``timeout``: seconds a request)."""
        path = f"/{prefix}" if prefix else ""
        return (
            f"s3://{bucket}{path}?endpoint={self.endpoint}&region=us-east-1"
            f"&access_key_id=test&secret_access_key=test&max_retries=2&timeout={timeout:g}"
        )


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """A moto server for the block's duration."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def new_bucket(server: MotoServer) -> str:
    """A new empty bucket's name."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    server.create_bucket(name)
    return name
