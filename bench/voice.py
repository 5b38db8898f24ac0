"""Voice channel latency: end of speech to the first byte of the reply, and transcription speed.

A ``nexus serve`` subprocess serves the workflows of examples/hello.py and
examples/shop.py with the voice plugin (configured as its tests configure it:
plugins/voice/tests/voice_support.py). Every phrase of the test corpus
(plugins/voice/tests/corpus.py) is spoken by espeak-ng in the corpus voices and
sent, and three things are timed from the moment the last byte of speech has
been sent (the end of speech):

* ``POST /voice`` answered with the reply audio (``audio/wav``): transcription,
  ``app.invoke``, reply text and text to speech, up to the first byte of the answer;
* ``POST /voice`` answered with JSON (``Accept: application/json``): the same
  without text to speech;
* the ``/voice/stream`` WebSocket, audio sent in 100 ms chunks as it would be
  spoken: from ``{"type": "end"}`` to the result frame, and to the first byte
  of the reply audio.

The real-time factor of transcription (its time over the audio's length) is
the server's own figure, reported with each JSON answer. The target (issue #18)
is p50 under 300 ms for the first reply byte on the 2-core CI machine.

    python bench/voice.py                  # every corpus phrase, each voice once
    python bench/voice.py --voices 2 --json

Needs espeak-ng and sox on PATH and nexus-plugin-voice (+ api, cli) installed.
Not a test: nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "plugins" / "voice" / "tests"
# bench/http.py would shadow the standard library's http package: drop bench/ itself.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(TESTS))

from corpus import CORPUS, VOICES
from voice_support import (
    clean_env,
    nexus_serve,
    require_audio_tools,
    speak,
    write_config,
)

APP = f"""
import sys
sys.path.insert(0, {str(ROOT / "examples")!r})
from nexus_core import Nexus
import hello, shop

app = Nexus("voice-bench")
for workflow in [*shop.app.workflows.values(), *hello.app.workflows.values()]:
    app.register(workflow)
"""


def _post(host: str, port: int, body: bytes, accept: str) -> tuple[float, float, bytes]:
    """POST /voice on a fresh connection.

    Seconds from the last byte sent to the first byte received (the status
    line), and to the first byte of the reply audio (``RIFF``), and the answer.
    """
    head = (
        f"POST /voice HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: audio/wav\r\n"
        f"Accept: {accept}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head + body)
        sent = time.perf_counter()
        first = sock.recv(65536)
        latency = time.perf_counter() - sent
        audio = latency if b"RIFF" in first else 0.0
        chunks = [first]
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if not audio and b"RIFF" in b"".join(chunks[-2:]):
                audio = time.perf_counter() - sent
    return latency, audio, b"".join(chunks)


def _body(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


async def _stream(url: str, pcm: bytes) -> tuple[float, float, dict[str, Any]]:
    import anyio
    import websockets

    ws_url = url.replace("http://", "ws://") + "/voice/stream"
    async with websockets.connect(ws_url, max_size=None) as ws:
        for start in range(0, len(pcm), 3200):
            await ws.send(pcm[start : start + 3200])
            await anyio.sleep(0.1)  # as fast as it is spoken
        await ws.send(json.dumps({"type": "end"}))
        ended = time.perf_counter()
        result: dict[str, Any] = {}
        to_result = 0.0
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                return to_result, time.perf_counter() - ended, result
            frame = json.loads(message)
            if frame["type"] == "result":
                to_result = time.perf_counter() - ended
                result = frame


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    cut = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else []
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round((cut[98] if cut else ordered[0]) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "n": len(ordered),
    }


def main() -> int:
    """Run the benchmark; print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voices", type=int, default=1, help="voices per phrase (max 5)")
    parser.add_argument("--skip-stream", action="store_true", help="leave out the WebSocket")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    try:
        require_audio_tools()
    except BaseException as exc:  # pytest's skip is a BaseException
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    clips: list[tuple[str, bytes]] = []
    for i, (text, _workflow, _inputs) in enumerate(CORPUS):
        for k in range(max(1, min(args.voices, len(VOICES)))):
            voice, speed = VOICES[(i + k) % len(VOICES)]
            clips.append((text, speak(text, voice, speed)))
    print(f"{len(clips)} utterances; starting nexus serve...", file=sys.stderr)
    wav_latency: list[float] = []
    wav_audio: list[float] = []
    json_latency: list[float] = []
    stream_result: list[float] = []
    stream_audio: list[float] = []
    rtf: list[float] = []
    exact = 0
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        (workdir / "app.py").write_text(APP, encoding="utf-8")
        write_config(workdir, f"sqlite:///{workdir}/nexus.db")
        env = clean_env(workdir)
        with nexus_serve(workdir / "app.py", workdir, env) as url:
            host, port = url.removeprefix("http://").split(":")
            _post(host, int(port), clips[0][1], "audio/wav")  # warm up: engines, grammar
            for text, wav in clips:
                latency, _, response = _post(host, int(port), wav, "application/json")
                body = _body(response)
                json_latency.append(latency)
                exact += body["transcript"] == text
                if body.get("audio_seconds"):
                    rtf.append(body["stt_seconds"] / body["audio_seconds"])
                latency, audio, _ = _post(host, int(port), wav, "audio/wav")
                wav_latency.append(latency)
                wav_audio.append(audio)
            if not args.skip_stream:
                import anyio

                for _text, wav in clips:
                    to_result, to_audio, _ = anyio.run(_stream, url, wav[44:])
                    stream_result.append(to_result)
                    stream_audio.append(to_audio)
    report = {
        "utterances": len(clips),
        "exact_transcripts": exact,
        "post_wav_first_byte": _percentiles(wav_latency),
        "post_wav_first_audio_byte": _percentiles(wav_audio),
        "post_json_first_byte": _percentiles(json_latency),
        "stream_result": _percentiles(stream_result),
        "stream_first_audio_byte": _percentiles(stream_audio),
        "real_time_factor": {
            "p50": round(statistics.median(rtf), 3),
            "p99": round(sorted(rtf)[min(len(rtf) - 1, int(len(rtf) * 0.99))], 3),
        }
        if rtf
        else {},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"utterances: {len(clips)}, exact transcripts: {exact}")
    print(f"{'end of speech to first reply byte':40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, key in [
        ("POST /voice, reply: status line", "post_wav_first_byte"),
        ("POST /voice, reply: first audio byte", "post_wav_first_audio_byte"),
        ("POST /voice, JSON", "post_json_first_byte"),
        ("/voice/stream, result frame", "stream_result"),
        ("/voice/stream, reply audio", "stream_first_audio_byte"),
    ]:
        row = report[key]
        if row:
            print(f"{label:40} {row['p50_ms']:8} {row['p99_ms']:8} {row['max_ms']:8}")
    factor = report["real_time_factor"]
    if factor:
        print(f"transcription real-time factor: p50 {factor['p50']}, p99 {factor['p99']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
