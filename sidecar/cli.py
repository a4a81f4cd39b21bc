"""`graphpilot-sidecar`: run the autotuner next to a runtime."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .settings import SidecarSettings

# LogRecord attributes that are not `extra=` fields
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def parse_args(argv: list[str] | None) -> SidecarSettings:
    """Flags override GRAPHPILOT_SIDECAR_* environment variables."""
    p = argparse.ArgumentParser(prog="graphpilot-sidecar", description="GraphPilot autotuner sidecar.")
    fields = SidecarSettings.model_fields
    for name in ("admin_url", "host", "port", "interval_seconds", "max_buckets", "graph_memory_budget_bytes",
                 "min_gain_ratio", "cooldown_seconds", "eval_intervals", "state_file", "log_level",
                 "namespace", "name", "coverage_quantile", "decay"):  # fmt: skip
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=fields[name].description)
    p.add_argument("--dry-run", action="store_true", default=None, help=fields["dry_run"].description)
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    return SidecarSettings(**given)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    import uvicorn
    from pydantic import ValidationError

    try:
        settings = parse_args(argv)
    except ValidationError as e:
        print(f"graphpilot-sidecar: invalid settings:\n{e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)

    from .app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
