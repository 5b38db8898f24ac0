"""``python -m nexus_plugin_cli`` is the ``nexus`` command."""

from __future__ import annotations

import sys

from .main import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
