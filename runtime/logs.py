"""Structured logging: one logfmt line per event, quiet (warnings only) unless asked."""

from __future__ import annotations

import logging
import sys

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(v: object) -> str:
    s = str(v)
    return f'"{s}"' if (" " in s or "=" in s or not s) else s


def setup_logging(level: str = "warning") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("graphpilot")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
