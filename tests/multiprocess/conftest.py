"""Fixtures of the multi-process tests: they need the API and CLI plugins and Linux ``/proc``."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("nexus_plugin_api", reason="multi-process tests serve over HTTP")
pytest.importorskip("nexus_plugin_cli", reason="multi-process tests start `nexus serve`")
pytest.importorskip("httpx", reason="multi-process tests are HTTP clients")
if not sys.platform.startswith("linux"):
    pytest.skip("multi-process tests read /proc and send SIGKILL", allow_module_level=True)
