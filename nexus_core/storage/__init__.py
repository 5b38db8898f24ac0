"""Storage: the contract (:class:`Storage`) and the built-in backends (memory, SQLite)."""

from .base import AuditRecord, NodeCheckpoint, RunRecord, SessionRecord, Storage

__all__ = ["AuditRecord", "NodeCheckpoint", "RunRecord", "SessionRecord", "Storage"]
