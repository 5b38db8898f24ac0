"""The docs are tested: their code runs, the reference is fresh, every hook is documented.

How the code blocks of a page run. Each page gets a fresh temporary working
directory, with every ``NEXUS_*`` variable unset, so the default ``.nexus/<app>.db``
lands there. Blocks are taken in page order:

- a block right after ``<!-- file: PATH -->`` is written to ``PATH``, and one after
  ``<!-- append: PATH -->`` is appended to it (later blocks import or run it);
- any other ``python`` block runs, in one namespace per page (``__name__`` is
  ``"__main__"``, the directory is on ``sys.path``);
- in a ``console`` block each ``$ python ...`` command runs (leading ``VAR=value``
  words set environment variables) and must exit 0 and print what the lines
  below it show, where ``...`` matches anything;
- ``$ nexus ...`` and ``$ curl ...`` commands run too, in ``bash`` (so ``|``
  and ``|| echo`` work), with standard error shown after standard output as a
  terminal shows both; the user's config folder is the page directory's own;
- the reader starts in the checkout's root and ``$ cd DIR`` moves them (in
  the page's bookkeeping; the commands still run in the page's directory);
- ``$ pip install -e PATH ...`` is checked, not run: ``PATH``, taken from
  where the reader is (after the page's ``cd`` commands), must be a
  distribution of the checkout, and installed; so a command that fails when
  pasted in the folder the page put the reader in fails here too; other
  commands (``mkdir``) are shown, not run;
- a console block right after ``<!-- serve -->`` holds one command that serves
  the app (``nexus serve app.py --port 8000``): it is started in the
  background on a free port, which replaces ``8000`` in every later block of
  the page, and it runs until the page ends;
- ``<!-- requires: module ... -->`` says the rest of the page needs those
  modules (the channel plugins): when one is not importable, as in the
  ``core_alone`` session, the rest of the page is not run and the test skips,
  saying so;
- a block right after ``<!-- skip -->`` is shown, not run.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import inspect
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest

import nexus_core
from nexus_core import hookspecs
from nexus_core.plugins import PluginHost

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
PLUGIN_GUIDE = DOCS / "how-to" / "write-a-plugin.md"
#: Pages other engineers write and test; linked from here, not run by this file.
OTHERS = {
    "how-to/api.md",
    "how-to/cli.md",
    "how-to/mcp.md",
    "how-to/secure-a-deployment.md",
}
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("nexus_"))
LANGUAGES = {"python", "console", "toml", "yaml", "text", "json"}


@dataclass
class Block:
    """One fenced code block of a page."""

    language: str
    text: str
    line: int
    directive: str | None = None  # "file", "append", "skip" or "serve"
    target: str | None = None  # the path of a file or append directive
    requires: tuple[str, ...] = ()  # modules the page needs from this block on


_FENCE = re.compile(r"^```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*(file|append|skip|serve)\s*(?::\s*(\S+))?\s*-->$")
_REQUIRES = re.compile(r"^<!--\s*requires:\s*(.+?)\s*-->$")


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown page, with the directive comment above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    previous = ""  # the last non-blank line outside a block
    required: list[str] = []  # from a requires comment, for the next block
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            if lines[index].strip():
                previous = lines[index].strip()
                needs = _REQUIRES.match(previous)
                if needs:
                    required.extend(needs.group(1).split())
            index += 1
            continue
        start = index
        index += 1
        body = []
        while index < len(lines) and lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise AssertionError(f"{path}:{start + 1}: unclosed code block")
        block = Block(language=match.group(1), text="\n".join(body) + "\n", line=start + 1)
        directive = _DIRECTIVE.match(previous)
        if directive:
            block.directive, block.target = directive.group(1), directive.group(2)
        block.requires = tuple(required)
        required.clear()
        blocks.append(block)
        previous = ""
        index += 1
    return blocks


def doc_pages() -> list[Path]:
    """The hand-written pages this file runs (not the reference, not others' pages)."""
    return sorted(
        path
        for path in DOCS.rglob("*.md")
        if REFERENCE not in path.parents and path.relative_to(DOCS).as_posix() not in OTHERS
    )


def _page_id(path: Path) -> str:
    return path.relative_to(DOCS).as_posix()


# -- running a page ------------------------------------------------------------------


@dataclass
class Command:
    """One ``$ ...`` line of a console block and the output shown under it."""

    text: str
    want: str


def parse_console(text: str) -> Iterator[Command]:
    """The commands of a console block, each with its expected output."""
    command: list[str] | None = None
    want: list[str] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield Command(" ".join(command), "\n".join(want))
            command, want = [line[2:]], []
        elif command is not None and command[-1].endswith("\\") and not want:
            command[-1] = command[-1][:-1]
            command.append(line.strip())
        elif command is not None:
            want.append(line)
    if command is not None:
        yield Command(" ".join(command), "\n".join(want))


def _clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("NEXUS_")}


def _shell_env(cwd: Path) -> dict[str, str]:
    """The environment of ``nexus``/``curl`` commands: this Python's scripts first on PATH,
    the user's config and cache folders inside the page directory."""
    env = {k: v for k, v in _clean_env().items() if not k.startswith("XDG_")}
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(filter(None, [scripts, env.get("PATH")]))
    env["XDG_CONFIG_HOME"] = str(cwd / ".config")
    env["XDG_CACHE_HOME"] = str(cwd / ".cache")
    env["NEXUS_CONFIG_HOME"] = str(cwd / ".config" / "nexus")
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "120"
    return env


def _check_output(command: Command, output: str, where: str, report: str) -> None:
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    want = command.want.strip() + "\n" if command.want.strip() else ""
    got = output.strip() + "\n" if output.strip() else ""
    assert checker.check_output(want, got, flags), f"expected:\n{want}\n{report}"


def _check_installed(words: list[str], where: str, location: Path) -> None:
    """``pip install -e PATH ...``: each PATH, from ``location``, is an installed distribution."""
    paths = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-e", "--editable")]
    assert paths, f"{where}: only `pip install -e PATH` commands can be checked"
    for folder in paths:
        found = Path(os.path.normpath(location / folder))
        pyproject = found / "pyproject.toml"
        shown = os.path.relpath(location, ROOT)
        assert pyproject.is_file(), (
            f"{where}: no distribution at {folder} from where the reader is "
            f"({shown} in the checkout)"
        )
        name = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{where}: {name} ({folder}) is not installed") from None


def run_command(command: Command, cwd: Path, where: str, page: Page | None = None) -> None:
    """Run a ``python``, ``nexus`` or ``curl`` command and compare its output.

    ``cd DIR`` moves the reader (``page.location``); ``pip install -e`` is
    checked against the installed distributions, from there; anything else
    is shown, not run.
    """
    words = shlex.split(command.text)
    env = _clean_env()
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    location = page.location if page is not None else ROOT
    if words[:1] == ["cd"] and page is not None:
        page.location = Path(os.path.normpath(location / (words[1] if len(words) > 1 else ".")))
        return
    if words[:2] == ["pip", "install"]:
        _check_installed(words, where, location)
        return
    if words and words[0] in ("nexus", "curl"):
        proc = subprocess.run(
            ["bash", "-c", command.text],
            cwd=cwd,
            env=_shell_env(cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )
        report = f"{where}: $ {command.text}\n--- output\n{proc.stdout}"
        assert proc.returncode == 0, f"exit status {proc.returncode}\n{report}"
        assert "Traceback" not in proc.stdout, report
        _check_output(command, proc.stdout, where, report)
        return
    if not words or words[0] != "python":
        return
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, *words[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = f"{where}: $ {command.text}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{report}"
    _check_output(command, proc.stdout, where, report)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Page:
    """What running a page keeps between blocks: servers, the port it serves on."""

    cwd: Path
    servers: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    port: int | None = None
    #: Where the reader is, for ``cd`` and ``pip install -e PATH``: the checkout's root at first.
    location: Path = ROOT

    def text(self, text: str) -> str:
        """A block's text with the documented port (8000) replaced by the one served on."""
        if self.port is None:
            return text
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}").replace(
            "--port 8000", f"--port {self.port}"
        )


def serve(block: Block, page: Page, where: str) -> None:
    """Start a ``<!-- serve -->`` block's command in the background; wait until it answers."""
    commands = list(parse_console(block.text))
    assert len(commands) == 1, f"{where}: a serve block holds exactly one command"
    assert "--port 8000" in commands[0].text, f"{where}: serve on --port 8000 (it is replaced)"
    page.port = _free_port()
    log = page.cwd / f"serve-{page.port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["bash", "-c", "exec " + page.text(commands[0].text)],
            cwd=page.cwd,
            env=_shell_env(page.cwd),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    page.servers.callback(stop)
    url = f"http://127.0.0.1:{page.port}/health/ready"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{where}: the server exited:\n{log.read_text()}")
        with contextlib.suppress(OSError), opener.open(url, timeout=2) as answer:
            if answer.status == 200:
                return
        assert time.monotonic() < deadline, f"{where}: no answer in 60 s:\n{log.read_text()}"
        time.sleep(0.2)


def missing(modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` cannot be imported here."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def run_page(path: Path, cwd: Path) -> str | None:
    """Run every block of ``path`` in ``cwd``, as the module docstring says.

    Returns why the page stopped early (modules it requires are missing), else None.
    """
    namespace: dict[str, object] = {"__name__": "__main__"}
    page = Page(cwd)
    with page.servers:
        for block in parse_blocks(path):
            where = f"{_page_id(path)}:{block.line}"
            absent = missing(block.requires)
            if absent:
                return f"{where} and what follows need {', '.join(absent)}, not installed here"
            if block.directive == "skip":
                continue
            text = page.text(block.text)
            if block.directive == "serve":
                serve(block, page, where)
            elif block.directive in ("file", "append"):
                assert block.target, f"{where}: {block.directive} needs a path"
                target = cwd / block.target
                target.parent.mkdir(parents=True, exist_ok=True)
                if block.directive == "append":
                    assert target.is_file(), f"{where}: nothing to append to at {block.target}"
                    with target.open("a", encoding="utf-8") as fh:
                        fh.write("\n\n" + text)
                else:
                    target.write_text(text, encoding="utf-8")
                importlib.invalidate_caches()
            elif block.language == "python":
                code = compile(textwrap.dedent(text), where, "exec")
                exec(code, namespace)
            elif block.language == "console":
                for command in parse_console(text):
                    run_command(command, cwd, where, page)
    return None


@pytest.fixture
def page_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary working directory on sys.path, with no NEXUS_* variables."""
    for key in list(os.environ):
        if key.startswith("NEXUS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if module_file.startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.mark.parametrize("path", doc_pages(), ids=_page_id)
def test_page_code_runs(path: Path, page_dir: Path) -> None:
    stopped = run_page(path, page_dir)
    if _page_id(path) == "tutorial.md":
        # The tutorial runs on the default storage: the app's own .nexus/<app>.db beside it.
        assert list((page_dir / ".nexus").glob("*.db"))
        assert not (page_dir / "nexus.db").exists()
    if stopped:
        pytest.skip(stopped)


@pytest.mark.parametrize("path", doc_pages(), ids=_page_id)
def test_code_blocks_are_labelled(path: Path) -> None:
    for block in parse_blocks(path):
        assert block.language in LANGUAGES, (
            f"{_page_id(path)}:{block.line}: label the block with one of {sorted(LANGUAGES)}"
        )


# -- the reference ---------------------------------------------------------------------


def test_reference_is_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, str(DOCS / "gen_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr


def test_every_hook_is_in_the_hook_reference() -> None:
    text = (REFERENCE / "hooks.md").read_text(encoding="utf-8")
    for name in HOOKS:
        assert f"### {name}\n" in text, f"{name} is missing from docs/reference/hooks.md"


def _other_hooks_table(text: str) -> str:
    match = re.search(r"^## Other hooks\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


def test_every_hook_is_in_the_plugin_guide() -> None:
    # Datasette's rule: a hook nobody explains to plugin authors does not exist.
    text = PLUGIN_GUIDE.read_text(encoding="utf-8")
    code = "\n".join(b.text for b in parse_blocks(PLUGIN_GUIDE) if b.language == "python")
    table = _other_hooks_table(text)
    for name in HOOKS:
        implemented = re.search(rf"def {name}\(", code) is not None
        listed = re.search(rf"^\|\s*\[?`{name}`", table, re.MULTILINE) is not None
        assert implemented or listed, (
            f"{name}: implement it in an example of how-to/write-a-plugin.md "
            "or list it in its 'Other hooks' table"
        )


def test_every_public_name_is_in_the_api_reference() -> None:
    text = (REFERENCE / "api.md").read_text(encoding="utf-8")
    for name in nexus_core.__all__:
        assert f"`nexus_core.{name}`" in text, f"nexus_core.{name} is missing from api.md"


def test_every_node_type_is_in_the_node_reference() -> None:
    text = (REFERENCE / "nodes.md").read_text(encoding="utf-8")
    for name in PluginHost(["sdk_nodes.plugin"], autoload=False, env={}).node_types():
        assert f"## {name}\n" in text, f"node type {name} is missing from nodes.md"


def test_every_hook_docstring_reaches_the_reference() -> None:
    text = (REFERENCE / "hooks.md").read_text(encoding="utf-8")
    for name in HOOKS:
        first_line = inspect.getdoc(getattr(hookspecs, name)).splitlines()[0]
        assert first_line.replace("``", "`") in text, f"{name}'s docstring is not in hooks.md"


# -- links -------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    found = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def all_pages() -> list[Path]:
    """Every page whose links are checked: the hand-written ones and the reference."""
    return sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).as_posix() not in OTHERS)


@pytest.mark.parametrize("path", all_pages(), ids=_page_id)
def test_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # an external URL
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        relative = linked.relative_to(DOCS).as_posix() if DOCS in linked.parents else None
        if relative in OTHERS and not linked.exists():
            continue  # written by another engineer; may not be there yet
        assert linked.exists(), f"{_page_id(path)}: broken link {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{_page_id(path)}: no anchor in {target}"


# -- the plugin guide's distribution, installed for real ----------------------------------


@pytest.mark.slow
def test_the_plugin_guide_distribution_installs_and_is_discovered(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for block in parse_blocks(PLUGIN_GUIDE):
        if block.directive in ("file", "append") and block.target:
            target = source / block.target
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = "a" if block.directive == "append" else "w"
            with target.open(mode, encoding="utf-8") as fh:
                fh.write(("\n\n" if mode == "a" else "") + block.text)
    assert (source / "pyproject.toml").is_file()
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, source],
        check=True,
        capture_output=True,
    )
    probe = textwrap.dedent(
        """
        import json
        from nexus_core import Nexus
        app = Nexus("probe", storage="memory://")
        print(json.dumps({
            "plugins": {p.name: p.version for p in app.plugins},
            "errors": [str(e) for e in app.plugin_errors],
            "node_types": sorted(app.node_types()),
            "schemes": sorted(app.host.storage_backends()),
        }))
        """
    )
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out["errors"] == []
    assert out["plugins"]["nexus-plugin-textkit"] == "1.0.0"
    assert "Slugify" in out["node_types"]
    assert "tmp" in out["schemes"]
