"""The application the tests serve (also loaded by file path in server subprocesses)."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
from nexus_core import Nexus
from nexus_core.sessions import Session


class Item(msgspec.Struct):
    sku: str
    qty: int


class Address(msgspec.Struct):
    street: str
    zip: str


class Order(msgspec.Struct):
    total: int
    lines: int
    ship_to: Address


def build(*, storage: str = "memory://", api: dict[str, Any] | None = None, **nexus: Any) -> Nexus:
    """A host with the API plugin only (no entry points) and the test workflows."""
    app = Nexus(
        "test-api",
        storage=storage,
        autoload=False,
        plugins=["nexus_plugin_api.plugin"],
        config={"channels": {"api": {"host": "127.0.0.1", "port": 0, **(api or {})}}, **nexus},
        env={},
    )
    register(app)
    return app


def register(app: Nexus) -> None:
    @app.workflow(read_only=True, idempotent=True)
    def greet(name: str, excited: bool = False) -> str:
        """Greet someone by name."""
        return f"Hello, {name}{'!' if excited else '.'}"

    @app.workflow
    async def add(a: int, b: int = 0) -> int:
        """Add two integers."""
        return a + b

    @app.workflow
    def order(items: list[Item], ship_to: Address, note: str | None = None) -> Order:
        """Price an order (every item costs 3)."""
        return Order(total=3 * sum(i.qty for i in items), lines=len(items), ship_to=ship_to)

    @app.workflow
    async def slow(seconds: float = 1.0) -> str:
        """Sleep, then answer."""
        await anyio.sleep(seconds)
        return "done"

    @app.workflow
    def boom(message: str = "boom") -> str:
        """Always fails."""
        raise RuntimeError(message)

    @app.workflow
    def count(session: Session, by: int = 1) -> int:
        """Count in the session's state."""
        session.state["n"] = session.state.get("n", 0) + by
        return int(session.state["n"])
