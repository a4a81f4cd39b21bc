"""One-line progress for long work (graph capture, model loading), on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """Rewrites one line on a terminal; elsewhere prints about every 25% so logs stay short."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled = label, enabled
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self._last_quarter = -1
        self._shown = False

    def update(self, done: int, total: int, item: int | str = "") -> None:
        if not self.enabled or total <= 0:
            return
        width = 24
        filled = width * done // total
        line = (
            f"graphpilot: {self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
            f" {item} {time.perf_counter() - self.start:.1f}s"
        )
        quarter = 4 * done // total
        if self.tty:
            sys.stderr.write("\r" + line)
        elif quarter != self._last_quarter:
            sys.stderr.write(line + "\n")
        self._last_quarter = quarter
        self._shown = True
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._shown and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
