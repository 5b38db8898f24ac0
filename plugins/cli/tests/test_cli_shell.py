"""``nexus shell`` driven in a real pseudo-terminal with pexpect."""

from __future__ import annotations

import re
import stat

import pexpect
import pytest
from cli_support import Cli, nexus_command

from nexus_plugin_cli.commands.shell import ShellCompleter

pytestmark = pytest.mark.timeout(180)

PROMPT = "nexus>"


def spawn(cli: Cli, *args: str) -> pexpect.spawn:
    command = nexus_command()
    env = {**cli.env, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(
        command[0],
        [*command[1:], *args, "shell"],
        env=env,
        cwd=str(cli.workdir),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 120),
    )
    child.expect(PROMPT)
    return child


# prompt_toolkit may redraw a completion in pieces, with escape sequences between
# characters (seen under load): match the text whatever the terminal codes around it.
_ANSI = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"


def drawn(text: str) -> str:
    """A pattern for ``text`` as a terminal draws it."""
    return _ANSI.join(re.escape(ch) for ch in text)


def test_shell_completes_runs_remembers_and_exits(cli: Cli) -> None:
    child = spawn(cli)
    try:
        child.send("gre\t")  # a workflow name
        child.expect(drawn("greet"))
        child.send(" --na\t")  # its option, from the input schema
        child.expect(drawn("--name"))
        child.send(" Ada --ex\t")
        child.expect(drawn("--excited"))
        child.send("\r")
        child.expect('"Hello, Ada!"')
        child.expect(PROMPT)
        child.send("run pipeline --x 2\r")  # a failing run: the shell stays
        child.expect("failed at node 'invert'")
        child.expect(PROMPT)
        child.send("gret --name x\r")
        child.expect("did you mean 'greet'")
        child.expect(PROMPT)
        child.send("runs 1\r")
        child.expect("pipeline")
        child.expect(PROMPT)
        child.send("\x1b[A")  # up arrow: the last line comes back from history
        child.expect(drawn("runs 1"))
        child.send("\x15exit\r")  # Ctrl-U clears the line
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    history = cli.workdir / "config" / "nexus" / "history"
    assert "+greet --name Ada --excited" in history.read_text()
    assert stat.S_IMODE(history.stat().st_mode) == 0o600


def test_shell_session_and_ctrl_d(cli: Cli) -> None:
    child = spawn(cli)
    try:
        child.send("session new\r")
        child.expect(r"session (\S+) \(current\)")
        session_id = child.match.group(1)
        child.expect(PROMPT)
        child.send("greet --name S\r")
        child.expect('"Hello, S."')
        child.expect(PROMPT)
        child.send("\x04")  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    shown = cli("session", "show", "-o", "json")
    assert session_id in shown.stdout


def test_completion_candidates() -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "excited": {"type": "boolean"}},
        "required": ["name"],
    }
    completer = ShellCompleter({"greet": {"name": "greet", "input_schema": schema}})
    assert completer.candidates([], "gr") == ["greet"]
    assert "workflows" in completer.candidates([], "w")
    assert completer.candidates(["run"], "") == ["greet"]
    assert completer.candidates(["greet"], "--e") == ["--excited"]
    assert completer.candidates(["greet", "--name", "x"], "--n") == [
        "--no-excited",
        "--no-session",
        "--no-wait",
    ]
    assert completer.candidates(["session"], "") == ["new", "show", "use"]
    assert completer.candidates(["greet", "--name"], "A") == []
