"""An ephemeral workflow (``durable=False``) through the `nexus` console script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import API_INSTALLED, Cli, base_env, serve

pytestmark = pytest.mark.timeout(300)

APP = '''
from nexus_core import Nexus

app = Nexus("ephemeral")


@app.workflow(durable=False)
def shout(text: str) -> str:
    """Upper-case the text: nothing worth keeping."""
    return text.upper()
'''


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    path = tmp_path / "shout.py"
    path.write_text(APP, encoding="utf-8")
    return path


def test_local_run_answers_and_lists_no_run(tmp_path: Path, app_file: Path) -> None:
    cli = Cli(tmp_path, {**base_env(tmp_path), "NEXUS_APP": str(app_file)})
    done = cli("run", "shout", "--text", "hi")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "HI"
    assert json.loads(cli("runs", "-o", "json").stdout) == []
    refused = cli("run", "shout", "--text", "hi", "--idempotency-key", "k")
    assert refused.returncode == 2
    assert "idempotency_key" in refused.stderr


@pytest.mark.skipif(not API_INSTALLED, reason="remote mode needs nexus-plugin-api")
def test_remote_run_answers(tmp_path: Path, app_file: Path) -> None:
    with serve(app_file, tmp_path) as url:
        cli = Cli(tmp_path, {**base_env(tmp_path), "NEXUS_URL": url})
        done = cli("run", "shout", "--text", "hey")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == "HEY"
