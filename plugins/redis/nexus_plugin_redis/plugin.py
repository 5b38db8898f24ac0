"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

Import-light on purpose: nothing here imports redis; the host imports
``nexus_plugin_redis.storage`` / ``.bus`` only when a Redis URL is used.
"""

from __future__ import annotations

from typing import Any

from nexus_core import hookimpl
from nexus_core.plugin import ConfigSectionSpec, EventBusSpec, StorageBackendSpec

__all__ = [
    "nexus_config_sections",
    "nexus_event_buses",
    "nexus_storage_backends",
    "redis_configured",
]

#: The bus's priority: above the in-process bus (0), so installing the plugin is enough.
BUS_PRIORITY = 10


@hookimpl
def nexus_storage_backends() -> list[StorageBackendSpec]:
    """``redis://`` and ``rediss://`` (TLS): the ``cache`` and ``sessions`` roles."""
    return [
        StorageBackendSpec(
            name="redis",
            schemes=("redis", "rediss"),
            factory="nexus_plugin_redis.storage:RedisBackend",
            description="Redis: shared rate-limit buckets, cache and sessions.",
        )
    ]


@hookimpl
def nexus_event_buses() -> list[EventBusSpec]:
    """The Redis Streams bus: every instance's live subscribers hear every instance's events."""
    return [
        EventBusSpec(
            name="redis",
            factory="nexus_plugin_redis.bus:RedisEventBus",
            # Asked first: a host without a Redis URL never imports redis for it.
            usable="nexus_plugin_redis.plugin:redis_configured",
            description="Redis Streams fan-out across instances (set nexus.plugins.redis.url).",
            priority=BUS_PRIORITY,
        )
    ]


@hookimpl
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """``nexus.plugins.redis``: the bus's URL, stream bound and polling fallback."""
    return [
        ConfigSectionSpec(
            name="plugins.redis",
            factory="nexus_plugin_redis.config:RedisConfig",
            description="The Redis event bus.",
        )
    ]


def redis_configured(app: Any) -> bool:
    """Whether ``app`` has a Redis URL (``[nexus.plugins.redis] url``): the bus serves only then."""
    return app.config.section("plugins.redis").url is not None
