"""Every hint is a command that works as printed; every number option is range-checked.

Through the installed `nexus` console script: a hint is read from stderr, split
as a shell would, and run.
"""

from __future__ import annotations

import importlib.util
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cli_support import API_INSTALLED, Cli, nexus_command

pytestmark = pytest.mark.timeout(300)

needs_api = pytest.mark.skipif(not API_INSTALLED, reason="nexus serve comes from the API plugin")


def hint_of(stderr: str) -> list[str]:
    """The command of the ``hint:`` (or ``details:``) line, as argv without ``nexus``."""
    for line in stderr.splitlines():
        for prefix in ("hint: ", "hint: details: "):
            if line.startswith(prefix):
                text = line[len(prefix) :].removeprefix("details: ")
                argv = shlex.split(text)
                assert argv[0] == "nexus", line
                return argv[1:]
    raise AssertionError(f"no hint in:\n{stderr}")


def bare(cli: Cli) -> Cli:
    """``cli`` without NEXUS_APP / NEXUS_URL: only what a command line says counts."""
    env = {k: v for k, v in cli.env.items() if k not in ("NEXUS_APP", "NEXUS_URL")}
    return Cli(cli.workdir, env)


# -- usage errors --------------------------------------------------------------------------


def test_a_stray_argument_is_named_and_the_hint_keeps_app(cli: Cli, app_file: Path) -> None:
    plain = bare(cli)
    done = plain("--app", str(app_file), "workflows", "greet")
    assert done.returncode == 2
    assert "Unused Tokens" not in done.stderr
    assert "unexpected argument 'greet' for nexus workflows" in done.stderr
    argv = hint_of(done.stderr)
    assert argv == ["--app", str(app_file), "workflows", "show", "greet"]
    shown = plain(*argv)
    assert shown.returncode == 0, shown.stderr
    assert "Greet someone by name." in shown.stdout


def test_a_bad_option_hint_is_the_help_of_that_command(cli: Cli, app_file: Path) -> None:
    plain = bare(cli)
    done = plain("--app", str(app_file), "runs", "--bogus")
    assert done.returncode == 2
    argv = hint_of(done.stderr)
    assert argv == ["--app", str(app_file), "runs", "--help"]
    assert plain(*argv).returncode == 0


@needs_api
def test_hints_keep_url(remote: Cli, gateway: str) -> None:
    plain = bare(remote)
    done = plain("--url", gateway, "workflows", "greet")
    assert done.returncode == 2
    argv = hint_of(done.stderr)
    assert argv[:2] == ["--url", gateway]
    assert plain(*argv).returncode == 0


@needs_api
def test_a_failed_run_on_a_gateway_hints_runs_show_with_its_url(remote: Cli, gateway: str) -> None:
    plain = bare(remote)
    done = plain("--url", gateway, "run", "pipeline", "--x", "2")
    assert done.returncode == 1
    argv = hint_of(done.stderr)
    assert argv[:4] == ["--url", gateway, "runs", "show"], argv
    shown = plain(*argv, check_traceback=False)
    assert shown.returncode == 0, shown.stderr
    assert "ZeroDivisionError" in shown.stdout
    # With NEXUS_URL set, the same shell needs no --url: the hint leaves it out.
    env_done = remote("run", "pipeline", "--x", "2")
    assert hint_of(env_done.stderr)[:2] == ["runs", "show"]


# -- install hints --------------------------------------------------------------------------


def test_install_hint_from_a_checkout_is_pip_install_e(cli: Cli) -> None:
    done = cli("serve", "app.py", env={"NEXUS_DISABLE_PLUGINS": "nexus-plugin-api"})
    assert done.returncode == 2
    argv = hint_of_install(done.stderr)
    # This suite runs from a checkout (nexus-core installed editable): the plugin's folder.
    assert argv[:3] == ["pip", "install", "-e"], argv
    folder = (cli.workdir / argv[3]).resolve()
    assert 'name = "nexus-plugin-api"' in (folder / "pyproject.toml").read_text()


def hint_of_install(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if line.startswith("hint: pip install"))
    return shlex.split(line.removeprefix("hint: "))


# -- number options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["runs", "--limit", "0"], "--limit", "between 1 and 200"),
        (["runs", "--limit", "201"], "--limit", "between 1 and 200"),
        (["events", "--count", "0"], "--count", "at least 1"),
        (["events", "--idle", "-1"], "--idle", "at least 0"),
        (["events", "--idle", "nan"], "--idle", "at least 0"),
        (["batch", "jobs.jsonl", "--concurrency", "0"], "--concurrency", "at least 1"),
    ],
)
def test_number_options_are_range_checked(
    cli: Cli, args: list[str], option: str, words: str
) -> None:
    done = cli(*args)
    assert done.returncode == 2, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: ") and option in first and words in first, done.stderr


@needs_api
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port must be between 0 and 65535, got 99999"),
        (["--port", "-1"], "--port must be between 0 and 65535, got -1"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
    ],
)
def test_serve_numbers_are_range_checked(cli: Cli, args: list[str], message: str) -> None:
    done = cli("serve", *args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == f"error: {message}"
    assert hint_of(done.stderr) == ["serve", "--help"]


# -- nexus serve: a second Ctrl-C -----------------------------------------------------------


def wait_until(condition: Callable[[], bool], seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@needs_api
@pytest.mark.slow
def test_a_second_ctrl_c_stops_serve_quietly_without_waiting_for_a_sync_node(
    cli: Cli, app_file: Path, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*nexus_command(), "serve", str(app_file), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=cli.env,
        )
    try:
        wait_until(lambda: "serving on http://" in log.read_text(), what="the server")
        url = log.read_text().split("serving on ")[1].split()[0]
        answers: list[int] = []

        def call() -> None:  # a request in flight: the first Ctrl-C waits for it
            try:
                answer = httpx.post(f"{url}/workflows/slow/runs", json={"seconds": 60}, timeout=90)
                answers.append(answer.status_code)
            except httpx.HTTPError:
                answers.append(0)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()

        def node_running() -> bool:
            runs = httpx.get(f"{url}/runs", timeout=5).json()
            items = runs.get("items", runs) if isinstance(runs, dict) else runs
            return any(r.get("status") == "running" for r in items)

        wait_until(node_running, what="the run")
        process.send_signal(signal.SIGINT)
        wait_until(lambda: "stopping gracefully" in log.read_text(), what="the first signal")
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=90)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "again: stopping now" in text, text
    assert "Traceback" not in text and "CancelledError" not in text and "ERROR" not in text, text
    assert elapsed < 30, f"{elapsed:.1f} s:\n{text}"  # the sync node sleeps 60 s


@pytest.mark.skipif(
    importlib.util.find_spec("nexus_plugin_mcp") is None,
    reason="nexus mcp comes from the MCP plugin (nexus-plugin-mcp)",
)
def test_mcp_port_is_range_checked(cli: Cli) -> None:
    done = cli("mcp", "--http", "--port", "70000")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "error: --port must be between 0 and 65535, got 70000"
    assert hint_of(done.stderr) == ["mcp", "--help"]
