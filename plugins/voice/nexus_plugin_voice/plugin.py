"""Registers the voice channel with the host (entry point ``nexus-plugin-voice``)."""

from __future__ import annotations

from nexus_core import ConfigSectionSpec, hookimpl

__all__ = ["nexus_config_sections"]


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
