"""The application the two-gateway tests serve with ``nexus serve``.

Records (runs, the event log, audit) in one SQLite file (``GW_DB``), shared by
both gateways; rate-limit buckets, sessions and the event bus on Redis
(``GW_REDIS``, a URL with the test's own key prefix).
"""

from __future__ import annotations

import os

from nexus_core import Nexus

#: Per-client limits of the ``limited_<n>`` workflows: n requests a day (no refill in a test).
LIMITS = (1, 7, 25, 100)

_redis = os.environ["GW_REDIS"]
_limits = {f"limited_{n}": {"per_client": {"requests": n, "per": 86400.0}} for n in LIMITS}
_limits["per_minute"] = {"per_client": {"requests": 100, "per": 60.0}}
_limits["metered"] = {"per_client": {"requests": 1e9, "per": 86400.0}}

app = Nexus(
    "gateway",
    config={
        "storage": {"url": f"sqlite:///{os.environ['GW_DB']}", "cache": _redis, "sessions": _redis},
        "plugins": {"redis": {"url": _redis}},
        "services": {"security": {"rate_limits": {"workflows": _limits}}},
    },
)


@app.workflow
def greet(name: str = "you", n: int = 0) -> str:
    """Greet someone (not rate-limited)."""
    return f"Hello, {name}."


@app.workflow
def per_minute(n: int = 0) -> int:
    """Limited to 100 a minute per client."""
    return n


@app.workflow
def metered(n: int = 0) -> int:
    """Rate-limited (generously): every run takes a token from Redis."""
    return n


def _limited(n: int) -> None:
    def limited(x: int = 0) -> int:
        return x

    limited.__doc__ = f"Limited to {n} a day per client."
    app.workflow(name=f"limited_{n}")(limited)


for _n in LIMITS:
    _limited(_n)
