"""``RedisBackend``: the cache (with rate-limit buckets) and session roles on Redis.

Chosen by ``redis://`` and ``rediss://`` URLs for the roles it serves
(``[nexus.storage] cache = "redis://..."``, ``sessions = "redis://..."``);
runs, the event log, audit and credentials stay in a records store
(SQLite, PostgreSQL). See :mod:`nexus_plugin_redis.connection` for the URL's
settings.

Layout (``P`` is the prefix, one hash tag per role):

* ``{P:cache}:v:<key>``: a cached value, a string with Redis's own expiry;
* ``{P:cache}:b:<key>``: a token bucket, a hash ``tokens``/``ts``, taken by
  one Lua script per take on the server's clock (so gateways with skewed
  clocks share one bucket), expiring once it would be full again (a missing
  bucket is a full one);
* ``{P:sessions}:s:<id>``: a session, a hash of its identity as created
  (``i``) and its latest state (``m``), expiring a minute after the
  session does;
* ``{P:sessions}:expiry``: a sorted set of session ids by ``expires_at``,
  which ``expire_sessions`` and ``count_sessions`` read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import msgspec
from nexus_core.plugin import AlreadyExists, Cache, Role, SessionRecord, SessionStore
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from .connection import UNREACHABLE, Breaker, RedisUnavailable, parse_url

__all__ = ["RedisBackend"]

_T = TypeVar("_T")

#: Seconds a session's hash outlives the session (expire_sessions still finds it).
_SESSION_GRACE = 60.0

_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(stored[1])
local ts = tonumber(stored[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
  ts = now
end
local wait = '0'
if tokens >= cost then
  tokens = tokens - cost
elseif rate <= 0 or cost > capacity then
  wait = 'inf'
else
  wait = string.format('%.17g', (cost - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'ts', string.format('%.17g', ts))
if rate > 0 then
  local full_in = (capacity - tokens) / rate
  if full_in < 1e9 then
    redis.call('PEXPIRE', KEYS[1], math.ceil(full_in * 1000) + 1000)
  else
    redis.call('PERSIST', KEYS[1])
  end
end
return wait
"""

_CREATE_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'i', ARGV[2], 'm', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

_SAVE_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'm', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

_EXPIRE_SESSIONS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[2] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return ids
"""

_encode = msgspec.json.Encoder().encode
_decode_session = msgspec.json.Decoder(SessionRecord).decode


class RedisBackend(Cache, SessionStore):
    """The ``cache`` and ``sessions`` roles on one Redis server (see the module docstring).

    ``url`` is a ``redis://`` or ``rediss://`` URL (its settings are in
    :mod:`nexus_plugin_redis.connection`). Every method is atomic across
    processes: a take is one Lua script, so N gateways on one bucket admit
    exactly its capacity plus what refilled. While Redis is unreachable a call
    raises :class:`~nexus_plugin_redis.connection.RedisUnavailable` (HTTP
    503), except as ``rate_limit_errors`` / ``cache_errors`` say, and retries
    back off (:class:`~nexus_plugin_redis.connection.Breaker`).
    """

    roles: ClassVar[frozenset[Role]] = frozenset({"cache", "sessions"})

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = parse_url(url)
        self._redis: Redis | None = None
        self._breaker = Breaker(f"Redis at {self.settings.shown}")
        self._take: AsyncScript | None = None
        self._create: AsyncScript | None = None
        self._save: AsyncScript | None = None
        self._expire: AsyncScript | None = None
        s = self.settings
        self._value = s.key("cache", "v", "")
        self._bucket = s.key("cache", "b", "")
        self._session = s.key("sessions", "s", "")
        self._expiry = s.key("sessions", "expiry")

    def __repr__(self) -> str:
        return f"RedisBackend({self.settings.shown!r})"

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Make the client and register the scripts; Redis need not be up yet."""
        client = self.settings.client()
        self._redis = client
        self._take = client.register_script(_TAKE)
        self._create = client.register_script(_CREATE_SESSION)
        self._save = client.register_script(_SAVE_SESSION)
        self._expire = client.register_script(_EXPIRE_SESSIONS)

    async def close(self) -> None:
        """Close the client's connections."""
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> bool:
        """True when Redis answers; raises naming the server when it does not (readiness).

        Tries the server even while other calls back off, and a success ends the backoff.
        """
        breaker = self._breaker
        try:
            await self._client().ping()
        except UNREACHABLE as exc:
            raise breaker.failed(exc) from exc
        breaker.succeeded()
        return True

    @property
    def persistent(self) -> bool:
        """Redis keeps its data across our close and reopen (its own persistence aside)."""
        return True

    def _client(self) -> Redis:
        client = self._redis
        if client is None:
            raise RuntimeError(f"{self!r} is not open")
        return client

    async def _call(self, op: Callable[[Redis], Awaitable[_T]]) -> _T:
        """Run ``op`` on the client; an unreachable server is :class:`RedisUnavailable`."""
        client = self._client()
        breaker = self._breaker
        breaker.check()
        try:
            result = await op(client)
        except UNREACHABLE as exc:
            raise breaker.failed(exc) from exc
        except ResponseError as exc:  # out of memory, a read-only replica, an ACL refusal...
            raise RedisUnavailable(f"{breaker.what} refused the command: {exc}") from exc
        breaker.succeeded()
        return result

    # -- cache -----------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        """The value, or None (also while Redis is down, unless ``cache_errors=closed``)."""
        try:
            value = await self._call(lambda r: r.get(self._value + key))
        except RedisUnavailable:
            if self.settings.cache_errors == "closed":
                raise
            return None
        if isinstance(value, str):  # only with decode_responses=True in the URL
            return value.encode()
        return value

    async def cache_set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Set a value with Redis's own expiry (dropped while Redis is down, by default)."""
        name = self._value + key
        try:
            if ttl is None:
                await self._call(lambda r: r.set(name, value))
            elif ttl <= 0:
                await self._call(lambda r: r.delete(name))
            else:
                await self._call(lambda r: r.set(name, value, px=max(1, math.ceil(ttl * 1000))))
        except RedisUnavailable:
            if self.settings.cache_errors == "closed":
                raise

    async def cache_delete(self, key: str) -> None:
        """Remove a value (raises while Redis is down: a stale value must not survive)."""
        await self._call(lambda r: r.delete(self._value + key))

    async def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> float:
        """One Lua script: refill by the server's clock, then take ``cost`` or say the wait.

        While Redis is down: :class:`RedisUnavailable` (``rate_limit_errors=closed``,
        the default) or 0.0, the request let through (``open``).
        """
        script = self._take
        assert script is not None, "not open"
        args = (repr(float(capacity)), repr(float(refill_per_second)), repr(float(cost)))
        try:
            raw = await self._call(lambda r: script(keys=[self._bucket + key], args=args))
        except RedisUnavailable:
            if self.settings.rate_limit_errors == "open":
                return 0.0
            raise
        wait = raw.decode() if isinstance(raw, bytes) else str(raw)
        return math.inf if wait == "inf" else float(wait)

    # -- sessions --------------------------------------------------------------

    def _expire_at_ms(self, session: SessionRecord) -> int:
        return math.ceil((session.expires_at + _SESSION_GRACE) * 1000)

    async def create_session(self, session: SessionRecord) -> None:
        """Store a new session; an id in use raises ``AlreadyExists``."""
        script = self._create
        assert script is not None, "not open"
        args = (
            session.id,
            _encode(session),
            repr(float(session.expires_at)),
            self._expire_at_ms(session),
        )
        keys = [self._session + session.id, self._expiry]
        created = await self._call(lambda r: script(keys=keys, args=args))
        if not created:
            raise AlreadyExists(f"session {session.id!r} already exists")

    async def get_session(
        self, session_id: str, *, tenant: str | None = None
    ) -> SessionRecord | None:
        """The session, or None if unknown, of another tenant, or expired."""
        raw: list[Any] = await self._call(lambda r: r.hmget(self._session + session_id, "i", "m"))
        ident, latest = raw
        if ident is None or latest is None:
            return None
        record = _decode_session(latest)
        first = _decode_session(ident)
        record.tenant = first.tenant
        record.principal = first.principal
        record.created_at = first.created_at
        if tenant is not None and record.tenant != tenant:
            return None
        if record.expires_at <= time.time():
            return None
        return record

    async def save_session(self, session: SessionRecord) -> None:
        """Replace the mutable fields (identity is kept as created); unknown ids do nothing."""
        script = self._save
        assert script is not None, "not open"
        args = (
            session.id,
            _encode(session),
            repr(float(session.expires_at)),
            self._expire_at_ms(session),
        )
        keys = [self._session + session.id, self._expiry]
        await self._call(lambda r: script(keys=keys, args=args))

    async def delete_session(self, session_id: str) -> None:
        """Remove a session and its expiry entry (no error if unknown)."""

        async def delete(r: Redis) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.delete(self._session + session_id)
                pipe.zrem(self._expiry, session_id)
                await pipe.execute()

        await self._call(delete)

    async def expire_sessions(self, now: float) -> list[str]:
        """Delete the sessions expired at ``now``, atomically (each id is reported once)."""
        script = self._expire
        assert script is not None, "not open"
        ids: list[bytes] = await self._call(
            lambda r: script(keys=[self._expiry], args=(repr(float(now)), self._session))
        )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def count_sessions(self, now: float) -> int:
        """Sessions whose ``expires_at`` is after ``now``."""
        count: int = await self._call(lambda r: r.zcount(self._expiry, f"({now!r}", "+inf"))
        return count
