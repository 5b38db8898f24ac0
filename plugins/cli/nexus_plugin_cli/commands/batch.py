"""``nexus batch FILE``: run a JSON Lines file of invocations, N at a time.

Each line is an object::

    {"workflow": "greet", "inputs": {"name": "Ada"}}
    {"workflow": "greet", "inputs": {"name": "Bob"}, "id": "bob", "session": "...",
     "idempotency_key": "greet-bob"}

Blank lines and lines starting with ``#`` are skipped; ``-`` reads standard
input. One result is printed per invocation as it finishes (``--output json``:
one JSON object per line, with the line number and the ``id`` given), then a
summary on stderr. The exit code is 1 when any invocation failed or any line
was invalid, else 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
from cyclopts import Parameter

from .. import context, state
from ..backends import Backend, open_backend
from ..context import Globals
from ..errors import FAILURE, OK, problem_from, usage_error
from ..options import parse_json
from ..output import Console, dumps
from ..render import run_problem

__all__ = ["batch_command", "read_lines"]


def batch_command(
    file: Annotated[str, Parameter(allow_leading_hyphen=True)],
    /,
    *,
    concurrency: Annotated[int, Parameter(name=["--concurrency", "-c"])] = 4,
    g: Globals | None = None,
) -> int:
    """Run every invocation of a JSON Lines file, with a concurrency limit and a summary.

    Parameters
    ----------
    file
        The JSON Lines file ('-' for stdin): one {"workflow": ..., "inputs": {...}} per line.
    concurrency
        How many invocations run at once.
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        if concurrency < 1:
            raise usage_error(f"--concurrency must be at least 1, got {concurrency}")
        text = _read(file)
        target = context.target()
        async with open_backend(target) as backend:
            await backend.start()
            results = await run_batch(out, backend, read_lines(text), concurrency)
        return _summary(out, results)

    return context.execute(body)


def _read(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    path = Path(file)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise usage_error(f"no such file: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise usage_error(f"cannot read {file}: {exc}") from None


def read_lines(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``(line number, invocation)`` for each line, or ``(line number, error message)``."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            item = parse_json(line)
        except ValueError as exc:
            yield number, f"invalid JSON: {exc}"
            continue
        if not isinstance(item, dict):
            yield number, "each line must be a JSON object"
            continue
        workflow = item.get("workflow")
        if not isinstance(workflow, str) or not workflow:
            yield number, 'missing "workflow" (the name of the workflow to run)'
            continue
        inputs = item.get("inputs", {})
        if not isinstance(inputs, dict):
            yield number, '"inputs" must be a JSON object'
            continue
        unknown = sorted(set(item) - {"workflow", "inputs", "id", "session", "idempotency_key"})
        if unknown:
            yield (
                number,
                f"unknown key {unknown[0]!r} "
                "(allowed: workflow, inputs, id, session, idempotency_key)",
            )
            continue
        yield number, item


async def run_batch(
    out: Console,
    backend: Backend,
    items: Iterator[tuple[int, dict[str, Any] | str]],
    concurrency: int,
) -> list[dict[str, Any]]:
    """Run the invocations with ``concurrency`` workers; print each result as it ends."""
    results: list[dict[str, Any]] = []
    default_session = state.current_session(backend.target.key)
    send, receive = anyio.create_memory_object_stream[tuple[int, dict[str, Any] | str]](concurrency)

    async def worker(inbox: Any) -> None:
        async with inbox:
            async for number, item in inbox:
                result = await _one(backend, number, item, default_session)
                results.append(result)
                _print(out, result)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker, receive.clone())
        receive.close()
        async with send:
            for entry in items:
                await send.send(entry)
    return sorted(results, key=lambda r: r["line"])


async def _one(
    backend: Backend, number: int, item: dict[str, Any] | str, default_session: str | None
) -> dict[str, Any]:
    if isinstance(item, str):
        return {"line": number, "status": "invalid", "error": {"message": item}}
    base: dict[str, Any] = {"line": number, "workflow": item["workflow"]}
    if "id" in item:
        base["id"] = item["id"]
    try:
        run = await backend.invoke(
            item["workflow"],
            item.get("inputs") or {},
            session=item.get("session") or default_session,
            idempotency_key=item.get("idempotency_key"),
        )
    except Exception as exc:  # one bad invocation does not stop the batch
        return {**base, "status": "invalid", "error": problem_from(exc).to_dict()}
    result = {**base, "status": run["status"], "run_id": run["run_id"], "output": run["output"]}
    failure = run_problem(run)
    if failure is not None:
        result["error"] = {"message": failure.message, "node": failure.node}
    return result


def _print(out: Console, result: dict[str, Any]) -> None:
    if out.json:
        out.record(result)
        return
    label = f"line {result['line']}"
    if "id" in result:
        label += f" ({result['id']})"
    workflow = result.get("workflow") or "-"
    if result["status"] == "completed":
        out.line(f"{label}: {workflow} completed: {dumps(result['output'], indent=None)}")
    else:
        out.line(f"{label}: {workflow} {result['status']}: {result['error']['message']}")


def _summary(out: Console, results: list[dict[str, Any]]) -> int:
    counts: dict[str, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    failed = [r["line"] for r in results if r["status"] != "completed"]
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    total = len(results)
    summary = f"batch: {total} invocation{'s' if total != 1 else ''}: {parts or 'none'}"
    if failed:
        lines = ", ".join(map(str, failed[:20])) + (" ..." if len(failed) > 20 else "")
        summary += f" (not completed: line{'s' if len(failed) > 1 else ''} {lines})"
    out.stderr.write(summary + "\n")
    return FAILURE if failed else OK
