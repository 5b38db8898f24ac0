"""The test host: hello's and shop's workflows behind the API and voice plugins."""

from __future__ import annotations

from typing import Any

from nexus_core import Nexus
from voice_support import VOICE_SECTION, load_examples


def build(voice: dict[str, Any] | None = None, *plugins: object, **nexus: Any) -> Nexus:
    """A host on memory storage serving the example workflows (api on an ephemeral port)."""
    app = Nexus(
        "voice-test",
        storage=nexus.pop("storage", "memory://"),
        autoload=False,
        plugins=["nexus_plugin_api.plugin", "nexus_plugin_voice.plugin", *plugins],
        config={
            "channels": {
                "api": {"port": 0, "max_body_bytes": 64_000_000},
                "voice": {**VOICE_SECTION, **(voice or {})},
            },
            **nexus,
        },
        env={},
    )
    for workflow in load_examples():
        app.register(workflow)
    return app
