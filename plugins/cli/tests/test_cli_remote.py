"""Remote mode (--url / NEXUS_URL) against a real gateway, compared with local mode.

The gateway is ``python -m nexus_plugin_api APP --port P`` in a subprocess
serving the same example app; these tests skip when the API plugin is not
installed (``NEXUS_REQUIRE_SERVICES`` does not apply: it is a plugin, not a service).
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from cli_support import (
    API_INSTALLED,
    APP_SOURCE,
    Cli,
    base_env,
    free_port,
    nexus_command,
    serve,
)

pytestmark = pytest.mark.timeout(300)

_VOLATILE = {"run_id", "started_at", "finished_at", "created_at", "session_id", "duration_ms"}


def stable(value: Any) -> Any:
    """The value without ids and times, which differ between any two runs."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


#: A run id: 12 hex digits of its creation time, then 22 URL-safe random characters.
_RUN_ID = re.compile(r"(?<![\w-])[0-9a-f]{12}[\w-]{22}(?![\w-])")


def errors(done: Any) -> list[str]:
    """The error lines (run ids masked)."""
    lines = [line for line in done.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    return [_RUN_ID.sub("RUN", line) for line in lines]


CASES = [
    ("run", "greet", "--name", "Ada", "--excited", "--times", "2"),
    ("run", "tally", "--tags", "a", "--tags", "b", "--weights", '{"a": 3}'),
    ("run", "divide", "--a", "1", "--b", "8"),
    ("run", "pipeline", "--x", "2"),
    ("run", "pipeline", "--x", "3"),
    ("run", "gret", "--name", "x"),
    ("run", "greet"),
    ("run", "greet", "--name", "x", "--times", "lots"),
    ("run", "greet", "--nmae", "x"),
    ("run", "greet", "--json", '{"name": "J"}', "--times", "1"),
    ("workflows",),
    ("workflows", "show", "tally"),
    ("workflows", "show", "tallly"),
    ("runs", "show", "no-such-run"),
    ("session", "show", "no-such-session"),
]


@pytest.mark.parametrize("output", ["text", "json"])
def test_local_and_remote_give_the_same_results_and_errors(
    cli: Cli, remote: Cli, output: str
) -> None:
    for case in CASES:
        local = cli("-o", output, *case)
        far = remote("-o", output, *case)
        assert far.returncode == local.returncode, (case, local.stderr, far.stderr)
        assert errors(far) == errors(local), case
        if local.stdout.strip().startswith(("{", "[", '"')) or local.stdout.strip()[:1].isdigit():
            assert stable(json.loads(far.stdout)) == stable(json.loads(local.stdout)), case
        else:
            assert far.stdout == local.stdout, case


def test_remote_runs_show_cancel_and_resume(remote: Cli) -> None:
    done = remote("-o", "json", "run", "pipeline", "--x", "3")
    run = json.loads(done.stdout)
    shown = json.loads(remote("-o", "json", "runs", "show", run["run_id"]).stdout)
    assert shown["status"] == "completed" and set(shown["nodes"]) == {"double", "invert"}
    listed = json.loads(remote("-o", "json", "runs", "--workflow", "pipeline").stdout)
    assert run["run_id"] in [r["run_id"] for r in listed]
    assert all(r["channel"] == "api" for r in listed)
    slow = remote("run", "slow", "--seconds", "20", "--no-wait").stdout.strip()
    cancelled = remote("runs", "cancel", slow)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(remote("-o", "json", "runs", "show", slow).stdout)["status"] == "cancelled"
    quick = remote("run", "slow", "--seconds", "0.5", "--no-wait").stdout.strip()
    followed = remote("runs", "resume", quick)  # the gateway runs it; resume follows it to its end
    assert followed.returncode == 0 and json.loads(followed.stdout) == "done"


def test_remote_progress_events_and_batch(remote: Cli) -> None:
    done = remote("run", "pipeline", "--x", "3")
    assert "node double completed" in done.stderr and "node invert completed" in done.stderr
    # From the last event on: whenever the follower connects, it misses nothing.
    seen = remote("events", "--since", "0", "--idle", "2", "-o", "json").stdout.splitlines()
    last = json.loads(seen[-1])["id"]
    follower = remote.popen(
        "events", "--since", last, "--type", "run.*", "--count", "2", "-o", "json"
    )
    remote("run", "greet", "--name", "Ev", "-q")
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert [json.loads(line)["type"] for line in out.splitlines()] == [
        "run.started",
        "run.completed",
    ]
    replay = remote("events", "--since", "0", "--type", "node.*", "--count", "2", "-o", "json")
    assert [json.loads(line)["type"] for line in replay.stdout.splitlines()] == [
        "node.started",
        "node.finished",
    ]
    lines = (
        '{"workflow": "greet", "inputs": {"name": "A"}}\n'
        '{"workflow": "divide", "inputs": {"a": 1, "b": 0}}\n'
    )
    batch = remote("batch", "-", "-c", "2", input=lines)
    assert batch.returncode == 1
    assert (
        batch.stderr.strip()
        .splitlines()[-1]
        .startswith("batch: 2 invocations: 1 completed, 1 failed")
    )


def test_remote_sessions_plugins_and_login(remote: Cli, gateway: str) -> None:
    created = remote("session", "new")
    session_id = created.stdout.strip()
    assert created.returncode == 0 and session_id
    remote("run", "greet", "--name", "S")
    runs = json.loads(remote("-o", "json", "runs", "--limit", "1").stdout)
    assert runs[0]["session_id"] == session_id
    shown = json.loads(remote("-o", "json", "session", "show").stdout)
    assert shown["id"] == session_id and "api" in shown["channels"]
    plugins = json.loads(remote("plugins", "--json").stdout)
    assert "nexus-plugin-api" in {p["name"] for p in plugins["plugins"]}
    refused = remote("login", "--token", "not-a-real-token")
    assert refused.returncode == 1
    assert "refused this token" in refused.stderr
    config = remote("config", "show")
    assert f'cli.url = "{gateway}"' in config.stdout


API_KEY = "nxk_cli-test-key"
USER_KEY = "nxk_cli-user-key"
SECURE_CONFIG = f"""
[nexus.services.security]
providers = ["api_key", "cli_token"]
auth_enabled = true
roles = {{ operator = ["admin"], user = ["workflow:*:execute", "runs:read", "tokens:issue"] }}

[[nexus.services.security.api_key.keys]]
principal = "ops"
sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
roles = ["operator"]

[[nexus.services.security.api_key.keys]]
principal = "user"
sha256 = "{hashlib.sha256(USER_KEY.encode()).hexdigest()}"
roles = ["user"]
"""


@pytest.fixture(scope="module")
def secure_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gateway with authentication on, two API keys and CLI tokens; and its folder."""
    if not API_INSTALLED:
        pytest.skip("remote mode needs the API plugin (nexus-plugin-api)")
    tmp = tmp_path_factory.mktemp("secure")
    (tmp / "app.py").write_text(APP_SOURCE, encoding="utf-8")
    (tmp / "nexus.toml").write_text(SECURE_CONFIG, encoding="utf-8")
    with serve(tmp / "app.py", tmp) as url:
        yield url, tmp


@pytest.fixture
def secure_gateway(secure_site: tuple[str, Path]) -> str:
    return secure_site[0]


def test_remote_login_keeps_the_token_for_later_commands(
    tmp_path: Path, secure_gateway: str
) -> None:
    env = base_env(tmp_path)
    env["NEXUS_URL"] = secure_gateway
    remote = Cli(tmp_path, env)
    refused = remote("workflows")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: authentication required")
    assert "nexus login" in refused.stderr
    bad = remote("login", "--token", "nxk_wrong")
    assert bad.returncode == 1 and "refused this token" in bad.stderr
    done = remote("login", "--with-token", input=API_KEY + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"logged in to {secure_gateway}"
    assert remote("workflows").returncode == 0
    run = remote("run", "greet", "--name", "Ada")
    assert json.loads(run.stdout) == "Hello, Ada."
    assert remote("logout").stdout.strip() == f"logged out of {secure_gateway}"
    assert remote("workflows").returncode == 1


def _saved_tokens(home: Path) -> list[Path]:
    folder = home / "config" / "nexus" / "tokens"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_remote_login_exchanges_an_api_key_for_a_cli_token(
    tmp_path: Path, secure_gateway: str
) -> None:
    env = base_env(tmp_path)
    env["NEXUS_URL"] = secure_gateway
    remote = Cli(tmp_path, env)
    no_key = remote("login")  # not a terminal: no prompt
    assert no_key.returncode == 2 and "--api-key" in no_key.stderr
    wrong = remote("login", "--api-key", "nxk_wrong")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(f"error: the gateway at {secure_gateway} refused")
    assert _saved_tokens(tmp_path) == []

    done = remote("login", "--with-api-key", input=USER_KEY + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"logged in to {secure_gateway}"
    assert "authenticated as user (tenant default)" in done.stderr
    assert "valid until" in done.stderr
    (saved,) = _saved_tokens(tmp_path)
    assert saved.name.startswith("http_127.0.0.1_")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    token = saved.read_text().strip()
    assert token.startswith("nxc_")  # a CLI token, not the key
    assert json.loads(remote("run", "greet", "--name", "Ada").stdout) == "Hello, Ada."

    again = remote("-o", "json", "login", "--api-key", API_KEY)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["principal"] == "ops" and report["logged_in"] is True
    assert report["file"] == str(saved)
    second = saved.read_text().strip()
    assert second != token

    out = json.loads(remote("-o", "json", "logout").stdout)
    assert out == {"target": secure_gateway, "logged_out": True, "revoked": True}
    assert _saved_tokens(tmp_path) == []
    revoked = remote("--token", second, "workflows")
    assert revoked.returncode == 1 and revoked.stderr.startswith("error: ")
    assert remote("--token", token, "workflows").returncode == 0  # the first one is still valid
    assert remote("logout").stdout.strip() == f"not logged in to {secure_gateway}"


def test_remote_login_prompts_for_the_api_key_on_a_terminal(
    tmp_path: Path, secure_gateway: str
) -> None:
    env = base_env(tmp_path)
    command = nexus_command()
    child = pexpect.spawn(
        command[0],
        [*command[1:], "--url", secure_gateway, "login"],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect(f"API key for {secure_gateway}: ")
        child.sendline(API_KEY)
        child.expect(f"logged in to {secure_gateway}")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert API_KEY not in (child.before or "")  # not echoed
    (saved,) = _saved_tokens(tmp_path)
    assert saved.read_text().startswith("nxc_")


def test_remote_config_show_and_check(
    tmp_path: Path, secure_site: tuple[str, Path], app_file: Path
) -> None:
    url, site = secure_site
    env = base_env(tmp_path)
    env["NEXUS_URL"] = url
    remote = Cli(tmp_path, env)
    anonymous = remote("config", "show")
    assert anonymous.returncode == 1 and "authentication required" in anonymous.stderr
    assert remote("login", "--api-key", USER_KEY).returncode == 0
    denied = remote("config", "show")
    assert denied.returncode == 1 and "'admin'" in denied.stderr
    assert remote("config", "check").returncode == 1
    assert remote("login", "--api-key", API_KEY).returncode == 0

    shown = remote("config", "show")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    auth = next(line for line in lines if line.startswith("nexus.services.security.auth_enabled"))
    assert auth.split("#")[-1].strip() == "nexus.toml"
    assert API_KEY not in shown.stdout
    assert hashlib.sha256(API_KEY.encode()).hexdigest() not in shown.stdout
    assert '"sha256":"***"' in shown.stdout
    assert f'cli.url = "{url}"' in shown.stdout
    assert any(line.startswith("cli.token = ") and "# nexus login" in line for line in lines)

    # The same form as in process, on the same application and configuration.
    (tmp_path / "nexus.toml").write_text(SECURE_CONFIG, encoding="utf-8")
    local = Cli(tmp_path, {**base_env(tmp_path), "NEXUS_APP": str(app_file)})
    local_json = json.loads(local("-o", "json", "config", "show").stdout)
    remote_json = json.loads(remote("-o", "json", "config", "show").stdout)
    assert set(remote_json) == set(local_json) == {"config", "sources", "cli", "cli_sources"}
    assert set(remote_json["sources"]) == set(local_json["sources"])
    assert remote_json["sources"]["nexus.services.security.providers"] == "nexus.toml"
    local_lines = local("config", "show").stdout.splitlines()
    assert [line.split(" = ")[0] for line in local_lines if line.startswith("nexus.")] == [
        line.split(" = ")[0] for line in lines if line.startswith("nexus.")
    ]

    checked = remote("config", "check")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [
        f"configuration OK (nexus.toml; gateway {url})",
        f"environment development, storage sqlite:///{site / 'gateway.db'}",
    ]
    report = json.loads(remote("-o", "json", "config", "check").stdout)
    assert report["ok"] is True and report["source"] == f"gateway {url}"

    # The check reads the file as it is now: a typo is reported (exit 2) as in process.
    toml = site / "nexus.toml"
    try:
        toml.write_text("[nexus]\nenviroment = 'production'\n" + SECURE_CONFIG, encoding="utf-8")
        typo = remote("config", "check")
        assert typo.returncode == 2
        assert typo.stderr.startswith("error: nexus.toml: ")
        assert "enviroment" in typo.stderr and "'environment'" in typo.stderr
    finally:
        toml.write_text(SECURE_CONFIG, encoding="utf-8")
    assert remote("config", "check").returncode == 0


def test_nexus_serve_through_the_hook(cli: Cli, app_file: Path) -> None:
    """`nexus serve` is the API plugin's command, registered lazily from its hook."""
    if not API_INSTALLED:
        pytest.skip("nexus serve comes from the API plugin (nexus-plugin-api)")
    port = free_port()
    server = cli.popen("serve", str(app_file), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[1]
            done = cli("--url", url, "run", "greet", "--name", "Served", check_traceback=False)
            if done.returncode == 0:
                break
            assert time.monotonic() < deadline, done.stderr
            time.sleep(0.3)
        assert json.loads(done.stdout) == "Hello, Served."
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    assert "Traceback" not in err
