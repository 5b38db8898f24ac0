"""``channels.cli`` idle_timeout and history_size drive ``nexus shell`` (a real pty)."""

from __future__ import annotations

import time

import pexpect
import pytest
from cli_support import Cli, nexus_command
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_plugin_cli.commands.shell import BoundedFileHistory
from nexus_plugin_cli.config import CliConfig

pytestmark = pytest.mark.timeout(180)

PROMPT = "nexus>"


def spawn(cli: Cli) -> pexpect.spawn:
    command = nexus_command()
    env = {**cli.env, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(
        command[0],
        [*command[1:], "shell"],
        env=env,
        cwd=str(cli.workdir),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    child.expect(PROMPT)
    return child


def write_config(cli: Cli, table: str) -> None:
    (cli.workdir / "nexus.toml").write_text(f"[nexus.channels.cli]\n{table}\n", encoding="utf-8")


def test_idle_timeout_ends_the_shell_after_that_long_without_input(cli: Cli) -> None:
    write_config(cli, "idle_timeout = 3")
    child = spawn(cli)
    try:
        # Typing slowly, for longer than the timeout in all: each key restarts it.
        for key in "greet --name":
            child.send(key)
            time.sleep(0.4)  # the user's pace, not a wait for the program
        child.send(" Ada\r")
        child.expect('"Hello, Ada')
        child.expect(PROMPT)
        child.expect("no input for 3 s: leaving the shell")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_history_size_keeps_that_many_lines(cli: Cli) -> None:
    write_config(cli, "history_size = 3")
    child = spawn(cli)
    try:
        for name in ("A", "B", "C"):
            child.send(f"greet --name {name}\r")
            child.expect(f'"Hello, {name}')
            child.expect(PROMPT)
        child.send("exit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    history = (cli.workdir / "config" / "nexus" / "history").read_text()
    assert "+greet --name A" not in history
    assert "+greet --name B" in history
    assert "+greet --name C" in history
    assert "+exit" in history  # the newest three: B, C and exit


def test_a_bad_value_is_refused_naming_the_key(cli: Cli) -> None:
    write_config(cli, "idle_timeout = -1")
    done = cli("-q", "run", "greet", "--name", "x")
    assert done.returncode == 2, done.stderr
    assert "nexus.channels.cli.idle_timeout" in done.stderr
    assert "Traceback" not in done.stderr


@settings(max_examples=30, deadline=None)
@given(size=st.integers(min_value=0, max_value=5), lines=st.lists(st.text("ab \n", max_size=4)))
def test_bounded_history_keeps_the_newest_lines(
    tmp_path_factory: pytest.TempPathFactory, size: int, lines: list[str]
) -> None:
    path = tmp_path_factory.mktemp("history") / "history"
    path.write_text("")
    history = BoundedFileHistory(str(path), size)
    for line in lines:
        history.store_string(line)
    expected = list(reversed(lines))[:size]
    assert list(BoundedFileHistory(str(path), size).load_history_strings()) == expected
    assert list(BoundedFileHistory(str(path), 100).load_history_strings()) == expected


def test_defaults() -> None:
    assert CliConfig() == CliConfig(idle_timeout=None, history_size=1000)
