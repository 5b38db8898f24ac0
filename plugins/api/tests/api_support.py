"""Helpers: a real server on an ephemeral port, in the test's event loop or in a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from nexus_core import Nexus

HERE = Path(__file__).parent
_URL = re.compile(r"serving on (http://\S+)")


@contextlib.asynccontextmanager
async def serving(app: Nexus) -> AsyncIterator[str]:
    """Run ``app`` with its api channel; yield the base URL; stop gracefully."""
    async with app.running(channels=["api"]):
        channel = app.channels["api"]
        try:
            yield channel.url
        finally:
            channel.stop()
            await channel.wait_stopped()


class Subprocess:
    """``python -m nexus_plugin_api`` serving tests/api_served.py, and its log."""

    def __init__(self, process: subprocess.Popen[str], url: str, log: list[str]) -> None:
        self.process = process
        self.url = url
        self.log = log

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextlib.contextmanager
def subprocess_server(tmp_path: Path, *args: str, **env: str) -> Iterator[Subprocess]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("NEXUS_") or key == "NEXUS_REQUIRE_SERVICES"
    }
    environ.update(
        NEXUS_STORAGE=f"sqlite:///{tmp_path / 'nexus.db'}",
        NEXUS_PLUGINS="nexus-plugin-api",
        PYTHONUNBUFFERED="1",
    )
    environ.update(env)  # the test's own values win (NEXUS_PLUGINS too)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nexus_plugin_api",
            str(HERE / "api_served.py"),
            "--port",
            "0",
            *args,
        ],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    url = None
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        log.append(line)
        match = _URL.search(line)
        if match:
            url = match.group(1)
    if url is None:
        process.kill()
        raise AssertionError("server did not start:\n" + "".join(log))

    def drain() -> None:
        assert process.stdout is not None
        log.extend(process.stdout)  # line by line, as the server writes them

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    server = Subprocess(process, url, log)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(5)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)
