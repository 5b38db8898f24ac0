"""Limits: input size/depth/length before validation, token-bucket rate limits, client addresses."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from typing import Any

import msgspec

from ..config import ConfigError, InputLimitsConfig, RateLimitConfig, RateLimitRule
from ..errors import FieldError, InputLimitExceeded, RateLimited
from ..storage.base import Storage
from .principal import Principal

__all__ = ["InputLimits", "RateLimiter", "client_address", "parse_networks", "take_bucket"]

_KEY = "nexus.services.security"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- input limits -------------------------------------------------------------------


class InputLimits:
    """Payload size, nesting depth and string length, checked before validation.

    Inputs may be raw JSON (``bytes``/``str``: the byte size is checked before
    decoding) or an object (its JSON encoding is measured). Depth counts
    nested objects and arrays (``{"a": [1]}`` has depth 2); string length counts
    characters of values and keys.
    """

    def __init__(self, config: InputLimitsConfig) -> None:
        self.max_bytes = config.max_payload_bytes
        self.max_depth = config.max_depth
        self.max_string = config.max_string_length

    def check(self, inputs: Any) -> None:
        """Raise :class:`InputLimitExceeded` naming the limit and the path at fault."""
        if inputs is None:
            return
        if isinstance(inputs, (bytes, bytearray, memoryview, str)):
            raw = inputs.encode("utf-8", "surrogatepass") if isinstance(inputs, str) else inputs
            self._size(len(raw))
            if self.max_depth is None and self.max_string is None:
                return
            try:
                value = msgspec.json.decode(bytes(raw))
            except RecursionError:
                raise self._deep("") from None
            except msgspec.DecodeError:
                return  # not JSON: validation says so
        else:
            try:
                value = msgspec.to_builtins(inputs)
            except RecursionError:
                raise self._deep("") from None
            except (TypeError, ValueError):
                return  # not plain data: validation says so
            if self.max_bytes is not None:
                try:
                    size = len(msgspec.json.encode(value))
                except (TypeError, ValueError, RecursionError):
                    size = 0
                self._size(size)
        self._walk(value)

    def _size(self, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            reason = f"the payload is {size} bytes, over max_payload_bytes ({self.max_bytes})"
            raise _exceeded("max_payload_bytes", "", reason)

    def _deep(self, path: str) -> InputLimitExceeded:
        reason = f"nested deeper than max_depth ({self.max_depth})"
        return _exceeded("max_depth", path, reason)

    def _long(self, path: str, length: int, what: str) -> InputLimitExceeded:
        reason = f"{what} of {length} characters is over max_string_length ({self.max_string})"
        return _exceeded("max_string_length", path, reason)

    def _walk(self, value: Any) -> None:
        max_depth, max_string = self.max_depth, self.max_string
        stack: list[tuple[Any, int, str]] = [(value, 0, "")]
        while stack:
            item, depth, path = stack.pop()
            if isinstance(item, str):
                if max_string is not None and len(item) > max_string:
                    raise self._long(path, len(item), "a string")
            elif isinstance(item, dict):
                depth += 1
                if max_depth is not None and depth > max_depth:
                    raise self._deep(path)
                for key, sub in item.items():
                    name = str(key)
                    if max_string is not None and len(name) > max_string:
                        raise self._long(path, len(name), "a key")
                    stack.append((sub, depth, f"{path}.{name}" if path else name))
            elif isinstance(item, (list, tuple)):
                depth += 1
                if max_depth is not None and depth > max_depth:
                    raise self._deep(path)
                stack.extend((sub, depth, f"{path}[{i}]") for i, sub in enumerate(item))


def _exceeded(limit: str, path: str, reason: str) -> InputLimitExceeded:
    error = InputLimitExceeded([FieldError(path=path, reason=reason)])
    error.limit = limit  # the API plugin maps max_payload_bytes to 413
    return error


# -- client addresses -------------------------------------------------------------------


def parse_networks(
    entries: Sequence[str], key: str = f"{_KEY}.trusted_proxies"
) -> tuple[_Network, ...]:
    """Parse addresses and CIDR networks; a bad entry is a :class:`ConfigError`."""
    out: list[_Network] = []
    for index, entry in enumerate(entries):
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(
                f"{key}[{index}]: {entry!r} is not an IP address or CIDR network ({exc})",
                key=f"{key}[{index}]",
            ) from exc
    return tuple(out)


def _trusted(address: str, networks: Sequence[_Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(
    client: str | None, forwarded_for: str | None, trusted: Sequence[_Network]
) -> str | None:
    """The caller's address: ``client``, unless it is a trusted proxy.

    Then ``X-Forwarded-For`` is read from the right (the hop our proxy added)
    past every trusted proxy; the first untrusted hop is the client. A header
    from an untrusted peer is ignored: anyone can send one.
    """
    if client is None or not trusted or not forwarded_for or not _trusted(client, trusted):
        return client
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else client


# -- rate limits ----------------------------------------------------------------------------


class RateLimiter:
    """Token buckets in storage (shared by every instance using that storage).

    Buckets are per channel, for the principal (not for anonymous callers, who
    share one id: the per-client bucket covers them) and for the client address.
    """

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        key = f"{_KEY}.rate_limits"
        scopes = [
            (key, config),
            *((f"{key}.channels.{name}", s) for name, s in config.channels.items()),
            *((f"{key}.workflows.{name}", s) for name, s in config.workflows.items()),
        ]
        for where, scope in scopes:
            for kind in ("per_principal", "per_client"):
                rule = getattr(scope, kind)
                if rule is not None and (rule.burst or rule.requests) < 1:
                    raise ConfigError(
                        f"{where}.{kind}: a bucket of {rule.burst or rule.requests:g} tokens can "
                        "never pay for one request; set requests (or burst) to at least 1",
                        key=f"{where}.{kind}",
                    )

    @property
    def active(self) -> bool:
        """Whether any limit is configured."""
        c = self.config
        scopes = [c, *c.channels.values(), *c.workflows.values()]
        return any(s.per_principal or s.per_client for s in scopes)

    def _rule(self, kind: str, channel: str, workflow: str) -> tuple[RateLimitRule | None, str]:
        scoped = self.config.workflows.get(workflow)
        if scoped is not None and getattr(scoped, kind) is not None:
            return getattr(scoped, kind), workflow
        scoped = self.config.channels.get(channel)
        if scoped is not None and getattr(scoped, kind) is not None:
            return getattr(scoped, kind), "*"
        return getattr(self.config, kind), "*"

    async def check(
        self,
        storage: Storage,
        principal: Principal,
        channel: str,
        workflow: str,
        client: str | None,
    ) -> None:
        """Take a token from each bucket that applies; :class:`RateLimited` when one is empty."""
        if not principal.anonymous:
            rule, scope = self._rule("per_principal", channel, workflow)
            if rule is not None:
                key = ["principal", channel, scope, principal.tenant, principal.id]
                await self._take(storage, key, rule, f"principal {principal.id!r}", channel)
        if client is not None:
            rule, scope = self._rule("per_client", channel, workflow)
            if rule is not None:
                key = ["client", channel, scope, client]
                await self._take(storage, key, rule, f"client {client}", channel)

    @staticmethod
    async def _take(
        storage: Storage, key: list[str], rule: RateLimitRule, who: str, channel: str
    ) -> None:
        retry = await take_bucket(storage, key, rule)
        if retry > 0:
            raise RateLimited(
                f"rate limit exceeded for {who} on {channel}: {rule.requests:g} requests per "
                f"{rule.per:g} s; try again in {retry:g} s",
                retry_after=retry,
            )


async def take_bucket(storage: Storage, key: list[str], rule: RateLimitRule) -> float:
    """Take a token from the bucket named by ``key``: 0.0, or the seconds until one is back.

    The one token-bucket step of every rate limit: the per-principal and
    per-client buckets of a run, and the per-address ones of failed
    authentications, sessions, token issuance and run listing.
    """
    capacity = rule.burst if rule.burst is not None else rule.requests
    wait = await storage.take_tokens(
        "ratelimit:" + msgspec.json.encode(key).decode(),
        capacity=capacity,
        refill_per_second=rule.requests / rule.per,
    )
    if wait <= 0:
        return 0.0
    return math.ceil(wait * 1000) / 1000 if math.isfinite(wait) else rule.per
