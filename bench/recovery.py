"""Recovery after kill -9, and what several workers on one SQLite file serve.

Two measurements of the embedded tier (issue #13):

* **recovery**: two ``python -m nexus_plugin_api app.py`` servers share one
  SQLite file; a run of ``pipeline`` (``n1 -> n2 -> n3``, ``n2`` slow) is
  posted to one, which is killed with ``SIGKILL`` while ``n2`` runs. Measured:
  the time from the kill to the run's next node starting in the other server
  (its lease expires, the other claims the run and resumes it from its
  checkpoints), read from a node log the app writes (one ``O_APPEND`` line per
  node execution, with the pid and the wall-clock time). The killed server is
  restarted for the next round, and the roles alternate. The lease length and
  heartbeat are printed (``--lease``, ``--heartbeat``, written to the app's
  ``nexus.toml`` as ``services.runs.lease``/``heartbeat``); on a core without
  leases the run waits for its own server's restart and the round reports
  "not resumed".
* **throughput**: ``--workers 2`` against ``--workers 1`` on SQLite, the
  trivial ``greet`` of bench/http.py, driven by ``wrk`` (a different body on
  every request), ``--rounds`` rounds in rotating order, medians. With
  ``--baseline DIR`` (a checkout of the code from before, e.g. ``git worktree
  add /tmp/before 35902fe``) ``--workers 1`` of that code is measured too, and
  the ratio is what the current code costs against it.

    python bench/recovery.py                        # 5 recovery rounds, 3 x 10 s throughput
    python bench/recovery.py --lease 5 --heartbeat 1 --rounds 3 --duration 5
    python bench/recovery.py --baseline /tmp/before --json

Needs ``wrk`` on PATH (``apt-get install wrk``) and nexus-plugin-api installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def _standard_library_first() -> None:
    """Keep bench/ off sys.path (bench/http.py would shadow the stdlib's ``http``)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


_standard_library_first()

import urllib.error
import urllib.request

RECOVERY_APP = """
import os
import time

import anyio

from nexus_core import Nexus, WorkflowBuilder
from nexus_core.workflows import FunctionNode
from nexus_core.workflows.node import current_context

NODE_LOG = {node_log!r}
SLOW = {slow!r}

app = Nexus("recovery")


def record() -> None:
    context = current_context()
    line = f"{{context.run_id}} {{context.node_id}} {{os.getpid()}} {{time.time():.6f}}\\n"
    fd = os.open(NODE_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def n1(x: int) -> int:
    record()
    return x + 1


async def n2(y: int) -> int:
    record()
    await anyio.sleep(SLOW)
    return y * 2


async def n3(z: int) -> int:
    record()
    return z + 100


wb = WorkflowBuilder("pipeline")
wb.add_node(FunctionNode, "n1", {{"function": n1}})
wb.add_node(FunctionNode, "n2", {{"function": n2}})
wb.add_node(FunctionNode, "n3", {{"function": n3}})
wb.add_connection("n1", "result", "n2", "y")
wb.add_connection("n2", "result", "n3", "z")
wb.add_workflow_inputs("n1", {{"x": "x"}})
wb.set_output("n3", "result")
app.register(wb)
"""

GREET_APP = '''
from nexus_core import Nexus

app = Nexus("bench")


@app.workflow(read_only=True, idempotent=True)
async def greet(name: str, excited: bool = False) -> str:
    """Greet someone by name."""
    return f"Hello, {name}{'!' if excited else '.'}"
'''

LUA = """
local counter = 0
local headers = {{["Content-Type"] = "application/json"}}
math.randomseed(os.time() + {seed})
request = function()
  counter = counter + 1
  local body = string.format('{{"name":"user-%d-%d"}}', math.random(1, 1000000000), counter)
  return wrk.format("POST", "/workflows/greet/runs", headers, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lease_supported(pythonpath: str | None = None) -> bool:
    """Whether the core that servers will import has ``services.runs.lease``."""
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    probe = (
        "from nexus_core.config import RunsConfig; print('lease' in RunsConfig.__struct_fields__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=tempfile.gettempdir(),  # not the checkout: import what the servers import
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip() == "True"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update(NEXUS_DISABLE_PLUGINS="nexus-plugin-mcp,nexus-plugin-voice", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


@dataclass
class Server:
    cwd: Path
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.port = free_port()
        log = (self.cwd / f"serve-{self.port}.log").open("wb")
        command = [sys.executable, "-m", "nexus_plugin_api", "app.py", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--workers", str(self.workers)],
            cwd=self.cwd,
            env=clean_env(self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} (see {self.cwd})")
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(f"{self.url}/health/ready", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> float:
        """SIGKILL the server; the wall-clock time of the kill."""
        assert self.process is not None
        killed_at = time.time()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        return killed_at


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


def post(
    url: str, path: str, body: dict[str, object], headers: dict[str, str]
) -> dict[str, object]:
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dict(json.loads(answer.read()))


def node_lines(node_log: Path) -> list[tuple[str, str, int, float]]:
    found = []
    for line in node_log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            found.append((parts[0], parts[1], int(parts[2]), float(parts[3])))
    return found


def wait_for(predicate, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return None


def measure_recovery(
    scratch: Path, rounds: int, lease: float, heartbeat: float, slow: float
) -> dict[str, object]:
    """Rounds of: post a run to one server, kill it in n2, time until the other resumes it."""
    folder = scratch / "recovery"
    folder.mkdir()
    node_log = folder / "nodes.log"
    node_log.touch()
    (folder / "app.py").write_text(
        textwrap.dedent(RECOVERY_APP).format(node_log=str(node_log), slow=slow)
    )
    leases = lease_supported()
    config = f'[nexus]\nstorage = "sqlite:///{folder / "recovery.db"}"\n'
    if leases:
        config += f"\n[nexus.services.runs]\nlease = {lease}\nheartbeat = {heartbeat}\n"
    (folder / "nexus.toml").write_text(config)
    give_up = 3 * lease + 15 if leases else 15.0
    servers = [Server(folder).start(), Server(folder).start()]
    times: list[float | None] = []
    try:
        for round_ in range(rounds):
            victim, other = servers[round_ % 2], servers[(round_ + 1) % 2]
            assert victim.process is not None
            pid = victim.process.pid
            run = post(
                victim.url, "/workflows/pipeline/runs", {"x": round_}, {"Prefer": "respond-async"}
            )
            run_id = run["run_id"]
            in_n2 = wait_for(
                lambda run_id=run_id, pid=pid: any(
                    r == run_id and n == "n2" and p == pid for r, n, p, _ in node_lines(node_log)
                ),
                60,
            )
            if not in_n2:
                raise RuntimeError(f"round {round_ + 1}: the run never reached n2 on {pid}")
            killed_at = victim.kill()
            resumed = wait_for(
                lambda run_id=run_id, pid=pid: [
                    t for r, _, p, t in node_lines(node_log) if r == run_id and p != pid
                ],
                give_up,
            )
            took = (min(resumed) - killed_at) if resumed else None
            times.append(took)
            shown = f"{took:.2f} s" if took is not None else f"not resumed within {give_up:g} s"
            print(f"recovery round {round_ + 1}: {shown}", file=sys.stderr)
            victim.start()  # back for the next round (the roles alternate)
            if other.process is None or other.process.poll() is not None:
                raise RuntimeError(f"round {round_ + 1}: the other server exited")
    finally:
        for server in servers:
            server.stop()
    measured = [t for t in times if t is not None]
    return {
        "leases": leases,
        "lease_s": lease if leases else None,
        "heartbeat_s": heartbeat if leases else None,
        "slow_node_s": slow,
        "rounds": times,
        "resumed": len(measured),
        "median_s": statistics.median(measured) if measured else None,
        "min_s": min(measured) if measured else None,
        "max_s": max(measured) if measured else None,
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"cannot read a latency from {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str, lua: Path, connections: int, duration: float, threads: int
) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": int(bad.group(1)) if bad else 0}


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its descendants, from /proc."""
    total = 0
    todo = [pid]
    while todo:
        each = todo.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
            for task in Path(f"/proc/{each}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total / os.sysconf("SC_CLK_TCK")


def measure_throughput(
    scratch: Path,
    connections: int,
    duration: float,
    rounds: int,
    threads: int,
    warmup: float,
    baseline: Path | None,
) -> dict[str, dict[str, object]]:
    """``--workers 2`` vs ``--workers 1`` (and the baseline's ``--workers 1``), medians."""
    targets: dict[str, Server] = {}
    variants: list[tuple[str, int, dict[str, str]]] = [("workers-1", 1, {}), ("workers-2", 2, {})]
    if baseline is not None:
        paths = [baseline, *(baseline / "plugins" / p for p in ("api", "cli", "mcp"))]
        variants.append(("baseline-workers-1", 1, {"PYTHONPATH": os.pathsep.join(map(str, paths))}))
    for name, workers, env in variants:
        folder = scratch / name
        folder.mkdir()
        (folder / "app.py").write_text(textwrap.dedent(GREET_APP))
        (folder / "nexus.toml").write_text(f'[nexus]\nstorage = "sqlite:///{folder / "b.db"}"\n')
        targets[name] = Server(folder, workers=workers, env=env)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    with running(*targets.values()):
        for index, (name, server) in enumerate(targets.items()):
            print(f"starting {name}...", file=sys.stderr)
            server.start()
            (server.cwd / "load.lua").write_text(LUA.format(seed=index))
            run_wrk(server.url, server.cwd / "load.lua", connections, warmup, threads)
        names = list(targets)
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                server = targets[name]
                assert server.process is not None
                cpu_before = tree_cpu_seconds(server.process.pid)
                result = run_wrk(
                    server.url, server.cwd / "load.lua", connections, duration, threads
                )
                # CPU per request: what a request costs, whatever else loads the machine.
                spent = tree_cpu_seconds(server.process.pid) - cpu_before
                requests = result["rps"] * max(1, round(duration))  # wrk runs whole seconds
                result["cpu_us"] = spent / max(1.0, requests) * 1e6
                results[name].append(result)
                print(
                    f"round {round_ + 1} {name:19} {result['rps']:8.0f} req/s "
                    f"cpu {result['cpu_us']:5.0f} us/req "
                    f"p50 {result['p50_ms']:7.2f} ms p99 {result['p99_ms']:7.2f} ms "
                    f"non-2xx {result['non_2xx']:.0f}",
                    file=sys.stderr,
                )
    return {
        name: {
            "rps": statistics.median(r["rps"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "cpu_us": statistics.median(r["cpu_us"] for r in rs),
            "non_2xx": sum(int(r["non_2xx"]) for r in rs),
            "rounds": rs,
        }
        for name, rs in results.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recovery-rounds", type=int, default=5)
    parser.add_argument("--lease", type=float, default=2.0, help="services.runs.lease, seconds")
    parser.add_argument("--heartbeat", type=float, default=0.5, help="services.runs.heartbeat")
    parser.add_argument("--slow", type=float, default=30.0, help="seconds the middle node takes")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of untimed load first")
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--skip-recovery", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if not args.skip_throughput and shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="nexus-bench-recovery-"))
    report: dict[str, object] = {}
    if not args.skip_recovery:
        report["recovery"] = measure_recovery(
            scratch, args.recovery_rounds, args.lease, args.heartbeat, args.slow
        )
    if not args.skip_throughput:
        throughput = measure_throughput(
            scratch,
            args.connections,
            args.duration,
            args.rounds,
            args.threads,
            args.warmup,
            args.baseline,
        )
        report["throughput"] = throughput
        ratios = {
            "workers 2 / workers 1": throughput["workers-2"]["rps"] / throughput["workers-1"]["rps"]
        }  # type: ignore[operator]
        if "baseline-workers-1" in throughput:
            ratios["workers 1 / baseline workers 1"] = (
                throughput["workers-1"]["rps"] / throughput["baseline-workers-1"]["rps"]  # type: ignore[operator]
            )
            ratios["CPU per request, workers 1 / baseline workers 1"] = (
                throughput["workers-1"]["cpu_us"] / throughput["baseline-workers-1"]["cpu_us"]  # type: ignore[operator]
            )
        report["ratios"] = ratios
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print()
    recovery = report.get("recovery")
    if isinstance(recovery, dict):
        if recovery["leases"]:
            setting = f"lease {recovery['lease_s']:g} s, heartbeat {recovery['heartbeat_s']:g} s"
        else:
            setting = "this core has no leases"
        print(
            f"Recovery after kill -9 (two servers on one SQLite file; {setting}): "
            f"{recovery['resumed']}/{len(recovery['rounds'])} runs resumed elsewhere"  # type: ignore[arg-type]
        )
        if recovery["median_s"] is not None:
            print(
                f"  kill -> resumed: median {recovery['median_s']:.2f} s "
                f"(min {recovery['min_s']:.2f} s, max {recovery['max_s']:.2f} s)"
            )
    throughput = report.get("throughput")
    if isinstance(throughput, dict):
        print(
            f"Throughput on SQLite, trivial greet: {args.connections} connections, "
            f"{args.duration:g} s x {args.rounds} rounds (medians)"
        )
        print(
            f"{'server':20} {'req/s':>9} {'CPU us/req':>11} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'non-2xx':>8}"
        )
        for name, row in throughput.items():
            print(
                f"{name:20} {row['rps']:9.0f} {row['cpu_us']:11.0f} {row['p50_ms']:8.2f}"
                f" {row['p99_ms']:8.2f} {row['non_2xx']:8d}"
            )
        for label, value in report["ratios"].items():  # type: ignore[union-attr]
            print(f"{label:32} {value:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
