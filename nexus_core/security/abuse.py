"""What a client may cost before it has proved anything: per-address limits and aggregated audit.

Four things a caller can repeat cheaply cost the host storage writes: failed
authentications, session creation, CLI-token issuance and run listing. Each
has a token bucket per client address (``nexus.services.security.rate_limits``:
``failed_authentications``, ``session_creation``, ``token_issuance``,
``run_listing``), kept in storage like every bucket, so instances sharing a
storage share the count.

Failed authentications are special: a client whose bucket is empty is *blocked*
until a token is back, and every attempt it makes meanwhile, right or wrong, is
refused (:class:`~nexus_core.errors.RateLimited`) before any provider looks at
it, so guessing keys does not pay. The block is kept in this process (a
bounded map); another instance blocks the client at its own next failure.

Refusals from a client address are audited in aggregate: the first in each
``audit_window`` is recorded as it happens (by whoever records it: ``invoke``,
a channel's ``authenticate(audit=True)``), the others in that window are
counted and written as one record whose ``count`` says how many. So a flood of
bad tokens grows the audit log by a few records per window, not one per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._ids import token_hex
from ..config import RateLimitConfig, RateLimitRule
from ..errors import RateLimited
from ..storage.base import AuditRecord, Storage
from .limits import take_bucket

__all__ = ["LIMITED_ACTIONS", "AuthBlocks", "RefusalTally", "take"]

#: The per-address limits by name (the ``rate_limits`` field) and what they guard.
LIMITED_ACTIONS = {
    "failed_authentications": "failed authentications",
    "session_creation": "session creation",
    "token_issuance": "CLI-token issuance",
    "run_listing": "run listing",
}
_MAX_CLIENTS = 10_000


def rule_for(config: RateLimitConfig, name: str) -> RateLimitRule | None:
    """The configured rule of one per-address limit (None: unlimited)."""
    rule: RateLimitRule | None = getattr(config, name)
    return rule


async def take(storage: Storage, name: str, rule: RateLimitRule, client: str) -> float:
    """Take a token from ``client``'s bucket for ``name``: 0.0, or the seconds to wait."""
    return await take_bucket(storage, [name, client], rule)


def refused(name: str, client: str, rule: RateLimitRule, wait: float) -> RateLimited:
    """The error for a client over a per-address limit."""
    return RateLimited(
        f"too many {LIMITED_ACTIONS[name]} from {client}: {rule.requests:g} per {rule.per:g} s; "
        f"try again in {wait:g} s",
        retry_after=wait,
    )


class AuthBlocks:
    """Clients refused until a time because of failed authentications (in this process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._until: dict[str, float] = {}

    def wait(self, client: str) -> float:
        """Seconds ``client`` is still blocked for (0.0: not blocked)."""
        until = self._until.get(client)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._until[client]
            return 0.0
        return math.ceil(left * 1000) / 1000

    def block(self, client: str, seconds: float) -> None:
        """Refuse ``client`` for ``seconds``."""
        now = self.clock()
        self._until.pop(client, None)
        self._until[client] = now + seconds
        if len(self._until) > _MAX_CLIENTS:
            for key in [k for k, t in self._until.items() if t <= now]:
                del self._until[key]
            while len(self._until) > _MAX_CLIENTS:  # the oldest blocks go first
                del self._until[next(iter(self._until))]


@dataclass
class _Tally:
    started: float
    channel: str
    action: str
    principal: str
    tenant: str
    count: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    last_reason: str = ""


class RefusalTally:
    """Refusals per client address and action per window: the first recorded, the rest counted."""

    def __init__(self, window: float, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.clock = clock
        self._tallies: dict[tuple[str, ...], _Tally] = {}
        #: Records of finished windows, waiting for :meth:`drain`.
        self._ready: list[AuditRecord] = []

    def count(
        self,
        client: str,
        channel: str,
        outcome: str,
        reason: str,
        action: str = "authenticate",
        principal: str = "anonymous",
        tenant: str = "default",
    ) -> bool:
        """Note a refusal; True if it is the first of its window (record it individually)."""
        now = self.clock()
        key = (client, action, principal, tenant)
        tally = self._tallies.get(key)
        if tally is not None and now - tally.started >= self.window:
            self._close(key, tally)
            tally = None
        if tally is None:
            self._tallies[key] = _Tally(
                started=now, channel=channel, action=action, principal=principal, tenant=tenant
            )
            if len(self._tallies) > _MAX_CLIENTS:
                oldest = next(iter(self._tallies))
                self._close(oldest, self._tallies[oldest])
            return True
        tally.count += 1
        tally.outcomes[outcome] = tally.outcomes.get(outcome, 0) + 1
        tally.last_reason = reason
        return False

    def _close(self, key: tuple[str, ...], tally: _Tally) -> None:
        del self._tallies[key]
        self._summarize(key[0], tally)

    def _summarize(self, client: str, tally: _Tally) -> None:
        if tally.count == 0:
            return
        outcomes = ", ".join(f"{n} {o}" for o, n in sorted(tally.outcomes.items()))
        top = max(tally.outcomes, key=lambda o: tally.outcomes[o])
        self._ready.append(
            AuditRecord(
                id=token_hex(12),
                time=time.time(),
                action=tally.action,
                outcome=top,
                principal=tally.principal,
                tenant=tally.tenant,
                channel=tally.channel,
                reason=(
                    f"{tally.count} more refusals from {client} since "
                    f"{time.strftime('%H:%M:%S', time.gmtime(tally.started))} UTC ({outcomes}); "
                    f"last: {tally.last_reason}"
                ),
                count=tally.count,
            )
        )
        tally.count = 0
        tally.outcomes = {}

    def drain(self, *, everything: bool = False) -> list[AuditRecord]:
        """The records of windows that ended (``everything``: every count so far, windows kept)."""
        now = self.clock()
        for key, tally in list(self._tallies.items()):
            if now - tally.started >= self.window:
                self._close(key, tally)
            elif everything:
                self._summarize(key[0], tally)
        ready, self._ready = self._ready, []
        return ready
