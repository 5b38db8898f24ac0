"""The voice channel's request path: audio -> transcript -> intent -> ``app.invoke`` -> reply.

One :class:`VoiceService` per host (:func:`voice_service`). It keeps the
engines and a cache of grammars, one per set of workflows a caller may run,
emptied whenever a workflow is registered. Every workflow run goes through
``app.invoke`` with the caller's credentials, the channel ``"voice"`` and the
caller's session; "cancel it", "repeat that" and "what is the status of my
last order" read the session's last run from the host's run store, so they
also work on a run started by another channel in the same session.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

import msgspec
from nexus_core.errors import NexusError
from nexus_core.plugin import collect_specs

from .config import VoiceConfig, voice_config
from .engines import (
    EngineSpec,
    SpeechToText,
    StreamingTranscription,
    TextToSpeech,
    Transcript,
    load_engine,
    streaming,
)
from .grammar import Grammar, Intent, build_grammar, spoken_words
from .replies import render_reply

if TYPE_CHECKING:
    from nexus_core import Nexus
    from nexus_core.security import Credentials, Principal

__all__ = ["VoiceReply", "VoiceService", "voice_service"]

log = logging.getLogger("nexus.voice")

CHANNEL = "voice"


class VoiceReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the channel answers: what it heard, what it did, what it says.

    ``outcome`` is the run's status (``completed``, ``failed``...), the
    error code of a refusal (``permission_denied``, ``validation_error``...),
    or ``not_understood`` / ``low_confidence`` when nothing ran.
    """

    transcript: str
    confidence: float
    outcome: str
    reply: str
    intent: str | None = None
    workflow: str | None = None
    inputs: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    session_id: str | None = None
    #: Seconds: transcription, audio length.
    stt_seconds: float = 0.0
    audio_seconds: float = 0.0


class VoiceService:
    """The engines, the grammars and the request path of one host's voice channel."""

    def __init__(
        self,
        app: Nexus,
        config: VoiceConfig | None = None,
        *,
        stt: SpeechToText | None = None,
        tts: TextToSpeech | None = None,
    ) -> None:
        self.app = app
        self.config = config if config is not None else voice_config(app)
        if stt is None:
            specs = _specs(app, "nexus_voice_stt_engines")
            stt = load_engine(specs, self.config.stt, self.config, "speech-to-text")
        if tts is None:
            specs = _specs(app, "nexus_voice_tts_engines")
            tts = load_engine(specs, self.config.tts, self.config, "text-to-speech")
        self.stt: SpeechToText = stt
        self.tts: TextToSpeech = tts
        self._grammars: dict[tuple[str, ...], Grammar] = {}

    # -- grammar ---------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget the grammars (a workflow was registered)."""
        self._grammars.clear()

    def grammar(self, workflows: list[Any]) -> Grammar:
        """The grammar of ``workflows``, built once per set."""
        key = tuple(sorted(w.name for w in workflows))
        found = self._grammars.get(key)
        if found is None:
            known = getattr(self.stt, "known", None)
            found = build_grammar(workflows, self.config, known=known)
            if len(self._grammars) > 256:
                self._grammars.clear()
            self._grammars[key] = found
        return found

    async def grammar_for(self, principal: Principal | None) -> Grammar:
        """The grammar of the workflows ``principal`` may run on this channel."""
        visible = await self.app.visible_workflows(principal, channel=CHANNEL)
        return self.grammar(list(visible))

    async def authenticate(self, credentials: Credentials) -> Principal:
        """Who is calling (raises the core's ``AuthenticationError``)."""
        return await self.app.security.authenticate(credentials, CHANNEL)

    # -- the request path ------------------------------------------------------------

    async def handle(
        self,
        pcm: bytes,
        *,
        credentials: Credentials,
        principal: Principal,
        session: str | None,
    ) -> VoiceReply:
        """Transcribe ``pcm`` with the caller's grammar and answer it."""
        grammar = await self.grammar_for(principal)
        transcript = await self.stt.transcribe(pcm, grammar)
        return await self.respond(
            transcript,
            grammar,
            credentials=credentials,
            principal=principal,
            session=session,
        )

    def stream(self, grammar: Grammar) -> StreamingTranscription:
        """A streaming transcription with ``grammar`` (the engine's own or a buffered one)."""
        return streaming(self.stt, grammar)

    async def respond(
        self,
        transcript: Transcript,
        grammar: Grammar,
        *,
        credentials: Credentials,
        principal: Principal,
        session: str | None,
    ) -> VoiceReply:
        """Answer what was heard: run the workflow, or a session command, or ask again."""
        base: dict[str, Any] = {
            "transcript": transcript.text,
            "confidence": transcript.confidence,
            "session_id": session,
            "stt_seconds": round(transcript.elapsed, 4),
            "audio_seconds": round(transcript.seconds, 3),
        }
        if not transcript.text or transcript.confidence < self.config.confidence_threshold:
            return VoiceReply(
                **base,
                outcome="low_confidence",
                reply="Sorry, I did not hear that clearly. Please say it again.",
            )
        intent = grammar.parse(transcript.text)
        if intent is None:
            return VoiceReply(**base, outcome="not_understood", reply=self._not_understood(grammar))
        base["intent"] = intent.kind
        if intent.kind == "help":
            return VoiceReply(**base, outcome="help", reply=self._help(grammar))
        if intent.kind == "run":
            return await self._run(intent, base, credentials, principal, session)
        return await self._session_command(intent, base, principal, session)

    async def _run(
        self,
        intent: Intent,
        base: dict[str, Any],
        credentials: Credentials,
        principal: Principal,
        session: str | None,
    ) -> VoiceReply:
        assert intent.workflow is not None
        inputs = {**self.config.workflow(intent.workflow).defaults, **intent.inputs}
        base.update(workflow=intent.workflow, inputs=inputs)
        try:
            if session is None:
                created = await self.app.create_session(
                    channel=CHANNEL, principal=principal, credentials=credentials
                )
                session = base["session_id"] = created.id
            result = await self.app.invoke(
                intent.workflow,
                inputs,
                credentials=credentials,
                channel=CHANNEL,
                session=session,
            )
        except NexusError as exc:
            return _refused(base, exc)
        base["session_id"] = result.session_id or session
        run = msgspec.to_builtins(result)
        if result.status == "completed":
            reply = render_reply(intent.workflow, result.output, self.config, result.run_id)
        elif result.error is not None:
            reply = f"The {_say(intent.workflow)} run {result.status}: {result.error.message}"
        else:
            reply = f"The {_say(intent.workflow)} run is {result.status}."
        return VoiceReply(**base, outcome=result.status, reply=reply, run=run)

    async def _last_run(
        self, principal: Principal, session: str | None, workflow: str | None
    ) -> Any:
        if session is None:
            return None
        runs = await self.app.list_runs(
            principal=principal, session_id=session, workflow=workflow, limit=1
        )
        return runs[0] if runs else None

    async def _session_command(
        self,
        intent: Intent,
        base: dict[str, Any],
        principal: Principal,
        session: str | None,
    ) -> VoiceReply:
        try:
            record = await self._last_run(principal, session, intent.workflow)
            what = _say(intent.workflow) if intent.workflow else "run"
            if record is None:
                where = "this session" if session else "this conversation (no session was given)"
                return VoiceReply(
                    **base,
                    outcome="no_run",
                    workflow=intent.workflow,
                    reply=f"There is no earlier {what} in {where}.",
                )
            base.update(workflow=record.workflow)
            if intent.kind == "cancel":
                cancelled = await self.app.cancel(record.id, principal=principal)
                reply = (
                    f"Cancelled the {_say(record.workflow)} run."
                    if cancelled
                    else f"The last {_say(record.workflow)} run already {record.status}; "
                    "there is nothing to cancel."
                )
                result = await self.app.get_run(record.id, principal=principal)
                return VoiceReply(
                    **base,
                    outcome="cancelled" if cancelled else "not_running",
                    reply=reply,
                    run=msgspec.to_builtins(result),
                )
            result = await self.app.get_run(record.id, principal=principal)
            run = msgspec.to_builtins(result)
            if intent.kind == "status":
                reply = f"Your last {_say(record.workflow)} run is {result.status}."
                return VoiceReply(**base, outcome=result.status, reply=reply, run=run)
            # repeat: the last run's reply, said again (nothing runs again)
            if result.status == "completed":
                reply = render_reply(record.workflow, result.output, self.config, result.run_id)
            else:
                reply = f"Your last {_say(record.workflow)} run is {result.status}."
            return VoiceReply(**base, outcome="repeated", reply=reply, run=run)
        except NexusError as exc:
            return _refused(base, exc)

    def _names(self, grammar: Grammar) -> str:
        names = [_say(name) for name in grammar.workflows]
        if not names:
            return "nothing: no workflow is open to you"
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]

    def _not_understood(self, grammar: Grammar) -> str:
        return f"Sorry, I did not catch a workflow name; you can say: {self._names(grammar)}."

    def _help(self, grammar: Grammar) -> str:
        return (
            f"You can say: {self._names(grammar)}; "
            "or cancel it, repeat that, and what is the status of my last run."
        )

    async def speak(self, text: str) -> bytes:
        """The reply as WAV audio."""
        return await self.tts.synthesize(text)


def _say(workflow: str | None) -> str:
    return " ".join(spoken_words(workflow or "run"))


def _refused(base: dict[str, Any], exc: NexusError) -> VoiceReply:
    """A refusal spoken with the same reason every channel gives."""
    error = msgspec.to_builtins(exc.detail())
    return VoiceReply(**base, outcome=exc.code, reply=f"Sorry, {exc.message}", error=error)


def _specs(source: Any, hook: str) -> dict[str, EngineSpec]:
    """The engines every plugin contributes through ``hook``, by name."""
    return collect_specs(source, hook, EngineSpec)


_SERVICES: weakref.WeakKeyDictionary[Any, VoiceService] = weakref.WeakKeyDictionary()


def voice_service(app: Nexus) -> VoiceService:
    """The host's voice service, made on first use."""
    service = _SERVICES.get(app)
    if service is None:
        started = time.perf_counter()
        service = _SERVICES[app] = VoiceService(app)
        log.debug("voice engines ready in %.3f s", time.perf_counter() - started)
    return service
