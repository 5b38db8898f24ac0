"""Test matrix: the core alone, each plugin alone with the core, everything together.

nox -s tests        # everything installed, the whole suite (what CI runs), on every core
nox -s quick        # the core tests without the slow (subprocess-heavy) ones: under a minute
nox -s core_alone   # nexus-core only: proves the core imports no plugin
nox -s plugin       # each plugin alone with the core
nox -s lint         # ruff, then mypy --strict over the core and every plugin
nox -s typecheck    # mypy alone (what lint runs after ruff)
nox -s bench        # benchmarks against peers (not part of the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PLUGINS = sorted(p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml"))
PASSENV = ("NEXUS_REQUIRE_SERVICES", "NEXUS_REDIS_URL", "NEXUS_POSTGRES_URL")


def _install_core(session: nox.Session) -> None:
    session.install("-e", ".[test]")


#: pytest-xdist: one worker per core; ``loadfile`` keeps a module on one worker, so a
#: module's shared server (a ``scope="module"`` fixture) is started once. Tests use
#: their own tmp_path, ephemeral ports and environment, so workers do not meet.
PARALLEL = ("-n", "auto", "--dist", "loadfile")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite with the core and every plugin installed, in parallel.

    ``nox -s tests -- -n 0`` runs it serially (e.g. to debug one failure).
    """
    _install_core(session)
    for name in PLUGINS:
        session.install("-e", f"plugins/{name}[test]")
    paths = ["tests", *(f"plugins/{name}/tests" for name in PLUGINS)]
    session.run("pytest", *PARALLEL, *paths, *session.posargs)


@nox.session
def quick(session: nox.Session) -> None:
    """The fast loop: the core's tests without those marked slow (subprocesses, installs).

    Under a minute on two cores. Everything else still runs in ``nox -s tests``.
    """
    _install_core(session)
    session.run("pytest", "tests", "-m", "not slow", "-q", *session.posargs)


@nox.session
def core_alone(session: nox.Session) -> None:
    """Only nexus-core installed: the core must work, and must not import any plugin."""
    _install_core(session)
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m, sys; "
        "extra = [d.metadata['Name'] for d in m.distributions() "
        "if d.metadata['Name'].startswith('nexus-plugin')]; "
        "sys.exit(f'plugins installed: {extra}' if extra else 0)",
    )
    session.run("pytest", "tests", *session.posargs)


@nox.session
@nox.parametrize("name", PLUGINS)
def plugin(session: nox.Session, name: str) -> None:
    """One plugin alone with the core: its own tests pass without the other plugins."""
    _install_core(session)
    session.install("-e", f"plugins/{name}[test]")
    session.run("pytest", f"plugins/{name}/tests", *session.posargs)


#: What mypy checks (strict, configured in pyproject.toml's [tool.mypy]): the
#: core, the standard nodes and every plugin's package.
TYPED = [
    "nexus_core",
    "sdk_nodes",
    *(str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("plugins/*/nexus_plugin_*"))),
]


def _mypy(session: nox.Session) -> None:
    # The test extra too: the contract suites in nexus_core.testing are typed against
    # pytest and hypothesis (without them mypy sees untyped decorators).
    session.install("-e", ".[test,typecheck]")
    for name in PLUGINS:
        session.install("-e", f"plugins/{name}")
    session.run("mypy", *TYPED, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check over the whole tree, then mypy over the core and plugins."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    _mypy(session)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the core and every plugin (the second half of lint)."""
    _mypy(session)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with the peers; peers are installed only here.

    Every venv holds compiled bytecode, as a peer installed by pip does: uv
    compiles what it installs (``UV_COMPILE_BYTECODE=1``), ``compileall`` does
    the project's editable sources and the Kailash venv. Without it the first
    process to import a module pays for compiling it (``nexus serve`` took
    2.8 s to ready instead of 0.96 s), and nothing is written at all where
    ``PYTHONDONTWRITEBYTECODE`` is set.
    """
    session.env["UV_COMPILE_BYTECODE"] = "1"
    _install_core(session)
    for name in PLUGINS:
        session.install("-e", f"plugins/{name}")
    session.install("-r", "bench/requirements.txt")
    sources = ["nexus_core", "sdk_nodes", *(f"plugins/{name}" for name in PLUGINS)]
    session.run("python", "-m", "compileall", "-q", "-j", "0", *sources, silent=True)
    env = {"NEXUS_BENCH_KAILASH_PYTHON": _kailash_nexus_python(session)}
    scripts = session.posargs or sorted(str(p) for p in ROOT.glob("bench/*.py"))
    for script in scripts:
        session.run("python", script, env=env)


#: Compile every module of a venv's site-packages (what pip does at install; again here in
#: case the venv was made without it).
_COMPILE_SITE = (
    "import compileall, sysconfig; "
    "compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
)


def _kailash_nexus_python(session: nox.Session) -> str:
    """A venv of its own for Kailash Nexus: it pins mcp 1.x, we run on 2.x. Compiled bytecode."""
    venv = ROOT / ".nox" / "kailash-nexus"
    python = venv / "bin" / "python"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
    requirements = ROOT / "bench" / "requirements-kailash-nexus.txt"
    session.run(
        str(python),
        "-m",
        "pip",
        "install",
        "-q",
        "--compile",
        "-r",
        str(requirements),
        external=True,
    )
    session.run(str(python), "-c", _COMPILE_SITE, external=True, silent=True)
    return str(python)
