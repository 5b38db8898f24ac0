"""The test application as a deployed server loads it: ``python -m nexus_plugin_api api_served.py``.

Storage and plugins come from the environment (``NEXUS_STORAGE``, ``NEXUS_PLUGINS``).
"""

from __future__ import annotations

from api_apps import register
from nexus_core import Nexus

app = Nexus("test-api-served")
register(app)
