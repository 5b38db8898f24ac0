"""The application the attack tests serve: the how-to's shop, reduced to what an attacker aims at.

``refund`` carries the doc's ABAC rule ("refunds over 500 need a team lead"),
``nap`` keeps a run (and a stream) open, ``greet`` is the harmless one.
"""

from __future__ import annotations

import anyio

from nexus_core import Nexus

app = Nexus("secured")


@app.workflow
def greet(name: str) -> str:
    """Greet someone by name."""
    return f"Hello, {name}."


@app.workflow
def refund(order: str, amount: float) -> float:
    """Refund ``amount`` on ``order``; returns what was refunded."""
    return amount


@app.workflow
async def nap(seconds: float) -> float:
    """Sleep, then say how long: a run that stays open."""
    await anyio.sleep(seconds)
    return seconds
