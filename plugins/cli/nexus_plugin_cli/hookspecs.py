"""The hook the CLI plugin adds to the contract: other plugins contribute ``nexus`` commands.

Added through ``nexus_add_hookspecs`` when this plugin is registered, so a
plugin implementing it should mark the implementation
``@hookimpl(optionalhook=True)``: it then loads fine where the CLI is not
installed::

    from nexus_core import CommandSpec, hookimpl

    @hookimpl(optionalhook=True)
    def nexus_cli_commands():
        return [CommandSpec(name="serve", factory="my_plugin.cli:serve_command")]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core.plugin import hookspec

if TYPE_CHECKING:
    from nexus_core.plugin import CommandSpec

__all__ = ["nexus_cli_commands"]


@hookspec
def nexus_cli_commands() -> list[CommandSpec]:
    """Return the ``nexus`` sub-commands this plugin contributes.

    Called when the ``nexus`` command builds its command table (the result is
    cached per set of installed plugins, so keep it a pure function of the
    installed code). Each :class:`~nexus_core.specs.CommandSpec` names the
    command (``name="serve"``), a ``"module:function"`` ``factory`` and a
    one-line ``description`` shown by ``nexus --help``. The factory is imported
    only when the command runs, so ``nexus --help`` never imports a plugin's
    heavy modules. The function is a cyclopts command: its signature is its
    command line, and it returns the exit code (an ``int``).

    A name already taken by a built-in command (``run``, ``workflows``...) is
    skipped with a warning. Two plugins contributing one name is a conflict
    (the core's ``collect_specs`` policy): a warning names both plugins and
    their distributions, and no plugin command is added until one is disabled.

    .. versionadded:: 0.1
    """
    raise NotImplementedError  # a specification: pluggy calls the implementations
