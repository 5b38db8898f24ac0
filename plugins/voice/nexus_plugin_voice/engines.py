"""Speech engines: the contracts, the registry, and the built-in pocketsphinx and espeak-ng.

Engines come from this plugin's hooks (:mod:`nexus_plugin_voice.hookspecs`),
the built-in ones registered through the same hooks as any other. Engine
methods are async; the built-in engines run their blocking work in worker
threads or subprocesses, so the event loop never waits on them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import msgspec

if TYPE_CHECKING:
    from .config import VoiceConfig
    from .grammar import Grammar

__all__ = [
    "SAMPLE_RATE",
    "EngineError",
    "EngineSpec",
    "EspeakEngine",
    "PocketsphinxEngine",
    "SpeechToText",
    "StreamingTranscription",
    "TextToSpeech",
    "Transcript",
    "load_engine",
]

#: What every speech-to-text engine receives: 16 kHz mono signed 16-bit little-endian PCM.
SAMPLE_RATE = 16000


class EngineError(RuntimeError):
    """An engine is missing or failed (reported to the caller as a 503)."""


class EngineSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A speech engine a plugin contributes: ``factory(config)`` makes it."""

    name: str
    factory: Any
    description: str = ""


class Transcript(msgspec.Struct, kw_only=True):
    """What an engine heard: the text, how sure it is (0..1), the audio's length."""

    text: str
    confidence: float
    seconds: float = 0.0
    #: Seconds the engine took (for the real-time factor).
    elapsed: float = 0.0


@runtime_checkable
class StreamingTranscription(Protocol):
    """One utterance fed in chunks: partial text as it comes, the transcript at the end."""

    async def feed(self, pcm: bytes) -> str | None:
        """Take a chunk of PCM; return the partial transcript so far (or None)."""
        ...

    async def finish(self) -> Transcript:
        """The end of the utterance: the final transcript."""
        ...


@runtime_checkable
class SpeechToText(Protocol):
    """A speech-to-text engine, restricted to a grammar when it can be."""

    name: str

    def known(self, word: str) -> bool:
        """Whether the engine can hear ``word`` (the grammar leaves other words out)."""
        ...

    async def transcribe(self, pcm: bytes, grammar: Grammar) -> Transcript:
        """Transcribe one utterance of 16 kHz mono 16-bit PCM."""
        ...


@runtime_checkable
class TextToSpeech(Protocol):
    """A text-to-speech engine."""

    name: str

    async def synthesize(self, text: str) -> bytes:
        """``text`` spoken, as a WAV file."""
        ...


def load_engine(specs: list[EngineSpec], name: str, config: VoiceConfig, kind: str) -> Any:
    """Make the engine called ``name`` from ``specs``; an unknown name lists the known ones."""
    for spec in specs:
        if spec.name == name:
            factory = spec.factory
            if isinstance(factory, str):
                module, _, attr = factory.partition(":")
                factory = getattr(importlib.import_module(module), attr)
            return factory(config)
    known = ", ".join(sorted(s.name for s in specs)) or "none"
    raise EngineError(f"no {kind} engine named {name!r}; installed: {known}")


class _Buffered:
    """Streaming over an engine that only transcribes whole utterances."""

    def __init__(self, engine: SpeechToText, grammar: Grammar) -> None:
        self.engine = engine
        self.grammar = grammar
        self.chunks: list[bytes] = []

    async def feed(self, pcm: bytes) -> str | None:
        self.chunks.append(pcm)
        return None

    async def finish(self) -> Transcript:
        return await self.engine.transcribe(b"".join(self.chunks), self.grammar)


def streaming(engine: SpeechToText, grammar: Grammar) -> StreamingTranscription:
    """The engine's own streaming if it has one (``engine.stream(grammar)``), else buffered."""
    stream = getattr(engine, "stream", None)
    if callable(stream):
        return stream(grammar)  # type: ignore[no-any-return]
    return _Buffered(engine, grammar)


# -- pocketsphinx ------------------------------------------------------------------------

#: Per-frame log score (base 1.0001) at which confidence is 1, and at which it is 0.
_SURE, _LOST = -20.0, -70.0


class _Decoder:
    """One pocketsphinx decoder and the grammars (searches) it has compiled."""

    def __init__(self, config: VoiceConfig) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(lm=None, logfn=os.devnull, bestpath=False)
        for word, phones in config.pronunciations.items():
            name = word.lower()
            if self.decoder.lookup_word(name) is not None:
                n = 2
                while self.decoder.lookup_word(f"{name}({n})") is not None:
                    n += 1
                name = f"{name}({n})"
            self.decoder.add_word(name, phones, True)
        self.searches: OrderedDict[str, None] = OrderedDict()
        self.lock = threading.Lock()

    def use(self, grammar: Grammar) -> None:
        key = f"g{abs(hash(grammar.jsgf())):x}"
        if key not in self.searches:
            self.decoder.add_jsgf_string(key, grammar.jsgf())
            self.searches[key] = None
            if len(self.searches) > 32:
                old, _ = self.searches.popitem(last=False)
                self.decoder.remove_search(old)
        else:
            self.searches.move_to_end(key)
        self.decoder.activate_search(key)

    def result(self, seconds: float, started: float) -> Transcript:
        hyp = self.decoder.hyp()
        frames = max(self.decoder.n_frames(), 1)
        if hyp is None or not hyp.hypstr.strip() or hyp.score <= 0:
            return Transcript(
                text="", confidence=0.0, seconds=seconds, elapsed=time.perf_counter() - started
            )
        per_frame = self.decoder.get_logmath().log(hyp.score) / frames
        confidence = min(1.0, max(0.0, (per_frame - _LOST) / (_SURE - _LOST)))
        return Transcript(
            text=hyp.hypstr.strip(),
            confidence=round(confidence, 3),
            seconds=seconds,
            elapsed=time.perf_counter() - started,
        )


class _PocketsphinxStream:
    def __init__(self, engine: PocketsphinxEngine, grammar: Grammar) -> None:
        self.engine = engine
        self.grammar = grammar
        self.decoder: _Decoder | None = None
        self.bytes = 0
        self.started = 0.0
        self.elapsed = 0.0

    def _feed(self, pcm: bytes) -> str | None:
        if self.decoder is None:
            self.decoder = self.engine._take()
            self.decoder.lock.acquire()
            self.decoder.use(self.grammar)
            self.decoder.decoder.start_utt()
        started = time.perf_counter()
        self.decoder.decoder.process_raw(pcm, False, False)
        self.bytes += len(pcm)
        hyp = self.decoder.decoder.hyp()
        self.elapsed += time.perf_counter() - started
        return hyp.hypstr if hyp is not None else None

    async def feed(self, pcm: bytes) -> str | None:
        return await anyio.to_thread.run_sync(self._feed, pcm)

    def _finish(self) -> Transcript:
        if self.decoder is None:
            return Transcript(text="", confidence=0.0)
        started = time.perf_counter()
        try:
            self.decoder.decoder.end_utt()
            result = self.decoder.result(self.bytes / (2 * SAMPLE_RATE), started)
        finally:
            self.decoder.lock.release()
            self.engine._give(self.decoder)
            self.decoder = None
        result.elapsed += self.elapsed
        return result

    async def finish(self) -> Transcript:
        return await anyio.to_thread.run_sync(self._finish)


class PocketsphinxEngine:
    """CMU pocketsphinx with its bundled en-us model, restricted to the JSGF grammar.

    Decoders are pooled (making one takes ~0.1 s); each keeps the grammars it
    compiled, so a caller's grammar is compiled once per decoder.
    """

    name = "pocketsphinx"

    def __init__(self, config: VoiceConfig) -> None:
        try:
            import pocketsphinx  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a dependency
            raise EngineError(f"pocketsphinx is not installed: {exc}") from None
        self.config = config
        self._idle: list[_Decoder] = [_Decoder(config)]
        self._pool_lock = threading.Lock()
        self._lexicon = self._idle[0].decoder

    def known(self, word: str) -> bool:
        """Whether the dictionary has ``word``."""
        return self._lexicon.lookup_word(word) is not None

    def _take(self) -> _Decoder:
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        return _Decoder(self.config)

    def _give(self, decoder: _Decoder) -> None:
        with self._pool_lock:
            if len(self._idle) < 4:
                self._idle.append(decoder)

    def _transcribe(self, pcm: bytes, grammar: Grammar) -> Transcript:
        started = time.perf_counter()
        decoder = self._take()
        try:
            with decoder.lock:
                decoder.use(grammar)
                decoder.decoder.start_utt()
                decoder.decoder.process_raw(pcm, False, True)
                decoder.decoder.end_utt()
                return decoder.result(len(pcm) / (2 * SAMPLE_RATE), started)
        finally:
            self._give(decoder)

    async def transcribe(self, pcm: bytes, grammar: Grammar) -> Transcript:
        """Decode the whole utterance in a worker thread."""
        return await anyio.to_thread.run_sync(self._transcribe, pcm, grammar)

    def stream(self, grammar: Grammar) -> StreamingTranscription:
        """Decode chunk by chunk, with partial hypotheses."""
        return _PocketsphinxStream(self, grammar)


# -- espeak-ng ---------------------------------------------------------------------------


class EspeakEngine:
    """The ``espeak-ng`` program: text in, a WAV out (its own sample rate, 22050 Hz)."""

    name = "espeak-ng"

    def __init__(self, config: VoiceConfig) -> None:
        self.program = shutil.which("espeak-ng") or shutil.which("espeak")
        self.voice = config.voice
        self.speed = config.speed

    async def synthesize(self, text: str) -> bytes:
        """Speak ``text``, given on stdin so it is never read as an option."""
        if self.program is None:
            raise EngineError("espeak-ng is not installed (apt-get install espeak-ng)")
        result = await anyio.run_process(
            [self.program, "-v", self.voice, "-s", str(self.speed), "--stdout"],
            input=text.encode(),
            check=False,
        )
        if result.returncode != 0 or not result.stdout:
            raise EngineError(
                f"espeak-ng failed: {result.stderr.decode(errors='replace').strip()[:200]}"
            )
        return bytes(result.stdout)


def builtin_stt(config: VoiceConfig) -> SpeechToText:
    """Factory of the built-in speech-to-text engine."""
    return PocketsphinxEngine(config)


def builtin_tts(config: VoiceConfig) -> TextToSpeech:
    """Factory of the built-in text-to-speech engine."""
    return EspeakEngine(config)


Factory = Callable[["VoiceConfig"], Any]
