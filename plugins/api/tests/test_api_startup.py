"""What building the API server imports: nothing it does not need to start (``nexus serve``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent(
    """
    import json, sys
    from nexus_core import Nexus
    from nexus_plugin_api.asgi import create_app

    app = Nexus("probe", storage="memory://")  # every installed plugin, as nexus serve loads them
    server = create_app(app)
    print(json.dumps({
        "loaded": sorted(m for m in ("pydantic", "attrs", "mcp") if m in sys.modules),
        "plugins": [type(p).__name__ for p in server.plugins],
    }))
    """
)


@pytest.mark.slow
def test_building_the_server_imports_neither_pydantic_nor_mcp() -> None:
    """Litestar's pydantic/attrs plugins and the MCP mount's ``mcp`` package are not loaded."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert "MsgspecDIPlugin" in report["plugins"]
    assert not any("Pydantic" in name or "Attrs" in name for name in report["plugins"])
