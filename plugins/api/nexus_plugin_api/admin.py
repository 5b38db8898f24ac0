"""The gateway's configuration over HTTP (``GET /config``, ``GET /config/check``), masked.

Both routes need the ``admin`` permission once authentication is on (a denial
is audited). What they show never includes a secret:

* any key whose name contains ``secret``, ``password``, ``token`` or ``key``
  (but not ``keys``, the lists of API and JWT keys, whose entries are masked
  key by key), or ``sha256`` (the digests of static API keys), has its value
  replaced by ``"***"``; a table under such a name (``api_key``, ``cli_token``)
  is masked entry by entry instead;
* the password of a URL (``postgresql://user:pw@host/db``) and query parameters
  named like a secret (``?password=...``) become ``***`` in every string.

``GET /config/check`` answers what ``nexus config check`` answers in process,
for the gateway: the loaded configuration is valid by construction, so the
check re-reads the configuration file from disk with the same sections and
this process's environment, then checks the storage backend and the
production rules, and reports the first error (or ``ok``).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .models import ConfigCheck, ConfigIssue, ConfigView

if TYPE_CHECKING:
    from nexus_core import Nexus
    from nexus_core.security import Principal

__all__ = ["MASK", "check_config", "is_secret_key", "mask", "mask_text", "require_admin", "view"]

#: What a secret value is replaced with.
MASK = "***"
_WORDS = ("secret", "password", "passwd", "token", "sha256")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):(?P<pw>[^/@\s]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;][^=&;\s]*(?:secret|password|passwd|token|key)[^=&;\s]*=)(?P<value>[^&;\s#]*)",
    re.IGNORECASE,
)


def is_secret_key(name: str) -> bool:
    """Whether a value under the key ``name`` is masked (``keys`` alone is not a secret)."""
    lowered = name.lower()
    return any(word in lowered for word in _WORDS) or "key" in lowered.replace("keys", "")


def mask_text(text: str) -> str:
    """``text`` with URL passwords and secret-looking query parameters replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: m["head"] + (MASK if m["value"] else ""), text)


def mask(value: Any, name: str | None = None) -> Any:
    """``value`` (builtins) with every secret masked; ``name`` is the key it is under."""
    if isinstance(value, dict):
        return {str(k): mask(v, str(k)) for k, v in value.items()}
    if name is not None and is_secret_key(name) and value not in (None, "", [], {}):
        return MASK
    if isinstance(value, list):
        return [mask(item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


async def require_admin(app: Nexus, principal: Principal) -> None:
    """Raise ``PermissionDenied`` (audited) unless ``principal`` may ``admin``.

    With authentication off every caller may.
    """
    await app.security.require(principal, "admin", channel="api")


def view(app: Nexus) -> ConfigView:
    """The effective configuration, secrets masked, with each value's source and the file."""
    config = app.config
    path = config.path
    return ConfigView(
        config=mask(config.to_dict()),
        sources=config.sources(),
        path=str(path) if path is not None else None,
    )


def _issue(exc: Any) -> ConfigIssue:
    return ConfigIssue(
        message=mask_text(str(getattr(exc, "message", exc))),
        key=getattr(exc, "key", None),
        source=getattr(exc, "source", None),
        suggestion=getattr(exc, "suggestion", None),
    )


def _check(app: Nexus) -> ConfigCheck:
    from nexus_core import Nexus
    from nexus_core.plugin import ConfigError, load_config

    config = app.config
    try:
        if config.path is not None:
            config = load_config(config.path, env=os.environ, sections=app.host.config_sections())
        url = config.storage_url
        Nexus(config=config, env=os.environ).check_startup()  # what start-up would refuse
    except ConfigError as exc:
        return ConfigCheck(ok=False, errors=[_issue(exc)])
    return ConfigCheck(
        ok=True,
        file=str(config.path) if config.path is not None else None,
        environment=config.nexus.environment,
        storage=mask_text(url),
    )


async def check_config(app: Nexus) -> ConfigCheck:
    """Re-read and check the configuration file (in a worker thread: it reads the disk)."""
    return await anyio.to_thread.run_sync(_check, app)
