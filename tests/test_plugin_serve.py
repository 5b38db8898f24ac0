"""``nexus serve`` and ``app.serve()`` start every enabled channel and stop them all cleanly.

A third-party TCP line-protocol channel, built and installed with pip in the
test, runs beside the API (and MCP on its own port, when installed); one
``SIGINT`` stops them all with exit code 0 and no traceback.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_dists import environ, install_path

pytestmark = pytest.mark.slow

#: A third-party channel distribution (pyproject, entry point, package), from source.
LINES = Path(__file__).parent / "plugin_examples" / "lines"

APP = """
from nexus_core import Nexus

app = Nexus("served", storage="memory://")

@app.workflow
def greet(name: str) -> str:
    return f"Hello, {name}."
"""

SCRIPT = """
import logging
import anyio
from app import app

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
anyio.run(app.serve)
print("serve returned")
"""

_STARTED = re.compile(r"serving channels: (.*)$")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_path(tmp_path_factory.mktemp("channel-plugin"), LINES)


class Served:
    """A serving subprocess: its output so far, and what it said it started."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.log: list[str] = []
        self.started: dict[str, str] = {}
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            match = _STARTED.search(line.rstrip())
            if match:
                for item in match.group(1).split(", "):
                    name, _, url = item.partition(" ")
                    self.started[name] = url.strip("()")
                self._ready.set()
        self._ready.set()

    def wait_started(self, timeout: float = 60) -> None:
        assert self._ready.wait(timeout), "".join(self.log)
        assert self.started, "".join(self.log)

    def interrupt(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    @property
    def output(self) -> str:
        return "".join(self.log)


@pytest.fixture
def spawn(tmp_path: Path, site: Path) -> Iterator:
    processes: list[subprocess.Popen[str]] = []

    def start(args: list[str], plugins: list[str], config: str) -> Served:
        (tmp_path / "app.py").write_text(APP)
        (tmp_path / "script.py").write_text(SCRIPT)
        (tmp_path / "nexus.toml").write_text(config)
        process = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=environ(site, NEXUS_PLUGINS=",".join(plugins)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        return Served(process)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def _ask(url: str, line: str) -> dict:
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_nexus_serve_starts_every_channel_and_one_sigint_stops_them_all(spawn) -> None:
    pytest.importorskip("nexus_plugin_cli", reason="nexus serve is a command of the CLI")
    pytest.importorskip("nexus_plugin_api", reason="nexus serve comes with nexus-plugin-api")
    import httpx

    plugins = ["nexus-core", "nexus-plugin-cli", "nexus-plugin-api", "nexus-lines"]
    config = "[nexus.channels.api]\nport = 0\n[nexus.channels.lines]\nport = 0\n"
    with_mcp = _installed("nexus_plugin_mcp")
    if with_mcp:
        plugins.append("nexus-plugin-mcp")
        config += "[nexus.channels.mcp]\nport = 0\n"
    served = spawn([sys.executable, "-m", "nexus_plugin_cli", "serve", "app.py"], plugins, config)
    served.wait_started()
    assert set(served.started) == {"api", "lines", *(["mcp"] if with_mcp else [])}

    assert httpx.get(f"{served.started['api']}/health/ready").status_code == 200
    answer = _ask(served.started["lines"], 'greet {"name": "Ada"}')
    assert answer == {"status": "completed", "output": "Hello, Ada."}
    refused = _ask(served.started["lines"], 'greet {"name": 3}')
    assert refused["error"]["code"] == "validation_error"
    if with_mcp:
        mcp = httpx.post(served.started["mcp"], json={}, headers={"Accept": "application/json"})
        assert mcp.status_code < 500  # a real MCP endpoint answered on its own port

    code = served.interrupt()
    assert code == 0, served.output
    assert "stopping gracefully" in served.output
    assert "Traceback" not in served.output
    assert "CancelledError" not in served.output and "KeyboardInterrupt" not in served.output


def test_a_channel_switched_off_in_its_section_is_not_started(spawn) -> None:
    served = spawn(
        [sys.executable, "script.py"],
        ["nexus-core", "nexus-lines"],
        "[nexus.channels.lines]\nport = 0\nenabled = false\n",
    )
    served.wait_started()
    assert served.started == {"none": ""}
    assert served.interrupt() == 0, served.output


def test_app_serve_in_a_script_stops_cleanly_on_ctrl_c(spawn) -> None:
    served = spawn(
        [sys.executable, "script.py"],
        ["nexus-core", "nexus-lines"],
        "[nexus.channels.lines]\nport = 0\n",
    )
    served.wait_started()
    assert set(served.started) == {"lines"}
    assert _ask(served.started["lines"], 'greet {"name": "Bo"}')["output"] == "Hello, Bo."
    started = time.monotonic()
    assert served.interrupt() == 0, served.output
    assert time.monotonic() - started < 20
    assert "serve returned" in served.output
    assert "Traceback" not in served.output, served.output
