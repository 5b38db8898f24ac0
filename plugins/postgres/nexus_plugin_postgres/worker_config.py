"""``[nexus.plugins.procrastinate]``: the settings of the ``procrastinate`` executor.

Import-light (no psycopg, no Procrastinate): the host reads it with the configuration.
"""

from __future__ import annotations

import msgspec
from nexus_core.plugin import ConfigSectionSpec, ConfigStruct, ExecutorSpec

__all__ = ["ProcrastinateConfig", "config_sections", "executors"]


class ProcrastinateConfig(ConfigStruct, kw_only=True):
    """``[nexus.plugins.procrastinate]``: the queue of the ``procrastinate`` executor.

    ``url`` is the PostgreSQL database of the queue (default: the run store's
    URL when it is ``postgresql://``). ``priorities`` maps a workflow to its
    jobs' priority (higher first; default 0), ``limits`` to the most runs of
    it executing at once across all workers, ``queues`` to its queue (default:
    the workflow's name). A worker whose heartbeat is older than
    ``stalled_after`` seconds (default: ``services.runs.lease``) is taken for
    dead and its jobs are queued again. ``pool_size`` bounds each process's
    connections to the queue. ``/health/ready``'s ``queue`` check fails while
    fewer than ``ready_min_workers`` workers beat (0: only the queue's tables
    must answer).
    """

    url: str | None = None
    priorities: dict[str, int] = msgspec.field(default_factory=dict)
    limits: dict[str, int] = msgspec.field(default_factory=dict)
    queues: dict[str, str] = msgspec.field(default_factory=dict)
    stalled_after: float | None = None
    pool_size: int = 10
    ready_min_workers: int = 1

    def __post_init__(self) -> None:
        for workflow, limit in self.limits.items():
            if limit < 1:
                raise ValueError(f"limits.{workflow} must be at least 1, got {limit}")
        if self.stalled_after is not None and self.stalled_after <= 0:
            raise ValueError(f"stalled_after must be positive, got {self.stalled_after:g}")
        if self.ready_min_workers < 0:
            raise ValueError(f"ready_min_workers must be 0 or more, got {self.ready_min_workers}")
        if self.pool_size < 2:
            raise ValueError(f"pool_size must be at least 2, got {self.pool_size}")


def executors() -> list[ExecutorSpec]:
    """The spec the plugin's ``nexus_executors`` hook returns."""
    return [
        ExecutorSpec(
            name="procrastinate",
            factory="nexus_plugin_postgres.executor:ProcrastinateExecutor",
            description="Runs are Procrastinate jobs in PostgreSQL; `nexus worker` executes them.",
        )
    ]


def config_sections() -> list[ConfigSectionSpec]:
    """The section the plugin's ``nexus_config_sections`` hook returns."""
    return [
        ConfigSectionSpec(
            name="plugins.procrastinate",
            factory="nexus_plugin_postgres.worker_config:ProcrastinateConfig",
            description="The procrastinate executor: queue URL, priorities, limits, reaper.",
        )
    ]
