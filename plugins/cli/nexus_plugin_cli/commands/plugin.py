"""``nexus plugin new NAME --kind channel|storage|auth|nodes``: start a plugin distribution.

Writes a ready distribution (see :mod:`nexus_plugin_cli.scaffold`): its
``pyproject.toml`` registers the entry point and pins the core's 0.x series,
the package holds a working skeleton, and ``tests/`` runs the matching
contract suite of ``nexus_core.testing``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from cyclopts import App, Parameter

from .. import context
from ..errors import OK, usage_error
from ..output import Console

__all__ = ["app", "new_plugin"]

app = App(name="plugin", help="Start a new plugin distribution (nexus plugin new NAME).")

Kind = Literal["channel", "storage", "auth", "nodes"]


@app.command(name="new")
def new_plugin(
    name: str,
    /,
    *,
    kind: Annotated[Kind, Parameter(name=["--kind", "-k"])] = "channel",
    directory: Annotated[Path | None, Parameter(name=["--directory", "-d"])] = None,
    force: bool = False,
) -> int:
    """Write a new plugin distribution NAME: pyproject, skeleton, contract test.

    Parameters
    ----------
    name
        The distribution name, such as nexus-acme-lines (also the entry point).
    kind
        What the plugin contributes: channel, storage, auth or nodes.
    directory
        Where to write it (default: ./NAME); must be empty unless --force.
    force
        Write over files in a folder that is not empty.

    """

    async def body(out: Console) -> int:
        from ..scaffold import ScaffoldError, write

        target = directory if directory is not None else Path(name)
        try:
            written = write(name, kind, target, force=force)
        except ScaffoldError as exc:
            raise usage_error(str(exc)) from None
        if out.json:
            out.result({"directory": str(target), "files": [str(p) for p in written]})
            return OK
        for path in written:
            out.line(str(path))
        out.note(
            f"next: cd {target} && pip install -e '.[test]' && pytest "
            "(the test runs the contract suite of nexus_core.testing)"
        )
        return OK

    return context.execute(body)
