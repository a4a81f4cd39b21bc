"""Real `graphpilot-runtime serve` processes on free loopback ports, for every integration test.

    def test_x(runtime_factory):
        rt = runtime_factory("--graph-buckets", "1,2,4,8")   # started, /ready answered 200
        httpx.get(rt.base_url + "/metrics"); httpx.get(rt.admin_url + "/admin/profile")
        rt.stop()                                              # SIGTERM, returns the exit code

`tiny_runtime` is one shared server (tiny preset, eager graph backend) for tests that only read it
or send ordinary traffic.
"""

from __future__ import annotations

import os
import shutil
import signal as signals
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

# tiny preset on the CPU with the eager graph backend: the same segmented path as CUDA graphs
TINY_ARGS = (
    "--preset", "tiny", "--graph-backend", "eager", "--no-progress", "--max-num-batched-tokens", "256",
    "--graph-buckets", "1,2,4,8,16,32,64,128,256",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runtime_command() -> list[str]:
    script = Path(sys.executable).parent / "graphpilot-runtime"
    if script.exists():
        return [str(script)]
    found = shutil.which("graphpilot-runtime")
    return [found] if found else [sys.executable, "-m", "graphpilot.runtime.cli"]


class RuntimeProcess:
    """One `graphpilot-runtime serve` process; its output goes to `log_path`."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.openai_url = self.base_url + "/v1"
        self.log_path = log_path
        self.args = [*runtime_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                     "--admin-port", str(self.admin_port), *args]  # fmt: skip
        clean = {
            k: v for k, v in os.environ.items() if not k.startswith("GRAPHPILOT_") or k == "GRAPHPILOT_CACHE"
        }
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env={**clean, **(env or {})}
        )

    def wait_ready(self, timeout: float = 180.0) -> RuntimeProcess:
        """Block until /ready answers 200; fail with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the runtime exited with {self.proc.returncode} before it was ready:\n{self.logs()}"
                )
            try:
                if httpx.get(self.base_url + "/ready", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"the runtime was not ready after {timeout:.0f} s:\n{self.logs()}")

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-8000:]

    def signal(self, sig: int = signals.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` and wait for the exit code (killing the process if it does not exit in time)."""
        self.signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the runtime did not exit within {timeout:.0f} s of signal {sig}:\n{self.logs()}")
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def runtime_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RuntimeProcess]]:
    """Start a runtime: `runtime_factory(*extra_flags, env=None, tiny=True, wait=True)`."""
    started: list[RuntimeProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, tiny: bool = True, wait: bool = True
    ) -> RuntimeProcess:
        log = tmp_path_factory.mktemp("runtime") / "runtime.log"
        rt = RuntimeProcess([*(TINY_ARGS if tiny else ()), *args], log, env)
        started.append(rt)
        return rt.wait_ready() if wait else rt

    yield start
    for rt in started:
        if rt.proc.poll() is None:
            rt.signal(signals.SIGTERM)
    for rt in started:
        try:
            rt.proc.wait(30)
        except subprocess.TimeoutExpired:
            rt.kill()


@pytest.fixture(scope="session")
def tiny_runtime(runtime_factory: Callable[..., RuntimeProcess]) -> RuntimeProcess:
    """A shared runtime for tests that send ordinary traffic (do not retune or stop it)."""
    return runtime_factory("--max-request-bytes", str(1 << 20))
