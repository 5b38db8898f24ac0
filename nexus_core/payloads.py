"""Large run values by reference: the one place that decides by size and resolves references.

A run's inputs, its output and each node's checkpointed output are stored
inline in the run store while their JSON encoding is at most
``services.runs.inline_limit`` bytes. A larger value goes to the blob role
(whatever backend serves it: memory, SQLite, S3...) as its JSON bytes, and
the record holds a reference in its place::

    {"$blob": {"key": "runs/default/r-1/output", "size": 52428812,
               "sha256": "9f86d0...", "media_type": "application/json"}}

An object keeps its keys, its large fields replaced by references (run
inputs stay an object; a node's ``{"result": ...}`` and the run output taken
from it share one blob); a run's output is either itself or one reference.

The reference is what :meth:`Nexus.get_run <nexus_core.app.Nexus.get_run>`,
run events and channels see; :meth:`Nexus.open_output
<nexus_core.app.Nexus.open_output>` streams the value's JSON bytes (the REST
``GET /runs/{id}/result``, the MCP resource, the CLI's ``--output-file``).
Nothing in the run store, the event log or the audit log grows with payload
size.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio.to_thread
import msgspec

from .storage.base import BlobStore

__all__ = [
    "BLOB_REF",
    "BlobRef",
    "Payloads",
    "blob_ref",
    "has_blob_refs",
    "is_blob_ref",
    "prune_run_blobs",
    "run_blob_prefix",
]

#: The one key of a reference dict: ``{"$blob": {...BlobRef fields}}``.
BLOB_REF = "$blob"

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class BlobRef(msgspec.Struct, kw_only=True, frozen=True):
    """Where a value stored by reference lives: a blob key, its size, SHA-256 and media type."""

    key: str
    size: int
    sha256: str
    media_type: str = "application/json"


#: Where runs' values go in the blob store: ``runs/<UTC day>/<tenant>/<run id>/...``.
RUNS = "runs/"


def run_blob_prefix(tenant: str, run_id: str, created_at: float) -> str:
    """The blob key prefix of a run's values (by the day it was created, for pruning)."""
    return f"{RUNS}{_utc_day(created_at)}/{tenant}/{run_id}/"


_DAYS: dict[int, str] = {}


def _utc_day(when: float) -> str:
    """``YYYYMMDD`` of ``when`` in UTC; remembered per day (every invoke asks, twice)."""
    number = int(when // 86400)  # UTC days are whole multiples of 86,400 s since the epoch
    day = _DAYS.get(number)
    if day is None:
        if len(_DAYS) > 64:
            _DAYS.clear()
        day = _DAYS[number] = time.strftime("%Y%m%d", time.gmtime(number * 86400))
    return day


async def prune_run_blobs(storage: Any, before: float) -> int:
    """Delete the blobs of runs created before ``before``'s day that the run store no longer has.

    ``storage`` serves the runs and blobs roles. Runs of the day before
    ``before`` and later are left alone (a run stores its inputs just before
    its record). Returns the number of blobs deleted.
    """
    last_day = time.strftime("%Y%m%d", time.gmtime(before - 86400))
    gone: dict[str, bool] = {}
    deleted = 0
    for key in await storage.list_blobs(RUNS):
        parts = key[len(RUNS) :].split("/", 3)
        if len(parts) < 4 or parts[0] >= last_day:
            continue
        run_id = parts[2]
        if run_id not in gone:
            gone[run_id] = await storage.get_run(run_id) is None
        if gone[run_id]:
            await storage.delete_blob(key)
            deleted += 1
    return deleted


def is_blob_ref(value: Any) -> bool:
    """Whether ``value`` is a reference dict (``{"$blob": {...}}``) made by :class:`Payloads`."""
    return (
        isinstance(value, dict)
        and len(value) == 1
        and isinstance(value.get(BLOB_REF), dict)
        and "key" in value[BLOB_REF]
    )


def has_blob_refs(value: Any) -> bool:
    """Whether ``value`` is a reference or an object with references among its fields."""
    return bool(_refs_in(value))


def blob_ref(value: Any) -> BlobRef | None:
    """The :class:`BlobRef` of a reference dict, or None when ``value`` is a plain value."""
    if not is_blob_ref(value):
        return None
    return msgspec.convert(value[BLOB_REF], BlobRef)


class Payloads:
    """Stores values over ``limit`` bytes (of JSON) in ``blobs`` and resolves their references.

    ``limit`` None keeps every value inline.
    """

    __slots__ = ("blobs", "limit")

    def __init__(self, blobs: BlobStore, limit: int | None) -> None:
        self.blobs = blobs
        self.limit = limit

    async def store(
        self, value: Any, key: str, *, reuse: Iterable[Any] = (), whole: bool = False
    ) -> Any:
        """``value`` itself when small enough, else with its large parts stored by reference.

        ``value`` is plain JSON data (``msgspec.to_builtins`` output) whose
        JSON is over the limit. An object (a dict) keeps its keys: each field
        over the limit is replaced by a reference to its JSON stored under
        ``key/field`` (``key/#n`` for a field that is not a plain name), and
        the whole object goes by reference only if it is still too large.
        Anything else is stored under ``key``. A reference in ``reuse`` (or
        in an object of ``reuse``) to the same bytes (size and SHA-256) is
        used instead of storing them again. A reference is returned as is.
        ``whole``: an object too goes by reference as one (a run's output, so
        a channel sees either the value or one reference).
        """
        if self.limit is None or value is None or is_blob_ref(value):
            return value
        data = self._encoded_if_large(value)
        if data is None:
            return value
        known = [ref for other in reuse for ref in _refs_in(other)]
        if isinstance(value, dict) and not whole:
            fields: dict[str, Any] = {}
            for n, (name, field) in enumerate(value.items()):
                part = self._encoded_if_large(field)
                if part is None or is_blob_ref(field):
                    fields[name] = field
                else:
                    where = f"{key}/{name}" if _plain_name(name) else f"{key}/#{n}"
                    fields[name] = await self._put(where, part, known)
            if self._encoded_if_large(fields) is None:
                return fields
        return await self._put(key, data, known)

    def _encoded_if_large(self, value: Any) -> bytes | None:
        """The JSON of ``value`` when longer than the limit, else None (cheaply, when it can)."""
        assert self.limit is not None
        if value is None or isinstance(value, bool | int | float):
            return None
        if isinstance(value, str) and len(value) * 6 + 2 <= self.limit:
            return None  # even every character escaped (\uXXXX) fits
        data = _encoder.encode(value)
        return data if len(data) > self.limit else None

    async def _put(self, key: str, data: bytes, known: list[dict[str, Any]]) -> dict[str, Any]:
        # Hashing 50 MB takes a tenth of a second: off the event loop.
        digest = await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
        for other in known:
            ref = blob_ref(other)
            if ref is not None and ref.sha256 == digest and ref.size == len(data):
                return other
        await self.blobs.put_blob(key, data)
        made = BlobRef(key=key, size=len(data), sha256=digest)
        return {BLOB_REF: msgspec.to_builtins(made)}

    async def load(self, value: Any) -> Any:
        """The value :meth:`store` was given: references (whole, or fields of an object) resolved.

        A reference whose blob is gone raises ``LookupError`` naming the key.
        """
        if isinstance(value, dict) and not is_blob_ref(value):
            if not any(is_blob_ref(field) for field in value.values()):
                return value
            return {name: await self._load_one(field) for name, field in value.items()}
        return await self._load_one(value)

    async def _load_one(self, value: Any) -> Any:
        ref = blob_ref(value)
        if ref is None:
            return value
        data = await self.blobs.get_blob(ref.key)
        if data is None:
            raise LookupError(f"the blob {ref.key!r} a run value refers to is gone")
        return _decoder.decode(data)

    async def open(self, value: Any, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The JSON bytes of what :meth:`store` was given; references streamed from the store."""
        if isinstance(value, dict) and not is_blob_ref(value):
            if not any(is_blob_ref(field) for field in value.values()):
                yield _encoder.encode(value)
                return
            yield b"{"
            for n, (name, field) in enumerate(value.items()):
                yield (b"," if n else b"") + _encoder.encode(name) + b":"
                async for chunk in self._open_one(field, chunk_size):
                    yield chunk
            yield b"}"
            return
        async for chunk in self._open_one(value, chunk_size):
            yield chunk

    async def _open_one(self, value: Any, chunk_size: int) -> AsyncIterator[bytes]:
        ref = blob_ref(value)
        if ref is None:
            yield _encoder.encode(value)
            return
        async for chunk in self.blobs.iter_blob(ref.key, chunk_size):
            yield chunk


def _plain_name(name: str) -> bool:
    return (
        bool(name)
        and len(name) <= 100
        and all(c.isalnum() or c in "_-." for c in name)
        and (name not in (".", ".."))
    )


def _refs_in(value: Any) -> list[dict[str, Any]]:
    """The references in ``value``: itself, or the fields of an object that are references."""
    if is_blob_ref(value):
        return [value]
    if isinstance(value, dict):
        return [field for field in value.values() if is_blob_ref(field)]
    return []
