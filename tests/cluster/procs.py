"""Background processes, each in its own process group so that stopping one leaves no strays."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks (tells a live pid from a reused one), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of stat(5)); a zombie is as good as gone.
    return None if fields[0] == "Z" else int(fields[19])


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Proc:
    """A started process: name, pid, and its start time to recognise it later."""

    name: str
    pid: int
    start_ticks: int | None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.start_ticks is not None and _start_ticks(self.pid) == self.start_ticks

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
        if not self.alive():
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)
        else:
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_ticks": self.start_ticks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Proc:
        return cls(data["name"], data["pid"], data["start_ticks"])


def start_proc(
    name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, die_with_parent: bool = False
) -> Proc:
    """Start argv in a new session with stdout and stderr appended to log."""
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    return Proc(name, popen.pid, _start_ticks(popen.pid), popen)


def log_tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines) ---\n" + "\n".join(text)
