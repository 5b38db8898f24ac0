"""The built-in ``nexus`` commands, one module each, imported only when the command runs."""

from __future__ import annotations

__all__: list[str] = []
