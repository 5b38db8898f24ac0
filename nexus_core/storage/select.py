"""Choosing the storage backends: a URL per role, a backend per distinct URL.

:func:`create_storage` builds the backend of one URL through the
``nexus_storage_backends`` hook (its scheme picks the backend).
:func:`select_storage` takes the URL of every role (what
:attr:`nexus_core.config.Config.storage_urls` gives) and returns the one
:class:`~nexus_core.storage.base.Storage` the host uses: the backend itself
when every role has the same URL, else a
:class:`~nexus_core.storage.router.StorageRouter` over a backend per distinct
URL. Neither opens anything: the host does, at start-up.
"""

from __future__ import annotations

import urllib.parse
from collections import Counter
from collections.abc import Mapping

from ..config import ConfigError
from ..errors import PluginLoadFailed
from ..plugins import PluginHost, install_command
from .base import ROLES, Backend, Role, Storage
from .router import StorageRouter

__all__ = ["STORAGE_PLUGINS", "create_storage", "redact_url", "select_storage"]

#: Where the storage backends the core does not ship are found, by URL scheme.
STORAGE_PLUGINS: dict[str, str] = {
    "redis": "nexus-plugin-redis",
    "rediss": "nexus-plugin-redis",
    "postgres": "nexus-plugin-postgres",
    "postgresql": "nexus-plugin-postgres",
    "s3": "nexus-plugin-s3",
}


def create_storage(host: PluginHost, url: str, *, key: str = "nexus.storage") -> Storage:
    """The (unopened) storage backend for ``url``, chosen by its scheme through the plugins.

    An unknown scheme is a ``ConfigError`` naming ``key`` (the setting the URL
    came from), the installed schemes and the plugin to install; a backend
    that fails to build names its plugin. The result is typed ``Storage`` for
    the callers that predate roles; it may be a backend of some roles only
    (see :attr:`Backend.roles`).
    """
    scheme = url.partition(":")[0]
    backends = host.storage_backends()
    spec = backends.get(scheme)
    if spec is None:
        plugin = STORAGE_PLUGINS.get(scheme)
        hint = f"; install it with '{install_command(plugin)}'" if plugin else ""
        raise ConfigError(
            f"{key}: no storage backend for {scheme!r} URLs (installed: "
            f"{', '.join(sorted(backends))}){hint}",
            key=key,
        )
    try:
        return spec.load()(url)  # type: ignore[no-any-return]
    except Exception as exc:
        password = urllib.parse.urlsplit(url).password if "@" in url else None
        detail = str(exc).replace(password, "***") if password else str(exc)
        raise PluginLoadFailed(
            f"storage backend {spec.name!r} of plugin {spec.plugin!r} could not be created "
            f"for {redact_url(url)!r}: {type(exc).__name__}: {detail}"
        ) from exc


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to log or show.

    >>> redact_url("postgresql://nexus:s3cret@db/nexus")
    'postgresql://nexus:***@db/nexus'
    """
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can read: show its scheme only
        return url.partition(":")[0] + "://***"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def select_storage(
    host: PluginHost, urls: Mapping[Role, str], *, url: str | None = None
) -> Storage:
    """The (unopened) storage of a host whose roles are served at ``urls``.

    ``urls`` maps every role of :data:`~nexus_core.storage.base.ROLES` to a
    URL (a missing role takes ``url``). One backend is created per distinct
    URL (:func:`create_storage`). When every role has the same URL, that
    backend is returned itself; otherwise a
    :class:`~nexus_core.storage.router.StorageRouter` over them, whose
    :attr:`~nexus_core.storage.base.Backend.url` is ``url`` (by default the
    URL most roles share).

    A backend asked for a role it does not declare (:attr:`Backend.roles`)
    is a ``ConfigError`` naming the backend, the role and the key to change
    (``nexus.storage.<role>``).
    """
    if url is None:
        counts = Counter(urls[role] for role in ROLES if role in urls)
        if not counts:
            raise ValueError("select_storage: no storage URL given")
        url = counts.most_common(1)[0][0]
    by_role: dict[Role, str] = {role: urls.get(role, url) for role in ROLES}
    made: dict[str, Backend] = {}
    backends: dict[Role, Backend] = {}
    for role in ROLES:
        role_url = by_role[role]
        key = f"nexus.storage.{role}"
        if role_url not in made:
            made[role_url] = create_storage(host, role_url, key=key)
        backend = made[role_url]
        served: frozenset[str] = getattr(type(backend), "roles", frozenset())
        if role not in served:
            name = type(backend).__name__
            offers = ", ".join(r for r in ROLES if r in served) or "none"
            raise ConfigError(
                f"{key}: storage backend {name} ({_scheme(role_url)}:// URLs) does not serve "
                f"the {role!r} role (it serves: {offers}); set {key} to the URL of a backend "
                "that does",
                key=key,
            )
        backends[role] = backend
    if len(made) == 1:
        [only] = made.values()
        if isinstance(only, Storage):
            return only
    return StorageRouter(backends, url=url)


def _scheme(url: str) -> str:
    return url.partition(":")[0]
