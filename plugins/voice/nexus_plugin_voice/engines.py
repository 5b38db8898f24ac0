"""Speech engines: the contracts, the registry, and the built-in pocketsphinx and espeak-ng.

Engines come from this plugin's hooks (:mod:`nexus_plugin_voice.hookspecs`),
the built-in ones registered through the same hooks as any other. Engine
methods are async; the built-in engines run their blocking work in worker
threads or subprocesses, so the event loop never waits on them.
"""

from __future__ import annotations

import array
import os
import random
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import msgspec
from nexus_core.plugin import Spec, import_string

_audioop: ModuleType | None
try:  # C speed for dithering; gone in Python 3.13 (the pure-Python path then runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop as _audioop
except ImportError:  # pragma: no cover - Python 3.13+
    _audioop = None

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


class EngineSpec(Spec, frozen=True, kw_only=True):
    """A speech engine a plugin contributes: ``factory(config)`` makes it.

    ``factory`` is a ``"module:attr"`` string (imported when the engine is
    chosen) or the callable itself. The host fills in ``plugin``,
    ``distribution`` and ``version``; two engines of one name are a conflict
    naming both plugins.
    """


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


def load_engine(specs: Mapping[str, EngineSpec], name: str, config: VoiceConfig, kind: str) -> Any:
    """Make the engine called ``name`` from ``specs``; an unknown name lists the known ones."""
    spec = specs.get(name)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none"
        raise EngineError(f"no {kind} engine named {name!r}; installed: {known}")
    return import_string(spec.factory)(config)


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

#: Confidence: how much worse (log base 1.0001, per 10 ms frame) the grammar's best
#: path scores than a free phone loop over the same audio. Speech the grammar
#: covers scores close to the phone loop; out-of-grammar speech forced onto the
#: nearest phrase scores far below it. At _SURE confidence is 1, at _LOST 0.
_SURE, _LOST = -5.0, -40.0
#: Below this share of the phone loop's speech frames covered by words, confidence falls.
_COVERED = 0.9
_NOT_SPEECH = frozenset({"(NULL)", "SIL", "<sil>", "<s>", "</s>"})
#: Narrow beams for the phone loop: its best score barely moves, it runs 3x faster.
_PHONE_BEAMS: dict[str, float] = {"beam": 1e-10, "pbeam": 1e-10, "wbeam": 1e-8}


def _noise(length: int, amplitude: int) -> bytes:
    """``length`` bytes of quiet, fixed pseudo-random 16-bit noise (cached, grown as needed)."""
    key = amplitude
    have = _NOISE.get(key, b"")
    if len(have) < length:
        rnd = random.Random(amplitude)
        samples = array.array(
            "h", (rnd.randint(-amplitude, amplitude) for _ in range(length // 2 + 1))
        )
        have = _NOISE[key] = samples.tobytes()
    return have[:length]


_NOISE: dict[int, bytes] = {}


def dither(pcm: bytes, amplitude: int) -> bytes:
    """``pcm`` with quiet noise added (``amplitude`` in 16-bit steps).

    Digital silence (runs of exact zeros, as synthesized speech and some
    recorders produce) throws the recognizer's features off; real microphones
    never give it, and this makes any audio look like theirs.
    """
    if amplitude <= 0 or not pcm:
        return pcm
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    noise = _noise(len(pcm), amplitude)
    if _audioop is not None:
        return bytes(_audioop.add(pcm, noise, 2))
    a, b = array.array("h", pcm), array.array("h", noise)
    return array.array(
        "h", (max(-32768, min(32767, x + y)) for x, y in zip(a, b, strict=True))
    ).tobytes()


class _Decoder:
    """One pocketsphinx decoder: the grammars it has compiled, and a phone loop."""

    def __init__(self, config: VoiceConfig) -> None:
        from pocketsphinx import Decoder, get_model_path

        self.decoder = Decoder(lm=None, logfn=os.devnull, bestpath=False)
        for word, phones in config.pronunciations.items():
            name = word.lower()
            if self.decoder.lookup_word(name) is not None:
                n = 2
                while self.decoder.lookup_word(f"{name}({n})") is not None:
                    n += 1
                name = f"{name}({n})"
            self.decoder.add_word(name, phones, True)
        # The confidence pass: a free phone loop on a decoder of its own, with
        # narrower beams (only its best score is needed, not its phones).
        self.phones = Decoder(
            lm=None,
            logfn=os.devnull,
            allphone=os.path.join(get_model_path(), "en-us-phone.lm.bin"),
            **_PHONE_BEAMS,
        )
        self.logmath = self.decoder.get_logmath()
        self.searches: OrderedDict[str, None] = OrderedDict()

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

    @staticmethod
    def _speech_frames(decoder: Any) -> int:
        """Frames the last search spent in words (not silence, noise or null transitions)."""
        frames = 0
        for segment in decoder.seg() or ():
            word = segment.word
            if word in _NOT_SPEECH or word.startswith(("+", "[", "<")):
                continue
            frames += segment.end_frame - segment.start_frame + 1
        return frames

    def _score(self, decoder: Any) -> float | None:
        hyp = decoder.hyp()
        if hyp is None or hyp.score <= 0:
            return None
        return float(self.logmath.log(hyp.score))

    def result(self, pcm: bytes, started: float, *, phones_done: bool = False) -> Transcript:
        """The finished grammar search's transcript, its confidence from a phone-loop pass.

        ``phones_done``: the phone loop already decoded ``pcm`` (streaming feeds both).
        """
        hyp = self.decoder.hyp()
        seconds = len(pcm) / (2 * SAMPLE_RATE)
        text = hyp.hypstr.strip() if hyp is not None else ""
        grammar_score = self._score(self.decoder)
        grammar_speech = self._speech_frames(self.decoder)
        frames = max(self.decoder.n_frames(), 1)
        if not text or grammar_score is None:
            return Transcript(
                text="", confidence=0.0, seconds=seconds, elapsed=time.perf_counter() - started
            )
        if not phones_done:
            self.phones.start_utt()
            self.phones.process_raw(pcm, False, True)
            self.phones.end_utt()
        free_score = self._score(self.phones)
        free_speech = self._speech_frames(self.phones)
        if free_score is None:
            confidence = 0.0
        else:
            per_frame = (grammar_score - free_score) / frames
            confidence = min(1.0, max(0.0, (per_frame - _LOST) / (_SURE - _LOST)))
            # A short phrase whose words cover little of what the phone loop
            # hears as speech ("view cart" for "tell me a joke about cats"):
            # the rest was passed off as silence.
            coverage = grammar_speech / max(free_speech, 1)
            if coverage < _COVERED:
                confidence *= (coverage / _COVERED) ** 2
        return Transcript(
            text=text,
            confidence=round(confidence, 3),
            seconds=seconds,
            elapsed=time.perf_counter() - started,
        )

    def recognize(self, pcm: bytes, grammar: Grammar) -> Transcript:
        started = time.perf_counter()
        self.use(grammar)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, False, True)
        self.decoder.end_utt()
        return self.result(pcm, started)


class _PocketsphinxStream:
    """Chunks decoded as they come (partial hypotheses); the confidence pass at the end."""

    def __init__(self, engine: PocketsphinxEngine, grammar: Grammar) -> None:
        self.engine = engine
        self.grammar = grammar
        self.decoder: _Decoder | None = None
        self.chunks: list[bytes] = []
        self.elapsed = 0.0

    def _feed(self, pcm: bytes) -> str | None:
        started = time.perf_counter()
        if self.decoder is None:
            self.decoder = self.engine._take()
            self.decoder.use(self.grammar)
            self.decoder.decoder.start_utt()
            self.decoder.phones.start_utt()
        pcm = dither(pcm[: len(pcm) - len(pcm) % 2], self.engine.config.dither)
        self.chunks.append(pcm)
        self.decoder.decoder.process_raw(pcm, False, False)
        # The confidence pass runs along, so little is left when speech ends.
        self.decoder.phones.process_raw(pcm, False, False)
        hyp = self.decoder.decoder.hyp()
        self.elapsed += time.perf_counter() - started
        return hyp.hypstr if hyp is not None else None

    async def feed(self, pcm: bytes) -> str | None:
        """Decode a chunk in a worker thread; the partial transcript."""
        return await anyio.to_thread.run_sync(self._feed, pcm)

    def _finish(self) -> Transcript:
        if self.decoder is None:
            return Transcript(text="", confidence=0.0)
        started = time.perf_counter()
        try:
            self.decoder.decoder.end_utt()
            self.decoder.phones.end_utt()
            result = self.decoder.result(b"".join(self.chunks), started, phones_done=True)
        finally:
            self.engine._give(self.decoder)
            self.decoder = None
            self.chunks = []
        result.elapsed += self.elapsed
        return result

    async def finish(self) -> Transcript:
        """End the utterance: the final transcript."""
        return await anyio.to_thread.run_sync(self._finish)


class PocketsphinxEngine:
    """CMU pocketsphinx with its bundled en-us model, restricted to the JSGF grammar.

    Decoders are pooled (making one takes ~0.1 s); each keeps the grammars it
    compiled, so a caller's grammar is compiled once per decoder. The
    confidence compares the grammar's best path with a free phone loop over
    the same audio, so speech outside the grammar, which the grammar search
    forces onto its nearest phrase, comes out unsure.
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
        decoder = self._take()
        try:
            return decoder.recognize(dither(pcm, self.config.dither), grammar)
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

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        """Speak ``text``, yielding the WAV as espeak-ng writes it (first bytes sooner)."""
        if self.program is None:
            raise EngineError("espeak-ng is not installed (apt-get install espeak-ng)")
        process = await anyio.open_process(
            [self.program, "-v", self.voice, "-s", str(self.speed), "--stdout"]
        )
        async with process:
            assert process.stdin is not None
            assert process.stdout is not None
            await process.stdin.send(text.encode())
            await process.stdin.aclose()
            sent = False
            try:
                while True:
                    chunk = await process.stdout.receive(65536)
                    sent = True
                    yield chunk
            except anyio.EndOfStream:
                pass
            if await process.wait() != 0 and not sent:
                raise EngineError("espeak-ng failed")


def builtin_stt(config: VoiceConfig) -> SpeechToText:
    """Factory of the built-in speech-to-text engine."""
    return PocketsphinxEngine(config)


def builtin_tts(config: VoiceConfig) -> TextToSpeech:
    """Factory of the built-in text-to-speech engine."""
    return EspeakEngine(config)


Factory = Callable[["VoiceConfig"], Any]
