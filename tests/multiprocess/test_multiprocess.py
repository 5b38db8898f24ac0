"""Many processes, one truth (issue #13): kill -9 under load, and nothing lost, doubled or missed.

Each test starts real processes on one SQLite file in ``tmp_path`` (see
:mod:`.support`), kills one with ``SIGKILL`` mid-load, waits for every accepted
run to end (leases of ``LEASE`` seconds have time to expire), and asserts on
the figures: 0 accepted runs lost, 0 runs duplicated, 0 node executions of a
live run by a second process, every execution counted in ``attempts``, and a
subscriber reconnecting with ``Last-Event-ID`` every ~2 s received every event
of every process exactly once, in log order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import (
    Figures,
    scenario_admin_beside_server,
    scenario_two_servers,
    scenario_workers,
)

pytestmark = pytest.mark.slow


def check(figures: Figures) -> None:
    assert figures.accepted > 0, figures.report()
    assert figures.events_expected > 0, figures.report()
    assert not figures.problems(), "\n".join([*figures.problems(), figures.report()])


def test_a_worker_killed_under_load_loses_and_repeats_nothing(tmp_path: Path) -> None:
    check(scenario_workers(tmp_path))


def test_an_admin_script_and_nexus_run_beside_a_live_server_leave_its_runs_alone(
    tmp_path: Path,
) -> None:
    check(scenario_admin_beside_server(tmp_path))


def test_two_servers_one_killed_and_restarted_lose_and_repeat_nothing(tmp_path: Path) -> None:
    check(scenario_two_servers(tmp_path))
