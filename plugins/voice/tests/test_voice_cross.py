"""Across channels and processes: ``nexus serve`` with the voice plugin, SSE, REST, the CLI.

A real ``nexus serve examples/hello.py`` subprocess (the voice channel mounted
by the API plugin's hook). A run started by voice is seen live on the SSE
stream and listed by ``nexus --url URL runs``; a session started by voice is
continued over REST and back; ``nexus voice say`` and ``nexus voice grammar``
run as the console script; the WebSocket streams partial transcripts, the
result and the reply audio. The reply audio is transcribed back.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest

pytest.importorskip(
    "nexus_plugin_api",
    reason="the voice channel is served by nexus-plugin-api, which is not installed",
)
pytest.importorskip(
    "nexus_plugin_cli",
    reason="these tests run the nexus command of nexus-plugin-cli, which is not installed",
)
import websockets
from voice_support import (
    EXAMPLES,
    VOICE_SECTION,
    clean_env,
    nexus_command,
    nexus_serve,
    require_audio_tools,
    speak,
    write_config,
)

from nexus_plugin_voice.audio import to_pcm
from nexus_plugin_voice.config import VoiceConfig
from nexus_plugin_voice.engines import PocketsphinxEngine
from nexus_plugin_voice.grammar import build_grammar

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

HELLO = EXAMPLES / "hello.py"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_audio_tools()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("served")
    write_config(workdir, f"sqlite:///{workdir}/nexus.db")
    env = clean_env(workdir)
    with nexus_serve(HELLO, workdir, env) as url:
        yield url, workdir, env


def nexus(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*nexus_command(), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr, done
    return done


async def test_a_voice_run_on_sse_in_nexus_runs_and_in_a_session_shared_with_rest(served):
    url, workdir, env = served
    seen: list[dict] = []
    connected = anyio.Event()
    finished = anyio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def follow() -> None:
            async with http.stream("GET", "/events", params={"types": "run.*"}) as stream:
                connected.set()
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        seen.append(event)
                        if event["type"] == "run.completed":
                            finished.set()
                            return

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            with anyio.fail_after(30):
                await connected.wait()
            answer = await http.post("/voice", content=speak("greet grace excited"))
            assert answer.status_code == 200, answer.text
            run_id = answer.headers["x-nexus-run"]
            session = answer.headers["x-nexus-session"]
            with anyio.fail_after(30):
                await finished.wait()
        mine = [e for e in seen if e.get("run_id") == run_id]
        assert [e["type"] for e in mine] == ["run.started", "run.completed"]
        assert all(e["channel"] == "voice" and e["session_id"] == session for e in mine)

        # The same session over REST, then back by voice: "status" is the REST run.
        rest = await http.post(
            "/workflows/greet/runs", json={"name": "Alan"}, headers={"x-nexus-session": session}
        )
        assert rest.status_code == 200, rest.text
        rest_run = rest.json()["run_id"]
        status = await http.post(
            "/voice",
            content=speak("what is the status of my last run"),
            headers={"accept": "application/json", "x-nexus-session": session},
        )
        body = status.json()
        assert body["intent"] == "status" and body["run"]["run_id"] == rest_run, body
        repeat = await http.post(
            "/voice",
            content=speak("repeat that"),
            headers={"accept": "application/json", "x-nexus-session": session},
        )
        assert repeat.json()["reply"] == "Hello, Alan."

    listed = await anyio.to_thread.run_sync(
        lambda: nexus("--url", url, "--output", "json", "runs", env=env, cwd=workdir)
    )
    assert listed.returncode == 0, listed
    assert run_id in listed.stdout and rest_run in listed.stdout


async def test_the_reply_audio_says_the_answer(served):
    """The reply WAV, transcribed back with a grammar of the replies, is the reply text."""
    url, _workdir, _env = served
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        answer = await http.post("/voice", content=speak("greet ada"))
    assert answer.headers["content-type"] == "audio/wav"
    config = msgspec.convert(VOICE_SECTION, VoiceConfig)
    engine = PocketsphinxEngine(config)
    # What a greeting can say: "hello" and a name of the vocabulary.
    replies = build_grammar([SaysHello()], config, known=engine.known)
    pcm = await to_pcm(answer.content)
    heard = await engine.transcribe(pcm, replies)
    assert heard.text == "hello ada", heard


class SaysHello:
    """A workflow-shaped description of the greeting reply, for a grammar of replies."""

    name = "hello"
    input_schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    }


async def test_the_cli_says_a_file_and_prints_the_grammar(served, tmp_path):
    url, workdir, env = served
    request = tmp_path / "request.wav"
    request.write_bytes(speak("greet alan"))
    out = tmp_path / "reply.wav"
    said = await anyio.to_thread.run_sync(
        lambda: nexus(
            "voice", "say", str(request), "--url", url, "--out", str(out), env=env, cwd=workdir
        )
    )
    assert said.returncode == 0, said
    assert "heard:   greet alan" in said.stdout and "outcome: completed" in said.stdout
    assert out.read_bytes().startswith(b"RIFF")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    refused = await anyio.to_thread.run_sync(
        lambda: nexus("voice", "say", str(bad), "--url", url, env=env, cwd=workdir)
    )
    assert refused.returncode == 2 and "415" in refused.stderr, refused
    grammar = await anyio.to_thread.run_sync(
        lambda: nexus("voice", "grammar", str(HELLO), env=env, cwd=workdir)
    )
    assert grammar.returncode == 0, grammar
    assert grammar.stdout.startswith("#JSGF V1.0;") and "greet" in grammar.stdout


async def test_the_websocket_streams_partials_the_result_and_the_reply(served):
    url, _workdir, _env = served
    pcm = speak("greet grace")[44:]
    ws_url = url.replace("http://", "ws://") + "/voice/stream"
    async with websockets.connect(ws_url, max_size=None) as socket:
        for second in range(2):  # two utterances on one connection, one session
            for start in range(0, len(pcm), 3200):  # 100 ms chunks
                await socket.send(pcm[start : start + 3200])
            await socket.send(json.dumps({"type": "end"}))
            partials = []
            with anyio.fail_after(60):
                while True:
                    message = await socket.recv()
                    if isinstance(message, bytes):
                        break
                    frame = json.loads(message)
                    if frame["type"] == "partial":
                        partials.append(frame["text"])
                    elif frame["type"] == "result":
                        result = frame
            assert message.startswith(b"RIFF")
            assert partials and partials[-1].startswith("greet")
            assert result["transcript"] == "greet grace" and result["outcome"] == "completed"
            if second == 0:
                session = result["session_id"]
            else:
                assert result["session_id"] == session
