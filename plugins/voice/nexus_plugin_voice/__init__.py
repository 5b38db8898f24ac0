"""nexus-plugin-voice: speak to a workflow, hear the answer, offline."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
