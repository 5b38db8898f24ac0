"""The voice ASGI app alone (no API server): the one request path, and a grammar kept current."""

from __future__ import annotations

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
