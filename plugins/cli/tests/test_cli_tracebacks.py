"""A failed run's traceback: ``nexus runs show`` prints it; ``NEXUS_DEBUG=1`` internal ones too."""

from __future__ import annotations

import json

from cli_support import Cli


def _failed_run(cli: Cli) -> str:
    done = cli("run", "pipeline", "--x", "2", "--output", "json")
    assert done.returncode == 1, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "failed"
    # The failure is reported once, as a message: no log line, no traceback.
    assert "Traceback" not in done.stderr
    assert done.stderr.count("ZeroDivisionError") == 1, done.stderr
    return str(run["run_id"])


def _assert_shows_traceback(cli: Cli, run_id: str) -> None:
    done = cli("runs", "show", run_id, check_traceback=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "error     ZeroDivisionError at node 'invert': division by zero" in lines
    start = lines.index("traceback")
    tb = lines[start + 1 :]
    assert tb[0] == "  Traceback (most recent call last):"
    assert any(line.strip() == "return 1 / (result - 4)" for line in tb), tb
    assert any("in invert" in line for line in tb), tb
    assert tb[-1] == "  ZeroDivisionError: division by zero"


def test_runs_show_prints_the_traceback_of_a_failed_run(cli: Cli) -> None:
    _assert_shows_traceback(cli, _failed_run(cli))


def test_runs_show_on_a_gateway_prints_the_traceback_in_development(remote: Cli) -> None:
    _assert_shows_traceback(remote, _failed_run(remote))


def test_nexus_debug_prints_the_failed_runs_traceback(cli: Cli) -> None:
    done = cli("run", "pipeline", "--x", "2", env={"NEXUS_DEBUG": "1"}, check_traceback=False)
    assert done.returncode == 1
    assert "error: run " in done.stderr
    assert done.stderr.count("Traceback (most recent call last):") == 1, done.stderr
    assert "return 1 / (result - 4)" in done.stderr


def test_nexus_debug_prints_the_internal_error_a_message_replaced(cli: Cli) -> None:
    quiet = cli("run", "divide", "--a", "x", "--b", "1")
    assert quiet.returncode == 2
    assert "Traceback" not in quiet.stderr
    loud = cli(
        "run", "divide", "--a", "x", "--b", "1", env={"NEXUS_DEBUG": "1"}, check_traceback=False
    )
    assert loud.returncode == 2
    assert "Traceback (most recent call last):" in loud.stderr
    # The core's ValidationError that the CLI turned into a message (raise ... from None).
    assert "nexus_core.errors.ValidationError: a: expected 'float', got 'str'" in loud.stderr
    assert loud.stderr.rstrip().splitlines()[-2] == (
        "error: invalid input: option --a: expected 'float', got 'str'"
    )


def test_every_bad_option_is_reported_at_once_each_on_its_line(cli: Cli) -> None:
    done = cli("run", "divide", "--a", "x", "--b", "y")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[:3] == [
        "error: invalid input: 2 errors",
        "  --a: expected 'float', got 'str'",
        "  --b: expected 'float', got 'str'",
    ]
    raw = cli("run", "divide", "--json", '{"a": "x", "b": 1, "c": true, "d": 2}')
    assert raw.returncode == 2
    assert raw.stderr.splitlines()[:4] == [
        "error: invalid input: 3 errors",
        "  --a: expected 'float', got 'str'",
        "  c: unknown field",
        "  d: unknown field",
    ]
    as_json = cli("run", "divide", "--a", "x", "--b", "y", "-o", "json")
    problem = json.loads(as_json.stdout)["error"]
    assert [e["path"] for e in problem["errors"]] == ["--a", "--b"]
