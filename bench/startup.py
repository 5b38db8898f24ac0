#!/usr/bin/env python
"""Start-up time: ``nexus --help`` and ``import nexus_core`` against Kailash Nexus.

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
* ``kailash: import nexus``          ``python -c "import nexus"`` of Kailash Nexus, in
                                     its own venv (never the project's);
* ``kailash: from nexus import Nexus``  the import its docs start with.

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: What `nox -s bench` makes (bench/requirements-kailash-nexus.txt).
DEFAULT_KAILASH = str(Path(__file__).resolve().parents[1] / ".nox/kailash-nexus/bin/python")
FORBIDDEN = ("litestar", "mcp", "nexus_core.app", "uvicorn", "prompt_toolkit", "httpx")

_PROBE = """
import io, json, sys, contextlib
from nexus_plugin_cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["--help"])
print(json.dumps(sorted(sys.modules)))
"""


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
    for name in ("NEXUS_CLI_NO_CACHE", "NEXUS_APP", "NEXUS_URL"):
        env.pop(name, None)
    no_cache = {**env, "NEXUS_CLI_NO_CACHE": "1"}

    rows: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], env),
        "nexus --help": ([nexus, "--help"], env),
        "nexus --help (no cache)": ([nexus, "--help"], no_cache),
        "import nexus_core": ([sys.executable, "-c", "import nexus_core"], env),
    }
    kailash_note = None
    kailash = args.kailash_python
    if kailash and Path(kailash).exists():
        probe = subprocess.run(
            [kailash, "-c", "import nexus, sys; print(nexus.__file__)"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and "site-packages" in probe.stdout:
            rows["kailash: python -c pass"] = ([kailash, "-c", "pass"], dict(os.environ))
            rows["kailash: import nexus"] = ([kailash, "-c", "import nexus"], dict(os.environ))
            rows["kailash: from nexus import Nexus"] = (
                [kailash, "-c", "from nexus import Nexus"],
                dict(os.environ),
            )
        else:
            kailash_note = f"KAILASH NOT MEASURED: `import nexus` fails in {kailash}"
    else:
        kailash_note = f"KAILASH NOT MEASURED: no python at {kailash!r} (see --kailash-python)"

    # Warm-up: prime the help cache and the file cache; not timed.
    for argv, row_env in rows.values():
        _time(argv, row_env)
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
            argv, row_env = rows[name]
            times[name].append(_time(argv, row_env))
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
        "kailash_over_nexus": ratios,
        "help_imports": {"modules": len(modules), "forbidden_loaded": loaded},
        "kailash_modules": kailash_modules,
        "note": kailash_note,
        "targets_ms": {"nexus --help": 250, "import nexus_core": 100},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if not loaded else 1

    loads = ", ".join(f"{x:.2f}" for x in (load_before, load_after) if x is not None)
    print(f"start-up, median of {args.repeat} fresh processes (1-min load average {loads})")
    if kailash_note:
        print(kailash_note)
    print(f"{'':36} {'median ms':>10} {'min-max ms':>16} {'Kailash/this':>13}")
    for name in rows:
        spread = f"{report['min_ms'][name]:.0f}-{report['max_ms'][name]:.0f}"
        ratio = f"{ratios[name]:.1f}x" if name in ratios else ""
        print(f"{name:36} {medians[name]:10.1f} {spread:>16} {ratio:>13}")
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
