"""Run the public and admin servers in one event loop, with a graceful SIGTERM.

SIGTERM (or Ctrl-C): /ready turns 503 and new API requests get 503, in-flight requests run to the end
(up to --drain-timeout seconds, then they end with a clean error), then both servers stop. A second
signal skips the wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from graphpilot.runtime.cli import engine_config_from_args
from graphpilot.runtime.logs import setup_logging
from graphpilot.runtime.server.admin import create_admin_app
from graphpilot.runtime.server.app import ServerSettings, create_app
from graphpilot.runtime.server.loop import AsyncEngine

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to us: two servers share one graceful shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def served_model_name(args: argparse.Namespace) -> str:
    if args.served_model_name:
        return str(args.served_model_name)
    return str(args.preset or os.path.basename(os.path.normpath(args.model)))


def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM; the exit code is 1 when the engine failed to start."""
    setup_logging(args.log_level)
    config = engine_config_from_args(args)
    runtime = AsyncEngine(config, fail_capture_at=tuple(args.debug_fail_capture_at or ()))
    settings = ServerSettings(served_model_name(args), args.max_request_bytes)
    public = _Server(
        _uvicorn_config(create_app(runtime, settings), args.host, args.port, args, lifespan="on")
    )
    admin_app = create_admin_app(runtime, args.admin_token, args.state_file)
    admin = _Server(_uvicorn_config(admin_app, args.admin_host, args.admin_port, args, lifespan="off"))
    return asyncio.run(_run(runtime, public, admin, args.drain_timeout))


def _uvicorn_config(
    app: Any, host: str, port: int, args: argparse.Namespace, lifespan: Any
) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, lifespan=lifespan, access_log=args.access_log,
                          log_level=args.log_level, log_config=None, timeout_graceful_shutdown=5)  # fmt: skip


async def _run(runtime: AsyncEngine, public: _Server, admin: _Server, drain_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    async def shutdown() -> None:
        drained = await runtime.drain(drain_timeout)
        if not drained:
            log.warning(
                "drain timeout: ending the requests still in flight",
                extra={"requests": runtime.num_in_flight},
            )
            runtime.fail_in_flight("the server is shutting down")
        public.should_exit = admin.should_exit = True

    def on_signal() -> None:
        if stopping:  # the second signal: stop now
            runtime.fail_in_flight("the server is shutting down")
            public.should_exit = admin.should_exit = True
            return
        print("graphpilot-runtime: shutting down, draining in-flight requests", file=sys.stderr, flush=True)
        stopping.append(asyncio.create_task(shutdown()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    watch = asyncio.create_task(_exit_on_engine_failure(runtime, public, admin))
    await asyncio.gather(public.serve(), admin.serve())
    watch.cancel()
    return 1 if runtime.error else 0


async def _exit_on_engine_failure(runtime: AsyncEngine, public: _Server, admin: _Server) -> None:
    await runtime.started.wait()
    if runtime.error:
        print(
            f"graphpilot-runtime: error: the engine failed to start: {runtime.error}",
            file=sys.stderr,
            flush=True,
        )
        public.should_exit = admin.should_exit = True
        return
    print(f"graphpilot-runtime: ready on http://{public.config.host}:{public.config.port} "
          f"(admin http://{admin.config.host}:{admin.config.port})", file=sys.stderr, flush=True)  # fmt: skip
