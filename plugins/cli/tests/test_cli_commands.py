"""Every command through the installed `nexus` console script, in process (--app / NEXUS_APP)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cli_support import API_INSTALLED, Cli

pytestmark = pytest.mark.timeout(300)


def first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


# -- help and the command table --------------------------------------------------------------


def test_help_lists_every_command(cli: Cli) -> None:
    done = cli("--help")
    assert done.returncode == 0
    for name in (
        "run",
        "workflows",
        "runs",
        "events",
        "batch",
        "shell",
        "session",
        "worker",
        "plugins",
        "config",
        "login",
        "logout",
        "serve",
        "mcp",
    ):
        assert f" {name} " in done.stdout, name
    assert "--url" in done.stdout and "--app" in done.stdout


def test_help_from_the_cache_is_the_rendered_help(cli: Cli) -> None:
    rendered = cli("--help", env={"NEXUS_CLI_NO_CACHE": "1"}).stdout
    first = cli("--help").stdout  # renders and fills the cache
    cached = cli("--help").stdout
    bare = cli().stdout
    assert rendered == first == cached == bare
    assert list((cli.workdir / "cache" / "nexus").glob("help-*.json"))


def test_version(cli: Cli) -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == "0.1.0"


def test_unknown_command_is_a_usage_error(cli: Cli) -> None:
    done = cli("wrokflows")
    assert done.returncode == 2
    assert first_line(done.stderr).startswith("error: ")
    assert "wrokflows" in done.stderr


@pytest.mark.skipif(not API_INSTALLED, reason="nexus serve comes from the API plugin")
def test_serve_comes_from_the_api_plugin(cli: Cli) -> None:
    done = cli("serve", "--help")
    assert done.returncode == 0
    assert "--port" in done.stdout and "--workers" in done.stdout


def test_serve_without_the_api_plugin_says_how_to_install_it(cli: Cli) -> None:
    done = cli("serve", "app.py", env={"NEXUS_DISABLE_PLUGINS": "nexus-plugin-api"})
    assert done.returncode == 2
    # From this checkout: pip install -e .../plugins/api (see test_cli_hints.py).
    assert "hint: pip install -e " in done.stderr and "plugins/api" in done.stderr


# -- run -------------------------------------------------------------------------------------


def test_run_prints_the_output_as_json(cli: Cli) -> None:
    done = cli("run", "greet", "--name", "Ada", "--excited")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "Hello, Ada!"
    assert "node greet completed" in done.stderr  # plain progress: stderr is not a terminal


def test_run_parses_numbers_flags_lists_and_objects(cli: Cli) -> None:
    done = cli("run", "greet", "--name=Bo", "--no-excited", "--times", "2", "-q")
    assert json.loads(done.stdout) == "Hello, Bo. Hello, Bo."
    assert done.stderr == ""
    done = cli("run", "tally", "--tags", "a", "--tags", "b", "--tags", "a", "--weights", '{"a": 5}')
    assert json.loads(done.stdout) == {"a": 10, "b": 1}
    done = cli("run", "tally", "--tags", '["x", "y"]')
    assert json.loads(done.stdout) == {"x": 1, "y": 1}
    done = cli("run", "divide", "--a", "1", "--b", "4")
    assert json.loads(done.stdout) == 0.25


def test_run_takes_json_inline_and_from_stdin(cli: Cli) -> None:
    done = cli("run", "greet", "--json", '{"name": "Cy", "times": 2}')
    assert json.loads(done.stdout) == "Hello, Cy. Hello, Cy."
    done = cli("run", "greet", "--json", "-", "--excited", input='{"name": "Di"}')
    assert json.loads(done.stdout) == "Hello, Di!"
    done = cli("run", "greet", "--json", '{"name": "Ed"}', "--name", "Flo")
    assert json.loads(done.stdout) == "Hello, Flo."  # options override --json


def test_run_output_json_is_the_whole_run(cli: Cli) -> None:
    done = cli("-o", "json", "run", "pipeline", "--x", "3")
    run = json.loads(done.stdout)
    assert run["status"] == "completed" and run["output"] == 0.5
    assert set(run["nodes"]) == {"double", "invert"}
    assert run["nodes"]["double"]["output"] == {"result": 6}
    assert done.stderr == ""  # no progress for scripts


def test_run_help_lists_the_generated_options(cli: Cli) -> None:
    done = cli("run", "greet", "--help")
    assert done.returncode == 0
    assert "Greet someone by name." in done.stdout
    assert "--name TEXT" in done.stdout and "required" in done.stdout
    assert "--excited / --no-excited" in done.stdout
    assert "--times INTEGER" in done.stdout
    usage = cli("run", "--help")
    assert "Usage: nexus run WORKFLOW" in usage.stdout and "greet" in usage.stdout


def test_unknown_workflow_suggests_the_closest(cli: Cli) -> None:
    done = cli("run", "gret", "--name", "Ada")
    assert done.returncode == 2
    assert first_line(done.stderr) == "error: unknown workflow 'gret'; did you mean 'greet'?"
    assert done.stdout == ""


def test_bad_or_missing_options_name_the_option(cli: Cli) -> None:
    missing = cli("run", "greet")
    assert missing.returncode == 2
    assert "missing required option --name" in missing.stderr
    # A value of the wrong type is the core's validation error, naming the option.
    bad = cli("run", "greet", "--name", "Ada", "--times", "many")
    assert bad.returncode == 2
    reason = "option --times: expected 'int', got 'str'"
    assert first_line(bad.stderr) == f"error: invalid input: {reason}"
    unknown = cli("run", "greet", "--nmae", "Ada")
    assert unknown.returncode == 2
    assert "unknown option --nmae" in unknown.stderr and "did you mean --name" in unknown.stderr
    stray = cli("run", "greet", "Ada")
    assert stray.returncode == 2 and "--name" in stray.stderr
    no_value = cli("run", "greet", "--name")
    assert no_value.returncode == 2 and "--name needs a value" in no_value.stderr
    not_json = cli("run", "greet", "--json", "{nope")
    assert not_json.returncode == 2 and "--json" in not_json.stderr


def test_failed_run_names_the_node_and_reason(cli: Cli) -> None:
    done = cli("run", "pipeline", "--x", "2")
    assert done.returncode == 1
    assert done.stdout == ""
    assert (
        "failed at node 'invert': ZeroDivisionError: division by zero" in first_line(done.stderr)
        or "failed at node 'invert': ZeroDivisionError: division by zero" in done.stderr
    )
    as_json = cli("-o", "json", "run", "pipeline", "--x", "2")
    assert as_json.returncode == 1
    run = json.loads(as_json.stdout)
    assert run["status"] == "failed" and run["error"]["node"] == "invert"


# -- workflows, runs -----------------------------------------------------------------------


def test_workflows_list_and_show(cli: Cli) -> None:
    done = cli("workflows")
    assert done.returncode == 0
    assert done.stdout.splitlines()[0].split() == ["NAME", "DESCRIPTION"]
    assert "greet     Greet someone by name." in done.stdout
    listed = json.loads(cli("workflows", "-o", "json").stdout)
    assert [w["name"] for w in listed] == ["divide", "greet", "pipeline", "slow", "tally"]
    shown = json.loads(cli("workflows", "show", "greet", "-o", "json").stdout)
    assert shown["input_schema"]["required"] == ["name"]
    assert shown["output_schema"] == {"type": "string"}
    text = cli("workflows", "show", "greet").stdout
    assert "--name TEXT" in text and "Input schema:" in text
    unknown = cli("workflows", "show", "gret")
    assert unknown.returncode == 2 and "did you mean 'greet'" in unknown.stderr


def test_runs_list_show_and_cancel(cli: Cli) -> None:
    cli("run", "greet", "--name", "Ada")
    cli("run", "pipeline", "--x", "2")
    runs = json.loads(cli("runs", "-o", "json").stdout)
    assert [r["workflow"] for r in runs] == ["pipeline", "greet"]
    assert runs[0]["status"] == "failed" and runs[0]["channel"] == "cli"
    only = json.loads(cli("runs", "--workflow", "greet", "-o", "json").stdout)
    assert [r["workflow"] for r in only] == ["greet"]
    table = cli("runs").stdout
    assert "pipeline" in table and "failed" in table
    # It prints the failed run's traceback, which is what it is for.
    detail = cli("runs", "show", runs[0]["run_id"], check_traceback=False).stdout
    assert "status    failed" in detail and "invert" in detail and "ZeroDivisionError" in detail
    missing = cli("runs", "show", "nope")
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr
    done = cli("runs", "cancel", runs[1]["run_id"])
    assert done.returncode == 1 and "already completed" in done.stderr
    bad = cli("runs", "--status", "lost")
    assert bad.returncode == 2


def test_cancel_a_run_whose_process_is_gone(cli: Cli) -> None:
    started = cli("run", "slow", "--seconds", "30", "--no-wait")
    run_id = started.stdout.strip()
    assert run_id and started.returncode == 0
    done = cli("runs", "cancel", run_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cancelled run {run_id}"
    shown = json.loads(cli("runs", "show", run_id, "-o", "json").stdout)
    assert shown["status"] == "cancelled"


# -- events ----------------------------------------------------------------------------------


def test_events_replay_filter_and_follow(cli: Cli) -> None:
    cli("run", "greet", "--name", "Ada")
    everything = cli("events", "--since", "0", "--idle", "1", "-o", "json")
    events = [json.loads(line) for line in everything.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert "run.started" in kinds and "node.finished" in kinds and "run.completed" in kinds
    runs_only = cli("events", "--since", "0", "--type", "run.*", "--count", "2", "-o", "json")
    assert [json.loads(line)["type"] for line in runs_only.stdout.splitlines()] == [
        "run.started",
        "run.completed",
    ]
    after = events[kinds.index("run.started")]["id"]
    resumed = cli("events", "--since", after, "--type", "run.*", "--idle", "1", "-o", "json")
    assert [json.loads(line)["type"] for line in resumed.stdout.splitlines()] == ["run.completed"]
    # From the last event on: whenever the follower gets going, it misses nothing.
    last = events[-1]["id"]
    follower = cli.popen("events", "--since", last, "--type", "node.*", "--count", "2")
    cli("run", "greet", "--name", "Live")
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert "node.started" in lines[0] and "node=greet" in lines[0]


# -- batch -----------------------------------------------------------------------------------


def test_batch_runs_lines_with_a_summary(cli: Cli) -> None:
    lines = [
        {"workflow": "greet", "inputs": {"name": "A"}},
        {"workflow": "greet", "inputs": {"name": "B"}, "id": "b"},
        {"workflow": "divide", "inputs": {"a": 1, "b": 0}},
        "not json",
        {"workflow": "gret", "inputs": {}},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (cli.workdir / "batch.jsonl").write_text(text + "\n# a comment\n")
    done = cli("batch", "batch.jsonl", "--concurrency", "2", "-o", "json")
    assert done.returncode == 1
    results = sorted(
        (json.loads(line) for line in done.stdout.splitlines()), key=lambda r: r["line"]
    )
    assert [r["status"] for r in results] == [
        "completed",
        "completed",
        "failed",
        "invalid",
        "invalid",
    ]
    assert results[1]["id"] == "b" and results[1]["output"] == "Hello, B."
    assert "ZeroDivisionError" in results[2]["error"]["message"]
    assert "did you mean 'greet'" in results[4]["error"]["message"]
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith("batch: 5 invocations: 2 completed, 1 failed, 2 invalid")
    good = cli("batch", "-", input='{"workflow": "greet", "inputs": {"name": "Z"}}\n')
    assert good.returncode == 0
    assert good.stdout.strip() == 'line 1: greet completed: "Hello, Z."'
    missing = cli("batch", "nope.jsonl")
    assert missing.returncode == 2 and "no such file" in missing.stderr


# -- plugins, config, sessions, login --------------------------------------------------------


def test_plugins(cli: Cli) -> None:
    report = json.loads(cli("plugins", "--json").stdout)
    names = {p["name"]: p for p in report["plugins"]}
    assert "nexus_add_hookspecs" in names["nexus-plugin-cli"]["hooks"]
    assert names["nexus-plugin-cli"]["version"] == "0.1.0"
    table = cli("plugins").stdout
    assert table.splitlines()[0].split() == ["PLUGIN", "VERSION", "HOOKS"]
    assert "nexus-plugin-cli" in table
    elsewhere = cli("plugins", "--json", env={"NEXUS_APP": ""})  # no app: the installed ones
    assert "nexus-plugin-cli" in elsewhere.stdout


def test_config_show_and_check(cli: Cli) -> None:
    shown = cli("config", "show").stdout
    storage = next(line for line in shown.splitlines() if line.startswith("nexus.storage ="))
    assert "env NEXUS_STORAGE" in storage
    assert any("# default" in line for line in shown.splitlines())
    data = json.loads(cli("config", "show", "-o", "json").stdout)
    assert data["sources"]["nexus.storage"] == "env NEXUS_STORAGE"
    assert data["config"]["nexus"]["storage"].startswith("sqlite:///")
    ok = cli("config", "check")
    assert ok.returncode == 0 and ok.stdout.startswith("configuration OK")
    bad = cli("config", "check", env={"NEXUS_ENVIRONMENT": "staging-ish"})
    assert bad.returncode == 2
    assert "NEXUS_ENVIRONMENT" in bad.stderr
    (cli.workdir / "nexus.toml").write_text("[nexus.services.security]\nstratgy = 'rbac'\n")
    typo = cli("config", "check")
    assert typo.returncode == 2
    assert "stratgy" in typo.stderr and "strategy" in typo.stderr


def test_sessions_are_current_for_later_runs(cli: Cli) -> None:
    assert cli("session", "show").returncode == 2  # none yet
    created = cli("session", "new")
    session_id = created.stdout.strip()
    assert created.returncode == 0 and session_id
    shown = json.loads(cli("session", "show", "-o", "json").stdout)
    assert shown["id"] == session_id and shown["current"] is True
    assert shown["channels"] == ["cli"]
    cli("run", "greet", "--name", "Ada")
    runs = json.loads(cli("runs", "-o", "json").stdout)
    assert runs[0]["session_id"] == session_id
    cli("run", "greet", "--name", "Ada", "--no-session")
    runs = json.loads(cli("runs", "-o", "json").stdout)
    assert runs[0]["session_id"] is None
    assert cli("session", "use", "--clear").returncode == 0
    assert cli("session", "show").returncode == 2
    assert cli("session", "use", session_id).returncode == 0
    gone = cli("session", "use", "not-a-session")
    assert gone.returncode == 1 and "session" in gone.stderr
    state = cli.workdir / "config" / "nexus" / "sessions.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


def test_login_and_logout_in_process(cli: Cli) -> None:
    (cli.workdir / "nexus.toml").write_text(
        '[nexus.services.security]\nproviders = ["cli_token"]\n'
    )
    done = cli("login", "--principal", "ada")
    assert done.returncode == 0, done.stderr
    assert "authenticated as ada" in done.stderr
    saved = cli.workdir / "config" / "nexus" / "tokens" / "local"  # nexus_core.userconfig
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    token = saved.read_text().strip()
    assert token.startswith("nxc_")
    assert cli("run", "greet", "--name", "Ada").returncode == 0
    assert cli("logout").stdout.strip().startswith("logged out of")
    refused = cli("--token", token, "run", "greet", "--name", "Ada")
    assert refused.returncode == 1  # revoked at logout
    assert "not accepted" in refused.stderr or "revoked" in refused.stderr
    bogus = cli("login", "--token", "nope")
    assert bogus.returncode == 1 and first_line(bogus.stderr).startswith("error:")
    assert not saved.exists()


def test_a_rejected_login_token_is_an_error_not_anonymous(cli: Cli, tmp_path: Path) -> None:
    # The local login is one token for every application; one that does not accept it
    # says so and what to do, instead of running the workflow as the anonymous caller.
    (cli.workdir / "nexus.toml").write_text(
        '[nexus.services.security]\nproviders = ["cli_token"]\n'
    )
    assert cli("login", "--principal", "ada").returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "app.py").write_text((cli.workdir / "app.py").read_text())
    elsewhere_env = {"NEXUS_STORAGE": f"sqlite:///{other / 'o.db'}"}
    elsewhere = cli("run", "greet", "--name", "B", env=elsewhere_env)
    assert elsewhere.returncode == 1, elsewhere.stderr
    assert elsewhere.stdout == ""  # nothing ran
    assert first_line(elsewhere.stderr).startswith(
        "error: the token saved by `nexus login` is not accepted by this application"
    )
    assert "nexus login" in elsewhere.stderr and "nexus logout" in elsewhere.stderr
    runs = cli("runs", env=elsewhere_env)
    assert runs.returncode == 1  # the same refusal for every command, not only run
    # What the error says to do works: after logout the application runs anonymously.
    assert cli("logout", env=elsewhere_env).returncode == 0
    after = cli("run", "greet", "--name", "B", env=elsewhere_env)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == "Hello, B."
    given = cli(
        "--token", "nxc_not-this-one", "run", "greet", "--name", "B"
    )  # a token given explicitly is never dropped
    assert given.returncode == 1 and given.stderr.startswith("error: ")
    assert "warning" not in given.stderr
    with_key = cli("login", "--api-key", "nxk_x")
    assert (
        with_key.returncode == 2 and "--api-key is for logging in to a gateway" in with_key.stderr
    )


# -- remote errors without a gateway -----------------------------------------------------------


def test_unreachable_gateway_is_one_line(cli: Cli) -> None:
    done = cli("--url", "http://127.0.0.1:9", "workflows")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach the Nexus gateway at http://127.0.0.1:9")
    assert len(done.stderr.strip().splitlines()) == 1
    run = cli("run", "--url", "http://127.0.0.1:9", "greet", "--name", "x")
    assert run.returncode == 1 and "cannot reach" in run.stderr


def test_no_application_is_a_usage_error(cli: Cli) -> None:
    done = cli("workflows", env={"NEXUS_APP": ""})
    assert done.returncode == 2
    assert "no application given" in done.stderr and "hint:" in done.stderr
    broken = cli.workdir / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    failed = cli("--app", str(broken), "workflows")
    assert failed.returncode == 2 and "boom" in failed.stderr


def test_global_options_after_the_command(cli: Cli, app_file: Path) -> None:
    done = cli("workflows", "--app", str(app_file), "-o", "json", env={"NEXUS_APP": ""})
    assert done.returncode == 0
    assert json.loads(done.stdout)[0]["name"] == "divide"
    assert os.path.exists(app_file)
