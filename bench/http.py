"""HTTP invoke throughput: Nexus REST vs a bare Litestar handler vs Kailash Nexus.

Three servers answer the same trivial function, ``greet(name, excited=False)``:

* ``nexus``: ``python -m nexus_plugin_api app.py`` (uvicorn, httptools, uvloop) with the
  default embedded storage on (``sqlite:///nexus.db`` in a scratch directory): every
  request goes through ``app.invoke`` (auth, session, validation, run record,
  checkpoint, events, audit, metrics). The function is ``async def``, run inline as
  the bare handler and Kailash run theirs. ``nexus-def`` is the same server and
  function written as a plain ``def``, which Nexus runs in a worker thread (the
  price of that safety, shown on its own line).
* ``litestar``: a bare Litestar handler (msgspec-validated body, call, JSON answer) on
  the same uvicorn settings and worker count.
* ``kailash``: Kailash Nexus (``kailash-nexus`` from PyPI, run from its own venv,
  ``--kailash-python``, default ``$NEXUS_BENCH_KAILASH_PYTHON``, else the
  ``.nox/kailash-nexus`` venv that ``nox -s bench`` makes) serving the same function
  with ``@app.handler``; its own ``app.start()`` server; its per-minute rate limit
  switched off so it is measured, not throttled.

Load: ``wrk`` (Debian's package) with a Lua script that sends a different body on every
request (Kailash answers repeated identical bodies from a cache), 16 connections,
``--duration`` seconds per measurement, ``--rounds`` rounds in a rotating order so a
burst of load elsewhere on the machine hits every server alike. Non-2xx answers are
counted and reported. Also measured: the idle RSS of each server (before any load) and
of ``python -m nexus_plugin_api examples/hello.py``.

    python bench/http.py                       # defaults: 16 connections, 10 s, 3 rounds
    python bench/http.py --workers 2 --duration 5 --rounds 2
    python bench/http.py --skip-kailash --json

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

ROOT = Path(__file__).resolve().parent.parent
#: What `nox -s bench` makes (bench/requirements-kailash-nexus.txt).
KAILASH_VENV_PYTHON = ROOT / ".nox" / "kailash-nexus" / "bin" / "python"

NEXUS_APP = '''
from nexus_core import Nexus

app = Nexus("bench")


@app.workflow(read_only=True, idempotent=True)
async def greet(name: str, excited: bool = False) -> str:
    """Greet someone by name (inline on the event loop, as the peers run it)."""
    return f"Hello, {name}{'!' if excited else '.'}"


@app.workflow(read_only=True, idempotent=True)
def greet_in_thread(name: str, excited: bool = False) -> str:
    """The same, as a plain ``def``: Nexus runs it in a worker thread."""
    return f"Hello, {name}{'!' if excited else '.'}"
'''

LITESTAR_APP = """
import msgspec
from litestar import Litestar, post


class GreetInput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    excited: bool = False


def greet(name: str, excited: bool = False) -> str:
    return f"Hello, {name}{'!' if excited else '.'}"


@post("/workflows/greet/runs", status_code=200)
async def run(data: GreetInput) -> dict[str, str]:
    return {"output": greet(data.name, data.excited)}


app = Litestar([run], openapi_config=None, logging_config=None)
"""

KAILASH_APP = """
import sys

from nexus import Nexus

app = Nexus(api_port=int(sys.argv[1]), mcp_port=int(sys.argv[2]), rate_limit=None)


@app.handler("greet", description="Greet someone by name.")
async def greet(name: str, excited: bool = False) -> dict:
    return {"result": f"Hello, {name}{'!' if excited else '.'}"}


app.start()
"""

LUA = """
local counter = 0
local path = "{path}"
local headers = {{["Content-Type"] = "application/json"}}
math.randomseed(os.time() + {seed})
request = function()
  counter = counter + 1
  local excited = "false"
  if counter % 2 == 0 then excited = "true" end
  local inputs = string.format('{{"name":"user-%d-%d","excited":%s}}',
                               math.random(1, 1000000000), counter, excited)
  return wrk.format("POST", path, headers, {wrap})
end
"""


@dataclass
class Target:
    name: str
    command: list[str]
    path: str
    wrap: str  # Lua expression of the body, given `inputs`
    port: int
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    idle_rss_mb: float | None = None
    results: list[dict[str, float]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its descendants, in MB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(entry))
        except (OSError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _standard_http() -> None:
    """This file is named http.py: keep its folder off sys.path so ``http`` is the stdlib's."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def wait_ready(target: Target, timeout: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    body = json.dumps({"name": "warm"}).encode()
    if target.name == "kailash":
        body = json.dumps({"inputs": {"name": "warm"}}).encode()
    url = f"http://127.0.0.1:{target.port}{target.path}"
    while time.monotonic() < deadline:
        assert target.process is not None
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.process.returncode}")
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"{target.name} did not answer on port {target.port}")


@contextlib.contextmanager
def running(target: Target) -> Iterator[Target]:
    log = open(target.cwd / f"{target.name}.log", "wb")  # noqa: SIM115 - closed below
    target.process = subprocess.Popen(
        target.command,
        cwd=target.cwd,
        env={**os.environ, **target.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ready(target)
        time.sleep(1.0)
        target.idle_rss_mb = tree_rss_mb(target.process.pid)
        yield target
    finally:
        if target.process.poll() is None:
            os.killpg(target.process.pid, signal.SIGTERM)
            try:
                target.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(target.process.pid, signal.SIGKILL)
                target.process.wait()
        log.close()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"cannot read a latency from {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    target: Target, lua: Path, connections: int, duration: float, threads: int
) -> dict[str, float]:
    url = f"http://127.0.0.1:{target.port}"
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
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": socket_errors,
    }


def idle_rss_of_example(scratch: Path, env: dict[str, str], label: str) -> float:
    """Idle RSS of ``python -m nexus_plugin_api examples/hello.py`` (one process)."""
    port = free_port()
    target = Target(
        name=f"hello-{label}",
        command=[
            sys.executable,
            "-m",
            "nexus_plugin_api",
            str(ROOT / "examples" / "hello.py"),
            "--port",
            str(port),
        ],
        path="/workflows/greet/runs",
        wrap="inputs",
        port=port,
        cwd=scratch / f"hello-{label}",
        env=env,
    )
    target.cwd.mkdir()
    with running(target):
        time.sleep(2)
        assert target.process is not None
        return tree_rss_mb(target.process.pid)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="server processes (nexus, litestar)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of untimed load first")
    parser.add_argument(
        "--kailash-python",
        default=os.environ.get("NEXUS_BENCH_KAILASH_PYTHON", str(KAILASH_VENV_PYTHON)),
        help="a Python with kailash-nexus installed (never the project's venv)",
    )
    parser.add_argument("--skip-kailash", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    _standard_http()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="nexus-bench-http-"))
    (scratch / "nexus").mkdir()
    (scratch / "nexus" / "app.py").write_text(textwrap.dedent(NEXUS_APP))
    (scratch / "nexus-def").mkdir()
    (scratch / "nexus-def" / "app.py").write_text(textwrap.dedent(NEXUS_APP))
    (scratch / "litestar").mkdir()
    (scratch / "litestar" / "bare.py").write_text(textwrap.dedent(LITESTAR_APP))
    (scratch / "kailash").mkdir()
    (scratch / "kailash" / "kserve.py").write_text(textwrap.dedent(KAILASH_APP))
    clean_env = {"NEXUS_DISABLE_PLUGINS": "nexus-plugin-mcp"}  # HTTP only, like the others

    def nexus_target(name: str, workflow: str) -> Target:
        command = [sys.executable, "-m", "nexus_plugin_api", "app.py"]
        return Target(
            name=name,
            command=[*command, "--port", "{port}", "--workers", str(args.workers)],
            path=f"/workflows/{workflow}/runs",
            wrap="inputs",
            port=0,
            cwd=scratch / name,
            env=clean_env,
        )

    targets = [
        nexus_target("nexus", "greet"),
        nexus_target("nexus-def", "greet_in_thread"),
        Target(
            name="litestar",
            command=[
                sys.executable,
                "-m",
                "uvicorn",
                "bare:app",
                "--port",
                "{port}",
                "--workers",
                str(args.workers),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            path="/workflows/greet/runs",
            wrap="inputs",
            port=0,
            cwd=scratch / "litestar",
        ),
    ]
    kailash_note = ""
    if not args.skip_kailash:
        if Path(args.kailash_python).exists():
            targets.append(
                Target(
                    name="kailash",
                    command=[args.kailash_python, "kserve.py", "{port}", str(free_port())],
                    path="/workflows/greet/execute",
                    wrap="'{\"inputs\":' .. inputs .. '}'",
                    port=0,
                    cwd=scratch / "kailash",
                )
            )
        else:
            kailash_note = f"KAILASH NOT MEASURED: no {args.kailash_python}"
            print(kailash_note, file=sys.stderr)

    for index, target in enumerate(targets):
        target.port = free_port()
        target.command = [part.replace("{port}", str(target.port)) for part in target.command]
        lua = scratch / f"{target.name}.lua"
        lua.write_text(LUA.format(path=target.path, wrap=target.wrap, seed=index))

    load_before = load_average()
    with contextlib.ExitStack() as stack:
        for target in targets:
            print(f"starting {target.name} on port {target.port}...", file=sys.stderr)
            stack.enter_context(running(target))
            print(f"  idle RSS {target.idle_rss_mb:.0f} MB", file=sys.stderr)
        for target in targets:
            run_wrk(
                target, scratch / f"{target.name}.lua", args.connections, args.warmup, args.threads
            )
        for round_ in range(args.rounds):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
            for target in order:
                result = run_wrk(
                    target,
                    scratch / f"{target.name}.lua",
                    args.connections,
                    args.duration,
                    args.threads,
                )
                target.results.append(result)
                print(
                    f"round {round_ + 1} {target.name:9} {result['rps']:9.0f} req/s "
                    f"p50 {result['p50_ms']:7.2f} ms p99 {result['p99_ms']:7.2f} ms "
                    f"non-2xx {result['non_2xx']}",
                    file=sys.stderr,
                )
    load_after = load_average()
    hello_rss = idle_rss_of_example(scratch, clean_env, "api-only")
    hello_rss_all = idle_rss_of_example(scratch, {}, "all-plugins")

    summary = {}
    for target in targets:
        rs = target.results
        summary[target.name] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "non_2xx": sum(int(r["non_2xx"]) for r in rs),
            "socket_errors": sum(int(r["socket_errors"]) for r in rs),
            "idle_rss_mb": target.idle_rss_mb,
            "rounds": rs,
        }
    report = {
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "workers": args.workers,
        "load_before": load_before,
        "load_after": load_after,
        "idle_rss_hello_example_mb": hello_rss,
        "idle_rss_hello_example_all_plugins_mb": hello_rss_all,
        "servers": summary,
        "note": kailash_note,
    }
    nexus = summary["nexus"]["rps"]
    ratios = {"nexus / litestar": nexus / summary["litestar"]["rps"]}
    if "kailash" in summary and summary["kailash"]["rps"]:
        ratios["nexus / kailash"] = nexus / summary["kailash"]["rps"]
        ratios["nexus-def / kailash"] = summary["nexus-def"]["rps"] / summary["kailash"]["rps"]
    report["ratios"] = ratios
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print()
    print(
        f"HTTP invoke of a trivial function: {args.connections} connections, "
        f"{args.duration:g} s x {args.rounds} rounds (medians), {args.workers} worker(s); "
        f"load {load_before} -> {load_after}"
    )
    if kailash_note:
        print(kailash_note)
    print(f"{'server':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'idle RSS':>9}")
    for name, row in summary.items():
        print(
            f"{name:10} {row['rps']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{row['non_2xx']:8d} {row['idle_rss_mb']:7.0f}MB"
        )
    for label, value in ratios.items():
        print(f"{label:20} {value:6.2f}x")
    print(
        f"idle RSS of `python -m nexus_plugin_api examples/hello.py`: {hello_rss:.0f} MB "
        f"(every installed plugin loaded: {hello_rss_all:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
