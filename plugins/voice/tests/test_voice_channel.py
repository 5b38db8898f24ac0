"""The voice channel end to end: real audio (espeak-ng, sox), a real server, the real engines."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

pytest.importorskip(
    "nexus_plugin_api",
    reason="the voice channel is served by nexus-plugin-api, which is not installed",
)
from api_support import serving
from corpus import COMMANDS, CORPUS, OUT_OF_GRAMMAR, VOICES
from nexus_core import hookimpl
from voice_apps import build
from voice_support import require_audio_tools, sox, speak

from nexus_plugin_voice.audio import wav_bytes
from nexus_plugin_voice.engines import EngineSpec, Transcript
from nexus_plugin_voice.service import voice_service

pytestmark = pytest.mark.anyio

JSON = {"accept": "application/json"}


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_audio_tools()


async def test_corpus_is_heard_exactly_and_read_as_the_right_workflow_and_inputs():
    """Every corpus phrase in a rotating voice and speed, through the real server.

    Counted: exact transcripts; transcripts read as the right workflow with
    the right typed inputs (what the channel would run); and runs, which the
    confidence threshold lets through only when the recognizer is sure.
    """
    app = build()
    grammar = None
    exact = right = ran = wrong_runs = 0
    misses = []
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        for i, (text, workflow, inputs) in enumerate(CORPUS):
            voice, speed = VOICES[i % len(VOICES)]
            answer = await http.post("/voice", content=speak(text, voice, speed), headers=JSON)
            assert answer.status_code == 200
            body = answer.json()
            if grammar is None:
                grammar = await voice_service(app).grammar_for(None)
            exact += body["transcript"] == text
            intent = grammar.parse(body["transcript"])
            read_right = intent is not None and (intent.workflow, intent.inputs) == (
                workflow,
                inputs,
            )
            right += read_right
            if body.get("run") is not None:
                ran += 1
                assert body["inputs"] == intent.inputs  # it ran exactly what it read
                wrong_runs += not read_right
            if not (read_right and body.get("run")):
                misses.append((voice, speed, text, body["transcript"], body["confidence"]))
    print(
        f"\nexact transcripts {exact}/{len(CORPUS)}, right workflow and inputs "
        f"{right}/{len(CORPUS)}, ran {ran} (wrong {wrong_runs})"
    )
    for miss in misses:
        print("  not run, or not right:", miss)
    assert len(CORPUS) >= 40
    # Issue #18: at least 38 exact transcripts with the right workflow and inputs.
    assert exact >= 38 and right >= 38, misses
    # Unsure ones are asked again instead of run: most still run, few wrongly.
    assert ran >= 34 and wrong_runs <= 2, misses


async def test_session_commands_follow_the_last_run_and_replies_are_audio():
    app = build()
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        first = await http.post("/voice", content=speak("greet grace"))
        assert first.status_code == 200 and first.headers["content-type"] == "audio/wav"
        assert first.content.startswith(b"RIFF") and len(first.content) > 10_000
        assert first.headers["x-nexus-outcome"] == "completed"
        session = first.headers["x-nexus-session"]
        run_id = first.headers["x-nexus-run"]
        # The run is the same run on REST, recorded as started by voice.
        rest = (await http.get(f"/runs/{run_id}", headers={"x-nexus-session": session})).json()
        assert rest["output"] == "Hello, Grace."
        listed = (await http.get("/runs", params={"session_id": session})).json()
        assert run_id in str(listed)
        for text, kind in COMMANDS:
            answer = await http.post(
                "/voice", content=speak(text), headers={**JSON, "x-nexus-session": session}
            )
            body = answer.json()
            assert body["intent"] == kind, body
            if kind in ("status", "repeat", "cancel"):
                assert body["run"]["run_id"] == run_id
        repeat = await http.post(
            "/voice", content=speak("repeat that"), headers={**JSON, "x-nexus-session": session}
        )
        assert repeat.json()["reply"] == "Hello, Grace."


def noisy(wav: bytes, volume: float) -> bytes:
    """``wav`` with white noise of ``volume`` mixed in (sox -m)."""
    noise = sox(wav, "-t", "wav", effects=("synth", "whitenoise", "vol", str(volume)))
    with tempfile.TemporaryDirectory() as scratch:
        speech, hiss = Path(scratch) / "speech.wav", Path(scratch) / "noise.wav"
        speech.write_bytes(wav)
        hiss.write_bytes(noise)
        return subprocess.run(
            ["sox", "-m", str(speech), str(hiss), "-t", "wav", "-"],
            check=True,
            capture_output=True,
        ).stdout


async def test_other_formats_are_converted_by_sox():
    app = build()
    flac = sox(speak("greet alan excited", rate=44100), "-t", "flac")
    aiff = sox(speak("view cart", rate=22050), "-t", "aiff")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        for clip, workflow in ((flac, "greet"), (aiff, "view_cart")):
            body = (await http.post("/voice", content=clip, headers=JSON)).json()
            assert body["outcome"] == "completed" and body["workflow"] == workflow, body
        raw = speak("greet ada")[44:]
        body = (
            await http.post(
                "/voice", content=raw, headers={**JSON, "content-type": "audio/L16; rate=16000"}
            )
        ).json()
        assert body["run"]["output"] == "Hello, Ada."


async def test_out_of_grammar_and_noise_never_run_a_workflow():
    app = build()
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        clips = [speak(text) for text in OUT_OF_GRAMMAR]
        clean = speak("greet ada")
        noise = sox(clean, "-t", "wav", effects=("synth", "whitenoise", "vol", "0.8"))
        clips.append(noise)
        # Out-of-grammar speech under noise, mixed by sox.
        clips.extend(noisy(speak(text), 0.05) for text in OUT_OF_GRAMMAR[:3])
        for clip in clips:
            body = (await http.post("/voice", content=clip, headers=JSON)).json()
            assert body["outcome"] not in ("completed", "failed"), body
            assert body.get("run") is None, body
        runs = (await http.get("/runs")).json()
        assert "greet" not in str(runs) and "quote" not in str(runs)


async def test_bad_audio_gets_clear_4xx_and_the_server_stays_up():
    app = build({"max_seconds": 30})
    good = speak("greet ada")
    sized = wav_bytes(good[44:])  # a header that states its length, then cut
    ten_minutes = subprocess.run(  # noqa: ASYNC221 - test set-up, before serving
        ["sox", "-n", "-t", "wav", "-r", "8000", "-e", "u-law", "-c", "1", "-", "trim", "0", "600"],
        check=True,
        capture_output=True,
    ).stdout
    cases = [
        (b"", None, 400, "empty"),
        (b"this is not audio at all", None, 415, "not audio"),
        (sized[: len(sized) // 3], None, 400, "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png", 415, "not audio"),
        (b"RIFF\0\0\0\0WAVEfmt ", None, 400, "truncated"),
        (ten_minutes, None, 413, "longer than"),
        (b"\0" * 50_000_000, "audio/wav", 413, "larger than"),
    ]
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        for body, content_type, status, words in cases:
            headers = {"content-type": content_type} if content_type else {}
            answer = await http.post("/voice", content=body, headers=headers)
            assert answer.status_code == status, (words, answer.text)
            problem = answer.json()
            # (the API server may refuse a huge body itself, in its own problem format)
            assert problem.get("field", "body") == "body" and words in str(problem), problem
        still = await http.post("/voice", content=good, headers=JSON)
        assert still.status_code == 200 and still.json()["outcome"] == "completed"


class FakeEngine:
    """A speech-to-text engine that hears what the test says it hears."""

    name = "fake"
    heard = Transcript(text="greet ada", confidence=0.9)

    def __init__(self, config: object) -> None:
        self.config = config

    def known(self, word: str) -> bool:
        return True

    async def transcribe(self, pcm: bytes, grammar: object) -> Transcript:
        return FakeEngine.heard


class FakePlugin:
    @hookimpl(optionalhook=True)
    def nexus_voice_stt_engines(self) -> list[EngineSpec]:
        return [EngineSpec(name="fake", factory=FakeEngine)]


async def test_an_engine_from_the_hook_and_the_confidence_threshold():
    app = build({"stt": "fake", "confidence_threshold": 0.6}, FakePlugin())
    clip = speak("anything")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        FakeEngine.heard = Transcript(text="greet ada", confidence=0.9)
        body = (await http.post("/voice", content=clip, headers=JSON)).json()
        assert body["outcome"] == "completed" and body["run"]["output"] == "Hello, Ada."
        FakeEngine.heard = Transcript(text="greet ada", confidence=0.3)
        body = (await http.post("/voice", content=clip, headers=JSON)).json()
        assert body["outcome"] == "low_confidence" and body.get("run") is None
        assert "say it again" in body["reply"]
        FakeEngine.heard = Transcript(text="greet ada quote", confidence=0.9)
        body = (await http.post("/voice", content=clip, headers=JSON)).json()
        assert body["outcome"] == "not_understood" and "greet" in body["reply"]
        FakeEngine.heard = Transcript(text="ship fifty grams", confidence=0.9)
        body = (await http.post("/voice", content=clip, headers=JSON)).json()
        # The core's validation reason, spoken: the same words every channel gives.
        assert body["outcome"] == "validation_error" and "country" in body["reply"]
        assert body["error"]["code"] == "validation_error"
