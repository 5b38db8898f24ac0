"""A 50 MB output by reference on S3 (moto), fetched byte-identical over REST, MCP and the CLI.

Runs, events and audit are in SQLite; blobs on S3. The SQLite file stays small.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from nexus_core import Nexus
from nexus_core.plugin import blob_ref
from s3_support import MotoServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SIZE = 50 * 1024 * 1024
APP = '''
import os
from nexus_core import Nexus

app = Nexus(
    "big",
    config={{
        "storage": {{"url": "sqlite:///{db}", "blobs": "{blobs}"}},
        "channels": {{"api": {{"port": 0}}}},
    }},
)


@app.workflow
def big(megabytes: int) -> str:
    """A string of ``megabytes`` MiB."""
    return "0123456789abcdef" * (megabytes * 65536)
'''


def _expected() -> bytes:
    return msgspec.json.encode("0123456789abcdef" * (SIZE // 16))


@pytest.fixture
def app_file(tmp_path: Path, moto: MotoServer, bucket: str) -> Path:
    path = tmp_path / "bigapp.py"
    # 50 MB in parts to a Python S3 emulator: on a loaded 2-core CI machine a part
    # can take well over the 10 s the fault tests use; this test is about references.
    blobs = moto.url(bucket, "nexus", timeout=120)
    path.write_text(APP.format(db=tmp_path / "nexus.db", blobs=blobs))
    return path


@pytest.fixture
async def served(app_file: Path) -> AsyncIterator[tuple[Nexus, str]]:
    pytest.importorskip("nexus_plugin_api")
    from nexus_core.loader import load_app

    app = load_app(str(app_file))
    async with app.running(channels=["api"]):
        channel: Any = app.channels["api"]
        try:
            yield app, channel.url
        finally:
            channel.stop()
            await channel.wait_stopped()


async def test_50mb_output_by_reference_over_rest_mcp_and_cli(
    served: tuple[Nexus, str], app_file: Path, tmp_path: Path
) -> None:
    _app, url = served
    expected = _expected()
    digest = hashlib.sha256(expected).hexdigest()
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        # REST: the run shows a reference; /result streams the bytes.
        response = await http.post("/workflows/big/runs", json={"megabytes": 50})
        assert response.status_code in (200, 201), response.text
        run = response.json()
        assert len(response.content) < 2_000
        ref = blob_ref(run["output"])
        assert ref is not None and ref.size == len(expected) and ref.sha256 == digest
        got = hashlib.sha256()
        size = 0
        async with http.stream("GET", f"/runs/{run['run_id']}/result") as stream:
            assert stream.status_code == 200
            assert stream.headers["x-content-sha256"] == digest
            async for chunk in stream.aiter_bytes():
                got.update(chunk)
                size += len(chunk)
        assert (size, got.hexdigest()) == (len(expected), digest)

    # MCP: the tool result links the output; reading the link gives the bytes.
    await _check_mcp(url + "/mcp", expected)

    # CLI: nexus run --output-file, against the gateway and in process.
    pytest.importorskip("nexus_plugin_cli")
    for target in (["--url", url], ["--app", str(app_file)]):
        out = tmp_path / f"out-{target[0].strip('-')}.json"
        proc = await _nexus(*target, "run", "big", "--megabytes", "50", "--output-file", str(out))
        assert proc.returncode == 0, proc.stderr
        assert "output written to" in proc.stderr
        assert await anyio.Path(out).read_bytes() == expected

    # Nothing in the database grows with payload size: four 50 MB runs, a small file.
    total = _database_size(tmp_path)
    assert 0 < total < 2 * 1024 * 1024, total


def _database_size(folder: Path) -> int:
    """The SQLite database's bytes on disk (its WAL and shared-memory files included)."""
    return sum(p.stat().st_size for p in folder.glob("nexus.db*"))


async def _check_mcp(url: str, expected: bytes) -> None:
    pytest.importorskip("nexus_plugin_mcp")
    httpx2 = pytest.importorskip("httpx2")
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(120.0, read=120.0)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("big", {"megabytes": 50})
        assert not result.is_error, result
        http_link, nexus_link = result.content
        assert http_link.type == nexus_link.type == "resource_link"
        assert http_link.size == len(expected)
        assert str(nexus_link.uri).startswith("nexus://runs/")
        assert result.structured_content is not None
        assert blob_ref(result.structured_content["result"]) is not None
    # The HTTP link streams the value (an MCP message would carry 50 MB badly).
    async with httpx.AsyncClient(timeout=120) as plain:
        response = await plain.get(str(http_link.uri))
    assert response.status_code == 200
    assert response.content == expected


async def _nexus(*args: str) -> subprocess.CompletedProcess[str]:
    """``nexus ARGS`` as a subprocess (the console script of this environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    nexus = Path(sys.executable).with_name("nexus")
    done = await anyio.run_process([str(nexus), *args], env=env, check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )
