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


def use_json(logger: logging.Logger) -> None:
    """Every handler of `logger` (the root logger) writes JSON lines."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
