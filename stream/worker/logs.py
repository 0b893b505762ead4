"""Structured logs: with `QRIS_LOG_FORMAT=json` every log record of the worker is one JSON
object per line (time, level, logger, message, and the exception's type and text), for log
shippers. The messages carry no customer data (partitions, offsets, counts, error types).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from ..core import codec


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        value = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and record.exc_info[0] is not None:
            value["error"] = record.exc_info[0].__name__
            value["traceback"] = self.formatException(record.exc_info)
        return codec.dumps(value).decode()


class RequestContentDropped(logging.Filter):
    """On aiohttp's server logger: a malformed request (an HTTP parser error) is logged with the
    offending line quoted, which is an unauthenticated client's bytes: the lookup API's bearer
    token (a stray CR or NUL after it) or an account id of its path (`/qris/accounts/<id> /...`).
    The record keeps its message and the error's type and status code; the quoted line goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg} ({type(exc).__name__} {exc.code}; request content not logged)"
            record.exc_info = None
            record.exc_text = None
        return True


def drop_request_content() -> None:
    """Install `RequestContentDropped` on the logger aiohttp's server writes to."""
    logging.getLogger("aiohttp.server").addFilter(RequestContentDropped())


def use_json(logger: logging.Logger) -> None:
    """Every handler of `logger` (the root logger) writes JSON lines."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
