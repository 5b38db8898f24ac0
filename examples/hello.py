"""The smallest Nexus app: one typed function, served on every installed channel.

python examples/hello.py Ada          # run it in-process on the embedded default
nexus serve examples/hello.py         # serve it (with nexus-plugin-api and -cli installed)
"""

from __future__ import annotations

import sys

import anyio

from nexus_core import Nexus

app = Nexus("hello")


@app.workflow(read_only=True, idempotent=True)
def greet(name: str, excited: bool = False) -> str:
    """Greet someone by name."""
    return f"Hello, {name}{'!' if excited else '.'}"


async def main(name: str) -> None:
    # The embedded tier: the host runs in this process, runs are recorded in .nexus/hello.db.
    async with app:
        result = await app.invoke("greet", {"name": name, "excited": True}, channel="python")
        print(result.output)
        print(f"run {result.run_id} {result.status}; stored in {app.config.storage_url}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "world")
