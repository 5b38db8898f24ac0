"""The voice ASGI app alone (no API server): the one request path, and a grammar kept current."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import httpx
import pytest
from nexus_core import Nexus
from voice_support import VOICE_SECTION, require_audio_tools, speak

from nexus_plugin_voice.asgi import make_asgi

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_audio_tools()


def host() -> Nexus:
    return Nexus(
        "voice-alone",
        storage="memory://",
        autoload=False,
        plugins=["nexus_plugin_voice.plugin"],
        config={"channels": {"voice": VOICE_SECTION}},
        env={},
    )


async def test_a_workflow_registered_while_running_can_be_said_at_once():
    app = host()

    @app.workflow
    def greet(name: str) -> str:
        return f"Hello, {name}."

    voice = make_asgi(app)
    async with app, voice.lifespan():
        transport = httpx.ASGITransport(app=voice)
        async with httpx.AsyncClient(transport=transport, base_url="http://voice") as http:
            before = (await http.get("/grammar")).text
            assert "greet" in before and "wave" not in before

            @app.workflow
            def wave(name: str) -> str:
                return f"{name} waves back."

            # The running host announces the workflow (nexus_workflow_registered) soon.
            with anyio.fail_after(10):
                while "wave" not in (await http.get("/grammar")).text:  # noqa: ASYNC110 - polls HTTP
                    await anyio.sleep(0.01)
            answer = await http.post(
                "/", content=speak("wave grace"), headers={"accept": "application/json"}
            )
            body = answer.json()
            assert body["workflow"] == "wave" and body["run"]["output"] == "Grace waves back."
            assert body["run"]["status"] == "completed"
            runs = await app.list_runs(workflow="wave")
            assert [r.channel for r in runs] == ["voice"]

            assert (await http.get("/")).status_code == 405
            assert (await http.get("/nowhere")).status_code == 404


async def test_cancel_it_cancels_the_sessions_running_run():
    app = host()
    release = anyio.Event()

    @app.workflow(blocking=False)
    async def greet(name: str) -> str:
        await release.wait()
        return f"Hello, {name}."

    voice = make_asgi(app)
    async with app, voice.lifespan():
        session = await app.create_session(channel="api")
        started = await app.invoke("greet", {"name": "Ada"}, session=session.id, wait=False)
        assert started.status == "running"
        transport = httpx.ASGITransport(app=voice)
        async with httpx.AsyncClient(transport=transport, base_url="http://voice") as http:
            headers = {"accept": "application/json", "x-nexus-session": session.id}
            status = (await http.post("/", content=speak("status"), headers=headers)).json()
            assert status["intent"] == "status" and status["outcome"] == "running", status
            cancel = (await http.post("/", content=speak("cancel it"), headers=headers)).json()
            assert cancel["outcome"] == "cancelled", cancel
            assert cancel["run"]["run_id"] == started.run_id
            done = await app.wait(started.run_id)
            assert done.status == "cancelled"
            again = (await http.post("/", content=speak("cancel it"), headers=headers)).json()
            assert again["outcome"] == "not_running" and "nothing to cancel" in again["reply"]


_PROBE = """
import json, sys
from nexus_core import Nexus
from nexus_plugin_voice.asgi import make_asgi

app = Nexus("probe", storage="memory://", autoload=False, plugins=["nexus_plugin_voice.plugin"])

@app.workflow
def greet(name: str) -> str:
    return name

voice = make_asgi(app)  # what `nexus serve` does when it mounts the channel
mounted = "nexus_plugin_voice.service" in sys.modules
voice.service  # the first request's step
print(json.dumps([mounted, "nexus_plugin_voice.service" in sys.modules]))
"""


def test_mounting_the_channel_leaves_the_voice_service_to_the_first_request():
    # Its grammar and engine modules are a server's start-up cost only when a
    # voice request comes: a fresh interpreter shows what mounting imports.
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, True]
