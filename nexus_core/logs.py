"""One log format for a server process: Nexus's loggers and the ASGI server's alike.

:func:`configure_logging` installs one handler on the root logger, and makes
uvicorn's loggers (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``) send
their records there instead of to handlers of their own, so every line of a
``nexus serve`` or ``nexus mcp`` process has the same shape:

- ``text``: ``LEVEL    logger: message`` (a failed run's traceback follows on
  the next lines);
- ``json``: one JSON object per line, with ``time`` (UTC, ISO 8601), ``level``,
  ``logger``, ``message``, and ``run_id``, ``workflow``, ``node`` and
  ``traceback`` when the record has them (a failed run's line does), or
  ``exception`` for a logged exception.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, Literal, TextIO

import msgspec

__all__ = ["LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "LogFormat", "configure_logging"]

LogFormat = Literal["text", "json"]
#: The formats :func:`configure_logging` knows.
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
#: The text format: level, logger, message.
TEXT_FORMAT = "%(levelname)-8s %(name)s: %(message)s"

#: Record attributes a JSON line carries when present (``extra=`` of the log call).
_CONTEXT = ("run_id", "workflow", "node")
#: uvicorn's loggers: they go through the root handler, like Nexus's.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
_encode = msgspec.json.Encoder(enc_hook=str).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, message, context."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object (newlines inside values are escaped)."""
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        traceback = getattr(record, "traceback", None)
        if isinstance(traceback, str) and traceback:
            # The text form appends it to the message; here it is a field of its own.
            entry["message"] = message.split("\n", 1)[0]
            entry["traceback"] = traceback
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _encode(entry).decode()


def configure_logging(
    level: str | int = "INFO",
    log_format: LogFormat = "text",
    *,
    stream: TextIO | None = None,
    force: bool = False,
) -> None:
    """Send every log record of the process through one handler in ``log_format``.

    Without ``force``, a root logger that already has handlers (the embedding
    application configured logging) is left as it is; uvicorn's loggers are
    still pointed at it. ``force`` (an explicit ``--log-format``) replaces them.
    Raises ``ValueError`` for an unknown format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    root = logging.getLogger()
    if force or not root.handlers:
        for old in list(root.handlers):
            root.removeHandler(old)
            old.close()
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _SERVER_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
