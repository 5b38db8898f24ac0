"""``nexus.channels.voice``: the voice channel's settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from nexus_core.plugin import ConfigError, ConfigStruct

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["DEFAULT_VOCABULARY", "VoiceConfig", "WorkflowVoice", "voice_config"]

#: Words free-text inputs may use when no ``vocabulary`` is configured.
DEFAULT_VOCABULARY = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "world",
    "everyone",
    "friend",
]


class WorkflowVoice(ConfigStruct, kw_only=True):
    """How one workflow is spoken to and answers (``[nexus.channels.voice.workflows.NAME]``).

    ``aliases``
        other ways to say the workflow's name ("say hello to" for ``greet``);
        the name itself (underscores as spaces) always works.
    ``reply``
        the reply template, ``str.format`` over the output: ``{output}`` is
        the whole output spoken, ``{total_cents}`` a field of it (numbers and
        units spoken naturally).
    ``defaults``
        inputs a caller does not say (a catalog URL), merged under what was said.
    ``hidden``
        leave the workflow out of the grammar.
    """

    aliases: list[str] = []
    reply: str | None = None
    defaults: dict[str, Any] = {}
    hidden: bool = False


class VoiceConfig(ConfigStruct, kw_only=True):
    """Settings of the voice channel (``[nexus.channels.voice]`` in ``nexus.toml``).

    ``path``
        where the API server mounts the channel (``POST /voice``,
        ``/voice/stream``).
    ``stt`` / ``tts``
        the speech-to-text and text-to-speech engines, by name (built in:
        ``pocketsphinx``, ``espeak-ng``; plugins add more).
    ``voice`` / ``speed``
        the espeak-ng voice and words per minute of replies.
    ``confidence_threshold``
        below this (0..1) the caller is asked to repeat and nothing runs.
    ``dither``
        amplitude of the quiet noise added before recognition (0: none), so
        digital silence does not throw the recognizer off.
    ``max_bytes`` / ``max_seconds``
        the largest request body and the longest audio accepted (4xx beyond).
    ``vocabulary``
        the words free-text inputs may be made of, written as they should
        reach the workflow ("Ada"); spoken lower-case.
    ``max_free_words``
        how many vocabulary words one free-text input may take.
    ``values``
        spoken phrases for the values of an input, by input name, for inputs
        whose schema has a pattern (``sku = {"mug" = "MUG-001"}``) or to say
        enum values otherwise (``country = {"germany" = "DE"}``).
    ``pronunciations``
        extra dictionary entries: word -> ARPAbet phones (``"AE D AH"``).
    ``max_reply_words``
        longer replies are cut and end with "the rest is in the run".
    ``currency``
        how ``*_cents`` amounts are spoken ("12 euros and 50 cents").
    ``workflows``
        per-workflow aliases, reply templates and defaults.
    ``preload``
        load the engines when the server starts rather than at the first
        voice request. Off by default: the recognizer's model takes ~60 MB, so
        a gateway that has the plugin installed but hears no speech stays
        small; the first request then waits for it (about 0.1-0.3 s).
    """

    path: str = "/voice"
    preload: bool = False
    stt: str = "pocketsphinx"
    tts: str = "espeak-ng"
    voice: str = "en-us"
    speed: int = 175
    confidence_threshold: float = 0.45
    dither: int = 8
    max_bytes: int = 10_000_000
    max_seconds: float = 60.0
    vocabulary: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_VOCABULARY))
    max_free_words: int = 3
    values: dict[str, dict[str, Any]] = {}
    pronunciations: dict[str, str] = msgspec.field(default_factory=lambda: {"ada": "AE D AH"})
    max_reply_words: int = 40
    currency: str = "euros"
    workflows: dict[str, WorkflowVoice] = {}

    def workflow(self, name: str) -> WorkflowVoice:
        """The settings of workflow ``name`` (defaults when none are configured)."""
        return self.workflows.get(name) or WorkflowVoice()


def voice_config(app: Nexus) -> VoiceConfig:
    """The host's ``channels.voice`` section, or the defaults when it is not registered."""
    try:
        section = app.config.section("channels.voice")
    except ConfigError:
        return VoiceConfig()
    return section if isinstance(section, VoiceConfig) else VoiceConfig()
