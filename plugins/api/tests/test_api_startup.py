"""What building the API server imports: nothing it does not need to start (``nexus serve``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

_PROBE = textwrap.dedent(
    """
    import json, sys
    from nexus_core import Nexus
    from nexus_plugin_api.asgi import create_app

    app = Nexus("probe", storage="memory://")  # every installed plugin, as nexus serve loads them
    server = create_app(app)
    yaml_executed = "yaml.constructor" in sys.modules  # PyYAML's package body imports it
    import yaml  # whoever imports it later gets the real thing
    print(json.dumps({
        "loaded": sorted(m for m in ("pydantic", "attrs", "mcp") if m in sys.modules),
        "plugins": [type(p).__name__ for p in server.plugins],
        "yaml_executed": yaml_executed,
        "yaml_works": yaml.safe_load(yaml.dump({"a": [1, 2]})) == {"a": [1, 2]},
        "yaml_error": issubclass(yaml.YAMLError, Exception),
    }))
    """
)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """What a fresh interpreter loaded by building the server (one probe for the module)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.slow
def test_building_the_server_imports_neither_pydantic_nor_mcp(report: dict[str, Any]) -> None:
    """Litestar's pydantic/attrs plugins and the MCP mount's ``mcp`` package are not loaded."""
    assert report["loaded"] == []
    assert "MsgspecDIPlugin" in report["plugins"]
    assert not any("Pydantic" in name or "Attrs" in name for name in report["plugins"])


@pytest.mark.slow
def test_pyyaml_is_executed_only_when_used(report: dict[str, Any]) -> None:
    """Litestar imports PyYAML for a route Nexus does not serve: it runs on first use only."""
    assert report["yaml_executed"] is False
    assert report["yaml_works"] is True
    assert report["yaml_error"] is True
