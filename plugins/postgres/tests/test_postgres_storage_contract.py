"""PostgresStorage keeps every role contract of nexus_core.testing, unchanged."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from nexus_core.testing.storage import StorageContract
from pg_support import Schemas

from nexus_plugin_postgres.storage import PostgresStorage


class TestPostgresStorage(StorageContract):
    # Fewer random sequences than the default: each example migrates a new schema.
    state_machine_settings = settings(
        max_examples=10,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @pytest.fixture
    def storage_factory(self, schemas: Schemas) -> Callable[[], PostgresStorage]:
        return lambda: PostgresStorage(schemas.url(pool_max="4"))
