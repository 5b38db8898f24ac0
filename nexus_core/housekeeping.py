"""The host's scheduled chores: retention of old records and the push of metrics.

Started by :meth:`Nexus.running <nexus_core.Nexus.running>` in the host's task
group, stopped with it. Both read ``services.monitoring``:

* ``retention_days``: every ``retention_interval`` seconds, runs (finished,
  with their checkpoints and the blobs of their values stored by reference),
  events and audit records older than that are
  deleted through :meth:`Storage.prune <nexus_core.storage.base.Storage.prune>`,
  ``retention_batch`` rows of each kind per call, yielding to requests between
  calls;
* ``export_url``: every ``export_interval`` seconds the host's metrics are
  pushed to that Prometheus Pushgateway (job ``export_job``, grouped by
  ``instance``), from a worker thread.

A failure of either is logged (a WARNING) and tried again at the next tick;
it never stops the host.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from .payloads import prune_run_blobs

if TYPE_CHECKING:
    from .app import Nexus

__all__ = ["DAY", "export_forever", "prune_forever", "prune_old_records", "start"]

#: Seconds in a day: ``retention_days`` is multiplied by this.
DAY = 86400.0

_log = logging.getLogger("nexus.housekeeping")


def start(app: Nexus, task_group: anyio.abc.TaskGroup) -> None:
    """Start the chores ``app``'s settings ask for in ``task_group`` (the host's)."""
    monitoring = app.config.nexus.services.monitoring
    if monitoring.retention_days is not None:
        task_group.start_soon(prune_forever, app)
    if monitoring.export_url and monitoring.metrics:
        task_group.start_soon(export_forever, app)


async def prune_old_records(app: Nexus, *, now: float | None = None) -> int:
    """Delete, batch by batch, what is older than ``retention_days``; the number of rows.

    Returns 0 when no retention is configured. Raises ``NotImplementedError``
    when the storage backend cannot prune.
    """
    monitoring = app.config.nexus.services.monitoring
    if monitoring.retention_days is None or app.storage is None:
        return 0
    before = (time.time() if now is None else now) - monitoring.retention_days * DAY
    total = 0
    while True:
        deleted = await app.storage.prune(before, limit=monitoring.retention_batch)
        total += deleted
        if deleted == 0:
            break
        await anyio.lowlevel.checkpoint()  # between batches, requests go first
    # Values of pruned runs stored by reference (services.runs.inline_limit) go too.
    return total + await prune_run_blobs(app.storage, before)


async def prune_forever(app: Nexus) -> None:
    """Prune every ``retention_interval`` seconds, the first time at start."""
    monitoring = app.config.nexus.services.monitoring
    while True:
        try:
            deleted = await prune_old_records(app)
        except NotImplementedError as exc:
            _log.warning("retention_days is set but nothing is pruned: %s", exc)
            return
        except Exception as exc:
            _log.warning("pruning old records failed (%s: %s)", type(exc).__name__, exc)
        else:
            if deleted:
                _log.info(
                    "pruned %d records older than %g days", deleted, monitoring.retention_days
                )
        await anyio.sleep(monitoring.retention_interval)


async def export_forever(app: Nexus) -> None:
    """Push the metrics every ``export_interval`` seconds, the first time at start."""
    monitoring = app.config.nexus.services.monitoring
    url = monitoring.export_url
    assert url is not None
    failing = False
    while True:
        try:
            await app.metrics.push(
                url, job=monitoring.export_job, grouping_key={"instance": app.instance_id}
            )
        except Exception as exc:
            if not failing:  # one warning per outage, not one per tick
                _log.warning("pushing metrics to %s failed (%s: %s)", url, type(exc).__name__, exc)
            failing = True
        else:
            if failing:
                _log.info("pushing metrics to %s works again", url)
            failing = False
        await anyio.sleep(monitoring.export_interval)
