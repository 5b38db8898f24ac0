"""Every error the ``nexus`` command reports, in one shape, with one exit code each.

Errors come from three places: the core in process (a
:class:`~nexus_core.errors.NexusError` with its ``detail()``), a gateway (an RFC
9457 problem with the same fields) and the command line itself (a bad
option). All become a :class:`Problem`, printed as ``error: MESSAGE`` (plus
field errors, the failing node and a hint) on standard error. Never a traceback.

Exit codes: ``0`` success; ``1`` a failed run or any other error (not found,
refused, unreachable gateway); ``2`` a usage error: an unknown workflow, a bad
or missing option, invalid input or configuration; ``130`` interrupted.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAILURE",
    "INTERRUPTED",
    "OK",
    "USAGE",
    "USAGE_CODES",
    "CliError",
    "Problem",
    "exit_code_for",
    "print_debug_traceback",
    "problem_from",
    "usage_error",
]

OK = 0
FAILURE = 1
USAGE = 2
INTERRUPTED = 130

#: Error codes that mean "the command was asked the wrong thing": exit code 2.
USAGE_CODES: frozenset[str] = frozenset(
    {
        "usage",
        "validation_error",
        "input_limit",
        "invalid_json",
        "workflow_not_found",
        "config_error",
        "app_not_found",
        "bad_request",
        "payload_too_large",
    }
)


@dataclass
class Problem:
    """A channel-neutral error: the core's ``ErrorDetail`` fields plus a hint for the user."""

    code: str
    message: str
    errors: list[tuple[str, str]] = field(default_factory=list)
    node: str | None = None
    suggestion: str | None = None
    retry_after: float | None = None
    hint: str | None = None
    status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``--output json``): the core's ``ErrorDetail`` keys."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors:
            out["errors"] = [{"path": p, "reason": r} for p, r in self.errors]
        for key in ("node", "suggestion", "retry_after", "hint"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @property
    def exit_code(self) -> int:
        """2 for usage errors, 130 when interrupted, else 1."""
        return exit_code_for(self.code)

    def lines(self) -> list[str]:
        """What is printed on standard error."""
        out = [f"error: {self.message}"]
        shown = {self.message}
        if len(self.errors) > 1 or (self.errors and self.errors[0][1] not in self.message):
            for path, reason in self.errors:
                line = f"  {path or '(input)'}: {reason}"
                if line.strip() not in shown:
                    out.append(line)
        if self.retry_after is not None:
            out.append(f"  retry after {self.retry_after:g} s")
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out


class CliError(Exception):
    """An error the command reports as it is (no traceback): carries its :class:`Problem`."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def print_debug_traceback(exc: BaseException) -> None:
    """With ``NEXUS_DEBUG`` set, print ``exc``'s traceback on stderr, with what it hides.

    A ``raise CliError(...) from None`` turns an internal error into a clean
    message; here the error it replaced is shown too, since that is what a
    debugging user wants to see.
    """
    if not os.environ.get("NEXUS_DEBUG"):
        return
    import traceback

    seen: set[int] = set()
    each: BaseException | None = exc
    while each is not None and id(each) not in seen:
        seen.add(id(each))
        if each.__cause__ is None and each.__context__ is not None:
            each.__suppress_context__ = False
        each = each.__cause__ or each.__context__
    traceback.print_exception(exc, file=sys.stderr)


def usage_error(message: str, *, hint: str | None = None) -> CliError:
    """A usage error (exit code 2)."""
    return CliError(Problem(code="usage", message=message, hint=hint))


def exit_code_for(code: str) -> int:
    """The exit code of an error ``code``."""
    if code == "interrupted":
        return INTERRUPTED
    return USAGE if code in USAGE_CODES else FAILURE


def problem_from(exc: BaseException) -> Problem:
    """Turn any exception into the :class:`Problem` the user sees.

    Known errors keep their message; anything unexpected becomes a one-line
    "internal error" (``NEXUS_DEBUG=1`` prints the traceback as well).
    """
    if isinstance(exc, CliError):
        return exc.problem
    core = sys.modules.get("nexus_core.errors")
    if core is not None and isinstance(exc, core.NexusError):
        detail = exc.detail()
        problem = Problem(
            code=detail.code,
            message=detail.message,
            errors=[(e.path, e.reason) for e in detail.errors],
            node=detail.node,
            suggestion=detail.suggestion,
            retry_after=detail.retry_after,
        )
        if detail.code == "app_not_found":
            problem.hint = "pass --app FILE.py (or module:attr), set NEXUS_APP, or use --url URL"
        return problem
    from .options import RunUsageError

    if isinstance(exc, RunUsageError):
        return Problem(code="usage", message=exc.message, hint=exc.hint)
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.HTTPError):
        return _http_problem(exc, httpx)
    if isinstance(exc, KeyboardInterrupt):
        return Problem(code="interrupted", message="interrupted")
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return problem_from(exc.exceptions[0])
    if isinstance(exc, OSError) and exc.filename:
        return Problem(code="os_error", message=f"{exc.filename}: {exc.strerror or exc}")
    return Problem(
        code="internal_error",
        message=f"internal error: {type(exc).__name__}: {exc}",
        hint="set NEXUS_DEBUG=1 to see the traceback, and please report it",
    )


def _http_problem(exc: Exception, httpx: Any) -> Problem:
    request = getattr(exc, "_request", None)
    url = ""
    if request is not None:
        url = f"{request.url.scheme}://{request.url.netloc.decode()}"
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Problem(  # one line: the gateway, why, and what to check
            code="unreachable",
            message=f"cannot reach the Nexus gateway at {url or 'the given URL'} "
            f"({_short(reason)}); is it running? (--url / NEXUS_URL)",
        )
    if isinstance(exc, httpx.TimeoutException):
        return Problem(code="timeout", message=f"the gateway at {url} did not answer in time")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return Problem(code="usage", message=f"invalid gateway URL: {_short(reason)}")
    return Problem(code="gateway_error", message=f"talking to the gateway {url}: {_short(reason)}")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."
