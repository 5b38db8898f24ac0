"""``nexus voice``: speak to a served app, or print an app's voice grammar.

Registered lazily through the CLI plugin's ``nexus_cli_commands`` hook, so
``nexus --help`` imports nothing from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import cyclopts

__all__ = ["voice_app"]

voice_app = cyclopts.App(name="voice", help="Speak to a served app, or print its voice grammar.")


@voice_app.command
def say(
    file: Path,
    /,
    *,
    url: str | None = None,
    out: Path | None = None,
    play: bool = False,
    session: str | None = None,
    token: str | None = None,
) -> int:
    """Send FILE (a WAV, or any audio sox reads) to the voice channel; print and save the answer.

    URL is the server (default NEXUS_URL, else http://127.0.0.1:8000). The
    transcript, outcome and reply are printed; the spoken reply is saved to
    OUT, or played with sox's `play` when --play is given. SESSION continues a
    session (printed after each request); TOKEN (or NEXUS_TOKEN) authenticates.
    """
    try:
        audio = file.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {file}: {exc.strerror}", file=sys.stderr)
        return 2
    base = (url or os.environ.get("NEXUS_URL") or "http://127.0.0.1:8000").rstrip("/")
    headers = {"Content-Type": "application/octet-stream"}
    token = token or os.environ.get("NEXUS_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if session:
        headers["X-Nexus-Session"] = session
    request = urllib.request.Request(f"{base}/voice", data=audio, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
            info = response.headers
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("message", detail)
        print(f"error: {exc.code}: {detail}", file=sys.stderr)
        return 2 if 400 <= exc.code < 500 else 1
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {base}: {exc.reason}", file=sys.stderr)
        return 1
    print(f"heard:   {info.get('X-Nexus-Transcript', '')}")
    print(f"outcome: {info.get('X-Nexus-Outcome', '')}")
    if info.get("X-Nexus-Run"):
        print(f"run:     {info['X-Nexus-Run']}")
    if info.get("X-Nexus-Session"):
        print(f"session: {info['X-Nexus-Session']}")
    target = out
    if target is None and not play:
        target = file.with_name(file.stem + ".reply.wav")
    if target is not None:
        target.write_bytes(body)
        print(f"reply:   {target}")
    if play:
        player = shutil.which("play")
        if player is None:
            print("error: --play needs sox's `play` program", file=sys.stderr)
            return 1
        subprocess.run([player, "-q", "-"], input=body, check=False)
    return 0


@voice_app.command
def grammar(app: str | None = None, /) -> int:
    """Print the JSGF grammar the voice channel builds for APP's workflows.

    APP is a file (app.py) or module:attr; without it NEXUS_APP or nexus.toml
    names it. Words the recognizer does not know are listed on stderr.
    """
    from nexus_core.errors import NexusError
    from nexus_core.plugin import load_app

    from .config import voice_config
    from .engines import EngineError, load_engine
    from .grammar import build_grammar
    from .service import _specs

    try:
        nexus = load_app(app)
    except NexusError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    config = voice_config(nexus)
    known = None
    try:
        engine = load_engine(
            _specs(nexus.host, "nexus_voice_stt_engines"), config.stt, config, "speech-to-text"
        )
        known = getattr(engine, "known", None)
    except EngineError as exc:
        print(f"warning: {exc}; words are not checked", file=sys.stderr)
    built = build_grammar(list(nexus.workflows.values()), config, known=known)
    sys.stdout.write(built.jsgf())
    if built.unspeakable:
        print(
            "left out (not in the recognizer's dictionary): "
            + ", ".join(sorted(built.unspeakable)),
            file=sys.stderr,
        )
    return 0
