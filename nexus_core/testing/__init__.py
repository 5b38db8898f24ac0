"""Contract suites and helpers for plugin authors: run them on your own backend or channel.

The storage suites, one per role (a backend runs the suites of the roles it
declares; :class:`StorageContract` is all of them), are importable from here
and from :mod:`nexus_core.testing.storage`; the others from their modules
(:mod:`~nexus_core.testing.auth`, :mod:`~nexus_core.testing.channel`,
:mod:`~nexus_core.testing.nodes`). Names load on first use: importing this
package does not import pytest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .storage import (
        AuditLogContract,
        BackendFactory,
        BlobStoreContract,
        CacheContract,
        CredentialStoreContract,
        EventLogContract,
        RunStoreContract,
        SessionStoreContract,
        StorageContract,
        StorageFactory,
        lease_state_machine,
        storage_state_machine,
    )

__all__ = [
    "AuditLogContract",
    "BackendFactory",
    "BlobStoreContract",
    "CacheContract",
    "CredentialStoreContract",
    "EventLogContract",
    "RunStoreContract",
    "SessionStoreContract",
    "StorageContract",
    "StorageFactory",
    "lease_state_machine",
    "storage_state_machine",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'nexus_core.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(".storage", __package__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
