"""The ``nexus`` command: run, inspect and serve Nexus workflows from a terminal.

Every command works in process, against an application given by ``--app``
(or ``NEXUS_APP``, or ``app`` in ``nexus.toml``), and against a running
gateway given by ``--url`` (or ``NEXUS_URL``), with the same output and errors.
Other plugins add commands through the ``nexus_cli_commands`` hook this plugin
defines (see :mod:`nexus_plugin_cli.hookspecs`).

Importing this package is cheap: ``nexus --help`` must stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
