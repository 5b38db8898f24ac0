"""``python -m nexus_plugin_api``: a real server process, workers, graceful shutdown."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from api_support import subprocess_server, wait_for

pytestmark = pytest.mark.slow


def test_serves_and_drains_in_flight_requests_on_sigterm(tmp_path: Path) -> None:
    with subprocess_server(tmp_path) as server:
        assert httpx.get(f"{server.url}/health/ready").status_code == 200
        greeting = httpx.post(f"{server.url}/workflows/greet/runs", json={"name": "Ada"})
        assert greeting.json()["output"] == "Hello, Ada."

        answers: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{server.url}/workflows/slow/runs", json={"seconds": 1.5}, timeout=30)
            )
        )
        thread.start()

        def in_flight() -> bool:
            listed = httpx.get(f"{server.url}/runs", params={"status": "running"}).json()
            return bool(listed.get("items") if isinstance(listed, dict) else listed)

        wait_for(in_flight, timeout=60)  # the run is in flight
        code = server.stop()
        thread.join(30)
        assert code == 0, "".join(server.log)
        (answer,) = answers
        assert answer.status_code == 200
        assert answer.json()["status"] == "completed"
        assert any("stopped" in line for line in server.log)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health/live")


def test_an_accepted_async_run_survives_a_restart(tmp_path: Path) -> None:
    with subprocess_server(tmp_path) as server:
        started = httpx.post(
            f"{server.url}/workflows/slow/runs",
            json={"seconds": 2},
            headers={"Prefer": "respond-async"},
        )
        assert started.status_code == 202
        run_id = started.json()["run_id"]
        assert server.stop() == 0  # does not wait for it: it is left for the next start
    with subprocess_server(tmp_path) as server:

        def finished() -> bool:
            run = httpx.get(f"{server.url}/runs/{run_id}").json()
            return bool(run["status"] == "completed")

        wait_for(finished, timeout=30)
        assert httpx.get(f"{server.url}/runs/{run_id}").json()["output"] == "done"


def test_several_workers_share_the_port(tmp_path: Path) -> None:
    with subprocess_server(tmp_path, "--workers", "2") as server:
        wait_for(lambda: sum("serving on" in line for line in server.log) == 2, timeout=60)
        with httpx.Client(base_url=server.url) as http:
            outputs = {
                http.post("/workflows/add/runs", json={"a": n, "b": 1}).json()["output"]
                for n in range(20)
            }
        assert outputs == set(range(1, 21))
        assert server.stop() == 0
    assert any("started 2 workers" in line for line in server.log)
