"""``nexus.plugins.redis``: the settings of the Redis event bus."""

from __future__ import annotations

from typing import Annotated

import msgspec
from nexus_core.plugin import ConfigStruct

__all__ = ["RedisConfig"]


class RedisConfig(ConfigStruct, kw_only=True):
    """``[nexus.plugins.redis]``: the event bus on Redis Streams.

    ``url`` (``redis://`` or ``rediss://``, with ACL user, password, TLS
    settings and ``prefix`` as in storage URLs) turns the bus on; left unset,
    the host's bus is the one it would have without this plugin (PostgreSQL's
    LISTEN/NOTIFY bus when that plugin is installed, else the in-process
    one). ``stream_maxlen`` bounds the stream (approximately, ``MAXLEN ~``):
    older events are replayed from the durable event log.
    ``stream_max_age`` (seconds; unset: no age limit) also trims entries
    older than that (``MINID ~``), ``stream_maxlen`` still capping the
    length.
    ``fallback_poll_interval`` is how often the event log is read for
    events the stream did not carry (a publisher that could not reach Redis)
    while the stream is healthy; while it is not, the log is read every
    ``services.events.poll_interval`` seconds as without Redis.
    ``block_ms`` is how long one stream read waits for new entries.
    """

    url: str | None = None
    stream_maxlen: Annotated[int, msgspec.Meta(ge=100)] = 10_000
    stream_max_age: Annotated[float, msgspec.Meta(gt=0)] | None = None
    fallback_poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    block_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 1000

    def __post_init__(self) -> None:
        if self.url is not None:
            from .connection import parse_url

            try:
                parse_url(self.url)
            except ValueError as exc:
                raise ValueError(f"url: {exc}") from None
