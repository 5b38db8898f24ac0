"""Shared helpers of the voice tests: the example apps, their voice config, real audio."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"

#: How the shop's and hello's inputs are said (what a deployment writes in nexus.toml).
VOICE_SECTION: dict[str, Any] = {
    "vocabulary": ["Ada", "Grace", "Alan", "Linus", "lamp", "mug", "pen", "tent", "notebook"],
    "max_free_words": 2,
    # The SKUs by the names the catalog gives them, singular and plural. Names
    # that sound alike ("pen", "pan") are confused by any recognizer: say more.
    "values": {
        "sku": {
            "mug": "MUG-001",
            "mugs": "MUG-001",
            "cast iron pan": "PAN-010",
            "cast iron pans": "PAN-010",
            "fountain pen": "PEN-100",
            "fountain pens": "PEN-100",
            "tent": "TNT-500",
            "tents": "TNT-500",
            "desk lamp": "LMP-220",
            "desk lamps": "LMP-220",
        },
    },
    # How espeak-ng (and many speakers) say it, besides the dictionary's "L AY N AH S".
    "pronunciations": {"ada": "AE D AH", "linus": "L IH N AH S"},
    "workflows": {
        "shipping": {"aliases": ["ship"]},
        "greet": {"aliases": ["say hello to"], "reply": "{output}"},
        "view_cart": {"aliases": ["what is in my cart"]},
    },
}


def load_examples() -> list[Any]:
    """The workflows of examples/hello.py and examples/shop.py."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import hello
        import shop
    finally:
        sys.path.remove(str(EXAMPLES))
    return [*shop.app.workflows.values(), *hello.app.workflows.values()]


def require_audio_tools() -> None:
    """Skip (or fail with NEXUS_REQUIRE_SERVICES=1) when espeak-ng or sox is missing."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed (apt-get install espeak-ng sox)"
    if os.environ.get("NEXUS_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def speak(text: str, voice: str = "en-us", speed: int = 160, rate: int = 16000) -> bytes:
    """``text`` spoken by espeak-ng, converted by sox to a ``rate`` Hz mono 16-bit WAV."""
    raw = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    return sox(raw, "-t", "wav", "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer")


def sox(data: bytes, *output: str, effects: tuple[str, ...] = ()) -> bytes:
    """Run sox on ``data`` (any format sox detects) and return its output.

    ``-R``: repeatable, so generated noise is the same on every run.
    """
    return subprocess.run(
        ["sox", "-R", "-", *output, "-", *effects], input=data, check=True, capture_output=True
    ).stdout


def toml_value(value: Any) -> str:
    """``value`` as TOML (strings, numbers, booleans, lists and tables of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(workdir: Path, storage: str, voice: dict[str, Any] | None = None) -> Path:
    """A ``nexus.toml`` in ``workdir``: the storage URL and the voice section."""
    section = {**VOICE_SECTION, **(voice or {})}
    lines = ["[nexus]", f"storage = {toml_value(storage)}", "", "[nexus.channels.voice]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in section.items()]
    path = workdir / "nexus.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nexus_command() -> list[str]:
    """The installed ``nexus`` console script (next to this Python)."""
    script = Path(sys.executable).parent / "nexus"
    return [str(script)] if script.exists() else [shutil.which("nexus") or "nexus"]


def clean_env(home: Path) -> dict[str, str]:
    """This environment without Nexus settings, with its own user folders."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "XDG_"))}
    env.update(
        NEXUS_CONFIG_HOME=str(home / "config" / "nexus"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
        COLUMNS="200",
    )
    return env


@contextlib.contextmanager
def nexus_serve(app: Path, workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """``nexus serve APP`` on a free port in ``workdir``; yield its URL; stop it after."""
    import httpx

    port = free_port()
    log = workdir / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*nexus_command(), "serve", str(app), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nexus serve exited:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nexus serve did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
