"""Redis URLs, clients, key names and the one error a caller sees when Redis is down.

A ``redis://`` (or ``rediss://``, TLS) URL names the server, the database,
the ACL user and password (``redis://user:password@host:6379/0``), and takes
redis-py's own query settings (``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs``, ``socket_timeout``...) plus the
plugin's:

``prefix``
    The first part of every key (default ``nexus``): several applications
    (or tests) share one server on different prefixes.
``rate_limit_errors``
    ``closed`` (default): while Redis is unreachable a rate-limited request
    is refused with :class:`RedisUnavailable` (HTTP 503). ``open``: it is let
    through (and a warning logged).
``cache_errors``
    ``open`` (default): while Redis is unreachable a cache read is a miss and
    a write is dropped. ``closed``: both raise :class:`RedisUnavailable`.

Sessions always raise :class:`RedisUnavailable` when Redis is unreachable:
there is no safe answer without the store.

**Keys and Redis Cluster.** Every key of a role carries one hash tag
(``{nexus:cache}``, ``{nexus:sessions}``, ``{nexus:events}``), so each role's
keys live on one cluster slot and every script touches one slot only.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from nexus_core.errors import ServiceUnavailable
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "UNREACHABLE",
    "Breaker",
    "ErrorPolicy",
    "RedisSettings",
    "RedisUnavailable",
    "parse_url",
    "redacted",
]

_log = logging.getLogger("nexus.redis")

#: What a role does while Redis is unreachable: refuse (``closed``) or carry on (``open``).
ErrorPolicy = Literal["open", "closed"]

#: The redis-py errors that mean "the server cannot be reached now".
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    OSError,
)

_OWN_SETTINGS = ("prefix", "rate_limit_errors", "cache_errors")


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be reached now: HTTP 503, code ``unavailable``, on every channel.

    The message names the server (never its password) and what failed.
    """


class RedisSettings:
    """A parsed ``redis://`` URL: what to connect to, and the plugin's own settings.

    ``client_url`` is the URL redis-py is given (the plugin's settings
    removed); ``shown`` is the URL without its password, for messages.
    """

    def __init__(
        self,
        *,
        url: str,
        client_url: str,
        prefix: str,
        rate_limit_errors: ErrorPolicy,
        cache_errors: ErrorPolicy,
    ) -> None:
        self.url = url
        self.client_url = client_url
        self.prefix = prefix
        self.rate_limit_errors: ErrorPolicy = rate_limit_errors
        self.cache_errors: ErrorPolicy = cache_errors
        self.shown = redacted(client_url)

    def key(self, role: str, *parts: str) -> str:
        """A key of ``role``: ``{prefix:role}:part:part`` (one hash tag per role)."""
        return ":".join(("{" + f"{self.prefix}:{role}" + "}", *parts))

    def client(self, **overrides: Any) -> aioredis.Redis:
        """A new client (a connection pool) for this URL, failing fast when the server is down.

        Timeouts default to 2 s (``socket_timeout``, ``socket_connect_timeout``
        in the URL override them); a command is retried once after a
        connection error, with backoff.
        """
        options: dict[str, Any] = {
            "socket_connect_timeout": 2.0,
            "socket_timeout": 2.0,
            "health_check_interval": 15,
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), 1),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        options.update(overrides)  # settings in the URL's query win over both
        return aioredis.from_url(self.client_url, **options)


def _policy(value: str, name: str, url: str) -> ErrorPolicy:
    if value not in ("open", "closed"):
        raise ValueError(f"{redacted(url)}: {name} must be 'open' or 'closed', got {value!r}")
    return "open" if value == "open" else "closed"


def parse_url(url: str) -> RedisSettings:
    """Parse a ``redis://`` or ``rediss://`` URL; a bad one is a ``ValueError`` naming the part."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{redacted(url)}: not a redis:// or rediss:// URL")
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {name: value for name, value in query if name in _OWN_SETTINGS}
    rest = [(name, value) for name, value in query if name not in _OWN_SETTINGS]
    prefix = own.get("prefix", "nexus")
    if not prefix or any(c in prefix for c in "{}"):
        raise ValueError(f"{redacted(url)}: prefix must be non-empty, without braces")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{redacted(url)}: the database (the URL's path) must be a number")
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    return RedisSettings(
        url=url,
        client_url=client_url,
        prefix=prefix,
        rate_limit_errors=_policy(own.get("rate_limit_errors", "closed"), "rate_limit_errors", url),
        cache_errors=_policy(own.get("cache_errors", "open"), "cache_errors", url),
    )


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class Breaker:
    """Backoff after a failure: while open, calls fail at once instead of waiting on timeouts.

    After a connection failure the next attempt is allowed ``delay`` seconds
    later, the delay doubling (from ``base`` up to ``cap``) while attempts keep
    failing; a success resets it. So a host whose Redis is down answers 503 at
    once and tries to reconnect a few times a second at most.
    """

    def __init__(self, what: str, *, base: float = 0.05, cap: float = 2.0) -> None:
        self.what = what
        self.base = base
        self.cap = cap
        self._delay = 0.0
        self._retry_at = 0.0
        self.last_error: str | None = None

    @property
    def down(self) -> bool:
        """Whether the last attempt failed (Redis is taken to be unreachable)."""
        return self.last_error is not None

    @property
    def delay(self) -> float:
        """The current backoff delay (seconds; 0 while Redis answers)."""
        return self._delay

    def check(self) -> None:
        """Raise :class:`RedisUnavailable` while backing off."""
        if self.last_error is not None and time.monotonic() < self._retry_at:
            raise RedisUnavailable(f"{self.what} is unreachable: {self.last_error}")

    def failed(self, exc: BaseException) -> RedisUnavailable:
        """Record a failure; the error to raise."""
        if self.last_error is None:
            _log.warning("%s is unreachable: %s", self.what, exc)
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._delay = min(self.cap, max(self.base, self._delay * 2))
        self._retry_at = time.monotonic() + self._delay
        return RedisUnavailable(f"{self.what} is unreachable: {self.last_error}")

    def succeeded(self) -> None:
        """Record a success (reconnected)."""
        if self.last_error is not None:
            _log.warning("%s is reachable again", self.what)
        self.last_error = None
        self._delay = 0.0
