"""nexus-plugin-redis: an event bus on Redis Streams, shared rate limits, sessions, cache.

Installing the plugin registers:

* the ``redis://`` / ``rediss://`` storage backend
  (:class:`~nexus_plugin_redis.storage.RedisBackend`) for the ``cache`` and
  ``sessions`` roles;
* the Redis event bus (:class:`~nexus_plugin_redis.bus.RedisEventBus`,
  priority 10, above the in-process bus), active when
  ``[nexus.plugins.redis] url`` is set;
* the config section ``nexus.plugins.redis``
  (:class:`~nexus_plugin_redis.config.RedisConfig`).

Nothing here imports redis: the host loads the modules above when it uses them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
