"""Random ids without a system call each: random bytes drawn from a pool of ``os.urandom``.

A run id, a session id and an audit record id each need fresh randomness, and
``secrets`` makes one ``getrandom`` call per id. This pool reads 4 KiB at a
time and hands out slices, under a lock (ids are made from worker threads
too); a forked child drops its parent's pool, so no two processes share bytes.
The bytes are the operating system's CSPRNG output, as with ``secrets``.
"""

from __future__ import annotations

import base64
import os
import threading

__all__ = ["random_bytes", "token_hex", "token_urlsafe"]

_POOL_SIZE = 4096
_lock = threading.Lock()
_pool = b""
_used = 0


def _drop_pool() -> None:
    global _pool, _used
    _pool, _used = b"", 0


os.register_at_fork(after_in_child=_drop_pool)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG (one ``os.urandom`` per 4 KiB)."""
    global _pool, _used
    if n > _POOL_SIZE // 4:
        return os.urandom(n)
    with _lock:
        if _used + n > len(_pool):
            _pool, _used = os.urandom(_POOL_SIZE), 0
        start = _used
        _used += n
        return _pool[start : start + n]


def token_hex(nbytes: int) -> str:
    """As ``secrets.token_hex``: ``nbytes`` random bytes as hex."""
    return random_bytes(nbytes).hex()


def token_urlsafe(nbytes: int) -> str:
    """As ``secrets.token_urlsafe``: ``nbytes`` random bytes, URL-safe base64, no padding."""
    return base64.urlsafe_b64encode(random_bytes(nbytes)).rstrip(b"=").decode("ascii")
