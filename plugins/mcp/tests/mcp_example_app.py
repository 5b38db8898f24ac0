"""The application the MCP tests serve (copied into tmp_path and loaded by file).

With ``NEXUS_TEST_TOKEN`` set, requests must carry that bearer token, and
``explode`` is reserved for admins (a token ending in ``-admin``), so the tool
list is filtered by permission.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import msgspec
from nexus_core import Nexus, WorkflowBuilder
from nexus_core.errors import AuthenticationError
from nexus_core.security import Credentials, Principal, SecurityLayer
from nexus_core.security.policy import Decision

app = Nexus("mcp-test-app")


@app.workflow(read_only=True, idempotent=True, title="Greeter", tags=("demo",))
def greet(name: str, excited: bool = False) -> str:
    """Greet someone by name."""
    return f"Hello, {name}{'!' if excited else '.'}"


class Total(msgspec.Struct):
    total: int
    count: int


@app.workflow(read_only=True)
def add(numbers: list[int]) -> Total:
    """Add up numbers."""
    return Total(total=sum(numbers), count=len(numbers))


@app.workflow(destructive=True)
def explode(reason: str) -> str:
    """Fail on purpose."""
    raise ValueError(f"boom: {reason}")


@app.workflow
async def sleepy(seconds: float) -> float:
    """Sleep, then say how long."""
    await anyio.sleep(seconds)
    return seconds


async def double(value: int) -> int:
    await anyio.sleep(0.05)
    return value * 2


async def increment(value: int) -> int:
    await anyio.sleep(0.05)
    return value + 1


pipeline = WorkflowBuilder("pipeline", description="Three steps, one after the other.")
pipeline.add_node("PythonCodeNode", "first", {"function": double})
pipeline.add_node("PythonCodeNode", "second", {"function": increment})
pipeline.add_node("PythonCodeNode", "third", {"function": double})
pipeline.add_connection("first", "result", "second", "value")
pipeline.add_connection("second", "result", "third", "value")
pipeline.add_workflow_inputs("first", {"value": "value"})
pipeline.set_output("third", "result")
app.register(pipeline)


@app.prompt(title="Code review")
def review(code: str, language: str = "python", lines: int = 0) -> list[dict[str, str]]:
    """Ask for a careful code review."""
    limit = f" in at most {lines} lines" if lines else ""
    return [
        {"role": "user", "content": f"Review this {language} code{limit}:\n{code}"},
        {"role": "assistant", "content": "I will look at correctness first."},
    ]


class TokenSecurity(SecurityLayer):
    """A stand-in auth provider: one shared token, ``-admin`` suffix for admins."""

    async def authenticate(
        self, credentials: Credentials | None, channel: str, *, audit: bool = False
    ) -> Principal:
        token = credentials.bearer if credentials is not None else None
        if not token:
            raise AuthenticationError("a bearer token is required")
        expected = os.environ["NEXUS_TEST_TOKEN"]
        if token not in (expected, f"{expected}-admin"):
            raise AuthenticationError("invalid token")
        roles = ("admin",) if token.endswith("-admin") else ("user",)
        return Principal(id=f"tester-{roles[0]}", roles=roles)

    def decide(self, principal: Principal, action: str, **context: Any) -> Decision:
        # Every check goes through here: authorize(), visible_workflows(), event filters.
        if action == "workflow:explode:execute" and "admin" not in principal.roles:
            return Decision(False, "only admins may explode")
        return Decision(True)


if os.environ.get("NEXUS_TEST_TOKEN"):
    app.security = TokenSecurity(app)
