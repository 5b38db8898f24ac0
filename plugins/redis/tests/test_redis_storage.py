"""The cache and session role contract suites of nexus_core.testing, on the machine's Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from nexus_core.testing import CacheContract, SessionStoreContract
from redis_support import delete_prefix, new_prefix, with_prefix

from nexus_plugin_redis.storage import RedisBackend


class TestRedisBackend(CacheContract, SessionStoreContract):
    """Every test (every hypothesis example) gets a new prefix: an empty backend."""

    @pytest.fixture
    def storage_factory(self, redis_base: str) -> Iterator[Callable[[], RedisBackend]]:
        prefixes: list[str] = []

        def make() -> RedisBackend:
            prefixes.append(new_prefix())
            return RedisBackend(with_prefix(redis_base, prefixes[-1]))

        yield make
        for name in prefixes:
            delete_prefix(redis_base, name)
