"""Storage: the contract (:class:`Storage`) and the built-in backends (memory, SQLite).

:class:`StorageRouter` is the :class:`Storage` of a host whose storage roles
have backends of their own (``[nexus.storage]`` with a URL per role).
"""

from .base import AuditRecord, NodeCheckpoint, RunFinish, RunRecord, SessionRecord, Storage
from .router import StorageRouter

__all__ = [
    "AuditRecord",
    "NodeCheckpoint",
    "RunFinish",
    "RunRecord",
    "SessionRecord",
    "Storage",
    "StorageRouter",
]
