"""The hooks this plugin adds: speech-to-text and text-to-speech engines.

Added through ``nexus_add_hookspecs`` when the voice plugin is registered. A
plugin contributing an engine implements them with
``@hookimpl(optionalhook=True)``, so it still loads without the voice plugin::

    from nexus_core import hookimpl
    from nexus_plugin_voice.engines import EngineSpec

    @hookimpl(optionalhook=True)
    def nexus_voice_stt_engines():
        return [EngineSpec(name="vosk", factory="my_plugin.vosk:VoskEngine")]

and selects it with ``stt = "vosk"`` in ``[nexus.channels.voice]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core import hookspec

if TYPE_CHECKING:
    from .engines import EngineSpec

__all__ = ["nexus_voice_stt_engines", "nexus_voice_tts_engines"]


@hookspec
def nexus_voice_stt_engines() -> list[EngineSpec]:
    """Return the speech-to-text engines this plugin contributes.

    Called when the voice channel starts. Each
    :class:`~nexus_plugin_voice.engines.EngineSpec` names the engine and a
    ``factory`` (a callable or its ``"module:attr"``): ``factory(config)``,
    with the channel's :class:`~nexus_plugin_voice.config.VoiceConfig`,
    returns a :class:`~nexus_plugin_voice.engines.SpeechToText`. The engine
    named by ``stt`` in the config is used; an unknown name is an error
    listing the installed ones. The built-in engine is ``pocketsphinx``.

    .. versionadded:: 0.1
    """


@hookspec
def nexus_voice_tts_engines() -> list[EngineSpec]:
    """Return the text-to-speech engines this plugin contributes.

    As :func:`nexus_voice_stt_engines`; ``factory(config)`` returns a
    :class:`~nexus_plugin_voice.engines.TextToSpeech`, selected by ``tts``.
    The built-in engine is ``espeak-ng``.

    .. versionadded:: 0.1
    """
