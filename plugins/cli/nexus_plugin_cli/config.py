"""``nexus.channels.cli``: the settings of ``nexus shell``.

Import-light: msgspec and the core's config module only, no cyclopts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from nexus_core.plugin import ConfigError, ConfigStruct

if TYPE_CHECKING:
    from .backends import Backend

__all__ = ["CliConfig", "cli_config"]


class CliConfig(ConfigStruct, kw_only=True):
    """Settings of the command line (``[nexus.channels.cli]`` in ``nexus.toml``).

    ``idle_timeout``
        seconds ``nexus shell`` waits for input before it ends, saying so
        (exit status 0); ``None`` (the default): it waits for ever.
    ``history_size``
        how many lines the shell's history (in the user's config folder)
        keeps: older ones are dropped as new ones are added; 0 keeps none.
    """

    idle_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    history_size: Annotated[int, msgspec.Meta(ge=0)] = 1000


def cli_config(backend: Backend | None = None) -> CliConfig:
    """The ``channels.cli`` settings: the loaded app's, else ``nexus.toml``'s here, else defaults.

    With ``--url`` (no app in this process) the working directory's config
    file is read for this section alone; a file that does not load leaves the
    defaults (the gateway's own checks report it).
    """
    app: Any = getattr(backend, "app", None)
    if app is not None:
        try:
            section = app.config.section("channels.cli")
        except ConfigError:
            return CliConfig()
        return section if isinstance(section, CliConfig) else CliConfig()
    from nexus_core.plugin import PluginHost, load_config

    try:
        config = load_config(sections=PluginHost().config_sections())
        section = config.section("channels.cli")
    except Exception:  # a config this command cannot read is not its to report
        return CliConfig()
    return section if isinstance(section, CliConfig) else CliConfig()
