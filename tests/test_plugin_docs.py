"""The plugin how-tos' examples, installed with pip as separate distributions and served.

``tests/test_docs.py`` runs each page's code in place; here the distribution a
page builds (its ``<!-- file: -->`` blocks) is installed for real and found
through its entry point, and ``nexus serve`` runs it beside the API (and MCP).
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
from pathlib import Path

import pytest
from plugin_dists import environ, install_path
from test_docs import parse_blocks

pytest.importorskip("nexus_plugin_cli", reason="nexus serve is a command of the CLI")
pytest.importorskip("nexus_plugin_api", reason="nexus serve comes with nexus-plugin-api")

pytestmark = pytest.mark.slow

HOW_TO = Path(__file__).resolve().parent.parent / "docs" / "how-to"
_STARTED = re.compile(r"serving channels: (.*)$")


def _distribution(page: Path, into: Path) -> Path:
    """Write the page's files (``file``/``append`` blocks) into ``into``; return it."""
    for block in parse_blocks(page):
        if block.directive in ("file", "append") and block.target:
            target = into / block.target
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("a" if block.directive == "append" else "w", encoding="utf-8") as fh:
                fh.write(("\n\n" if block.directive == "append" else "") + block.text)
    assert (into / "pyproject.toml").is_file(), f"{page.name} builds no distribution"
    return into


class Served:
    """``nexus serve`` in a subprocess: its output, and the channels it listed."""

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

    def wait_started(self) -> None:
        assert self._ready.wait(60), "".join(self.log)
        assert self.started, "".join(self.log)


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


def test_the_channel_how_to_installs_and_runs_under_nexus_serve(tmp_path: Path) -> None:
    import httpx

    source = _distribution(HOW_TO / "write-a-channel.md", tmp_path / "src")
    site = install_path(tmp_path, source)
    run = tmp_path / "run"
    run.mkdir()
    (run / "app.py").write_text((source / "app.py").read_text())
    config = "[nexus]\nstorage = 'memory://'\n[nexus.channels.api]\nport = 0\n"
    config += "[nexus.channels.tcp_lines]\nport = 0\n"
    plugins = ["nexus-core", "nexus-plugin-cli", "nexus-plugin-api", "nexus-tcp-lines"]
    with_mcp = importlib.util.find_spec("nexus_plugin_mcp") is not None
    if with_mcp:
        plugins.append("nexus-plugin-mcp")
    (run / "nexus.toml").write_text(config)
    env = environ(site, NEXUS_PLUGINS=",".join(plugins))

    listed = subprocess.run(
        [sys.executable, "-m", "nexus_plugin_cli", "plugins", "--json"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert report["errors"] == []
    mine = next(p for p in report["plugins"] if p["name"] == "nexus-tcp-lines")
    assert mine["version"] == "1.0.0"
    assert "nexus_channels" in mine["hooks"]

    process = subprocess.Popen(
        [sys.executable, "-m", "nexus_plugin_cli", "serve", "app.py"],
        cwd=run,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        served = Served(process)
        served.wait_started()
        assert {"api", "tcp_lines"} <= set(served.started)
        if with_mcp:
            assert "mcp" in served.started
        answer = _ask(served.started["tcp_lines"], 'greet {"name": "Ada"}')
        assert answer == {"status": "completed", "output": "Hello, Ada."}
        hook = httpx.post(
            f"{served.started['api']}/hooks/lines",
            json={"workflow": "greet", "inputs": {"name": "Bo"}},
        )
        assert hook.status_code == 200, hook.text
        assert hook.json() == {"status": "completed", "output": "Hello, Bo."}
        bad = httpx.post(
            f"{served.started['api']}/hooks/lines",
            json={"workflow": "greet", "inputs": {"name": 3}},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "validation_error"
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, "".join(served.log)
        assert "Traceback" not in "".join(served.log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_auth_provider_how_to_installs_and_guards_every_channel(tmp_path: Path) -> None:
    import httpx

    source = _distribution(HOW_TO / "write-an-auth-provider.md", tmp_path / "src")
    site = install_path(tmp_path, source)
    run = tmp_path / "run"
    run.mkdir()
    (run / "app.py").write_text((source / "app.py").read_text())
    page_config = (source / "nexus.toml").read_text()  # the page's own, plus a free port
    (run / "nexus.toml").write_text(page_config + "\n[nexus.channels.api]\nport = 0\n")
    secret = "correct horse battery staple"
    env = environ(
        site,
        NEXUS_PLUGINS="nexus-core,nexus-plugin-cli,nexus-plugin-api,nexus-shared-secret",
        NEXUS_SERVICES__SECURITY__SHARED_SECRET__SECRET=secret,
        NEXUS_STORAGE="memory://",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "nexus_plugin_cli", "serve", "app.py"],
        cwd=run,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        served = Served(process)
        served.wait_started()
        url = f"{served.started['api']}/workflows/whoami/runs"
        ok = httpx.post(url, json={"text": "hi"}, headers={"X-Shared-Secret": secret})
        assert ok.status_code == 200, ok.text
        assert ok.json()["output"] == "hi"
        wrong = httpx.post(url, json={}, headers={"X-Shared-Secret": "nope"})
        assert wrong.status_code == 401
        assert secret not in wrong.text
        assert httpx.post(url, json={}).status_code == 401
        # the bearer form of the old page is gone: the header is the provider's only mark
        bearer = httpx.post(url, json={}, headers={"Authorization": f"Bearer ss_{secret}"})
        assert bearer.status_code == 401
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, "".join(served.log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
