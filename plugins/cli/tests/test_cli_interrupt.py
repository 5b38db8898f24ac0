"""Ctrl-C on `nexus run`: the run is cancelled at once and recorded so; a second one is quiet.

Every test drives the real `nexus` console script in a subprocess and waits for
what it prints (never for a fixed time): a run's node is known to be running
when the progress line "node ... started" appears on stderr.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_support import Cli

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

APP = '''
from __future__ import annotations

import os
import time

import anyio

from nexus_core import Nexus
from nexus_core.workflows.node import current_context

app = Nexus("interrupt-test")


@app.workflow
def sleepy(seconds: float = 30.0) -> str:
    """Sleep without listening: nothing can stop it early."""
    time.sleep(seconds)
    return "done"


@app.workflow
def gated(gate: str, heard: str = "") -> str:
    """Wait (cooperatively) until the file `gate` exists; note a stop request in `heard`."""
    context = current_context()
    while not os.path.exists(gate):
        if context.wait_for_stop(0.05):
            if heard:
                open(heard, "w").close()
            return "stopped"
    return "done"


@app.workflow
async def stubborn() -> str:
    """Ignores cancellation for a minute (a shielded wait)."""
    with anyio.CancelScope(shield=True):
        await anyio.sleep(60)
    return "done"
'''


@pytest.fixture
def app_path(tmp_path: Path) -> Path:
    path = tmp_path / "interrupt_app.py"
    path.write_text(APP, encoding="utf-8")
    return path


def wait_for_line(process: subprocess.Popen[str], text: str, seconds: float = 60) -> str:
    """Read stderr until a line containing ``text``; return what was read."""
    assert process.stderr is not None
    deadline = time.monotonic() + seconds
    seen = ""
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never appeared on stderr:\n{seen}")


def hint_command(err: str, prefix: str) -> list[str]:
    """The command a hint prints after ``prefix`` (to its line's end), as argv."""
    line = next(line for line in err.splitlines() if prefix in line)
    return shlex.split(line.split(prefix, 1)[1])


def test_ctrl_c_cancels_the_run_and_does_not_wait_for_its_sync_node(
    cli: Cli, app_path: Path
) -> None:
    process = cli.popen("--app", str(app_path), "run", "sleepy", "--seconds", "60")
    err = wait_for_line(process, "node sleepy started")
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=90)
    elapsed = time.monotonic() - sent
    err += rest
    assert process.returncode == 130, err
    assert "Traceback" not in err and "CancelledError" not in err
    # Neither the shutdown grace nor the node's 60 s sleep were waited out.
    assert elapsed < 30, f"{elapsed:.1f} s after Ctrl-C:\n{err}"
    assert "was cancelled; see it: " in err, err
    # The hint keeps --app: run as printed, it works.
    argv = hint_command(err, "see it: ")
    assert argv[:3] == ["nexus", "--app", str(app_path)], argv
    shown = cli(*argv[1:], "-o", "json", env={"NEXUS_APP": ""})
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert run["status"] == "cancelled"
    assert run["output"] is None


def test_a_cooperative_sync_node_hears_the_stop(cli: Cli, app_path: Path, tmp_path: Path) -> None:
    heard = tmp_path / "heard"
    process = cli.popen(
        "--app",
        str(app_path),
        "run",
        "gated",
        "--gate",
        str(tmp_path / "never"),
        "--heard",
        str(heard),
    )
    err = wait_for_line(process, "node gated started")
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=90)
    assert process.returncode == 130, err + rest
    assert heard.exists()  # the node was told to stop, and returned


def test_a_second_ctrl_c_stops_at_once_and_quietly(cli: Cli, app_path: Path) -> None:
    process = cli.popen("--app", str(app_path), "run", "stubborn")
    err = wait_for_line(process, "node stubborn started")
    process.send_signal(signal.SIGINT)
    err += wait_for_line(process, "stopping: ")  # the first is being handled: runs cancelled
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=90)
    err += rest
    assert process.returncode == 130, err
    assert time.monotonic() - sent < 30, err  # the shielded node would hold it 60 s
    assert "Traceback" not in err and "CancelledError" not in err and "ERROR" not in err


def test_sigterm_cancels_the_run_too(cli: Cli, app_path: Path, tmp_path: Path) -> None:
    process = cli.popen("--app", str(app_path), "run", "gated", "--gate", str(tmp_path / "never"))
    err = wait_for_line(process, "node gated started")
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=90)
    err += rest
    assert process.returncode == 128 + signal.SIGTERM, err
    run_id = hint_command(err, "see it: ")[-1]
    shown = json.loads(cli("--app", str(app_path), "-o", "json", "runs", "show", run_id).stdout)
    assert shown["status"] == "cancelled"


#: A short lease, so a killed process's run is free to resume soon.
SHORT_LEASE = {"NEXUS_SERVICES__RUNS__LEASE": "3", "NEXUS_SERVICES__RUNS__HEARTBEAT": "0.5"}


def test_a_killed_run_resumes_from_its_checkpoints_once_its_lease_expired(
    cli: Cli, app_path: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    process = cli.popen(
        "--app", str(app_path), "run", "gated", "--gate", str(gate), env=SHORT_LEASE
    )
    wait_for_line(process, "node gated started")
    process.kill()  # no chance to record anything: the run stays "running", leased
    process.communicate(timeout=60)
    runs = json.loads(cli("--app", str(app_path), "-o", "json", "runs").stdout)
    run_id = runs[0]["run_id"]
    assert runs[0]["status"] == "running"  # interrupted: nothing executes it now
    gate.touch()
    # Until its lease expires, the run counts as executing elsewhere: left alone.
    early = cli("--app", str(app_path), "runs", "resume", run_id, env=SHORT_LEASE)
    if early.returncode != 0:
        assert "is executing elsewhere" in early.stderr and "lease runs until" in early.stderr
        deadline = time.monotonic() + 60
        while True:  # a condition (the lease has expired), not a fixed wait
            resumed = cli("--app", str(app_path), "runs", "resume", run_id, env=SHORT_LEASE)
            if resumed.returncode == 0 or time.monotonic() > deadline:
                break
            assert "is executing elsewhere" in resumed.stderr, resumed.stderr
    else:
        resumed = early  # the lease had already expired (a slow machine)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == "done"
    shown = json.loads(cli("--app", str(app_path), "-o", "json", "runs", "show", run_id).stdout)
    assert shown["status"] == "completed"
    assert shown["nodes"]["gated"]["attempts"] == 2  # the killed process's execution counts
