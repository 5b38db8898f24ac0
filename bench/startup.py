#!/usr/bin/env python
"""Start-up time: ``nexus serve`` to ready, ``nexus --help`` and ``import nexus_core``.

Each figure is the wall time of a fresh process, from spawn to exit, as a user
meets it (the operating system's file cache is warm: the same files are read
on every run). Rows:

* ``python -c pass``                 the interpreter alone: the floor, per venv;
* ``nexus --help``                   the console script as installed, help text from
                                     its cache (what every run after the first costs);
* ``nexus --help (no cache)``        ``NEXUS_CLI_NO_CACHE=1``: cyclopts lays the help
                                     out, the plugin command table is collected again
                                     through the plugin host (the first run after an
                                     install or upgrade);
* ``import nexus_core``              ``python -c "import nexus_core"``;
* ``nexus serve hello.py (ready)``   ``nexus serve examples/hello.py`` with every installed
                                     plugin, from spawn until ``GET /health/ready`` answers
                                     200 (polled every 5 ms); also its CPU time until then
                                     (utime + stime from /proc, steadier than wall time on a
                                     busy machine);
* ``... (no bytecode)``              the same with no compiled bytecode anywhere: every
                                     module is compiled from source on import, as in a venv
                                     installed without ``--compile-bytecode`` (and worse: the
                                     standard library too);
* ``kailash: import nexus``          ``python -c "import nexus"`` of Kailash Nexus, in
                                     its own venv (never the project's);
* ``kailash: from nexus import Nexus``  the import its docs start with.

Bytecode is made explicit, whatever the venv holds: the rows run with
``PYTHONPYCACHEPREFIX`` set to a scratch folder, which the untimed warm-up
fills (compiled rows) or which stays empty with ``PYTHONDONTWRITEBYTECODE=1``
(the "no bytecode" rows). ``nox -s bench`` also installs every venv with
compiled bytecode (``UV_COMPILE_BYTECODE=1``, ``compileall`` for the project's
own editable sources and the Kailash venv), so the other benchmarks compare
like with like.

Repetitions are interleaved round-robin (in a different order each round) so
load from elsewhere on a shared machine hits every row alike; medians are
reported with the spread. The script also checks what ``nexus --help``
imports: neither Litestar, nor mcp, nor ``nexus_core.app``.

    python bench/startup.py [--repeat 15] [--kailash-python PATH] [--json]

The Kailash interpreter is ``$NEXUS_BENCH_KAILASH_PYTHON``, else the
``.nox/kailash-nexus`` venv that ``nox -s bench`` makes from
``bench/requirements-kailash-nexus.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and mcp.py: keep this folder off sys.path so they never
# shadow the stdlib's http or the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

#: What `nox -s bench` makes (bench/requirements-kailash-nexus.txt).
DEFAULT_KAILASH = str(Path(__file__).resolve().parents[1] / ".nox/kailash-nexus/bin/python")
FORBIDDEN = ("litestar", "mcp", "nexus_core.app", "uvicorn", "prompt_toolkit", "httpx")
HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello.py"

_PROBE = """
import io, json, sys, contextlib
from nexus_plugin_cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["--help"])
print(json.dumps(sorted(sys.modules)))
"""


SERVE = "nexus serve hello.py (ready)"
SERVE_SOURCE = "nexus serve hello.py (ready, no bytecode)"


def _nexus_script() -> str | None:
    here = Path(sys.executable).parent / ("nexus.exe" if os.name == "nt" else "nexus")
    return str(here) if here.exists() else shutil.which("nexus")


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (Linux /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve_until_ready(
    argv: list[str], env: dict[str, str], timeout: float = 60
) -> tuple[float, float]:
    """Spawn ``argv`` (``{port}`` filled in); wall and CPU seconds until /health/ready is 200."""
    port = _free_port()
    command = [part.replace("{port}", str(port)) for part in argv]
    url = f"http://127.0.0.1:{port}/health/ready"
    workdir = tempfile.mkdtemp(prefix="nexus-bench-serve-")
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{command} exited {process.returncode}: "
                    f"{process.stderr.read().decode()[-500:] if process.stderr else ''}"
                )
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"{command} was not ready within {timeout:g} s")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.005)
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return elapsed, cpu


def _modules(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per row (default 15)")
    parser.add_argument(
        "--kailash-python",
        default=os.environ.get("NEXUS_BENCH_KAILASH_PYTHON", DEFAULT_KAILASH),
        help="python of a venv with kailash-nexus installed",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    nexus = _nexus_script()
    if nexus is None:
        print("the `nexus` command is not installed (pip install -e plugins/cli)", file=sys.stderr)
        return 1
    scratch = tempfile.mkdtemp(prefix="nexus-bench-")
    env = {
        **os.environ,
        "XDG_CACHE_HOME": os.path.join(scratch, "cache"),
        "XDG_CONFIG_HOME": os.path.join(scratch, "config"),
        "COLUMNS": "100",
    }
    for name in ("NEXUS_CLI_NO_CACHE", "NEXUS_APP", "NEXUS_URL", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    # Compiled: bytecode in a scratch tree the warm-up fills. Not: an empty tree, never written.
    compiled = {**env, "PYTHONPYCACHEPREFIX": os.path.join(scratch, "pyc")}
    source = {
        **env,
        "PYTHONPYCACHEPREFIX": os.path.join(scratch, "no-pyc"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env = compiled
    no_cache = {**env, "NEXUS_CLI_NO_CACHE": "1"}
    serve = [nexus, "serve", str(HELLO), "--port", "{port}"]

    rows: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], env),
        "nexus --help": ([nexus, "--help"], env),
        "nexus --help (no cache)": ([nexus, "--help"], no_cache),
        "import nexus_core": ([sys.executable, "-c", "import nexus_core"], env),
        "import nexus_core (no bytecode)": ([sys.executable, "-c", "import nexus_core"], source),
        SERVE: (serve, env),
        SERVE_SOURCE: (serve, source),
    }
    kailash_env = {**os.environ, "PYTHONPYCACHEPREFIX": compiled["PYTHONPYCACHEPREFIX"]}
    kailash_env.pop("PYTHONDONTWRITEBYTECODE", None)
    kailash_note = None
    kailash = args.kailash_python
    if kailash and Path(kailash).exists():
        probe = subprocess.run(
            [kailash, "-c", "import nexus, sys; print(nexus.__file__)"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and "site-packages" in probe.stdout:
            rows["kailash: python -c pass"] = ([kailash, "-c", "pass"], kailash_env)
            rows["kailash: import nexus"] = ([kailash, "-c", "import nexus"], kailash_env)
            rows["kailash: from nexus import Nexus"] = (
                [kailash, "-c", "from nexus import Nexus"],
                kailash_env,
            )
        else:
            kailash_note = f"KAILASH NOT MEASURED: `import nexus` fails in {kailash}"
    else:
        kailash_note = f"KAILASH NOT MEASURED: no python at {kailash!r} (see --kailash-python)"

    def measure(name: str) -> float:
        argv, row_env = rows[name]
        if name in (SERVE, SERVE_SOURCE):
            elapsed, cpu = _serve_until_ready(argv, row_env)
            cpu_times[name].append(cpu)
            return elapsed
        return _time(argv, row_env)

    cpu_times: dict[str, list[float]] = {SERVE: [], SERVE_SOURCE: []}
    # Warm-up: prime the help cache, the bytecode and the file cache; not timed.
    for name in rows:
        measure(name)
    cpu_times = {SERVE: [], SERVE_SOURCE: []}
    modules = _modules(env)
    loaded = [m for m in modules if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN]
    if kailash_note is None:
        count = subprocess.run(
            [kailash, "-c", "import sys; from nexus import Nexus; print(len(sys.modules))"],
            capture_output=True,
            text=True,
        )
        kailash_modules = int(count.stdout.strip() or 0)
    else:
        kailash_modules = None

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    times: dict[str, list[float]] = {name: [] for name in rows}
    names = list(rows)
    for _ in range(args.repeat):
        random.shuffle(names)
        for name in names:
            times[name].append(measure(name))
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    shutil.rmtree(scratch, ignore_errors=True)

    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    ratios: dict[str, float] = {}
    kailash_row = "kailash: import nexus"
    if kailash_row in medians:
        for row in ("nexus --help", "nexus --help (no cache)", "import nexus_core"):
            ratios[row] = medians[kailash_row] / medians[row]
    report = {
        "repeat": args.repeat,
        "load_average": [load_before, load_after],
        "median_ms": medians,
        "min_ms": {name: min(v) * 1000 for name, v in times.items()},
        "max_ms": {name: max(v) * 1000 for name, v in times.items()},
        "cpu_median_ms": {name: statistics.median(v) * 1000 for name, v in cpu_times.items()},
        "kailash_over_nexus": ratios,
        "help_imports": {"modules": len(modules), "forbidden_loaded": loaded},
        "kailash_modules": kailash_modules,
        "note": kailash_note,
        "targets_ms": {"nexus --help": 250, "import nexus_core": 100, SERVE: 500},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if not loaded else 1

    loads = ", ".join(f"{x:.2f}" for x in (load_before, load_after) if x is not None)
    print(f"start-up, median of {args.repeat} fresh processes (1-min load average {loads})")
    if kailash_note:
        print(kailash_note)
    print(f"{'':40} {'median ms':>10} {'min-max ms':>16} {'CPU ms':>8} {'Kailash/this':>13}")
    for name in rows:
        spread = f"{report['min_ms'][name]:.0f}-{report['max_ms'][name]:.0f}"
        ratio = f"{ratios[name]:.1f}x" if name in ratios else ""
        cpu = report["cpu_median_ms"].get(name)
        cpu_text = f"{cpu:.0f}" if cpu is not None else ""
        print(f"{name:40} {medians[name]:10.1f} {spread:>16} {cpu_text:>8} {ratio:>13}")
    print(
        f"bytecode: `{SERVE}` {medians[SERVE]:.0f} ms compiled, "
        f"{medians[SERVE_SOURCE]:.0f} ms compiling every module "
        f"({medians[SERVE_SOURCE] / medians[SERVE]:.1f}x)"
    )
    print()
    print(
        f"nexus --help imports {len(modules)} modules; "
        + (
            f"Kailash `from nexus import Nexus` imports {kailash_modules}. "
            if kailash_modules
            else ""
        )
        + ("none of " + ", ".join(FORBIDDEN) if not loaded else f"LOADED: {', '.join(loaded)}")
    )
    for row, target in report["targets_ms"].items():
        verdict = "met" if medians[row] < target else "MISSED"
        print(f"target {row} < {target} ms: {verdict} ({medians[row]:.0f} ms)")
    return 0 if not loaded else 1


if __name__ == "__main__":
    sys.exit(main())
