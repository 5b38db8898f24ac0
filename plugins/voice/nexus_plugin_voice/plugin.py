"""Registers the voice channel with the host (entry point ``nexus-plugin-voice``).

Import-light: nothing here imports pocketsphinx; the engines load when the
API server starts the ``/voice`` mount. ``nexus_api_mounts`` and
``nexus_cli_commands`` belong to the API and CLI plugins and are optional, so
this plugin loads without them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from nexus_core import CommandSpec, ConfigSectionSpec, HttpMountSpec, hookimpl

from . import hookspecs
from .engines import EngineSpec

if TYPE_CHECKING:
    import pluggy
    from nexus_core import Nexus, Workflow

__all__ = [
    "nexus_add_hookspecs",
    "nexus_api_mounts",
    "nexus_cli_commands",
    "nexus_config_sections",
    "nexus_voice_stt_engines",
    "nexus_voice_tts_engines",
    "nexus_workflow_registered",
]


@hookimpl
def nexus_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add the engine hooks (:mod:`nexus_plugin_voice.hookspecs`)."""
    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """``[nexus.channels.voice]``."""
    return [
        ConfigSectionSpec(
            name="channels.voice",
            factory="nexus_plugin_voice.config:VoiceConfig",
            description="Voice channel: engines, limits, vocabulary, per-workflow replies.",
        )
    ]


@hookimpl(optionalhook=True)
def nexus_voice_stt_engines() -> list[EngineSpec]:
    """The built-in ``pocketsphinx`` engine."""
    return [
        EngineSpec(
            name="pocketsphinx",
            factory="nexus_plugin_voice.engines:builtin_stt",
            description="CMU pocketsphinx, en-us, restricted to the workflows' grammar.",
        )
    ]


@hookimpl(optionalhook=True)
def nexus_voice_tts_engines() -> list[EngineSpec]:
    """The built-in ``espeak-ng`` engine."""
    return [
        EngineSpec(
            name="espeak-ng",
            factory="nexus_plugin_voice.engines:builtin_tts",
            description="The espeak-ng program.",
        )
    ]


@hookimpl(optionalhook=True)
def nexus_api_mounts(app: Nexus) -> list[HttpMountSpec]:
    """Mount ``POST /voice`` and ``/voice/stream`` on the API server."""
    from .config import voice_config

    return [
        HttpMountSpec(
            name="voice",
            path=voice_config(app).path,
            factory="nexus_plugin_voice.asgi:make_asgi",
        )
    ]


@hookimpl(optionalhook=True)
def nexus_cli_commands() -> list[CommandSpec]:
    """``nexus voice say FILE`` and ``nexus voice grammar``."""
    return [
        CommandSpec(
            name="voice",
            factory="nexus_plugin_voice.cli:voice_app",
            description="Speak to a served app (say FILE.wav) or print its voice grammar.",
        )
    ]


@hookimpl
def nexus_workflow_registered(app: Nexus, workflow: Workflow) -> None:
    """A new workflow: the grammars are built again on the next request."""
    service_module = sys.modules.get(f"{__package__}.service")
    if service_module is None:  # never imported: no service, no grammar to rebuild
        return
    service = service_module._SERVICES.get(app)
    if service is not None:
        service.invalidate()
