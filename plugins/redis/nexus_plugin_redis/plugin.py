"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

Import-light on purpose: nothing here imports redis; the host imports
``nexus_plugin_redis.storage`` / ``.bus`` only when a Redis URL is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexus_core import hookimpl
from nexus_core.plugin import ConfigSectionSpec, EventBusSpec, StorageBackendSpec

if TYPE_CHECKING:
    from .bus import RedisEventBus

__all__ = [
    "RedisBusChoice",
    "nexus_config_sections",
    "nexus_event_buses",
    "nexus_storage_backends",
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
            factory="nexus_plugin_redis.plugin:RedisBusChoice",
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


class RedisBusChoice:
    """What the host loads to choose its bus: it says no without importing redis.

    Every host start asks each installed bus whether it is usable; importing
    ``redis`` to answer no (no URL set) was a fifth of ``nexus serve``'s
    start-up (bench/startup.py). :class:`~nexus_plugin_redis.bus.RedisEventBus`
    is imported once the answer is yes.
    """

    @staticmethod
    def usable(app: Any) -> bool:
        """Only with a Redis URL (``[nexus.plugins.redis] url``), as ``RedisEventBus.usable``."""
        return app.config.section("plugins.redis").url is not None

    @staticmethod
    def from_app(app: Any) -> RedisEventBus:
        """The Redis Streams bus for ``app`` (``RedisEventBus.from_app``)."""
        from .bus import RedisEventBus

        return RedisEventBus.from_app(app)
