"""Prompts as the MCP channel serves them: the core's ``@app.prompt`` templates.

Kept as a module so the server has one place to read them from; the classes
are the core's (:mod:`nexus_core.prompts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core.plugin import Prompt, PromptArgument, PromptMessage

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["Prompt", "PromptArgument", "PromptMessage", "prompts_of"]


def prompts_of(app: Nexus) -> dict[str, Prompt]:
    """Every prompt template registered on ``app`` with ``@app.prompt``."""
    return dict(app.prompts)
