"""Helpers of the CLI tests: the example app, the `nexus` subprocess runner, a gateway."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

APP_SOURCE = '''
from __future__ import annotations

import time

from nexus_core import Nexus, WorkflowBuilder

app = Nexus("cli-test")


@app.workflow(read_only=True)
def greet(name: str, excited: bool = False, times: int = 1) -> str:
    """Greet someone by name."""
    return " ".join([f"Hello, {name}{'!' if excited else '.'}"] * times)


@app.workflow
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


@app.workflow
def tally(tags: list[str], weights: dict[str, int] | None = None) -> dict[str, int]:
    """Count tags, with optional weights."""
    out: dict[str, int] = {}
    for tag in tags:
        out[tag] = out.get(tag, 0) + (weights or {}).get(tag, 1)
    return out


@app.workflow
def slow(seconds: float = 5.0) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "done"


def double(x: int) -> int:
    return x * 2


def invert(result: int) -> float:
    return 1 / (result - 4)


wb = WorkflowBuilder("pipeline", description="Double x, then invert it (fails for x=2).")
wb.add_node("PythonCodeNode", "double", {"function": double})
wb.add_node("PythonCodeNode", "invert", {"function": invert})
wb.add_connection("double", "result", "invert", "result")
wb.add_workflow_inputs("double", {"x": "x"})
wb.set_output("invert")
app.register(wb)
'''

API_INSTALLED = importlib.util.find_spec("nexus_plugin_api") is not None


def nexus_command() -> list[str]:
    """The installed console script (next to this Python), else ``python -m nexus_plugin_cli``."""
    script = Path(sys.executable).parent / "nexus"
    if script.exists():
        return [str(script)]
    found = shutil.which("nexus")
    return [found] if found else [sys.executable, "-m", "nexus_plugin_cli"]


class Cli:
    """Runs ``nexus`` in a subprocess with an isolated environment."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        check_traceback: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*nexus_command(), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )
        if check_traceback:
            assert "Traceback" not in done.stderr, done.stderr
            assert "Traceback" not in done.stdout, done.stdout
        return done

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*nexus_command(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.workdir,
            env={**self.env, **(env or {})},
        )


def base_env(tmp: Path) -> dict[str, str]:
    """An environment with no user state: its own config, cache and storage."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("NEXUS_") and not key.startswith("XDG_")
    }
    env.update(
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_CACHE_HOME=str(tmp / "cache"),
        NEXUS_STORAGE=f"sqlite:///{tmp / 'nexus.db'}",
        COLUMNS="100",
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(app: Path, tmp: Path) -> Iterator[str]:
    """``python -m nexus_plugin_api APP --port P`` in a subprocess; yields its URL."""
    port = free_port()
    env = base_env(tmp)
    env["NEXUS_STORAGE"] = f"sqlite:///{tmp / 'gateway.db'}"
    log = (tmp / "gateway.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "nexus_plugin_api", str(app), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited: {(tmp / 'gateway.log').read_text()}")
            try:
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
